"""One validation of the run parameters every pipeline shares, run first in the DAG and by the CLI before a local run.

Every problem is listed at once, each naming the parameter, what it got and what it takes, so that a run never
gets as far as the canary with ``probe_requests=0``, repeated steps or a NaN limit (NaN compares false, so it
would pass every check) and an unchecked string is never pasted into PromQL.
"""

from __future__ import annotations

import json
import math
import re
from typing import Callable

PROMQL_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
CHOICES = {
    "source": ("synthetic", "file", "prometheus"),
    "model_store": ("pvc", "s3"),
    "serving_target": ("kserve", "local"),
    "deployment_mode": ("auto", "Serverless", "RawDeployment", "Knative", "Standard"),
    "rollout_strategy": ("auto", "knative", "standard-canary", "candidate-isvc"),
}


def _number(value: object) -> float | None:
    """Return ``value`` as a float (KFP may hand numbers over as text), or None if it is not a number."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _in_range(low: float, high: float, *, low_open: bool = False, integer: bool = False) -> Callable[[object], str | None]:
    """Return a rule: a finite number within [low, high] (or (low, high]), optionally whole."""
    def rule(value: object) -> str | None:
        number = _number(value)
        if number is None or not math.isfinite(number):
            return "a finite number"
        if (number <= low if low_open else number < low) or number > high or (integer and number != int(number)):
            kind = "a whole number" if integer else "a number"
            return f"{kind} in {'(' if low_open else '['}{low:g}, {high:g}]"
        return None
    return rule


def _canary_steps(value: object) -> str | None:
    """Rule for canary_steps: strictly increasing whole percentages in 1-100."""
    steps = json.loads(value) if isinstance(value, str) else value
    if not isinstance(steps, list) or not steps or any(_number(step) is None or _number(step) != int(_number(step)) for step in steps):
        return "a non-empty list of whole percentages, e.g. [10, 50, 100]"
    numbers = [int(_number(step)) for step in steps]
    if any(not 1 <= step <= 100 for step in numbers) or any(later <= earlier for earlier, later in zip(numbers, numbers[1:])):
        return "strictly increasing percentages in 1-100, e.g. [10, 50, 100]"
    return None


def _promql_duration(value: object) -> str | None:
    """Rule for prometheus_window: a PromQL duration, nothing else."""
    return None if isinstance(value, str) and PROMQL_DURATION.match(value) else "a PromQL duration such as 2m, 90s or 1h"


def _choice(name: str) -> Callable[[object], str | None]:
    """Return a rule: one of the parameter's choices."""
    return lambda value: None if value in CHOICES[name] else f"one of {', '.join(CHOICES[name])}"


INF = math.inf
RULES: dict[str, Callable[[object], str | None]] = {
    "days": _in_range(0, 366, low_open=True),
    "validation_fraction": _in_range(0, 0.9, low_open=True),
    "canary_steps": _canary_steps,
    "canary_interval_s": _in_range(0, 3600),
    "probe_requests": _in_range(1, 10_000, integer=True),
    "max_error_rate": _in_range(0, 1),
    "max_p95_latency_ms": _in_range(0, 600_000, low_open=True),
    "max_live_p95_latency_ms": _in_range(0, 600_000, low_open=True),
    "max_prediction_shift": _in_range(0, INF),
    "failure_limit": _in_range(0, 100, integer=True),
    "ready_timeout_s": _in_range(0, 86_400, low_open=True),
    "prometheus_window": _promql_duration,
    **{name: _choice(name) for name in CHOICES},
    # model-specific knobs (checked by the CLI; in the DAG their own steps check them)
    "min_f1": _in_range(0, 1),
    "max_anomaly_rate": _in_range(0, 1, low_open=True),
    "max_mase": _in_range(0, INF, low_open=True),
    "max_predict_latency_ms": _in_range(0, 600_000, low_open=True),
    "max_pickle_mb": _in_range(0, 100_000, low_open=True),
    "champion_tolerance": _in_range(0, 1),
    "target_false_positive_rate": _in_range(0, 0.5, low_open=True),
    "n_estimators": _in_range(1, 100_000, integer=True),
    "max_samples": _in_range(1, 10_000_000, integer=True),
    "pca_components": _in_range(1, 10_000, integer=True),
    "horizon_minutes": _in_range(1, 1440, integer=True),
    "alpha": _in_range(0, 1e9, low_open=True),
}


def problems(values: dict) -> list[str]:
    """Return one line per invalid parameter among ``values`` (the ones RULES knows), naming what it takes."""
    found = []
    for name, rule in RULES.items():
        if name not in values:
            continue
        try:
            wanted = rule(values[name])
        except ValueError:
            wanted = "valid JSON"
        if wanted:
            found.append(f"{name}={values[name]!r}: must be {wanted}")
    return found


def check(values: dict) -> None:
    """Raise ValueError listing every invalid parameter, or return."""
    found = problems(values)
    if found:
        raise ValueError(f"{len(found)} invalid parameter(s):\n  " + "\n  ".join(found))
