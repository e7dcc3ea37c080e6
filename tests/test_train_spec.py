"""Training, evaluating and ingesting any model spec: the type brings the behaviour, the built-ins are what they were,
the disk-failure example needs no code. No servers; small data.
"""

from __future__ import annotations

import ast
import io
import shutil

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import Pipeline

from components.data.ingest import IngestRequest, ingest
from components.data.prometheus import fetch_metrics
from components.model import spec as spec_module
from components.model.contract import ANOMALY_DETECTOR, PREDICTIVE_ANALYTICS, ContractError, engineer_features, forecast_pairs
from components.model.evaluate import evaluate_candidate, markdown_report
from components.model.spec import SpecError, load_spec, spec_for, use_spec
from components.model.train import (
    fit_outlier_detector,
    foreign_pickle_modules,
    save_trained,
    spec_with_overrides,
    train_model,
)
from tests import recipes_before_specs as before
from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "disk-failure-predictor"


def pickled(estimator) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(estimator, buffer)
    return buffer.getvalue()


@pytest.fixture(autouse=True)
def specs_in_use(monkeypatch):
    """Each test starts with no spec registered by use_spec, and leaves none behind."""
    monkeypatch.setattr(spec_module, "_IN_USE", {})


@pytest.fixture(scope="module")
def disks():
    """The disk-failure example's spec and its data, read through ingest from the spec's data.file."""
    spec = use_spec(load_spec(EXAMPLE / "model.yaml"))
    return spec, ingest(IngestRequest(spec.name, source="file"))


@pytest.fixture(scope="module")
def disk_model(disks):
    spec, data = disks
    return train_model(spec, data.train)


# --- the built-ins are what they were ------------------------------------------------------------------------------


# The detector-quality recipe (2026-12-07) added the residual; without it, the spec trains the recipe from before specs.
ENVELOPE_ONLY = {"residual_weight": 0.0}


@pytest.fixture(scope="module")
def detector_data():
    """Synthetic detector data through ingest, and its normal training rows as contract features."""
    data = ingest(IngestRequest(ANOMALY_DETECTOR, days=2, seed=11))
    features = engineer_features(data.train, ANOMALY_DETECTOR).to_numpy()
    return data, features[data.train.is_anomaly.iloc[5:].to_numpy() == 0]


def test_the_builtin_specs_train_the_detector_and_forecaster_from_before_specs_byte_for_byte(detector_data):
    data, normal = detector_data
    envelope, calibration = before.fit_detector(normal)
    spec_path = train_model(spec_for(ANOMALY_DETECTOR), data.train, ENVELOPE_ONLY)
    assert pickled(spec_path.estimator) == pickled(envelope)
    assert {key: spec_path.parameters[key] for key in calibration} == calibration

    # The isolation-forest recipe with a robust scaler is reachable as overrides.
    forest, _ = before.fit_detector(normal, algorithm="isolation_forest", scaler="robust", n_estimators=40, random_state=3)
    overrides = {"scaler.class": "sklearn.preprocessing.RobustScaler", "pca.class": "passthrough", "detector.class": "sklearn.ensemble.IsolationForest",
                 "detector.n_estimators": 40, "detector.max_samples": 256, "detector.random_state": 3}
    assert pickled(train_model(spec_for(ANOMALY_DETECTOR), data.train, overrides).estimator) == pickled(forest)

    forecaster_data = ingest(IngestRequest(PREDICTIVE_ANALYTICS, days=3, seed=11))
    current, future = forecast_pairs(forecaster_data.train, 30)
    today = before.fit_forecaster(current, future, 2.0)
    assert pickled(train_model(spec_for(PREDICTIVE_ANALYTICS), forecaster_data.train, {"horizon_minutes": 30, "levels.alpha": 2.0}).estimator) == pickled(today)


