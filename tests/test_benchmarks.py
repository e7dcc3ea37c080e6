"""The local-run benchmark runs and reports a ratio measured in the same run (no timing is asserted)."""

import json

import pytest

from benchmarks.local_run import main, timed


def test_local_run_benchmark_reports_both_timings_and_their_ratio(tmp_path):
    """Both sides must run the whole DAG to v1 serving (a failed run raises), so the ratio compares like with like."""
    main(["--model", "predictive-analytics", "--repeats", "1", "--json", str(tmp_path / "out.json")])
    result = json.loads((tmp_path / "out.json").read_text())["predictive-analytics"]
    assert result["local_run_s"] > 0 and result["direct_s"] > 0
    assert result["runs"] == 1 and result["served"] == {"local_run": "v1", "direct": "v1"}, "each side ran the whole DAG to v1 serving"


def test_a_run_that_serves_nothing_is_an_error_not_a_timing(tmp_path):
    def stops_after_training(model_name, state_dir):
        return None

    with pytest.raises(RuntimeError, match="stops_after_training of predictive-analytics ended with nothing serving"):
        timed(stops_after_training, "predictive-analytics", tmp_path)


def test_serving_benchmark_reports_ratios_against_in_process_predict(tmp_path):
    from benchmarks.serving import main as serving_main

    serving_main(["--requests", "5", "--json", str(tmp_path / "serving.json")])
    result = json.loads((tmp_path / "serving.json").read_text())
    assert set(result) == {"1_instances", "100_instances"}
    for entry in result.values():
        assert set(entry) == {"in_process", "main_url", "own_server"}
        for path in ("main_url", "own_server"):
            assert entry[path]["requests"] == 5
            assert entry[path]["predictions_match_in_process"] is True, f"{path} answers what the model predicts in process"
        assert entry["main_url"]["served_version"] == "v1", "the main URL's router sent the requests to v1"


def test_drift_benchmark_counts_false_triggers_and_delays_against_the_upstream_rule(tmp_path):
    from benchmarks.__main__ import main as benchmarks_main

    assert benchmarks_main(["drift", "--data-dir", str(tmp_path / "no-traces"), "--json", str(tmp_path / "drift.json"),
                            "--results-dir", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "drift.json").read_text())
    stationary = result["false_triggers"]["synthetic 14 days, seed 7"]
    for model, counts in stationary.items():
        assert counts["checks"] > 300 and counts["upstream_ks_p05"] > 0.9 * counts["checks"], "the upstream rule fires on stationary data"
        assert counts["project"] == 0, f"{model}: {counts}"
    forecaster = result["detection_delay_checks"]["predictive-analytics"]
    assert forecaster["cpu +0.2"]["project"]["max"] <= 2 and forecaster["network mix in x1.6, out x0.5"]["project"]["max"] <= 2
    assert set(result["detection_delay_checks"]["anomaly-detector"]) == {"cpu +0.2", "memory leak 0.05/h", "restarts x2"}
    assert "| synthetic 14 days, seed 11 | anomaly-detector |" in (tmp_path / "drift.md").read_text()
