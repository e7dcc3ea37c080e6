"""The reference profile each version keeps: compact, immutable with the version, and true to the training data."""

import json

import numpy as np

from components.contract import ANOMALY_DETECTOR, PREDICTIVE_ANALYTICS, engineer_features, schema_for
from components.drift import bin_fractions, feature_profile
from components.ingest import IngestRequest, ingest
from components.train import DetectorParams, train_anomaly_detector


def test_profile_bins_hold_the_training_quantiles_and_live_values_outside_still_land():
    values = np.arange(1000, dtype=float)[:, None]
    profile = feature_profile(["x"], values)
    assert len(profile["x"]["edges"]) == len(profile["x"]["fractions"]) == 11
    assert np.allclose(profile["x"]["fractions"][:10], 0.1, atol=0.002) and profile["x"]["fractions"][10] == 0.001, "only the maximum"
    assert bin_fractions(profile["x"]["edges"], np.array([-5.0, 2000.0])).tolist() == [0.5] + [0.0] * 9 + [0.5]
    mostly_zero = np.r_[np.zeros(990), np.ones(10)][:, None]
    collapsed = feature_profile(["restarts"], mostly_zero)["restarts"]
    assert collapsed["edges"] == [0.0, 1.0] and collapsed["fractions"] == [0.99, 0.01], "repeated edges collapse"


def test_each_stored_version_keeps_a_profile_of_a_few_kb(two_runs):
    state, _, _ = two_runs
    for model in (ANOMALY_DETECTOR, PREDICTIVE_ANALYTICS):
        record = json.loads((state / "store" / model / "v2" / "version.json").read_text())
        profile = record["profile"]
        assert set(profile["features"]) == set(schema_for(model).feature_names)
        assert 500 < len(json.dumps(profile)) < 16_000, len(json.dumps(profile))
        if model == ANOMALY_DETECTOR:
            assert set(profile["validation"]) == {"anomaly_rate"} and 0 < profile["validation"]["anomaly_rate"] < 0.2
            assert profile["validation"]["anomaly_rate"] == record["metrics"]["anomaly_rate"]
        else:
            assert set(profile["validation"]) == {f"mae_{name}" for name in schema_for(model).metric_names} | {"mae_mean"}


def test_the_profile_describes_the_training_inputs():
    data = ingest(IngestRequest(ANOMALY_DETECTOR, days=2, seed=4))
    trained = train_anomaly_detector(data.train, DetectorParams())
    features = engineer_features(data.train, ANOMALY_DETECTOR)
    cpu = trained.profile["node_cpu_utilization__value"]
    assert cpu["edges"][0] == float(f"{features['node_cpu_utilization__value'].min():.6g}") and np.isclose(sum(cpu["fractions"]), 1.0)
    median = float(np.median(features["node_cpu_utilization__value"]))
    assert cpu["edges"][5] == float(f"{median:.6g}")
