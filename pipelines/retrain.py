"""The pipelines: per-model retraining DAGs and a rollout DAG, wiring the step components and exposing knobs.

Retrain: validate → ingest → train → evaluate → If(deploy) save → deploy → smoke-test → If(passed) canary-promote,
Else rollback, all inside an ExitHandler whose exit task leaves serving safe (stable serving, candidate at 0 %).
Rollout: validate → ingest → the same serving half for a version already in the store. The ingest is needed even when
the version already serves: the smoke test checks the served version against its stored model on that data, and the
canary probes with it.
Monitor: measure the live window's drift from the stable version's profile and decide → act: on a retrain decision
start the model's retrain pipeline through the KFP API (action=submit) or only report it.
"""

import inspect
import tempfile
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

from kfp import compiler, dsl, kubernetes
from kfp.dsl import Markdown, Metrics

from components.kfp import steps
from components.serving.gitops import repo as gitops_repo
from components.model.contract import ANOMALY_DETECTOR, PREDICTIVE_ANALYTICS
from components.serving.gitops.target import DEFAULT_WAVE_TIMEOUT_S, DEFAULT_WAVES
from components.monitoring.monitor import MonitorSettings
from components.data.prometheus import TOKEN_ENV
from components.release.rollout import CanarySpec
from components.store.s3 import DATA_CONNECTION_KEYS, DEFAULT_SECRET
from components.model.settings import DetectorParams, ForecasterParams, Gates
from components.store.filesystem import DEFAULT_PVC, DEFAULT_STORE_ROOT
from pipelines.catalog import DEFAULT_IMAGE, MONITOR, PIPELINE_FILES, ROLLOUT
from pipelines.parameter_help import with_parameter_help
from pipelines.platforms import DEFAULT_PLATFORM, PLATFORMS, STORES, Platform, adapt, is_default_output, output_key, platform_named, profile_folder

STEP_FUNCTIONS = (
    steps.validate_parameters,
    steps.ingest,
    steps.train_anomaly_detector,
    steps.train_predictive_analytics,
    steps.evaluate_anomaly_detector,
    steps.evaluate_predictive_analytics,
    steps.save_to_storage,
    steps.deploy_inference_service,
    steps.smoke_test,
    steps.canary_promote,
    steps.rollback,
    steps.ensure_safe_serving,
    steps.monitor_drift,
    steps.trigger_retrain,
)
DETECTOR = DetectorParams()
FORECASTER = ForecasterParams()
GATES = Gates()
CANARY = CanarySpec()
DEFAULT_TARGET = "kserve"
# A cluster run with its defaults learns the cluster's own metrics from OpenShift's in-cluster querier (local runs
# default to synthetic data instead: pipelines/local.py LOCAL_DEFAULTS).
DEFAULT_SOURCE = "prometheus"
IN_CLUSTER_PROMETHEUS = "https://thanos-querier.openshift-monitoring.svc.cluster.local:9091"
SERVICE_CA_BUNDLE = "/var/run/secrets/kubernetes.io/serviceaccount/service-ca.crt"
DEFAULT_PROMETHEUS_SECRET = "prometheus-token"
DEFAULT_GITOPS_SECRET = "gitops-credentials"
DEFAULT_EXPERIMENT = "self-healing-models"
MONITORING = MonitorSettings()
# Every retraining pipeline returns its evaluation, so that local runs and the kfp client can summarise a run.
PipelineOutputs = NamedTuple("PipelineOutputs", [("metrics", Metrics), ("report", Markdown)])
# The monitor returns its drift metrics and report, and the decision with its reason.
MonitorOutputs = NamedTuple("MonitorOutputs", [("metrics", Metrics), ("report", Markdown), ("decision", str), ("reason", str), ("regime_start", str)])


def make_components(image: str) -> SimpleNamespace:
    """Return the step components built on ``image``: no KFP install and no pip install at pod start."""
    return SimpleNamespace(
        **{
            function.__name__: dsl.component(func=function, base_image=image, install_kfp_package=False)
            for function in STEP_FUNCTIONS
        }
    )


