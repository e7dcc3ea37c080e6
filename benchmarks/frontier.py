"""The detector's frontier: SMD F1 against NAB false-positive rows, per training-only calibration rate, for both recipes.

Each recipe is fitted once per SMD machine and NAB series. A calibration rate then sets its threshold from its own
training scores only, the same rate for every series: the project recipe as ``train.fit_outlier_detector`` calibrates
(the ``rate`` quantile of ``score_samples`` on the training rows, never above the engine's fallback probe), the
upstream recipe as IsolationForest's ``contamination`` does (the same percentile of its training scores). Test labels
only score the points; the rates are a fixed list. The targets are issue 24's, measured against the upstream recipe at
its own default in the same run.

``--candidates`` adds the recipes tried against the project's and kept out of the spec, each stock scikit-learn and
served the same way, under the same fallback cap: ``envelope-only``, the spec's recipe with ``residual_weight`` 0 (the
envelope on the leading PCA components alone, the default before 2026-12-07); ``project-pot``, the project's detector
with a peaks-over-threshold threshold (a generalized Pareto fit to the lowest 2 % of its training scores, extrapolated
to the rate, as SPOT sets one); and on the envelope-only recipe's fitted no-data imputer, scaler and PCA, ``lof``, a
LocalOutlierFactor novelty detector, and ``isolation-forest-pca``, an IsolationForest on the PCA components.

Each recipe also gets a hindsight bound per series, with its threshold tuned on that series' test labels: the best SMD
F1 any threshold reaches, and the fewest NAB false-positive rows any threshold flags while still catching every window
upstream's default catches. No detector can set those thresholds; the bounds say whether a target is lost in the score
(the bound misses it too) or in the training-only calibration (the bound meets it), and the share of training rows
each bound's threshold flags says which single rate, if any, would have landed every series.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import stats
from sklearn.base import clone
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor
from sklearn.pipeline import Pipeline

from benchmarks import quality
from components.model.contract import ANOMALY_DETECTOR
from components.model.evaluate import detection_scores
from components.model.spec import spec_for
from components.model.train import fallback_threshold_limit, fit_outlier_detector, spec_with_overrides

DEFAULT_RATES = (0.005, 0.01, 0.02, 0.03, 0.05)
TARGET_SMD_MEAN_F1 = 0.45
# No SMD machine may score an F1 lower than the upstream recipe's by more than this.
TARGET_WORST_MARGIN = -0.02
# NAB: at most this share of the upstream recipe's false-positive rows, while detecting every window it detects.
TARGET_FALSE_POSITIVE_SHARE = 1 / 3
TARGETS = ("smd_mean_f1", "smd_worst_margin", "nab_upstream_windows", "nab_false_positives")
BASE_RECIPES = ("project", "upstream")
CANDIDATES = {  # what each candidate recipe is, for the report
    "envelope-only": "the spec's recipe with residual_weight 0: the EllipticEnvelope on the leading PCA components alone, at the rate's quantile",
    "project-pot": "the project's detector, its threshold a generalized Pareto fit to its lowest 2 % of training scores, extrapolated to the rate",
    "lof": "LocalOutlierFactor(20 neighbours, novelty) on the envelope-only recipe's fitted imputer, scaler and PCA, at the rate's quantile of its training scores",
    "isolation-forest-pca": "IsolationForest(200 trees) on the envelope-only recipe's fitted imputer, scaler and PCA, at the rate's quantile of its training scores",
}
POT_TAIL = 0.02  # peaks over threshold: the generalized Pareto fit takes this lowest share of the training scores
MIN_PEAKS = 10
LOF_NEIGHBOURS = 20
CANDIDATE_MAX_ROWS = 8000  # a candidate detector fits on at most this many evenly spaced training rows (LOF's fit grows faster than linearly)


@dataclass(frozen=True)
class ScoredRecipe:
    """One recipe fitted once on one series: its training-row and test-row scores and its training-only threshold for any rate."""

    train_scores: np.ndarray
    test_scores: np.ndarray
    threshold: Callable[[float], float]

    def flagged(self, rate: float) -> np.ndarray:
        """Return the test rows flagged (True = anomaly) with the threshold calibrated to ``rate``: score below it, as predict does."""
        return self.test_scores < self.threshold(rate)


def default_rates() -> dict[str, float]:
    """Return each recipe's own calibration rate: upstream's contamination, and the spec's target_false_positive_rate for the
    project and every candidate."""
    project_rate = spec_for(ANOMALY_DETECTOR).estimator.training["target_false_positive_rate"]
    return {recipe: project_rate for recipe in SCORERS} | {"upstream": quality.upstream_detector().named_steps["detector"].contamination}


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


def parse_candidates(text: str) -> tuple[str, ...]:
    """Return the candidate recipes of a comma-separated list (empty for ""); raise ValueError naming an unknown one and the choices."""
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [name for name in names if name not in CANDIDATES]
    if unknown:
        raise ValueError(f"{', '.join(map(repr, unknown))}: not a candidate recipe; choose from {', '.join(CANDIDATES)}")
    return names


def evaluated_rates(rates: tuple[float, ...]) -> tuple[float, ...]:
    """Return the requested rates plus each recipe's own default, sorted, so both defaults are always points."""
    return tuple(sorted(set(rates) | set(default_rates().values())))


