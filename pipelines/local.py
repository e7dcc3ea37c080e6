"""Local runs: the compiled DAG executed by ``kfp.local`` on this machine, with a local model store."""

from __future__ import annotations

import collections
import contextlib
import io
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from kfp import local

from components.storage import FilesystemStore, champion_version
from components.workflow import STORE_ROOT_ENV
from pipelines.retrain import BUILDERS, DEFAULT_IMAGE

DEFAULT_STATE_DIR = Path(os.environ.get("MODEL_PIPELINES_HOME", ".model-pipelines"))


@dataclass
class RunSummary:
    """What one local pipeline run decided and stored."""

    model_name: str
    succeeded: bool
    decision: str = ""
    metrics: dict = field(default_factory=dict)
    new_versions: list[str] = field(default_factory=list)
    storage_uris: list[str] = field(default_factory=list)
    champion: str | None = None
    error: str = ""


# The last line of a Python traceback: "package.module.SomeError: message".
EXCEPTION_LINE = re.compile(r"^\s*(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception): .+")


class _TailingStdout(io.TextIOBase):
    """Passes writes through to the real stdout and remembers the last lines (the steps' logs land here)."""

    def __init__(self, target: io.TextIOBase, keep: int = 400) -> None:
        self.target = target
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)

    def write(self, text: str) -> int:
        self.lines.extend(text.splitlines())
        return self.target.write(text)

    def flush(self) -> None:
        self.target.flush()

    def last_exception(self) -> str:
        """Return the last exception line seen, without its module path, or ''."""
        for line in reversed(self.lines):
            if EXCEPTION_LINE.match(line):
                kind, _, message = line.strip().partition(": ")
                return f"{kind.rsplit('.', 1)[-1]}: {message}"
        return ""


def parse_params(pairs: list[str], model_name: str) -> dict[str, object]:
    """Return pipeline arguments from ``k=v`` strings, converted to each parameter's declared type."""
    pipeline = BUILDERS[model_name](DEFAULT_IMAGE)
    declared = pipeline.component_spec.inputs or {}
    arguments: dict[str, object] = {}
    for pair in pairs:
        name, separator, text = pair.partition("=")
        if not separator:
            raise ValueError(f"--param {pair!r} is not k=v; for example --param days=3")
        if name not in declared:
            raise ValueError(f"{model_name} has no parameter {name!r}; its parameters are {', '.join(sorted(declared))}")
        kind = declared[name].type
        try:
            arguments[name] = {"Integer": int, "Float": float, "Boolean": _boolean}.get(kind, str)(text)
        except ValueError:
            raise ValueError(f"--param {name}={text!r}: {name} is a {kind}") from None
    return arguments


def _boolean(text: str) -> bool:
    """Return the bool a command-line string spells."""
    if text.lower() in {"true", "1", "yes"}:
        return True
    if text.lower() in {"false", "0", "no"}:
        return False
    raise ValueError(text)


@contextlib.contextmanager
def _store_environment(store_dir: Path) -> Iterator[None]:
    """Point the step subprocesses at ``store_dir`` for the duration of a run."""
    previous = os.environ.get(STORE_ROOT_ENV)
    os.environ[STORE_ROOT_ENV] = str(store_dir.resolve())
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(STORE_ROOT_ENV, None)
        else:
            os.environ[STORE_ROOT_ENV] = previous


def run_local(model_name: str, arguments: dict[str, object], state_dir: Path = DEFAULT_STATE_DIR) -> RunSummary:
    """Run one model's pipeline with kfp.local's SubprocessRunner and return its summary."""
    store_dir = state_dir / "store"
    store_dir.mkdir(parents=True, exist_ok=True)
    store = FilesystemStore(store_dir, str(arguments.get("pvc_name", "model-storage-pvc")))
    before = set(store.read_index(model_name)["versions"])
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str((state_dir / "runs").resolve()), raise_on_error=True)
    summary = RunSummary(model_name, succeeded=False)
    tail = _TailingStdout(sys.stdout)
    with _store_environment(store_dir), warnings.catch_warnings(), contextlib.redirect_stdout(tail):
        # kfp.local warns about any image whose name lacks "python"; the project image is a Python image.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        try:
            task = BUILDERS[model_name](DEFAULT_IMAGE)(**arguments)
        except RuntimeError as error:
            cause = tail.last_exception()
            summary.error = f"{error}" + (f" -- {cause}" if cause else "")
            return summary
    summary.succeeded = True
    summary.metrics = dict(task.outputs["metrics"].metadata)
    summary.decision = _decision_line(Path(task.outputs["report"].path))
    index = store.read_index(model_name)
    summary.new_versions = sorted(set(index["versions"]) - before)
    summary.storage_uris = [store.storage_uri(model_name, version) for version in summary.new_versions]
    summary.champion = champion_version(index)
    return summary


def _decision_line(report: Path) -> str:
    """Return the decision sentence of an evaluation report."""
    for line in report.read_text().splitlines():
        if line.startswith("**Decision:**"):
            return line.removeprefix("**Decision:**").strip()
    return "unknown"
