"""The runtime and router under bad clients: validation, limits, removed routes, stale connections, fuzzing."""

import contextlib
import hashlib
import http.client
import json
import math
import socket
import subprocess
import sys
import threading
import time

import joblib
import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from sklearn.neighbors import LocalOutlierFactor

from components.model.contract import ANOMALY_DETECTOR, fallback_instance
from components.serving.local import free_port, http_get, stop_process
from tests.servers import start_server

FEATURES = len(fallback_instance())
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    """The project runtime serving a detector with small limits (1 s header and 2 s body timeouts), its model URL, process and model directory."""
    work = tmp_path_factory.mktemp("runtime")
    model_dir = work / "v1"
    model_dir.mkdir()
    # A deliberately slow detector (brute-force neighbours over 40,000 points), so that a long predict is easy to make.
    slow = LocalOutlierFactor(novelty=True, algorithm="brute", n_neighbors=5).fit(np.random.default_rng(5).random((40_000, FEATURES)))
    joblib.dump(slow, model_dir / "model.pkl")
    checksum = hashlib.sha256((model_dir / "model.pkl").read_bytes()).hexdigest()
    process, port = start_server(
        lambda port: [sys.executable, "-m", "components.runtime.model_server", "--name", ANOMALY_DETECTOR, "--version", "v1", "--model-dir", str(model_dir),
                      "--sha256", checksum, "--port", str(port), "--max-body-bytes", "2000000", "--max-rows", "5000", "--header-timeout-s", "1",
                      "--body-timeout-s", "2"],
        work / "runtime.log", "the runtime", lambda port: http_get(f"http://127.0.0.1:{port}/v1/models/{ANOMALY_DETECTOR}", timeout=1.0)[0] == 200,
        timeout_s=90)
    url = f"http://127.0.0.1:{port}/v1/models/{ANOMALY_DETECTOR}"
    try:
        yield url, process, model_dir
    finally:
        stop_process(process.pid)


@pytest.fixture(scope="module")
def router(runtime, tmp_path_factory):
    """The router in front of the runtime, with a 3 MB body limit and 1 s header and 2 s body timeouts: its model URL, routes and log."""
    url, _, _ = runtime
    work = tmp_path_factory.mktemp("router")
    routes = work / "routes.json"
    routes.write_text(json.dumps(runtime_routes(url)))
    process, port = start_server(
        lambda port: [sys.executable, "-m", "components.runtime.router", "--model", ANOMALY_DETECTOR, "--routes", str(routes), "--port", str(port),
                      "--max-body-bytes", "3000000", "--header-timeout-s", "1", "--body-timeout-s", "2"],
        work / "router.log", "the router", lambda port: http_get(f"http://127.0.0.1:{port}/metrics", timeout=1.0)[0] == 200)
    try:
        yield f"http://127.0.0.1:{port}/v1/models/{ANOMALY_DETECTOR}", routes, work / "router.log"
    finally:
        stop_process(process.pid)


def runtime_routes(url: str) -> dict:
    """Return the routing table that sends everything to the runtime at ``url`` as version v1."""
    return {"stable": {"version": "v1", "port": int(url.split(":")[2].split("/")[0])}, "candidate": None, "candidate_percent": 0}


def metric(url: str, name: str, **labels: str) -> float | None:
    """Return the sum of the samples ``name`` with ``labels`` on the /metrics of the server of ``url``, None when there are none."""
    text = requests.get(url.split("/v1/")[0] + "/metrics", timeout=5).text
    values = [sample.value for family in text_string_to_metric_families(text) for sample in family.samples
              if sample.name == name and labels.items() <= sample.labels.items()]
    return sum(values) if values else None


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


def v2_tensor(data: object, shape: object = (1, FEATURES), datatype: str = "FP64") -> dict:
    """Return a V2 infer body with one input tensor."""
    return {"inputs": [{"name": "input-0", "shape": list(shape) if isinstance(shape, tuple) else shape, "datatype": datatype, "data": data}]}


def bad_v2_bodies() -> dict[str, tuple[dict, str]]:
    """Return V2 bodies the runtime must refuse with 400, each with the place its error must name."""
    row = fallback_instance()
    return {
        "huge integer": (v2_tensor([int("1" + "0" * 400)] + row[1:]), "inputs[0].data[0] = an integer of about 1e400 is out of range"),
        "huge INT64": (v2_tensor([1] * (FEATURES - 1) + [-(10**400)], datatype="INT64"), f"inputs[0].data[{FEATURES - 1}] = an integer"),
        "boolean": (v2_tensor([True] + row[1:]), "inputs[0].data[0] is bool"),
        "NaN": (v2_tensor(row[:3] + [math.nan] + row[4:]), "inputs[0].data[3] is not finite"),
        "string": (v2_tensor(row[:-1] + ["0.5"]), f"inputs[0].data[{FEATURES - 1}] is str"),
        "null": (v2_tensor([None] + row[1:]), "inputs[0].data[0] is null"),
        "nested boolean": (v2_tensor([row[:-1] + [False]]), f"inputs[0].data[0][{FEATURES - 1}] is bool"),
        "huge float": (v2_tensor([1e308] + row[1:]), "inputs[0].data[0] = 1e+308 is out of range"),
    }


