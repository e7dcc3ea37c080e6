"""The detector and forecaster recipes as components/model/train.py wrote them before models became specs (commit 512f2e2).

Frozen here, outside the product, only so that tests/test_train_spec.py can prove the spec path reproduces them byte for
byte. Do not use it anywhere else.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
from sklearn.covariance import EllipticEnvelope
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.impute import SimpleImputer
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import RobustScaler, StandardScaler

from components.model.contract import FEATURE_SUFFIXES, fallback_instance

FALLBACK_METRIC_FEATURES = (0.5, 0.5, 0.1, 0.3, 0.7, 0.5, 0.5, 0.0, 0.0)
HOLDOUT_FRACTION = 0.2
FALLBACK_MARGIN = 0.01
# The recipe parameters' defaults as DetectorParams and ForecasterParams held them (components/model/settings.py).
DETECTOR_DEFAULTS = {"algorithm": "elliptic_envelope", "scaler": "standard", "n_estimators": 200, "max_samples": 256, "pca_components": 15,
                     "target_false_positive_rate": 0.02, "random_state": 42}
FORECASTER_DEFAULTS = {"horizon_minutes": 60, "alpha": 1.0}
OUTPUT_RANGES = {"cpu": (0.0, 1.0), "memory": (0.0, 1.0), "disk": (0.0, 1.0), "network_in": (0.0, 1.0), "network_out": (0.0, 1.0)}


def no_data_imputer(n_features: int) -> ColumnTransformer:
    columns_by_sentinel: dict[float, list[int]] = {}
    for index in range(n_features):
        position = index % len(FEATURE_SUFFIXES)
        if FALLBACK_METRIC_FEATURES[position] != 0.0:
            columns_by_sentinel.setdefault(FALLBACK_METRIC_FEATURES[position], []).append(index)
    imputers = [
        (f"no_data_{sentinel:g}", SimpleImputer(missing_values=sentinel, strategy="median", keep_empty_features=True), columns)
        for sentinel, columns in columns_by_sentinel.items()
    ]
    return ColumnTransformer(imputers, remainder="passthrough")


def detector_pipeline(n_features: int, **changes) -> Pipeline:
    params = SimpleNamespace(**{**DETECTOR_DEFAULTS, **changes})
    if params.algorithm == "isolation_forest":
        steps = [("detector", IsolationForest(n_estimators=params.n_estimators, max_samples=params.max_samples, random_state=params.random_state))]
    else:
        steps = [
            ("pca", PCA(n_components=min(params.pca_components, n_features - n_features // len(FEATURE_SUFFIXES)), random_state=params.random_state)),
            ("detector", EllipticEnvelope(random_state=params.random_state, support_fraction=0.99)),
        ]
    scaler = {"robust": RobustScaler, "standard": StandardScaler}[params.scaler]()
    return Pipeline([("no_data", no_data_imputer(n_features)), ("scaler", scaler), *steps])


def fit_detector(normal: np.ndarray, **changes) -> tuple[Pipeline, dict]:
    params = SimpleNamespace(**{**DETECTOR_DEFAULTS, **changes})
    pipeline = detector_pipeline(normal.shape[1], **changes)
    pipeline.fit(normal)
    scores = pipeline.score_samples(normal)
    fallback = np.array([fallback_instance(normal.shape[1] // len(FEATURE_SUFFIXES))])
    fallback_score = float(pipeline.score_samples(fallback)[0])
    offset = float(np.quantile(scores, params.target_false_positive_rate))
    fallback_limit = fallback_score - FALLBACK_MARGIN * abs(fallback_score)
    threshold = min(offset, fallback_limit)
    pipeline.named_steps["detector"].offset_ = threshold
    return pipeline, {"threshold": threshold, "threshold_set_by": "fallback_vector" if fallback_limit < offset else "target_false_positive_rate",
                      "training_false_positive_rate": float(np.mean(scores < threshold))}


def fit_forecaster(current: np.ndarray, future: np.ndarray, alpha: float) -> TransformedTargetRegressor:
    holdout = int(len(current) * (1.0 - HOLDOUT_FRACTION))
    probe = Ridge(alpha=alpha).fit(current[:holdout], future[:holdout] - current[:holdout])
    learned_error = np.abs(current[holdout:] + probe.predict(current[holdout:]) - future[holdout:]).mean(axis=0)
    persistence_error = np.abs(current[holdout:] - future[holdout:]).mean(axis=0)
    keep_learned = learned_error < persistence_error
    ridge = Ridge(alpha=alpha).fit(current, future - current)
    ridge.coef_ = np.where(keep_learned[:, None], ridge.coef_, 0.0) + np.eye(current.shape[1])
    ridge.intercept_ = np.where(keep_learned, ridge.intercept_, 0.0)
    lows, highs = (np.array(bound, dtype=float) for bound in zip(*OUTPUT_RANGES.values()))
    clip = functools.partial(np.clip, a_min=lows, a_max=highs)
    wrapper = TransformedTargetRegressor(regressor=Ridge(), func=clip, inverse_func=clip, check_inverse=False)
    wrapper.fit(current, future)
    wrapper.regressor_ = ridge
    return wrapper


# The gates' defaults as components/settings.py held them before the specs (commit f27d9f5).
GATES_BEFORE_SPECS = {"min_f1": 0.25, "max_mase": 1.0, "max_predict_latency_ms": 50.0, "max_pickle_mb": 50.0, "champion_tolerance": 0.05,
                      "max_anomaly_rate": 0.2}
