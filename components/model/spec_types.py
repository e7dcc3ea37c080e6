"""The typed parts of a model spec, and what each ADR-040 type brings (``TYPE_BEHAVIOUR``): one table of defaults.

``components.model.spec`` loads a spec file into these frozen dataclasses and re-exports them; a spec states only what
differs from its type's defaults. Nothing here imports numpy or scikit-learn until an estimator is built.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from components.model.spec_yaml import Document, Problem
from components.model.units import Unit

ANOMALY, PREDICTIVE, CLASSIFICATION = "anomaly", "predictive", "classification"
RAW, WINDOW_9 = "raw", "window-9"
# The feature recipes: the features each input contributes, in served order (window-9: index 9*m + f).
FEATURE_RECIPES: dict[str, tuple[str, ...]] = {
    RAW: ("value",),
    WINDOW_9: ("value", "mean_5m", "std_5m", "min_5m", "max_5m", "lag_1m", "lag_5m", "diff_1m", "pct_change_1m"),
}
# How many of the features an input contributes are linearly independent (window-9: diff_1m = value - lag_1m).
FEATURE_RANKS: dict[str, int] = {RAW: 1, WINDOW_9: 8}
SPEC_UNITS = {unit.spec_name: unit for unit in Unit}
RESERVED_COLUMNS = ("timestamp",)
# The engine's client has fixed parsers for these two logical names (reference: coordination-engine-models.md).
ENGINE_ANOMALY_NAME, ENGINE_FORECAST_NAME = "anomaly-detector", "predictive-analytics"

TRANSFORM, OUTLIER, REGRESSOR, CLASSIFIER = "transform", "outlier detector", "regressor", "classifier"
# Stock scikit-learn classes a spec may name: the stock sklearn runtime unpickles them, and their parameters are JSON.
ESTIMATOR_ALLOWLIST: dict[str, str] = {
    "sklearn.preprocessing.StandardScaler": TRANSFORM,
    "sklearn.preprocessing.RobustScaler": TRANSFORM,
    "sklearn.preprocessing.MinMaxScaler": TRANSFORM,
    "sklearn.preprocessing.MaxAbsScaler": TRANSFORM,
    "sklearn.preprocessing.QuantileTransformer": TRANSFORM,
    "sklearn.preprocessing.PowerTransformer": TRANSFORM,
    "sklearn.impute.SimpleImputer": TRANSFORM,
    "sklearn.decomposition.PCA": TRANSFORM,
    "sklearn.covariance.EllipticEnvelope": OUTLIER,
    "sklearn.ensemble.IsolationForest": OUTLIER,  # OneClassSVM is not one: its threshold is its intercept, not offset_, which calibration sets
    "sklearn.linear_model.Ridge": REGRESSOR,
    "sklearn.linear_model.LinearRegression": REGRESSOR,
    "sklearn.linear_model.Lasso": REGRESSOR,
    "sklearn.linear_model.ElasticNet": REGRESSOR,
    "sklearn.ensemble.RandomForestRegressor": REGRESSOR,
    "sklearn.ensemble.HistGradientBoostingRegressor": REGRESSOR,
    "sklearn.linear_model.LogisticRegression": CLASSIFIER,
    "sklearn.ensemble.RandomForestClassifier": CLASSIFIER,
    "sklearn.ensemble.HistGradientBoostingClassifier": CLASSIFIER,
    "sklearn.ensemble.GradientBoostingClassifier": CLASSIFIER,
    "sklearn.tree.DecisionTreeClassifier": CLASSIFIER,
}
# The regressors that keep coef_ and intercept_ per output: the predictive type's fit_change adds the identity to them.
LINEAR_REGRESSORS = tuple(path for path, role in ESTIMATOR_ALLOWLIST.items() if role == REGRESSOR and path.startswith("sklearn.linear_model."))


@dataclass(frozen=True)
class Gate:
    """One gate: its spec key, the evaluation metric it bounds and its limit (a floor for min_*, a ceiling for max_*)."""

    name: str
    metric: str
    limit: float


@dataclass(frozen=True)
class TypeBehaviour:
    """What an ADR-040 type brings: its outputs and estimator, metrics, gates, training knobs, canary comparison and checks."""

    summary: str
    labels: str  # the label column: "optional", "required" or "refused"
    outputs: str  # the outputs field the type answers with: labels, values or classes
    final_step: str  # the role of the estimator's last step
    metrics: tuple[str, ...]  # what evaluate measures on validation data
    gates: tuple[Gate, ...]  # with their default limits
    champion_metric: str  # the metric a candidate is compared with the champion on
    training: Mapping[str, object]  # the type's training knobs and their defaults
    canary_compares: tuple[str, ...]  # the comparisons that fit the type; the first is the default
    live_check: str  # what the monitor checks of the live predictions
    live_factor: str  # the drift setting that bounds it
    smoke_expectation: str  # what the contract check and the smoke test require of the probe's answer


COMMON_GATES = (Gate("max_predict_latency_ms", "predict_latency_ms", 50.0), Gate("max_pickle_mb", "pickle_mb", 50.0))
CHAMPION_TOLERANCE = 0.05
CANARY_LIMITS: dict[str, dict[str, float]] = {
    "anomaly_rate": {"max_prediction_shift": 0.1},
    "mean_absolute_shift": {"max_prediction_shift": 0.1},
    "label_flip_rate": {"max_label_flip_rate": 0.05},
    "label_flip_rate_and_probability_shift": {"max_label_flip_rate": 0.05, "max_probability_shift": 0.1},
}
DRIFT_DEFAULTS: dict[str, float | int] = {"psi": 0.25, "ks_excess": 0.45, "level_excess": 0.4, "cooldown_hours": 24.0,
                                          "min_predictions": 100, "min_regime_hours": 36.0, "max_retrains_per_episode": 2}
LIVE_FACTOR_DEFAULT = 3.0

TYPE_BEHAVIOUR: dict[str, TypeBehaviour] = {
    ANOMALY: TypeBehaviour(
        summary="detects abnormal behaviour: one JSON integer per instance, -1 anomaly, 1 normal",
        labels="optional", outputs="labels", final_step=OUTLIER,
        metrics=("precision", "recall", "f1", "roc_auc", "anomaly_rate"),
        gates=(Gate("min_f1", "f1", 0.25), Gate("max_anomaly_rate", "anomaly_rate", 0.2)), champion_metric="f1",
        training=MappingProxyType({"target_false_positive_rate": 0.02, "impute_fallback": False}),
        canary_compares=("anomaly_rate",),
        live_check="the live anomaly rate against validation's", live_factor="anomaly_rate_factor",
        smoke_expectation="JSON integers -1/1, and the engine's fallback probe called normal (1)",
    ),
    PREDICTIVE: TypeBehaviour(
        summary="forecasts its inputs one horizon ahead: one row of values per instance",
        labels="refused", outputs="values", final_step=REGRESSOR,
        metrics=("mae_<output>", "mase_<output>", "mae_mean", "mase_mean", "mase_max"),
        gates=(Gate("max_mase", "mase_mean", 1.0),), champion_metric="mase_mean",
        training=MappingProxyType({"horizon_minutes": 60, "fit_change": True, "clip_to_output_ranges": True}),
        canary_compares=("mean_absolute_shift",),
        live_check="each output's live forecast bias against validation's MAE", live_factor="forecast_bias_factor",
        smoke_expectation="one row of finite numbers per instance, each within its output's range",
    ),
    CLASSIFICATION: TypeBehaviour(
        summary="categorises: a class per instance, or with probabilities one probability per class",
        labels="required", outputs="classes", final_step=CLASSIFIER,
        metrics=("roc_auc", "average_precision", "precision", "recall", "f1", "alert_rate"),
        # recall of the alert class at the alert threshold (at predict's class without probabilities)
        gates=(Gate("min_roc_auc", "roc_auc", 0.75), Gate("min_recall", "recall", 0.5)), champion_metric="roc_auc",
        training=MappingProxyType({"balance_classes": False}),
        canary_compares=("label_flip_rate_and_probability_shift", "label_flip_rate"),  # the second without probabilities
        live_check="the live alert rate against validation's", live_factor="alert_rate_factor",
        smoke_expectation="a declared class per instance (with probabilities: rows that sum to 1), and the probe below the alert threshold",
    ),
}


@dataclass(frozen=True)
class Input:
    """One base metric: its column name, unit, accepted bounds and the PromQL that reads it."""

    name: str
    unit: Unit
    bounds: tuple[float, float]
    query: str
    query_divisor: float | None = None  # the query's value divided by this, clipped to the bounds, is the input
    description: str = ""


@dataclass(frozen=True)
class FeatureRecipe:
    """How inputs become a served instance: raw values, or the 9 window features per input."""

    name: str

    @property
    def suffixes(self) -> tuple[str, ...]:
        """Return the features each input contributes, in served order."""
        return FEATURE_RECIPES[self.name]

    @property
    def rank(self) -> int:
        """Return how many of the features each input contributes are linearly independent."""
        return FEATURE_RANKS[self.name]


@dataclass(frozen=True)
class Labels:
    """The training data's label column."""

    column: str
    description: str = ""


