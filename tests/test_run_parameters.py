"""One validation of the shared run parameters: in the CLI before anything runs, and as the DAG's first task."""

import pytest
from kfp import local

from components.kfp.run_parameters import problems
from pipelines.local import params_per_model
from pipelines.retrain import build_rollout_pipeline
from tests.conftest import run_cli

BAD = {"probe_requests": "0", "canary_steps": "[10,10,10]", "max_error_rate": "nan", "prometheus_window": "5m) or vector(1",
       "canary_interval_s": "-1"}


def test_every_bad_value_is_named_with_what_it_takes():
    found = problems({"probe_requests": 0, "canary_steps": [10, 10, 10], "max_error_rate": float("nan"), "prometheus_window": "5m) or vector(1",
                      "canary_interval_s": -1, "max_p95_latency_ms": float("inf"), "rollout_strategy": "fast", "days": 3})
    assert len(found) == 7, found
    assert any(line.startswith("canary_steps=") and "strictly increasing" in line for line in found)
    assert any(line.startswith("prometheus_window=") and "PromQL duration" in line for line in found)
    assert problems({"probe_requests": 20, "canary_steps": [10, 50, 100], "prometheus_window": "2m", "max_error_rate": 0.01}) == []


def test_names_urls_prefixes_and_model_knobs_are_checked_too():
    found = problems({"namespace": "Prod_NS", "s3_prefix": "../other-team", "prometheus_url": "https://user:pw@thanos:9091",
                      "version": "3", "model_name": "anomaly-detektor", "n_estimators": 0, "prometheus_end": "yesterday",
                      "source": "file", "file_path": "", "prometheus_queries": {"cpu_usage": 1}})
    named = sorted(line.split("=")[0] for line in found)
    assert named == sorted(["namespace", "s3_prefix", "prometheus_url", "version", "model_name", "n_estimators", "prometheus_end",
                            "file_path", "prometheus_queries"]), found
    assert any(line.startswith("version=") and "version 3 is v3" in line for line in found)
    assert problems({"namespace": "", "s3_prefix": "teams/sre/models", "prometheus_url": "https://thanos-querier.openshift-monitoring.svc:9091",
                     "version": "v12", "model_name": "predictive-analytics", "source": "file", "file_path": "/data/m.csv"}) == []


def test_the_cli_lists_every_problem_before_anything_runs(tmp_path):
    state = tmp_path / "state"
    arguments = [item for name, value in BAD.items() for item in ("--param", f"{name}={value}")]
    result = run_cli("run", "anomaly-detector", "--local", "--state-dir", str(state), *arguments)
    assert result.returncode == 2, result.stdout[-2000:]
    assert "5 invalid parameter(s)" in result.stdout
    for name in BAD:
        assert f"{name}=" in result.stdout
    assert not (state / "store").exists() and not (state / "runs").exists(), "nothing ran"


def test_the_dag_checks_the_parameters_first_when_the_cli_is_bypassed(tmp_path, capfd):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"), raise_on_error=True)
    with pytest.raises(RuntimeError, match="validate-parameters"):
        build_rollout_pipeline()(version="v1", serving_target="local", probe_requests=0, canary_steps=[10, 10, 10],
                                 max_error_rate=2.0, prometheus_window="5m) or vector(1", namespace="Prod_NS")
    output = capfd.readouterr()
    text = output.out + output.err
    assert "5 invalid parameter(s)" in text and "prometheus_window=" in text and "namespace=" in text
    assert "ingest" not in {line.split("'")[1] for line in text.splitlines() if "Executing task '" in line}, "nothing ran after the check"


def test_run_all_gives_each_model_its_own_parameters_and_scoped_ones_to_one_model():
    per_model = params_per_model(["days=3", "alpha=2", "anomaly-detector.n_estimators=50", "predictive-analytics.max_pickle_mb=5"],
                                 ["anomaly-detector", "predictive-analytics"])
    assert per_model == {"anomaly-detector": {"days": 3.0, "n_estimators": 50},
                         "predictive-analytics": {"days": 3.0, "alpha": 2.0, "max_pickle_mb": 5.0}}
    with pytest.raises(ValueError, match="anomaly-detector has no parameter 'alpha'"):
        params_per_model(["anomaly-detector.alpha=2"], ["anomaly-detector", "predictive-analytics"])
    with pytest.raises(ValueError, match="scoped to predictive-analytics, which this run does not include"):
        params_per_model(["predictive-analytics.alpha=2"], ["anomaly-detector"])


def test_a_bare_version_number_means_that_version_and_an_absent_one_is_refused_before_anything_runs(tmp_path):
    state = tmp_path / "state"
    result = run_cli("rollout", "anomaly-detector", "--version", "3", "--local", "--state-dir", str(state))
    assert result.returncode == 2 and "has no stored version 'v3'" in result.stdout and "did you mean" not in result.stdout
    absent = run_cli("rollout", "anomaly-detector", "--version", "v7", "--local", "--state-dir", str(state))
    assert absent.returncode == 2 and "has no stored version 'v7'" in absent.stdout and "none yet: run `model-pipelines run` first" in absent.stdout
    assert not (state / "runs").exists(), "nothing ran"
