"""Model quality on real server data: the pipeline's default recipes against the upstream recipes, in one run.

Every number comes from the project's own code path: ``contract.metric_features`` (the 9 features per metric),
``train.fit_outlier_detector`` / ``train.fit_regressor`` with the built-in specs as they stand, and the scoring helpers
of ``evaluate``. Thresholds come from training data only; test labels are used for scoring, never for tuning.
"""

from __future__ import annotations

import gzip
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import RobustScaler

from components.model.contract import (
    ANOMALY_DETECTOR,
    PREDICTIVE_ANALYTICS,
    WINDOW_MINUTES,
    ContractError,
    horizon_pairs,
    metric_features,
    schema_for,
    validate_raw_metrics,
)
from components.model.evaluate import detection_scores, mase, point_adjusted, single_row_latency_ms
from components.model.spec import spec_for
from components.model.train import fit_outlier_detector, fit_regressor

RECIPES = ("project", "upstream")
# NAB's convention: the first 15 % of each series is the probationary period, used here for training.
NAB_PROBATION_FRACTION = 0.15
TRACE_STEP_SECONDS = 300
HORIZON_SECONDS = 3600
SEASON_SECONDS = 86400
FORECAST_TRAIN_FRACTION = 0.7
# Each trace mapped to the forecaster's columns in contract units (ratios 0-1); absent columns are not scored.
TRACES: dict[str, tuple[str, dict[str, tuple[str, float]]]] = {
    "alibaba2018": (
        "alibaba2018/machine_usage_days_1_to_8_grouped_300_seconds.csv",
        {
            "cpu": ("cpu_util_percent", 100.0),
            "memory": ("mem_util_percent", 100.0),
            "disk": ("disk_io_percent", 100.0),
            "network_in": ("net_in", 100.0),
            "network_out": ("net_out", 100.0),
        },
    ),
    "google2019": (
        "google2019/instance_usage_grouped_300_seconds_month.csv",
        {"cpu": ("avg_cpu", 1.0), "memory": ("avg_mem", 1.0)},
    ),
}


@dataclass
class DetectorRun:
    """One recipe fitted on one series: its flags on the scored rows, fit time and single-row latency."""

    flagged: np.ndarray
    fit_s: float
    predict_ms: float


def upstream_detector() -> Pipeline:
    """Return the platform's upstream recipe: RobustScaler and IsolationForest(200 trees, contamination 0.05)."""
    return Pipeline([("scaler", RobustScaler()), ("detector", IsolationForest(n_estimators=200, contamination=0.05, random_state=42))])


def fit_project_detector(train_features: np.ndarray) -> Pipeline:
    """Return the pipeline's default detector recipe fitted on ``train_features`` (threshold from training rows)."""
    return fit_outlier_detector(spec_for(ANOMALY_DETECTOR), train_features)[0]


def fit_upstream_detector(train_features: np.ndarray) -> Pipeline:
    """Return the upstream detector fitted on ``train_features`` (threshold from its contamination)."""
    return upstream_detector().fit(train_features)


DETECTORS: dict[str, Callable[[np.ndarray], Pipeline]] = {"project": fit_project_detector, "upstream": fit_upstream_detector}
SCALING_SHARES = (0.25, 0.5, 1.0)  # fit-scaling fits each recipe on these leading shares of one machine's training rows


def run_detector(fit: Callable[[np.ndarray], Pipeline], train_features: np.ndarray, test_features: np.ndarray) -> DetectorRun:
    """Fit one recipe, flag the test rows (1 = anomaly) and time the fit and a single-row predict."""
    started = time.perf_counter()
    model = fit(train_features)
    fit_s = time.perf_counter() - started
    flagged = (np.asarray(model.predict(test_features)) == -1).astype(int)
    return DetectorRun(flagged, fit_s, single_row_latency_ms(model, test_features[:1]))


def fit_scaling(train_features: np.ndarray, shares: tuple[float, ...] = SCALING_SHARES, repeats: int = 3) -> dict[str, dict]:
    """Return each recipe's median fit seconds on the first ``share`` of the training rows, per share, and its cost per row
    over the smallest share's in the same run (1.0: linear in rows; 2.0: twice the cost per row)."""
    result: dict[str, dict] = {}
    for recipe, fit in DETECTORS.items():
        sizes = {}
        for share in shares:
            rows = train_features[: max(1, int(len(train_features) * share))]
            timings = []
            for _ in range(repeats):
                started = time.perf_counter()
                fit(rows)
                timings.append(time.perf_counter() - started)
            sizes[f"{share:g}"] = {"rows": len(rows), "fit_s": float(np.median(timings))}
        smallest = next(iter(sizes.values()))
        for size in sizes.values():
            size["cost_per_row_ratio"] = (size["fit_s"] / size["rows"]) / (smallest["fit_s"] / smallest["rows"])
        result[recipe] = sizes
    return result


