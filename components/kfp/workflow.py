"""The steps as the pipeline runs them: artifact paths in, results out, the store located from the environment.

Each step runs in its own process, so pandas, scikit-learn and the evaluation are imported only by the steps
that use them: a serving step starts without paying for them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from components import __version__
from components.runtime.warm_process import SERVING_HOME_ENV
from components.model.contract import TIMESTAMP_COLUMN, schema_for, utc_time
from components.model.spec import spec_for
from components.serving.target import ServingError, ServingTarget, namespace_scope
from components.store.s3 import DEFAULT_SECRET, S3Store, s3_client_from_environment
from components.store.filesystem import (
    DEFAULT_PVC,
    DEFAULT_STORE_ROOT,
    MODEL_FILENAME,
    TRAINING_FILENAME,
    FilesystemStore,
    ModelStore,
    StoredVersion,
    StoreError,
    champion_version,
    current_time,
    load_model,
    utc_now,
)

if TYPE_CHECKING:  # a serving step imports only its target's module (a step that serves nothing, none), and numpy and requests only when it measures
    from components.model.evaluate import Evaluation
    from components.model.spec import ModelSpec
    from components.serving.gitops.fleet import GitopsOptions
    from components.serving.kserve import KServeOptions
    from components.release.approval import ApprovalGate
    from components.release.rollout import StepOutcome
    from components.data.ingest import IngestRequest
    from components.kfp.config import RunConfig
    from components.registry.labels import RegistryLinks
    from components.monitoring.monitor import Assessment, Decision, MonitorSettings

STORE_ROOT_ENV = "MODEL_STORE_ROOT"
RUN_LOCKS_ENV = "MODEL_PIPELINES_RUN_LOCKS"  # set by local runs: where a retrain or rollout holds its model's lock
# On a cluster every step that records or checks what its run deployed reads its Argo workflow's name from this variable
# (pipelines/retrain.py sets it from the pod's label): unique per run, scheduled runs included, on every backend. The run
# name placeholder is not: a recurring run's is empty (KFP compiles it with no display name), and KFP 2.2-2.4 pass it
# unresolved, the same literal for every run.
RUN_ENV = "MODEL_PIPELINES_RUN"
ARGO_WORKFLOW_LABEL = "metadata.labels['workflows.argoproj.io/workflow']"
SERVING_TARGETS = ("kserve", "local", "gitops")


@dataclass(frozen=True)
class StoreOptions:
    """Which model store a step uses: the PVC (filesystem) or S3 through a data connection."""

    kind: str = "pvc"
    pvc_name: str = DEFAULT_PVC
    s3_prefix: str = "models"
    s3_secret: str = DEFAULT_SECRET
    s3_verify: bool = True
    s3_ca_bundle: str = ""


def store_root() -> Path:
    """Return the filesystem store's root: $MODEL_STORE_ROOT, the PVC when /mnt/models is a mount (a pod), else <state dir>/store.

    So that a compiled pipeline run by kfp.local outside a pod keeps its store beside its serving state, and
    never silently creates /mnt/models on a laptop.
    """
    if os.environ.get(STORE_ROOT_ENV):
        return Path(os.environ[STORE_ROOT_ENV])
    from components.serving.local import state_dir

    return Path(DEFAULT_STORE_ROOT) if os.path.ismount(DEFAULT_STORE_ROOT) else state_dir() / "store"


def serving_home() -> Path:
    """Return the local serving target's home: $MODEL_SERVING_HOME, else <state dir>/serving."""
    if os.environ.get(SERVING_HOME_ENV):
        return Path(os.environ[SERVING_HOME_ENV])
    from components.serving.local import state_dir

    return state_dir() / "serving"


