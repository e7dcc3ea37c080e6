"""evaluate: validation metrics, contract checks, absolute gates and champion/challenger, as one decision."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field

import joblib
import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score, roc_curve

from components.model.contract import (
    ANOMALY_DETECTOR,
    engineer_features,
    fallback_instance,
    feature_labels,
    forecast_pairs,
    schema_for,
)
from components.model.settings import Gates

LATENCY_REPEATS = 50
ROC_POINTS = 101


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


def score_detector(estimator: object, validation: pd.DataFrame) -> tuple[dict[str, float], list[list[int]] | None, tuple | None]:
    """Return detector metrics (precision, recall, F1, ROC-AUC), its confusion matrix and ROC curve points.

    Cluster metrics usually carry no labels: then only the anomaly rate is measured (no matrix, no curve).
    """
    features = engineer_features(validation, ANOMALY_DETECTOR).to_numpy()
    labels = feature_labels(validation, ANOMALY_DETECTOR)
    flagged = (np.asarray(estimator.predict(features)) == -1).astype(int)
    if labels is None:
        return {"anomaly_rate": float(flagged.mean())}, None, None
    metrics = {**detection_scores(labels, flagged), "anomaly_rate": float(flagged.mean())}
    matrix = confusion_matrix(labels, flagged, labels=[0, 1]).tolist()
    roc = None
    if 0 < labels.sum() < len(labels):
        anomaly_score = -np.asarray(estimator.decision_function(features), dtype=float)
        metrics["roc_auc"] = float(roc_auc_score(labels, anomaly_score))
        fpr, tpr, thresholds = roc_curve(labels, anomaly_score)
        keep = np.unique(np.linspace(0, len(fpr) - 1, min(ROC_POINTS, len(fpr))).astype(int))
        finite = np.nan_to_num(thresholds[keep], posinf=float(anomaly_score.max()) + 1.0)
        roc = (fpr[keep].tolist(), tpr[keep].tolist(), finite.tolist())
    return metrics, matrix, roc


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


def single_row_latency_ms(estimator: object, row: np.ndarray, repeats: int = LATENCY_REPEATS) -> float:
    """Return the median milliseconds of ``estimator.predict`` on the one-row matrix ``row``."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        estimator.predict(row)
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


def score_forecaster(estimator: object, validation: pd.DataFrame, horizon_minutes: int) -> dict[str, float]:
    """Return MAE per output and MASE against persistence at the same horizon (plus their means)."""
    current, future = forecast_pairs(validation, horizon_minutes)
    predicted = np.asarray(estimator.predict(current), dtype=float)
    model_error = np.abs(predicted - future).mean(axis=0)
    against_persistence = mase(predicted, future, current)
    metrics: dict[str, float] = {}
    for index, name in enumerate(schema_for("predictive-analytics").metric_names):
        metrics[f"mae_{name}"] = float(model_error[index])
        metrics[f"mase_{name}"] = float(against_persistence[index])
    metrics["mae_mean"] = float(model_error.mean())
    metrics["mase_mean"] = float(np.mean([metrics[f"mase_{name}"] for name in schema_for("predictive-analytics").metric_names]))
    metrics["mase_max"] = float(max(metrics[f"mase_{name}"] for name in schema_for("predictive-analytics").metric_names))
    return metrics


def contract_checks(estimator: object, model_name: str, model_bytes: bytes, gates: Gates) -> tuple[dict[str, tuple[bool, str]], dict[str, float]]:
    """Return named pass/fail checks of output types and shapes, fallback, latency and size, and their measurements."""
    schema = schema_for(model_name)
    checks: dict[str, tuple[bool, str]] = {}
    rows = np.tile(np.array(fallback_instance() if model_name == ANOMALY_DETECTOR else [0.5] * 5, dtype=float), (3, 1))
    output = np.asarray(estimator.predict(rows))
    if model_name == ANOMALY_DETECTOR:
        ok = output.shape == (3,) and np.issubdtype(output.dtype, np.integer) and set(output.tolist()) <= {-1, 1}
        checks["output_type"] = (ok, f"predict returns {output.dtype} of shape {output.shape}; the engine needs integers -1/1, one per row")
        fallback = int(output[0])
        checks["fallback_normal"] = (fallback == 1, f"the engine's fallback vector is called {fallback} (1 = normal)")
    else:
        ok = output.shape == (3, schema.n_features) and np.issubdtype(output.dtype, np.floating)
        checks["output_type"] = (ok, f"predict returns {output.dtype} of shape {output.shape}; the engine needs 5 floats per row")
    latency_ms = single_row_latency_ms(estimator, rows[:1])
    checks["predict_latency"] = (
        latency_ms <= gates.max_predict_latency_ms,
        f"single-row predict takes {latency_ms:.2f} ms (limit {gates.max_predict_latency_ms:g} ms)",
    )
    size_mb = len(model_bytes) / 1e6
    checks["pickle_size"] = (size_mb <= gates.max_pickle_mb, f"model.pkl is {size_mb:.2f} MB (limit {gates.max_pickle_mb:g} MB)")
    return checks, {"predict_latency_ms": latency_ms, "pickle_mb": size_mb}


