"""When a write to an InferenceService has taken effect: KServe reports Ready for the spec written, not the one before,
and the runtime serves the version the step asked for.

KServe's own counter cannot say so. ``status.observedGeneration`` is, up to 0.20 (kserve/kserve v0.15.0, v0.17.0,
v0.20.0 and master, pkg/apis/serving/v1beta1/inference_service_status.go; issue 6081, PR 6096 open), a copy of a
child's counter: ``PropagateRawStatus`` (Standard/RawDeployment) copies the stable predictor Deployment's,
``PropagateStatus`` (Knative) the Knative Service's. A canary step of Standard mode moves no counter, so comparing it
with the InferenceService's ``metadata.generation`` can wait for ever; and even the InferenceService's own counter
(PR 6096) is written beside a stale Ready, since ``KsvcReconciler.Reconcile`` returns the Knative Service status of
its update (the previous revision's) and a raw Deployment stays Available on its old pods. So each strategy names
the status fields that only a reconcile of the new spec writes (``Wanted.reconciled``), compared with the status
the write was made against, and the URLs whose runtime must name the version (``Wanted.serves``):

- Knative: a model change needs a ``latestCreatedRevision`` other than the one at the write, ready
  (``latestReadyRevision`` equal to it); every step needs the traffic of the latest revision at the asked percent;
- Standard mode, native canary: ``status.canaryStatuses`` and ``CanaryPredictorReady``, which
  ``reconcileCanaryDeployments`` copies from the spec it reconciles (the entry's name and trafficPercent), or their
  absence once the canary is gone;
- Standard/RawDeployment, a model change of the stable predictor: ``status.observedGeneration`` past its value at the
  write, the Deployment's counter moving when the Deployment controller observes the new pod template (and the
  InferenceService's own, with PR 6096).

The project's runtime names the version it loaded (``GET /v1/models/<name>``); the stock one names none, and then the
status fields above are all that is trusted (in RawDeployment mode KServe 0.15 and 0.20 keep Ready True while old
pods still serve during a rolling update, so there Ready says the new pods exist, not that they all serve).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from components.serving.local import http_get
from components.serving.target import ServingError

NO_VERSION = ""  # what served_version returns for a runtime that answers without naming its version (stock KServe)


def served_version(status: int, body: bytes) -> str | None:
    """Return the version a V1 metadata answer (``GET /v1/models/<name>``) names, NO_VERSION if it names none, None if it failed."""
    if status != 200:
        return None
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    if not isinstance(answer, dict):
        return None
    return str(answer["version"]) if answer.get("version") else NO_VERSION


def condition_true(isvc: dict, kind: str) -> bool:
    """Return whether the InferenceService reports condition ``kind`` as True."""
    return any(c.get("type") == kind and c.get("status") == "True" for c in isvc.get("status", {}).get("conditions", []))


def conditions_text(isvc: dict) -> str:
    """Return the InferenceService's conditions as 'Type=Status (Reason: message)' for an error message."""
    conditions = isvc.get("status", {}).get("conditions", [])
    if not conditions:
        return "no conditions reported yet"
    return "; ".join(
        f"{c.get('type')}={c.get('status')}" + (f" ({c.get('reason', '')}: {c.get('message', '')})" if c.get("status") != "True" else "")
        for c in conditions
    )


def model_changed(before: dict | None, after: dict | None) -> bool:
    """Return whether a write changed the stable predictor's model (storageUri, environment or name): KServe must roll it."""
    def served(isvc: dict | None) -> tuple:
        predictor = (isvc or {}).get("spec", {}).get("predictor", {})
        model = predictor.get("model", {})
        return model.get("storageUri"), json.dumps(model.get("env"), sort_keys=True), predictor.get("name")

    return before is not None and served(before) != served(after)


def predictor_status(isvc: dict | None) -> dict:
    """Return ``status.components.predictor`` (empty when not reported)."""
    return ((isvc or {}).get("status", {}).get("components") or {}).get("predictor") or {}


def latest_revision_percent(isvc: dict) -> int | None:
    """Return the traffic share Knative reports for the latest revision, or None before it reports one."""
    latest = [entry for entry in predictor_status(isvc).get("traffic", []) if entry.get("latestRevision") or entry.get("tag") == "latest"]
    return latest[0].get("percent", 0) if latest else None


