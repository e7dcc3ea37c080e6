"""Local runs: the compiled DAG executed by ``kfp.local`` on this machine, with a local model store."""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from kfp import local

from components.serving.local import local_target, state_dir as configured_state_dir
from components.release.rollout import KEPT_SERVING
from components.serving.target import ServingStatus
from components.model.contract import MODEL_NAMES
from components.model.spec import ModelSpec, spec_for
from components.store.filesystem import DUPLICATE_EVENT, ModelStore, StoreError, champion_version, version_number
from components.kfp.config import (
    INSTALLATION_NAMES,
    MONITOR as MONITOR_KIND,
    RETRAIN as RETRAIN_KIND,
    ROLLOUT as ROLLOUT_KIND,
    Installation,
    Knob,
    RunConfig,
    config_from_arguments,
    knobs_of,
    retrain_arguments as grouped_retrain_arguments,
)
from components.kfp.workflow import REGISTRY_PREFIX, RUN_LOCKS_ENV, SERVING_HOME_ENV, STORE_ROOT_ENV, RunActiveError, local_run_lock, open_store
from components.monitoring.monitor import NO_ACTION, RETRAIN, record_trigger
from components.registry.sync import parse_registry_uri
from pipelines.catalog import DEFAULT_IMAGE, MONITOR, ROLLOUT
from pipelines.retrain import builder_for, make_components
from pipelines.run_log import RunLog

DEFAULT_STATE_DIR = configured_state_dir()


# What happened to a run's new version, for its summary row and the exit code (README: "Exit codes").
PROMOTED, NOT_NEEDED, REJECTED, HELD_BACK, FAILED = "promoted", "not needed", "rejected", "held back", "failed"
EXIT_CODES = {PROMOTED: 0, NOT_NEEDED: 0, REJECTED: 3, HELD_BACK: 3, FAILED: 1}


@dataclass
class LocalRunRecord:
    """What every local run reports: its model, whether it ran to the end, what it decided, its report, log and error."""

    model_name: str
    succeeded: bool = False
    decision: str = ""
    report: str = ""
    log: str = ""
    error: str = ""


@dataclass
class RunSummary(LocalRunRecord):
    """What one local pipeline run decided and stored, and what happened to its new version."""

    kind: str = FAILED
    version: str = ""
    outcome: str = ""
    metrics: dict = field(default_factory=dict)
    new_versions: list[str] = field(default_factory=list)
    storage_uris: list[str] = field(default_factory=list)
    champion: str | None = None
    version_states: dict[str, str] = field(default_factory=dict)
    store_location: str = ""
    serving: ServingStatus | None = None
    registry: str = ""  # the last thing the run's steps said about the model registry ("" without one)


def exit_code(summaries: list[RunSummary]) -> int:
    """Return 1 if a run failed, 3 if a candidate was rejected or held back by a gate, else 0."""
    return worst_exit_code(EXIT_CODES[summary.kind] for summary in summaries)


def worst_exit_code(codes: Iterable[int]) -> int:
    """Return the code a command with several outcomes exits with: 1 if any failed, else 3 if any was held, else 0."""
    found = set(codes)
    return 1 if 1 in found else 3 if 3 in found else 0


def pipeline_kind(pipeline_name: str, spec: ModelSpec | None = None) -> tuple[str, ModelSpec | None]:
    """Return the kind of ``pipeline_name`` (a model's retrain, ROLLOUT or MONITOR) and the spec its knobs follow: a retrain's model,
    ``spec``'s own rollout and monitor, or none for the shared ones whose model_name names a built-in model."""
    if pipeline_name in (ROLLOUT, MONITOR):
        return (ROLLOUT_KIND if pipeline_name == ROLLOUT else MONITOR_KIND), spec
    return RETRAIN_KIND, spec if spec is not None else spec_for(pipeline_name)


def _knob_named(name: str, pipeline_name: str, spec: ModelSpec | None) -> Knob | None:
    """Return the knob ``pipeline_name`` shows as ``name`` (its flat name, or ``group.key``), or None."""
    for knob in knobs_of(*pipeline_kind(pipeline_name, spec)):
        if name in (knob.name, knob.label):
            return knob
    return None


def accepts(pipeline_name: str, name: str, spec: ModelSpec | None = None) -> bool:
    """Return whether ``--param name=...`` sets something of ``pipeline_name``: a knob, ``group.key`` or a whole group."""
    return _knob_named(name, pipeline_name, spec) is not None or name in {knob.group for knob in knobs_of(*pipeline_kind(pipeline_name, spec))}


