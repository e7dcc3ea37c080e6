"""One validation of the shared run parameters: in the CLI before anything runs, and as the DAG's first task."""

import os
import subprocess

import pytest
from kfp import local

from components.kfp.config import knob_label, pipeline_parameters
from components.kfp.run_parameters import problems
from pipelines.cli import main
from pipelines.local import params_per_model
from pipelines.retrain import build_rollout_pipeline
from tests.conftest import CLI, REPO, run_cli

BAD = {"probe_requests": "0", "canary_steps": "[10,10,10]", "max_error_rate": "nan", "prometheus_window": "5m) or vector(1",
       "canary_interval_s": "-1"}


def test_every_bad_value_is_named_with_what_it_takes():
    found = problems({"probe_requests": 0, "canary_steps": [10, 10, 10], "max_error_rate": float("nan"), "prometheus_window": "5m) or vector(1",
                      "canary_interval_s": -1, "max_p95_latency_ms": float("inf"), "rollout_strategy": "fast", "days": 3, "approval_poll_s": 0.01})
    assert len(found) == 8, found
    assert "canary.approval_poll_s=0.01: must be a number in [0.1, 3600]" in "\n".join(found), "a hold may not poll faster than 10 times a second"
    assert any(line.startswith("canary_steps=") and "strictly increasing" in line for line in found)
    assert any(line.startswith("prometheus.window=") and "PromQL duration" in line for line in found)
    assert any(line.startswith("canary.probe_requests=") for line in found), "a knob inside a group is named as the run form spells it"
    assert problems({"probe_requests": 20, "canary_steps": [10, 50, 100], "prometheus_window": "2m", "max_error_rate": 0.01}) == []


def test_names_urls_prefixes_and_model_knobs_are_checked_too():
    found = problems({"namespace": "Prod_NS", "s3_prefix": "../other-team", "prometheus_url": "https://user:pw@thanos:9091",
                      "version": "3", "model_name": "anomaly-detektor", "prometheus_end": "yesterday",
                      "source": "file", "file_path": "", "prometheus_queries": {"cpu_usage": 1}})
    named = sorted(line.split("=")[0] for line in found)
    assert named == sorted(["namespace", "store.s3_prefix", "prometheus_url", "version", "model_name", "prometheus.end",
                            "data.file_path", "prometheus.queries"]), found
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
        assert f"{knob_label(name)}=" in result.stdout
    assert not (state / "store").exists() and not (state / "runs").exists(), "nothing ran"


def test_the_dag_checks_the_parameters_first_when_the_cli_is_bypassed(tmp_path, capfd):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"), raise_on_error=True)
    with pytest.raises(RuntimeError, match="validate-parameters"):
        build_rollout_pipeline()(version="v1", serving_target="local", canary={"probe_requests": 0, "max_error_rate": 2.0}, canary_steps=[10, 10, 10],
                                 prometheus={"window": "5m) or vector(1"}, namespace="Prod_NS")
    output = capfd.readouterr()
    text = output.out + output.err
    assert "5 invalid parameter(s)" in text and "prometheus.window=" in text and "namespace=" in text
    assert "ingest" not in {line.split("'")[1] for line in text.splitlines() if "Executing task '" in line}, "nothing ran after the check"


def test_run_all_gives_each_model_its_own_parameters_and_scoped_ones_to_one_model():
    per_model = params_per_model(["days=3", "levels.alpha=2", "anomaly-detector.pca.n_components=10", "predictive-analytics.max_pickle_mb=5"],
                                 ["anomaly-detector", "predictive-analytics"])
    assert per_model == {"anomaly-detector": {"days": 3.0, "training": {"pca.n_components": 10}},
                         "predictive-analytics": {"days": 3.0, "training": {"levels.alpha": 2.0}, "gates": {"max_pickle_mb": 5.0}}}
    with pytest.raises(ValueError, match="anomaly-detector has no parameter 'levels.alpha'"):
        params_per_model(["anomaly-detector.levels.alpha=2"], ["anomaly-detector", "predictive-analytics"])
    with pytest.raises(ValueError, match="scoped to predictive-analytics, which this run does not include"):
        params_per_model(["predictive-analytics.levels.alpha=2"], ["anomaly-detector"])


def test_a_training_knob_or_gate_is_checked_by_the_models_own_spec_rules_and_named_as_the_run_form_spells_it(tmp_path):
    state = tmp_path / "state"
    result = run_cli("run", "anomaly-detector", "--local", "--state-dir", str(state), "--param", "gates.min_f1=4",
                     "--param", "training.target_false_positive_rate=0.9")
    assert result.returncode == 2, result.stdout[-2000:]
    assert "gates.min_f1: 4.0 is greater than the maximum of 1" in result.stdout
    assert "training.target_false_positive_rate: 0.9 is greater than or equal to the maximum of 0.5" in result.stdout
    assert not (state / "store").exists() and not (state / "runs").exists(), "nothing ran"


