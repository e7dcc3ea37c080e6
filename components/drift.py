"""Reference profiles kept with each version: what later drift checks compare live data against.

A profile is compact JSON written with the version and immutable like it: per model input feature, the training
data's quantile bin edges and the fraction of training rows in each bin; plus what the model did on validation
(the detector's predicted anomaly rate, the forecaster's error per output). Effect sizes such as the population
stability index and the Kolmogorov-Smirnov statistic can be computed on these bins without the training data.
"""

from __future__ import annotations

import math

import numpy as np

PROFILE_BINS = 10
SIGNIFICANT_DIGITS = 6  # keeps a 45-feature profile at a few KB


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


def validation_profile(metrics: dict[str, float]) -> dict[str, float]:
    """Return what the model did on validation, from its evaluation metrics: anomaly rate, or error per output."""
    kept = {key: float(value) for key, value in metrics.items()
            if (key == "anomaly_rate" or key.startswith("mae_")) and isinstance(value, (int, float)) and math.isfinite(value)}
    return dict(sorted(kept.items()))
