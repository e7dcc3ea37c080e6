"""Reference profiles kept with each version, and the drift of live data measured against them.

A profile is compact JSON written with the version and immutable like it:
- ``seasonal``: per base metric, the training median for each hour of the day on weekdays and on weekends (UTC);
- ``features``: per model input feature, quantile bin edges and the fraction of training rows in each bin, of
  the feature with its seasonal median taken away when it is a level (value, window mean/min/max, lags), or
  divided by it (as a log ratio) for network traffic, which scales with load; the
  largest KS statistic of any training window as long as a check's (``ks_null``); for the value of each judged level
  metric, the lowest and highest median of those windows (``median_range``); and ``judged: false`` where a
  feature is not judged: the window mean/min/max and lags of a metric (its value is judged once, not six times
  over), and the level of a cumulative counter (restarts), which only says how long ago pods last restarted;
- ``validation``: what the model did on validation (``monitor.validation_profile``: an anomaly model's anomaly rate, a
  classification model's alert rate, a predictive model's error per output).

Cluster metrics follow the working day, so a few live hours compared with the whole training distribution look
drifted at every check. Taking away the seasonal median first compares like with like, and a shift in level,
spread or mix still shows. Effect sizes, the population stability index (PSI) and the Kolmogorov-Smirnov
statistic, are computed on the bins, without the training data.

Metrics wander for an hour or more at a time, so even a training window's KS statistic can be large, and a slow
change (a memory leak) reaches a KS excess late. The window's median is steadier: one beyond every training
window's, by a share of their range, is drift too (``level_score``), judged with the PSI like the KS excess.

A unit mix-up is an input error, not drift: a metric whose median is about 100 or 1000 times another's, the factor
of one of its unit's mix-ups (``contract.UNIT_LIMITS``: percent for a ratio, millicores for cores), changed unit,
not load. ``check_scale_jumps`` looks for that within a series and ``check_scale_against_profile`` between a live
window and the profile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from components.model.contract import (
    TIMESTAMP_COLUMN,
    UNIT_LIMITS,
    WINDOW_MINUTES,
    ContractError,
    MixUp,
    Unit,
    engineer_features,
    is_synthetic,
    schema_for,
)
from components.model.spec import Input

if TYPE_CHECKING:
    import pandas as pd

    from components.monitoring.monitor import DriftThresholds

PROFILE_BINS = 10
SIGNIFICANT_DIGITS = 6  # keeps a 45-feature profile at a few KB
HOURS_PER_DAY_TYPE = 24  # seasonal slots: hour of day on weekdays, then on weekends (UTC)
LEVEL_SUFFIXES = ("value", "mean_5m", "min_5m", "max_5m", "lag_1m", "lag_5m")  # features that follow the day's load
PROPORTIONAL_METRICS = {"network_in", "network_out"}  # their noise and their changes scale with the traffic
RATIO_FLOOR = 1e-3  # keeps the ratio of a near-zero rate finite
PSI_FLOOR = 1e-4  # a bin fraction below this counts as this, so an empty bin adds a bounded term
# The live window a check compares; the profile's null is measured on windows this long. benchmarks/drift.py: with
# 180 a +0.2 cpu shift was found a check later, and 120 brought no more false triggers.
DRIFT_WINDOW_MINUTES = 120
NULL_STRIDE_MINUTES = 5  # how far apart the training windows of the null are
# A median ratio within this factor of a mix-up's is that mix-up: 50-200x is percent, 500-2000x millicores (either way). A
# mix-up is an exact power of ten, and the load's own change on top of it stays within 2x. A real change that large is
# rare: a ratio under 2 % rising 50x, or a cluster's cores 500x. Network traffic, which does change that much, is left
# out (``mix_up_of``). 10x is no mix-up of these units, so a 10x change stays drift.
MIX_UP_TOLERANCE = 2.0
SCALE_CHUNK_MINUTES = 60  # a series' scale is compared hour by hour: a median of 60 minutes ignores short incidents


def _rounded(values: np.ndarray) -> list[float]:
    """Return ``values`` as floats rounded to SIGNIFICANT_DIGITS, for compact JSON."""
    return [float(f"{value:.{SIGNIFICANT_DIGITS}g}") for value in values]


def feature_profile(names: list[str], features: np.ndarray, bins: int = PROFILE_BINS) -> dict[str, dict[str, list[float]]]:
    """Return, per feature column, the training quantile bin edges and the fraction of rows in each bin.

    Repeated edges (a feature that is mostly one value, like a restart-count difference) collapse, so such a
    feature has fewer, wider bins.
    """
    if features.ndim != 2 or features.shape[1] != len(names) or len(features) == 0:
        raise ValueError(f"a profile needs rows of {len(names)} features, got shape {features.shape}")
    profile = {}
    for column, name in enumerate(names):
        values = features[:, column]
        edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, bins + 1)))
        profile[name] = {"edges": _rounded(edges), "fractions": _rounded(bin_fractions(edges, values))}
    return profile


def bin_fractions(edges: np.ndarray | list[float], values: np.ndarray) -> np.ndarray:
    """Return the fraction of ``values`` in each bin that the profile ``edges`` e0 < e1 < … < ek define.

    The bins are (-inf, e1), [e1, e2), …, [e(k-1), ek), [ek, inf): one per edge. Values below the training
    minimum land in the first, the training maximum and anything above it in the last, so a point mass (a
    restart-count difference that is mostly 0 and sometimes 1) keeps its two bins.
    """
    interior = np.asarray(edges, dtype=float)[1:]
    counts = np.bincount(np.searchsorted(interior, values, side="right"), minlength=len(interior) + 1)
    return counts / max(len(values), 1)


@dataclass(frozen=True)
class FeatureDrift:
    """How far one feature's live distribution is from its training profile, and whether that counts as drift."""

    feature: str
    psi: float
    ks: float
    ks_null: float  # the largest KS statistic of a training window of the same length: what no drift looks like
    live_fractions: list[float]
    judged: bool = True  # False for a value seen through a window (judged once, as the value) and a counter's level
    median: float | None = None  # the live window's median, for a judged level (deseasonalised)
    median_range: tuple[float, float] | None = None  # the lowest and highest median of a training window

    @property
    def score(self) -> float:
        """Return the KS statistic's excess over the training windows', scaled to 0-1 (0: no more than training showed)."""
        return max(0.0, (self.ks - self.ks_null) / max(1.0 - self.ks_null, 1e-9))

    @property
    def level_score(self) -> float:
        """Return how far the live median lies beyond the training windows' medians, in widths of their range (0: within)."""
        if self.median is None or self.median_range is None:
            return 0.0
        low, high = self.median_range
        return max(0.0, self.median - high, low - self.median) / max(high - low, 1e-9)

    def drifted(self, thresholds: DriftThresholds) -> bool:
        """Return whether the feature is judged, its PSI passes, and its KS excess or its level passes ``thresholds``."""
        return self.judged and self.psi >= thresholds.psi and (self.score >= thresholds.ks_excess or self.level_score >= thresholds.level_excess)