def test_bad_values_get_400_naming_the_problem(runtime):
    url, process, _ = runtime
    for name, body in bad_bodies().items():
        answer = requests.post(f"{url}:predict", json=body, timeout=10)
        assert answer.status_code == 400, f"{name}: {answer.status_code} {answer.text[:200]}"
        assert "instances" in answer.text, f"{name}: {answer.text[:200]}"
    infer = url.replace("/v1/", "/v2/") + "/infer"
    for name, (body, named) in bad_v2_bodies().items():
        answer = requests.post(infer, data=json.dumps(body), headers=JSON, timeout=10)
        assert answer.status_code == 400 and named in answer.json().get("error", ""), f"V2 {name}: {answer.status_code} {answer.text[:200]}"
    assert requests.post(infer, json=v2_tensor(fallback_instance()), timeout=10).json()["outputs"][0]["data"] == [1]
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


def raw_answer(url: str, body: dict | None = None, headers: dict[str, str] | None = None) -> tuple[int, list[tuple[str, str]], bytes]:
    """Return (status, the header lines as received, the body) of a GET, or a POST of ``body`` as JSON, made with http.client."""
    address, path = url.removeprefix("http://").split("/", 1)
    connection = http.client.HTTPConnection(address, timeout=30)
    try:
        connection.request("GET" if body is None else "POST", f"/{path}", body=None if body is None else json.dumps(body),
                           headers=JSON if headers is None else headers)
        answer = connection.getresponse()
        return answer.status, answer.getheaders(), answer.read()
    finally:
        connection.close()


def repeated_headers(header_lines: list[tuple[str, str]]) -> list[str]:
    """Return the header names that appear more than once (case-insensitively)."""
    names = [name.lower() for name, _ in header_lines]
    return sorted({name for name in names if names.count(name) > 1})


def test_answers_name_model_and_version_and_the_router_sends_every_header_once(runtime, router):
    """The seed guide's V1 shapes and KServe's V2 ones name the version, on the runtime and through the router, each header once."""
    runtime_url, router_url = runtime[0], router[0]
    for model_url in (runtime_url, router_url):
        v2_url = model_url.replace("/v1/", "/v2/")
        for url, body, expected in (
            (model_url, None, {"name": ANOMALY_DETECTOR, "version": "v1", "ready": True}),
            (f"{model_url}:predict", GOOD, {"model_name": ANOMALY_DETECTOR, "model_version": "v1"}),
            (v2_url, None, {"name": ANOMALY_DETECTOR, "versions": ["v1"], "platform": ""}),
            (f"{v2_url}/infer", v2_tensor(fallback_instance()), {"model_name": ANOMALY_DETECTOR, "model_version": "v1"}),
        ):
            status, header_lines, raw = raw_answer(url, body)
            document = json.loads(raw)
            assert status == 200 and expected.items() <= document.items(), (url, status, document)
            assert repeated_headers(header_lines) == [], (url, header_lines)
            assert dict(header_lines).get("x-served-version") == ("v1" if model_url == router_url else None), (url, header_lines)
        metadata = json.loads(raw_answer(model_url)[2])
        assert set(metadata) == {"name", "version", "ready"}, metadata
        predicted = json.loads(raw_answer(f"{model_url}:predict", GOOD)[2])
        assert set(predicted) == {"predictions", "model_name", "model_version"} and len(predicted["predictions"]) == 1, predicted
    base = router_url.split("/v1/")[0]
    # The router's own 415 (no Content-Type), a backend's 404 passed on, the router's metrics.
    for url, body, headers, expected_status in ((f"{router_url}:predict", GOOD, {}, 415), (f"{base}/v1/models/missing", None, None, 404),
                                                (f"{base}/metrics", None, None, 200)):
        status, header_lines, _ = raw_answer(url, body, headers)
        assert status == expected_status and repeated_headers(header_lines) == [], (url, status, header_lines)


