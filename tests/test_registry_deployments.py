"""Deployments linked to the model registry: the InferenceServices the project writes carry the registry's labels for the version
their spec serves, and the registry's InferenceService controller (played by the Kubernetes stand-in, tests/registry_controller.py)
turns them into the registry's deployment records, all over the registry's published API (tests/registry_standin.py)."""

from __future__ import annotations

import copy
import time

import pytest
import yaml

from components.model.contract import ANOMALY_DETECTOR
from components.kfp.workflow import require_registered
from components.registry.client import RegistryClient, RegistryError
from components.model.spec import spec_for
from components.registry.labels import RegistryLinks, cleared_labels, deploy_labels, label_keys
from components.registry.sync import registered_model
from components.serving.gitops.fleet import GitopsOptions
from components.serving.gitops.target import GitopsTarget, WaveOverlays, base_file
from components.serving.kserve import KServeOptions
from pipelines.platforms import PLATFORMS, profile_folder
from tests.conftest import REPO
from tests.k8s_standin import KubeStandIn
from tests.registry_controller import RegistryAccess
from tests.test_gitops_target import NAMESPACE, PATH, fleet_repo  # noqa: F401 (fleet_repo: the Git server, hub and runtime fixture)
from tests.test_kserve import CRDS, Cluster, models, new_project  # noqa: F401 (models: the module's trained models fixture)
from tests.test_registry import TOKEN, registry, settings  # noqa: F401 (registry: the stand-in fixture)

MODEL = ANOMALY_DETECTOR
ODH = "modelregistry.opendatahub.io"


@pytest.fixture(autouse=True)
def every_call_matches_the_api(registry):  # noqa: F811
    """Fail any test during which a request or a response did not match model-registry.openapi.yaml."""
    yield
    assert registry.errors == [], registry.errors


def eventually(read, wanted, timeout_s: float = 15.0):
    """Return ``read()`` once ``wanted`` holds for it (the controller acts after the write), else fail showing the last read."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if wanted(value) or time.monotonic() > deadline:
            assert wanted(value), value
            return value
        time.sleep(0.05)


def plain(properties: dict) -> dict:
    """Return typed customProperties as plain values."""
    return {key: next(value for name, value in typed.items() if name != "metadataType") for key, typed in properties.items()}


@pytest.fixture(scope="module")
def rollouts(registry, models, tmp_path_factory):  # noqa: F811
    """On a RawDeployment cluster whose stand-in runs the registry's InferenceService controller: v1 rolled out (first deployment),
    v2 promoted, then a failing v3 rolled back, each with the registry configured (OpenShift AI labels, candidate-isvc).
    Yield the project and the registry's records and the InferenceServices as each rollout left them."""
    work = tmp_path_factory.mktemp("linked")
    crd_file = CRDS / "rhoai-3.4" / "serving.kserve.io_inferenceservices.yaml" if CRDS.is_dir() else None
    standin = KubeStandIn(work / "pvcs", work, kserve="0.15", crd_file=crd_file,
                          registry=RegistryAccess(registry.url, TOKEN, str(registry.cert), ODH)).start()
    cluster = Cluster(standin, {**standin.client_env(standin.write_kubeconfig(work / "kubeconfig")), "MODEL_REGISTRY_TOKEN": TOKEN}, work)
    project = new_project(cluster)
    extra = ("--param", "rollout_strategy=candidate-isvc", *settings(registry.url, registry.cert, "--param", "store.registry_labels=opendatahub"))
    seen = {}

    def linked(name: str) -> bool:
        isvc = project.isvc(name)
        records = registry.deployments(name)
        return bool(isvc and isvc.get("status", {}).get("url") and records) and all(
            plain(record.get("customProperties", {})).get("url") == isvc["status"]["url"] for record in records if record["desiredState"] == "DEPLOYED")

    try:
        for step, model in (("first", models["detector"](1)), ("promoted", models["detector"](2)), ("rejected", models["alarmist"](0))):
            version = project.store_version(MODEL, model)
            result = project.rollout(MODEL, version, *extra)
            eventually(lambda: linked(MODEL), bool)
            eventually(lambda: [record["desiredState"] for record in registry.deployments(f"{MODEL}-candidate")],
                       lambda states: "DEPLOYED" not in states)
            seen[step] = (version, result, copy.deepcopy(project.isvc(MODEL)), copy.deepcopy(registry.inference_services))
        yield project, seen
    finally:
        standin.stop()


