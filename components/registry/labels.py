"""The labels that link an InferenceService to the registry's version it serves, as the registry's InferenceService controller reads them.

kubeflow/model-registry ``pkg/inferenceservice-controller/controller.go`` (``Reconcile``), run by odh-model-controller on OpenShift
AI, reads ``<domain>/registered-model-id``, ``<domain>/model-version-id`` and ``<domain>/name`` (the registry's name) from an
InferenceService, creates the registry's InferenceService record from them and writes back ``<domain>/inference-service-id``.
OpenShift AI's domain is ``modelregistry.opendatahub.io``, upstream Kubeflow's ``modelregistry.kubeflow.org``
(``store.registry_labels``, whose default each compile profile sets).

The labels name the version the object's ``spec.predictor`` serves, as ``model-pipelines.io/model-version`` does: written in the
same merge patch whenever that label is. The project writes only its three keys; ``inference-service-id`` is the controller's.
That controller creates a record once per InferenceService (named ``<name>/<uid>``) and afterwards updates only its ``url``, so when
the labels move to another version, the project moves the record it points at too (``modelVersionId``, through the REST API).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from components.registry.client import REGISTRY_FAILURES, RegistryClient, RegistryError
from components.registry.sync import version_ids

LABEL_DOMAINS = {"opendatahub": "modelregistry.opendatahub.io", "kubeflow": "modelregistry.kubeflow.org"}
OWN_KEYS = ("registered-model-id", "model-version-id", "name")  # what the project writes
RECORD_KEY = "inference-service-id"  # what the controller writes back (never written by the project)


def label_keys(family: str) -> tuple[str, ...]:
    """Return the label names the project writes for the label family ``family`` (opendatahub or kubeflow)."""
    return tuple(f"{LABEL_DOMAINS[family]}/{key}" for key in OWN_KEYS)


def deploy_labels(family: str, registry_name: str, registered_model_id: str, model_version_id: str) -> dict[str, str | None]:
    """Return the merge-patch labels naming a registered version (the name label is removed when no registry name is set)."""
    model_key, version_key, name_key = label_keys(family)
    return {model_key: registered_model_id, version_key: model_version_id, name_key: registry_name or None}


def cleared_labels(family: str) -> dict[str, None]:
    """Return the merge-patch labels that remove the project's registry labels (so none names a version the spec no longer serves)."""
    return dict.fromkeys(label_keys(family))


@dataclass
class RegistryLinks:
    """Links a model's InferenceServices to its registry versions: the labels per version, looked up once per version; a registry
    that cannot answer leaves the labels off (the step's log says so, as a ``registry:`` line) and never stops a write."""

    client: RegistryClient | None  # None: the registry could not even be configured (no token); every write goes without labels
    model_name: str
    family: str
    registry_name: str
    unavailable: str = ""  # why ``client`` is None
    _ids: dict[str, tuple[str, str]] = field(default_factory=dict, repr=False)

    def ids(self, version: str) -> tuple[str, str]:
        """Return (registered model id, model version id) of ``version``; raise RegistryError when the registry cannot say."""
        if self.client is None:
            raise RegistryError(self.unavailable)
        if version not in self._ids:
            self._ids[version] = version_ids(self.client, self.model_name, version)
        return self._ids[version]

    def labels_for(self, version: str) -> dict[str, str | None]:
        """Return the merge-patch labels for an object whose spec serves ``version``: its ids, or (registry unavailable) none of ours."""
        try:
            return deploy_labels(self.family, self.registry_name, *self.ids(version))
        except REGISTRY_FAILURES as error:  # a registry answer of another shape never stops a serving write
            print(f"registry: deploy labels of {self.model_name} {version} NOT written ({error}); it is deployed without them, so "
                  "the registry's dashboard does not list this deployment", flush=True)
            return cleared_labels(self.family)

    def relink(self, written: dict, version: str) -> None:
        """Point the registry record the controller linked to ``written`` (its ``inference-service-id`` label) at ``version``."""
        metadata = written.get("metadata", {})
        record_id = (metadata.get("labels") or {}).get(f"{LABEL_DOMAINS[self.family]}/{RECORD_KEY}")
        if not record_id or self.client is None:
            return
        try:
            _, version_id = self.ids(version)
            record = self.client.inference_service(record_id)
            if record.get("name") != f"{metadata.get('name')}/{metadata.get('uid')}":  # the label names another object's record: not ours
                raise RegistryError(f"record {record_id} is {str(record.get('name'))[:80]!r}, not this InferenceService's")
            if record.get("modelVersionId") != version_id:
                self.client.update_inference_service(record_id, {"modelVersionId": version_id})
        except REGISTRY_FAILURES as error:  # a registry answer of another shape never stops a serving write
            print(f"registry: InferenceService record {record_id} NOT moved to {self.model_name} {version} ({error})", flush=True)
