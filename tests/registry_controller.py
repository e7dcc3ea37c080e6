"""The Model Registry's InferenceService controller, played by the Kubernetes stand-in when a test gives it a registry.

It follows kubeflow/model-registry ``pkg/inferenceservice-controller/controller.go`` (commit bd07139, in shared/reference/
model-registry beside the project; odh-model-controller runs it on OpenShift AI) call for call, over the registry's REST API:

- ``Reconcile``: an InferenceService with neither ``<domain>/inference-service-id`` nor ``<domain>/registered-model-id`` is skipped;
  otherwise the finalizer ``<domain>/finalizer`` is added (unless it is being deleted), the ServingEnvironment named after the
  namespace is found or created (``getOrCreateServingEnvironment``), then
  - with ``inference-service-id``: the record is read by id and, when ``status.url`` differs from its ``url`` custom property,
    only that property is updated (``checkURLDiff``, ``updateMRInferenceService``): a changed ``model-version-id`` label is
    NOT copied into the record;
  - else (``createMRInferenceService``): the record named ``<name>/<uid>`` in that ServingEnvironment is looked up and, when
    there is none, created with desiredState DEPLOYED, registeredModelId, modelVersionId (none when the label is empty),
    runtime (``spec.predictor.model.runtime``), and ``url`` from ``status.url`` when there is one;
  - being deleted: ``onDeletion`` sets desiredState UNDEPLOYED (unless it already is), then the finalizer is removed;
  - otherwise the record's id is written back as ``inference-service-id`` when the label does not already say it.
- Any error ends the reconcile; it runs again (controller-runtime requeues), here at the object's next change or poll.

The registry is reached at the URL the test gives (as the controller would from the ``<domain>/name`` Service or the
``modelregistry.opendatahub.io/registry-url`` annotation), with the bearer token, over TLS trusted through the test CA.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field

import requests

API = "/api/model_registry/v1alpha3"


class ReconcileError(RuntimeError):
    """A call failed: the reconcile ends and is retried."""


@dataclass(frozen=True)
class RegistryAccess:
    """Where the controller reaches the registry, and which label domain it reads (modelregistry.opendatahub.io or .kubeflow.org)."""

    url: str  # the registry's https REST URL
    token: str = field(repr=False)  # its bearer token, never printed
    ca_bundle: str = ""  # the CA its TLS is trusted through
    domain: str = "modelregistry.opendatahub.io"  # the labels read: OpenShift AI's, or modelregistry.kubeflow.org


class InferenceServiceRegistryController:
    """Reconciles the stand-in's InferenceServices into the registry (see the module docstring)."""

    def __init__(self, standin, access: RegistryAccess) -> None:
        self.standin, self.access = standin, access
        domain = access.domain
        self.isvc_id_label, self.model_id_label = f"{domain}/inference-service-id", f"{domain}/registered-model-id"
        self.version_id_label, self.finalizer = f"{domain}/model-version-id", f"{domain}/finalizer"
        self.seen: dict[tuple[str, str], str] = {}  # the resourceVersion last reconciled without error
        self.reconciles = 0

    def start(self, stop: threading.Event) -> None:
        """Reconcile every InferenceService that changed, on a thread, until ``stop`` is set."""
        threading.Thread(target=self._loop, args=(stop,), daemon=True).start()

    def _loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            with self.standin.lock:
                changed = [key for key, obj in self.standin.objects.items() if self.seen.get(key) != obj["metadata"]["resourceVersion"]]
            for key in changed:
                try:
                    self.reconcile(key)
                except (ReconcileError, requests.RequestException):
                    continue
            time.sleep(0.05)

    def _call(self, method: str, path: str, params: dict | None = None, body: dict | None = None) -> dict | None:
        """Return the registry's JSON answer, None for a 404; raise ReconcileError for any other error."""
        answer = requests.request(method, f"{self.access.url}{API}{path}", params=params, json=body, verify=self.access.ca_bundle,
                                  headers={"Authorization": f"Bearer {self.access.token}"}, timeout=10)
        if answer.status_code == 404:
            return None
        if answer.status_code >= 300:
            raise ReconcileError(f"{method} {path}: {answer.status_code} {answer.text[:200]}")
        return answer.json()

    def _update(self, key: tuple[str, str], obj: dict, metadata: dict) -> None:
        """Write ``metadata`` changes as the controller's client.Update does: against the resourceVersion it read (409: retried)."""
        code, answer = self.standin.handle("PATCH", key[0], key[1], {"metadata": {**metadata, "resourceVersion": obj["metadata"]["resourceVersion"]}})
        if code >= 300:
            raise ReconcileError(f"update of {key}: {code} {answer.get('message')}")

    def reconcile(self, key: tuple[str, str]) -> None:
        """Play ``Reconcile`` for one InferenceService."""
        self.reconciles += 1
        obj = self.standin.get(*key)
        if obj is None:
            self.seen.pop(key, None)
            return
        version_seen = obj["metadata"]["resourceVersion"]
        labels = obj["metadata"].get("labels") or {}
        record_id, model_id = labels.get(self.isvc_id_label), labels.get(self.model_id_label)
        if record_id is None and model_id is None:
            self.seen[key] = version_seen
            return
        deleting = bool(obj["metadata"].get("deletionTimestamp"))
        finalizers = obj["metadata"].get("finalizers") or []
        if not deleting and self.finalizer not in finalizers:
            self._update(key, obj, {"finalizers": [*finalizers, self.finalizer]})
            return  # the update is a change: the next pass goes on from the object as written
        environment = self._call("GET", "/serving_environment", {"name": key[0]}) or self._call("POST", "/serving_environments", body={"name": key[0]})
        url = obj.get("status", {}).get("url")
        if record_id is not None:
            record = self._call("GET", f"/inference_services/{record_id}")
            if record is None:
                raise ReconcileError(f"unable to find InferenceService with id {record_id} in model registry")
            known = (record.get("customProperties", {}).get("url") or {}).get("string_value", "")
            if (known or url) and known != (url or ""):
                properties = {**record.get("customProperties", {}), "url": {"metadataType": "MetadataStringValue", "string_value": url or ""}}
                self._call("PATCH", f"/inference_services/{record_id}", body={"customProperties": properties})
        else:
            record = self._create(obj, environment["id"], model_id, labels.get(self.version_id_label, ""), url)
        if deleting:
            if record.get("desiredState") != "UNDEPLOYED":
                self._call("PATCH", f"/inference_services/{record['id']}", body={"desiredState": "UNDEPLOYED"})
            if self.finalizer in finalizers:
                self._update(key, obj, {"finalizers": [name for name in finalizers if name != self.finalizer] or None})
            return
        if labels.get(self.isvc_id_label) != record["id"]:
            self._update(key, obj, {"labels": {self.isvc_id_label: record["id"]}})
            return
        self.seen[key] = version_seen

    def _create(self, obj: dict, environment_id: str, model_id: str, version_id: str, url: str | None) -> dict:
        """Play ``createMRInferenceService``: the record named ``<name>/<uid>`` if there is one, else a new one."""
        name = f"{obj['metadata']['name']}/{obj['metadata']['uid']}"
        found = self._call("GET", "/inference_service", {"name": name, "parentResourceId": environment_id})
        if found is not None:
            return found
        body = {"desiredState": "DEPLOYED", "name": name, "registeredModelId": model_id, "servingEnvironmentId": environment_id}
        if version_id:
            body["modelVersionId"] = version_id
        runtime = obj["spec"]["predictor"].get("model", {}).get("runtime")
        if runtime:
            body["runtime"] = runtime
        if url:
            body["customProperties"] = {"url": {"metadataType": "MetadataStringValue", "string_value": url}}
        return self._call("POST", "/inference_services", body=copy.deepcopy(body))
