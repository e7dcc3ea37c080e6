"""Argo CD's health of an InferenceService, as the hub stand-in evaluates it: the real Lua scripts run by the real Lua.

Upstream's health.lua must give every result its own test cases (health_test.yaml) expect, which shows the evaluator is
faithful; the project's customization must agree with it on those cases and differ where a version may not run yet.
Its observedGeneration check (on only as manifests/gitops/health-observed-generation renders it) is shown against the
KServe stand-in counting observedGeneration both ways: as KServe up to 0.20 does and as kserve/kserve PR 6096 would.
"""

import copy
import time
import types

import joblib
import pytest
import yaml
from sklearn.dummy import DummyClassifier

from components.serving.gitops.fleet import Application

from components.serving.gitops.target import NO_VERSION, VersionProbe, served_version
from tests.argo_hub import HEALTH_CHECKS, ArgoHub, health_script, lua_health
from tests.k8s_standin import MODE_KEY, KubeStandIn

UPSTREAM = HEALTH_CHECKS["stock"].parent


def upstream_cases() -> list[tuple[str, dict, dict]]:
    """Return (input file, object, expected health) for every case of Argo CD's health_test.yaml."""
    if not UPSTREAM.is_dir():
        pytest.skip(f"Argo CD's InferenceService health check is not at {UPSTREAM} (it ships beside the project in shared/reference)")
    cases = yaml.safe_load((UPSTREAM / "health_test.yaml").read_text())["tests"]
    return [(case["inputPath"], yaml.safe_load((UPSTREAM / case["inputPath"]).read_text()), case["healthStatus"]) for case in cases]


def stock(obj: dict) -> dict:
    """Return the health Argo CD's own check (v2.8 and later) gives ``obj``."""
    return lua_health(HEALTH_CHECKS["stock"].read_text(), obj, standard_libraries=True)


def customized(obj: dict) -> dict:
    """Return the health the project's check (manifests/gitops/health) gives ``obj``, run as an argocd-cm customization."""
    return lua_health(health_script("customized"), obj, standard_libraries=False)


def with_generation_check(obj: dict) -> dict:
    """Return the health the project's check with its observedGeneration check on (manifests/gitops/health-observed-generation) gives ``obj``."""
    return lua_health(health_script("observed-generation"), obj, standard_libraries=False)


def raw_mode(generation: int, observed: int, **status) -> dict:
    """Return a Standard (raw) mode InferenceService whose every condition is True, at ``generation``."""
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": "anomaly-detector", "namespace": "models", "generation": generation},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}}}},
            "status": {"observedGeneration": observed, "deploymentMode": "Standard",
                       "conditions": [{"type": kind, "status": "True"} for kind in ("IngressReady", "PredictorReady", "Ready")],
                       "modelStatus": {"transitionStatus": "UpToDate"}, **status}}


def test_upstream_health_lua_run_by_the_stand_in_gives_every_result_its_test_cases_expect():
    cases = upstream_cases()
    assert len(cases) == 11
    for path, obj, expected in cases:
        assert stock(obj) == expected, path


def test_the_projects_check_agrees_with_upstream_on_every_upstream_case():
    for path, obj, expected in upstream_cases():
        assert customized(obj) == expected, path
        with_generation = copy.deepcopy(obj)
        with_generation["metadata"]["generation"] = 4
        with_generation.setdefault("status", {})["observedGeneration"] = 4
        assert customized(with_generation) == with_generation_check(with_generation) == expected, f"{path} at an observed generation"


def test_the_observed_generation_check_holds_a_generation_not_yet_observed_progressing_and_the_default_does_not():
    """Only the check rendered by health-observed-generation requires status.observedGeneration == metadata.generation;
    KServe <= 0.20 copies a child's counter (kserve/kserve issue 6081): behind after a canary traffic step, ahead after an
    autoscaler's change, and the default check must be held by neither."""
    for observed in (2, 9, None):
        drifted = raw_mode(generation=3, observed=observed)
        assert stock(drifted) == customized(drifted) == {"status": "Healthy", "message": "InferenceService is healthy."}, observed
        assert with_generation_check(drifted) == {"status": "Progressing", "message": (
            f"waiting for the controller to observe generation 3 (status is for generation {'nil' if observed is None else observed})")}
    assert with_generation_check(raw_mode(generation=3, observed=3)) == {"status": "Healthy", "message": "InferenceService is healthy."}
    failed_before = raw_mode(generation=3, observed=2, modelStatus={"transitionStatus": "BlockedByFailedLoad"})
    assert with_generation_check(failed_before)["status"] == "Progressing", "a stale failure is not the applied spec's"
    assert customized(failed_before)["status"] == "Degraded"


