"""The approval gate with a Model Registry: the held version's custom property ``approved`` decides, set through the registry's
REST API as the OpenShift AI dashboard sets it, or by `model-pipelines approve|reject` with the registry settings; local target,
time-compressed, against the registry stand-in (tests/registry_standin.py)."""

import time

import pytest
import requests

from components.model.contract import ANOMALY_DETECTOR
from components.model.spec import spec_for
from components.model.train import train_model
from components.registry.client import API_PATH, RegistryClient, RegistryError, entity_id, plain_values, property_values
from components.registry.sync import OWNERSHIP, parse_registry_uri
from components.release.approval import ApprovalUnavailable, LocalApprovalSource, RegistryApprovalSource, shown_text
from tests.conftest import run_cli
from tests.recipe_overrides import reseeded
from tests.servers import refused_url
from tests.test_approval import finish, local_hold, new_detector_version, summary_row
from tests.test_registry import ENV, TOKEN, every_call_matches_the_api, registry, settings  # noqa: F401 (fixtures)
from tests.test_serving import served, status, training  # noqa: F401 (fixtures)


def held_rollout(state, version: str, url: str, cert, timeout_h: float = 0.05):
    """Start a rollout of ``version`` that holds for approval with the registry at ``url``; return it and its output so far."""
    return local_hold(state, version, "--param", f"approval_timeout_h={timeout_h}", *settings(url, cert), env=ENV)


def as_the_dashboard_sets(registry, version: str, **properties: str) -> None:
    """Set string custom properties of ``version`` through the registry's REST API, as a user editing them in the dashboard does."""
    call = {"headers": {"Authorization": f"Bearer {TOKEN}"}, "verify": str(registry.cert), "timeout": 10}
    api = f"{registry.url}{API_PATH}"
    model = requests.get(f"{api}/registered_model", params={"name": ANOMALY_DETECTOR}, **call).json()
    found = requests.get(f"{api}/model_version", params={"name": version, "parentResourceId": model["id"]}, **call).json()
    typed = {key: {"metadataType": "MetadataStringValue", "string_value": value} for key, value in properties.items()}
    answer = requests.patch(f"{api}/model_versions/{found['id']}", json={"customProperties": {**found["customProperties"], **typed}}, **call)
    assert answer.status_code == 200, answer.text


def approval_properties(registry, version: str) -> dict:
    """Return the registry's approval properties of ``version``."""
    properties = plain_values(registry.version(ANOMALY_DETECTOR, version)["customProperties"])
    return {key: value for key, value in properties.items() if key.startswith("approved")}


def test_an_approval_set_in_the_registry_promotes_and_one_left_from_before_the_hold_does_not(served, training, registry):
    state, store, _, version = new_detector_version(served, training, 31)
    synced = run_cli("registry", "sync", ANOMALY_DETECTOR, "--state-dir", str(state), *settings(registry.url, registry.cert), env=ENV)
    assert synced.returncode == 0, synced.stdout
    as_the_dashboard_sets(registry, version, approved="true", approved_by="mallory")  # left from before: must not count
    rollout, lines = held_rollout(state, version, registry.url, registry.cert)
    assert approval_properties(registry, version) == {"approved": "awaiting"}, "the hold marks the version awaiting, dropping the old decision"
    time.sleep(1.0)  # several looks (approval_poll_s=0.2) at the registry
    assert (status(state)["candidate"], status(state)["candidate_percent"]) == (version, 60), "still holding"
    as_the_dashboard_sets(registry, version, approved="True", approved_by="dana")
    output = finish(rollout, lines)
    assert rollout.returncode == 0, output[-3000:]
    assert summary_row(output, version).split(None, 2)[2] == "promoted after approval by dana"
    assert store.read_index(ANOMALY_DETECTOR)["versions"][version]["approved_by"] == "dana"
    assert status(state)["stable"] == version and status(state)["candidate"] is None
    assert plain_values(registry.version(ANOMALY_DETECTOR, version)["customProperties"])["status"] == "stable"