def test_after_a_promotion_the_registry_shows_the_version_live_stable_and_deployed_at_its_url(rollouts, registry):  # noqa: F811
    project, seen = rollouts
    (v1, first, _, _), (v2, promoted, isvc, records) = seen["first"], seen["promoted"]
    assert (first.returncode, promoted.returncode) == (0, 0), promoted.stdout[-3000:]
    version = registry.version(MODEL, v2)
    labels = isvc["metadata"]["labels"]
    assert (labels[f"{ODH}/registered-model-id"], labels[f"{ODH}/model-version-id"], labels[f"{ODH}/name"]) == \
        (version["registeredModelId"], version["id"], "team-registry"), "the InferenceService's labels name the promoted version"
    main = [record for record in records.values() if record["name"] == f"{MODEL}/{isvc['metadata']['uid']}"]
    assert len(main) == 1, "one record per InferenceService, kept across versions"
    (record,) = main
    assert labels[f"{ODH}/inference-service-id"] == record["id"], "the controller wrote its record's id back"
    assert (record["desiredState"], record["modelVersionId"], record["registeredModelId"]) == ("DEPLOYED", version["id"], version["registeredModelId"])
    assert plain(record["customProperties"])["url"] == isvc["status"]["url"]
    environment = registry.serving_environments[record["servingEnvironmentId"]]
    assert environment["name"] == project.namespace
    properties = plain(version["customProperties"])
    assert (version["state"], properties["status"]) == ("LIVE", "stable")
    candidate = [record for record in records.values() if record["name"].startswith(f"{MODEL}-candidate/")]
    assert [(record["modelVersionId"], record["desiredState"]) for record in candidate] == [(version["id"], "UNDEPLOYED")], \
        "the candidate's own InferenceService named v2 and was marked UNDEPLOYED when promotion deleted it"
    assert plain(registry.version(MODEL, v1)["customProperties"])["status"] == "retired"


def test_after_a_rejection_the_version_is_archived_with_its_reason_and_stable_stays_deployed(rollouts, registry):  # noqa: F811
    project, seen = rollouts
    v2 = seen["promoted"][0]
    v3, rejected, isvc, records = seen["rejected"]
    assert rejected.returncode == 3, rejected.stdout[-3000:]
    version = registry.version(MODEL, v3)
    properties = plain(version["customProperties"])
    reason = project.index(MODEL)["versions"][v3]["rejected_reason"]
    assert (version["state"], properties["status"], properties["status_reason"]) == ("ARCHIVED", "rejected", reason) and reason
    stable = registry.version(MODEL, v2)
    labels = isvc["metadata"]["labels"]
    assert labels[f"{ODH}/model-version-id"] == stable["id"], "the main InferenceService still names stable"
    main = records[labels[f"{ODH}/inference-service-id"]]
    assert (main["desiredState"], main["modelVersionId"]) == ("DEPLOYED", stable["id"])
    candidates = {record["modelVersionId"]: record["desiredState"] for record in records.values() if record["name"].startswith(f"{MODEL}-candidate/")}
    assert candidates == {stable["id"]: "UNDEPLOYED", version["id"]: "UNDEPLOYED"}, "the rejected candidate's record is UNDEPLOYED"
    assert project.isvc(f"{MODEL}-candidate") is None


