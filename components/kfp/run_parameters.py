"""One validation of every run parameter of every pipeline, run first in the DAG and by the CLI before a local run.

Every problem is listed at once, each naming the parameter, what it got and what it takes, so that a run never
gets as far as the canary with ``probe_requests=0``, repeated steps or a NaN limit (NaN compares false, so it
would pass every check) and an unchecked string is never pasted into PromQL.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from typing import Callable

from components.model.contract import MODEL_NAMES
from components.registry.labels import LABEL_DOMAINS
from components.registry.sync import URI_SCHEME, parse_registry_uri
from components.release.approval import APPROVAL_MODES, MAX_TIMEOUT_H as MAX_APPROVAL_TIMEOUT_H

PROMQL_DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
HTTP_URL = re.compile(r"^https?://[^\s/?#@]+(/[^\s]*)?$")
VERSION = re.compile(r"^v[1-9][0-9]{0,8}$")
MAX_TEXT = 4096  # a path, prefix or query longer than this is a mistake (or an attack), not a setting
CHOICES = {
    "model_name": MODEL_NAMES,
    "source": ("synthetic", "file", "prometheus"),
    "model_store": ("pvc", "s3"),
    "serving_target": ("kserve", "local", "gitops"),
    "deployment_mode": ("auto", "Serverless", "RawDeployment", "Knative", "Standard"),
    "rollout_strategy": ("auto", "knative", "standard-canary", "candidate-isvc"),
    "action": ("report", "submit", "clear"),
    "approval": APPROVAL_MODES,
    "registry_labels": tuple(LABEL_DOMAINS),
}
IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
GIT_URL = re.compile(r"^(https://[^\s/?#@]+/[^\s?#]+|http://(127\.0\.0\.1|localhost)(:[0-9]+)?/[^\s?#]+|ssh://[^\s/?#:-][^\s/?#:]*@[^\s/?#-][^\s/?#]*/[^\s?#]+|[a-z0-9_][a-z0-9_.-]*@[^\s/?#:-][^\s/?#:]*:[^\s?#-][^\s?#]*)$")
GIT_BRANCH = re.compile(r"^(?![/-])(?!.*\.\.)(?!.*//)[A-Za-z0-9._/-]{1,200}(?<![/.])$")


def _number(value: object) -> float | None:
    """Return ``value`` as a float (KFP may hand numbers over as text), or None if it is not a number."""
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _in_range(low: float, high: float, *, low_open: bool = False, integer: bool = False) -> Callable[[object], str | None]:
    """Return a rule: a finite number within [low, high] (or (low, high]), optionally whole."""
    def rule(value: object) -> str | None:
        number = _number(value)
        if number is None or not math.isfinite(number):
            return "a finite number"
        if (number <= low if low_open else number < low) or number > high or (integer and number != int(number)):
            kind = "a whole number" if integer else "a number"
            return f"{kind} in {'(' if low_open else '['}{low:g}, {high:g}]"
        return None
    return rule


def _canary_steps(value: object) -> str | None:
    """Rule for canary_steps: strictly increasing whole percentages in 1-100."""
    steps = json.loads(value) if isinstance(value, str) else value
    if not isinstance(steps, list) or not steps or any(_number(step) is None or _number(step) != int(_number(step)) for step in steps):
        return "a non-empty list of whole percentages, e.g. [10, 50, 100]"
    numbers = [int(_number(step)) for step in steps]
    if any(not 1 <= step <= 100 for step in numbers) or any(later <= earlier for earlier, later in zip(numbers, numbers[1:])):
        return "strictly increasing percentages in 1-100, e.g. [10, 50, 100]"
    return None


def _promql_duration(value: object) -> str | None:
    """Rule for prometheus_window: a PromQL duration, nothing else."""
    return None if isinstance(value, str) and PROMQL_DURATION.match(value) else "a PromQL duration such as 2m, 90s or 1h"


def _kubernetes_name(pattern: re.Pattern, kind: str, *, may_be_empty: bool) -> Callable[[object], str | None]:
    """Return a rule: a Kubernetes object name matching ``pattern`` (or empty, when that means "the default")."""
    def rule(value: object) -> str | None:
        if isinstance(value, str) and ((may_be_empty and value == "") or pattern.match(value)):
            return None
        return f"{'empty or ' if may_be_empty else ''}a Kubernetes {kind}: lower-case letters, digits and '-'"
    return rule


def _http_url(value: object) -> str | None:
    """Rule for URLs: empty (the default applies) or one http(s) URL without credentials."""
    return None if value == "" or (isinstance(value, str) and HTTP_URL.match(value)) else "empty or an http(s) URL with no user:password@ part"


def _https_url(value: object) -> str | None:
    """Rule for URLs a token goes to: empty (none) or one https URL without credentials."""
    return None if value == "" or (isinstance(value, str) and value.startswith("https://") and HTTP_URL.match(value)) else \
        "empty or an https URL with no user:password@ part (the registry's token goes only over TLS)"


def _text(value: object) -> str | None:
    """Rule for free text (paths, prefixes): a string of bounded length without control characters."""
    if isinstance(value, str) and len(value) <= MAX_TEXT and value.isprintable():
        return None
    return f"text of at most {MAX_TEXT} printable characters"


def _store_prefix(value: object) -> str | None:
    """Rule for s3_prefix: a relative key prefix that cannot climb out of the bucket's model area."""
    if _text(value) is None and not str(value).startswith("/") and ".." not in str(value).split("/"):
        return None
    return "a relative key prefix such as models (no leading '/', no '..')"