def score(estimator: object, model_name: str, validation: pd.DataFrame, horizon_minutes: int) -> dict[str, float]:
    """Return the validation metrics of any estimator for ``model_name`` (used for candidate and champion alike)."""
    if model_name == ANOMALY_DETECTOR:
        return score_detector(estimator, validation)[0]
    return score_forecaster(estimator, validation, horizon_minutes)


def evaluate_candidate(
    model_name: str,
    model_bytes: bytes,
    validation: pd.DataFrame,
    gates: Gates,
    *,
    horizon_minutes: int = 60,
    champion: tuple[str, object] | None = None,
) -> Evaluation:
    """Score a pickled candidate, run contract checks and gates, compare with the champion and decide."""
    estimator = joblib.load(io.BytesIO(model_bytes))
    checks, measured = contract_checks(estimator, model_name, model_bytes, gates)
    if not checks["output_type"][0]:
        evaluation = Evaluation(model_name, measured, checks, reason=f"output_type: {checks['output_type'][1]}")
        return evaluation
    confusion = roc = None
    if model_name == ANOMALY_DETECTOR:
        metrics, confusion, roc = score_detector(estimator, validation)
    else:
        metrics = score_forecaster(estimator, validation, horizon_minutes)
    metrics.update(measured)
    if model_name == ANOMALY_DETECTOR:
        if "f1" in metrics:
            checks["min_f1"] = (metrics["f1"] >= gates.min_f1, f"F1 {metrics['f1']:.3f} (gate {gates.min_f1:g})")
        else:
            checks["min_f1"] = (True, "validation data has no is_anomaly labels: F1 not measured, gate not applied")
        checks["max_anomaly_rate"] = (
            metrics["anomaly_rate"] <= gates.max_anomaly_rate,
            f"flags {metrics['anomaly_rate']:.1%} of validation rows (limit {gates.max_anomaly_rate:.0%})",
        )
    else:
        checks["max_mase"] = (
            metrics["mase_mean"] <= gates.max_mase,
            f"mean MASE {metrics['mase_mean']:.3f} against persistence (gate {gates.max_mase:g})",
        )
    evaluation = Evaluation(model_name, metrics, checks, confusion=confusion, roc=roc)
    if champion is not None:
        _compare_with_champion(evaluation, champion, validation, gates, horizon_minutes)
    failed = [f"{name}: {detail}" for name, (passed, detail) in checks.items() if not passed]
    evaluation.deploy = not failed
    evaluation.reason = "all checks passed" + (
        f"; not worse than champion {evaluation.champion_version}" if evaluation.champion_version else "; no champion yet"
    ) if not failed else "; ".join(failed)
    return evaluation


def _compare_with_champion(
    evaluation: Evaluation, champion: tuple[str, object], validation: pd.DataFrame, gates: Gates, horizon_minutes: int
) -> None:
    """Score the champion on the same validation data and add the champion/challenger check."""
    version, estimator = champion
    evaluation.champion_version = version
    try:
        evaluation.champion_metrics = score(estimator, evaluation.model_name, validation, horizon_minutes)
    except (ValueError, AttributeError) as error:
        evaluation.checks["champion"] = (True, f"champion {version} cannot be scored on this data ({error}); judged on gates alone")
        return
    if evaluation.model_name == ANOMALY_DETECTOR and "f1" not in evaluation.metrics:
        evaluation.checks["champion"] = (True, f"no labels to compare with champion {version}; judged on gates alone")
        return
    if evaluation.model_name == ANOMALY_DETECTOR:
        candidate, incumbent = evaluation.metrics["f1"], evaluation.champion_metrics["f1"]
        passed = candidate >= incumbent - gates.champion_tolerance
        detail = f"F1 {candidate:.3f} against champion {version} {incumbent:.3f} (tolerance {gates.champion_tolerance:g})"
    else:
        candidate, incumbent = evaluation.metrics["mase_mean"], evaluation.champion_metrics["mase_mean"]
        passed = candidate <= incumbent + gates.champion_tolerance
        detail = f"mean MASE {candidate:.3f} against champion {version} {incumbent:.3f} (tolerance {gates.champion_tolerance:g})"
    evaluation.checks["champion"] = (passed, detail)


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
