"""deploy-InferenceService, smoke-test, canary-promote and rollback: the serving half of the DAG.

Each step talks to a ``ServingTarget`` and records what it did in the store's index, after serving changed.
The canary analysis is data (``CanarySpec``) plus metric providers; a metric with no data is inconclusive,
and inconclusive never counts as a pass.
"""

from __future__ import annotations

import concurrent.futures
import html
import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol

from components.model.contract import engineer_features, is_synthetic, schema_for, served_identity
from components.model.spec import ANOMALY, CLASSIFICATION, ModelSpec, spec_for
from components.release.approval import EXPIRED, Approval, ApprovalGate, hold_for_approval
from components.runtime.answers import alert_probabilities, answers_are_labels, offline_answers, predicted_classes
from components.serving.target import ServingError, ServingTarget
from components.store.filesystem import ModelStore, StoreError, load_model, utc_now

if TYPE_CHECKING:  # numpy and requests are imported by the functions that measure: deploy and rollback steps start without them
    import numpy as np
    import pandas as pd
    import requests


@dataclass(frozen=True)
class StepOutcome:
    """What a serving step did, in one line, and whether the rollout may continue."""

    ok: bool
    message: str


def probe_sample(validation: pd.DataFrame, model_name: str, rows: int = 50) -> np.ndarray:
    """Return up to ``rows`` served instances spread over the validation data, after the spec's smoke probe (``probe_rows``)."""
    return probe_rows(engineer_features(validation, model_name).to_numpy(), model_name, rows)


def probe_rows(features: np.ndarray, model_name: str, rows: int = 50) -> np.ndarray:
    """Return the spec's smoke probe (the engine's no-data fallback, for a spec that marks it so), then up to ``rows`` of the
    served ``features`` spread evenly over them."""
    import numpy as np

    picked = features[np.unique(np.linspace(0, len(features) - 1, min(rows, len(features))).astype(int))]
    smoke = spec_for(model_name).smoke
    if smoke is not None:
        picked = np.vstack([np.array([smoke.instance]), picked])
    return picked


def _record(
    store: ModelStore, model_name: str, version: str, event: str, detail: str, change: Callable[[dict], None], report: str = ""
) -> None:
    """Apply ``change`` to the index and append a history event (with the URI of the step's report, when there is one)."""

    def apply(index: dict) -> None:
        if version not in index["versions"]:
            raise StoreError(f"{model_name} {version} is not in the store's index, and only a save creates versions; nothing recorded")
        change(index)
        index["history"].append({"at": utc_now(), "event": event, "version": version, "detail": detail, **({"report": report} if report else {})})

    store.update_index(model_name, apply)


# Statuses of versions that are stored but never deployed: smoke-test and canary-promote have nothing to do for them.
# ("duplicate": a copy of stable that saves stored before they reused the version holding the same bytes.)
NOT_DEPLOYED = ("duplicate", "held")
TRAINED_ON_SYNTHETIC_DATA = "trained on synthetic data"


def not_needed(target: ServingTarget, store: ModelStore, model_name: str, version: str) -> str | None:
    """Return why ``version`` needs no rollout (already stable, a byte-identical duplicate of stable, held back), else None."""
    entry = store.read_index(model_name)["versions"].get(version, {})
    if entry.get("status") == "duplicate":
        return f"{version} is a duplicate of stable {entry.get('duplicate_of')} (same sha256); not deployed"
    if entry.get("status") == "held":
        return f"{version} not deployed: {entry.get('held_reason')}"
    status = target.status(model_name)
    if status.stable == version and status.candidate is None:
        return f"{version} is already the stable version; nothing to deploy"
    return None


# What a run's deploy step made of a version, recorded in the index as ``versions.<v>.deployment = {run, role}``.
# Rollback and the exit handler undo only the roles below, and only for the run that recorded them.
ATTEMPTED, FIRST_DEPLOYMENT, CANDIDATE = "attempted", "first deployment", "candidate"
UNDOABLE_ROLES = (ATTEMPTED, FIRST_DEPLOYMENT, CANDIDATE)
KEPT_SERVING = "kept serving"


def _record_deployment(store: ModelStore, model_name: str, version: str, run_name: str, role: str, change: Callable[[dict], None] | None = None,
                       event: str = "", detail: str = "") -> None:
    """Record that ``run_name`` gave ``version`` this ``role`` (and apply ``change``, with a history event when named)."""

    def apply(index: dict) -> None:
        index["versions"][version]["deployment"] = {"run": run_name, "role": role}
        if change:
            change(index)

    if event:
        _record(store, model_name, version, event, detail, apply)
    else:
        store.update_index(model_name, apply)


def deployed_by(index: dict, version: str, run_name: str) -> str | None:
    """Return the role ``run_name`` deployed ``version`` in (first deployment, candidate, attempted), or None if it did not."""
    deployment = index["versions"].get(version, {}).get("deployment") or {}
    if run_name and deployment.get("run") == run_name and deployment.get("role") in UNDOABLE_ROLES:
        return deployment["role"]
    return None


