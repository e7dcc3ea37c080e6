"""Spec overrides the tests use to train variants of the built-in detector (the product takes overrides as data)."""

from __future__ import annotations


def reseeded(seed: int) -> dict[str, object]:
    """Return the overrides that fit the built-in detector with another random seed (a model with other bytes)."""
    return {"pca.random_state": seed, "detector.random_state": seed}


def isolation_forest(n_estimators: int, max_samples: int = 256) -> dict[str, object]:
    """Return the overrides that swap the built-in detector's PCA and EllipticEnvelope for an IsolationForest of this size."""
    return {"pca.class": "passthrough", "detector.class": "sklearn.ensemble.IsolationForest", "detector.n_estimators": n_estimators,
            "detector.max_samples": max_samples, "detector.random_state": 42}
