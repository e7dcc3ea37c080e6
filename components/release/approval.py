"""The approval gate: with ``approval=before-promote`` the canary holds below 100 % until a person decides.

A decision is kept where the serving target keeps its state, always naming the version it is about, so that an
approval of v3 never promotes v4:

- local: ``<serving home>/<model>.approval.json`` beside the model's serving state;
- kserve: annotations on the model's main InferenceService (``model-pipelines.io/approval-version``, ``/approval``,
  ``/approval-by``, ``/approval-at``), merge-patched with its resourceVersion, only on an InferenceService this project
  owns (its ``app.kubernetes.io/managed-by`` and ``model-pipelines.io/model`` labels);
- gitops: ``approvals/<model>.yaml`` under the fleet path, committed and pushed like every other write there (trailers
  Model, Version, Step: approval, Approval, Approved-By); no Application syncs it, so a decision changes nothing a
  cluster renders and a rollback's revert of the model's commits never undoes it.

Each is an ``ApprovalSource``. With a Model Registry configured, decisions are the version's custom property ``approved``
(true or false, set in the OpenShift AI dashboard or by the same verbs) and the target's source only records which version a
hold awaits (``RegistryApprovalSource``). ``approval_source`` is the one place that picks the source. ``hold_for_approval`` is the hold
itself, which the canary runs at its last step below 100 %.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

from components.files import exclusive_lock, write_json_atomically
from components.serving.target import ServingError

if TYPE_CHECKING:
    from components.registry.client import RegistryClient
    from components.release.rollout import AnalysisRow, CanaryResult, CanarySpec
    from components.serving.gitops.repo import GitopsRepo
    from components.serving.kserve.api import InferenceServiceApi
    from components.serving.target import ServingTarget

NONE, BEFORE_PROMOTE = "none", "before-promote"
APPROVAL_MODES = (NONE, BEFORE_PROMOTE)
AWAITING, APPROVED, REJECTED = "awaiting", "approved", "rejected"
EXPIRED = "expired"  # a hold that ended without a decision (its timeout, or analyses failing while it held): no verb decides it now
MAX_TIMEOUT_H = 72.0  # the canary-promote task's deadline (pipelines/retrain.py TIMEOUTS_S) leaves room for this much holding


class ApprovalError(ValueError):
    """An approval that cannot be recorded: no such candidate, not the version held, a decision already made."""


class ApprovalUnavailable(ServingError):
    """The place decisions are kept cannot be read or written now (the registry is down): a hold keeps holding, a verb fails."""


@dataclass(frozen=True)
class Approval:
    """A decision about one version: approved or rejected, by whom, when."""

    version: str
    approved: bool
    by: str
    at: str = ""


@dataclass(frozen=True)
class ApprovalSettings:
    """The gate's knobs: ``mode`` none or before-promote, how long to hold (hours), how often to look for a decision (seconds)."""

    mode: str = NONE
    timeout_h: float = 24.0
    poll_s: float = 30.0

    @property
    def enabled(self) -> bool:
        """Return whether the canary holds for a decision before promotion."""
        return self.mode == BEFORE_PROMOTE


class ApprovalSource(Protocol):
    """Where decisions about a model's versions are requested, read and written."""

    where: str  # one phrase naming the place, for logs and messages

    def request(self, model_name: str, version: str) -> None:
        """Mark ``version`` as awaiting a decision (a hold began), forgetting any earlier decision about the model."""

    def awaiting(self, model_name: str) -> str | None:
        """Return the version a hold awaits a decision for, or None."""

    def decision(self, model_name: str, version: str) -> Approval | None:
        """Return the decision recorded for exactly ``version``, or None (none yet, or one about another version)."""

    def record(self, model_name: str, version: str, approved: bool, by: str) -> None:
        """Record that ``by`` approved (or rejected) ``version``."""

    def end(self, model_name: str, version: str) -> None:
        """Mark the hold of ``version`` ended without a decision, unless it no longer awaits one (a decision came first)."""


