"""ingest: the synthetic generator and the file source, through the step function."""

import numpy as np
import pandas as pd
import pytest

from components.model.contract import ANOMALY_DETECTOR, PREDICTIVE_ANALYTICS, ContractError, validate_raw_metrics
from components.data.ingest import IngestRequest, IngestResult, ingest
from components.data.synthetic import INCIDENT_TYPES, generate_cluster_metrics


def test_synthetic_is_deterministic_by_seed():
    first = generate_cluster_metrics(ANOMALY_DETECTOR, days=2, seed=7)
    again = generate_cluster_metrics(ANOMALY_DETECTOR, days=2, seed=7)
    other = generate_cluster_metrics(ANOMALY_DETECTOR, days=2, seed=8)
    pd.testing.assert_frame_equal(first, again)
    assert not first["node_cpu_utilization"].equals(other["node_cpu_utilization"])


def test_synthetic_has_daily_and_weekly_patterns_in_contract_units():
    frame = generate_cluster_metrics(PREDICTIVE_ANALYTICS, days=14, seed=1)
    validate_raw_metrics(frame, PREDICTIVE_ANALYTICS)
    hours = frame.timestamp.dt.hour
    weekday = frame.timestamp.dt.dayofweek < 5
    afternoon, night = frame.cpu[weekday & (hours == 15)].mean(), frame.cpu[weekday & (hours == 3)].mean()
    assert afternoon > night + 0.2
    weekend_afternoon = frame.cpu[~weekday & (hours == 15)].mean()
    assert afternoon > weekend_afternoon + 0.1


def test_synthetic_labels_every_incident_type():
    frame = generate_cluster_metrics(ANOMALY_DETECTOR, days=30, seed=3)
    assert set(frame.incident.unique()) - {""} == set(INCIDENT_TYPES)
    assert ((frame.incident != "") == (frame.is_anomaly == 1)).all()
    saturation = frame[frame.incident == "cpu_saturation"]
    assert saturation.node_cpu_utilization.min() > 0.9


def test_ingest_splits_by_time():
    result = ingest(IngestRequest(ANOMALY_DETECTOR, days=1, validation_fraction=0.25))
    assert len(result.train) == 1080 and len(result.validation) == 360
    assert result.train.timestamp.max() < result.validation.timestamp.min()


def write(frame: pd.DataFrame, path):
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_file_source_reads_csv_and_parquet(tmp_path, suffix):
    frame = generate_cluster_metrics(PREDICTIVE_ANALYTICS, days=1, seed=2).drop(columns=["incident", "is_anomaly"])
    path = write(frame, tmp_path / f"metrics{suffix}")
    result = ingest(IngestRequest(PREDICTIVE_ANALYTICS, source="file", file_path=str(path)))
    joined = pd.concat([result.train, result.validation])
    np.testing.assert_allclose(joined.cpu.to_numpy(), frame.cpu.to_numpy())


def test_file_source_averages_duplicates_and_fills_short_gaps(tmp_path):
    frame = generate_cluster_metrics(PREDICTIVE_ANALYTICS, days=1, seed=2).drop(columns=["incident", "is_anomaly"])
    duplicate = frame.iloc[[100]].assign(cpu=frame.cpu.iloc[100] + 0.1)
    messy = pd.concat([frame.drop(index=[200, 201, 202]), duplicate]).sample(frac=1.0, random_state=0)
    result = ingest(IngestRequest(PREDICTIVE_ANALYTICS, source="file", file_path=str(write(messy, tmp_path / "m.csv"))))
    joined = pd.concat([result.train, result.validation]).reset_index(drop=True)
    assert len(joined) == len(frame)
    assert joined.cpu[100] == pytest.approx(frame.cpu[100] + 0.05)
    assert joined.cpu[201] == pytest.approx((frame.cpu[199] + frame.cpu[203]) / 2)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(index=range(300, 320)), "a gap of 20 minutes"),
        (lambda f: f.drop(columns=["disk"]), "missing column(s) ['disk']"),
        (lambda f: f.drop(columns=["timestamp"]), "missing column 'timestamp'"),
        (lambda f: f.assign(memory=f.memory * 100), "looks like percent"),
        (lambda f: f.iloc[:0], "the dataset is empty"),
        (lambda f: f.iloc[:8], "validation split has 2 row(s) out of 8"),
    ],
)
def test_file_source_errors_name_the_problem(tmp_path, change, message):
    frame = generate_cluster_metrics(PREDICTIVE_ANALYTICS, days=1, seed=2).drop(columns=["incident", "is_anomaly"])
    path = write(change(frame), tmp_path / "bad.csv")
    with pytest.raises(ContractError) as caught:
        ingest(IngestRequest(PREDICTIVE_ANALYTICS, source="file", file_path=str(path)))
    assert message in str(caught.value)


