"""A third model with no code: the disk-failure example runs, serves probabilities, canaries and is watched, from its spec alone."""

import json

import requests

from tests.conftest import REPO, run_cli

SPEC = str(REPO / "examples" / "disk-failure-predictor" / "model.yaml")
FAST = ("--param", "canary.interval_s=0.2", "--param", "canary.probe_requests=10")


def test_the_example_is_trained_served_canaried_and_watched_from_its_spec(tmp_path):
    state = tmp_path / "state"
    try:
        first = run_cli("run", "--model", SPEC, "--local", "--state-dir", str(state), *FAST)
        assert first.returncode == 0, first.stdout[-3000:]
        assert "disk-failure-predictor v1    promoted" in first.stdout and "file: " in first.stdout, "it learns from the spec's data file"
        status = json.loads(run_cli("serve", "status", "--json", "--state-dir", str(state)).stdout)
        url = status["disk-failure-predictor"]["url"]
        # ADR-040's request in the spec's units, and a full, busy, old disk: probability rows, the second above the alert threshold.
        answer = requests.post(f"{url}:predict", json={"instances": [[0.855, 5000, 365], [0.95, 6000, 2000]]}, timeout=10).json()
        (healthy, failing) = answer["predictions"]
        assert abs(sum(healthy) - 1) < 1e-9 and healthy[1] < 0.7 < failing[1], answer

        second = run_cli("run", "--model", SPEC, "--local", "--state-dir", str(state), *FAST, "--param", "training.classifier.C=0.5")
        assert second.returncode == 0, second.stdout[-3000:]
        assert "disk-failure-predictor v2    promoted" in second.stdout and "passed analysis at 10%, 50%, 100%" in second.stdout

        watched = run_cli("monitor", "--model", SPEC, "--local", "--state-dir", str(state))
        assert watched.returncode == 0, watched.stdout[-3000:]
        assert "drift check of disk-failure-predictor" in watched.stdout and "| disk_age_days |" in watched.stdout
    finally:
        run_cli("serve", "stop", "--state-dir", str(state))


def test_a_gate_of_the_examples_own_type_holds_a_weak_candidate_and_serving_is_untouched(tmp_path):
    state = tmp_path / "state"
    held = run_cli("run", "--model", SPEC, "--local", "--state-dir", str(state), "--param", "gates.min_roc_auc=0.999")
    assert held.returncode == 3, held.stdout[-3000:]
    assert "min_roc_auc" in held.stdout and "(gate 0.999)" in held.stdout
    assert not (state / "store" / "disk-failure-predictor").exists() or not json.loads(
        (state / "store" / "disk-failure-predictor" / "metadata.json").read_text())["versions"], "nothing was stored"
