"""Wall time of a local kfp.local run against calling the same step functions in one process, as a ratio.

    python -m benchmarks.local_run [--model all] [--repeats 2] [--json OUT]

Both sides do the same work on the same synthetic data: ingest, train, evaluate against the champion, save.
The ratio is what kfp.local's orchestration (a subprocess per step, artifacts on disk) costs on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from components.contract import ANOMALY_DETECTOR, MODEL_NAMES
from components.evaluate import Gates
from components.ingest import IngestRequest, ingest
from components.train import DetectorParams, ForecasterParams, save_model, train_anomaly_detector, train_predictive_analytics
from components.workflow import STORE_ROOT_ENV, evaluate_step, save_step
from pipelines.local import run_local


def direct_run(model_name: str, state_dir: Path) -> None:
    """Run ingest, train, evaluate and save by calling the step functions in this process."""
    os.environ[STORE_ROOT_ENV] = str(state_dir / "store")
    work = state_dir / "direct"
    work.mkdir(parents=True, exist_ok=True)
    data = ingest(IngestRequest(model_name))
    data.validation.to_parquet(work / "validation.parquet")
    if model_name == ANOMALY_DETECTOR:
        trained = train_anomaly_detector(data.train, DetectorParams())
    else:
        trained = train_predictive_analytics(data.train, ForecasterParams())
    save_model(trained, work / "model")
    (work / "model" / "training.json").write_text(
        json.dumps({"parameters": trained.parameters, "data_fingerprint": trained.data_fingerprint, "training_rows": trained.training_rows})
    )
    evaluation, _ = evaluate_step(model_name, str(work / "model"), str(work / "validation.parquet"), data.description, Gates())
    if evaluation.deploy:
        save_step(model_name, str(work / "model"), evaluation.metrics, "model-storage-pvc", "benchmark")


def timed(function, *args) -> float:
    """Return the seconds one call of ``function(*args)`` takes, its output silenced."""
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        function(*args)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    """Measure both ways for each model, alternating them, and print and return the medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=[*MODEL_NAMES, "all"], default="all")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args(argv)
    models = list(MODEL_NAMES) if args.model == "all" else [args.model]
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for model in models:
            local_times, direct_times = [], []
            for repeat in range(args.repeats):
                local_times.append(timed(run_local, model, {}, Path(scratch) / f"local-{repeat}"))
                direct_times.append(timed(direct_run, model, Path(scratch) / f"direct-{repeat}"))
            local_s, direct_s = statistics.median(local_times), statistics.median(direct_times)
            results[model] = {"local_run_s": round(local_s, 3), "direct_s": round(direct_s, 3), "ratio": round(local_s / direct_s, 2)}
            print(f"{model:<22} kfp.local {local_s:6.2f} s   direct {direct_s:6.2f} s   ratio {local_s / direct_s:5.2f}x", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
