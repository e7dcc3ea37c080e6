"""Model quality benchmarks: the pipeline's default recipes against the upstream recipes on real server data.

    python -m benchmarks anomaly  --data-dir ../shared/datasets/smd [--machines machine-1-2 ...] --json OUT
    python -m benchmarks nab      --data-dir ../shared/datasets/nab --json OUT
    python -m benchmarks fit-scaling --data-dir ../shared/datasets/smd [--machine machine-1-1] [--repeats 3] --json OUT
    python -m benchmarks frontier --smd-dir ../shared/datasets/smd --nab-dir ../shared/datasets/nab [--rates 0.005,0.01,0.02] --json OUT
    python -m benchmarks forecast --data-dir ../shared/datasets/datacenter-traces --json OUT
    python -m benchmarks drift    [--data-dir ../shared/datasets/datacenter-traces] --json OUT
    python -m benchmarks unattended [--days 14] [--seed 7] [--json OUT]

Each verb prints progress and a summary, writes its JSON to ``--json`` and a Markdown table plus PNG plots to
``--results-dir`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Callable

from benchmarks import drift as drift_benchmark
from benchmarks import frontier as frontier_benchmark
from benchmarks import quality
from benchmarks import quality_report as report
from components.model.contract import ContractError
from benchmarks import write_results

RESULTS_DIR = Path(__file__).parent / "results"
DEFAULT_TRACES = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "datacenter-traces"


def anomaly(args: argparse.Namespace) -> dict:
    """Score both detector recipes on every SMD machine and return the fixed-shape JSON report."""
    machines = args.machines or quality.smd_machines(args.data_dir)
    per_machine = {}
    for number, machine in enumerate(machines, 1):
        scores = per_machine[machine] = quality.benchmark_machine(args.data_dir, machine)
        print(f"[{number}/{len(machines)}] {machine}: " + ", ".join(
            f"{recipe} F1 {scores[recipe]['f1']:.3f} ({scores[recipe]['predict_ms']:.2f} ms)" for recipe in quality.RECIPES), flush=True)
    result = quality.by_recipe(per_machine)
    _write_detection(args, "anomaly", "Anomaly detector on SMD (point-wise, threshold from training data only)", result, report.DETECTION_FIELDS, "f1")
    return result


def nab(args: argparse.Namespace) -> dict:
    """Score both detector recipes on every labelled NAB series and return the fixed-shape JSON report."""
    series = quality.nab_series(args.data_dir)
    per_series = {}
    for number, (key, windows) in enumerate(series.items(), 1):
        name = Path(key).stem
        scores = per_series[name] = quality.benchmark_series(args.data_dir, key, windows)
        print(f"[{number}/{len(series)}] {name}: " + ", ".join(
            f"{recipe} {scores[recipe]['windows_detected']}/{scores[recipe]['windows']} windows, "
            f"{scores[recipe]['false_positives']} false positives" for recipe in quality.RECIPES), flush=True)
    result = quality.by_recipe(per_series)
    _write_detection(args, "nab", "Anomaly detector on NAB realAWSCloudwatch (after the 15 % probation period)", result, report.NAB_FIELDS, "windows_detected")
    return result


def fit_scaling(args: argparse.Namespace) -> dict:
    """Time both detector recipes' fits on growing shares of one SMD machine's training rows and return the JSON report."""
    machine = args.machine or quality.smd_machines(args.data_dir)[0]
    train_features, _, _ = quality.smd_split(args.data_dir, machine)
    result = quality.fit_scaling(train_features, repeats=args.repeats)
    for recipe, sizes in result.items():
        print(f"{machine} {recipe}: " + ", ".join(f"{size['rows']:,} rows {size['fit_s']:.2f} s (cost per row x{size['cost_per_row_ratio']:.2f})"
                                                  for size in sizes.values()), flush=True)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "fit-scaling.md").write_text(report.scaling_markdown(_command(), machine, result, args.repeats))
    return {"machine": machine, "recipes": result}


def frontier(args: argparse.Namespace) -> dict:
    """Score both recipes (and any --candidates) at every calibration rate on SMD and NAB, each fitted once per series; return the JSON report."""
    machines = args.machines or quality.smd_machines(args.smd_dir)
    series = quality.nab_series(args.nab_dir)
    rates = frontier_benchmark.evaluated_rates(args.rates)
    recipes = (*frontier_benchmark.BASE_RECIPES, *args.candidates)
    smd, nab = {}, {}
    for number, machine in enumerate(machines, 1):
        points = smd[machine] = frontier_benchmark.machine_points(args.smd_dir, machine, rates, recipes)
        print(f"[SMD {number}/{len(machines)}] {machine}: F1 by rate, then in hindsight " + "; ".join(
            f"{recipe} " + " ".join(f"{scores['f1']:.3f}" for scores in points[recipe]["by_rate"].values())
            + f" ({points[recipe]['hindsight']['f1']:.3f})" for recipe in recipes), flush=True)
    for number, (key, windows) in enumerate(series.items(), 1):
        name = Path(key).stem
        points = nab[name] = frontier_benchmark.series_points(args.nab_dir, key, windows, rates, recipes)
        print(f"[NAB {number}/{len(series)}] {name}: windows/false positives by rate, then in hindsight " + "; ".join(
            f"{recipe} " + " ".join(f"{scores['windows_detected']}/{scores['false_positives']}" for scores in points[recipe]["by_rate"].values())
            + f" ({points[recipe]['hindsight']['false_positives']})" for recipe in recipes), flush=True)
    result = frontier_benchmark.frontier_report(smd, nab, rates)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "frontier.md").write_text(report.frontier_markdown(_command(), result))
    report.plot_frontier(result, args.results_dir / "frontier.png")
    return result


def forecast(args: argparse.Namespace) -> dict:
    """Score the forecaster on each datacenter trace found and return the fixed-shape JSON report."""
    result: dict[str, dict] = {}
    bounds: dict[str, dict[str, float]] = {}
    available = [name for name, (relative, _) in quality.TRACES.items() if (args.data_dir / relative).is_file()]
    if not available:
        raise ContractError(f"{args.data_dir}: no trace found; expected one of {[relative for relative, _ in quality.TRACES.values()]}")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    for dataset in available:
        outputs = list(quality.TRACES[dataset][1])
        run = quality.benchmark_trace(quality.read_trace(args.data_dir, dataset), outputs)
        result[dataset], bounds[dataset] = run.scores, run.linear_bound
        print(f"{dataset}: " + ", ".join(f"{output} MASE {scores['mase_persistence']:.3f}" for output, scores in result[dataset].items()), flush=True)
        steps_per_hour = quality.HORIZON_SECONDS // quality.TRACE_STEP_SECONDS
        report.plot_forecast(dataset, run.curves, outputs, args.results_dir / f"forecast-{dataset}.png", steps_per_hour)
    (args.results_dir / "forecast.md").write_text(report.forecast_markdown(_command(), result, bounds))
    return result


def drift(args: argparse.Namespace) -> dict:
    """Measure the drift monitor's false triggers and detection delays against the upstream rule; return the JSON report."""
    result = drift_benchmark.run(args.data_dir if args.data_dir.is_dir() else None, report=lambda line: print(line, flush=True))
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "drift.md").write_text(drift_benchmark.markdown(result, _command()))
    return result


