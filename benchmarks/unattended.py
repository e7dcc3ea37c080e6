"""Fourteen days of unattended operation of the anomaly detector, time compressed, with faults on a seeded schedule.

    python -m benchmarks unattended [--days 14] [--seed 7] [--json OUT]

What runs, on one machine, in a work directory:
- the live metrics: ten days of history, then ``--days`` days in which node memory steps up by 0.15 on day 5 and
  stays there, containers crash-loop for an hour on day 9, day 11 arrives in percent and day 13 in millicores;
- hourly drift checks by the monitor's own code (``monitor_step``) with ``action=submit``: a retrain decision starts
  a retrain from the drift's onset on; a weekly scheduled retrain (days 1 and 8) on the last ten days;
- every retrain's version rolled out on two targets: the local one (KServe model servers and the router on
  127.0.0.1) and the KServe target against the Kubernetes API stand-in the tests use;
- a client that sends the coordination engine's requests to each target's main URL all along, and a client that
  sends bodies the contract refuses at 10 per second during every canary;
- faults: bursts of 503s from the API stand-in during deploy and rollback, a Prometheus outage during canaries,
  latency blips during smoke tests (the candidate's server paused and resumed), a symlinked version planted in the
  store (``store repair`` runs daily), and one scheduled run misconfigured to train on synthetic data.

Time is compressed by a clock (``components.store.filesystem.clock``) that the simulation advances an hour per check; the
data's timestamps are that clock's. Canary intervals are short, but every step runs the real code.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import requests

from components.store import filesystem as storage
from components.model.contract import ANOMALY_DETECTOR, ContractError, fallback_instance, is_synthetic
from components.data.ingest import IngestRequest, ingest
from components.kfp.config import RETRAIN as RETRAIN_KIND, config_from_arguments
from components.serving.kserve import KServeOptions
from components.serving.local import LocalTarget, process_alive
from components.monitoring.monitor import NEEDS_HUMAN, RETRAIN, DriftThresholds, MonitorError, MonitorSettings, record_trigger
from components.data.prometheus import PrometheusClient, PrometheusProvider
from components.release.rollout import CanarySpec, ProbeProvider, canary_promote, make_safe, record_smoke_test, rollback, smoke_test
from components.serving.target import ServingError
from components.store.integrity import repair
from components.data.synthetic import generate_cluster_metrics
from components.model.spec import spec_for
from components.model.train import save_trained, train_model
from benchmarks import write_results
from components.kfp.workflow import (
    SERVING_HOME_ENV, STORE_ROOT_ENV, StoreOptions, deploy_step, evaluate_step, ingest_request, learned_regime, monitor_step, open_store,
    probe_sample_from, save_step, serving_context,
)

MODEL = ANOMALY_DETECTOR
HISTORY_DAYS = 10
SHIFT_DAY, CRASH_DAY, PERCENT_DAY, MILLICORE_DAY = 5, 9, 11, 13
# Long enough per step for Prometheus (scraping every second) to see the candidate's live traffic.
CANARY = CanarySpec(interval_s=3.0, probe_requests=10)
SMOKE_P95_MS = 250.0
READY_TIMEOUT_S = 60.0
FAULT_KINDS = ("api_503_burst_deploy", "api_503_burst_rollback", "prometheus_outage", "smoke_latency_blip", "client_4xx",
               "symlinked_version", "percent_unit_day", "millicore_unit_day", "synthetic_source_run")


def live_metrics(days: int, seed: int) -> tuple[pd.DataFrame, dict[str, pd.Timestamp]]:
    """Return the live series (history plus ``days``) with the regime change, the crash loop and the unit days, and when each starts."""
    frame = generate_cluster_metrics(MODEL, days=HISTORY_DAYS + days, seed=seed)
    start = frame.timestamp.iloc[0] + pd.Timedelta(days=HISTORY_DAYS)
    marks = {name: start + pd.Timedelta(days=day) for name, day in
             (("start", 0), ("shift", SHIFT_DAY), ("crash", CRASH_DAY), ("percent", PERCENT_DAY), ("millicore", MILLICORE_DAY))}
    after_shift = frame.timestamp >= marks["shift"]
    frame.loc[after_shift, "node_memory_utilization"] = np.clip(frame.loc[after_shift, "node_memory_utilization"] + 0.15, 0, 1)
    crash = (frame.timestamp >= marks["crash"]) & (frame.timestamp < marks["crash"] + pd.Timedelta(hours=1))
    frame.loc[crash, "container_restart_count"] += np.arange(1, crash.sum() + 1) * 2.0  # a restart every 30 s for an hour
    frame.loc[frame.timestamp >= marks["crash"] + pd.Timedelta(hours=1), "container_restart_count"] += crash.sum() * 2.0
    frame.loc[crash, "pod_cpu_usage"] *= 0.2
    for name, column, factor in (("percent", "node_cpu_utilization", 100.0), ("millicore", "pod_cpu_usage", 1000.0)):
        day = (frame.timestamp >= marks[name]) & (frame.timestamp < marks[name] + pd.Timedelta(days=1))
        frame.loc[day, column] *= factor
    return frame, marks


@dataclass
class Lane:
    """One serving target with its own store: what the simulation deploys there and what its client saw."""

    name: str
    target_name: str
    store_root: Path
    serving_home: Path
    options: KServeOptions | None = None

    def active(self):
        """Point the store and serving environment at this lane for the calls inside (restored after)."""
        return mock.patch.dict(os.environ, {STORE_ROOT_ENV: str(self.store_root), SERVING_HOME_ENV: str(self.serving_home)})


class EngineClient:
    """Sends the coordination engine's request to a lane's main URL in a loop; counts failures, downtime and versions served."""

    def __init__(self, url_of) -> None:
        self.url_of, self.sent, self.failed, self.down_s = url_of, 0, 0, 0.0
        self.served: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        session, down_since = requests.Session(), None
        while not self._stop.is_set():
            url = self.url_of()
            if url:
                try:
                    answer = session.post(f"{url}:predict", json={"instances": [fallback_instance()]}, timeout=10)
                    ok = answer.status_code == 200 and answer.json().get("predictions") == [1]
                    self.served.add(answer.headers.get("x-served-version", ""))
                except (requests.RequestException, ValueError):
                    ok = False
                self.sent += 1
                now = time.monotonic()
                if ok and down_since is not None:
                    self.down_s += now - down_since
                    down_since = None
                elif not ok:
                    self.failed += 1
                    down_since = down_since or now
            time.sleep(0.05)

    def start(self) -> "EngineClient":
        """Start sending."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sending."""
        self._stop.set()
        self._thread.join(30)


