"""Markdown tables and PNG plots for the model quality benchmarks (written under ``benchmarks/results/``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from components.model.contract import PREDICTIVE_ANALYTICS, schema_for  # noqa: E402

DETECTION_FIELDS = ("precision", "recall", "f1", "pa_f1", "fit_s", "predict_ms")
COUNT_FIELDS = ("windows_detected", "windows", "false_positives")
NAB_FIELDS = (*COUNT_FIELDS, "fit_s", "predict_ms")
PLOTTED_HOURS = 48


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
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


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
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
