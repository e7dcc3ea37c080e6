"""The KServe model server for one stored version: the stock sklearn runtime's behaviour, hardened.

Run as ``python -m components.runtime.model_server --name NAME --model-dir DIR --version vN --sha256 HEX --port P``.
Like ``sklearnserver`` (kserve v0.20.0 python/sklearnserver/sklearnserver/model.py): exactly one .pkl/.joblib/.pickle
in the directory, the V1 protocol (``{"predictions": model.predict(instances).tolist()}``, or ``predict_proba`` when the
environment has ``PREDICT_PROBA=true`` and the model has it) and the V2 (Open Inference) protocol (one input tensor
``[rows, features]`` in, one output tensor ``output-0`` out: INT64 for integer labels, FP64 otherwise). Unlike it:
- it names what answered, as the platform's guide documents: V1 predict adds ``"model_name"`` and
  ``"model_version"`` beside ``"predictions"``, V1 metadata (``GET /v1/models/<name>``) is
  ``{"name", "version", "ready"}``, V2 metadata lists the version in KServe's ``"versions"`` and a V2 infer
  answer carries it as ``"model_version"``;
- it refuses to start without the version (``--version``, known at deploy time) or its sha256, and unpickles
  exactly the bytes it hashed;
- it knows the model's spec: the one the version's ``version.json`` carries under "spec", else the known spec of
  ``--name`` (a built-in or an example); it refuses to start with neither;
- every value must be a finite JSON number within range and every row the spec's width, and a value the
  spec sends as a ratio must lie in 0-1 (a percent is refused), else 400 naming it,
  and an inference request must carry Content-Type: application/json, else 415 naming the header;
  bodies over ``--max-body-bytes`` get 413 while they are read, a body not read within ``--body-timeout-s``
  gets 408, more rows than ``--max-rows`` get 413, and a connection whose request headers are not complete within
  ``--header-timeout-s`` is closed (uvicorn alone waits for them forever);
- predict runs in a worker thread, so health and readiness keep answering during a long request;
- the repository load/unload routes are not served;
- ``/metrics`` has, by model and version, the series the platform's guide queries: every predict/infer request
  by HTTP status ``code`` (``kserve_inference_requests_total``), the server's failures alone, 5xx
  (``kserve_inference_errors_total``, at 0 from the start: a client's bad request is never a server error), and
  the latency of answered predictions (``kserve_inference_latency_bucket``); and what the model answered, by its
  spec's type: ``model_predictions_total`` by outcome (anomaly: anomaly or normal; classification: the predicted
  class's name, with ``model_alerts_total`` counting the answers a caller alerts on), a ``model_forecast`` histogram
  per output (predictive), beside KServe's own ``request_predict_seconds``.
It binds 127.0.0.1 unless ``--host`` says otherwise (the
ServingRuntime in ``manifests/base/`` runs it in predictor pods with ``--host 0.0.0.0``, reading the version and
checksum from the ``MODEL_VERSION`` and ``MODEL_SHA256`` environment the kserve target sets).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import sys
import uuid
from pathlib import Path

from components.model.spec import ANOMALY, CLASSIFICATION, PREDICTIVE, RAW, ModelSpec, SpecError, spec_for, spec_from_text, use_spec
from components.model.units import Unit
from components.runtime.answers import PREDICT_PROBA_ENV, alerts, predicted_classes
from components.runtime.request_guard import (
    DEFAULT_BODY_TIMEOUT_S, DEFAULT_HEADER_TIMEOUT_S, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_ROWS, BodyLimit, InvalidRequest, JsonContentType,
    check_ratio_inputs, header_timeout_protocol, is_inference_request, parse_instances, parse_v2_inputs, send_json_error,
)
from components.store.filesystem import RECORD_FILENAME

MODEL_SUFFIXES = (".pkl", ".joblib", ".pickle")


def find_model_file(model_dir: Path) -> Path:
    """Return the single model file in ``model_dir``, refusing none or several as the stock runtime does."""
    files = [path for path in model_dir.iterdir() if path.suffix in MODEL_SUFFIXES]
    if len(files) != 1:
        raise RuntimeError(f"{model_dir} must hold exactly one model file ({', '.join(MODEL_SUFFIXES)}), found {len(files)}")
    return files[0]


def verified_model_bytes(model_dir: Path, expected_sha256: str) -> bytes:
    """Return the model file's bytes after checking their sha256 against the store's record (required)."""
    if not expected_sha256:
        raise RuntimeError("no sha256 given: pass --sha256 or set MODEL_SHA256 to the version's checksum from the store index")
    path = find_model_file(model_dir)
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise RuntimeError(
            f"{path}: sha256 {actual[:12]}… does not match the recorded {expected_sha256[:12]}…; refusing to serve a changed model"
        )
    return data


def served_spec(name: str, model_dir: Path) -> ModelSpec:
    """Return the spec of the version in ``model_dir``, made this process's (``use_spec``): the one its version.json carries
    under "spec" (the text saved with it), else the known spec called ``name``; raise SpecError when there is neither."""
    record_file = model_dir / RECORD_FILENAME
    if record_file.is_file():
        try:
            text = json.loads(record_file.read_text()).get("spec")
        except (ValueError, AttributeError) as error:
            raise SpecError(f"{record_file} is not a version record ({error}); serve the directory the store saved") from None
        if text:
            spec = spec_from_text(text, f"{record_file} (spec)")
            if spec.name != name:
                raise SpecError(f"{record_file} holds a version of {spec.name}, not of {name}; serve it as --name {spec.name}")
            return use_spec(spec)
    try:
        return spec_for(name)
    except SpecError as error:
        raise SpecError(f"{name} is not a known model and {record_file} carries no spec, so its requests cannot be checked ({error}); "
                        "serve a version saved with its spec") from None


def ratio_columns(spec: ModelSpec) -> dict[int, str]:
    """Return the served columns ``spec`` sends as ratios (0-1), by index, with their input names; none for engineered features."""
    if spec.features.name != RAW:  # engineered features (differences, changes) are not bounded
        return {}
    return {column: item.name for column, item in enumerate(spec.inputs) if item.unit is Unit.RATIO}


def build_model(name: str, version: str, model_bytes: bytes, spec: ModelSpec, max_rows: int = DEFAULT_MAX_ROWS):
    """Return a loaded kserve.Model that serves the pickled ``model_bytes`` under ``name``, checking requests and counting
    answers as ``spec`` says; like the stock sklearnserver it answers ``predict_proba`` when PREDICT_PROBA is true."""
    import time

    import joblib
    import kserve
    import numpy as np
    from prometheus_client import Counter, Histogram

    # The latency the platform's guide queries, beside KServe's request_predict_seconds (InferenceStatusCounter counts requests).
    latency = Histogram("kserve_inference_latency", "Inference latency in seconds, validation and predict included", ["model", "version"])
    # What the model answered: anomaly and classification outcomes (with the alerts), each forecast output's value
    # (ratios, so 0-1 buckets).
    outcomes = Counter("model_predictions", "Predictions by outcome: anomaly or normal, or the predicted class", ["model", "version", "outcome"])
    alerted = Counter("model_alerts", "Classification predictions a caller alerts on (outputs.alert)", ["model", "version"])
    forecasts = Histogram("model_forecast", "Forecast values by output", ["model", "version", "output"],
                          buckets=[step / 20 for step in range(21)])
    width, ratios = spec.n_features, ratio_columns(spec)
    class_names = {item.value: item.name for item in spec.outputs.classes}
    output_names = [value.name for value in spec.outputs.values]

    def observe(predictions) -> None:
        """Count the outcomes (and alerts) or histogram the forecast outputs of one answered request, when it has the type's shape."""
        if spec.type == ANOMALY and predictions.ndim == 1 and predictions.dtype.kind in "iu":
            anomalies = int((predictions == spec.outputs.labels["anomaly"]).sum())
            outcomes.labels(name, version, "anomaly").inc(anomalies)
            outcomes.labels(name, version, "normal").inc(len(predictions) - anomalies)
        elif spec.type == PREDICTIVE and predictions.ndim == 2 and predictions.shape[1] == len(output_names):
            for column, output in enumerate(output_names):
                for value in predictions[:, column]:
                    forecasts.labels(name, version, output).observe(float(value))
        elif spec.type == CLASSIFICATION and (predictions.ndim == 1 or predictions.shape[1:] == (len(class_names),)):
            classes = predicted_classes(spec, predictions)
            for value, count in zip(*np.unique(classes, return_counts=True)):
                outcomes.labels(name, version, class_names.get(value, "undeclared")).inc(int(count))
            alerted.labels(name, version).inc(int(alerts(spec, predictions).sum()))

    class SklearnVersionModel(kserve.Model):
        """A stored sklearn version behind the v1 protocol."""

        def load(self) -> bool:
            """Unpickle the verified bytes with joblib, as sklearnserver loads its file; return readiness."""
            self._model = joblib.load(io.BytesIO(model_bytes))
            self.ready = True
            return self.ready

        async def predict(self, payload, headers=None):
            """Return V1 ``{"predictions": [...], "model_name", "model_version"}`` or a V2 response for validated rows, predicting in a worker thread."""
            started = time.perf_counter()
            if isinstance(payload, kserve.InferRequest):
                tensors = [{"name": tensor.name, "shape": list(tensor.shape), "datatype": tensor.datatype, "data": tensor.data}
                           for tensor in payload.inputs]
                rows = parse_v2_inputs(tensors, width, max_rows)
            elif isinstance(payload, dict) and "instances" in payload:
                rows = parse_instances(payload["instances"], width, max_rows)
            else:
                raise InvalidRequest('the request body must be JSON {"instances": [[...], ...]} (V1) or {"inputs": [...]} (V2)')
            check_ratio_inputs(rows, ratios, name)
            # Read per request, as sklearnserver does: predict_proba when PREDICT_PROBA is true and the model has it.
            probabilities = os.environ.get(PREDICT_PROBA_ENV, "false").lower() == "true" and hasattr(self._model, "predict_proba")
            method = self._model.predict_proba if probabilities else self._model.predict
            predictions = await asyncio.to_thread(method, np.asarray(rows, dtype=float))
            observe(predictions)
            latency.labels(name, version).observe(time.perf_counter() - started)
            if isinstance(payload, kserve.InferRequest):
                integer = predictions.dtype.kind in "iu"
                output = kserve.InferOutput("output-0", list(predictions.shape), "INT64" if integer else "FP64",
                                            predictions.astype("int64" if integer else "float64").flatten().tolist())
                return kserve.InferResponse(payload.id or str(uuid.uuid4()), name, [output], model_version=version)
            return {"predictions": predictions.tolist(), "model_name": name, "model_version": version}

    model = SklearnVersionModel(name)
    model.load()
    return model


