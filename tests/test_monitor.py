"""The drift monitor: a real Prometheus backfilled with live metrics, the compiled model-monitor pipeline run by
kfp.local against the KFP API stand-in, and the `monitor` CLI on this machine."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from components.kfp.config import RETRAIN, config_from_arguments, grouped
from components.model.contract import ANOMALY_DETECTOR, PREDICTIVE_ANALYTICS
from components.model.spec import spec_for
from components.monitoring.dsp_api import DspApi, DspApiError
from components.monitoring.monitor import MonitorSettings, prediction_checks
from components.data.prometheus import PrometheusClient
from components.data.synthetic import generate_cluster_metrics
from components.kfp.workflow import RUN_LOCKS_ENV, learned_regime, local_run_lock
from components.store.filesystem import FilesystemStore
from tests.conftest import FAST_CANARY, REPO, run_cli
from tests.git_server import LoopbackHttpServer, RedirectServer
from tests.kfp_standin import KfpStandIn
from tests.servers import PrometheusServer, PushgatewayServer

FORECASTER = PREDICTIVE_ANALYTICS
DETECTOR = ANOMALY_DETECTOR
METRICS = ("cpu", "memory", "disk", "network_in", "network_out")
QUERIES = {name: f"avg(test_{name})" for name in METRICS}
TOKEN = "kfp-test-token"
SHIFT_MINUTES = 180
RETRAIN_PARAMETERS = {"source": "prometheus", "days": 3}


def shifted(frame: pd.DataFrame) -> pd.DataFrame:
    """Return ``frame`` with cpu 0.2 higher over its last SHIFT_MINUTES minutes."""
    frame = frame.copy()
    frame.loc[frame.index[-SHIFT_MINUTES:], "cpu"] = np.clip(frame["cpu"].iloc[-SHIFT_MINUTES:] + 0.2, 0, 1)
    return frame


def openmetrics(frame: pd.DataFrame) -> str:
    """One gauge per metric, a sample a minute; network as bytes/s, the unit ingest scales from."""
    seconds = frame.timestamp.astype("int64") // 10**9
    lines = []
    for name in METRICS:
        scale = 125e6 if name.startswith("network") else 1.0
        lines.append(f"# TYPE test_{name} gauge")
        lines += [f"test_{name} {value * scale} {ts}" for ts, value in zip(seconds, frame[name])]
    return "\n".join(lines) + "\n# EOF\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store whose forecaster v1 (with its drift profile, from the default ten days) is stable; serving stopped."""
    state = tmp_path_factory.mktemp("trained")
    try:
        result = run_cli("run", FORECASTER, "--local", "--state-dir", str(state), *FAST_CANARY)
    finally:
        run_cli("serve", "stop", "--state-dir", str(state))
    assert result.returncode == 0, result.stdout[-3000:]
    return state


def copy_of(trained: Path, tmp_path: Path) -> Path:
    """Return a state dir holding a copy of the trained store, so that each test starts from the same history."""
    state = tmp_path / "state"
    shutil.copytree(trained / "store", state / "store")
    return state


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A Prometheus holding a day of live metrics whose last three hours have cpu +0.2; the KFP stand-in with the
    forecaster's retrain pipeline uploaded. Yields (prometheus, kfp, end of the shifted window, end of a quiet one)."""
    frame = shifted(generate_cluster_metrics(FORECASTER, days=1, seed=31))
    prometheus = PrometheusServer(tmp_path_factory.mktemp("prometheus"))
    prometheus.backfill(openmetrics(frame))
    prometheus.start()
    kfp = KfpStandIn(token=TOKEN, run_states=("PENDING",)).start()
    try:
        uploaded = run_cli("upload", FORECASTER, "--host", kfp.url, env={"KF_PIPELINES_TOKEN": TOKEN}, timeout=300)
        assert uploaded.returncode == 0, uploaded.stdout
        end = frame.timestamp.iloc[-1] + pd.Timedelta(minutes=1)
        yield prometheus, kfp, end.isoformat(), (end - pd.Timedelta(minutes=SHIFT_MINUTES + 60)).isoformat()
    finally:
        kfp.stop()
        prometheus.stop()