@dataclass(frozen=True)
class ApprovalGate:
    """The gate a canary holds at: where decisions are read, and its settings."""

    source: ApprovalSource
    settings: ApprovalSettings


def _now() -> str:
    """Return the current UTC time as ISO-8601."""
    from components.store.filesystem import utc_now

    return utc_now()


def shown_text(value: object, fallback: str, limit: int = 100) -> str:
    """Return ``value`` as one printable line of at most ``limit`` characters for logs and the index (a decision's who and when
    come from annotations, files or the registry, which anyone with access may write), or ``fallback`` when it is empty."""
    text = " ".join(str(value or "").split())
    text = "".join(character for character in text if character.isprintable())[:limit]
    return text or fallback


def _decision_of(state: str | None, version: str | None, by: str | None, at: str | None, wanted: str) -> Approval | None:
    """Return the decision a stored (state, version, by, at) records about ``wanted``, or None."""
    if version != wanted or state not in (APPROVED, REJECTED):
        return None
    return Approval(version, state == APPROVED, shown_text(by, "unknown"), shown_text(at, "", 40))


def _awaiting_record(model_name: str, version: str) -> dict:
    """Return the record of a hold awaiting a decision about ``version``."""
    return {"model": model_name, "version": version, "approval": AWAITING, "since": _now()}


def _expired_record(model_name: str, version: str) -> dict:
    """Return the record of a hold of ``version`` that ended without a decision."""
    return {"model": model_name, "version": version, "approval": EXPIRED, "at": _now()}


def _no_longer_awaiting(model_name: str, version: str) -> str:
    """Return why a decision about ``version`` was not recorded: it no longer awaited one when it was written."""
    return (f"{model_name} {version} no longer awaits a decision: another decision, or the end of its hold, was recorded first; "
            "nothing was changed (`model-pipelines serve status` shows what serves)")


def _decision_record(model_name: str, version: str, approved: bool, by: str) -> dict:
    """Return the record of ``by``'s decision about ``version``."""
    return {"model": model_name, "version": version, "approval": APPROVED if approved else REJECTED, "by": by, "at": _now()}


def _parsed_record(load: Callable[[], object], where: str, failures: tuple[type[Exception], ...]) -> dict:
    """Return the stored approval record ``load`` parses, which anyone with access may write, if it is a mapping; raise
    ApprovalUnavailable naming ``where`` when it is not, or when ``load`` raises one of ``failures`` (a file half-written)."""
    try:
        record = load()
    except failures as error:
        raise ApprovalUnavailable(f"cannot read {where}: {error}; write it whole (as `model-pipelines approve|reject` does)") from None
    if not isinstance(record, dict):
        raise ApprovalUnavailable(f"{where} holds {type(record).__name__}, not an approval record; write it with `model-pipelines approve|reject`")
    return record


class RecordApprovalSource:
    """A source keeping one record per model (version, approval, by, at, as ``_awaiting_record`` and ``_decision_record`` write it),
    read with the subclass's ``_read``."""

    def _read(self, model_name: str) -> dict:
        """Return the model's record ({} when there is none)."""
        raise NotImplementedError

    def awaiting(self, model_name: str) -> str | None:
        """Return the version the record says awaits a decision, or None."""
        record = self._read(model_name)
        return record.get("version") if record.get("approval") == AWAITING else None

    def decision(self, model_name: str, version: str) -> Approval | None:
        """Return the decision the record holds about ``version``, or None."""
        record = self._read(model_name)
        return _decision_of(record.get("approval"), record.get("version"), record.get("by"), record.get("at"), version)