def revision_problem(isvc: dict, before: dict | None, percent: int, new_revision: bool) -> str:
    """Return "" when Knative reports the latest revision ready with ``percent`` of traffic and, with ``new_revision``,
    that revision was created after the write (``before`` is the object as written against); else what it shows instead."""
    component = predictor_status(isvc)
    created, ready = component.get("latestCreatedRevision", ""), component.get("latestReadyRevision", "")
    if not created or ready != created:
        return f"the latest revision {created or '(none yet)'} is not ready (latest ready: {ready or 'none'})"
    if new_revision and created == predictor_status(before).get("latestCreatedRevision"):
        return f"no revision of the new spec yet: the latest, {created}, is the one from before the write"
    share = latest_revision_percent(isvc)
    if share != percent:
        return f"the latest revision {created} has {share if share is not None else 'no'} % of the traffic, not {percent} %"
    return ""


def canary_problem(isvc: dict, name: str, percent: int) -> str:
    """Return "" when ``status.canaryStatuses`` reports canary ``name`` ready at ``percent`` and CanaryPredictorReady is True."""
    found = next((status for status in isvc.get("status", {}).get("canaryStatuses") or [] if status.get("name") == name), None)
    if not found:
        return f"status.canaryStatuses has no canary {name} yet"
    if found.get("trafficPercent", 0) != percent:
        return f"status.canaryStatuses reports canary {name} at {found.get('trafficPercent', 0)} %, not {percent} %"
    if not found.get("ready") or not condition_true(isvc, "CanaryPredictorReady"):
        return f"canary {name} is not ready (CanaryPredictorReady not True)"
    return ""


def no_canary_problem(isvc: dict) -> str:
    """Return "" once KServe reconciled a spec without canaries (it clears canaryStatuses and CanaryPredictorReady)."""
    status = isvc.get("status", {})
    left = [entry.get("name") for entry in status.get("canaryStatuses") or []]
    if left or any(c.get("type") == "CanaryPredictorReady" for c in status.get("conditions", [])):
        return f"status still reports the canary {', '.join(left) or '(CanaryPredictorReady)'}: the spec without it is not reconciled yet"
    return ""


def counter_problem(isvc: dict, before: dict | None, after: dict | None) -> str:
    """Return "" unless the write changed the stable predictor's model and ``status.observedGeneration`` has not moved past
    its value at the write (the predictor Deployment's counter up to KServe 0.20, the InferenceService's with PR 6096)."""
    if not model_changed(before, after):
        return ""
    then = (before or {}).get("status", {}).get("observedGeneration") or 0
    now = isvc.get("status", {}).get("observedGeneration") or 0
    if now <= then:
        return f"status.observedGeneration is still {now}, as at the write: KServe has not reported the predictor rolling the new model yet"
    return ""


@dataclass(frozen=True)
class Wanted:
    """What a step asked KServe for: the status fields that show the spec written is the one reconciled
    (``reconciled`` returns "" or what is missing) and each URL's version (``serves`` maps URL to version)."""

    reconciled: Callable[[dict], str] = lambda isvc: ""
    serves: Callable[[dict], dict[str | None, str]] = lambda isvc: {}


def version_problem(url: str | None, version: str) -> tuple[str, bool]:
    """Return (what ``url`` serves instead of ``version``, or "", and whether it named a version at all)."""
    if not url:
        return f"no URL reaches {version} yet", False
    answer = served_version(*http_get(url, timeout=5.0))
    if answer is None:
        return f"GET {url} did not answer 200", False
    if answer == NO_VERSION:
        return "", False
    return ("" if answer == version else f"GET {url} names {answer}, not {version}"), True


def readiness_problem(isvc: dict | None, wanted: Wanted, status_tracks_spec: bool) -> tuple[str, list[str]]:
    """Return (why ``isvc`` is not yet what ``wanted`` asks, or "", the URLs whose runtime named no version).

    With ``status_tracks_spec`` (a status computed for the object's current content, as the gitops target's wave gate
    gives, whose observedGeneration is the object's own): Ready at the current generation is the whole answer.
    """
    if isvc is None:
        return "it does not exist", []
    if not condition_true(isvc, "Ready"):
        return "not Ready", []
    if status_tracks_spec:
        current = isvc.get("status", {}).get("observedGeneration", 0) >= isvc["metadata"].get("generation", 1)
        return ("" if current else "its generation is not observed yet"), []
    missing = wanted.reconciled(isvc)
    if missing:
        return missing, []
    try:
        serves = wanted.serves(isvc)
    except ServingError as error:
        return str(error), []
    unnamed = []
    for url, version in serves.items():
        problem, named = version_problem(url, version)
        if problem:
            return problem, []
        if not named:
            unnamed.append(url)
    return "", unnamed
