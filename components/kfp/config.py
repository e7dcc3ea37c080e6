"""One typed configuration: every knob written once, grouped into a short run form, parsed once into a ``RunConfig``.

A knob has a flat name (``canary_interval_s``: what ``--param`` and ``retrain_parameters`` have always taken), the
concern it configures and its field there (``canary.interval_s``), a default and a description. A pipeline shows a few
knobs at the top of its run form (the ones users change from run to run) and the rest in groups, each a KFP struct
parameter whose default holds every key (``canary: {"interval_s": 5.0, ...}``). A group given with only some keys
keeps the defaults of the others; an unknown key is refused before anything runs.

``validate-parameters`` parses the arguments with ``config_from_arguments`` and writes the ``RunConfig`` as the
configuration artifact every later step reads (``read_config``). The names of the Kubernetes objects a pod mounts or
reads (the PVC and the Secrets) are no run parameters: a run cannot point a pod at another volume or Secret. They
are the installation's, fixed when the pipelines are compiled (``Installation``).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cache, cached_property
from typing import TYPE_CHECKING

from components.credentials import SERVICE_CA_BUNDLE as SERVICE_ACCOUNT_CA
from components.model.contract import ANOMALY_DETECTOR
from components.model.spec import ModelSpec, SpecError, spec_for, spec_from_checked_text, spec_from_text, use_spec
from components.monitoring.monitor import DriftThresholds, MonitorSettings
from components.release.approval import ApprovalSettings
from components.release.rollout import CanarySpec
from components.serving.gitops.fleet import DEFAULT_WAVE_TIMEOUT_S, DEFAULT_WAVES
from components.store.filesystem import DEFAULT_PVC
from components.store.s3 import DEFAULT_SECRET

if TYPE_CHECKING:
    from components.kfp.workflow import StoreOptions
    from components.registry.client import RegistryClient
    from components.registry.labels import RegistryLinks
    from components.serving.gitops.fleet import GitopsOptions
    from components.serving.kserve import KServeOptions

RETRAIN, ROLLOUT, MONITOR = "retrain", "rollout", "monitor"
KINDS = (RETRAIN, ROLLOUT, MONITOR)
IN_CLUSTER_PROMETHEUS = "https://thanos-querier.openshift-monitoring.svc.cluster.local:9091"
SERVICE_CA_BUNDLE = str(SERVICE_ACCOUNT_CA)
DEFAULT_PROMETHEUS_SECRET = "prometheus-token"
DEFAULT_GITOPS_SECRET = "gitops-credentials"
DEFAULT_REGISTRY_SECRET = "model-registry-token"
DEFAULT_EXPERIMENT = "self-healing-models"
# A cluster run with its defaults learns the cluster's own metrics from OpenShift's in-cluster querier (local runs
# default to synthetic data instead: pipelines/local.py LOCAL_DEFAULTS).
DEFAULT_SOURCE = "prometheus"
_CANARY, _MONITOR, _APPROVAL = CanarySpec(), MonitorSettings(), ApprovalSettings()


class ConfigError(ValueError):
    """Run arguments that do not make a configuration; the message lists every problem and its fix."""


@dataclass(frozen=True)
class Knob:
    """One setting: its flat name, the run-form group it sits in (None: top level), its key there, default and help."""

    name: str
    group: str | None
    key: str
    default: object
    help: str
    kinds: tuple[str, ...] = KINDS  # the pipelines that show it

    @property
    def label(self) -> str:
        """Return how the run form spells the knob: ``group.key`` inside a group, else its name."""
        return self.name if self.group is None else f"{self.group}.{self.key}"


def _knobs(group: str | None, kinds: tuple[str, ...], rows: list[tuple]) -> list[Knob]:
    """Return the knobs of one group from (name, key, default, help) rows."""
    return [Knob(name, group, key, default, text, kinds) for name, key, default, text in rows]


_ALL, _SERVE = KINDS, (RETRAIN, ROLLOUT)
KNOBS: tuple[Knob, ...] = tuple([
    # The top of the run form: what a user changes from run to run.
    *_knobs(None, (ROLLOUT, MONITOR), [
        ("model_name", "model_name", ANOMALY_DETECTOR, "Which model to roll out or check: a built-in model (anomaly-detector, predictive-analytics); "
                                                       "a model of your own has its own pipelines, compiled with --model."),
    ]),
    *_knobs(None, (ROLLOUT,), [
        ("version", "version", "v1", "The stored version to roll out, e.g. v3 (see `model-pipelines store list`)."),
    ]),
    *_knobs(None, _ALL, [
        ("source", "source", DEFAULT_SOURCE, "Where data comes from: prometheus (prometheus_url, the default), file (data.file_path) or synthetic (generated)."),
    ]),
    *_knobs(None, _SERVE, [
        ("days", "days", 10.0, "How many days of metrics to read or generate."),
    ]),
    *_knobs(None, _ALL, [
        ("prometheus_url", "prometheus_url", IN_CLUSTER_PROMETHEUS,
         "Prometheus or Thanos querier URL for source=prometheus and the canary's live signals; empty: no live signals."),
    ]),
    *_knobs(None, _SERVE, [
        ("serving_target", "serving_target", "kserve",
         "Where versions are served: kserve (InferenceServices), gitops (commits Argo CD syncs to spoke clusters, see fleet) or local (this machine)."),
    ]),
    *_knobs(None, _ALL, [
        ("namespace", "namespace", "", "Namespace of the InferenceServices (the monitor counts their live predictions there); empty: the pipeline's own."),
        ("model_store", "model_store", "pvc", "Where versions are stored: pvc (the installation's volume) or s3 (its data connection)."),
    ]),
    *_knobs(None, _SERVE, [
        ("canary_steps", "canary_steps", list(_CANARY.steps), "Candidate traffic percentages in order, strictly increasing, e.g. [10, 50, 100]."),
    ]),
    *_knobs(None, (MONITOR,), [
        ("action", "action", "report", "What a retrain decision does: report (artifacts only) or submit (start the model's retrain pipeline); "
                                       "clear: forget the current drift episode first (after a human handled it)."),
    ]),
    *_knobs("data", _ALL, [
        ("file_path", "file_path", "", "CSV or Parquet file of raw metrics when source=file (a path inside the step's pod, e.g. on the store PVC)."),
        ("seed", "seed", 42, "Seed of the synthetic data generator (source=synthetic)."),
    ]),
    *_knobs("data", _SERVE, [
        ("validation_fraction", "validation_fraction", 0.3, "Share of the newest minutes held out for evaluation, in (0, 0.9]."),
        ("allow_synthetic_fallback", "allow_synthetic_fallback", False,
         "Train on synthetic data when Prometheus has too little (the report says so); false: fail instead."),
    ]),
    *_knobs("data", (RETRAIN,), [
        ("regime_start", "regime_start", "",
         "Train only on minutes from this ISO-8601 time on (a drift-triggered retrain sets it to the drift's onset); empty: from the onset of "
         "a drift open on Prometheus for min_regime_hours, else the one the stable version learned from the same source, else the whole window."),
    ]),
    *_knobs("prometheus", _ALL, [
        ("prometheus_ca_bundle", "ca_bundle", SERVICE_CA_BUNDLE, "CA bundle file for Prometheus TLS; empty: the service CA for an in-cluster *.svc address, else the CAs requests ships."),
        ("prometheus_queries", "queries", {}, "PromQL per base metric overriding the built-in queries, e.g. {\"cpu\": \"...\"}."),
        ("prometheus_end", "end", "", "End of the data window as an ISO-8601 time; empty: now."),
    ]),
    *_knobs("prometheus", _SERVE, [
        ("prometheus_window", "window", "2m", "PromQL range of the canary's live signals, e.g. 2m."),
    ]),
    *_knobs("store", _ALL, [
        ("s3_prefix", "s3_prefix", "models", "Key prefix of the model store in the data connection's bucket (model_store=s3)."),
        ("s3_verify", "s3_verify", True, "Verify the S3 endpoint's TLS certificate."),
        ("s3_ca_bundle", "s3_ca_bundle", "", "CA bundle file for the S3 endpoint; empty: AWS_CA_BUNDLE, else the service CA for an in-cluster "
                                              "*.svc endpoint (OpenShift Data Foundation), else the CAs botocore ships."),
    ]),
    *_knobs("store", _SERVE, [
        ("registry_url", "registry_url", "", "The OpenShift AI / Kubeflow Model Registry's REST URL (https only; its token comes from the installation's "
                                             "registry Secret), e.g. https://<registry>-rest.apps.<cluster>; empty: no registry."),
        ("registry_name", "registry_name", "", "The registry's name, as the dashboard shows it (what deployments are labelled with)."),
        ("registry_ca_bundle", "registry_ca_bundle", "", "CA bundle file for the registry's TLS; empty: the service CA for an in-cluster *.svc address, else the CAs requests ships."),
        ("registry_required", "registry_required", False,
         "Fail the save step (before any deploy) when the registry cannot register the version; false: the run goes on and says what was not registered."),
        ("registry_labels", "registry_labels", "kubeflow",
         "Which registry labels link an InferenceService to its version: opendatahub (modelregistry.opendatahub.io/..., OpenShift AI) or kubeflow "
         "(modelregistry.kubeflow.org/...); each compile profile sets its platform's."),
    ]),
    *_knobs("serving", _SERVE, [
        ("runtime", "runtime", "", "ServingRuntime name; empty: KServe picks the sklearn runtime."),
        ("deployment_mode", "deployment_mode", "auto", "auto (from the InferenceService), Serverless/Knative or RawDeployment/Standard."),
        ("rollout_strategy", "rollout_strategy", "auto", "How the candidate gets traffic: auto, knative, standard-canary or candidate-isvc."),
        ("service_account", "service_account", "", "Service account of the predictor pods (storage credentials); empty: the default."),
        ("endpoint", "endpoint", "", "How steps reach the predictor: empty (status.url), cluster (in-cluster Service) or a base URL; "
                                     "for gitops a spoke route template with {cluster}, {service}, {namespace}."),
        ("ready_timeout_s", "ready_timeout_s", 300.0,
         "Seconds to wait for a version to become Ready before rolling it back (kserve and local; gitops waits fleet.wave_timeout_s)."),
        ("allow_synthetic_deploy", "allow_synthetic_deploy", False,
         "Deploy a version trained on synthetic data to kserve or gitops; false: it is held, `not deployed: trained on synthetic data`."),
    ]),
    *_knobs("canary", _SERVE, [
        ("canary_interval_s", "interval_s", _CANARY.interval_s, "Seconds at each traffic step before it is analysed; with prometheus_url, at least two scrape intervals "
                                                              "(60 s for manifests/monitoring's 30 s), or a new candidate's live signals have no data yet."),
        ("probe_requests", "probe_requests", _CANARY.probe_requests, "Probe requests per analysis, sent to candidate and stable alike."),
        ("max_error_rate", "max_error_rate", _CANARY.max_error_rate, "Highest candidate error rate."),
        ("max_p95_latency_ms", "max_p95_latency_ms", _CANARY.max_p95_latency_ms, "Smoke test and canary limit: highest p95 latency of probe requests, in ms."),
        ("max_prediction_shift", "max_prediction_shift", _CANARY.max_prediction_shift,
         "How far candidate predictions may move from stable's on the same inputs."),
        ("failure_limit", "failure_limit", _CANARY.failure_limit, "Failed or inconclusive analyses tolerated before rolling back."),
        ("max_live_p95_latency_ms", "max_live_p95_latency_ms", _CANARY.max_live_p95_latency_ms,
         "Limit on live traffic (needs prometheus_url): highest p95 latency in ms."),
        ("approval", "approval", _APPROVAL.mode, "none: promote when the analysis passes; before-promote: hold the candidate at the last step "
                                                 "below 100 % until `model-pipelines approve` (promote) or `reject` (roll back), or with a model registry "
                                                 "the version's `approved` property there, still analysing."),
        ("approval_timeout_h", "approval_timeout_h", _APPROVAL.timeout_h,
         "Hours the candidate may wait for approval (approval=before-promote) before it is rolled back; at most 72."),
        ("approval_poll_s", "approval_poll_s", _APPROVAL.poll_s, "Seconds between looks for a decision while holding for approval."),
    ]),
    *_knobs("fleet", _SERVE, [
        ("gitops_repo", "repo", "", "The fleet repository for serving_target=gitops (https or ssh URL; the credentials come from the installation's Secret)."),
        ("gitops_branch", "branch", "main", "The branch Argo CD syncs."),
        ("gitops_path", "path", "fleet/models", "The directory holding base/<model> and the wave overlays the Applications sync."),
        ("fleet_waves", "waves", [list(wave) for wave in DEFAULT_WAVES], 'Cluster groups by wave label, rolled out in order; "*" is every other cluster.'),
        ("fleet_wave_timeout_s", "wave_timeout_s", DEFAULT_WAVE_TIMEOUT_S,
         "Seconds each wave may take to be Synced, Healthy and serving after a commit before the rollout is reverted; "
         "Argo CD polls Git every 120-180 s unless a webhook tells it at once."),
    ]),
    *_knobs("monitor", (MONITOR,), [
        ("psi_threshold", "psi_threshold", _MONITOR.thresholds.psi, "Smallest population stability index of a feature's live window against its training bins that counts."),
        ("ks_excess", "ks_excess", _MONITOR.thresholds.ks_excess, "How far a feature's KS statistic must exceed the largest of any training window of the same length, "
                                         "as a share of the way to 1."),
        ("level_excess", "level_excess", _MONITOR.thresholds.level_excess, "Or: how far a level feature's live median must lie beyond the medians of every training window "
                                              "of the same length, in widths of their range."),
        ("cooldown_hours", "cooldown_hours", _MONITOR.cooldown_hours, "Hours after a retrain (or a trigger) during which drift is reported but starts no retrain."),
        ("anomaly_rate_factor", "anomaly_rate_factor", _MONITOR.anomaly_rate_factor, "The detector's live anomaly rate may be at most this many times its validation rate."),
        ("forecast_bias_factor", "forecast_bias_factor", _MONITOR.forecast_bias_factor, "The forecaster's live mean forecast may be off the live mean by at most this many validation MAEs."),
        ("min_predictions", "min_predictions", _MONITOR.min_predictions, "Fewest live predictions in the window for the prediction checks; fewer: inconclusive, not a pass."),
        ("min_regime_hours", "min_regime_hours", _MONITOR.min_regime_hours, "Hours of data after a drift's onset before a retrain is started, so that it learns the new regime."),
        ("dsp_api_url", "dsp_api_url", "", "DSP (KFP) API address from inside the cluster for action=submit and the active-run check, "
                                           "e.g. https://ds-pipeline-dspa.<project>.svc:8443."),
        ("dsp_ca_bundle", "dsp_ca_bundle", "", "CA bundle file for the DSP API's TLS; empty: the service CA for an in-cluster *.svc address, else the CAs requests ships."),
        ("experiment", "experiment", DEFAULT_EXPERIMENT, "Experiment of the retrain runs the monitor starts."),
        ("retrain_parameters", "retrain_parameters", {}, "Run parameters of the retrain the monitor starts, e.g. {\"source\": \"prometheus\"} "
                                                         "or {\"gates\": {\"min_f1\": 0.3}}."),
        ("pushgateway_url", "pushgateway_url", "", "Prometheus Pushgateway the monitor pushes its drift gauges to; empty: none."),
    ]),
])
KNOB_BY_NAME = {knob.name: knob for knob in KNOBS}
GROUPS = ("data", "prometheus", "training", "gates", "store", "serving", "canary", "fleet", "monitor")  # training and gates: the spec's
GROUP_HELP = {
    "data": "Training data", "training": "The model's training recipe", "gates": "What a candidate must meet to deploy",
    "prometheus": "Prometheus details", "store": "The S3 model store and the model registry", "serving": "How versions are served",
    "canary": "The canary analysis", "fleet": "GitOps fleet (serving_target=gitops)", "monitor": "Drift monitoring",
}
# Defaults a pipeline kind sets apart from the knob's: a rollout checks a version on a short recent window.
KIND_DEFAULTS = {ROLLOUT: {"days": 2.0, "seed": 7, "validation_fraction": 0.5}, MONITOR: {"seed": 7}}


@dataclass(frozen=True)
class Installation:
    """The Kubernetes objects the pods use, fixed at compile time: the store's PVC and the Secrets credentials come from."""

    pvc_name: str = DEFAULT_PVC
    s3_secret: str = DEFAULT_SECRET
    prometheus_secret: str = DEFAULT_PROMETHEUS_SECRET
    gitops_secret: str = DEFAULT_GITOPS_SECRET
    registry_secret: str = DEFAULT_REGISTRY_SECRET