def monitor_pipeline_process(state: Path, **arguments) -> subprocess.CompletedProcess:
    """Run compiled/model-monitor.yaml with kfp.local on ``state``'s store, with a KFP token in the environment."""
    script = textwrap.dedent(
        f"""
        import json, sys
        from kfp import components, local
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root="runs", raise_on_error=True)
        pipeline = components.load_component_from_file({str(REPO / "compiled" / "model-monitor.yaml")!r})
        task = pipeline(**json.loads(sys.argv[1]))
        print("OUTPUTS " + json.dumps({{name: task.outputs[name] for name in ("decision", "reason", "regime_start")}}))
        """
    )
    env = {**{key: value for key, value in os.environ.items() if not key.startswith("MODEL_")},
           "MODEL_STORE_ROOT": str(state / "store"), "KF_PIPELINES_TOKEN": TOKEN}
    grouped_arguments = grouped(arguments, "monitor")  # flat knob names, as the run form groups them
    return subprocess.run([sys.executable, "-c", script, json.dumps(grouped_arguments)], cwd=state, env=env, capture_output=True, text=True, timeout=600)


def run_monitor_pipeline(state: Path, **arguments) -> dict:
    """Run the monitor pipeline (``monitor_pipeline_process``); return its decision and reason."""
    result = monitor_pipeline_process(state, **arguments)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert TOKEN not in result.stdout + result.stderr, "the token is never printed"
    return json.loads(next(line for line in result.stdout.splitlines() if line.startswith("OUTPUTS ")).removeprefix("OUTPUTS "))


def test_a_shifted_window_in_prometheus_submits_the_retrain_then_an_active_run_and_the_cooldown_hold_it(trained, live, tmp_path):
    prometheus, kfp, shifted_end, quiet_end = live
    state = copy_of(trained, tmp_path)
    common = {"model_name": FORECASTER, "source": "prometheus", "prometheus_url": prometheus.url, "prometheus_queries": QUERIES,
              "action": "submit", "dsp_api_url": kfp.url, "retrain_parameters": RETRAIN_PARAMETERS, "experiment": "drift", "min_regime_hours": 0.0}

    quiet = run_monitor_pipeline(state, **common, prometheus_end=quiet_end, cooldown_hours=0.0)
    assert quiet["decision"] == "none" and quiet["reason"].startswith("no drift in 5 features"), quiet
    assert kfp.sent("POST", "/apis/v2beta1/runs") == []

    drifted = run_monitor_pipeline(state, **common, prometheus_end=shifted_end, cooldown_hours=0.0)
    assert drifted["decision"] == "retrain" and drifted["reason"].startswith("drift: cpu PSI "), drifted
    report_dir = sorted((state / "runs").glob("model-monitor-*/monitor-drift"))[-1]
    assert (report_dir / "distributions").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (report_dir / "report").read_text()
    assert "| cpu |" in report and "**yes**" in report and "](data:image/png;base64," in report
    (post,) = kfp.sent("POST", "/apis/v2beta1/runs")
    pipeline_id = next(pipeline_id for pipeline_id, pipeline in kfp.pipelines.items() if pipeline["display_name"] == f"{FORECASTER}-retrain")
    (version,) = kfp.versions[pipeline_id]
    experiment_id = next(experiment_id for experiment_id, e in kfp.experiments.items() if e["display_name"] == "drift")
    assert post["json"] == {
        "display_name": f"{FORECASTER}-retrain-on-drift",
        "experiment_id": experiment_id,
        "pipeline_version_reference": {"pipeline_id": pipeline_id, "pipeline_version_id": version["pipeline_version_id"]},
        "runtime_config": {"parameters": {**RETRAIN_PARAMETERS, "data": {"regime_start": drifted["regime_start"]}}},
    }
    onset = pd.Timestamp(shifted_end) - pd.Timedelta(minutes=119)  # the 120-minute window ends at prometheus_end
    assert pd.Timestamp(drifted["regime_start"]) == onset, "the retrain learns from the start of the first drifted window on"
    assert post["headers"]["authorization"] == f"Bearer {TOKEN}"
    (run_id,) = kfp.runs
    index = json.loads((state / "store" / FORECASTER / "metadata.json").read_text())
    trigger = index["history"][-1]
    assert trigger["event"] == "retrain-triggered" and trigger["version"] == "v1"
    assert trigger["detail"] == f"{drifted['reason']}; started run {run_id} of {FORECASTER}-retrain"

    running = run_monitor_pipeline(state, **common, prometheus_end=shifted_end, cooldown_hours=0.0)
    assert running["decision"] == "held" and running["reason"].endswith(f"held: a retrain is still running (run {run_id} (PENDING))"), running
    kfp.runs[run_id]["state"] = "SUCCEEDED"
    cooling = run_monitor_pipeline(state, **common, prometheus_end=shifted_end, cooldown_hours=24.0)
    assert cooling["decision"] == "held" and "held: last retrain at " in cooling["reason"] and "cooldown 24 h until" in cooling["reason"], cooling
    assert len(kfp.sent("POST", "/apis/v2beta1/runs")) == 1, "held decisions start nothing"


