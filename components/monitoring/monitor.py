"""The drift monitor: measure a recent window of live metrics against the stable version's profile, decide, act.

One check per model: ``assess`` measures every input feature's drift (``drift.measure_drift``) and what the model
answered, by its spec's type (an anomaly model's live anomaly rate, a predictive model's live bias per output, a
classification model's live alert rate, all from the runtime's own metrics) against what validation showed; ``decide`` turns that into ``retrain``, ``none`` or ``held`` (drift, but a retrain ran or was
triggered within the cooldown, or one is still running); the caller acts on it and ``record_trigger`` writes the
trigger into the store's index history, which is also where the cooldown is read from.

A live window in the wrong unit (a metric 100 or 1000 times what the stable version learned, ``drift.check_scale_against_profile``)
is an input error, not drift: the check fails with a ContractError, so nothing is decided, pushed or retrained.
"""

from __future__ import annotations

import datetime as dt
import html
import io
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from components.model.spec import ANOMALY, CLASSIFICATION, ModelSpec, spec_for
from components.store.filesystem import DUPLICATE_EVENT, ModelStore, utc_now

if TYPE_CHECKING:  # the settings and decisions need no numpy: a step that only reads or records them starts without it
    import pandas as pd

    from components.data.prometheus import PrometheusClient
    from components.monitoring.drift import FeatureDrift

RETRAIN, NO_ACTION, HELD, NEEDS_HUMAN = "retrain", "none", "held", "needs a human"
EPISODE_KEY = "drift_episode"  # the index's record of the current drift episode (see ``next_episode``)
TRIGGER_EVENT = "retrain-triggered"
# What starts the cooldown: a trigger, or a retrain's save (a new version, or a model identical to a stored one).
RETRAIN_EVENTS = (TRIGGER_EVENT, "saved", DUPLICATE_EVENT)
TOP_FEATURES = 5


class MonitorError(RuntimeError):
    """The check cannot be made (no stable version, no profile); the message says why and what to do."""


@dataclass(frozen=True)
class DriftThresholds:
    """When a feature counts as drifted: both effect sizes past their limits."""

    psi: float = 0.25  # population stability index of the live window against the training bins
    ks_excess: float = 0.45  # share of the way from the training windows' largest KS statistic to 1
    # or: the window's median beyond the training windows' medians by this share of their range. benchmarks/drift.py:
    # stationary windows reach 0.38 at most; a 0.05/h leak in the detector's pod memory scores 0.45 or more two hours in.
    level_excess: float = 0.4


@dataclass(frozen=True)
class MonitorSettings:
    """What counts as drift and how often a retrain may follow it."""

    thresholds: DriftThresholds = field(default_factory=DriftThresholds)
    cooldown_hours: float = 24.0
    anomaly_rate_factor: float = 3.0  # live anomaly rate above this many times validation's is drift
    forecast_bias_factor: float = 3.0  # live mean forecast off the live mean by more than this many validation MAEs
    min_predictions: int = 100  # fewer live predictions than this: the prediction check is inconclusive
    min_regime_hours: float = 36.0  # data after a drift's onset before a retrain: its training share (70 %) covers a whole day
    max_retrains_per_episode: int = 2  # promoted retrains after which a persisting drift needs a human, not another retrain

    def live_factor(self, spec: ModelSpec) -> float:
        """Return the factor that bounds ``spec``'s live prediction check: the run's setting of that name (anomaly_rate_factor,
        forecast_bias_factor) when it has one, else the spec's ``drift`` (e.g. alert_rate_factor)."""
        run_setting = getattr(self, spec.drift.live_factor_name, None)
        return spec.drift.live_factor if run_setting is None else float(run_setting)


@dataclass(frozen=True)
class PredictionCheck:
    """One check of what the served model answered in the window; ``measured`` is False when there was no data."""

    name: str
    measured: bool
    drifted: bool
    detail: str


