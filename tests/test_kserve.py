"""The kserve serving target through the pipeline steps, against a Kubernetes API stand-in on 127.0.0.1 that the
real ``kubernetes`` client talks to, with the real KServe model server behind every predictor."""

import json
import os
from pathlib import Path

import jsonschema
import pytest
import requests
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from components.contract import ANOMALY_DETECTOR, PREDICTIVE_ANALYTICS
from components.ingest import IngestRequest, ingest
from components.storage import FilesystemStore
from components.train import DetectorParams, ForecasterParams, train_anomaly_detector, train_predictive_analytics
from tests.conftest import REPO, run_cli
from tests.k8s_standin import KubeStandIn
from tests.test_serving import FALLBACK, MainUrlClient, alarmist_model

NAMESPACE = "self-healing-platform"
CRDS = REPO.parent / "shared" / "reference" / "kserve-crds"
FAST = ("--param", "canary_interval_s=0.3", "--param", "probe_requests=10", "--param", "days=1",
        "--param", "serving_target=kserve", "--param", f"namespace={NAMESPACE}", "--param", "ready_timeout_s=60")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("kserve")
    (state / "work").mkdir()
    standin = KubeStandIn(state / "store", state / "work").start()
    kubeconfig = standin.write_kubeconfig(state / "kubeconfig")
    try:
        yield state, standin, {"KUBECONFIG": str(kubeconfig)}
    finally:
        standin.stop()


@pytest.fixture(scope="module")
def models():
    detector_data = ingest(IngestRequest(ANOMALY_DETECTOR, days=3, seed=31))
    forecaster_data = ingest(IngestRequest(PREDICTIVE_ANALYTICS, days=4, seed=31))
    return {
        "detector": lambda seed: train_anomaly_detector(detector_data.train, DetectorParams(random_state=seed)).estimator,
        "alarmist": lambda seed: alarmist_model(detector_data),
        "forecaster": lambda seed: train_predictive_analytics(forecaster_data.train, ForecasterParams(alpha=seed)).estimator,
    }


def store_version(state: Path, model_name: str, estimator) -> str:
    import joblib

    path = state / "candidate.pkl"
    joblib.dump(estimator, path)
    return FilesystemStore(state / "store").save_version(model_name, path, {"run_name": "test"}).version


def rollout(cluster, model_name: str, version: str, *extra: str):
    state, _, env = cluster
    return run_cli("rollout", model_name, "--version", version, "--local", "--state-dir", str(state), *FAST, *extra, env=env)


def isvc(standin: KubeStandIn, name: str) -> dict | None:
    return standin.get(NAMESPACE, name)


def index(state: Path, model_name: str) -> dict:
    return FilesystemStore(state / "store").read_index(model_name)


