"""What every rollout strategy shares: the target's options, InferenceService shapes and URLs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from components.serving.kserve.api import (
    CREATED_BY_RUN_ANNOTATION, GROUP, MODE_ANNOTATION, MODEL_LABEL, PREFIX, STRATEGY_ANNOTATION, TAG_ROUTING_ANNOTATION, VERSION, VERSION_LABEL,
    InferenceServiceApi, backend_annotations, model_env,
)
from components.serving.target import Endpoints, ServingError, model_url

if TYPE_CHECKING:
    from components.registry.labels import RegistryLinks

DEFAULT_RESOURCES = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}
MANAGED_LABELS = {"app.kubernetes.io/managed-by": "model-pipelines", "app.kubernetes.io/part-of": "self-healing-platform"}


@dataclass(frozen=True)
class KServeOptions:
    """How to reach and shape the InferenceServices, and which rollout strategy moves candidates."""

    namespace: str = ""
    runtime: str = ""
    deployment_mode: str = "auto"
    service_account: str = ""
    endpoint: str = ""
    run_name: str = ""
    rollout_strategy: str = "auto"
    resources: dict = field(default_factory=lambda: DEFAULT_RESOURCES)
    registry: RegistryLinks | None = field(default=None, compare=False)  # labels each InferenceService with the registry's ids


def service_url(service: str, namespace: str) -> str:
    """Return the in-cluster URL of a Kubernetes Service (port 80, as KServe's predictor services expose)."""
    return f"http://{service}.{namespace}.svc.cluster.local"


class RolloutStrategy:
    """How a candidate is launched dark, given traffic, promoted and rolled back; subclasses fill in each move."""

    name = ""
    creation_mode: str | None = None  # the deploymentMode annotation a first deployment is created with

    def __init__(self, api: InferenceServiceApi, options: KServeOptions) -> None:
        """Bind the strategy to the namespace's API and the target's options."""
        self.api, self.options = api, options

    # -- the moves each strategy makes --------------------------------------------------------------------------
    def deploy_candidate(self, main: dict, candidate: dict, timeout_s: float) -> bool:
        """Serve ``candidate`` at 0 % beside stable and wait; return False if the cluster cannot do it this way."""
        raise NotImplementedError

    def set_traffic(self, main: dict, candidate: dict, percent: int, timeout_s: float) -> None:
        """Send ``percent`` of the main URL's traffic to the candidate and wait until it applies."""
        raise NotImplementedError

    def candidate_percent(self, main: dict) -> int:
        """Return the share of live traffic the candidate gets now."""
        raise NotImplementedError

    def promote(self, main: dict, candidate: dict, timeout_s: float) -> None:
        """Make the candidate the stable predictor with all traffic and wait."""
        raise NotImplementedError

    def rollback(self, main: dict, stable: dict, timeout_s: float) -> None:
        """Send all traffic back to stable, remove the candidate and wait."""
        raise NotImplementedError

    def endpoints(self, main: dict, has_candidate: bool) -> Endpoints:
        """Return the main, stable and candidate model URLs."""
        raise NotImplementedError

    def describe(self, model_name: str) -> str:
        """Return one sentence on how this strategy moves traffic."""
        raise NotImplementedError

    # -- shapes shared by the strategies ------------------------------------------------------------------------
    def predictor_model(self, backend: dict, model_name: str) -> dict:
        """Return the predictor's ``model`` block serving ``backend`` of ``model_name`` with the project's runtime settings."""
        model = {"modelFormat": {"name": "sklearn"}, "storageUri": backend["storage_uri"], "resources": self.options.resources,
                 "env": model_env(backend, model_name)}
        if self.options.runtime:
            model["runtime"] = self.options.runtime
        return model

    def manifest(self, name: str, model_name: str, backend: dict, mode: str | None, predictor_name: str = "") -> dict:
        """Return a new InferenceService serving ``backend``, with lineage labels and annotations."""
        predictor: dict = {"model": self.predictor_model(backend, model_name)}
        if name != model_name:
            # KServe fills a runtime's {{.Name}} with the InferenceService's name (<model>-candidate) and appends these args to the
            # runtime's: the stock sklearn server and the project's both take the last --model_name.
            predictor["model"]["args"] = [f"--model_name={model_name}"]
        if predictor_name:
            predictor["name"] = predictor_name
        if self.options.service_account:
            predictor["serviceAccountName"] = self.options.service_account
        annotations = {TAG_ROUTING_ANNOTATION: "true", **backend_annotations("stable", backend)}
        if mode:
            annotations[MODE_ANNOTATION] = mode
        if self.options.run_name:
            annotations[f"{PREFIX}/pipeline-run"] = annotations[CREATED_BY_RUN_ANNOTATION] = self.options.run_name
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "InferenceService",
            "metadata": {
                "name": name,
                "namespace": self.api.namespace,
                "labels": {**MANAGED_LABELS, MODEL_LABEL: model_name, VERSION_LABEL: backend["version"]},
                "annotations": annotations,
            },
            "spec": {"predictor": predictor},
        }

    def serving_patch(self, backend: dict, model_name: str, annotations: dict | None = None, canary: object = "keep") -> dict:
        """Return a merge patch that points the predictor at ``backend`` of ``model_name`` (and sets canaryTrafficPercent unless 'keep')."""
        predictor: dict = {"model": {"storageUri": backend["storage_uri"], "env": model_env(backend, model_name)}}
        if canary != "keep":
            predictor["canaryTrafficPercent"] = canary
        metadata = {"labels": {VERSION_LABEL: backend["version"]}, "annotations": dict(annotations or {})}
        if self.options.run_name:
            metadata["annotations"][f"{PREFIX}/pipeline-run"] = self.options.run_name
        return {"metadata": metadata, "spec": {"predictor": predictor}}

    def candidate_annotations(self, candidate: dict) -> dict:
        """Return the annotations that record the candidate and the strategy it was launched with."""
        return {**backend_annotations("candidate", candidate), STRATEGY_ANNOTATION: self.name}

    @staticmethod
    def finished_annotations(stable: dict) -> dict:
        """Return the annotations that record ``stable`` and forget the candidate and its strategy."""
        return {**backend_annotations("stable", stable), **backend_annotations("candidate", None), STRATEGY_ANNOTATION: None}

    def base_url(self, isvc: dict, name: str) -> str:
        """Return the base URL of an InferenceService by the endpoint option."""
        if self.options.endpoint == "cluster":
            return service_url(f"{name}-predictor", self.api.namespace)
        if self.options.endpoint and not name.endswith("-candidate"):
            return self.options.endpoint
        url = isvc.get("status", {}).get("url")
        if not url:
            raise ServingError(f"InferenceService {self.api.namespace}/{name} has no status.url yet; set the endpoint parameter")
        return url

    def main_url(self, main: dict) -> str:
        """Return the model URL clients call."""
        name = main["metadata"]["name"]
        return model_url(self.base_url(main, name), name)
