"""The detector's frontier: SMD F1 against NAB false-positive rows, per training-only calibration rate, for both recipes.

Each recipe is fitted once per SMD machine and NAB series. A calibration rate then sets its threshold from its own
training scores only, the same rate for every series: the project recipe as ``train.fit_outlier_detector`` calibrates
(the ``rate`` quantile of ``score_samples`` on the training rows, never above the engine's fallback probe), the
upstream recipe as IsolationForest's ``contamination`` does (the same percentile of its training scores). Test labels
only score the points; the rates are a fixed list. The targets are issue 24's, measured against the upstream recipe at
its own default in the same run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks import quality
from components.model.contract import ANOMALY_DETECTOR
from components.model.evaluate import detection_scores
from components.model.spec import spec_for
from components.model.train import fallback_threshold_limit

DEFAULT_RATES = (0.005, 0.01, 0.02, 0.03, 0.05)
TARGET_SMD_MEAN_F1 = 0.45
# No SMD machine may score an F1 lower than the upstream recipe's by more than this.
TARGET_WORST_MARGIN = -0.02
# NAB: at most this share of the upstream recipe's false-positive rows, while detecting every window it detects.
TARGET_FALSE_POSITIVE_SHARE = 1 / 3
TARGETS = ("smd_mean_f1", "smd_worst_margin", "nab_upstream_windows", "nab_false_positives")


@dataclass(frozen=True)
class ScoredRecipe:
    """One recipe fitted once on one series: its test-row scores and its training-only threshold for any rate."""

    test_scores: np.ndarray
    threshold: Callable[[float], float]

    def flagged(self, rate: float) -> np.ndarray:
        """Return the test rows flagged (True = anomaly) with the threshold calibrated to ``rate``: score below it, as predict does."""
        return self.test_scores < self.threshold(rate)


def default_rates() -> dict[str, float]:
    """Return each recipe's own calibration rate: the spec's target_false_positive_rate and upstream's contamination."""
    return {"project": spec_for(ANOMALY_DETECTOR).estimator.training["target_false_positive_rate"],
            "upstream": quality.upstream_detector().named_steps["detector"].contamination}


def parse_rates(text: str) -> tuple[float, ...]:
    """Return the sorted distinct rates of a comma-separated list; raise ValueError naming a bad value and the fix."""
    fix = "give comma-separated shares of training rows between 0 and 0.5, e.g. --rates 0.005,0.01,0.02,0.03,0.05"
    rates = set()
    for part in text.split(","):
        try:
            rate = float(part)
        except ValueError:
            raise ValueError(f"{part.strip()!r} is not a number: {fix}") from None
        if not 0.0 < rate < 0.5:
            raise ValueError(f"{rate:g} is outside (0, 0.5): {fix}")
        rates.add(rate)
    return tuple(sorted(rates))


def evaluated_rates(rates: tuple[float, ...]) -> tuple[float, ...]:
    """Return the requested rates plus each recipe's own default, sorted, so both defaults are always points."""
    return tuple(sorted(set(rates) | set(default_rates().values())))


def score_project(train_features: np.ndarray, test_features: np.ndarray) -> ScoredRecipe:
    """Fit the spec's recipe once through fit_outlier_detector and return its scores and threshold as its calibration sets it."""
    model = quality.fit_project_detector(train_features)
    train_scores = model.score_samples(train_features)
    limit = fallback_threshold_limit(spec_for(ANOMALY_DETECTOR), model, train_features.shape[1])
    cap = np.inf if limit is None else limit
    return ScoredRecipe(model.score_samples(test_features), lambda rate: min(float(np.quantile(train_scores, rate)), cap))


def score_upstream(train_features: np.ndarray, test_features: np.ndarray) -> ScoredRecipe:
    """Fit the upstream recipe once and return its scores and threshold as IsolationForest sets it from contamination."""
    model = quality.fit_upstream_detector(train_features)
    train_scores = model.score_samples(train_features)
    return ScoredRecipe(model.score_samples(test_features), lambda rate: float(np.percentile(train_scores, 100.0 * rate)))


SCORERS: dict[str, Callable[[np.ndarray, np.ndarray], ScoredRecipe]] = {"project": score_project, "upstream": score_upstream}


def rate_key(rate: float) -> str:
    """Return a rate as its JSON key and table label (0.02 -> "0.02")."""
    return f"{rate:g}"


def machine_points(data_dir: Path, machine: str, rates: tuple[float, ...]) -> dict[str, dict[str, dict[str, float]]]:
    """Return ``{recipe: {rate: precision, recall, f1, flagged}}`` on one SMD machine, each recipe fitted once."""
    train_features, test_features, labels = quality.smd_split(data_dir, machine)
    points = {}
    for recipe, score in SCORERS.items():
        scored = score(train_features, test_features)
        points[recipe] = {}
        for rate in rates:
            flagged = scored.flagged(rate)
            scores = detection_scores(labels, flagged.astype(int))
            points[recipe][rate_key(rate)] = {field: scores[field] for field in ("precision", "recall", "f1")} | {"flagged": int(flagged.sum())}
    return points