def season_slots(timestamps: pd.Series) -> np.ndarray:
    """Return each timestamp's seasonal slot: its UTC hour, plus 24 on Saturdays and Sundays."""
    import pandas as pd

    stamps = pd.to_datetime(timestamps, utc=True)
    return (stamps.dt.hour.to_numpy() + HOURS_PER_DAY_TYPE * (stamps.dt.dayofweek.to_numpy() >= 5)).astype(int)


def seasonal_baseline(raw: pd.DataFrame, model_name: str) -> dict[str, list[float]]:
    """Return, per base metric, the median of each of the 48 slots (an unseen slot: its hour's, else the overall median)."""
    slots = season_slots(raw[TIMESTAMP_COLUMN])
    baseline = {}
    for metric in schema_for(model_name).metric_names:
        values = raw[metric].to_numpy(dtype=float)
        overall = float(np.median(values))
        medians = []
        for slot in range(2 * HOURS_PER_DAY_TYPE):
            in_slot = values[slots == slot]
            if not len(in_slot):
                in_slot = values[slots % HOURS_PER_DAY_TYPE == slot % HOURS_PER_DAY_TYPE]
            medians.append(float(np.median(in_slot)) if len(in_slot) else overall)
        baseline[metric] = _rounded(np.asarray(medians))
    return baseline


def deseasonalised_features(raw: pd.DataFrame, model_name: str, baseline: dict[str, list[float]]) -> tuple[list[str], np.ndarray]:
    """Return the model's input features of ``raw`` with each level feature's seasonal median taken away."""
    schema = schema_for(model_name)
    features = engineer_features(raw, model_name).to_numpy(dtype=float)
    slots = season_slots(raw[TIMESTAMP_COLUMN])[WINDOW_MINUTES:] if schema.engineered else season_slots(raw[TIMESTAMP_COLUMN])
    names = schema.feature_names
    for column, name in enumerate(names):
        metric, kind = _metric_and_kind(name)
        if kind not in LEVEL_SUFFIXES:
            continue
        median = np.asarray(baseline[metric])[slots]
        if metric in PROPORTIONAL_METRICS:  # traffic varies in proportion to load: compare ratios, not differences
            features[:, column] = np.log((features[:, column] + RATIO_FLOOR) / (median + RATIO_FLOOR))
        else:
            features[:, column] -= median
    return names, features


