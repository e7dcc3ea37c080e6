"""Thin KFP wrappers: each parses its inputs, calls one step function and writes KFP outputs.

The functions are plain so that ``pipelines.retrain`` can turn them into components on any image with
``dsl.component(func=..., base_image=image, install_kfp_package=False)``; they import the project inside their
bodies because KFP ships only the function source to the pod, where the image provides the package.
"""

from typing import NamedTuple, Optional

from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output


def validate_parameters(
    source: str,
    file_path: str,
    days: float,
    seed: int,
    validation_fraction: float,
    prometheus_url: str,
    prometheus_secret: str,
    prometheus_ca_bundle: str,
    prometheus_queries: dict,
    prometheus_end: str,
    regime_start: str,
    allow_synthetic_fallback: bool,
    allow_synthetic_deploy: bool,
    prometheus_window: str,
    model_store: str,
    pvc_name: str,
    s3_prefix: str,
    s3_secret: str,
    s3_verify: bool,
    s3_ca_bundle: str,
    serving_target: str,
    namespace: str,
    runtime: str,
    deployment_mode: str,
    rollout_strategy: str,
    service_account: str,
    endpoint: str,
    gitops_repo: str,
    gitops_branch: str,
    gitops_path: str,
    fleet_waves: list,
    fleet_wave_timeout_s: float,
    gitops_secret: str,
    ready_timeout_s: float,
    canary_steps: list,
    canary_interval_s: float,
    probe_requests: int,
    max_error_rate: float,
    max_p95_latency_ms: float,
    max_prediction_shift: float,
    failure_limit: int,
    max_live_p95_latency_ms: float,
    algorithm: str,
    scaler: str,
    n_estimators: int,
    max_samples: int,
    pca_components: int,
    target_false_positive_rate: float,
    random_state: int,
    horizon_minutes: int,
    alpha: float,
    min_f1: float,
    max_anomaly_rate: float,
    max_mase: float,
    max_predict_latency_ms: float,
    max_pickle_mb: float,
    champion_tolerance: float,
    psi_threshold: float,
    ks_excess: float,
    level_excess: float,
    cooldown_hours: float,
    anomaly_rate_factor: float,
    forecast_bias_factor: float,
    min_predictions: int,
    min_regime_hours: float,
    action: str,
    dsp_api_url: str,
    dsp_ca_bundle: str,
    experiment: str,
    retrain_parameters: dict,
    pushgateway_url: str,
    model_name: Optional[str] = None,
    version: Optional[str] = None,
) -> str:
    """Check every run parameter of the pipeline at the start of the DAG; fail listing all problems, else return "ok"."""
    from components.kfp.run_parameters import check

    check(dict(locals()))
    print("result: every run parameter is valid")
    return "ok"


def ingest(
    model_name: str,
    source: str,
    file_path: str,
    days: float,
    seed: int,
    validation_fraction: float,
    prometheus_url: str,
    prometheus_secret: str,
    prometheus_ca_bundle: str,
    prometheus_queries: dict,
    prometheus_end: str,
    allow_synthetic_fallback: bool,
    regime_start: str,
    train_data: Output[Dataset],
    validation_data: Output[Dataset],
) -> str:
    """Read raw metrics from the source, validate them and write train/validation Parquet; return a description."""
    from components.data.ingest import IngestRequest, ingest as run_ingest

    if source == "prometheus":
        from components.data.prometheus import token_source

        print(token_source(prometheus_secret))
    result = run_ingest(IngestRequest(
        model_name, source, file_path, days, seed, validation_fraction, prometheus_url=prometheus_url,
        prometheus_ca_bundle=prometheus_ca_bundle, prometheus_queries=prometheus_queries, prometheus_end=prometheus_end,
        allow_synthetic_fallback=allow_synthetic_fallback, regime_start=regime_start,
    ))
    result.train.to_parquet(train_data.path, index=False)
    result.validation.to_parquet(validation_data.path, index=False)
    train_data.metadata.update({"rows": len(result.train), "source": source, "data_source": result.data_source})
    validation_data.metadata.update({"rows": len(result.validation), "source": source, "data_source": result.data_source})
    print(f"result: {result.description}")
    return result.description


