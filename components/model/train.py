"""train: any model spec's stock scikit-learn estimator, fitted as its ADR-040 type says, with nothing from this project
inside the pickle.

``train_model(spec, frame, overrides)`` is the entry point for every model. It applies a run's overrides to the spec's
estimator steps and training knobs (``spec_with_overrides``), then fits the way the spec's type brings (``TRAINERS``):
- anomaly (``fit_outlier_detector``): on the normal rows, the no-data imputer first when ``impute_fallback``, with
  ``residual_weight`` the PCA folded into the envelope with the residual off its components (``with_residual``), the
  final step's threshold calibrated to ``target_false_positive_rate`` and never flagging the engine's fallback probe;
- predictive (``fit_regressor``): the inputs ``horizon_minutes`` ahead. With ``fit_change``, it learns the change and
  keeps persistence where the change loses. With ``clip_to_output_ranges``, it clips to the outputs' ranges;
- classification (``fit_classifier``): on the spec's label column, with balanced sample weights when
  ``balance_classes``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import pickle
import pickletools
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping, NamedTuple

import joblib
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.utils import get_tags
from sklearn.utils.class_weight import compute_sample_weight

from components.model.contract import (
    TIMESTAMP_COLUMN,
    ContractError,
    engineer_features,
    feature_labels,
    forecast_pairs,
)
from components.model.spec import (
    ANOMALY,
    CLASSIFICATION,
    ESTIMATOR_ALLOWLIST,
    LINEAR_REGRESSORS,
    PREDICTIVE,
    TRANSFORM,
    TYPE_BEHAVIOUR,
    Estimator,
    EstimatorStep,
    ModelSpec,
    use_spec,
)
from components.model.spec_types import PCA_CLASS
from components.monitoring.drift import drift_profile
from components.store.filesystem import MODEL_FILENAME, TRAINING_FILENAME

HOLDOUT_FRACTION = 0.2
# Below this share of the rows' spread, what is left off a detector's PCA components is rounding, not a residual to watch.
RESIDUAL_TOLERANCE = 1e-9
# How far below the fallback vector's score the detector threshold sits, relative to that score.
FALLBACK_MARGIN = 0.01
# Modules a stock sklearn server can import when it unpickles a model.
STOCK_PICKLE_MODULES = ("sklearn", "numpy", "scipy", "joblib", "builtins", "copyreg", "_codecs", "collections", "functools")
# How many training inputs, with the model's predictions for them, are stored with a version for the smoke test.
REFERENCE_ROWS = 16
# An override "<step>.class" names another allowlisted class of the step's role, or this to drop a transform step.
DROP_STEP = "passthrough"


@dataclass(frozen=True)
class TrainedModel:
    """A fitted stock estimator and what produced it."""

    estimator: object
    parameters: dict
    data_fingerprint: str
    training_rows: int
    profile: dict = field(default_factory=dict)  # drift.drift_profile of the training data
    reference: dict = field(default_factory=dict)  # reference_predictions on a few training inputs
    data_window: dict = field(default_factory=dict)  # the first and last training minute (ISO 8601), when the data has timestamps


def data_fingerprint(frame: pd.DataFrame) -> str:
    """Return a sha256 over the frame's values and column names, stable across file formats."""
    digest = hashlib.sha256(",".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


# --- a run's overrides -------------------------------------------------------------------------------------------


def spec_with_overrides(spec: ModelSpec, overrides: Mapping[str, object] | None) -> ModelSpec:
    """Return ``spec`` with a run's overrides of its estimator applied; raise ValueError naming an unknown key and the known ones.

    A key is a training knob of the spec's type (``target_false_positive_rate``), a step parameter (``pca.n_components``),
    or ``<step>.class``: another allowlisted class of the step's role, whose parameters keep the spec's values that it
    accepts, or ``passthrough`` to drop a transform step. Replacing the PCA or the envelope drops the spec's
    ``residual_weight`` with them, unless the overrides set it too.
    """
    knobs = dict(spec.estimator.training)
    names = [step.name for step in spec.estimator.steps]
    classes: dict[str, str] = {}
    params: dict[str, dict[str, object]] = {}
    for key, value in (overrides or {}).items():
        if key in knobs:
            knobs[key] = _knob_value(spec, key, value)
            continue
        step, _, param = key.partition(".")
        if step not in names or not param:
            raise ValueError(f"{key!r} is not a training override of {spec.name}: use a training knob ({', '.join(knobs)}), "
                             f"or <step>.<parameter> or <step>.class of a step ({', '.join(names)}), e.g. {names[-1]}.random_state")
        if param == "class":
            classes[step] = str(value)
        else:
            params.setdefault(step, {})[param] = value
    steps = []
    for index, step in enumerate(spec.estimator.steps):
        last = index == len(spec.estimator.steps) - 1
        class_path, step_params = step.class_path, dict(step.params)
        if classes.get(step.name) == DROP_STEP:
            if last or step.name in params:
                raise ValueError(f"{step.name}.class: {DROP_STEP} drops a transform step, and {step.name} is "
                                 + ("the estimator itself: name another class" if last else "given parameters too: give either"))
            continue
        if step.name in classes and classes[step.name] != class_path:
            class_path = _swapped_class(spec, step, classes[step.name], TYPE_BEHAVIOUR[spec.type].final_step if last else TRANSFORM)
            accepted = _parameter_names(class_path)
            step_params = {name: value for name, value in step_params.items() if name in accepted}
        accepted = _parameter_names(class_path)
        for name, value in params.get(step.name, {}).items():
            if name not in accepted:
                raise ValueError(f"{step.name}.{name}: {class_path} has no parameter {name!r}; use one of {', '.join(sorted(accepted))}")
            step_params[name] = value
        built = EstimatorStep(step.name, class_path, MappingProxyType(step_params))
        if step.name in classes or step.name in params:
            try:
                built.build()._validate_params()  # what fit checks first: the values of the parameters
            except (TypeError, ValueError) as error:
                raise ValueError(f"the overrides of step {step.name}: {error}") from None
        steps.append(built)
    if "residual_weight" not in (overrides or {}) and Estimator(tuple(steps), knobs).residual_problem():
        knobs["residual_weight"] = 0.0  # the residual belongs to the PCA and envelope the overrides replaced, as their parameters do
    return replace(spec, estimator=Estimator(tuple(steps), MappingProxyType(knobs)))


def _knob_value(spec: ModelSpec, key: str, value: object) -> object:
    """Return ``value`` as the type of the knob's default, or raise ValueError naming the knob and the type it takes."""
    default = TYPE_BEHAVIOUR[spec.type].training[key]
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(default, float):
            return float(value)
        if float(value).is_integer():
            return int(value)
    raise ValueError(f"{key} takes {type(default).__name__} values (default {default!r}), got {value!r}")


def _swapped_class(spec: ModelSpec, step: EstimatorStep, class_path: str, role: str) -> str:
    """Return ``class_path`` when it is an allowlisted class of ``role``, else raise ValueError naming the ones that fit."""
    if ESTIMATOR_ALLOWLIST.get(class_path) != role:
        fitting = [path for path, known in ESTIMATOR_ALLOWLIST.items() if known == role]
        raise ValueError(f"{step.name}.class: {class_path} is not an allowlisted {role} of {spec.type} models; use one of "
                         f"{', '.join(fitting)}" + (f", or {DROP_STEP} to drop the step" if role == TRANSFORM else ""))
    return class_path


def _parameter_names(class_path: str) -> set[str]:
    """Return the parameter names an allowlisted class takes."""
    return set(EstimatorStep("step", class_path, {}).build().get_params(deep=False))


# --- the spec's steps, built for data of a given width -----------------------------------------------------------


def built_steps(spec: ModelSpec, n_features: int) -> list[tuple[str, object]]:
    """Return the spec's estimator steps as unfitted (name, object) pairs, a PCA's components capped at the features' rank.

    The rank is what the feature recipe leaves independent for ``n_features`` values (window-9: 8 of each input's 9).
    With a ``residual_weight`` the cap is one lower, so that a residual off the components is left to watch.
    """
    rank = n_features // len(spec.features.suffixes) * spec.features.rank - bool(spec.estimator.training.get("residual_weight"))
    steps = []
    for step in spec.estimator.steps:
        params = dict(step.params)
        components = params.get("n_components")
        if step.class_path == PCA_CLASS and isinstance(components, int) and not isinstance(components, bool):
            params["n_components"] = min(components, rank)
        steps.append((step.name, EstimatorStep(step.name, step.class_path, params).build()))
    return steps


# --- anomaly -----------------------------------------------------------------------------------------------------


def no_data_imputer(sentinels: tuple[float, ...], n_features: int) -> ColumnTransformer:
    """Return a stock transformer that replaces the engine's no-data values with training medians.

    When Prometheus fails the engine sends fixed values per metric (the spec's ``smoke.probe_per_input``). They mean
    "no data", not a real minute, so each is treated as missing in its own feature column (value 0.5, std 0.1,
    min 0.3, max 0.7 ...) and imputed with that column's training median: the fallback vector becomes a typical
    minute. The diff and relative-change sentinels are 0, an ordinary value, and pass through unchanged.
    """
    columns_by_sentinel: dict[float, list[int]] = {}
    for index in range(n_features):
        sentinel = sentinels[index % len(sentinels)]
        if sentinel != 0.0:
            columns_by_sentinel.setdefault(sentinel, []).append(index)
    imputers = [
        (f"no_data_{sentinel:g}", SimpleImputer(missing_values=sentinel, strategy="median", keep_empty_features=True), columns)
        for sentinel, columns in columns_by_sentinel.items()
    ]
    return ColumnTransformer(imputers, remainder="passthrough")


def engine_fallback_probe(spec: ModelSpec, n_features: int) -> np.ndarray | None:
    """Return the engine's no-data instance for ``n_features`` values when the spec's smoke probe is it, else None."""
    if spec.smoke is None or not spec.smoke.engine_fallback:
        return None
    if spec.smoke.per_input:
        return np.array(spec.smoke.per_input * (n_features // len(spec.smoke.per_input)), dtype=float)
    return np.array(spec.smoke.instance, dtype=float) if len(spec.smoke.instance) == n_features else None


def fallback_threshold_limit(spec: ModelSpec, pipeline: Pipeline, n_features: int) -> float | None:
    """Return the highest threshold that still calls the engine's fallback probe normal (a margin below its score), or None
    when the spec's smoke probe is not the engine's fallback."""
    probe = engine_fallback_probe(spec, n_features)
    if probe is None:
        return None
    fallback_score = float(pipeline.score_samples(probe[None, :])[0])
    return fallback_score - FALLBACK_MARGIN * abs(fallback_score)


def fit_outlier_detector(spec: ModelSpec, normal: np.ndarray) -> tuple[Pipeline, dict[str, float | str]]:
    """Fit an anomaly spec's pipeline on normal feature rows (any number of inputs) and return it with its threshold calibration.

    The threshold flags ``target_false_positive_rate`` of ``normal``; ``predict`` then returns -1 (anomaly) or 1
    (normal). When the smoke probe is the engine's fallback, the contract requires it to be called normal, so the
    threshold never rises above its score (the no-data imputer normally makes that a typical score).
    """
    rate = spec.estimator.training["target_false_positive_rate"]
    if not 0.0 < rate < 0.5:
        raise ContractError(f"target_false_positive_rate must be between 0 and 0.5, got {rate}")
    if len(normal) < 10:
        raise ContractError(f"only {len(normal)} normal training row(s); the detector needs at least 10")
    per_input = len(spec.features.suffixes)
    if normal.ndim != 2 or normal.shape[1] % per_input:
        raise ContractError(f"the detector needs the {per_input} contract features per metric, got rows of shape {normal.shape[1:]}; "
                            "build them with contract.metric_features")
    residual = spec.estimator.residual_problem()
    if residual:
        raise ContractError(": ".join(residual))
    steps = built_steps(spec, normal.shape[1])
    if spec.estimator.training["impute_fallback"]:
        if spec.smoke is None or not (spec.smoke.engine_fallback and spec.smoke.per_input):
            raise ContractError(f"impute_fallback replaces the engine's no-data values, and {spec.name} names none: give "
                                "smoke.probe_per_input with engine_fallback: true in the spec, or set impute_fallback to false")
        steps.insert(0, ("no_data", no_data_imputer(spec.smoke.per_input, normal.shape[1])))
    pipeline = Pipeline(steps).fit(normal)
    residual_weight = spec.estimator.training["residual_weight"]
    if residual_weight:
        pipeline, residual_weight = with_residual(pipeline, normal, residual_weight)
    scores = pipeline.score_samples(normal)
    # decision_function = score_samples - offset_; rows scoring below the offset are anomalies.
    threshold = offset = float(np.quantile(scores, rate))
    fallback_limit = fallback_threshold_limit(spec, pipeline, normal.shape[1])
    if fallback_limit is not None:
        threshold = min(offset, fallback_limit)
    pipeline.steps[-1][1].offset_ = threshold
    calibration = {
        "threshold": threshold,
        "threshold_set_by": "fallback_vector" if fallback_limit is not None and fallback_limit < offset else "target_false_positive_rate",
        "training_false_positive_rate": float(np.mean(scores < threshold)),
        **({"residual_weight": residual_weight} if spec.estimator.training["residual_weight"] else {}),
    }
    return pipeline, calibration


def with_residual(pipeline: Pipeline, normal: np.ndarray, weight: float) -> tuple[Pipeline, float]:
    """Return the fitted pipeline with its PCA folded into its final EllipticEnvelope, whose distance then adds ``weight``
    times the squared residual off the PCA's components, each of the two over its median on ``normal``; and the weight
    applied, 0 when the training rows leave no residual (every metric but a few flat).

    The envelope sees only the leading components, so a minute that breaks the metrics' usual relations without
    moving them far along those components (a lone metric off its peers, a lag or spread at odds with its value)
    scored as normal. The sum is one quadratic form, (x - c)' P (x - c) on the PCA's input with P = V' S V / a +
    (weight / b)(I - V' V) and c = mean + V' m (V the components, m and S the envelope's location and precision,
    a and b the medians), so the served step is still a stock EllipticEnvelope, given that location and precision.
    """
    *before, (_, pca), (name, envelope) = pipeline.steps
    inputs = Pipeline(before).transform(normal) if before else normal
    components = pca.transform(inputs)
    basis = pca.components_
    centred = inputs - pca.mean_
    residual = ((centred - components @ basis) ** 2).sum(axis=1)
    residual_median = float(np.median(residual))
    if residual_median <= RESIDUAL_TOLERANCE * float(np.median((centred ** 2).sum(axis=1))):
        weight = 0.0  # the training rows lie on the components (flat metrics): only rounding is left off them
    envelope_median = float(np.median(envelope.dist_))  # dist_: the envelope's distances of the training rows
    residual_scale = weight / residual_median if weight else 0.0
    width = basis.shape[1]
    envelope.dist_ = envelope.dist_ / envelope_median + residual_scale * residual  # the sum's, with no second pass over the rows
    precision = basis.T @ envelope.precision_ @ basis / envelope_median + residual_scale * (np.eye(width) - basis.T @ basis)
    envelope.location_ = pca.mean_ + basis.T @ envelope.location_
    envelope.precision_ = precision
    envelope.covariance_ = np.linalg.pinv(precision, hermitian=True)
    envelope.n_features_in_ = width
    return Pipeline([*before, (name, envelope)]), weight


# --- predictive --------------------------------------------------------------------------------------------------


def fit_regressor(spec: ModelSpec, current: np.ndarray, future: np.ndarray) -> object:
    """Return a predictive spec's stock regressor of ``future`` rows from ``current`` rows, as its training knobs say.

    With ``fit_change`` its one linear step learns the change x_{t+h} - x_t. Adding the identity to its
    coefficients turns it into a stock regressor of levels, so the served object needs nothing but scikit-learn.
    An output whose learned change loses to persistence on the newest ``HOLDOUT_FRACTION`` of the pairs predicts
    persistence. With ``clip_to_output_ranges`` a stock ``TransformedTargetRegressor`` clips each output to its range.
    """
    knobs = spec.estimator.training
    if knobs["fit_change"]:
        model = _change_as_levels(spec, current, future)
    else:
        steps = built_steps(spec, current.shape[1])
        if future.shape[1] > 1 and not get_tags(steps[-1][1]).target_tags.multi_output:
            raise ContractError(f"{spec.estimator.steps[-1].class_path} predicts one value, and {spec.name} forecasts {future.shape[1]}: use a "
                                "regressor that predicts several, such as sklearn.linear_model.Ridge or sklearn.ensemble.RandomForestRegressor")
        model = Pipeline(steps).fit(current, future)
    if knobs["clip_to_output_ranges"]:
        model = within_output_ranges(model, current, future, [value.range for value in spec.outputs.values])
    return model


def _change_as_levels(spec: ModelSpec, current: np.ndarray, future: np.ndarray) -> object:
    """Return the spec's one linear regressor fitted on the change, turned into levels, persistence where the change loses."""
    steps = spec.estimator.steps
    if len(steps) != 1 or steps[0].class_path not in LINEAR_REGRESSORS:
        raise ContractError(f"fit_change adds the identity to a linear regressor's coefficients, and {spec.name}'s estimator is "
                            f"{' -> '.join(step.class_path for step in steps)}: use one step of {', '.join(LINEAR_REGRESSORS)}, "
                            "or set estimator.training.fit_change to false")
    holdout = int(len(current) * (1.0 - HOLDOUT_FRACTION))
    probe = steps[0].build().fit(current[:holdout], future[:holdout] - current[:holdout])
    learned_error = np.abs(current[holdout:] + probe.predict(current[holdout:]) - future[holdout:]).mean(axis=0)
    persistence_error = np.abs(current[holdout:] - future[holdout:]).mean(axis=0)
    keep_learned = learned_error < persistence_error
    levels = steps[0].build().fit(current, future - current)
    # Outputs where the learned change did not beat "the future equals now" on the newest pairs fall back to
    # persistence: coefficient row 0 and intercept 0 before the identity is added.
    levels.coef_ = np.where(keep_learned[:, None], levels.coef_, 0.0) + np.eye(current.shape[1])
    levels.intercept_ = np.where(keep_learned, levels.intercept_, 0.0)
    return levels


def within_output_ranges(levels: object, current: np.ndarray, future: np.ndarray, ranges: list[tuple[float, float]]) -> TransformedTargetRegressor:
    """Return the fitted ``levels`` wrapped so that every prediction is clipped to its output's range.

    The wrapper is fitted once on the pairs with a placeholder Ridge (which sets up its stock ``FunctionTransformer``),
    then given the fitted ``levels`` model as its regressor; ``functools.partial(numpy.clip, ...)`` pickles by
    reference, so the stock sklearn runtime loads it.
    """
    lows, highs = (np.array(bound, dtype=float) for bound in zip(*ranges))
    clip = functools.partial(np.clip, a_min=lows, a_max=highs)
    wrapper = TransformedTargetRegressor(regressor=Ridge(), func=clip, inverse_func=clip, check_inverse=False)
    wrapper.fit(current, future)
    wrapper.regressor_ = levels
    return wrapper


# --- classification ----------------------------------------------------------------------------------------------


def fit_classifier(spec: ModelSpec, features: np.ndarray, labels: np.ndarray) -> Pipeline:
    """Fit a classification spec's pipeline on feature rows and their class labels; balanced sample weights when ``balance_classes``.

    Every declared class must occur, so that ``predict_proba``'s columns are the spec's classes in their order.
    """
    declared = [item.value for item in spec.outputs.classes]
    seen = set(np.unique(labels).tolist())
    column = spec.labels.column
    if seen - set(declared):
        raise ContractError(f"the {column!r} column holds {sorted(seen - set(declared))}, which are not classes of {spec.name} "
                            f"({declared}): fix the labels, or declare the classes in outputs.classes")
    if set(declared) - seen:
        raise ContractError(f"the training data has no rows of class {sorted(set(declared) - seen)} in {column!r}: a classifier learns only "
                            "the classes it sees; train on more data (days, or a longer file)")
    pipeline = Pipeline(built_steps(spec, features.shape[1]))
    weights = {}
    if spec.estimator.training["balance_classes"]:
        weights[f"{pipeline.steps[-1][0]}__sample_weight"] = compute_sample_weight("balanced", labels)
    pipeline.fit(features, labels, **weights)
    if spec.outputs.probabilities and not hasattr(pipeline, "predict_proba"):
        raise ContractError(f"{spec.estimator.steps[-1].class_path} has no predict_proba, and {spec.name} serves probabilities: "
                            "pick a classifier with predict_proba, or set outputs.probabilities to false")
    return pipeline


# --- one entry point for every type ------------------------------------------------------------------------------


class Fitted(NamedTuple):
    """What a type's trainer returns: the estimator, its model inputs (for reference predictions), the rows it learned and its calibration."""

    estimator: object
    inputs: np.ndarray
    rows: int
    calibration: dict


def _train_anomaly(spec: ModelSpec, frame: pd.DataFrame) -> Fitted:
    """Fit an anomaly model on the normal rows (label 0; every row without labels)."""
    features = engineer_features(frame, spec.name).to_numpy()
    labels = feature_labels(frame, spec.name)
    normal = features if labels is None else features[labels == 0]
    pipeline, calibration = fit_outlier_detector(spec, normal)
    return Fitted(pipeline, features, len(normal), calibration)


def _train_predictive(spec: ModelSpec, frame: pd.DataFrame) -> Fitted:
    """Fit a predictive model on (now, horizon later) pairs of its inputs."""
    current, future = forecast_pairs(frame, spec.estimator.training["horizon_minutes"], spec.name)
    return Fitted(fit_regressor(spec, current, future), current, len(current), {})


def _train_classification(spec: ModelSpec, frame: pd.DataFrame) -> Fitted:
    """Fit a classification model on its features and the label column."""
    features = engineer_features(frame, spec.name).to_numpy()
    labels = feature_labels(frame, spec.name)
    if labels is None:
        raise ContractError(f"the training data has no {spec.labels.column!r} column: {spec.name} learns from its labels; "
                            f"read data that holds them (source=file with its data.file, or file_path)")
    return Fitted(fit_classifier(spec, features, labels), features, len(features), {})


# What each ADR-040 type's training is.
TRAINERS: dict[str, Callable[[ModelSpec, pd.DataFrame], Fitted]] = {
    ANOMALY: _train_anomaly,
    PREDICTIVE: _train_predictive,
    CLASSIFICATION: _train_classification,
}


def train_model(spec: ModelSpec, frame: pd.DataFrame, overrides: Mapping[str, object] | None = None) -> TrainedModel:
    """Fit ``spec`` with a run's ``overrides`` (``spec_with_overrides``) on validated raw per-minute training data, as its type
    says; return it with its parameters, lineage, input profile and reference predictions.

    The process then uses ``spec`` for its model name (``use_spec``), so the contract reads its inputs and labels.
    """
    use_spec(spec)
    recipe = spec_with_overrides(spec, overrides)
    fitted = TRAINERS[spec.type](recipe, frame)
    parameters = {"model_name": spec.name, "model_type": spec.type, **recipe.estimator.training,
                  "estimator": [{"name": step.name, "class": step.class_path, "params": dict(step.params)} for step in recipe.estimator.steps],
                  "overrides": dict(overrides or {}), **fitted.calibration}
    return TrainedModel(fitted.estimator, parameters, data_fingerprint(frame), fitted.rows, drift_profile(frame, spec.name),
                        reference_predictions(fitted.estimator, fitted.inputs, method=spec.served_method), data_window(frame))


def data_window(frame: pd.DataFrame) -> dict:
    """Return the first and last minute of the training data as ISO-8601 times ({} when it has no timestamps)."""
    if TIMESTAMP_COLUMN not in frame or frame.empty:
        return {}
    times = pd.to_datetime(frame[TIMESTAMP_COLUMN])
    return {"start": times.min().isoformat(), "end": times.max().isoformat()}


def reference_predictions(estimator, features: np.ndarray, rows: int = REFERENCE_ROWS, method: str = "predict") -> dict:
    """Return ``rows`` training inputs spread over the data and what the fitted model serves for them (``method``'s answer).

    Stored with the version, they let the smoke test check that the server reproduces what the model predicted
    when it was trained, without unpickling it (and importing scikit-learn) again.
    """
    picked = features[np.unique(np.linspace(0, len(features) - 1, rows).astype(int))]
    return {"instances": picked.tolist(), "predictions": getattr(estimator, method)(picked).tolist()}


# --- saving ------------------------------------------------------------------------------------------------------


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


def save_trained(trained: TrainedModel, directory: Path, data_source: str = "unknown", regime_start: str = "") -> dict:
    """Write ``model.pkl`` and ``training.json`` (parameters, lineage, data source and the regime start it learned from, input profile,
    reference predictions) to ``directory``; return the latter's content."""
    save_model(trained, directory)
    training = {"parameters": trained.parameters, "data_fingerprint": trained.data_fingerprint, "data_source": data_source, "regime_start": regime_start,
                "training_rows": trained.training_rows, "data_window": trained.data_window, "profile": trained.profile, "reference": trained.reference}
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