def pot_threshold(train_scores: np.ndarray, rate: float, tail: float = POT_TAIL) -> float:
    """Return the score below which a share ``rate`` of rows is expected, from a generalized Pareto fit to the lowest ``tail``
    share of the training scores (peaks over threshold); at or above ``tail``, the plain quantile."""
    if rate >= tail:
        return float(np.quantile(train_scores, rate))
    anomalous = -np.asarray(train_scores, dtype=float)  # the tail to fit: higher is more anomalous
    initial = float(np.quantile(anomalous, 1.0 - tail))
    peaks = anomalous[anomalous > initial] - initial
    if len(peaks) < MIN_PEAKS:
        return float(np.quantile(train_scores, rate))
    shape, _, scale = stats.genpareto.fit(peaks, floc=0)
    ratio = rate * len(anomalous) / len(peaks)
    excess = scale / shape * (ratio ** -shape - 1) if abs(shape) > 1e-6 else -scale * np.log(ratio)
    return -(initial + float(excess))


@dataclass
class Series:
    """One SMD machine's or NAB series' training and test features; the project recipe is fitted on them once, for every
    recipe that builds on it."""

    train_features: np.ndarray
    test_features: np.ndarray

    @functools.cached_property
    def project(self) -> Pipeline:
        """Return the spec's recipe fitted through fit_outlier_detector on the training rows."""
        return quality.fit_project_detector(self.train_features)

    @functools.cached_property
    def envelope_only(self) -> Pipeline:
        """Return the spec's recipe fitted without its residual (``residual_weight`` 0): the candidates build on its imputer, scaler and PCA."""
        return fit_outlier_detector(spec_with_overrides(spec_for(ANOMALY_DETECTOR), {"residual_weight": 0.0}), self.train_features)[0]

    @functools.cached_property
    def project_scores(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the project recipe's scores of the training rows and of the test rows."""
        return self.project.score_samples(self.train_features), self.project.score_samples(self.test_features)

    def capped(self, model: Pipeline, threshold: Callable[[float], float]) -> Callable[[float], float]:
        """Return ``threshold`` kept below the engine's fallback probe's score under ``model``, as fit_outlier_detector keeps it."""
        limit = fallback_threshold_limit(spec_for(ANOMALY_DETECTOR), model, self.train_features.shape[1])
        cap = np.inf if limit is None else limit
        return lambda rate: min(threshold(rate), cap)

    def at_quantile(self, model: Pipeline, scores: tuple[np.ndarray, np.ndarray] | None = None) -> ScoredRecipe:
        """Return ``model``'s training-row and test-row scores (``scores`` when already computed) with the threshold
        fit_outlier_detector sets: the rate's quantile of the training scores, under the fallback cap."""
        train_scores, test_scores = scores or (model.score_samples(self.train_features), model.score_samples(self.test_features))
        return ScoredRecipe(train_scores, test_scores, self.capped(model, lambda rate: float(np.quantile(train_scores, rate))))


def score_project(series: Series) -> ScoredRecipe:
    """Return the spec's recipe's scores and threshold as its calibration sets it: the rate's quantile, under the fallback cap."""
    return series.at_quantile(series.project, series.project_scores)


def score_upstream(series: Series) -> ScoredRecipe:
    """Fit the upstream recipe once and return its scores and threshold as IsolationForest sets it from contamination."""
    model = quality.fit_upstream_detector(series.train_features)
    train_scores = model.score_samples(series.train_features)
    return ScoredRecipe(train_scores, model.score_samples(series.test_features), lambda rate: float(np.percentile(train_scores, 100.0 * rate)))


def score_envelope_only(series: Series) -> ScoredRecipe:
    """Return the scores and threshold of the spec's recipe without its residual, as its calibration sets it, under the fallback cap."""
    return series.at_quantile(series.envelope_only)


def score_project_pot(series: Series) -> ScoredRecipe:
    """Return the spec's recipe's scores with a peaks-over-threshold threshold, under the fallback cap."""
    train_scores, test_scores = series.project_scores
    return ScoredRecipe(train_scores, test_scores, series.capped(series.project, lambda rate: pot_threshold(train_scores, rate)))


def _on_project_components(detector: object) -> Callable[[Series], ScoredRecipe]:
    """Return a scorer that fits ``detector`` on the envelope-only recipe's fitted imputer, scaler and PCA (at most CANDIDATE_MAX_ROWS evenly spaced
    training rows) and sets its threshold at the rate's quantile of its training scores, under the fallback cap."""
    def score(series: Series) -> ScoredRecipe:
        preprocessing = series.envelope_only.steps[:-1]
        train = series.train_features
        rows = np.linspace(0, len(train) - 1, min(len(train), CANDIDATE_MAX_ROWS)).astype(int)
        return series.at_quantile(Pipeline([*preprocessing, ("detector", clone(detector).fit(Pipeline(preprocessing).transform(train[rows])))]))
    return score


SCORERS: dict[str, Callable[[Series], ScoredRecipe]] = {
    "project": score_project, "upstream": score_upstream, "envelope-only": score_envelope_only, "project-pot": score_project_pot,
    "lof": _on_project_components(LocalOutlierFactor(n_neighbors=LOF_NEIGHBOURS, novelty=True)),
    "isolation-forest-pca": _on_project_components(IsolationForest(n_estimators=200, random_state=42)),
}


def rate_key(rate: float) -> str:
    """Return a rate as its JSON key and table label (0.02 -> "0.02")."""
    return f"{rate:g}"


def hindsight_f1(scored: ScoredRecipe, labels: np.ndarray) -> dict[str, float]:
    """Return the best point-wise F1 any threshold on the test scores reaches against ``labels`` (tuned on them: a bound, not a
    detector) and the share of training rows that threshold flags."""
    order = np.argsort(scored.test_scores, kind="stable")
    ordered = scored.test_scores[order]
    true_positives = np.cumsum(np.asarray(labels)[order])
    # A threshold flags every row scoring at or below it, so it can only cut after the last of equal scores.
    cuts = np.flatnonzero(np.append(ordered[1:] != ordered[:-1], True))
    f1 = 2.0 * true_positives[cuts] / (cuts + 1 + true_positives[-1])
    best = cuts[int(np.argmax(f1))]
    return {"f1": float(f1.max()), "rate": float(np.mean(scored.train_scores <= ordered[best]))}


def hindsight_windows(scored: ScoredRecipe, windows: list[np.ndarray], needed: list[bool]) -> dict[str, float | None]:
    """Return the fewest false-positive rows any threshold on the test scores flags while still catching every window marked
    ``needed`` (tuned on the labels: a bound, not a detector) and the share of training rows that threshold flags (None when
    no window is needed: no threshold is)."""
    chosen = [window for window, need in zip(windows, needed) if need]
    if not chosen:
        return {"false_positives": 0, "rate": None}
    # Each chosen window needs its most anomalous row flagged; the threshold is the least anomalous of those rows.
    threshold = max(float(scored.test_scores[window].min()) for window in chosen)
    counts = quality.window_counts(scored.test_scores <= threshold, windows)
    return {"false_positives": counts["false_positives"], "rate": float(np.mean(scored.train_scores <= threshold))}


def machine_points(data_dir: Path, machine: str, rates: tuple[float, ...], recipes: tuple[str, ...]) -> dict[str, dict[str, dict]]:
    """Return ``{recipe: {by_rate: {rate: precision, recall, f1, flagged}, hindsight: f1, rate}}`` on one SMD machine, each
    recipe fitted once."""
    train_features, test_features, labels = quality.smd_split(data_dir, machine)
    series = Series(train_features, test_features)
    points = {}
    for recipe in recipes:
        scored = SCORERS[recipe](series)
        by_rate = {}
        for rate in rates:
            flagged = scored.flagged(rate)
            scores = detection_scores(labels, flagged.astype(int))
            by_rate[rate_key(rate)] = {field: scores[field] for field in ("precision", "recall", "f1")} | {"flagged": int(flagged.sum())}
        points[recipe] = {"by_rate": by_rate, "hindsight": hindsight_f1(scored, labels)}
    return points


def series_points(data_dir: Path, key: str, windows: list[list[str]], rates: tuple[float, ...],
                  recipes: tuple[str, ...]) -> dict[str, dict[str, dict]]:
    """Return ``{recipe: {by_rate: {rate: windows_detected, windows, false_positives, flagged, detected}, hindsight:
    false_positives, rate}}`` on one NAB series; the hindsight catches every window upstream's default detects."""
    split = quality.nab_split(data_dir, key, windows)
    series = Series(split.train_features, split.test_features)
    scored = {recipe: SCORERS[recipe](series) for recipe in dict.fromkeys(("upstream", *recipes))}
    upstream_hit = scored["upstream"].flagged(default_rates()["upstream"])
    needed = [bool(upstream_hit[window].any()) for window in split.windows]
    points = {}
    for recipe in recipes:
        by_rate = {}
        for rate in rates:
            hit = scored[recipe].flagged(rate)
            by_rate[rate_key(rate)] = {**quality.window_counts(hit, split.windows), "flagged": int(hit.sum()),
                                       "detected": [bool(hit[window].any()) for window in split.windows]}
        points[recipe] = {"by_rate": by_rate, "hindsight": hindsight_windows(scored[recipe], split.windows, needed)}
    return points


def frontier_report(smd: dict[str, dict], nab: dict[str, dict], rates: tuple[float, ...]) -> dict:
    """Return the JSON report: the upstream reference, the targets, and per recipe one point per rate with the targets it meets."""
    defaults = default_rates()
    reference_key = rate_key(defaults["upstream"])
    reference_f1 = {machine: points["upstream"]["by_rate"][reference_key]["f1"] for machine, points in smd.items()}
    reference_detected = {series: points["upstream"]["by_rate"][reference_key]["detected"] for series, points in nab.items()}
    reference_fp = float(np.mean([points["upstream"]["by_rate"][reference_key]["false_positives"] for points in nab.values()]))
    reference = {"rate": defaults["upstream"], "smd_mean_f1": float(np.mean(list(reference_f1.values()))),
                 "nab_windows_detected": sum(sum(detected) for detected in reference_detected.values()),
                 "nab_windows": sum(len(detected) for detected in reference_detected.values()),
                 "nab_false_positives_per_series": reference_fp}
    targets = {"smd_mean_f1": TARGET_SMD_MEAN_F1, "smd_worst_margin": TARGET_WORST_MARGIN,
               "nab_upstream_windows": reference["nab_windows_detected"], "nab_false_positives": TARGET_FALSE_POSITIVE_SHARE * reference_fp}
    recipes = {}
    for recipe in next(iter(smd.values())):  # the recipes every machine was scored with
        points = []
        for rate in rates:
            key = rate_key(rate)
            point = _point(rate, {machine: p[recipe]["by_rate"][key] for machine, p in smd.items()}, reference_f1,
                           {series: p[recipe]["by_rate"][key] for series, p in nab.items()}, reference_detected)
            point["meets"] = _meets(point, targets)
            points.append(point)
        recipes[recipe] = {"default_rate": defaults[recipe], "points": points,
                           "hindsight": _hindsight({machine: p[recipe]["hindsight"] for machine, p in smd.items()}, reference_f1,
                                                   {series: p[recipe]["hindsight"] for series, p in nab.items()}, targets)}
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


def _hindsight(machines: dict[str, dict], reference_f1: dict[str, float], series: dict[str, dict], targets: dict[str, float]) -> dict:
    """Return one recipe's hindsight bounds: SMD mean F1 and the machines below the margin target even so, NAB false positives
    per series, the targets the bounds meet, and the range of training shares their thresholds flag."""
    margins = {machine: bound["f1"] - reference_f1[machine] for machine, bound in machines.items()}
    below = {machine: margin for machine, margin in margins.items() if margin < targets["smd_worst_margin"]}
    mean_f1 = float(np.mean([bound["f1"] for bound in machines.values()]))
    false_positives = float(np.mean([bound["false_positives"] for bound in series.values()]))
    smd_rates = [bound["rate"] for bound in machines.values()]
    nab_rates = [bound["rate"] for bound in series.values() if bound["rate"] is not None]
    return {"smd": {"mean_f1": mean_f1, "machines_below_margin": below, "items": machines, "rates": [min(smd_rates), max(smd_rates)]},
            "nab": {"false_positives_per_series": false_positives, "items": series,
                    "rates": [min(nab_rates, default=0.0), max(nab_rates, default=0.0)]},
            "meets": {"smd_mean_f1": mean_f1 >= targets["smd_mean_f1"], "smd_worst_margin": not below,
                      "nab_false_positives": false_positives <= targets["nab_false_positives"]}}


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
                                              for point in result["points"])
                     + f"; in hindsight F1 {result['hindsight']['smd']['mean_f1']:.3f} / "
                       f"{result['hindsight']['nab']['false_positives_per_series']:.0f} false positives per series")
    reference = report["upstream_reference"]
    lines.append(f"upstream default: F1 {reference['smd_mean_f1']:.3f}, {reference['nab_windows_detected']}/{reference['nab_windows']} windows, "
                 f"{reference['nab_false_positives_per_series']:.0f} false positives per series; points meeting every target: {', '.join(points_meeting_every_target(report)) or 'none'}")
    return "\n".join(lines)