def _metric_and_kind(feature: str) -> tuple[str, str]:
    """Return a feature's base metric and kind: "cpu__mean_5m" is ("cpu", "mean_5m"), a raw metric "cpu" is ("cpu", "value")."""
    metric, _, suffix = feature.partition("__")
    return metric, suffix or "value"


def drift_profile(raw: pd.DataFrame, model_name: str, window_minutes: int = DRIFT_WINDOW_MINUTES) -> dict:
    """Return the training side of a profile: seasonal medians, deseasonalised feature bins, and each feature's ``ks_null``."""
    baseline = seasonal_baseline(raw, model_name)
    names, features = deseasonalised_features(raw, model_name, baseline)
    profile = feature_profile(names, features)
    counters = {metric.name for metric in schema_for(model_name).base_metrics if metric.unit is Unit.COUNT}
    for column, name in enumerate(names):
        profile[name]["ks_null"] = round(window_ks_maximum(profile[name], features[:, column], window_minutes), 4)
        metric, kind = _metric_and_kind(name)
        if kind in LEVEL_SUFFIXES and (metric in counters or kind != "value"):
            profile[name]["judged"] = False
        elif kind == "value":
            profile[name]["median_range"] = _rounded(np.asarray(window_median_range(features[:, column], window_minutes)))
    return {"seasonal": baseline, "window_minutes": window_minutes, "features": profile}


def window_ks_maximum(bins: dict, values: np.ndarray, window: int, stride: int = NULL_STRIDE_MINUTES) -> float:
    """Return the largest KS statistic of any ``window``-row slice of ``values`` (every ``stride`` rows) against ``bins``.

    Counts per bin come from running sums, so the cost is linear in the rows times the bins.
    """
    if len(values) <= window:
        return ks_statistic(np.asarray(bins["fractions"], dtype=float), bin_fractions(bins["edges"], values))
    reference_cdf = np.cumsum(np.asarray(bins["fractions"], dtype=float))
    interior = np.asarray(bins["edges"], dtype=float)[1:]
    bin_of_row = np.searchsorted(interior, values, side="right")
    running = np.zeros((len(values) + 1, len(interior) + 1))
    running[np.arange(1, len(values) + 1), bin_of_row] = 1.0
    running = np.cumsum(running, axis=0)
    ends = np.arange(window, len(values) + 1, stride)
    live_cdf = np.cumsum(running[ends] - running[ends - window], axis=1) / window
    return float(np.max(np.abs(live_cdf - reference_cdf)))


def window_median_range(values: np.ndarray, window: int, stride: int = NULL_STRIDE_MINUTES) -> tuple[float, float]:
    """Return the lowest and highest median of any ``window``-row slice of ``values`` (every ``stride`` rows); linear in the rows."""
    if len(values) <= window:
        median = float(np.median(values))
        return median, median
    medians = np.median(sliding_window_view(values, window)[::stride], axis=1)
    return float(medians.min()), float(medians.max())


def population_stability_index(reference: np.ndarray, live: np.ndarray) -> float:
    """Return the PSI between two sets of bin fractions: sum of (live - reference) * ln(live / reference)."""
    reference, live = np.maximum(reference, PSI_FLOOR), np.maximum(live, PSI_FLOOR)
    return float(np.sum((live - reference) * np.log(live / reference)))


def ks_statistic(reference: np.ndarray, live: np.ndarray) -> float:
    """Return the Kolmogorov-Smirnov statistic at the bin edges: the largest gap between the cumulative fractions."""
    return float(np.max(np.abs(np.cumsum(reference) - np.cumsum(live))))


def measure_drift(profile: dict, live_raw: pd.DataFrame, model_name: str) -> list[FeatureDrift]:
    """Return each feature's drift of ``live_raw`` (validated per-minute metrics) from ``profile``, largest score first."""
    names, features = deseasonalised_features(live_raw, model_name, profile["seasonal"])
    drifts = []
    for column, name in enumerate(names):
        bins = profile["features"][name]
        live = bin_fractions(bins["edges"], features[:, column])
        reference = np.asarray(bins["fractions"], dtype=float)
        median_range = tuple(bins["median_range"]) if "median_range" in bins else None  # profiles saved before it have none
        median = float(np.median(features[:, column])) if median_range else None
        drifts.append(FeatureDrift(name, population_stability_index(reference, live), ks_statistic(reference, live),
                                   float(bins["ks_null"]), _rounded(live), bool(bins.get("judged", True)), median, median_range))
    return sorted(drifts, key=lambda drift: (drift.judged, max(drift.score, drift.level_score), drift.psi), reverse=True)


