"""Opt-in end to end on a real cluster with KServe: deploy a storageUri that exists there, check it, remove it.

Runs only with MODEL_PIPELINES_E2E=1, KUBECONFIG, MODEL_PIPELINES_E2E_NAMESPACE and
MODEL_PIPELINES_E2E_STORAGE_URI (an anomaly-detector model.pkl directory, e.g. pvc://model-storage-pvc/anomaly-detector/v1).
Optional: MODEL_PIPELINES_E2E_RUNTIME, MODEL_PIPELINES_E2E_MODE, MODEL_PIPELINES_E2E_ENDPOINT (a URL this machine
can reach, such as a port-forward; default status.url).
"""

import os

import pytest
import requests

from components.model.contract import fallback_instance
from components.serving.kserve import KServeOptions, KServeTarget

REQUIRED = ("MODEL_PIPELINES_E2E", "KUBECONFIG", "MODEL_PIPELINES_E2E_NAMESPACE", "MODEL_PIPELINES_E2E_STORAGE_URI")
pytestmark = pytest.mark.skipif(
    not all(os.environ.get(name) for name in REQUIRED), reason=f"opt-in: set {', '.join(REQUIRED)} to run against a real cluster"
)


def test_deploy_predict_and_remove_on_a_real_cluster():
    name = "anomaly-detector"
    target = KServeTarget(KServeOptions(
        namespace=os.environ["MODEL_PIPELINES_E2E_NAMESPACE"], runtime=os.environ.get("MODEL_PIPELINES_E2E_RUNTIME", ""),
        deployment_mode=os.environ.get("MODEL_PIPELINES_E2E_MODE", "auto"), endpoint=os.environ.get("MODEL_PIPELINES_E2E_ENDPOINT", ""),
        run_name="model-pipelines-e2e-test",
    ))
    if target.status(name).stable:
        pytest.skip(f"{name} already serves in that namespace; use an empty namespace for this test")
    try:
        status = target.deploy(name, "e2e", os.environ["MODEL_PIPELINES_E2E_STORAGE_URI"], "", timeout_s=600)
        assert status.stable == "e2e"
        answer = requests.post(f"{target.endpoints(name).main}:predict", json={"instances": [fallback_instance()]}, timeout=60)
        assert answer.status_code == 200 and answer.json()["predictions"] in ([1], [-1])
    finally:
        target.remove(name, "e2e", timeout_s=600, reason="end-to-end test over")
    assert target.status(name).stable is None
