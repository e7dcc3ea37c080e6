"""The unattended benchmark, two simulated days: its clients see no failure, and its faults fire and are survived."""

import json

import pytest

from benchmarks.unattended import main


def test_two_unattended_days_fail_no_good_request_and_survive_their_faults(tmp_path):
    main(["--days", "2", "--json", str(tmp_path / "unattended.json")])
    result = json.loads((tmp_path / "unattended.json").read_text())
    assert result["good_requests_sent"] > 100 and result["good_requests_failed"] == 0 and result["production_down_seconds"] == 0
    assert result["versions_served_from_outside_store"] == [] and result["synthetic_versions_deployed"] == 0
    assert result["false_triggers_before_shift"] == 0
    fired = result["faults_injected"]
    assert fired["symlinked_version"] == 1 and fired["api_503_burst_deploy"] >= 1 and fired["prometheus_outage"] >= 1, fired
    assert set(result["stable_at_end"].values()) <= {"v1", "v2"}, result["rollouts"]


def test_without_prometheus_on_path_it_stops_at_once_naming_the_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SystemExit) as stopped:
        main(["--days", "2"])
    assert "no prometheus is on PATH: run tools/ensure-test-tools" in str(stopped.value)