def restore_stable(target: ServingTarget, store: ModelStore, model_name: str, timeout_s: float) -> str | None:
    """Serve the index's stable version again when the target serves nothing; return what was restored, or None."""
    index = store.read_index(model_name)
    stable = index.get("stable")
    if not stable or target.status(model_name).stable is not None:
        return None
    checksum = index["versions"].get(stable, {}).get("sha256")
    if not checksum:
        raise ServingError(f"{model_name}: the index names stable {stable} but has no checksum for it; run `model-pipelines store repair`")
    status = target.deploy(model_name, stable, store.storage_uri(model_name, stable), checksum, timeout_s)
    if status.stable != stable:
        raise ServingError(f"{model_name}: restoring stable {stable} left {status.stable or 'nothing'} serving")
    message = f"restored stable {stable}: nothing was serving"
    _record(store, model_name, stable, "restored", message, lambda index: None)
    return message


def deploy_version(
    target: ServingTarget, store: ModelStore, model_name: str, version: str, timeout_s: float, *, run_name: str, refuse_synthetic: bool = False,
) -> StepOutcome:
    """Deploy a stored version: stable on the first deployment ever, else a dark candidate at 0 % traffic; record it as this run's.

    With ``refuse_synthetic`` (production targets), a version trained on synthetic data is held instead: not deployed.
    """
    index = store.read_index(model_name)
    entry = index["versions"].get(version, {})
    record_checksum = entry.get("sha256")
    if not record_checksum:
        raise ServingError(f"{model_name} {version} is not in the store's index; save it before deploying")
    if refuse_synthetic and entry.get("status") != "duplicate" and is_synthetic(entry.get("data_source", "")):
        if entry.get("status") != "held":
            def as_held(index: dict) -> None:
                index["versions"][version].update(status="held", held_reason=TRAINED_ON_SYNTHETIC_DATA)

            _record(store, model_name, version, "held", f"{TRAINED_ON_SYNTHETIC_DATA}: set allow_synthetic_deploy=true to serve it anyway", as_held)
        return StepOutcome(True, f"{version} not deployed: {TRAINED_ON_SYNTHETIC_DATA} (set allow_synthetic_deploy=true to serve it on this target)")
    reason = None if entry.get("status") == "held" else not_needed(target, store, model_name, version)
    if reason:
        return StepOutcome(True, reason)
    restored = restore_stable(target, store, model_name, timeout_s)
    if index.get("stable") == version:
        return StepOutcome(True, restored or f"{version} is already the stable version; nothing to deploy")
    prefix = f"{restored}; " if restored else ""
    _record_deployment(store, model_name, version, run_name, ATTEMPTED)
    status = target.deploy(model_name, version, store.storage_uri(model_name, version), record_checksum, timeout_s)
    if status.stable == version:
        def as_stable(index: dict) -> None:
            index["stable"] = version
            index["versions"][version]["status"] = "stable"

        _record_deployment(store, model_name, version, run_name, FIRST_DEPLOYMENT, as_stable, "deployed", "first deployment: stable with all traffic")
        return StepOutcome(True, f"{prefix}{version} is the first version served: stable at {status.url}")

    def as_candidate(index: dict) -> None:
        replaced = index.get("candidate")
        if replaced and replaced != version and replaced in index["versions"]:
            index["versions"][replaced]["status"] = "superseded"
        index["candidate"] = version
        index["versions"][version]["status"] = "candidate"

    _record_deployment(store, model_name, version, run_name, CANDIDATE, as_candidate, "deployed", "candidate at 0 % traffic")
    return StepOutcome(True, f"{prefix}{version} serves as a dark candidate (0 % traffic) beside stable {status.stable}")


def version_endpoint(target: ServingTarget, model_name: str, version: str) -> str:
    """Return the URL that reaches ``version`` alone: the candidate's own, or stable's on a first deployment."""
    status, endpoints = target.status(model_name), target.endpoints(model_name)
    if status.candidate == version and endpoints.candidate:
        return endpoints.candidate
    if status.stable == version and endpoints.stable:
        return endpoints.stable
    raise ServingError(f"{model_name} {version} is not being served (stable {status.stable}, candidate {status.candidate})")


# -- smoke test ------------------------------------------------------------------------------------------------

