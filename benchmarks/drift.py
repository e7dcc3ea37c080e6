"""Drift monitor benchmark: false triggers on stationary data and detection delay of injected shifts, against the
upstream rule (a two-sample KS test with p < 0.05 on any raw feature) measured in the same run.

    python -m benchmarks drift [--data-dir ../shared/datasets/datacenter-traces] --json OUT

Each model's profile comes from its default training data (10 synthetic days, seed 42). A check runs every hour on
the last ``DRIFT_WINDOW_MINUTES`` minutes, as the hourly model-monitor schedule does:
- false triggers: 14 stationary synthetic days (other seeds), and the real datacenter traces when ``--data-dir``
  has them (profile from the first week, or half of a shorter trace; checks on the next two weeks at most);
- detection delay: the number of hourly checks, after a shift starts, until the first check that triggers, for shifts
  started at several times of the week. A shift not found within ``MAX_DELAY_CHECKS`` checks counts as that many.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from components.model.contract import ANOMALY_DETECTOR, MODEL_NAMES, PREDICTIVE_ANALYTICS, TIMESTAMP_COLUMN, engineer_features
from components.monitoring.drift import DRIFT_WINDOW_MINUTES, drift_profile, measure_drift
from components.monitoring.monitor import DriftThresholds
from components.data.synthetic import EPOCH, generate_cluster_metrics

STATIONARY_DAYS = 14
STATIONARY_SEEDS = (7, 11, 23)  # seed 7 is the target's 14 days; the others show how the count varies
MAX_DELAY_CHECKS = 12
SHIFT_STARTS_HOURS = (2 * 24 + 10, 4 * 24 + 3, 5 * 24 + 14, 8 * 24 + 21, 11 * 24 + 9)  # Wed 10:00, Fri 03:00, Sat 14:00, Tue 21:00, Fri 09:00
UPSTREAM_P_VALUE = 0.05
TRACE_PROFILE_DAYS = 7
TRACE_CHECK_DAYS = 14


def _level_shift(frame: pd.DataFrame, start: int, column: str) -> None:
    """Add 0.2 to ``column`` from row ``start`` on (a ratio, so clipped to 1)."""
    frame.loc[frame.index[start:], column] = np.clip(frame[column].iloc[start:] + 0.2, 0.0, 1.0)


def _memory_leak(frame: pd.DataFrame, start: int, column: str) -> None:
    """Make ``column`` climb by 0.05 of capacity per hour from row ``start`` on, up to 1."""
    minutes = np.arange(len(frame) - start)
    frame.loc[frame.index[start:], column] = np.clip(frame[column].iloc[start:] + 0.05 * minutes / 60.0, 0.0, 1.0)


def _network_mix(frame: pd.DataFrame, start: int) -> None:
    """From row ``start`` on, receive 1.6 times and send half as much (an ingest-heavy traffic mix)."""
    frame.loc[frame.index[start:], "network_in"] = np.clip(frame["network_in"].iloc[start:] * 1.6, 0.0, 1.0)
    frame.loc[frame.index[start:], "network_out"] = frame["network_out"].iloc[start:] * 0.5


def _doubled_restarts(frame: pd.DataFrame, start: int) -> None:
    """From row ``start`` on, count every container restart twice (the cumulative counter still resets at rollouts)."""
    counter = frame["container_restart_count"].to_numpy()
    steps = np.diff(counter, prepend=counter[0])
    resets = steps < 0
    increments = np.where(resets, 0.0, steps)
    increments[start:] *= 2
    rebuilt, total = np.empty(len(counter)), 0.0
    for row, (reset, increment) in enumerate(zip(resets, increments)):
        total = 0.0 if reset else total + increment
        rebuilt[row] = total
    frame["container_restart_count"] = rebuilt


SHIFTS: dict[str, dict[str, Callable[[pd.DataFrame, int], None]]] = {
    "cpu +0.2": {ANOMALY_DETECTOR: lambda f, s: _level_shift(f, s, "node_cpu_utilization"), PREDICTIVE_ANALYTICS: lambda f, s: _level_shift(f, s, "cpu")},
    "memory leak 0.05/h": {ANOMALY_DETECTOR: lambda f, s: _memory_leak(f, s, "pod_memory_usage"),
                           PREDICTIVE_ANALYTICS: lambda f, s: _memory_leak(f, s, "memory")},
    "network mix in x1.6, out x0.5": {PREDICTIVE_ANALYTICS: _network_mix},
    "restarts x2": {ANOMALY_DETECTOR: _doubled_restarts},
}


class Checker:
    """One model's profile and its training features, and both rules' verdicts on a live window."""

    def __init__(self, model_name: str, training: pd.DataFrame, thresholds: DriftThresholds) -> None:
        self.model_name, self.thresholds = model_name, thresholds
        self.profile = drift_profile(training, model_name)
        self.training_features = engineer_features(training, model_name).to_numpy(dtype=float)

    def project(self, window: pd.DataFrame) -> bool:
        """Return whether the monitor's rule (PSI, and KS excess or level excess, past the thresholds on any feature) triggers."""
        return any(drift.drifted(self.thresholds) for drift in measure_drift(self.profile, window, self.model_name))

    def upstream(self, window: pd.DataFrame) -> bool:
        """Return whether the upstream rule (KS test p < 0.05 on any raw feature) triggers."""
        live = engineer_features(window, self.model_name).to_numpy(dtype=float)
        return any(ks_2samp(self.training_features[:, column], live[:, column]).pvalue < UPSTREAM_P_VALUE for column in range(live.shape[1]))