# Upper bounds (activeDeadlineSeconds) for tasks with side effects, so that a hung step cannot hold a rollout open.
TIMEOUTS_S = {
    "validate-parameters": 300, "ingest": 3600, "evaluate": 3600, "save-to-storage": 900, "deploy-inference-service": 3600, "smoke-test": 1800,
    "canary-promote": 4 * 3600, "rollback": 3600, "ensure-safe-serving": 1800, "monitor-drift": 1800, "trigger-retrain": 600,
}


STORE_KNOBS = ("model_store", "pvc_name", "s3_prefix", "s3_secret", "s3_verify", "s3_ca_bundle")


def _store(p: dict) -> dict:
    """Return the arguments every store-using step takes."""
    return {knob: p[knob] for knob in STORE_KNOBS}


def _side_effect(task: dsl.PipelineTask, p: dict | None = None) -> dsl.PipelineTask:
    """Never cache a task with side effects and bound its run time; give store users the PVC and the S3 secret.

    The data connection's keys are injected from the secret named by ``s3_secret`` (optional, so that PVC-only
    users need no secret); the PVC is mounted at /mnt/models whichever store is selected.
    """
    if p is not None:
        kubernetes.mount_pvc(task, pvc_name=p["pvc_name"], mount_path=DEFAULT_STORE_ROOT)
        kubernetes.use_secret_as_env(task, secret_name=p["s3_secret"], secret_key_to_env={key: key for key in DATA_CONNECTION_KEYS}, optional=True)
    step = task.component_spec.name.replace("_", "-")
    kubernetes.set_timeout(task, next(seconds for prefix, seconds in TIMEOUTS_S.items() if step.startswith(prefix)))
    return task.set_caching_options(False)


GITOPS_SECRET_KEYS = {"token": gitops_repo.TOKEN_ENV, "ssh-privatekey": gitops_repo.SSH_KEY_CONTENT_ENV,
                      "known_hosts": gitops_repo.KNOWN_HOSTS_CONTENT_ENV}


def _with_gitops_credentials(task: dsl.PipelineTask, p: dict) -> dsl.PipelineTask:
    """Inject the fleet repository's token or SSH key and known hosts from the Secret ``gitops_secret`` (optional)."""
    kubernetes.use_secret_as_env(task, secret_name=p["gitops_secret"], secret_key_to_env=GITOPS_SECRET_KEYS, optional=True)
    return task


def _with_prometheus_token(task: dsl.PipelineTask, p: dict) -> dsl.PipelineTask:
    """Inject the Prometheus token from key ``token`` of the Secret ``prometheus_secret`` (optional: else the service account)."""
    kubernetes.use_secret_as_env(task, secret_name=p["prometheus_secret"], secret_key_to_env={"token": TOKEN_ENV}, optional=True)
    return task


# A model knob the pipeline lacks reaches the check as its (valid) default: kfp.local cannot pass an unset int.
MONITOR_KNOB_DEFAULTS = {
    "psi_threshold": MONITORING.thresholds.psi, "ks_excess": MONITORING.thresholds.ks_excess,
    "level_excess": MONITORING.thresholds.level_excess, "cooldown_hours": MONITORING.cooldown_hours,
    "anomaly_rate_factor": MONITORING.anomaly_rate_factor, "forecast_bias_factor": MONITORING.forecast_bias_factor,
    "min_predictions": MONITORING.min_predictions, "min_regime_hours": MONITORING.min_regime_hours, "action": "report", "dsp_api_url": "", "dsp_ca_bundle": "",
    "experiment": DEFAULT_EXPERIMENT, "retrain_parameters": {}, "pushgateway_url": "",
}
MODEL_KNOB_DEFAULTS = {**asdict(DETECTOR), **asdict(FORECASTER), **asdict(GATES), **MONITOR_KNOB_DEFAULTS, "regime_start": ""}