@dataclass
class Assessment:
    """Everything one check measured for a model."""

    model_name: str
    stable_version: str
    window: str
    thresholds: DriftThresholds
    features: list[FeatureDrift]
    predictions: list[PredictionCheck]

    @property
    def drifted_features(self) -> list[FeatureDrift]:
        """Return the features whose drift passes both thresholds, most drifted first."""
        return [drift for drift in self.features if drift.drifted(self.thresholds)]

    @property
    def drift_score(self) -> float:
        """Return the largest KS score (0-1) of a judged feature."""
        return max((drift.score for drift in self.features if drift.judged), default=0.0)

    @property
    def level_score(self) -> float:
        """Return the largest level score of a judged feature (how far its median left the training windows')."""
        return max((drift.level_score for drift in self.features if drift.judged), default=0.0)

    @property
    def drifted(self) -> bool:
        """Return whether any feature or prediction check found drift."""
        return bool(self.drifted_features) or any(check.drifted for check in self.predictions)

    def reason(self) -> str:
        """Return one line naming what drifted, with numbers, or that nothing did."""
        parts = [_drift_text(drift, self.thresholds) for drift in self.drifted_features[:3]]
        more = len(self.drifted_features) - 3
        parts += [f"{more} more feature(s)"] if more > 0 else []
        parts += [f"{check.name}: {check.detail}" for check in self.predictions if check.drifted]
        if parts:
            return "drift: " + "; ".join(parts)
        return (f"no drift in {len(self.features)} features (largest KS score {self.drift_score:.2f}, ks_excess {self.thresholds.ks_excess:g}; "
                f"largest level score {self.level_score:.2f}, level_excess {self.thresholds.level_excess:g})")


def _drift_text(drift: FeatureDrift, thresholds: DriftThresholds) -> str:
    """Return what made a drifted feature drift: its KS against the training windows', or its median beyond theirs."""
    if drift.score >= thresholds.ks_excess or drift.median is None or drift.median_range is None:
        return f"{drift.feature} PSI {drift.psi:.2f}, KS {drift.ks:.2f} (training windows up to {drift.ks_null:.2f})"
    low, high = drift.median_range
    return f"{drift.feature} PSI {drift.psi:.2f}, median {drift.median:+.3g} (training windows {low:+.3g} to {high:+.3g})"


@dataclass(frozen=True)
class Decision:
    """What the monitor does about an assessment, and why."""

    action: str
    reason: str


def stable_profile(store: ModelStore, model_name: str) -> tuple[str, dict, str]:
    """Return the stable version, its profile and the source of its data, or raise MonitorError naming what is missing and the fix."""
    stable = store.read_index(model_name).get("stable")
    if not stable:
        raise MonitorError(f"{model_name} has no stable version in {store.location}: run its retrain pipeline first")
    record = store.version_record(model_name, stable)
    profile = record.get("profile") or {}
    if "seasonal" not in profile or "features" not in profile:
        raise MonitorError(f"{model_name} {stable} was saved without a drift profile (an older release); retrain once to record one")
    return stable, profile, record.get("data_source") or "unknown"


def assess(
    profile: dict, stable_version: str, live_raw: pd.DataFrame, window: str, model_name: str, settings: MonitorSettings,
    predictions: list[PredictionCheck],
) -> Assessment:
    """Measure every feature's drift of ``live_raw`` from ``profile`` and bundle it with the prediction checks."""
    from components.monitoring.drift import measure_drift

    return Assessment(model_name, stable_version, window, settings.thresholds, measure_drift(profile, live_raw, model_name), predictions)


def live_prediction_stats(client: PrometheusClient, model_name: str, version: str, window_minutes: int, end: dt.datetime,
                          scope: str = "") -> dict:
    """Return what the runtime counted for ``version`` in the window (``scope``: extra label matchers such as its namespace), by the
    spec's type: anomaly and normal outcomes, classification answers and alerts, or each forecast output's sum and count."""
    spec = spec_for(model_name)
    selector = f'model="{model_name}",version="{version}"{scope}'

    def increase(series: str) -> float:
        return _scalar(client, f"sum(increase({series}[{window_minutes}m]))", end)

    if spec.type == ANOMALY:
        return {outcome: increase(f'model_predictions_total{{{selector},outcome="{outcome}"}}') for outcome in ("anomaly", "normal")}
    if spec.type == CLASSIFICATION:
        return {"alerts": increase(f"model_alerts_total{{{selector}}}"), "answered": increase(f"model_predictions_total{{{selector}}}")}
    forecasts = {}
    for output in (value.name for value in spec.outputs.values):
        labelled = f'{selector},output="{output}"'
        forecasts[output] = {"sum": increase(f"model_forecast_sum{{{labelled}}}"), "count": increase(f"model_forecast_count{{{labelled}}}")}
    return {"forecasts": forecasts}


def _scalar(client: PrometheusClient, query: str, end: dt.datetime) -> float:
    """Return an instant query's single value at ``end`` (0 when the series does not exist)."""
    result = client.query(query, at=end)
    return float(result[0]["value"][1]) if result else 0.0


