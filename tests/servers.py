"""Real servers the tests start on 127.0.0.1: SeaweedFS (S3) and Prometheus."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

from components.serving.local import log_tail, start_listening, stop_process

S3_ACCESS_KEY, S3_SECRET_KEY, S3_BUCKET = "pipeline-test-key", "pipeline-test-secret", "models"
SEAWEED_PORTS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "volume.port.public", "filer.port", "filer.port.grpc",
    "filer.port.public", "s3.port", "s3.port.grpc", "s3.port.https", "s3.port.iceberg", "s3.port.lance", "admin.port",
    "admin.port.grpc", "webdav.port", "s3.metricsPort", "debug.port", "s3.debug.port",
)


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct free loopback ports."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for handle in sockets:
            handle.bind(("127.0.0.1", 0))
        return [handle.getsockname()[1] for handle in sockets]
    finally:
        for handle in sockets:
            handle.close()


@contextlib.contextmanager
def refused_url(scheme: str = "https") -> Iterator[str]:
    """Yield a loopback URL that refuses connections for as long as it is held: its port stays bound, never listening, so
    no server a test starts meanwhile can take it (a port from ``free_ports`` can be handed out again)."""
    with socket.socket() as reserved:
        reserved.bind(("127.0.0.1", 0))
        yield f"{scheme}://127.0.0.1:{reserved.getsockname()[1]}"


def start_server(arguments: Callable[[int], list[str]], log: Path, what: str, ready: Callable[[int], bool] = lambda port: True,
                 timeout_s: float = 60.0) -> tuple[subprocess.Popen, int]:
    """Start ``arguments(port)`` logging to ``log`` and wait until it holds that port and is ``ready``; return (process, port).

    Tests run in parallel: a port another worker takes first is replaced by another (``start_listening``), and a
    readiness probe can never be answered by someone else's server on the same port.
    """
    started: list[subprocess.Popen] = []

    def spawn(port: int) -> int:
        with open(log, "ab") as handle:
            started.append(subprocess.Popen(arguments(port), stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                                            start_new_session=True))
        return started[-1].pid

    _pid, port = start_listening(spawn, lambda: log_tail(log), what, ready, timeout_s)
    return started[-1], port


def tls_certificate(work: Path) -> tuple[Path, Path]:
    """Return (certificate, key) of a fresh self-signed test CA certificate for 127.0.0.1 in ``work``: the bundle a client trusts."""
    cert, key = work / "cert.pem", work / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


def serve_https(handler: type[BaseHTTPRequestHandler], cert: Path, key: Path) -> tuple[ThreadingHTTPServer, str]:
    """Serve ``handler`` over TLS with ``cert`` on a free loopback port in a daemon thread; return the server and its https URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"https://127.0.0.1:{server.server_address[1]}"


def answers_http(url: str) -> bool:
    """Return whether ``url`` answers 200."""
    try:
        return urllib.request.urlopen(url, timeout=1).status == 200
    except OSError:
        return False


class SeaweedS3:
    """SeaweedFS all-in-one (`weed mini`) with only loopback ports, S3 credentials, and one bucket."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.process = None
        self.endpoint = ""

    def start(self) -> "SeaweedS3":
        weed = Path(sys.executable).with_name("weed")
        (self.work / "data").mkdir(parents=True, exist_ok=True)
        config = self.work / "s3.json"
        config.write_text(json.dumps({"identities": [{"name": "tests", "credentials": [{"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
                                                      "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))

        def arguments(s3_port: int) -> list[str]:
            ports = dict(zip(SEAWEED_PORTS, free_ports(len(SEAWEED_PORTS))), **{"s3.port": s3_port})
            return [str(weed), "mini", f"-dir={self.work / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-s3.config={config}",
                    "-webdav=false", "-admin.ui=false", *(f"-{name}={port}" for name, port in ports.items())]

        self.process, s3_port = start_server(arguments, self.work / "weed.log", "SeaweedFS", timeout_s=60)
        self.endpoint = f"http://127.0.0.1:{s3_port}"
        client = self.client()
        deadline = time.monotonic() + 30
        while True:
            try:
                client.create_bucket(Bucket=S3_BUCKET)
                return self
            except Exception:  # noqa: BLE001 - the filer may still be starting
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=S3_ACCESS_KEY, aws_secret_access_key=S3_SECRET_KEY,
                            region_name="us-east-1")

    def environment(self) -> dict[str, str]:
        """Return the data-connection keys a pipeline step reads."""
        return {"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY, "AWS_S3_ENDPOINT": self.endpoint,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_S3_BUCKET": S3_BUCKET}

    def stop(self) -> None:
        if self.process:
            stop_process(self.process.pid)
            self.process.wait(10)


class PrometheusServer:
    """A real Prometheus on 127.0.0.1 with a temporary data dir, optionally backfilled with promtool first."""

    def __init__(self, work: Path, file_sd: Path | None = None) -> None:
        self.work, self.file_sd = work, file_sd
        self.process = None
        self.url = ""

    def backfill(self, openmetrics: str) -> None:
        """Write OpenMetrics text into TSDB blocks with ``promtool tsdb create-blocks-from openmetrics``."""
        source = self.work / "backfill.om"
        source.write_text(openmetrics)
        (self.work / "data").mkdir(parents=True, exist_ok=True)
        subprocess.run([shutil.which("promtool") or "promtool", "tsdb", "create-blocks-from", "openmetrics", str(source), str(self.work / "data")],
                       check=True, capture_output=True, timeout=300)

    def start(self) -> "PrometheusServer":
        (self.work / "data").mkdir(parents=True, exist_ok=True)
        scrape = ""
        if self.file_sd:
            scrape = (f"scrape_configs:\n  - job_name: model-servers\n    scrape_interval: 1s\n    scrape_timeout: 1s\n"
                      f"    file_sd_configs:\n      - files: ['{self.file_sd}']\n        refresh_interval: 1s\n")
        config = self.work / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n" + scrape)
        self.process, port = start_server(
            lambda port: [shutil.which("prometheus") or "prometheus", f"--config.file={config}", f"--storage.tsdb.path={self.work / 'data'}",
                          f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=100y", "--log.level=warn"],
            self.work / "prometheus.log", "Prometheus", lambda port: answers_http(f"http://127.0.0.1:{port}/-/ready"))
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self.process:
            stop_process(self.process.pid)
            self.process.wait(10)


class PushgatewayServer:
    """A real Prometheus Pushgateway (Debian's prometheus-pushgateway) on 127.0.0.1, without persistence."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.process = None
        self.address = ""

    def start(self) -> "PushgatewayServer":
        self.process, port = start_server(
            lambda port: [shutil.which("prometheus-pushgateway") or "prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{port}",
                          "--log.level=warn"],
            self.work / "pushgateway.log", "the Pushgateway", lambda port: answers_http(f"http://127.0.0.1:{port}/-/ready"), timeout_s=30)
        self.address = f"127.0.0.1:{port}"
        return self

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def stop(self) -> None:
        if self.process:
            stop_process(self.process.pid)
            self.process.wait(10)