# A local run differs from a cluster run's defaults: it serves on this machine and learns synthetic data, with no
# Prometheus, unless --param says otherwise (serving_target=kserve with KUBECONFIG, source=prometheus, ...). A model whose
# spec comes with a data file learns from that file instead. Without Prometheus nothing waits for a scrape, so the
# canary analyses every 5 s, not every 60 s.
LOCAL_DEFAULTS = {"serving_target": "local", "source": "synthetic", "prometheus_url": "", "prometheus_ca_bundle": "", "canary_interval_s": 5.0}


def local_defaults(pipeline_name: str, spec: ModelSpec | None = None) -> list[str]:
    """Return the ``k=v`` pairs that give a local run of ``pipeline_name`` its local defaults (only knobs it shows)."""
    model = pipeline_kind(pipeline_name, spec)[1]
    data_file = {"source": "file", "file_path": str(model.data_file.resolve())} if model is not None and model.data_file else {}
    return [f"{name}={value}" for name, value in {**LOCAL_DEFAULTS, **data_file}.items() if accepts(pipeline_name, name, spec)]


def _converted(knob: Knob, text: str) -> object:
    """Return ``text`` as the type of ``knob``'s default."""
    kind = type(knob.default)
    converter = {bool: _boolean, int: int, float: float, list: _list, dict: _json_object}.get(kind, str)
    try:
        return converter(text)
    except ValueError:
        raise ValueError(f"--param {knob.label}={text!r}: {knob.label} is a {kind.__name__}") from None


def parse_params(pairs: list[str], pipeline_name: str, spec: ModelSpec | None = None) -> dict[str, object]:
    """Return pipeline arguments from ``k=v`` strings, each a knob (flat name or ``group.key``) or a whole group as JSON, typed and checked."""
    kind, model = pipeline_kind(pipeline_name, spec)
    shown = knobs_of(kind, model)
    groups = {knob.group for knob in shown if knob.group}
    arguments: dict[str, object] = {}
    for pair in pairs:
        name, separator, text = pair.partition("=")
        if not separator:
            raise ValueError(f"--param {pair!r} is not k=v; for example --param days=3 or --param canary.interval_s=1")
        knob = _knob_named(name, pipeline_name, spec)
        if knob is not None and knob.group is None:
            arguments[name] = _converted(knob, text)
        elif knob is not None:
            arguments.setdefault(knob.group, {})[knob.key] = _converted(knob, text)
        elif name in groups:
            arguments.setdefault(name, {}).update(_json_object(text))
        elif name in INSTALLATION_NAMES:
            raise ValueError(f"{name} is the installation's, fixed when the pipelines are compiled, not a run parameter: pass "
                             f"--{name.replace('_', '-')} to compile or upload (or to a local run, rollout or monitor)")
        else:
            names = [*(knob.label for knob in shown if knob.group), *(knob.name for knob in shown)]
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            tops = [knob.name for knob in shown if knob.group is None]
            raise ValueError(f"{pipeline_name} has no parameter {name!r}; {hint}its parameters are {', '.join(tops)} and the groups "
                             f"{', '.join(sorted(groups))} (set one key as group.key=value, e.g. canary.interval_s=1)")
    config_from_arguments(kind, arguments, spec=model)
    return arguments


def run_config(pipeline_name: str, arguments: dict[str, object], installation: Installation = Installation(), spec: ModelSpec | None = None) -> RunConfig:
    """Return the configuration a local run of ``pipeline_name`` with ``arguments`` has (checked, as validate-parameters makes it)."""
    kind, model = pipeline_kind(pipeline_name, spec)
    return config_from_arguments(kind, arguments, installation, model)


def params_per_model(pairs: list[str], models: list[str]) -> dict[str, dict[str, object]]:
    """Return each model's arguments from ``k=v`` and ``<model>.k=v``; an unscoped name goes to every model that has it."""
    chosen: dict[str, list[str]] = {model: [] for model in models}
    for pair in pairs:
        name = pair.partition("=")[0]
        scope, dot, _ = name.partition(".")
        if dot and scope in MODEL_NAMES:
            if scope not in chosen:
                raise ValueError(f"--param {pair!r} is scoped to {scope}, which this run does not include")
            chosen[scope].append(pair.removeprefix(f"{scope}."))
            continue
        takers = [model for model in models if accepts(model, name)] or models  # none: parse_params explains
        for model in takers:
            chosen[model].append(pair)
    return {model: parse_params(model_pairs, model) for model, model_pairs in chosen.items()}


