"""Shared fixtures: the console script, a state directory that holds two real local runs, store snapshots."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("model-pipelines"))


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``model-pipelines`` with ``args`` and return the finished process (stdout and stderr merged)."""
    return subprocess.run(
        [CLI, *args], cwd=cwd or REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=timeout,
    )


def snapshot(directory: Path) -> dict[str, str]:
    """Return {relative path: sha256} of every file under ``directory`` (lock files excluded)."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != ".index.lock"
    }


@pytest.fixture(scope="session")
def two_runs(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """Return a state dir after two full local runs of both pipelines, with both runs' output."""
    state = tmp_path_factory.mktemp("state")
    first = run_cli("run", "all", "--local", "--state-dir", str(state))
    second = run_cli("run", "all", "--local", "--state-dir", str(state))
    return state, first, second