def test_a_bare_version_number_means_that_version_and_an_absent_one_is_refused_before_anything_runs(tmp_path):
    state = tmp_path / "state"
    result = run_cli("rollout", "anomaly-detector", "--version", "3", "--local", "--state-dir", str(state))
    assert result.returncode == 2 and "has no stored version 'v3'" in result.stdout and "did you mean" not in result.stdout
    absent = run_cli("rollout", "anomaly-detector", "--version", "v7", "--local", "--state-dir", str(state))
    assert absent.returncode == 2 and "has no stored version 'v7'" in absent.stdout and "none yet: run `model-pipelines run` first" in absent.stdout
    assert not (state / "runs").exists(), "nothing ran"


def test_a_key_inside_a_group_is_set_alone_and_an_unknown_key_is_refused_before_anything_runs(tmp_path):
    per_model = params_per_model(["canary.interval_s=0.5", 'gates={"min_f1": 0.4}', "gates.champion_tolerance=0.1"], ["anomaly-detector"])
    assert per_model == {"anomaly-detector": {"canary": {"interval_s": 0.5}, "gates": {"min_f1": 0.4, "champion_tolerance": 0.1}}}
    state = tmp_path / "state"
    result = run_cli("run", "anomaly-detector", "--local", "--state-dir", str(state), "--param", "canary.interval=1")
    assert result.returncode == 2 and "did you mean 'canary.interval_s'" in result.stdout, result.stdout[-2000:]
    typo = run_cli("run", "anomaly-detector", "--local", "--state-dir", str(state), "--param", 'gates={"min_f2": 0.3}')
    assert typo.returncode == 2 and "gates has no key 'min_f2' (did you mean 'min_f1'?)" in typo.stdout, typo.stdout[-2000:]
    assert not (state / "store").exists() and not (state / "runs").exists(), "nothing ran"


def test_every_run_form_has_at_most_15_parameters_and_each_group_default_holds_every_key():
    from pipelines.retrain import BUILDERS

    for name, builder in BUILDERS.items():
        inputs = builder().component_spec.inputs
        assert len(inputs) <= 15, f"{name}: {len(inputs)} run parameters"
        for group, spec in inputs.items():
            if spec.type == "Dict":
                assert set(spec.default) == set(pipeline_parameters(*_kind(name))[group]), f"{name}.{group}"
                assert all(f" {key}: " in spec.description for key in spec.default), f"{name}.{group}: every key is described"


def _kind(pipeline_name: str) -> tuple:
    """Return (kind, model) of a pipeline for pipeline_parameters()."""
    from pipelines.local import pipeline_kind

    return pipeline_kind(pipeline_name)


def test_the_docs_table_of_every_knob_is_the_knob_table():
    import sys

    sys.path.insert(0, str(REPO / "tools"))
    from parameter_table import DOC, regenerated

    text = DOC.read_text()
    assert regenerated(text) == text, "run `make docs`"
    assert "| `canary.interval_s` | `canary_interval_s` |" in text


def test_the_run_form_verb_shows_a_pipelines_knobs_and_a_spec_models_own(capsys):
    assert main(["parameters", "model-rollout"]) == 0
    rollout = capsys.readouterr().out
    assert 'model_name = "anomaly-detector"' in rollout and 'version = "v1"' in rollout and "training = " not in rollout
    assert main(["parameters", "--model", "examples/disk-failure-predictor/model.yaml"]) == 0
    retrain = capsys.readouterr().out
    assert '"classifier.C": ' in retrain and '"min_roc_auc": ' in retrain and "model_name" not in retrain, "the spec's knobs, no model to choose"
    assert main(["parameters", "model-rollout", "--model", "examples/disk-failure-predictor/model.yaml"]) == 0
    own_rollout = capsys.readouterr().out
    assert 'version = "v1"' in own_rollout and "model_name" not in own_rollout
    assert main(["parameters", "anomaly-detector", "--model", "examples/disk-failure-predictor/model.yaml"]) == 2
    assert "names the model (disk-failure-predictor), so drop anomaly-detector" in capsys.readouterr().err
    # Written into a pipe whose reader is gone (`| head -1` once head has exited): exit 1, no BrokenPipeError traceback.
    reader, writer = os.pipe()
    os.close(reader)
    try:
        listed = subprocess.run([str(CLI), "parameters"], stdout=writer, stderr=subprocess.PIPE, text=True, cwd=REPO, timeout=60)
    finally:
        os.close(writer)
    assert listed.returncode == 1 and listed.stderr == "", listed.stderr
