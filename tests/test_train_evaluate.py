"""train and evaluate: stock estimators, calibrated thresholds, a real forecaster, gates and champion/challenger."""

import io

import joblib
import numpy as np
import pytest
from sklearn.dummy import DummyRegressor
from sklearn.pipeline import Pipeline

from components.model.contract import ANOMALY_DETECTOR, PREDICTIVE_ANALYTICS, ContractError, engineer_features, fallback_instance, forecast_pairs
from components.model.evaluate import evaluate_candidate
from components.model.spec import spec_for
from components.data.ingest import IngestRequest, ingest
from components.model.train import (
    TrainedModel,
    fit_outlier_detector,
    foreign_pickle_modules,
    save_model,
    train_model,
)


DETECTOR, FORECASTER = spec_for(ANOMALY_DETECTOR), spec_for(PREDICTIVE_ANALYTICS)


@pytest.fixture(scope="module")
def detector_data():
    return ingest(IngestRequest(ANOMALY_DETECTOR, days=4, seed=11))


@pytest.fixture(scope="module")
def forecaster_data():
    return ingest(IngestRequest(PREDICTIVE_ANALYTICS, days=10, seed=11))


def pickled(estimator) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(estimator, buffer)
    return buffer.getvalue()


def test_detector_threshold_is_calibrated_on_training_data(detector_data):
    trained = train_model(DETECTOR, detector_data.train, {"target_false_positive_rate": 0.02})
    assert isinstance(trained.estimator, Pipeline)
    normal = engineer_features(detector_data.train, ANOMALY_DETECTOR)[detector_data.train.is_anomaly.iloc[5:].to_numpy() == 0]
    predictions = trained.estimator.predict(normal.to_numpy())
    assert predictions.dtype.kind == "i" and set(np.unique(predictions)) <= {-1, 1}
    # The threshold flags the target share of normal training rows (up to one row of quantile rounding); the
    # no-data imputer makes the engine's fallback vector a typical minute, so it does not pull the threshold.
    assert (predictions == -1).mean() == pytest.approx(trained.parameters["training_false_positive_rate"])
    assert 0.015 < trained.parameters["training_false_positive_rate"] <= 0.02 + 1 / len(normal)
    assert trained.parameters["threshold_set_by"] == "target_false_positive_rate"
    assert trained.estimator.predict(np.array([fallback_instance()])).tolist() == [1]


def test_fit_detector_refuses_rows_that_are_not_nine_features_per_metric():
    with pytest.raises(ContractError, match="needs the 9 contract features per metric, got rows of shape \\(10,\\).*metric_features"):
        fit_outlier_detector(DETECTOR, np.random.default_rng(0).normal(size=(50, 10)))


def test_no_data_values_are_imputed_per_feature_column(detector_data):
    trained = train_model(DETECTOR, detector_data.train)
    imputer = trained.estimator.named_steps["no_data"]
    features = engineer_features(detector_data.train, ANOMALY_DETECTOR)
    typical = features[detector_data.train.is_anomaly.iloc[5:].to_numpy() == 0].median().to_numpy()
    # The fallback vector becomes the training medians, except diff and relative change whose sentinel is 0.
    imputed_fallback = imputer.transform(np.array([fallback_instance()]))[0]
    passthrough = [index for index in range(45) if index % 9 in (7, 8)]
    assert sorted(imputed_fallback[-10:].tolist()) == [0.0] * 10
    assert sorted(imputed_fallback[:-10].round(9).tolist()) == sorted(np.delete(typical, passthrough).round(9).tolist())
    # A real minute passes through untouched (same values, possibly reordered).
    minute = engineer_features(detector_data.validation, ANOMALY_DETECTOR).to_numpy()[:1]
    assert sorted(imputer.transform(minute)[0].tolist()) == sorted(minute[0].tolist())


def test_forecaster_learns_the_future_not_the_present(forecaster_data):
    trained = train_model(FORECASTER, forecaster_data.train)
    assert not np.allclose(trained.estimator.regressor_.coef_, np.eye(5)), "an identity map is the upstream bug"
    current, future = forecast_pairs(forecaster_data.validation, 60)
    model_error = np.abs(trained.estimator.predict(current) - future).mean(axis=0)
    persistence_error = np.abs(current - future).mean(axis=0)
    assert model_error[0] < 0.95 * persistence_error[0], "cpu should beat persistence at 1 hour"
    assert (model_error <= persistence_error * 1.05).all()


class ProjectScaler(DummyRegressor):
    """A project class: the stock sklearn server could not unpickle it."""


