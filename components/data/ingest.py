"""ingest: raw per-minute metrics from a source, validated and split by time into train and validation sets."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from components.model.contract import (
    MIN_FEATURE_ROWS,
    SYNTHETIC_FALLBACK,
    TIMESTAMP_COLUMN,
    ContractError,
    schema_for,
    utc_time,
    validate_raw_metrics,
)
from components.model.spec import spec_for
from components.monitoring.drift import check_scale_jumps
from components.data.prometheus import PrometheusClient, fetch_metrics
from components.data.synthetic import generate_cluster_metrics

MIN_PROMETHEUS_MINUTES = 120


@dataclass(frozen=True)
class IngestRequest:
    """Where to read raw metrics from and how to split them."""

    model_name: str
    source: str = "synthetic"
    file_path: str = ""
    days: float = 10.0
    seed: int = 42
    validation_fraction: float = 0.3
    max_gap_minutes: int = 5
    prometheus_url: str = ""
    prometheus_ca_bundle: str = ""
    prometheus_queries: dict = field(default_factory=dict)
    prometheus_end: str = ""
    allow_synthetic_fallback: bool = False
    regime_start: str = ""  # ISO time: keep only minutes from it on (a drift-triggered retrain learns the new regime)


@dataclass(frozen=True)
class IngestResult:
    """Train and validation frames in contract units, plus a one-line description of what was read."""

    train: pd.DataFrame
    validation: pd.DataFrame
    description: str
    data_source: str = "synthetic"  # what the rows really are: synthetic, file, prometheus or SYNTHETIC_FALLBACK


def _synthetic(request: IngestRequest) -> tuple[pd.DataFrame, str]:
    """Return generated metrics and their description."""
    frame = generate_cluster_metrics(request.model_name, days=request.days, seed=request.seed)
    return frame, f"synthetic: {request.days:g} days, seed {request.seed}"


def _file(request: IngestRequest) -> tuple[pd.DataFrame, str]:
    """Return metrics read from a CSV or Parquet file, aligned on a 1-minute grid, and their description.

    Without ``file_path`` the spec's ``data.file`` is read (its path is relative to the spec file).
    """
    data_file = spec_for(request.model_name).data_file
    if not request.file_path and data_file is None:
        raise ContractError(f"source 'file' needs file_path ({request.model_name}'s spec names no data.file): "
                            "set --param file_path=/path/to/metrics.csv")
    path = Path(request.file_path) if request.file_path else data_file
    if not path.is_file():
        raise ContractError(f"file_path {str(path)!r} does not exist or is not a file; check the path")
    if path.suffix.lower() == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix.lower() in {".csv", ".txt"}:
        frame = pd.read_csv(path)
    else:
        raise ContractError(f"file_path {str(path)!r}: unsupported format {path.suffix!r}; use .csv or .parquet")
    frame = align_to_minute_grid(frame, request.model_name, max_gap_minutes=request.max_gap_minutes, source=str(path))
    return frame, f"file: {path} ({len(frame)} minutes)"


def _prometheus(request: IngestRequest) -> tuple[pd.DataFrame, str]:
    """Return the last ``days`` of metrics from Prometheus (ending at ``prometheus_end``, default now).

    Too little data is an error unless ``allow_synthetic_fallback`` is set, and then the description says so.
    An unreachable or refusing Prometheus is always an error.
    """
    if not request.prometheus_url:
        raise ContractError("source 'prometheus' needs prometheus_url, e.g. https://thanos-querier.openshift-monitoring.svc:9091")
    client = PrometheusClient(request.prometheus_url, request.prometheus_ca_bundle)
    end = (pd.Timestamp(utc_time(request.prometheus_end, f"prometheus_end {request.prometheus_end[:40]!r} is not an ISO-8601 time"))
           if request.prometheus_end else pd.Timestamp.now(tz="UTC"))
    end = end.floor("min").to_pydatetime()
    start = end - dt.timedelta(days=request.days)
    try:
        frame = fetch_metrics(client, request.model_name, start, end, dict(request.prometheus_queries))
        frame = align_to_minute_grid(frame, request.model_name, max_gap_minutes=request.max_gap_minutes, source=f"prometheus {request.prometheus_url}")
        if len(frame) < MIN_PROMETHEUS_MINUTES:
            raise ContractError(f"Prometheus has only {len(frame)} minute(s) of data between {start} and {end}; at least {MIN_PROMETHEUS_MINUTES} are needed")
    except ContractError as error:
        if not request.allow_synthetic_fallback:
            raise ContractError(f"{error}; widen days, or set allow_synthetic_fallback=true to train on synthetic data instead") from error
        frame, description = _synthetic(request)
        return frame, f"SYNTHETIC FALLBACK, not cluster data ({error}); {description}"
    return frame, f"prometheus: {request.prometheus_url}, {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC ({len(frame)} minutes)"


# The sources by name: each is a function from request to (frame, description). Add new ones here.
SOURCES: dict[str, Callable[[IngestRequest], tuple[pd.DataFrame, str]]] = {
    "synthetic": _synthetic,
    "file": _file,
    "prometheus": _prometheus,
}


def align_to_minute_grid(
    frame: pd.DataFrame, model_name: str, *, max_gap_minutes: int = 5, source: str = "input"
) -> pd.DataFrame:
    """Return ``frame``'s inputs, and the spec's label column when it has one, on a regular 1-minute grid: timestamps parsed,
    duplicates averaged, short gaps interpolated (labels carried forward).

    A gap longer than ``max_gap_minutes`` is an error: rolling features across it would describe data that
    does not exist.
    """
    if TIMESTAMP_COLUMN not in frame.columns:
        raise ContractError(f"{source}: missing column {TIMESTAMP_COLUMN!r}; every row needs a timestamp")
    if len(frame) == 0:
        raise ContractError(f"{source}: the dataset is empty; provide at least {MIN_FEATURE_ROWS} per-minute rows")
    metric_names = schema_for(model_name).metric_names
    labels = spec_for(model_name).labels
    label_column = labels.column if labels is not None and labels.column in frame.columns else None
    frame = validate_raw_metrics(frame, model_name, source=source)
    timestamps = pd.to_datetime(frame[TIMESTAMP_COLUMN], utc=True, errors="coerce")
    if timestamps.isna().any():
        bad = frame[TIMESTAMP_COLUMN][timestamps.isna()].iloc[0]
        raise ContractError(f"{source}: timestamp {bad!r} cannot be parsed; use ISO 8601 or epoch seconds")
    keep = metric_names + ([label_column] if label_column else [])
    indexed = frame[keep].set_index(timestamps.dt.floor("min"))
    # A minute's inputs are the mean of its rows, its label the largest (an anomalous second makes an anomalous minute).
    aggregated = indexed.groupby(level=0).agg({name: ("max" if name == label_column else "mean") for name in keep})
    grid = pd.date_range(aggregated.index.min(), aggregated.index.max(), freq="min")
    regular = aggregated.reindex(grid)
    missing = regular[metric_names[0]].isna().to_numpy()
    if missing.any():
        longest = _longest_run(missing)
        if longest > max_gap_minutes:
            raise ContractError(
                f"{source}: a gap of {longest} minutes in the series exceeds max_gap_minutes={max_gap_minutes}; "
                "provide a continuous series or raise max_gap_minutes"
            )
        regular[metric_names] = regular[metric_names].interpolate(method="linear", limit_direction="both")
        if label_column:
            regular[label_column] = regular[label_column].ffill()
    regular.index.name = TIMESTAMP_COLUMN
    result = regular.reset_index()
    if label_column:
        result[label_column] = result[label_column].astype(int)
    return result


def _longest_run(mask: np.ndarray) -> int:
    """Return the length of the longest run of True in ``mask``."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return int((edges[1::2] - edges[::2]).max()) if len(edges) else 0