INSTALLATION_NAMES = tuple(item.name for item in fields(Installation))


@cache
def _schema_help() -> dict[str, str]:
    """Return the published spec schema's description of each training knob and gate, by key (the help, written once there)."""
    from components.model.spec import SCHEMA_FILE

    found: dict[str, str] = {}

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.get("properties", {}).items():
                if isinstance(value, dict) and value.get("description"):
                    found.setdefault(key, value["description"].split(": ", 1)[-1])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(SCHEMA_FILE.read_text()))
    return found


def spec_knobs(spec: ModelSpec) -> list[Knob]:
    """Return ``spec``'s retrain knobs: its type's training knobs, each estimator step's parameters (``<step>.<param>``) and its
    gates, each defaulting to what the spec says (a run's value is checked by the spec's own rules)."""
    described = _schema_help()
    knobs = [Knob(name, "training", name, value, described.get(name, f"{spec.type} training knob"), (RETRAIN,))
             for name, value in spec.estimator.training.items()]
    knobs += [Knob(f"{step.name}.{param}", "training", f"{step.name}.{param}", value, f"{param} of the {step.class_path.rsplit('.', 1)[-1]} step",
                   (RETRAIN,)) for step in spec.estimator.steps for param, value in step.params.items()]
    knobs += [Knob(gate.name, "gates", gate.name, gate.limit, f"{'Lowest' if gate.name.startswith('min_') else 'Highest'} {gate.metric} that "
                   f"may deploy ({described.get(gate.name, gate.metric)}).", (RETRAIN,)) for gate in spec.gates.gates]
    knobs.append(Knob("champion_tolerance", "gates", "champion_tolerance", spec.gates.champion_tolerance,
                      f"How much worse than the serving (champion) version's {spec.gates.champion_metric} a candidate may be and still deploy.",
                      (RETRAIN,)))
    return knobs