def _validate(ops: SimpleNamespace, p: dict) -> dsl.PipelineTask:
    """Add the first task: one check of every run parameter of the pipeline, listing all problems."""
    names = inspect.signature(steps.validate_parameters).parameters  # the step's own inputs, listed once
    known = {**MODEL_KNOB_DEFAULTS, **p}  # the pipeline's own parameters win over the defaults
    wired = {name: known[name] for name in names if name in known}
    return _side_effect(ops.validate_parameters(**wired)).set_display_name("Check run parameters")


def _ingest(ops: SimpleNamespace, model_name, p: dict) -> dsl.PipelineTask:
    """Add the ingest task (never cached: its source changes under it), after the parameter check."""
    return _with_prometheus_token(_side_effect(ops.ingest(
        model_name=model_name, source=p["source"], file_path=p["file_path"], days=p["days"], seed=p["seed"],
        validation_fraction=p["validation_fraction"], prometheus_url=p["prometheus_url"], prometheus_secret=p["prometheus_secret"],
        prometheus_ca_bundle=p["prometheus_ca_bundle"], prometheus_queries=p["prometheus_queries"], prometheus_end=p["prometheus_end"],
        allow_synthetic_fallback=p["allow_synthetic_fallback"], regime_start=p.get("regime_start", ""),
    ).after(_validate(ops, p))).set_display_name("Ingest metrics"), p)


SERVING_KNOBS = (
    "namespace", "runtime", "deployment_mode", "rollout_strategy", "service_account", "endpoint", "ready_timeout_s",
    "gitops_repo", "gitops_branch", "gitops_path", "fleet_waves", "fleet_wave_timeout_s",
)


def _serving(model_name, p: dict) -> dict:
    """Return the arguments every serving step takes: which model, which target and how to reach it."""
    return {"model_name": model_name, "serving_target": p["serving_target"], **{knob: p[knob] for knob in SERVING_KNOBS}}


def _rollout(ops: SimpleNamespace, model_name, version, validation_data, p: dict, after: dsl.PipelineTask | None = None) -> None:
    """Add deploy → smoke-test → If(passed) canary-promote / Else rollback for ``version``; deploy waits for ``after`` too."""
    serving = {**_serving(model_name, p), **_store(p)}
    deploy = _with_gitops_credentials(_side_effect(
        ops.deploy_inference_service(version=version, run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                                     allow_synthetic_deploy=p["allow_synthetic_deploy"], **serving), p
    ), p).set_display_name("Deploy as dark candidate")
    if after is not None:
        deploy.after(after)
    smoke_arguments = {key: value for key, value in serving.items() if key != "ready_timeout_s"}
    smoke = _with_gitops_credentials(_side_effect(
        ops.smoke_test(version=version, validation_data=validation_data, max_p95_latency_ms=p["max_p95_latency_ms"], **smoke_arguments),
        p,
    ), p).after(deploy).set_display_name("Smoke-test the new version")
    with dsl.If(smoke.outputs["passed"] == True, name="smoke-test-passed"):  # noqa: E712 (KFP condition syntax)
        _with_gitops_credentials(_with_prometheus_token(_side_effect(
            ops.canary_promote(
                version=version, validation_data=validation_data, canary_steps=p["canary_steps"],
                canary_interval_s=p["canary_interval_s"], probe_requests=p["probe_requests"],
                max_error_rate=p["max_error_rate"], max_p95_latency_ms=p["max_p95_latency_ms"],
                max_prediction_shift=p["max_prediction_shift"], failure_limit=p["failure_limit"],
                prometheus_url=p["prometheus_url"], prometheus_secret=p["prometheus_secret"], prometheus_ca_bundle=p["prometheus_ca_bundle"],
                prometheus_window=p["prometheus_window"], max_live_p95_latency_ms=p["max_live_p95_latency_ms"],
                run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, **serving,
            ),
            p,
        ), p), p).set_display_name("Canary-promote or roll back")
    with dsl.Else(name="smoke-test-failed"):
        _with_gitops_credentials(_side_effect(
            ops.rollback(version=version, reason=smoke.outputs["reason"], run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, **serving), p
        ), p).set_display_name("Roll back (smoke test failed)")