def test_oversized_bodies_and_rows_get_413_while_reading(runtime, router):
    url, process, _ = runtime
    router_url, _, _ = router
    declared = requests.post(f"{url}:predict", data=b"x" * 3_000_000, headers=JSON, timeout=30)
    assert declared.status_code == 413 and "2000000 bytes" in declared.text

    def chunks(megabytes: int):
        yield b'{"instances": ['
        block = (json.dumps(fallback_instance()) + ",").encode() * 200
        for _ in range(megabytes * 1024 * 1024 // len(block)):
            yield block

    for limited, limit in ((url, 2_000_000), (router_url, 3_000_000)):
        streamed = requests.post(f"{limited}:predict", data=chunks(64), headers=JSON, timeout=60)
        assert streamed.status_code == 413 and f"larger than {limit} bytes" in streamed.text, (limited, streamed.status_code, streamed.text[:200])
    rows = requests.post(f"{url}:predict", json={"instances": [fallback_instance()] * 5001}, timeout=30)
    assert rows.status_code == 413 and "limit of 5000" in rows.text
    assert process.poll() is None and requests.post(f"{url}:predict", json=GOOD, timeout=10).status_code == 200
    assert requests.post(f"{router_url}:predict", json=GOOD, timeout=10).status_code == 200


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


@pytest.mark.parametrize(("given", "refusal"), [(("--version", "v1"), "no sha256 given"), (("--sha256", "0" * 64), "no version given")],
                         ids=["no-checksum", "no-version"])
def test_the_runtime_refuses_to_start_without_a_checksum_or_version(runtime, given, refusal):
    _, _, model_dir = runtime
    result = subprocess.run([sys.executable, "-m", "components.runtime.model_server", "--name", ANOMALY_DETECTOR, "--model-dir", str(model_dir),
                             "--port", str(free_port()), *given], capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin"})
    assert result.returncode == 1 and refusal in result.stderr, result.stderr


# JSON scalars, NaN and Infinity (Python's json writes them) and integers far beyond a float (JSON has no limit) included.
SCALARS = (st.none() | st.booleans() | st.floats() | st.integers() | st.integers(min_value=-(10**400), max_value=10**400)
           | st.text(max_size=5))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.recursive(SCALARS, lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=4),
                          max_leaves=60),
       row=st.lists(SCALARS, min_size=FEATURES, max_size=FEATURES),
       shape=st.just([1, FEATURES]) | st.lists(SCALARS, max_size=3),
       datatype=st.sampled_from(["FP64", "FP32", "INT64", "INT32", "BOOL", "BYTES", ""]))
def test_any_json_gets_2xx_or_4xx_and_the_server_stays_up(runtime, value, row, shape, datatype):
    url, process, _ = runtime
    infer = url.replace("/v1/", "/v2/") + "/infer"
    sent = [(f"{url}:predict", body) for body in (value, {"instances": value}, {"instances": [row]})]
    sent += [(infer, body) for body in (value, {"inputs": value}, v2_tensor(value, shape, datatype), v2_tensor(row, shape, datatype),
                                        v2_tensor([row], shape, datatype))]
    for endpoint, body in sent:
        answer = requests.post(endpoint, data=json.dumps(body), headers=JSON, timeout=10)
        assert answer.status_code < 500, f"{endpoint} {json.dumps(body)[:200]} -> {answer.status_code} {answer.text[:200]}"
    assert process.poll() is None


class DroppingBackend:
    """A backend that keeps a connection open after answering, then drops it when the next request arrives on it:
    the race where a server closes an idle keep-alive connection just as the client reuses it."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.served = self.dropped = 0
        self.count_lock = threading.Lock()
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
            with self.count_lock:  # counted before the answer leaves: the client may check the count as soon as it has the answer
                self.served += 1
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
            if self._read_request(connection):
                with self.count_lock:
                    self.dropped += 1  # closed without an answer


def test_router_retries_a_dropped_pooled_connection_and_bad_clients_never_break_good_ones(runtime, router):
    url, _, _ = runtime
    router_url, routes, _ = router
    dropping = DroppingBackend()
    routes.write_text(json.dumps({"stable": {"version": "dropping", "port": dropping.port}, "candidate": None, "candidate_percent": 0}))
    session = requests.Session()
    answers = [session.post(f"{router_url}:predict", json=GOOD, timeout=10).status_code for _ in range(10)]
    assert answers == [200] * 10 and dropping.served == 10 and dropping.dropped >= 3, (answers, dropping.dropped)
    routes.write_text(json.dumps(runtime_routes(url)))
    # One good request through the new route: the router creates a version's series (at 0) when it first routes to it.
    assert session.post(f"{router_url}:predict", json=GOOD, timeout=10).status_code == 200
    before = {"runtime 400": metric(url, "kserve_inference_requests_total", code="400") or 0,
              "router 400": metric(router_url, "router_requests_total", version="v1", code="400") or 0,
              "runtime errors": metric(url, "kserve_inference_errors_total"),
              "router errors": metric(router_url, "router_request_errors_total", version="v1")}
    assert None not in before.values(), f"the error series exist before any error: {before}"
    bad, refused, good = list(bad_bodies().values()), [], []
    for number in range(30):
        refused.append(session.post(f"{router_url}:predict", json=bad[number % len(bad)], timeout=10).status_code)
        good.append(session.post(f"{router_url}:predict", json=GOOD, timeout=10).status_code)
    assert refused == [400] * 30 and good == [200] * 30
    # A bad client's requests are counted as client errors (code 400), and as no server error, by both servers.
    assert metric(url, "kserve_inference_requests_total", code="400") - before["runtime 400"] == 30
    assert metric(router_url, "router_requests_total", version="v1", code="400") - before["router 400"] == 30
    assert metric(url, "kserve_inference_errors_total") == before["runtime errors"]
    assert metric(router_url, "router_request_errors_total", version="v1") == before["router errors"]
    assert requests.post(f"{router_url}:predict", data=b"x" * 5_000_000, timeout=30).status_code == 413


def read_response(connection: socket.socket) -> bytes:
    """Return the next HTTP response (its body sized by Content-Length) from ``connection``."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = connection.recv(65536)
        assert chunk, f"the connection closed after {received!r}"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += connection.recv(65536)
    return head + b"\r\n\r\n" + body