def _write_detection(args: argparse.Namespace, verb: str, title: str, result: dict, fields: tuple[str, ...], plotted: str) -> None:
    """Write the Markdown table and the bar chart of one detection verb."""
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{verb}.md").write_text(report.detection_markdown(title, _command(), result, fields))
    report.plot_recipes(result, plotted, args.results_dir / f"{verb}-{plotted}.png", title)


def _argument(parse: Callable[[str], object]) -> Callable[[str], object]:
    """Return ``parse`` as an argparse type: its ValueError becomes the argparse error, which names the bad value and the fix."""
    def parsed(text: str) -> object:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return parsed


def _repeats(text: str) -> int:
    """Return a fit-scaling repeat count from 1 to 20; raise ValueError naming the bad value and the range."""
    if not text.isdigit() or not 1 <= int(text) <= 20:
        raise ValueError(f"{text!r} is not a whole number from 1 to 20: give how many fits per size to take the median of, e.g. --repeats 3")
    return int(text)


def _command() -> str:
    """Return the command line that reproduces this run."""
    return "python -m benchmarks " + shlex.join(sys.argv[1:])


def summary(verb: str, result: dict) -> str:
    """Return the closing summary line of a run."""
    if verb == "drift":
        synthetic = next(iter(result["false_triggers"].values()))
        return "stationary synthetic days (first seed): " + ", ".join(f"{model} {counts['project']} triggers (upstream {counts['upstream_ks_p05']}) in {counts['checks']} checks"
                                                         for model, counts in synthetic.items())
    if verb == "frontier":
        return frontier_benchmark.summary(result)
    if verb == "fit-scaling":
        return "fit cost per row on all rows over a quarter of them (1.00: linear): " + ", ".join(
            f"{recipe} {list(sizes.values())[-1]['cost_per_row_ratio']:.2f}" for recipe, sizes in result["recipes"].items())
    if verb == "forecast":
        return "; ".join(f"{dataset} mean MASE vs persistence {sum(o['mase_persistence'] for o in outputs.values()) / len(outputs):.3f}"
                         for dataset, outputs in result.items())
    field = "f1" if verb == "anomaly" else "windows_detected"
    project, upstream = result["project"]["mean"], result["upstream"]["mean"]
    return (f"mean {field}: project {project[field]:.3f}, upstream {upstream[field]:.3f}; single-row predict "
            f"{project['predict_ms']:.2f} ms vs {upstream['predict_ms']:.2f} ms ({project['predict_ms'] / upstream['predict_ms']:.2f}x)")


