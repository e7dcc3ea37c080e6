"""The approval gate (canary.approval=before-promote), time-compressed: the candidate holds at the last step below 100 %
until `model-pipelines approve|reject` decides or approval_timeout_h passes; local end to end, kserve against the
Kubernetes stand-in, and the fleet repository's approval record and `approve --target gitops` against a real Git server."""

import json
import os
import signal
import subprocess
import threading
import time

import pytest
import requests
import yaml

from components.files import write_json_atomically
from components.model.contract import ANOMALY_DETECTOR
from components.model.spec import spec_for
from components.model.train import train_model
from components.release.approval import (
    BEFORE_PROMOTE, Approval, ApprovalError, ApprovalGate, ApprovalSettings, ApprovalUnavailable, GitopsApprovalSource, KServeApprovalSource,
    LocalApprovalSource,
    approval_file, decide, hold_for_approval,
)
from components.release.rollout import AnalysisRow, CanaryResult, CanarySpec
from components.serving.target import ServingStatus
from components.serving.gitops.fleet import GitopsOptions
from components.serving.gitops.repo import TOKEN_ENV, GitopsRepo
from components.serving.gitops.target import GitopsTarget
from components.serving.kserve import KServeOptions, KServeTarget
from components.serving.target import ServingError
from pipelines.cli import main
from tests.conftest import CLI, REPO, run_cli
from tests.git_server import GitHttpServer
from tests.recipe_overrides import reseeded
from tests.test_gitops_target import NAMESPACE as FLEET_NAMESPACE, PATH as FLEET_PATH, fleet_repo  # noqa: F401 (fixture)
from tests.test_kserve import FAST as KSERVE_FAST, knative_cluster, main_url, models, new_project  # noqa: F401 (fixtures)
from tests.test_serving import FALLBACK, FAST, executor_processes, save, served, status, training  # noqa: F401 (fixtures)

GATE = ("--param", "approval=before-promote", "--param", "approval_poll_s=0.2", "--param", "canary_steps=[20,60,100]")
HOLDING = "holding for approval"


def start_rollout(command: list[str], env: dict | None = None) -> subprocess.Popen:
    """Start a rollout that prints its steps' logs as they run (--verbose), to see when it holds."""
    return subprocess.Popen([CLI, *command, "--verbose"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})


def wait_for_hold(rollout: subprocess.Popen, timeout_s: float = 240) -> list[str]:
    """Read the rollout's output until its canary says it holds for approval; return the lines read."""
    lines, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = rollout.stdout.readline()
        if not line:
            break
        lines.append(line)
        if HOLDING in line:
            return lines
    rollout.kill()
    raise AssertionError("the rollout never held for approval:\n" + "".join(lines[-60:]))


def new_detector_version(served, training, seed: int) -> tuple:
    """Store a detector trained with ``seed`` beside the served stable one; return (state dir, store, stable version, new version)."""
    state, store = served
    stable = store.read_index(ANOMALY_DETECTOR)["stable"]
    return state, store, stable, save(store, train_model(spec_for(ANOMALY_DETECTOR), training.train, reseeded(seed)), state)


def local_hold(state, version: str, *params: str, env: dict | None = None) -> tuple[subprocess.Popen, list[str]]:
    """Start a local rollout of ``version`` that holds for approval (``params`` added); return it once it holds, with its output so far."""
    rollout = start_rollout(["rollout", ANOMALY_DETECTOR, "--version", version, "--local", "--state-dir", str(state), *FAST, *GATE, *params], env=env)
    return rollout, wait_for_hold(rollout)


def finish(rollout: subprocess.Popen, lines: list[str], timeout_s: float = 300) -> str:
    """Return the rollout's whole output once it ended (killed after ``timeout_s``).

    The rest is read through the same text stream as ``lines``: ``communicate(timeout=...)`` would read the pipe's descriptor
    and lose what ``readline`` had already buffered (the lines printed right after the one ``wait_for_hold`` waited for)."""
    watchdog = threading.Timer(timeout_s, rollout.kill)
    watchdog.start()
    try:
        rest = rollout.stdout.read()
    finally:
        watchdog.cancel()
    rollout.wait()
    return "".join(lines) + rest


def summary_row(output: str, version: str) -> str:
    """Return the run summary's row for ``version``."""
    return next(line for line in output.splitlines() if line.startswith(f"  {ANOMALY_DETECTOR}") and f" {version} " in line)