def test_each_profile_family_writes_its_own_label_names_and_compiles_them_as_its_default():
    assert label_keys("opendatahub") == (f"{ODH}/registered-model-id", f"{ODH}/model-version-id", f"{ODH}/name")
    assert deploy_labels("kubeflow", "", "4", "7") == {"modelregistry.kubeflow.org/registered-model-id": "4",
                                                        "modelregistry.kubeflow.org/model-version-id": "7", "modelregistry.kubeflow.org/name": None}
    assert {name: platform.registry_labels for name, platform in PLATFORMS.items() if name in ("rhoai-2.16", "rhoai-3.5", "kfp-2.4", "kfp-2.16")} == \
        {"rhoai-2.16": "opendatahub", "rhoai-3.5": "opendatahub", "kfp-2.4": "kubeflow", "kfp-2.16": "kubeflow"}

    def compiled_default(folder: str) -> str:
        document = next(yaml.safe_load_all((REPO / "compiled" / folder / "model-rollout.yaml").read_text()))
        return document["root"]["inputDefinitions"]["parameters"]["store"]["defaultValue"]["registry_labels"]

    assert compiled_default(".") == "kubeflow"
    assert compiled_default(profile_folder(PLATFORMS["rhoai-3.5"], "pvc")) == "opendatahub"
    assert compiled_default(profile_folder(PLATFORMS["rhoai-2.25"], "s3")) == "opendatahub"


def test_with_the_registry_unreachable_a_deploy_goes_on_without_the_projects_labels_and_says_so_unless_it_is_required(capsys):
    links = RegistryLinks(None, MODEL, "opendatahub", "team-registry", unavailable="cannot reach the model registry at https://127.0.0.1:9")
    assert links.labels_for("v4") == cleared_labels("opendatahub"), "no label names a version the spec may no longer serve"
    assert "registry: deploy labels of anomaly-detector v4 NOT written (cannot reach the model registry at https://127.0.0.1:9)" in capsys.readouterr().out
    with pytest.raises(RegistryError, match=r"registry_required=true, so anomaly-detector v4 is not deployed unlinked from the registry; nothing was"):
        require_registered(links, "v4")


@pytest.mark.parametrize("strategy", ["candidate-isvc", "standard-canary"])
def test_the_gitops_overlays_carry_the_labels_of_the_version_their_spec_serves(strategy, registry, fleet_repo, tmp_path):  # noqa: F811
    """A candidate InferenceService carries its own version's labels; an in-place canary (one InferenceService, the candidate an
    entry of spec.canary) keeps stable's, which its spec.predictor serves, until promotion moves them to the candidate's."""
    client = RegistryClient(registry.url, str(registry.cert), token=TOKEN)
    model = registered_model(client, MODEL, spec_for(MODEL).description, spec_for(MODEL).owner)
    ids = {version: (client.find_model_version(version, model["id"]) or client.create_model_version({"name": version, "registeredModelId": model["id"]}))["id"]
           for version in ("v1", "v2")}
    repo, hub, runtime = fleet_repo
    links = RegistryLinks(client, MODEL, "kubeflow", "team-registry")
    options = KServeOptions(NAMESPACE, endpoint=runtime.url + "/{cluster}/{namespace}/{service}", rollout_strategy=strategy,
                            run_name="run-8", registry=links)
    target = GitopsTarget(options, GitopsOptions(repo, "main", PATH, wave_timeout_s=20), hub_api=hub, workdir=tmp_path / "work")
    target.deploy(MODEL, "v1", f"pvc://models/{MODEL}/v1", "1" * 64, 20)
    target.deploy(MODEL, "v2", f"pvc://models/{MODEL}/v2", "2" * 64, 20)

    def labels(document: dict | None) -> dict:
        found = (document or {}).get("metadata", {}).get("labels", {})
        return {key.rsplit("/", 1)[1]: value for key, value in found.items() if key.startswith("modelregistry.kubeflow.org/")}

    expected = {version: {"registered-model-id": model["id"], "model-version-id": ids[version], "name": "team-registry"} for version in ids}
    first, later = (WaveOverlays(target, wave) for wave in target.waves)
    assert labels(yaml.safe_load(target.repo.read(base_file(MODEL)))) == expected["v1"]
    assert labels(first.document(MODEL)) == expected["v1"], "stable's spec: stable's labels"
    if strategy == "candidate-isvc":
        assert labels(first.document(f"{MODEL}-candidate")) == expected["v2"], "the candidate's own InferenceService: its labels"
    else:
        assert [entry["predictor"]["name"] for entry in first.document(MODEL)["spec"]["canary"]] == ["v2"], "v2 is a canary entry"
    target.promote(MODEL, 20)
    assert labels(first.document(MODEL)) == labels(later.document(MODEL)) == expected["v2"], "every wave after promotion"
    assert first.document(f"{MODEL}-candidate") is None