LIVE_FACTOR_KNOBS = ("anomaly_rate_factor", "forecast_bias_factor")


def spec_run_defaults(spec: ModelSpec) -> dict[str, object]:
    """Return the run knobs whose defaults a model's spec sets, by name: its canary's primary limit (max_prediction_shift) and its
    drift settings."""
    drift = spec.drift
    defaults: dict[str, object] = {"max_prediction_shift": next(iter(spec.canary.limits.values())), "psi_threshold": drift.psi,
                                   "ks_excess": drift.ks_excess, "level_excess": drift.level_excess, "cooldown_hours": drift.cooldown_hours,
                                   "min_predictions": drift.min_predictions, "min_regime_hours": drift.min_regime_hours}
    if drift.live_factor_name in LIVE_FACTOR_KNOBS:
        defaults[drift.live_factor_name] = drift.live_factor
    return defaults


def knobs_of(kind: str, spec: ModelSpec | None = None) -> list[Knob]:
    """Return the knobs the ``kind`` pipeline shows, in run-form order: with a ``spec``, that model's own (no model_name to choose;
    its canary and drift knobs default to what the spec says; a retrain gains its training and gates knobs)."""
    shown = [knob for knob in KNOBS if kind in knob.kinds and not (spec is not None and knob.name == "model_name")]
    if spec is not None:
        from_spec = spec_run_defaults(spec)
        # Of the live-prediction factors, a model's own monitor shows its type's (a classifier's alert_rate_factor is no knob).
        shown = [replace(knob, default=from_spec[knob.name]) if knob.name in from_spec else knob for knob in shown
                 if knob.name not in LIVE_FACTOR_KNOBS or knob.name == spec.drift.live_factor_name]
    if kind != RETRAIN:
        return shown
    at = next(index for index, knob in enumerate(shown) if knob.group == "store")
    return shown[:at] + spec_knobs(spec) + shown[at:]