@dataclass
class SmokeReport:
    """The smoke test's checks, in order, with a verdict."""

    model_name: str
    version: str
    endpoint: str
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Return whether every check passed."""
        return bool(self.checks) and all(passed for _, passed, _ in self.checks)

    @property
    def rejection(self) -> str:
        """Return "rejected at smoke-test: <first failing check>", or "" when every check passed."""
        failed = next(((name, detail) for name, passed, detail in self.checks if not passed), None)
        if failed:
            return f"rejected at smoke-test: {failed[0]}: {failed[1]}"
        return "" if self.checks else "rejected at smoke-test: no check ran"

    def markdown(self) -> str:
        """Return the report as Markdown."""
        lines = [f"# Smoke test: {self.model_name} {self.version}", "", f"Endpoint: `{self.endpoint}`", "",
                 f"**Result:** {'passed' if self.passed else 'FAILED'}", "", "| check | result | detail |", "|---|---|---|"]
        lines += [f"| {name} | {'pass' if passed else 'FAIL'} | {detail} |" for name, passed, detail in self.checks]
        return "\n".join(lines) + "\n"


def _predict(session: requests.Session, endpoint: str, body: object, timeout: float) -> tuple[int, object, float]:
    """POST a V1 predict request to ``endpoint``; return (status, parsed body or text, seconds) as ``_post_json`` does."""
    return _post_json(session, f"{endpoint}:predict", body, timeout)


def _post_json(session: requests.Session, url: str, body: object, timeout: float) -> tuple[int, object, float]:
    """POST ``body`` as JSON; return (status, parsed body or text, seconds), status 0 when nothing answered."""
    import requests

    started = time.perf_counter()
    try:
        response = session.post(url, json=body, timeout=timeout)
    except requests.RequestException as error:
        return 0, str(error), time.perf_counter() - started
    elapsed = time.perf_counter() - started
    try:
        return response.status_code, response.json(), elapsed
    except ValueError:
        return response.status_code, response.text, elapsed


def predictions_follow_contract(model_name: str, predictions: object, rows: int) -> tuple[bool, str]:
    """Return whether served predictions have the JSON types and shape of the spec's type, with a description.

    anomaly: JSON integers among its labels; predictive: rows of finite numbers, one per output, each within its range;
    classification: a declared class per instance, or with probabilities rows of one probability per class summing to 1.
    """
    if not isinstance(predictions, list) or len(predictions) != rows:
        return False, f"expected a list of {rows} predictions, got {type(predictions).__name__} of {len(predictions) if isinstance(predictions, list) else '-'}"
    spec = spec_for(model_name)
    if answers_are_labels(spec):
        allowed = sorted(spec.outputs.labels.values()) if spec.type == ANOMALY else [item.value for item in spec.outputs.classes]
        shown = f"JSON integers {'/'.join(str(value) for value in allowed)}"
        bad = [value for value in predictions if type(value) is not int or value not in allowed]
        return not bad, shown if not bad else f"not {shown}: {bad[:3]}"
    if spec.type == CLASSIFICATION:
        width, shown = len(spec.outputs.classes), f"rows of {len(spec.outputs.classes)} probabilities summing to 1"
        ranges = [(0.0, 1.0)] * width
    else:
        width, shown = len(spec.outputs.values), f"rows of {len(spec.outputs.values)} finite numbers within the output ranges"
        ranges = [value.range for value in spec.outputs.values]
    bad = [row for row in predictions if not _numbers_within(row, ranges)
           or (spec.type == CLASSIFICATION and not math.isclose(math.fsum(row), 1.0, abs_tol=1e-6))]
    return not bad, shown if not bad else f"not {shown}: {bad[:1]}"


def _numbers_within(row: object, ranges: list[tuple[float, float]]) -> bool:
    """Return whether ``row`` is a list of finite JSON numbers, one within each of ``ranges``."""
    return isinstance(row, list) and len(row) == len(ranges) and all(
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and low <= value <= high
        for value, (low, high) in zip(row, ranges))


def names_served_version(answers: dict[str, tuple[dict, dict[str, object]]]) -> tuple[bool, str]:
    """Return whether each answer (label -> (answer, expected fields)) names what is expected wherever it names it, with a description."""
    named, wrong = [], []
    for label, (answer, expected) in answers.items():
        fields, mismatches = served_identity(answer, expected)
        named.append(f"{label} {', '.join(fields) if fields else 'none (the stock runtime answers without them)'}")
        wrong += [f"{label}: {mismatch}" for mismatch in mismatches]
    return not wrong, "; ".join(wrong) if wrong else "named: " + "; ".join(named)


def smoke_test(
    target: ServingTarget,
    store: ModelStore,
    model_name: str,
    version: str,
    sample: np.ndarray,
    *,
    max_p95_latency_ms: float,
    latency_requests: int = 20,
    timeout_s: float = 10.0,
) -> SmokeReport:
    """Probe the version's own endpoint: listing, readiness, contract types, 4xx, the V2 protocol, offline equality, latency."""
    import numpy as np
    import requests

    if store.read_index(model_name)["versions"].get(version, {}).get("status") in NOT_DEPLOYED:
        report = SmokeReport(model_name, version, "-")
        report.checks.append(("rollout needed", True, not_needed(target, store, model_name, version) or ""))
        return report
    endpoint = version_endpoint(target, model_name, version)
    report = SmokeReport(model_name, version, endpoint)
    server = endpoint.split("/v1/models/")[0]
    session = requests.Session()

    def check(name: str, passed: bool, detail: str) -> bool:
        report.checks.append((name, bool(passed), detail))
        return bool(passed)

    # A version saved without reference predictions is unpickled instead, which imports scikit-learn (about a
    # second): do it while the HTTP checks wait on the server (the latency checks run after, without the loader).
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as loader:
        expected = loader.submit(expected_predictions, store, model_name, version, sample)
        try:
            listing = session.get(f"{server}/v1/models", timeout=timeout_s)
            check("list models", listing.status_code == 200 and model_name in listing.json().get("models", []), f"GET /v1/models -> {listing.status_code} {listing.text[:120]}")
            ready = session.get(endpoint, timeout=timeout_s)
            metadata = ready.json() if ready.status_code == 200 else {}
            check("model ready", isinstance(metadata, dict) and metadata.get("ready") is True, f"GET /v1/models/{model_name} -> {ready.status_code} {ready.text[:120]}")
        except (requests.RequestException, ValueError) as error:
            check("reachable", False, f"{endpoint} did not answer: {error}")
            return report

        status, body, _ = _predict(session, endpoint, {"instances": sample.tolist()}, timeout_s)
        if not check("predict", status == 200 and isinstance(body, dict), f"POST :predict with {len(sample)} instances -> {status} {str(body)[:160]}"):
            return report
        served = body.get("predictions")
        typed, detail = predictions_follow_contract(model_name, served, len(sample))
        if not check("contract types and shape", typed, detail):
            return report
        check("names model and version", *names_served_version({
            "metadata": (metadata if isinstance(metadata, dict) else {}, {"name": model_name, "version": version}),
            "predict": (body, {"model_name": model_name, "model_version": version})}))

        width = schema_for(model_name).n_features
        for name, malformed in (
            ("wrong feature count", {"instances": [[0.5] * (width - 1)]}),
            ("non-numeric values", {"instances": [["high"] * width]}),
            ("missing instances", {"rows": [[0.5] * width]}),
        ):
            status, body, _ = _predict(session, endpoint, malformed, timeout_s)
            has_error = isinstance(body, dict) and bool(body.get("error"))
            refused = (400 <= status < 500 if target.strict_client_errors else status >= 400) and has_error
            check(f"refuses {name}", refused, f"-> {status} {str(body)[:120]}")

        _check_v2(session, server, model_name, version, sample, np.asarray(served), check, refuses_with_4xx=target.strict_client_errors, timeout_s=timeout_s)

        try:
            instances, offline, source = expected.result()
        except (StoreError, OSError, ValueError, TypeError, KeyError) as error:
            check("equals stored version offline", False, f"the stored version's expected predictions cannot be read: {error}")
            return report
        status, body, _ = _predict(session, endpoint, {"instances": instances.tolist()}, timeout_s)
        served_reference = np.asarray(body.get("predictions") if status == 200 and isinstance(body, dict) else [])
        equal = served_reference.shape == offline.shape and (
            np.array_equal(served_reference, offline) if answers_are_labels(spec_for(model_name))
            else np.allclose(served_reference.astype(float), offline, rtol=1e-9, atol=1e-12))
        check("equals stored version offline", equal, f"served predictions {'match' if equal else 'DIFFER from'} {source} on {len(instances)} instances")

        timings = []
        for row in sample[:latency_requests]:
            status, _, seconds = _predict(session, endpoint, {"instances": [row.tolist()]}, timeout_s)
            timings.append(seconds * 1000.0 if status == 200 else math.inf)
        p95 = float(np.percentile(timings, 95)) if timings else math.inf
        check("p95 latency", p95 <= max_p95_latency_ms, f"{p95:.1f} ms over {len(timings)} single-row requests (limit {max_p95_latency_ms:g} ms)")
        return report