def split_by_time(frame: pd.DataFrame, validation_fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (train, validation): the validation set is the last ``validation_fraction`` of the series."""
    if not 0.0 < validation_fraction < 1.0:
        raise ContractError(f"validation_fraction must be between 0 and 1 (exclusive), got {validation_fraction}")
    cut = int(round(len(frame) * (1.0 - validation_fraction)))
    train, validation = frame.iloc[:cut].reset_index(drop=True), frame.iloc[cut:].reset_index(drop=True)
    for name, part in (("train", train), ("validation", validation)):
        if len(part) < MIN_FEATURE_ROWS:
            raise ContractError(
                f"{name} split has {len(part)} row(s) out of {len(frame)}; provide more data "
                f"or change validation_fraction so that each split has at least {MIN_FEATURE_ROWS} minutes"
            )
    return train, validation


def read_metrics(request: IngestRequest) -> tuple[pd.DataFrame, str]:
    """Read raw metrics from the requested source and validate them (units, and no unit change within); return them with a one-line description."""
    schema_for(request.model_name)
    try:
        read = SOURCES[request.source]
    except KeyError:
        raise ContractError(f"unknown source {request.source!r}: use one of {', '.join(SOURCES)}") from None
    frame, description = read(request)
    if request.regime_start:
        start = pd.Timestamp(utc_time(request.regime_start, f"regime_start {request.regime_start[:40]!r} is not an ISO-8601 time"))
        kept = frame[pd.to_datetime(frame[TIMESTAMP_COLUMN], utc=True) >= start].reset_index(drop=True)
        if len(kept) < MIN_FEATURE_ROWS:
            raise ContractError(f"regime_start {start:%Y-%m-%d %H:%M} UTC leaves {len(kept)} of the source's {len(frame)} minutes (at least "
                                f"{MIN_FEATURE_ROWS} are needed): the source has too little data after the drift's onset; point the retrain "
                                "at the source the monitor reads, or wait for more data")
        description = f"{description}; from {start:%Y-%m-%d %H:%M} UTC on (the drift's onset): {len(kept)} of {len(frame)} minutes"
        frame = kept
    frame = validate_raw_metrics(frame, request.model_name, source=request.source)
    check_scale_jumps(frame, request.model_name, request.source)
    return frame, description


def read_window(request: IngestRequest, minutes: int) -> tuple[pd.DataFrame, str]:
    """Return the last ``minutes`` of validated metrics from the source (``days`` is set to cover them) and a description.

    A file's or Prometheus' last minutes are the most recent ones; synthetic data is a fresh series that long.
    """
    frame, description = read_metrics(replace(request, days=minutes / 1440.0))
    window = frame.iloc[-minutes:].reset_index(drop=True)
    if len(window) < minutes:
        raise ContractError(f"{description}: only {len(window)} of the {minutes} minutes a drift check compares; "
                            f"wait until the source has {minutes} minutes, or point it at more data")
    first, last = window[TIMESTAMP_COLUMN].iloc[0], window[TIMESTAMP_COLUMN].iloc[-1]
    return window, f"{description}; window {pd.Timestamp(first):%Y-%m-%d %H:%M} to {pd.Timestamp(last):%Y-%m-%d %H:%M} UTC ({minutes} minutes)"


def ingest(request: IngestRequest) -> IngestResult:
    """Read raw metrics from the requested source, validate them and return the time-based split."""
    frame, description = read_metrics(request)
    train, validation = split_by_time(frame, request.validation_fraction)
    data_source = SYNTHETIC_FALLBACK if description.startswith("SYNTHETIC FALLBACK") else request.source
    return IngestResult(train, validation, f"{description}; {len(train)} train and {len(validation)} validation minutes", data_source)