def open_store(options: StoreOptions) -> ModelStore:
    """Return the store: the filesystem at ``store_root()`` (the PVC mount in a pod), or S3."""
    if options.kind == "pvc":
        return FilesystemStore(store_root(), options.pvc_name)
    if options.kind == "s3":
        client, bucket = s3_client_from_environment(options.s3_secret, options.s3_ca_bundle, options.s3_verify)
        return S3Store(client, bucket, options.s3_prefix)
    raise StoreError(f"unknown model_store {options.kind!r}: use pvc or s3")


def target_from_environment(
    name: str, options: KServeOptions | None = None, store: ModelStore | None = None, gitops: GitopsOptions | None = None,
) -> ServingTarget:
    """Return the named serving target: ``kserve`` or ``gitops`` configured by the options, ``local`` from the environment."""
    if name == "local":
        from components.serving.local import LocalTarget

        return LocalTarget(serving_home(), store_root(), s3_store=store if isinstance(store, S3Store) else None)
    from components.serving.kserve import KServeOptions, KServeTarget

    if name == "kserve":
        return KServeTarget(options or KServeOptions())
    if name == "gitops":
        from components.serving.gitops.fleet import GitopsOptions
        from components.serving.gitops.target import GitopsTarget

        return GitopsTarget(options or KServeOptions(), gitops or GitopsOptions())
    raise ServingError(f"unknown serving_target {name!r}: use one of {', '.join(SERVING_TARGETS)}")


def serving_context(
    model_name: str, serving_target: str, store_options: StoreOptions, options: KServeOptions | None = None,
    validation_path: str | None = None, gitops: GitopsOptions | None = None,
):
    """Return (target, store, probe sample or None) for a serving step."""
    sample = probe_sample_from(validation_path, model_name) if validation_path else None
    store = open_store(store_options)
    return target_from_environment(serving_target, options, store, gitops), store, sample


def configured_serving(config: RunConfig, run_name: str = "", validation_path: str | None = None):
    """Return (target, store, probe sample or None) for a serving step of the run ``config`` describes."""
    return serving_context(config.model_name, config.serving.target, config.store,
                           config.serving.kserve_options(run_name, config.registry.links(config.model_name)), validation_path, config.fleet.gitops_options())


def configured_approval(config: RunConfig, target: ServingTarget) -> ApprovalGate | None:
    """Return the approval gate of the run ``config`` describes, or None when approval=none: decisions read from its model registry
    when one is configured, else where its serving ``target`` keeps them (RegistryError: a registry without a token)."""
    from components.release.approval import ApprovalGate, approval_source

    settings = config.approval
    if not settings.enabled:
        return None
    registry = config.registry.client() if config.registry.enabled else None
    return ApprovalGate(approval_source(config.serving.target, target, serving_home(), registry), settings)


def ingest_request(config: RunConfig) -> IngestRequest:
    """Return what the run ``config`` describes reading: its model's metrics from its source."""
    from components.data.ingest import IngestRequest

    data, prometheus = config.data, config.prometheus
    return IngestRequest(config.model_name, data.source, data.file_path, data.days, data.seed, data.validation_fraction,
                         prometheus_url=prometheus.url, prometheus_ca_bundle=prometheus.ca_bundle, prometheus_queries=prometheus.queries,
                         prometheus_end=prometheus.end, allow_synthetic_fallback=data.allow_synthetic_fallback, regime_start=data.regime_start)


def probe_sample_from(validation_path: str, model_name: str):
    """Return the probe instances (``rollout.probe_sample``) of the validation Parquet at ``validation_path``.

    A model that takes the raw metrics reads them with pyarrow alone; pandas is imported only to engineer features.
    """
    from components.release.rollout import probe_rows, probe_sample

    schema = schema_for(model_name)
    if not schema.engineered:
        import numpy as np
        import pyarrow.parquet as pq

        # ParquetFile, unlike read_table, does not import pyarrow.dataset (and with it pandas).
        table = pq.ParquetFile(validation_path).read(columns=schema.metric_names)
        return probe_rows(np.column_stack([table.column(name).to_numpy() for name in schema.metric_names]).astype(float), model_name)
    import pandas as pd

    return probe_sample(pd.read_parquet(validation_path), model_name)


