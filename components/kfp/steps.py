"""Thin KFP wrappers: each reads the run's configuration artifact and its data inputs, calls one step function and writes
KFP outputs. Only validate-parameters takes the run parameters (and the exit handler, which KFP lets depend on no task).

The functions are plain so that ``pipelines.retrain`` can turn them into components on any image with
``dsl.component(func=..., base_image=image, install_kfp_package=False)``; they import the project inside their
bodies because KFP ships only the function source to the pod, where the image provides the package.
"""

from typing import NamedTuple, Optional

from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output


def validate_parameters(
    kind: str,
    model_name: str,
    installation: dict,
    model_spec: str,
    config: Output[Artifact],
    version: Optional[str] = None,
    source: Optional[str] = None,
    days: Optional[float] = None,
    prometheus_url: Optional[str] = None,
    serving_target: Optional[str] = None,
    namespace: Optional[str] = None,
    model_store: Optional[str] = None,
    canary_steps: Optional[list] = None,
    action: Optional[str] = None,
    data: Optional[dict] = None,
    prometheus: Optional[dict] = None,
    training: Optional[dict] = None,
    gates: Optional[dict] = None,
    store: Optional[dict] = None,
    serving: Optional[dict] = None,
    canary: Optional[dict] = None,
    fleet: Optional[dict] = None,
    monitor: Optional[dict] = None,
) -> str:
    """Check every run parameter at the start of the DAG (failing with all problems listed), resolve a rollout's
    ``model-registry://<model>/<version>`` through the registry (checked against the store), start a retrain without a regime_start
    at the newest regime it can tell (``learned_regime``), and write the run's configuration; return the version a rollout rolls out
    ("" for another pipeline)."""
    arguments = {name: value for name, value in locals().items() if name not in ("kind", "installation", "model_spec", "config")}
    from components.kfp.config import carried_spec, config_from_arguments
    from components.kfp.workflow import learned_regime, registry_version

    checked = learned_regime(registry_version(config_from_arguments(kind, arguments, installation, carried_spec(model_spec))))
    with open(config.path, "w") as handle:
        handle.write(checked.to_json())
    config.metadata.update({"kind": kind, "model_name": checked.model_name})
    print("result: every run parameter is valid")
    return checked.version


def ingest(
    config: Input[Artifact],
    train_data: Output[Dataset],
    validation_data: Output[Dataset],
) -> str:
    """Read raw metrics from the source, validate them and write train/validation Parquet; return a description."""
    from components.data.ingest import ingest as run_ingest
    from components.kfp.config import read_config
    from components.kfp.workflow import ingest_request

    settings = read_config(config.path)
    if settings.data.source == "prometheus":
        from components.data.prometheus import token_source

        print(token_source(settings.prometheus.secret))
    result = run_ingest(ingest_request(settings))
    result.train.to_parquet(train_data.path, index=False)
    result.validation.to_parquet(validation_data.path, index=False)
    for dataset, frame in ((train_data, result.train), (validation_data, result.validation)):
        dataset.metadata.update({"rows": len(frame), "source": settings.data.source, "data_source": result.data_source})
    print(f"result: {result.description}")
    return result.description


def train(
    config: Input[Artifact],
    train_data: Input[Dataset],
    model: Output[Model],
):
    """Fit the run's model as its spec says and write model.pkl plus training.json (with the input profile) into the Model artifact."""
    from pathlib import Path

    import pandas as pd

    from components.kfp.config import read_config
    from components.model.train import save_trained, train_model

    settings = read_config(config.path)
    spec = settings.spec
    trained = train_model(spec, pd.read_parquet(train_data.path))
    training = save_trained(trained, Path(model.path), train_data.metadata.get("data_source", "unknown"), settings.data.regime_start)
    model.metadata.update({key: value for key, value in training.items() if key != "profile"})
    print(f"result: {spec.name} ({spec.estimator.steps[-1].class_path.rsplit('.', 1)[-1]}) on {trained.training_rows:,} rows")