def train_anomaly_detector(
    train_data: Input[Dataset],
    algorithm: str,
    scaler: str,
    n_estimators: int,
    max_samples: int,
    pca_components: int,
    target_false_positive_rate: float,
    random_state: int,
    model: Output[Model],
):
    """Fit the anomaly detector and write model.pkl plus training.json (with the input profile) into the Model artifact."""
    from pathlib import Path

    import pandas as pd

    from components.model.train import DetectorParams, save_trained, train_anomaly_detector as fit

    params = DetectorParams(algorithm, scaler, n_estimators, max_samples, pca_components, target_false_positive_rate, random_state)
    trained = fit(pd.read_parquet(train_data.path), params)
    training = save_trained(trained, Path(model.path), train_data.metadata.get("data_source", "unknown"))
    model.metadata.update({key: value for key, value in training.items() if key != "profile"})
    print(f"result: {algorithm} on {trained.training_rows:,} rows")


def train_predictive_analytics(
    train_data: Input[Dataset],
    horizon_minutes: int,
    alpha: float,
    model: Output[Model],
):
    """Fit the forecaster and write model.pkl plus training.json (with the input profile) into the Model artifact."""
    from pathlib import Path

    import pandas as pd

    from components.model.train import ForecasterParams, save_trained, train_predictive_analytics as fit

    trained = fit(pd.read_parquet(train_data.path), ForecasterParams(horizon_minutes, alpha))
    training = save_trained(trained, Path(model.path), train_data.metadata.get("data_source", "unknown"))
    model.metadata.update({key: value for key, value in training.items() if key != "profile"})
    print(f"result: ridge, {horizon_minutes} min ahead, on {trained.training_rows:,} rows")


def evaluate_anomaly_detector(
    model: Input[Model],
    validation_data: Input[Dataset],
    data_description: str,
    min_f1: float,
    max_anomaly_rate: float,
    max_predict_latency_ms: float,
    max_pickle_mb: float,
    champion_tolerance: float,
    model_store: str,
    pvc_name: str,
    s3_prefix: str,
    s3_secret: str,
    s3_verify: bool,
    s3_ca_bundle: str,
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    report: Output[Markdown],
) -> bool:
    """Score the detector, check the contract, gates and champion; return whether to deploy (reason in the report)."""
    from components.model.evaluate import Gates
    from components.kfp.workflow import StoreOptions, evaluate_step

    gates = Gates(min_f1=min_f1, max_predict_latency_ms=max_predict_latency_ms, max_pickle_mb=max_pickle_mb,
                  champion_tolerance=champion_tolerance, max_anomaly_rate=max_anomaly_rate)
    store = StoreOptions(model_store, pvc_name, s3_prefix, s3_secret, s3_verify, s3_ca_bundle)
    evaluation, markdown = evaluate_step("anomaly-detector", model.path, validation_data.path, data_description, gates, store)
    for name, value in evaluation.metrics.items():
        metrics.log_metric(name, round(value, 6))
    if evaluation.confusion is not None:
        classification_metrics.log_confusion_matrix(["normal", "anomaly"], evaluation.confusion)
    if evaluation.roc is not None:
        classification_metrics.log_roc_curve(*evaluation.roc)
    with open(report.path, "w") as handle:
        handle.write(markdown)
    print(markdown)
    print(f"result: {'deploy' if evaluation.deploy else 'do not deploy'} ({evaluation.reason})")
    return evaluation.deploy