def _exit_task(ops: SimpleNamespace, model_name, p: dict) -> dsl.PipelineTask:
    """Return the exit task that leaves serving safe whatever happened."""
    return _with_gitops_credentials(_side_effect(
        ops.ensure_safe_serving(run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, **_serving(model_name, p), **_store(p)), p
    ), p).set_display_name("Leave serving safe")


def _save_and_roll_out(ops: SimpleNamespace, model_name: str, train, evaluate, validation_data, p: dict) -> None:
    """Under If(deploy) and the safe-serving exit handler: save the model, then roll it out."""
    with dsl.ExitHandler(_exit_task(ops, model_name, p), name="rollout-safely"):
        with dsl.If(evaluate.outputs["Output"] == True, name="deploy-approved"):  # noqa: E712 (KFP condition syntax)
            save = _side_effect(
                ops.save_to_storage(
                    model_name=model_name, model=train.outputs["model"], metrics=evaluate.outputs["metrics"],
                    run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, **_store(p),
                ),
                p,
            ).set_display_name("Save version to the store")
            _rollout(ops, model_name, save.outputs["version"], validation_data, p)


def build_anomaly_detector_pipeline(image: str = DEFAULT_IMAGE):
    """Return the anomaly-detector retraining pipeline on ``image``."""
    ops = make_components(image)

    @dsl.pipeline(
        name="anomaly-detector-retrain",
        description="Retrain the anomaly detector; evaluate against gates and the champion; save; deploy, smoke-test and canary-promote.",
    )
    @with_parameter_help("Retrain, evaluate, store and roll out the anomaly detector; return its evaluation.")
    def anomaly_detector_retrain(
        source: str = DEFAULT_SOURCE,
        file_path: str = "",
        days: float = 10.0,
        seed: int = 42,
        validation_fraction: float = 0.3,
        prometheus_url: str = IN_CLUSTER_PROMETHEUS,
        prometheus_secret: str = DEFAULT_PROMETHEUS_SECRET,
        prometheus_ca_bundle: str = SERVICE_CA_BUNDLE,
        prometheus_queries: dict = {},
        prometheus_end: str = "",
        regime_start: str = "",
        allow_synthetic_fallback: bool = False,
        allow_synthetic_deploy: bool = False,
        prometheus_window: str = "2m",
        algorithm: str = DETECTOR.algorithm,
        scaler: str = DETECTOR.scaler,
        n_estimators: int = DETECTOR.n_estimators,
        max_samples: int = DETECTOR.max_samples,
        pca_components: int = DETECTOR.pca_components,
        target_false_positive_rate: float = DETECTOR.target_false_positive_rate,
        random_state: int = DETECTOR.random_state,
        min_f1: float = GATES.min_f1,
        max_anomaly_rate: float = GATES.max_anomaly_rate,
        max_predict_latency_ms: float = GATES.max_predict_latency_ms,
        max_pickle_mb: float = GATES.max_pickle_mb,
        champion_tolerance: float = GATES.champion_tolerance,
        model_store: str = "pvc",
        pvc_name: str = DEFAULT_PVC,
        s3_prefix: str = "models",
        s3_secret: str = DEFAULT_SECRET,
        s3_verify: bool = True,
        s3_ca_bundle: str = "",
        serving_target: str = DEFAULT_TARGET,
        namespace: str = "",
        runtime: str = "",
        deployment_mode: str = "auto",
        rollout_strategy: str = "auto",
        service_account: str = "",
        endpoint: str = "",
        gitops_repo: str = "",
        gitops_branch: str = "main",
        gitops_path: str = "fleet/models",
        fleet_waves: list = [list(wave) for wave in DEFAULT_WAVES],
        fleet_wave_timeout_s: float = DEFAULT_WAVE_TIMEOUT_S,
        gitops_secret: str = DEFAULT_GITOPS_SECRET,
        ready_timeout_s: float = 300.0,
        canary_steps: list = list(CANARY.steps),
        canary_interval_s: float = CANARY.interval_s,
        probe_requests: int = CANARY.probe_requests,
        max_error_rate: float = CANARY.max_error_rate,
        max_p95_latency_ms: float = CANARY.max_p95_latency_ms,
        max_prediction_shift: float = CANARY.max_prediction_shift,
        failure_limit: int = CANARY.failure_limit,
        max_live_p95_latency_ms: float = CANARY.max_live_p95_latency_ms,
    ) -> PipelineOutputs:
        p = dict(locals())  # the parameter channels, by name, for the shared wiring helpers
        ingest = _ingest(ops, ANOMALY_DETECTOR, p)
        train = ops.train_anomaly_detector(
            train_data=ingest.outputs["train_data"], algorithm=algorithm, scaler=scaler, n_estimators=n_estimators,
            max_samples=max_samples, pca_components=pca_components,
            target_false_positive_rate=target_false_positive_rate, random_state=random_state,
        ).set_display_name("Train the detector")
        evaluate = _side_effect(
            ops.evaluate_anomaly_detector(
                model=train.outputs["model"], validation_data=ingest.outputs["validation_data"],
                data_description=ingest.outputs["Output"], min_f1=min_f1, max_anomaly_rate=max_anomaly_rate,
                max_predict_latency_ms=max_predict_latency_ms,
                max_pickle_mb=max_pickle_mb, champion_tolerance=champion_tolerance, **_store(p),
            ),
            p,
        ).set_display_name("Evaluate against gates and champion")
        _save_and_roll_out(ops, ANOMALY_DETECTOR, train, evaluate, ingest.outputs["validation_data"], p)
        return PipelineOutputs(metrics=evaluate.outputs["metrics"], report=evaluate.outputs["report"])

    return anomaly_detector_retrain


