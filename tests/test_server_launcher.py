"""The warm launcher that forks model servers: one per user, code and environment, shared by every state directory, bounded
requests, gone after the last `serve stop`."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import joblib
import numpy as np
import pytest
import requests
from sklearn.ensemble import IsolationForest

from components.model.contract import ANOMALY_DETECTOR, fallback_instance
from components.runtime.server_launcher import MAX_REQUEST_BYTES, ServerLauncher, launcher_address
from components.serving.local import local_target, process_alive
from components.serving.target import ServingError
from components.store.filesystem import FilesystemStore
from tests.conftest import REPO, ask_warm_process, parent_pid, run_cli

SECRET = "launcher-test-secret-4c1d"


@pytest.fixture
def own_launcher(tmp_path, monkeypatch) -> str:
    """Give this test a launcher of its own (a keyed name other tests lack) and return its address."""
    monkeypatch.setenv("KSERVE_TEST_ISOLATION", str(tmp_path))
    return launcher_address(dict(os.environ))


def answers(address: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        return probe.connect_ex(address) == 0


def deploy_versions(state_directory: Path, count: int):
    """Deploy ``count`` versions of a small detector in ``state_directory``; return its serving state and status."""
    store = FilesystemStore(state_directory / "store")
    detector = IsolationForest(n_estimators=5, random_state=0).fit(np.random.default_rng(0).random((200, len(fallback_instance()))))
    state_directory.mkdir(parents=True, exist_ok=True)
    joblib.dump(detector, state_directory / "model.pkl")
    versions = [store.save_version(ANOMALY_DETECTOR, state_directory / "model.pkl", {"run_name": "test"}).version for _ in range(count)]
    target = local_target(state_directory)
    for version in versions:
        status = target.deploy(ANOMALY_DETECTOR, version, store.storage_uri(ANOMALY_DETECTOR, version),
                               store.read_index(ANOMALY_DETECTOR)["versions"][version]["sha256"], timeout_s=120)
    return json.loads((state_directory / "serving" / f"{ANOMALY_DETECTOR}.json").read_text()), status, versions


def test_every_state_directorys_model_servers_are_forked_by_one_warm_launcher_that_the_last_serve_stop_ends(tmp_path, monkeypatch, own_launcher):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)  # a run's credentials: no model server needs them
    first, second = tmp_path / "first", tmp_path / "second"
    servers, launcher = [], None
    try:
        state, status, versions = deploy_versions(first, 2)
        assert (status.stable, status.candidate) == tuple(versions)
        other_state, _, _ = deploy_versions(second, 1)
        servers = [state["stable"]["pid"], state["candidate"]["pid"], other_state["stable"]["pid"]]
        launchers = {parent_pid(pid) for pid in servers}
        assert len(launchers) == 1, "both directories' servers were forked by the same process"
        (launcher,) = launchers
        assert b"components.runtime.server_launcher" in Path(f"/proc/{launcher}/cmdline").read_bytes().split(b"\0")
        assert parent_pid(state["router"]["pid"]) != launcher, "the router is started as its own command"
        for role in ("stable", "candidate"):
            title = Path(f"/proc/{state[role]['pid']}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            assert f"-m components.runtime.model_server --name {ANOMALY_DETECTOR} --version {state[role]['version']}" in title, "ps shows the server's own command"
            assert title.split()[-2:] == ["--port", str(state[role]["port"])]
        for pid in [launcher, *servers]:
            assert SECRET.encode() not in Path(f"/proc/{pid}/environ").read_bytes(), "a run's credentials reached a warm process"
        assert requests.post(f"{status.url}:predict", json={"instances": [fallback_instance()]}, timeout=10).json()["predictions"] in ([1], [-1])
        assert "Uvicorn running" in (first / "serving" / "logs" / f"{ANOMALY_DETECTOR}-{versions[1]}.log").read_text()
        assert "Uvicorn running" in (second / "serving" / "logs" / f"{ANOMALY_DETECTOR}-{other_state['stable']['version']}.log").read_text()

        result = run_cli("serve", "stop", "--state-dir", str(first))
        assert result.returncode == 0, result.stdout
        assert not any(process_alive(pid) for pid in servers[:2]) and process_alive(servers[2])
        assert answers(own_launcher) and process_alive(launcher), "the launcher stays while another directory's server lives"
    finally:
        results = [run_cli("serve", "stop", "--state-dir", str(directory)) for directory in (first, second)]
    assert all(result.returncode == 0 for result in results), [result.stdout for result in results]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (answers(own_launcher) or any(process_alive(pid) for pid in [*servers, launcher])):
        time.sleep(0.1)
    assert not answers(own_launcher) and not any(process_alive(pid) for pid in [*servers, launcher]), "serve stop left a process"


def test_the_launcher_takes_only_bounded_server_arguments_a_log_and_the_runtimes_environment(tmp_path, own_launcher):
    home = tmp_path / "serving"
    launcher = ServerLauncher(home)
    try:
        with pytest.raises(ServingError, match="'../../escaped' is not a log name"):
            launcher.spawn(["--name", ANOMALY_DETECTOR], "../../escaped")
        with pytest.raises(ServingError, match="bad request: the environment may set only PREDICT_PROBA, to short strings"):
            launcher.spawn(["--name", ANOMALY_DETECTOR], "x", {"LD_PRELOAD": "/tmp/evil.so"})
        with open(home / "logs" / "x.log", "ab") as log:
            assert "arguments must be a list" in ask_warm_process(own_launcher, json.dumps({"arguments": "--name x; rm -rf /"}).encode(), [log.fileno()])["error"]
            assert "arguments must be a list" in ask_warm_process(own_launcher, json.dumps({"arguments": ["--name"] * 65}).encode(), [log.fileno()])["error"]
            assert "passes its server's log file" in ask_warm_process(own_launcher, json.dumps({"arguments": ["--name", ANOMALY_DETECTOR]}).encode(), [])["error"]
            relative = json.dumps({"arguments": ["--name", ANOMALY_DETECTOR], "directory": "serving"}).encode()
            assert "the working directory must be an existing absolute path" in ask_warm_process(own_launcher, relative, [log.fileno()])["error"]
        assert "bad request" in ask_warm_process(own_launcher, b"not json", [])["error"]
        assert "over" in ask_warm_process(own_launcher, b"", [], announced_length=MAX_REQUEST_BYTES + 1)["error"]
        assert (home / "logs" / "x.log").read_bytes() == b"" and not (tmp_path / "escaped.log").exists(), "nothing was started"
    finally:
        assert launcher.stop(), "a launcher that forked no server stops when asked"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and answers(own_launcher):
        time.sleep(0.1)
    assert not answers(own_launcher)


@pytest.mark.parametrize(("changed", "old", "new"), [("anomaly-detector.yaml", "min_f1: 0.25", "min_f1: 0.3"),
                                                     ("types/adr-040.yaml", "champion_tolerance: 0.05", "champion_tolerance: 0.1")])
def test_a_changed_builtin_model_spec_or_type_table_means_a_new_launcher(tmp_path, monkeypatch, changed, old, new):
    from components.runtime import warm_process

    before = launcher_address({})
    specs = shutil.copytree(warm_process.SPECS, tmp_path / "specs")
    monkeypatch.setattr(warm_process, "SPECS", specs)
    assert launcher_address({}) == before
    edited = specs / changed
    assert old in edited.read_text()
    edited.write_text(edited.read_text().replace(old, new))
    assert launcher_address({}) != before, "a launcher started before the change would serve the old contract"


def test_state_directories_share_a_launcher_and_an_environment_its_imports_read_gets_its_own(tmp_path, own_launcher):
    base = {"PATH": "/usr/bin", "MODEL_SERVING_HOME": str(tmp_path / "a"), "AWS_ACCESS_KEY_ID": "a"}
    assert launcher_address(base) == launcher_address({**base, "MODEL_SERVING_HOME": str(tmp_path / "b"), "AWS_ACCESS_KEY_ID": "b"})
    for name, value in (("MODEL_MAX_ROWS", "5"), ("KSERVE_LOGLEVEL", "DEBUG"), ("OMP_NUM_THREADS", "1"), ("PYTHONHASHSEED", "0")):
        assert launcher_address({**base, name: value}) != launcher_address(base), f"servers would not see a changed {name}"
    mismatched = subprocess.run([sys.executable, "-m", "components.runtime.server_launcher", "--expect-address", "model-pipelines-launcher-0-x"],
                                cwd=REPO, capture_output=True, text=True, timeout=60)
    assert mismatched.returncode == 2 and "its code or environment differs from the client's" in mismatched.stderr
    idle = subprocess.Popen([sys.executable, "-m", "components.runtime.server_launcher", "--expect-address", own_launcher[1:], "--idle-exit-s", "0.5"], cwd=REPO)
    assert idle.wait(timeout=120) == 0, "a launcher with no server exits by itself"
    assert not answers(own_launcher)


def test_a_launcher_that_takes_a_request_but_never_answers_is_an_error_and_is_not_asked_twice(tmp_path, monkeypatch, own_launcher):
    """A lost answer may follow a fork: asking again could start a second, untracked server on the same port."""
    from components.runtime import server_launcher

    monkeypatch.setattr(server_launcher, "ASK_TIMEOUT_S", 0.5)
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(own_launcher)
    silent.listen(4)
    try:
        with pytest.raises(ServingError, match="the server launcher did not answer"):
            ServerLauncher(tmp_path / "serving").spawn(["--name", ANOMALY_DETECTOR], "v1")
        silent.settimeout(0.5)
        first, _ = silent.accept()
        first.close()
        with pytest.raises(socket.timeout):
            silent.accept()  # the request was sent once, and no second connection came
    finally:
        silent.close()


def test_a_launcher_that_stops_answering_is_an_error_quoting_the_log_it_writes(tmp_path, monkeypatch, own_launcher):
    """The launcher logs to the state directory that started it: another directory's client quotes that log, not its own."""
    from components.runtime import server_launcher

    first, second = ServerLauncher(tmp_path / "first"), ServerLauncher(tmp_path / "second")
    refused = {"LD_PRELOAD": "/tmp/evil.so"}  # a request the launcher refuses: it forks nothing
    with pytest.raises(ServingError, match="refused to start a model server"):
        first.spawn(["--name", ANOMALY_DETECTOR], "x", refused)  # starts the launcher, logging to first/logs/launcher.log
    log = tmp_path / "first" / "logs" / "launcher.log"
    pid = int(log.read_text().split("server launcher: pid ")[1].split()[0])
    monkeypatch.setattr(server_launcher, "ASK_TIMEOUT_S", 0.5)
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(ServingError, match="the server launcher did not answer") as stopped:
            second.spawn(["--name", ANOMALY_DETECTOR], "x", refused)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert f"its log ({log}): " in str(stopped.value) and f"server launcher: pid {pid} ready" in str(stopped.value)
    assert not (tmp_path / "second" / "logs" / "launcher.log").exists()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not first.stop():
        time.sleep(0.1)
    while time.monotonic() < deadline and answers(own_launcher):
        time.sleep(0.1)
    assert not answers(own_launcher)