def default_of(knob: Knob, kind: str) -> object:
    """Return ``knob``'s default in the ``kind`` pipeline."""
    return KIND_DEFAULTS.get(kind, {}).get(knob.name, knob.default)


def pipeline_parameters(kind: str, spec: ModelSpec | None = None) -> dict[str, object]:
    """Return the ``kind`` pipeline's run parameters with their defaults: the top-level knobs, then one dict per group."""
    parameters: dict[str, object] = {}
    for knob in knobs_of(kind, spec):
        if knob.group is None:
            parameters[knob.name] = default_of(knob, kind)
        else:
            parameters.setdefault(knob.group, {})[knob.key] = default_of(knob, kind)
    return parameters


def parameter_descriptions(kind: str, spec: ModelSpec | None = None) -> dict[str, str]:
    """Return each run parameter's description; a group's lists every key with its meaning."""
    descriptions: dict[str, str] = {}
    for knob in knobs_of(kind, spec):
        if knob.group is None:
            descriptions[knob.name] = knob.help
        else:
            descriptions.setdefault(knob.group, f"{GROUP_HELP[knob.group]}; keys:")
            descriptions[knob.group] += f" {knob.key}: {knob.help}"
    return descriptions


def _shown_default(value: object) -> str:
    """Return a default as the run form's JSON spells it."""
    return json.dumps(value) if not isinstance(value, str) else (value or '""')


