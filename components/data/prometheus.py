"""Prometheus (or Thanos querier) as a data source: training series for ingest, live metrics for canary analysis.

Auth follows the cluster's habits: a bearer token from a Secret ($PROMETHEUS_TOKEN) or the pod's service-account token, sent only over https, and a CA
bundle. Messy data is expected: several series per query are aggregated, timestamps go onto a 1-minute grid,
duplicates are merged and short gaps interpolated. A query that returns nothing is "no data", never zero.
"""

from __future__ import annotations

import datetime as dt
import math
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from components.model.contract import TIMESTAMP_COLUMN, ContractError, Unit, schema_for
from components.model.spec import spec_for
from components.credentials import ApiAdvice, api_request, json_object, token_from_environment

if TYPE_CHECKING:  # numpy and pandas are imported where they are used: the canary's Prometheus analysis needs neither
    import pandas as pd

TOKEN_ENV = "PROMETHEUS_TOKEN"
_WARNED_PLAIN_HTTP: set[str] = set()
STEP_SECONDS = 60
# Prometheus and Thanos refuse a range query of more than 11,000 steps per series (7.6 days at one minute), and a week of
# rate() over every container can outlast the client's timeout: a window is asked for a day at a time.
STEPS_PER_QUERY = 1_440
# The Thanos querier answers with whatever stores replied unless told otherwise, so an unreachable user-workload store
# would read as "no data"; Prometheus ignores the parameter.
WHOLE_ANSWERS = {"partial_response": "false"}
# Canary templates: {model}, {version}, {window} and {scope} (extra label matchers, e.g. a fleet wave's clusters) are
# filled in. Both read the project runtime's own series, whose ``version`` label is the version it serves (from
# MODEL_VERSION), so that they need no relabelling in the scrape configuration, on one cluster or across a fleet.
# The error rate is server errors (5xx) over all requests: a client sending bad requests (4xx) cannot fail a candidate.
DEFAULT_CANARY_QUERIES = {
    "live_p95_latency_ms": 'histogram_quantile(0.95, sum by (le) (rate(kserve_inference_latency_bucket{{model="{model}",version="{version}"{scope}}}[{window}]))) * 1000',
    "live_error_rate": 'sum(rate(kserve_inference_errors_total{{model="{model}",version="{version}"{scope}}}[{window}])) / sum(rate(kserve_inference_requests_total{{model="{model}",version="{version}"{scope}}}[{window}]))',
}
# With KServe Serverless, queue-proxy counts every request to a revision, errors included:
SERVERLESS_ERROR_RATE = ('sum(rate(revision_request_count{{revision_name=~"{model}-predictor.*",response_code_class="5xx"{scope}}}[{window}]))'
                         ' / sum(rate(revision_request_count{{revision_name=~"{model}-predictor.*"{scope}}}[{window}]))')


class PrometheusError(RuntimeError):
    """Prometheus could not be queried; the message names the URL and the fix."""


PROMETHEUS_ADVICE = ApiAdvice(
    "Prometheus",
    unreachable="check prometheus_url (in OpenShift the Thanos querier: https://thanos-querier.openshift-monitoring.svc:9091) and the network",
    tls="set prometheus.ca_bundle to the CA that signed the server's certificate (in OpenShift the service CA: "
        "/var/run/secrets/kubernetes.io/serviceaccount/service-ca.crt)",
    refused="grant the pipelines' service account cluster-monitoring-view (a cluster admin: oc apply -k manifests/metrics-reader), or put a "
            "token that has it in the prometheus-token Secret",
)


def token_source(secret_name: str) -> str:
    """Return, for the log, where the Prometheus token comes from (never the token)."""
    secret = f"key 'token' of Secret {secret_name!r} if it exists, else " if secret_name else ""
    return f"Prometheus token: {secret}the service account's (only to an in-cluster *.svc address); sent only over https"


def bearer_token(url: str) -> str:
    """Return the Prometheus token for ``url``: $PROMETHEUS_TOKEN (injected from a Secret), else the pod's service-account token
    when ``url`` is an in-cluster service (the Thanos querier)."""
    return token_from_environment(TOKEN_ENV, url)