def test_the_detector_adds_the_weighted_residual_off_its_components_to_its_envelope_as_one_stock_envelope(detector_data):
    data, normal = detector_data
    trained = train_model(spec_for(ANOMALY_DETECTOR), data.train)
    detector = trained.estimator
    assert [type(step).__name__ for _, step in detector.steps] == ["ColumnTransformer", "StandardScaler", "EllipticEnvelope"]
    assert foreign_pickle_modules(detector) == [] and trained.parameters["residual_weight"] == 2.0
    assert trained.parameters["training_false_positive_rate"] == pytest.approx(0.02, abs=0.001)

    # The same sum, computed from the envelope-only recipe's own PCA and envelope.
    envelope = train_model(spec_for(ANOMALY_DETECTOR), data.train, ENVELOPE_ONLY).estimator
    inputs = Pipeline(envelope.steps[:-2]).transform
    pca, inner = envelope.named_steps["pca"], envelope.named_steps["detector"]

    def parts(rows):
        components = pca.transform(inputs(rows))
        return inner.mahalanobis(components), ((inputs(rows) - pca.inverse_transform(components)) ** 2).sum(axis=1)

    train_distance, train_residual = parts(normal)
    rows = normal[::50] * np.random.default_rng(5).normal(1.0, 0.2, normal[::50].shape)
    distance, residual = parts(rows)
    expected = distance / np.median(train_distance) + 2.0 * residual / np.median(train_residual)
    assert np.allclose(-detector.score_samples(rows), expected, rtol=1e-6)

    # A minute moved off the components only: the envelope alone cannot see it, the residual flags it.
    direction = np.random.default_rng(6).normal(size=normal.shape[1])
    direction -= pca.components_.T @ (pca.components_ @ direction)
    direction *= 10 * np.sqrt(np.median(train_residual)) / np.linalg.norm(direction)
    # The no-data imputer puts its columns first, grouped by sentinel: column j of the scaler's input is this raw feature.
    raw_column = [column for _, _, columns in envelope.named_steps["no_data"].transformers_ for column in columns]
    typical, moved = normal[::50], normal[::50].copy()
    moved[:, raw_column] += direction * envelope.named_steps["scaler"].scale_
    assert np.allclose(pca.transform(inputs(moved)), pca.transform(inputs(typical)))
    assert (envelope.predict(moved) == envelope.predict(typical)).all()
    assert (detector.predict(typical) == 1).mean() > 0.9 and (detector.predict(moved) == -1).all()


def test_a_residual_weight_on_an_estimator_without_pca_and_envelope_is_refused_naming_the_fix(detector_data):
    data, _ = detector_data
    # Swapping the detector drops the spec's residual with the envelope it belonged to; asking for both is refused.
    assert spec_with_overrides(spec_for(ANOMALY_DETECTOR), {"detector.class": "sklearn.ensemble.IsolationForest"}).estimator.training["residual_weight"] == 0
    with pytest.raises(ContractError, match=r"residual_weight adds the distance off a PCA's components to an EllipticEnvelope's, and the estimator is "
                                            r"sklearn.preprocessing.StandardScaler -> sklearn.decomposition.PCA -> sklearn.ensemble.IsolationForest: "
                                            r"end it with sklearn.decomposition.PCA \(without whiten\) then sklearn.covariance.EllipticEnvelope, or set residual_weight: 0"):
        train_model(spec_for(ANOMALY_DETECTOR), data.train, {"detector.class": "sklearn.ensemble.IsolationForest", "residual_weight": 2})


def test_training_rows_that_leave_no_residual_get_the_envelope_alone():
    rng = np.random.default_rng(0)
    flat = np.full((2000, 45), 0.2)  # four of the five metrics flat: the rows span fewer dimensions than the 15 components
    flat[:, :9] = rng.normal(0.5, 0.1, (2000, 9))
    detector, calibration = fit_outlier_detector(spec_for(ANOMALY_DETECTOR), flat)
    envelope, _ = fit_outlier_detector(spec_with_overrides(spec_for(ANOMALY_DETECTOR), ENVELOPE_ONLY), flat)
    rows = flat[:200] + rng.normal(0, 0.05, (200, 45))
    assert calibration["residual_weight"] == 0.0 and np.isfinite(calibration["threshold"])
    assert (detector.predict(rows) == envelope.predict(rows)).all()


# --- a third model with no code ------------------------------------------------------------------------------------


def test_the_disk_failure_example_trains_from_its_data_and_passes_its_gates(disks, disk_model, tmp_path):
    spec, data = disks
    assert "will_fail" in data.train.columns and data.description.startswith(f"file: {EXAMPLE / 'disks.csv'}")
    training = save_trained(disk_model, tmp_path, data.data_source)
    assert foreign_pickle_modules(disk_model.estimator) == [], "the stock sklearn runtime loads it"
    assert set(training["profile"]["features"]) == {item.name for item in spec.inputs}
    probabilities = joblib.load(tmp_path / "model.pkl").predict_proba(engineer_features(data.validation, spec.name).to_numpy())
    assert probabilities.shape == (len(data.validation), 2) and np.allclose(probabilities.sum(axis=1), 1.0)
    assert np.allclose(np.asarray(training["reference"]["predictions"]).sum(axis=1), 1.0), "the reference is what the server answers"

    evaluation = evaluate_candidate(spec, (tmp_path / "model.pkl").read_bytes(), data.validation)
    assert evaluation.deploy, evaluation.reason
    assert list(evaluation.metrics)[:6] == ["roc_auc", "average_precision", "precision", "recall", "f1", "alert_rate"]
    assert evaluation.metrics["roc_auc"] >= 0.9 and evaluation.metrics["recall"] >= 0.5
    assert evaluation.categories == ["healthy", "failing"] and np.array(evaluation.confusion).sum() == len(data.validation)
    fpr, tpr, thresholds = evaluation.roc
    assert len(fpr) == len(tpr) == len(thresholds) <= 101 and fpr[0] == 0.0 and tpr[-1] == 1.0
    assert evaluation.checks["output_type"][0] and evaluation.checks["probe_below_alert"][0]
    assert "| min_roc_auc | pass | ROC AUC" in markdown_report(evaluation, data.description)

    # balance_classes weighs the rare failing disks up: more of them reach the alert threshold.
    balanced = train_model(spec, data.train, {"balance_classes": True})
    recall = evaluate_candidate(spec, pickled(balanced.estimator), data.validation).metrics["recall"]
    assert recall > evaluation.metrics["recall"]


