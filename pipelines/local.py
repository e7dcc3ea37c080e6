"""Local runs: the compiled DAG executed by ``kfp.local`` on this machine, with a local model store."""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from kfp import local

from components.local_serving import LocalTarget
from components.run_parameters import check as check_run_parameters
from components.serving import ServingStatus
from components.storage import StoreError, champion_version
from components.workflow import SERVING_HOME_ENV, STORE_ROOT_ENV, StoreOptions, open_store
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
    version_states: dict[str, str] = field(default_factory=dict)
    store_location: str = ""
    serving: ServingStatus | None = None
    error: str = ""


# The last line of a Python traceback: "package.module.SomeError: message".
EXCEPTION_LINE = re.compile(r"^\s*(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception): .+")


class _TailingStdout(io.TextIOBase):
    """Passes writes through to the real stdout and remembers the last lines (the steps' logs land here)."""

    def __init__(self, target: io.TextIOBase, keep: int = 400) -> None:
        self.target = target
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)

    def write(self, text: str) -> int:
        """Remember the lines of ``text`` and pass it on; return what the real stdout wrote."""
        self.lines.extend(text.splitlines())
        return self.target.write(text)

    def flush(self) -> None:
        """Flush the real stdout."""
        self.target.flush()

    def last_exception(self) -> str:
        """Return the last exception line seen, without its module path, or ''."""
        for line in reversed(self.lines):
            if EXCEPTION_LINE.match(line):
                kind, _, message = line.strip().partition(": ")
                return f"{kind.rsplit('.', 1)[-1]}: {message}"
        return ""


def parse_params(pairs: list[str], pipeline_name: str) -> dict[str, object]:
    """Return pipeline arguments from ``k=v`` strings, converted to each parameter's declared type."""
    pipeline = BUILDERS[pipeline_name](DEFAULT_IMAGE)
    declared = pipeline.component_spec.inputs or {}
    arguments: dict[str, object] = {}
    for pair in pairs:
        name, separator, text = pair.partition("=")
        if not separator:
            raise ValueError(f"--param {pair!r} is not k=v; for example --param days=3")
        if name not in declared:
            raise ValueError(f"{pipeline_name} has no parameter {name!r}; its parameters are {', '.join(sorted(declared))}")
        kind = declared[name].type
        try:
            arguments[name] = {"Integer": int, "Float": float, "Boolean": _boolean, "List": _number_list, "Dict": _json_object}.get(kind, str)(text)
        except ValueError:
            raise ValueError(f"--param {name}={text!r}: {name} is a {kind}") from None
    check_run_parameters({**{name: spec.default for name, spec in declared.items()}, **arguments})
    return arguments


def _boolean(text: str) -> bool:
    """Return the bool a command-line string spells."""
    if text.lower() in {"true", "1", "yes"}:
        return True
    if text.lower() in {"false", "0", "no"}:
        return False
    raise ValueError(text)


def _json_object(text: str) -> dict:
    """Return the JSON object a dict parameter spells."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(text)
    return value


def _number_list(text: str) -> list[int]:
    """Return the integers a list parameter spells, as JSON ``[10,50,100]`` or plain ``10,50,100``."""
    return [int(part) for part in text.strip("[] ").split(",") if part.strip()]


def local_target(state_dir: Path) -> LocalTarget:
    """Return the local serving target of a state directory."""
    return LocalTarget(state_dir / "serving", state_dir / "store")


@contextlib.contextmanager
def _local_environment(state_dir: Path) -> Iterator[None]:
    """Point the step subprocesses at the state directory's store and serving home for the duration of a run."""
    settings = {STORE_ROOT_ENV: str((state_dir / "store").resolve()), SERVING_HOME_ENV: str((state_dir / "serving").resolve())}
    previous = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_local(
    model_name: str, arguments: dict[str, object], state_dir: Path = DEFAULT_STATE_DIR, pipeline_name: str | None = None
) -> RunSummary:
    """Run a model's retraining pipeline (or ``pipeline_name``) with kfp.local's SubprocessRunner; return its summary."""
    (state_dir / "store").mkdir(parents=True, exist_ok=True)
    try:
        with _local_environment(state_dir):
            given = {knob: arguments[knob] for knob in ("pvc_name", "s3_prefix", "s3_secret", "s3_verify", "s3_ca_bundle") if knob in arguments}
            store = open_store(StoreOptions(kind=str(arguments.get("model_store", "pvc")), **given))
        before = store.read_index(model_name)["versions"]
    except StoreError as error:
        return RunSummary(model_name, succeeded=False, error=str(error))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str((state_dir / "runs").resolve()), raise_on_error=True)
    summary = RunSummary(model_name, succeeded=False)
    tail = _TailingStdout(sys.stdout)
    with _local_environment(state_dir), warnings.catch_warnings(), contextlib.redirect_stdout(tail):
        # kfp.local warns about any image whose name lacks "python"; the project image is a Python image.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        try:
            task = BUILDERS[pipeline_name or model_name](DEFAULT_IMAGE)(**arguments)
        except RuntimeError as error:
            cause = tail.last_exception()
            summary.error = f"{error}" + (f" -- {cause}" if cause else "")
            task = None
    if task is not None:
        summary.succeeded = True
        if "metrics" in task.outputs:
            summary.metrics = dict(task.outputs["metrics"].metadata)
            summary.decision = _decision_line(Path(task.outputs["report"].path))
    index = store.read_index(model_name)
    summary.new_versions = sorted(set(index["versions"]) - set(before), key=lambda name: int(name[1:]))
    summary.storage_uris = [store.storage_uri(model_name, version) for version in summary.new_versions]
    summary.version_states = {
        version: _describe(entry) for version, entry in index["versions"].items() if entry != before.get(version)
    }
    summary.champion = champion_version(index)
    summary.serving = local_target(state_dir).status(model_name)
    summary.store_location = store.location
    return summary


def _describe(entry: dict) -> str:
    """Return a version's index status in a few words."""
    status = entry.get("status", "stored")
    return f"{status}: {entry['rejected_reason']}" if status == "rejected" else status


def _decision_line(report: Path) -> str:
    """Return the decision sentence of an evaluation report."""
    for line in report.read_text().splitlines():
        if line.startswith("**Decision:**"):
            return line.removeprefix("**Decision:**").strip()
    return "unknown"