def open_run_store(config: RunConfig, state_dir: Path) -> ModelStore:
    """Return the store a local run with ``config`` uses (the state dir's, or S3 when model_store=s3)."""
    with _local_environment(state_dir):
        return open_store(config.store)


def check_stored_version(store: ModelStore, model_name: str, version: str) -> None:
    """Raise ValueError, with a hint, unless ``version`` names a stored version of ``model_name``."""
    stored = sorted(store.read_index(model_name)["versions"], key=version_number)
    if version in stored:
        return
    hint = f"did you mean v{version}? " if f"v{version}" in stored else ""
    listing = ", ".join(stored) if stored else "none yet: run `model-pipelines run` first"
    raise ValueError(f"{model_name} has no stored version {version!r}; {hint}stored versions: {listing} (in {store.location})")


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


def _list(text: str) -> list:
    """Return the list a parameter spells: JSON (``[10,50,100]``, ``[["canary"],["*"]]``) or plain integers ``10,50,100``."""
    try:
        value = json.loads(text)
    except ValueError:
        return [int(part) for part in text.strip("[] ").split(",") if part.strip()]
    if not isinstance(value, list):
        raise ValueError(f"{text!r} is not a list")
    return value


@contextlib.contextmanager
def _local_environment(state_dir: Path) -> Iterator[None]:
    """Point the step subprocesses at the state directory's store and serving home for the duration of a run."""
    settings = {STORE_ROOT_ENV: str((state_dir / "store").resolve()), SERVING_HOME_ENV: str((state_dir / "serving").resolve()),
                RUN_LOCKS_ENV: str((state_dir / "locks").resolve())}
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


EXECUTOR_COMMAND = "python3 -m kfp.dsl.executor_main"  # how KFP's step command starts a lightweight component's executor
FORKED_EXECUTOR_COMMAND = "python3 -m components.runtime.step_client kfp.dsl.executor_main"


def forked_steps(pipeline):
    """Return the built ``pipeline`` with every step's executor started through the step forkserver
    (``components.runtime.step_client``) instead of a fresh interpreter: a local run only, the compiled YAML is unchanged."""
    executors = pipeline.pipeline_spec.deployment_spec.fields["executors"].struct_value.fields
    for executor in executors.values():
        for part in executor.struct_value.fields["container"].struct_value.fields["command"].list_value.values:
            part.string_value = part.string_value.replace(EXECUTOR_COMMAND, FORKED_EXECUTOR_COMMAND)
    return pipeline


def _execute(pipeline: str, arguments: dict[str, object], state_dir: Path, log_path: Path, verbose: bool, lock: str | None = None,
             installation: Installation = Installation(), spec: ModelSpec | None = None):
    """Run ``pipeline`` with kfp.local in the state dir, its step output in the run log; return (task, "") or (None, error).

    With ``lock``, the model's local run lock is held for the run, so that two local retrains or rollouts of a model
    never overlap and the drift monitor sees the run as active.
    """
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str((state_dir / "runs").resolve()), raise_on_error=True)
    run_log = RunLog(log_path, sys.stdout, verbose)
    with _local_environment(state_dir), warnings.catch_warnings(), contextlib.redirect_stdout(run_log), run_log:
        # kfp.local warns about any image whose name lacks "python"; the project image is a Python image.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        # Display names and timeouts are for the dashboard and the cluster; kfp.local says it ignores them.
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
        try:
            with local_run_lock(lock) if lock else contextlib.nullcontext():
                return forked_steps(builder_for(pipeline, spec)(DEFAULT_IMAGE, installation))(**arguments), ""
        except RunActiveError as error:
            return None, f"failed at start: {error}"
        except RuntimeError as error:
            failed = run_log.first_failure()
            return None, f"failed at {failed.task}: {failed.result}" if failed else f"failed: {error}"


