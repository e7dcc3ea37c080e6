"""The model quality benchmarks (`python -m benchmarks anomaly|nab|forecast`), driven as a user runs them.

Small generated data in each dataset's format keeps these fast and independent of ``../shared``; the real
datasets are used when present (a fresh clone has none, so those tests skip).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO

DATASETS = REPO.parent / "shared" / "datasets"
DETECTION_FIELDS = {"precision", "recall", "f1", "pa_f1", "fit_s", "predict_ms"}
NAB_FIELDS = {"windows_detected", "windows", "false_positives", "fit_s", "predict_ms"}


def run_benchmark(*args: str) -> subprocess.CompletedProcess:
    """Run ``python -m benchmarks`` from the repository and return the finished process."""
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def server_metrics(rng: np.random.Generator, rows: int, metrics: int) -> np.ndarray:
    """Return correlated, mean-reverting metrics in [0, 1] with a daily cycle, one row per minute."""
    cycle = 0.15 * np.sin(np.arange(rows) * 2 * np.pi / 1440)[:, None]
    noise = np.zeros((rows, metrics))
    for row in range(1, rows):
        noise[row] = 0.9 * noise[row - 1] + rng.normal(0, 0.01, metrics)
    return np.clip(0.4 + cycle * np.linspace(0.5, 1.0, metrics) + noise, 0, 1)


@pytest.fixture(scope="module")
def smd_dir(tmp_path_factory):
    """Two machines in SMD format (gzip CSV train/test, one label per test row) with labelled incidents in test."""
    root = tmp_path_factory.mktemp("smd")
    for directory in ("train", "test", "test_label"):
        (root / directory).mkdir()
    rng = np.random.default_rng(3)
    for machine in ("machine-9-1", "machine-9-2"):
        train, test = server_metrics(rng, 3000, 6), server_metrics(rng, 2000, 6)
        labels = np.zeros(len(test), dtype=int)
        for start in (400, 1100, 1700):
            test[start:start + 30, :3] = np.clip(test[start:start + 30, :3] + 0.35, 0, 1)
            labels[start:start + 30] = 1
        for directory, values in (("train", train), ("test", test)):
            with gzip.open(root / directory / f"{machine}.txt.gz", "wt") as handle:
                np.savetxt(handle, values, delimiter=",", fmt="%.6f")
        np.savetxt(root / "test_label" / f"{machine}.txt", labels, fmt="%d")
    return root


def test_anomaly_reports_both_recipes_in_the_fixed_shape(smd_dir, tmp_path):
    finished = run_benchmark("anomaly", "--data-dir", str(smd_dir), "--json", str(tmp_path / "out.json"), "--results-dir", str(tmp_path / "results"))
    assert finished.returncode == 0, finished.stderr
    assert "[2/2] machine-9-2: project F1" in finished.stdout and "mean f1: project" in finished.stdout
    report = json.loads((tmp_path / "out.json").read_text())
    assert set(report) == {"project", "upstream"}
    for recipe in report.values():
        assert set(recipe) == {"mean", "items"} and set(recipe["items"]) == {"machine-9-1", "machine-9-2"}
        assert set(recipe["mean"]) == DETECTION_FIELDS
        for scores in recipe["items"].values():
            assert set(scores) == DETECTION_FIELDS
            assert 0 <= scores["f1"] <= scores["pa_f1"] <= 1 and scores["predict_ms"] > 0 and scores["fit_s"] > 0
        assert recipe["mean"]["f1"] == pytest.approx(np.mean([item["f1"] for item in recipe["items"].values()]))
    # The incidents are plain level shifts of half the metrics: the default recipe must find most of them.
    assert report["project"]["mean"]["recall"] > 0.5 and report["project"]["mean"]["f1"] > 0.5
    table = (tmp_path / "results" / "anomaly.md").read_text()
    assert "| machine-9-1 | project |" in table and "| **mean** | **upstream** |" in table and "Reproduce: `python -m benchmarks anomaly" in table
    assert (tmp_path / "results" / "anomaly-f1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_anomaly_scores_only_the_selected_machines_and_refuses_mismatched_labels(smd_dir, tmp_path):
    finished = run_benchmark("anomaly", "--data-dir", str(smd_dir), "--machines", "machine-9-2", "--json", str(tmp_path / "one.json"), "--results-dir", str(tmp_path))
    assert finished.returncode == 0, finished.stderr
    assert set(json.loads((tmp_path / "one.json").read_text())["project"]["items"]) == {"machine-9-2"}

    labels = smd_dir / "test_label" / "machine-9-1.txt"
    original = labels.read_text()
    try:
        labels.write_text("\n".join(original.splitlines()[:-100]) + "\n")
        broken = run_benchmark("anomaly", "--data-dir", str(smd_dir), "--machines", "machine-9-1", "--json", str(tmp_path / "bad.json"), "--results-dir", str(tmp_path))
    finally:
        labels.write_text(original)
    assert broken.returncode == 2 and "machine-9-1: 1900 labels for 2000 test rows" in broken.stderr
    assert not (tmp_path / "bad.json").exists()

    missing = run_benchmark("anomaly", "--data-dir", str(tmp_path / "nowhere"), "--json", str(tmp_path / "bad.json"))
    assert missing.returncode == 2 and "no SMD data found; expected train/<machine>.txt.gz" in missing.stderr


def test_nab_counts_windows_and_false_positives_per_series(tmp_path):
    rng = np.random.default_rng(5)
    times = pd.date_range("2014-02-14 14:30", periods=2000, freq="5min")
    values = 40 + 10 * np.sin(np.arange(2000) * 2 * np.pi / 288) + rng.normal(0, 1, 2000)
    values[1500:1510] += 60
    spiked = values.copy()
    spiked[1800:1803] += 60  # the same spike outside every labelled window: a detector that sees it scores false positives
    (tmp_path / "data" / "realTest").mkdir(parents=True)
    for name, series in (("cpu_a", values), ("cpu_b", spiked)):
        pd.DataFrame({"timestamp": times.strftime("%Y-%m-%d %H:%M:%S"), "value": series}).to_csv(tmp_path / "data" / "realTest" / f"{name}.csv", index=False)
    windows = [[str(times[1480]), str(times[1530])], [str(times[100]), str(times[120])], [str(times[900]), str(times[920])]]
    (tmp_path / "labels").mkdir()
    labels = {"realTest/cpu_a.csv": windows, "realTest/cpu_b.csv": windows, "realTest/absent.csv": []}
    (tmp_path / "labels" / "combined_windows.json").write_text(json.dumps(labels))

    finished = run_benchmark("nab", "--data-dir", str(tmp_path), "--json", str(tmp_path / "nab.json"), "--results-dir", str(tmp_path / "results"))
    assert finished.returncode == 0, finished.stderr
    report = json.loads((tmp_path / "nab.json").read_text())
    for recipe in ("project", "upstream"):
        scores = report[recipe]["items"]["cpu_a"]
        assert set(scores) == NAB_FIELDS and set(report[recipe]["mean"]) == NAB_FIELDS
        # The window inside the 15 % probation period (rows 100-120) is not scored.
        assert scores["windows"] == 2
    clean, spiked_scores = report["project"]["items"]["cpu_a"], report["project"]["items"]["cpu_b"]
    assert clean["windows_detected"] >= 1 and spiked_scores["windows_detected"] == clean["windows_detected"]
    assert spiked_scores["false_positives"] > clean["false_positives"], "the unlabelled spike is counted as false positives"
    assert (tmp_path / "results" / "nab.md").is_file() and (tmp_path / "results" / "nab-windows_detected.png").is_file()


def write_traces(root, rng: np.random.Generator) -> None:
    """Write Alibaba-format (percent) and Google-format (ratio) traces at 300 s of mean-reverting usage."""
    rows = 2300
    usage = server_metrics(rng, rows, 5)
    (root / "alibaba2018").mkdir(parents=True)
    pd.DataFrame(100 * usage, columns=["cpu_util_percent", "mem_util_percent", "net_in", "net_out", "disk_io_percent"]).to_csv(
        root / "alibaba2018" / "machine_usage_days_1_to_8_grouped_300_seconds.csv", index=False)
    (root / "google2019").mkdir()
    pd.DataFrame({"avg_cpu": usage[:, 0], "avg_mem": usage[:, 1], "avg_assigned_mem": 0.6, "avg_cycles_per_instruction": 150.0}).to_csv(
        root / "google2019" / "instance_usage_grouped_300_seconds_month.csv", index=False)


def test_forecast_reports_mae_and_both_mase_per_output(tmp_path):
    write_traces(tmp_path / "traces", np.random.default_rng(7))
    finished = run_benchmark("forecast", "--data-dir", str(tmp_path / "traces"), "--json", str(tmp_path / "f.json"), "--results-dir", str(tmp_path / "results"))
    assert finished.returncode == 0, finished.stderr
    report = json.loads((tmp_path / "f.json").read_text())
    assert list(report) == ["alibaba2018", "google2019"]
    assert list(report["alibaba2018"]) == ["cpu", "memory", "disk", "network_in", "network_out"]
    assert list(report["google2019"]) == ["cpu", "memory"]
    for outputs in report.values():
        for scores in outputs.values():
            assert set(scores) == {"mae", "mase_persistence", "mase_seasonal"} and scores["mae"] > 0
            # Mean-reverting usage: learning the change must beat "the future equals now".
            assert scores["mase_persistence"] < 1.0
    table = (tmp_path / "results" / "forecast.md").read_text()
    assert (tmp_path / "results" / "forecast-alibaba2018.png").is_file() and "| google2019 | memory |" in table
    # The hindsight column is a real fit on the scored period: a different number from the forecaster's own MASE.
    cpu_row = next(line for line in table.splitlines() if line.startswith("| alibaba2018 | cpu |")).split("|")
    assert float(cpu_row[4]) == pytest.approx(report["alibaba2018"]["cpu"]["mase_persistence"], abs=5e-4)
    assert 0 < float(cpu_row[6]) < 1 and float(cpu_row[6]) != float(cpu_row[4])


def test_forecast_refuses_percent_where_ratios_are_expected(tmp_path):
    write_traces(tmp_path, np.random.default_rng(8))
    google = tmp_path / "google2019" / "instance_usage_grouped_300_seconds_month.csv"
    frame = pd.read_csv(google)
    frame["avg_cpu"] *= 100
    frame.to_csv(google, index=False)
    finished = run_benchmark("forecast", "--data-dir", str(tmp_path), "--json", str(tmp_path / "f.json"), "--results-dir", str(tmp_path))
    assert finished.returncode == 2 and "column 'cpu' must be a ratio 0-1" in finished.stderr and "divide by 100" in finished.stderr


@pytest.mark.skipif(not DATASETS.is_dir(), reason="the real datasets live in ../shared/datasets, which this checkout lacks")
def test_real_traces_forecaster_is_never_worse_than_persistence(tmp_path):
    finished = run_benchmark("forecast", "--data-dir", str(DATASETS / "datacenter-traces"), "--json", str(tmp_path / "f.json"), "--results-dir", str(tmp_path))
    assert finished.returncode == 0, finished.stderr
    report = json.loads((tmp_path / "f.json").read_text())
    scored = {(dataset, output): scores["mase_persistence"] for dataset, outputs in report.items() for output, scores in outputs.items()}
    assert len(scored) == 7, sorted(scored)
    assert {key: mase for key, mase in scored.items() if not mase <= 1.0} == {}


@pytest.mark.skipif(not DATASETS.is_dir(), reason="the real datasets live in ../shared/datasets, which this checkout lacks")
def test_real_smd_machine_default_recipe_beats_upstream(tmp_path):
    finished = run_benchmark("anomaly", "--data-dir", str(DATASETS / "smd"), "--machines", "machine-1-7", "--json", str(tmp_path / "a.json"), "--results-dir", str(tmp_path))
    assert finished.returncode == 0, finished.stderr
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["project"]["items"]["machine-1-7"]["f1"] > report["upstream"]["items"]["machine-1-7"]["f1"]