def read_answer(connection: socket.socket) -> tuple[bytes, float]:
    """Return everything the server sends until it closes the connection, and when it closed (a reset is a close too: a client that
    still sends after the server closed gets one from the server's kernel)."""
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := connection.recv(65536):
            received += chunk
    return received, time.monotonic()


def test_the_router_and_the_runtime_cut_off_slow_bodies_with_408_and_slow_headers_by_closing(runtime, router):
    url, _, _ = runtime
    router_url, _, log = router
    host, port = router_url.split("/")[2].split(":")
    runtime_port = url.split("/")[2].split(":")[1]
    path = f"/v1/models/{ANOMALY_DETECTOR}:predict"
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n".encode()
    good = json.dumps(GOOD).encode()
    good_request = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(good)}\r\n\r\n").encode() + good
    results: dict[str, tuple[bytes, float]] = {}

    def drip_feed(connection: socket.socket, drip: bytes) -> None:
        """Send one byte of ``drip`` every 0.2 s until it is sent or the connection is closed."""
        for byte in drip:
            time.sleep(0.2)
            try:
                connection.send(bytes([byte]))
            except OSError:
                return

    def client(name: str, first: bytes, drip: bytes, server_port: str = port) -> None:
        """Send ``first``, then ``drip`` byte by byte, and record the answer."""
        with socket.create_connection((host, int(server_port)), timeout=15) as connection:
            connection.sendall(first)
            feeder = threading.Thread(target=drip_feed, args=(connection, drip))
            feeder.start()
            try:
                results[name] = read_answer(connection)
            except OSError as error:  # a timeout that never fired ends here, after 15 s
                results[name] = (repr(error).encode(), time.monotonic())
            feeder.join(30)

    kept_alive = socket.create_connection((host, int(port)), timeout=15)
    kept_alive.sendall(good_request)
    assert read_response(kept_alive).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    clients = [threading.Thread(target=client, args=args) for args in (
        ("stalled body", head + b'{"instances": ', b""),
        ("dripped body", head, b" " * 100),  # a byte every 0.2 s keeps any per-read timeout from firing
        ("stalled headers", head[:40], b""),
        ("dripped headers", head[:40], head[40:]),
        ("runtime's stalled body", head + b'{"instances": ', b"", runtime_port),  # the runtime shares the body limit
        ("runtime's stalled headers", head[:40], b"", runtime_port),  # and the header deadline
        ("runtime's dripped headers", head[:40], head[40:], runtime_port),
    )]
    for thread in clients:
        thread.start()
    time.sleep(1.5)
    kept_alive.sendall(good_request)  # idle for longer than the header timeout: a keep-alive connection may wait between requests
    assert read_response(kept_alive).startswith(b"HTTP/1.1 200")
    kept_alive.sendall(head[:40])
    results["later request's headers"] = read_answer(kept_alive)
    kept_alive.close()
    for thread in clients:
        thread.join(30)
    for name in ("stalled body", "dripped body", "runtime's stalled body"):
        answer, at = results[name]
        assert answer.startswith(b"HTTP/1.1 408") and b"within 2 s" in answer, (name, answer[:300])
        assert 1.9 < at - started < 6, (name, at - started)
    for name in ("stalled headers", "dripped headers", "runtime's stalled headers", "runtime's dripped headers"):
        answer, at = results[name]
        assert answer == b"" and 0.9 < at - started < 5, (name, answer[:300], at - started)
    assert results["later request's headers"][0] == b"" and 2.4 < results["later request's headers"][1] - started < 7
    assert log.read_text().count("request headers were not complete within 1 s") >= 3
    assert requests.post(f"{router_url}:predict", json=GOOD, timeout=10).status_code == 200
