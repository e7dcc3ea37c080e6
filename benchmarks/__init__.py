"""Benchmarks that report ratios against a baseline measured in the same run."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(path: str | Path | None, results: dict) -> dict:
    """Write ``results`` as indented JSON to ``path`` (its folder created) when a path is given; return ``results``."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(results, indent=2) + "\n")
    return results