def expected_predictions(store: ModelStore, model_name: str, version: str, sample: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Return (instances, the stored version's answers for them, where those come from) for the equality check.

    The version's reference predictions, recorded at training time, are used when it has them; an older version
    without them is unpickled and asked about ``sample`` as the stock runtime would ask it (``predict_proba`` for a
    spec that serves probabilities, else ``predict``).
    """
    import numpy as np

    reference = store.version_record(model_name, version).get("reference") or {}
    if reference.get("instances"):
        return np.asarray(reference["instances"], dtype=float), np.asarray(reference["predictions"]), f"{version}'s predictions recorded at training"
    answers = offline_answers(load_model(store, model_name, version), spec_for(model_name), sample)
    return sample, np.asarray(answers), f"{version}'s model.pkl"


def _v2_infer(session: requests.Session, server: str, model_name: str, rows: list, timeout_s: float) -> tuple[int, object]:
    """POST a V2 (Open Inference) infer request with ``rows`` as one FP64 tensor; return (status, parsed body or text)."""
    width = len(rows[0]) if rows else 0
    body = {"inputs": [{"name": "input-0", "shape": [len(rows), width], "datatype": "FP64", "data": [v for row in rows for v in row]}]}
    status, answer, _ = _post_json(session, f"{server}/v2/models/{model_name}/infer", body, timeout_s)
    return status, answer


def _check_v2(
    session: requests.Session, server: str, model_name: str, version: str, sample: np.ndarray, served_v1: np.ndarray,
    check: Callable[[str, bool, str], bool], *, refuses_with_4xx: bool, timeout_s: float,
) -> None:
    """Check the V2 protocol on the version's server: readiness, metadata, infer equal to V1 (INT64 for label answers), a 4xx."""
    import numpy as np
    import requests

    try:
        ready = session.get(f"{server}/v2/models/{model_name}/ready", timeout=timeout_s)
        check("V2 model ready", ready.status_code == 200, f"GET /v2/models/{model_name}/ready -> {ready.status_code} {ready.text[:120]}")
        answer = session.get(f"{server}/v2/models/{model_name}", timeout=timeout_s)
    except requests.RequestException as error:
        check("V2 model ready", False, f"did not answer: {error}")
        return
    try:
        metadata = answer.json() if answer.status_code == 200 else None
    except ValueError:
        metadata = None
    if not check("V2 metadata", isinstance(metadata, dict), f"GET /v2/models/{model_name} -> {answer.status_code} {answer.text[:120]}"):
        return
    status, body = _v2_infer(session, server, model_name, sample.tolist(), timeout_s)
    outputs = body.get("outputs") if isinstance(body, dict) else None
    if not check("V2 infer", status == 200 and isinstance(outputs, list) and len(outputs) == 1,
                 f"POST /v2/models/{model_name}/infer with [{len(sample)}, {sample.shape[1]}] FP64 -> {status} {str(body)[:160]}"):
        return
    check("V2 names model and version", *names_served_version({
        "metadata": (metadata, {"name": model_name, "versions": [version]}), "infer": (body, {"model_name": model_name, "model_version": version})}))
    tensor = outputs[0]
    data = np.asarray(tensor.get("data", []), dtype=float).reshape(served_v1.shape) if len(tensor.get("data", [])) == served_v1.size else None
    labels = answers_are_labels(spec_for(model_name))
    integer = not labels or (tensor.get("datatype") == "INT64" and all(type(v) is int for v in tensor["data"]))
    same = data is not None and np.allclose(data, served_v1.astype(float), rtol=1e-9, atol=1e-12)
    check("V2 equals V1", same and integer, f"output {tensor.get('datatype')} shape {tensor.get('shape')} "
          f"{'matches' if same else 'DIFFERS from'} the V1 predictions{'' if integer else '; labels must be answered as INT64'}")
    status, body = _v2_infer(session, server, model_name, [row[:-1] for row in sample[:1].tolist()], timeout_s)
    refused = (400 <= status < 500) if refuses_with_4xx else status >= 400
    check("V2 refuses wrong feature count", refused, f"-> {status} {str(body)[:120]}")


def record_smoke_test(store: ModelStore, model_name: str, report: SmokeReport, report_uri: str = "") -> None:
    """Append the smoke test's verdict, naming any failed checks, and where its report is to the index history."""
    failed = [f"{name}: {detail}" for name, passed, detail in report.checks if not passed]
    _record(store, model_name, report.version, "smoke-tested", "; ".join(failed) if failed else "passed", lambda index: None, report_uri)


# -- canary analysis ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CanarySpec:
    """The canary analysis as data: traffic steps, pacing, thresholds and how many failed analyses to tolerate."""

    steps: tuple[int, ...] = (10, 50, 100)
    # Two scrapes of manifests/monitoring's PodMonitor (every 30 s), so that rate() has data for a new candidate's series at
    # the first analysis; shorter, live signals find none and roll a good candidate back as inconclusive (Flagger: 1m).
    interval_s: float = 60.0
    probe_requests: int = 20
    max_error_rate: float = 0.01
    max_p95_latency_ms: float = 100.0
    max_prediction_shift: float = 0.1
    failure_limit: int = 1
    max_live_p95_latency_ms: float = 100.0

    def __post_init__(self) -> None:
        if not self.steps or any(not 0 < step <= 100 for step in self.steps) or list(self.steps) != sorted(set(self.steps)):
            raise ValueError(f"steps must be strictly increasing percentages in 1-100, got {list(self.steps)}")
        if self.failure_limit < 0 or self.probe_requests < 0:
            raise ValueError("failure_limit and probe_requests must not be negative")


class MetricProvider(Protocol):
    """A source of canary measurements; a value of None means no data."""

    def measure(self, model_name: str, stable_endpoint: str, candidate_endpoint: str, candidate_version: str) -> dict[str, float | None]:
        """Return measurements for this analysis interval."""


@dataclass
class ProbeProvider:
    """Sends the same probe instances to candidate and stable and measures errors, latency and prediction shift."""

    sample: np.ndarray
    requests_per_step: int
    timeout_s: float = 10.0
    _offset: int = 0

    def measure(self, model_name: str, stable_endpoint: str, candidate_endpoint: str, candidate_version: str = "") -> dict[str, float | None]:
        """Return candidate error rate, candidate p95 latency (ms) and the prediction shifts against stable (``prediction_shifts``)."""
        import numpy as np
        import requests

        if self.requests_per_step == 0 or len(self.sample) == 0:
            return {"error_rate": None, "p95_latency_ms": None, **prediction_shifts(model_name, [], [])}
        session = requests.Session()
        errors, latencies, candidate_out, stable_out = 0, [], [], []
        for number in range(self.requests_per_step):
            row = self.sample[(self._offset + number) % len(self.sample)].tolist()
            status, body, seconds = _predict(session, candidate_endpoint, {"instances": [row]}, self.timeout_s)
            if status != 200 or not isinstance(body, dict) or "predictions" not in body:
                errors += 1
                continue
            latencies.append(seconds * 1000.0)
            stable_status, stable_body, _ = _predict(session, stable_endpoint, {"instances": [row]}, self.timeout_s)
            if stable_status == 200 and isinstance(stable_body, dict):
                candidate_out.append(body["predictions"][0])
                stable_out.append(stable_body["predictions"][0])
        self._offset += self.requests_per_step
        return {
            "error_rate": errors / self.requests_per_step,
            "p95_latency_ms": float(np.percentile(latencies, 95)) if latencies else None,
            **prediction_shifts(model_name, candidate_out, stable_out),
        }


PREDICTION_SHIFT, PROBABILITY_SHIFT = "prediction_shift", "probability_shift"
# The measurement each canary limit of a spec bounds: the first is the primary one, bounded by CanarySpec.max_prediction_shift.
LIMITED_MEASUREMENTS = {"max_prediction_shift": PREDICTION_SHIFT, "max_label_flip_rate": PREDICTION_SHIFT, "max_probability_shift": PROBABILITY_SHIFT}


def prediction_shifts(model_name: str, candidate: list, stable: list) -> dict[str, float | None]:
    """Return how far the candidate's answers are from stable's on the same probes, by the spec's ``canary.compare``.

    ``prediction_shift`` is the primary measure: the anomaly-rate difference (anomaly_rate), the mean absolute
    difference (mean_absolute_shift), or the share of probes whose class changes (label_flip_rate). With
    label_flip_rate_and_probability_shift, ``probability_shift`` is also the mean absolute change of the alert class's
    probability. None without data, infinity for answers that cannot be compared.
    """
    import numpy as np

    spec = spec_for(model_name)
    names = list(dict.fromkeys(LIMITED_MEASUREMENTS[limit] for limit in spec.canary.limits))
    if not candidate:
        return dict.fromkeys(names)
    try:
        candidate_answers, stable_answers = np.asarray(candidate, dtype=float), np.asarray(stable, dtype=float)
        if candidate_answers.shape != stable_answers.shape:
            raise ValueError("the answers differ in shape")
        return {name: _shift(name, spec, candidate_answers, stable_answers) for name in names}
    except (TypeError, ValueError, IndexError):
        return dict.fromkeys(names, math.inf)


def _shift(name: str, spec: ModelSpec, candidate: np.ndarray, stable: np.ndarray) -> float:
    """Return one shift measurement between equally shaped answer arrays by the spec's comparison."""
    import numpy as np

    compare = spec.canary.compare
    if name == PROBABILITY_SHIFT:
        return float(np.mean(np.abs(alert_probabilities(spec, candidate) - alert_probabilities(spec, stable))))
    if compare == "anomaly_rate":
        anomaly = spec.outputs.labels["anomaly"]
        return abs(float(np.mean(candidate == anomaly)) - float(np.mean(stable == anomaly)))
    if compare == "mean_absolute_shift":
        return float(np.mean(np.abs(candidate - stable)))
    return float(np.mean(predicted_classes(spec, candidate) != predicted_classes(spec, stable)))


def secondary_canary_limits(spec: ModelSpec) -> dict[str, float]:
    """Return the limits of ``spec``'s canary beyond the primary one (``CanarySpec.max_prediction_shift``), by measurement."""
    return {LIMITED_MEASUREMENTS[limit]: value for limit, value in list(spec.canary.limits.items())[1:]}


@dataclass
class AnalysisRow:
    """One analysis at one traffic weight."""

    weight: int
    measurements: dict[str, float | None]
    verdict: str
    detail: str


def judge(measurements: dict[str, float | None], spec: CanarySpec, model_limits: dict[str, float] | None = None) -> tuple[str, str]:
    """Return ("pass" | "fail" | "inconclusive", why) for one analysis's measurements; ``model_limits`` bounds the measurements the
    model's spec adds (``secondary_canary_limits``)."""
    limits = {"error_rate": spec.max_error_rate, "p95_latency_ms": spec.max_p95_latency_ms, PREDICTION_SHIFT: spec.max_prediction_shift,
              "live_error_rate": spec.max_error_rate, "live_p95_latency_ms": spec.max_live_p95_latency_ms, **(model_limits or {})}
    missing = [name for name, value in measurements.items() if value is None]
    failed = [f"{name} {value:.4g} > {limits[name]:g}" for name, value in measurements.items() if value is not None and name in limits and value > limits[name]]
    if failed:
        return "fail", "; ".join(failed)
    if missing:
        return "inconclusive", f"no data for {', '.join(missing)}"
    return "pass", "all metrics within limits"


@dataclass
class CanaryResult:
    """The outcome of a canary run and every analysis it made."""

    model_name: str
    version: str
    outcome: str
    reason: str
    spec: CanarySpec
    rows: list[AnalysisRow] = field(default_factory=list)
    strategy: str = ""
    hold: str = ""  # with the approval gate: how long the candidate held, how many analyses passed meanwhile and how it ended

    def html(self) -> str:
        """Return the report as HTML with a table per traffic step."""
        parts = [f"<h1>Canary: {html.escape(self.model_name)} {html.escape(self.version)}</h1>",
                 f"<p><b>Outcome:</b> {html.escape(self.outcome)} &mdash; {html.escape(self.reason)}</p>",
                 f"<p><b>Traffic:</b> {html.escape(self.strategy)}</p>",
                 *([f"<p><b>Approval:</b> {html.escape(self.hold)}</p>"] if self.hold else []),
                 f"<p>Spec: <code>{html.escape(json.dumps(asdict(self.spec)))}</code></p>"]
        for weight in dict.fromkeys(row.weight for row in self.rows):
            names = list(dict.fromkeys(name for row in self.rows for name in row.measurements))
            header = "".join(f"<th>{html.escape(name)}</th>" for name in names)
            parts.append(f"<h2>{weight} % of traffic</h2><table border='1'><tr><th>analysis</th>{header}<th>verdict</th><th>detail</th></tr>")
            for number, row in enumerate((r for r in self.rows if r.weight == weight), start=1):
                cells = [_format(row.measurements.get(name)) for name in names]
                parts.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in [number, *cells, row.verdict, row.detail]) + "</tr>")
            parts.append("</table>")
        return "<html><body>" + "\n".join(parts) + "</body></html>\n"