def test_reject_with_the_registry_writes_approved_false_there_and_the_hold_rolls_back(served, training, registry):
    state, store, stable, version = new_detector_version(served, training, 37)
    rollout, lines = held_rollout(state, version, registry.url, registry.cert)
    decide = (ANOMALY_DETECTOR, version, "--by", "bob", "--state-dir", str(state), *settings(registry.url, registry.cert))
    rejected = run_cli("reject", *decide, env=ENV)
    assert rejected.returncode == 0, rejected.stdout
    assert f"decision: custom property 'approved' of the {ANOMALY_DETECTOR} version in the model registry at {registry.url}" in rejected.stdout
    output = finish(rollout, lines)
    assert rollout.returncode == 3, output[-3000:]
    assert summary_row(output, version).split(None, 2)[2] == "rejected at canary-promote: rejected by bob"
    recorded = approval_properties(registry, version)
    assert (recorded["approved"], recorded["approved_by"]) == ("false", "bob") and recorded["approved_at"]
    again = run_cli("approve", *decide, env=ENV)
    assert again.returncode == 2 and f"{ANOMALY_DETECTOR} has no candidate (stable {stable})" in again.stdout, again.stdout
    assert status(state)["stable"] == stable and status(state)["candidate"] is None


def test_a_registry_that_cannot_be_read_keeps_the_hold_until_the_timeout_and_never_promotes(served, training, registry):
    state, store, stable, version = new_detector_version(served, training, 41)
    with refused_url() as down:
        rollout, lines = held_rollout(state, version, down, registry.cert, timeout_h=0.002)
        approved = run_cli("approve", ANOMALY_DETECTOR, version, "--state-dir", str(state), *settings(down, registry.cert), env=ENV)
        assert approved.returncode == 1 and f"cannot reach the model registry at {down}" in approved.stdout, approved.stdout
        output = finish(rollout, lines)
    assert rollout.returncode == 3, output[-3000:]
    said = [line for line in output.splitlines() if "no decision readable" in line]
    assert len(said) == 1, f"said once while it lasts: {output[-4000:]}"
    assert f"no decision readable: cannot mark {ANOMALY_DETECTOR} {version} awaiting approval in the registry" in said[0]
    assert "still holding (an unreadable decision never promotes)" in said[0]
    assert summary_row(output, version).split(None, 2)[2] == "rejected at canary-promote: not approved within 0.002 h"
    assert status(state)["stable"] == stable and status(state)["candidate"] is None


def test_a_decision_recorded_after_a_hold_began_with_the_registry_down_counts_and_an_older_one_never_does(registry, tmp_path):
    """The hold could not mark the version awaiting (registry down). Once the registry answers, an approval the verbs wrote after
    the hold began is the decision; one left from before is replaced by the awaiting mark."""
    client = RegistryClient(registry.url, str(registry.cert), TOKEN)
    model = client.create_registered_model({"name": "hold-model", "owner": "tests", "customProperties": OWNERSHIP})  # as a sync registers them
    version_ids = {name: client.create_model_version({"name": name, "registeredModelId": model["id"], "customProperties": OWNERSHIP})["id"]
                   for name in ("v1", "v2")}
    held = LocalApprovalSource(tmp_path)
    with refused_url() as down:
        source = RegistryApprovalSource(RegistryClient(down, str(registry.cert), TOKEN), held)
        source.request("hold-model", "v1")
        source.request("hold-model", "v2")
        with pytest.raises(ApprovalUnavailable, match="cannot mark hold-model v1 awaiting approval in the registry"):
            source.decision("hold-model", "v1")
    source.client = client  # the registry answers again
    RegistryApprovalSource(client, held).record("hold-model", "v1", True, "dana")  # `approve` while the hold could not mark
    client.update_model_version(version_ids["v2"], {"customProperties": {**OWNERSHIP, **property_values(
        {"approved": "true", "approved_by": "mallory", "approved_at": "2020-01-01T00:00:00Z"})}})  # left from an earlier hold
    decided = source.decision("hold-model", "v1")
    assert (decided.version, decided.approved, decided.by) == ("v1", True, "dana")
    assert source.decision("hold-model", "v2") is None
    assert plain_values(registry.version("hold-model", "v2")["customProperties"])["approved"] == "awaiting"


