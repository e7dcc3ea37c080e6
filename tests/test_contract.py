"""The contract module: feature engineering exactly as specified, and a clear error for every bad input."""

import numpy as np
import pandas as pd
import pytest

from components.model.contract import (
    ANOMALY_DETECTOR,
    PREDICTIVE_ANALYTICS,
    ContractError,
    engineer_features,
    fallback_instance,
    forecast_pairs,
    schema_for,
    served_identity,
    validate_instances,
    validate_raw_metrics,
)


def detector_frame(rows: int = 8) -> pd.DataFrame:
    values = np.arange(rows, dtype=float)
    return pd.DataFrame(
        {
            "timestamp": pd.date_range("2026-01-01", periods=rows, freq="min", tz="UTC"),
            "node_cpu_utilization": values / 10,
            "node_memory_utilization": np.full(rows, 0.5),
            "pod_cpu_usage": values,
            "pod_memory_usage": np.full(rows, 0.25),
            "container_restart_count": np.zeros(rows),
        }
    )


def test_schemas_have_the_contract_sizes():
    assert schema_for(ANOMALY_DETECTOR).n_features == 45
    assert schema_for(PREDICTIVE_ANALYTICS).n_features == 5
    assert len(fallback_instance()) == 45
    assert schema_for(ANOMALY_DETECTOR).feature_names[9 * 2 + 7] == "pod_cpu_usage__diff_1m"


def test_nine_features_per_metric_match_a_hand_computation():
    features = engineer_features(detector_frame(8), ANOMALY_DETECTOR)
    assert features.shape == (3, 45)
    # pod_cpu_usage is 0..7; the first usable row is t=5.
    row = features.iloc[0].to_numpy()[9 * 2 : 9 * 3]
    window = np.array([1, 2, 3, 4, 5], dtype=float)
    expected = [5, window.mean(), window.std(ddof=1), 1, 5, 4, 0, 1, 1 / 4]
    np.testing.assert_allclose(row, expected)
    restart = features.iloc[0].to_numpy()[9 * 4 : 9 * 5]
    assert restart[8] == 0.0, "relative change is 0 when the old value is 0"


def test_features_are_linear_in_rows_and_keep_order():
    frame = detector_frame(500)
    features = engineer_features(frame, ANOMALY_DETECTOR)
    assert len(features) == 495
    np.testing.assert_allclose(features["pod_cpu_usage__value"], frame["pod_cpu_usage"].iloc[5:])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.iloc[0:0], "the dataset is empty"),
        (lambda f: f.drop(columns=["pod_cpu_usage"]), "missing column(s) ['pod_cpu_usage']"),
        (lambda f: f.assign(node_cpu_utilization=f.node_cpu_utilization * 100), "looks like percent: divide by 100"),
        (lambda f: f.assign(pod_cpu_usage=np.where(f.index == 3, np.nan, f.pod_cpu_usage)), "NaN or inf"),
        (lambda f: f.assign(pod_cpu_usage=np.where(f.index == 3, np.inf, f.pod_cpu_usage)), "NaN or inf"),
        (lambda f: f.assign(pod_memory_usage="high"), "non-numeric value 'high'"),
        (lambda f: f.assign(container_restart_count=-1.0), "negative values"),
        (lambda f: f.assign(pod_cpu_usage=(f.pod_cpu_usage + 2000) * 1000),
         "'pod_cpu_usage' must be CPU cores (at most 1e6, a whole cluster's) but reaches 2.007e+06; it looks like millicores: divide by 1000"),
        (lambda f: f.assign(container_restart_count=1.7e9),
         "'container_restart_count' must be a cumulative count (at most 1e9) but reaches 1.7e+09; send the cumulative restart count"),
    ],
)
def test_bad_raw_metrics_get_a_clear_error(change, message):
    with pytest.raises(ContractError) as caught:
        validate_raw_metrics(change(detector_frame()), ANOMALY_DETECTOR)
    assert message in str(caught.value)