class LoginPage(LoopbackHttpServer):
    """Answers every request 200 with an HTML page, as a login page in front of an API does."""

    def _handler(self):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                page = b"<html><body>Log in with OpenShift</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

        return Handler


def test_the_monitor_names_a_dsp_address_that_redirects_or_answers_a_login_page_and_never_follows_it(monkeypatch):
    monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
    kfp = KfpStandIn(token=TOKEN).start()
    redirect = RedirectServer(kfp.url.replace("127.0.0.1", "localhost")).start()
    login = LoginPage().start()
    try:
        with pytest.raises(DspApiError, match=rf"the DSP API at {redirect.url} answered 302, a redirect to http://localhost:\d+, which is never "
                                              r"followed so that a token stays on its host; check dsp_api_url"):
            DspApi(redirect.url).start_run(f"{FORECASTER}-retrain", {}, "drift", "on-drift")
        with pytest.raises(DspApiError, match=r"answered GET pipelines without a JSON object: is dsp_api_url the API's address"):
            DspApi(login.url).active_runs(f"{FORECASTER}-retrain")
    finally:
        for server in (redirect, login, kfp):
            server.stop()
    assert kfp.requests == [], "the token never reached the host the redirect named"


def test_submit_without_the_dsp_address_fails_every_run_and_refuses_a_token_over_plain_http(trained, tmp_path):
    state = copy_of(trained, tmp_path)
    (state / "shifted.csv").write_text(shifted(generate_cluster_metrics(FORECASTER, days=0.5, seed=3)).to_csv(index=False))
    script_arguments = {"model_name": FORECASTER, "source": "file", "file_path": str(state / "shifted.csv"), "action": "submit",
                        "dsp_api_url": "http://ds-pipeline-dspa.example.svc:8888", "cooldown_hours": 0.0}
    result = monitor_pipeline_process(state, **script_arguments)
    assert result.returncode != 0
    assert "refusing to send the token over plain http to http://ds-pipeline-dspa.example.svc:8888" in result.stdout + result.stderr
    assert TOKEN not in result.stdout + result.stderr
    quiet = {**script_arguments, "file_path": str(state / "quiet.csv"), "dsp_api_url": ""}
    (state / "quiet.csv").write_text(generate_cluster_metrics(FORECASTER, days=0.5, seed=3).to_csv(index=False))
    unaddressed = monitor_pipeline_process(state, **quiet)
    assert unaddressed.returncode != 0 and "action=submit needs dsp_api_url" in unaddressed.stdout + unaddressed.stderr