def run_local(
    model_name: str, arguments: dict[str, object], state_dir: Path = DEFAULT_STATE_DIR, pipeline_name: str | None = None,
    verbose: bool = False, installation: Installation = Installation(), spec: ModelSpec | None = None,
) -> RunSummary:
    """Run a model's retraining pipeline (or ``pipeline_name``; ``spec``'s own for a model of one's own) with kfp.local, logging to a
    file; return its summary."""
    pipeline = pipeline_name or model_name
    (state_dir / "store").mkdir(parents=True, exist_ok=True)
    log_path = (state_dir / "logs" / f"{pipeline}-{time.strftime('%Y%m%d-%H%M%S')}.log").resolve()
    try:
        store = open_run_store(run_config(pipeline, arguments, installation, spec), state_dir)
        before_index = store.read_index(model_name)
        before = before_index["versions"]
    except StoreError as error:
        return RunSummary(model_name, succeeded=False, outcome=f"failed at start: {error}", error=str(error))
    summary = RunSummary(model_name, succeeded=False, log=str(log_path))
    task, summary.error = _execute(pipeline, arguments, state_dir, log_path, verbose, lock=model_name, installation=installation, spec=spec)
    evaluation_report = ""
    if task is not None:
        summary.succeeded = True
        if "metrics" in task.outputs:
            summary.metrics = dict(task.outputs["metrics"].metadata)
            evaluation_report = task.outputs["report"].path
            summary.decision = _decision_line(Path(evaluation_report))
    index = store.read_index(model_name)
    summary.new_versions = sorted(set(index["versions"]) - set(before), key=lambda name: int(name[1:]))
    summary.storage_uris = [store.storage_uri(model_name, version) for version in summary.new_versions]
    summary.version_states = {
        version: _describe(entry) for version, entry in index["versions"].items() if entry != before.get(version)
    }
    new_events = index.get("history", [])[len(before_index.get("history", [])):]
    # A retrain whose model is byte-identical to a stored version saves no new one: the run goes on with that version.
    reused = [event["version"] for event in new_events if event["event"] == DUPLICATE_EVENT]
    version = rolled_out_version(str(arguments["version"])) if pipeline == ROLLOUT else (summary.new_versions or reused or [None])[-1]
    summary.version = version or ""
    summary.kind, summary.outcome, report = _outcome(summary, index, before, version, evaluation_report, new_events)
    summary.report = openable_report(report)
    summary.champion = champion_version(index)
    summary.serving = local_target(state_dir).status(model_name)
    summary.store_location = store.location
    summary.registry = last_registry_line(log_path)
    return summary


def rolled_out_version(version: str) -> str:
    """Return the stored version a rollout's ``version`` argument names (``model-registry://<model>/vN`` names vN)."""
    reference = parse_registry_uri(version)
    return reference[1] if reference else version


def last_registry_line(log_path: Path) -> str:
    """Return what the run's last step to talk to the model registry said (``workflow.sync_registry``), or ""."""
    if not log_path.is_file():
        return ""
    said = [line.strip().removeprefix(REGISTRY_PREFIX) for line in log_path.read_text().splitlines() if line.strip().startswith(REGISTRY_PREFIX)]
    return said[-1] if said else ""


def _outcome(summary: RunSummary, index: dict, before: dict, version: str | None, evaluation_report: str,
             new_events: list[dict]) -> tuple[str, str, str]:
    """Return (kind, row text, report path) saying what happened to the run's new (or rolled-out) version (and any restore)."""
    kind, text, report = _version_outcome(summary, index, before, version, evaluation_report, new_events)
    restored = [event["detail"] for event in new_events if event["event"] == "restored"]
    return kind, "; ".join([text, *restored]), report


def _version_outcome(summary: RunSummary, index: dict, before: dict, version: str | None, evaluation_report: str,
                     new_events: list[dict]) -> tuple[str, str, str]:
    """Return (kind, row text, report path) for the run's new (or rolled-out) version alone."""
    if summary.error:
        return FAILED, summary.error, summary.log
    if version is None:
        reason = summary.decision.removeprefix("do not deploy (").removesuffix(")")
        return HELD_BACK, f"not deployed: {reason}", evaluation_report
    entry = index["versions"].get(version, {})
    reports = [event["report"] for event in index.get("history", []) if event.get("version") == version and event.get("report")]
    report = reports[-1] if reports else evaluation_report
    status = entry.get("status")
    if status == "stable":
        kept = [event["detail"] for event in new_events if event["event"] == KEPT_SERVING and event.get("version") == version]
        if kept:
            return HELD_BACK, f"{version} stays stable and serving, but this run's check failed: {kept[-1]}", report
        if before.get(version, {}).get("status") == "stable":
            if any(event["event"] == DUPLICATE_EVENT and event["version"] == version for event in new_events):
                return NOT_NEEDED, f"duplicate of stable {version}: byte-identical, nothing new stored or deployed", report
            return NOT_NEEDED, f"{version} already stable: nothing to roll out", report
        events = {event["event"] for event in index.get("history", []) if event.get("version") == version}
        if "promoted" not in events:
            return PROMOTED, "promoted (the first version: stable at once, no canary to run)", report
        return PROMOTED, f"promoted after approval by {entry['approved_by']}" if entry.get("approved_by") else "promoted", report
    if status == "rejected":
        return REJECTED, entry.get("rejected_reason") or "rejected", report
    if status == "duplicate":  # a copy of stable saved before saves reused the version holding the same bytes
        return NOT_NEEDED, f"duplicate of stable {entry.get('duplicate_of')}", report
    if status == "held":
        return HELD_BACK, f"not deployed: {entry.get('held_reason')}", report
    return FAILED, f"failed: {version} was left {status or 'unknown'}; see the log", summary.log


