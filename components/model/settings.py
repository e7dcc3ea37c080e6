"""The built-in models' recipe hyperparameters in their historical form (``train.detector_overrides`` maps them onto spec overrides)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DetectorParams:
    """Hyperparameters of the anomaly detector recipe."""

    algorithm: str = "elliptic_envelope"
    scaler: str = "standard"
    n_estimators: int = 200
    max_samples: int = 256
    pca_components: int = 15
    target_false_positive_rate: float = 0.02
    random_state: int = 42


@dataclass(frozen=True)
class ForecasterParams:
    """Hyperparameters of the forecaster recipe."""

    horizon_minutes: int = 60
    alpha: float = 1.0
