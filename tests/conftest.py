"""Shared fixtures: the console script, a state directory that holds two real local runs, store snapshots."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("model-pipelines"))


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``model-pipelines`` with ``args`` and return the finished process (stdout and stderr merged)."""
    return subprocess.run(
        [CLI, *args], cwd=cwd or REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=timeout,
    )


def logged(result: subprocess.CompletedProcess) -> str:
    """Return a run's output plus the step logs it wrote to the log files that its summary names."""
    line = next((line for line in result.stdout.splitlines() if line.startswith("logs:")), "")
    paths = [part.strip() for part in line.removeprefix("logs:").split("(")[0].split(",") if part.strip() and part.strip() != "-"]
    return result.stdout + "".join(Path(path).read_text() for path in paths)


def snapshot(directory: Path) -> dict[str, str]:
    """Return {relative path: sha256} of every file under ``directory`` (lock files excluded)."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != ".index.lock"
    }


# A quick canary for tests: same steps as the default, shorter pauses, fewer probes.
FAST_CANARY = ("--param", "canary_interval_s=0.3", "--param", "probe_requests=10")


@pytest.fixture(scope="session")
def two_runs(tmp_path_factory) -> Iterator[tuple[Path, subprocess.CompletedProcess, subprocess.CompletedProcess]]:
    """Yield a state dir after two full local runs of both pipelines, with both runs' output; stop serving after."""
    state = tmp_path_factory.mktemp("state")
    try:
        first = run_cli("run", "all", "--local", "--state-dir", str(state), *FAST_CANARY)
        # New data (another seed): unchanged data would retrain a byte-identical duplicate that is not deployed.
        second = run_cli("run", "all", "--local", "--state-dir", str(state), *FAST_CANARY, "--param", "seed=43")
        yield state, first, second
    finally:
        run_cli("serve", "stop", "--state-dir", str(state))