def test_too_short_series_is_refused():
    with pytest.raises(ContractError, match="series too short: 4 row"):
        engineer_features(detector_frame(4), ANOMALY_DETECTOR)
    forecaster = pd.DataFrame({name: [0.1] * 10 for name in schema_for(PREDICTIVE_ANALYTICS).metric_names})
    with pytest.raises(ContractError, match="60-minute horizon"):
        forecast_pairs(forecaster, 60)


def test_instances_are_checked_for_count_and_values():
    assert validate_instances([fallback_instance()], ANOMALY_DETECTOR).shape == (1, 45)
    with pytest.raises(ContractError, match="expects 45 features per instance, got 44"):
        validate_instances([fallback_instance()[:44]], ANOMALY_DETECTOR)
    with pytest.raises(ContractError, match="NaN or inf"):
        validate_instances([[0.1, 0.2, float("nan"), 0.3, 0.4]], PREDICTIVE_ANALYTICS)
    with pytest.raises(ContractError, match="list of lists of 5 numbers"):
        validate_instances([["a", "b", "c", "d", "e"]], PREDICTIVE_ANALYTICS)
    with pytest.raises(ContractError, match="unknown model 'nope'"):
        validate_instances([[1]], "nope")


@pytest.mark.parametrize("model_name", ["anomaly-detector", "predictive-analytics"])
def test_probe_sample_read_from_parquet_equals_the_one_engineered_from_the_frame(tmp_path, model_name):
    from components.data.ingest import IngestRequest, ingest
    from components.release.rollout import probe_sample
    from components.kfp.workflow import probe_sample_from

    validation = ingest(IngestRequest(model_name, days=2, seed=3)).validation
    validation.to_parquet(tmp_path / "validation.parquet", index=False)
    from_parquet = probe_sample_from(str(tmp_path / "validation.parquet"), model_name)
    assert from_parquet.dtype == float and np.array_equal(from_parquet, probe_sample(validation, model_name))


PREDICT = {"model_name": ANOMALY_DETECTOR, "model_version": "v3"}
METADATA = {"name": ANOMALY_DETECTOR, "version": "v3"}
V2_METADATA = {"name": ANOMALY_DETECTOR, "versions": ["v3"]}


@pytest.mark.parametrize(
    ("answer", "expected", "named", "wrong"),
    [
        # The project runtime's answers: the seed guide's V1 shapes, KServe's V2 metadata.
        ({"predictions": [1], "model_name": ANOMALY_DETECTOR, "model_version": "v3"}, PREDICT, ["model_name", "model_version"], []),
        ({"name": ANOMALY_DETECTOR, "version": "v3", "ready": True}, METADATA, ["name", "version"], []),
        ({"name": ANOMALY_DETECTOR, "versions": ["v3"], "platform": "", "inputs": [], "outputs": []}, V2_METADATA, ["name", "versions"], []),
        # The stock sklearn runtime's: predictions only, metadata without a version, V2 versions and model_version null.
        ({"predictions": [1]}, PREDICT, [], []),
        ({"name": ANOMALY_DETECTOR, "ready": True}, METADATA, ["name"], []),
        ({"name": ANOMALY_DETECTOR, "versions": None, "platform": "", "inputs": [], "outputs": []}, V2_METADATA, ["name"], []),
        ({"model_name": ANOMALY_DETECTOR, "model_version": None, "outputs": []}, PREDICT, ["model_name"], []),
        # Another version answered.
        ({"predictions": [1], "model_name": ANOMALY_DETECTOR, "model_version": "v2"}, PREDICT, ["model_name"], ["model_version is 'v2', expected 'v3'"]),
        ({"name": ANOMALY_DETECTOR, "versions": ["v2"]}, V2_METADATA, ["name"], ["versions is ['v2'], expected ['v3']"]),
    ],
    ids=["predict", "metadata", "v2-metadata", "stock-predict", "stock-metadata", "stock-v2-metadata", "stock-v2-infer", "other-version",
         "other-version-v2"],
)
def test_answers_may_name_model_and_version_and_must_name_them_right(answer, expected, named, wrong):
    assert served_identity(answer, expected) == (named, wrong)
