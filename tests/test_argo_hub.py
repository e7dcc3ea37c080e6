"""The hub stand-in's controllers, driven one pass at a time with a fake clock (``ArgoHub.reconcile(now)``, no threads):
ACM's taint/toleration rule feeding the Placements' decisions, the ApplicationSet controller deleting an Application whose
cluster left them (keeping or, with the resources finalizer, deleting its resources), and Argo CD's automated sync that
retries a failed sync only through the Application's ``syncPolicy.retry``.
"""

import math
import subprocess

import pytest
import yaml

from components.serving.gitops.fleet import Application
from tests.argo_hub import ArgoHub, placement_decides, placement_decisions, retry_delay
from tests.kustomize import MANIFESTS, rendered

UNREACHABLE = "cluster.open-cluster-management.io/unreachable"
SPOKES = {"spoke-1": {"model-pipelines.io/serving": "true", "model-pipelines.io/wave": "canary"}, "spoke-2": {"model-pipelines.io/serving": "true"}}
MODEL = "anomaly-detector"
NOW = 1_800_000_000.0  # a fake wall clock, epoch seconds
ISVC = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": MODEL},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": "pvc://models/anomaly-detector/v1"}}}}


def taint(added: float, key: str = UNREACHABLE, effect: str = "NoSelect") -> dict:
    """Return a ManagedCluster taint as ACM's registration controller writes it."""
    from datetime import datetime, timezone

    return {"key": key, "effect": effect, "timeAdded": datetime.fromtimestamp(added, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def test_a_tolerated_taint_keeps_the_cluster_until_time_added_plus_toleration_seconds_then_the_placement_drops_it():
    objects = rendered(MANIFESTS / "gitops")
    fleet = next(item for item in objects if item["kind"] == "Placement" and item["metadata"]["name"] == "model-serving-fleet")
    labels, tainted = SPOKES["spoke-2"], [taint(NOW - 3000)]
    assert placement_decides(fleet, labels, [], NOW)
    assert placement_decides(fleet, labels, tainted, NOW + 599), "tolerated for 3600 s from timeAdded"
    assert not placement_decides(fleet, labels, tainted, NOW + 600), "after timeAdded + tolerationSeconds it is dropped"
    untolerant = {**fleet, "spec": {key: value for key, value in fleet["spec"].items() if key != "tolerations"}}
    assert not placement_decides(untolerant, labels, tainted, NOW), "no toleration: dropped at once"
    assert placement_decides(untolerant, labels, [taint(NOW, effect="PreferNoSelect")], NOW), "PreferNoSelect never filters"
    assert placement_decides(untolerant, labels, [taint(NOW, effect="NoSelectIfNew")], NOW, decided=True)
    assert not placement_decides(untolerant, labels, [taint(NOW, effect="NoSelectIfNew")], NOW, decided=False)
    other = {**fleet, "spec": {**fleet["spec"], "tolerations": [{"key": "gpu", "operator": "Equal", "value": "true"}]}}
    assert not placement_decides(other, labels, tainted, NOW), "a toleration of another key does not help"
    decisions = placement_decisions(objects, {name: {"labels": labels, "taints": tainted if name == "spoke-2" else []}
                                              for name, labels in SPOKES.items()}, NOW + 600)
    assert decisions == {"model-serving-clusters": ["spoke-1"], "model-serving-canary": ["spoke-1"], "model-serving-fleet": []}


@pytest.fixture
def hub(tmp_path):
    """An unstarted hub over a local Git repository holding the model's overlay in both waves; no controller thread runs."""
    source = tmp_path / "source"
    for wave in ("canary", "fleet"):
        overlay = source / "fleet" / "models" / "waves" / wave / MODEL
        overlay.mkdir(parents=True)
        (overlay / "kustomization.yaml").write_text(yaml.safe_dump({"resources": ["inferenceservice.yaml"]}))
        (overlay / "inferenceservice.yaml").write_text(yaml.safe_dump(ISVC))
    git = ["git", "-C", str(source), "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run(["git", "init", "--quiet", "-b", "main", str(source)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "--quiet", "-m", "overlays"], check=True)
    hub = ArgoHub(tmp_path / "hub", str(source), "main", SPOKES, tmp_path / "pvcs", None, rendered(MANIFESTS / "gitops"))
    hub.commit = lambda message: (subprocess.run([*git, "commit", "--quiet", "--allow-empty", "-m", message], check=True), hub._head())[1]
    yield hub
    hub.server.server_close()


def sync_of(hub: ArgoHub, cluster: str) -> tuple[str, str, int, str]:
    """Return the model's Application on ``cluster``: sync status, operation phase, retryCount and operation message."""
    status = hub.application_of(cluster, MODEL)["status"]
    operation = status.get("operationState") or {}
    return status["sync"]["status"], operation.get("phase", ""), operation.get("retryCount", 0), operation.get("message", "")


def test_an_application_whose_cluster_left_the_decisions_is_deleted_keeping_its_resources_unless_it_has_the_resources_finalizer(hub):
    hub.reconcile(NOW)
    assert sync_of(hub, "spoke-2")[:2] == ("Synced", "Succeeded") and hub.spokes["spoke-2"].standin.get("self-healing-platform", MODEL)
    hub.taint("spoke-2", UNREACHABLE, NOW)
    hub.reconcile(NOW + 3599)
    assert hub.application_of("spoke-2", MODEL) is not None, "within the Placements' 3600 s toleration nothing changes"
    hub.reconcile(NOW + 3600)
    assert hub.application_of("spoke-2", MODEL) is None and "model-pipelines-spoke-spoke-2" not in hub.applications
    assert hub.spokes["spoke-2"].standin.get("self-healing-platform", MODEL) is not None, "preserveResourcesOnDeletion: it keeps serving"
    hub.untaint("spoke-2", UNREACHABLE)
    hub.reconcile(NOW + 3601)
    assert sync_of(hub, "spoke-2")[:2] == ("Synced", "Succeeded"), "regenerated, it adopts the InferenceService again"

    for item in hub.manifests:  # an ApplicationSet without preserveResourcesOnDeletion: its Applications carry the finalizer
        if item["kind"] == "ApplicationSet":
            item["spec"]["syncPolicy"] = {}
    hub.applications.clear()
    hub.reconcile(NOW + 3602)
    assert hub.application_of("spoke-2", MODEL)["metadata"]["finalizers"] == ["resources-finalizer.argocd.argoproj.io"]
    hub.taint("spoke-2", UNREACHABLE, NOW)
    hub.reconcile(NOW + 3603)
    assert hub.application_of("spoke-2", MODEL) is None
    assert hub.spokes["spoke-2"].standin.get("self-healing-platform", MODEL) is None, "the finalizer deleted what it had applied"


def test_a_failed_sync_is_retried_only_by_the_applications_retry_policy_with_backoff_and_never_again_for_the_same_commit(hub):
    retry = hub.application_of("spoke-2", MODEL)["spec"]["syncPolicy"]["retry"]
    assert retry == {"limit": 5, "backoff": {"duration": "10s", "factor": 2, "maxDuration": "3m"}}, "as manifests/gitops generates it"
    webhook_down = "Internal error occurred: failed calling webhook inferenceservice.kserve-webhook-server.validator: connection refused"
    hub.fail_sync("spoke-2", 2, webhook_down)  # transient: the third attempt goes through
    hub.reconcile(NOW)
    assert sync_of(hub, "spoke-2")[:3] == ("OutOfSync", "Running", 1)
    hub.reconcile(NOW + 9.9)
    assert sync_of(hub, "spoke-2")[2] == 1, "the first retry waits backoff.duration (10 s)"
    hub.reconcile(NOW + 10)
    assert sync_of(hub, "spoke-2")[:3] == ("OutOfSync", "Running", 2)
    hub.reconcile(NOW + 29.9)
    assert sync_of(hub, "spoke-2")[2] == 2, "the second waits duration * factor (20 s)"
    hub.reconcile(NOW + 30)
    assert sync_of(hub, "spoke-2")[:3] == ("Synced", "Succeeded", 2)

    head = hub.commit("a change the spoke keeps refusing")
    hub.fail_sync("spoke-2", 6, webhook_down)  # the first attempt and all 5 retries fail
    moments, now = [], NOW + 100
    for _ in range(6):
        hub.reconcile(now)
        moments.append(now)
        now += 200  # past any backoff (at most maxDuration, 3 m)
    sync, phase, retries, message = sync_of(hub, "spoke-2")
    assert (sync, phase, retries) == ("OutOfSync", "Failed", 5) and message == f"{webhook_down} (retried 5 times)"
    assert hub.spokes["spoke-2"].failed_syncs[f"{MODEL}-spoke-2"] == 6, "the knob is spent: the spoke accepts syncs again, yet ..."
    hub.reconcile(now + 86_400)
    assert sync_of(hub, "spoke-2")[:2] == ("OutOfSync", "Failed"), "... automated sync never reattempts the same commit"
    application = Application.parse(hub.application_of("spoke-2", MODEL))
    assert f"sync Failed: {webhook_down} (retried 5 times)" in application.line()
    assert f"Failed sync attempt to {head}" in application.line(), "the SyncError condition"
    hub.commit("the next commit")
    hub.reconcile(now + 86_401)
    assert sync_of(hub, "spoke-2")[:3] == ("Synced", "Succeeded", 0), "a new commit is synced at once"


def test_the_retry_backoff_doubles_up_to_max_duration_and_time_scale_compresses_it(hub):
    assert [retry_delay({"backoff": {"duration": "10s", "factor": 2, "maxDuration": "3m"}}, n) for n in range(6)] == [10, 20, 40, 80, 160, 180]
    hub.time_scale = 0.01
    hub.fail_sync("spoke-1", math.inf, "no route to host")
    name, now = f"{MODEL}-spoke-1", NOW
    for seconds in (10, 20, 40, 80, 160):
        hub.reconcile(now)
        assert hub.retry_at[name] - now == pytest.approx(seconds * 0.01)
        now = hub.retry_at[name]
    hub.reconcile(now)
    assert sync_of(hub, "spoke-1")[:3] == ("OutOfSync", "Failed", 5)