class BadBodyClient:
    """Sends a body with one feature too few at 10 per second to a main URL while active; counts the 4xx answers."""

    def __init__(self, url: str) -> None:
        self.url, self.client_errors, self.other = url, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        session = requests.Session()
        while not self._stop.wait(0.1):
            try:
                status = session.post(f"{self.url}:predict", json={"instances": [fallback_instance()[:-1]]}, timeout=10).status_code
            except requests.RequestException:
                status = 0
            if 400 <= status < 500:
                self.client_errors += 1
            else:
                self.other += 1

    def __enter__(self) -> "BadBodyClient":
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join(30)


@contextlib.contextmanager
def stuttering(pid: int):
    """Pause a server process for 0.4 s of every 0.45 s while inside: a latency blip the smoke test must see."""
    stop = threading.Event()

    def stutter() -> None:
        while not stop.is_set():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
            time.sleep(0.4)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
            time.sleep(0.05)

    thread = threading.Thread(target=stutter, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


@dataclass
class Tally:
    """What the simulation counts."""

    faults: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAULT_KINDS, 0))
    retrains: list[dict] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)
    unit_errors: list[str] = field(default_factory=list)
    rollouts: list[str] = field(default_factory=list)


class Simulation:
    """The scenario: the live data, the two lanes, the clients, and the hourly loop."""

    def __init__(self, work: Path, days: int, seed: int) -> None:
        from tests.k8s_standin import KubeStandIn  # the same API stand-in the tests use

        self.work, self.days, self.rng = work, days, np.random.default_rng(seed)
        self.series, self.marks = live_metrics(days, seed)
        self.live_path, self.window_path = work / "live.parquet", work / "window.parquet"
        self.tally = Tally()
        self.runs = 0
        pvcs = work / "pvcs"
        (pvcs / "model-storage-pvc").mkdir(parents=True)
        (work / "standin").mkdir()
        self.standin = KubeStandIn(pvcs, work / "standin").start()
        os.environ.update(self.standin.client_env(self.standin.write_kubeconfig(work / "kubeconfig")))
        self.local = Lane("local", "local", work / "local-store", work / "serving")
        self.kserve = Lane("kserve", "kserve", pvcs / "model-storage-pvc", work / "serving-unused",
                           KServeOptions(namespace="unattended", deployment_mode="Serverless", endpoint=""))
        self.now = self.marks["start"]
        storage.clock = lambda: self.now.to_pydatetime()

    # -- the pieces of one simulated hour -------------------------------------------------------------------------
    def publish_live(self) -> None:
        """Write the live metrics up to the simulated now: ten days for the retrains, the last three hours for the monitor
        (as a Prometheus query for its window would return)."""
        history = self.series[(self.series.timestamp < self.now) & (self.series.timestamp >= self.now - pd.Timedelta(days=HISTORY_DAYS))]
        # Live metrics carry no incident labels: the detector is gated on its contract and anomaly rate, as on a cluster.
        history = history.drop(columns=[spec_for(MODEL).labels.column])
        history.to_parquet(self.live_path, index=False)
        history.iloc[-180:].to_parquet(self.window_path, index=False)

    def plant_symlinked_version(self) -> None:
        """Plant ``v99`` in the local store as a symlink to a directory outside it that holds a model and a record."""
        outside = self.work / "outside" / "v99"
        outside.mkdir(parents=True)
        stable = storage.FilesystemStore(self.local.store_root).read_index(MODEL)["stable"]
        source = self.local.store_root / MODEL / stable
        for name in ("model.pkl", "version.json"):
            (outside / name).write_bytes((source / name).read_bytes())
        (self.local.store_root / MODEL / "v99").symlink_to(outside, target_is_directory=True)
        self.tally.faults["symlinked_version"] += 1

    def retrain(self, why: str, regime_start: str = "", source: str = "file", lanes: tuple[str, ...] = ("local", "kserve")) -> None:
        """Ingest, train, evaluate and save as a run would, then roll the version out on the named lanes."""
        self.runs += 1
        run_name = f"unattended-{self.runs}-{why}"
        work = self.work / "runs" / run_name
        work.mkdir(parents=True)
        # As validate-parameters does: a retrain without regime_start learns from the regime the local lane's stable version learned.
        config = config_from_arguments(RETRAIN_KIND, {"source": source, "days": HISTORY_DAYS, "data": {
            "file_path": str(self.live_path), "seed": int(self.rng.integers(1 << 30)), "regime_start": regime_start}}, spec=spec_for(MODEL))
        with self.local.active():
            config = learned_regime(config, open_store(StoreOptions()))
        entry = {"run": run_name, "why": why, "at": str(self.now)}
        self.tally.retrains.append(entry)
        try:
            data = ingest(ingest_request(config))
        except ContractError as error:
            entry["outcome"] = f"input error: {error}"
            self._unit_error(str(error))
            return
        trained_from = pd.to_datetime(data.train.timestamp, utc=True) if source == "file" else None
        entry["post_shift_share"] = float((trained_from >= self.marks["shift"]).mean()) if trained_from is not None else 0.0
        data.validation.to_parquet(work / "validation.parquet")
        save_trained(train_model(spec_for(MODEL), data.train), work / "model", data.data_source, config.data.regime_start)
        for lane in (lane for lane in (self.local, self.kserve) if lane.name in lanes):
            with lane.active():
                evaluation, _ = evaluate_step(spec_for(MODEL), str(work / "model"), str(work / "validation.parquet"), data.description, StoreOptions())
                if not evaluation.deploy:
                    entry[f"{lane.name}_outcome"] = "not deployed: failed its gates"
                    continue
                version = save_step(MODEL, str(work / "model"), evaluation.metrics, StoreOptions(), run_name).version
                entry[f"{lane.name}_outcome"] = self.roll_out(lane, version, run_name, work / "validation.parquet")

    def roll_out(self, lane: Lane, version: str, run_name: str, validation: Path) -> str:
        """Deploy, smoke-test and canary ``version`` on a lane with this rollout's faults; return the index status it ends in."""
        options = KServeOptions(**{**lane.options.__dict__, "run_name": run_name}) if lane.options else None
        storage_options = StoreOptions()
        burst = lane is self.kserve and (not self.tally.faults["api_503_burst_deploy"] or self.rng.random() < 0.3)
        if burst:
            for _ in range(3):  # a burst the client's retries ride out
                self.standin.inject("GET", 503)
        try:
            deploy_step(MODEL, version, lane.target_name, storage_options, READY_TIMEOUT_S, run_name, options)
        except ServingError as error:
            print(f"  {lane.name} {version}: deploy failed: {error}", flush=True)
        if burst and not any(fault[0] == "GET" for fault in self.standin.faults):
            self.tally.faults["api_503_burst_deploy"] += 1
        target, store, sample = serving_context(MODEL, lane.target_name, storage_options, options)
        status = target.status(MODEL)
        if status.candidate == version:
            sample = probe_sample_from(str(validation), MODEL)
            candidate_pid = self._candidate_pid(lane)
            blip = candidate_pid is not None and (not self.tally.faults["smoke_latency_blip"] or self.rng.random() < 0.2)
            with stuttering(candidate_pid) if blip else contextlib.nullcontext():
                report = smoke_test(target, store, MODEL, version, sample, max_p95_latency_ms=SMOKE_P95_MS)
            record_smoke_test(store, MODEL, report)
            if blip and not report.passed and "p95 latency" in report.rejection:
                self.tally.faults["smoke_latency_blip"] += 1
            if report.passed:
                self._canary(lane, target, store, version, sample, run_name)
            else:
                self._rollback(lane, target, store, version, report.rejection, run_name)
        with contextlib.suppress(ServingError):
            make_safe(target, store, MODEL, run_name=run_name, timeout_s=READY_TIMEOUT_S)
        entry = store.read_index(MODEL)["versions"].get(version, {})
        final = entry.get("status", "unknown")
        self.tally.rollouts.append(f"{lane.name} {version}: {final} {entry.get('rejected_reason') or entry.get('held_reason') or ''}".strip())
        return final

    def _candidate_pid(self, lane: Lane) -> int | None:
        """Return the local candidate server's pid (the stand-in's servers are not paused)."""
        if lane is not self.local:
            return None
        state = json.loads((lane.serving_home / f"{MODEL}.json").read_text())
        pid = (state.get("candidate") or {}).get("pid")
        return pid if pid and process_alive(pid) else None

    def _canary(self, lane: Lane, target, store, version: str, sample, run_name: str) -> None:
        """Run the canary with the 4xx client on the main URL, sometimes with Prometheus down (then it rolls back).

        The local lane's live metrics come from a real Prometheus scraping its servers; nothing scrapes the stand-in's,
        so the KServe lane reads Prometheus only when it is down.
        """
        outage = not self.tally.faults["prometheus_outage"] or self.rng.random() < 0.2
        providers = [ProbeProvider(sample, CANARY.probe_requests)]
        if outage or lane is self.local:
            prometheus_url = "http://127.0.0.1:9" if outage else self.prometheus.url
            providers.append(PrometheusProvider(PrometheusClient(prometheus_url, timeout_s=2.0), "30s"))
        with BadBodyClient(target.endpoints(MODEL).main) as bad, self._rollback_burst(lane):
            result = canary_promote(target, store, MODEL, version, CANARY, providers, run_name=run_name, timeout_s=READY_TIMEOUT_S)
        if bad.client_errors:
            self.tally.faults["client_4xx"] += 1
        if outage and any("PrometheusProvider failed" in row.detail for row in result.rows):
            self.tally.faults["prometheus_outage"] += 1

    def _rollback(self, lane: Lane, target, store, version: str, reason: str, run_name: str) -> None:
        """Roll back a candidate the smoke test rejected (on the KServe lane, through a burst of 503s)."""
        with self._rollback_burst(lane):
            rollback(target, store, MODEL, version, reason, run_name=run_name, timeout_s=READY_TIMEOUT_S)

    @contextlib.contextmanager
    def _rollback_burst(self, lane: Lane):
        """On the KServe lane, answer the rollback's first write (traffic back to 0 %) with three 503s; count it if it fired."""
        if lane is not self.kserve:
            yield
            return

        def takes_traffic_back(body: dict | None) -> bool:
            return bool(body) and (body.get("spec") or {}).get("predictor") == {"canaryTrafficPercent": 0}

        for _ in range(3):
            self.standin.inject("PATCH", 503, takes_traffic_back)
        try:
            yield
        finally:
            with self.standin.lock:
                pending = [fault for fault in self.standin.faults if fault[2] is takes_traffic_back]
                for fault in pending:
                    self.standin.faults.remove(fault)
            if not pending:
                self.tally.faults["api_503_burst_rollback"] += 1

    def _unit_error(self, message: str) -> None:
        """Count an input error that names a unit (percent, millicores)."""
        if any(word in message for word in ("percent", "millicore", "unit")):
            self.tally.unit_errors.append(message.splitlines()[0][:200])

    def check(self) -> None:
        """Run one hourly drift check on the local lane's store and act as action=submit would."""
        settings = MonitorSettings(DriftThresholds())
        request = IngestRequest(MODEL, source="file", file_path=str(self.window_path))
        entry = {"at": str(self.now)}
        self.tally.checks.append(entry)
        with self.local.active():
            try:
                result = monitor_step(MODEL, request, settings, StoreOptions(), None)
            except (ContractError, MonitorError) as error:
                entry["decision"] = f"input error: {error}"
                self._unit_error(str(error))
                return
            entry["decision"], entry["reason"] = result.decision.action, result.decision.reason
            if result.decision.action == RETRAIN:
                store = open_store(StoreOptions())
                record_trigger(store, MODEL, result.assessment.stable_version, result.decision.reason, f"a simulated retrain at {self.now}")
                self.retrain("drift", regime_start=result.regime_start)

    def run(self) -> dict:
        """Run the whole scenario hour by hour; return the JSON result."""
        from tests.servers import PrometheusServer

        self.prometheus = PrometheusServer(self.work / "prometheus", file_sd=self.local.serving_home / "prometheus-targets.json").start()
        clients = []
        try:
            self.publish_live()
            self.retrain("first")
            local_target = LocalTarget(self.local.serving_home, self.local.store_root)
            clients = [EngineClient(lambda: local_target.status(MODEL).url).start(),
                       EngineClient(lambda: self._kserve_url()).start()]
            for hour in range(1, self.days * 24 + 1):
                self.now = self.marks["start"] + pd.Timedelta(hours=hour)
                self.publish_live()
                if hour == 48:
                    self.plant_symlinked_version()
                if hour % 24 == 0:
                    with self.local.active(), contextlib.redirect_stdout(io.StringIO()):
                        repair(open_store(StoreOptions()), MODEL)
                if hour % (7 * 24) == 24:
                    self.retrain("weekly")
                if hour == 3 * 24 + 12:
                    self.tally.faults["synthetic_source_run"] += 1
                    self.retrain("misconfigured", source="synthetic", lanes=("kserve",))  # a cluster run left at source=synthetic
                self.check()
                if hour % 24 == 0:
                    print(f"day {hour // 24}: {self.tally.checks[-1].get('decision')}; rollouts so far: {len(self.tally.rollouts)}", flush=True)
        finally:
            for client in clients:
                client.stop()
            self.prometheus.stop()
            LocalTarget(self.local.serving_home, self.local.store_root).stop_all()
            self.standin.stop()
            storage.clock = storage.wall_clock
        return self.result(clients)

    def _kserve_url(self) -> str | None:
        """Return the KServe lane's main model URL, once the InferenceService exists."""
        isvc = self.standin.get("unattended", MODEL)
        url = (isvc or {}).get("status", {}).get("url")
        return f"{url}/v1/models/{MODEL}" if url else None

    def result(self, clients: list[EngineClient]) -> dict:
        """Return the JSON the README's table is made of."""
        stored = {lane.name: storage.FilesystemStore(lane.store_root).read_index(MODEL) for lane in (self.local, self.kserve)}
        # The local router names the version it sent each request to; the stand-in's names a revision, not a version.
        served_locally = clients[0].served - {""}
        shift_hour = SHIFT_DAY * 24
        decisions = [check.get("decision", "") for check in self.tally.checks]
        before_shift = decisions[: shift_hour - 1]
        learning = [entry for entry in self.tally.retrains if entry.get("post_shift_share", 0) >= 0.9]
        promoted = [entry for entry in learning if entry.get("local_outcome") == "stable"]
        first_learning_hour = self._hour(promoted[0]["at"]) if promoted else None
        settled = after_settling = None
        if first_learning_hour is not None:
            settled = next((number for number, decision in enumerate(decisions[first_learning_hour:], 1) if decision == "none"), None)
            after_settling = sum(decision in (RETRAIN, "held", NEEDS_HUMAN) for decision in decisions[first_learning_hour + (settled or 0):])
        for name, mark in (("percent_unit_day", "percent"), ("millicore_unit_day", "millicore")):
            day = slice(self._hour(str(self.marks[mark])), self._hour(str(self.marks[mark])) + 24)
            self.tally.faults[name] = sum(decision.startswith("input error") for decision in decisions[day])
        return {
            "days": self.days,
            "good_requests_sent": sum(client.sent for client in clients),
            "good_requests_failed": sum(client.failed for client in clients),
            "production_down_seconds": round(sum(client.down_s for client in clients), 2),
            "versions_served_from_outside_store": sorted(served_locally - set(stored["local"]["versions"])),
            "synthetic_versions_deployed": sum(1 for index in stored.values() for entry in index["versions"].values()
                                               if is_synthetic(entry.get("data_source", "")) and entry.get("status") in ("stable", "retired", "candidate")),
            "false_triggers_before_shift": sum(decision == RETRAIN for decision in before_shift),
            "retrains": len(self.tally.retrains),
            "retrains_learning_new_regime": len(learning),
            "checks_until_settled": settled,
            "drifted_checks_after_settling": after_settling,
            "needs_a_human": sum(decision == NEEDS_HUMAN for decision in decisions),
            "unit_errors_reported": len(self.tally.unit_errors),
            "faults_injected": self.tally.faults,
            "retrain_log": self.tally.retrains,
            "check_log": [{"hour": self._hour(check["at"]), "decision": check["decision"][:60], "reason": check.get("reason", "")[-160:]}
                          for check in self.tally.checks if check.get("decision") != "none"],
            "rollouts": self.tally.rollouts,
            "stable_at_end": {lane: index.get("stable") for lane, index in stored.items()},
        }

    def _hour(self, at: str) -> int:
        """Return the simulated hour of a timestamp."""
        return int((pd.Timestamp(at) - self.marks["start"]) / pd.Timedelta(hours=1))


def main(argv: list[str] | None = None) -> dict:
    """Run the simulation, print progress and a summary, and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", help="write the result here as JSON")
    args = parser.parse_args(argv)
    if shutil.which("prometheus") is None:
        raise SystemExit("error: the simulation starts a real Prometheus on 127.0.0.1, and no prometheus is on PATH: run tools/ensure-test-tools "
                         "(as root it installs Debian's prometheus package) or `apt-get install prometheus`")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        with contextlib.redirect_stderr(io.StringIO()):
            result = Simulation(Path(scratch), args.days, args.seed).run()
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    summary = {key: value for key, value in result.items() if key not in ("retrain_log", "rollouts", "check_log")}
    print(json.dumps(summary, indent=2))
    return write_results(args.json, result)


if __name__ == "__main__":
    main()