def canary_step_healths(tmp_path, observed_generation: str) -> list[tuple[int, int, str, str]]:
    """Serve anomaly-detector with a dark canary on a KServe 0.20 stand-in counting observedGeneration as
    ``observed_generation`` says, then step the canary to 10 %; return, once KServe reported each state, (generation,
    observedGeneration, the default check's health, the observed-generation check's health)."""
    for version in ("v1", "v2"):
        (tmp_path / "pvcs" / "models" / version).mkdir(parents=True)
        joblib.dump(DummyClassifier().fit([[0.0], [1.0]], [0, 1]), tmp_path / "pvcs" / "models" / version / "model.pkl")
    standin = KubeStandIn(tmp_path / "pvcs", tmp_path, kserve="0.20", observed_generation=observed_generation).start()
    entry = {"predictor": {"name": "v2", "model": {"storageUri": "pvc://models/v2"}}, "trafficPercent": 0}
    body = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": "anomaly-detector", "annotations": {MODE_KEY: "Standard"}},
            "spec": {"predictor": {"name": "v1", "model": {"modelFormat": {"name": "sklearn"}, "storageUri": "pvc://models/v1"}}, "canary": [entry]}}
    healths = []
    try:
        assert standin.handle("POST", "models", None, body)[0] == 201
        for percent in (0, 10):
            if percent:
                assert standin.handle("PATCH", "models", "anomaly-detector", {"spec": {"canary": [{**entry, "trafficPercent": percent}]}})[0] == 200
            deadline = time.monotonic() + 60
            while [(c["trafficPercent"], c["ready"]) for c in (standin.get("models", "anomaly-detector").get("status") or {}).get("canaryStatuses", [])] != [(percent, True)]:
                assert time.monotonic() < deadline, standin.get("models", "anomaly-detector")
                time.sleep(0.05)
            isvc = standin.get("models", "anomaly-detector")
            healths.append((isvc["metadata"]["generation"], isvc["status"]["observedGeneration"], customized(isvc)["status"],
                            with_generation_check(isvc)["status"]))
    finally:
        standin.stop()
    return healths


@pytest.mark.parametrize("observed_generation, expected", [
    ("deployment", [(1, 1, "Healthy", "Healthy"), (2, 1, "Healthy", "Progressing")]),  # KServe <= 0.20: the check would stall
    ("inferenceservice", [(1, 1, "Healthy", "Healthy"), (2, 2, "Healthy", "Healthy")]),  # kserve/kserve PR 6096
])
def test_a_canary_traffic_step_stalls_the_observed_generation_check_on_kserve_0_20_only(tmp_path, observed_generation, expected):
    """A Standard-mode canary step changes the InferenceService but not the stable predictor's Deployment, whose counter
    KServe 0.20 copies: the observed-generation check would hold the step Progressing for good, so the default omits it."""
    assert canary_step_healths(tmp_path, observed_generation) == expected


def test_the_projects_check_waits_for_every_canary():
    canary = raw_mode(generation=2, observed=2, canaryStatuses=[{"name": "v7", "ready": False, "trafficPercent": 10}])
    assert stock(canary)["status"] == "Healthy"
    assert customized(canary) == {"status": "Progressing", "message": "canary v7 is not ready (trafficPercent 10)"}
    canary["status"]["canaryStatuses"][0]["ready"] = True
    assert customized(canary) == {"status": "Healthy", "message": "InferenceService is healthy."}


def test_a_raw_mode_rolling_update_stuck_pending_reads_healthy_to_every_check():
    """KServe 0.20 takes PredictorReady from the Deployment's Available condition, True while old pods serve, and its
    observedGeneration from the Deployment's, which observes the new template at once (as would the InferenceService's own
    count): no health check can see the Pending pod, so the wave gate reads the version."""
    stuck = raw_mode(generation=6, observed=6)
    assert stock(stuck)["status"] == customized(stuck)["status"] == with_generation_check(stuck)["status"] == "Healthy"