def deploy_step(
    model_name: str, version: str, serving_target: str, store_options: StoreOptions, timeout_s: float, run_name: str,
    options: KServeOptions | None = None, gitops: GitopsOptions | None = None, allow_synthetic_deploy: bool = False,
) -> StepOutcome:
    """Deploy a stored version as this run's; if serving refuses it, undo what this run deployed, reject it and re-raise.

    A cluster target (not ``local``) serves a version trained on synthetic data only with ``allow_synthetic_deploy``.
    """
    from components.release.rollout import deploy_version, rollback

    target, store, _ = serving_context(model_name, serving_target, store_options, options, gitops=gitops)
    refuse_synthetic = serving_target != "local" and not allow_synthetic_deploy
    try:
        return deploy_version(target, store, model_name, version, timeout_s, run_name=run_name, refuse_synthetic=refuse_synthetic)
    except ServingError as error:
        if version in store.read_index(model_name)["versions"]:
            rollback(target, store, model_name, version, f"rejected at deploy-inference-service: {error}", run_name=run_name, timeout_s=timeout_s)
        raise


def evaluate_step(spec: ModelSpec, model_dir: str, validation_path: str, data_description: str, store_options: StoreOptions) -> tuple[Evaluation, str]:
    """Evaluate the candidate in ``model_dir`` as ``spec`` says, against the store's champion; return the evaluation and its report."""
    import pandas as pd

    from components.model.evaluate import evaluate_candidate, markdown_report

    store = open_store(store_options)
    champion_name = champion_version(store.read_index(spec.name))
    champion = None
    if champion_name is not None:
        try:
            champion = (champion_name, load_model(store, spec.name, champion_name))
        except (StoreError, OSError, ValueError) as error:
            print(f"warning: champion {champion_name} cannot be loaded ({error}); judging the candidate on gates alone")
    model_bytes = (Path(model_dir) / MODEL_FILENAME).read_bytes()
    evaluation = evaluate_candidate(spec, model_bytes, pd.read_parquet(validation_path), champion=champion)
    return evaluation, markdown_report(evaluation, data_description)


def save_step(model_name: str, model_dir: str, scores: dict, store_options: StoreOptions, run_name: str, image: str = "") -> StoredVersion:
    """Save the candidate as the next version with its full record (metrics, parameters, lineage, the image and the champion it was
    judged against), or return the version that already holds its bytes."""
    from importlib.metadata import version as package_version

    from components.monitoring.monitor import validation_profile

    training = json.loads((Path(model_dir) / TRAINING_FILENAME).read_text())
    store = open_store(store_options)
    record = {
        "model": model_name,
        "metrics": scores,
        "parameters": training["parameters"],
        "data_fingerprint": training["data_fingerprint"],
        "data_source": training.get("data_source", "unknown"),
        "training_rows": training["training_rows"],
        "data_window": training.get("data_window", {}),
        "regime_start": training.get("regime_start", ""),  # learned from this minute on (a drift's onset), "" for the whole window
        "pipeline_name": f"{model_name}-retrain",
        "image": image,
        # What evaluate judged the candidate against: the same choice it made (the stable version, else the newest not rejected).
        "champion": champion_version(store.read_index(model_name)) or "",
        "sklearn_version": package_version("scikit-learn"),
        "project_version": __version__,
        "python_version": platform.python_version(),
        "run_name": run_name,
        # What drift is measured against later: the training inputs' distribution and what validation showed.
        "profile": {**training.get("profile", {}), "validation": validation_profile(scores)},
        # What the smoke test expects the served model to answer: training inputs and the fitted model's predictions.
        "reference": training.get("reference", {}),
        # The spec it was trained to (with the run's training knobs and gates): the model server serves any model by it.
        "spec": json.dumps(spec_for(model_name).document.value, sort_keys=True),
    }
    # A model byte-identical to a stored version takes no new number: the run goes on with that version.
    return store.save_version(model_name, Path(model_dir) / MODEL_FILENAME, record, reuse_identical=True)