@dataclass(frozen=True)
class OutputValue:
    """One forecast value of a predictive model and the range it is clipped to."""

    name: str
    range: tuple[float, float]
    description: str = ""


@dataclass(frozen=True)
class OutputClass:
    """One class of a classification model: its label value and name."""

    value: int
    name: str
    description: str = ""


@dataclass(frozen=True)
class Alert:
    """When a caller should alert: the probability of ``class_value`` above ``threshold``."""

    class_value: int
    threshold: float
    description: str = ""


@dataclass(frozen=True)
class Outputs:
    """What predict answers: anomaly labels, forecast values, or classes (with probabilities and an alert)."""

    labels: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    values: tuple[OutputValue, ...] = ()
    classes: tuple[OutputClass, ...] = ()
    probabilities: bool = False
    alert: Alert | None = None

    def describe(self) -> str:
        """Return the outputs in a few words, e.g. ``label -1/1`` or ``classes 0/1 + probabilities``."""
        if self.labels:
            return "label " + "/".join(str(value) for value in sorted(self.labels.values()))
        if self.values:
            return f"{len(self.values)} values"
        return "classes " + "/".join(str(item.value) for item in self.classes) + (" + probabilities" if self.probabilities else "")

    @property
    def alert_class(self) -> OutputClass | None:
        """Return the class a classification model alerts on: the alert's, else the last (highest) class; None for other types."""
        if not self.classes:
            return None
        wanted = self.alert.class_value if self.alert else self.classes[-1].value
        return next(item for item in self.classes if item.value == wanted)