def evaluate(
    config: Input[Artifact],
    model: Input[Model],
    validation_data: Input[Dataset],
    data_description: str,
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    report: Output[Markdown],
) -> bool:
    """Score the candidate as its type says, check the contract, gates and champion; return whether to deploy (reason in the report)."""
    from components.kfp.config import read_config
    from components.kfp.workflow import evaluate_step

    settings = read_config(config.path)
    evaluation, markdown = evaluate_step(settings.spec, model.path, validation_data.path, data_description, settings.store)
    for name, value in evaluation.metrics.items():
        metrics.log_metric(name, round(value, 6))
    if evaluation.confusion is not None:
        classification_metrics.log_confusion_matrix(list(evaluation.categories), evaluation.confusion)
    if evaluation.roc is not None:
        classification_metrics.log_roc_curve(*evaluation.roc)
    with open(report.path, "w") as handle:
        handle.write(markdown)
    print(markdown)
    print(f"result: {'deploy' if evaluation.deploy else 'do not deploy'} ({evaluation.reason})")
    return evaluation.deploy


def save_to_storage(
    config: Input[Artifact],
    model: Input[Model],
    metrics: Input[Metrics],
    run_name: str,
    image: str,
) -> NamedTuple("SaveOutputs", [("version", str), ("storage_uri", str)]):
    """Store the model as the next immutable version (or find the version holding the same bytes) and register it in the model registry
    when one is configured; return the version and its storageUri."""
    from collections import namedtuple

    from components.kfp.config import read_config
    from components.kfp.workflow import save_step, sync_registry, this_run

    settings = read_config(config.path)
    stored = save_step(settings.model_name, model.path, dict(metrics.metadata), settings.store, this_run(run_name), image)
    if stored.already_stored:
        print(f"result: byte-identical to stored {stored.version}: nothing new saved -> {stored.storage_uri}")
    else:
        print(f"result: saved {stored.version} -> {stored.storage_uri}")
    sync_registry(settings, at_save=True)
    return namedtuple("SaveOutputs", ["version", "storage_uri"])(stored.version, stored.storage_uri)


def deploy_inference_service(
    config: Input[Artifact],
    version: str,
    run_name: str,
) -> str:
    """Deploy the stored version (stable on first deployment, else a dark candidate at 0 %; held if trained on synthetic data and
    the target is a cluster, unless allowed); return what happened."""
    from components.kfp.config import read_config
    from components.kfp.workflow import deploy_step, require_registered, sync_registry, this_run

    run_name = this_run(run_name)
    settings = read_config(config.path)
    serving = settings.serving
    if settings.kind == "rollout":
        sync_registry(settings)  # a version stored outside a retrain is registered first, so that its deploy labels can name it
    links = settings.registry.links(settings.model_name)
    if links is not None and settings.registry.required:
        require_registered(links, version)
    outcome = deploy_step(settings.model_name, version, serving.target, settings.store, serving.ready_timeout_s, run_name,
                          serving.kserve_options(run_name, links), settings.fleet.gitops_options(), serving.allow_synthetic_deploy)
    print(f"result: {outcome.message}")
    sync_registry(settings)
    return outcome.message


def smoke_test(
    config: Input[Artifact],
    version: str,
    validation_data: Input[Dataset],
    report: Output[Markdown],
) -> NamedTuple("SmokeOutputs", [("passed", bool), ("reason", str)]):
    """Probe the version's own endpoint against the contract and its offline predictions; return passed and why not."""
    from collections import namedtuple

    from components.kfp.config import read_config
    from components.kfp.workflow import configured_serving, sync_registry
    from components.release.rollout import record_smoke_test, smoke_test as run_smoke_test

    settings = read_config(config.path)
    target, store, sample = configured_serving(settings, validation_path=validation_data.path)
    result = run_smoke_test(target, store, settings.model_name, version, sample, max_p95_latency_ms=settings.canary.max_p95_latency_ms)
    markdown = result.markdown()
    with open(report.path, "w") as handle:
        handle.write(markdown)
    record_smoke_test(store, settings.model_name, result, report.uri)
    print(markdown)
    passed_checks = sum(passed for _, passed, _ in result.checks)
    print(f"result: {'passed' if result.passed else 'FAILED'} {passed_checks}/{len(result.checks)} checks{'' if result.passed else ': ' + result.rejection}")
    sync_registry(settings, store)
    return namedtuple("SmokeOutputs", ["passed", "reason"])(result.passed, result.rejection)


