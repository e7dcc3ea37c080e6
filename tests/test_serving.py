"""Rollout safety on the local target, through `model-pipelines rollout`: faulty candidates end rolled back,
the stable version keeps serving, and a client on the main URL sees zero failed requests."""

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import joblib
import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sklearn.linear_model import LinearRegression
from sklearn.neighbors import KNeighborsRegressor

from components.model.contract import ANOMALY_DETECTOR, engineer_features, fallback_instance
from components.data.ingest import IngestRequest, ingest
from components.release.rollout import probe_sample
from components.store.filesystem import FilesystemStore, load_model
from components.model.spec import spec_for
from components.model.train import TrainedModel, train_model
from tests.conftest import CLI, REPO, command_lines, logged, parent_pid, run_cli
from tests.recipe_overrides import isolation_forest, reseeded

FAST = ("--param", "canary_interval_s=0.3", "--param", "probe_requests=10", "--param", "days=1")
FALLBACK = {"instances": [fallback_instance()]}
# About 15 requests a second per client, through every traffic shift, restart and rollback of a rollout. Each request
# costs about 12 ms of CPU in client, router and model server; at about 30 a second the clients took a fifth of the suite's CPU.
CLIENT_PAUSE_S = 0.05


class MainUrlClient:
    """Calls the model's main URL in a loop, as the coordination engine does, and counts failures."""

    def __init__(self, url: str) -> None:
        self.url, self.sent, self.failures = url, 0, []
        self.served: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            try:
                answer = session.post(f"{self.url}:predict", json=FALLBACK, timeout=30)
                if answer.status_code != 200 or "predictions" not in answer.json():
                    self.failures.append(f"{answer.status_code} {answer.text[:100]}")
                version = answer.headers.get("x-served-version", "")
                self.served[version] = self.served.get(version, 0) + 1
            except (requests.RequestException, ValueError) as error:
                self.failures.append(str(error))
            self.sent += 1
            time.sleep(CLIENT_PAUSE_S)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join(30)


@pytest.fixture(scope="module")
def training():
    return ingest(IngestRequest(ANOMALY_DETECTOR, days=3, seed=21))


@pytest.fixture(scope="module")
def served(tmp_path_factory, training):
    """A state dir whose store has a good detector v1, rolled out as the stable version."""
    state = tmp_path_factory.mktemp("serving")
    store = FilesystemStore(state / "store")
    save(store, train_model(spec_for(ANOMALY_DETECTOR), training.train), state)
    result = run_cli("rollout", ANOMALY_DETECTOR, "--version", "v1", "--local", "--state-dir", str(state), *FAST)
    assert result.returncode == 0, result.stdout[-3000:]
    try:
        yield state, store
    finally:
        run_cli("serve", "stop", "--state-dir", str(state))


def version_record(model, **record) -> tuple[object, dict]:
    """Return (the estimator to store, its version record): a trained model's reference predictions go with it, as in the pipeline.

    With them the smoke test compares served answers to what the model predicted at training; a bare estimator (a
    hand-made bad model) is stored without, and the smoke test unpickles it instead.
    """
    if isinstance(model, TrainedModel):
        return model.estimator, {**record, "reference": model.reference}
    return model, record


def save(store: FilesystemStore, model, state: Path, model_name: str = ANOMALY_DETECTOR, **record) -> str:
    """Store ``model`` (a trained model with its reference predictions, or a bare estimator) as a new version of ``model_name``,
    staged in ``state``; return it."""
    path = state / f"candidate-{model_name}.pkl"
    estimator, record = version_record(model, run_name="test", **record)
    joblib.dump(estimator, path)
    return store.save_version(model_name, path, record).version


def status(state: Path) -> dict:
    return json.loads(run_cli("serve", "status", "--json", "--state-dir", str(state)).stdout)[ANOMALY_DETECTOR]


