"""train: stock scikit-learn estimators for the two models, with nothing from this project inside the pickle."""

from __future__ import annotations

import functools
import hashlib
import json
import pickle
import pickletools
from dataclasses import asdict, dataclass, field
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
from sklearn.covariance import EllipticEnvelope
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.impute import SimpleImputer
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import RobustScaler, StandardScaler

from components.model.contract import (
    ANOMALY_DETECTOR,
    PREDICTIVE_ANALYTICS,
    FALLBACK_METRIC_FEATURES,
    FEATURE_SUFFIXES,
    ContractError,
    engineer_features,
    fallback_instance,
    feature_labels,
    forecast_pairs,
)
from components.monitoring.drift import drift_profile
from components.model.settings import DetectorParams, ForecasterParams
from components.store.filesystem import MODEL_FILENAME, TRAINING_FILENAME

HOLDOUT_FRACTION = 0.2
# How far below the fallback vector's score the detector threshold sits, relative to that score.
FALLBACK_MARGIN = 0.01
# Modules a stock sklearn server can import when it unpickles a model.
STOCK_PICKLE_MODULES = ("sklearn", "numpy", "scipy", "joblib", "builtins", "copyreg", "_codecs", "collections", "functools")
# Each forecaster output's physical range, in contract order: ratios of capacity, and network as the engine
# scales it (bytes/s / 125e6, clamped to 0-1 by the engine, so a forecast above 1 could never be observed).
OUTPUT_RANGES = {"cpu": (0.0, 1.0), "memory": (0.0, 1.0), "disk": (0.0, 1.0), "network_in": (0.0, 1.0), "network_out": (0.0, 1.0)}
# How many training inputs, with the model's predictions for them, are stored with a version for the smoke test.
REFERENCE_ROWS = 16


@dataclass(frozen=True)
class TrainedModel:
    """A fitted stock estimator and what produced it."""

    estimator: object
    parameters: dict
    data_fingerprint: str
    training_rows: int
    profile: dict = field(default_factory=dict)  # drift.drift_profile of the training data
    reference: dict = field(default_factory=dict)  # reference_predictions on a few training inputs