class LocalApprovalSource(RecordApprovalSource):
    """Decisions for the local target, in ``<serving home>/<model>.approval.json``."""

    def __init__(self, home: str | Path) -> None:
        """Keep decisions in the local serving home ``home``."""
        self.home = Path(home)
        self.where = f"{self.home}/<model>.approval.json"

    def _path(self, model_name: str) -> Path:
        return self.home / f"{model_name}.approval.json"

    def _read(self, model_name: str) -> dict:
        """Return the model's record ({} when there is none); ApprovalUnavailable when the file is not a JSON object (a hand edit
        half-written, say): a hold keeps holding, a verb fails."""
        path = self._path(model_name)
        if not path.is_file():
            return {}
        return _parsed_record(lambda: json.loads(path.read_text()), str(path), (OSError, ValueError))

    def _write(self, record: dict, while_awaiting: str | None = None) -> bool:
        """Write the model's record under its approval lock; with ``while_awaiting`` (a version), only while that version awaits a
        decision. Return whether it was written."""
        with exclusive_lock(self.home / f".{record['model']}.approval.lock"):
            if while_awaiting is not None and self.awaiting(record["model"]) != while_awaiting:
                return False
            write_json_atomically(self._path(record["model"]), record)
            return True

    def request(self, model_name: str, version: str) -> None:
        """Write ``version`` as awaiting a decision."""
        self._write(_awaiting_record(model_name, version))

    def record(self, model_name: str, version: str, approved: bool, by: str) -> None:
        """Write the decision about ``version`` while it awaits one (ApprovalError when another decision or the hold's end came first)."""
        if not self._write(_decision_record(model_name, version, approved, by), while_awaiting=version):
            raise ApprovalError(_no_longer_awaiting(model_name, version))

    def end(self, model_name: str, version: str) -> None:
        """Write the hold of ``version`` as expired, if it still awaits a decision."""
        self._write(_expired_record(model_name, version), while_awaiting=version)


APPROVAL_ANNOTATIONS = {key: f"model-pipelines.io/{key}" for key in ("approval-version", "approval", "approval-by", "approval-at")}


class KServeApprovalSource:
    """Decisions for the kserve target, as annotations on the model's main InferenceService (only one this project owns)."""

    def __init__(self, api: InferenceServiceApi) -> None:
        """Read and merge-patch InferenceServices through ``api`` (the kserve target's)."""
        self.api = api
        self.where = f"annotations {APPROVAL_ANNOTATIONS['approval']}* of InferenceService {api.namespace}/<model>"

    def _annotations(self, model_name: str) -> dict:
        isvc = self.api.get(model_name)
        return (isvc or {}).get("metadata", {}).get("annotations") or {}

    def _write(self, model_name: str, values: dict[str, str | None], while_awaiting: str | None = None) -> bool:
        """Merge-patch the approval annotations of ``model_name``'s InferenceService, which must exist and be this project's; with
        ``while_awaiting`` (a version), only while that version awaits a decision (checked on the object patched, with its
        resourceVersion). Return whether it was written."""
        written = False

        def build(current: dict | None) -> dict | None:
            nonlocal written
            if current is None:
                raise ServingError(f"InferenceService {self.api.namespace}/{model_name} does not exist: no rollout of {model_name} to decide on")
            annotations = current.get("metadata", {}).get("annotations") or {}
            written = while_awaiting is None or (annotations.get(APPROVAL_ANNOTATIONS["approval"]) == AWAITING and
                                                 annotations.get(APPROVAL_ANNOTATIONS["approval-version"]) == while_awaiting)
            return {"metadata": {"annotations": {APPROVAL_ANNOTATIONS[key]: value for key, value in values.items()}}} if written else None

        self.api.change(model_name, build, model_name)
        return written

    def request(self, model_name: str, version: str) -> None:
        """Annotate ``version`` as awaiting a decision (removing who decided before)."""
        self._write(model_name, {"approval-version": version, "approval": AWAITING, "approval-by": None, "approval-at": _now()})

    def awaiting(self, model_name: str) -> str | None:
        """Return the version the annotations say awaits a decision, or None."""
        annotations = self._annotations(model_name)
        return annotations.get(APPROVAL_ANNOTATIONS["approval-version"]) if annotations.get(APPROVAL_ANNOTATIONS["approval"]) == AWAITING else None

    def decision(self, model_name: str, version: str) -> Approval | None:
        """Return the decision the annotations record about ``version``, or None."""
        annotations = self._annotations(model_name)
        return _decision_of(*(annotations.get(APPROVAL_ANNOTATIONS[key]) for key in ("approval", "approval-version", "approval-by", "approval-at")),
                            version)

    def record(self, model_name: str, version: str, approved: bool, by: str) -> None:
        """Annotate the decision about ``version`` while it awaits one (ApprovalError when another decision or the hold's end came first)."""
        decision = {"approval-version": version, "approval": APPROVED if approved else REJECTED, "approval-by": by, "approval-at": _now()}
        if not self._write(model_name, decision, while_awaiting=version):
            raise ApprovalError(_no_longer_awaiting(model_name, version))

    def end(self, model_name: str, version: str) -> None:
        """Annotate the hold of ``version`` as expired, if the annotations still say it awaits a decision."""
        self._write(model_name, {"approval-version": version, "approval": EXPIRED, "approval-by": None, "approval-at": _now()},
                    while_awaiting=version)