def hourly_windows(frame: pd.DataFrame, first_hour: int, last_hour: int) -> list[tuple[int, pd.DataFrame]]:
    """Return (hour, the window ending at that hour) for each hourly check between the two hours (rows are minutes)."""
    return [(hour, frame.iloc[hour * 60 - DRIFT_WINDOW_MINUTES: hour * 60]) for hour in range(first_hour, last_hour + 1)
            if hour * 60 >= DRIFT_WINDOW_MINUTES and hour * 60 <= len(frame)]


def false_triggers(checker: Checker, frame: pd.DataFrame, first_hour: int, last_hour: int) -> dict[str, int]:
    """Return how many hourly checks each rule triggers on ``frame`` (expected none: nothing was changed)."""
    windows = hourly_windows(frame, first_hour, last_hour)
    return {"checks": len(windows), "project": sum(checker.project(window) for _, window in windows),
            "upstream_ks_p05": sum(checker.upstream(window) for _, window in windows)}


def detection_delay(checker: Checker, stationary: pd.DataFrame, shift: Callable[[pd.DataFrame, int], None], start_hour: int) -> dict[str, int]:
    """Return, per rule, the checks from the shift's start until the first trigger (MAX_DELAY_CHECKS: not found)."""
    shifted = stationary.copy()
    shift(shifted, start_hour * 60)
    delays = {}
    for rule in ("project", "upstream_ks_p05"):
        judge = checker.project if rule == "project" else checker.upstream
        delays[rule] = next((checks for checks, (_, window) in enumerate(hourly_windows(shifted, start_hour + 1, start_hour + MAX_DELAY_CHECKS), 1)
                             if judge(window)), MAX_DELAY_CHECKS)
    return delays


def trace_frame(data_dir: Path, dataset: str) -> pd.DataFrame:
    """Return a datacenter trace on a per-minute grid (each 5-minute value held for its five minutes), from a Monday."""
    from benchmarks.quality import read_trace

    trace = read_trace(data_dir, dataset)
    minutes = trace.loc[trace.index.repeat(5)].reset_index(drop=True)
    minutes.insert(0, TIMESTAMP_COLUMN, EPOCH + pd.to_timedelta(np.arange(len(minutes)), unit="min"))
    return minutes


