"""End to end: `model-pipelines run --local` through kfp.local, as a user drives it, good runs and bad input."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import requests

from components.data.synthetic import generate_cluster_metrics
from tests.conftest import FAST_CANARY, REPO, logged, run_cli, snapshot


def test_two_runs_store_v1_then_v2_and_the_second_faces_the_champion(two_runs):
    state, first, second = two_runs
    assert first.returncode == 0, first.stdout[-3000:]
    assert second.returncode == 0, second.stdout[-3000:]
    for model in ("anomaly-detector", "predictive-analytics"):
        assert f"pvc://model-storage-pvc/{model}/v1" in first.stdout
        assert f"pvc://model-storage-pvc/{model}/v2" in second.stdout
        index = json.loads((state / "store" / model / "metadata.json").read_text())
        assert sorted(index["versions"]) == ["v1", "v2"]
        record = json.loads((state / "store" / model / "v2" / "version.json").read_text())
        assert record["run_name"].startswith(f"{model}-retrain-")
        assert {"sha256", "metrics", "parameters", "data_fingerprint", "sklearn_version", "project_version"} <= set(record)
        assert record["data_source"] == index["versions"]["v2"]["data_source"] == "synthetic", "a local run learns synthetic data by default"
    assert first.stdout[first.stdout.rindex("Summary"):].count("no champion yet") == 2
    summary = second.stdout[second.stdout.rindex("Summary"):]
    assert summary.count("not worse than champion v1") == 2
    assert "f1=" in summary and "mase_mean=" in summary
    assert "exit code 0:" in summary
    for model in ("anomaly-detector", "predictive-analytics"):
        assert f"  {model:<21} v2    promoted\n" in summary, "promoted through the canary"
        assert f"  {model:<21} v1    promoted (the first version: stable at once, no canary to run)" in first.stdout
        for weight in (10, 50, 100):
            assert f"canary {model} v2 at {weight}%: pass" in logged(second)
        index = json.loads((state / "store" / model / "metadata.json").read_text())
        assert (index["versions"]["v2"]["status"], index["versions"]["v1"]["status"]) == ("stable", "retired")
        assert f"{model} serving: stable v2 at http://127.0.0.1:" in summary
    # The promoted rows point to the canary's HTML report under a name a browser opens as HTML.
    reports = [line.split("report:")[1].strip() for line in summary.splitlines() if line.strip().startswith("report:")]
    assert len(reports) == 2 and all(report.endswith("/canary-promote/report.html") for report in reports)
    assert all(Path(report).read_text().startswith("<html>") and "promoted" in Path(report).read_text() for report in reports)


def test_the_log_is_one_line_per_step_and_the_details_go_to_the_run_log(two_runs):
    _, first, second = two_runs
    for result in (first, second):
        lines = result.stdout.splitlines()
        assert len(lines) <= 60, f"{len(lines)} lines"
        assert "\x1b[" not in result.stdout, "no colour codes when the output is not a terminal"
        assert "Executing task" not in result.stdout and "executor_input" not in result.stdout
        progress = [line.split()[0] for line in lines if line.startswith("  ") and line.split()[1:2] == ["ok"]]
        assert progress.count("ingest") == 2 and progress.count("canary-promote") == 2 and progress.count("save-to-storage") == 2
        log = logged(result)
        assert "Executing task" in log and "finished with status" in log and "\x1b[" not in log


def test_after_the_runs_both_models_serve_the_contract_on_their_main_url(two_runs):
    state, _, second = two_runs
    status = json.loads(run_cli("serve", "status", "--json", "--state-dir", str(state)).stdout)
    assert {model: (entry["stable"], entry["candidate"], entry["candidate_percent"]) for model, entry in status.items()} == {
        "anomaly-detector": ("v2", None, 0), "predictive-analytics": ("v2", None, 0)}
    detector = requests.post(f"{status['anomaly-detector']['url']}:predict", json={"instances": [[0.5, 0.5, 0.1, 0.3, 0.7, 0.5, 0.5, 0, 0] * 5]}, timeout=10)
    assert detector.status_code == 200 and detector.json()["predictions"] == [1]
    assert type(detector.json()["predictions"][0]) is int
    forecast = requests.post(f"{status['predictive-analytics']['url']}:predict", json={"instances": [[0.4, 0.6, 0.5, 0.1, 0.05]]}, timeout=10)
    rows = forecast.json()["predictions"]
    assert forecast.status_code == 200 and len(rows) == 1 and len(rows[0]) == 5 and all(type(v) is float for v in rows[0])
    saturated = requests.post(f"{status['predictive-analytics']['url']}:predict", json={"instances": [[1.0] * 5]}, timeout=10).json()["predictions"]
    assert all(0.0 <= value <= 1.0 for value in saturated[0]), "forecasts stay within the ratio range"
    percent = requests.post(f"{status['predictive-analytics']['url']}:predict", json={"instances": [[40, 60, 50, 10, 5]]}, timeout=10)
    assert percent.status_code == 400 and "instances[0][0] = 40 (cpu) is outside 0-1" in percent.json()["error"] and "divide by 100" in percent.json()["error"]
    # The summary's curl line works as printed.
    curl = next(line.strip() for line in second.stdout.splitlines() if line.strip().startswith("curl") and "anomaly-detector" in line)
    answer = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=30)
    assert json.loads(answer.stdout)["predictions"] == [1]


@pytest.mark.parametrize(
    ("model", "expected"),
    [("anomaly-detector", "ints -1/1"), ("predictive-analytics", "5 floats")],
)
def test_saved_model_loads_with_only_sklearn_and_joblib(two_runs, model, expected):
    state, _, _ = two_runs
    script = textwrap.dedent(
        f"""
        import json, sys
        import joblib
        model = joblib.load({str(state / "store" / model / "v2" / "model.pkl")!r})
        assert not any(name.split(".")[0] in ("components", "pipelines", "kfp") for name in sys.modules), "project code was imported"
        rows = [[0.5, 0.5, 0.1, 0.3, 0.7, 0.5, 0.5, 0.0, 0.0] * 5] if {model!r} == "anomaly-detector" else [[0.4, 0.6, 0.5, 0.1, 0.05]]
        print(json.dumps(model.predict(rows * 2).tolist()))
        """
    )
    result = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    predictions = json.loads(result.stdout)
    if expected == "ints -1/1":
        assert predictions == [1, 1] and all(type(value) is int for value in predictions)
    else:
        assert len(predictions) == 2 and all(len(row) == 5 and all(type(v) is float for v in row) for row in predictions)


def metrics_file(tmp_path, change, suffix=".csv"):
    frame = generate_cluster_metrics("anomaly-detector", days=1, seed=5)
    path = tmp_path / f"metrics{suffix}"
    frame = change(frame)
    frame.to_parquet(path, index=False) if suffix == ".parquet" else frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns=["pod_cpu_usage"]), "missing column(s) ['pod_cpu_usage']"),
        (lambda f: f.assign(pod_cpu_usage=f.pod_cpu_usage.where(f.index != 50)), "NaN or inf"),
        (lambda f: f.assign(node_cpu_utilization=f.node_cpu_utilization * 100), "looks like percent: divide by 100"),
        (lambda f: f.iloc[:0], "the dataset is empty"),
    ],
)
def test_bad_input_fails_the_run_clearly_and_leaves_the_store_intact(two_runs, tmp_path, change, message):
    state, _, _ = two_runs
    before = snapshot(state / "store")
    path = metrics_file(tmp_path, change)
    result = run_cli("run", "anomaly-detector", "--local", "--state-dir", str(state), "--param", "source=file", "--param", f"file_path={path}")
    assert result.returncode == 1
    summary = result.stdout[result.stdout.rindex("Summary"):]
    assert "failed at ingest: ContractError: " in summary and message in summary
    assert snapshot(state / "store") == before


def test_a_model_that_fails_its_checks_is_not_stored(two_runs):
    state, _, _ = two_runs
    before = snapshot(state / "store")
    result = run_cli("run", "anomaly-detector", "--local", "--state-dir", str(state), "--param", "min_f1=0.99", *FAST_CANARY)
    assert result.returncode == 3, result.stdout[-3000:]
    summary = result.stdout[result.stdout.rindex("Summary"):]
    row = next(line for line in summary.splitlines() if line.startswith("  anomaly-detector "))
    assert "not deployed: " in row and "min_f1: F1" in row and "(gate 0.99)" in row
    assert "exit code 3: a candidate was rejected or held back by a gate" in summary
    report = next(line for line in summary.splitlines() if line.strip().startswith("report:")).split("report:")[1].strip()
    assert report.endswith("evaluate/report.md") and "**Decision:** do not deploy" in open(report).read()
    assert "anomaly-detector serving: stable v2" in summary
    assert snapshot(state / "store") == before


def test_retraining_on_unchanged_data_stores_nothing_new_and_deploys_nothing(two_runs):
    state, _, _ = two_runs
    model_dir = state / "store" / "predictive-analytics"
    before = json.loads((model_dir / "metadata.json").read_text())
    versions_before = {path: digest for path, digest in snapshot(model_dir).items() if not path.startswith("metadata.json")}
    stable = before["stable"]
    # The same data as the second run (seed 43): the retrained pickle is byte-identical to the stable version.
    result = run_cli("run", "predictive-analytics", "--local", "--state-dir", str(state), "--param", "seed=43", *FAST_CANARY)
    assert result.returncode == 0, result.stdout[-3000:]
    index = json.loads((model_dir / "metadata.json").read_text())
    assert index["versions"].keys() == before["versions"].keys() and index["stable"] == stable, "no version number used up"
    assert {path: digest for path, digest in snapshot(model_dir).items() if not path.startswith("metadata.json")} == versions_before
    saves = [event for event in index["history"][len(before["history"]):] if event["event"] in ("saved", "duplicate")]
    assert [(event["event"], event["version"]) for event in saves] == [("duplicate", stable)]
    assert saves[0]["detail"].startswith("predictive-analytics-retrain-") and f"byte-identical to stable {stable}" in saves[0]["detail"]
    assert f"  predictive-analytics  {stable:<5} duplicate of stable {stable}: byte-identical, nothing new stored or deployed" in result.stdout
    assert f"byte-identical to stored {stable}: nothing new saved" in result.stdout
    assert f"{stable} is already the stable version; nothing to deploy" in result.stdout
    assert f"canary predictive-analytics {stable} at" not in logged(result), "no canary for a duplicate"
    assert f"predictive-analytics serving: stable {stable}" in result.stdout


def test_rolling_out_the_stable_version_again_checks_it_in_the_dag_order(two_runs):
    state, _, _ = two_runs
    stable = json.loads((state / "store" / "anomaly-detector" / "metadata.json").read_text())["stable"]
    result = run_cli("rollout", "anomaly-detector", "--version", stable, "--local", "--state-dir", str(state), *FAST_CANARY)
    assert result.returncode == 0, result.stdout[-3000:]
    steps = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ") and line.split()[1:2] == ["ok"]]
    assert steps == ["validate-parameters", "ingest", "deploy-inference-service", "smoke-test", "canary-promote", "ensure-safe-serving"]
    summary = result.stdout[result.stdout.rindex("Summary"):]
    assert f"  anomaly-detector      {stable:<5} {stable} already stable: nothing to roll out" in summary
    # The ingest is what the smoke test checks the stable version with; its report opens as Markdown.
    report = next(line for line in summary.splitlines() if line.strip().startswith("report:")).split("report:")[1].strip()
    assert report.endswith("/smoke-test/report.md") and "**Result:** passed" in Path(report).read_text()


def test_missing_file_and_unknown_parameter_are_explained(two_runs, tmp_path):
    state, _, _ = two_runs
    result = run_cli("run", "predictive-analytics", "--local", "--state-dir", str(state), "--param", "source=file", "--param", f"file_path={tmp_path / 'nope.parquet'}")
    assert result.returncode == 1 and "does not exist or is not a file; check the path" in result.stdout
    result = run_cli("run", "all", "--local", "--state-dir", str(state), "--param", "dayz=3")
    assert result.returncode == 2 and "has no parameter 'dayz'; did you mean 'days'?" in result.stdout
    result = run_cli("run", "all", "--local", "--state-dir", str(state), "--param", "days=many")
    assert result.returncode == 2 and "days is a float" in result.stdout


def test_parquet_file_source_trains_and_stores(two_runs, tmp_path):
    state, _, _ = two_runs
    path = metrics_file(tmp_path, lambda f: pd.concat([f, f.assign(timestamp=f.timestamp + pd.Timedelta(days=1))]), ".parquet")
    fresh = tmp_path / "fresh"
    try:
        result = run_cli("run", "anomaly-detector", "--local", "--state-dir", str(fresh), "--param", "source=file", "--param", f"file_path={path}", "--param", "min_f1=0")
    finally:
        run_cli("serve", "stop", "--state-dir", str(fresh))
    assert result.returncode == 0, result.stdout[-3000:]
    assert "pvc://model-storage-pvc/anomaly-detector/v1" in result.stdout


def test_a_committed_compiled_yaml_runs_in_kfp_local_with_store_and_serving_in_one_place(tmp_path):
    """Outside the CLI and with no MODEL_* environment, store and serving both land in ./.model-pipelines."""
    script = textwrap.dedent(
        f"""
        from kfp import components, local
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root="runs", raise_on_error=True)
        pipeline = components.load_component_from_file({str(REPO / "compiled" / "anomaly-detector-retrain.yaml")!r})
        # The compiled defaults are a cluster's (Prometheus in the cluster); a laptop passes the local ones.
        pipeline(serving_target="local", source="synthetic", prometheus_url="", prometheus={{"ca_bundle": ""}}, canary={{"interval_s": 0.3, "probe_requests": 10}})
        """
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("MODEL_")}
    mnt_models_existed = Path("/mnt/models").exists()
    state = tmp_path / ".model-pipelines"
    try:
        result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        index = json.loads((state / "store" / "anomaly-detector" / "metadata.json").read_text())
        assert index["stable"] == "v1" and (state / "store" / "anomaly-detector" / "v1" / "model.pkl").is_file()
        served = json.loads(run_cli("serve", "status", "--json", "--state-dir", str(state)).stdout)["anomaly-detector"]
        assert served["stable"] == index["stable"], "serving and the store index agree"
        listed = run_cli("store", "list", "--store-dir", str(state / "store"))
        assert listed.returncode == 0 and "stable v1" in listed.stdout
        assert Path("/mnt/models").exists() == mnt_models_existed, "nothing was created at /mnt/models outside a pod"
    finally:
        run_cli("serve", "stop", "--state-dir", str(state))
