"""The local stand-in for an InferenceService's URL: splits traffic between stable and candidate servers.

Run as ``python -m components.runtime.router --model NAME --routes FILE --port P``. It re-reads the routes file (written
atomically by the local serving target) when it changes, so traffic moves without a restart. A request that fails
on a pooled connection the server has dropped is sent once more on a fresh connection (prediction is idempotent);
a candidate that still cannot be reached is retried on the stable server, as a mesh retry on connect-failure
would. It speaks both protocols: V1 (``/v1/models/...``) and V2 (``/v2/health/{live,ready}``,
``/v2/models/<name>[/ready]``, ``/v2/models/<name>/infer``), with the same split, retries and metrics; the V2
repository routes are not forwarded. Bodies over ``--max-body-bytes`` are refused with 413 while they are read
(declared or chunked), a body not read within ``--body-timeout-s`` gets 408, a connection that has not sent its
request headers within ``--header-timeout-s`` is closed, and an inference request without Content-Type:
application/json gets 415 naming the header. Per-version metrics are exposed on ``/metrics``: requests by HTTP
status ``code`` (``router_requests_total``), server errors only (``router_request_errors_total``: 5xx answers and
unreachable versions, never a client's 4xx) and latency. Binds 127.0.0.1 only.

A backend's answer is passed on as it is (the project runtime's body names the version that answered:
``model_version`` in a predict or infer answer, ``version`` in V1 metadata), with one header added:
``x-served-version``, the version of the backend the router sent the request to and that answered it. The
backend's ``date`` and ``server`` headers are replaced by the router's own, so no header appears twice.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time
from pathlib import Path

from components.runtime.request_guard import (
    DEFAULT_BODY_TIMEOUT_S, DEFAULT_HEADER_TIMEOUT_S, DEFAULT_MAX_BODY_BYTES, BodyLimit, JsonContentType, header_timeout_protocol,
)

HOP_HEADERS = {"host", "content-length", "connection", "transfer-encoding", "keep-alive"}
# Headers the router's own HTTP server (uvicorn) sets on every answer: a backend's are dropped, so none appears twice.
OWN_HEADERS = {"date", "server"}
SERVED_VERSION_HEADER = "x-served-version"  # set by the router: the version of the backend that answered
NOT_PASSED_ON = HOP_HEADERS | OWN_HEADERS | {SERVED_VERSION_HEADER}


class Routes:
    """The current stable and candidate backends, reloaded when the routes file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.signature: tuple[int, int] | None = None
        self.table: dict = {}

    def current(self) -> dict:
        """Return the routing table: ``{"stable": {...}|None, "candidate": {...}|None, "candidate_percent": int}``."""
        try:
            stat = os.stat(self.path)
            signature = (stat.st_mtime_ns, stat.st_ino)
            if signature != self.signature:
                self.table = json.loads(self.path.read_text())
                self.signature = signature
        except (OSError, ValueError):
            pass
        return self.table


def choose_backend(table: dict, draw: float) -> str:
    """Return "candidate" or "stable" for a request whose uniform draw in [0, 1) is ``draw``."""
    candidate = table.get("candidate")
    if candidate and draw * 100.0 < table.get("candidate_percent", 0):
        return "candidate"
    return "stable"


def build_app(model: str, routes: Routes, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S):
    """Return the ASGI app that proxies V1 and V2 requests by the routing table and serves /metrics, bodies bounded."""
    import httpx
    from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    requests = Counter("router_requests", "Requests by serving version and HTTP status code (unreachable: no answer)",
                       ["model_name", "version", "code"])
    errors = Counter("router_request_errors", "Requests a version failed: answered 5xx or unreachable (a client's 4xx is no error)",
                     ["model_name", "version"])
    latency = Histogram("router_request_seconds", "Request latency by serving version", ["model_name", "version"])
    timeout = httpx.Timeout(120.0, connect=2.0)
    pooled = httpx.AsyncClient(timeout=timeout)
    fresh = httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_keepalive_connections=0))

    async def forward(backend: dict, request, body: bytes) -> httpx.Response:
        """Send the request to ``backend``; a transport failure on a pooled connection is retried once on a new one."""
        url = f"http://127.0.0.1:{backend['port']}{request.url.path}"
        headers = {key: value for key, value in request.headers.items() if key.lower() not in HOP_HEADERS}
        try:
            return await pooled.request(request.method, url, content=body, headers=headers, params=request.query_params)
        except httpx.ConnectError:
            raise
        except httpx.TransportError:
            return await fresh.request(request.method, url, content=body, headers=headers, params=request.query_params)

    async def proxy(request) -> Response:
        table = routes.current()
        role = choose_backend(table, random.random())
        body = await request.body()
        attempts = [role, "stable"] if role == "candidate" else ["stable"]
        for attempt in attempts:
            backend = table.get(attempt)
            if not backend:
                continue
            version_errors = errors.labels(model, backend["version"])  # exists at 0, so an error rate has data before any error
            started = time.perf_counter()
            try:
                answer = await forward(backend, request, body)
            except httpx.TransportError:
                version_errors.inc()
                requests.labels(model, backend["version"], "unreachable").inc()
                continue
            latency.labels(model, backend["version"]).observe(time.perf_counter() - started)
            requests.labels(model, backend["version"], str(answer.status_code)).inc()
            if answer.status_code >= 500:
                version_errors.inc()
            headers = {key: value for key, value in answer.headers.items() if key.lower() not in NOT_PASSED_ON}
            headers[SERVED_VERSION_HEADER] = backend["version"]
            return Response(answer.content, status_code=answer.status_code, headers=headers)
        return JSONResponse({"error": f"no serving version of {model} is reachable; run `model-pipelines serve status`"}, 503)

    async def metrics(_request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        await pooled.aclose()
        await fresh.aclose()

    v2_routes = [Route(path, proxy, methods=["GET", "POST"]) for path in (
        "/v2/health/live", "/v2/health/ready", "/v2/models/{name}", "/v2/models/{name}/ready", "/v2/models/{name}/infer")]
    app = Starlette(routes=[Route("/metrics", metrics), Route("/v1/{path:path}", proxy, methods=["GET", "POST"]), *v2_routes],
                    lifespan=lifespan)
    return BodyLimit(JsonContentType(app), max_body_bytes, body_timeout_s)


def main(argv: list[str] | None = None) -> int:
    """Serve the router until terminated."""
    import uvicorn

    parser = argparse.ArgumentParser(description="Split a model's traffic between its stable and candidate servers.")
    parser.add_argument("--model", required=True)
    parser.add_argument("--routes", required=True, type=Path)
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="413 above this (default: $MODEL_MAX_BODY_BYTES or 4 MiB)")
    parser.add_argument("--header-timeout-s", type=float, default=DEFAULT_HEADER_TIMEOUT_S,
                        help="close a connection whose request headers take longer (default: $MODEL_HEADER_TIMEOUT_S or 10)")
    parser.add_argument("--body-timeout-s", type=float, default=DEFAULT_BODY_TIMEOUT_S,
                        help="408 when a request body takes longer to arrive (default: $MODEL_BODY_TIMEOUT_S or 30)")
    args = parser.parse_args(argv)
    app = build_app(args.model, Routes(args.routes), args.max_body_bytes, args.body_timeout_s)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", timeout_keep_alive=65,
                http=header_timeout_protocol(args.header_timeout_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