def test_serverless_first_deploy_then_good_candidate_promoted(cluster, models):
    state, standin, _ = cluster
    v1 = store_version(state, ANOMALY_DETECTOR, models["detector"](1))
    first = rollout(cluster, ANOMALY_DETECTOR, v1, "--param", "deployment_mode=Serverless")
    assert first.returncode == 0, first.stdout[-3000:]
    created = isvc(standin, ANOMALY_DETECTOR)
    assert created["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
    assert created["metadata"]["annotations"]["model-pipelines.io/stable-version"] == v1
    assert created["metadata"]["labels"]["model-pipelines.io/model-version"] == v1
    assert created["spec"]["predictor"]["model"]["storageUri"] == f"pvc://model-storage-pvc/{ANOMALY_DETECTOR}/{v1}"
    assert index(state, ANOMALY_DETECTOR)["stable"] == v1

    v2 = store_version(state, ANOMALY_DETECTOR, models["detector"](2))
    url = created["status"]["url"] + f"/v1/models/{ANOMALY_DETECTOR}"
    with MainUrlClient(url) as engine:
        second = rollout(cluster, ANOMALY_DETECTOR, v2)
    assert second.returncode == 0, second.stdout[-3000:]
    for weight in (10, 50, 100):
        assert f"canary {ANOMALY_DETECTOR} {v2} at {weight}%: pass" in second.stdout
    assert engine.failures == []
    promoted = isvc(standin, ANOMALY_DETECTOR)
    assert "canaryTrafficPercent" not in promoted["spec"]["predictor"]
    assert promoted["spec"]["predictor"]["model"]["storageUri"].endswith(f"/{v2}")
    assert promoted["metadata"]["annotations"]["model-pipelines.io/stable-version"] == v2
    assert not any(key.startswith("model-pipelines.io/candidate") for key in promoted["metadata"]["annotations"])
    traffic = promoted["status"]["components"]["predictor"]["traffic"]
    assert [entry["percent"] for entry in traffic if entry["latestRevision"]] == [100]
    assert index(state, ANOMALY_DETECTOR)["stable"] == v2


def test_serverless_bad_candidate_rolled_back_with_spec_and_serving_unchanged(cluster, models):
    state, standin, _ = cluster
    before = isvc(standin, ANOMALY_DETECTOR)
    stable = before["metadata"]["annotations"]["model-pipelines.io/stable-version"]
    served_by = requests.post(before["status"]["url"] + f"/v1/models/{ANOMALY_DETECTOR}:predict", json=FALLBACK, timeout=10).headers["x-served-version"]
    bad = store_version(state, ANOMALY_DETECTOR, models["alarmist"](0))
    with MainUrlClient(before["status"]["url"] + f"/v1/models/{ANOMALY_DETECTOR}") as engine:
        result = rollout(cluster, ANOMALY_DETECTOR, bad)
    assert result.returncode == 0, result.stdout[-3000:]
    assert engine.failures == []
    after = isvc(standin, ANOMALY_DETECTOR)
    assert after["spec"] == before["spec"], "rollback restores the stable spec"
    assert after["metadata"]["annotations"]["model-pipelines.io/stable-version"] == stable
    assert index(state, ANOMALY_DETECTOR)["versions"][bad]["status"] == "rejected"
    answer = requests.post(after["status"]["url"] + f"/v1/models/{ANOMALY_DETECTOR}:predict", json=FALLBACK, timeout=10)
    assert answer.json()["predictions"] == [1]
    assert answer.headers["x-served-version"] == served_by


def test_raw_deployment_promotes_through_a_candidate_service(cluster, models):
    state, standin, _ = cluster
    v1 = store_version(state, PREDICTIVE_ANALYTICS, models["forecaster"](1.0))
    assert rollout(cluster, PREDICTIVE_ANALYTICS, v1, "--param", "deployment_mode=RawDeployment").returncode == 0
    v2 = store_version(state, PREDICTIVE_ANALYTICS, models["forecaster"](3.0))
    result = rollout(cluster, PREDICTIVE_ANALYTICS, v2, "--param", "canary_steps=[25,100]")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "RawDeployment ignores canaryTrafficPercent" in result.stdout
    candidates = [write for write in standin.writes if write["metadata"]["name"] == f"{PREDICTIVE_ANALYTICS}-candidate"]
    assert candidates and candidates[0]["spec"]["predictor"]["model"]["storageUri"].endswith(f"/{v2}")
    assert isvc(standin, f"{PREDICTIVE_ANALYTICS}-candidate") is None, "the candidate is deleted after promotion"
    main = isvc(standin, PREDICTIVE_ANALYTICS)
    assert main["spec"]["predictor"]["model"]["storageUri"].endswith(f"/{v2}")
    assert "canaryTrafficPercent" not in main["spec"]["predictor"]
    assert index(state, PREDICTIVE_ANALYTICS)["stable"] == v2


def test_raw_deployment_bad_candidate_rolled_back(cluster, models):
    state, standin, _ = cluster
    before = isvc(standin, PREDICTIVE_ANALYTICS)
    bad = store_version(state, PREDICTIVE_ANALYTICS, _constant_forecaster(models))
    result = rollout(cluster, PREDICTIVE_ANALYTICS, bad)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "prediction_shift" in index(state, PREDICTIVE_ANALYTICS)["versions"][bad]["rejected_reason"]
    assert isvc(standin, f"{PREDICTIVE_ANALYTICS}-candidate") is None
    after = isvc(standin, PREDICTIVE_ANALYTICS)
    assert after["spec"] == before["spec"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"]


def _constant_forecaster(models):
    """A forecaster that answers 200 OK with nonsense: it always predicts a full disk."""
    import numpy as np
    from sklearn.linear_model import Ridge

    model = models["forecaster"](1.0)
    broken = Ridge().fit(np.zeros((2, 5)), np.zeros((2, 5)))
    broken.coef_, broken.intercept_ = np.zeros_like(model.coef_), np.ones(5)
    return broken


def test_never_ready_times_out_quoting_conditions_then_rolls_back(cluster, models):
    state, standin, _ = cluster
    before = isvc(standin, ANOMALY_DETECTOR)
    broken = store_version(state, ANOMALY_DETECTOR, models["detector"](4))
    model_file = state / "store" / ANOMALY_DETECTOR / broken / "model.pkl"
    # A file that matches its recorded checksum but cannot be unpickled: the runtime never becomes ready.
    model_file.write_bytes(b"not a pickle")
    record = json.loads((model_file.parent / "version.json").read_text())
    import hashlib

    record["sha256"] = hashlib.sha256(b"not a pickle").hexdigest()
    (model_file.parent / "version.json").write_text(json.dumps(record))
    store = FilesystemStore(state / "store")
    store.update_index(ANOMALY_DETECTOR, lambda idx: idx["versions"][broken].update(sha256=record["sha256"]))
    result = rollout(cluster, ANOMALY_DETECTOR, broken, "--param", "ready_timeout_s=8")
    assert result.returncode == 1
    assert "was not Ready within 8 s" in result.stdout and "PredictorReady=False (RevisionFailed: container exited" in result.stdout
    entry = index(state, ANOMALY_DETECTOR)["versions"][broken]
    assert entry["status"] == "rejected" and "RevisionFailed" in entry["rejected_reason"]
    after = isvc(standin, ANOMALY_DETECTOR)
    assert after["spec"] == before["spec"]
    ready = {c["type"]: c["status"] for c in after["status"]["conditions"]}
    assert ready["Ready"] == "True" and after["status"]["observedGeneration"] == after["metadata"]["generation"]


def test_transient_500_and_409_are_survived(cluster, models):
    state, standin, _ = cluster
    version = store_version(state, ANOMALY_DETECTOR, models["detector"](5))
    for method, status in (("GET", 500), ("PATCH", 409), ("PATCH", 503), ("GET", 429)):
        standin.inject(method, status)
    result = rollout(cluster, ANOMALY_DETECTOR, version)
    assert result.returncode == 0, result.stdout[-3000:]
    assert standin.faults == [], "every injected fault was hit"
    assert index(state, ANOMALY_DETECTOR)["stable"] == version


def test_steps_never_watch_or_put_and_the_standin_refuses_both(cluster):
    _, standin, env = cluster
    assert standin.requests, "the tests above talked to the API"
    assert not [r for r in standin.requests if r[0] == "PUT" or "watch=t" in r[2].lower() or "watch=1" in r[2]]
    api = client.CustomObjectsApi(config.new_client_from_config(env["KUBECONFIG"]))
    with pytest.raises(ApiException) as put:
        api.replace_namespaced_custom_object("serving.kserve.io", "v1beta1", NAMESPACE, "inferenceservices", ANOMALY_DETECTOR, {})
    assert put.value.status == 403
    with pytest.raises(ApiException) as watch:
        api.list_namespaced_custom_object("serving.kserve.io", "v1beta1", NAMESPACE, "inferenceservices", watch=True)
    assert watch.value.status == 403


def strict(schema: dict) -> dict:
    """Return the schema with additionalProperties: false on objects that list properties and keep no unknown fields."""
    if isinstance(schema, dict):
        schema = {key: strict(value) for key, value in schema.items()}
        if schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [strict(item) for item in schema]
    return schema


@pytest.fixture(scope="module")
def crd_schemas():
    if not CRDS.is_dir():
        pytest.skip(f"KServe CRD schemas are not at {CRDS} (they ship beside the project in shared/reference, not with a clone)")
    schemas = {}
    for release in ("v0.20.0", "v0.15.0"):
        crd = yaml.safe_load((CRDS / release / "serving.kserve.io_inferenceservices.yaml").read_text())
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
        schema = strict(version["schema"]["openAPIV3Schema"])
        schema["properties"].pop("status", None)
        schema["properties"]["metadata"] = {"type": "object"}
        schemas[release] = jsonschema.Draft7Validator(schema)
    return schemas


def test_every_inference_service_written_matches_the_published_crds(cluster, crd_schemas):
    _, standin, _ = cluster
    assert len(standin.writes) > 10
    bodies = {json.dumps({key: value for key, value in written.items() if key != "status"}, sort_keys=True) for written in standin.writes}
    for release, validator in crd_schemas.items():
        for body in bodies:
            errors = [error.message for error in validator.iter_errors(json.loads(body))]
            assert errors == [], f"{release}: {errors}"


def test_schema_check_catches_a_misspelt_field(crd_schemas):
    manifest = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "x"},
                "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageURI": "pvc://p/x/v1"}}}}
    for validator in crd_schemas.values():
        assert any("storageURI" in error.message for error in validator.iter_errors(manifest))


