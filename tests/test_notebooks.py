"""The notebooks run top to bottom (their install cell finds the project and installs nothing): 01 and 02 in full on this machine, 03 against the KFP API stand-in,
04 on this machine against the Model Registry stand-in."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO
from tests.kfp_standin import KfpStandIn
from tests.registry_standin import API_FILE, RegistryStandin

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


def test_04_registers_rolls_out_from_the_registry_and_approves(tmp_path):
    if not API_FILE.is_file():
        pytest.skip(f"the Model Registry's OpenAPI is not at {API_FILE} (it ships beside the project in shared/reference)")
    token = "notebook-registry-token-9e41"
    (tmp_path / "registry").mkdir()
    registry = RegistryStandin(tmp_path / "registry", token)
    try:
        notebook = execute("04-register-roll-out-approve.ipynb", tmp_path, {
            "NOTEBOOK_STATE_DIR": str(tmp_path / "state"), "NOTEBOOK_CANARY_INTERVAL_S": "0.3", "NOTEBOOK_APPROVAL_TIMEOUT_H": "0.01",
            "MODEL_REGISTRY_URL": registry.url, "MODEL_REGISTRY_CA_BUNDLE": str(registry.cert), "MODEL_REGISTRY_TOKEN": token})
    finally:
        registry.stop()
    assert registry.errors == [], registry.errors
    text = outputs(notebook)
    assert "model registry: model-registry://anomaly-detector/v2 is the store's v2 (artifact and sha256 checked)" in text
    assert "anomaly-detector v2 holds for approval: {'approved': 'awaiting'}" in text
    assert "v2    promoted after approval by notebook-user" in text
    properties = {key: next(value for name, value in typed.items() if name != "metadataType")
                  for key, typed in registry.version("anomaly-detector", "v2")["customProperties"].items()}
    assert (properties["status"], properties["approved"], properties["approved_by"]) == ("stable", "true", "notebook-user")
    assert token not in nbformat.writes(notebook)