@dataclass(frozen=True)
class EstimatorStep:
    """One stock scikit-learn step: its name in the Pipeline, its import path and its JSON parameters."""

    name: str
    class_path: str
    params: Mapping[str, object]

    def build(self) -> object:
        """Return a new, unfitted instance of the step (imports scikit-learn)."""
        module, _, name = self.class_path.rpartition(".")
        return getattr(importlib.import_module(module), name)(**json.loads(json.dumps(dict(self.params))))


@dataclass(frozen=True)
class Estimator:
    """The Pipeline's steps and the type's training knobs (defaults filled in)."""

    steps: tuple[EstimatorStep, ...]
    training: Mapping[str, object]

    def build(self) -> object:
        """Return a new, unfitted ``sklearn.pipeline.Pipeline`` of the steps (imports scikit-learn)."""
        from sklearn.pipeline import Pipeline

        return Pipeline([(step.name, step.build()) for step in self.steps])


@dataclass(frozen=True)
class Gates:
    """The gates a candidate must pass, and how it is compared with the champion."""

    gates: tuple[Gate, ...]
    champion_metric: str
    champion_tolerance: float


@dataclass(frozen=True)
class SmokeProbe:
    """The instance the contract check and the smoke test send, and whether it is the engine's no-data fallback."""

    instance: tuple[float, ...]
    engine_fallback: bool = False
    per_input: tuple[float, ...] = ()  # the per-input values the instance repeats, when the spec gave them so


@dataclass(frozen=True)
class CanaryComparison:
    """What the canary compares between candidate and stable answers, and the limits."""

    compare: str
    limits: Mapping[str, float]


@dataclass(frozen=True)
class DriftSettings:
    """What the monitor counts as drift for this model and how often a retrain may follow."""

    psi: float
    ks_excess: float
    level_excess: float
    cooldown_hours: float
    min_predictions: int
    min_regime_hours: float
    max_retrains_per_episode: int
    live_factor_name: str  # anomaly_rate_factor, forecast_bias_factor or alert_rate_factor
    live_factor: float


@dataclass(frozen=True)
class EngineRegistration:
    """How the coordination engine finds the model, and why a misread of its output is accepted (if it is)."""

    service: str
    namespace: str = ""  # empty: the engine's own namespace
    description: str = ""
    accept_misread: str = ""

    def environment_name(self, model_name: str) -> str:
        """Return the ``<NAME>`` of ``KSERVE_<NAME>_SERVICE``: the model name upper-cased with '-' as '_'."""
        return model_name.upper().replace("-", "_")


@dataclass(frozen=True)
class ModelSpec:
    """One model as data, validated, with the type's defaults filled in."""

    name: str
    type: str
    description: str
    owner: str
    inputs: tuple[Input, ...]
    features: FeatureRecipe
    labels: Labels | None
    outputs: Outputs
    estimator: Estimator
    gates: Gates
    smoke: SmokeProbe | None
    canary: CanaryComparison
    drift: DriftSettings
    engine: EngineRegistration | None
    # Where it was read from, not what it says (two files with the same content make equal specs):
    data_file: Path | None = field(compare=False)  # a sample dataset beside the spec
    source: str = field(compare=False)  # the spec file, as messages name it
    document: Document = field(compare=False, repr=False)  # the file's JSON value and the line of every path, for later errors

    @property
    def behaviour(self) -> TypeBehaviour:
        """Return what the model's type brings."""
        return TYPE_BEHAVIOUR[self.type]

    @property
    def n_features(self) -> int:
        """Return the number of values in one served instance."""
        return len(self.inputs) * len(self.features.suffixes)

    @property
    def served_method(self) -> str:
        """Return the estimator method whose answer is served: predict_proba with outputs.probabilities (PREDICT_PROBA=true), else predict."""
        return "predict_proba" if self.outputs.probabilities else "predict"

    def problem(self, path: str, problem: str, fix: str) -> Problem:
        """Return a problem found after loading, located at ``path``'s line in the spec file."""
        return self.document.problem(path, problem, fix)
