"""The ``model-pipelines`` command line: compile the pipelines and run them locally."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from components.contract import MODEL_NAMES
from pipelines.local import DEFAULT_STATE_DIR, RunSummary, parse_params, run_local
from pipelines.retrain import DEFAULT_IMAGE, compile_pipelines


def _compile(args: argparse.Namespace) -> int:
    """Compile both pipelines and print where they went; return the exit code."""
    for path in compile_pipelines(args.output_dir, args.image):
        print(f"compiled {path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    """Run the chosen pipelines locally, print a summary table and return 0 only if every run succeeded."""
    if not args.local:
        print("error: only --local runs exist so far; add --local to run on this machine", file=sys.stderr)
        return 2
    models = list(MODEL_NAMES) if args.model == "all" else [args.model]
    try:
        arguments = {model: parse_params(args.param, model) for model in models}
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    state_dir = Path(args.state_dir)
    print(f"model store: {(state_dir / 'store').resolve()}  (change with --state-dir or MODEL_PIPELINES_HOME)")
    summaries = []
    for number, model in enumerate(models, start=1):
        print(f"\n==> [{number}/{len(models)}] {model}: ingest -> train -> evaluate -> save-to-storage", flush=True)
        summaries.append(run_local(model, arguments[model], state_dir))
    print(format_summary(summaries, state_dir))
    return 0 if all(summary.succeeded for summary in summaries) else 1


def format_summary(summaries: list[RunSummary], state_dir: Path) -> str:
    """Return the end-of-run table: model, result, new version, key metrics, decision and where things are."""
    lines = ["", "Summary", f"{'model':<22} {'result':<8} {'version':<8} {'metrics':<40} decision"]
    for summary in summaries:
        if not summary.succeeded:
            lines.append(f"{summary.model_name:<22} {'FAILED':<8} {'-':<8} {'-':<40} {summary.error}")
            continue
        keys = ("f1", "precision", "recall", "roc_auc") if "f1" in summary.metrics else ("mase_mean", "mase_cpu", "mase_memory")
        metrics = " ".join(f"{key}={summary.metrics[key]:.3f}" for key in keys if key in summary.metrics)
        version = ",".join(summary.new_versions) or "none"
        lines.append(f"{summary.model_name:<22} {'ok':<8} {version:<8} {metrics:<40} {summary.decision}")
    lines.append("")
    lines.append(f"store:   {(state_dir / 'store').resolve()}")
    for summary in summaries:
        for uri in summary.storage_uris:
            lines.append(f"  {summary.model_name}: {uri}")
        if summary.succeeded:
            lines.append(f"  {summary.model_name}: champion now {summary.champion or 'none'}")
    lines.append(f"reports: {(state_dir / 'runs').resolve()}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for every verb."""
    parser = argparse.ArgumentParser(prog="model-pipelines", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)

    compile_verb = verbs.add_parser("compile", help="compile both pipelines to YAML for Data Science Pipelines")
    compile_verb.add_argument("--output-dir", default="compiled", help="directory for the YAML files (default: compiled)")
    compile_verb.add_argument("--image", default=DEFAULT_IMAGE, help=f"component image (default: {DEFAULT_IMAGE})")
    compile_verb.set_defaults(handler=_compile)

    run_verb = verbs.add_parser("run", help="run a retraining pipeline")
    run_verb.add_argument("model", choices=[*MODEL_NAMES, "all"])
    run_verb.add_argument("--local", action="store_true", help="run on this machine with kfp.local (no cluster)")
    run_verb.add_argument("--param", action="append", default=[], metavar="K=V", help="set a pipeline parameter; repeatable")
    run_verb.add_argument(
        "--state-dir", default=str(DEFAULT_STATE_DIR), help=f"local store and run outputs (default: {DEFAULT_STATE_DIR})"
    )
    run_verb.set_defaults(handler=_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit code."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
