"""Bounds and validation for untrusted inference requests, shared by the runtime and the router.

A body is limited in bytes while it is read (``BodyLimit``, an ASGI middleware answering 413 before buffering
more than the limit), an inference request must say it is JSON (``JsonContentType``, 415 naming the header), and
``parse_instances`` / ``parse_v2_inputs`` turn a V1 ``instances`` list or a V2 input tensor into a float matrix
only when every value is a finite JSON number within range, the shape matches and the rows are within the limit.
"""

from __future__ import annotations

import json
import math
import os

DEFAULT_MAX_BODY_BYTES = int(os.environ.get("MODEL_MAX_BODY_BYTES", str(4 * 1024 * 1024)))
DEFAULT_MAX_ROWS = int(os.environ.get("MODEL_MAX_ROWS", "10000"))
MAX_ABS_VALUE = 1e12  # far beyond any contract unit; stops 1e308 overflowing inside the model


class InvalidRequest(ValueError):
    """A request the model must not see; ``status`` is the HTTP code to answer (400, 413)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _number(value: object, row: int, column: int) -> float:
    """Return ``value`` as a float if it is a finite in-range JSON number, else raise InvalidRequest naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "null" if value is None else type(value).__name__
        raise InvalidRequest(f"instances[{row}][{column}] is {kind} {json.dumps(value)[:40]}; every feature must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise InvalidRequest(f"instances[{row}][{column}] is not finite; send real numbers (no NaN or Infinity)")
    if abs(number) > MAX_ABS_VALUE:
        raise InvalidRequest(f"instances[{row}][{column}] = {number:g} is out of range (|x| <= {MAX_ABS_VALUE:g}); check the units")
    return number


def parse_instances(instances: object, features: int | None, max_rows: int = DEFAULT_MAX_ROWS) -> list[list[float]]:
    """Return ``instances`` as rows of floats, or raise InvalidRequest naming the first problem and the fix."""
    if not isinstance(instances, list) or not instances:
        raise InvalidRequest('"instances" must be a non-empty list of rows, e.g. {"instances": [[0.1, 0.2, ...]]}')
    if len(instances) > max_rows:
        raise InvalidRequest(f"{len(instances)} rows is more than the limit of {max_rows} per request; split the request", 413)
    rows = []
    for row_number, row in enumerate(instances):
        if not isinstance(row, list):
            raise InvalidRequest(f"instances[{row_number}] must be a list of numbers, got {type(row).__name__}")
        if features is not None and len(row) != features:
            raise InvalidRequest(f"instances[{row_number}] has {len(row)} numbers; each instance must have {features}")
        rows.append([_number(value, row_number, column) for column, value in enumerate(row)])
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
        return parse_instances(data, features, max_rows)
    if shape[0] > max_rows:
        raise InvalidRequest(f"{shape[0]} rows is more than the limit of {max_rows} per request; split the request", 413)
    if len(data) != shape[0] * shape[1]:
        raise InvalidRequest(f"input data has {len(data)} numbers but shape {shape} needs {shape[0] * shape[1]}")
    return parse_instances([data[row * shape[1]:(row + 1) * shape[1]] for row in range(shape[0])], features, max_rows)


def check_ratio_inputs(rows: list[list[float]], model_name: str) -> None:
    """Raise InvalidRequest when a value the contract sends as a ratio (0-1) is outside 0-1, e.g. a percent."""
    from components.contract import SCHEMAS, Unit

    schema = SCHEMAS.get(model_name)
    if schema is None or schema.engineered:  # engineered features (differences, changes) are not bounded
        return
    ratio_columns = [column for column, metric in enumerate(schema.base_metrics) if metric.unit is Unit.RATIO]
    for row_number, row in enumerate(rows):
        for column in ratio_columns:
            if not 0.0 <= row[column] <= 1.0:
                hint = "it looks like a percent: divide by 100" if 1.0 < row[column] <= 100.0 else "check the units"
                raise InvalidRequest(f"instances[{row_number}][{column}] = {row[column]:g} ({schema.base_metrics[column].name}) is outside "
                                     f"0-1: {model_name} takes ratios; {hint}")


async def send_json_error(send, status: int, message: str, *, close: bool = False) -> None:
    """Answer an ASGI request with ``status`` and the JSON body ``{"error": message}`` (closing the connection if asked)."""
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + ([(b"connection", b"close")] if close else [])})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware: 413 for a body over ``max_bytes``, by Content-Length up front or while it streams in."""

    def __init__(self, app, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        """Wrap ``app``."""
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        """Refuse an oversized body before the app buffers it."""
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._refuse(send)
        received = 0
        started = False

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge()
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send) -> None:
        """Answer 413 naming the limit, closing the connection (the rest of the body is never read)."""
        await send_json_error(send, 413, f"request body is larger than {self.max_bytes} bytes; send fewer rows per request", close=True)


class _TooLarge(Exception):
    """Raised inside BodyLimit when the streamed body passes the limit."""


INFERENCE_SUFFIXES = (":predict", "/infer")
JSON_TYPES = (b"application/json", b"application/cloudevents+json")


class JsonContentType:
    """ASGI middleware: 415 naming the header when a predict or infer POST does not say Content-Type: application/json."""

    def __init__(self, app) -> None:
        """Wrap ``app``."""
        self.app = app

    async def __call__(self, scope, receive, send):
        """Refuse an inference request without a JSON Content-Type; pass everything else on."""
        if scope["type"] != "http" or scope.get("method") != "POST" or not scope.get("path", "").endswith(INFERENCE_SUFFIXES):
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"content-type", b"")
        if given.split(b";")[0].strip().lower() in JSON_TYPES:
            return await self.app(scope, receive, send)
        named = f"is {given.decode('latin-1')!r}" if given else "is missing"
        await send_json_error(send, 415, f"the Content-Type header {named}: inference requests are JSON, so send Content-Type: "
                              "application/json (curl: -H 'Content-Type: application/json')")
