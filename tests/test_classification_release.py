"""The release half of a model added with no code: the classification example (examples/disk-failure-predictor) is
served with probabilities, smoke-tested, compared by the canary and watched by the monitor through its spec's type
alone, and every serving target gives its predictor PREDICT_PROBA=true."""

import json
import re
import time

import joblib
import numpy as np
import pandas as pd
import pytest
import requests
from kubernetes import client, config
from prometheus_client.parser import text_string_to_metric_families
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from components.data.prometheus import PrometheusClient
from components.model.spec import SpecError, load_spec, spec_from_text, use_spec
from components.monitoring.monitor import MonitorSettings, live_prediction_stats, prediction_checks
from components.release.rollout import (
    CanarySpec, judge, predictions_follow_contract, prediction_shifts, probe_rows, secondary_canary_limits, smoke_test,
)
from components.runtime.model_server import served_spec
from components.serving.kserve import KServeOptions, KServeTarget
from components.serving.local import LocalTarget, http_get, log_tail, start_listening, stop_process
from components.store.filesystem import DEFAULT_PVC, FilesystemStore
from tests.conftest import REPO
from tests.k8s_standin import KubeStandIn
from tests.servers import PrometheusServer

SPEC_FILE = REPO / "examples" / "disk-failure-predictor" / "model.yaml"
NAME = "disk-failure-predictor"
HEALTHY, FAILING = [0.5, 500.0, 365.0], [0.95, 9000.0, 3000.0]  # the spec's smoke probe, and an old, busy, full disk
BUILT_IN_NAMES = re.compile(r"anomaly-detector|predictive-analytics|ANOMALY_DETECTOR|PREDICTIVE_ANALYTICS|MODEL_NAMES|SCHEMAS\b|"
                            r"ENGINE_(ANOMALY|FORECAST)_NAME|fallback_instance")


@pytest.fixture(scope="module")
def disk_model():
    """A stock-runtime-compatible pickle of the example: StandardScaler + LogisticRegression on its disks.csv (the spec's estimator)."""
    spec = load_spec(SPEC_FILE)
    data = pd.read_csv(spec.data_file)
    features = data[[item.name for item in spec.inputs]].to_numpy(dtype=float)
    model = Pipeline([("scaler", StandardScaler()), ("classifier", LogisticRegression(max_iter=1000))]).fit(features, data[spec.labels.column])
    return spec, model, features


def stored_version(root, model) -> tuple[FilesystemStore, str, str]:
    """Save ``model`` with the spec's text in its version record, as a save step does; return (store, version, checksum)."""
    root.mkdir(parents=True, exist_ok=True)
    store = FilesystemStore(root)
    path = root.parent / "model.pkl"
    joblib.dump(model, path)
    saved = store.save_version(NAME, path, {"run_name": "test", "spec": SPEC_FILE.read_text()})
    return store, saved.version, saved.sha256


@pytest.fixture(scope="module")
def served(tmp_path_factory, disk_model):
    """The example's version served as stable by the local target: (target, store, version, model URL)."""
    state = tmp_path_factory.mktemp("disks")
    store, version, checksum = stored_version(state / "store", disk_model[1])
    target = LocalTarget(state / "serving", state / "store")
    try:
        target.deploy(NAME, version, store.storage_uri(NAME, version), checksum, 90)
        yield target, store, version, target.endpoints(NAME).stable
    finally:
        target.stop_all()


def test_the_local_target_serves_probability_rows_and_the_smoke_test_passes(served, disk_model):
    target, store, version, url = served
    spec, model, features = disk_model
    answer = requests.post(f"{url}:predict", json={"instances": [HEALTHY, FAILING]}, timeout=10).json()
    assert np.allclose(answer["predictions"], model.predict_proba(np.array([HEALTHY, FAILING])), rtol=1e-9, atol=1e-12), answer
    sample = probe_rows(features, NAME, rows=20)
    assert sample[0].tolist() == HEALTHY, "the spec's smoke probe is sent first"
    report = smoke_test(target, store, NAME, version, sample, max_p95_latency_ms=1000)
    assert report.passed, report.markdown()
    assert ("contract types and shape", True, "rows of 2 probabilities summing to 1") in report.checks
    assert ("equals stored version offline", True, f"served predictions match {version}'s model.pkl on 21 instances") in report.checks
    refused = requests.post(f"{url}:predict", json={"instances": [[55.0, 500.0, 365.0]]}, timeout=10)
    assert refused.status_code == 400 and "(disk_utilization) is outside 0-1" in refused.json()["error"], refused.text