def test_approved_while_holding_is_promoted_and_the_hold_keeps_the_last_step_below_100(served, training):
    state, store, stable, version = new_detector_version(served, training, 17)
    rollout, lines = local_hold(state, version, "--param", "approval_timeout_h=0.05")
    held = []
    for _ in range(4):  # the hold: several analyses' worth of time at 60 %, never 100 %
        held.append(status(state))
        time.sleep(0.4)
    assert all(seen == {**held[0], "stable": stable, "candidate": version, "candidate_percent": 60} for seen in held), held
    approved = run_cli("approve", ANOMALY_DETECTOR, version, "--by", "alice", "--state-dir", str(state))
    assert approved.returncode == 0, approved.stdout
    assert f"  {ANOMALY_DETECTOR:<21} {version:<5} approved by alice: the held rollout promotes it" in approved.stdout
    output = finish(rollout, lines)
    assert rollout.returncode == 0, output[-3000:]
    assert f"canary {ANOMALY_DETECTOR} {version} at 100%: pass" in output, "after approval the canary goes on to 100 %"
    assert summary_row(output, version).split(None, 2)[2] == "promoted after approval by alice"
    assert "exit code 0" in output
    entry = store.read_index(ANOMALY_DETECTOR)["versions"][version]
    assert entry["status"] == "stable" and entry["approved_by"] == "alice"
    assert status(state)["stable"] == version and status(state)["candidate"] is None


def test_rejected_while_holding_is_rolled_back_and_stable_keeps_serving(served, training):
    state, store, stable, version = new_detector_version(served, training, 19)
    early = run_cli("reject", ANOMALY_DETECTOR, version, "--state-dir", str(state))
    assert early.returncode == 2 and f"{ANOMALY_DETECTOR} has no candidate (stable {stable})" in early.stdout, early.stdout
    misspelt = run_cli("reject", "anomaly-detectr", version, "--state-dir", str(state))
    assert misspelt.returncode == 2 and "nothing serves a model named 'anomaly-detectr' here" in misspelt.stdout, misspelt.stdout
    rollout, lines = local_hold(state, version, "--param", "approval_timeout_h=0.05")
    rejected = run_cli("reject", ANOMALY_DETECTOR, version, "--by", "bob", "--state-dir", str(state))
    assert rejected.returncode == 0, rejected.stdout
    assert "rejected by bob: the held rollout rolls it back; stable keeps serving" in rejected.stdout
    output = finish(rollout, lines)
    assert rollout.returncode == 3, output[-3000:]
    assert summary_row(output, version).split(None, 2)[2] == "rejected at canary-promote: rejected by bob"
    entry = store.read_index(ANOMALY_DETECTOR)["versions"][version]
    assert entry["status"] == "rejected" and entry["rejected_reason"] == "rejected at canary-promote: rejected by bob"
    after = status(state)
    assert after["stable"] == stable and after["candidate"] is None and after["candidate_percent"] == 0
    answer = requests.post(f"{after['url']}:predict", json=FALLBACK, timeout=10)
    assert answer.status_code == 200 and answer.headers["x-served-version"] == stable


def test_not_approved_in_time_is_rolled_back_and_an_approval_of_another_version_does_not_count(served, training):
    state, store, stable, version = new_detector_version(served, training, 23)
    rollout, lines = local_hold(state, version, "--param", "approval_timeout_h=0.002")
    wrong = run_cli("approve", ANOMALY_DETECTOR, stable, "--state-dir", str(state))
    assert wrong.returncode == 2 and f"{ANOMALY_DETECTOR} {stable} is not the candidate: {version} is (at 60 %)" in wrong.stdout, wrong.stdout
    # A decision naming another version, written where the gate reads (by hand: the verbs refuse it): it must not promote this one.
    forged = {"model": ANOMALY_DETECTOR, "version": stable, "approval": "approved", "by": "mallory", "at": "2026-01-01T00:00:00Z"}
    write_json_atomically(state / "serving" / f"{ANOMALY_DETECTOR}.approval.json", forged)
    output = finish(rollout, lines)
    assert rollout.returncode == 3, output[-3000:]
    reason = "rejected at canary-promote: not approved within 0.002 h"
    assert summary_row(output, version).split(None, 2)[2] == reason
    assert "exit code 3" in output
    assert store.read_index(ANOMALY_DETECTOR)["versions"][version]["rejected_reason"] == reason
    after = status(state)
    assert after["stable"] == stable and after["candidate"] is None


