"""evaluate: any spec's candidate scored as its ADR-040 type says, with contract checks, gates and champion/challenger, as one decision.

The type brings the metrics (``SCORERS``) and what the smoke probe's answer must be (``ANSWER_CHECKS``):
- anomaly: precision, recall, F1, ROC AUC and the anomaly rate;
- predictive: MAE and MASE per output, their mean and max;
- classification: ROC AUC and average precision of the alert class's probability, with precision, recall and F1 at
  the alert threshold and the alert rate.

A gate ``min_*`` is a floor and ``max_*`` a ceiling on its metric (``resolve_gates``: the spec's limits with a run's
overrides). The champion is compared on the type's champion metric within ``champion_tolerance``.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, NamedTuple

import joblib
import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score, roc_curve

from components.model.contract import engineer_features, feature_labels, forecast_pairs
from components.model.spec import ANOMALY, CLASSIFICATION, PREDICTIVE, ModelSpec, use_spec
from components.model.train import spec_with_overrides

LATENCY_REPEATS = 50
ROC_POINTS = 101
PROBABILITY_TOLERANCE = 1e-6  # how far a row of probabilities may sum from 1
CHAMPION_TOLERANCE_KEY = "champion_tolerance"
LATENCY_GATE, SIZE_GATE = "max_predict_latency_ms", "max_pickle_mb"  # checked with the answers, as predict_latency and pickle_size
# How a gated metric reads in a check; a metric without an entry reads as its name.
METRIC_WORDS = {"f1": "F1", "mase_mean": "mean MASE", "roc_auc": "ROC AUC", "recall": "recall", "anomaly_rate": "anomaly rate",
                "alert_rate": "alert rate", "precision": "precision", "average_precision": "average precision"}
# A gate's detail, from the metric's value and the gate's limit; a gate without an entry reads "<words> <value> (gate <limit>)".
GATE_DETAILS = {
    "mase_mean": "mean MASE {value:.3f} against persistence (gate {limit:g})",
    "anomaly_rate": "flags {value:.1%} of validation rows (limit {limit:.0%})",
    "alert_rate": "alerts on {value:.1%} of validation rows (limit {limit:.0%})",
    "recall": "recall {value:.3f} of the alert class at the alert threshold (gate {limit:g})",
}


@dataclass
class Evaluation:
    """The metrics, checks and decision for one candidate on one validation set."""

    model_name: str
    metrics: dict[str, float]
    checks: dict[str, tuple[bool, str]]
    deploy: bool = False
    reason: str = ""
    champion_version: str | None = None
    champion_metrics: dict[str, float] = field(default_factory=dict)
    confusion: list[list[int]] | None = None
    roc: tuple[list[float], list[float], list[float]] | None = None
    categories: list[str] | None = None  # the confusion matrix's rows and columns, e.g. ["normal", "anomaly"] or the class names


class Scores(NamedTuple):
    """A type scorer's answer: the metrics, and the confusion matrix, its categories and the ROC curve when labels allow."""

    metrics: dict[str, float]
    confusion: list[list[int]] | None = None
    categories: list[str] | None = None
    roc: tuple[list[float], list[float], list[float]] | None = None


# --- shared measures ---------------------------------------------------------------------------------------------


def detection_scores(labels: np.ndarray, flagged: np.ndarray) -> dict[str, float]:
    """Return point-wise precision, recall and F1 of 0/1 ``flagged`` rows against 0/1 ``labels``."""
    return {
        "precision": float(precision_score(labels, flagged, zero_division=0)),
        "recall": float(recall_score(labels, flagged, zero_division=0)),
        "f1": float(f1_score(labels, flagged, zero_division=0)),
    }