def test_untrusted_registry_text_is_bounded_before_it_reaches_a_url_a_log_or_the_index():
    assert entity_id("42") == "42"
    for forged in ("1/../../registered_models", "", "0", "1" * 25, "12a"):
        with pytest.raises(RegistryError, match="is not a model registry id"):
            entity_id(forged)
    assert parse_registry_uri("model-registry://anomaly-detector/7") == ("anomaly-detector", "v7")
    for forged in ("model-registry://anomaly-detector/v1\nregistry: all in step", "model-registry://anomaly-detector/" + "9" * 30,
                   "model-registry://../v1", "model-registry://anomaly-detector/latest"):
        with pytest.raises(ValueError, match="is not model-registry://<model>/<version>"):
            parse_registry_uri(forged)
    assert shown_text("eve\nregistry: NOT in step\x1b[2J" + "x" * 200, "unknown") == ("eve registry: NOT in step[2J" + "x" * 200)[:100]
    assert shown_text("   ", "a model registry user") == "a model registry user"


def test_the_pods_own_token_goes_only_to_in_cluster_services(tmp_path, monkeypatch):
    """A registry (or Prometheus, or DSP) address is a run parameter: the pod's service-account token goes only to *.svc hosts,
    a token for anything else must come from the installation's Secret."""
    from components import credentials

    pod_token = tmp_path / "token"
    pod_token.write_text("pod-token\n")
    monkeypatch.setattr(credentials, "SERVICE_ACCOUNT_TOKEN", pod_token)
    monkeypatch.delenv("MODEL_REGISTRY_TOKEN", raising=False)
    assert RegistryClient("https://registry-rest.odh-model-registries.svc:8443").token == "pod-token"
    assert credentials.token_from_environment("PROMETHEUS_TOKEN", "https://thanos-querier.openshift-monitoring.svc.cluster.local:9091") == "pod-token"
    for elsewhere in ("https://registry.apps.example.com", "https://collector.example.com/svc", "https://127.0.0.1:8443"):
        assert credentials.token_from_environment("MODEL_REGISTRY_TOKEN", elsewhere) == ""
    with pytest.raises(RegistryError, match="goes only to an in-cluster registry service"):
        RegistryClient("https://registry.apps.example.com")
    monkeypatch.setenv("MODEL_REGISTRY_TOKEN", "from-the-secret")
    assert RegistryClient("https://registry.apps.example.com").token == "from-the-secret"


def test_a_hold_that_ends_without_a_decision_marks_the_version_expired_and_keeps_a_decision_that_came_first(registry, tmp_path):
    client = RegistryClient(registry.url, str(registry.cert), TOKEN)
    model = client.create_registered_model({"name": "ended-model", "owner": "tests", "customProperties": OWNERSHIP})
    for name in ("v1", "v2"):
        client.create_model_version({"name": name, "registeredModelId": model["id"], "customProperties": OWNERSHIP})
    held = LocalApprovalSource(tmp_path)
    source = RegistryApprovalSource(client, held)
    source.request("ended-model", "v1")
    source.end("ended-model", "v1")
    assert plain_values(registry.version("ended-model", "v1")["customProperties"])["approved"] == "expired"
    assert source.awaiting("ended-model") is None and source.decision("ended-model", "v1") is None
    source.request("ended-model", "v2")
    source.record("ended-model", "v2", False, "erin")  # decided just before the hold ended
    source.end("ended-model", "v2")
    assert plain_values(registry.version("ended-model", "v2")["customProperties"])["approved"] == "false"
    with refused_url() as down:
        source.client = RegistryClient(down, str(registry.cert), TOKEN)
        source.request("ended-model", "v1")
        with pytest.raises(ApprovalUnavailable, match=f"cannot mark it approved=expired in the registry: cannot reach the model registry at {down}"):
            source.end("ended-model", "v1")
    assert held.awaiting("ended-model") is None, "the target's record ends the hold even while the registry is down"