def canary_promote(
    config: Input[Artifact],
    version: str,
    run_name: str,
    validation_data: Input[Dataset],
    report: Output[HTML],
) -> str:
    """Step traffic to the candidate with analysis at each step (holding for approval before 100 % with approval=before-promote);
    promote or roll back; return the outcome."""
    from components.data.prometheus import PrometheusClient, PrometheusProvider, token_source
    from components.kfp.config import read_config
    from components.kfp.workflow import configured_approval, configured_serving, probe_sample_from, sync_registry, this_run
    from components.release.rollout import ProbeProvider, canary_promote as run_canary

    run_name = this_run(run_name)
    settings = read_config(config.path)
    target, store, _ = configured_serving(settings, run_name)
    spec, prometheus = settings.canary, settings.prometheus

    def providers():
        """Build the metric providers once there is a candidate to analyse (the probe data is read only then)."""
        built = [ProbeProvider(probe_sample_from(validation_data.path, settings.model_name), spec.probe_requests)]
        if prometheus.url:
            print(token_source(prometheus.secret))
            built.append(PrometheusProvider(PrometheusClient(prometheus.url, prometheus.ca_bundle), prometheus.window,
                                            scope=target.metric_scope(settings.model_name)))
        return built

    result = run_canary(target, store, settings.model_name, version, spec, providers, run_name=run_name,
                        timeout_s=settings.serving.ready_timeout_s, report_uri=report.uri, approval=configured_approval(settings, target))
    with open(report.path, "w") as handle:
        handle.write(result.html())
    print(f"result: {result.outcome} ({result.reason})")
    sync_registry(settings, store)
    return result.outcome


def rollback(
    config: Input[Artifact],
    version: str,
    run_name: str,
    reason: str,
) -> str:
    """Undo what this run deployed of the version (its candidate, or its failed first deployment) and reject it; return what happened."""
    from components.kfp.config import read_config
    from components.kfp.workflow import configured_serving, sync_registry, this_run
    from components.release.rollout import rollback as run_rollback

    run_name = this_run(run_name)
    settings = read_config(config.path)
    target, store, _ = configured_serving(settings, run_name)
    outcome = run_rollback(target, store, settings.model_name, version, reason, run_name=run_name, timeout_s=settings.serving.ready_timeout_s)
    print(f"result: {outcome.message}")
    sync_registry(settings, store)
    return outcome.message


def ensure_safe_serving(
    kind: str,
    model_name: str,
    installation: dict,
    model_spec: str,
    run_name: str,
    serving_target: str,
    namespace: str,
    model_store: str,
    store: dict,
    serving: dict,
    canary: dict,
    fleet: dict,
) -> str:
    """Exit handler: whatever failed, leave the stored stable serving (restored if nothing serves), no hold of this run awaiting approval
    and this run's candidate at 0 %; return the state.

    An exit task may depend on no other task, so it reads its few settings from the run parameters, not the configuration artifact.
    """
    from components.kfp.config import carried_spec, config_from_arguments
    from components.kfp.workflow import configured_approval, configured_serving, sync_registry, this_run
    from components.model.spec import use_spec
    from components.registry.client import RegistryError
    from components.release.rollout import make_safe

    try:
        run_name = this_run(run_name)
    except ValueError as error:  # such a run deployed nothing (its deploy step refused); stable is still made sure to serve
        print(f"run: {error}")
        run_name = ""
    arguments = {"model_name": model_name, "serving_target": serving_target, "namespace": namespace, "model_store": model_store, "store": store,
                 "serving": serving, "canary": canary, "fleet": fleet}
    settings = config_from_arguments(kind, arguments, installation, carried_spec(model_spec))
    use_spec(settings.spec)
    target, opened_store, _ = configured_serving(settings, run_name)
    try:
        approval = configured_approval(settings, target)
    except RegistryError as error:  # serving is made safe all the same
        approval = None
        print(f"approval: cannot read decisions in the registry, so a hold this run left awaiting one is not marked expired: {error}")
    outcome = make_safe(target, opened_store, settings.model_name, run_name=run_name, timeout_s=settings.serving.ready_timeout_s, approval=approval)
    print(f"result: {outcome.message}")
    sync_registry(settings, opened_store)
    return outcome.message