def test_an_analysis_failing_while_holding_rolls_back_without_waiting_for_a_decision(served, training):
    state, store, stable, version = new_detector_version(served, training, 29)
    rollout, lines = local_hold(state, version, "--param", "approval_timeout_h=0.01", "--param", "failure_limit=0")
    serving_state = json.loads((state / "serving" / f"{ANOMALY_DETECTOR}.json").read_text())
    assert serving_state["candidate"]["version"] == version
    os.kill(serving_state["candidate"]["pid"], signal.SIGKILL)  # the candidate dies while it waits for approval
    output = finish(rollout, lines)
    assert rollout.returncode == 3, output[-3000:]
    reason = summary_row(output, version).split(None, 2)[2]
    assert reason.startswith("rejected at canary-promote: 60% traffic while holding for approval, fail: error_rate 1 > 0.01"), reason
    after = status(state)
    assert after["stable"] == stable and after["candidate"] is None


def test_a_canary_step_killed_while_holding_leaves_its_hold_expired_so_a_late_approval_is_refused(served, training):
    state, store, stable, version = new_detector_version(served, training, 31)
    rollout, lines = local_hold(state, version, "--param", "approval_timeout_h=0.05")
    killed = executor_processes("canary_promote", rollout.pid)
    assert killed, "the canary step is running"
    for pid in killed:
        os.kill(pid, signal.SIGKILL)  # the step dies while it holds (a pod evicted): nothing in it ends the hold
    output = finish(rollout, lines)
    assert rollout.returncode == 1, output[-3000:]
    assert f"the hold of {version} for approval ended with its step: marked expired, so no decision about it counts" in output, output[-3000:]
    record = json.loads((state / "serving" / f"{ANOMALY_DETECTOR}.approval.json").read_text())
    assert (record["version"], record["approval"]) == (version, "expired")
    late = run_cli("approve", ANOMALY_DETECTOR, version, "--by", "alice", "--state-dir", str(state))
    assert late.returncode == 2 and "but no rollout holds it for approval" in late.stdout, late.stdout
    assert store.read_index(ANOMALY_DETECTOR)["stable"] == stable and status(state)["candidate_percent"] == 0


class HeldCandidate:
    """A serving target whose model has ``candidate`` at 60 % beside stable v1: what ``decide`` reads (``status``)."""

    def __init__(self, candidate: str) -> None:
        self.candidate = candidate

    def status(self, model_name: str) -> ServingStatus:
        return ServingStatus(model_name, stable="v1", candidate=self.candidate, candidate_percent=60, url=None)


def test_a_hold_that_ends_without_a_decision_is_marked_expired_and_a_second_decision_is_refused(tmp_path):
    source = LocalApprovalSource(tmp_path)
    spec = CanarySpec(steps=(20, 60, 100), interval_s=0.01, failure_limit=0)
    failing = lambda weight: AnalysisRow(weight, {"error_rate": 1.0}, "fail", "error_rate 1 > 0.01")  # noqa: E731
    for version, gate, analyse, why in (
        ("v2", ApprovalGate(source, ApprovalSettings(BEFORE_PROMOTE, timeout_h=0.0, poll_s=0.01)), failing, "not approved within 0 h"),
        ("v3", ApprovalGate(source, ApprovalSettings(BEFORE_PROMOTE, timeout_h=1.0, poll_s=0.01)), failing,
         "60% traffic while holding for approval, fail: error_rate 1 > 0.01"),
    ):
        result = CanaryResult(ANOMALY_DETECTOR, version, "", "", spec)
        assert hold_for_approval(gate, ANOMALY_DETECTOR, version, 60, analyse, result, 0, spec, sleep=time.sleep)[::2] == (None, why)
        record = json.loads((tmp_path / f"{ANOMALY_DETECTOR}.approval.json").read_text())
        assert (record["version"], record["approval"]) == (version, "expired") and source.awaiting(ANOMALY_DETECTOR) is None
        with pytest.raises(ApprovalError, match=f"{version} is the candidate at 60 %, but no rollout holds it for approval"):
            decide(HeldCandidate(version), source, ANOMALY_DETECTOR, version, True, "late")
    source.request(ANOMALY_DETECTOR, "v4")
    source.record(ANOMALY_DETECTOR, "v4", True, "alice")
    with pytest.raises(ApprovalError, match=f"{ANOMALY_DETECTOR} v4 no longer awaits a decision: another decision"):
        source.record(ANOMALY_DETECTOR, "v4", False, "bob")  # approve and reject at once: the second is refused, not written over
    source.end(ANOMALY_DETECTOR, "v4")  # a decision that came first stays
    assert source.decision(ANOMALY_DETECTOR, "v4") == Approval("v4", True, "alice", source.decision(ANOMALY_DETECTOR, "v4").at)
    source.request(ANOMALY_DETECTOR, "v5")
    source.end(ANOMALY_DETECTOR, "v4")  # the end of an older hold never ends a newer one
    assert source.awaiting(ANOMALY_DETECTOR) == "v5"
    # A record caught half-written (a hand edit) cannot be read: the hold keeps holding until its timeout, it never crashes.
    (tmp_path / f"{ANOMALY_DETECTOR}.approval.json").write_text('{"model": "anomaly-detector", "vers')
    with pytest.raises(ApprovalUnavailable, match="approval.json: .*write it whole"):
        source.decision(ANOMALY_DETECTOR, "v5")
    gate = ApprovalGate(source, ApprovalSettings(BEFORE_PROMOTE, timeout_h=0.0001, poll_s=0.05))
    result = CanaryResult(ANOMALY_DETECTOR, "v5", "", "", spec)
    passing = lambda weight: AnalysisRow(weight, {"error_rate": 0.0}, "pass", "")  # noqa: E731
    assert hold_for_approval(gate, ANOMALY_DETECTOR, "v5", 60, passing, result, 0, spec, sleep=time.sleep)[::2] == (None, "not approved within 0.0001 h")