def unmeasured_predictions(why: str) -> list[PredictionCheck]:
    """Return the prediction check of a window whose live predictions could not be read, saying why."""
    return [PredictionCheck("predictions", False, False, f"not measured: {why}")]


def validation_profile(metrics: dict[str, float]) -> dict[str, float]:
    """Return what the model did on validation, from its evaluation metrics: anomaly rate, alert rate, or error per output."""
    kept = {key: float(value) for key, value in metrics.items()
            if (key in ("anomaly_rate", "alert_rate") or key.startswith("mae_")) and isinstance(value, (int, float)) and math.isfinite(value)}
    return dict(sorted(kept.items()))


def prediction_checks(model_name: str, validation: dict, live_raw: pd.DataFrame, stats: dict, settings: MonitorSettings) -> list[PredictionCheck]:
    """Return the checks of what the model answered, by the spec's type: the anomaly rate or the alert rate against
    validation's, or each output's forecast bias against validation's MAE."""
    spec = spec_for(model_name)
    factor = settings.live_factor(spec)
    if spec.type == ANOMALY:
        return [_rate_check("anomaly rate", stats["anomaly"], stats["anomaly"] + stats["normal"], validation.get("anomaly_rate"), factor, settings)]
    if spec.type == CLASSIFICATION:
        return [_rate_check("alert rate", stats["alerts"], stats["answered"], validation.get("alert_rate"), factor, settings)]
    checks = []
    for output, forecast in stats["forecasts"].items():
        if forecast["count"] < settings.min_predictions:
            checks.append(PredictionCheck(f"{output} forecast", False, False, f"inconclusive: {forecast['count']:.0f} live forecasts < {settings.min_predictions}"))
            continue
        bias = forecast["sum"] / forecast["count"] - float(live_raw[output].mean())
        mae = validation.get(f"mae_{output}")
        if not mae:
            checks.append(PredictionCheck(f"{output} forecast", False, False, f"bias {bias:+.3f}; the profile has no validation MAE"))
            continue
        limit = factor * mae
        checks.append(PredictionCheck(f"{output} forecast", True, abs(bias) > limit,
                                      f"live bias {bias:+.3f} on {forecast['count']:.0f} forecasts, limit {limit:.3f} ({factor:g} x validation MAE)"))
    return checks


def _rate_check(name: str, counted: float, answered: float, reference: float | None, factor: float, settings: MonitorSettings) -> PredictionCheck:
    """Return the check of a live rate (``counted`` of ``answered`` predictions) against ``factor`` times validation's ``reference``."""
    if answered < settings.min_predictions:
        return PredictionCheck(name, False, False, f"inconclusive: {answered:.0f} live predictions < {settings.min_predictions}")
    live_rate = counted / answered
    if reference is None:
        return PredictionCheck(name, False, False, f"live {live_rate:.3f}; the profile has no validation {name}")
    limit = max(factor * reference, 0.01)
    return PredictionCheck(name, True, live_rate > limit, f"live {live_rate:.3f} on {answered:.0f} predictions, validation {reference:.3f} (limit {limit:.3f})")


def last_retrain(index: dict) -> dt.datetime | None:
    """Return when the model was last retrained or a retrain was triggered, from the index history."""
    times = [dt.datetime.fromisoformat(event["at"]) for event in index.get("history", []) if event.get("event") in RETRAIN_EVENTS]
    return max(times, default=None)


def next_episode(index: dict, drifted: bool, window_start: dt.datetime, now: dt.datetime, source: str) -> dict | None:
    """Return the drift episode after this check: None when it did not drift, else the episode it opens or continues.

    An episode's ``onset`` is the start of its first drifted check's window (the new regime began within it), on the
    timeline of its data ``source``; ``since`` is when retrains began to count against it (its opening, or the last time
    the stable version changed after a human was needed).
    """
    if not drifted:
        return None
    episode = dict(index.get(EPISODE_KEY) or {})
    if not episode:
        episode = {"onset": window_start.isoformat(), "source": source, "since": now.isoformat(timespec="seconds"), "checks": 0}
    if episode.get("needs_human_for") and episode["needs_human_for"] != index.get("stable"):
        # The profile changed (a new stable version): count retrains afresh against it.
        episode.update(since=now.isoformat(timespec="seconds"), needs_human_for=None)
    episode["checks"] += 1
    return episode