def router_requests(url: str, version: str) -> float:
    text = requests.get(url.split("/v1/")[0] + "/metrics", timeout=5).text
    return sum(
        sample.value for family in text_string_to_metric_families(text) for sample in family.samples
        if sample.name == "router_requests_total" and sample.labels.get("version") == version
    )


def raising_model(training):
    model = train_model(spec_for(ANOMALY_DETECTOR), training.train, isolation_forest(20)).estimator
    del model.named_steps["detector"].estimators_
    return model


def float_model(training):
    features = engineer_features(training.train, ANOMALY_DETECTOR).to_numpy()
    return LinearRegression().fit(features, np.ones(len(features)))


def wrong_shape_model(training):
    features = engineer_features(training.train, ANOMALY_DETECTOR).to_numpy()[:200]
    return KNeighborsRegressor(n_neighbors=1).fit(features, np.ones((len(features), 2), dtype=int))


def slow_model(training):
    return train_model(spec_for(ANOMALY_DETECTOR), training.train, isolation_forest(3000, 512))


def alarmist_model(training):
    model = train_model(spec_for(ANOMALY_DETECTOR), training.train).estimator
    model.named_steps["detector"].offset_ = np.inf
    return model


@pytest.mark.parametrize(
    ("make_model", "extra", "stopped_by", "reason"),
    [
        (raising_model, (), "smoke", "predict: POST :predict with"),
        (float_model, (), "smoke", "contract types and shape: not JSON integers -1/1"),
        (wrong_shape_model, (), "smoke", "contract types and shape: not JSON integers -1/1: [[1.0, 1.0]"),
        (slow_model, ("--param", "max_p95_latency_ms=20"), "smoke", "p95 latency:"),
        # Long enough at 10 % that the client's live requests reach the candidate: two analyses (failure_limit 1) after 3 s
        # each, at about 15 requests a second, are about 90 requests, with 0.9^90 (1 in 13,000) odds that none reaches it.
        (alarmist_model, ("--param", "canary_interval_s=3"), "canary", "prediction_shift"),
    ],
    ids=["raises", "floats", "wrong-shape", "10x-slow", "flags-everything"],
)
def test_faulty_candidate_is_rolled_back_without_a_failed_request(served, training, make_model, extra, stopped_by, reason):
    state, store = served
    stable = store.read_index(ANOMALY_DETECTOR)["stable"]
    version = save(store, make_model(training), state)
    url = status(state)["url"]
    with MainUrlClient(url) as client:
        result = run_cli("rollout", ANOMALY_DETECTOR, "--version", version, "--local", "--state-dir", str(state), *FAST, *extra)
    assert result.returncode == 3, result.stdout[-3000:]
    assert client.sent > 20 and client.failures == []
    index = store.read_index(ANOMALY_DETECTOR)
    entry = index["versions"][version]
    smoke = next(event["detail"] for event in index["history"] if event["version"] == version and event["event"] == "smoke-tested")
    step = {"smoke": "smoke-test", "canary": "canary-promote"}[stopped_by]
    assert entry["status"] == "rejected" and entry["rejected_reason"].startswith(f"rejected at {step}: ") and reason in entry["rejected_reason"]
    assert (reason in smoke) if stopped_by == "smoke" else (smoke == "passed")
    summary = result.stdout[result.stdout.rindex("Summary"):].splitlines()
    row = next(line for line in summary if line.startswith(f"  {ANOMALY_DETECTOR} "))
    assert row.split(None, 2)[2] == entry["rejected_reason"], "the summary row and the stored reason say the same"
    report = Path(next(line for line in summary if line.strip().startswith("report:")).split("report:")[1].strip())
    assert report.parts[-2:] == (step, {"smoke-test": "report.md", "canary-promote": "report.html"}[step]) and report.is_file()
    assert ("FAIL" in report.read_text()) if stopped_by == "smoke" else ("rolled back" in report.read_text())
    assert "exit code 3: a candidate was rejected" in summary[-1]
    assert status(state) == {"url": url, "stable": stable, "candidate": None, "candidate_percent": 0}
    assert index["stable"] == stable
    live = router_requests(url, version)
    assert (live == 0) if stopped_by == "smoke" else (live > 0), "only the canary may give a candidate live traffic"
    assert requests.post(f"{url}:predict", json=FALLBACK, timeout=10).json()["predictions"] == [1]


