"""Deterministic synthetic cluster metrics with daily and weekly patterns and labelled incidents."""

from __future__ import annotations

import numpy as np
import pandas as pd

from components.model.contract import (
    ANOMALY_DETECTOR,
    INCIDENT_COLUMN,
    PREDICTIVE_ANALYTICS,
    TIMESTAMP_COLUMN,
    ContractError,
    scale_network,
    schema_for,
)
from components.model.spec import spec_for

# A Monday at midnight UTC, so that weekly patterns line up with weekdays in every run.
EPOCH = pd.Timestamp("2026-01-05T00:00:00Z")
INCIDENT_TYPES = ("cpu_saturation", "memory_leak", "restart_storm", "traffic_spike", "node_pressure")
# The label column of a model whose spec has none (the forecaster's frames carry the incidents too).
INCIDENT_LABEL_COLUMN = "is_anomaly"


def generate_cluster_metrics(
    model_name: str, *, days: float = 10.0, seed: int = 42, incidents_per_day: float = 3.0
) -> pd.DataFrame:
    """Return per-minute metrics in contract units for a built-in model, with 0/1 incident labels (in its spec's label column) and incident names.

    Only the built-in models have a generator (``GENERATORS``); any other model gets a ContractError naming source=file.
    """
    schema = schema_for(model_name)
    if model_name not in GENERATORS:
        data_file = spec_for(model_name).data_file
        raise ContractError(f"{model_name} has no synthetic data generator (only {' and '.join(GENERATORS)} have one): use source=file "
                            + (f"with file_path empty to read its data.file, {data_file}" if data_file else "with file_path set to its labelled data"))
    minutes = int(round(days * 24 * 60))
    if minutes < 1:
        raise ValueError(f"days must cover at least one minute, got {days}")
    rng = np.random.default_rng(seed)
    timestamps = EPOCH + pd.to_timedelta(np.arange(minutes), unit="min")
    load = _load_pattern(timestamps, rng)
    incident = _incident_schedule(minutes, incidents_per_day, rng)
    columns = GENERATORS[model_name](load, incident, rng)
    if list(columns) != schema.metric_names:
        raise ContractError(f"the synthetic generator of {model_name} writes {list(columns)}, and its spec's inputs are {schema.metric_names}: "
                            "use source=file for a changed spec")
    labels = spec_for(model_name).labels
    frame = pd.DataFrame({TIMESTAMP_COLUMN: timestamps, **columns})
    frame[labels.column if labels else INCIDENT_LABEL_COLUMN] = (incident != "").astype(int)
    frame[INCIDENT_COLUMN] = incident
    return frame


def _ar_noise(n: int, scale: float, rng: np.random.Generator, persistence: float = 0.8) -> np.ndarray:
    """Return AR(1) noise with the given stationary standard deviation."""
    shocks = rng.normal(0.0, scale * np.sqrt(1 - persistence**2), n)
    noise = np.empty(n)
    level = 0.0
    for i, shock in enumerate(shocks):
        level = persistence * level + shock
        noise[i] = level
    return noise


def _load_pattern(timestamps: pd.DatetimeIndex, rng: np.random.Generator) -> np.ndarray:
    """Return a 0-1 cluster load with a daily cycle peaking mid-afternoon and quieter weekends."""
    hours = timestamps.hour.to_numpy() + timestamps.minute.to_numpy() / 60.0
    daily = 0.5 - 0.5 * np.cos(2 * np.pi * (hours - 3.0) / 24.0)
    weekend = timestamps.dayofweek.to_numpy() >= 5
    weekly = np.where(weekend, 0.55, 1.0)
    return np.clip(daily * weekly + _ar_noise(len(timestamps), 0.04, rng, 0.95), 0.0, 1.0)


def _incident_schedule(minutes: int, incidents_per_day: float, rng: np.random.Generator) -> np.ndarray:
    """Return the incident name active at each minute ('' when none), incidents never overlapping."""
    incident = np.full(minutes, "", dtype=object)
    count = rng.poisson(incidents_per_day * minutes / 1440.0)
    for _ in range(count):
        kind = INCIDENT_TYPES[rng.integers(len(INCIDENT_TYPES))]
        duration = int(rng.integers(8, 40))
        start = int(rng.integers(0, max(1, minutes - duration)))
        span = slice(max(0, start - 10), min(minutes, start + duration + 10))
        if (incident[span] == "").all():
            incident[start : start + duration] = kind
    return incident