def _format(value: float | None) -> str:
    return "no data" if value is None else f"{value:.4g}"


def canary_promote(
    target: ServingTarget,
    store: ModelStore,
    model_name: str,
    version: str,
    spec: CanarySpec,
    providers: list[MetricProvider] | Callable[[], list[MetricProvider]],
    *,
    run_name: str,
    timeout_s: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
    report_uri: str = "",
    approval: ApprovalGate | None = None,
) -> CanaryResult:
    """Step the candidate's traffic through ``spec.steps``, analysing each; promote at the end or roll back.

    ``providers`` may be a function that builds them, called only when there is a candidate to analyse, so that a
    canary with nothing to do (a first deployment, a duplicate) loads no probe data. With an ``approval`` gate the
    candidate holds at the last step below 100 % (``hold_for_approval``) and is promoted only once approved.
    """
    not_deployed = store.read_index(model_name)["versions"].get(version, {}).get("status")
    if not_deployed in NOT_DEPLOYED:
        return CanaryResult(model_name, version, not_deployed, not_needed(target, store, model_name, version) or "", spec)
    status = target.status(model_name)
    if status.stable == version and status.candidate is None:
        return CanaryResult(model_name, version, "stable", "stable with all traffic: no candidate to compare against", spec)
    if status.candidate != version:
        raise ServingError(f"{model_name} {version} is not the candidate (candidate is {status.candidate})")
    if callable(providers):
        providers = providers()
    result = CanaryResult(model_name, version, "", "", spec, strategy=target.traffic_strategy(model_name))
    print(f"canary {model_name} {version}: {result.strategy}", flush=True)
    failures = 0
    model_limits = secondary_canary_limits(spec_for(model_name))
    # The gate holds before the first step that reaches 100 % (always the last), or before promotion when none does.
    hold_at = (len(spec.steps) - 1 if spec.steps[-1] == 100 else len(spec.steps)) if approval else None
    approved: Approval | None = None

    def analyse(weight: int) -> AnalysisRow:
        """Measure once with every provider and judge; a provider that fails makes the analysis inconclusive."""
        endpoints = target.endpoints(model_name)
        measurements: dict[str, float | None] = {}
        broken = []
        for provider in providers:
            try:
                measurements.update(provider.measure(model_name, endpoints.stable or "", endpoints.candidate or "", version))
            except Exception as error:  # a provider outage is no data: inconclusive, never a crash or a pass
                measurements[f"{type(provider).__name__}"] = None
                broken.append(f"{type(provider).__name__} failed: {error}")
        verdict, detail = judge(measurements, spec, model_limits)
        return AnalysisRow(weight, measurements, verdict, "; ".join([detail, *broken]))

    def roll_back(reason: str) -> CanaryResult:
        """Roll the candidate back as rejected for ``reason``; return the result saying so."""
        result.outcome, result.reason = "rolled back", reason
        rollback(target, store, model_name, version, reason, run_name=run_name, timeout_s=timeout_s, report_uri=report_uri)
        return result

    try:
        for position, weight in enumerate((*spec.steps, None)):
            if position == hold_at:
                held_at = spec.steps[position - 1] if position else 0
                approved, failures, why = hold_for_approval(approval, model_name, version, held_at, analyse, result, failures, spec, sleep)
                if approved is None or not approved.approved:
                    return roll_back(f"rejected at canary-promote: {why}")
            if weight is None:
                break
            target.set_traffic(model_name, weight, timeout_s)
            while True:
                sleep(spec.interval_s)
                row = analyse(weight)
                result.rows.append(row)
                print(f"canary {model_name} {version} at {weight}%: {row.verdict} ({row.detail})", flush=True)
                if row.verdict == "pass":
                    break
                failures += 1
                if failures > spec.failure_limit:
                    return roll_back(f"rejected at canary-promote: {weight}% traffic, {row.verdict}: {row.detail}")
    except Exception as error:  # whatever failed, the candidate ends at 0 % and rejected
        return roll_back(f"rejected at canary-promote: the step failed: {type(error).__name__}: {error}")
    try:
        target.promote(model_name, timeout_s)
    except ServingError as error:
        if target.status(model_name).stable == version:
            raise
        # The target put stable back itself (gitops reverts a promotion that stopped in a later wave): reject the candidate.
        return roll_back(f"rejected at canary-promote: promotion failed: {error}")

    def promoted(index: dict) -> None:
        previous = index.get("stable")
        if previous and previous in index["versions"]:
            index["versions"][previous]["status"] = "retired"
        index["stable"], index["candidate"] = version, None
        index["versions"][version]["status"] = "stable"
        entry = index["versions"][version]
        for key in ("approved_by", "approved_at"):
            entry.pop(key, None)
        if approved is not None:  # who let this promotion through, for the run's summary
            entry.update(approved_by=approved.by, approved_at=approved.at)

    steps = ", ".join(f"{s}%" for s in spec.steps)
    approval_note = f"; approved by {approved.by}" if approved is not None else ""
    _record(store, model_name, version, "promoted", f"through {steps}{approval_note}", promoted, report_uri)
    result.outcome, result.reason = "promoted", f"passed analysis at {steps}{approval_note}"
    return result


