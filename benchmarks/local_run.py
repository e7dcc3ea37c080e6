"""Wall time of a local kfp.local run against calling the same step functions in one process, as a ratio.

    python -m benchmarks.local_run [--model all] [--repeats 2] [--json OUT]

Both sides do the same work on the same synthetic data, in a fresh state directory: ingest, train, evaluate,
save, deploy (a first deployment, so it goes straight to stable), smoke-test and canary (nothing to compare on a
first deployment), then serving is stopped. A run that does not end with v1 serving is an error, not a timing.
The ratio is what kfp.local's orchestration (a subprocess per step, each importing what it uses, artifacts on
disk) costs on this machine; the direct side runs in this process, whose imports are already paid.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

from components.model.contract import MODEL_NAMES
from components.data.ingest import IngestRequest, ingest
from components.model.spec import spec_for
from components.model.train import save_trained, train_model
from components.release.rollout import CanarySpec, ProbeProvider, canary_promote, smoke_test
from components.kfp.workflow import (
    SERVING_HOME_ENV,
    STORE_ROOT_ENV,
    StoreOptions,
    deploy_step,
    evaluate_step,
    save_step,
    serving_context,
)
from pipelines.local import local_defaults, local_target, parse_params, run_local
from benchmarks import write_results

CANARY = CanarySpec(interval_s=0.3, probe_requests=10)
STORE = StoreOptions()


def direct_run(model_name: str, state_dir: Path) -> None:
    """Run every step of the retraining DAG by calling the step functions in this process."""
    os.environ[STORE_ROOT_ENV] = str(state_dir / "store")
    os.environ[SERVING_HOME_ENV] = str(state_dir / "serving")
    work = state_dir / "direct"
    work.mkdir(parents=True, exist_ok=True)
    data = ingest(IngestRequest(model_name))
    data.validation.to_parquet(work / "validation.parquet")
    spec = spec_for(model_name)
    save_trained(train_model(spec, data.train), work / "model")
    evaluation, _ = evaluate_step(spec, str(work / "model"), str(work / "validation.parquet"), data.description, STORE)
    if not evaluation.deploy:
        return
    version = save_step(model_name, str(work / "model"), evaluation.metrics, STORE, "benchmark").version
    deploy_step(model_name, version, "local", STORE, 120.0, "benchmark")
    target, store, sample = serving_context(model_name, "local", STORE, validation_path=str(work / "validation.parquet"))
    if smoke_test(target, store, model_name, version, sample, max_p95_latency_ms=CANARY.max_p95_latency_ms).passed:
        canary_promote(target, store, model_name, version, CANARY, [ProbeProvider(sample, CANARY.probe_requests)], run_name="benchmark")


def local_run(model_name: str, state_dir: Path) -> None:
    """Run the retraining pipeline with kfp.local, serving locally as the CLI does, with ``direct_run``'s canary settings."""
    arguments = parse_params([*local_defaults(model_name), f"canary_interval_s={CANARY.interval_s}", f"probe_requests={CANARY.probe_requests}"], model_name)
    summary = run_local(model_name, arguments, state_dir)
    if not summary.succeeded:
        raise RuntimeError(f"the kfp.local run of {model_name} failed ({summary.error}); see {summary.log}")


def timed(function, model_name: str, state_dir: Path) -> tuple[float, str]:
    """Return the seconds one run takes (its output silenced) and the version it serves; fail unless that is v1, stable."""
    started = time.perf_counter()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            function(model_name, state_dir)
        seconds = time.perf_counter() - started
        stable = local_target(state_dir).status(model_name).stable
        if stable != "v1":
            raise RuntimeError(f"{function.__name__} of {model_name} ended with {stable or 'nothing'} serving, not v1: it did not run the whole DAG")
        return seconds, stable
    finally:
        local_target(state_dir).stop_all()


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
            local_times, direct_times, served = [], [], {}
            for repeat in range(args.repeats):
                seconds, served["local_run"] = timed(local_run, model, Path(scratch) / f"local-{repeat}")
                local_times.append(seconds)
                seconds, served["direct"] = timed(direct_run, model, Path(scratch) / f"direct-{repeat}")
                direct_times.append(seconds)
            local_s, direct_s = statistics.median(local_times), statistics.median(direct_times)
            results[model] = {"local_run_s": round(local_s, 3), "direct_s": round(direct_s, 3), "ratio": round(local_s / direct_s, 2),
                              "runs": args.repeats, "served": served}
            print(f"{model:<22} kfp.local {local_s:6.2f} s   direct {direct_s:6.2f} s   ratio {local_s / direct_s:5.2f}x", flush=True)
    return write_results(args.json, results)


if __name__ == "__main__":
    main()
