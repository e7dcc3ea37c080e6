"""Latency of the served anomaly detector against in-process predict, measured in the same run, as ratios.

    python -m benchmarks.serving [--requests 200] [--json OUT]

Trains the default detector on synthetic data, stores it and serves it with the local target (the real KServe
model server behind the traffic router), then times single-row and 100-row requests on the main URL (what the
coordination engine calls), on the version's own server (no router), and ``model.predict`` in this process.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import joblib
import numpy as np
import requests

from components.model.contract import ANOMALY_DETECTOR, engineer_features
from components.data.ingest import IngestRequest, ingest
from components.serving.local import LocalTarget
from components.store.filesystem import FilesystemStore
from components.model.spec import spec_for
from components.model.train import train_model
from benchmarks import write_results


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    """Return p50 and p99 of millisecond samples, rounded."""
    return {"p50_ms": round(float(np.percentile(samples_ms, 50)), 3), "p99_ms": round(float(np.percentile(samples_ms, 99)), 3)}


def time_calls(call, count: int) -> list[float]:
    """Return the milliseconds each of ``count`` calls takes, after five warm-up calls."""
    for _ in range(5):
        call()
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        timings.append((time.perf_counter() - started) * 1000.0)
    return timings


def main(argv: list[str] | None = None) -> dict:
    """Serve the detector, time every path for 1 and 100 instances, print and return the table and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args(argv)
    data = ingest(IngestRequest(ANOMALY_DETECTOR, days=4))
    model = train_model(spec_for(ANOMALY_DETECTOR), data.train).estimator
    features = engineer_features(data.validation, ANOMALY_DETECTOR).to_numpy()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        store = FilesystemStore(Path(scratch) / "store")
        joblib.dump(model, Path(scratch) / "model.pkl")
        stored = store.save_version(ANOMALY_DETECTOR, Path(scratch) / "model.pkl", {"run_name": "benchmark"})
        target = LocalTarget(Path(scratch) / "serving", Path(scratch) / "store")
        try:
            target.deploy(ANOMALY_DETECTOR, stored.version, stored.storage_uri, stored.sha256, 120.0)
            endpoints = target.endpoints(ANOMALY_DETECTOR)
            session = requests.Session()
            for batch in (1, 100):
                rows = features[:batch]
                body = {"instances": rows.tolist()}
                in_process = percentiles(time_calls(lambda: model.predict(rows), args.requests))
                entry = {"in_process": in_process}
                for path, url in (("main_url", endpoints.main), ("own_server", endpoints.stable)):
                    answer = session.post(f"{url}:predict", json=body, timeout=30)
                    answer.raise_for_status()
                    served_match = answer.json()["predictions"] == model.predict(rows).tolist()
                    measured = percentiles(time_calls(lambda url=url: session.post(f"{url}:predict", json=body, timeout=30).raise_for_status(), args.requests))
                    measured.update({f"{key}_ratio": round(measured[key] / in_process[key], 2) for key in ("p50_ms", "p99_ms")})
                    measured.update(requests=args.requests, predictions_match_in_process=served_match)
                    if path == "main_url":
                        measured["served_version"] = answer.headers.get("x-served-version", "")
                    entry[path] = measured
                results[f"{batch}_instances"] = entry
        finally:
            target.stop_all()
    for name, entry in results.items():
        for path, measured in entry.items():
            ratios = f"   x{measured['p50_ms_ratio']} / x{measured['p99_ms_ratio']} in-process" if "p50_ms_ratio" in measured else ""
            print(f"{name:<14} {path:<11} p50 {measured['p50_ms']:8.3f} ms   p99 {measured['p99_ms']:8.3f} ms{ratios}", flush=True)
    return write_results(args.json, results)


if __name__ == "__main__":
    main()
