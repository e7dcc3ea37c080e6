"""Bounds and validation for untrusted inference requests, shared by the runtime and the router.

A body is read whole before the app sees it (``BodyLimit``, an ASGI middleware answering 413 before buffering
more than the limit and 408 when the body takes longer than its deadline), the router's connections must send
their request headers in time (``header_timeout_protocol``), an inference request must say it is JSON
(``JsonContentType``, 415 naming the header), and ``parse_instances`` / ``parse_v2_inputs`` turn a V1
``instances`` list or a V2 input tensor into a float matrix only when every value is a finite JSON number within
range, the shape matches and the rows are within the limit.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from typing import Mapping

LIMIT_ENVIRONMENT = ("MODEL_MAX_BODY_BYTES", "MODEL_MAX_ROWS", "MODEL_HEADER_TIMEOUT_S", "MODEL_BODY_TIMEOUT_S")  # read at import, below
DEFAULT_MAX_BODY_BYTES = int(os.environ.get("MODEL_MAX_BODY_BYTES", str(4 * 1024 * 1024)))
DEFAULT_MAX_ROWS = int(os.environ.get("MODEL_MAX_ROWS", "10000"))
DEFAULT_HEADER_TIMEOUT_S = float(os.environ.get("MODEL_HEADER_TIMEOUT_S", "10"))
DEFAULT_BODY_TIMEOUT_S = float(os.environ.get("MODEL_BODY_TIMEOUT_S", "30"))
MAX_ABS_VALUE = 1e12  # far beyond any contract unit; stops 1e308 overflowing inside the model


class InvalidRequest(ValueError):
    """A request the model must not see; ``status`` is the HTTP code to answer (400, 413)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _number(value: object, field: str, *index: int) -> float:
    """Return ``value`` as a float if it is a finite in-range JSON number, else raise InvalidRequest naming ``field[index]...``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and -MAX_ABS_VALUE <= value <= MAX_ABS_VALUE:
        return float(value)  # NaN, the infinities and integers of any size beyond the range fail the comparison, exactly
    where = field + "".join(f"[{number}]" for number in index)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "null" if value is None else type(value).__name__
        raise InvalidRequest(f"{where} is {kind} {json.dumps(value)[:40]}; every feature must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(f"{where} is not finite; send real numbers (no NaN or Infinity)")
    shown = f"{value:g}" if isinstance(value, float) else f"an integer of about 1e{int(abs(value).bit_length() * math.log10(2))}"
    raise InvalidRequest(f"{where} = {shown} is out of range (|x| <= {MAX_ABS_VALUE:g}); check the units")


def parse_instances(instances: object, features: int | None, max_rows: int = DEFAULT_MAX_ROWS, field: str = "instances") -> list[list[float]]:
    """Return ``instances`` as rows of floats, or raise InvalidRequest naming the first problem (in ``field``) and the fix."""
    if not isinstance(instances, list) or not instances:
        raise InvalidRequest(f'"{field}" must be a non-empty list of rows, e.g. {{"instances": [[0.1, 0.2, ...]]}}')
    if len(instances) > max_rows:
        raise InvalidRequest(f"{len(instances)} rows is more than the limit of {max_rows} per request; split the request", 413)
    rows = []
    for row_number, row in enumerate(instances):
        if not isinstance(row, list):
            raise InvalidRequest(f"{field}[{row_number}] must be a list of numbers, got {type(row).__name__}")
        if features is not None and len(row) != features:
            raise InvalidRequest(f"{field}[{row_number}] has {len(row)} numbers; each instance must have {features}")
        rows.append([_number(value, field, row_number, column) for column, value in enumerate(row)])
    return rows


def parse_v2_inputs(inputs: object, features: int | None, max_rows: int = DEFAULT_MAX_ROWS) -> list[list[float]]:
    """Return the rows of the single FP32/FP64/INT tensor of a V2 infer request, validated like V1 instances."""
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidRequest('V2 infer takes exactly one input tensor: {"inputs": [{"name": "input-0", "shape": [rows, features], "datatype": "FP64", "data": [...]}]}')
    tensor = inputs[0]
    shape, data = tensor.get("shape"), tensor.get("data")
    if tensor.get("datatype") not in ("FP32", "FP64", "INT32", "INT64"):
        raise InvalidRequest(f"input datatype {tensor.get('datatype')!r} is not numeric; use FP64")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)):
        raise InvalidRequest(f"input shape must be [rows, features], got {shape!r}")
    if not isinstance(data, list):
        raise InvalidRequest("input data must be a list of numbers")
    if data and isinstance(data[0], list):  # row-major nested form
        return parse_instances(data, features, max_rows, field="inputs[0].data")
    if shape[0] > max_rows:
        raise InvalidRequest(f"{shape[0]} rows is more than the limit of {max_rows} per request; split the request", 413)
    if len(data) != shape[0] * shape[1]:
        raise InvalidRequest(f"input data has {len(data)} numbers but shape {shape} needs {shape[0] * shape[1]}")
    if features is not None and shape[1] != features:
        raise InvalidRequest(f"input shape {shape} has {shape[1]} features per row; the model takes {features}")
    numbers = [_number(value, "inputs[0].data", index) for index, value in enumerate(data)]
    return [numbers[row * shape[1]:(row + 1) * shape[1]] for row in range(shape[0])]


def check_ratio_inputs(rows: list[list[float]], ratio_columns: Mapping[int, str], model_name: str) -> None:
    """Raise InvalidRequest when a value in one of ``ratio_columns`` (index -> input name, sent as a ratio 0-1) is outside 0-1, e.g. a percent."""
    for row_number, row in enumerate(rows):
        for column, input_name in ratio_columns.items():
            if not 0.0 <= row[column] <= 1.0:
                hint = "it looks like a percent: divide by 100" if 1.0 < row[column] <= 100.0 else "check the units"
                raise InvalidRequest(f"instances[{row_number}][{column}] = {row[column]:g} ({input_name}) is outside "
                                     f"0-1: {model_name} takes ratios; {hint}")


async def send_json_error(send, status: int, message: str, *, close: bool = False) -> None:
    """Answer an ASGI request with ``status`` and the JSON body ``{"error": message}`` (closing the connection if asked)."""
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + ([(b"connection", b"close")] if close else [])})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware: reads the whole body before the app runs; 413 over ``max_bytes``, 408 when slower than ``timeout_s``."""

    def __init__(self, app, max_bytes: int = DEFAULT_MAX_BODY_BYTES, timeout_s: float = DEFAULT_BODY_TIMEOUT_S) -> None:
        """Wrap ``app``."""
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        """Refuse an oversized or slow body before the app sees it; give the app the body read, in one message."""
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._refuse_too_large(send)
        try:
            async with asyncio.timeout(self.timeout_s):
                body = await self._read(receive)
        except TimeoutError:
            return await send_json_error(send, 408, f"the request body did not arrive within {self.timeout_s:g} s; send the whole body "
                                         "at once (the server's limit is --body-timeout-s or $MODEL_BODY_TIMEOUT_S)", close=True)
        except _TooLarge:
            return await self._refuse_too_large(send)
        if body is None:  # the client went away before sending it all: nobody to answer
            return
        delivered = False

        async def buffered_receive():
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, buffered_receive, send)

    async def _read(self, receive) -> bytes | None:
        """Return the request body, None when the client disconnects first; raise _TooLarge past ``max_bytes``."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                raise _TooLarge()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _refuse_too_large(self, send) -> None:
        """Answer 413 naming the limit, closing the connection (the rest of the body is never read)."""
        await send_json_error(send, 413, f"request body is larger than {self.max_bytes} bytes; send fewer rows per request", close=True)


class _TooLarge(Exception):
    """Raised inside BodyLimit when the body being read passes the limit."""


INFERENCE_SUFFIXES = (":predict", "/infer")
JSON_TYPES = (b"application/json", b"application/cloudevents+json")


def is_inference_request(scope) -> bool:
    """Return whether an ASGI scope is a predict or infer POST."""
    return scope["type"] == "http" and scope.get("method") == "POST" and scope.get("path", "").endswith(INFERENCE_SUFFIXES)


class JsonContentType:
    """ASGI middleware: 415 naming the header when a predict or infer POST does not say Content-Type: application/json."""

    def __init__(self, app) -> None:
        """Wrap ``app``."""
        self.app = app

    async def __call__(self, scope, receive, send):
        """Refuse an inference request without a JSON Content-Type; pass everything else on."""
        if not is_inference_request(scope):
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"content-type", b"")
        if given.split(b";")[0].strip().lower() in JSON_TYPES:
            return await self.app(scope, receive, send)
        named = f"is {given.decode('latin-1')!r}" if given else "is missing"
        await send_json_error(send, 415, f"the Content-Type header {named}: inference requests are JSON, so send Content-Type: "
                              "application/json (curl: -H 'Content-Type: application/json')")


def header_timeout_protocol(timeout_s: float = DEFAULT_HEADER_TIMEOUT_S) -> type[asyncio.Protocol]:
    """Return uvicorn's HTTP protocol closing any connection whose request headers are not complete ``timeout_s`` after it began.

    The clock starts when a connection opens and when the first byte of a later request on it arrives (an idle
    keep-alive connection is uvicorn's ``timeout_keep_alive``'s); uvicorn itself waits for headers forever.
    """
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class HeaderTimeoutProtocol(AutoHTTPProtocol):
        """uvicorn's protocol with a deadline on each request's headers (both its implementations set ``cycle`` on headers)."""

        header_clock: asyncio.TimerHandle | None = None
        cycle_when_clock_started: object = None

        def connection_made(self, transport) -> None:
            """Start the clock for the first request's headers."""
            super().connection_made(transport)
            self._start_header_clock()

        def data_received(self, data: bytes) -> None:
            """Start the clock on a new request's first bytes, then parse as uvicorn does."""
            between_requests = self.cycle is None or self.cycle.response_complete
            if between_requests and (self.header_clock is None or self.cycle_when_clock_started is not self.cycle):
                self._start_header_clock()
            super().data_received(data)

        def connection_lost(self, exc: Exception | None) -> None:
            """Stop the clock with the connection."""
            if self.header_clock is not None:
                self.header_clock.cancel()
            super().connection_lost(exc)

        def _start_header_clock(self) -> None:
            if self.header_clock is not None:
                self.header_clock.cancel()
            self.cycle_when_clock_started = self.cycle
            self.header_clock = self.loop.call_later(timeout_s, self._close_if_headers_incomplete)

        def _close_if_headers_incomplete(self) -> None:
            if self.cycle is self.cycle_when_clock_started and not self.transport.is_closing():
                self.logger.warning("closed a connection from %s: its request headers were not complete within %g s "
                                    "(--header-timeout-s or $MODEL_HEADER_TIMEOUT_S)", self.client, timeout_s)
                self.transport.close()

    return HeaderTimeoutProtocol
