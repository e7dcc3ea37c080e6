"""A Model Registry stand-in on 127.0.0.1 over TLS: the REST API v1alpha3 endpoints the project uses, checked against the published API.

It follows kubeflow/model-registry's ``api/openapi/model-registry.yaml`` (commit bd07139, in shared/reference/model-registry beside the project):
every request and every response is validated with openapi-core against that file, and any mismatch is kept in ``errors``
(the tests fail on it). Semantics as the server has them: ids are strings from one counter for models and versions (MLMD
contexts) and another for artifacts, ``createTimeSinceEpoch``/``lastUpdateTimeSinceEpoch`` in milliseconds as strings, lookups
by name (a version's within its ``parentResourceId``) answer 404 when nothing matches, a duplicate name is 409, a PATCH replaces
the fields it carries (``customProperties`` as a whole), and a request without the bearer token (or with another) is 401.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from openapi_core.validation.request.exceptions import SecurityValidationError

from tests.conftest import REPO
from tests.http_json import send_json
from tests.servers import serve_https, tls_certificate

API_FILE = REPO.parent / "shared" / "reference" / "model-registry" / "model-registry.openapi.yaml"
API = "/api/model_registry/v1alpha3"
SPEC_SERVER = "https://localhost:8080"  # the API file's server: requests are validated as if sent there


class ApiAnswer(Exception):
    """An error answer: its HTTP status and message (the API's Error body)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _now_ms() -> str:
    return str(int(time.time() * 1000))


@dataclass
class RegistryStandin:
    """The registry's state (registered models, versions, artifacts), the calls it got and every API mismatch it saw."""

    work: Path
    token: str
    registered_models: dict[str, dict] = field(default_factory=dict)
    model_versions: dict[str, dict] = field(default_factory=dict)
    artifacts: dict[str, dict] = field(default_factory=dict)
    version_artifacts: dict[str, list[str]] = field(default_factory=dict)
    serving_environments: dict[str, dict] = field(default_factory=dict)
    inference_services: dict[str, dict] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.api = OpenAPI.from_file_path(str(API_FILE))
        self.lock = threading.Lock()
        self._ids = {"context": 0, "artifact": 0}
        self.cert, key = tls_certificate(self.work)
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                standin.answer(self, method, self.rfile.read(length) if length else b"")

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

            def do_PATCH(self):
                self._serve("PATCH")

        self.server, self.url = serve_https(Handler, self.cert, key)

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()

    def creates(self) -> int:
        """Return how many create calls (POST) it has answered."""
        return sum(method == "POST" for method, _ in self.calls)

    # --- what the tests read and tamper with -------------------------------------------------------------------------------
    def version(self, model_name: str, version: str) -> dict:
        """Return the stored ModelVersion ``version`` of ``model_name`` (KeyError when there is none)."""
        model = next(item for item in self.registered_models.values() if item["name"] == model_name)
        return next(item for item in self.model_versions.values() if item["registeredModelId"] == model["id"] and item["name"] == version)

    def artifact_of(self, version: dict) -> dict:
        """Return the one ModelArtifact of a stored ModelVersion."""
        (artifact_id,) = self.version_artifacts[version["id"]]
        return self.artifacts[artifact_id]

    # --- the API -------------------------------------------------------------------------------------------------------------
    def answer(self, handler: BaseHTTPRequestHandler, method: str, body: bytes) -> None:
        """Validate the request, serve it, validate the response and send it."""
        parsed = urllib.parse.urlsplit(handler.path)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        headers = {name: value for name, value in handler.headers.items()}
        request = MockRequest(SPEC_SERVER, method, parsed.path, args=query, headers=headers, data=body or None,
                              content_type=headers.get("Content-Type", "application/json").split(";")[0])
        with self.lock:
            self.calls.append((method, parsed.path))
            try:
                if headers.get("Authorization") != f"Bearer {self.token}":
                    raise ApiAnswer(401, "missing or invalid bearer token")
                try:
                    self.api.validate_request(request)
                except SecurityValidationError:
                    raise ApiAnswer(401, "missing bearer token") from None
                except Exception as error:  # any other mismatch with the published API fails the test
                    self.errors.append(f"request {method} {handler.path}: {error}: {getattr(error, '__cause__', '')}")
                    raise ApiAnswer(400, f"request does not match the API: {error}") from None
                status, payload = self.route(method, parsed.path, query, json.loads(body) if body else None)
            except ApiAnswer as error:
                status, payload = error.status, {"code": str(error.status), "message": error.message}
            data = json.dumps(payload).encode()
            try:
                self.api.validate_response(request, MockResponse(data, status_code=status, content_type="application/json"))
            except Exception as error:
                self.errors.append(f"response {status} to {method} {handler.path}: {error}: {getattr(error, '__cause__', '')}")
        send_json(handler, status, data)

    def _new_id(self, kind: str) -> str:
        self._ids[kind] += 1
        return str(self._ids[kind])

    def _created(self, kind: str, body: dict, **extra) -> dict:
        now = _now_ms()
        return {"customProperties": {}, **body, **extra, "id": self._new_id(kind), "createTimeSinceEpoch": now, "lastUpdateTimeSinceEpoch": now}

    @staticmethod
    def _patched(item: dict, body: dict) -> dict:
        item.update({key: value for key, value in body.items() if key not in ("id", "name", "registeredModelId")})
        item["lastUpdateTimeSinceEpoch"] = _now_ms()
        return item

    @staticmethod
    def _named(items: dict[str, dict], name: str | None, kind: str) -> dict:
        """Return the top-level entity of ``items`` named ``name``; 404 when there is none."""
        found = [item for item in items.values() if item["name"] == name]
        if not found:
            raise ApiAnswer(404, f"no {kind} named {name!r}")
        return found[0]

    def _create_named(self, items: dict[str, dict], body: dict, kind: str, **extra) -> dict:
        """Create a top-level entity in ``items`` (a context) and return it; 409 when its name is taken."""
        if any(item["name"] == body["name"] for item in items.values()):
            raise ApiAnswer(409, f"{kind} {body['name']!r} already exists")
        created = self._created("context", body, **extra)
        items[created["id"]] = created
        return created

    def route(self, method: str, path: str, query: dict, body: dict | None) -> tuple[int, dict]:
        """Return (status, body) for one validated call."""
        route = path.removeprefix(API)
        if (method, route) == ("GET", "/registered_model"):
            return 200, self._named(self.registered_models, query.get("name"), "registered model")
        if (method, route) == ("POST", "/registered_models"):
            return 201, self._create_named(self.registered_models, body, "registered model", state=body.get("state", "LIVE"))
        if method == "PATCH" and (match := re.fullmatch(r"/registered_models/(\d+)", route)):
            if match[1] not in self.registered_models:
                raise ApiAnswer(404, f"no registered model {match[1]}")
            return 200, self._patched(self.registered_models[match[1]], body)
        if (method, route) == ("GET", "/model_version"):
            found = [item for item in self.model_versions.values()
                     if item["name"] == query.get("name") and item["registeredModelId"] == query.get("parentResourceId")]
            if not found:
                raise ApiAnswer(404, f"no model version named {query.get('name')!r} in {query.get('parentResourceId')}")
            return 200, found[0]
        if (method, route) == ("POST", "/model_versions"):
            if body["registeredModelId"] not in self.registered_models:
                raise ApiAnswer(400, f"no registered model {body['registeredModelId']}")
            if any(item["name"] == body["name"] and item["registeredModelId"] == body["registeredModelId"] for item in self.model_versions.values()):
                raise ApiAnswer(409, f"model version {body['name']!r} already exists")
            created = self._created("context", body, state=body.get("state", "LIVE"))
            self.model_versions[created["id"]] = created
            self.version_artifacts[created["id"]] = []
            return 201, created
        if method == "PATCH" and (match := re.fullmatch(r"/model_versions/(\d+)", route)):
            if match[1] not in self.model_versions:
                raise ApiAnswer(404, f"no model version {match[1]}")
            return 200, self._patched(self.model_versions[match[1]], body)
        if match := re.fullmatch(r"/model_versions/(\d+)/artifacts", route):
            if match[1] not in self.model_versions:
                raise ApiAnswer(404, f"no model version {match[1]}")
            if method == "GET":
                items = [self.artifacts[item] for item in self.version_artifacts[match[1]]
                         if query.get("artifactType") in (None, self.artifacts[item]["artifactType"])]
                return 200, {"items": items, "nextPageToken": "", "pageSize": int(query.get("pageSize", 100)), "size": len(items)}
            if any(self.artifacts[item]["name"] == body.get("name") for item in self.version_artifacts[match[1]]):
                raise ApiAnswer(409, f"artifact {body.get('name')!r} already exists in model version {match[1]}")
            created = self._created("artifact", body, state=body.get("state", "UNKNOWN"))
            self.artifacts[created["id"]] = created
            self.version_artifacts[match[1]].append(created["id"])
            return 201, created
        if method == "PATCH" and (match := re.fullmatch(r"/model_artifacts/(\d+)", route)):
            if match[1] not in self.artifacts:
                raise ApiAnswer(404, f"no model artifact {match[1]}")
            return 200, self._patched(self.artifacts[match[1]], body)
        if route in ("/serving_environment", "/serving_environments", "/inference_service", "/inference_services") or \
                route.startswith("/inference_services/"):
            return self.route_serving(method, route, query, body)
        self.errors.append(f"{method} {path}: not an endpoint the stand-in implements")
        raise ApiAnswer(404, f"{method} {path} is not implemented by the stand-in")

    def route_serving(self, method: str, route: str, query: dict, body: dict | None) -> tuple[int, dict]:
        """Return (status, body) for the serving side: ServingEnvironments and their InferenceService records (the deployments the
        registry's InferenceService controller links). An InferenceService's name is unique in its ServingEnvironment; its
        registeredModelId, modelVersionId and servingEnvironmentId must name existing entities (400 otherwise)."""
        if (method, route) == ("GET", "/serving_environment"):
            return 200, self._named(self.serving_environments, query.get("name"), "serving environment")
        if (method, route) == ("POST", "/serving_environments"):
            return 201, self._create_named(self.serving_environments, body, "serving environment")
        if (method, route) == ("GET", "/inference_service"):
            found = [item for item in self.inference_services.values()
                     if item.get("name") == query.get("name") and item["servingEnvironmentId"] == query.get("parentResourceId", item["servingEnvironmentId"])]
            if not found:
                raise ApiAnswer(404, f"no inference service named {query.get('name')!r} in {query.get('parentResourceId')}")
            return 200, found[0]
        if (method, route) == ("POST", "/inference_services"):
            self._check_references(body)
            if body["servingEnvironmentId"] not in self.serving_environments:
                raise ApiAnswer(400, f"no serving environment {body['servingEnvironmentId']}")
            if any(item.get("name") == body.get("name") and item["servingEnvironmentId"] == body["servingEnvironmentId"]
                   for item in self.inference_services.values()):
                raise ApiAnswer(409, f"inference service {body.get('name')!r} already exists")
            created = self._created("context", body, desiredState=body.get("desiredState", "DEPLOYED"))
            self.inference_services[created["id"]] = created
            return 200, created
        if match := re.fullmatch(r"/inference_services/(\d+)", route):
            if match[1] not in self.inference_services:
                raise ApiAnswer(404, f"no inference service {match[1]}")
            if method == "GET":
                return 200, self.inference_services[match[1]]
            if method == "PATCH":
                self._check_references(body)
                return 200, self._patched(self.inference_services[match[1]], body)
        self.errors.append(f"{method} {route}: not an endpoint the stand-in implements")
        raise ApiAnswer(404, f"{method} {route} is not implemented by the stand-in")

    def _check_references(self, body: dict) -> None:
        """Refuse (400) an InferenceService body naming a registered model or a model version that does not exist."""
        if body.get("registeredModelId") and body["registeredModelId"] not in self.registered_models:
            raise ApiAnswer(400, f"no registered model {body['registeredModelId']}")
        if body.get("modelVersionId") and body["modelVersionId"] not in self.model_versions:
            raise ApiAnswer(400, f"no model version {body['modelVersionId']}")

    # --- what the tests read -------------------------------------------------------------------------------------------------
    def deployments(self, isvc_name: str) -> list[dict]:
        """Return the InferenceService records of a Kubernetes InferenceService named ``isvc_name`` (named ``<name>/<uid>``), oldest first."""
        return [item for item in self.inference_services.values() if item.get("name", "").split("/")[0] == isvc_name]
