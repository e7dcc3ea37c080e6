"""The Kubernetes serving target: KServe InferenceServices, with one rollout strategy per KServe generation.

- ``knative``: Serverless/Knative mode, ``canaryTrafficPercent`` with tag routing (``knative.py``);
- ``standard-canary``: KServe >= 0.20 ``spec.canary[]`` in Standard mode (``standard_canary.py``), only when asked for;
- ``candidate-isvc``: Standard/RawDeployment mode, a second ``<name>-candidate`` InferenceService (``candidate_isvc.py``).

``rollout_strategy=auto`` reads the mode from the InferenceService (old and new names): Knative/Serverless uses
``knative``, Standard/RawDeployment ``candidate-isvc``. Not ``standard-canary``: on KServe 0.20.0 ``trafficPercent``
only sizes the canary's replicas (the model's own Service and ingress reach stable alone, and a Service that selects
every pod of the InferenceService splits by pod count, half at a 10 % step with one replica each), and naming the
predictor renames its Service, so ``<name>-predictor``, which the coordination engine may call, would not exist. The
strategy a candidate was launched with is recorded on the main InferenceService, so the later steps (separate pods)
move it the same way.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from components.credentials import pod_namespace
from components.serving.kserve.api import (
    CREATED_BY_RUN_ANNOTATION, KNATIVE, MODE_ANNOTATION, STANDARD, STRATEGY_ANNOTATION, InferenceServiceApi, backend_annotations, normalized_mode,
    not_owned_error, owned_by, recorded_backend,
)
from components.serving.kserve.candidate_isvc import CandidateIsvcStrategy
from components.serving.kserve.knative import KnativeStrategy
from components.serving.kserve.readiness import Wanted, conditions_text
from components.serving.kserve.standard_canary import StandardCanaryStrategy, predictor_name_for
from components.serving.kserve.strategy import KServeOptions, RolloutStrategy
from components.serving.target import Endpoints, ServingError, ServingStatus, namespace_scope

__all__ = ["KServeOptions", "KServeTarget", "ROLLOUT_STRATEGIES", "DEPLOYMENT_MODES", "conditions_text"]

STRATEGIES: dict[str, type[RolloutStrategy]] = {
    strategy.name: strategy for strategy in (KnativeStrategy, StandardCanaryStrategy, CandidateIsvcStrategy)
}
ROLLOUT_STRATEGIES = ("auto", *STRATEGIES)
DEPLOYMENT_MODES = ("auto", "Serverless", "RawDeployment", KNATIVE, STANDARD)


class KServeTarget:
    """Serves models as KServe InferenceServices in one namespace."""

    strict_client_errors = False  # the stock sklearn runtime answers malformed input with 500 and an error body

    def __init__(self, options: KServeOptions, api=None, sleep: Callable[[float], None] = time.sleep, status_tracks_spec: bool = False) -> None:
        """Connect with the pod's service account in a cluster, else with the kubeconfig (``api``: another CustomObjectsApi,
        ``status_tracks_spec`` when its status is computed for each object's current content, not KServe's)."""
        if options.deployment_mode not in DEPLOYMENT_MODES:
            raise ServingError(f"deployment_mode must be one of {', '.join(DEPLOYMENT_MODES)}, got {options.deployment_mode!r}")
        if options.rollout_strategy not in ROLLOUT_STRATEGIES:
            raise ServingError(f"rollout_strategy must be one of {', '.join(ROLLOUT_STRATEGIES)}, got {options.rollout_strategy!r}")
        self.options = options
        namespace = options.namespace or pod_namespace() or "default"
        self.api = InferenceServiceApi(api or self.connect(), namespace, sleep, status_tracks_spec, options.registry)
        self.namespace = namespace
        self.last_choice = ""

    @staticmethod
    def connect():
        """Return a CustomObjectsApi from the in-cluster config, or from the kubeconfig on a laptop."""
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            try:
                # Read $KUBECONFIG now: the client reads it once, when it is first imported.
                config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
            except (config.ConfigException, OSError) as error:
                raise ServingError(
                    f"no Kubernetes credentials: not in a pod and no usable kubeconfig ({error}); set KUBECONFIG or run in the cluster"
                ) from error
        return client.CustomObjectsApi()

    # -- choosing the strategy ---------------------------------------------------------------------------------
    def mode(self, isvc: dict | None) -> str | None:
        """Return the normalised deployment mode: the parameter, else the annotation, else the status, else None."""
        if self.options.deployment_mode != "auto":
            return normalized_mode(self.options.deployment_mode)
        if isvc:
            return normalized_mode(isvc["metadata"].get("annotations", {}).get(MODE_ANNOTATION)) or normalized_mode(
                isvc.get("status", {}).get("deploymentMode"))
        return None

    def _strategy(self, name: str, why: str) -> RolloutStrategy:
        """Return the named strategy and remember why it was chosen, for the log and the canary report."""
        self.last_choice = f"{name} ({why})"
        return STRATEGIES[name](self.api, self.options)

    def strategy_for(self, main: dict | None) -> RolloutStrategy:
        """Return the strategy that moves this InferenceService's candidate: the recorded one, the parameter's, or auto's."""
        recorded = (main or {}).get("metadata", {}).get("annotations", {}).get(STRATEGY_ANNOTATION)
        if recorded in STRATEGIES and recorded_backend(main, "candidate"):
            return self._strategy(recorded, "recorded on the InferenceService when the candidate was deployed")
        if self.options.rollout_strategy != "auto":
            return self._strategy(self.options.rollout_strategy, "set by the rollout_strategy parameter")
        mode = self.mode(main)
        if mode == STANDARD:
            return self._strategy("candidate-isvc", "auto: Standard/RawDeployment mode, where a candidate InferenceService is the one "
                                                    "dark launch that keeps <name>-predictor and every live request on stable")
        if mode == KNATIVE:
            return self._strategy("knative", "auto: Knative/Serverless mode")
        return self._strategy("knative", "auto: no deployment mode recorded, so KServe's default Serverless is assumed")

    # -- the ServingTarget interface --------------------------------------------------------------------------------
    def deploy(self, model_name: str, version: str, storage_uri: str, checksum: str, timeout_s: float) -> ServingStatus:
        """Create the InferenceService on first deployment; else launch a dark candidate (0 % traffic)."""
        backend = {"version": version, "storage_uri": storage_uri, "checksum": checksum}
        main = self.api.get(model_name)
        if main is None:
            self._create(model_name, backend, timeout_s)
            return self.status(model_name)
        if not owned_by(main, model_name):
            raise not_owned_error(main, self.namespace, model_name)
        if not recorded_backend(main, "stable"):
            # Made by hand (the old workflow) and handed over with the ownership labels: adopt what it serves as stable.
            serving_uri = main["spec"]["predictor"].get("model", {}).get("storageUri", "")
            adopted = {"version": serving_uri.rstrip("/").rsplit("/", 1)[-1] or "unmanaged", "storage_uri": serving_uri, "checksum": ""}
            self.api.change(model_name, lambda current: {"metadata": {"annotations": backend_annotations("stable", adopted)}}, model_name)
            # A candidate launched beside a service whose first revision is not rolled out yet would take all its traffic.
            main = self.api.wait_ready(model_name, timeout_s)
        strategy = self.strategy_for(main)
        print(f"deploy {model_name} {version}: rollout strategy {self.last_choice}", flush=True)
        if not strategy.deploy_candidate(main, backend, timeout_s):  # standard-canary, asked for, on a KServe without spec.canary
            self.api.change(model_name, lambda current: {"metadata": {"annotations": {**backend_annotations("candidate", None), STRATEGY_ANNOTATION: None}}}, model_name)
            raise ServingError(f"the API server dropped spec.canary from {self.namespace}/{model_name}: this cluster's KServe CRD has no "
                               "native canary (KServe < 0.20); use rollout_strategy=candidate-isvc or auto")
        return self.status(model_name)

    def _create(self, model_name: str, backend: dict, timeout_s: float) -> None:
        """Create the InferenceService for a first deployment, in the mode the parameters ask for, and wait."""
        if self.options.rollout_strategy != "auto":
            strategy = STRATEGIES[self.options.rollout_strategy](self.api, self.options)
            mode = strategy.creation_mode if self.options.deployment_mode == "auto" else self.options.deployment_mode
            predictor_name = predictor_name_for(backend["version"]) if strategy.name == "standard-canary" else ""
        else:
            strategy = STRATEGIES["knative"](self.api, self.options)
            mode = None if self.options.deployment_mode == "auto" else self.options.deployment_mode
            predictor_name = ""
        self.api.change(model_name, lambda current: strategy.manifest(model_name, model_name, backend, mode, predictor_name) if current is None else None,
                        model_name)
        # A new object has no status from before: any Ready is its own; the main URL must name the version.
        self.api.wait_ready(model_name, timeout_s, Wanted(serves=lambda isvc: {strategy.main_url(isvc): backend["version"]}))

    def _recorded(self, model_name: str) -> tuple[dict, dict | None, dict | None]:
        """Return (main InferenceService, stable backend, candidate backend) or raise when nothing serves."""
        main = self.api.get(model_name)
        if main is None:
            raise ServingError(f"InferenceService {self.namespace}/{model_name} does not exist; deploy a version first")
        return main, recorded_backend(main, "stable"), recorded_backend(main, "candidate")

    def status(self, model_name: str) -> ServingStatus:
        """Return what the main InferenceService records and how its traffic is split."""
        main = self.api.get(model_name)
        if main is None:
            return ServingStatus(model_name, None, None, 0, None)
        stable, candidate = recorded_backend(main, "stable"), recorded_backend(main, "candidate")
        strategy = self.strategy_for(main)
        percent = strategy.candidate_percent(main) if candidate else 0
        try:
            url = strategy.main_url(main)
        except ServingError:  # not reconciled yet (no status.url): the status is still worth reading
            url = None
        return ServingStatus(model_name, stable and stable["version"], candidate and candidate["version"], percent, url)

    def set_traffic(self, model_name: str, candidate_percent: int, timeout_s: float) -> ServingStatus:
        """Send ``candidate_percent`` of live traffic to the candidate the way its strategy does."""
        main, _, candidate = self._recorded(model_name)
        if candidate is None:
            raise ServingError(f"{model_name} has no candidate to send traffic to")
        self.strategy_for(main).set_traffic(main, candidate, candidate_percent, timeout_s)
        return self.status(model_name)

    def promote(self, model_name: str, timeout_s: float) -> ServingStatus:
        """Make the candidate stable with all traffic the way its strategy does."""
        main, _, candidate = self._recorded(model_name)
        if candidate is None:
            raise ServingError(f"{model_name} has no candidate to promote")
        self.strategy_for(main).promote(main, candidate, timeout_s)
        return self.status(model_name)

    def rollback(self, model_name: str, timeout_s: float, *, reason: str) -> ServingStatus:
        """Send all traffic to stable and remove the candidate so the spec matches what serves; never delete the service
        (``reason`` is the model store's to keep).
        """
        main = self.api.get(model_name)
        if main is None or recorded_backend(main, "candidate") is None:
            return self.status(model_name)
        self.strategy_for(main).rollback(main, recorded_backend(main, "stable"), timeout_s)
        return self.status(model_name)

    def remove(self, model_name: str, version: str, timeout_s: float, *, reason: str) -> ServingStatus:
        """Delete the InferenceService of a failed first deployment, only when this run created it and it serves ``version``
        (``reason`` is the model store's to keep).
        """
        main = self.api.get(model_name)
        if main is None:
            return self.status(model_name)
        stable = recorded_backend(main, "stable")
        creator = main["metadata"].get("annotations", {}).get(CREATED_BY_RUN_ANNOTATION, "")
        if not self.options.run_name or creator != self.options.run_name:
            raise ServingError(f"InferenceService {self.namespace}/{model_name} was not created by this run (created by "
                               f"{creator or 'someone else'}), so it is left serving; delete it with `oc delete isvc {model_name}` if it must go")
        if not stable or stable["version"] != version:
            raise ServingError(f"InferenceService {self.namespace}/{model_name} serves {stable and stable['version']}, not {version}; it is left serving")
        self.api.delete(model_name, model_name)
        return self.status(model_name)

    def traffic_strategy(self, model_name: str) -> str:
        """Return which rollout strategy moves this model's candidate, why, and how it shifts traffic."""
        strategy = self.strategy_for(self.api.get(model_name))
        return f"rollout strategy {self.last_choice}: {strategy.describe(model_name)}"

    def metric_scope(self, model_name: str) -> str:
        """Return the namespace matcher: the Thanos querier sees every project, and another may serve the same model and version numbers."""
        return namespace_scope(self.api.namespace)

    def endpoints(self, model_name: str) -> Endpoints:
        """Return model URLs: an explicit override, the in-cluster services ('cluster'), or the status URLs."""
        main = self.api.get(model_name)
        if main is None:
            return Endpoints(None, None, None)
        return self.strategy_for(main).endpoints(main, recorded_backend(main, "candidate") is not None)