def test_a_classification_gate_failure_names_the_metric_and_its_limit(disks, disk_model):
    spec, data = disks
    failed = evaluate_candidate(spec, pickled(disk_model.estimator), data.validation, {"min_roc_auc": 0.999, "min_recall": 0.95},
                                champion=("v1", disk_model.estimator))
    assert not failed.deploy
    assert f"min_roc_auc: ROC AUC {failed.metrics['roc_auc']:.3f} (gate 0.999)" in failed.reason
    assert "min_recall: recall" in failed.reason and "(gate 0.95)" in failed.reason
    assert failed.checks["champion"] == (True, f"ROC AUC {failed.metrics['roc_auc']:.3f} against champion v1 {failed.metrics['roc_auc']:.3f} (tolerance 0.05)")
    with pytest.raises(ValueError, match="'min_f1' is not a gate of disk-failure-predictor .*min_roc_auc, min_recall, max_predict_latency_ms"):
        evaluate_candidate(spec, pickled(disk_model.estimator), data.validation, {"min_f1": 0.3})


def test_unknown_or_misfit_overrides_are_refused_naming_what_fits(disks):
    spec, data = disks
    with pytest.raises(ValueError, match=r"'alpha' is not a training override of disk-failure-predictor: use a training knob \(balance_classes\), "
                                         r"or <step>.<parameter> or <step>.class of a step \(scaler, classifier\)"):
        train_model(spec, data.train, {"alpha": 1.0})
    with pytest.raises(ValueError, match="classifier.penalti: sklearn.linear_model.LogisticRegression has no parameter 'penalti'; use one of .*penalty"):
        spec_with_overrides(spec, {"classifier.penalti": "l2"})
    with pytest.raises(ValueError, match="classifier.class: sklearn.svm.SVC is not an allowlisted classifier .*RandomForestClassifier"):
        spec_with_overrides(spec, {"classifier.class": "sklearn.svm.SVC"})
    with pytest.raises(ValueError, match="balance_classes takes bool values"):
        spec_with_overrides(spec, {"balance_classes": "yes"})
    with pytest.raises(ValueError, match="the overrides of step classifier: .*C"):
        spec_with_overrides(spec, {"classifier.C": -1})
    swapped = spec_with_overrides(spec, {"classifier.class": "sklearn.ensemble.RandomForestClassifier", "classifier.n_estimators": 20})
    assert swapped.estimator.steps[1].params == {"n_estimators": 20}, "C and max_iter are LogisticRegression's: dropped with it"


def test_a_predictive_model_trains_any_allowlisted_regressor_that_fits_its_knobs_or_says_why_not(tmp_path):
    data = ingest(IngestRequest(PREDICTIVE_ANALYTICS, days=1, seed=5))
    forecaster = spec_for(PREDICTIVE_ANALYTICS)
    forest = {"fit_change": False, "levels.class": "sklearn.ensemble.RandomForestRegressor", "levels.n_estimators": 5, "levels.max_depth": 4}
    trained = train_model(forecaster, data.train, {**forest, "horizon_minutes": 30})
    evaluation = evaluate_candidate(forecaster, pickled(trained.estimator), data.validation, {"max_mase": 100}, training={"horizon_minutes": 30})
    assert evaluation.deploy, evaluation.reason
    assert foreign_pickle_modules(trained.estimator) == []
    with pytest.raises(ContractError, match="fit_change adds the identity to a linear regressor's coefficients.*or set estimator.training.fit_change to false"):
        train_model(forecaster, data.train, {key: value for key, value in forest.items() if key != "fit_change"})
    with pytest.raises(ContractError, match="HistGradientBoostingRegressor predicts one value, and predictive-analytics forecasts 5"):
        train_model(forecaster, data.train, {"fit_change": False, "levels.class": "sklearn.ensemble.HistGradientBoostingRegressor"})
    # spec check says so before any run.
    spec_file = tmp_path / "forest.yaml"
    spec_file.write_text((REPO / "models" / "predictive-analytics.yaml").read_text().replace(
        "class: sklearn.linear_model.Ridge, params: {alpha: 1.0}", "class: sklearn.ensemble.RandomForestRegressor").replace(
        "# yaml-language-server: $schema=modelspec.schema.json", ""))
    with pytest.raises(SpecError, match=r"forest.yaml:\d+: \$.estimator.training.fit_change: fit_change adds the identity .* or set fit_change: false"):
        load_spec(spec_file)