def test_candidate_whose_file_does_not_match_its_checksum_is_refused(served, training):
    state, store = served
    stable = store.read_index(ANOMALY_DETECTOR)["stable"]
    version = save(store, alarmist_model(training), state)
    model_file = state / "store" / ANOMALY_DETECTOR / version / "model.pkl"
    model_file.write_bytes(model_file.read_bytes() + b"\0")
    url = status(state)["url"]
    with MainUrlClient(url) as client:
        result = run_cli("rollout", ANOMALY_DETECTOR, "--version", version, "--local", "--state-dir", str(state), *FAST)
    assert result.returncode == 1 and "deploy-inference-service" in result.stdout
    assert client.sent > 5 and client.failures == []
    entry = store.read_index(ANOMALY_DETECTOR)["versions"][version]
    assert entry["status"] == "rejected" and "does not match the recorded" in entry["rejected_reason"]
    assert status(state) == {"url": url, "stable": stable, "candidate": None, "candidate_percent": 0}


def test_a_server_that_does_not_reproduce_the_recorded_predictions_is_rejected_at_smoke(served, training):
    """The version's model.pkl is not the model whose predictions its record holds: the smoke test says so."""
    state, store = served
    stable = store.read_index(ANOMALY_DETECTOR)["stable"]
    recorded = train_model(spec_for(ANOMALY_DETECTOR), training.train).reference
    version = save(store, alarmist_model(training), state, reference=recorded)
    result = run_cli("rollout", ANOMALY_DETECTOR, "--version", version, "--local", "--state-dir", str(state), *FAST)
    assert result.returncode == 3, result.stdout[-3000:]
    entry = store.read_index(ANOMALY_DETECTOR)["versions"][version]
    assert entry["rejected_reason"] == (
        f"rejected at smoke-test: equals stored version offline: served predictions DIFFER from {version}'s predictions "
        f"recorded at training on {len(recorded['instances'])} instances"), entry["rejected_reason"]
    assert status(state)["stable"] == stable and router_requests(status(state)["url"], version) == 0