def promoted_retrains(index: dict, since: str) -> int:
    """Return how many candidates were promoted at or after ``since`` (an ISO time)."""
    return sum(1 for event in index.get("history", []) if event.get("at", "") >= since and event.get("event") == "promoted")


def decide(
    assessment: Assessment, index: dict, now: dt.datetime, settings: MonitorSettings, active_run: str | None,
    episode: dict | None = None, data_end: dt.datetime | None = None,
) -> Decision:
    """Return ``retrain`` only when drift was found, enough of the new regime is there to learn, the cooldown has passed,
    no retrain of the model is running, and the drift has not outlasted ``max_retrains_per_episode`` promoted retrains.
    """
    if not assessment.drifted:
        return Decision(NO_ACTION, assessment.reason())
    if episode is not None:
        promoted = promoted_retrains(index, episode["since"])
        if episode.get("needs_human_for") or promoted >= settings.max_retrains_per_episode:
            return Decision(NEEDS_HUMAN, f"{assessment.reason()}; needs a human: drift persists after {promoted} retrains since "
                                         f"{episode['onset'][:16]} UTC; not retrained again until the stable version changes or a run "
                                         "with action=clear forgets the episode")
        hours = ((data_end or now) - dt.datetime.fromisoformat(episode["onset"])).total_seconds() / 3600
        if hours < settings.min_regime_hours:
            return Decision(HELD, f"{assessment.reason()}; held: waiting for the new regime ({hours:.0f} of {settings.min_regime_hours:g} hours)")
    if active_run:
        return Decision(HELD, f"{assessment.reason()}; held: a retrain is still running ({active_run})")
    last = last_retrain(index)
    if last is not None and now - last < dt.timedelta(hours=settings.cooldown_hours):
        until = last + dt.timedelta(hours=settings.cooldown_hours)
        return Decision(HELD, f"{assessment.reason()}; held: last retrain at {last:%Y-%m-%d %H:%M} UTC, cooldown "
                              f"{settings.cooldown_hours:g} h until {until:%Y-%m-%d %H:%M} UTC")
    return Decision(RETRAIN, assessment.reason())


def record_episode(store: ModelStore, model_name: str, episode: dict | None) -> None:
    """Write the drift episode after a check into the index (None: close it, with a history event if one was open)."""

    def apply(index: dict) -> None:
        previous = index.get(EPISODE_KEY)
        if episode is None:
            index.pop(EPISODE_KEY, None)
            if previous:
                index["history"].append({"at": utc_now(), "event": "drift-cleared", "version": index.get("stable"),
                                         "detail": f"drift since {previous['onset'][:16]} UTC ended after {previous['checks']} drifted checks"})
        else:
            index[EPISODE_KEY] = episode
            if not previous:
                index["history"].append({"at": utc_now(), "event": "drift-onset", "version": index.get("stable"),
                                         "detail": f"drift began in the window from {episode['onset'][:16]} UTC"})

    store.update_index(model_name, apply)


def record_trigger(store: ModelStore, model_name: str, stable_version: str, reason: str, run: str) -> None:
    """Append the trigger, its reason and the run it started to the model's index history (starts the cooldown)."""

    def append(index: dict) -> None:
        index["history"].append({"at": utc_now(), "event": TRIGGER_EVENT, "version": stable_version, "detail": f"{reason}; started {run}"})

    store.update_index(model_name, append)


def push_drift_metrics(pushgateway_url: str, assessment: Assessment, decision: Decision, timeout_s: float = 10.0) -> str:
    """Replace the model's drift gauges on a Prometheus Pushgateway (what the drift alerts read); return "" or a warning."""
    import requests

    labels = f'version="{assessment.stable_version}"'
    body = "".join(f"# TYPE {name} gauge\n{name}{{{labels}}} {value}\n" for name, value in (
        ("model_drift_score", round(assessment.drift_score, 4)),
        ("model_drift_level_score", round(assessment.level_score, 4)),
        ("model_drifted_features", len(assessment.drifted_features)),
        ("model_drift_retrain_decision", int(decision.action == RETRAIN)),
        ("model_drift_needs_human", int(decision.action == NEEDS_HUMAN)),
        ("model_drift_check_timestamp_seconds", round(dt.datetime.now(dt.timezone.utc).timestamp())),
    ))
    url = f"{pushgateway_url.rstrip('/')}/metrics/job/model-monitor/model/{assessment.model_name}"
    try:
        answer = requests.put(url, data=body.encode(), timeout=timeout_s, allow_redirects=False)
    except requests.RequestException as error:
        return f"warning: drift metrics not pushed: cannot reach the Pushgateway at {pushgateway_url} ({error.__class__.__name__}); check pushgateway_url"
    if answer.status_code >= 300:
        return f"warning: drift metrics not pushed: the Pushgateway at {pushgateway_url} answered {answer.status_code}: {answer.text[:160]}"
    return ""


