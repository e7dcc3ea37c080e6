"""The approval gate with a Model Registry: the held version's custom property ``approved`` decides, set through the registry's
REST API as the OpenShift AI dashboard sets it, or by `model-pipelines approve|reject` with the registry settings; local target,
time-compressed, against the registry stand-in (tests/registry_standin.py)."""

import time

import requests

from components.model.contract import ANOMALY_DETECTOR
from components.model.spec import spec_for
from components.model.train import train_model
from components.registry.client import API_PATH, plain_values
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
        rollout, lines = held_rollout(state, version, down, registry.cert, timeout_h=0.005)
        approved = run_cli("approve", ANOMALY_DETECTOR, version, "--state-dir", str(state), *settings(down, registry.cert), env=ENV)
        assert approved.returncode == 1 and f"cannot reach the model registry at {down}" in approved.stdout, approved.stdout
        output = finish(rollout, lines)
    assert rollout.returncode == 3, output[-3000:]
    said = [line for line in output.splitlines() if "no decision readable" in line]
    assert len(said) == 1, f"said once while it lasts: {output[-4000:]}"
    assert f"no decision readable: cannot mark {ANOMALY_DETECTOR} {version} awaiting approval in the registry" in said[0]
    assert "still holding (an unreadable decision never promotes)" in said[0]
    assert summary_row(output, version).split(None, 2)[2] == "rejected at canary-promote: not approved within 0.005 h"
    assert status(state)["stable"] == stable and status(state)["candidate"] is None
