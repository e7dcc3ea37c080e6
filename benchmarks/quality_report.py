"""Markdown tables and PNG plots for the model quality benchmarks (written under ``benchmarks/results/``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from benchmarks.frontier import CANDIDATES, points_meeting_every_target  # noqa: E402
from components.model.contract import PREDICTIVE_ANALYTICS, schema_for  # noqa: E402

DETECTION_FIELDS = ("precision", "recall", "f1", "pa_f1", "fit_s", "predict_ms")
COUNT_FIELDS = ("windows_detected", "windows", "false_positives")
NAB_FIELDS = (*COUNT_FIELDS, "fit_s", "predict_ms")
PLOTTED_HOURS = 48


def scaling_markdown(command: str, machine: str, result: dict[str, dict], repeats: int) -> str:
    """Return a Markdown table of each recipe's fit time per training-row count and its cost per row over the smallest count's."""
    lines = [f"# Detector fit time against training rows ({machine})", "", f"Reproduce: `{command}`", "",
             f"Median of {repeats} fit(s) on the first quarter, half and all of the machine's training rows. The last column is the fit time per",
             "row over the smallest size's, in the same run: 1.00 is linear in rows, 2.00 twice the cost per row.", "",
             "| recipe | rows | fit s | cost per row / smallest size's |", "|---|---|---|---|"]
    for recipe, sizes in result.items():
        lines += [f"| {recipe} | {size['rows']:,} | {size['fit_s']:.3f} | {size['cost_per_row_ratio']:.2f} |" for size in sizes.values()]
    return "\n".join(lines) + "\n"


def detection_markdown(title: str, command: str, report: dict, fields: tuple[str, ...]) -> str:
    """Return a Markdown table with one row per item and recipe, then the means, for anomaly or nab results."""
    lines = [f"# {title}", "", f"Reproduce: `{command}`", "", "| item | recipe | " + " | ".join(fields) + " |",
             "|---|---|" + "---|" * len(fields)]
    items = next(iter(report.values()))["items"]
    for item in items:
        for recipe, result in report.items():
            lines.append(f"| {item} | {recipe} | " + " | ".join(_cell(result["items"][item][field], field) for field in fields) + " |")
    for recipe, result in report.items():
        lines.append(f"| **mean** | **{recipe}** | " + " | ".join(f"**{_cell(result['mean'][field], 'mean')}**" for field in fields) + " |")
    return "\n".join(lines) + "\n"


def forecast_markdown(command: str, report: dict, linear_bound: dict[str, dict[str, float]]) -> str:
    """Return a Markdown table of MAE and MASE per dataset and output, with the linear bound, for the forecast results."""
    lines = ["# Forecaster at a 1-hour horizon", "", f"Reproduce: `{command}`", "",
             "MASE < 1 beats the baseline; the upstream recipe (an identity map) is persistence, MASE 1.000 by definition.",
             "The hindsight column is a least-squares Ridge on the change fitted on the scored period itself: roughly",
             "the best a linear model of the 5 current values the contract sends can reach there (it minimises squared,",
             "not absolute, error, so a forecaster can land slightly below it).", "",
             "| dataset | output | MAE | MASE vs persistence | MASE vs seasonal-naive (1 day) | hindsight linear fit (MASE vs persistence) |",
             "|---|---|---|---|---|---|"]
    for dataset, outputs in report.items():
        for output, result in outputs.items():
            lines.append(f"| {dataset} | {output} | {result['mae']:.4f} | {result['mase_persistence']:.3f} | "
                         f"{result['mase_seasonal']:.3f} | {linear_bound[dataset][output]:.3f} |")
    return "\n".join(lines) + "\n"


def _cell(value: float, field: str) -> str:
    """Return a table cell: counts of one series as integers, everything else (means included) with three decimals."""
    return str(int(value)) if field in COUNT_FIELDS and float(value).is_integer() else f"{value:.3f}"


def plot_recipes(report: dict, field: str, path: Path, title: str) -> None:
    """Write a grouped bar chart of ``field`` per item, one bar per recipe."""
    items = list(next(iter(report.values()))["items"])
    positions = np.arange(len(items))
    width = 0.8 / len(report)
    figure, axes = plt.subplots(figsize=(max(6.0, 0.6 * len(items)), 3.5))
    for offset, (recipe, result) in enumerate(report.items()):
        values = [result["items"][item][field] for item in items]
        axes.bar(positions + offset * width, values, width, label=f"{recipe} (mean {result['mean'][field]:.3f})")
    axes.set_xticks(positions + width * (len(report) - 1) / 2, items, rotation=60, ha="right", fontsize=7)
    axes.set_ylabel(field)
    axes.set_title(title)
    axes.legend(fontsize=8)
    _save(figure, path)


def plot_forecast(dataset: str, curves: dict[str, np.ndarray], outputs: list[str], path: Path, steps_per_hour: int) -> None:
    """Write the first ``PLOTTED_HOURS`` of the test period: actual, forecast and both baselines, per output."""
    shown = slice(0, PLOTTED_HOURS * steps_per_hour)
    hours = np.arange(len(curves["actual"]))[shown] / steps_per_hour
    figure, axes = plt.subplots(len(outputs), 1, figsize=(8.0, 2.2 * len(outputs)), sharex=True, squeeze=False)
    for row, output in enumerate(outputs):
        index = schema_for(PREDICTIVE_ANALYTICS).metric_names.index(output)
        for name, style in (("actual", "k-"), ("project", "C0-"), ("persistence", "C1:"), ("seasonal", "C2:")):
            axes[row, 0].plot(hours, curves[name][shown, index], style, linewidth=1, label=name)
        axes[row, 0].set_ylabel(output)
    axes[0, 0].set_title(f"{dataset}: value 1 hour ahead (test period)")
    axes[0, 0].legend(fontsize=7, ncol=4)
    axes[-1, 0].set_xlabel("hours into the test period")
    _save(figure, path)


def frontier_markdown(command: str, report: dict) -> str:
    """Return the frontier as Markdown: the targets beside the upstream reference, then one row per recipe and rate."""
    reference, targets = report["upstream_reference"], report["targets"]
    candidates = [f"- {recipe}: {CANDIDATES[recipe]}; under the same fallback cap." for recipe in report["recipes"] if recipe in CANDIDATES]
    lines = ["# Detector frontier: SMD F1 against NAB false positives, per training-only calibration rate", "",
             f"Reproduce: `{command}`", "",
             "Each recipe is fitted once per SMD machine and NAB series; a rate sets its threshold from its own training scores",
             "only, the same rate for every series (project: the quantile `fit_outlier_detector` calibrates, capped by the engine's",
             "fallback probe; upstream: IsolationForest's contamination percentile). No label chooses a rate or a threshold.", "",
             *candidates, *([""] if candidates else []),
             f"Issue 24's targets, against the upstream recipe at its own default (contamination {reference['rate']:g}) in this run:", "",
             f"- **smd_mean_f1**: SMD mean point-wise F1 >= {targets['smd_mean_f1']:.2f} (upstream: {reference['smd_mean_f1']:.3f})",
             f"- **smd_worst_margin**: no machine's F1 below upstream's by more than {-targets['smd_worst_margin']:.2f}",
             f"- **nab_upstream_windows**: every NAB window upstream detects ({reference['nab_windows_detected']} of {reference['nab_windows']}) detected",
             f"- **nab_false_positives**: at most {targets['nab_false_positives']:.1f} false-positive rows per NAB series, a third of "
             f"upstream's {reference['nab_false_positives_per_series']:.1f}", "",
             "| recipe | rate | SMD precision | SMD recall | SMD F1 | worst margin (machine) | NAB windows | upstream windows missed "
             "| NAB false positives per series | targets met |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for recipe, result in report["recipes"].items():
        for point in result["points"]:
            smd, nab, meets = point["smd"], point["nab"], point["meets"]
            rate = f"{point['rate']:g}" + (" (default)" if point["rate"] == result["default_rate"] else "")
            met = [target for target, ok in meets.items() if ok]
            lines.append(f"| {recipe} | {rate} | {smd['mean']['precision']:.3f} | {smd['mean']['recall']:.3f} | {smd['mean']['f1']:.3f} | "
                         f"{smd['worst_margin']:+.3f} ({smd['worst_machine']}) | {nab['windows_detected']}/{nab['windows']} | "
                         f"{nab['upstream_windows_missed']} | {nab['false_positives_per_series']:.1f} | {', '.join(met) or 'none'} |")
    lines += ["", "Points meeting every target: " + (", ".join(points_meeting_every_target(report)) or "none") + ".", "",
              *_hindsight_table(report), "", *_nab_reasons(report), "", "## SMD F1 per machine", ""]
    columns = [(recipe, point) for recipe, result in report["recipes"].items() for point in result["points"]]
    lines += ["| machine | " + " | ".join(f"{recipe} {point['rate']:g}" for recipe, point in columns)
              + " | " + " | ".join(f"{recipe} in hindsight" for recipe in report["recipes"]) + " |",
              "|---|" + "---|" * (len(columns) + len(report["recipes"]))]
    for machine in columns[0][1]["smd"]["items"]:
        lines.append(f"| {machine} | " + " | ".join(f"{point['smd']['items'][machine]['f1']:.3f}" for _, point in columns) + " | "
                     + " | ".join(_bound(result["hindsight"]["smd"]["items"][machine], "f1") for result in report["recipes"].values()) + " |")
    lines += ["", "## NAB false positives per series in hindsight", "",
              "The fewest false-positive rows a threshold tuned on the series' labels flags while catching every window upstream's "
              "default catches, and in brackets the share of training rows it flags (none where upstream catches no window).", "",
              "| series | " + " | ".join(report["recipes"]) + " |", "|---|" + "---|" * len(report["recipes"])]
    for series in next(iter(report["recipes"].values()))["hindsight"]["nab"]["items"]:
        lines.append(f"| {series} | " + " | ".join(_bound(result["hindsight"]["nab"]["items"][series], "false_positives")
                                                      for result in report["recipes"].values()) + " |")
    return "\n".join(lines) + "\n"


def _bound(bound: dict, field: str) -> str:
    """Return one hindsight bound as a table cell: the value and the share of training rows its threshold flags."""
    value = f"{bound[field]:.3f}" if isinstance(bound[field], float) else str(bound[field])
    return value if bound["rate"] is None else f"{value} ({bound['rate']:.4f})"


def _hindsight_table(report: dict) -> list[str]:
    """Return the hindsight section: per recipe the bounds of thresholds tuned on the test labels, against the targets."""
    lines = ["## In hindsight: thresholds tuned on the test labels", "",
             "No detector can set these thresholds: each is tuned, per machine or series, on its test labels. A bound that meets "
             "a target says the score could and the training-only calibration lost it; a bound that misses it says no threshold "
             "rule reaches it with that score. The shares are of training rows each tuned threshold flags: one training-only "
             "rate lands every machine or series only if it lies inside all of them.", "",
             "| recipe | SMD mean F1 | machines more than 0.02 below upstream | training share flagged, SMD "
             "| NAB false positives per series | training share flagged, NAB | targets the bounds meet |",
             "|---|---|---|---|---|---|---|"]
    for recipe, result in report["recipes"].items():
        smd, nab = result["hindsight"]["smd"], result["hindsight"]["nab"]
        below = ", ".join(f"{machine} ({margin:+.3f})" for machine, margin in smd["machines_below_margin"].items()) or "none"
        met = [target for target, ok in result["hindsight"]["meets"].items() if ok]
        lines.append(f"| {recipe} | {smd['mean_f1']:.3f} | {below} | {smd['rates'][0]:.4f}–{smd['rates'][1]:.4f} | "
                     f"{nab['false_positives_per_series']:.1f} | {nab['rates'][0]:.4f}–{nab['rates'][1]:.4f} | {', '.join(met) or 'none'} |")
    return lines


def _nab_reasons(report: dict) -> list[str]:
    """Return, per recipe, the series with most NAB false positives at its lowest rate and the upstream windows its default misses."""
    lines = ["## Where the NAB targets are missed", ""]
    for recipe, result in report["recipes"].items():
        lowest = result["points"][0]
        rows = {series: scores["false_positives"] for series, scores in lowest["nab"]["items"].items()}
        top = sorted(rows, key=rows.get, reverse=True)[:2]
        share = sum(rows[series] for series in top) / max(sum(rows.values()), 1)
        default = next(point for point in result["points"] if point["rate"] == result["default_rate"])
        missed = ", ".join(f"{series} ({count})" for series, count in default["nab"]["upstream_windows_missed_in"].items()) or "none"
        lines.append(f"- {recipe}: at its lowest rate ({lowest['rate']:g}), " + " and ".join(f"{series} ({rows[series]})" for series in top)
                     + f" hold {share:.0%} of its false-positive rows; upstream's windows missed at its default ({default['rate']:g}): {missed}")
    return lines


def plot_frontier(report: dict, path: Path) -> None:
    """Write SMD mean F1 against NAB false-positive rows per series, one curve per recipe labelled by rate, each recipe's
    hindsight bound as a cross, the target region shaded."""
    targets, reference = report["targets"], report["upstream_reference"]
    figure, axes = plt.subplots(figsize=(7.0, 4.5))
    for recipe, result in report["recipes"].items():
        false_positives = [point["nab"]["false_positives_per_series"] for point in result["points"]]
        f1 = [point["smd"]["mean"]["f1"] for point in result["points"]]
        (line,) = axes.plot(false_positives, f1, "o-", label=recipe)
        hindsight = result["hindsight"]
        axes.plot([hindsight["nab"]["false_positives_per_series"]], [hindsight["smd"]["mean_f1"]], "x", color=line.get_color(), markersize=9)
        for point, x, y in zip(result["points"], false_positives, f1):
            axes.annotate(f"{point['rate']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    axes.plot([], [], "kx", label="a recipe in hindsight (thresholds tuned on the test labels)")
    axes.plot([reference["nab_false_positives_per_series"]], [reference["smd_mean_f1"]], "k*", markersize=12,
              label=f"upstream default (contamination {reference['rate']:g})")
    top = max(1.0, axes.get_ylim()[1])
    axes.fill_between([0, targets["nab_false_positives"]], targets["smd_mean_f1"], top, color="C2", alpha=0.15,
                      label=f"target: F1 >= {targets['smd_mean_f1']:.2f}, <= 1/3 of upstream's false positives")
    axes.set_xlim(left=0)
    axes.set_ylim(0, top)
    axes.set_xlabel("NAB false-positive rows per series (fewer is better)")
    axes.set_ylabel("SMD mean point-wise F1")
    axes.set_title("Detector frontier by training-only calibration rate", fontsize=10)
    axes.legend(fontsize=7, loc="upper right")
    _save(figure, path)


def _save(figure: plt.Figure, path: Path) -> None:
    """Write ``figure`` as a PNG at ``path`` and release it."""
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