def approval_file(model_name: str) -> str:
    """Return the model's approval record in the fleet repository, relative to gitops_path (no Application syncs approvals/)."""
    return f"approvals/{model_name}.yaml"


class GitopsApprovalSource(RecordApprovalSource):
    """Decisions for the gitops target, as ``approvals/<model>.yaml`` in the fleet repository, each a pushed commit."""

    def __init__(self, repo: GitopsRepo, run_name: str = "") -> None:
        """Read and commit through the clone ``repo``; ``run_name`` goes into the Pipeline-Run trailer ("local" when empty)."""
        self.repo, self.run_name = repo, run_name or "local"
        self.where = f"{repo.path}/{approval_file('<model>')} in {repo.url}"

    def _read(self, model_name: str) -> dict:
        """Return the model's record in the fleet repository ({} when there is none); ApprovalUnavailable when it is not a YAML mapping."""
        import yaml

        self._sync()
        return _parsed_record(lambda: yaml.safe_load(self.repo.read(approval_file(model_name)) or "{}") or {},
                              f"{self.repo.path}/{approval_file(model_name)} in {self.repo.url}", (yaml.YAMLError,))

    def _sync(self) -> None:
        from components.serving.gitops.repo import GitopsError

        try:
            self.repo.sync()
        except GitopsError as error:
            raise ServingError(str(error)) from error

    def _commit(self, model_name: str, record: dict, subject: str, trailers: list[tuple[str, str]]) -> None:
        import yaml

        from components.serving.gitops.repo import GitopsError, commit_message

        self._sync()
        try:
            self.repo.write({approval_file(model_name): yaml.safe_dump(record, sort_keys=False)})
            self.repo.commit_and_push(commit_message(model_name, record["version"], subject, self.run_name, trailers=[("Step", "approval"), *trailers]))
        except GitopsError as error:
            raise ServingError(str(error)) from error

    def request(self, model_name: str, version: str) -> None:
        """Commit ``version`` as awaiting a decision."""
        self._commit(model_name, _awaiting_record(model_name, version), "awaiting approval", [("Approval", AWAITING)])

    def record(self, model_name: str, version: str, approved: bool, by: str) -> None:
        """Commit the decision about ``version`` while the fleet repository's record says it awaits one (ApprovalError otherwise)."""
        if self.awaiting(model_name) != version:
            raise ApprovalError(_no_longer_awaiting(model_name, version))
        record = _decision_record(model_name, version, approved, by)
        self._commit(model_name, record, record["approval"], [("Approval", record["approval"]), ("Approved-By", by)])

    def end(self, model_name: str, version: str) -> None:
        """Commit the hold of ``version`` as expired, if the fleet repository's record still says it awaits a decision."""
        if self.awaiting(model_name) == version:
            self._commit(model_name, _expired_record(model_name, version), "approval expired", [("Approval", EXPIRED)])


