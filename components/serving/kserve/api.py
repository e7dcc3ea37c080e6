"""InferenceService reads and writes through the official ``kubernetes`` client, and the lineage they carry.

Only GET, POST (create), merge-PATCH and DELETE are used: the DSP ``pipeline-runner`` role has no ``update``
(PUT) and no ``watch``. Writes that depend on what was read carry its resourceVersion, so a concurrent change
answers 409 and the write is redone on a fresh read. 429 and 5xx are retried with backoff.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

from components.model.spec import spec_for
from components.runtime.answers import predictor_environment
from components.serving.kserve.readiness import Wanted, condition_true, conditions_text, readiness_problem
from components.serving.target import ServingError

if TYPE_CHECKING:
    from components.registry.labels import RegistryLinks

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
PREFIX = "model-pipelines.io"
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
TAG_ROUTING_ANNOTATION = "serving.kserve.io/enable-tag-routing"
STRATEGY_ANNOTATION = f"{PREFIX}/rollout-strategy"
CREATED_BY_RUN_ANNOTATION = f"{PREFIX}/created-by-run"  # set once, when a run creates the InferenceService
# KServe 0.20 renamed the modes; the old names stay accepted as aliases and are normalised in status.
KNATIVE, STANDARD = "Knative", "Standard"
MODE_ALIASES = {"Serverless": KNATIVE, "Knative": KNATIVE, "RawDeployment": STANDARD, "Standard": STANDARD}
MANAGED_BY, MODEL_LABEL = "app.kubernetes.io/managed-by", f"{PREFIX}/model"
VERSION_LABEL = f"{PREFIX}/model-version"  # the version the object's spec.predictor serves
RETRIES = 6
LINEAGE_KEYS = ("version", "storage_uri", "checksum")


def normalized_mode(mode: str | None) -> str | None:
    """Return ``Knative`` or ``Standard`` for any of KServe's old or new mode names, else None."""
    return MODE_ALIASES.get(mode or "")


def lineage_annotation(role: str, key: str) -> str:
    """Return the annotation that records a role's version, storage URI or checksum."""
    return f"{PREFIX}/{role}-{key.replace('_', '-')}"


def recorded_backend(isvc: dict | None, role: str) -> dict | None:
    """Return {"version", "storage_uri", "checksum"} recorded for ``role`` ("stable" or "candidate"), or None."""
    annotations = (isvc or {}).get("metadata", {}).get("annotations", {}) or {}
    if not annotations.get(lineage_annotation(role, "version")):
        return None
    return {key: annotations.get(lineage_annotation(role, key), "") for key in LINEAGE_KEYS}


def backend_annotations(role: str, backend: dict | None) -> dict:
    """Return the merge-patch annotations that record (or, with None, remove) a role."""
    return {lineage_annotation(role, key): (backend[key] if backend else None) for key in LINEAGE_KEYS}


def model_env(backend: dict, model_name: str) -> list[dict]:
    """Return the predictor environment: which version and checksum the project's runtime serves, and what the model's spec
    asks of any sklearn runtime (PREDICT_PROBA=true for a spec that serves probabilities)."""
    return [{"name": "MODEL_VERSION", "value": backend["version"]}, {"name": "MODEL_SHA256", "value": backend["checksum"]},
            *({"name": name, "value": value} for name, value in predictor_environment(spec_for(model_name)).items())]


def owned_by(isvc: dict, model_name: str) -> bool:
    """Return whether this project created ``isvc`` for ``model_name`` (its ownership labels say so)."""
    labels = isvc.get("metadata", {}).get("labels") or {}
    return labels.get(MANAGED_BY) == "model-pipelines" and labels.get(MODEL_LABEL) == model_name


def not_owned_error(isvc: dict, namespace: str, model_name: str) -> ServingError:
    """Return the error for an InferenceService this project did not create, with the command that hands it over."""
    name = isvc["metadata"]["name"]
    return ServingError(
        f"InferenceService {namespace}/{name} exists but was not created by model-pipelines (labels {MANAGED_BY}=model-pipelines and "
        f"{MODEL_LABEL}={model_name} missing), so it is left untouched. To hand it over: oc label inferenceservice {name} -n {namespace} "
        f"{MANAGED_BY}=model-pipelines {MODEL_LABEL}={model_name}; or delete it, or pick another model name"
    )


