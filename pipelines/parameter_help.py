"""What each run parameter means, written once and turned into each pipeline's docstring ``Args:`` section.

KFP reads that section into ``inputDefinitions.parameters.<name>.description``, which the OpenShift AI dashboard
shows beside each field of a new run.
"""

from __future__ import annotations

from typing import Callable

PARAMETER_HELP = {
    "model_name": "Which model to roll out or check: anomaly-detector or predictive-analytics.",
    "version": "The stored version to roll out, e.g. v3 (see `model-pipelines store list`).",
    "source": "Where training data comes from: synthetic (generated, the default), file (file_path) or prometheus (prometheus_url).",
    "file_path": "CSV or Parquet file of raw metrics when source=file (a path inside the step's pod, e.g. on the store PVC).",
    "days": "How many days of metrics to read or generate.",
    "seed": "Seed of the synthetic data generator (source=synthetic).",
    "validation_fraction": "Share of the newest minutes held out for evaluation, in (0, 0.9].",
    "prometheus_url": "Prometheus or Thanos querier URL for source=prometheus and the canary's live signals, e.g. "
                      "https://thanos-querier.openshift-monitoring.svc:9091; empty: no live signals.",
    "prometheus_secret": "Secret whose key `token` holds the Prometheus bearer token; when it is absent the service-account token "
                         "is sent, over https only.",
    "prometheus_ca_bundle": "CA bundle file for Prometheus TLS; empty: the system CAs (and the service CA in a pod).",
    "prometheus_queries": "Override PromQL per base metric, as a JSON object {metric: query}; empty: the built-in queries.",
    "prometheus_end": "End of the training window as an ISO-8601 time; empty: now.",
    "regime_start": "Train only on minutes from this ISO-8601 time on (a drift-triggered retrain sets it to the drift's onset); empty: the whole window.",
    "min_regime_hours": "Hours of data after a drift's onset before a retrain is started, so that it learns the new regime.",
    "allow_synthetic_fallback": "Train on synthetic data when Prometheus has too little (the report says so); false: fail instead.",
    "allow_synthetic_deploy": "Deploy a version trained on synthetic data to kserve or gitops; false: it is held, `not deployed: trained on synthetic data`.",
    "prometheus_window": "PromQL range of the canary's live signals, e.g. 2m.",
    "algorithm": "Detector algorithm: elliptic_envelope or isolation_forest.",
    "scaler": "Feature scaling before the detector: standard or robust.",
    "n_estimators": "Trees of the isolation forest.",
    "max_samples": "Samples per isolation-forest tree.",
    "pca_components": "PCA components before the detector.",
    "target_false_positive_rate": "Share of normal training minutes the detector may flag; sets its threshold.",
    "random_state": "Seed of the detector's randomness.",
    "horizon_minutes": "How far ahead the forecaster predicts, in minutes.",
    "alpha": "Ridge regularisation of the forecaster.",
    "min_f1": "Gate: lowest F1 on labelled validation minutes that may deploy.",
    "max_anomaly_rate": "Gate: highest share of validation minutes the detector may flag.",
    "max_mase": "Gate: highest mean MASE against persistence that may deploy (1 = no better than persistence).",
    "max_predict_latency_ms": "Gate: highest single-row predict latency in ms.",
    "max_pickle_mb": "Gate: largest model.pkl in MB.",
    "champion_tolerance": "How much worse than the serving (champion) version a candidate may score and still deploy.",
    "model_store": "Where versions are stored: pvc (the pvc_name volume) or s3 (the s3_secret data connection).",
    "pvc_name": "PersistentVolumeClaim of the model store, mounted at /mnt/models.",
    "s3_prefix": "Key prefix of the model store in the data connection's bucket.",
    "s3_secret": "OpenShift AI data connection Secret (AWS_* keys) for model_store=s3.",
    "s3_verify": "Verify the S3 endpoint's TLS certificate.",
    "s3_ca_bundle": "CA bundle file for the S3 endpoint; empty: AWS_CA_BUNDLE or the system CAs.",
    "serving_target": "Where versions are served: kserve (InferenceServices), gitops (commits Argo CD syncs to spoke clusters) or local (this machine).",
    "namespace": "Namespace of the InferenceServices; empty: the pipeline's own.",
    "runtime": "ServingRuntime name; empty: KServe picks the sklearn runtime.",
    "deployment_mode": "auto (from the InferenceService), Serverless/Knative or RawDeployment/Standard.",
    "rollout_strategy": "How the candidate gets traffic: auto, knative, standard-canary or candidate-isvc.",
    "service_account": "Service account of the predictor pods (storage credentials); empty: the default.",
    "endpoint": "How steps reach the predictor: empty (status.url), cluster (in-cluster Service) or a base URL; for gitops a spoke route template with {cluster}, {service}, {namespace}.",
    "gitops_repo": "gitops: the fleet repository (https or ssh URL; the token or key comes from a Secret).",
    "gitops_branch": "gitops: the branch Argo CD syncs.",
    "gitops_path": "gitops: the directory holding base/<model> and the wave overlays the Applications sync.",
    "gitops_secret": "gitops: the Secret whose key token (HTTPS) or ssh-privatekey and known_hosts (SSH) reach the fleet repository.",
    "fleet_waves": 'gitops: cluster groups by wave label, rolled out in order; "*" is every other cluster.',
    "fleet_wave_timeout_s": "gitops: seconds each wave (wave 1 included) may take to be Synced, Healthy and serving after a commit, "
                            "before the rollout is reverted; Argo CD polls Git every 120-180 s unless a webhook tells it at once.",
    "ready_timeout_s": "Seconds to wait for a version to become Ready before rolling it back (kserve and local; gitops waits fleet_wave_timeout_s).",
    "canary_steps": "Candidate traffic percentages in order, strictly increasing, e.g. [10, 50, 100].",
    "canary_interval_s": "Seconds at each traffic step before it is analysed.",
    "probe_requests": "Probe requests per analysis, sent to candidate and stable alike.",
    "max_error_rate": "Canary limit: highest candidate error rate.",
    "max_p95_latency_ms": "Smoke test and canary limit: highest p95 latency of probe requests, in ms.",
    "max_prediction_shift": "Canary limit: how far candidate predictions may move from stable's on the same inputs.",
    "failure_limit": "Failed or inconclusive analyses tolerated before rolling back.",
    "max_live_p95_latency_ms": "Canary limit on live traffic (needs prometheus_url): highest p95 latency in ms.",
    "psi_threshold": "Drift: smallest population stability index of a feature's live window against its training bins that counts.",
    "ks_excess": "Drift: how far a feature's KS statistic must exceed the largest of any training window of the same length, "
                 "as a share of the way to 1 (0.45: almost half of the remaining distance).",
    "level_excess": "Drift, or instead of ks_excess: how far a level feature's live median must lie beyond the medians of every "
                    "training window of the same length, in widths of their range.",
    "cooldown_hours": "Hours after a retrain (or a trigger) during which drift is reported but starts no retrain.",
    "anomaly_rate_factor": "Drift: the detector's live anomaly rate may be at most this many times its validation rate.",
    "forecast_bias_factor": "Drift: the forecaster's live mean forecast may be off the live mean by at most this many validation MAEs.",
    "min_predictions": "Fewest live predictions in the window for the prediction checks; fewer: inconclusive, not a pass.",
    "action": "What a retrain decision does: report (artifacts only) or submit (start the model's retrain pipeline); clear: forget the "
              "current drift episode first (after a human handled a drift that retrains could not absorb).",
    "dsp_api_url": "DSP (KFP) API address from inside the cluster for action=submit and the active-run check, e.g. "
                   "https://ds-pipeline-dspa.<project>.svc:8443; the service-account token is sent over https only.",
    "dsp_ca_bundle": "CA bundle file for the DSP API's TLS, e.g. the service CA; empty: the system CAs.",
    "pushgateway_url": "Prometheus Pushgateway the monitor pushes its drift gauges to (the drift alerts read them), e.g. "
                       "http://prometheus-pushgateway.monitoring.svc:9091; empty: none.",
    "experiment": "Experiment of the retrain runs the monitor starts.",
    "retrain_parameters": "Run parameters of the retrain the monitor starts, as a JSON object, e.g. {\"source\": \"prometheus\"}.",
}


def with_parameter_help(summary: str) -> Callable[[Callable], Callable]:
    """Return a decorator that gives a pipeline function a docstring: ``summary`` and an ``Args:`` line per parameter."""

    def decorate(function: Callable) -> Callable:
        names = function.__code__.co_varnames[: function.__code__.co_argcount]
        lines = [summary, "", "Args:"] + [f"    {name}: {PARAMETER_HELP[name]}" for name in names]
        function.__doc__ = "\n".join(lines)
        return function

    return decorate