def run_form_markdown() -> str:
    """Return the table of every knob (where it sits in the run form, its --param name, pipelines, default, meaning) for the docs:
    the shared knobs, then each built-in model's training knobs and gates."""
    from components.kfp.run_parameters import CHOICES
    from components.model.spec import builtin_specs

    lines = ["| run form | `--param` | pipelines | default | meaning |", "|---|---|---|---|---|"]
    rows = [(knob, ", ".join(knob.kinds)) for knob in KNOBS]
    rows += [(knob, f"retrain ({spec.name})") for spec in builtin_specs() for knob in spec_knobs(spec)]
    for knob, pipelines in rows:
        default = _shown_default(knob.default) + "".join(f" ({kind}: {_shown_default(values[knob.name])})" for kind, values in KIND_DEFAULTS.items()
                                                         if knob.name in values and kind in knob.kinds)
        choices = f" One of: {', '.join(CHOICES[knob.name])}." if knob.name in CHOICES else ""
        lines.append(f"| `{knob.label}` | `{knob.name}` | {pipelines} | `{default}` | {knob.help.replace('|', '/')}{choices} |")
    return "\n".join(lines)


def _close(name: str, choices: list[str]) -> str:
    """Return " (did you mean X?)" for the nearest of ``choices``, or ""."""
    match = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def flatten(arguments: dict[str, object], kind: str, spec: ModelSpec | None = None) -> dict[str, object]:
    """Return every knob of the ``kind`` pipeline by flat name: its defaults, overridden by ``arguments``.

    ``arguments`` holds top-level parameters and groups (dicts of some of their keys); a group's unknown key, or a
    parameter the pipeline lacks, is a ConfigError naming the known ones.
    """
    shown = knobs_of(kind, spec)
    values = {knob.name: default_of(knob, kind) for knob in shown}
    by_group = {group: {knob.key: knob for knob in shown if knob.group == group} for group in GROUPS}
    top = {knob.name for knob in shown if knob.group is None}
    problems = []
    for name, value in arguments.items():
        if name in top:
            values[name] = value
        elif by_group.get(name):
            group = value if not isinstance(value, str) else _json(value, name, problems)
            if not isinstance(group, dict):
                problems.append(f"{name}={value!r}: must be an object of {', '.join(by_group[name])}")
                continue
            for key, item in group.items():
                if key in by_group[name]:
                    values[by_group[name][key].name] = item
                else:
                    problems.append(f"{name}.{key}: {name} has no key {key!r}{_close(str(key), list(by_group[name]))}; its keys are "
                                    f"{', '.join(by_group[name])}")
        else:
            problems.append(f"{name}: the {kind} pipeline has no parameter {name!r}{_close(name, [*top, *by_group])}")
    if problems:
        raise config_error(problems)
    return values


