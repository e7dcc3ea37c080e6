"""The typed parts of a model spec, and what each ADR-040 type brings (``TYPE_BEHAVIOUR``, read from ``models/types/``).

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

import yaml

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
PCA_CLASS, ENVELOPE_CLASS = "sklearn.decomposition.PCA", "sklearn.covariance.EllipticEnvelope"
# Stock scikit-learn classes a spec may name: the stock sklearn runtime unpickles them, and their parameters are JSON.
ESTIMATOR_ALLOWLIST: dict[str, str] = {
    "sklearn.preprocessing.StandardScaler": TRANSFORM,
    "sklearn.preprocessing.RobustScaler": TRANSFORM,
    "sklearn.preprocessing.MinMaxScaler": TRANSFORM,
    "sklearn.preprocessing.MaxAbsScaler": TRANSFORM,
    "sklearn.preprocessing.QuantileTransformer": TRANSFORM,
    "sklearn.preprocessing.PowerTransformer": TRANSFORM,
    "sklearn.impute.SimpleImputer": TRANSFORM,
    PCA_CLASS: TRANSFORM,
    ENVELOPE_CLASS: OUTLIER,
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


TYPES_FILE = Path(__file__).with_name("builtin_specs") / "types" / "adr-040.yaml"  # the type table, as data


def _gates(table: Mapping[str, Mapping[str, object]]) -> tuple[Gate, ...]:
    """Return the gates of a ``key: {metric, limit}`` table, in its order."""
    return tuple(Gate(key, str(rule["metric"]), float(rule["limit"])) for key, rule in table.items())


def _type_behaviour(row: Mapping[str, object]) -> TypeBehaviour:
    """Return one type's behaviour from its row of the type table."""
    return TypeBehaviour(**{**row, "metrics": tuple(row["metrics"]), "gates": _gates(row["gates"]),
                            "training": MappingProxyType(dict(row["training"])), "canary_compares": tuple(row["canary_compares"])})


_TABLE = yaml.load(TYPES_FILE.read_text(), Loader=yaml.CSafeLoader)  # libyaml: the table needs no line numbers
COMMON_GATES = _gates(_TABLE["common_gates"])
CHAMPION_TOLERANCE: float = _TABLE["champion_tolerance"]
CANARY_LIMITS: dict[str, dict[str, float]] = _TABLE["canary_limits"]
DRIFT_DEFAULTS: dict[str, float | int] = _TABLE["drift_defaults"]
LIVE_FACTOR_DEFAULT: float = _TABLE["live_factor_default"]
TYPE_BEHAVIOUR: dict[str, TypeBehaviour] = {kind: _type_behaviour(row) for kind, row in _TABLE["types"].items()}


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

    def residual_problem(self) -> tuple[str, str] | None:
        """Return why the ``residual_weight`` knob cannot apply to these steps and the fix, or None when it can or is 0."""
        if not self.training.get("residual_weight"):
            return None
        paths = [step.class_path for step in self.steps]
        if paths[-2:] != [PCA_CLASS, ENVELOPE_CLASS] or self.steps[-2].params.get("whiten"):
            return (f"residual_weight adds the distance off a PCA's components to an EllipticEnvelope's, and the estimator is {' -> '.join(paths)}",
                    f"end it with {PCA_CLASS} (without whiten) then {ENVELOPE_CLASS}, or set residual_weight: 0")
        return None


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