def test_the_lua_sandbox_has_no_os_io_or_python_and_a_customization_no_standard_library():
    probe = 'return {status = (os == nil and io == nil and debug == nil and require == nil and python == nil) and "Healthy" or "Degraded", message = type(string)}'
    assert lua_health(probe, {}, standard_libraries=False) == {"status": "Healthy", "message": "nil"}
    assert lua_health(probe, {}, standard_libraries=True) == {"status": "Healthy", "message": "table"}
    escaped = lua_health('os.execute("touch /tmp/escaped") return {status = "Healthy"}', {}, standard_libraries=True)
    assert escaped["status"] == "Unknown" and "os" in escaped["message"]
    assert lua_health('return {status = "Fine"}', {}, standard_libraries=False) == {"status": "Unknown", "message": "Lua returned an invalid health status"}
    assert lua_health('return "Healthy"', {}, standard_libraries=False)["status"] == "Unknown"


def test_an_applications_line_quotes_each_unhealthy_resources_health_message():
    document = {"metadata": {"name": "models-spoke-3", "labels": {"model-pipelines.io/cluster": "spoke-3", "model-pipelines.io/wave": "fleet"}},
                "spec": {"destination": {"namespace": "models"}, "source": {"path": "fleet/models/waves/fleet"}},
                "status": {"sync": {"status": "Synced", "revision": "abcdef0123"}, "health": {"status": "Progressing"},
                           "resources": [{"kind": "InferenceService", "name": "a", "health": {"status": "Healthy", "message": "InferenceService is healthy."}},
                                         {"kind": "InferenceService", "name": "b", "health": {"status": "Progressing", "message": "canary v7 is not ready"}},
                                         {"kind": "ConfigMap", "name": "c"}]}}
    assert Application.parse(document).line() == (
        "Application models-spoke-3 (cluster spoke-3): Synced at abcdef0, Progressing (InferenceService b: Progressing, canary v7 is not ready)")


def test_the_wave_gate_reads_the_served_version_from_v1_metadata_and_names_what_each_cluster_serves():
    assert served_version(200, b'{"name": "anomaly-detector", "version": "v3", "ready": true}') == "v3"  # the project's runtime
    assert served_version(200, b'{"name": "anomaly-detector", "ready": true}') == NO_VERSION  # stock KServe: no version
    assert served_version(502, b"") is None and served_version(200, b"<html>") is None and served_version(0, b"") is None
    probe = VersionProbe("spoke-3", "main URL", "http://anomaly-detector.models.spoke-3.fleet.test/v1/models/anomaly-detector",
                         frozenset({"v5"}), "v4")
    assert probe.problem() == "spoke-3 serves v4 on its main URL, not v5"
    assert VersionProbe("spoke-3", "main URL", probe.url, frozenset({"v4", "v5"}), "v4").problem() == ""
    assert VersionProbe("spoke-3", "main URL", probe.url, frozenset({"v5"}), NO_VERSION).problem() == "", "stock runtime: Argo CD's view alone"
    assert VersionProbe("spoke-3", "stable predictor", probe.url, frozenset({"v5"}), None).problem() == (
        f"spoke-3: stable predictor did not answer GET {probe.url}")


def test_the_hub_plays_argo_cd_with_the_projects_check_its_own_or_none_before_2_8():
    hub = types.SimpleNamespace()
    stuck_canary = raw_mode(generation=2, observed=2, canaryStatuses=[{"name": "v7", "ready": False, "trafficPercent": 10}])
    not_observed = raw_mode(generation=3, observed=2)
    verdicts = {}
    for mode in ("customized", "observed-generation", "stock", "none"):
        ArgoHub.use_health_check(hub, mode)
        verdicts[mode] = (ArgoHub.resource_health(hub, stuck_canary), ArgoHub.resource_health(hub, not_observed))
    healthy, waiting = {"status": "Healthy", "message": "InferenceService is healthy."}, {"status": "Progressing", "message": "canary v7 is not ready (trafficPercent 10)"}
    assert verdicts == {"customized": (waiting, healthy), "stock": (healthy, healthy), "none": (None, None), "observed-generation": (
        waiting, {"status": "Progressing", "message": "waiting for the controller to observe generation 3 (status is for generation 2)"})}
    with pytest.raises(ValueError, match=r"health_check must be one of \['customized', 'none', 'observed-generation', 'stock'\]; got 'argo-2.7'"):
        ArgoHub.use_health_check(hub, "argo-2.7")