def config_error(problems: list[str]) -> ConfigError:
    """Return the error listing ``problems``, the first one on the first line (what a run's summary shows)."""
    more = f" (and {len(problems) - 1} more below)" if len(problems) > 1 else ""
    return ConfigError(f"{len(problems)} invalid parameter(s): {problems[0]}{more}\n  " + "\n  ".join(problems))


def _json(text: str, name: str, problems: list[str]) -> object:
    """Return the JSON value ``text`` spells, or None after noting the problem (KFP may hand a struct over as text)."""
    try:
        return json.loads(text)
    except ValueError:
        problems.append(f"{name}={text!r}: must be a JSON object")
        return None


def grouped(flat: dict[str, object], kind: str, spec: ModelSpec | None = None) -> dict[str, object]:
    """Return pipeline arguments for knob values by flat name (or whole groups): top-level ones as they are, the others in their groups."""
    shown = {knob.name: knob for knob in knobs_of(kind, spec)}
    arguments: dict[str, object] = {}
    for name, value in flat.items():
        knob = shown.get(name)
        if name in GROUPS and isinstance(value, dict):
            keys = {item.key: item for item in shown.values() if item.group == name}
            arguments.setdefault(name, {}).update({key: _like_default(item, keys[key].default) if key in keys else item for key, item in value.items()})
        elif knob is None:
            arguments[name] = value  # not a knob here: flatten() names it
        elif knob.group is None:
            arguments[name] = _like_default(value, knob.default)
        else:
            arguments.setdefault(knob.group, {})[knob.key] = _like_default(value, knob.default)
    return arguments


def retrain_arguments(spec: ModelSpec, parameters: dict, regime_start: str = "") -> dict[str, object]:
    """Return ``spec``'s retrain pipeline arguments for ``retrain_parameters`` (flat knob names or groups), learning from ``regime_start`` on."""
    arguments = grouped(parameters, RETRAIN, spec)
    if regime_start:
        arguments.setdefault("data", {})["regime_start"] = regime_start
    flatten(arguments, RETRAIN, spec)  # refuses a parameter or key the retrain pipeline lacks
    return arguments


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how it is split."""

    source: str
    days: float
    file_path: str
    seed: int
    validation_fraction: float
    regime_start: str
    allow_synthetic_fallback: bool


@dataclass(frozen=True)
class PrometheusConfig:
    """Which Prometheus the data and the live signals come from, and how to reach it."""

    url: str
    secret: str
    ca_bundle: str
    queries: dict
    end: str
    window: str


@dataclass(frozen=True)
class ServingConfig:
    """Where versions serve and how the InferenceServices are shaped and waited for."""

    target: str
    namespace: str
    runtime: str
    deployment_mode: str
    rollout_strategy: str
    service_account: str
    endpoint: str
    ready_timeout_s: float
    allow_synthetic_deploy: bool

    def kserve_options(self, run_name: str = "", links: RegistryLinks | None = None) -> KServeOptions:
        """Return the KServe target's options for a step of run ``run_name`` (``links``: label InferenceServices with registry ids)."""
        from components.serving.kserve import KServeOptions

        return KServeOptions(self.namespace, self.runtime, self.deployment_mode, self.service_account, self.endpoint, run_name,
                             self.rollout_strategy, registry=links)


@dataclass(frozen=True)
class FleetConfig:
    """The GitOps fleet: the repository Argo CD syncs, its waves and how long each may take."""

    repo: str
    branch: str
    path: str
    waves: tuple[tuple[str, ...], ...]
    wave_timeout_s: float

    def gitops_options(self) -> GitopsOptions:
        """Return the gitops target's options."""
        from components.serving.gitops.fleet import GitopsOptions

        return GitopsOptions(self.repo, self.branch, self.path, self.waves, wave_timeout_s=self.wave_timeout_s)


@dataclass(frozen=True)
class RegistryConfig:
    """The model registry versions are registered in (optional: an empty url means none), its token's Secret and CA bundle."""

    url: str
    name: str
    ca_bundle: str
    required: bool
    secret: str
    labels: str = "kubeflow"  # the label family deployments are linked with: opendatahub or kubeflow

    @property
    def enabled(self) -> bool:
        """Return whether a registry is configured."""
        return bool(self.url)

    def client(self) -> RegistryClient:
        """Return a client of the configured registry, its token from the environment (RegistryError: not https, or no token)."""
        from components.registry.client import RegistryClient

        return RegistryClient(self.url, self.ca_bundle, secret=self.secret)

    def links(self, model_name: str) -> RegistryLinks | None:
        """Return what labels ``model_name``'s InferenceServices with their registry versions (None without a registry)."""
        if not self.enabled:
            return None
        from components.registry.client import RegistryError
        from components.registry.labels import RegistryLinks

        try:
            return RegistryLinks(self.client(), model_name, self.labels, self.name)
        except RegistryError as error:
            return RegistryLinks(None, model_name, self.labels, self.name, unavailable=str(error))