def test_kserve_approval_is_an_annotation_on_the_owned_inference_service(knative_cluster, models):
    project = new_project(knative_cluster)
    first = project.rollout(ANOMALY_DETECTOR, project.store_version(ANOMALY_DETECTOR, models["detector"](1)))
    assert first.returncode == 0, first.stdout[-3000:]
    v2 = project.store_version(ANOMALY_DETECTOR, models["detector"](2))
    rollout = start_rollout(["rollout", ANOMALY_DETECTOR, "--version", v2, "--local", "--state-dir", str(project.state), *KSERVE_FAST, *GATE,
                             "--param", f"namespace={project.namespace}", "--pvc-name", project.pvc, "--param", "approval_timeout_h=0.05"],
                            env=knative_cluster.env)
    lines = wait_for_hold(rollout)
    target = KServeTarget(KServeOptions(namespace=project.namespace), api=kube_api(knative_cluster))
    held = target.status(ANOMALY_DETECTOR)
    assert (held.stable, held.candidate, held.candidate_percent) == ("v1", v2, 60)
    annotations = project.isvc(ANOMALY_DETECTOR)["metadata"]["annotations"]
    assert (annotations["model-pipelines.io/approval-version"], annotations["model-pipelines.io/approval"]) == (v2, "awaiting")
    decide = ("--target", "kserve", "--param", f"namespace={project.namespace}", "--state-dir", str(project.state))
    wrong = run_cli("approve", ANOMALY_DETECTOR, "v1", *decide, env=knative_cluster.env)
    assert wrong.returncode == 2 and f"v1 is not the candidate: {v2} is" in wrong.stdout, wrong.stdout
    approved = run_cli("approve", ANOMALY_DETECTOR, v2, "--by", "carol", *decide, env=knative_cluster.env)
    assert approved.returncode == 0, approved.stdout
    output = finish(rollout, lines)
    assert rollout.returncode == 0, output[-3000:]
    assert summary_row(output, v2).split(None, 2)[2] == "promoted after approval by carol"
    annotations = project.isvc(ANOMALY_DETECTOR)["metadata"]["annotations"]
    assert annotations["model-pipelines.io/stable-version"] == v2
    assert {key: annotations[f"model-pipelines.io/approval{key}"] for key in ("-version", "", "-by")} == {"-version": v2, "": "approved", "-by": "carol"}

    v3 = project.store_version(ANOMALY_DETECTOR, models["detector"](3))
    rollout = start_rollout(["rollout", ANOMALY_DETECTOR, "--version", v3, "--local", "--state-dir", str(project.state), *KSERVE_FAST, *GATE,
                             "--param", f"namespace={project.namespace}", "--pvc-name", project.pvc, "--param", "approval_timeout_h=0.05"],
                            env=knative_cluster.env)
    lines = wait_for_hold(rollout)
    rejected = run_cli("reject", ANOMALY_DETECTOR, v3, "--by", "dave", *decide, env=knative_cluster.env)
    assert rejected.returncode == 0, rejected.stdout
    output = finish(rollout, lines)
    assert rollout.returncode == 3, output[-3000:]
    assert summary_row(output, v3).split(None, 2)[2] == "rejected at canary-promote: rejected by dave"
    after = target.status(ANOMALY_DETECTOR)
    assert (after.stable, after.candidate) == (v2, None)
    assert requests.post(main_url(project) + ":predict", json=FALLBACK, timeout=10).status_code == 200
    source = KServeApprovalSource(target.api)
    source.end(ANOMALY_DETECTOR, v3)  # decided already: the decision stays
    with pytest.raises(ApprovalError, match=f"{v3} no longer awaits a decision"):
        source.record(ANOMALY_DETECTOR, v3, True, "eve")  # a second decision, as a racing `approve` would write it
    assert project.isvc(ANOMALY_DETECTOR)["metadata"]["annotations"]["model-pipelines.io/approval"] == "rejected"
    source.request(ANOMALY_DETECTOR, "v9")
    source.end(ANOMALY_DETECTOR, "v9")
    annotations = project.isvc(ANOMALY_DETECTOR)["metadata"]["annotations"]
    assert (annotations["model-pipelines.io/approval-version"], annotations["model-pipelines.io/approval"]) == ("v9", "expired")
    assert source.awaiting(ANOMALY_DETECTOR) is None

    # An InferenceService this project did not create is never annotated.
    api = kube_api(knative_cluster)
    hand_made = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "hand-made"},
                 "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}, "storageUri": f"pvc://{project.pvc}/{ANOMALY_DETECTOR}/v1"}}}}
    api.create_namespaced_custom_object("serving.kserve.io", "v1beta1", project.namespace, "inferenceservices", hand_made)
    before = project.isvc("hand-made")["metadata"]
    with pytest.raises(ServingError, match="was not created by model-pipelines"):
        KServeApprovalSource(target.api).request("hand-made", "v1")
    assert project.isvc("hand-made")["metadata"].get("annotations") == before.get("annotations")