def main(argv: list[str] | None = None) -> int:
    """Run one benchmark verb and return the exit code (2 on bad input, with the reason on stderr)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    for verb, help_text in (("anomaly", "SMD-format data: train/, test/, test_label/"),
                            ("nab", "NAB-format data: data/<group>/<series>.csv, labels/combined_windows.json"),
                            ("forecast", "datacenter traces: alibaba2018/ and google2019/ CSVs")):
        command = verbs.add_parser(verb, help=help_text)
        command.add_argument("--data-dir", type=Path, required=True)
        command.add_argument("--json", type=Path, required=True, help="where to write the JSON results")
        command.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="Markdown and PNG output (default %(default)s)")
        if verb == "anomaly":
            command.add_argument("--machines", nargs="+", help="machine names (default: every machine under train/)")
    command = verbs.add_parser("fit-scaling", help="fit time of both detector recipes on a quarter, half and all of one SMD machine's training rows")
    command.add_argument("--data-dir", type=Path, required=True, help="SMD-format data: train/, test/, test_label/")
    command.add_argument("--machine", help="SMD machine name (default: the first under train/)")
    command.add_argument("--repeats", type=_argument(_repeats), default=3, help="fits per size, of which the median counts (1 to 20, default %(default)s)")
    command.add_argument("--json", type=Path, required=True, help="where to write the JSON results")
    command.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="Markdown output (default %(default)s)")
    command = verbs.add_parser("frontier", help="SMD F1 against NAB false positives per training-only calibration rate, both recipes")
    command.add_argument("--smd-dir", type=Path, required=True, help="SMD-format data: train/, test/, test_label/")
    command.add_argument("--nab-dir", type=Path, required=True, help="NAB-format data: data/<group>/<series>.csv, labels/combined_windows.json")
    command.add_argument("--machines", nargs="+", help="SMD machine names (default: every machine under train/)")
    command.add_argument("--rates", type=_argument(frontier_benchmark.parse_rates), default=",".join(map(str, frontier_benchmark.DEFAULT_RATES)),
                         help="comma-separated calibration rates, the same for every series; each recipe's default is added "
                              "(default %(default)s)")
    command.add_argument("--candidates", type=_argument(frontier_benchmark.parse_candidates), default=(),
                         help="comma-separated recipes to score beside the project's and upstream's: "
                              f"{', '.join(frontier_benchmark.CANDIDATES)}")
    command.add_argument("--json", type=Path, required=True, help="where to write the JSON results")
    command.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="Markdown and PNG output (default %(default)s)")
    command = verbs.add_parser("drift", help="drift monitor: false triggers and detection delays (synthetic, plus the traces if found)")
    command.add_argument("--data-dir", type=Path, default=DEFAULT_TRACES, help="datacenter traces, if present (default %(default)s)")
    command.add_argument("--json", type=Path, required=True, help="where to write the JSON results")
    command.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="Markdown output (default %(default)s)")
    command = verbs.add_parser("unattended", help="14 days of unattended operation, time compressed, with faults (benchmarks/unattended.py)")
    command.add_argument("--days", type=int, default=14)
    command.add_argument("--seed", type=int, default=7)
    command.add_argument("--json", type=Path, help="where to write the JSON results")
    args = parser.parse_args(argv)
    if args.verb == "unattended":
        from benchmarks import unattended

        unattended.main(["--days", str(args.days), "--seed", str(args.seed), *(["--json", str(args.json)] if args.json else [])])
        return 0
    try:
        result = {"anomaly": anomaly, "nab": nab, "fit-scaling": fit_scaling, "frontier": frontier, "forecast": forecast,
                  "drift": drift}[args.verb](args)
    except (ContractError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_results(args.json, result)
    print(f"{summary(args.verb, result)}\nJSON: {args.json}; Markdown and plots: {args.results_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
