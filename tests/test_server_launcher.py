"""The warm launcher that forks model servers: one per state directory, bounded requests, gone after `serve stop`."""

import json
import shutil
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
from components.serving.local import local_target, process_alive
from components.runtime.server_launcher import MAX_REQUEST_BYTES, ServerLauncher, launcher_address
from components.serving.target import ServingError
from components.store.filesystem import FilesystemStore
from tests.conftest import REPO, run_cli


def parent_pid(pid: int) -> int:
    return int(next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("PPid:")))


def answers(home: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        return probe.connect_ex(launcher_address(home)) == 0


def ask(home: Path, line: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(30)
        connection.connect(launcher_address(home))
        connection.sendall(line)
        return json.loads(connection.makefile("rb").readline())


def test_model_servers_are_forked_by_one_warm_launcher_that_serve_stop_ends(tmp_path):
    store = FilesystemStore(tmp_path / "store")
    detector = IsolationForest(n_estimators=5, random_state=0).fit(np.random.default_rng(0).random((200, len(fallback_instance()))))
    joblib.dump(detector, tmp_path / "model.pkl")
    versions = [store.save_version(ANOMALY_DETECTOR, tmp_path / "model.pkl", {"run_name": "test"}).version for _ in range(2)]
    target = local_target(tmp_path)
    try:
        for version in versions:
            status = target.deploy(ANOMALY_DETECTOR, version, store.storage_uri(ANOMALY_DETECTOR, version),
                                   store.read_index(ANOMALY_DETECTOR)["versions"][version]["sha256"], timeout_s=120)
        assert (status.stable, status.candidate) == tuple(versions)
        state = json.loads((tmp_path / "serving" / f"{ANOMALY_DETECTOR}.json").read_text())
        servers = [state["stable"]["pid"], state["candidate"]["pid"]]
        launchers = {parent_pid(pid) for pid in servers}
        assert len(launchers) == 1, "both versions' servers were forked by the same process"
        (launcher,) = launchers
        command = Path(f"/proc/{launcher}/cmdline").read_bytes().split(b"\0")
        assert b"components.runtime.server_launcher" in command and str(tmp_path / "serving").encode() in command
        assert parent_pid(state["router"]["pid"]) != launcher, "the router is started as its own command"
        for role in ("stable", "candidate"):
            title = Path(f"/proc/{state[role]['pid']}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            assert f"-m components.runtime.model_server --name {ANOMALY_DETECTOR} --version {state[role]['version']}" in title, "ps shows the server's own command"
            assert title.split()[-2:] == ["--port", str(state[role]["port"])]
        assert requests.post(f"{status.url}:predict", json={"instances": [fallback_instance()]}, timeout=10).json()["predictions"] in ([1], [-1])
        assert "Uvicorn running" in (tmp_path / "serving" / "logs" / f"{ANOMALY_DETECTOR}-{versions[1]}.log").read_text()
    finally:
        result = run_cli("serve", "stop", "--state-dir", str(tmp_path))
    assert result.returncode == 0, result.stdout
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (answers(tmp_path / "serving") or any(process_alive(pid) for pid in [*servers, launcher])):
        time.sleep(0.1)
    assert not answers(tmp_path / "serving") and not any(process_alive(pid) for pid in [*servers, launcher]), "serve stop left a process"


def test_the_launcher_takes_only_bounded_server_arguments_a_log_of_its_own_and_the_runtimes_environment(tmp_path):
    home = tmp_path / "serving"
    launcher = ServerLauncher(home)
    try:
        with pytest.raises(ServingError, match="refused to start a model server: bad request: the log must be a file in"):
            launcher.spawn(["--name", ANOMALY_DETECTOR], "../../escaped")
        logs = str(home / "logs" / "x.log")
        assert "arguments must be a list" in ask(home, json.dumps({"arguments": "--name x; rm -rf /", "log": logs}).encode() + b"\n")["error"]
        assert "arguments must be a list" in ask(home, json.dumps({"arguments": ["--name"] * 65, "log": logs}).encode() + b"\n")["error"]
        assert "over" in ask(home, b'{"arguments": ["' + b"a" * (MAX_REQUEST_BYTES + 10) + b'"]}\n')["error"]
        assert "bad request" in ask(home, b"not json\n")["error"]
        with pytest.raises(ServingError, match="bad request: the environment may set only PREDICT_PROBA, to short strings"):
            launcher.spawn(["--name", ANOMALY_DETECTOR], "x", {"LD_PRELOAD": "/tmp/evil.so"})
        assert not (home / "logs" / "x.log").exists() and not (tmp_path / "escaped.log").exists(), "nothing was started"
    finally:
        launcher.stop()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and answers(home):
        time.sleep(0.1)
    assert not answers(home)


@pytest.mark.parametrize(("changed", "old", "new"), [("anomaly-detector.yaml", "min_f1: 0.25", "min_f1: 0.3"),
                                                     ("types/adr-040.yaml", "champion_tolerance: 0.05", "champion_tolerance: 0.1")])
def test_a_changed_builtin_model_spec_or_type_table_means_a_new_launcher(tmp_path, monkeypatch, changed, old, new):
    from components.runtime import warm_process

    before = launcher_address(tmp_path)
    specs = shutil.copytree(warm_process.SPECS, tmp_path / "specs")
    monkeypatch.setattr(warm_process, "SPECS", specs)
    assert launcher_address(tmp_path) == before
    edited = specs / changed
    assert old in edited.read_text()
    edited.write_text(edited.read_text().replace(old, new))
    assert launcher_address(tmp_path) != before, "a launcher started before the change would serve the old contract"


def test_a_launcher_with_no_server_exits_by_itself_and_each_directory_gets_its_own(tmp_path):
    assert launcher_address(tmp_path / "a") != launcher_address(tmp_path / "b")
    process = subprocess.Popen([sys.executable, "-m", "components.runtime.server_launcher", "--home", str(tmp_path), "--idle-exit-s", "0.5"], cwd=REPO)
    assert process.wait(timeout=120) == 0
    assert not answers(tmp_path)


def test_a_launcher_that_takes_a_request_but_never_answers_is_an_error_and_is_not_asked_twice(tmp_path, monkeypatch):
    """A lost answer may follow a fork: asking again could start a second, untracked server on the same port."""
    from components.runtime import server_launcher

    monkeypatch.setattr(server_launcher, "ASK_TIMEOUT_S", 0.5)
    home = tmp_path / "serving"
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(launcher_address(home))
    silent.listen(4)
    try:
        with pytest.raises(ServingError, match="the server launcher did not answer"):
            ServerLauncher(home).spawn(["--name", ANOMALY_DETECTOR], "v1")
        silent.settimeout(0.5)
        first, _ = silent.accept()
        first.close()
        with pytest.raises(socket.timeout):
            silent.accept()  # the request was sent once, and no second connection came
    finally:
        silent.close()