def features_with_history(train: pd.DataFrame, test: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Return the 9-per-metric features of ``train`` and of every ``test`` row, the latter using train's last minutes."""
    columns = list(train.columns)
    train_features = metric_features(train, columns).to_numpy()
    streamed = pd.concat([train.iloc[-WINDOW_MINUTES:], test], ignore_index=True)
    return train_features, metric_features(streamed, columns).to_numpy()


def read_matrix(path: Path) -> pd.DataFrame:
    """Return an SMD-format file (CSV without header, gzip or plain) as a float frame, refusing NaN or inf."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        frame = pd.read_csv(handle, header=None).astype(float)
    frame.columns = [f"m{index}" for index in frame.columns]
    if not np.isfinite(frame.to_numpy()).all():
        raise ContractError(f"{path}: contains NaN or inf values; fill or drop those rows first")
    return frame


def smd_machines(data_dir: Path) -> list[str]:
    """Return the machine names found under an SMD-format directory (``train/<machine>.txt[.gz]``)."""
    names = sorted(path.name.split(".txt")[0] for path in (data_dir / "train").glob("*.txt*"))
    if not names:
        raise ContractError(f"{data_dir}: no SMD data found; expected train/<machine>.txt.gz, test/ and test_label/")
    return names


def _smd_file(directory: Path, machine: str) -> Path:
    """Return the plain or gzip file of ``machine`` in ``directory``."""
    for name in (f"{machine}.txt.gz", f"{machine}.txt"):
        if (directory / name).is_file():
            return directory / name
    raise ContractError(f"{directory}: no file for machine {machine!r}; expected {machine}.txt.gz or {machine}.txt")


def smd_split(data_dir: Path, machine: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return one SMD machine's training features, test features and test labels (one 0/1 per test row)."""
    train = read_matrix(_smd_file(data_dir / "train", machine))
    test = read_matrix(_smd_file(data_dir / "test", machine))
    labels = np.loadtxt(_smd_file(data_dir / "test_label", machine), dtype=int, ndmin=1)
    if len(labels) != len(test):
        raise ContractError(f"{machine}: {len(labels)} labels for {len(test)} test rows; each test row needs one 0/1 label")
    train_features, test_features = features_with_history(train, test)
    return train_features, test_features, labels


def benchmark_machine(data_dir: Path, machine: str) -> dict[str, dict[str, float]]:
    """Return point-wise and point-adjusted scores, fit time and latency of each recipe on one SMD machine."""
    train_features, test_features, labels = smd_split(data_dir, machine)
    results = {}
    for recipe, fit in DETECTORS.items():
        run = run_detector(fit, train_features, test_features)
        scores = detection_scores(labels, run.flagged)
        scores["pa_f1"] = detection_scores(labels, point_adjusted(labels, run.flagged))["f1"]
        results[recipe] = {**scores, "fit_s": run.fit_s, "predict_ms": run.predict_ms}
    return results


def nab_series(data_dir: Path) -> dict[str, list[list[str]]]:
    """Return label windows per NAB series file (``labels/combined_windows.json`` keys) that exist under ``data/``."""
    windows_file = data_dir / "labels" / "combined_windows.json"
    if not windows_file.is_file():
        raise ContractError(f"{data_dir}: no NAB labels; expected labels/combined_windows.json and data/<group>/<series>.csv")
    windows = json.loads(windows_file.read_text())
    found = {key: value for key, value in windows.items() if (data_dir / "data" / key).is_file()}
    if not found:
        raise ContractError(f"{data_dir}: none of the labelled series exist under data/")
    return dict(sorted(found.items()))


@dataclass
class NabSplit:
    """One NAB series split after its probation period: features before and after, and a test-row mask per scored window."""

    train_features: np.ndarray
    test_features: np.ndarray
    windows: list[np.ndarray]


def nab_split(data_dir: Path, key: str, windows: list[list[str]]) -> NabSplit:
    """Return one NAB series trained on its probation period, with the label windows that end after it as test-row masks."""
    frame = pd.read_csv(data_dir / "data" / key, parse_dates=["timestamp"])
    values = frame[["value"]].astype(float)
    # At least 10 feature rows to fit on, after the first minutes that lack a full window.
    cut = max(int(len(values) * NAB_PROBATION_FRACTION), WINDOW_MINUTES + 10)
    train_features, test_features = features_with_history(values.iloc[:cut], values.iloc[cut:])
    times = frame["timestamp"].iloc[cut:].to_numpy()
    spans = [(np.datetime64(pd.Timestamp(start)), np.datetime64(pd.Timestamp(end))) for start, end in windows]
    return NabSplit(train_features, test_features, [(times >= start) & (times <= end) for start, end in spans if end >= times[0]])


def window_counts(hit: np.ndarray, windows: list[np.ndarray]) -> dict[str, int]:
    """Return the windows with at least one flagged row, the windows scored, and the flagged rows outside every window."""
    inside = np.zeros(len(hit), dtype=bool)
    for window in windows:
        inside |= window
    detected = sum(bool(hit[window].any()) for window in windows)
    return {"windows_detected": detected, "windows": len(windows), "false_positives": int((hit & ~inside).sum())}


def benchmark_series(data_dir: Path, key: str, windows: list[list[str]]) -> dict[str, dict[str, float]]:
    """Return windows detected and false-positive rows of each recipe on one NAB series, after its probation period."""
    split = nab_split(data_dir, key, windows)
    results = {}
    for recipe, fit in DETECTORS.items():
        run = run_detector(fit, split.train_features, split.test_features)
        results[recipe] = {**window_counts(run.flagged.astype(bool), split.windows), "fit_s": run.fit_s, "predict_ms": run.predict_ms}
    return results


def read_trace(data_dir: Path, dataset: str) -> pd.DataFrame:
    """Return a datacenter trace as the forecaster's five columns in contract units, validated by the contract.

    Columns a trace lacks are 0 (constant) so the served 5-value shape holds; they are not scored.
    """
    relative, mapping = TRACES[dataset]
    path = data_dir / relative
    if not path.is_file():
        raise ContractError(f"{path}: trace not found; expected {relative} under --data-dir")
    raw = pd.read_csv(path)
    frame = pd.DataFrame({name: 0.0 for name in schema_for(PREDICTIVE_ANALYTICS).metric_names}, index=raw.index)
    for output, (column, divisor) in mapping.items():
        if column not in raw.columns:
            raise ContractError(f"{path}: column {column!r} is missing; expected {sorted(c for c, _ in mapping.values())}")
        frame[output] = raw[column].astype(float) / divisor
    return validate_raw_metrics(frame, PREDICTIVE_ANALYTICS, source=str(path))


@dataclass
class TraceRun:
    """The forecaster on one trace: scores per output, the linear bound per output, and the test-period curves."""

    scores: dict[str, dict[str, float]]
    linear_bound: dict[str, float]
    curves: dict[str, np.ndarray]


def benchmark_trace(frame: pd.DataFrame, outputs: list[str]) -> TraceRun:
    """Return MAE and MASE against persistence and seasonal-naive (1 day) at 1 hour per output, and the test curves.

    The forecaster is fitted on the first ``FORECAST_TRAIN_FRACTION`` of the trace; the rest is scored. The
    linear bound is the MASE against persistence of a least-squares Ridge on the change fitted on the scored pairs
    themselves (hindsight), shown to tell how much a linear model of the 5 current values could gain there.
    """
    horizon = HORIZON_SECONDS // TRACE_STEP_SECONDS
    season = SEASON_SECONDS // TRACE_STEP_SECONDS
    values = frame[schema_for(PREDICTIVE_ANALYTICS).metric_names].to_numpy(dtype=float)
    cut = int(len(values) * FORECAST_TRAIN_FRACTION)
    if cut - horizon < 10 or cut < season:
        raise ContractError(f"trace too short: {len(values)} rows; the benchmark needs more than {season / FORECAST_TRAIN_FRACTION:.0f}")
    current, future = horizon_pairs(values[:cut], horizon, "row")
    model = fit_regressor(spec_for(PREDICTIVE_ANALYTICS), current, future)
    targets = np.arange(cut + horizon, len(values))
    test_current, test_future = values[targets - horizon], values[targets]
    seasonal = values[targets - season]
    predicted = np.asarray(model.predict(test_current), dtype=float)
    hindsight = Ridge(alpha=1e-6).fit(test_current, test_future - test_current)
    bound_prediction = test_current + hindsight.predict(test_current)
    error = np.abs(predicted - test_future).mean(axis=0)
    against_persistence = mase(predicted, test_future, test_current)
    against_seasonal = mase(predicted, test_future, seasonal)
    bound = mase(bound_prediction, test_future, test_current)
    results, bounds = {}, {}
    for name in outputs:
        index = schema_for(PREDICTIVE_ANALYTICS).metric_names.index(name)
        results[name] = {
            "mae": float(error[index]),
            "mase_persistence": float(against_persistence[index]),
            "mase_seasonal": float(against_seasonal[index]),
        }
        bounds[name] = float(bound[index])
    curves = {"actual": test_future, "project": predicted, "persistence": test_current, "seasonal": seasonal}
    return TraceRun(results, bounds, curves)


def by_recipe(per_item: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict]:
    """Return ``{item: {recipe: scores}}`` regrouped as the fixed JSON shape ``{recipe: {"mean": ..., "items": ...}}``."""
    report = {}
    for recipe in RECIPES:
        items = {item: scores[recipe] for item, scores in per_item.items()}
        fields = next(iter(items.values())).keys()
        report[recipe] = {"mean": {field: float(np.mean([scores[field] for scores in items.values()])) for field in fields}, "items": items}
    return report