def mix_up_of(metric: Input, factor: float) -> MixUp | None:
    """Return the unit mix-up that ``factor`` (one median of ``metric`` over another) looks like, or None for a real change.

    Network traffic is left out: its level really changes by orders of magnitude, and no one sends it in percent.
    """
    if metric.name in PROPORTIONAL_METRICS or not (factor > 0 and math.isfinite(factor)):
        return None
    size = max(factor, 1.0 / factor)
    return next((mix_up for mix_up in UNIT_LIMITS[metric.unit].mix_ups
                 if mix_up.factor / MIX_UP_TOLERANCE <= size <= mix_up.factor * MIX_UP_TOLERANCE), None)


def check_scale_jumps(raw: pd.DataFrame, model_name: str, source: str) -> None:
    """Raise ContractError when a metric's hourly median jumps by a unit mix-up's factor (``mix_up_of``) within ``raw``.

    Each hour is compared with the next two, so a jump inside an hour is found too. Linear in the rows.
    """
    import pandas as pd

    chunks = len(raw) // SCALE_CHUNK_MINUTES
    if chunks < 2:
        return
    starts = pd.to_datetime(raw[TIMESTAMP_COLUMN].iloc[::SCALE_CHUNK_MINUTES], utc=True).to_list()
    for metric in schema_for(model_name).base_metrics:
        values = raw[metric.name].to_numpy(dtype=float)[: chunks * SCALE_CHUNK_MINUTES]
        medians = np.median(values.reshape(chunks, SCALE_CHUNK_MINUTES), axis=1)
        for distance in (1, 2):
            for first, (before, after) in enumerate(zip(medians, medians[distance:])):
                mix_up = mix_up_of(metric, after / before if before > 0 else math.nan)
                if mix_up is None:
                    continue
                larger, change = ("later", "rises") if after > before else ("earlier", "falls")
                begin, end = starts[first], starts[first + distance] + pd.Timedelta(minutes=SCALE_CHUNK_MINUTES)
                # Both sides are in range, so a retrain can learn the right one now, rather than wait until the change leaves its window.
                raise ContractError(
                    f"{source}: {metric.name} {change} {max(after / before, before / after):.0f}x between {begin:%Y-%m-%d %H:%M} and "
                    f"{end:%Y-%m-%d %H:%M} UTC (hourly median {before:.4g}, then {after:.4g}): the {larger} part looks like {mix_up.name}, "
                    f"and the contract unit is {metric.unit.value}; fix the query or exporter, or divide that part by {mix_up.factor:g}; to "
                    f"learn one side only, a retrain can set data.regime_start={end:%Y-%m-%dT%H:%M}:00Z (the later part) or, from Prometheus, "
                    f"prometheus.end={begin:%Y-%m-%dT%H:%M}:00Z (the earlier part)"
                )


def check_scale_against_profile(profile: dict, data_source: str, live_raw: pd.DataFrame, model_name: str, version: str) -> None:
    """Raise ContractError when a metric's live median is a unit mix-up's factor (``mix_up_of``) off what ``version`` learned.

    The reference is the profile's seasonal median for the live window's hours. A version that learned synthetic data
    (or whose data source was not recorded) has a made-up cluster's scale and is not compared.
    """
    if is_synthetic(data_source) or data_source == "unknown":
        return
    slots = season_slots(live_raw[TIMESTAMP_COLUMN])
    for metric in schema_for(model_name).base_metrics:
        learned = float(np.median(np.asarray(profile["seasonal"][metric.name], dtype=float)[slots]))
        live = float(np.median(live_raw[metric.name].to_numpy(dtype=float)))
        factor = live / learned if learned > 0 else math.nan
        mix_up = mix_up_of(metric, factor)
        if mix_up is None:
            continue
        if factor > 1.0:
            size, cause = f"{factor:.0f}x", f"is it in {mix_up.name}? The contract unit is {metric.unit.value}: divide by {mix_up.factor:g}"
        else:
            size, cause = f"1/{1.0 / factor:.0f} of", (f"was this window divided by {mix_up.factor:g} twice, or did {version} learn it in "
                                                      f"{mix_up.name}? The contract unit is {metric.unit.value}: fix the data, then retrain")
        raise ContractError(f"input error, not drift: {metric.name} median {live:.4g} is {size} the {learned:.4g} that {version} "
                            f"learned for these hours: {cause}. Nothing is retrained on it")