APPROVED_PROPERTY, APPROVED_BY_PROPERTY, APPROVED_AT_PROPERTY = "approved", "approved_by", "approved_at"
REGISTRY_USER = "a model registry user"  # who decided, when the registry says approved without approved_by (the dashboard)


def registry_verdict(value: object) -> bool | None:
    """Return what a registry property ``approved`` says: True for true, False for false (a boolean, or text in any case as the
    dashboard stores what a user types), None for anything else (absent, ``awaiting``, a typo)."""
    if isinstance(value, bool):
        return value
    return {"true": True, "false": False}.get(value.strip().lower()) if isinstance(value, str) else None


def _unmarked_text(model_name: str, version: str) -> str:
    """Return the start of the message of a hold whose version the registry has not marked awaiting."""
    return f"cannot mark {model_name} {version} awaiting approval in the registry, so no decision is read there yet: "


class RegistryApprovalSource:
    """Decisions in the Model Registry: the held version's custom property ``approved`` (true or false), set in the OpenShift AI
    dashboard or by ``model-pipelines approve|reject`` (with ``approved_by`` and ``approved_at``). Which version a hold awaits stays
    with the serving target's source ``held``.

    A hold marks the version ``approved=awaiting``, so that a decision left from an earlier hold never counts. When the registry is
    down as the hold begins, the mark is written once it answers, unless a verb recorded a decision after the hold began
    (its ``approved_at``), which then counts. A registry that cannot be
    read is ApprovalUnavailable: the hold goes on and looks again, the verbs fail.
    """

    def __init__(self, client: RegistryClient, held: ApprovalSource) -> None:
        """Read and write decisions through ``client``; record holds with ``held``."""
        self.client, self.held = client, held
        self.where = f"custom property {APPROVED_PROPERTY!r} of the <model> version in the model registry at {client.url}"
        self._unmarked: dict[tuple[str, str], str] = {}  # holds whose version the registry has not marked awaiting yet: when they began

    def _mark_awaiting(self, model_name: str, version: str) -> None:
        """Mark ``version`` awaiting in the registry, dropping an earlier decision (ApprovalUnavailable when the registry cannot)."""
        from components.registry.client import REGISTRY_FAILURES
        from components.registry.sync import update_registered_properties

        try:
            update_registered_properties(self.client, model_name, version, {APPROVED_PROPERTY: AWAITING},
                                         removed=(APPROVED_BY_PROPERTY, APPROVED_AT_PROPERTY))
        except REGISTRY_FAILURES as error:
            self._unmarked.setdefault((model_name, version), _now())
            raise ApprovalUnavailable(f"{_unmarked_text(model_name, version)}{error}") from None
        self._unmarked.pop((model_name, version), None)

    def request(self, model_name: str, version: str) -> None:
        """Record the hold with the target's source and mark ``version`` awaiting in the registry (retried at each look if it fails)."""
        self.held.request(model_name, version)
        with contextlib.suppress(ApprovalUnavailable):
            self._mark_awaiting(model_name, version)

    def awaiting(self, model_name: str) -> str | None:
        """Return the version the target's source says a hold awaits a decision for, or None."""
        return self.held.awaiting(model_name)

    def decision(self, model_name: str, version: str) -> Approval | None:
        """Return the decision the registry's ``approved`` property holds about ``version``, or None (ApprovalUnavailable: unreadable)."""
        from components.registry.client import REGISTRY_FAILURES
        from components.registry.sync import registered_properties

        began = self._unmarked.get((model_name, version))
        try:
            properties = registered_properties(self.client, model_name, version)
        except REGISTRY_FAILURES as error:
            raise ApprovalUnavailable(f"{_unmarked_text(model_name, version) if began is not None else ''}{error}") from None
        if began is not None:
            # The registry was down when the hold began. A decision the verbs wrote since (approved_at, to the second, not before the
            # hold began) counts; anything older is left from an earlier hold and is replaced by the awaiting mark.
            if registry_verdict(properties.get(APPROVED_PROPERTY)) is not None and str(properties.get(APPROVED_AT_PROPERTY) or "") >= began:
                self._unmarked.pop((model_name, version), None)
            else:
                self._mark_awaiting(model_name, version)
                return None
        verdict = registry_verdict(properties.get(APPROVED_PROPERTY))
        if verdict is None:
            return None
        return Approval(version, verdict, shown_text(properties.get(APPROVED_BY_PROPERTY), REGISTRY_USER), shown_text(properties.get(APPROVED_AT_PROPERTY), "", 40))

    def record(self, model_name: str, version: str, approved: bool, by: str) -> None:
        """Write the decision about ``version`` into the registry (``approved`` as the text true or false, as the dashboard shows it)."""
        from components.registry.client import REGISTRY_FAILURES
        from components.registry.sync import update_registered_properties

        try:
            update_registered_properties(self.client, model_name, version, {APPROVED_PROPERTY: "true" if approved else "false",
                                                                            APPROVED_BY_PROPERTY: by, APPROVED_AT_PROPERTY: _now()})
        except REGISTRY_FAILURES as error:
            raise ApprovalUnavailable(str(error)) from None

    def end(self, model_name: str, version: str) -> None:
        """Record the hold's end with the target's source, and mark ``version`` ``approved=expired`` in the registry unless it holds a
        decision (ApprovalUnavailable when the registry cannot be read or written)."""
        from components.registry.client import REGISTRY_FAILURES
        from components.registry.sync import registered_properties, update_registered_properties

        problems = []
        try:
            self.held.end(model_name, version)
        except ServingError as error:
            problems.append(str(error))
        self._unmarked.pop((model_name, version), None)
        try:
            if registry_verdict(registered_properties(self.client, model_name, version).get(APPROVED_PROPERTY)) is None:
                update_registered_properties(self.client, model_name, version, {APPROVED_PROPERTY: EXPIRED, APPROVED_AT_PROPERTY: _now()})
        except REGISTRY_FAILURES as error:
            problems.append(f"cannot mark it approved={EXPIRED} in the registry: {error}")
        if problems:
            raise ApprovalUnavailable("; ".join(problems))


