"""candidate-isvc: RawDeployment on KServe < 0.20, where ``canaryTrafficPercent`` is silently ignored. The candidate
is its own InferenceService ``<name>-candidate``, analysed on its own URL; promotion patches the main
``storageUri``; both outcomes delete the candidate. A write is done when the InferenceService's URL names the version
and, if the write changed its model, ``status.observedGeneration`` moved past its value at the write
(``readiness.counter_problem``)."""

from __future__ import annotations

from components.serving.kserve.api import backend_annotations
from components.serving.kserve.readiness import Wanted, counter_problem
from components.serving.kserve.strategy import RolloutStrategy
from components.serving.target import Endpoints, model_url


def candidate_name(model_name: str) -> str:
    """Return the name of the candidate's own InferenceService."""
    return f"{model_name}-candidate"


class CandidateIsvcStrategy(RolloutStrategy):
    """A second InferenceService per candidate; no live traffic is split."""

    name = "candidate-isvc"
    creation_mode = "RawDeployment"

    def _wait(self, name: str, model_name: str, timeout_s: float, written: tuple[dict | None, dict | None], version: str) -> None:
        """Wait until ``name`` reports the written model rolled and its URL names ``version``."""
        before, after = written
        self.api.wait_ready(name, timeout_s, Wanted(lambda isvc: counter_problem(isvc, before, after),
                                                    lambda isvc: {model_url(self.base_url(isvc, name), model_name): version}))

    def deploy_candidate(self, main: dict, candidate: dict, timeout_s: float) -> bool:
        """Record the candidate on the main InferenceService first (so a failure is always cleaned up), then create it."""
        model_name = main["metadata"]["name"]
        name = candidate_name(model_name)
        self.api.wait_gone_if_deleting(name, timeout_s)  # a finalizer (the model registry's) can keep the last one's deletion pending
        self.api.change(model_name, lambda current: {"metadata": {"annotations": self.candidate_annotations(candidate)}}, model_name)
        written = self.api.write(name, lambda current: self.manifest(name, model_name, candidate, self.creation_mode) if current is None
                                 else self.serving_patch(candidate, model_name, backend_annotations("stable", candidate)), model_name)
        self._wait(name, model_name, timeout_s, written, candidate["version"])
        return True

    def set_traffic(self, main: dict, candidate: dict, percent: int, timeout_s: float) -> None:
        """Nothing to split: the candidate is analysed on its own URL at every step."""

    def candidate_percent(self, main: dict) -> int:
        """Return 0: live traffic never reaches the candidate."""
        return 0

    def promote(self, main: dict, candidate: dict, timeout_s: float) -> None:
        """Patch the main storageUri to the candidate's, wait, then delete the candidate."""
        model_name = main["metadata"]["name"]
        written = self.api.write(model_name, lambda current: self.serving_patch(candidate, model_name, self.finished_annotations(candidate)), model_name)
        self._wait(model_name, model_name, timeout_s, written, candidate["version"])
        self.api.delete(candidate_name(model_name), model_name)

    def rollback(self, main: dict, stable: dict, timeout_s: float) -> None:
        """Delete the candidate and make the main spec match what serves."""
        model_name = main["metadata"]["name"]
        self.api.delete(candidate_name(model_name), model_name)
        written = self.api.write(model_name, lambda current: self.serving_patch(stable, model_name, self.finished_annotations(stable)), model_name)
        self._wait(model_name, model_name, timeout_s, written, stable["version"])

    def endpoints(self, main: dict, has_candidate: bool) -> Endpoints:
        """Return the main URL (also stable's) and the candidate InferenceService's URL."""
        model_name = main["metadata"]["name"]
        main_url = model_url(self.base_url(main, model_name), model_name)
        candidate = self.api.get(candidate_name(model_name)) if has_candidate else None
        candidate_url = model_url(self.base_url(candidate, candidate_name(model_name)), model_name) if candidate else None
        return Endpoints(main_url, main_url, candidate_url)

    def describe(self, model_name: str) -> str:
        """Return how the candidate is analysed without a traffic split."""
        return (f"no live traffic is split: {candidate_name(model_name)} is its own InferenceService, analysed on its own URL at "
                "every step, and promotion patches the main storageUri")