REGISTRY_PREFIX = "registry: "  # the line a step prints about the registry; a local run's summary repeats the last one


def sync_registry(config: RunConfig, store: ModelStore | None = None, *, at_save: bool = False) -> str:
    """Make the registry match the store's index for the run's model (when a registry is configured), print and return what happened.

    A registry that cannot be reached or refuses leaves the run going and says what is not registered; at the save step with
    ``registry_required`` it raises RegistryError instead, before anything deploys (the stored version stays stored).
    """
    registry = config.registry
    if not registry.enabled:
        return ""
    from components.registry.client import REGISTRY_FAILURES, RegistryError
    from components.registry.sync import sync_model

    model_name = config.model_name
    catch_up = f"`model-pipelines registry sync {model_name}` registers what the store holds once the registry answers"
    try:
        report = sync_model(store or open_store(config.store), registry.client(), model_name, config.spec.description, config.spec.owner,
                            config.store.s3_secret if config.store.kind == "s3" else "")
        line = f"{REGISTRY_PREFIX}{report.message()} ({registry.url})"
    except (*REGISTRY_FAILURES, ValueError) as error:
        if at_save and registry.required:
            raise RegistryError(f"{error}. registry_required=true, so the run stops before any deploy; every stored version stays in the "
                                f"store; {catch_up}, or set store.registry_required=false to go on without it") from None
        line = f"{REGISTRY_PREFIX}NOT in step, nothing registered or mirrored for {model_name}: {error}; the store keeps every version; {catch_up}"
    print(line, flush=True)
    return line


def registry_version(config: RunConfig, store: ModelStore | None = None) -> RunConfig:
    """Return ``config`` with a ``model-registry://<model>/<version>`` version replaced by the stored version it names, its artifact
    and sha256 checked against the store (``config`` itself for a plain version); raise RegistryError or ValueError naming a mismatch,
    before anything deploys."""
    from dataclasses import replace

    from components.registry.client import RegistryError
    from components.registry.sync import parse_registry_uri, resolve_version

    reference = parse_registry_uri(config.version)
    if reference is None:
        return config
    model, version = reference
    if model != config.model_name:
        raise ValueError(f"version {config.version} names model {model!r}, but this rollout is of {config.model_name!r}")
    if not config.registry.enabled:
        raise RegistryError(f"version {config.version} needs the registry: set store.registry_url=https://… (and store.registry_ca_bundle); "
                            f"its token comes from Secret {config.registry.secret!r} (or $MODEL_REGISTRY_TOKEN locally)")
    checked = resolve_version(config.registry.client(), store or open_store(config.store), model, version)
    print(f"model registry: {config.version} is the store's {checked} (artifact and sha256 checked)", flush=True)
    return replace(config, version=checked, values={**config.values, "version": checked})


