"""Prometheus as a data source and as a canary metrics provider, against a real Prometheus on 127.0.0.1."""

import json
import math
import subprocess
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import yaml

from components.model.contract import ANOMALY_DETECTOR, PREDICTIVE_ANALYTICS, ContractError, fallback_instance
from components.data.ingest import IngestRequest, ingest
from components.monitoring.monitor import live_prediction_stats
from components.data.prometheus import PrometheusClient, PrometheusError, series_frame
from components.kfp.config import KNOBS
from components.kfp.workflow import served_namespace_scope
from components.store.filesystem import FilesystemStore
from components.data.synthetic import generate_cluster_metrics
from components.model.spec import spec_for
from components.model.train import train_model
from pipelines.local import local_defaults, parse_params
from tests.conftest import logged, run_cli
from tests.recipe_overrides import isolation_forest, reseeded
from tests.http_json import send_json
from tests.servers import PrometheusServer, serve_https, tls_certificate
from tests.test_hardening import metric
from tests.test_serving import MainUrlClient, save

METRICS = ["node_cpu_utilization", "node_memory_utilization", "pod_cpu_usage", "pod_memory_usage", "container_restart_count"]
QUERIES = {name: (f"max(test_{name})" if name == "container_restart_count" else f"avg(test_{name})") for name in METRICS}
DAYS = 1.0


def openmetrics(frame: pd.DataFrame) -> str:
    """Two series per metric (their mean is the true value), sampled every 30 s, series b with a 20-minute gap."""
    lines = []
    seconds = frame.timestamp.astype("int64") // 10**9
    for name in METRICS:
        lines.append(f"# TYPE test_{name} gauge")
        offset = 0.0 if name == "container_restart_count" else 0.01
        for instance, sign in (("a", 1), ("b", -1)):
            for ts, value in zip(seconds, frame[name]):
                if instance == "b" and 300 * 60 <= ts - seconds.iloc[0] < 320 * 60:
                    continue
                for shift in (0, 30):
                    lines.append(f'test_{name}{{instance="{instance}"}} {max(value + sign * offset, 0.0)} {ts + shift}')
    return "\n".join(lines) + "\n# EOF\n"


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    frame = generate_cluster_metrics(ANOMALY_DETECTOR, days=DAYS, seed=13)
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus"))
    server.backfill(openmetrics(frame))
    server.start()
    end = (frame.timestamp.iloc[-1] + pd.Timedelta(minutes=1)).isoformat()
    try:
        yield server, frame, end
    finally:
        server.stop()


def test_series_from_several_sources_are_aggregated_on_a_minute_grid():
    result = [{"metric": {"instance": "a"}, "values": [[60, "1"], [90, "3"], [120, "5"]]},
              {"metric": {"instance": "b"}, "values": [[60, "3"], [120, "7"]]}]
    mean = series_frame(result, "x", "mean")
    assert mean.tolist() == [2.5, 6.0]
    assert series_frame(result, "x", "sum").tolist() == [5.0, 12.0]


def test_ingest_reads_the_backfilled_window_messy_as_it_is(history):
    server, frame, end = history
    result = ingest(IngestRequest(ANOMALY_DETECTOR, source="prometheus", days=DAYS, prometheus_url=server.url,
                                  prometheus_queries=QUERIES, prometheus_end=end))
    assert result.description.startswith(f"prometheus: {server.url}")
    joined = pd.concat([result.train, result.validation]).reset_index(drop=True)
    assert len(joined) >= len(frame) - 2
    expected = frame.set_index("timestamp")["node_cpu_utilization"]
    got = joined.set_index("timestamp")["node_cpu_utilization"]
    common = expected.index.intersection(got.index)
    assert len(common) > 1400
    minute = (common - frame.timestamp.iloc[0]) // pd.Timedelta(minutes=1)
    # Where both series report, their mean is exact; in series b's gap only a (and, for five minutes, b's last
    # sample, by Prometheus's lookback) remains, so the value is off by about the series' spread.
    in_gap = (minute >= 300) & (minute < 326)
    np.testing.assert_allclose(got[common[~in_gap]], expected[common[~in_gap]], atol=1e-9)
    np.testing.assert_allclose(got[common[in_gap]], expected[common[in_gap]], atol=0.03)
    # An end without a zone is UTC, as every time the run form takes (it was a TypeError from pandas).
    naive_end = pd.Timestamp(end).tz_convert("UTC").tz_localize(None).isoformat()
    naive = ingest(IngestRequest(ANOMALY_DETECTOR, source="prometheus", days=DAYS, prometheus_url=server.url,
                                 prometheus_queries=QUERIES, prometheus_end=naive_end))
    pd.testing.assert_frame_equal(pd.concat([naive.train, naive.validation]).reset_index(drop=True), joined)


