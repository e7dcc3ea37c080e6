"""The model quality benchmarks (`python -m benchmarks anomaly|nab|frontier|forecast`), driven as a user runs them.

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

from benchmarks import frontier, quality
from benchmarks.__main__ import main as benchmarks_main
from components.model.contract import ANOMALY_DETECTOR
from components.model.evaluate import detection_scores
from components.model.spec import spec_for
from components.model.train import fit_outlier_detector, spec_with_overrides
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


@pytest.fixture(scope="module")
def nab_dir(tmp_path_factory):
    """Two NAB-format series with a labelled spike after the probation period; cpu_b repeats it outside every window."""
    root = tmp_path_factory.mktemp("nab")
    rng = np.random.default_rng(5)
    times = pd.date_range("2014-02-14 14:30", periods=2000, freq="5min")
    values = 40 + 10 * np.sin(np.arange(2000) * 2 * np.pi / 288) + rng.normal(0, 1, 2000)
    values[1500:1510] += 60
    spiked = values.copy()
    spiked[1800:1803] += 60  # the same spike outside every labelled window: a detector that sees it scores false positives
    (root / "data" / "realTest").mkdir(parents=True)
    for name, series in (("cpu_a", values), ("cpu_b", spiked)):
        pd.DataFrame({"timestamp": times.strftime("%Y-%m-%d %H:%M:%S"), "value": series}).to_csv(root / "data" / "realTest" / f"{name}.csv", index=False)
    windows = [[str(times[1480]), str(times[1530])], [str(times[100]), str(times[120])], [str(times[900]), str(times[920])]]
    (root / "labels").mkdir()
    labels = {"realTest/cpu_a.csv": windows, "realTest/cpu_b.csv": windows, "realTest/absent.csv": []}
    (root / "labels" / "combined_windows.json").write_text(json.dumps(labels))
    return root


def test_fit_scaling_times_both_recipes_on_growing_shares_of_one_machine(smd_dir, tmp_path, capsys):
    finished = run_benchmark("fit-scaling", "--data-dir", str(smd_dir), "--machine", "machine-9-2", "--repeats", "1",
                             "--json", str(tmp_path / "scaling.json"), "--results-dir", str(tmp_path / "results"))
    assert finished.returncode == 0, finished.stderr
    report = json.loads((tmp_path / "scaling.json").read_text())
    assert report["machine"] == "machine-9-2" and list(report["recipes"]) == ["project", "upstream"]
    training_rows = len(quality.smd_split(smd_dir, "machine-9-2")[0])
    for recipe, sizes in report["recipes"].items():
        assert [size["rows"] for size in sizes.values()] == [training_rows // 4, training_rows // 2, training_rows]
        smallest, largest = sizes["0.25"], sizes["1"]
        assert smallest["cost_per_row_ratio"] == 1.0
        assert largest["cost_per_row_ratio"] == pytest.approx((largest["fit_s"] / largest["rows"]) / (smallest["fit_s"] / smallest["rows"]))
    assert "fit cost per row on all rows over a quarter of them (1.00: linear): project" in finished.stdout
    table = (tmp_path / "results" / "fit-scaling.md").read_text()
    assert f"| project | {training_rows:,} |" in table and "Median of 1 fit(s)" in table
    # The refusals, in process: each exits 2 naming the problem before anything is fitted.
    assert benchmarks_main(["fit-scaling", "--data-dir", str(smd_dir), "--machine", "machine-0-0", "--json", str(tmp_path / "none.json")]) == 2
    assert "no file for machine 'machine-0-0'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        benchmarks_main(["fit-scaling", "--data-dir", str(smd_dir), "--repeats", "0", "--json", str(tmp_path / "none.json")])
    assert refused.value.code == 2 and "'0' is not a whole number from 1 to 20" in capsys.readouterr().err
    assert not (tmp_path / "none.json").exists()


def test_nab_counts_windows_and_false_positives_per_series(nab_dir, tmp_path):
    finished = run_benchmark("nab", "--data-dir", str(nab_dir), "--json", str(tmp_path / "nab.json"), "--results-dir", str(tmp_path / "results"))
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


def test_frontier_scores_each_recipe_once_per_series_at_every_rate_against_the_targets(smd_dir, nab_dir, tmp_path):
    finished = run_benchmark("frontier", "--smd-dir", str(smd_dir), "--nab-dir", str(nab_dir), "--rates", "0.1,0.01",
                             "--json", str(tmp_path / "frontier.json"), "--results-dir", str(tmp_path / "results"))
    assert finished.returncode == 0, finished.stderr
    assert "[SMD 2/2] machine-9-2: F1 by rate, then in hindsight project" in finished.stdout and "[NAB 2/2] cpu_b:" in finished.stdout
    assert "points meeting every target:" in finished.stdout
    report = json.loads((tmp_path / "frontier.json").read_text())
    # The requested rates, sorted, plus each recipe's own default: the spec's 0.02 and upstream's contamination 0.05.
    assert report["rates"] == [0.01, 0.02, 0.05, 0.1]
    assert report["targets"]["smd_mean_f1"] == 0.45 and report["targets"]["smd_worst_margin"] == -0.02
    reference = report["upstream_reference"]
    assert report["targets"]["nab_false_positives"] == pytest.approx(reference["nab_false_positives_per_series"] / 3)
    for recipe, result in report["recipes"].items():
        points = result["points"]
        assert [point["rate"] for point in points] == report["rates"] and result["default_rate"] == {"project": 0.02, "upstream": 0.05}[recipe]
        for point in points:
            assert set(point["meets"]) == set(frontier.TARGETS)
            assert point["smd"]["mean"]["f1"] == pytest.approx(np.mean([item["f1"] for item in point["smd"]["items"].values()]))
        # A higher rate is a higher training-only threshold quantile: every series flags more rows.
        for section, items in (("smd", ("machine-9-1", "machine-9-2")), ("nab", ("cpu_a", "cpu_b"))):
            for item in items:
                flagged = [point[section]["items"][item]["flagged"] for point in points]
                assert flagged == sorted(flagged) and flagged[0] < flagged[-1], (recipe, item, flagged)
    # Upstream at its own default is the reference: no margin, no window of its own missed.
    default = next(point for point in report["recipes"]["upstream"]["points"] if point["rate"] == 0.05)
    assert default["smd"]["worst_margin"] == 0 and default["nab"]["upstream_windows_missed"] == 0
    default_detected = {series: scores["detected"] for series, scores in default["nab"]["items"].items()}
    assert default["nab"]["false_positives_per_series"] == reference["nab_false_positives_per_series"]
    # In hindsight (a threshold tuned on each series' labels) a recipe does at least as well as at any training-only rate.
    for recipe, result in report["recipes"].items():
        hindsight = result["hindsight"]
        for machine, bound in hindsight["smd"]["items"].items():
            assert bound["f1"] >= max(point["smd"]["items"][machine]["f1"] for point in result["points"]) - 1e-12, (recipe, machine)
        for series, bound in hindsight["nab"]["items"].items():
            catching = [point["nab"]["items"][series]["false_positives"] for point in result["points"]
                        if all(ours or not upstream for ours, upstream in zip(point["nab"]["items"][series]["detected"], default_detected[series]))]
            assert bound["false_positives"] <= min(catching, default=np.inf), (recipe, series)
        assert set(hindsight["meets"]) == set(frontier.TARGETS) - {"nab_upstream_windows"}
        assert hindsight["smd"]["mean_f1"] == pytest.approx(np.mean([bound["f1"] for bound in hindsight["smd"]["items"].values()]))
    table = (tmp_path / "results" / "frontier.md").read_text()
    assert "SMD mean point-wise F1 >= 0.45" in table and "a third of upstream's" in table and "every NAB window upstream detects" in table
    assert "## In hindsight: thresholds tuned on the test labels" in table and "## NAB false positives per series in hindsight" in table
    assert "| machine-9-1 |" in table.split("## SMD F1 per machine")[1] and "project in hindsight" in table
    assert "| project | 0.02 (default) |" in table and "| upstream | 0.05 (default) |" in table and "Points meeting every target:" in table
    assert (tmp_path / "results" / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_frontier_scores_the_candidate_recipes_beside_the_project_and_upstream(smd_dir, nab_dir, tmp_path):
    finished = run_benchmark("frontier", "--smd-dir", str(smd_dir), "--nab-dir", str(nab_dir), "--machines", "machine-9-1", "--rates", "0.005,0.1",
                             "--candidates", "envelope-only,project-pot,lof,isolation-forest-pca", "--json", str(tmp_path / "frontier.json"),
                             "--results-dir", str(tmp_path / "results"))
    assert finished.returncode == 0, finished.stderr
    assert "isolation-forest-pca" in finished.stdout.split("[SMD 1/1]")[1].splitlines()[0]
    report = json.loads((tmp_path / "frontier.json").read_text())
    assert list(report["recipes"]) == ["project", "upstream", "envelope-only", "project-pot", "lof", "isolation-forest-pca"]
    project, pot = report["recipes"]["project"]["points"], report["recipes"]["project-pot"]["points"]
    for recipe, result in report["recipes"].items():
        assert [point["rate"] for point in result["points"]] == [0.005, 0.02, 0.05, 0.1]
        for section, item in (("smd", "machine-9-1"), ("nab", "cpu_a"), ("nab", "cpu_b")):
            flagged = [point[section]["items"][item]["flagged"] for point in result["points"]]
            assert flagged == sorted(flagged), (recipe, item, flagged)
    # At or above 2 %, peaks over threshold is the plain quantile: the project's own points, exactly.
    assert [point["smd"] for point in pot[1:]] == [point["smd"] for point in project[1:]]
    # The envelope alone is the spec's recipe without its residual: another detector, flagging other rows.
    envelope = report["recipes"]["envelope-only"]["points"]
    assert [point["smd"]["items"]["machine-9-1"]["flagged"] for point in envelope] != [point["smd"]["items"]["machine-9-1"]["flagged"] for point in project]
    table = (tmp_path / "results" / "frontier.md").read_text()
    assert "- lof: LocalOutlierFactor(20 neighbours, novelty)" in table and "| isolation-forest-pca | 0.02 (default) |" in table
    unknown = run_benchmark("frontier", "--smd-dir", str(smd_dir), "--nab-dir", str(nab_dir), "--candidates", "lof,svm", "--json", str(tmp_path / "f.json"))
    assert unknown.returncode == 2 and "'svm': not a candidate recipe; choose from envelope-only, project-pot, lof, isolation-forest-pca" in unknown.stderr


def test_peaks_over_threshold_extrapolates_a_tail_beyond_the_training_rows():
    scores = -np.random.default_rng(3).exponential(1.0, 20_000)  # P(score < -x) = exp(-x)
    for rate in (1e-3, 1e-4, 1e-5):
        assert frontier.pot_threshold(scores, rate) == pytest.approx(np.log(rate), rel=0.1), rate
    assert frontier.pot_threshold(scores, 1e-5) < scores.min(), "a rate below one training row reaches past the lowest score"
    assert frontier.pot_threshold(scores, 0.05) == np.quantile(scores, 0.05)


def test_frontier_thresholds_are_each_recipes_own_calibration_at_that_rate(smd_dir):
    train, test, _ = quality.smd_split(smd_dir, "machine-9-1")
    # The project recipe fitted through fit_outlier_detector at 0.05 flags exactly what the frontier's 0.05 point flags.
    calibrated, _ = fit_outlier_detector(spec_with_overrides(spec_for(ANOMALY_DETECTOR), {"target_false_positive_rate": 0.05}), train)
    assert np.array_equal(frontier.score_project(frontier.Series(train, test)).flagged(0.05), calibrated.predict(test) == -1)
    # The upstream recipe with contamination 0.01 flags exactly what the frontier's 0.01 point flags.
    contaminated = quality.upstream_detector().set_params(detector__contamination=0.01).fit(train)
    assert np.array_equal(frontier.score_upstream(frontier.Series(train, test)).flagged(0.01), contaminated.predict(test) == -1)
    # A steady ramp never has a zero one-minute change, so the engine's fallback probe looks anomalous and calibration
    # caps the threshold below it: the frontier keeps that cap at every rate.
    ramp = pd.DataFrame(0.2 + 0.0005 * np.arange(800)[:, None] + np.random.default_rng(1).normal(0, 5e-5, (800, 3)))
    ramp_train, ramp_test = quality.features_with_history(ramp.iloc[:600], ramp.iloc[600:])
    capped, calibration = fit_outlier_detector(spec_with_overrides(spec_for(ANOMALY_DETECTOR), {"target_false_positive_rate": 0.05}), ramp_train)
    assert calibration["threshold_set_by"] == "fallback_vector"
    assert frontier.score_project(frontier.Series(ramp_train, ramp_test)).threshold(0.05) == capped.steps[-1][1].offset_


def test_hindsight_bounds_are_the_best_any_threshold_reaches_on_the_labels():
    rng = np.random.default_rng(11)
    test_scores = np.round(rng.normal(0, 1, 400), 1)  # many ties: a threshold cannot split equal scores
    labels = (test_scores + rng.normal(0, 1, 400) < -1.5).astype(int)
    scored = frontier.ScoredRecipe(np.linspace(-3, 3, 1000), test_scores, threshold=lambda rate: 0.0)
    best = max((detection_scores(labels, (test_scores <= cut).astype(int))["f1"], cut) for cut in np.unique(test_scores))
    bound = frontier.hindsight_f1(scored, labels)
    assert bound["f1"] == pytest.approx(best[0]) and bound["rate"] == np.mean(scored.train_scores <= best[1])
    # NAB: the window needing the least anomalous threshold sets it; rows outside every window at or below it are false positives.
    scores = np.array([0.0, -9.0, 0.0, -3.0, -5.0, 0.0, -2.0, -4.0, 0.0, -8.0])
    windows = [np.arange(10) == 1, (np.arange(10) >= 2) & (np.arange(10) <= 3), np.arange(10) == 9]
    needed = frontier.hindsight_windows(frontier.ScoredRecipe(np.array([-6.0, -3.5, 0.0, 1.0]), scores, lambda rate: 0.0), windows, [True, True, False])
    assert needed == {"false_positives": 2, "rate": 0.5}  # threshold -3: rows 4 (-5) and 7 (-4); training -6 and -3.5
    assert frontier.hindsight_windows(frontier.ScoredRecipe(scores, scores, lambda rate: 0.0), windows, [False, False, False]) == {"false_positives": 0, "rate": None}


def test_frontier_refuses_a_bad_rate_naming_the_fix(tmp_path):
    finished = run_benchmark("frontier", "--smd-dir", str(tmp_path), "--nab-dir", str(tmp_path), "--rates", "0.01,1%", "--json", str(tmp_path / "f.json"))
    assert finished.returncode == 2 and "argument --rates: '1%' is not a number" in finished.stderr
    assert "e.g. --rates 0.005,0.01,0.02,0.03,0.05" in finished.stderr and not (tmp_path / "f.json").exists()
    with pytest.raises(ValueError, match=r"0\.5 is outside \(0, 0\.5\): give comma-separated shares"):
        frontier.parse_rates("0.02,0.5")
    assert frontier.parse_rates("0.05, 0.01,0.05") == (0.01, 0.05)


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
