"""A small client for the Model Registry's REST API (v1alpha3, ``/api/model_registry/v1alpha3``): only the calls the project makes.

Not the ``model-registry`` package: its 0.3.x client speaks the later ``/api/model_registry/v1`` paths (kubeflow/hub issue 2992
renamed them), which a v1alpha3 registry answers 404, and it is asynchronous (aiohttp, nest_asyncio) and calls the server
when constructed. The bearer token comes from the installation's Secret ($MODEL_REGISTRY_TOKEN), or the service account's for an
in-cluster ``*.svc`` registry; it goes only over https, only to the configured host (redirects are not followed), and is never printed.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field

from components.credentials import ApiAdvice, api_request, json_object, token_from_environment

API_PATH = "/api/model_registry/v1alpha3"
TOKEN_ENV = "MODEL_REGISTRY_TOKEN"
TIMEOUT_S = 10.0


class RegistryError(RuntimeError):
    """The registry cannot be reached, refuses the token or a call; the message names the problem and the fix."""


class RegistryConflict(RegistryError):
    """The registry refused a create because an entry of that name exists (409): another run created it first."""


# What a registry call can raise: RegistryError, or KeyError/TypeError reading an answer of another shape than the API's. Callers that
# must go on without the registry (serving writes, the approval hold, the steps' mirroring) catch exactly these.
REGISTRY_FAILURES = (RegistryError, KeyError, TypeError)


ENTITY_ID = re.compile(r"^[1-9][0-9]{0,18}$")  # the registry's ids: decimal int64 as text


def entity_id(value: object) -> str:
    """Return ``value`` as a registry id fit for a URL path (a registry answer or a label is untrusted); RegistryError otherwise."""
    text = str(value)
    if not ENTITY_ID.match(text):
        raise RegistryError(f"{text[:40]!r} is not a model registry id (a decimal number)")
    return text


def property_values(properties: dict[str, object]) -> dict[str, dict]:
    """Return ``properties`` as the API's typed customProperties (bool, int, float or str; None is left out)."""
    typed = {}
    for key, value in properties.items():
        if value is None:
            continue
        if isinstance(value, bool):
            typed[key] = {"metadataType": "MetadataBoolValue", "bool_value": value}
        elif isinstance(value, int) and abs(value) < 10**9:
            typed[key] = {"metadataType": "MetadataIntValue", "int_value": str(value)}
        elif isinstance(value, (int, float)):
            typed[key] = {"metadataType": "MetadataDoubleValue", "double_value": float(value)}
        else:
            typed[key] = {"metadataType": "MetadataStringValue", "string_value": str(value)}
    return typed


def plain_values(custom_properties: dict[str, dict] | None) -> dict[str, object]:
    """Return the API's typed customProperties as plain Python values (struct and proto values are left out)."""
    plain: dict[str, object] = {}
    for key, value in (custom_properties if isinstance(custom_properties, dict) else {}).items():
        kind = value.get("metadataType") if isinstance(value, dict) else None
        if kind == "MetadataBoolValue":
            plain[key] = value["bool_value"]
        elif kind == "MetadataIntValue":
            plain[key] = int(value["int_value"])
        elif kind == "MetadataDoubleValue":
            plain[key] = float(value["double_value"])
        elif kind == "MetadataStringValue":
            plain[key] = value["string_value"]
    return plain