def test_a_retrain_reads_the_default_ten_days_though_prometheus_answers_at_most_11000_steps_a_query(tmp_path):
    days = next(knob.default for knob in KNOBS if knob.name == "days")
    assert days * 24 * 60 > 11_000, "the default window is longer than one query may be"
    frame = generate_cluster_metrics(ANOMALY_DETECTOR, days=days, seed=17).iloc[::4]  # a sample every 4 minutes keeps the backfill small
    seconds = frame.timestamp.astype("int64") // 10**9
    lines = [line for name in METRICS for line in
             (f"# TYPE test_{name} gauge", *(f'test_{name}{{instance="a"}} {value} {ts}' for ts, value in zip(seconds, frame[name])))]
    server = PrometheusServer(tmp_path)
    server.backfill("\n".join(lines) + "\n# EOF\n")
    server.start()
    try:
        end = (frame.timestamp.iloc[-1] + pd.Timedelta(minutes=1)).isoformat()
        result = ingest(IngestRequest(ANOMALY_DETECTOR, source="prometheus", days=days, prometheus_url=server.url,
                                      prometheus_queries=QUERIES, prometheus_end=end))
    finally:
        server.stop()
    joined = pd.concat([result.train, result.validation]).set_index("timestamp")["node_cpu_utilization"]
    sampled = frame.set_index("timestamp")["node_cpu_utilization"]
    assert len(joined) >= 4 * len(frame) - 10 and joined.index.is_unique, (len(joined), len(frame))
    common = sampled.index.intersection(joined.index)
    assert len(common) >= len(frame) - 3 and {common[0].day, common[-1].day} == {sampled.index[0].day, sampled.index[-1].day}
    np.testing.assert_allclose(joined[common], sampled[common], atol=1e-9)


def test_too_little_data_is_an_error_unless_fallback_is_explicit(history):
    server, frame, _ = history
    early = (frame.timestamp.iloc[0] - pd.Timedelta(days=3)).isoformat()
    request = IngestRequest(ANOMALY_DETECTOR, source="prometheus", days=1.0, prometheus_url=server.url, prometheus_queries=QUERIES, prometheus_end=early)
    with pytest.raises(ContractError, match="returned no data for node_cpu_utilization.*set allow_synthetic_fallback=true"):
        ingest(request)
    fallback = ingest(IngestRequest(**{**request.__dict__, "allow_synthetic_fallback": True}))
    assert fallback.description.startswith("SYNTHETIC FALLBACK, not cluster data")


PLANTED_TOKEN = "planted-prometheus-token-3f9c2e7a"


def test_local_run_trains_from_prometheus_and_never_leaks_its_token(history, tmp_path):
    server, _, end = history
    state = tmp_path / "state"
    try:
        result = run_cli("run", ANOMALY_DETECTOR, "--local", "--state-dir", str(state), "--param", "source=prometheus",
                         "--param", f"prometheus_url={server.url}", "--param", f"prometheus_end={end}", "--param", f"days={DAYS}",
                         "--param", f"prometheus_queries={json.dumps(QUERIES)}", "--param", "min_f1=0", "--param", "canary_interval_s=0.3",
                         env={"PROMETHEUS_TOKEN": PLANTED_TOKEN})
    finally:
        run_cli("serve", "stop", "--state-dir", str(state))
    assert result.returncode == 0, result.stdout[-3000:]
    record = json.loads((state / "store" / ANOMALY_DETECTOR / "v1" / "version.json").read_text())
    log = logged(result)
    ingest_line = next(line for line in result.stdout.splitlines() if line.strip().startswith("ingest "))
    assert f"prometheus: {server.url}, " in ingest_line and "SYNTHETIC" not in log, "trained from Prometheus, no fallback"
    assert record["run_name"].startswith(f"{ANOMALY_DETECTOR}-retrain-")
    assert f"not sending the bearer token to {server.url}: tokens go only over https" in log
    files = [path for path in state.rglob("*") if path.is_file()]
    assert len(files) > 20, "the run wrote its logs and artifacts"
    assert PLANTED_TOKEN not in logged(result)
    assert [str(path) for path in files if PLANTED_TOKEN.encode() in path.read_bytes()] == []