def monitor_cli(state: Path, csv: Path, *params: str, env: dict | None = None, model: str = FORECASTER) -> subprocess.CompletedProcess:
    return run_cli("monitor", model, "--local", "--state-dir", str(state), "--param", "source=file", "--param", f"file_path={csv}",
                   *params, env=env)


def newest_log(state: Path) -> str:
    """Return the newest run log of the forecaster in ``state`` (run logs are named by their start time)."""
    return max((state / "logs").glob(f"{FORECASTER}-*.log"), key=lambda path: path.name).read_text()


def quiet_and_drifted(state: Path) -> tuple[pd.DataFrame, Path, Path]:
    """Return half a day of live metrics and CSVs of it as it is and with cpu shifted (``shifted``) in ``state``."""
    live_frame = generate_cluster_metrics(FORECASTER, days=0.5, seed=3)
    quiet_csv, drift_csv = state / "quiet.csv", state / "drift.csv"
    quiet_csv.write_text(live_frame.to_csv(index=False))
    drift_csv.write_text(shifted(live_frame).to_csv(index=False))
    return live_frame, quiet_csv, drift_csv


def test_the_cli_retrains_locally_on_drift_and_then_holds_while_a_run_is_active_or_in_cooldown(trained, tmp_path):
    state = copy_of(trained, tmp_path)
    live_frame, quiet_csv, drift_csv = quiet_and_drifted(state)
    submit = ("--param", "action=submit", "--param", "min_regime_hours=0")
    try:
        quiet = monitor_cli(state, quiet_csv, *submit, "--param", "cooldown_hours=0")
        assert quiet.returncode == 0, quiet.stdout[-3000:]
        assert "decision: none: no drift in 5 features" in quiet.stdout and "retrain:" not in quiet.stdout

        retrain = json.dumps({"days": 3, "seed": 5, "canary_interval_s": 0.3, "probe_requests": 10})
        drifted = monitor_cli(state, drift_csv, *submit, "--param", "cooldown_hours=0", "--param", f"retrain_parameters={retrain}")
        assert drifted.returncode == 0, drifted.stdout[-3000:]
        table = [line for line in drifted.stdout.splitlines() if line.startswith("  | cpu |")]
        assert table and table[0].endswith("| **yes** |"), "the drift table shows cpu drifted"
        assert "decision: retrain: drift: cpu PSI" in drifted.stdout and "retrain: v2 promoted" in drifted.stdout
        index = json.loads((state / "store" / FORECASTER / "metadata.json").read_text())
        assert index["stable"] == "v2"
        assert [event["event"] for event in index["history"] if event["event"] == "retrain-triggered"] == ["retrain-triggered"]
        onset = pd.Timestamp(live_frame.timestamp.iloc[-120])
        assert f"from {onset:%Y-%m-%d %H:%M} UTC on (the drift's onset)" in newest_log(state), "the retrain learned from the onset on"

        cooling = monitor_cli(state, drift_csv, *submit)
        assert cooling.returncode == 3 and "decision: held: drift: cpu" in cooling.stdout and "cooldown 24 h until" in cooling.stdout

        os.environ[RUN_LOCKS_ENV] = str(state / "locks")
        try:
            with local_run_lock(FORECASTER):
                running = monitor_cli(state, drift_csv, *submit, "--param", "cooldown_hours=0")
                blocked = run_cli("run", FORECASTER, "--local", "--state-dir", str(state), "--param", "days=1")
        finally:
            del os.environ[RUN_LOCKS_ENV]
        assert running.returncode == 3 and f"held: a retrain is still running (local run, pid {os.getpid()} since" in running.stdout
        assert blocked.returncode == 1 and f"another local run of {FORECASTER} is active (pid {os.getpid()}" in blocked.stdout
        assert "exit code 3: drift found but no retrain started" in running.stdout
        assert json.loads((state / "store" / FORECASTER / "metadata.json").read_text())["stable"] == "v2", "held checks change nothing"

        second = json.dumps({"days": 3, "seed": 6, "canary_interval_s": 0.3, "probe_requests": 10})
        again = monitor_cli(state, drift_csv, *submit, "--param", "cooldown_hours=0", "--param", f"retrain_parameters={second}")
        assert again.returncode == 0 and "retrain: v3 promoted" in again.stdout, again.stdout[-3000:]
        stuck = monitor_cli(state, drift_csv, *submit, "--param", "cooldown_hours=0")
        assert stuck.returncode == 3, stuck.stdout[-3000:]
        assert "needs a human: drift persists after 2 retrains since" in stuck.stdout and "==> drift: retraining" not in stuck.stdout
        cleared = monitor_cli(state, drift_csv, "--param", "action=clear", "--param", "cooldown_hours=0", "--param", "min_regime_hours=0")
        assert cleared.returncode == 3 and "decision: retrain: drift: cpu" in cleared.stdout, cleared.stdout[-3000:]
        events = [event["event"] for event in json.loads((state / "store" / FORECASTER / "metadata.json").read_text())["history"]]
        assert events.count("drift-cleared") == 1 and events.count("drift-onset") == 2, "clearing forgot the episode; the next check began a new one"
    finally:
        run_cli("serve", "stop", "--state-dir", str(state))