def build_predictive_analytics_pipeline(image: str = DEFAULT_IMAGE):
    """Return the predictive-analytics retraining pipeline on ``image``."""
    ops = make_components(image)

    @dsl.pipeline(
        name="predictive-analytics-retrain",
        description="Retrain the forecaster; evaluate against persistence and the champion; save; deploy, smoke-test and canary-promote.",
    )
    @with_parameter_help("Retrain, evaluate, store and roll out the forecaster; return its evaluation.")
    def predictive_analytics_retrain(
        source: str = DEFAULT_SOURCE,
        file_path: str = "",
        days: float = 10.0,
        seed: int = 42,
        validation_fraction: float = 0.3,
        prometheus_url: str = IN_CLUSTER_PROMETHEUS,
        prometheus_secret: str = DEFAULT_PROMETHEUS_SECRET,
        prometheus_ca_bundle: str = SERVICE_CA_BUNDLE,
        prometheus_queries: dict = {},
        prometheus_end: str = "",
        regime_start: str = "",
        allow_synthetic_fallback: bool = False,
        allow_synthetic_deploy: bool = False,
        prometheus_window: str = "2m",
        horizon_minutes: int = FORECASTER.horizon_minutes,
        alpha: float = FORECASTER.alpha,
        max_mase: float = GATES.max_mase,
        max_predict_latency_ms: float = GATES.max_predict_latency_ms,
        max_pickle_mb: float = GATES.max_pickle_mb,
        champion_tolerance: float = GATES.champion_tolerance,
        model_store: str = "pvc",
        pvc_name: str = DEFAULT_PVC,
        s3_prefix: str = "models",
        s3_secret: str = DEFAULT_SECRET,
        s3_verify: bool = True,
        s3_ca_bundle: str = "",
        serving_target: str = DEFAULT_TARGET,
        namespace: str = "",
        runtime: str = "",
        deployment_mode: str = "auto",
        rollout_strategy: str = "auto",
        service_account: str = "",
        endpoint: str = "",
        gitops_repo: str = "",
        gitops_branch: str = "main",
        gitops_path: str = "fleet/models",
        fleet_waves: list = [list(wave) for wave in DEFAULT_WAVES],
        fleet_wave_timeout_s: float = DEFAULT_WAVE_TIMEOUT_S,
        gitops_secret: str = DEFAULT_GITOPS_SECRET,
        ready_timeout_s: float = 300.0,
        canary_steps: list = list(CANARY.steps),
        canary_interval_s: float = CANARY.interval_s,
        probe_requests: int = CANARY.probe_requests,
        max_error_rate: float = CANARY.max_error_rate,
        max_p95_latency_ms: float = CANARY.max_p95_latency_ms,
        max_prediction_shift: float = CANARY.max_prediction_shift,
        failure_limit: int = CANARY.failure_limit,
        max_live_p95_latency_ms: float = CANARY.max_live_p95_latency_ms,
    ) -> PipelineOutputs:
        p = dict(locals())  # the parameter channels, by name, for the shared wiring helpers
        ingest = _ingest(ops, PREDICTIVE_ANALYTICS, p)
        train = ops.train_predictive_analytics(
            train_data=ingest.outputs["train_data"], horizon_minutes=horizon_minutes, alpha=alpha
        ).set_display_name("Train the forecaster")
        evaluate = _side_effect(
            ops.evaluate_predictive_analytics(
                model=train.outputs["model"], validation_data=ingest.outputs["validation_data"],
                data_description=ingest.outputs["Output"], horizon_minutes=horizon_minutes, max_mase=max_mase,
                max_predict_latency_ms=max_predict_latency_ms, max_pickle_mb=max_pickle_mb,
                champion_tolerance=champion_tolerance, **_store(p),
            ),
            p,
        ).set_display_name("Evaluate against gates and champion")
        _save_and_roll_out(ops, PREDICTIVE_ANALYTICS, train, evaluate, ingest.outputs["validation_data"], p)
        return PipelineOutputs(metrics=evaluate.outputs["metrics"], report=evaluate.outputs["report"])

    return predictive_analytics_retrain


