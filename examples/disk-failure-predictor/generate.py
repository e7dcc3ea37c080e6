"""Write the disk-failure predictor's sample data: one labelled disk observation per minute, as the file source reads it.

Each row is a disk seen at that minute: its space utilisation (a ratio 0-1), its IOPS and its age in days, and whether
it fails within the next 30 days (``will_fail``, 1 or 0). The chance of failing grows with how full, how busy and how
old the disk is (a logistic model), so a stock logistic regression can learn it. Deterministic: numpy's RandomState
keeps its streams fixed across numpy releases, so a seed always writes the same file.

    python examples/disk-failure-predictor/generate.py [--rows 4320] [--seed 27] [--output disks.csv]
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np

START = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
COLUMNS = ("timestamp", "disk_utilization", "disk_iops", "disk_age_days", "will_fail")
MAX_AGE_DAYS = 2555  # 7 years, a long service life for a disk
# log-odds of failing within 30 days: intercept, per unit of utilisation, per day of age, per IOPS
INTERCEPT, PER_UTILIZATION, PER_DAY, PER_IOPS = -28.0, 20.0, 0.006, 0.0009


def generate(rows: int, seed: int) -> list[str]:
    """Return the CSV lines (header first) of ``rows`` minutes of labelled disk observations drawn with ``seed``."""
    random = np.random.RandomState(seed)
    utilization = random.beta(4.0, 3.0, rows)
    age_days = random.uniform(0.0, MAX_AGE_DAYS, rows)
    iops = random.gamma(2.0, 1500.0, rows)
    failing = 1.0 / (1.0 + np.exp(-(INTERCEPT + PER_UTILIZATION * utilization + PER_DAY * age_days + PER_IOPS * iops)))
    will_fail = (random.uniform(size=rows) < failing).astype(int)
    lines = [",".join(COLUMNS)]
    for minute in range(rows):
        at = (START + dt.timedelta(minutes=minute)).strftime("%Y-%m-%dT%H:%M:%SZ")
        lines.append(f"{at},{utilization[minute]:.4f},{iops[minute]:.1f},{age_days[minute]:.1f},{will_fail[minute]}")
    return lines


def main() -> None:
    """Write the CSV named by --output (default: disks.csv beside this script)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4320, help="minutes of data (default: 4320, three days)")
    parser.add_argument("--seed", type=int, default=27)
    parser.add_argument("--output", type=Path, default=Path(__file__).with_name("disks.csv"))
    args = parser.parse_args()
    args.output.write_text("\n".join(generate(args.rows, args.seed)) + "\n")
    print(f"wrote {args.rows} rows to {args.output}")


if __name__ == "__main__":
    main()