class InferenceStatusCounter:
    """ASGI middleware: counts each predict/infer request by the HTTP status answered, and a 5xx as a server error.

    Outside the body limit and validation, so 400, 408, 413 and 415 are counted as what they are; an exception that
    escapes (KServe's handler answers it 500) is a server error; a client that leaves before an answer is not counted.
    The labels are the served model and version, never the request's path, so clients cannot add series.
    """

    def __init__(self, app, requests, errors, model: str, version: str) -> None:
        """Wrap ``app``; ``requests`` is labelled (model, version, code), ``errors`` (model, version)."""
        self.app, self.requests, self.model, self.version = app, requests, model, version
        self.errors = errors.labels(model, version)  # exists at 0 from the start, so an error rate has data before any error

    async def __call__(self, scope, receive, send):
        """Pass the request on and count the status it was answered with."""
        if not is_inference_request(scope):
            return await self.app(scope, receive, send)
        status: int | None = None

        async def status_recording_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, status_recording_send)
        except Exception:
            status = status or 500
            raise
        finally:
            if status is not None:
                self.requests.labels(self.model, self.version, str(status)).inc()
                if status >= 500:
                    self.errors.inc()


class RepositoryRoutesRefused:
    """ASGI middleware: 404 for KServe's unauthenticated model repository routes (``/v2/repository/...``)."""

    def __init__(self, app) -> None:
        """Wrap ``app``."""
        self.app = app

    async def __call__(self, scope, receive, send):
        """Answer 404 to repository paths; pass everything else on."""
        if scope["type"] == "http" and scope.get("path", "").startswith("/v2/repository/"):
            return await send_json_error(send, 404, "model repository routes are not served: a version is loaded once, at start")
        await self.app(scope, receive, send)