def test_only_stock_objects_can_be_saved(tmp_path):
    assert foreign_pickle_modules(DummyRegressor()) == []
    assert foreign_pickle_modules(ProjectScaler()) == [__name__]
    with pytest.raises(ContractError, match="stock sklearn server can only load scikit-learn objects"):
        save_model(TrainedModel(ProjectScaler(), {}, "", 0), tmp_path)
    assert not (tmp_path / "model.pkl").exists()


def test_evaluation_passes_a_good_detector_and_renders_dashboard_data(detector_data):
    trained = train_model(DETECTOR, detector_data.train)
    evaluation = evaluate_candidate(DETECTOR, pickled(trained.estimator), detector_data.validation, {"min_f1": 0.1})
    assert evaluation.deploy, evaluation.reason
    assert {"precision", "recall", "f1", "roc_auc", "predict_latency_ms", "pickle_mb"} <= set(evaluation.metrics)
    assert np.array(evaluation.confusion).sum() == len(detector_data.validation) - 5
    fpr, tpr, thresholds = evaluation.roc
    assert len(fpr) == len(tpr) == len(thresholds) <= 101 and fpr[0] == 0.0 and tpr[-1] == 1.0
    assert evaluation.checks["fallback_normal"][0]


def test_gates_and_contract_checks_block_deployment(detector_data, forecaster_data):
    trained = train_model(DETECTOR, detector_data.train)
    blocked = evaluate_candidate(DETECTOR, pickled(trained.estimator), detector_data.validation, {"min_f1": 0.99, "max_pickle_mb": 0.0001})
    assert not blocked.deploy
    assert "min_f1: F1" in blocked.reason and "(gate 0.99)" in blocked.reason and "pickle_size" in blocked.reason

    # A forecaster that returns one float per row breaks the 5-floats contract.
    scalar = DummyRegressor().fit(np.zeros((3, 5)), np.zeros(3))
    wrong_shape = evaluate_candidate(FORECASTER, pickled(scalar), forecaster_data.validation, {"max_mase": 100})
    assert not wrong_shape.deploy and "output_type" in wrong_shape.reason and "5 floats per row" in wrong_shape.reason


def test_challenger_must_not_be_worse_than_champion(forecaster_data):
    good = train_model(FORECASTER, forecaster_data.train).estimator
    worse = DummyRegressor().fit(*forecast_pairs(forecaster_data.train, 60))
    lost = evaluate_candidate(FORECASTER, pickled(worse), forecaster_data.validation, {"max_mase": 100}, champion=("v3", good))
    assert not lost.deploy
    assert "champion: mean MASE" in lost.reason and "champion v3" in lost.reason
    won = evaluate_candidate(FORECASTER, pickled(good), forecaster_data.validation, {}, champion=("v3", worse))
    assert won.deploy and "not worse than champion v3" in won.reason
    assert won.champion_metrics["mase_mean"] > won.metrics["mase_mean"]


def test_unlabelled_cluster_data_is_judged_on_anomaly_rate_and_contract(detector_data):
    trained = train_model(DETECTOR, detector_data.train)
    unlabelled = detector_data.validation.drop(columns=["is_anomaly", "incident"])
    evaluation = evaluate_candidate(DETECTOR, pickled(trained.estimator), unlabelled, {"min_f1": 0.99}, champion=("v1", trained.estimator))
    assert evaluation.deploy, evaluation.reason
    assert "f1" not in evaluation.metrics and evaluation.confusion is None
    assert "no is_anomaly labels" in evaluation.checks["min_f1"][1] and "no labels to compare" in evaluation.checks["champion"][1]
    strict = evaluate_candidate(DETECTOR, pickled(trained.estimator), unlabelled, {"max_anomaly_rate": 0.0001})
    assert not strict.deploy and "max_anomaly_rate" in strict.reason


def test_forecasts_stay_within_physical_ranges_as_a_stock_object(forecaster_data):
    trained = train_model(FORECASTER, forecaster_data.train)
    extremes = np.array([[1.0] * 5, [0.0] * 5, [0.99, 0.01, 1.0, 0.0, 1.0]])
    unclipped = trained.estimator.regressor_.predict(extremes)
    assert (unclipped > 1).any() or (unclipped < 0).any(), "the linear model alone leaves the range, so the clip matters"
    predicted = trained.estimator.predict(extremes)
    assert predicted.shape == (3, 5) and (predicted >= 0).all() and (predicted <= 1).all()
    inside = trained.estimator.regressor_.predict(forecaster_data.validation[["cpu", "memory", "disk", "network_in", "network_out"]].to_numpy()[:50])
    assert np.allclose(trained.estimator.predict(forecaster_data.validation[["cpu", "memory", "disk", "network_in", "network_out"]].to_numpy()[:50]),
                       np.clip(inside, 0, 1))
    assert foreign_pickle_modules(trained.estimator) == []
