"""knative: KServe's Serverless (Knative) canary. The candidate is a new revision at ``canaryTrafficPercent: 0``,
reached by its ``latest-`` tag URL; traffic moves with ``canaryTrafficPercent``; promotion removes it; rollback
sets 0, restores the stable ``storageUri`` at 0 % and removes the percentage once that revision is ready, so that the
spec matches what serves.

A step is done when ``status.components.predictor`` shows it (``readiness.revision_problem``: a model change's new
revision ready, the latest revision's traffic at the step's percent) and the URL that reaches the version names it."""

from __future__ import annotations

from components.serving.kserve.readiness import Wanted, model_changed, revision_problem
from components.serving.kserve.strategy import RolloutStrategy
from components.serving.target import Endpoints, model_url


class KnativeStrategy(RolloutStrategy):
    """Traffic split by Knative revisions of one InferenceService."""

    name = "knative"
    creation_mode = "Serverless"  # the name every KServe release accepts; 0.20 reports it as Knative

    def _wait(self, name: str, timeout_s: float, written: tuple[dict | None, dict | None], percent: int, version: str, role: str) -> None:
        """Wait until the latest revision (a new one if the write changed the model) is ready at ``percent`` and the
        ``role`` URL ("candidate" or "main") names ``version``."""
        before, after = written
        new_revision = model_changed(before, after)

        def serves(isvc: dict) -> dict[str | None, str]:
            endpoints = self.endpoints(isvc, has_candidate=role == "candidate")
            return {endpoints.candidate if role == "candidate" else endpoints.main: version}

        self.api.wait_ready(name, timeout_s, Wanted(lambda isvc: revision_problem(isvc, before, percent, new_revision), serves))

    def deploy_candidate(self, main: dict, candidate: dict, timeout_s: float) -> bool:
        """Point the predictor at the candidate with canaryTrafficPercent 0 and wait for the new revision."""
        name = main["metadata"]["name"]
        written = self.api.write(name, lambda current: self.serving_patch(candidate, name, self.candidate_annotations(candidate), canary=0), name)
        self._wait(name, timeout_s, written, 0, candidate["version"], "candidate")
        return True

    def set_traffic(self, main: dict, candidate: dict, percent: int, timeout_s: float) -> None:
        """Set canaryTrafficPercent and wait until the latest revision's traffic shows it."""
        name = main["metadata"]["name"]
        written = self.api.write(name, lambda current: {"spec": {"predictor": {"canaryTrafficPercent": percent}}}, name)
        self._wait(name, timeout_s, written, percent, candidate["version"], "candidate")

    def candidate_percent(self, main: dict) -> int:
        """Return canaryTrafficPercent."""
        return int(main["spec"]["predictor"].get("canaryTrafficPercent") or 0)

    def promote(self, main: dict, candidate: dict, timeout_s: float) -> None:
        """Remove canaryTrafficPercent so the latest revision takes all traffic."""
        name = main["metadata"]["name"]
        written = self.api.write(name, lambda current: self.serving_patch(candidate, name, self.finished_annotations(candidate), canary=None), name)
        self._wait(name, timeout_s, written, 100, candidate["version"], "main")

    def rollback(self, main: dict, stable: dict, timeout_s: float) -> None:
        """Pin traffic to the last revision rolled out at 100 % first, restore its storageUri at 0 % until that new revision is
        ready, then give it all traffic.

        Without canaryTrafficPercent KServe routes 100 % to Knative's latest *ready* revision, which until the restored one is
        ready is the rejected candidate's, so the percentage goes only once the restored revision serves.
        """
        name = main["metadata"]["name"]
        self.api.change(name, lambda current: {"spec": {"predictor": {"canaryTrafficPercent": 0}}}, name)
        written = self.api.write(name, lambda current: self.serving_patch(stable, name, self.finished_annotations(stable), canary=0), name)
        self._wait(name, timeout_s, written, 0, stable["version"], "candidate")
        written = self.api.write(name, lambda current: {"spec": {"predictor": {"canaryTrafficPercent": None}}}, name)
        self._wait(name, timeout_s, written, 100, stable["version"], "main")

    def endpoints(self, main: dict, has_candidate: bool) -> Endpoints:
        """Return the main URL and the prev-/latest- tag URLs of stable and candidate."""
        name = main["metadata"]["name"]
        main_base = self.base_url(main, name)
        tags = {entry.get("tag"): entry.get("url") for entry in main.get("status", {}).get("components", {}).get("predictor", {}).get("traffic", [])}
        stable_base = tags.get("prev") if has_candidate and tags.get("prev") else main_base
        candidate_base = tags.get("latest") if has_candidate else None
        return Endpoints(model_url(main_base, name), model_url(stable_base, name), model_url(candidate_base, name) if candidate_base else None)

    def describe(self, model_name: str) -> str:
        """Return how Knative moves traffic."""
        return "Knative shifts each percentage step with canaryTrafficPercent; the candidate is probed on its latest- tag URL"
