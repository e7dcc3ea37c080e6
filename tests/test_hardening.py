"""The runtime and router under bad clients: validation, limits, removed routes, stale connections, fuzzing."""

import hashlib
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import joblib
import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.neighbors import LocalOutlierFactor

from components.contract import ANOMALY_DETECTOR, fallback_instance
from components.local_serving import free_port, http_get, stop_process

FEATURES = len(fallback_instance())


def start(module_args: list[str], ready_url: str, log: Path) -> subprocess.Popen:
    with open(log, "ab") as handle:
        process = subprocess.Popen([sys.executable, "-m", *module_args], stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-2000:]
        if http_get(ready_url, timeout=1.0)[0] == 200:
            return process
        time.sleep(0.1)
    raise AssertionError(f"not ready: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    """The project runtime serving a detector with small limits, and its model URL."""
    work = tmp_path_factory.mktemp("runtime")
    model_dir = work / "v1"
    model_dir.mkdir()
    # A deliberately slow detector (brute-force neighbours over 40,000 points), so that a long predict is easy to make.
    slow = LocalOutlierFactor(novelty=True, algorithm="brute", n_neighbors=5).fit(np.random.default_rng(5).random((40_000, FEATURES)))
    joblib.dump(slow, model_dir / "model.pkl")
    checksum = hashlib.sha256((model_dir / "model.pkl").read_bytes()).hexdigest()
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/models/{ANOMALY_DETECTOR}"
    process = start(["components.model_server", "--name", ANOMALY_DETECTOR, "--version", "v1", "--model-dir", str(model_dir),
                     "--sha256", checksum, "--port", str(port), "--max-body-bytes", "2000000", "--max-rows", "5000"], url, work / "runtime.log")
    try:
        yield url, process, model_dir
    finally:
        stop_process(process.pid)


GOOD = {"instances": [fallback_instance()]}


def bad_bodies() -> dict[str, object]:
    row = fallback_instance()
    return {
        "null value": {"instances": [[None] + row[1:]]},
        "string value": {"instances": [["0.5"] + row[1:]]},
        "boolean value": {"instances": [[True] + row[1:]]},
        "huge value": {"instances": [[1e308] + row[1:]]},
        "short row": {"instances": [row[:-1]]},
        "flat list": {"instances": row},
        "no instances": {"rows": [row]},
        "empty": {"instances": []},
    }


def test_bad_values_get_400_naming_the_problem(runtime):
    url, process, _ = runtime
    for name, body in bad_bodies().items():
        answer = requests.post(f"{url}:predict", json=body, timeout=10)
        assert answer.status_code == 400, f"{name}: {answer.status_code} {answer.text[:200]}"
        assert "instances" in answer.text, f"{name}: {answer.text[:200]}"
    nan = requests.post(f"{url}:predict", data='{"instances": [[NaN' + ", 0.1" * (FEATURES - 1) + "]]}",
                        headers={"Content-Type": "application/json"}, timeout=10)
    assert 400 <= nan.status_code < 500, nan.text[:200]
    assert len(requests.post(f"{url}:predict", json=GOOD, timeout=10).json()["predictions"]) == 1
    assert process.poll() is None


def test_repository_routes_are_not_served(runtime):
    url, _, _ = runtime
    base = url.split("/v1/")[0]
    for verb in ("unload", "load"):
        assert requests.post(f"{base}/v2/repository/models/{ANOMALY_DETECTOR}/{verb}", timeout=10).status_code == 404
    assert requests.get(url, timeout=10).json()["ready"] is True
    assert requests.post(f"{url}:predict", json=GOOD, timeout=10).status_code == 200


def test_oversized_bodies_and_rows_get_413_while_reading(runtime):
    url, process, _ = runtime
    declared = requests.post(f"{url}:predict", data=b"x" * 3_000_000, headers={"Content-Type": "application/json"}, timeout=30)
    assert declared.status_code == 413 and "2000000 bytes" in declared.text

    def chunks():
        yield b'{"instances": ['
        for _ in range(12000):
            yield (json.dumps(fallback_instance()) + ",").encode()

    streamed = requests.post(f"{url}:predict", data=chunks(), headers={"Content-Type": "application/json"}, timeout=30)
    assert streamed.status_code == 413
    rows = requests.post(f"{url}:predict", json={"instances": [fallback_instance()] * 5001}, timeout=30)
    assert rows.status_code == 413 and "limit of 5000" in rows.text
    assert process.poll() is None and requests.post(f"{url}:predict", json=GOOD, timeout=10).status_code == 200


def test_readiness_answers_while_a_long_predict_runs(runtime):
    url, _, _ = runtime
    row = json.dumps(fallback_instance()).encode()
    body = b'{"instances": [' + b",".join([row] * 5000) + b"]}"
    sent = [threading.Event() for _ in range(3)]
    finished: list[tuple[int, float]] = []

    def long_predict(index: int) -> None:
        def chunks():
            yield body
            sent[index].set()

        answer = requests.post(f"{url}:predict", data=chunks(), headers={"Content-Type": "application/json"}, timeout=120)
        finished.append((answer.status_code, time.monotonic()))

    workers = [threading.Thread(target=long_predict, args=(index,)) for index in range(len(sent))]
    for worker in workers:
        worker.start()
    assert all(event.wait(60) for event in sent)
    ready = requests.get(url, timeout=60)
    ready_at = time.monotonic()
    for worker in workers:
        worker.join(120)
    assert ready.status_code == 200 and [status for status, _ in finished] == [200] * len(sent)
    # Three slow predicts were sent before the probe; had they run on the event loop, the probe would wait for one at least.
    assert ready_at < min(at for _, at in finished), "readiness waited for a predict: it ran on the event loop"


def test_the_runtime_refuses_to_start_without_a_checksum(runtime, tmp_path):
    _, _, model_dir = runtime
    result = subprocess.run([sys.executable, "-m", "components.model_server", "--name", ANOMALY_DETECTOR, "--model-dir", str(model_dir),
                             "--port", str(free_port())], capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin"})
    assert result.returncode == 1 and "no sha256 given" in result.stderr


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=5),
                    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=4),
                    max_leaves=60))
def test_any_json_gets_2xx_or_4xx_and_the_server_stays_up(runtime, value):
    url, process, _ = runtime
    for body in (value, {"instances": value}):
        answer = requests.post(f"{url}:predict", data=json.dumps(body), headers={"Content-Type": "application/json"}, timeout=10)
        assert answer.status_code < 500, f"{json.dumps(body)[:200]} -> {answer.status_code} {answer.text[:200]}"
    assert process.poll() is None


class DroppingBackend:
    """A backend that keeps a connection open after answering, then drops it when the next request arrives on it:
    the race where a server closes an idle keep-alive connection just as the client reuses it."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.served = self.dropped = 0
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    @staticmethod
    def _read_request(connection: socket.socket) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = connection.recv(65536)
            if not chunk:
                return False
            data += chunk
        headers, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in headers.split(b"\r\n") if line.lower().startswith(b"content-length")), 0)
        while len(body) < length:
            body += connection.recv(65536)
        return True

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            if not self._read_request(connection):
                return
            payload = json.dumps({"predictions": [1]}).encode()
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
            self.served += 1
            if self._read_request(connection):
                self.dropped += 1  # closed without an answer