# KFP names a report artifact's file after its output ("report"); the dashboard renders it by its type. For a local
# run, the summary points to a copy named with the extension the type calls for, which a browser or editor opens.
REPORT_EXTENSIONS = {"system.HTML": ".html", "system.Markdown": ".md"}


@functools.lru_cache(maxsize=None)
def report_extensions() -> dict[str, str]:
    """Return, per step (the folder kfp.local writes its outputs to), the file extension of its ``report`` output's type."""
    extensions = {}
    for component in vars(make_components(DEFAULT_IMAGE)).values():
        report = (component.component_spec.outputs or {}).get("report")
        kind = report.type.partition("@")[0] if report is not None else ""
        if kind in REPORT_EXTENSIONS:
            extensions[component.component_spec.name] = REPORT_EXTENSIONS[kind]
    return extensions


def openable_report(path: str) -> str:
    """Return the path of a copy of a local report artifact named with its type's extension (made once), else ``path``."""
    artifact = Path(path)
    extension = report_extensions().get(artifact.parent.name) if path else None
    if extension is None or not artifact.is_file():
        return path
    named = artifact.with_name(artifact.name + extension)
    if not named.is_file():
        shutil.copyfile(artifact, named)
    return str(named)


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


@dataclass
class MonitorSummary(LocalRunRecord):
    """What one local drift check found and did, and what the retrain it started did."""

    reason: str = ""
    retrain: RunSummary | None = None

    @property
    def exit_code(self) -> int:
        """Return 1 if the check failed, the retrain's code if one ran, 3 for drift not acted on, else 0."""
        if not self.succeeded:
            return 1
        if self.retrain is not None:
            return EXIT_CODES[self.retrain.kind]
        return 0 if self.decision == NO_ACTION else 3


def retrain_arguments(model_name: str, parameters: dict, regime_start: str = "", spec: ModelSpec | None = None) -> dict[str, object]:
    """Return ``retrain_parameters`` as the model's local retrain arguments (local defaults first), checked (ValueError names a problem)."""
    model = spec if spec is not None else spec_for(model_name)
    try:
        defaults = parse_params(local_defaults(model.name, spec), model.name, spec)
        arguments = grouped_retrain_arguments(model, {**defaults, **parameters}, regime_start)
        run_config(model.name, arguments, spec=spec)
        return arguments
    except ValueError as error:
        raise ValueError(f"retrain_parameters: {error}") from None


def run_monitor_local(model_name: str, arguments: dict[str, object], state_dir: Path = DEFAULT_STATE_DIR, verbose: bool = False,
                      installation: Installation = Installation(), spec: ModelSpec | None = None) -> MonitorSummary:
    """Run the drift monitor with kfp.local (action=submit and drift: record the trigger, retrain locally); return what happened."""
    log_path = (state_dir / "logs" / f"{MONITOR}-{model_name}-{time.strftime('%Y%m%d-%H%M%S')}.log").resolve()
    summary = MonitorSummary(model_name, log=str(log_path))
    # In the pipeline a retrain decision is only reported: starting a local run is this function's job, not a step's.
    action = "clear" if arguments.get("action") == "clear" else "report"
    chosen = {} if spec is not None else {"model_name": model_name}
    task, summary.error = _execute(MONITOR, {**arguments, **chosen, "action": action}, state_dir, log_path, verbose, installation=installation, spec=spec)
    if task is None:
        return summary
    summary.succeeded = True
    summary.decision, summary.reason = task.outputs["decision"], task.outputs["reason"]
    regime_start = task.outputs["regime_start"]
    summary.report = openable_report(task.outputs["report"].path)
    if summary.decision == RETRAIN and arguments.get("action") == "submit":
        config = run_config(MONITOR, {**arguments, **chosen}, installation, spec)
        store = open_run_store(config, state_dir)
        record_trigger(store, model_name, str(store.read_index(model_name).get("stable")), summary.reason, f"a local run of {model_name}-retrain")
        print(f"==> drift: retraining {model_name} locally", flush=True)
        retrain = retrain_arguments(model_name, config.monitor.retrain_parameters, regime_start, spec)
        summary.retrain = run_local(model_name, retrain, state_dir, verbose=verbose, installation=installation, spec=spec)
    return summary