def rollback(
    target: ServingTarget, store: ModelStore, model_name: str, version: str, reason: str, *, run_name: str, timeout_s: float = 60.0,
    report_uri: str = "",
) -> StepOutcome:
    """Undo what this run deployed of ``version`` and mark it rejected with ``reason`` (and its report); return what happened.

    A candidate this run launched is removed with all traffic back on stable; a first deployment this run created
    stops serving. A version this run did not deploy (stable before the run, another run's candidate) is left as
    it is: the event is recorded as "kept serving" and its status does not change.
    """
    role = deployed_by(store.read_index(model_name), version, run_name)
    if role is None:
        _record(store, model_name, version, KEPT_SERVING, f"{reason} (not deployed by this run, so left as it was)", lambda index: None, report_uri)
        status = target.status(model_name)
        return StepOutcome(True, f"{version} was not deployed by this run and is left as it was (stable {status.stable or 'nothing'}); {reason}")
    status = target.status(model_name)
    if status.candidate == version:
        target.rollback(model_name, timeout_s, reason=reason)
    elif status.stable == version and role != CANDIDATE:
        target.remove(model_name, version, timeout_s, reason=reason)

    def rejected(index: dict) -> None:
        if index.get("candidate") == version:
            index["candidate"] = None
        if index.get("stable") == version:
            index["stable"] = None
        index["versions"][version].update(status="rejected", rejected_reason=reason)

    _record(store, model_name, version, "rolled back", reason, rejected, report_uri)
    after = target.status(model_name)
    return StepOutcome(True, f"{version} rejected ({reason}); stable is {after.stable or 'nothing'}")


