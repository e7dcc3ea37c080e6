"""The platform contract in one place: model schemas, units, feature engineering and input validation.

Source: the platform contract, summarised in ``docs/contract.md``. Everything that turns raw per-minute metrics
into model inputs, or that checks an input, lives here so that training, evaluation, smoke tests and serving agree
byte for byte. The models, their inputs and units, and the engine's fallback vector are read from the built-in model
specs, ``models/*.yaml`` (``components.model.spec``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from components.model.spec import FEATURE_RECIPES, RAW, WINDOW_9, Input, ModelSpec, SpecError, builtin_specs, spec_for
from components.model.units import UNIT_LIMITS, MixUp, Unit, UnitLimits  # re-exported: importers read the units from the contract

if TYPE_CHECKING:  # numpy and pandas are imported where they are used: a step that only reads the schema starts faster
    import numpy as np
    import pandas as pd

ANOMALY_DETECTOR = "anomaly-detector"
PREDICTIVE_ANALYTICS = "predictive-analytics"
TIMESTAMP_COLUMN = "timestamp"
INCIDENT_COLUMN = "incident"
WINDOW_MINUTES = 5
# The first row with a complete 5-minute window and a 5-minute lag is row 5, so a series needs 6 rows.
MIN_FEATURE_ROWS = WINDOW_MINUTES + 1


def utc_time(text: str, problem: str) -> dt.datetime:
    """Return the ISO-8601 time ``text`` (a run's regime_start or prometheus_end, a recorded onset) in UTC, a time without a zone
    being UTC as every timestamp here is; raise ValueError saying ``problem`` when it is none."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(problem) from None
    return moment.replace(tzinfo=dt.timezone.utc) if moment.tzinfo is None else moment.astimezone(dt.timezone.utc)


class ContractError(ValueError):
    """An input that breaks the platform contract; the message names the problem and the fix."""


@dataclass(frozen=True)
class ModelSchema:
    """What one model consumes: its base metrics and how many features a served instance has."""

    model_name: str
    base_metrics: tuple[Input, ...]  # the spec's inputs: name, unit, bounds, query
    engineered: bool

    @property
    def n_features(self) -> int:
        """Return the number of values in one served instance."""
        return len(self.feature_names)

    @property
    def metric_names(self) -> list[str]:
        """Return the base metric column names in contract order."""
        return [metric.name for metric in self.base_metrics]

    @property
    def feature_names(self) -> list[str]:
        """Return the served feature names in contract order (index 9*m + f for the detector)."""
        if not self.engineered:
            return self.metric_names
        return [f"{metric}__{suffix}" for metric in self.metric_names for suffix in FEATURE_SUFFIXES]


FEATURE_SUFFIXES = FEATURE_RECIPES[WINDOW_9]


def schema_of(spec: ModelSpec) -> ModelSchema:
    """Return the schema of a model spec: its inputs as base metrics, engineered unless its recipe is raw."""
    return ModelSchema(spec.name, spec.inputs, spec.features.name != RAW)


# The built-in models (models/*.yaml) are the contract's models, by file name.
SCHEMAS: dict[str, ModelSchema] = {spec.name: schema_of(spec) for spec in builtin_specs()}
MODEL_NAMES = tuple(SCHEMAS)
# What the coordination engine sends for every metric when Prometheus fails (contract §2): the built-in probe marked so.
FALLBACK_METRIC_FEATURES = next(spec.smoke.per_input for spec in builtin_specs() if spec.smoke and spec.smoke.engine_fallback)
NETWORK_SCALE_BYTES_PER_SECOND = 125e6


def schema_for(model_name: str) -> ModelSchema:
    """Return the schema of ``model_name`` (a built-in, the spec this process uses, or an example's) or raise a ContractError."""
    if model_name in SCHEMAS:
        return SCHEMAS[model_name]
    try:
        return schema_of(spec_for(model_name))
    except SpecError as error:
        raise ContractError(f"unknown model {model_name!r}: {error}") from None


def fallback_instance(n_metrics: int = len(SCHEMAS[ANOMALY_DETECTOR].base_metrics)) -> list[float]:
    """Return the engine's fallback vector for ``n_metrics`` metrics (45 values for the anomaly detector)."""
    return list(FALLBACK_METRIC_FEATURES) * n_metrics


def scale_network(bytes_per_second: np.ndarray | pd.Series) -> np.ndarray:
    """Return network throughput in the engine's unit: bytes/s / 125e6, clamped to 0-1."""
    import numpy as np

    return np.clip(np.asarray(bytes_per_second, dtype=float) / NETWORK_SCALE_BYTES_PER_SECOND, 0.0, 1.0)


def validate_raw_metrics(frame: pd.DataFrame, model_name: str, *, source: str = "input") -> pd.DataFrame:
    """Check a raw per-minute metrics frame against the model's spec and return it with float inputs and integer labels.

    Raises ContractError for an empty frame, missing or non-numeric columns, NaN or inf, negative values, values
    outside an input's bounds (at most its unit's plausible maximum, ``UNIT_LIMITS``), naming the likely mix-up such as
    percent or millicores, and labels (the spec's label column, when present) that are not the type's values.
    """
    import pandas as pd

    schema = schema_for(model_name)
    spec = spec_for(model_name)
    if frame is None or len(frame) == 0:
        raise ContractError(f"{source}: the dataset is empty; provide at least {MIN_FEATURE_ROWS} per-minute rows")
    missing = [name for name in schema.metric_names if name not in frame.columns]
    if missing:
        raise ContractError(
            f"{source}: missing column(s) {missing} for {model_name}; expected columns "
            f"{[TIMESTAMP_COLUMN, *schema.metric_names]}"
        )
    result = frame.copy()
    for metric in schema.base_metrics:
        column = pd.to_numeric(result[metric.name], errors="coerce")
        non_numeric = column.isna() & result[metric.name].notna()
        if non_numeric.any():
            example = result[metric.name][non_numeric].iloc[0]
            raise ContractError(f"{source}: column {metric.name!r} has non-numeric value {example!r}; send numbers only")
        values = column.to_numpy(dtype=float)
        _check_finite(values, f"{source}: column {metric.name!r}")
        if (values < 0).any():
            raise ContractError(f"{source}: column {metric.name!r} has negative values; {metric.unit.value} cannot be negative")
        low, high = next(item.bounds for item in spec.inputs if item.name == metric.name)
        limits = UNIT_LIMITS[metric.unit]
        expected = limits.expected if high == limits.maximum else f"{metric.unit.value} within its bounds [{low:g}, {high:g}] ({spec.source})"
        if values.max() > high * (1.0 + 1e-9):
            raise ContractError(
                f"{source}: column {metric.name!r} must be {expected} but reaches {values.max():.4g}; "
                f"{_over_limit_hint(values.max(), high, limits)}"
            )
        if values.min() < low:
            raise ContractError(f"{source}: column {metric.name!r} must be {expected} but goes down to {values.min():.4g}; "
                                "fix the data, or widen the input's bounds in the spec")
        result[metric.name] = values
    if spec.labels is not None and spec.labels.column in result.columns:
        result[spec.labels.column] = _checked_labels(result[spec.labels.column], spec, source)
    return result


def _over_limit_hint(largest: float, high: float, limits: UnitLimits) -> str:
    """Return the mix-ups that would bring ``largest`` within the bound ``high`` and how to undo them, else the unit's fix."""
    fitting = [f"{mix_up.name}: divide by {mix_up.factor:g}" for mix_up in limits.mix_ups if largest / mix_up.factor <= high]
    return f"it looks like {', or '.join(fitting)}" if fitting else limits.fix


def _checked_labels(column: pd.Series, spec: ModelSpec, source: str) -> np.ndarray:
    """Return the label ``column`` as integers, or raise ContractError for a missing, non-integer or undeclared label."""
    import numpy as np
    import pandas as pd

    name = spec.labels.column
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values) | (values != np.round(values))
    if bad.any():
        raise ContractError(f"{source}: label column {name!r} has {int(bad.sum())} value(s) that are not integers, the first "
                            f"{column[bad].iloc[0]!r}; give every row its label")
    allowed = {item.value for item in spec.outputs.classes} or {0, 1}  # classes; an anomaly label is 1 (anomaly) or 0
    unknown = sorted(set(values.astype(int).tolist()) - allowed)
    if unknown:
        raise ContractError(f"{source}: label column {name!r} holds {unknown}, and {spec.name} labels are {sorted(allowed)}; fix the labels"
                            + (", or declare the classes in outputs.classes" if spec.outputs.classes else " (1 anomaly, 0 normal)"))
    return values.astype(int)