def test_router_retries_a_dropped_pooled_connection_and_bad_clients_never_break_good_ones(runtime, tmp_path):
    url, _, _ = runtime
    dropping = DroppingBackend()
    routes = tmp_path / "routes.json"
    port = free_port()
    router_url = f"http://127.0.0.1:{port}/v1/models/{ANOMALY_DETECTOR}"
    routes.write_text(json.dumps({"stable": {"version": "dropping", "port": dropping.port}, "candidate": None, "candidate_percent": 0}))
    router = start(["components.router", "--model", ANOMALY_DETECTOR, "--routes", str(routes), "--port", str(port)],
                   f"http://127.0.0.1:{port}/metrics", tmp_path / "router.log")
    try:
        session = requests.Session()
        answers = [session.post(f"{router_url}:predict", json=GOOD, timeout=10).status_code for _ in range(10)]
        assert answers == [200] * 10 and dropping.served == 10 and dropping.dropped >= 3, (answers, dropping.dropped)
        runtime_port = int(url.split(":")[2].split("/")[0])
        routes.write_text(json.dumps({"stable": {"version": "v1", "port": runtime_port}, "candidate": None, "candidate_percent": 0}))
        bad, good = list(bad_bodies().values()), []
        for number in range(30):
            session.post(f"{router_url}:predict", json=bad[number % len(bad)], timeout=10)
            good.append(session.post(f"{router_url}:predict", json=GOOD, timeout=10).status_code)
        assert len(good) == 30 and good == [200] * 30
        assert requests.post(f"{router_url}:predict", data=b"x" * 5_000_000, timeout=30).status_code == 413
    finally:
        stop_process(router.pid)
