"""Shared fixtures: the console script, a state directory that holds two real local runs, store snapshots."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from components.runtime.warm_process import LENGTH, send_request

REPO = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("model-pipelines"))


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``model-pipelines`` with ``args`` and return the finished process (stdout and stderr merged)."""
    return subprocess.run(
        [CLI, *args], cwd=cwd or REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=timeout,
    )


def ask_warm_process(address: str, body: bytes, descriptors: list[int], announced_length: int | None = None) -> dict:
    """Send a warm process (launcher or step forkserver) ``body`` with ``descriptors`` as its clients do, or only a header
    announcing ``announced_length`` bytes; return its one-line JSON answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(30)
        connection.connect(address)
        if announced_length is None:
            send_request(connection, body, descriptors)
        else:
            socket.send_fds(connection, [LENGTH.pack(announced_length)], descriptors)
        return json.loads(connection.makefile("rb").readline())


def command_lines() -> Iterator[tuple[int, list[bytes]]]:
    """Yield (pid, command-line arguments) of every process in /proc; one that ends while it is read is skipped."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield int(entry.name), (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue


def parent_pid(pid: int) -> int:
    """Return the parent pid of ``pid`` from /proc (0 when it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


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
        # New data (another seed): unchanged data would retrain a model byte-identical to stable, which stores nothing new.
        second = run_cli("run", "all", "--local", "--state-dir", str(state), *FAST_CANARY, "--param", "seed=43")
        yield state, first, second
    finally:
        run_cli("serve", "stop", "--state-dir", str(state))


# Module-scoped fixtures whose tests do not depend on one another: read-only data, a store that each test copies, a
# stand-in cluster where each test makes its own namespace. Each xdist worker builds its own, so their tests spread.
PER_WORKER_FIXTURES = {"models", "knative_cluster", "crd_schemas", "validators", "training", "trained", "detector_data", "forecaster_data"}


def shared_fixture_group(item: pytest.Item) -> str | None:
    """Return the xdist group of a test that shares state through a module- or session-scoped fixture, else None.

    Tests of one module that share such a fixture run on one worker, in order (one group per parameter of a
    parametrized fixture), and so do all the tests of a session-scoped one; the fixture is set up once.
    """
    module = item.nodeid.split("::")[0]
    callspec = getattr(item, "callspec", None)
    keys = set()
    for name in item.fixturenames:
        definitions = item._fixtureinfo.name2fixturedefs.get(name)
        if (not definitions or name in PER_WORKER_FIXTURES or definitions[-1].scope not in ("module", "session")
                or not definitions[-1].func.__module__.startswith("tests.")):  # pytest's own (tmp_path_factory) are per worker
            continue
        parameter = str(callspec.params[name]) if callspec is not None and name in callspec.params else ""
        keys.add(f"session:{name}" if definitions[-1].scope == "session" else f"{module}{':' + parameter if parameter else ''}")  # no "]": xdist reads a group after the last "]"
    return max(keys) if keys else None  # the most specific: a parameter's group over its module's


DURATIONS = Path(__file__).with_name("durations.json")  # seconds per test id, from `pytest --record-durations`


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add --record-durations, which rewrites tests/durations.json (what orders the groups) from this run."""
    parser.addoption("--record-durations", action="store_true", help=f"rewrite {DURATIONS.name} with this run's test durations")


def pytest_itemcollected(item: pytest.Item) -> None:
    """Mark a test with its shared-fixture group (``shared_fixture_group``) for ``--dist loadgroup``."""
    group = shared_fixture_group(item)
    if group:
        item.add_marker(pytest.mark.xdist_group(group))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put the longest groups of tests first, each group's tests in their file's order.

    Under ``--dist loadgroup --no-loadscope-reorder`` xdist hands out groups in this order, so that the long ones start
    at once instead of finishing last; a test missing from tests/durations.json counts as one second.
    """
    recorded = json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}
    groups: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(shared_fixture_group(item) or item.nodeid, []).append(index)
    weight = {group: sum(recorded.get(items[index].nodeid.split("@")[0], 1.0) for index in indexes) for group, indexes in groups.items()}
    order = sorted(groups, key=lambda group: (-weight[group], groups[group][0]))
    items[:] = [items[index] for group in order for index in groups[group]]


_durations: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Add up each test's setup, call and teardown time for --record-durations (on the xdist controller too)."""
    nodeid = report.nodeid.split("@")[0]  # without xdist's group suffix
    _durations[nodeid] = _durations.get(nodeid, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    """With --record-durations, write each test's total seconds from this run into tests/durations.json, keeping the others'."""
    if session.config.getoption("record_durations") and not hasattr(session.config, "workerinput"):
        recorded = json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}
        recorded.update({nodeid: round(seconds, 1) for nodeid, seconds in _durations.items()})
        DURATIONS.write_text(json.dumps(dict(sorted(recorded.items())), indent=0) + "\n")