def test_unknown_source_and_missing_file_are_refused(tmp_path):
    with pytest.raises(ContractError, match="unknown source 'prom'"):
        ingest(IngestRequest(ANOMALY_DETECTOR, source="prom"))
    with pytest.raises(ContractError, match="does not exist"):
        ingest(IngestRequest(ANOMALY_DETECTOR, source="file", file_path=str(tmp_path / "none.csv")))
    with pytest.raises(ContractError, match="needs file_path"):
        ingest(IngestRequest(ANOMALY_DETECTOR, source="file"))


def test_regime_start_keeps_only_the_minutes_from_the_drifts_onset_on(tmp_path):
    frame = generate_cluster_metrics("predictive-analytics", days=2, seed=4)
    path = tmp_path / "live.csv"
    frame.to_csv(path, index=False)
    onset = frame.timestamp.iloc[-600]
    result = ingest(IngestRequest("predictive-analytics", source="file", file_path=str(path), regime_start=onset.isoformat()))
    assert len(result.train) + len(result.validation) == 600
    assert result.train.timestamp.min() == onset and f"from {onset:%Y-%m-%d %H:%M} UTC on (the drift's onset): 600 of {len(frame)} minutes" in result.description
    with pytest.raises(ContractError, match="regime_start .* leaves 5 of the source's .* point the retrain at the source the monitor reads"):
        ingest(IngestRequest("predictive-analytics", source="file", file_path=str(path), regime_start=frame.timestamp.iloc[-5].isoformat()))


def test_a_unit_change_inside_the_data_is_an_input_error_but_a_real_step_is_not(tmp_path):
    frame = generate_cluster_metrics(ANOMALY_DETECTOR, days=1, seed=2)
    later = frame.index >= 900  # from 15:00 on

    def ingested(changes: dict) -> IngestResult:
        changed = frame.assign(**{column: np.where(later, change(frame[column]), frame[column]) for column, change in changes.items()})
        return ingest(IngestRequest(ANOMALY_DETECTOR, source="file", file_path=str(write(changed, tmp_path / "metrics.csv"))))

    with pytest.raises(ContractError) as millicores:
        ingested({"pod_cpu_usage": lambda cores: cores * 1000})
    assert ("pod_cpu_usage rises 971x between 2026-01-05 14:00 and 2026-01-05 16:00 UTC" in str(millicores.value)
            and "the later part looks like millicores, and the contract unit is CPU cores; fix the query or exporter, or divide that part by 1000" in str(millicores.value))
    with pytest.raises(ContractError) as percent:
        ingested({"node_cpu_utilization": lambda ratio: ratio / 100})
    assert "node_cpu_utilization falls 104x" in str(percent.value) and "the earlier part looks like percent" in str(percent.value)
    # Both sides are in range: the message names the knobs that read one of them, and a retrain with the later side's ingests.
    assert ("to learn one side only, a retrain can set data.regime_start=2026-01-05T16:00:00Z (the later part) or, from Prometheus, "
            "prometheus.end=2026-01-05T14:00:00Z (the earlier part)") in str(percent.value)
    changed = frame.assign(node_cpu_utilization=np.where(later, frame.node_cpu_utilization / 100, frame.node_cpu_utilization))
    later_side = ingest(IngestRequest(ANOMALY_DETECTOR, source="file", file_path=str(write(changed, tmp_path / "changed.csv")),
                                      regime_start="2026-01-05T16:00:00Z"))
    assert later_side.train.timestamp.min() == pd.Timestamp("2026-01-05T16:00:00Z")
    stepped = ingested({"pod_cpu_usage": lambda cores: cores * 2, "node_memory_utilization": lambda ratio: np.clip(ratio + 0.15, 0, 1)})
    assert len(stepped.train) + len(stepped.validation) == len(frame), "twice the cores and +0.15 memory are real steps: ingested"