def build_rollout_pipeline(image: str = DEFAULT_IMAGE):
    """Return the pipeline that rolls out a version already in the store (deploy, smoke-test, canary)."""
    ops = make_components(image)

    @dsl.pipeline(
        name="model-rollout",
        description="Roll out a stored model version: deploy as a dark candidate, smoke-test, canary-promote or roll back.",
    )
    @with_parameter_help("Roll out a stored version: deploy, smoke-test, canary-promote or roll back.")
    def model_rollout(
        model_name: str = ANOMALY_DETECTOR,
        version: str = "v1",
        source: str = DEFAULT_SOURCE,
        file_path: str = "",
        days: float = 2.0,
        seed: int = 7,
        validation_fraction: float = 0.5,
        prometheus_url: str = IN_CLUSTER_PROMETHEUS,
        prometheus_secret: str = DEFAULT_PROMETHEUS_SECRET,
        prometheus_ca_bundle: str = SERVICE_CA_BUNDLE,
        prometheus_queries: dict = {},
        prometheus_end: str = "",
        allow_synthetic_fallback: bool = False,
        allow_synthetic_deploy: bool = False,
        prometheus_window: str = "2m",
        model_store: str = "pvc",
        pvc_name: str = DEFAULT_PVC,
        s3_prefix: str = "models",
        s3_secret: str = DEFAULT_SECRET,
        s3_verify: bool = True,
        s3_ca_bundle: str = "",
        serving_target: str = DEFAULT_TARGET,
        namespace: str = "",
        runtime: str = "",
        deployment_mode: str = "auto",
        rollout_strategy: str = "auto",
        service_account: str = "",
        endpoint: str = "",
        gitops_repo: str = "",
        gitops_branch: str = "main",
        gitops_path: str = "fleet/models",
        fleet_waves: list = [list(wave) for wave in DEFAULT_WAVES],
        fleet_wave_timeout_s: float = DEFAULT_WAVE_TIMEOUT_S,
        gitops_secret: str = DEFAULT_GITOPS_SECRET,
        ready_timeout_s: float = 300.0,
        canary_steps: list = list(CANARY.steps),
        canary_interval_s: float = CANARY.interval_s,
        probe_requests: int = CANARY.probe_requests,
        max_error_rate: float = CANARY.max_error_rate,
        max_p95_latency_ms: float = CANARY.max_p95_latency_ms,
        max_prediction_shift: float = CANARY.max_prediction_shift,
        failure_limit: int = CANARY.failure_limit,
        max_live_p95_latency_ms: float = CANARY.max_live_p95_latency_ms,
    ):
        p = dict(locals())  # the parameter channels, by name, for the shared wiring helpers
        with dsl.ExitHandler(_exit_task(ops, model_name, p), name="rollout-safely"):
            ingest = _ingest(ops, model_name, p)
            # Deploy only after the parameter check and once the data to check the deployment is in: a bad parameter
            # or a failing source then leaves serving untouched (and the step list follows the DAG).
            _rollout(ops, model_name, version, ingest.outputs["validation_data"], p, after=ingest)

    return model_rollout