class RecordingTlsPrometheus:
    """An https endpoint on 127.0.0.1 that answers like Prometheus and records the Authorization headers it gets."""

    def __init__(self, work: Path, redirect_to: str = "") -> None:
        self.cert, key = tls_certificate(work)
        self.seen: list[str] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                recorder.seen.append(self.headers.get("Authorization", ""))
                if redirect_to:
                    self.send_response(302)
                    self.send_header("Location", redirect_to)
                    self.end_headers()
                    return
                send_json(self, 200, json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}}).encode())

        self.server, self.url = serve_https(Handler, self.cert, key)


def test_the_token_goes_only_over_https_and_only_to_the_configured_host(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_TOKEN", PLANTED_TOKEN)
    tls = RecordingTlsPrometheus(tmp_path)
    try:
        PrometheusClient(tls.url, ca_bundle=str(tls.cert)).query("up")
        # A Secret made with --from-file from `oc create token` output ends in a newline: the token is sent without it.
        monkeypatch.setenv("PROMETHEUS_TOKEN", f"{PLANTED_TOKEN}\n")
        PrometheusClient(tls.url, ca_bundle=str(tls.cert)).query("up")
        assert tls.seen == [f"Bearer {PLANTED_TOKEN}"] * 2
        # A line break inside the token: no call, and an error that does not quote it (http.client's would).
        monkeypatch.setenv("PROMETHEUS_TOKEN", f"{PLANTED_TOKEN}\nsecond-line\n")
        with pytest.raises(PrometheusError, match=r"was not called: the token has a line break inside it") as refused:
            PrometheusClient(tls.url, ca_bundle=str(tls.cert)).query("up")
        assert PLANTED_TOKEN not in str(refused.value) and len(tls.seen) == 2
        monkeypatch.setenv("PROMETHEUS_TOKEN", PLANTED_TOKEN)
    finally:
        tls.server.shutdown()
    (tmp_path / "other").mkdir()
    elsewhere = RecordingTlsPrometheus(tmp_path / "other")
    redirecting = RecordingTlsPrometheus(tmp_path, redirect_to=elsewhere.url + "/api/v1/query")
    try:
        with pytest.raises(PrometheusError, match=r"answered 302, a redirect to https://127\.0\.0\.1:\d+, which is never followed so that a token "
                                                  r"stays on its host; check prometheus_url"):
            PrometheusClient(redirecting.url, ca_bundle=str(redirecting.cert)).query("up")
        assert elsewhere.seen == [], "a redirect never carries the token to another host"
    finally:
        redirecting.server.shutdown()
        elsewhere.server.shutdown()


def test_an_in_cluster_address_is_trusted_through_the_service_ca_unless_a_bundle_is_named(tmp_path, monkeypatch):
    # OpenShift's service CA signs every *.svc certificate (an in-cluster registry, Thanos, ODF's S3); requests and botocore
    # ship their own CAs, which do not hold it.
    import components.credentials as credentials

    service_ca = tmp_path / "service-ca.crt"
    monkeypatch.setattr(credentials, "SERVICE_CA_BUNDLE", service_ca)
    assert credentials.trusted_cas("https://registry-rest.ns.svc:8443", "") is True, "no service CA outside a pod"
    service_ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert credentials.trusted_cas("https://registry-rest.ns.svc:8443", "") == str(service_ca)
    assert credentials.trusted_cas("https://s3.openshift-storage.svc.cluster.local", "") == str(service_ca)
    assert credentials.trusted_cas("https://registry.apps.example.com", "") is True, "a route keeps the library's CAs"
    assert credentials.trusted_cas("https://registry-rest.ns.svc:8443", "/etc/pki/mine.pem") == "/etc/pki/mine.pem"


def test_unreachable_prometheus_fails_clearly_and_never_trains_on_made_up_data(tmp_path):
    state = tmp_path / "state"
    result = run_cli("run", ANOMALY_DETECTOR, "--local", "--state-dir", str(state), "--param", "source=prometheus",
                     "--param", "prometheus_url=http://127.0.0.1:9", "--param", "allow_synthetic_fallback=true")
    assert result.returncode == 1
    summary = result.stdout[result.stdout.rindex("Summary"):]
    assert "ingest" in summary and "cannot reach Prometheus at http://127.0.0.1:9" in summary
    assert not (state / "store" / ANOMALY_DETECTOR).exists()
    with pytest.raises(PrometheusError, match="cannot reach Prometheus"):
        PrometheusClient("http://127.0.0.1:9").query("up")


@pytest.fixture(scope="module")
def canary_serving(tmp_path_factory):
    """A detector v1 served as stable on the local target, a Prometheus scraping its model servers, and the training data."""
    work = tmp_path_factory.mktemp("canary")
    state = work / "state"
    (state / "serving").mkdir(parents=True)
    targets = state / "serving" / "prometheus-targets.json"
    targets.write_text("[]")
    server = PrometheusServer(work / "prometheus", file_sd=targets).start()
    data = ingest(IngestRequest(ANOMALY_DETECTOR, days=2, seed=3))
    store = FilesystemStore(state / "store")
    try:
        save(store, train_model(spec_for(ANOMALY_DETECTOR), data.train), state)
        first = run_cli("rollout", ANOMALY_DETECTOR, "--version", "v1", "--local", "--state-dir", str(state), "--param", "days=1")
        assert first.returncode == 0, first.stdout[-3000:]
        yield state, store, server, data
    finally:
        run_cli("serve", "stop", "--state-dir", str(state))
        server.stop()


def main_url(state: Path) -> str:
    """Return the model URL of the detector's local router."""
    port = json.loads((state / "serving" / f"{ANOMALY_DETECTOR}.json").read_text())["router"]["port"]
    return f"http://127.0.0.1:{port}/v1/models/{ANOMALY_DETECTOR}"


def test_canary_rolls_back_on_prometheus_latency_alone(canary_serving):
    state, store, server, data = canary_serving
    stable = store.read_index(ANOMALY_DETECTOR)["stable"]
    slow = save(store, train_model(spec_for(ANOMALY_DETECTOR), data.train, isolation_forest(1500)), state)
    with MainUrlClient(main_url(state)) as engine:
        result = run_cli("rollout", ANOMALY_DETECTOR, "--version", slow, "--local", "--state-dir", str(state), "--param", "days=1",
                         "--param", f"prometheus_url={server.url}", "--param", "prometheus_window=10s", "--param", "canary_interval_s=4",
                         "--param", "max_p95_latency_ms=5000", "--param", "max_live_p95_latency_ms=15", "--param", "canary_steps=[50,100]")
    assert result.returncode == 3, result.stdout[-3000:]
    assert engine.sent > 20 and engine.failures == []
    entry = store.read_index(ANOMALY_DETECTOR)["versions"][slow]
    assert entry["status"] == "rejected" and "live_p95_latency_ms" in entry["rejected_reason"]
    assert "p95_latency_ms " not in entry["rejected_reason"].replace("live_p95_latency_ms", ""), "the probes alone would have passed"
    assert store.read_index(ANOMALY_DETECTOR)["stable"] == stable


class BadRequestClient(MainUrlClient):
    """Calls the model's main URL in a loop, as MainUrlClient does, with bodies the runtime must refuse; ``statuses`` has its answers."""

    def _loop(self) -> None:
        infer = self.url.replace("/v1/", "/v2/") + "/infer"
        tensor = {"name": "input-0", "shape": [1, 45], "datatype": "FP64"}
        bodies = [(f"{self.url}:predict", {"instances": [[None] * 45]}), (f"{self.url}:predict", {"instances": [[0.5] * 44]}),
                  (infer, {"inputs": [{**tensor, "data": [int("1" + "0" * 400)] + [0.5] * 44}]}),
                  (infer, {"inputs": [{**tensor, "data": [math.nan] * 45}]})]
        self.statuses: list[int] = []
        session = requests.Session()
        while not self._stop.is_set():
            endpoint, body = bodies[self.sent % len(bodies)]
            self.statuses.append(session.post(endpoint, data=json.dumps(body), headers={"Content-Type": "application/json"}, timeout=30).status_code)
            self.sent += 1
            time.sleep(0.02)


def test_a_client_sending_only_bad_requests_during_a_canary_does_not_roll_it_back(canary_serving):
    state, store, server, data = canary_serving
    candidate = save(store, train_model(spec_for(ANOMALY_DETECTOR), data.train, reseeded(7)), state)
    url = main_url(state)
    with BadRequestClient(url) as client:
        # A new version's latency series needs two scrapes (1 s apart) around its requests inside the window before rate() has data,
        # and the client's 400s add no latency: only the probes do. When Prometheus finds the new server's target after the first
        # analysis's probes (file_sd, on a loaded machine), the first two analyses see no latency yet, so two inconclusive
        # analyses are tolerated here; the test is about the 400s, which must never count as the candidate's errors.
        result = run_cli("rollout", ANOMALY_DETECTOR, "--version", candidate, "--local", "--state-dir", str(state), "--param", "days=1",
                         "--param", f"prometheus_url={server.url}", "--param", "prometheus_window=30s", "--param", "canary_interval_s=4",
                         "--param", "failure_limit=2",
                         "--param", "max_p95_latency_ms=5000", "--param", "max_live_p95_latency_ms=5000", "--param", "canary_steps=[50,100]")
    assert result.returncode == 0, result.stdout[-3000:]
    assert client.sent > 20 and set(client.statuses) == {400}, sorted(set(client.statuses))
    for weight in (50, 100):
        assert f"canary {ANOMALY_DETECTOR} {candidate} at {weight}%: pass" in logged(result)
    assert store.read_index(ANOMALY_DETECTOR)["stable"] == candidate
    assert metric(url, "router_requests_total", version=candidate, code="400") > 10, "the bad requests reached the candidate"


# The platform's guide (user-model-deployment-guide.md, "Monitoring") tells users to watch these, as written.
GUIDE_QUERIES = (
    'rate(kserve_inference_requests_total{model="anomaly-detector"}[5m])',
    "histogram_quantile(0.95, rate(kserve_inference_latency_bucket[5m]))",
    'rate(kserve_inference_errors_total{model="anomaly-detector"}[5m])',
)
GUIDE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "user-model-deployment-guide.md"


MONITORING = Path(__file__).resolve().parents[1] / "manifests" / "monitoring"


def rule_groups() -> dict:
    """Return the PrometheusRule's groups as a Prometheus rule file."""
    return {"groups": yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())["spec"]["groups"]}