def learned_regime(config: RunConfig, store: ModelStore | None = None) -> RunConfig:
    """Return a retrain's ``config`` learning from the newest regime it can tell when it sets no data.regime_start: the onset of an open
    drift episode seen on Prometheus once ``min_regime_hours`` of it are there, else the regime_start its model's stable version was
    trained from (``config`` itself when it sets one, or when neither applies: another source, the whole window learned).

    A drift-triggered retrain learns from the drift's onset; a scheduled retrain, whose window still reaches back before it, would
    otherwise learn the old cluster again.
    """
    from dataclasses import replace

    from components.kfp.config import RETRAIN
    from components.monitoring.monitor import EPISODE_KEY

    if config.kind != RETRAIN or config.data.regime_start:
        return config
    store = store or open_store(config.store)
    index = store.read_index(config.model_name)
    stable = index.get("stable")
    record = store.version_record(config.model_name, stable) if stable else {}
    start: dt.datetime | None = None
    start_text = ""  # as the record or the episode wrote it
    if record.get("regime_start") and record.get("data_source") == config.data.source:
        # Another source has another timeline (synthetic data's starts in January 2026): its minutes are not comparable.
        start = utc_time(str(record["regime_start"]), f"the record of stable {config.model_name} {stable} has regime_start "
                          f"{str(record['regime_start'])[:40]!r}, not an ISO-8601 time: set data.regime_start for this run, and check the "
                          "store with `model-pipelines store verify`")
        start_text, learned = str(record["regime_start"]), f"the regime stable {stable} learned"
    episode = index.get(EPISODE_KEY) or {}
    onset = utc_time(str(episode["onset"]), f"the drift episode's onset {str(episode['onset'])[:40]!r} in the store's index is not an ISO-8601 "
                      "time: set data.regime_start for this run") if episode.get("onset") and episode.get("source") == config.data.source else None
    if onset is not None and (start is None or onset > start):  # a drift newer than what the stable version learned
        needed, shown, enough = config.spec.drift.min_regime_hours, "on a timeline this run cannot date before reading it", False
        if config.data.source == "prometheus":  # only a Prometheus window ends at prometheus.end (or now): others are dated by their data
            end = utc_time(config.prometheus.end, "prometheus.end is not an ISO-8601 time") if config.prometheus.end else current_time()
            hours = (end - onset).total_seconds() / 3600
            shown, enough = f"{hours:.0f} of {needed:g} hours of the new regime", hours >= needed
        if enough:
            start, start_text = onset, str(episode["onset"])
            learned = f"the onset of the drift open since then ({hours:.0f} hours of the new regime)"
        else:
            print(f"data: a drift is open since {onset:%Y-%m-%d %H:%M} UTC ({shown}), so this retrain learns both regimes; the drift monitor "
                  f"retrains from the onset once there is enough of it, or set data.regime_start={onset.isoformat()}", flush=True)
    if start is None:
        return config
    print(f"data: learning from {start:%Y-%m-%d %H:%M} UTC on, {learned} (set data.regime_start to learn from another time)", flush=True)
    return replace(config, values={**config.values, "regime_start": start_text})


def this_run(run_name: str) -> str:
    """Return the name this run records on what it deploys: its Argo workflow's (``$MODEL_PIPELINES_RUN``), else ``run_name``.

    Raise ValueError when neither names the run: its rollback and exit handler could not tell its own candidate from another run's.
    """
    workflow = os.environ.get(RUN_ENV, "").strip()
    if workflow:
        return workflow
    if not run_name.strip() or "{{" in run_name:
        raise ValueError(f"this run has no name of its own (run_name {run_name!r} and no ${RUN_ENV}), so it could not tell what it deploys "
                         "from another run's; nothing was changed: upload the YAML this project compiles (`make compile`), whose steps "
                         "read their Argo workflow's name")
    return run_name


def require_registered(links: RegistryLinks, version: str) -> None:
    """Raise RegistryError, before anything deploys, when the registry cannot give ``version`` its deploy labels (registry_required)."""
    from components.registry.client import RegistryError

    try:
        links.ids(version)
    except RegistryError as error:
        raise RegistryError(f"{error}. registry_required=true, so {links.model_name} {version} is not deployed unlinked from the registry; "
                            "nothing was deployed") from None


class RunActiveError(RuntimeError):
    """Another local run of the model holds its run lock."""


def _run_lock_path(model_name: str) -> Path:
    """Return the model's run lock file under $MODEL_PIPELINES_RUN_LOCKS."""
    return Path(os.environ[RUN_LOCKS_ENV]) / f"{model_name}.lock"