def test_a_retrain_without_a_regime_start_learns_the_regime_its_stable_version_learned(trained, tmp_path):
    """A scheduled retrain after a drift-triggered one (which learned from the onset) must not learn the old cluster again."""
    state = copy_of(trained, tmp_path)
    live_frame, _, drift_csv = quiet_and_drifted(state)
    onset = live_frame.timestamp.iloc[-400]  # its 30 % validation share still spans the forecaster's 60-minute horizon
    # Persistence is hard to beat on a few hours of synthetic minutes, and the new regime shifts the forecasts: this test is about
    # which minutes are learned.
    common = ("--local", "--state-dir", str(state), "--param", "source=file", "--param", f"file_path={drift_csv}", "--param", "gates.max_mase=3",
              "--param", "max_prediction_shift=1",
              *FAST_CANARY)
    try:
        after_drift = run_cli("run", FORECASTER, *common, "--param", f"regime_start={onset.isoformat()}")
        assert after_drift.returncode == 0, after_drift.stdout[-3000:]
        scheduled = run_cli("run", FORECASTER, *common)
        assert scheduled.returncode == 0, scheduled.stdout[-3000:]
    finally:
        run_cli("serve", "stop", "--state-dir", str(state))
    log = newest_log(state)
    assert f"data: learning from {onset:%Y-%m-%d %H:%M} UTC on, the regime stable v2 learned" in log, log[-3000:]
    assert f"from {onset:%Y-%m-%d %H:%M} UTC on" in log, "the scheduled retrain's ingest kept only the new regime's minutes"
    # The same minutes, so the same bytes: learning the whole file again would have made a v3.
    assert "duplicate of stable v2: byte-identical" in scheduled.stdout, scheduled.stdout[-3000:]
    records = [json.loads((state / "store" / FORECASTER / version / "version.json").read_text()) for version in ("v1", "v2")]
    assert [record["regime_start"] for record in records] == ["", onset.isoformat()]
    # Another source has another timeline (synthetic data starts in January 2026): its retrain is not floored.
    store = FilesystemStore(state / "store")
    for source, floored in (("file", onset.isoformat()), ("synthetic", "")):
        config = config_from_arguments(RETRAIN, {"source": source, "data": {"file_path": str(drift_csv)}}, spec=spec_for(FORECASTER))
        assert learned_regime(config, store).data.regime_start == floored, source