@dataclass(frozen=True)
class MonitorConfig:
    """What counts as drift, what a retrain decision does and where the monitor reports."""

    action: str
    psi_threshold: float
    ks_excess: float
    level_excess: float
    cooldown_hours: float
    anomaly_rate_factor: float
    forecast_bias_factor: float
    min_predictions: int
    min_regime_hours: float
    dsp_api_url: str
    dsp_ca_bundle: str
    experiment: str
    retrain_parameters: dict
    pushgateway_url: str

    def settings(self, max_retrains_per_episode: int) -> MonitorSettings:
        """Return the monitor's drift and decision settings, with the model's ``max_retrains_per_episode`` (its spec's: no run knob)."""
        return MonitorSettings(DriftThresholds(self.psi_threshold, self.ks_excess, self.level_excess), self.cooldown_hours,
                               self.anomaly_rate_factor, self.forecast_bias_factor, self.min_predictions, self.min_regime_hours,
                               max_retrains_per_episode)


@dataclass(frozen=True)
class RunConfig:
    """Everything a run's steps need to know, parsed and checked once by validate-parameters: the knobs and the model's spec."""

    kind: str
    model_name: str
    version: str
    values: dict = field(repr=False)  # every knob by flat name, as checked: the artifact's content
    installation: Installation = field(default_factory=Installation)
    spec_document: dict = field(default_factory=dict, repr=False)  # the model's spec (a retrain's with its training and gates knobs)
    spec_source: str = ""

    @cached_property
    def spec(self) -> ModelSpec:
        """Return the run's model spec (a retrain's with its training and gates knobs written in), checked when the configuration was made."""
        return spec_from_checked_text(json.dumps(self.spec_document), self.spec_source)

    def _value(self, name: str) -> object:
        """Return knob ``name``'s value (its default when the pipeline does not show it)."""
        return self.values[name] if name in self.values else default_of(KNOB_BY_NAME[name], self.kind)

    @property
    def data(self) -> DataConfig:
        """Return the data settings."""
        return DataConfig(str(self._value("source")), float(self._value("days")), str(self._value("file_path")), int(self._value("seed")),
                          float(self._value("validation_fraction")), str(self._value("regime_start")),
                          _true(self._value("allow_synthetic_fallback")))

    @property
    def prometheus(self) -> PrometheusConfig:
        """Return the Prometheus settings."""
        return PrometheusConfig(str(self._value("prometheus_url")), self.installation.prometheus_secret, str(self._value("prometheus_ca_bundle")),
                                dict(_loaded(self._value("prometheus_queries"))), str(self._value("prometheus_end")),
                                str(self._value("prometheus_window")))

    @property
    def store(self) -> StoreOptions:
        """Return the model store's options."""
        from components.kfp.workflow import StoreOptions

        return StoreOptions(str(self._value("model_store")), self.installation.pvc_name, str(self._value("s3_prefix")),
                            self.installation.s3_secret, _true(self._value("s3_verify")), str(self._value("s3_ca_bundle")))

    @property
    def serving(self) -> ServingConfig:
        """Return the serving settings."""
        return ServingConfig(*(str(self._value(name)) for name in ("serving_target", "namespace", "runtime", "deployment_mode",
                                                                     "rollout_strategy", "service_account", "endpoint")),
                             float(self._value("ready_timeout_s")), _true(self._value("allow_synthetic_deploy")))

    @property
    def canary(self) -> CanarySpec:
        """Return the canary analysis."""
        return CanarySpec(tuple(int(step) for step in _loaded(self._value("canary_steps"))), float(self._value("canary_interval_s")),
                          int(self._value("probe_requests")), float(self._value("max_error_rate")), float(self._value("max_p95_latency_ms")),
                          float(self._value("max_prediction_shift")), int(self._value("failure_limit")),
                          float(self._value("max_live_p95_latency_ms")))

    @property
    def approval(self) -> ApprovalSettings:
        """Return the approval gate's settings."""
        return ApprovalSettings(str(self._value("approval")), float(self._value("approval_timeout_h")), float(self._value("approval_poll_s")))

    @property
    def fleet(self) -> FleetConfig:
        """Return the GitOps fleet settings."""
        from components.serving.gitops.fleet import fleet_waves

        return FleetConfig(str(self._value("gitops_repo")), str(self._value("gitops_branch")), str(self._value("gitops_path")),
                           fleet_waves(_loaded(self._value("fleet_waves"))), float(self._value("fleet_wave_timeout_s")))

    @property
    def registry(self) -> RegistryConfig:
        """Return the model registry's settings."""
        return RegistryConfig(str(self._value("registry_url")), str(self._value("registry_name")), str(self._value("registry_ca_bundle")),
                              _true(self._value("registry_required")), self.installation.registry_secret, str(self._value("registry_labels")))

    @property
    def monitor(self) -> MonitorConfig:
        """Return the drift monitor's settings."""
        typed = {item.name: item.type for item in fields(MonitorConfig)}
        return MonitorConfig(**{name: _typed(self._value(name), kind) for name, kind in typed.items()})

    def to_json(self) -> str:
        """Return the configuration artifact's content."""
        return json.dumps({"kind": self.kind, "model_name": self.model_name, "version": self.version, "values": self.values,
                           "installation": asdict(self.installation), "spec": {"source": self.spec_source, "document": self.spec_document}},
                          indent=1, sort_keys=True)


