"""The KServe model server for one stored version: the stock sklearn runtime's behaviour, plus checksum, 400s and counters.

Run as ``python -m components.model_server --name NAME --model-dir DIR --version vN [--sha256 HEX] --port P``.
Like ``sklearnserver``: exactly one .pkl/.joblib/.pickle in the directory, ``joblib.load``, v1 protocol,
``{"predictions": model.predict(instances).tolist()}``. Unlike it: the file's sha256 is checked before loading
(when given),
malformed requests get HTTP 400 with a message, and per-version request and error counters join KServe's
``request_predict_seconds`` histogram on ``/metrics``. It binds 127.0.0.1 unless ``--host`` says otherwise (the
ServingRuntime in ``manifests/`` runs it in predictor pods with ``--host 0.0.0.0``, reading the version and
checksum from the ``MODEL_VERSION`` and ``MODEL_SHA256`` environment the kserve target sets).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

MODEL_SUFFIXES = (".pkl", ".joblib", ".pickle")


def find_model_file(model_dir: Path) -> Path:
    """Return the single model file in ``model_dir``, refusing none or several as the stock runtime does."""
    files = [path for path in model_dir.iterdir() if path.suffix in MODEL_SUFFIXES]
    if len(files) != 1:
        raise RuntimeError(f"{model_dir} must hold exactly one model file ({', '.join(MODEL_SUFFIXES)}), found {len(files)}")
    return files[0]


def verified_model_file(model_dir: Path, expected_sha256: str) -> Path:
    """Return the model file after checking its sha256 against the store's record."""
    path = find_model_file(model_dir)
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != expected_sha256:
        raise RuntimeError(
            f"{path}: sha256 {actual[:12]}… does not match the recorded {expected_sha256[:12]}…; refusing to serve a changed model"
        )
    return path


def build_model(name: str, version: str, model_file: Path):
    """Return a loaded kserve.Model that serves ``model_file`` under ``name``."""
    import joblib
    import kserve
    import numpy as np
    from kserve.errors import InvalidInput
    from prometheus_client import Counter

    requests = Counter("model_predict_requests", "Predict requests by served version", ["model_name", "version"])
    errors = Counter("model_predict_errors", "Predict requests that failed, by served version", ["model_name", "version"])

    class SklearnVersionModel(kserve.Model):
        """A stored sklearn version behind the v1 protocol."""

        def load(self) -> bool:
            """Load the model file with joblib, as sklearnserver does; return readiness."""
            self._model = joblib.load(model_file)
            self.ready = True
            return self.ready

        def predict(self, payload, headers=None):
            """Return ``{"predictions": model.predict(instances).tolist()}`` or raise InvalidInput (HTTP 400)."""
            requests.labels(name, version).inc()
            try:
                if not isinstance(payload, dict) or "instances" not in payload:
                    raise InvalidInput('the request body must be JSON {"instances": [[...], ...]}')
                try:
                    instances = np.asarray(payload["instances"], dtype=float)
                except (TypeError, ValueError):
                    raise InvalidInput("instances must be a list of rows of numbers") from None
                expected = getattr(self._model, "n_features_in_", None)
                if instances.ndim != 2 or (expected is not None and instances.shape[1] != expected):
                    raise InvalidInput(f"each instance must have {expected} numbers, got shape {list(instances.shape)}")
                return {"predictions": self._model.predict(instances).tolist()}
            except Exception:
                errors.labels(name, version).inc()
                raise

    model = SklearnVersionModel(name)
    model.load()
    return model


def serve(name: str, version: str, model_dir: Path, expected_sha256: str, port: int, host: str = "127.0.0.1") -> None:
    """Load and serve one version on ``host``:``port`` until terminated."""
    import kserve
    import kserve.model_server
    from kserve.protocol.rest.server import RESTServer

    class BoundRESTServer(RESTServer):
        """KServe's REST server bound to ``host`` (it always binds 0.0.0.0 otherwise)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.config.host = host
            self._server = type(self._server)(self.config)

    kserve.model_server.RESTServer = BoundRESTServer
    model_file = verified_model_file(model_dir, expected_sha256) if expected_sha256 else find_model_file(model_dir)
    model = build_model(name, version, model_file)
    kserve.ModelServer(http_port=port, enable_grpc=False, workers=1, enable_latency_logging=False).start([model])


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and serve; return 1 with a message when the version cannot be served."""
    parser = argparse.ArgumentParser(description="Serve one stored model version with the KServe model server.")
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", default=os.environ.get("MODEL_VERSION", "unknown"), help="default: $MODEL_VERSION")
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--sha256", default=os.environ.get("MODEL_SHA256", ""),
                        help="refuse to serve unless model.pkl has this sha256 (default: $MODEL_SHA256)")
    parser.add_argument("--port", required=True, type=int)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a pod)")
    args = parser.parse_args(argv)
    try:
        serve(args.name, args.version, args.model_dir, args.sha256, args.port, args.host)
    except (RuntimeError, OSError, ValueError) as error:
        print(f"model server: cannot serve {args.name} {args.version}: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