def test_a_retrain_during_an_open_drift_learns_from_its_onset_once_enough_of_the_new_regime_is_there(trained, tmp_path, capsys):
    """A scheduled retrain while the monitor waits out a drift must not learn both regimes once the new one can be learned."""
    store = FilesystemStore(copy_of(trained, tmp_path) / "store")
    end = pd.Timestamp("2026-03-10T12:00:00Z")

    def retrain_start(onset_hours_before_end: float, source: str = "prometheus", seen_on: str = "") -> str:
        onset = (end - pd.Timedelta(hours=onset_hours_before_end)).isoformat()
        episode = {"onset": onset, "source": seen_on or source, "since": onset, "checks": 3}
        store.update_index(FORECASTER, lambda index: index.update(drift_episode=episode))
        arguments = {"source": source, "prometheus_url": "https://prometheus.example:9091", "prometheus": {"end": end.isoformat()},
                     "data": {"file_path": str(tmp_path / "live.csv")}}
        return learned_regime(config_from_arguments(RETRAIN, arguments, spec=spec_for(FORECASTER)), store).data.regime_start

    assert retrain_start(40) == (end - pd.Timedelta(hours=40)).isoformat()
    assert "data: learning from 2026-03-08 20:00 UTC on, the onset of the drift open since then (40 hours of the new regime)" in capsys.readouterr().out
    assert retrain_start(10) == "", "10 of 36 hours: too little of the new regime to learn it alone"
    assert ("data: a drift is open since 2026-03-10 02:00 UTC (10 of 36 hours of the new regime), so this retrain learns both regimes; "
            "the drift monitor retrains from the onset once there is enough of it, or set data.regime_start=2026-03-10T02:00:00+00:00") in capsys.readouterr().out
    assert retrain_start(40, source="file") == "", "a file's timeline is dated only by reading it"
    assert "(on a timeline this run cannot date before reading it)" in capsys.readouterr().out
    assert retrain_start(40, source="synthetic", seen_on="prometheus") == "" and "drift" not in capsys.readouterr().out, \
        "a drift seen on another source is not on this run's timeline"


def test_a_drift_waits_for_the_new_regime_before_a_retrain_and_ends_when_the_inputs_settle(trained, tmp_path):
    state = copy_of(trained, tmp_path)
    live_frame, quiet_csv, drift_csv = quiet_and_drifted(state)
    waiting = monitor_cli(state, drift_csv, "--param", "action=submit", "--param", "cooldown_hours=0")
    assert waiting.returncode == 3, waiting.stdout[-3000:]
    assert "held: waiting for the new regime (2 of 36 hours)" in waiting.stdout and "==> drift: retraining" not in waiting.stdout
    index = json.loads((state / "store" / FORECASTER / "metadata.json").read_text())
    assert pd.Timestamp(index["drift_episode"]["onset"]) == pd.Timestamp(live_frame.timestamp.iloc[-120]) and index["drift_episode"]["checks"] == 1
    assert index["drift_episode"]["source"] == "file", "the onset is dated on the timeline of the source that saw it"
    settled = monitor_cli(state, quiet_csv, "--param", "action=submit", "--param", "cooldown_hours=0")
    assert settled.returncode == 0, settled.stdout[-3000:]
    index = json.loads((state / "store" / FORECASTER / "metadata.json").read_text())
    assert "drift_episode" not in index and index["history"][-1]["event"] == "drift-cleared"


def test_percent_units_are_an_input_error_not_drift(trained, tmp_path):
    state = copy_of(trained, tmp_path)
    percent = generate_cluster_metrics(FORECASTER, days=0.5, seed=3)
    percent["cpu"] *= 100
    csv = state / "percent.csv"
    csv.write_text(percent.to_csv(index=False))
    result = monitor_cli(state, csv)
    assert result.returncode == 1 and "percent" in result.stdout and "decision:" not in result.stdout, result.stdout[-2000:]


@pytest.fixture(scope="module")
def detector_on_file(tmp_path_factory):
    """A store whose stable detector v1 learned three days of a file (a cluster's scale, unlike synthetic data); serving stopped."""
    state = tmp_path_factory.mktemp("detector")
    csv = state / "cluster.csv"
    csv.write_text(generate_cluster_metrics(DETECTOR, days=3, seed=8).to_csv(index=False))
    try:
        result = run_cli("run", DETECTOR, "--local", "--state-dir", str(state), "--param", "source=file", "--param", f"file_path={csv}",
                         *FAST_CANARY)
    finally:
        run_cli("serve", "stop", "--state-dir", str(state))
    assert result.returncode == 0, result.stdout[-3000:]
    return state