def data_fingerprint(frame: pd.DataFrame) -> str:
    """Return a sha256 over the frame's values and column names, stable across file formats."""
    digest = hashlib.sha256(",".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def _scaler(name: str) -> RobustScaler | StandardScaler:
    """Return the named stock scaler."""
    scalers = {"robust": RobustScaler, "standard": StandardScaler}
    if name not in scalers:
        raise ContractError(f"unknown scaler {name!r}: use one of {', '.join(scalers)}")
    return scalers[name]()


def no_data_imputer(n_features: int) -> ColumnTransformer:
    """Return a stock transformer that replaces the engine's no-data values with training medians.

    When Prometheus fails the engine sends fixed values per metric (``FALLBACK_METRIC_FEATURES``). They mean
    "no data", not a real minute, so each is treated as missing in its own feature column (value 0.5, std 0.1,
    min 0.3, max 0.7 ...) and imputed with that column's training median: the fallback vector becomes a typical
    minute. The diff and relative-change sentinels are 0, an ordinary value, and pass through unchanged.
    """
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


def _detector_pipeline(params: DetectorParams, n_features: int) -> Pipeline:
    """Return the unfitted detector pipeline for ``params``: no-data imputer, scaler, then the detector."""
    if params.algorithm == "isolation_forest":
        steps = [
            (
                "detector",
                IsolationForest(
                    n_estimators=params.n_estimators,
                    max_samples=params.max_samples,
                    random_state=params.random_state,
                ),
            ),
        ]
    elif params.algorithm == "elliptic_envelope":
        steps = [
            # diff_1m = value - lag_1m, so the 9 features of a metric span at most 8 dimensions.
            ("pca", PCA(n_components=min(params.pca_components, n_features - n_features // len(FEATURE_SUFFIXES)), random_state=params.random_state)),
            ("detector", EllipticEnvelope(random_state=params.random_state, support_fraction=0.99)),
        ]
    else:
        raise ContractError(f"unknown algorithm {params.algorithm!r}: use isolation_forest or elliptic_envelope")
    return Pipeline([("no_data", no_data_imputer(n_features)), ("scaler", _scaler(params.scaler)), *steps])


def fit_detector(normal: np.ndarray, params: DetectorParams) -> tuple[Pipeline, dict[str, float | str]]:
    """Fit the detector recipe on feature rows (9 per metric) and return it with its threshold calibration.

    The threshold flags ``target_false_positive_rate`` of ``normal``; ``predict`` then returns integer -1
    (anomaly) or 1 (normal). The contract requires the engine's fallback vector to be called normal, so the
    threshold never rises above its score (the no-data imputer normally makes that a typical score).
    """
    if not 0.0 < params.target_false_positive_rate < 0.5:
        raise ContractError(
            f"target_false_positive_rate must be between 0 and 0.5, got {params.target_false_positive_rate}"
        )
    if len(normal) < 10:
        raise ContractError(f"only {len(normal)} normal training row(s); the detector needs at least 10")
    if normal.ndim != 2 or normal.shape[1] % len(FEATURE_SUFFIXES):
        raise ContractError(
            f"the detector needs the {len(FEATURE_SUFFIXES)} contract features per metric, got rows of shape {normal.shape[1:]}; "
            "build them with contract.metric_features"
        )
    pipeline = _detector_pipeline(params, normal.shape[1])
    pipeline.fit(normal)
    scores = pipeline.score_samples(normal)
    fallback = np.array([fallback_instance(normal.shape[1] // len(FEATURE_SUFFIXES))])
    fallback_score = float(pipeline.score_samples(fallback)[0])
    # decision_function = score_samples - offset_; rows scoring below the offset are anomalies.
    offset = float(np.quantile(scores, params.target_false_positive_rate))
    fallback_limit = fallback_score - FALLBACK_MARGIN * abs(fallback_score)
    threshold = min(offset, fallback_limit)
    pipeline.named_steps["detector"].offset_ = threshold
    calibration = {
        "threshold": threshold,
        "threshold_set_by": "fallback_vector" if fallback_limit < offset else "target_false_positive_rate",
        "training_false_positive_rate": float(np.mean(scores < threshold)),
    }
    return pipeline, calibration


def train_anomaly_detector(train: pd.DataFrame, params: DetectorParams) -> TrainedModel:
    """Fit the detector (``fit_detector``) on the normal rows of raw training metrics and return it with lineage."""
    features = engineer_features(train, ANOMALY_DETECTOR).to_numpy()
    labels = feature_labels(train, ANOMALY_DETECTOR)
    normal = features if labels is None else features[labels == 0]
    pipeline, calibration = fit_detector(normal, params)
    parameters = {"model_name": ANOMALY_DETECTOR, **asdict(params), **calibration}
    return TrainedModel(pipeline, parameters, data_fingerprint(train), len(normal), drift_profile(train, ANOMALY_DETECTOR),
                        reference_predictions(pipeline, features))


def train_predictive_analytics(train: pd.DataFrame, params: ForecasterParams) -> TrainedModel:
    """Fit the forecaster (``fit_forecaster``) on raw per-minute training metrics and return it with lineage."""
    current, future = forecast_pairs(train, params.horizon_minutes)
    ridge = fit_forecaster(current, future, params.alpha)
    return TrainedModel(ridge, {"model_name": PREDICTIVE_ANALYTICS, **asdict(params)}, data_fingerprint(train), len(current),
                        drift_profile(train, PREDICTIVE_ANALYTICS), reference_predictions(ridge, current))


def reference_predictions(estimator, features: np.ndarray, rows: int = REFERENCE_ROWS) -> dict:
    """Return ``rows`` training inputs spread over the data and the fitted model's predictions for them.

    Stored with the version, they let the smoke test check that the server reproduces what the model predicted
    when it was trained, without unpickling it (and importing scikit-learn) again.
    """
    picked = features[np.unique(np.linspace(0, len(features) - 1, rows).astype(int))]
    return {"instances": picked.tolist(), "predictions": estimator.predict(picked).tolist()}


def fit_forecaster(current: np.ndarray, future: np.ndarray, alpha: float) -> TransformedTargetRegressor:
    """Return a stock regressor that predicts ``future`` rows from ``current`` rows within physical ranges.

    A Ridge learns the change x_{t+h} - x_t; adding the identity to its coefficients turns it into a stock
    Ridge that predicts levels, so the served object needs nothing but scikit-learn. An output whose learned
    change loses to persistence on the newest ``HOLDOUT_FRACTION`` of the pairs predicts persistence. A stock
    ``TransformedTargetRegressor`` then clips each output to its unit's range (``OUTPUT_RANGES``).
    """
    holdout = int(len(current) * (1.0 - HOLDOUT_FRACTION))
    probe = Ridge(alpha=alpha).fit(current[:holdout], future[:holdout] - current[:holdout])
    learned_error = np.abs(current[holdout:] + probe.predict(current[holdout:]) - future[holdout:]).mean(axis=0)
    persistence_error = np.abs(current[holdout:] - future[holdout:]).mean(axis=0)
    keep_learned = learned_error < persistence_error
    ridge = Ridge(alpha=alpha).fit(current, future - current)
    # Outputs where the learned change did not beat "the future equals now" on the newest pairs fall back to
    # persistence: coefficient row 0 and intercept 0 before the identity is added.
    ridge.coef_ = np.where(keep_learned[:, None], ridge.coef_, 0.0) + np.eye(current.shape[1])
    ridge.intercept_ = np.where(keep_learned, ridge.intercept_, 0.0)
    return within_output_ranges(ridge, current, future)


def within_output_ranges(levels: Ridge, current: np.ndarray, future: np.ndarray) -> TransformedTargetRegressor:
    """Return ``levels`` wrapped so that every prediction is clipped to its output's physical range.

    The wrapper is fitted once on the pairs (which sets up its stock ``FunctionTransformer``), then given the
    fitted ``levels`` model as its regressor; ``functools.partial(numpy.clip, ...)`` pickles by reference, so the
    stock sklearn runtime loads it.
    """
    lows, highs = (np.array(bound, dtype=float) for bound in zip(*OUTPUT_RANGES.values()))
    clip = functools.partial(np.clip, a_min=lows, a_max=highs)
    wrapper = TransformedTargetRegressor(regressor=Ridge(), func=clip, inverse_func=clip, check_inverse=False)
    wrapper.fit(current, future)
    wrapper.regressor_ = levels
    return wrapper


def foreign_pickle_modules(estimator: object) -> list[str]:
    """Return the modules pickling ``estimator`` would import that a stock sklearn server lacks (empty if clean)."""
    modules: set[str] = set()
    strings: list[str] = []
    memo: list[str | None] = []  # a module name pickled once is fetched again from the memo (BINGET)
    last: str | None = None
    for opcode, argument, _ in pickletools.genops(pickle.dumps(estimator, protocol=pickle.HIGHEST_PROTOCOL)):
        if opcode.name in {"SHORT_BINUNICODE", "BINUNICODE", "UNICODE"}:
            strings.append(last := str(argument))
            continue
        if opcode.name == "MEMOIZE":
            memo.append(last)
            continue
        last = None
        if opcode.name in {"BINGET", "LONG_BINGET", "GET"} and isinstance(remembered := memo[int(argument)], str):
            strings.append(last := remembered)
        elif opcode.name == "GLOBAL":
            modules.add(str(argument).split(" ")[0])
        elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
            modules.add(strings[-2])
    return sorted(module for module in modules if module.split(".")[0] not in STOCK_PICKLE_MODULES)


def save_trained(trained: TrainedModel, directory: Path, data_source: str = "unknown") -> dict:
    """Write ``model.pkl`` and ``training.json`` (parameters, lineage and data source, input profile, reference predictions) to ``directory``; return the latter's content."""
    save_model(trained, directory)
    training = {"parameters": trained.parameters, "data_fingerprint": trained.data_fingerprint, "data_source": data_source,
                "training_rows": trained.training_rows, "profile": trained.profile, "reference": trained.reference}
    (directory / TRAINING_FILENAME).write_text(json.dumps(training, indent=2))
    return training


def save_model(trained: TrainedModel, directory: Path) -> Path:
    """Write the estimator as ``model.pkl`` in ``directory`` and return its path; refuse non-stock objects."""
    foreign = foreign_pickle_modules(trained.estimator)
    if foreign:
        raise ContractError(
            f"the model would import {foreign} when unpickled; the stock sklearn server can only load scikit-learn objects"
        )
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / MODEL_FILENAME
    joblib.dump(trained.estimator, path)
    return path