def test_the_alert_rules_pass_promtool(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule_groups()))
    checked = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and "SUCCESS: 6 rules found" in checked.stdout, checked.stdout + checked.stderr
    monitor = yaml.safe_load((MONITORING / "podmonitor.yaml").read_text())
    assert monitor["kind"] == "PodMonitor" and monitor["spec"]["podMetricsEndpoints"][0]["path"] == "/metrics"


COMPILED = Path(__file__).resolve().parents[1] / "compiled"


def test_a_cluster_canary_waits_two_scrapes_of_the_podmonitor_per_analysis_and_a_local_one_5_s():
    # rate() needs two scrapes of a new candidate's series; the canary_serving tests above found no data twice at 2 s
    # against a 1 s scrape. A compiled pipeline's default must give the PodMonitor's 30 s scrape the same room.
    scrape = monitoring_duration_s(yaml.safe_load((MONITORING / "podmonitor.yaml").read_text())["spec"]["podMetricsEndpoints"][0]["interval"])
    compiled = sorted(COMPILED.glob("**/*.yaml"))
    intervals = {}
    for path in compiled:
        parameters = next(yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader))["root"]["inputDefinitions"]["parameters"]  # then its platform spec
        if "canary" in parameters:
            intervals[path.relative_to(COMPILED).as_posix()] = parameters["canary"]["defaultValue"]["interval_s"]
    assert len(intervals) == len(compiled) - len(list(COMPILED.glob("**/model-monitor.yaml"))), sorted(intervals)
    assert set(intervals.values()) == {60.0} and 60.0 >= 2 * scrape, (scrape, set(intervals.values()))
    local = parse_params(local_defaults("model-rollout"), "model-rollout")
    assert local["canary"] == {"interval_s": 5.0} and local["prometheus_url"] == "", local


