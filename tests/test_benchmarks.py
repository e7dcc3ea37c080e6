"""The local-run benchmark runs and reports a ratio measured in the same run (no timing is asserted)."""

import json

import pytest

from benchmarks.local_run import main


def test_local_run_benchmark_reports_both_timings_and_their_ratio(tmp_path):
    main(["--model", "predictive-analytics", "--repeats", "1", "--json", str(tmp_path / "out.json")])
    result = json.loads((tmp_path / "out.json").read_text())["predictive-analytics"]
    assert result["local_run_s"] > 0 and result["direct_s"] > 0
    assert result["ratio"] == pytest.approx(result["local_run_s"] / result["direct_s"], rel=0.05)