def end_abandoned_hold(approval: ApprovalGate, store: ModelStore, model_name: str, run_name: str) -> str | None:
    """Mark a hold for approval that run ``run_name``'s canary left awaiting a decision (its step died while holding) as expired,
    so that no decision about it counts; return what was done or could not be, or None when no hold of this run awaits one."""
    source = approval.source
    try:
        held = source.awaiting(model_name)
    except ServingError as error:
        return f"cannot read whether a hold awaits approval in {source.where}: {error}"
    if held is None or not deployed_by(store.read_index(model_name), held, run_name):
        return None
    try:
        source.end(model_name, held)
    except ServingError as error:
        return f"the hold of {held} for approval ended with its step, but cannot be marked {EXPIRED} in {source.where}: {error}"
    return f"the hold of {held} for approval ended with its step: marked {EXPIRED}, so no decision about it counts"


def make_safe(target: ServingTarget, store: ModelStore, model_name: str, *, run_name: str, timeout_s: float = 60.0,
              approval: ApprovalGate | None = None) -> StepOutcome:
    """Leave serving safe after any failure: the index's stable serving (restored if nothing serves), no hold of this run still
    awaiting approval (with an ``approval`` gate) and this run's candidate at 0 % traffic; raise ``ServingError`` when stable cannot
    be brought back.
    """
    try:
        restored = restore_stable(target, store, model_name, timeout_s)
    except ServingError as error:
        raise ServingError(f"{model_name}: nothing is serving and stable {store.read_index(model_name).get('stable')} could not be "
                           f"restored: {error}") from error
    done = [restored] if restored else []
    ended = end_abandoned_hold(approval, store, model_name, run_name) if approval else None
    if ended:
        done.append(ended)
    status = target.status(model_name)
    if status.candidate and status.candidate_percent:
        if deployed_by(store.read_index(model_name), status.candidate, run_name):
            status = target.set_traffic(model_name, 0, timeout_s)
            done.append(f"candidate {status.candidate} set back to 0 % traffic")
        else:
            done.append(f"candidate {status.candidate} at {status.candidate_percent} % is another run's, left as it is")
    summary = f"stable {status.stable or 'none'}, candidate {status.candidate or 'none'} at {status.candidate_percent} %"
    return StepOutcome(True, f"{model_name}: {'; '.join(done) + '; ' if done else ''}serving is safe ({summary})")