@dataclass
class RegistryClient:
    """The registry at ``url`` (https), trusted through ``ca_bundle`` (empty: ``credentials.trusted_cas``), with the bearer ``token``."""

    url: str
    ca_bundle: str = ""
    token: str = field(default="", repr=False)  # never printed
    secret: str = ""  # the Secret the token comes from, for messages
    timeout_s: float = TIMEOUT_S

    def __post_init__(self) -> None:
        """Check the URL (https, no credentials), find the token, and name the fixes its errors give."""
        parsed = urllib.parse.urlparse(self.url)
        if parsed.scheme != "https" or not parsed.hostname or parsed.username or parsed.password:
            shown = f"{parsed.scheme}://{parsed.hostname or ''}{f':{parsed.port}' if parsed.port else ''}{parsed.path}"  # never the credentials
            raise RegistryError(f"registry_url {shown!r} is not an https URL without credentials: the registry's token goes only over "
                                "TLS; set store.registry_url to the registry's https route")
        self.url = self.url.rstrip("/")
        self.token = self.token or token_from_environment(TOKEN_ENV, self.url)
        if not self.token:
            raise RegistryError(f"no token for the model registry at {self.url}: put one in the key 'token' of Secret "
                                f"{self.secret or 'the installation registry Secret'!r} (or ${TOKEN_ENV} locally); the pipeline's "
                                "service-account token goes only to an in-cluster registry service (https://<name>.<namespace>.svc:<port>)")
        self._advice = ApiAdvice("the model registry", unreachable="check store.registry_url, store.registry_ca_bundle and that the registry is up",
                                 tls="set store.registry_ca_bundle to the CA bundle that signed the registry's certificate",
                                 refused=f"give the token in Secret {self.secret or TOKEN_ENV!r} access to the registry (a RoleBinding to "
                                         "the registry's service)")

    def _call(self, method: str, path: str, params: dict | None = None, body: dict | None = None, missing_ok: bool = False) -> dict | None:
        """Return the JSON object one call answers (None for a 404 when ``missing_ok``); raise RegistryError naming the problem."""
        answer = api_request(method, f"{self.url}{API_PATH}{path}", self._advice, RegistryError, params=params, body=body, timeout_s=self.timeout_s,
                             headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json"}, ca_bundle=self.ca_bundle)
        if answer.status_code == 404 and missing_ok:
            return None
        found = json_object(answer)
        if answer.status_code >= 300:
            message = found.get("message", "") if found is not None else answer.text
            failure = RegistryConflict if answer.status_code == 409 else RegistryError
            raise failure(f"the model registry at {self.url} answered {answer.status_code} to {method} {path}: {str(message)[:300]}")
        if found is None:
            raise RegistryError(f"the model registry at {self.url} answered {method} {path} without a JSON object: is store.registry_url the "
                                "registry's REST route?")
        return found

    def find_registered_model(self, name: str) -> dict | None:
        """Return the RegisteredModel named ``name``, or None."""
        return self._call("GET", "/registered_model", params={"name": name}, missing_ok=True)

    def create_registered_model(self, body: dict) -> dict:
        """Create a RegisteredModel (RegisteredModelCreate) and return it."""
        return self._call("POST", "/registered_models", body=body)

    def update_registered_model(self, model_id: str, body: dict) -> dict:
        """Update a RegisteredModel (RegisteredModelUpdate) and return it."""
        return self._call("PATCH", f"/registered_models/{entity_id(model_id)}", body=body)

    def find_model_version(self, name: str, registered_model_id: str) -> dict | None:
        """Return the ModelVersion ``name`` of the RegisteredModel ``registered_model_id``, or None."""
        return self._call("GET", "/model_version", params={"name": name, "parentResourceId": registered_model_id}, missing_ok=True)

    def create_model_version(self, body: dict) -> dict:
        """Create a ModelVersion (ModelVersionCreate) and return it."""
        return self._call("POST", "/model_versions", body=body)

    def update_model_version(self, version_id: str, body: dict) -> dict:
        """Update a ModelVersion (ModelVersionUpdate) and return it."""
        return self._call("PATCH", f"/model_versions/{entity_id(version_id)}", body=body)

    def model_artifacts(self, version_id: str) -> list[dict]:
        """Return the ModelArtifacts of the ModelVersion ``version_id``."""
        listed = self._call("GET", f"/model_versions/{entity_id(version_id)}/artifacts", params={"artifactType": "model-artifact", "pageSize": "100"})
        return [item for item in listed.get("items") or [] if isinstance(item, dict) and item.get("artifactType") == "model-artifact"]

    def add_model_artifact(self, version_id: str, body: dict) -> dict:
        """Create a ModelArtifact in the ModelVersion ``version_id`` and return it."""
        return self._call("POST", f"/model_versions/{entity_id(version_id)}/artifacts", body={**body, "artifactType": "model-artifact"})

    def inference_service(self, record_id: str) -> dict:
        """Return the registry's InferenceService record ``record_id`` (what a deployment's ``inference-service-id`` label names)."""
        return self._call("GET", f"/inference_services/{entity_id(record_id)}")

    def update_inference_service(self, record_id: str, body: dict) -> dict:
        """Update the registry's InferenceService record ``record_id`` (InferenceServiceUpdate) and return it."""
        return self._call("PATCH", f"/inference_services/{entity_id(record_id)}", body=body)