def build_monitor_pipeline(image: str = DEFAULT_IMAGE):
    """Return the drift monitor pipeline: one model per run, hourly on a schedule."""
    ops = make_components(image)
    # The monitor has no serving, canary or training-window knobs; the parameter check takes the rollout's defaults for them.
    rollout_defaults = {name: spec.default for name, spec in build_rollout_pipeline(image).component_spec.inputs.items()}

    @dsl.pipeline(
        name="model-monitor",
        description="Measure drift of the live metrics from the stable version's profile; retrain (or report) when it crosses the thresholds.",
    )
    @with_parameter_help("Check one model for drift and start its retrain pipeline when needed; return the drift report and decision.")
    def model_monitor(
        model_name: str = ANOMALY_DETECTOR,
        source: str = DEFAULT_SOURCE,
        file_path: str = "",
        seed: int = 7,
        prometheus_url: str = IN_CLUSTER_PROMETHEUS,
        prometheus_secret: str = DEFAULT_PROMETHEUS_SECRET,
        prometheus_ca_bundle: str = SERVICE_CA_BUNDLE,
        prometheus_queries: dict = {},
        prometheus_end: str = "",
        psi_threshold: float = MONITORING.thresholds.psi,
        ks_excess: float = MONITORING.thresholds.ks_excess,
        level_excess: float = MONITORING.thresholds.level_excess,
        cooldown_hours: float = MONITORING.cooldown_hours,
        anomaly_rate_factor: float = MONITORING.anomaly_rate_factor,
        forecast_bias_factor: float = MONITORING.forecast_bias_factor,
        min_predictions: int = MONITORING.min_predictions,
        min_regime_hours: float = MONITORING.min_regime_hours,
        action: str = "report",
        dsp_api_url: str = "",
        dsp_ca_bundle: str = "",
        experiment: str = DEFAULT_EXPERIMENT,
        retrain_parameters: dict = {},
        pushgateway_url: str = "",
        model_store: str = "pvc",
        pvc_name: str = DEFAULT_PVC,
        s3_prefix: str = "models",
        s3_secret: str = DEFAULT_SECRET,
        s3_verify: bool = True,
        s3_ca_bundle: str = "",
    ) -> MonitorOutputs:
        p = dict(locals())  # the parameter channels, by name, for the shared wiring helpers
        monitor = _with_prometheus_token(_side_effect(ops.monitor_drift(
            model_name=model_name, source=source, file_path=file_path, seed=seed, prometheus_url=prometheus_url,
            prometheus_secret=prometheus_secret, prometheus_ca_bundle=prometheus_ca_bundle, prometheus_queries=prometheus_queries,
            prometheus_end=prometheus_end, psi_threshold=psi_threshold, ks_excess=ks_excess, level_excess=level_excess, cooldown_hours=cooldown_hours,
            anomaly_rate_factor=anomaly_rate_factor, forecast_bias_factor=forecast_bias_factor, min_predictions=min_predictions,
            min_regime_hours=min_regime_hours,
            action=action, dsp_api_url=dsp_api_url, dsp_ca_bundle=dsp_ca_bundle, pushgateway_url=pushgateway_url, **_store(p),
        ).after(_validate(ops, {**rollout_defaults, **p})), p), p).set_display_name("Measure drift and decide")
        # No dsl.If on the decision: kfp.local cannot resolve a named output in a condition, so the step decides itself.
        _side_effect(ops.trigger_retrain(
            model_name=model_name, decision=monitor.outputs["decision"], stable_version=monitor.outputs["stable_version"],
            reason=monitor.outputs["reason"], regime_start=monitor.outputs["regime_start"], action=action, dsp_api_url=dsp_api_url, dsp_ca_bundle=dsp_ca_bundle, experiment=experiment,
            retrain_parameters=retrain_parameters, **_store(p),
        ), p).set_display_name("Act on the decision")
        return MonitorOutputs(metrics=monitor.outputs["metrics"], report=monitor.outputs["report"],
                              decision=monitor.outputs["decision"], reason=monitor.outputs["reason"],
                              regime_start=monitor.outputs["regime_start"])

    return model_monitor