@contextlib.contextmanager
def local_run_lock(model_name: str) -> Iterator[None]:
    """Hold the model's run lock under $MODEL_PIPELINES_RUN_LOCKS while a local retrain or rollout runs.

    A second local run of the same model fails at once, naming the holder, and the drift monitor sees the run as active.
    """
    path = _run_lock_path(model_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise RunActiveError(f"another local run of {model_name} is active ({handle.read().strip() or 'holder unknown'}); "
                             "wait for it to finish") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {utc_now()}")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def active_local_run(model_name: str) -> str | None:
    """Return who holds the model's local run lock (a retrain or rollout running now), or None."""
    if not os.environ.get(RUN_LOCKS_ENV):
        return None
    path = _run_lock_path(model_name)
    if not path.is_file():
        return None
    with open(path) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return f"local run, {handle.read().strip() or 'holder unknown'}"
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


@dataclass(frozen=True)
class MonitorResult:
    """One drift check: what was measured, what was decided, and the report with its plot."""

    assessment: Assessment
    decision: Decision
    markdown: str
    plot_png: bytes
    regime_start: str = ""  # with a retrain decision: the drift's onset, from which the retrain learns


def served_namespace_scope(namespace: str) -> str:
    """Return the PromQL matcher of the namespace the models serve in (``namespace``, else this pod's), or "" outside a cluster."""
    from components.credentials import pod_namespace

    return namespace_scope(namespace or pod_namespace())


def monitor_step(model_name: str, request: IngestRequest, settings: MonitorSettings, store_options: StoreOptions,
                 active_run: str | None, pushgateway_url: str = "", clear: bool = False, scope: str = "") -> MonitorResult:
    """Read the live window the stable version's profile asks for, check its units, measure drift, track its episode, decide and push
    the gauges.

    With ``clear``, the current drift episode (its onset and retrain count) is forgotten first; ``scope`` narrows the live
    prediction counts (the Thanos querier sees every project's).
    """
    import base64

    from components.monitoring.drift import check_scale_against_profile
    from components.data.ingest import read_window
    from components.monitoring.monitor import (
        NEEDS_HUMAN,
        RETRAIN,
        assess,
        decide,
        distribution_plot,
        live_prediction_stats,
        markdown_report,
        next_episode,
        prediction_checks,
        push_drift_metrics,
        record_episode,
        stable_profile,
        unmeasured_predictions,
    )
    from components.data.prometheus import PrometheusClient, PrometheusError

    store = open_store(store_options)
    stable, profile, data_source = stable_profile(store, model_name)
    minutes = int(profile["window_minutes"])
    live, description = read_window(request, minutes)
    check_scale_against_profile(profile, data_source, live, model_name, f"stable {stable}")
    if request.prometheus_url:
        end = live[TIMESTAMP_COLUMN].iloc[-1].to_pydatetime()
        try:
            stats = live_prediction_stats(PrometheusClient(request.prometheus_url, request.prometheus_ca_bundle), model_name, stable, minutes, end,
                                          scope)
            predictions = prediction_checks(model_name, profile.get("validation", {}), live, stats, settings)
        except PrometheusError as error:
            predictions = unmeasured_predictions(str(error))
    else:
        predictions = unmeasured_predictions("no prometheus_url to read the runtime's metrics from")
    assessment = assess(profile, stable, live, description, model_name, settings, predictions)
    if clear:
        record_episode(store, model_name, None)
    index, now = store.read_index(model_name), current_time()
    window_start, window_end = (live[TIMESTAMP_COLUMN].iloc[position].to_pydatetime() for position in (0, -1))
    episode = next_episode(index, assessment.drifted, window_start, now, request.source)
    decision = decide(assessment, index, now, settings, active_run, episode, window_end)
    if decision.action == NEEDS_HUMAN:
        episode["needs_human_for"] = index.get("stable")
    record_episode(store, model_name, episode)
    if pushgateway_url and (warning := push_drift_metrics(pushgateway_url, assessment, decision)):
        print(warning)
    plot = distribution_plot(assessment, profile)
    markdown = markdown_report(assessment, decision, f"data:image/png;base64,{base64.b64encode(plot).decode()}")
    return MonitorResult(assessment, decision, markdown, plot, episode["onset"] if decision.action == RETRAIN and episode else "")