def serve(name: str, version: str, model_dir: Path, expected_sha256: str, port: int, host: str = "127.0.0.1",
          max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, max_rows: int = DEFAULT_MAX_ROWS, body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
          header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S) -> None:
    """Load and serve one version on ``host``:``port`` until terminated."""
    import kserve
    import kserve.model_server
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from kserve.errors import ModelNotReady
    from kserve.protocol.rest.server import RESTServer
    from kserve.protocol.rest.v2_datamodels import ModelMetadataResponse
    from prometheus_client import Counter

    # The names the platform's guide queries; the status code as ``code``, the convention of Prometheus's own HTTP instrumentation.
    requests = Counter("kserve_inference_requests", "Inference requests (V1 and V2) by model, served version and HTTP status code",
                       ["model", "version", "code"])
    errors = Counter("kserve_inference_errors", "Inference requests the server failed (5xx; a client's 4xx is no error), by model and version",
                     ["model", "version"])

    async def invalid_request(_request, error: InvalidRequest):
        return JSONResponse({"error": str(error)}, status_code=error.status)

    async def malformed_body(_request, error: RequestValidationError):
        # FastAPI's own answer echoes the values, and a NaN among them made it fail with 500: name the places only.
        places = [(".".join(str(part) for part in problem["loc"][2:]) or "the body", problem["msg"])
                  for problem in error.errors() if problem["loc"][:2] != ("body", "bytes")]
        named = "; ".join(f"{place}: {message}" for place, message in places[:3])
        return JSONResponse({"error": f"the body is not a V2 infer request ({named}); send "
                             '{"inputs": [{"name": "input-0", "shape": [rows, features], "datatype": "FP64", "data": [...]}]}'}, status_code=422)

    class HardenedRESTServer(RESTServer):
        """KServe's REST server bound to ``host`` (it always binds 0.0.0.0 otherwise), with a deadline on request headers,
        bounded, validated input and metadata that names the served version."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.config.host = host
            self.config.http = header_timeout_protocol(header_timeout_s)
            self._server = type(self._server)(self.config)

        def _register_endpoints(self, app):
            # Registered before KServe's own routes for the same paths, so these answer them.
            dataplane = self.dataplane

            async def v1_metadata(model_name: str) -> dict:
                if not await dataplane.model_ready(model_name):
                    raise ModelNotReady(model_name)
                return {"name": model_name, "version": version, "ready": True}

            async def v2_metadata(model_name: str) -> ModelMetadataResponse:
                return ModelMetadataResponse.model_validate({**await dataplane.model_metadata(model_name), "versions": [version]})

            app.add_api_route("/v1/models/{model_name}", v1_metadata, methods=["GET"], tags=["V1"])
            app.add_api_route("/v2/models/{model_name}", v2_metadata, response_model=ModelMetadataResponse, methods=["GET"], tags=["V2"])
            super()._register_endpoints(app)

        def _add_middlewares(self, app):
            super()._add_middlewares(app)
            app.add_middleware(RepositoryRoutesRefused)
            app.add_middleware(JsonContentType)
            app.add_middleware(BodyLimit, max_bytes=max_body_bytes, timeout_s=body_timeout_s)
            app.add_middleware(InferenceStatusCounter, requests=requests, errors=errors, model=name, version=version)

        def _add_exception_handlers(self, app):
            super()._add_exception_handlers(app)
            app.add_exception_handler(InvalidRequest, invalid_request)
            app.add_exception_handler(RequestValidationError, malformed_body)

    kserve.model_server.RESTServer = HardenedRESTServer
    model = build_model(name, version, verified_model_bytes(model_dir, expected_sha256), served_spec(name, model_dir), max_rows)
    kserve.ModelServer(http_port=port, enable_grpc=False, workers=1, enable_latency_logging=False).start([model])


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and serve; return 1 with a message when the version cannot be served."""
    parser = argparse.ArgumentParser(description="Serve one stored model version with the KServe model server.")
    parser.add_argument("--name", "--model_name", dest="name", required=True,
                        help="the model served; the last one given counts (KServe appends a candidate InferenceService's --model_name)")
    parser.add_argument("--version", default=os.environ.get("MODEL_VERSION", ""),
                        help="required: the store version served (vN), named in every answer (default: $MODEL_VERSION)")
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--sha256", default=os.environ.get("MODEL_SHA256", ""),
                        help="required: serve only if the model file has this sha256 (default: $MODEL_SHA256)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="413 above this (default: $MODEL_MAX_BODY_BYTES or 4 MiB)")
    parser.add_argument("--max-rows", type=int, default=DEFAULT_MAX_ROWS, help="413 above this many rows (default: $MODEL_MAX_ROWS or 10000)")
    parser.add_argument("--body-timeout-s", type=float, default=DEFAULT_BODY_TIMEOUT_S,
                        help="408 when a request body takes longer to arrive (default: $MODEL_BODY_TIMEOUT_S or 30)")
    parser.add_argument("--header-timeout-s", type=float, default=DEFAULT_HEADER_TIMEOUT_S,
                        help="close a connection whose request headers take longer (default: $MODEL_HEADER_TIMEOUT_S or 10)")
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a pod)")
    args = parser.parse_args(argv)
    if not args.version:
        print(f"model server: cannot serve {args.name}: no version given: pass --version or set MODEL_VERSION to the store version it serves (e.g. v3)",
              file=sys.stderr, flush=True)
        return 1
    try:
        serve(args.name, args.version, args.model_dir, args.sha256, args.port, args.host, args.max_body_bytes, args.max_rows, args.body_timeout_s,
              args.header_timeout_s)
    except (RuntimeError, OSError, ValueError) as error:
        print(f"model server: cannot serve {args.name} {args.version}: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