def test_a_unit_mix_up_against_the_profile_is_an_input_error_that_retrains_nothing_but_a_real_shift_is_drift(detector_on_file, tmp_path):
    state = copy_of(detector_on_file, tmp_path)
    live = generate_cluster_metrics(DETECTOR, days=0.5, seed=3)

    def monitored(name: str, changes: dict, *params: str, rows: np.ndarray = np.full(len(live), True)) -> subprocess.CompletedProcess:
        csv = state / f"{name}.csv"
        changed = live.assign(**{column: np.where(rows, change(live[column]), live[column]) for column, change in changes.items()})
        csv.write_text(changed.to_csv(index=False))
        return monitor_cli(state, csv, *params, model=DETECTOR)

    submit = ("--param", "action=submit", "--param", "cooldown_hours=0")  # were it drift, this would retrain
    millicores = monitored("millicores", {"pod_cpu_usage": lambda cores: cores * 1000}, *submit)
    assert millicores.returncode == 1 and "decision:" not in millicores.stdout, millicores.stdout[-2000:]
    assert ("input error, not drift: pod_cpu_usage median " in millicores.stdout and "that stable v1 learned for these hours: is it in millicores? "
            "The contract unit is CPU cores: divide by 1000. Nothing is retrained on it" in millicores.stdout), millicores.stdout[-2000:]
    divided = monitored("divided", {"node_cpu_utilization": lambda ratio: ratio / 100}, *submit)
    assert divided.returncode == 1 and "node_cpu_utilization median " in divided.stdout, divided.stdout[-2000:]
    assert "was this window divided by 100 twice, or did stable v1 learn it in percent? The contract unit is ratio 0-1" in divided.stdout
    index = json.loads((state / "store" / DETECTOR / "metadata.json").read_text())
    assert index["stable"] == "v1" and [event["event"] for event in index["history"] if event["event"] == "retrain-triggered"] == []

    # Twice the cores and a +0.15 node memory step over the last three hours are real changes: drift (held by v1's cooldown).
    for column, change in (("pod_cpu_usage", lambda cores: cores * 2), ("node_memory_utilization", lambda ratio: np.clip(ratio + 0.15, 0, 1))):
        shifted_live = monitored(column, {column: change}, rows=live.index >= len(live) - SHIFT_MINUTES)
        assert shifted_live.returncode == 3 and f"decision: held: drift: {column}" in shifted_live.stdout, shifted_live.stdout[-2000:]


def drift_alert_expressions() -> dict[str, str]:
    rules = yaml.safe_load((REPO / "manifests" / "monitoring" / "prometheusrule.yaml").read_text())
    return {rule["alert"]: rule["expr"] for group in rules["spec"]["groups"] for rule in group["rules"] if group["name"] == "model-pipelines-drift"}