def run(data_dir: Path | None, thresholds: DriftThresholds = DriftThresholds(), report: Callable[[str], None] = print) -> dict:
    """Measure false triggers and detection delays for both models (and the traces found); return the JSON report."""
    result: dict = {"settings": {"window_minutes": DRIFT_WINDOW_MINUTES, "checks_per_hour": 1, **asdict(thresholds),
                                 "upstream_rule": f"ks_2samp p < {UPSTREAM_P_VALUE} on any raw feature", "max_delay_checks": MAX_DELAY_CHECKS},
                    "false_triggers": {}, "detection_delay_checks": {}}
    for model in MODEL_NAMES:
        checker = Checker(model, generate_cluster_metrics(model, days=10.0, seed=42), thresholds)
        for seed in STATIONARY_SEEDS:
            counts = false_triggers(checker, generate_cluster_metrics(model, days=STATIONARY_DAYS, seed=seed), 0, STATIONARY_DAYS * 24)
            result["false_triggers"].setdefault(f"synthetic {STATIONARY_DAYS} days, seed {seed}", {})[model] = counts
            report(f"{model}: {counts['checks']} stationary checks (seed {seed}): project {counts['project']} triggers, upstream {counts['upstream_ks_p05']}")
        stationary = generate_cluster_metrics(model, days=STATIONARY_DAYS, seed=STATIONARY_SEEDS[0])
        for name, shifts in SHIFTS.items():
            if model not in shifts:
                continue
            delays = [detection_delay(checker, stationary, shifts[model], start) for start in SHIFT_STARTS_HOURS]
            summary = {rule: {"per_start": [delay[rule] for delay in delays], "median": statistics.median(delay[rule] for delay in delays),
                              "max": max(delay[rule] for delay in delays)} for rule in ("project", "upstream_ks_p05")}
            result["detection_delay_checks"].setdefault(model, {})[name] = summary
            report(f"{model}: {name}: project detects after {summary['project']['per_start']} checks, upstream {summary['upstream_ks_p05']['per_start']}")
    for dataset in ("google2019", "alibaba2018"):
        if data_dir is None or not (data_dir / dataset).is_dir():
            continue
        trace = trace_frame(data_dir, dataset)
        days = len(trace) / 1440
        profile_days = min(TRACE_PROFILE_DAYS, days / 2)
        checker = Checker(PREDICTIVE_ANALYTICS, trace.iloc[: int(profile_days * 1440)], thresholds)
        first = int(profile_days * 24) + DRIFT_WINDOW_MINUTES // 60
        counts = false_triggers(checker, trace, first, min(int(days * 24), first + TRACE_CHECK_DAYS * 24))
        result["false_triggers"][f"{dataset} (profile from {profile_days:.1f} days)"] = {PREDICTIVE_ANALYTICS: counts}
        report(f"{dataset}: {counts['checks']} checks: project {counts['project']} triggers, upstream {counts['upstream_ks_p05']}")
    return result


def markdown(result: dict, command: str) -> str:
    """Return the benchmark's tables as Markdown."""
    lines = ["# Drift monitor: false triggers and detection delay", "", f"`{command}`", "",
             f"Window {result['settings']['window_minutes']} minutes, a check every hour; thresholds PSI >= {result['settings']['psi']} and "
             f"(KS excess >= {result['settings']['ks_excess']} or level excess >= {result['settings']['level_excess']}); "
             f"upstream rule: {result['settings']['upstream_rule']}.", "",
             "| data | model | checks | project triggers | upstream triggers |", "|---|---|---|---|---|"]
    for data, models in result["false_triggers"].items():
        lines += [f"| {data} | {model} | {counts['checks']} | {counts['project']} | {counts['upstream_ks_p05']} |" for model, counts in models.items()]
    lines += ["", f"Detection delay in hourly checks after the shift starts, per start time ({MAX_DELAY_CHECKS} = not found):", "",
              "| model | shift | project | upstream |", "|---|---|---|---|"]
    for model, shifts in result["detection_delay_checks"].items():
        lines += [f"| {model} | {name} | {delays['project']['per_start']} (max {delays['project']['max']}) | "
                  f"{delays['upstream_ks_p05']['per_start']} |" for name, delays in shifts.items()]
    return "\n".join(lines) + "\n"
