"""The train and evaluate steps' settings (recipe hyperparameters and gates), importable without scikit-learn."""

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


@dataclass(frozen=True)
class Gates:
    """Absolute thresholds a candidate must meet, plus the champion/challenger tolerance."""

    min_f1: float = 0.25
    max_mase: float = 1.0
    max_predict_latency_ms: float = 50.0
    max_pickle_mb: float = 50.0
    champion_tolerance: float = 0.05
    max_anomaly_rate: float = 0.2