def series_points(data_dir: Path, key: str, windows: list[list[str]], rates: tuple[float, ...]) -> dict[str, dict[str, dict]]:
    """Return ``{recipe: {rate: windows_detected, windows, false_positives, flagged, detected}}`` on one NAB series."""
    split = quality.nab_split(data_dir, key, windows)
    points = {}
    for recipe, score in SCORERS.items():
        scored = score(split.train_features, split.test_features)
        points[recipe] = {}
        for rate in rates:
            hit = scored.flagged(rate)
            points[recipe][rate_key(rate)] = {**quality.window_counts(hit, split.windows), "flagged": int(hit.sum()),
                                              "detected": [bool(hit[window].any()) for window in split.windows]}
    return points


def frontier_report(smd: dict[str, dict], nab: dict[str, dict], rates: tuple[float, ...]) -> dict:
    """Return the JSON report: the upstream reference, the targets, and per recipe one point per rate with the targets it meets."""
    defaults = default_rates()
    reference_key = rate_key(defaults["upstream"])
    reference_f1 = {machine: points["upstream"][reference_key]["f1"] for machine, points in smd.items()}
    reference_detected = {series: points["upstream"][reference_key]["detected"] for series, points in nab.items()}
    reference_fp = float(np.mean([points["upstream"][reference_key]["false_positives"] for points in nab.values()]))
    reference = {"rate": defaults["upstream"], "smd_mean_f1": float(np.mean(list(reference_f1.values()))),
                 "nab_windows_detected": sum(sum(detected) for detected in reference_detected.values()),
                 "nab_windows": sum(len(detected) for detected in reference_detected.values()),
                 "nab_false_positives_per_series": reference_fp}
    targets = {"smd_mean_f1": TARGET_SMD_MEAN_F1, "smd_worst_margin": TARGET_WORST_MARGIN,
               "nab_upstream_windows": reference["nab_windows_detected"], "nab_false_positives": TARGET_FALSE_POSITIVE_SHARE * reference_fp}
    recipes = {}
    for recipe in quality.RECIPES:
        points = []
        for rate in rates:
            key = rate_key(rate)
            point = _point(rate, {machine: p[recipe][key] for machine, p in smd.items()}, reference_f1,
                           {series: p[recipe][key] for series, p in nab.items()}, reference_detected)
            point["meets"] = _meets(point, targets)
            points.append(point)
        recipes[recipe] = {"default_rate": defaults[recipe], "points": points}
    return {"rates": list(rates), "upstream_reference": reference, "targets": targets, "recipes": recipes}


def _point(rate: float, machines: dict[str, dict], reference_f1: dict[str, float], series: dict[str, dict],
           reference_detected: dict[str, list[bool]]) -> dict:
    """Return one recipe's scores at one rate: SMD means and worst margin, NAB totals and upstream windows missed, per item."""
    margins = {machine: scores["f1"] - reference_f1[machine] for machine, scores in machines.items()}
    worst = min(margins, key=margins.get)
    missed = {name: sum(upstream and not ours for ours, upstream in zip(scores["detected"], reference_detected[name])) for name, scores in series.items()}
    return {
        "rate": rate,
        "smd": {"mean": {field: float(np.mean([scores[field] for scores in machines.values()])) for field in ("precision", "recall", "f1")},
                "worst_margin": margins[worst], "worst_machine": worst, "items": machines},
        "nab": {"windows_detected": sum(scores["windows_detected"] for scores in series.values()),
                "windows": sum(scores["windows"] for scores in series.values()),
                "upstream_windows_missed": sum(missed.values()),
                "upstream_windows_missed_in": {name: count for name, count in missed.items() if count},
                "false_positives_per_series": float(np.mean([scores["false_positives"] for scores in series.values()])),
                "items": series},
    }


def _meets(point: dict, targets: dict[str, float]) -> dict[str, bool]:
    """Return which of the issue's targets one point meets."""
    return {"smd_mean_f1": point["smd"]["mean"]["f1"] >= targets["smd_mean_f1"],
            "smd_worst_margin": point["smd"]["worst_margin"] >= targets["smd_worst_margin"],
            "nab_upstream_windows": point["nab"]["upstream_windows_missed"] == 0,
            "nab_false_positives": point["nab"]["false_positives_per_series"] <= targets["nab_false_positives"]}


def points_meeting_every_target(report: dict) -> list[str]:
    """Return the points that meet every target, as "<recipe> <rate>"."""
    return [f"{recipe} {point['rate']:g}" for recipe, result in report["recipes"].items() for point in result["points"] if all(point["meets"].values())]


def summary(report: dict) -> str:
    """Return the closing lines of a frontier run: each recipe's curve, the upstream reference and the points meeting every target."""
    lines = []
    for recipe, result in report["recipes"].items():
        lines.append(f"{recipe}: " + ", ".join(f"rate {point['rate']:g} F1 {point['smd']['mean']['f1']:.3f} / "
                                              f"{point['nab']['false_positives_per_series']:.0f} false positives per series"
                                              for point in result["points"]))
    reference = report["upstream_reference"]
    lines.append(f"upstream default: F1 {reference['smd_mean_f1']:.3f}, {reference['nab_windows_detected']}/{reference['nab_windows']} windows, "
                 f"{reference['nab_false_positives_per_series']:.0f} false positives per series; points meeting every target: {', '.join(points_meeting_every_target(report)) or 'none'}")
    return "\n".join(lines)