def kube_api(cluster):
    from kubernetes import client, config

    return client.CustomObjectsApi(config.new_client_from_config(cluster.env["KUBECONFIG"]))


def test_the_fleet_repository_keeps_one_approval_record_per_model_naming_its_version(tmp_path, monkeypatch):
    password = "approval-push-secret"
    (tmp_path / "server").mkdir()
    server = GitHttpServer(tmp_path / "server", password)
    url = server.create("fleet.git", {"fleet/models/README.md": "Owned by the platform team.\n"})
    server.start()
    monkeypatch.setenv(TOKEN_ENV, password)
    try:
        pipeline = GitopsApprovalSource(GitopsRepo(url, "main", "fleet/models", tmp_path / "pipeline"), "run-7")
        person = GitopsApprovalSource(GitopsRepo(url, "main", "fleet/models", tmp_path / "person"))
        pipeline.request(ANOMALY_DETECTOR, "v4")
        assert person.awaiting(ANOMALY_DETECTOR) == "v4" and person.decision(ANOMALY_DETECTOR, "v4") is None
        with pytest.raises(ApprovalError, match="v3 no longer awaits a decision"):
            person.record(ANOMALY_DETECTOR, "v3", True, "mallory")  # v4 is held: a decision about v3 is refused
        assert pipeline.decision(ANOMALY_DETECTOR, "v4") is None and person.awaiting(ANOMALY_DETECTOR) == "v4"
        person.record(ANOMALY_DETECTOR, "v4", False, "erin")
        found = pipeline.decision(ANOMALY_DETECTOR, "v4")
        assert found == Approval("v4", False, "erin", found.at) and found.at
        record = yaml.safe_load(pipeline.repo.read(approval_file(ANOMALY_DETECTOR)))
        assert (record["version"], record["approval"], record["by"]) == ("v4", "rejected", "erin")
        assert approval_file(ANOMALY_DETECTOR) in pipeline.repo.owned()
        trailers = dict(pipeline.repo.history(approval_file(ANOMALY_DETECTOR))[0][1])
        assert {key: trailers[key] for key in ("Model", "Version", "Step", "Approval", "Approved-By")} == {
            "Model": ANOMALY_DETECTOR, "Version": "v4", "Step": "approval", "Approval": "rejected", "Approved-By": "erin"}
        commits = len(pipeline.repo.history(approval_file(ANOMALY_DETECTOR)))
        pipeline.end(ANOMALY_DETECTOR, "v4")
        assert len(pipeline.repo.history(approval_file(ANOMALY_DETECTOR))) == commits, "decided already: the hold's end commits nothing"
        pipeline.request(ANOMALY_DETECTOR, "v5")
        pipeline.end(ANOMALY_DETECTOR, "v5")
        assert person.awaiting(ANOMALY_DETECTOR) is None
        assert dict(pipeline.repo.history(approval_file(ANOMALY_DETECTOR))[0][1])["Approval"] == "expired"
        server.commit_directly("fleet.git", f"fleet/models/{approval_file('listed-model')}", "- version: v1\n")
        with pytest.raises(ApprovalUnavailable, match=f"fleet/models/{approval_file('listed-model')} in {url} holds list, not an approval record"):
            pipeline.awaiting("listed-model")
        server.commit_directly("fleet.git", f"fleet/models/{approval_file('other-model')}", "version: v1\napproval: approved\n")
        with pytest.raises(ServingError, match="was not created by model-pipelines"):
            pipeline.request("other-model", "v2")
    finally:
        server.stop()