def _true(value: object) -> bool:
    """Return a flag's value (KFP may hand a boolean over as text)."""
    return value is True or str(value).lower() == "true"


def _loaded(value: object) -> object:
    """Return a list or dict knob's value (KFP may hand one over as JSON text)."""
    return json.loads(value) if isinstance(value, str) else value


def _typed(value: object, kind: str) -> object:
    """Return ``value`` as the MonitorConfig field type named ``kind``."""
    converters = {"float": float, "int": int, "str": str, "dict": lambda item: dict(_loaded(item))}
    return converters[kind](value)


SPEC_PATHS = (("$.estimator.training.", "training."), ("$.gates.", "gates."))


def with_knobs(spec: ModelSpec, values: dict[str, object]) -> ModelSpec:
    """Return ``spec`` with a retrain's training and gates knobs written into it, checked by the spec's own rules (SpecError)."""
    import copy

    document = copy.deepcopy(spec.document.value)
    estimator = document.setdefault("estimator", {})
    for knob in spec_knobs(spec):
        value = _like_default(values.get(knob.name, knob.default), knob.default)
        if knob.group == "gates":
            document.setdefault("gates", {})[knob.key] = value
        elif "." in knob.key:
            step_name, param = knob.key.split(".", 1)
            step = next(item for item in estimator["steps"] if item.get("name") == step_name)
            step.setdefault("params", {})[param] = value
        else:
            estimator.setdefault("training", {})[knob.key] = value
    return spec_from_text(json.dumps(document), spec.source)


def _like_default(value: object, default: object) -> object:
    """Return a number as the type of the knob's default: a whole float as an int where the default is one (a KFP struct hands every
    number over as a float), an int as a float where the default is one (KFP refuses an integer for a float input)."""
    if isinstance(value, bool) or isinstance(default, bool) or not isinstance(value, (int, float)):
        return value
    if isinstance(default, int) and isinstance(value, float) and value.is_integer():
        return int(value)
    return float(value) if isinstance(default, float) else value


def _spec_problem_label(path: str, spec: ModelSpec) -> str:
    """Return how the run form names the spec path ``path`` a knob wrote (``training.pca.n_components``, ``gates.min_f1``)."""
    for prefix, group in SPEC_PATHS:
        if path.startswith(prefix):
            return group + path[len(prefix):]
    if path.startswith("$.estimator.steps["):
        index, _, rest = path[len("$.estimator.steps["):].partition("].params.")
        return f"training.{spec.estimator.steps[int(index)].name}.{rest}"
    return path


def config_from_arguments(kind: str, arguments: dict[str, object], installation: Installation | dict | None = None,
                          spec: ModelSpec | None = None) -> RunConfig:
    """Return the checked configuration of a ``kind`` run from its pipeline arguments (of ``spec``'s pipelines, or the built-in
    model named by model_name), or raise ConfigError listing every problem."""
    from components.kfp.run_parameters import problems

    installed = installation if isinstance(installation, Installation) else Installation(**(installation or {}))
    given = {name: value for name, value in arguments.items() if value is not None and not (spec is not None and name == "model_name")}
    values = flatten(given, kind, spec)
    model = spec.name if spec is not None else str(values.get("model_name", ""))
    found = problems({**values, **({"version": arguments["version"]} if "version" in arguments else {})})
    chosen = spec
    if chosen is None and not found:
        try:
            chosen = spec_for(model)
        except SpecError as error:
            found.append(f"model_name={model!r}: {error}")
    if chosen is not None and kind == RETRAIN and not found:
        try:
            chosen = with_knobs(chosen, values)
        except SpecError as error:
            found += [f"{_spec_problem_label(problem.path, chosen)}: {problem.problem}; {problem.fix}" for problem in error.problems]
    if found:
        raise config_error(found)
    return RunConfig(kind, model, str(arguments.get("version") or ""), values, installed, dict(chosen.document.value), chosen.source)


def carried_spec(carried: str) -> ModelSpec | None:
    """Return the spec a pipeline carries (JSON text of its source and document), or None for one that serves the built-in model
    model_name names."""
    if not carried:
        return None
    document = json.loads(carried)
    return spec_from_text(json.dumps(document["document"]), document["source"])


def read_config(path: str) -> RunConfig:
    """Return the configuration artifact validate-parameters wrote at ``path``; its model's spec is the one this process uses."""
    with open(path) as handle:
        document = json.load(handle)
    config = RunConfig(document["kind"], document["model_name"], document["version"], document["values"], Installation(**document["installation"]),
                       document["spec"]["document"], document["spec"]["source"])
    use_spec(config.spec)  # every later lookup of the model in this step (contract, rollout, monitor) finds its spec
    return config


def knob_label(name: str) -> str:
    """Return how the run form spells knob ``name``: ``group.key`` inside a group, else the name."""
    knob = KNOB_BY_NAME.get(name)
    return name if knob is None else knob.label