def monitor_drift(
    config: Input[Artifact],
    metrics: Output[Metrics],
    report: Output[Markdown],
    distributions: Output[Artifact],
) -> NamedTuple("MonitorOutputs", [("decision", str), ("reason", str), ("stable_version", str), ("regime_start", str)]):
    """Measure the live window's drift from the stable version's profile and decide; return decision, reason, stable version and,
    with a retrain decision, the drift's onset the retrain learns from."""
    from collections import namedtuple

    from components.kfp.config import read_config
    from components.kfp.workflow import active_local_run, ingest_request, monitor_step, served_namespace_scope
    from components.monitoring.monitor import drift_table

    settings = read_config(config.path)
    model_name, monitoring = settings.model_name, settings.monitor
    if monitoring.action == "submit" and not monitoring.dsp_api_url:  # fail every run, not only the first one that finds drift
        raise ValueError("action=submit needs dsp_api_url (monitor.dsp_api_url), the DSP API's in-cluster address, e.g. https://ds-pipeline-dspa.<project>.svc:8443")
    if monitoring.dsp_api_url:
        from components.monitoring.dsp_api import DspApi

        active = ", ".join(DspApi(monitoring.dsp_api_url, monitoring.dsp_ca_bundle).active_runs(f"{model_name}-retrain")) or None
    else:
        active = active_local_run(model_name)
    decision_settings = monitoring.settings(settings.spec.drift.max_retrains_per_episode)
    result = monitor_step(model_name, ingest_request(settings), decision_settings, settings.store, active, monitoring.pushgateway_url,
                          clear=monitoring.action == "clear", scope=served_namespace_scope(settings.serving.namespace))
    assessment = result.assessment
    metrics.log_metric("drift_score", round(assessment.drift_score, 4))
    metrics.log_metric("level_score", round(assessment.level_score, 4))
    metrics.log_metric("drifted_features", len(assessment.drifted_features))
    metrics.log_metric("max_psi", round(max(drift.psi for drift in assessment.features), 4))
    with open(report.path, "w") as handle:
        handle.write(result.markdown)
    with open(distributions.path, "wb") as handle:
        handle.write(result.plot_png)
    distributions.metadata["mimeType"] = "image/png"
    print("\n".join(drift_table(assessment)))
    print(f"result: {result.decision.action}: {result.decision.reason}")
    return namedtuple("MonitorOutputs", ["decision", "reason", "stable_version", "regime_start"])(
        result.decision.action, result.decision.reason, assessment.stable_version, result.regime_start)


def trigger_retrain(
    config: Input[Artifact],
    decision: str,
    stable_version: str,
    reason: str,
    regime_start: str,
) -> str:
    """Act on a retrain decision (submit: start the retrain run via the KFP API, learning from the drift's onset on, and record the
    trigger); return the run id or ""."""
    from components.kfp.config import read_config, retrain_arguments
    from components.kfp.workflow import open_store
    from components.monitoring.monitor import RETRAIN, record_trigger

    settings = read_config(config.path)
    monitoring = settings.monitor
    if decision != RETRAIN:
        print(f"result: nothing to start ({decision})")
        return ""
    if monitoring.action != "submit":
        print(f"result: retrain recommended, not started (action={monitoring.action}): {reason}")
        return ""
    from components.monitoring.dsp_api import DspApi

    pipeline = f"{settings.model_name}-retrain"
    arguments = retrain_arguments(settings.spec, monitoring.retrain_parameters, regime_start)
    run_id = DspApi(monitoring.dsp_api_url, monitoring.dsp_ca_bundle).start_run(pipeline, arguments, monitoring.experiment, f"{pipeline}-on-drift")
    record_trigger(open_store(settings.store), settings.model_name, stable_version, reason, f"run {run_id} of {pipeline}")
    print(f"result: started run {run_id} of {pipeline}")
    return run_id