def approval_source(serving_target: str, target: ServingTarget, serving_home: str | Path = "", registry: RegistryClient | None = None) -> ApprovalSource:
    """Return where the gate reads decisions for a run on ``serving_target`` (its ``target``; the local target's state in ``serving_home``):
    the Model Registry's ``approved`` property when a ``registry`` is configured, whatever the target; else the target's own place."""
    if serving_target == "local":
        held: ApprovalSource = LocalApprovalSource(serving_home or target.home)
    elif serving_target == "kserve":
        held = KServeApprovalSource(target.api)
    elif serving_target == "gitops":
        held = GitopsApprovalSource(target.repo, target.options.run_name)
    else:
        raise ServingError(f"no approval source for serving_target {serving_target!r}")
    return RegistryApprovalSource(registry, held) if registry is not None else held


def decide(target: ServingTarget, source: ApprovalSource, model_name: str, version: str, approved: bool, by: str) -> Approval:
    """Record ``by``'s decision about ``version``, which must be the candidate a hold awaits a decision for; return it.

    Raise ApprovalError naming what is wrong (no candidate, another candidate, not held yet, already decided).
    """
    status = target.status(model_name)
    if status.candidate is None and status.stable is None:
        raise ApprovalError(f"nothing serves a model named {model_name!r} here, so nothing waits for approval: check the model's name and "
                            "the target (`model-pipelines serve status` lists the local ones; --target kserve|gitops for a cluster's)")
    if status.candidate is None:
        raise ApprovalError(f"{model_name} has no candidate (stable {status.stable}), so nothing waits for approval")
    if status.candidate != version:
        raise ApprovalError(f"{model_name} {version} is not the candidate: {status.candidate} is (at {status.candidate_percent} %)")
    earlier = source.decision(model_name, version)
    if earlier is not None:
        raise ApprovalError(f"{model_name} {version} was already {'approved' if earlier.approved else 'rejected'} by {earlier.by} at {earlier.at}")
    held = source.awaiting(model_name)
    if held != version:
        raise ApprovalError(f"{model_name} {version} is the candidate at {status.candidate_percent} %, but no rollout holds it for approval"
                            f"{f' ({held} was held)' if held else ''}: a run with canary.approval=before-promote holds it at its last step "
                            "below 100 % and logs `holding`; decide then")
    source.record(model_name, version, approved, by)
    return Approval(version, approved, by)