@dataclass(frozen=True)
class PrometheusClient:
    """A Prometheus HTTP API endpoint and CA bundle; the token comes from the environment, never from a parameter.

    The token is sent only over https, only to the configured host (redirects are not followed), and never printed.
    """

    url: str
    ca_bundle: str = ""
    timeout_s: float = 30.0

    def _headers(self) -> dict:
        """Return the Authorization header when a token exists and the URL is https; warn once otherwise."""
        token = bearer_token(self.url)
        if not token:
            return {}
        if urllib.parse.urlparse(self.url).scheme != "https":
            if self.url not in _WARNED_PLAIN_HTTP:
                _WARNED_PLAIN_HTTP.add(self.url)
                print(f"warning: not sending the bearer token to {self.url}: tokens go only over https", flush=True)
            return {}
        return {"Authorization": f"Bearer {token}"}

    def _get(self, path: str, params: dict) -> list:
        answer = api_request("GET", f"{self.url.rstrip('/')}{path}", PROMETHEUS_ADVICE, PrometheusError, params=params, headers=self._headers(),
                             timeout_s=self.timeout_s, ca_bundle=self.ca_bundle)
        body = json_object(answer)
        if body is None:
            raise PrometheusError(f"Prometheus at {self.url} answered {answer.status_code} without JSON; is it the API URL?")
        if body.get("status") != "success":
            raise PrometheusError(f"Prometheus rejected the query ({body.get('errorType')}: {body.get('error')}); params {params}")
        return body["data"]["result"]

    def query_range(self, query: str, start: dt.datetime, end: dt.datetime, step_s: int = STEP_SECONDS) -> list:
        """Return the matrix result of a range query, asked in pieces of ``STEPS_PER_QUERY`` steps and joined per series."""
        joined: dict[tuple, dict] = {}
        piece_start, span = start, dt.timedelta(seconds=step_s * STEPS_PER_QUERY)
        while piece_start <= end:
            piece_end = min(piece_start + span, end)
            params = {"query": query, "start": piece_start.timestamp(), "end": piece_end.timestamp(), "step": step_s, **WHOLE_ANSWERS}
            for series in self._get("/api/v1/query_range", params):
                labels = series.get("metric", {})
                joined.setdefault(tuple(sorted(labels.items())), {"metric": labels, "values": []})["values"].extend(series.get("values", []))
            piece_start = piece_end + dt.timedelta(seconds=step_s)  # on the same grid, so no step is asked twice
        return list(joined.values())

    def query(self, query: str, at: dt.datetime | None = None) -> list:
        """Return the vector result of an instant query (at ``at`` when given, for deterministic answers)."""
        return self._get("/api/v1/query", {"query": query, **WHOLE_ANSWERS, **({"time": at.timestamp()} if at else {})})


def series_frame(result: list, name: str, aggregate: str) -> pd.Series:
    """Return one per-minute series from a matrix with any number of series.

    Samples are floored to the minute; duplicates within a series average; then the series are combined per
    minute: a count (``aggregate="sum"``) adds up, a level averages.
    """
    import numpy as np
    import pandas as pd

    points = [(number, float(ts), float(value)) for number, series in enumerate(result) for ts, value in series.get("values", [])]
    if not points:
        return pd.Series(dtype=float, name=name)
    frame = pd.DataFrame(points, columns=["series", "ts", name])
    frame = frame[np.isfinite(frame[name])]
    minute = pd.to_datetime(frame["ts"], unit="s", utc=True).dt.floor("min")
    per_series = frame.groupby([minute, frame["series"]])[name].mean()
    return per_series.groupby(level=0).agg("sum" if aggregate == "sum" else "mean").rename(name)


def default_queries(model_name: str) -> dict[str, str]:
    """Return the PromQL of each of the model's inputs, from its spec (the built-ins': the base metrics the coordination engine uses)."""
    return {item.name: item.query for item in spec_for(model_name).inputs}


def fetch_metrics(client: PrometheusClient, model_name: str, start: dt.datetime, end: dt.datetime, queries: dict[str, str]) -> pd.DataFrame:
    """Return raw per-minute metrics for ``model_name`` between ``start`` and ``end`` in its spec's units.

    An input with a ``query_divisor`` is the query's value divided by it and clipped to the input's bounds (the
    forecaster's network: bytes/s / 125e6, clamped to 0-1, the engine's scaling).
    """
    import numpy as np
    import pandas as pd

    schema = schema_for(model_name)
    merged = {**default_queries(model_name), **queries}
    unknown = set(queries) - set(schema.metric_names)
    if unknown:
        raise ContractError(f"prometheus_queries has unknown metric(s) {sorted(unknown)}; {model_name} uses {schema.metric_names}")
    columns = []
    for metric in schema.base_metrics:
        result = client.query_range(merged[metric.name], start, end)
        series = series_frame(result, metric.name, "sum" if metric.unit is Unit.COUNT else "mean")
        if series.empty:
            raise ContractError(f"Prometheus returned no data for {metric.name} ({merged[metric.name]!r}) between {start} and {end}")
        if metric.query_divisor is not None:
            scaled = np.clip(series.to_numpy(dtype=float) / metric.query_divisor, *metric.bounds)
            series = pd.Series(scaled, index=series.index, name=metric.name)
        columns.append(series)
    frame = pd.concat(columns, axis=1).sort_index()
    frame.index.name = TIMESTAMP_COLUMN
    return frame.reset_index()


@dataclass
class PrometheusProvider:
    """Canary metrics from Prometheus for the candidate; a query without data is inconclusive (None)."""

    client: PrometheusClient
    window: str = "30s"
    queries: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_CANARY_QUERIES))
    scope: str = ""  # extra label matchers, e.g. ',cluster=~"spoke-1"' for the clusters of a fleet's first wave

    def measure(self, model_name: str, stable_endpoint: str, candidate_endpoint: str, candidate_version: str = "") -> dict[str, float | None]:
        """Return each templated query's value for the candidate version, or None without data."""
        values: dict[str, float | None] = {}
        for name, template in self.queries.items():
            result = self.client.query(template.format(model=model_name, version=candidate_version, window=self.window, scope=self.scope))
            numbers = [float(sample["value"][1]) for sample in result]
            finite = [number for number in numbers if math.isfinite(number)]
            values[name] = max(finite) if finite else None
        return values