def test_killing_the_candidate_mid_canary_rolls_back_and_stable_keeps_serving(served, training):
    state, store = served
    stable = store.read_index(ANOMALY_DETECTOR)["stable"]
    version = save(store, train_model(spec_for(ANOMALY_DETECTOR), training.train, reseeded(5)), state)
    url = status(state)["url"]
    with MainUrlClient(url) as client:
        rollout = subprocess.Popen(
            [CLI, "rollout", ANOMALY_DETECTOR, "--version", version, "--local", "--state-dir", str(state), *FAST,
             "--param", "canary_interval_s=2"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        serving_state = state / "serving" / f"{ANOMALY_DETECTOR}.json"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and json.loads(serving_state.read_text()).get("candidate_percent", 0) == 0:
            time.sleep(0.1)
        candidate = json.loads(serving_state.read_text())["candidate"]
        assert candidate and candidate["version"] == version
        os.kill(candidate["pid"], signal.SIGKILL)
        output, _ = rollout.communicate(timeout=300)
    assert rollout.returncode == 3, output[-3000:]
    entry = store.read_index(ANOMALY_DETECTOR)["versions"][version]
    assert entry["status"] == "rejected", entry
    assert entry["rejected_reason"].startswith("rejected at canary-promote: "), entry["rejected_reason"]
    assert "not running" in entry["rejected_reason"] or "error_rate" in entry["rejected_reason"], entry["rejected_reason"]
    assert status(state) == {"url": url, "stable": stable, "candidate": None, "candidate_percent": 0}
    assert client.sent > 20 and client.failures == [], client.failures[:3]


def test_good_candidate_is_promoted_through_every_step(served, training):
    state, store = served
    version = save(store, train_model(spec_for(ANOMALY_DETECTOR), training.train, reseeded(9)), state)
    url = status(state)["url"]
    with MainUrlClient(url) as client:
        result = run_cli("rollout", ANOMALY_DETECTOR, "--version", version, "--local", "--state-dir", str(state), *FAST)
    assert result.returncode == 0, result.stdout[-3000:]
    for weight in (10, 50, 100):
        assert f"canary {ANOMALY_DETECTOR} {version} at {weight}%: pass" in logged(result)
    assert client.sent > 20 and client.failures == []
    index = store.read_index(ANOMALY_DETECTOR)
    assert index["stable"] == version and index["versions"][version]["status"] == "stable"
    assert index["history"][-1]["event"] == "promoted"
    assert status(state) == {"url": url, "stable": version, "candidate": None, "candidate_percent": 0}
    assert requests.post(f"{url}:predict", json=FALLBACK, timeout=10).headers["x-served-version"] == version


def test_a_metrics_outage_during_the_canary_is_inconclusive_and_rolls_back(served, training):
    state, store = served
    stable = store.read_index(ANOMALY_DETECTOR)["stable"]
    version = save(store, train_model(spec_for(ANOMALY_DETECTOR), training.train, reseeded(13)), state)
    url = status(state)["url"]
    with MainUrlClient(url) as client:
        result = run_cli("rollout", ANOMALY_DETECTOR, "--version", version, "--local", "--state-dir", str(state), *FAST,
                         "--param", "prometheus_url=http://127.0.0.1:9", "--param", "failure_limit=1")
    assert result.returncode == 3, result.stdout[-3000:]
    assert f"canary {ANOMALY_DETECTOR} {version} at 10%: inconclusive" in logged(result)
    entry = store.read_index(ANOMALY_DETECTOR)["versions"][version]
    assert entry["status"] == "rejected" and "PrometheusProvider failed: cannot reach Prometheus" in entry["rejected_reason"]
    assert status(state) == {"url": url, "stable": stable, "candidate": None, "candidate_percent": 0}
    assert client.sent > 20 and client.failures == []


def executor_processes(function_name: str, ancestor: int) -> list[int]:
    """Return the pids of kfp.local step commands running ``function_name`` that descend from ``ancestor`` (this test's run:
    another test's steps, e.g. a parallel worker's fleet rollout, are never touched). A local run's step command hands its
    executor to the step forkserver, which ends the step when the command dies."""
    return [pid for pid, arguments in command_lines()
            if b"kfp.dsl.executor_main" in arguments and any(function_name.encode() in argument for argument in arguments)
            and _descends_from(pid, ancestor)]


def _descends_from(pid: int, ancestor: int) -> bool:
    """Return whether process ``pid`` is ``ancestor`` or one of its descendants."""
    while pid > 1 and pid != ancestor:
        pid = parent_pid(pid)
    return pid == ancestor


def served_versions(url: str, requests_count: int = 30) -> set[str]:
    """Return the versions named by the answers to ``requests_count`` predict and as many metadata requests to the main URL."""
    named = set()
    for _ in range(requests_count):
        for answer, field in ((requests.post(f"{url}:predict", json=FALLBACK, timeout=10), "model_version"), (requests.get(url, timeout=10), "version")):
            assert answer.headers["x-served-version"] == answer.json()[field], "the router's header names the version that answered"
            named.add(answer.json()[field])
    return named


def test_a_step_crashing_mid_canary_leaves_stable_serving_and_the_candidate_at_zero(served, training):
    state, store = served
    stable = store.read_index(ANOMALY_DETECTOR)["stable"]
    version = save(store, train_model(spec_for(ANOMALY_DETECTOR), training.train, reseeded(3)), state)
    url = status(state)["url"]
    with MainUrlClient(url) as client:
        rollout = subprocess.Popen(
            [CLI, "rollout", ANOMALY_DETECTOR, "--version", version, "--local", "--state-dir", str(state), *FAST,
             "--param", "canary_interval_s=3", "--param", "canary_steps=[50,100]"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        serving_state = state / "serving" / f"{ANOMALY_DETECTOR}.json"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and json.loads(serving_state.read_text()).get("candidate_percent", 0) != 50:
            time.sleep(0.1)
        crashed = executor_processes("canary_promote", rollout.pid)
        assert crashed, "the canary step is running"
        for pid in crashed:
            os.kill(pid, signal.SIGKILL)  # the step's command dies mid-canary, and the step with it, with half the live traffic on the candidate
        output, _ = rollout.communicate(timeout=300)
    assert rollout.returncode == 1, output[-3000:]
    steps = {line.split()[0]: line.split(None, 3)[1:] for line in output.splitlines() if line.startswith("  ") and len(line.split()) > 2}
    assert steps["canary-promote"][0] == "FAILED", output[-3000:]
    assert steps["ensure-safe-serving"][0] == "ok" and f"candidate {version} set back to 0 % traffic" in steps["ensure-safe-serving"][2], output[-3000:]
    assert status(state) == {"url": url, "stable": stable, "candidate": version, "candidate_percent": 0}
    assert client.sent > 20 and client.failures == [], client.failures[:3]
    assert served_versions(url) == {stable}, "after the exit handler no live request reaches the candidate"


def test_exit_handler_takes_only_its_own_runs_live_candidate_back_to_zero_and_ends_only_its_own_hold(served, training):
    from components.serving.local import LocalTarget
    from components.release.approval import ApprovalGate, ApprovalSettings, LocalApprovalSource
    from components.release.rollout import deploy_version, make_safe, rollback

    state, store = served
    target = LocalTarget(state / "serving", state / "store")
    gate = ApprovalGate(LocalApprovalSource(state / "serving"), ApprovalSettings("before-promote"))
    stable = target.status(ANOMALY_DETECTOR).stable
    version = save(store, train_model(spec_for(ANOMALY_DETECTOR), training.train, reseeded(11)), state)
    deploy_version(target, store, ANOMALY_DETECTOR, version, 60, run_name="run-a")
    target.set_traffic(ANOMALY_DETECTOR, 50, 10)
    gate.source.request(ANOMALY_DETECTOR, version)  # run-a's canary holds it for approval
    url = status(state)["url"]
    assert served_versions(url) == {stable, version}, "half the live traffic reaches the candidate before"
    elsewhere = make_safe(target, store, ANOMALY_DETECTOR, run_name="run-b", approval=gate)
    assert f"candidate {version} at 50 % is another run's, left as it is" in elsewhere.message
    assert "hold" not in elsewhere.message and gate.source.awaiting(ANOMALY_DETECTOR) == version, "another run's hold goes on"
    assert target.status(ANOMALY_DETECTOR).candidate_percent == 50
    not_ours = rollback(target, store, ANOMALY_DETECTOR, version, "run-b's check failed", run_name="run-b")
    assert "was not deployed by this run" in not_ours.message and target.status(ANOMALY_DETECTOR).candidate == version
    assert store.read_index(ANOMALY_DETECTOR)["versions"][version]["status"] == "candidate"
    outcome = make_safe(target, store, ANOMALY_DETECTOR, run_name="run-a", approval=gate)
    assert f"the hold of {version} for approval ended with its step: marked expired" in outcome.message
    assert f"candidate {version} set back to 0 % traffic" in outcome.message
    assert gate.source.awaiting(ANOMALY_DETECTOR) is None and gate.source.decision(ANOMALY_DETECTOR, version) is None
    assert served_versions(url) == {stable}, "and none after"
    rollback(target, store, ANOMALY_DETECTOR, version, "test over", run_name="run-a")
    assert target.status(ANOMALY_DETECTOR).candidate is None and store.read_index(ANOMALY_DETECTOR)["versions"][version]["status"] == "rejected"


def test_a_candidate_left_at_50_percent_by_a_stopped_run_is_taken_over_by_a_rollout_of_the_same_version(served, training):
    # Stopping a run from the dashboard can skip its exit handler (KFP 2.2-2.4 compile it as a DAG task, which Argo does not
    # start in a terminated run): what the README tells the user to run then must take the candidate back and finish its canary.
    from components.serving.local import LocalTarget
    from components.release.rollout import deploy_version

    state, store = served
    target = LocalTarget(state / "serving", state / "store")
    stable = target.status(ANOMALY_DETECTOR).stable
    version = save(store, train_model(spec_for(ANOMALY_DETECTOR), training.train, reseeded(13)), state)
    deploy_version(target, store, ANOMALY_DETECTOR, version, 60, run_name="stopped-run")
    target.set_traffic(ANOMALY_DETECTOR, 50, 10)  # where the stopped run's canary was
    result = run_cli("rollout", ANOMALY_DETECTOR, "--version", version, "--local", "--state-dir", str(state), *FAST)
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"{version} serves as a dark candidate (0 % traffic) beside stable {stable}" in result.stdout
    after = target.status(ANOMALY_DETECTOR)
    assert after.stable == version and after.candidate is None, after
    assert store.read_index(ANOMALY_DETECTOR)["versions"][version]["deployment"]["run"] != "stopped-run", "the rollout made it its own"


def test_a_failed_smoke_test_of_the_stable_version_keeps_it_stable_and_serving(served):
    state, store = served
    stable = store.read_index(ANOMALY_DETECTOR)["stable"]
    result = run_cli("rollout", ANOMALY_DETECTOR, "--version", stable, "--local", "--state-dir", str(state), *FAST,
                     "--param", "max_p95_latency_ms=0.001")
    assert result.returncode == 3, result.stdout[-3000:]
    index = store.read_index(ANOMALY_DETECTOR)
    smoke = [event["detail"] for event in index["history"] if event["version"] == stable and event["event"] == "smoke-tested"]
    assert "p95 latency" in smoke[-1], "the smoke test failed"
    assert index["history"][-1]["event"] == "kept serving" and index["stable"] == stable and index["versions"][stable]["status"] == "stable"
    assert f"{stable} stays stable and serving, but this run's check failed: rejected at smoke-test: p95 latency" in result.stdout
    assert status(state)["stable"] == stable
    assert requests.post(f"{status(state)['url']}:predict", json=FALLBACK, timeout=10).json()["predictions"] == [1]


def test_a_run_brings_stable_back_when_nothing_serves_or_fails_saying_why(served):
    state, store = served
    stable = store.read_index(ANOMALY_DETECTOR)["stable"]
    run_cli("serve", "stop", "--state-dir", str(state))
    assert json.loads(run_cli("serve", "status", "--json", "--state-dir", str(state)).stdout) == {}, "nothing serves"
    model_file = state / "store" / ANOMALY_DETECTOR / stable / "model.pkl"
    good = model_file.read_bytes()
    model_file.write_bytes(good + b"\0")
    try:
        broken = run_cli("rollout", ANOMALY_DETECTOR, "--version", stable, "--local", "--state-dir", str(state), *FAST)
    finally:
        model_file.write_bytes(good)
    assert broken.returncode == 1, broken.stdout[-3000:]
    assert f"nothing is serving and stable {stable} could not be restored" in broken.stdout and "does not match" in broken.stdout
    assert store.read_index(ANOMALY_DETECTOR)["versions"][stable]["status"] == "stable"
    restored = run_cli("rollout", ANOMALY_DETECTOR, "--version", stable, "--local", "--state-dir", str(state), *FAST)
    assert restored.returncode == 0, restored.stdout[-3000:]
    assert f"restored stable {stable}: nothing was serving" in restored.stdout[restored.stdout.rindex("Summary"):]
    assert status(state)["stable"] == stable
    assert requests.post(f"{status(state)['url']}:predict", json=FALLBACK, timeout=10).json()["predictions"] == [1]


def test_serve_stop_never_signals_a_recycled_pid(tmp_path):
    """A state file whose PIDs now belong to unrelated processes: nothing is killed, the state is still cleared."""
    unrelated = subprocess.Popen(["sleep", "60"])
    try:
        serving = tmp_path / "serving"
        serving.mkdir()
        entry = {"version": "v1", "pid": unrelated.pid, "port": 45678, "storage_uri": "pvc://x/anomaly-detector/v1", "checksum": "0" * 64}
        (serving / f"{ANOMALY_DETECTOR}.json").write_text(json.dumps(
            {"model": ANOMALY_DETECTOR, "router": {"pid": unrelated.pid, "port": 45679}, "stable": entry, "candidate": None, "candidate_percent": 0}))
        result = run_cli("serve", "stop", "--state-dir", str(tmp_path))
        assert result.returncode == 0 and ANOMALY_DETECTOR in result.stdout
        time.sleep(0.5)
        assert unrelated.poll() is None, "the unrelated process that now holds the recorded PID was left alone"
        assert not (serving / f"{ANOMALY_DETECTOR}.json").exists()
    finally:
        unrelated.kill()


def test_a_server_whose_port_another_process_holds_is_started_on_another_and_never_confused_with_it(training, tmp_path, monkeypatch):
    """The free port is taken before the server binds it, by a look-alike that answers ready for the same model."""
    import http.server

    from components.serving import local as local_serving

    class LookAlike(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            body = json.dumps({"name": ANOMALY_DETECTOR, "ready": True}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    impostor = http.server.ThreadingHTTPServer(("127.0.0.1", 0), LookAlike)
    threading.Thread(target=impostor.serve_forever, daemon=True).start()
    ports, free_port = iter([impostor.server_address[1]]), local_serving.free_port
    monkeypatch.setattr(local_serving, "free_port", lambda: next(ports, None) or free_port())
    store = FilesystemStore(tmp_path / "store")
    version = save(store, train_model(spec_for(ANOMALY_DETECTOR), training.train), tmp_path)
    target = local_serving.local_target(tmp_path)
    try:
        status = target.deploy(ANOMALY_DETECTOR, version, f"pvc://models/{ANOMALY_DETECTOR}/{version}",
                               store.read_index(ANOMALY_DETECTOR)["versions"][version]["sha256"], timeout_s=120)
        backend = json.loads((tmp_path / "serving" / f"{ANOMALY_DETECTOR}.json").read_text())["stable"]
        assert backend["port"] != impostor.server_address[1], "the look-alike's port is not recorded as ours"
        assert local_serving.listens_on(backend["pid"], backend["port"]), "the recorded pid is the one listening"
        assert "address already in use" in (tmp_path / "serving" / "logs" / f"{ANOMALY_DETECTOR}-{version}.log").read_text().lower()
        assert requests.post(f"{status.url}:predict", json=FALLBACK, timeout=10).json()["predictions"] == [1]
    finally:
        target.stop_all()
        impostor.shutdown()


class V2AndV1Client(MainUrlClient):
    """Sends the same rows over V2 infer and V1 predict to the main URL in a loop; keeps every answer with the version its body names."""

    def __init__(self, url: str, rows: list[list[float]]) -> None:
        super().__init__(url)
        self.rows = rows
        self.answers: list[tuple[str, str, list]] = []  # (protocol, the body's model_version, predictions)

    def _loop(self) -> None:
        session = requests.Session()
        server, model = self.url.split("/v1/models/")
        body = {"inputs": [{"name": "input-0", "shape": [len(self.rows), len(self.rows[0])], "datatype": "FP64",
                            "data": [value for row in self.rows for value in row]}]}
        while not self._stop.is_set():
            for protocol, url, payload in (("v2", f"{server}/v2/models/{model}/infer", body), ("v1", f"{self.url}:predict", {"instances": self.rows})):
                try:
                    answer = session.post(url, json=payload, timeout=30)
                    if answer.status_code != 200:
                        self.failures.append(f"{protocol} {answer.status_code} {answer.text[:100]}")
                        continue
                    document = answer.json()
                    if protocol == "v2":
                        (output,) = document["outputs"]
                        assert output["datatype"] == "INT64" and output["shape"] == [len(self.rows)], output
                        predictions = output["data"]
                    else:
                        predictions = document["predictions"]
                    assert document["model_name"] == model, document
                    assert answer.headers["x-served-version"] == document["model_version"], "the router's header names the version that answered"
                    self.answers.append((protocol, document["model_version"], predictions))
                except (requests.RequestException, ValueError, KeyError, AssertionError) as error:
                    self.failures.append(f"{protocol} {error!r}")
                self.sent += 1
            time.sleep(CLIENT_PAUSE_S)


def test_v2_infer_on_the_main_url_during_a_canary_matches_v1(served, training):
    state, store = served
    stable = store.read_index(ANOMALY_DETECTOR)["stable"]
    version = save(store, train_model(spec_for(ANOMALY_DETECTOR), training.train, {"target_false_positive_rate": 0.3}), state)
    url = status(state)["url"]
    sample = probe_sample(training.validation, ANOMALY_DETECTOR, rows=40)
    with V2AndV1Client(url, sample.tolist()) as client:
        result = run_cli("rollout", ANOMALY_DETECTOR, "--version", version, "--local", "--state-dir", str(state), *FAST,
                         "--param", "canary_interval_s=1.5", "--param", "max_prediction_shift=1")
    assert result.returncode == 0, result.stdout[-3000:]
    assert client.sent > 20 and client.failures == [], client.failures[:3]
    expected = {name: load_model(store, ANOMALY_DETECTOR, name).predict(sample).tolist() for name in (stable, version)}
    assert expected[stable] != expected[version], "the two versions disagree on some rows, so the check can tell them apart"
    for protocol, named, predictions in client.answers:
        assert predictions == expected[named], f"a {protocol} answer naming {named} has another version's predictions"
        assert all(type(value) is int for value in predictions)
    for protocol in ("v1", "v2"):
        named = {version_named for sent_by, version_named, _ in client.answers if sent_by == protocol}
        assert named == {stable, version}, f"{protocol} requests followed the traffic split to both versions, each named by its answer"


def test_the_main_url_speaks_v2_health_and_names_a_wrong_content_type(served):
    state, _ = served
    url = status(state)["url"]
    server = url.split("/v1/models/")[0]
    assert requests.get(f"{server}/v2/health/live", timeout=10).status_code == 200
    assert requests.get(f"{server}/v2/health/ready", timeout=10).status_code == 200
    assert requests.get(f"{server}/v2/models/{ANOMALY_DETECTOR}/ready", timeout=10).json()["ready"] is True
    stable = status(state)["stable"]
    assert requests.get(url, timeout=10).json() == {"name": ANOMALY_DETECTOR, "version": stable, "ready": True}
    v2_metadata = requests.get(f"{server}/v2/models/{ANOMALY_DETECTOR}", timeout=10).json()
    assert (v2_metadata["name"], v2_metadata["versions"]) == (ANOMALY_DETECTOR, [stable]), v2_metadata
    assert requests.post(f"{server}/v2/repository/models/{ANOMALY_DETECTOR}/unload", timeout=10).status_code == 404
    body = json.dumps(FALLBACK)
    for headers, named in (({"Content-Type": "application/x-www-form-urlencoded"}, "'application/x-www-form-urlencoded'"), ({}, "is missing")):
        for target in (f"{url}:predict", f"{server}/v2/models/{ANOMALY_DETECTOR}/infer"):
            answer = requests.post(target, data=body, headers=headers, timeout=10)  # as plain `curl -d` sends it
            assert answer.status_code == 415, (target, answer.status_code, answer.text)
            assert "Content-Type header" in answer.json()["error"] and named in answer.json()["error"] and "application/json" in answer.json()["error"]