def test_without_predict_proba_the_same_version_answers_classes_which_the_smoke_check_refuses(served):
    target, store, version, _ = served
    model_dir = store.version_dir(NAME, version)
    pid, port = start_listening(
        lambda port: target.launcher.spawn(["--name", NAME, "--version", version, "--model-dir", str(model_dir), "--sha256",
                                            store.read_index(NAME)["versions"][version]["sha256"], "--port", str(port)], "no-proba"),
        lambda: log_tail(target.home / "logs" / "no-proba.log"), "the runtime without PREDICT_PROBA",
        lambda port: http_get(f"http://127.0.0.1:{port}/v1/models/{NAME}")[0] == 200, 60)
    try:
        answer = requests.post(f"http://127.0.0.1:{port}/v1/models/{NAME}:predict", json={"instances": [HEALTHY, FAILING]}, timeout=10).json()
    finally:
        stop_process(pid)
    assert answer["predictions"] == [0, 1]
    assert predictions_follow_contract(NAME, answer["predictions"], 2) == (False, "not rows of 2 probabilities summing to 1: [0]")
    for wrong in ([[0.2, 0.7]], [[0.5, 0.5, 0.0]], [[1.2, -0.2]], [[0.5, float("nan")]], [[True, False]]):
        assert not predictions_follow_contract(NAME, wrong, 1)[0], wrong
    assert predictions_follow_contract(NAME, [[0.25, 0.75]], 1) == (True, "rows of 2 probabilities summing to 1")


def test_the_runtime_counts_classes_and_alerts_where_the_monitor_reads_them(served, tmp_path):
    target, store, version, url = served
    server = PrometheusServer(tmp_path / "prometheus", file_sd=target.home / "prometheus-targets.json").start()
    try:
        prometheus, deadline, stats = PrometheusClient(server.url), time.monotonic() + 60, {"alerts": 0.0, "answered": 0.0}
        while time.monotonic() < deadline and not (stats["alerts"] > 0 and stats["answered"] > stats["alerts"]):
            requests.post(f"{url}:predict", json={"instances": [HEALTHY, HEALTHY, FAILING]}, timeout=10)
            time.sleep(0.5)
            stats = live_prediction_stats(prometheus, NAME, version, 5, pd.Timestamp.now(tz="UTC").to_pydatetime())
    finally:
        server.stop()
    assert stats["alerts"] > 0 and stats["answered"] > stats["alerts"], stats
    text = requests.get(url.split("/v1/")[0] + "/metrics", timeout=5).text
    outcomes = {sample.labels["outcome"] for family in text_string_to_metric_families(text) for sample in family.samples
                if sample.name == "model_predictions_total"}
    assert outcomes == {"healthy", "failing"}, "outcomes are the spec's class names"
    settings = MonitorSettings(min_predictions=3)
    usual, = prediction_checks(NAME, {"alert_rate": 0.4}, pd.DataFrame(), stats, settings)
    assert usual.measured and not usual.drifted and usual.name == "alert rate", usual
    alarming, = prediction_checks(NAME, {"alert_rate": 0.05}, pd.DataFrame(), stats, settings)
    assert alarming.drifted and "(limit 0.150)" in alarming.detail, "the limit is the spec's alert_rate_factor (3) x validation's rate"


def test_the_canary_compares_classes_by_flip_rate_and_the_alert_probability_by_its_shift(disk_model):
    stable = [[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.1, 0.9]]
    candidate = [[0.7, 0.3], [0.4, 0.6], [0.4, 0.6], [0.2, 0.8]]
    shifts = prediction_shifts(NAME, candidate, stable)
    assert shifts == pytest.approx({"prediction_shift": 0.25, "probability_shift": 0.175}), "1 of 4 classes flips; |dp(failing)| 0.2, 0.4, 0, 0.1"
    assert prediction_shifts(NAME, [], []) == {"prediction_shift": None, "probability_shift": None}
    assert prediction_shifts(NAME, [[0.5, 0.5]], [[1.0]]) == {"prediction_shift": np.inf, "probability_shift": np.inf}
    limits = secondary_canary_limits(disk_model[0])
    assert limits == {"probability_shift": 0.1}, "the spec's second limit; the first is the run's max_prediction_shift"
    steady = {"error_rate": 0.0, "p95_latency_ms": 5.0}
    assert judge({**steady, **shifts}, CanarySpec(max_prediction_shift=0.3), limits) == ("fail", "probability_shift 0.175 > 0.1")
    assert judge({**steady, **shifts}, CanarySpec(max_prediction_shift=0.2), limits)[1] == "prediction_shift 0.25 > 0.2; probability_shift 0.175 > 0.1"
    without_probabilities = re.sub(r"\n  probabilities: true.*?\nestimator:", "\nestimator:", SPEC_FILE.read_text(), flags=re.S)
    labels_only = use_spec(spec_from_text(without_probabilities.replace(f"name: {NAME}", "name: disk-failure-labels"), "labels-only"))
    assert labels_only.canary.compare == "label_flip_rate"
    assert prediction_shifts("disk-failure-labels", [0, 1, 1, 0], [0, 0, 1, 1]) == {"prediction_shift": 0.5}
    assert predictions_follow_contract("disk-failure-labels", [0, 1], 2) == (True, "JSON integers 0/1")
    assert predictions_follow_contract("disk-failure-labels", [0, 2, 1.0], 3) == (False, "not JSON integers 0/1: [2, 1.0]")


