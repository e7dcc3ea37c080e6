"""The Kubernetes serving target: KServe InferenceServices driven through the official ``kubernetes`` client.

Only GET, POST (create), merge-PATCH and DELETE are used: the DSP ``pipeline-runner`` role has no ``update``
(PUT) and no ``watch``. Writes that depend on what was read carry its resourceVersion, so a concurrent change
answers 409 and the write is redone on a fresh read. 429 and 5xx are retried with backoff.

Serverless: the candidate is a new revision at ``canaryTrafficPercent: 0`` reached by its ``latest-`` tag URL;
traffic moves with ``canaryTrafficPercent``; promote removes it; rollback sets 0, then restores the stable
``storageUri`` so that the spec matches what serves.
RawDeployment (where ``canaryTrafficPercent`` is silently ignored): the candidate is its own InferenceService
``<name>-candidate``, analysed on its own URL; promote patches the main ``storageUri``; both outcomes delete the
candidate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from components.serving import Endpoints, ServingError, ServingStatus, model_url

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
PREFIX = "model-pipelines.io"
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
TAG_ROUTING_ANNOTATION = "serving.kserve.io/enable-tag-routing"
SERVERLESS, RAW = "Serverless", "RawDeployment"
MODES = {"auto", SERVERLESS, RAW}
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_RESOURCES = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
RETRIES = 6


@dataclass(frozen=True)
class KServeOptions:
    """How to reach and shape the InferenceServices."""

    namespace: str = ""
    runtime: str = ""
    deployment_mode: str = "auto"
    service_account: str = ""
    endpoint: str = ""
    run_name: str = ""
    resources: dict = field(default_factory=lambda: DEFAULT_RESOURCES)


def _annotation(role: str, key: str) -> str:
    """Return the annotation that records a role's version, storage URI or checksum."""
    return f"{PREFIX}/{role}-{key}"


def _backend(annotations: dict, role: str) -> dict | None:
    """Return {"version", "storage_uri", "checksum"} recorded for ``role``, or None."""
    version = annotations.get(_annotation(role, "version"))
    if not version:
        return None
    return {"version": version, "storage_uri": annotations.get(_annotation(role, "storage-uri"), ""),
            "checksum": annotations.get(_annotation(role, "checksum"), "")}


def _backend_annotations(role: str, backend: dict | None) -> dict:
    """Return the merge-patch annotations that record (or, with None, remove) a role."""
    keys = ("version", "storage_uri", "checksum")
    return {_annotation(role, key.replace("_", "-")): (backend[key] if backend else None) for key in keys}


def _model_env(backend: dict) -> list[dict]:
    """Return the predictor environment that tells the project's runtime which version and checksum it serves."""
    return [{"name": "MODEL_VERSION", "value": backend["version"]}, {"name": "MODEL_SHA256", "value": backend["checksum"]}]


def conditions_text(isvc: dict) -> str:
    """Return the InferenceService's conditions as 'Type=Status (Reason: message)' for an error message."""
    conditions = isvc.get("status", {}).get("conditions", [])
    if not conditions:
        return "no conditions reported yet"
    return "; ".join(
        f"{c.get('type')}={c.get('status')}" + (f" ({c.get('reason', '')}: {c.get('message', '')})" if c.get("status") != "True" else "")
        for c in conditions
    )


def is_ready(isvc: dict) -> bool:
    """Return whether the InferenceService is Ready for its current generation (a Ready from before is stale)."""
    status = isvc.get("status", {})
    current = status.get("observedGeneration", 0) >= isvc["metadata"].get("generation", 1)
    return current and any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))