def hold_for_approval(
    gate: ApprovalGate, model_name: str, version: str, weight: int, analyse: Callable[[int], AnalysisRow], result: CanaryResult,
    failures: int, spec: CanarySpec, sleep: Callable[[float], None],
) -> tuple[Approval | None, int, str]:
    """Hold the candidate at ``weight`` % until ``gate``'s source has a decision about ``version`` or its timeout passes;
    return (the decision or None, the failed analyses so far, why the hold ended without approval).

    The analysis goes on while holding (every ``max(canary interval, poll interval)``), and more than ``spec.failure_limit``
    failed or inconclusive analyses end the hold at once, as at any step. Only failing analyses are added to the report's
    rows; the passing ones are counted in ``result.hold``. While the source cannot be read (ApprovalUnavailable: the registry is
    down) the hold goes on, saying so once in the log, until a decision can be read or the timeout passes.
    """
    settings, source = gate.settings, gate.source
    source.request(model_name, version)
    started = time.monotonic()
    deadline, every = started + settings.timeout_h * 3600, max(spec.interval_s, settings.poll_s)
    next_analysis, passed = started + every, 0
    print(f"canary {model_name} {version} at {weight}%: holding for approval (approve or reject with `model-pipelines approve|reject "
          f"{model_name} {version}`; at most {settings.timeout_h:g} h; decisions in {source.where})", flush=True)

    def held(text: str) -> str:
        result.hold = f"held at {weight}% for {time.monotonic() - started:.0f} s ({passed} passing analyses while holding): {text}"
        print(f"canary {model_name} {version} at {weight}%: {text}", flush=True)
        return text

    outage = ""  # why decisions cannot be read now, said once while it lasts
    while True:
        try:
            decision = source.decision(model_name, version)
        except ApprovalUnavailable as error:
            decision = None
            if str(error) != outage:
                print(f"canary {model_name} {version} at {weight}% (holding for approval): no decision readable: {error}; still holding "
                      "(an unreadable decision never promotes), looking again until the timeout", flush=True)
            outage = str(error)
        else:
            if outage:
                print(f"canary {model_name} {version} at {weight}% (holding for approval): decisions readable again", flush=True)
            outage = ""
        if decision is not None:
            return decision, failures, held(f"{'approved' if decision.approved else 'rejected'} by {decision.by}")
        now = time.monotonic()
        if now >= deadline:
            _end_hold(source, model_name, version)
            return None, failures, held(f"not approved within {settings.timeout_h:g} h")
        if now >= next_analysis:
            row = analyse(weight)
            if row.verdict == "pass":
                passed += 1
            else:
                result.rows.append(row)
                failures += 1
                print(f"canary {model_name} {version} at {weight}% (holding for approval): {row.verdict} ({row.detail})", flush=True)
                if failures > spec.failure_limit:
                    _end_hold(source, model_name, version)
                    return None, failures, held(f"{weight}% traffic while holding for approval, {row.verdict}: {row.detail}")
            next_analysis = time.monotonic() + every
        sleep(max(0.0, min(settings.poll_s, deadline - time.monotonic(), next_analysis - time.monotonic())))


def _end_hold(source: ApprovalSource, model_name: str, version: str) -> None:
    """Mark the hold of ``version`` ended without a decision, so that no verb decides it now; a place that cannot be written is
    logged, and the rollback goes on."""
    try:
        source.end(model_name, version)
    except ServingError as error:
        print(f"canary {model_name} {version}: the hold ended, but cannot mark it {EXPIRED} in {source.where}: {error}", flush=True)