def evaluate_predictive_analytics(
    model: Input[Model],
    validation_data: Input[Dataset],
    data_description: str,
    horizon_minutes: int,
    max_mase: float,
    max_predict_latency_ms: float,
    max_pickle_mb: float,
    champion_tolerance: float,
    model_store: str,
    pvc_name: str,
    s3_prefix: str,
    s3_secret: str,
    s3_verify: bool,
    s3_ca_bundle: str,
    metrics: Output[Metrics],
    report: Output[Markdown],
) -> bool:
    """Score the forecaster, check the contract, gates and champion; return whether to deploy (reason in the report)."""
    from components.model.evaluate import Gates
    from components.kfp.workflow import StoreOptions, evaluate_step

    gates = Gates(max_mase=max_mase, max_predict_latency_ms=max_predict_latency_ms, max_pickle_mb=max_pickle_mb, champion_tolerance=champion_tolerance)
    store = StoreOptions(model_store, pvc_name, s3_prefix, s3_secret, s3_verify, s3_ca_bundle)
    evaluation, markdown = evaluate_step(
        "predictive-analytics", model.path, validation_data.path, data_description, gates, store, horizon_minutes=horizon_minutes
    )
    for name, value in evaluation.metrics.items():
        metrics.log_metric(name, round(value, 6))
    with open(report.path, "w") as handle:
        handle.write(markdown)
    print(markdown)
    print(f"result: {'deploy' if evaluation.deploy else 'do not deploy'} ({evaluation.reason})")
    return evaluation.deploy


def save_to_storage(
    model_name: str,
    model: Input[Model],
    metrics: Input[Metrics],
    model_store: str,
    pvc_name: str,
    s3_prefix: str,
    s3_secret: str,
    s3_verify: bool,
    s3_ca_bundle: str,
    run_name: str,
) -> NamedTuple("SaveOutputs", [("version", str), ("storage_uri", str)]):
    """Store the model as the next immutable version (or find the version holding the same bytes); return the version and its storageUri."""
    from collections import namedtuple

    from components.kfp.workflow import StoreOptions, save_step

    stored = save_step(model_name, model.path, dict(metrics.metadata), StoreOptions(model_store, pvc_name, s3_prefix, s3_secret, s3_verify, s3_ca_bundle), run_name)
    if stored.already_stored:
        print(f"result: byte-identical to stored {stored.version}: nothing new saved -> {stored.storage_uri}")
    else:
        print(f"result: saved {stored.version} -> {stored.storage_uri}")
    return namedtuple("SaveOutputs", ["version", "storage_uri"])(stored.version, stored.storage_uri)


def deploy_inference_service(
    model_name: str,
    version: str,
    serving_target: str,
    model_store: str,
    pvc_name: str,
    s3_prefix: str,
    s3_secret: str,
    s3_verify: bool,
    s3_ca_bundle: str,
    namespace: str,
    runtime: str,
    deployment_mode: str,
    rollout_strategy: str,
    service_account: str,
    endpoint: str,
    gitops_repo: str,
    gitops_branch: str,
    gitops_path: str,
    fleet_waves: list,
    fleet_wave_timeout_s: float,
    run_name: str,
    ready_timeout_s: float,
    allow_synthetic_deploy: bool,
) -> str:
    """Deploy the stored version (stable on first deployment, else a dark candidate at 0 %; held if trained on synthetic data and
    the target is a cluster, unless allowed); return what happened."""
    from components.serving.gitops.target import GitopsOptions, fleet_waves as checked_waves
    from components.serving.kserve import KServeOptions
    from components.kfp.workflow import StoreOptions, deploy_step

    options = KServeOptions(namespace, runtime, deployment_mode, service_account, endpoint, run_name, rollout_strategy)
    gitops = GitopsOptions(gitops_repo, gitops_branch, gitops_path, checked_waves(fleet_waves), wave_timeout_s=fleet_wave_timeout_s)
    outcome = deploy_step(model_name, version, serving_target, StoreOptions(model_store, pvc_name, s3_prefix, s3_secret, s3_verify, s3_ca_bundle),
                          ready_timeout_s, run_name, options, gitops, allow_synthetic_deploy)
    print(f"result: {outcome.message}")
    return outcome.message