BUILDERS = {
    ANOMALY_DETECTOR: build_anomaly_detector_pipeline,
    PREDICTIVE_ANALYTICS: build_predictive_analytics_pipeline,
    ROLLOUT: build_rollout_pipeline,
    MONITOR: build_monitor_pipeline,
}


def _write_adapted(compiled: Path, destination: Path, platform: Platform, store: str, s3_secret: str) -> None:
    """Write the kfp-compiled YAML at ``compiled`` to ``destination``, rewritten for ``platform`` and ``store``."""
    import yaml
    from google.protobuf import json_format
    from kfp.compiler.pipeline_spec_builder import write_pipeline_spec_to_file
    from kfp.pipeline_spec import pipeline_spec_pb2

    pipeline_doc, platform_doc = yaml.safe_load_all(compiled.read_text())
    pipeline_doc, platform_doc = adapt(pipeline_doc, platform_doc, platform, store, s3_secret)
    write_pipeline_spec_to_file(
        json_format.ParseDict(pipeline_doc, pipeline_spec_pb2.PipelineSpec()), pipeline_doc["pipelineInfo"].get("description"),
        json_format.ParseDict(platform_doc, pipeline_spec_pb2.PlatformSpec()), str(destination),
    )


def compile_pipelines(
    output_dir: "str | Path", image: str = DEFAULT_IMAGE, platform: str = DEFAULT_PLATFORM, store: str = "pvc",
    s3_secret: str = DEFAULT_SECRET,
) -> list[Path]:
    """Compile every pipeline for ``platform`` and ``store`` to ``output_dir``; return the written YAML paths."""
    profile = platform_named(platform)
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, builder in BUILDERS.items():
            path = directory / PIPELINE_FILES[name]
            if is_default_output(profile, store):
                compiler.Compiler().compile(builder(image), str(path))
            else:
                compiled = Path(scratch) / PIPELINE_FILES[name]
                compiler.Compiler().compile(builder(image), str(compiled))
                _write_adapted(compiled, path, profile, store, s3_secret)
            written.append(path)
    return written


def compile_every_profile(output_dir: "str | Path", image: str = DEFAULT_IMAGE) -> list[Path]:
    """Compile the default into ``output_dir`` and one folder per distinct profile output, named for its releases."""
    directory = Path(output_dir)
    written = compile_pipelines(directory, image)
    seen: set[tuple] = set()
    for profile in PLATFORMS.values():
        for store in STORES:
            key = output_key(profile, store)
            if key in seen:
                continue
            seen.add(key)
            folder = directory / profile_folder(profile, store)
            folder.mkdir(parents=True, exist_ok=True)
            for name in PIPELINE_FILES.values():
                _write_adapted(directory / name, folder / name, profile, store, DEFAULT_SECRET)
                written.append(folder / name)
    return written