def _check_finite(values: np.ndarray, what: str) -> None:
    """Raise ContractError naming ``what`` when ``values`` holds NaN or inf."""
    import numpy as np

    bad = ~np.isfinite(values)
    if bad.any():
        first = int(np.flatnonzero(bad.ravel())[0])
        raise ContractError(
            f"{what} has {int(bad.sum())} NaN or inf value(s), the first at position {first}; "
            "fill or drop those rows before training or predicting"
        )


def engineer_features(raw: pd.DataFrame, model_name: str) -> pd.DataFrame:
    """Return the served feature table for validated raw per-minute metrics, one row per usable minute.

    anomaly-detector: the 9 features of ``metric_features`` for each base metric; the first 5 rows lack a full
    window and are dropped. predictive-analytics: the 5 current values. Cost is linear in the number of rows.
    """
    schema = schema_for(model_name)
    if not schema.engineered:
        return raw[schema.metric_names].astype(float).reset_index(drop=True)
    return metric_features(raw, schema.metric_names)


def metric_features(raw: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Return the 9 contract features of every column (value, 5-minute mean/std/min/max, lag 1, lag 5, diff,
    relative change), grouped by column, without the first 5 rows that lack a full window.
    """
    import numpy as np
    import pandas as pd

    if len(raw) < MIN_FEATURE_ROWS:
        raise ContractError(
            f"series too short: {len(raw)} row(s), the 9 features need at least {MIN_FEATURE_ROWS} consecutive minutes"
        )
    features: dict[str, np.ndarray] = {}
    for column in columns:
        series = raw[column].astype(float).reset_index(drop=True)
        window = series.rolling(WINDOW_MINUTES, min_periods=WINDOW_MINUTES)
        lag_1 = series.shift(1)
        diff_1 = series - lag_1
        with np.errstate(divide="ignore", invalid="ignore"):
            relative = np.where(lag_1.to_numpy() == 0, 0.0, diff_1.to_numpy() / lag_1.to_numpy())
        for suffix, values in zip(
            FEATURE_SUFFIXES,
            (series, window.mean(), window.std(), window.min(), window.max(), lag_1, series.shift(5), diff_1, relative),
        ):
            features[f"{column}__{suffix}"] = np.asarray(values, dtype=float)
    return pd.DataFrame(features).iloc[WINDOW_MINUTES:].reset_index(drop=True)


def feature_labels(raw: pd.DataFrame, model_name: str) -> np.ndarray | None:
    """Return the labels of the spec's label column aligned with ``engineer_features`` rows, or None when the spec or the data has none."""
    labels_of = spec_for(model_name).labels
    if labels_of is None or labels_of.column not in raw.columns:
        return None
    labels = raw[labels_of.column].astype(int).to_numpy()
    return labels[WINDOW_MINUTES:] if schema_for(model_name).engineered else labels


def forecast_pairs(raw: pd.DataFrame, horizon_minutes: int, model_name: str = PREDICTIVE_ANALYTICS) -> tuple[np.ndarray, np.ndarray]:
    """Return (x_t, x_{t+h}) pairs of a predictive model's inputs (by default the built-in forecaster's 5) for a per-minute series."""
    return horizon_pairs(raw[schema_for(model_name).metric_names].to_numpy(dtype=float), horizon_minutes, "minute")


def horizon_pairs(values: np.ndarray, horizon_steps: int, step: str = "step") -> tuple[np.ndarray, np.ndarray]:
    """Return (x_t, x_{t+h}) row pairs of an evenly spaced series ``values`` at a horizon of ``horizon_steps`` rows."""
    if horizon_steps < 1:
        raise ContractError(f"the horizon must be at least 1 {step}, got {horizon_steps}")
    if len(values) <= horizon_steps:
        raise ContractError(
            f"series too short: {len(values)} row(s) cannot make a single pair at a {horizon_steps}-{step} horizon; "
            f"provide more than {horizon_steps} {step}s of data or lower the horizon"
        )
    return values[:-horizon_steps], values[horizon_steps:]


def validate_instances(instances: object, model_name: str) -> np.ndarray:
    """Return served instances as a float matrix, or raise ContractError on shape, type, NaN or inf problems."""
    import numpy as np

    schema = schema_for(model_name)
    try:
        matrix = np.asarray(instances, dtype=float)
    except (TypeError, ValueError):
        raise ContractError(f"instances must be a list of lists of {schema.n_features} numbers") from None
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise ContractError(f"instances must be a non-empty list of rows of {schema.n_features} numbers")
    if matrix.shape[1] != schema.n_features:
        raise ContractError(
            f"{model_name} expects {schema.n_features} features per instance, got {matrix.shape[1]}; "
            f"see the contract's feature order ({schema.feature_names[0]}, ...)"
        )
    _check_finite(matrix, "instances")
    return matrix


def served_identity(answer: dict, expected: dict[str, object]) -> tuple[list[str], list[str]]:
    """Return (the fields of ``expected`` that ``answer`` names as expected, a message for each it names otherwise).

    The project runtime names the model and version that answered: ``model_name`` and ``model_version`` in a V1
    predict and a V2 infer answer, ``name`` and ``version`` in V1 metadata, ``versions`` in V2 metadata. The stock
    sklearn runtime cannot: its answers lack these fields or send null, and the coordination engine reads
    ``predictions`` only, so an absent or null field is accepted (in neither list).
    """
    present = {field: value for field, value in expected.items() if answer.get(field) is not None}
    named = [field for field, value in present.items() if answer[field] == value]
    wrong = [f"{field} is {answer[field]!r}, expected {value!r}" for field, value in present.items() if answer[field] != value]
    return named, wrong


SYNTHETIC_FALLBACK = "synthetic fallback"  # the data_source of a run that found too little cluster data and generated it


def is_synthetic(data_source: str) -> bool:
    """Return whether a version's recorded ``data_source`` means it learned generated data, not a cluster's."""
    return data_source in ("synthetic", SYNTHETIC_FALLBACK)