# --- ingest reads what the spec says -------------------------------------------------------------------------------


def test_a_spec_without_a_generator_gets_source_file_named_and_its_data_file_is_relative_to_the_spec(tmp_path, monkeypatch):
    copy = tmp_path / "elsewhere"
    shutil.copytree(EXAMPLE, copy)
    (copy / "disks.csv").write_text((copy / "disks.csv").read_text().replace(",1\n", ",0\n", 5))  # not the checkout's file
    monkeypatch.chdir(tmp_path)
    spec = use_spec(load_spec(copy / "model.yaml"))
    with pytest.raises(ContractError, match=f"disk-failure-predictor has no synthetic data generator .*use source=file with file_path empty "
                                            f"to read its data.file, {copy / 'disks.csv'}"):
        ingest(IngestRequest(spec.name, source="synthetic"))
    result = ingest(IngestRequest(spec.name, source="file"))
    assert result.description.startswith(f"file: {copy / 'disks.csv'}")
    read = pd.read_csv(copy / "disks.csv")
    assert pd.concat([result.train, result.validation]).will_fail.tolist() == read.will_fail.tolist()


def test_inputs_are_held_to_the_specs_bounds_and_labels_to_its_classes(disks, tmp_path):
    spec, _ = disks
    frame = pd.read_csv(EXAMPLE / "disks.csv")
    hours = tmp_path / "hours.csv"
    frame.assign(disk_age_days=frame.disk_age_days * 24).to_csv(hours, index=False)
    with pytest.raises(ContractError, match=r"column 'disk_age_days' must be days within its bounds \[0, 3650\] .* but reaches .*; it looks like hours: divide by 24"):
        ingest(IngestRequest(spec.name, source="file", file_path=str(hours)))
    labels = tmp_path / "labels.csv"
    frame.assign(will_fail=frame.will_fail * 2).to_csv(labels, index=False)
    with pytest.raises(ContractError, match=r"label column 'will_fail' holds \[2\], and disk-failure-predictor labels are \[0, 1\]"):
        ingest(IngestRequest(spec.name, source="file", file_path=str(labels)))


class RecordedPrometheus:
    """Answers range queries with one series, as Prometheus's HTTP API does (a matrix of [time, "value"] pairs)."""

    def __init__(self, bytes_per_second: float):
        self.value = bytes_per_second

    def query_range(self, query, start, end, step_s=60):
        return [{"metric": {}, "values": [[start.timestamp() + 60 * minute, str(self.value)] for minute in range(3)]}]


def test_a_query_divisor_scales_and_clips_to_the_inputs_bounds():
    start, end = pd.Timestamp("2026-01-05T00:00Z").to_pydatetime(), pd.Timestamp("2026-01-05T00:03Z").to_pydatetime()
    half = fetch_metrics(RecordedPrometheus(62.5e6), PREDICTIVE_ANALYTICS, start, end, {})
    assert half.network_in.tolist() == [0.5] * 3 and half.cpu.tolist() == [62.5e6] * 3, "divided only where the spec says"
    saturated = fetch_metrics(RecordedPrometheus(1e9), PREDICTIVE_ANALYTICS, start, end, {})
    assert saturated.network_out.tolist() == [1.0] * 3


# --- no code names the built-ins -----------------------------------------------------------------------------------


def test_no_code_in_components_model_or_data_branches_on_a_builtin_model_name():
    names = {spec.name for spec in spec_module.builtin_specs()}
    constants = {"ANOMALY_DETECTOR", "PREDICTIVE_ANALYTICS", "ENGINE_ANOMALY_NAME", "ENGINE_FORECAST_NAME"}

    def builtin(node: ast.AST) -> bool:
        """Whether ``node`` is a built-in model's name: its string, a constant holding it, or a collection of them."""
        if isinstance(node, ast.Constant):
            return node.value in names
        if isinstance(node, (ast.Name, ast.Attribute)):
            return (node.id if isinstance(node, ast.Name) else node.attr) in constants
        return isinstance(node, (ast.Tuple, ast.List, ast.Set)) and any(builtin(item) for item in node.elts)

    found = []
    for path in sorted([*(REPO / "components" / "model").rglob("*.py"), *(REPO / "components" / "data").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(builtin(operand) for operand in [node.left, *node.comparators]):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
            elif isinstance(node, ast.match_case) and builtin(getattr(node.pattern, "value", None)):
                found.append(f"{path.relative_to(REPO)}:{node.pattern.lineno}: case {ast.unparse(node.pattern)}")
    assert found == []