class KServeTarget:
    """Serves models as KServe InferenceServices in one namespace."""

    strict_client_errors = False  # the stock sklearn runtime answers malformed input with 500 and an error body

    def __init__(self, options: KServeOptions, api=None, sleep: Callable[[float], None] = time.sleep) -> None:
        """Connect with the pod's service account in a cluster, else with the kubeconfig."""
        if options.deployment_mode not in MODES:
            raise ServingError(f"deployment_mode must be one of {sorted(MODES)}, got {options.deployment_mode!r}")
        self.options = options
        self.sleep = sleep
        self.api = api or self._connect()
        self.namespace = options.namespace or (NAMESPACE_FILE.read_text().strip() if NAMESPACE_FILE.is_file() else "default")

    @staticmethod
    def _connect():
        """Return a CustomObjectsApi from the in-cluster config, or from the kubeconfig on a laptop."""
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            try:
                config.load_kube_config()
            except (config.ConfigException, OSError) as error:
                raise ServingError(
                    f"no Kubernetes credentials: not in a pod and no usable kubeconfig ({error}); set KUBECONFIG or run in the cluster"
                ) from error
        return client.CustomObjectsApi()

    # -- API calls with retries ----------------------------------------------------------------------------------
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

    def _get(self, name: str) -> dict | None:
        """Return the InferenceService, or None when it does not exist."""
        from kubernetes.client.rest import ApiException

        try:
            return self._call("get_namespaced_custom_object", name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise ServingError(f"cannot read InferenceService {self.namespace}/{name}: {error.status} {error.reason}") from error

    def _change(self, name: str, build: Callable[[dict | None], dict | None]) -> dict | None:
        """Create or merge-patch ``name`` with what ``build(current)`` returns, redoing on 409 with a fresh read."""
        from kubernetes.client.rest import ApiException

        for _ in range(RETRIES):
            current = self._get(name)
            body = build(current)
            if body is None:
                return current
            try:
                if current is None:
                    return self._call("create_namespaced_custom_object", body)
                body.setdefault("metadata", {})["resourceVersion"] = current["metadata"]["resourceVersion"]
                return self._call("patch_namespaced_custom_object", name, body)
            except ApiException as error:
                if error.status == 409:
                    continue
                raise ServingError(f"cannot write InferenceService {self.namespace}/{name}: {error.status} {error.reason}: {error.body}") from error
        raise ServingError(f"InferenceService {self.namespace}/{name} kept changing under us (409 {RETRIES} times); try again")

    def _delete(self, name: str) -> None:
        """Delete ``name``; a missing one is fine."""
        from kubernetes.client.rest import ApiException

        try:
            self._call("delete_namespaced_custom_object", name)
        except ApiException as error:
            if error.status != 404:
                raise ServingError(f"cannot delete InferenceService {self.namespace}/{name}: {error.status} {error.reason}") from error

    def _wait_ready(self, name: str, timeout_s: float, settled: Callable[[dict], bool] = lambda isvc: True) -> dict:
        """Poll with GET until the current generation is Ready (and ``settled``); raise quoting the conditions."""
        deadline = time.monotonic() + timeout_s
        delay = 0.2
        isvc = None
        while True:
            isvc = self._get(name)
            if isvc is not None and is_ready(isvc) and settled(isvc):
                return isvc
            if time.monotonic() >= deadline:
                state = "does not exist" if isvc is None else (
                    f"generation {isvc['metadata'].get('generation')}, observed {isvc.get('status', {}).get('observedGeneration')}: {conditions_text(isvc)}"
                )
                raise ServingError(f"InferenceService {self.namespace}/{name} was not Ready within {timeout_s:g} s ({state})")
            self.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    # -- shapes --------------------------------------------------------------------------------------------------
    def mode(self, isvc: dict | None) -> str:
        """Return the deployment mode: the parameter, else the annotation, else the status (Serverless if unknown)."""
        if self.options.deployment_mode != "auto":
            return self.options.deployment_mode
        if isvc:
            found = isvc["metadata"].get("annotations", {}).get(MODE_ANNOTATION) or isvc.get("status", {}).get("deploymentMode")
            if found in (SERVERLESS, RAW, "Standard"):
                return RAW if found == "Standard" else found
        return SERVERLESS

    def _manifest(self, name: str, model_name: str, backend: dict, mode: str | None) -> dict:
        """Return a new InferenceService serving ``backend``, with lineage labels and annotations."""
        model = {"modelFormat": {"name": "sklearn"}, "storageUri": backend["storage_uri"], "resources": self.options.resources,
                 "env": _model_env(backend)}
        if self.options.runtime:
            model["runtime"] = self.options.runtime
        predictor: dict = {"model": model}
        if self.options.service_account:
            predictor["serviceAccountName"] = self.options.service_account
        annotations = {TAG_ROUTING_ANNOTATION: "true", **_backend_annotations("stable", backend)}
        if mode:
            annotations[MODE_ANNOTATION] = mode
        if self.options.run_name:
            annotations[f"{PREFIX}/pipeline-run"] = self.options.run_name
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "InferenceService",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/managed-by": "model-pipelines", "app.kubernetes.io/part-of": "self-healing-platform",
                           f"{PREFIX}/model": model_name, f"{PREFIX}/model-version": backend["version"]},
                "annotations": annotations,
            },
            "spec": {"predictor": predictor},
        }

    def _serving_patch(self, backend: dict, annotations: dict | None = None, canary: object = "keep") -> dict:
        """Return a merge patch that points the predictor at ``backend`` (and sets canaryTrafficPercent unless 'keep')."""
        predictor: dict = {"model": {"storageUri": backend["storage_uri"], "env": _model_env(backend)}}
        if canary != "keep":
            predictor["canaryTrafficPercent"] = canary
        metadata = {"labels": {f"{PREFIX}/model-version": backend["version"]}, "annotations": dict(annotations or {})}
        if self.options.run_name:
            metadata["annotations"][f"{PREFIX}/pipeline-run"] = self.options.run_name
        return {"metadata": metadata, "spec": {"predictor": predictor}}

    # -- the ServingTarget interface --------------------------------------------------------------------------------
    def deploy(self, model_name: str, version: str, storage_uri: str, checksum: str, timeout_s: float) -> ServingStatus:
        """Create the InferenceService on first deployment; else deploy a dark candidate (0 % traffic)."""
        backend = {"version": version, "storage_uri": storage_uri, "checksum": checksum}
        main = self._get(model_name)
        mode = self.mode(main)
        if main is None:
            explicit = None if self.options.deployment_mode == "auto" else mode
            self._change(model_name, lambda current: self._manifest(model_name, model_name, backend, explicit) if current is None else None)
            self._wait_ready(model_name, timeout_s)
            return self.status(model_name)
        if not _backend(main["metadata"].get("annotations", {}), "stable"):
            # An InferenceService made by hand (the old workflow): adopt what it serves as stable, then canary.
            serving_uri = main["spec"]["predictor"].get("model", {}).get("storageUri", "")
            adopted = {"version": serving_uri.rstrip("/").rsplit("/", 1)[-1] or "unmanaged", "storage_uri": serving_uri, "checksum": ""}
            self._change(model_name, lambda current: {"metadata": {"annotations": _backend_annotations("stable", adopted)}})
        candidate_annotations = _backend_annotations("candidate", backend)
        if mode == SERVERLESS:
            self._change(model_name, lambda current: self._serving_patch(backend, candidate_annotations, canary=0))
            self._wait_ready(model_name, timeout_s)
        else:
            # Recorded on the main InferenceService first, so that a failed candidate is always found and removed.
            self._change(model_name, lambda current: {"metadata": {"annotations": candidate_annotations}})
            candidate_name = f"{model_name}-candidate"
            self._change(candidate_name, lambda current: self._manifest(candidate_name, model_name, backend, RAW) if current is None
                         else self._serving_patch(backend, _backend_annotations("stable", backend)))
            self._wait_ready(candidate_name, timeout_s)
        return self.status(model_name)

    def _recorded(self, model_name: str) -> tuple[dict, dict | None, dict | None]:
        """Return (main InferenceService, stable backend, candidate backend) or raise when nothing serves."""
        main = self._get(model_name)
        if main is None:
            raise ServingError(f"InferenceService {self.namespace}/{model_name} does not exist; deploy a version first")
        annotations = main["metadata"].get("annotations", {})
        return main, _backend(annotations, "stable"), _backend(annotations, "candidate")

    def status(self, model_name: str) -> ServingStatus:
        """Return what the main InferenceService records and how its traffic is split."""
        main = self._get(model_name)
        if main is None:
            return ServingStatus(model_name, None, None, 0, None)
        annotations = main["metadata"].get("annotations", {})
        stable, candidate = _backend(annotations, "stable"), _backend(annotations, "candidate")
        percent = 0
        if candidate and self.mode(main) == SERVERLESS:
            percent = int(main["spec"]["predictor"].get("canaryTrafficPercent") or 0)
        return ServingStatus(model_name, stable and stable["version"], candidate and candidate["version"], percent,
                             model_url(self._base(main, model_name), model_name))

    def set_traffic(self, model_name: str, candidate_percent: int, timeout_s: float) -> ServingStatus:
        """Serverless: set canaryTrafficPercent and check the predictor's traffic; RawDeployment: nothing to split."""
        main, _, candidate = self._recorded(model_name)
        if candidate is None:
            raise ServingError(f"{model_name} has no candidate to send traffic to")
        if self.mode(main) == RAW:
            return self.status(model_name)

        def applied(isvc: dict) -> bool:
            traffic = isvc.get("status", {}).get("components", {}).get("predictor", {}).get("traffic", [])
            latest = [entry for entry in traffic if entry.get("latestRevision") or entry.get("tag") == "latest"]
            return bool(latest) and latest[0].get("percent", 0) == candidate_percent

        self._change(model_name, lambda current: {"spec": {"predictor": {"canaryTrafficPercent": candidate_percent}}})
        self._wait_ready(model_name, timeout_s, settled=applied)
        return self.status(model_name)

    def promote(self, model_name: str, timeout_s: float) -> ServingStatus:
        """Serverless: remove canaryTrafficPercent; RawDeployment: patch the main storageUri, then delete the candidate."""
        main, _, candidate = self._recorded(model_name)
        if candidate is None:
            raise ServingError(f"{model_name} has no candidate to promote")
        annotations = {**_backend_annotations("stable", candidate), **_backend_annotations("candidate", None)}
        if self.mode(main) == SERVERLESS:
            self._change(model_name, lambda current: self._serving_patch(candidate, annotations, canary=None))
            self._wait_ready(model_name, timeout_s)
        else:
            self._change(model_name, lambda current: self._serving_patch(candidate, annotations))
            self._wait_ready(model_name, timeout_s)
            self._delete(f"{model_name}-candidate")
        return self.status(model_name)

    def rollback(self, model_name: str, timeout_s: float) -> ServingStatus:
        """Send all traffic to stable and remove the candidate so the spec matches what serves; no stable: delete."""
        main = self._get(model_name)
        if main is None:
            return self.status(model_name)
        annotations = main["metadata"].get("annotations", {})
        stable, candidate = _backend(annotations, "stable"), _backend(annotations, "candidate")
        if candidate is None:
            # A first deployment that failed: nothing serves rather than something wrong.
            self._delete(model_name)
            return self.status(model_name)
        clear = _backend_annotations("candidate", None)
        if self.mode(main) == SERVERLESS:
            # Pin traffic to the last revision rolled out at 100 % first, then restore its storageUri.
            self._change(model_name, lambda current: {"spec": {"predictor": {"canaryTrafficPercent": 0}}})
            self._change(model_name, lambda current: self._serving_patch(stable, clear, canary=None))
        else:
            self._delete(f"{model_name}-candidate")
            self._change(model_name, lambda current: self._serving_patch(stable, clear))
        self._wait_ready(model_name, timeout_s)
        return self.status(model_name)

    def traffic_strategy(self, model_name: str) -> str:
        """Return how traffic moves in this InferenceService's deployment mode."""
        if self.mode(self._get(model_name)) == SERVERLESS:
            return "Serverless: Knative shifts each percentage step with canaryTrafficPercent; the candidate is probed on its latest- tag URL"
        return (
            f"RawDeployment ignores canaryTrafficPercent, so no live traffic is split: {model_name}-candidate is its own "
            "InferenceService, analysed on its own URL at every step, and promotion patches the main storageUri"
        )

    def endpoints(self, model_name: str) -> Endpoints:
        """Return model URLs: an explicit override, the in-cluster services ('cluster'), or the status URLs."""
        main = self._get(model_name)
        if main is None:
            return Endpoints(None, None, None)
        annotations = main["metadata"].get("annotations", {})
        has_candidate = _backend(annotations, "candidate") is not None
        if self.mode(main) == RAW:
            candidate_isvc = self._get(f"{model_name}-candidate") if has_candidate else None
            main_base = self._base(main, model_name)
            candidate_base = self._base(candidate_isvc, f"{model_name}-candidate") if candidate_isvc else None
            return Endpoints(model_url(main_base, model_name), model_url(main_base, model_name),
                             model_url(candidate_base, model_name) if candidate_base else None)
        main_base = self._base(main, model_name)
        tags = {entry.get("tag"): entry.get("url") for entry in main.get("status", {}).get("components", {}).get("predictor", {}).get("traffic", [])}
        stable_base = tags.get("prev") if has_candidate and tags.get("prev") else main_base
        candidate_base = tags.get("latest") if has_candidate else None
        return Endpoints(model_url(main_base, model_name), model_url(stable_base, model_name),
                         model_url(candidate_base, model_name) if candidate_base else None)

    def _base(self, isvc: dict, name: str) -> str:
        """Return the base URL of an InferenceService by the endpoint option."""
        if self.options.endpoint == "cluster":
            return f"http://{name}-predictor.{self.namespace}.svc.cluster.local"
        if self.options.endpoint and not name.endswith("-candidate"):
            return self.options.endpoint
        url = isvc.get("status", {}).get("url")
        if not url:
            raise ServingError(f"InferenceService {self.namespace}/{name} has no status.url yet; set the endpoint parameter")
        return url
