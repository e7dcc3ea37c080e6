"""The notebooks run top to bottom (their install cell finds the project and installs nothing): 01 and 02 in full on this machine, 03 against the KFP API stand-in."""

import os

import nbformat
from nbclient import NotebookClient

from tests.conftest import REPO
from tests.kfp_standin import KfpStandIn

NOTEBOOKS = REPO / "notebooks"


def execute(name: str, tmp_path, env: dict) -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    previous = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        for key, value in previous.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    install = "".join(str(output.get("text", "")) for output in notebook.cells[1].outputs)
    assert install == "model-pipelines is importable: nothing to install\n", f"the install cell must not install here: {install}"
    return notebook


def outputs(notebook) -> str:
    return "\n".join(
        str(output.get("text", "")) + str(output.get("data", {}).get("text/markdown", "")) + str(output.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
    )


def test_01_trains_and_evaluates_with_dashboard_metrics_inline(tmp_path):
    notebook = execute("01-train-and-evaluate.ipynb", tmp_path, {})
    text = outputs(notebook)
    assert "anomaly-detector: evaluation" in text and "predictive-analytics: evaluation" in text
    assert any("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))


def test_02_runs_the_pipeline_and_queries_the_served_model(tmp_path):
    notebook = execute("02-run-the-pipeline-locally.ipynb", tmp_path,
                       {"NOTEBOOK_STATE_DIR": str(tmp_path / "state"), "NOTEBOOK_CANARY_INTERVAL_S": "0.3"})
    text = outputs(notebook)
    assert "200 {'predictions': [1]" in text and "stopped: ['anomaly-detector']" in text


def test_03_uploads_submits_and_schedules_on_the_stand_in(tmp_path):
    kfp = KfpStandIn().start()
    try:
        execute("03-upload-submit-schedule.ipynb", tmp_path, {"KF_PIPELINES_ENDPOINT": kfp.url, "KF_PIPELINES_TOKEN": "kfp-test-token"})
    finally:
        kfp.stop()
    assert {p["display_name"] for p in kfp.pipelines.values()} == {"anomaly-detector-retrain", "predictive-analytics-retrain", "model-rollout", "model-monitor"}
    assert all(" Compiled for rhoai-2.20-2.25 (" in versions[-1]["pipeline_spec"]["pipelineInfo"]["description"]  # the notebook's platform
               for versions in kfp.versions.values())
    assert len(kfp.runs) == 1
    (schedule,) = kfp.recurring.values()
    assert schedule["trigger"]["cron_schedule"]["cron"] == "0 0 2 * * 0" and schedule["no_catchup"] is True
