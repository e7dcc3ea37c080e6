"""Load on the main URL during a canary that is rolled back, with bad clients mixed in.

    python -m benchmarks.load [--clients 8] [--seconds 30] [--json OUT]

Serves a trained detector as stable with the local target, then rolls out a candidate that flags everything (so the
canary rolls it back) while ``--clients`` threads call the main URL for ``--seconds``: each sends good requests,
and every fifth request is a bad one (null values, strings, a wrong width, an oversized body). It reports the
good requests sent and failed (the failed count must be 0), their p50 and p99 latency, the bad requests and the
codes they got, and the resident memory of the router and the servers before and after.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import joblib
import numpy as np
import requests
from sklearn.dummy import DummyClassifier

from benchmarks.serving import percentiles
from components.model.contract import ANOMALY_DETECTOR, fallback_instance
from components.data.ingest import IngestRequest, ingest
from components.store.filesystem import FilesystemStore
from components.model.spec import spec_for
from components.model.train import train_model
from benchmarks import write_results

CLI = str(Path(sys.executable).with_name("model-pipelines"))


def bad_bodies() -> list[bytes]:
    """Return the bad requests the clients interleave (each must get a 4xx, never break a good request)."""
    row = fallback_instance()
    return [json.dumps({"instances": [[None] + row[1:]]}).encode(), json.dumps({"instances": [["0.5"] + row[1:]]}).encode(),
            json.dumps({"instances": [row[:-3]]}).encode(), b'{"instances": [[1e308' + b", 0.1" * (len(row) - 1) + b"]]}",
            b"x" * (5 * 1024 * 1024)]


def rss_mb(state_file: Path) -> dict[str, float]:
    """Return the resident memory (MiB) of each process the serving state records."""
    state = json.loads(state_file.read_text())
    found = {}
    for role in ("router", "stable", "candidate"):
        entry = state.get(role) or {}
        try:
            status = Path(f"/proc/{entry['pid']}/status").read_text()
        except (KeyError, OSError):
            continue
        kilobytes = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        found[f"{role} {entry.get('version', '')}".strip()] = round(kilobytes / 1024, 1)
    return found


def save(store: FilesystemStore, estimator, work: Path) -> str:
    """Store an estimator as the next version; return it."""
    path = work / "model.pkl"
    joblib.dump(estimator, path)
    return store.save_version(ANOMALY_DETECTOR, path, {"run_name": "load-benchmark"}).version


def run(clients: int, seconds: float) -> dict:
    """Run the load during a rolled-back canary and return the figures."""
    with tempfile.TemporaryDirectory() as scratch:
        state = Path(scratch)
        store = FilesystemStore(state / "store")
        data = ingest(IngestRequest(ANOMALY_DETECTOR, days=2, seed=11))
        stable = save(store, train_model(spec_for(ANOMALY_DETECTOR), data.train).estimator, state)
        fast = ("--local", "--state-dir", str(state), "--param", "days=1", "--param", "probe_requests=10")
        try:
            subprocess.run([CLI, "rollout", ANOMALY_DETECTOR, "--version", stable, *fast], check=True, capture_output=True)
            state_file = state / "serving" / f"{ANOMALY_DETECTOR}.json"
            url = f"http://127.0.0.1:{json.loads(state_file.read_text())['router']['port']}/v1/models/{ANOMALY_DETECTOR}:predict"
            alarmist = DummyClassifier(strategy="constant", constant=-1).fit(np.zeros((2, len(fallback_instance()))), [-1, 1])
            candidate = save(store, alarmist, state)
            before = rss_mb(state_file)
            good_ms, failed, bad_codes, stop = [], [], {}, threading.Event()
            lock = threading.Lock()

            def client(number: int) -> None:
                session, bodies, count = requests.Session(), bad_bodies(), 0
                good = json.dumps({"instances": [fallback_instance()]}).encode()
                while not stop.is_set():
                    count += 1
                    headers = {"Content-Type": "application/json"}
                    if count % 5 == 0:
                        try:
                            code = session.post(url, data=bodies[(count // 5 + number) % len(bodies)], headers=headers, timeout=30).status_code
                        except requests.RequestException as error:
                            code = type(error).__name__
                        with lock:
                            bad_codes[str(code)] = bad_codes.get(str(code), 0) + 1
                        continue
                    started = time.perf_counter()
                    try:
                        answer = session.post(url, data=good, headers=headers, timeout=30)
                        ok = answer.status_code == 200 and len(answer.json()["predictions"]) == 1
                    except (requests.RequestException, ValueError, KeyError):
                        ok = False
                    with lock:
                        (good_ms if ok else failed).append((time.perf_counter() - started) * 1000)

            threads = [threading.Thread(target=client, args=(number,)) for number in range(clients)]
            for thread in threads:
                thread.start()
            rollout = subprocess.Popen([CLI, "rollout", ANOMALY_DETECTOR, "--version", candidate, *fast, "--param", "canary_interval_s=2"],
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            time.sleep(seconds)
            output, _ = rollout.communicate(timeout=600)
            stop.set()
            for thread in threads:
                thread.join(60)
            after = rss_mb(state_file)
            index = store.read_index(ANOMALY_DETECTOR)
        finally:
            subprocess.run([CLI, "serve", "stop", "--state-dir", str(state)], capture_output=True)
    return {
        "clients": clients, "seconds": seconds, "good_requests": len(good_ms) + len(failed), "failed_good_requests": len(failed),
        **percentiles(good_ms or [0.0]), "bad_requests": sum(bad_codes.values()), "bad_request_codes": bad_codes,
        "candidate": candidate, "candidate_status": index["versions"][candidate]["status"],
        "rejected_reason": index["versions"][candidate].get("rejected_reason", ""), "stable_after": index["stable"],
        "rollout_exit_code": rollout.returncode, "rss_mb_before": before, "rss_mb_after": after,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the load benchmark, print the figures and optionally write them as JSON; return 1 if a good request failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    figures = run(args.clients, args.seconds)
    print(json.dumps(figures, indent=2))
    write_results(args.json, figures)
    return 1 if figures["failed_good_requests"] else 0


if __name__ == "__main__":
    sys.exit(main())