def with_mode_kept(current: dict, body: dict) -> dict:
    """Return ``body`` writing the mode annotation as status reports it, when the two disagree.

    KServe 0.20 normalises ``RawDeployment``/``Serverless`` to ``Standard``/``Knative`` in status and refuses any
    update whose annotation differs from the status mode, so an object created under an old name must be written
    with the new one. Older KServe reports the name it was given, so nothing changes there.
    """
    annotation = current["metadata"].get("annotations", {}).get(MODE_ANNOTATION)
    status_mode = current.get("status", {}).get("deploymentMode")
    if annotation and status_mode and annotation != status_mode:
        body.setdefault("metadata", {}).setdefault("annotations", {})[MODE_ANNOTATION] = status_mode
    return body


class InferenceServiceApi:
    """GET, create, merge-PATCH and DELETE InferenceServices of one namespace, with retries and 409 redo."""

    def __init__(self, api, namespace: str, sleep: Callable[[float], None] = time.sleep, status_tracks_spec: bool = False,
                 links: RegistryLinks | None = None) -> None:
        """Wrap a ``CustomObjectsApi`` for ``namespace``; ``status_tracks_spec`` when its status is computed for the object's
        current content (the gitops target's overlays), not KServe's (see ``readiness``); ``links`` labels each write that
        changes the served version with that version's registry ids."""
        self.api, self.namespace, self.sleep, self.status_tracks_spec = api, namespace, sleep, status_tracks_spec
        self.links = links

    def _linked(self, current: dict | None, body: dict) -> str:
        """Add the registry labels of the version ``body`` makes the spec serve (its ``model-version`` label) to ``body``; return
        that version when it changes what ``current`` served ("" otherwise, or without a registry)."""
        labels = (body.get("metadata") or {}).get("labels") or {}
        version = labels.get(VERSION_LABEL)
        if self.links is None or not version:
            return ""
        linked = self.links.labels_for(version)
        labels.update(linked if current is not None else {key: value for key, value in linked.items() if value is not None})
        served = ((current or {}).get("metadata", {}).get("labels") or {}).get(VERSION_LABEL)
        return version if current is not None and served != version else ""

    def _call(self, operation: str, *args, **kwargs):
        """Call a CustomObjectsApi method, backing off on 429 and 5xx; other errors propagate."""
        from kubernetes.client.rest import ApiException

        delay = 0.2
        for attempt in range(RETRIES):
            try:
                return getattr(self.api, operation)(GROUP, VERSION, self.namespace, PLURAL, *args, **kwargs)
            except ApiException as error:
                if (error.status == 429 or error.status >= 500) and attempt < RETRIES - 1:
                    self.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                raise
        raise AssertionError("unreachable")

    def get(self, name: str) -> dict | None:
        """Return the InferenceService, or None when it does not exist."""
        from kubernetes.client.rest import ApiException

        try:
            return self._call("get_namespaced_custom_object", name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise ServingError(f"cannot read InferenceService {self.namespace}/{name}: {error.status} {error.reason}") from error

    def write(self, name: str, build: Callable[[dict | None], dict | None], owner: str) -> tuple[dict | None, dict | None]:
        """Create, or merge-patch if ``owner``'s, ``name`` with what ``build(current)`` returns; redo on 409 with a fresh read.

        Return (the object as read, as written). The write carries the read's resourceVersion, so it applied to exactly
        that read: its status is the one KServe reported for the spec before (what ``readiness`` compares with).
        """
        from kubernetes.client.rest import ApiException

        for _ in range(RETRIES):
            current = self.get(name)
            if current is not None and not owned_by(current, owner):
                raise not_owned_error(current, self.namespace, owner)
            if current is not None and current["metadata"].get("deletionTimestamp"):
                raise self._still_deleting(current, "it cannot be written until it is gone")
            body = build(current)
            if body is None:
                return current, current
            moved_to = self._linked(current, body)
            try:
                if current is None:
                    return None, self._call("create_namespaced_custom_object", body)
                body = with_mode_kept(current, body)
                body.setdefault("metadata", {})["resourceVersion"] = current["metadata"]["resourceVersion"]
                written = self._call("patch_namespaced_custom_object", name, body)
                if moved_to:
                    self.links.relink(written, moved_to)
                return current, written
            except ApiException as error:
                if error.status == 409:
                    continue
                raise ServingError(f"cannot write InferenceService {self.namespace}/{name}: {error.status} {error.reason}: {error.body}") from error
        raise ServingError(f"InferenceService {self.namespace}/{name} kept changing under us (409 {RETRIES} times); try again")

    def change(self, name: str, build: Callable[[dict | None], dict | None], owner: str) -> dict | None:
        """Write ``name`` as ``write`` does and return it as written."""
        return self.write(name, build, owner)[1]

    def delete(self, name: str, owner: str) -> None:
        """Delete ``name`` if it is ``owner``'s, exactly the object checked (uid precondition); a missing one is fine."""
        from kubernetes.client.rest import ApiException

        current = self.get(name)
        if current is None:
            return
        if not owned_by(current, owner):
            raise not_owned_error(current, self.namespace, owner)
        try:
            self._call("delete_namespaced_custom_object", name, body={"preconditions": {"uid": current["metadata"]["uid"]}})
        except ApiException as error:
            if error.status != 404:
                raise ServingError(f"cannot delete InferenceService {self.namespace}/{name}: {error.status} {error.reason}") from error

    def wait_gone_if_deleting(self, name: str, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` until ``name``, if it is being deleted, is gone; raise ServingError naming its finalizers if it stays."""
        deadline = time.monotonic() + timeout_s
        current = self.get(name)
        while current is not None and current["metadata"].get("deletionTimestamp"):
            if time.monotonic() >= deadline:
                raise self._still_deleting(current, f"still there after {timeout_s:.0f} s; nothing was deployed")
            self.sleep(1.0)
            current = self.get(name)

    def _still_deleting(self, current: dict, what: str) -> ServingError:
        """Return the error for an object being deleted whose finalizers keep it, naming them and who removes them."""
        name, finalizers = current["metadata"]["name"], current["metadata"].get("finalizers") or []
        return ServingError(f"InferenceService {self.namespace}/{name} is being deleted and waits on its finalizers {finalizers}: {what}. The "
                            "controller that added each removes it (the model registry's, once the registry answers); to let it go now: "
                            f"oc patch inferenceservice {name} -n {self.namespace} --type merge -p '{{\"metadata\":{{\"finalizers\":null}}}}'")

    def wait_ready(self, name: str, timeout_s: float, wanted: Wanted = Wanted()) -> dict:
        """Poll with GET until KServe reports Ready for the spec written and the runtime serves what ``wanted`` asks; return it.

        Raise after ``timeout_s`` quoting the conditions and what is still missing. A runtime that names no version (the
        stock one) is said in the log: KServe's status alone was trusted there.
        """
        deadline = time.monotonic() + timeout_s
        delay = 0.2
        while True:
            isvc = self.get(name)
            problem, unnamed = readiness_problem(isvc, wanted, self.status_tracks_spec)
            if not problem:
                if unnamed:
                    print(f"InferenceService {self.namespace}/{name} is Ready; the runtime at {', '.join(unnamed)} names no version (the stock "
                          "KServe runtime), so KServe's status alone says it serves the version asked", flush=True)
                return isvc
            if time.monotonic() >= deadline:
                state = "does not exist" if isvc is None else (
                    f"generation {isvc['metadata'].get('generation')}, observed {isvc.get('status', {}).get('observedGeneration')}: "
                    f"{conditions_text(isvc)}" + (f"; {problem}" if condition_true(isvc, "Ready") else "")
                )
                raise ServingError(f"InferenceService {self.namespace}/{name} was not Ready within {timeout_s:g} s ({state})")
            self.sleep(delay)
            delay = min(delay * 1.5, 1.0)