def test_the_drift_score_reaches_prometheus_through_a_pushgateway_and_fires_the_drift_alert(trained, tmp_path):
    state = copy_of(trained, tmp_path)
    drift_csv = state / "drift.csv"
    drift_csv.write_text(shifted(generate_cluster_metrics(FORECASTER, days=0.5, seed=3)).to_csv(index=False))
    pushgateway = PushgatewayServer(tmp_path).start()
    targets = tmp_path / "targets.json"
    targets.write_text(json.dumps([{"targets": [pushgateway.address]}]))
    prometheus = PrometheusServer(tmp_path / "prometheus", file_sd=targets).start()
    alerts = drift_alert_expressions()
    try:
        result = monitor_cli(state, drift_csv, "--param", f"pushgateway_url={pushgateway.url}")
        assert result.returncode == 3 and "decision: held: drift: cpu" in result.stdout, result.stdout[-2000:]  # cooldown: v1 is new
        client = PrometheusClient(prometheus.url)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not client.query(alerts["ModelInputsDrifted"]):
            time.sleep(0.5)
        (firing,) = client.query(alerts["ModelInputsDrifted"])
        assert firing["metric"] == {"model": FORECASTER, "version": "v1"} and float(firing["value"][1]) >= 0.4
        (drifted,) = client.query("model_drifted_features")
        assert float(drifted["value"][1]) >= 1, "the check's own verdict is there too"
        dashboard = json.loads((REPO / "manifests" / "monitoring" / "grafana-dashboard.json").read_text())
        drift_panels = [target["expr"] for panel in dashboard["panels"] if panel["title"].startswith("Drift") for target in panel["targets"]]
        assert len(drift_panels) == 4 and all(client.query(expr) for expr in drift_panels), "every drift panel of the dashboard shows data"
        assert client.query(alerts["ModelDriftCheckStale"]) == [], "a check just ran"
        (decision,) = client.query("model_drift_retrain_decision")
        assert decision["value"][1] == "0", "held by the cooldown, not a retrain"
    finally:
        prometheus.stop()
        pushgateway.stop()


def test_an_unreachable_pushgateway_is_a_warning_and_the_check_still_decides(trained, tmp_path):
    state = copy_of(trained, tmp_path)
    quiet_csv = state / "quiet.csv"
    quiet_csv.write_text(generate_cluster_metrics(FORECASTER, days=0.5, seed=3).to_csv(index=False))
    result = monitor_cli(state, quiet_csv, "--param", "pushgateway_url=http://127.0.0.1:9", "--verbose")
    assert result.returncode == 0 and "decision: none" in result.stdout, result.stdout[-2000:]
    assert "warning: drift metrics not pushed: cannot reach the Pushgateway at http://127.0.0.1:9" in result.stdout


def test_the_prediction_checks_judge_the_live_anomaly_rate_and_forecast_bias_and_say_when_there_is_too_little():
    settings = MonitorSettings()
    flagged = prediction_checks("anomaly-detector", {"anomaly_rate": 0.05}, pd.DataFrame(), {"anomaly": 60.0, "normal": 140.0}, settings)
    assert [(check.measured, check.drifted) for check in flagged] == [(True, True)]
    assert flagged[0].detail == "live 0.300 on 200 predictions, validation 0.050 (limit 0.150)"
    usual = prediction_checks("anomaly-detector", {"anomaly_rate": 0.05}, pd.DataFrame(), {"anomaly": 8.0, "normal": 192.0}, settings)
    assert [(check.measured, check.drifted) for check in usual] == [(True, False)]
    quiet = prediction_checks("anomaly-detector", {"anomaly_rate": 0.05}, pd.DataFrame(), {"anomaly": 1.0, "normal": 20.0}, settings)
    assert quiet[0].measured is False and quiet[0].detail == "inconclusive: 21 live predictions < 100"
    live = generate_cluster_metrics(FORECASTER, days=0.1, seed=1)
    validation = {f"mae_{name}": 0.02 for name in METRICS}
    forecasts = {name: {"sum": (float(live[name].mean()) + (0.1 if name == "cpu" else 0.0)) * 500, "count": 500.0} for name in METRICS}
    biased = {check.name: check for check in prediction_checks(FORECASTER, validation, live, {"forecasts": forecasts}, settings)}
    assert biased["cpu forecast"].drifted and not biased["memory forecast"].drifted
    assert biased["cpu forecast"].detail == "live bias +0.100 on 500 forecasts, limit 0.060 (3 x validation MAE)"


def test_a_model_without_a_stable_version_is_a_failed_check_that_names_the_fix(tmp_path):
    csv = tmp_path / "quiet.csv"
    csv.write_text(generate_cluster_metrics(FORECASTER, days=0.5, seed=3).to_csv(index=False))
    result = monitor_cli(tmp_path / "empty", csv)
    assert result.returncode == 1 and "has no stable version" in result.stdout and "run its retrain pipeline first" in result.stdout, result.stdout[-2000:]
