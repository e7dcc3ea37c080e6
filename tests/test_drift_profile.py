"""The reference profile each version keeps: compact, immutable with the version, and true to the training data."""

import json

import joblib
import numpy as np

import pytest

from components.model.contract import ANOMALY_DETECTOR, PREDICTIVE_ANALYTICS, engineer_features, schema_for
from components.monitoring.drift import (
    bin_fractions,
    deseasonalised_features,
    drift_profile,
    feature_profile,
    ks_statistic,
    measure_drift,
    season_slots,
    window_ks_maximum,
    window_median_range,
)
from components.data.ingest import IngestRequest, ingest
from components.data.synthetic import generate_cluster_metrics
from components.model.spec import spec_for
from components.model.train import REFERENCE_ROWS, train_model
from components.monitoring.monitor import DriftThresholds


def test_profile_bins_hold_the_training_quantiles_and_live_values_outside_still_land():
    values = np.arange(1000, dtype=float)[:, None]
    profile = feature_profile(["x"], values)
    assert len(profile["x"]["edges"]) == len(profile["x"]["fractions"]) == 11
    assert np.allclose(profile["x"]["fractions"][:10], 0.1, atol=0.002) and profile["x"]["fractions"][10] == 0.001, "only the maximum"
    assert bin_fractions(profile["x"]["edges"], np.array([-5.0, 2000.0])).tolist() == [0.5] + [0.0] * 9 + [0.5]
    mostly_zero = np.r_[np.zeros(990), np.ones(10)][:, None]
    collapsed = feature_profile(["restarts"], mostly_zero)["restarts"]
    assert collapsed["edges"] == [0.0, 1.0] and collapsed["fractions"] == [0.99, 0.01], "repeated edges collapse"


def test_each_stored_version_keeps_a_profile_of_a_few_kb_and_its_reference_predictions(two_runs):
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
        reference = record["reference"]
        model_file = state / "store" / model / "v2" / "model.pkl"
        instances = np.asarray(reference["instances"])
        assert instances.shape == (REFERENCE_ROWS, schema_for(model).n_features) and len(np.unique(instances, axis=0)) == REFERENCE_ROWS
        assert np.array_equal(joblib.load(model_file).predict(instances), np.asarray(reference["predictions"])), "what the smoke test expects"


def test_the_profile_describes_the_deseasonalised_training_inputs():
    data = ingest(IngestRequest(ANOMALY_DETECTOR, days=2, seed=4))
    trained = train_model(spec_for(ANOMALY_DETECTOR), data.train)
    seasonal = trained.profile["seasonal"]["node_cpu_utilization"]
    slots = season_slots(data.train["timestamp"])
    afternoon = data.train["node_cpu_utilization"].to_numpy()[slots == 15]
    assert len(seasonal) == 48 and seasonal[15] == float(f"{np.median(afternoon):.6g}") and seasonal[15] > seasonal[3], "the daily cycle"
    names, features = deseasonalised_features(data.train, ANOMALY_DETECTOR, trained.profile["seasonal"])
    column = names.index("node_cpu_utilization__value")
    cpu = trained.profile["features"]["node_cpu_utilization__value"]
    assert cpu["edges"][0] == float(f"{features[:, column].min():.6g}") and np.isclose(sum(cpu["fractions"]), 1.0)
    assert cpu["edges"][5] == float(f"{np.median(features[:, column]):.6g}")
    raw_std = engineer_features(data.train, ANOMALY_DETECTOR)["node_cpu_utilization__std_5m"].to_numpy()
    assert np.allclose(features[:, names.index("node_cpu_utilization__std_5m")], raw_std), "spreads are not deseasonalised"


def test_the_null_ks_is_the_largest_of_every_training_window():
    rng = np.random.default_rng(3)
    values = np.r_[rng.normal(0, 1, 600), rng.normal(0.8, 1, 300)]
    bins = feature_profile(["x"], values[:, None])["x"]
    brute = max(ks_statistic(np.asarray(bins["fractions"]), bin_fractions(bins["edges"], values[end - 120:end]))
                for end in range(120, len(values) + 1, 5))
    assert window_ks_maximum(bins, values, 120, stride=5) == pytest.approx(brute)


def test_the_median_range_spans_every_training_window_and_only_judged_levels_keep_one():
    rng = np.random.default_rng(5)
    values = np.cumsum(rng.normal(0, 0.1, 900))
    medians = [np.median(values[end - 120:end]) for end in range(120, len(values) + 1, 5)]
    assert window_median_range(values, 120, stride=5) == pytest.approx((min(medians), max(medians)))
    profile = drift_profile(generate_cluster_metrics(ANOMALY_DETECTOR, days=2, seed=6), ANOMALY_DETECTOR)
    kept = {name for name, bins in profile["features"].items() if "median_range" in bins}
    assert kept == {"node_cpu_utilization__value", "node_memory_utilization__value", "pod_cpu_usage__value", "pod_memory_usage__value"}, kept


def test_a_slow_memory_leak_is_found_by_its_median_before_its_ks_statistic_shows_it():
    train = generate_cluster_metrics(ANOMALY_DETECTOR, days=10, seed=42)
    profile = drift_profile(train, ANOMALY_DETECTOR)
    window = profile["window_minutes"]
    leak_start = (2 * 24 + 10) * 60  # the benchmark's first start (its 14 days, seed 7): Wednesday 10:00; checked 2 h later
    leaking = generate_cluster_metrics(ANOMALY_DETECTOR, days=14, seed=7).iloc[leak_start + 120 - window:leak_start + 120].copy()
    leaking["pod_memory_usage"] = np.clip(leaking["pod_memory_usage"] + 0.05 * np.arange(window) / 60.0, 0.0, 1.0)  # 0.05 per hour
    memory = next(drift for drift in measure_drift(profile, leaking, ANOMALY_DETECTOR) if drift.feature == "pod_memory_usage__value")
    thresholds = DriftThresholds()
    assert memory.score < thresholds.ks_excess, "the KS statistic alone would wait for more leak"
    low, high = profile["features"]["pod_memory_usage__value"]["median_range"]
    assert memory.median > high and memory.level_score == pytest.approx((memory.median - high) / (high - low))
    assert memory.level_score >= thresholds.level_excess and memory.drifted(thresholds), memory
    assert not memory.drifted(DriftThresholds(level_excess=memory.level_score + 0.01)), "the threshold is the knob"


def test_stationary_days_do_not_drift_and_a_cpu_shift_does():
    train = generate_cluster_metrics(PREDICTIVE_ANALYTICS, days=7, seed=1)
    profile = drift_profile(train, PREDICTIVE_ANALYTICS)
    live = generate_cluster_metrics(PREDICTIVE_ANALYTICS, days=3, seed=2)
    window = profile["window_minutes"]
    quiet = [measure_drift(profile, live.iloc[end - window:end], PREDICTIVE_ANALYTICS) for end in range(window, len(live), 360)]
    assert not any(drift.drifted(DriftThresholds()) for check in quiet for drift in check)
    shifted = live.iloc[-window:].copy()
    shifted["cpu"] = np.clip(shifted["cpu"] + 0.2, 0, 1)
    top = measure_drift(profile, shifted, PREDICTIVE_ANALYTICS)[0]
    assert top.feature == "cpu" and top.drifted(DriftThresholds()) and top.psi > 1 and top.score > 0.5, top