def point_adjusted(labels: np.ndarray, flagged: np.ndarray) -> np.ndarray:
    """Return ``flagged`` with every labelled anomaly segment fully flagged when any of its rows is (point adjustment)."""
    adjusted = np.asarray(flagged, dtype=int).copy()
    edges = np.flatnonzero(np.diff(np.concatenate([[0], np.asarray(labels, dtype=int), [0]])))
    for start, end in zip(edges[::2], edges[1::2]):
        if adjusted[start:end].any():
            adjusted[start:end] = 1
    return adjusted


def single_row_latency_ms(estimator: object, row: np.ndarray, repeats: int = LATENCY_REPEATS, method: str = "predict") -> float:
    """Return the median milliseconds of ``estimator``'s ``method`` (what is served) on the one-row matrix ``row``."""
    served = getattr(estimator, method)
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        served(row)
        timings.append((time.perf_counter() - started) * 1000.0)
    return float(np.median(timings))


def mase(predicted: np.ndarray, actual: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Return, per column, the mean absolute error of ``predicted`` divided by that of ``baseline`` (the MASE).

    A column the baseline predicts exactly (a constant series) has no error to scale by; the forecast is then
    scored 1.0, as no better than the baseline.
    """
    model_error = np.abs(predicted - actual).mean(axis=0)
    baseline_error = np.abs(baseline - actual).mean(axis=0)
    return np.divide(model_error, baseline_error, out=np.ones_like(model_error), where=baseline_error > 0)


def roc_points(truth: np.ndarray, score: np.ndarray) -> tuple[list[float], list[float], list[float]]:
    """Return at most ``ROC_POINTS`` (false positive rate, true positive rate, threshold) points of the ROC curve, thresholds finite."""
    fpr, tpr, thresholds = roc_curve(truth, score)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(ROC_POINTS, len(fpr))).astype(int))
    finite = np.nan_to_num(thresholds[keep], posinf=float(score.max()) + 1.0)
    return fpr[keep].tolist(), tpr[keep].tolist(), finite.tolist()


# --- the type's metrics ------------------------------------------------------------------------------------------


def score_detector(spec: ModelSpec, estimator: object, validation: pd.DataFrame, knobs: Mapping[str, object]) -> Scores:
    """Return an anomaly model's precision, recall, F1, ROC AUC and anomaly rate, its confusion matrix and ROC curve.

    Cluster metrics usually carry no labels: then only the anomaly rate is measured (no matrix, no curve).
    """
    features = engineer_features(validation, spec.name).to_numpy()
    labels = feature_labels(validation, spec.name)
    flagged = (np.asarray(estimator.predict(features)) == spec.outputs.labels["anomaly"]).astype(int)
    if labels is None:
        return Scores({"anomaly_rate": float(flagged.mean())})
    metrics = {**detection_scores(labels, flagged), "anomaly_rate": float(flagged.mean())}
    matrix = confusion_matrix(labels, flagged, labels=[0, 1]).tolist()
    roc = None
    if 0 < labels.sum() < len(labels):
        anomaly_score = -np.asarray(estimator.decision_function(features), dtype=float)
        metrics["roc_auc"] = float(roc_auc_score(labels, anomaly_score))
        roc = roc_points(labels, anomaly_score)
    return Scores(metrics, matrix, ["normal", "anomaly"], roc)


def score_forecaster(spec: ModelSpec, estimator: object, validation: pd.DataFrame, knobs: Mapping[str, object]) -> Scores:
    """Return a predictive model's MAE per output and MASE against persistence at its horizon (plus their mean and max)."""
    current, future = forecast_pairs(validation, knobs["horizon_minutes"], spec.name)
    predicted = np.asarray(estimator.predict(current), dtype=float)
    model_error = np.abs(predicted - future).mean(axis=0)
    against_persistence = mase(predicted, future, current)
    names = [value.name for value in spec.outputs.values]
    metrics: dict[str, float] = {}
    for index, name in enumerate(names):
        metrics[f"mae_{name}"] = float(model_error[index])
        metrics[f"mase_{name}"] = float(against_persistence[index])
    metrics["mae_mean"] = float(model_error.mean())
    metrics["mase_mean"] = float(np.mean([metrics[f"mase_{name}"] for name in names]))
    metrics["mase_max"] = float(max(metrics[f"mase_{name}"] for name in names))
    return Scores(metrics)


def score_classifier(spec: ModelSpec, estimator: object, validation: pd.DataFrame, knobs: Mapping[str, object]) -> Scores:
    """Return a classifier's ROC AUC and average precision of the alert class's score, precision, recall and F1 at the alert
    threshold (predict's class without one) and its alert rate, with the confusion matrix of the classes and the ROC curve."""
    features = engineer_features(validation, spec.name).to_numpy()
    labels = feature_labels(validation, spec.name)
    alert = spec.outputs.alert_class.value
    score, flagged, decided = alert_scores(spec, estimator, features)
    metrics: dict[str, float] = {}
    if labels is None:
        return Scores({"alert_rate": float(flagged.mean())})
    truth = (labels == alert).astype(int)
    roc = None
    if 0 < truth.sum() < len(truth):
        metrics["roc_auc"] = float(roc_auc_score(truth, score))
        metrics["average_precision"] = float(average_precision_score(truth, score))
        roc = roc_points(truth, score)
    metrics.update({**detection_scores(truth, flagged), "alert_rate": float(flagged.mean())})
    classes = spec.outputs.classes
    matrix = confusion_matrix(labels, decided, labels=[item.value for item in classes]).tolist()
    return Scores(metrics, matrix, [item.name for item in classes], roc)


def alert_scores(spec: ModelSpec, estimator: object, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return, per row, a classifier's score for the alert class, whether it alerts (0/1) and the class it decides.

    The score is the alert class's probability (else its decision function for two classes, else whether predict names it).
    A row alerts when that probability is above ``outputs.alert.threshold``, or without an alert when predict names the
    class; a row that does not alert decides the likeliest other class.
    """
    alert = spec.outputs.alert_class.value
    predicted = np.asarray(estimator.predict(features))
    classes = list(getattr(estimator, "classes_", [item.value for item in spec.outputs.classes]))
    if hasattr(estimator, "predict_proba") and alert in classes:
        probabilities = np.asarray(estimator.predict_proba(features), dtype=float)
        score = probabilities[:, classes.index(alert)]
        flagged = score > spec.outputs.alert.threshold if spec.outputs.alert else predicted == alert
        others = probabilities.copy()
        others[:, classes.index(alert)] = -np.inf
        decided = np.where(flagged, alert, np.asarray(classes)[others.argmax(axis=1)])
        return score, flagged.astype(int), decided
    flagged = predicted == alert
    if hasattr(estimator, "decision_function") and len(classes) == 2 and alert in classes:
        decision = np.asarray(estimator.decision_function(features), dtype=float)
        score = decision if classes.index(alert) == 1 else -decision
    else:
        score = flagged.astype(float)
    return score, flagged.astype(int), predicted


# What each ADR-040 type measures on validation data: spec, estimator, validation frame, training knobs -> Scores.
SCORERS: dict[str, Callable[[ModelSpec, object, pd.DataFrame, Mapping[str, object]], Scores]] = {
    ANOMALY: score_detector,
    PREDICTIVE: score_forecaster,
    CLASSIFICATION: score_classifier,
}


# --- what the smoke probe must get -------------------------------------------------------------------------------


def _anomaly_answers(spec: ModelSpec, estimator: object, rows: np.ndarray) -> dict[str, tuple[bool, str]]:
    """Return the checks of an anomaly model's answer: integers of the declared labels, and the engine's fallback called normal."""
    output = np.asarray(estimator.predict(rows))
    allowed = sorted(spec.outputs.labels.values())
    ok = output.shape == (len(rows),) and np.issubdtype(output.dtype, np.integer) and set(output.tolist()) <= set(allowed)
    checks = {"output_type": (bool(ok), f"predict returns {output.dtype} of shape {output.shape}; the engine needs integers "
                                        f"{'/'.join(map(str, allowed))}, one per row")}
    if ok and spec.smoke is not None and spec.smoke.engine_fallback:
        called, normal = int(output[0]), spec.outputs.labels["normal"]
        checks["fallback_normal"] = (called == normal, f"the engine's fallback vector is called {called} ({normal} = normal)")
    return checks


def _predictive_answers(spec: ModelSpec, estimator: object, rows: np.ndarray) -> dict[str, tuple[bool, str]]:
    """Return the check of a predictive model's answer: a row of finite floats per instance, each within its output's range."""
    output = np.asarray(estimator.predict(rows))
    width = len(spec.outputs.values)
    ok = output.shape == (len(rows), width) and np.issubdtype(output.dtype, np.floating)
    detail = f"predict returns {output.dtype} of shape {output.shape}; the engine needs {width} floats per row"
    if ok:
        lows, highs = (np.array(bound, dtype=float) for bound in zip(*(value.range for value in spec.outputs.values)))
        outside = ~np.isfinite(output) | (output < lows) | (output > highs)
        if outside.any():
            ok, detail = False, f"{detail}, each within its output's range: {int(outside.sum())} value(s) are not"
    return {"output_type": (bool(ok), detail)}


def _classification_answers(spec: ModelSpec, estimator: object, rows: np.ndarray) -> dict[str, tuple[bool, str]]:
    """Return the checks of a classifier's answer: declared classes (probability rows summing to 1), and the probe below the alert threshold."""
    declared = [item.value for item in spec.outputs.classes]
    classes = [int(value) for value in getattr(estimator, "classes_", [])]
    if not spec.outputs.probabilities:
        output = np.asarray(estimator.predict(rows))
        ok = output.shape == (len(rows),) and set(output.tolist()) <= set(declared)
        return {"output_type": (bool(ok), f"predict returns {output.tolist()[:3]} of shape {output.shape}; the spec's classes are {declared}, one per row")}
    if not hasattr(estimator, "predict_proba"):
        return {"output_type": (False, f"{type(estimator).__name__} has no predict_proba, and the stock runtime serves it (PREDICT_PROBA=true)")}
    output = np.asarray(estimator.predict_proba(rows), dtype=float)
    sums = output.sum(axis=1) if output.ndim == 2 else np.array([np.nan])
    ok = (output.shape == (len(rows), len(declared)) and classes == declared and bool(np.isfinite(output).all())
          and bool(np.all(np.abs(sums - 1.0) <= PROBABILITY_TOLERANCE)))
    names = ", ".join(f"p({item.name})" for item in spec.outputs.classes)
    checks = {"output_type": (ok, f"predict_proba returns shape {output.shape} for classes {classes}, rows summing to "
                                  f"{', '.join(f'{value:.6g}' for value in sums)}; the served answer is one row [{names}] per instance, summing to 1")}
    alert = spec.outputs.alert
    if ok and alert is not None and spec.smoke is not None:
        probability = float(output[0, declared.index(alert.class_value)])
        checks["probe_below_alert"] = (probability <= alert.threshold, f"the smoke probe gets p({spec.outputs.alert_class.name}) "
                                                                       f"{probability:.3f} (alert above {alert.threshold:g})")
    return checks


# What each ADR-040 type's answer to the smoke probe must be.
ANSWER_CHECKS: dict[str, Callable[[ModelSpec, object, np.ndarray], dict[str, tuple[bool, str]]]] = {
    ANOMALY: _anomaly_answers,
    PREDICTIVE: _predictive_answers,
    CLASSIFICATION: _classification_answers,
}


def probe_instance(spec: ModelSpec, validation: pd.DataFrame) -> np.ndarray:
    """Return the instance the contract checks send: the spec's smoke probe, else the first validation instance."""
    if spec.smoke is not None:
        return np.array(spec.smoke.instance, dtype=float)
    return engineer_features(validation, spec.name).to_numpy(dtype=float)[0]


def contract_checks(spec: ModelSpec, estimator: object, model_bytes: bytes, limits: Mapping[str, float],
                    probe: np.ndarray) -> tuple[dict[str, tuple[bool, str]], dict[str, float]]:
    """Return named pass/fail checks of the answer to ``probe`` (as the type expects), latency and size, and their measurements."""
    rows = np.tile(probe, (3, 1))
    checks = ANSWER_CHECKS[spec.type](spec, estimator, rows)
    latency_ms = single_row_latency_ms(estimator, rows[:1], method=spec.served_method)
    checks["predict_latency"] = (
        latency_ms <= limits[LATENCY_GATE],
        f"single-row {spec.served_method} takes {latency_ms:.2f} ms (limit {limits[LATENCY_GATE]:g} ms)",
    )
    size_mb = len(model_bytes) / 1e6
    checks["pickle_size"] = (size_mb <= limits[SIZE_GATE], f"model.pkl is {size_mb:.2f} MB (limit {limits[SIZE_GATE]:g} MB)")
    return checks, {"predict_latency_ms": latency_ms, "pickle_mb": size_mb}


# --- gates and the decision --------------------------------------------------------------------------------------


def resolve_gates(spec: ModelSpec, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """Return ``spec``'s gate limits and champion tolerance with a run's ``overrides``; raise ValueError naming an unknown key and the known ones."""
    limits = {gate.name: gate.limit for gate in spec.gates.gates} | {CHAMPION_TOLERANCE_KEY: spec.gates.champion_tolerance}
    for key, value in (overrides or {}).items():
        if key not in limits:
            raise ValueError(f"{key!r} is not a gate of {spec.name} ({spec.type} model): use one of {', '.join(limits)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"gate {key} takes a number, got {value!r}")
        limits[key] = float(value)
    return limits


def gate_check(spec: ModelSpec, name: str, metric: str, limit: float, metrics: Mapping[str, float], validation: pd.DataFrame) -> tuple[bool, str]:
    """Return whether ``metrics`` pass the gate ``name`` on ``metric`` (``min_*`` a floor, ``max_*`` a ceiling) and its detail.

    A metric that the validation data cannot give (no labels, or one class only) fails the gate when the type requires
    labels, and is not applied when they are optional.
    """
    words = METRIC_WORDS.get(metric, metric)
    if metric not in metrics:
        column = spec.labels.column if spec.labels else "label"
        why = f"has no {column} labels" if column not in validation.columns else "holds one class only"
        required = spec.behaviour.labels == "required"
        return (not required, f"validation data {why}: {words} not measured, " + ("so it cannot pass" if required else "gate not applied"))
    value = metrics[metric]
    passed = value >= limit if name.startswith("min_") else value <= limit
    return passed, GATE_DETAILS.get(metric, f"{words} {{value:.3f}} (gate {{limit:g}})").format(value=value, limit=limit)


def score(spec: ModelSpec, estimator: object, validation: pd.DataFrame, knobs: Mapping[str, object]) -> dict[str, float]:
    """Return the validation metrics of any estimator for ``spec`` (used for candidate and champion alike)."""
    return SCORERS[spec.type](spec, estimator, validation, knobs).metrics


def evaluate_candidate(
    spec: ModelSpec,
    model_bytes: bytes,
    validation: pd.DataFrame,
    gate_limits: Mapping[str, float] | None = None,
    champion: tuple[str, object] | None = None,
    *,
    training: Mapping[str, object] | None = None,
) -> Evaluation:
    """Score a pickled candidate of ``spec`` as its type says, run the contract checks and gates, compare with the champion and decide.

    ``gate_limits`` overrides the spec's gates (``resolve_gates``); ``training`` is the run's training overrides
    (``train.spec_with_overrides``), of which the type's knobs count here (the forecaster's horizon).
    """
    use_spec(spec)
    limits = resolve_gates(spec, gate_limits)
    knobs = spec_with_overrides(spec, training).estimator.training
    estimator = joblib.load(io.BytesIO(model_bytes))
    checks, measured = contract_checks(spec, estimator, model_bytes, limits, probe_instance(spec, validation))
    if not checks["output_type"][0]:
        return Evaluation(spec.name, measured, checks, reason=f"output_type: {checks['output_type'][1]}")
    scores = SCORERS[spec.type](spec, estimator, validation, knobs)
    metrics = {**scores.metrics, **measured}
    for gate in spec.behaviour.gates:
        checks[gate.name] = gate_check(spec, gate.name, gate.metric, limits[gate.name], metrics, validation)
    evaluation = Evaluation(spec.name, metrics, checks, confusion=scores.confusion, roc=scores.roc, categories=scores.categories)
    if champion is not None:
        _compare_with_champion(spec, evaluation, champion, validation, limits[CHAMPION_TOLERANCE_KEY], knobs)
    failed = [f"{name}: {detail}" for name, (passed, detail) in checks.items() if not passed]
    evaluation.deploy = not failed
    evaluation.reason = "all checks passed" + (
        f"; not worse than champion {evaluation.champion_version}" if evaluation.champion_version else "; no champion yet"
    ) if not failed else "; ".join(failed)
    return evaluation


def _compare_with_champion(spec: ModelSpec, evaluation: Evaluation, champion: tuple[str, object], validation: pd.DataFrame,
                           tolerance: float, knobs: Mapping[str, object]) -> None:
    """Score the champion on the same validation data and add the champion/challenger check on the type's champion metric.

    Higher is better for a metric with a floor (``min_*`` gate), lower for one with a ceiling.
    """
    version, estimator = champion
    evaluation.champion_version = version
    try:
        evaluation.champion_metrics = score(spec, estimator, validation, knobs)
    except (ValueError, AttributeError) as error:
        evaluation.checks["champion"] = (True, f"champion {version} cannot be scored on this data ({error}); judged on gates alone")
        return
    metric = spec.gates.champion_metric
    if metric not in evaluation.metrics or metric not in evaluation.champion_metrics:
        evaluation.checks["champion"] = (True, f"no labels to compare with champion {version}; judged on gates alone")
        return
    candidate, incumbent = evaluation.metrics[metric], evaluation.champion_metrics[metric]
    higher_is_better = any(gate.metric == metric and gate.name.startswith("min_") for gate in spec.gates.gates)
    passed = candidate >= incumbent - tolerance if higher_is_better else candidate <= incumbent + tolerance
    words = METRIC_WORDS.get(metric, metric)
    evaluation.checks["champion"] = (passed, f"{words} {candidate:.3f} against champion {version} {incumbent:.3f} (tolerance {tolerance:g})")


def markdown_report(evaluation: Evaluation, data_description: str) -> str:
    """Return the evaluation as a Markdown report for the dashboard."""
    lines = [
        f"# {evaluation.model_name}: evaluation",
        "",
        f"**Decision:** {'deploy' if evaluation.deploy else 'do not deploy'} ({evaluation.reason})",
        "",
        f"Data: {data_description}",
        "",
        "| metric | candidate | champion |",
        "|---|---|---|",
    ]
    for name, value in evaluation.metrics.items():
        incumbent = evaluation.champion_metrics.get(name)
        lines.append(f"| {name} | {value:.4f} | {'' if incumbent is None else f'{incumbent:.4f}'} |")
    lines += ["", "| check | result | detail |", "|---|---|---|"]
    for name, (passed, detail) in evaluation.checks.items():
        lines.append(f"| {name} | {'pass' if passed else 'FAIL'} | {detail} |")
    return "\n".join(lines) + "\n"