def test_approve_with_target_gitops_commits_the_decision_about_the_held_candidate_to_the_fleet_repository(tmp_path, fleet_repo, monkeypatch, capsys):
    """`model-pipelines approve --target gitops` (run through the CLI's main, its hub connection given the stand-in hub of
    tests/test_gitops_target.py) checks the candidate in wave 1's overlay and commits the decision as approvals/<model>.yaml."""
    repo, hub, runtime = fleet_repo
    endpoint = runtime.url + "/{cluster}/{namespace}/{service}"
    options = KServeOptions(FLEET_NAMESPACE, endpoint=endpoint, rollout_strategy="standard-canary", run_name="run-9")
    target = GitopsTarget(options, GitopsOptions(repo, "main", FLEET_PATH, wave_timeout_s=20), hub_api=hub, workdir=tmp_path / "pipeline")
    target.deploy(ANOMALY_DETECTOR, "v1", f"pvc://models/{ANOMALY_DETECTOR}/v1", "1" * 64, 20)
    target.deploy(ANOMALY_DETECTOR, "v2", f"pvc://models/{ANOMALY_DETECTOR}/v2", "2" * 64, 20)
    target.set_traffic(ANOMALY_DETECTOR, 60, 20)
    hold = GitopsApprovalSource(target.repo, "run-9")
    hold.request(ANOMALY_DETECTOR, "v2")  # as the canary does when it starts holding
    monkeypatch.setattr(KServeTarget, "connect", staticmethod(lambda: hub))
    verb = ("--target", "gitops", "--param", f"gitops_repo={repo}", "--param", f"gitops_path={FLEET_PATH}", "--param", f"endpoint={endpoint}",
            "--param", f"namespace={FLEET_NAMESPACE}", "--state-dir", str(tmp_path / "state"))
    assert main(["approve", ANOMALY_DETECTOR, "v1", *verb]) == 2
    assert f"{ANOMALY_DETECTOR} v1 is not the candidate: v2 is (at 60 %)" in capsys.readouterr().err
    assert main(["approve", ANOMALY_DETECTOR, "v2", "--by", "erin", *verb]) == 0
    said = capsys.readouterr().out
    assert f"  {ANOMALY_DETECTOR:<21} v2    approved by erin: the held rollout promotes it" in said
    assert f"decision: {FLEET_PATH}/{approval_file(ANOMALY_DETECTOR)} in {repo}" in said
    found = hold.decision(ANOMALY_DETECTOR, "v2")
    assert found == Approval("v2", True, "erin", found.at) and found.at, "the held rollout reads it from the fleet repository"
    trailers = dict(hold.repo.history(approval_file(ANOMALY_DETECTOR))[0][1])
    assert {key: trailers[key] for key in ("Version", "Step", "Approval", "Approved-By")} == {
        "Version": "v2", "Step": "approval", "Approval": "approved", "Approved-By": "erin"}
    assert main(["reject", ANOMALY_DETECTOR, "v2", *verb]) == 2 and "v2 was already approved by erin" in capsys.readouterr().err