def test_rbac_grants_exactly_the_verbs_the_steps_used(cluster):
    _, standin, _ = cluster
    role = next(yaml.safe_load_all((REPO / "manifests" / "pipeline-runner-rbac.yaml").read_text()))
    assert role["kind"] == "Role"
    (rule,) = role["rules"]
    assert rule["apiGroups"] == ["serving.kserve.io"] and rule["resources"] == ["inferenceservices"]
    verbs = {"POST": "create", "PATCH": "patch", "DELETE": "delete"}
    used = {verbs.get(method, "get" if path.rsplit("/", 1)[-1] != "inferenceservices" else "list")
            for method, path, query in standin.requests if method != "PUT" and "watch" not in query.lower()}
    assert set(rule["verbs"]) == used


def test_serving_runtime_manifest_matches_the_published_crds():
    if not CRDS.is_dir():
        pytest.skip(f"KServe CRD schemas are not at {CRDS}")
    runtime = yaml.safe_load((REPO / "manifests" / "sklearn-pvc-runtime.yaml").read_text())
    for release in ("v0.20.0", "v0.15.0"):
        crd = yaml.safe_load((CRDS / release / "serving.kserve.io_servingruntimes.yaml").read_text())
        schema = strict(next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")["schema"]["openAPIV3Schema"])
        schema["properties"]["metadata"] = {"type": "object"}
        errors = [error.message for error in jsonschema.Draft7Validator(schema).iter_errors(runtime)]
        assert errors == [], f"{release}: {errors}"


def test_a_hand_made_inference_service_is_adopted_as_stable_not_overwritten(cluster, models):
    state, standin, env = cluster
    name = "predictive-analytics"
    api = client.CustomObjectsApi(config.new_client_from_config(env["KUBECONFIG"]))
    api.delete_namespaced_custom_object("serving.kserve.io", "v1beta1", NAMESPACE, "inferenceservices", name)
    FilesystemStore(state / "store").update_index(name, lambda idx: idx.update(stable=None, candidate=None))
    hand_made = store_version(state, name, models["forecaster"](1.0))
    api.create_namespaced_custom_object("serving.kserve.io", "v1beta1", NAMESPACE, "inferenceservices", {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": name},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": f"pvc://model-storage-pvc/{name}/{hand_made}"}}}})
    new = store_version(state, name, models["forecaster"](2.0))
    result = rollout(cluster, name, new, "--param", "deployment_mode=Serverless")
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"canary {name} {new} at 10%: pass" in result.stdout, "the new version went through the canary"
    assert isvc(standin, name)["metadata"]["annotations"]["model-pipelines.io/stable-version"] == new