def _ramp(mask: np.ndarray) -> np.ndarray:
    """Return 0→1 within each contiguous run of ``mask`` (0 elsewhere)."""
    ramp = np.zeros(len(mask))
    run_start = None
    for i, active in enumerate(np.append(mask, False)):
        if active and run_start is None:
            run_start = i
        elif not active and run_start is not None:
            ramp[run_start:i] = np.linspace(0.0, 1.0, i - run_start)
            run_start = None
    return ramp


def _detector_metrics(load: np.ndarray, incident: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Return the detector's five base metrics, with each incident type's signature applied."""
    n = len(load)
    node_cpu = 0.2 + 0.45 * load + _ar_noise(n, 0.03, rng)
    node_memory = 0.45 + 0.2 * load + _ar_noise(n, 0.01, rng, 0.98)
    pod_cpu = 0.15 + 1.1 * load + _ar_noise(n, 0.05, rng)
    pod_memory = 0.35 + 0.2 * load + _ar_noise(n, 0.015, rng, 0.95)
    restarts = rng.poisson(1.0 / 2880.0, n).astype(float)

    saturation = incident == "cpu_saturation"
    node_cpu[saturation] = rng.uniform(0.94, 1.0, saturation.sum())
    pod_cpu[saturation] = rng.uniform(3.0, 3.8, saturation.sum())
    leak = incident == "memory_leak"
    pod_memory = np.where(leak, pod_memory + (0.99 - pod_memory) * _ramp(leak), pod_memory)
    node_memory = np.where(leak, node_memory + 0.25 * _ramp(leak), node_memory)
    storm = incident == "restart_storm"
    restarts[storm] += rng.integers(1, 3, storm.sum())
    pod_cpu[storm] *= rng.uniform(0.1, 1.6, storm.sum())
    spike = incident == "traffic_spike"
    node_cpu[spike] += 0.35
    pod_cpu[spike] *= 2.5
    pressure = incident == "node_pressure"
    node_memory[pressure] = rng.uniform(0.93, 0.99, pressure.sum())
    node_cpu[pressure] = np.maximum(node_cpu[pressure], rng.uniform(0.85, 0.95, pressure.sum()))

    return {
        "node_cpu_utilization": np.clip(node_cpu, 0.0, 1.0),
        "node_memory_utilization": np.clip(node_memory, 0.0, 1.0),
        "pod_cpu_usage": np.clip(pod_cpu, 0.0, None),
        "pod_memory_usage": np.clip(pod_memory, 0.0, 1.0),
        "container_restart_count": _cumulative_with_rollouts(restarts, rng),
    }


def _cumulative_with_rollouts(events: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return the cumulative count of ``events``, reset to 0 at about one rollout every 6 hours (new pods start at 0)."""
    count = np.empty(len(events))
    total = 0.0
    for i, event in enumerate(events):
        total = 0.0 if rng.random() < 1.0 / 360.0 else total + event
        count[i] = total
    return count


def _forecaster_metrics(load: np.ndarray, incident: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Return cpu, memory, disk and scaled network series that follow the load with lags and slow trends."""
    n = len(load)
    lagged_load = np.concatenate([np.full(30, load[0]), load[:-30]]) if n > 30 else load
    cpu = 0.15 + 0.6 * load + _ar_noise(n, 0.03, rng)
    memory = 0.4 + 0.3 * lagged_load + _ar_noise(n, 0.02, rng, 0.99)
    disk = 0.55 + 0.05 * lagged_load + _ar_noise(n, 0.03, rng, 0.998)
    network_in = scale_network((10e6 + 80e6 * load) * np.exp(_ar_noise(n, 0.1, rng)))
    network_out = scale_network((5e6 + 50e6 * load) * np.exp(_ar_noise(n, 0.1, rng)))
    busy = incident != ""
    cpu[busy] += 0.2
    return {
        "cpu": np.clip(cpu, 0.0, 1.0),
        "memory": np.clip(memory, 0.0, 1.0),
        "disk": np.clip(disk, 0.0, 1.0),
        "network_in": network_in,
        "network_out": network_out,
    }


# The synthetic cluster of each built-in model: load pattern, incident schedule and generator -> its base metrics.
GENERATORS = {ANOMALY_DETECTOR: _detector_metrics, PREDICTIVE_ANALYTICS: _forecaster_metrics}
