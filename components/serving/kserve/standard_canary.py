"""standard-canary: KServe >= 0.20's native canary in Standard (formerly RawDeployment) mode.

The candidate is an entry of ``spec.canary`` with its own ``predictor.name`` (the version, e.g. ``v7``) and
``trafficPercent: 0`` for the dark launch; KServe gives it a Deployment and Service ``<isvc>-<name>-predictor``,
where smoke tests and probes reach it. Each step patches ``trafficPercent``; readiness is ``status.canaryStatuses``
and the condition ``CanaryPredictorReady``, which KServe copies from the spec it reconciled (``readiness``), with the
candidate's Service naming its version. Promotion renames the stable predictor to the candidate's and takes its
model while removing the entry (KServe keeps the candidate's pods); rollback removes the entry. Both are done once
KServe has cleared the canary's status and the stable predictor's Service and the main URL name the version kept.
"""

from __future__ import annotations

from components.serving.kserve.api import STANDARD
from components.serving.kserve.readiness import Wanted, canary_problem, no_canary_problem
from components.serving.kserve.strategy import RolloutStrategy, service_url
from components.serving.target import Endpoints, ServingError, model_url


def predictor_name_for(version: str) -> str:
    """Return the predictor name for a stored version: a DNS label, as KServe names Services after it."""
    return version.lower().replace("_", "-").replace(".", "-")


def canary_entry(isvc: dict, name: str) -> dict | None:
    """Return the ``spec.canary`` entry named ``name``, or None."""
    return next((entry for entry in isvc.get("spec", {}).get("canary") or [] if entry.get("predictor", {}).get("name") == name), None)


class StandardCanaryStrategy(RolloutStrategy):
    """``spec.canary[]`` entries of one Standard-mode InferenceService."""

    name = "standard-canary"
    creation_mode = STANDARD

    def _entry(self, candidate: dict, model_name: str, percent: int) -> dict:
        """Return the ``spec.canary`` entry that serves ``candidate`` of ``model_name`` at ``percent``."""
        # The 0.20 CRD requires the container name on a canary's model; KServe names the model container so anyway.
        model = {"name": "kserve-container", **self.predictor_model(candidate, model_name)}
        return {"predictor": {"name": predictor_name_for(candidate["version"]), "model": model}, "trafficPercent": percent}

    def _canary_at(self, candidate: dict, percent: int) -> Wanted:
        """Return the readiness of the candidate's canary at ``percent``: its status there, its Service naming its version."""
        entry_name = predictor_name_for(candidate["version"])
        return Wanted(lambda isvc: canary_problem(isvc, entry_name, percent),
                      lambda isvc: {self.endpoints(isvc, has_candidate=True).candidate: candidate["version"]})

    def _without_canary(self, kept: dict) -> Wanted:
        """Return the readiness of a spec without canary: its status cleared, stable's Service and the main URL naming ``kept``."""
        def serves(isvc: dict) -> dict[str | None, str]:
            endpoints = self.endpoints(isvc, has_candidate=False)
            return {endpoints.stable: kept["version"], endpoints.main: kept["version"]}

        return Wanted(no_canary_problem, serves)

    def deploy_candidate(self, main: dict, candidate: dict, timeout_s: float) -> bool:
        """Add the canary at 0 %; return False when the API server pruned ``spec.canary`` (its CRD predates 0.20)."""
        name = main["metadata"]["name"]
        entry_name = predictor_name_for(candidate["version"])
        if entry_name == main["spec"]["predictor"].get("name"):
            raise ServingError(f"{name}: the stable predictor is already named {entry_name!r}; a canary needs a different name")
        written = self.api.change(name, lambda current: {"metadata": {"annotations": self.candidate_annotations(candidate)},
                                                          "spec": {"canary": [self._entry(candidate, name, 0)]}}, name)
        if canary_entry(written or {}, entry_name) is None:
            return False
        self.api.wait_ready(name, timeout_s, self._canary_at(candidate, 0))
        return True

    def set_traffic(self, main: dict, candidate: dict, percent: int, timeout_s: float) -> None:
        """Patch the canary entry's trafficPercent and wait for canaryStatuses to report it."""
        name = main["metadata"]["name"]
        self.api.change(name, lambda current: {"spec": {"canary": [self._entry(candidate, name, percent)]}}, name)
        self.api.wait_ready(name, timeout_s, self._canary_at(candidate, percent))

    def candidate_percent(self, main: dict) -> int:
        """Return the candidate entry's trafficPercent."""
        entries = main.get("spec", {}).get("canary") or []
        return int(entries[0].get("trafficPercent", 0)) if entries else 0

    def promote(self, main: dict, candidate: dict, timeout_s: float) -> None:
        """Rename the stable predictor to the canary's with its model, and remove the entry, in one patch."""
        name = main["metadata"]["name"]
        patch = self.serving_patch(candidate, name, self.finished_annotations(candidate))
        patch["spec"]["predictor"]["name"] = predictor_name_for(candidate["version"])
        patch["spec"]["canary"] = None
        self.api.change(name, lambda current: patch, name)
        self.api.wait_ready(name, timeout_s, self._without_canary(candidate))

    def rollback(self, main: dict, stable: dict, timeout_s: float) -> None:
        """Remove the canary entry; stable never stopped serving."""
        name = main["metadata"]["name"]
        self.api.change(name, lambda current: {"metadata": {"annotations": self.finished_annotations(stable)}, "spec": {"canary": None}}, name)
        self.api.wait_ready(name, timeout_s, self._without_canary(stable))

    def endpoints(self, main: dict, has_candidate: bool) -> Endpoints:
        """Return the main URL and the stable and candidate predictors' own Services."""
        name = main["metadata"]["name"]
        stable_name = main["spec"]["predictor"].get("name")
        stable_service = f"{name}-{stable_name}-predictor" if stable_name else f"{name}-predictor"
        entries = main.get("spec", {}).get("canary") or []
        candidate = None
        if has_candidate and entries:
            candidate = model_url(service_url(f"{name}-{entries[0]['predictor']['name']}-predictor", self.api.namespace), name)
        return Endpoints(self.main_url(main), model_url(service_url(stable_service, self.api.namespace), name), candidate)

    def describe(self, model_name: str) -> str:
        """Return how the native canary moves traffic."""
        return ("KServe's native canary (spec.canary) sets trafficPercent at each step; on KServe 0.20.0 that sizes the canary's "
                "replicas and routes no live traffic through the model's own Service (weighted routes came after 0.20.0, kserve#5912), "
                f"so the percentages are live shares only on a KServe with them; the candidate is probed on its own Service "
                f"{model_name}-<version>-predictor")