def _timestamp(value: object) -> str | None:
    """Rule for prometheus_end and regime_start: empty (now, or no start) or an ISO-8601 time."""
    if value == "":
        return None
    try:
        datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        return None
    except ValueError:
        return "empty (now) or an ISO-8601 time such as 2026-11-20T00:00:00Z"


def _queries(value: object) -> str | None:
    """Rule for prometheus_queries: an object mapping metric names to PromQL strings."""
    queries = json.loads(value) if isinstance(value, str) else value
    if isinstance(queries, dict) and all(isinstance(k, str) and isinstance(v, str) and _text(v) is None for k, v in queries.items()):
        return None
    return 'an object of metric name -> PromQL, e.g. {"cpu_usage": "avg(rate(...[5m]))"}'


def _boolean(value: object) -> str | None:
    """Rule for flags: true or false."""
    return None if isinstance(value, bool) or str(value).lower() in {"true", "false"} else "true or false"


def _version(value: object) -> str | None:
    """Rule for version: a store version name, or a ``model-registry://<model>/<version>`` reference validate-parameters resolves."""
    if isinstance(value, str) and VERSION.match(value):
        return None
    if isinstance(value, str) and value.startswith(URI_SCHEME):
        try:
            parse_registry_uri(value)
            return None
        except ValueError:
            return f"{URI_SCHEME}<model>/<version>, e.g. {URI_SCHEME}anomaly-detector/v3"
    if str(value).isdigit():
        return f"a version name, which starts with v: version {value} is v{value}"
    return f"a version name such as v3, or {URI_SCHEME}<model>/<version>"


def _retrain_parameters(value: object) -> str | None:
    """Rule for retrain_parameters: an object of parameter name -> value, small enough to be a run's settings."""
    parameters = json.loads(value) if isinstance(value, str) else value
    if isinstance(parameters, dict) and all(isinstance(key, str) and IDENTIFIER.match(key) for key in parameters) \
            and len(json.dumps(parameters)) <= MAX_TEXT:
        return None
    return 'an object of retrain pipeline parameter -> value, e.g. {"source": "prometheus", "days": 7}'


def _git_repository(value: object) -> str | None:
    """Rule for gitops_repo: empty (no fleet) or an https URL without credentials, or an SSH URL."""
    if value == "" or (isinstance(value, str) and len(value) <= MAX_TEXT and GIT_URL.match(value)):
        return None
    return "empty or the fleet repository as https://host/path (the token comes from a Secret, never the URL) or ssh://git@host/path (plain http only on this machine)"


def _git_branch(value: object) -> str | None:
    """Rule for gitops_branch: a branch name."""
    return None if isinstance(value, str) and GIT_BRANCH.match(value) else "a branch name such as main"


def _fleet_waves(value: object) -> str | None:
    """Rule for fleet_waves: lists of cluster wave labels, "*" alone as the last wave."""
    from components.serving.gitops.fleet import fleet_waves

    try:
        fleet_waves(json.loads(value) if isinstance(value, str) else value)
        return None
    except ValueError:
        return 'non-empty lists of cluster wave labels, each label in one wave, "*" (every other cluster) only alone as the last wave, e.g. [["canary"], ["*"]]'


def _choice(name: str) -> Callable[[object], str | None]:
    """Return a rule: one of the parameter's choices."""
    return lambda value: None if value in CHOICES[name] else f"one of {', '.join(CHOICES[name])}"