def smoke_test(
    model_name: str,
    version: str,
    serving_target: str,
    model_store: str,
    pvc_name: str,
    s3_prefix: str,
    s3_secret: str,
    s3_verify: bool,
    s3_ca_bundle: str,
    namespace: str,
    runtime: str,
    deployment_mode: str,
    rollout_strategy: str,
    service_account: str,
    endpoint: str,
    gitops_repo: str,
    gitops_branch: str,
    gitops_path: str,
    fleet_waves: list,
    fleet_wave_timeout_s: float,
    validation_data: Input[Dataset],
    max_p95_latency_ms: float,
    report: Output[Markdown],
) -> NamedTuple("SmokeOutputs", [("passed", bool), ("reason", str)]):
    """Probe the version's own endpoint against the contract and its offline predictions; return passed and why not."""
    from collections import namedtuple

    from components.serving.gitops.target import GitopsOptions, fleet_waves as checked_waves
    from components.serving.kserve import KServeOptions
    from components.release.rollout import record_smoke_test, smoke_test as run_smoke_test
    from components.kfp.workflow import StoreOptions, serving_context

    options = KServeOptions(namespace, runtime, deployment_mode, service_account, endpoint, rollout_strategy=rollout_strategy)
    gitops = GitopsOptions(gitops_repo, gitops_branch, gitops_path, checked_waves(fleet_waves), wave_timeout_s=fleet_wave_timeout_s)
    target, store, sample = serving_context(model_name, serving_target, StoreOptions(model_store, pvc_name, s3_prefix, s3_secret, s3_verify, s3_ca_bundle), options, validation_data.path, gitops)
    result = run_smoke_test(target, store, model_name, version, sample, max_p95_latency_ms=max_p95_latency_ms)
    markdown = result.markdown()
    with open(report.path, "w") as handle:
        handle.write(markdown)
    record_smoke_test(store, model_name, result, report.uri)
    print(markdown)
    passed_checks = sum(passed for _, passed, _ in result.checks)
    print(f"result: {'passed' if result.passed else 'FAILED'} {passed_checks}/{len(result.checks)} checks{'' if result.passed else ': ' + result.rejection}")
    return namedtuple("SmokeOutputs", ["passed", "reason"])(result.passed, result.rejection)


def canary_promote(
    model_name: str,
    version: str,
    serving_target: str,
    model_store: str,
    pvc_name: str,
    s3_prefix: str,
    s3_secret: str,
    s3_verify: bool,
    s3_ca_bundle: str,
    namespace: str,
    runtime: str,
    deployment_mode: str,
    rollout_strategy: str,
    service_account: str,
    endpoint: str,
    gitops_repo: str,
    gitops_branch: str,
    gitops_path: str,
    fleet_waves: list,
    fleet_wave_timeout_s: float,
    run_name: str,
    validation_data: Input[Dataset],
    canary_steps: list,
    canary_interval_s: float,
    probe_requests: int,
    max_error_rate: float,
    max_p95_latency_ms: float,
    max_prediction_shift: float,
    failure_limit: int,
    ready_timeout_s: float,
    prometheus_url: str,
    prometheus_secret: str,
    prometheus_ca_bundle: str,
    prometheus_window: str,
    max_live_p95_latency_ms: float,
    report: Output[HTML],
) -> str:
    """Step traffic to the candidate with analysis at each step; promote or roll back; return the outcome."""
    from components.serving.gitops.target import GitopsOptions, fleet_waves as checked_waves
    from components.serving.kserve import KServeOptions
    from components.data.prometheus import PrometheusClient, PrometheusProvider, token_source
    from components.release.rollout import CanarySpec, ProbeProvider, canary_promote as run_canary
    from components.kfp.workflow import StoreOptions, probe_sample_from, serving_context

    options = KServeOptions(namespace, runtime, deployment_mode, service_account, endpoint, run_name, rollout_strategy)
    gitops = GitopsOptions(gitops_repo, gitops_branch, gitops_path, checked_waves(fleet_waves), wave_timeout_s=fleet_wave_timeout_s)
    store_options = StoreOptions(model_store, pvc_name, s3_prefix, s3_secret, s3_verify, s3_ca_bundle)
    target, store, _ = serving_context(model_name, serving_target, store_options, options, gitops=gitops)
    spec = CanarySpec(tuple(int(step) for step in canary_steps), canary_interval_s, probe_requests, max_error_rate,
                      max_p95_latency_ms, max_prediction_shift, failure_limit, max_live_p95_latency_ms)

    def providers():
        """Build the metric providers once there is a candidate to analyse (the probe data is read only then)."""
        built = [ProbeProvider(probe_sample_from(validation_data.path, model_name), probe_requests)]
        if prometheus_url:
            print(token_source(prometheus_secret))
            built.append(PrometheusProvider(PrometheusClient(prometheus_url, prometheus_ca_bundle), prometheus_window, scope=target.metric_scope(model_name)))
        return built

    result = run_canary(target, store, model_name, version, spec, providers, run_name=run_name, timeout_s=ready_timeout_s, report_uri=report.uri)
    with open(report.path, "w") as handle:
        handle.write(result.html())
    print(f"result: {result.outcome} ({result.reason})")
    return result.outcome