def monitoring_duration_s(text: str) -> float:
    """Return a Prometheus operator duration such as ``30s`` or ``1m`` in seconds."""
    return float(text[:-1]) * {"s": 1, "m": 60}[text[-1]]


def test_the_guides_queries_dashboard_and_alerts_run_on_data_from_the_runtime(tmp_path):
    if GUIDE.is_file():
        assert all(query in GUIDE.read_text() for query in GUIDE_QUERIES), "the queries are the guide's, verbatim"
    state = tmp_path / "state"
    (state / "serving").mkdir(parents=True)
    targets = state / "serving" / "prometheus-targets.json"
    targets.write_text("[]")
    server = PrometheusServer(tmp_path / "prometheus", file_sd=targets).start()
    store = FilesystemStore(state / "store")
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    panel_queries = [target["expr"] for panel in dashboard["panels"] if not panel["title"].startswith("Drift")  # tests/test_monitor.py
                     for target in panel["targets"]]
    assert len(panel_queries) >= 6
    rule_queries = [rule["expr"] for group in rule_groups()["groups"] for rule in group["rules"]]
    try:
        save(store, train_model(spec_for(ANOMALY_DETECTOR), ingest(IngestRequest(ANOMALY_DETECTOR, days=2, seed=3)).train), state)
        save(store, train_model(spec_for(PREDICTIVE_ANALYTICS), ingest(IngestRequest(PREDICTIVE_ANALYTICS, days=2, seed=3)).train), state,
             PREDICTIVE_ANALYTICS)
        urls = {}
        for model in (ANOMALY_DETECTOR, PREDICTIVE_ANALYTICS):
            assert run_cli("rollout", model, "--version", "v1", "--local", "--state-dir", str(state), "--param", "days=1").returncode == 0
            port = json.loads((state / "serving" / f"{model}.json").read_text())["router"]["port"]
            urls[model] = f"http://127.0.0.1:{port}/v1/models/{model}"
        client = PrometheusClient(server.url)
        deadline = time.monotonic() + 90
        refused = 'sum by (model, version) (rate(kserve_inference_requests_total{code="400"}[5m]))'
        wanted = (*GUIDE_QUERIES, "model_predictions_total", refused, *panel_queries)
        answers: dict[str, list] = {}

        def complete() -> bool:
            refusals_seen = any(sample["metric"]["model"] == ANOMALY_DETECTOR and float(sample["value"][1]) > 0 for sample in answers.get(refused, []))
            return refusals_seen and all(answers.get(query) for query in wanted)

        anomalous = {"instances": [[1.0] * 45]}  # every metric at its maximum
        assert requests.post(f"{urls[ANOMALY_DETECTOR]}:predict", json=anomalous, timeout=10).json()["predictions"] == [-1]
        while time.monotonic() < deadline and not complete():
            requests.post(f"{urls[ANOMALY_DETECTOR]}:predict", json={"instances": [fallback_instance()]}, timeout=10)
            requests.post(f"{urls[ANOMALY_DETECTOR]}:predict", json=anomalous, timeout=10)
            requests.post(f"{urls[ANOMALY_DETECTOR]}:predict", json={"instances": [[None] * 45]}, timeout=10)  # a client's error: 400
            requests.post(f"{urls[PREDICTIVE_ANALYTICS]}:predict", json={"instances": [[0.4, 0.6, 0.5, 0.1, 0.05]]}, timeout=10)
            answers = {query: client.query(query) for query in wanted}
            time.sleep(0.5)
        for query in (*GUIDE_QUERIES, *panel_queries):
            assert answers[query], f"{query} returned nothing"
        # The smoke test's malformed requests are refusals too, so either model may show some; the loop's must show.
        assert ANOMALY_DETECTOR in {sample["metric"]["model"] for sample in answers[refused] if float(sample["value"][1]) > 0}
        assert [float(sample["value"][1]) for sample in answers[GUIDE_QUERIES[2]]] == [0.0], "a client's bad requests are no server errors"
        outcomes = {sample["metric"]["outcome"] for sample in answers["model_predictions_total"]}
        assert "normal" in outcomes and {sample["metric"]["version"] for sample in answers["model_predictions_total"]} == {"v1"}
        for query in rule_queries:
            client.query(query)  # every alert expression is valid PromQL over these series (an error raises)
        now = pd.Timestamp.now(tz="UTC").to_pydatetime()
        detector = live_prediction_stats(client, ANOMALY_DETECTOR, "v1", 5, now, served_namespace_scope(""))  # no pod here: no scope
        assert detector["normal"] > 0 and detector["anomaly"] > 0, "the drift monitor reads the detector's outcomes"
        # On a cluster the monitor counts only its namespace's series: another project's detector v1 is not this one.
        elsewhere = live_prediction_stats(client, ANOMALY_DETECTOR, "v1", 5, now, served_namespace_scope("another-project"))
        assert elsewhere == {"anomaly": 0.0, "normal": 0.0}, elsewhere
        forecasts = live_prediction_stats(client, PREDICTIVE_ANALYTICS, "v1", 5, now)["forecasts"]
        assert forecasts["cpu"]["count"] > 0 and 0 <= forecasts["cpu"]["sum"] / forecasts["cpu"]["count"] <= 1
    finally:
        run_cli("serve", "stop", "--state-dir", str(state))
        server.stop()