INF = math.inf
RULES: dict[str, Callable[[object], str | None]] = {
    "days": _in_range(0, 366, low_open=True),
    "validation_fraction": _in_range(0, 0.9, low_open=True),
    "canary_steps": _canary_steps,
    "canary_interval_s": _in_range(0, 3600),
    "probe_requests": _in_range(1, 10_000, integer=True),
    "max_error_rate": _in_range(0, 1),
    "max_p95_latency_ms": _in_range(0, 600_000, low_open=True),
    "max_live_p95_latency_ms": _in_range(0, 600_000, low_open=True),
    "max_prediction_shift": _in_range(0, INF),
    "failure_limit": _in_range(0, 100, integer=True),
    "ready_timeout_s": _in_range(0, 86_400, low_open=True),
    "fleet_wave_timeout_s": _in_range(0, 86_400, low_open=True),
    "approval_timeout_h": _in_range(0, MAX_APPROVAL_TIMEOUT_H, low_open=True),
    "approval_poll_s": _in_range(0.1, 3600),  # a floor: a hold looks at the registry, the cluster or the fleet repository this often
    "prometheus_window": _promql_duration,
    **{name: _choice(name) for name in CHOICES},
    "version": _version,
    "seed": _in_range(0, 2**32 - 1, integer=True),
    "file_path": _text,
    "prometheus_url": _http_url,
    "endpoint": _http_url,
    "prometheus_queries": _queries,
    "prometheus_end": _timestamp,
    "regime_start": _timestamp,
    "prometheus_ca_bundle": _text,
    "s3_ca_bundle": _text,
    "registry_url": _https_url,
    "registry_name": _kubernetes_name(DNS_LABEL, "ModelRegistry name", may_be_empty=True),
    "registry_ca_bundle": _text,
    "registry_required": _boolean,
    "s3_prefix": _store_prefix,
    "allow_synthetic_fallback": _boolean,
    "allow_synthetic_deploy": _boolean,
    "s3_verify": _boolean,
    "namespace": _kubernetes_name(DNS_LABEL, "namespace name", may_be_empty=True),
    "runtime": _kubernetes_name(DNS_SUBDOMAIN, "ServingRuntime name", may_be_empty=True),
    "service_account": _kubernetes_name(DNS_SUBDOMAIN, "ServiceAccount name", may_be_empty=True),
    "psi_threshold": _in_range(0, 100, low_open=True),
    "ks_excess": _in_range(0, 1, low_open=True),
    "level_excess": _in_range(0, 100, low_open=True),
    "cooldown_hours": _in_range(0, 8760),
    "min_regime_hours": _in_range(0, 8760),
    "anomaly_rate_factor": _in_range(1, 1000),
    "forecast_bias_factor": _in_range(0, 1000, low_open=True),
    "min_predictions": _in_range(1, 1e9, integer=True),
    "dsp_api_url": _http_url,
    "pushgateway_url": _http_url,
    "dsp_ca_bundle": _text,
    "experiment": _text,
    "retrain_parameters": _retrain_parameters,
    "gitops_repo": _git_repository,
    "gitops_branch": _git_branch,
    "gitops_path": _store_prefix,
    "fleet_waves": _fleet_waves,
}


# The installation's Kubernetes objects (fixed at compile time, see components.kfp.config.Installation).
INSTALLATION_RULES: dict[str, Callable[[object], str | None]] = {
    "pvc_name": _kubernetes_name(DNS_SUBDOMAIN, "PersistentVolumeClaim name", may_be_empty=False),
    "s3_secret": _kubernetes_name(DNS_SUBDOMAIN, "Secret name", may_be_empty=False),
    "prometheus_secret": _kubernetes_name(DNS_SUBDOMAIN, "Secret name", may_be_empty=False),
    "gitops_secret": _kubernetes_name(DNS_SUBDOMAIN, "Secret name", may_be_empty=True),
    "registry_secret": _kubernetes_name(DNS_SUBDOMAIN, "Secret name", may_be_empty=False),
}


def _broken(values: dict, rules: dict[str, Callable[[object], str | None]]) -> list[str]:
    """Return one line per value that breaks its rule, named as the run form spells it (None: not set here)."""
    from components.kfp.config import knob_label

    found = []
    for name, rule in rules.items():
        if values.get(name) is None:
            continue
        try:
            wanted = rule(values[name])
        except ValueError:
            wanted = "valid JSON"
        if wanted:
            found.append(f"{knob_label(name)}={values[name]!r}: must be {wanted}")
    return found


def problems(values: dict) -> list[str]:
    """Return one line per invalid knob among ``values``, by flat name (None means "not a parameter of this pipeline")."""
    found = _broken(values, RULES)
    if values.get("source") == "file" and values.get("file_path") == "":
        found.append("data.file_path='': must name a CSV or Parquet file when source=file")
    if str(values.get("registry_required")).lower() == "true" and not values.get("registry_url"):
        found.append("store.registry_required=true: needs store.registry_url, the registry's https REST URL (or set registry_required=false)")
    if values.get("serving_target") == "gitops":
        if not values.get("gitops_repo"):
            found.append("fleet.repo='': must name the fleet repository when serving_target=gitops")
        if "{cluster}" not in str(values.get("endpoint", "")):
            found.append(f"serving.endpoint={values.get('endpoint')!r}: must be the URL template of a spoke's routes when serving_target=gitops, "
                         "e.g. https://{service}-{namespace}.apps.{cluster}.example.com")
    return found


def installation_problems(installation: dict) -> list[str]:
    """Return one line per invalid name of the installation's PVC and Secrets."""
    return _broken(installation, INSTALLATION_RULES)


def check(values: dict) -> None:
    """Raise ValueError listing every invalid parameter, or return."""
    found = problems(values)
    if found:
        raise ValueError(f"{len(found)} invalid parameter(s):\n  " + "\n  ".join(found))