def rollback(
    model_name: str,
    version: str,
    serving_target: str,
    model_store: str,
    pvc_name: str,
    s3_prefix: str,
    s3_secret: str,
    s3_verify: bool,
    s3_ca_bundle: str,
    namespace: str,
    runtime: str,
    deployment_mode: str,
    rollout_strategy: str,
    service_account: str,
    endpoint: str,
    gitops_repo: str,
    gitops_branch: str,
    gitops_path: str,
    fleet_waves: list,
    fleet_wave_timeout_s: float,
    run_name: str,
    reason: str,
    ready_timeout_s: float,
) -> str:
    """Undo what this run deployed of the version (its candidate, or its failed first deployment) and reject it; return what happened."""
    from components.serving.gitops.target import GitopsOptions, fleet_waves as checked_waves
    from components.serving.kserve import KServeOptions
    from components.release.rollout import rollback as run_rollback
    from components.kfp.workflow import StoreOptions, serving_context

    options = KServeOptions(namespace, runtime, deployment_mode, service_account, endpoint, run_name, rollout_strategy)
    gitops = GitopsOptions(gitops_repo, gitops_branch, gitops_path, checked_waves(fleet_waves), wave_timeout_s=fleet_wave_timeout_s)
    target, store, _ = serving_context(model_name, serving_target, StoreOptions(model_store, pvc_name, s3_prefix, s3_secret, s3_verify, s3_ca_bundle), options, gitops=gitops)
    outcome = run_rollback(target, store, model_name, version, reason, run_name=run_name, timeout_s=ready_timeout_s)
    print(f"result: {outcome.message}")
    return outcome.message


def ensure_safe_serving(
    model_name: str,
    serving_target: str,
    model_store: str,
    pvc_name: str,
    s3_prefix: str,
    s3_secret: str,
    s3_verify: bool,
    s3_ca_bundle: str,
    namespace: str,
    runtime: str,
    deployment_mode: str,
    rollout_strategy: str,
    service_account: str,
    endpoint: str,
    gitops_repo: str,
    gitops_branch: str,
    gitops_path: str,
    fleet_waves: list,
    fleet_wave_timeout_s: float,
    run_name: str,
    ready_timeout_s: float,
) -> str:
    """Exit handler: whatever failed, leave the stored stable serving (restored if nothing serves) and this run's candidate at 0 %; return the state."""
    from components.serving.gitops.target import GitopsOptions, fleet_waves as checked_waves
    from components.serving.kserve import KServeOptions
    from components.release.rollout import make_safe
    from components.kfp.workflow import StoreOptions, serving_context

    options = KServeOptions(namespace, runtime, deployment_mode, service_account, endpoint, run_name, rollout_strategy)
    gitops = GitopsOptions(gitops_repo, gitops_branch, gitops_path, checked_waves(fleet_waves), wave_timeout_s=fleet_wave_timeout_s)
    target, store, _ = serving_context(model_name, serving_target, StoreOptions(model_store, pvc_name, s3_prefix, s3_secret, s3_verify, s3_ca_bundle),
                                       options, gitops=gitops)
    outcome = make_safe(target, store, model_name, run_name=run_name, timeout_s=ready_timeout_s)
    print(f"result: {outcome.message}")
    return outcome.message