def test_the_built_in_comparisons_are_todays():
    assert prediction_shifts("anomaly-detector", [-1, 1, 1, 1], [1, 1, 1, 1]) == {"prediction_shift": 0.25}
    assert prediction_shifts("predictive-analytics", [[0.5] * 5], [[0.4] * 5]) == pytest.approx({"prediction_shift": 0.1})
    assert predictions_follow_contract("anomaly-detector", [1, -1], 2) == (True, "JSON integers -1/1")
    assert predictions_follow_contract("predictive-analytics", [[0.5] * 5], 1) == (True, "rows of 5 finite numbers within the output ranges")
    assert not predictions_follow_contract("predictive-analytics", [[0.5] * 4 + [1.5]], 1)[0], "a forecast beyond its output's range"


def test_the_model_server_reads_the_spec_from_the_version_it_serves(tmp_path):
    renamed = SPEC_FILE.read_text().replace(f"name: {NAME}", "name: my-disks")
    (tmp_path / "version.json").write_text(json.dumps({"version": "v1", "spec": renamed}))
    spec = served_spec("my-disks", tmp_path)
    assert spec.name == "my-disks" and spec.outputs.probabilities and spec.n_features == 3
    with pytest.raises(SpecError, match="holds a version of my-disks, not of other; serve it as --name my-disks"):
        served_spec("other", tmp_path)
    (tmp_path / "version.json").write_text(json.dumps({"version": "v1"}))
    with pytest.raises(SpecError, match="unknown-disks is not a known model and .*version.json carries no spec.*serve a version saved with its spec"):
        served_spec("unknown-disks", tmp_path)


def test_the_inference_service_of_a_probabilities_spec_runs_its_predictors_with_predict_proba(tmp_path, disk_model, monkeypatch):
    standin = KubeStandIn(tmp_path / "pvcs", tmp_path, kserve="0.20").start()
    for name, value in standin.client_env(tmp_path / "kubeconfig").items():  # the target reaches the cluster as a step does
        monkeypatch.setenv(name, value)
    try:
        store, first, checksum = stored_version(tmp_path / "pvcs" / DEFAULT_PVC, disk_model[1])
        _, second, second_checksum = stored_version(tmp_path / "pvcs" / DEFAULT_PVC, Pipeline(disk_model[1].steps))
        api = client.CustomObjectsApi(config.new_client_from_config(str(standin.write_kubeconfig(tmp_path / "kubeconfig"))))
        target = KServeTarget(KServeOptions(namespace="disks", rollout_strategy="standard-canary"), api=api)
        target.deploy(NAME, first, store.storage_uri(NAME, first), checksum, 60)
        target.deploy(NAME, second, store.storage_uri(NAME, second), second_checksum, 60)
        isvc = standin.get("disks", NAME)
        environments = [isvc["spec"]["predictor"]["model"]["env"], isvc["spec"]["canary"][0]["predictor"]["model"]["env"]]
        assert all({"name": "PREDICT_PROBA", "value": "true"} in env for env in environments), environments
        proxy = {"http": standin.network_proxy}
        endpoints = target.endpoints(NAME)
        for endpoint in (endpoints.stable, endpoints.candidate):
            answer = requests.post(f"{endpoint}:predict", json={"instances": [FAILING]}, proxies=proxy, timeout=10).json()
            assert len(answer["predictions"][0]) == 2 and answer["predictions"][0][1] > 0.7, answer
        target.promote(NAME, 60)
        assert {"name": "PREDICT_PROBA", "value": "true"} in standin.get("disks", NAME)["spec"]["predictor"]["model"]["env"]
    finally:
        standin.stop()


def test_no_release_monitoring_runtime_or_serving_module_branches_on_a_built_in_model():
    packages = [REPO / "components" / name for name in ("release", "monitoring", "runtime", "serving")]
    named = [f"{path.relative_to(REPO)}:{number}: {line.strip()}" for package in packages for path in sorted(package.rglob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), start=1) if BUILT_IN_NAMES.search(line)]
    assert named == [], "the spec's type brings the behaviour:\n" + "\n".join(named)