def drift_table(assessment: Assessment, top: int = TOP_FEATURES) -> list[str]:
    """Return the most drifted features as fixed-width lines for the terminal."""
    lines = [f"  {'feature':<40} {'PSI':>7} {'KS':>6} {'train':>6} {'score':>6} {'level':>6}  drifted"]
    for drift in assessment.features[:top]:
        lines.append(f"  {drift.feature:<40} {drift.psi:7.3f} {drift.ks:6.3f} {drift.ks_null:6.3f} {drift.score:6.3f} {_level_cell(drift):>6}  "
                     f"{'YES' if drift.drifted(assessment.thresholds) else 'no' if drift.judged else 'not judged'}")
    lines += [f"  {check.name}: {check.detail}" for check in assessment.predictions]
    return lines


def _level_cell(drift: FeatureDrift) -> str:
    """Return a feature's level score for a table, or "-" where the profile keeps no medians for it."""
    return f"{drift.level_score:.3f}" if drift.median_range else "-"


def markdown_report(assessment: Assessment, decision: Decision, plot_name: str = "") -> str:
    """Return the Markdown report: decision, thresholds, the top drifted features and the prediction checks."""
    thresholds = assessment.thresholds
    lines = [
        f"# Drift check: {assessment.model_name} (stable {assessment.stable_version})",
        "",
        f"**Decision: {decision.action}** - {html.escape(decision.reason, quote=False)}",
        "",
        f"Window: {html.escape(assessment.window, quote=False)}. A feature drifts when its PSI >= {thresholds.psi:g} and either its KS "
        f"statistic exceeds the largest of any training window of the same length by {thresholds.ks_excess:g} of the way to 1 (score), "
        f"or its median lies beyond every such window's median by {thresholds.level_excess:g} of their range (level).",
        "",
        "| feature | PSI | KS | KS of training windows | score | median | medians of training windows | level | drifted |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for drift in assessment.features[:TOP_FEATURES]:
        medians = f"{drift.median_range[0]:+.3g} to {drift.median_range[1]:+.3g}" if drift.median_range else "-"
        median = f"{drift.median:+.3g}" if drift.median is not None else "-"
        lines.append(f"| {drift.feature} | {drift.psi:.3f} | {drift.ks:.3f} | {drift.ks_null:.3f} | {drift.score:.3f} | {median} | {medians} | "
                     f"{_level_cell(drift)} | "
                     f"{'**yes**' if drift.drifted(thresholds) else 'no' if drift.judged else 'not judged'} |")
    lines += ["", "| prediction check | measured | drifted | detail |", "|---|---|---|---|"]
    lines += [f"| {check.name} | {'yes' if check.measured else 'no'} | {'**yes**' if check.drifted else 'no'} | {html.escape(check.detail, quote=False)} |"
              for check in assessment.predictions]
    if plot_name:
        lines += ["", f"![reference against live distributions]({plot_name})"]
    return "\n".join(lines) + "\n"


def distribution_plot(assessment: Assessment, profile: dict, top: int = 3) -> bytes:
    """Return a PNG of the training (reference) against the live bin fractions of the ``top`` most drifted features."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = assessment.features[:top]
    figure, axes = plt.subplots(1, max(len(shown), 1), figsize=(4.5 * max(len(shown), 1), 3.2), squeeze=False)
    for axis, drift in zip(axes[0], shown):
        reference = profile["features"][drift.feature]["fractions"]
        positions = np.arange(len(reference))
        axis.bar(positions - 0.2, reference, width=0.4, label="training")
        axis.bar(positions + 0.2, drift.live_fractions, width=0.4, label="live")
        axis.set_title(f"{drift.feature}\nPSI {drift.psi:.2f}  KS {drift.ks:.2f}", fontsize=9)
        axis.set_xlabel("training quantile bin (deseasonalised)")
        axis.set_ylabel("fraction of minutes")
    axes[0][0].legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return buffer.getvalue()