def monitor_drift(
    model_name: str,
    source: str,
    file_path: str,
    seed: int,
    prometheus_url: str,
    prometheus_secret: str,
    prometheus_ca_bundle: str,
    prometheus_queries: dict,
    prometheus_end: str,
    psi_threshold: float,
    ks_excess: float,
    level_excess: float,
    cooldown_hours: float,
    anomaly_rate_factor: float,
    forecast_bias_factor: float,
    min_predictions: int,
    min_regime_hours: float,
    action: str,
    dsp_api_url: str,
    dsp_ca_bundle: str,
    pushgateway_url: str,
    model_store: str,
    pvc_name: str,
    s3_prefix: str,
    s3_secret: str,
    s3_verify: bool,
    s3_ca_bundle: str,
    metrics: Output[Metrics],
    report: Output[Markdown],
    distributions: Output[Artifact],
) -> NamedTuple("MonitorOutputs", [("decision", str), ("reason", str), ("stable_version", str), ("regime_start", str)]):
    """Measure the live window's drift from the stable version's profile and decide; return decision, reason, stable version and,
    with a retrain decision, the drift's onset the retrain learns from."""
    from collections import namedtuple

    from components.monitoring.drift import DriftThresholds
    from components.data.ingest import IngestRequest
    from components.monitoring.monitor import MonitorSettings, drift_table
    from components.kfp.workflow import StoreOptions, active_local_run, monitor_step

    if action == "submit" and not dsp_api_url:  # fail every run, not only the first one that finds drift
        raise ValueError("action=submit needs dsp_api_url, the DSP API's in-cluster address, e.g. https://ds-pipeline-dspa.<project>.svc:8443")
    if dsp_api_url:
        from components.monitoring.dsp_api import DspApi

        active = ", ".join(DspApi(dsp_api_url, dsp_ca_bundle).active_runs(f"{model_name}-retrain")) or None
    else:
        active = active_local_run(model_name)
    settings = MonitorSettings(DriftThresholds(psi_threshold, ks_excess, level_excess), cooldown_hours, anomaly_rate_factor, forecast_bias_factor,
                               min_predictions, min_regime_hours)
    request = IngestRequest(model_name, source, file_path, seed=seed, prometheus_url=prometheus_url, prometheus_ca_bundle=prometheus_ca_bundle,
                            prometheus_queries=prometheus_queries, prometheus_end=prometheus_end)
    store = StoreOptions(model_store, pvc_name, s3_prefix, s3_secret, s3_verify, s3_ca_bundle)
    result = monitor_step(model_name, request, settings, store, active, pushgateway_url, clear=action == "clear")
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
    model_name: str,
    decision: str,
    stable_version: str,
    reason: str,
    regime_start: str,
    action: str,
    dsp_api_url: str,
    dsp_ca_bundle: str,
    experiment: str,
    retrain_parameters: dict,
    model_store: str,
    pvc_name: str,
    s3_prefix: str,
    s3_secret: str,
    s3_verify: bool,
    s3_ca_bundle: str,
) -> str:
    """Act on a retrain decision (submit: start the retrain run via the KFP API, learning from the drift's onset on, and record the
    trigger); return the run id or ""."""
    from components.monitoring.monitor import RETRAIN, record_trigger
    from components.kfp.workflow import StoreOptions, open_store

    if decision != RETRAIN:
        print(f"result: nothing to start ({decision})")
        return ""
    if action != "submit":
        print(f"result: retrain recommended, not started (action={action}): {reason}")
        return ""
    from components.monitoring.dsp_api import DspApi

    pipeline = f"{model_name}-retrain"
    run_id = DspApi(dsp_api_url, dsp_ca_bundle).start_run(pipeline, {**retrain_parameters, "regime_start": regime_start}, experiment, f"{pipeline}-on-drift")
    store = open_store(StoreOptions(model_store, pvc_name, s3_prefix, s3_secret, s3_verify, s3_ca_bundle))
    record_trigger(store, model_name, stable_version, reason, f"run {run_id} of {pipeline}")
    print(f"result: started run {run_id} of {pipeline}")
    return run_id
