"""The gitops serving target end to end: a rollout over three spoke clusters in two waves, through the CLI and the real
kfp local runner, against a real Git server (git http-backend, password on push), an Argo CD hub stand-in that renders
the overlays with kustomize and applies them to each spoke's KubeStandIn, real KServe model servers on every spoke,
and a real Prometheus scraping them with a ``cluster`` label.

The tests share one fleet and run in order: a first deployment, a promotion (with a colleague's concurrent commit),
a candidate that fails analysis in wave 1, a spoke that never becomes Healthy during promotion, and a spoke whose new
pods stay Pending while Argo CD reads it Healthy. The hub runs the project's InferenceService health check
(manifests/gitops/health) through the real Lua, as Argo CD does.
"""

import contextlib
import json
import subprocess
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import joblib
import pytest
import yaml
from kubernetes import client as kubernetes_client, config as kubernetes_config

from components.model.contract import ANOMALY_DETECTOR, PREDICTIVE_ANALYTICS
from components.serving.gitops.repo import TOKEN_ENV
from components.serving.gitops.fleet import GitopsOptions
from components.serving.gitops.target import GitopsTarget, served_version
from components.serving.kserve import KServeOptions
from components.serving.kserve.standard_canary import predictor_name_for
from components.serving.local import http_get
from components.serving.target import ServingError
from components.store.filesystem import FilesystemStore
from tests.argo_hub import ENDPOINT_TEMPLATE, HEALTH_CHECKS, ArgoHub, lua_health, render, render_in_python
from tests.conftest import logged, run_cli
from tests.git_server import GitHttpServer
from tests.kustomize import MANIFESTS, rendered
from tests.servers import PrometheusServer
from tests.test_gitops_manifests import errors, validators  # noqa: F401 (a fixture)
from tests.test_kserve import CRDS, crd_schemas, models  # noqa: F401 (fixtures)
from tests.test_serving import MainUrlClient, save

PASSWORD = "fleet-push-token-5c2e"
NAMESPACE = "self-healing-platform"
PVC = "fleet-models"
PATH = "fleet/models"
SPOKES = {  # ManagedCluster labels; the Placements in manifests/gitops pick the waves from them
    "spoke-1": {"model-pipelines.io/serving": "true", "model-pipelines.io/wave": "canary"},
    "spoke-2": {"model-pipelines.io/serving": "true"},
    "spoke-3": {"model-pipelines.io/serving": "true"},
}
WAVE_2 = ("spoke-2", "spoke-3")
UNREACHABLE = "cluster.open-cluster-management.io/unreachable"  # the taint ACM's registration controller puts on a ManagedCluster


@dataclass
class Fleet:
    """The Git server, the hub with its spokes, the hub's Prometheus, and a local state directory whose store is the PVC."""

    git: GitHttpServer
    repo_url: str
    hub: ArgoHub
    prometheus: PrometheusServer
    state: Path
    env: dict

    def rollout(self, version: str, *extra: str, model: str = ANOMALY_DETECTOR) -> subprocess.CompletedProcess:
        return run_cli("rollout", model, "--version", version, "--local", "--state-dir", str(self.state),
                       *parameters(self.repo_url), "--param", "canary_interval_s=0.3", "--param", "probe_requests=10",
                       "--param", "days=1", "--pvc-name", PVC, "--param", "ready_timeout_s=60",
                       "--param", "fleet_wave_timeout_s=60", *extra, env=self.env, timeout=900)

    def store_version(self, model, name: str = ANOMALY_DETECTOR) -> str:
        return save(FilesystemStore(self.state / "store"), model, self.state, name)

    def serving(self, cluster: str, name: str = ANOMALY_DETECTOR) -> dict:
        return self.hub.spokes[cluster].standin.get(NAMESPACE, name)

    def stable(self, cluster: str, name: str = ANOMALY_DETECTOR) -> str:
        return self.serving(cluster, name)["metadata"]["annotations"]["model-pipelines.io/stable-version"]

    def log(self, name: str) -> list[str]:
        clone = self.state.parent / f"log-{name}"
        subprocess.run(["git", "clone", "--quiet", self.repo_url, str(clone)], check=True)
        return subprocess.run(["git", "-C", str(clone), "log", "--format=%h %s|%an", "main"], capture_output=True, text=True, check=True).stdout.splitlines()

    def commits(self, name: str) -> list["Commit"]:
        """Return the branch's commits in a fresh clone, newest first, with the trailers git itself parses (``%(trailers)``)."""
        clone = self.state.parent / f"trailers-{name}"
        subprocess.run(["git", "clone", "--quiet", self.repo_url, str(clone)], check=True)
        output = subprocess.run(["git", "-C", str(clone), "log", "--format=%H%x1f%s%x1f%b%x1f%(trailers:only,unfold)%x1e", "main"],
                                capture_output=True, text=True, check=True).stdout
        commits = []
        for entry in output.split("\x1e"):
            if "\x1f" in entry:
                revision, subject, body, block = entry.strip("\n").split("\x1f")
                trailers: dict[str, list[str]] = {}
                for line in block.splitlines():
                    key, _, value = line.partition(": ")
                    trailers.setdefault(key, []).append(value)
                commits.append(Commit(revision, subject, body, trailers))
        return commits

    def clients(self, stack: contextlib.ExitStack) -> dict[str, MainUrlClient]:
        """Start a client on every cluster's main URL, as each cluster's coordination engine calls it, until ``stack`` closes."""
        return {cluster: stack.enter_context(MainUrlClient(self.hub.main_url(cluster, ANOMALY_DETECTOR))) for cluster in SPOKES}


@dataclass
class Commit:
    """One commit of the fleet repository: its hash, subject, body and trailers (key -> values, as git parses them)."""

    revision: str
    subject: str
    body: str
    trailers: dict[str, list[str]]

    def reverts(self) -> list[str]:
        """Return the commits this one says it reverts (git revert's ``This reverts commit <sha>.`` lines)."""
        return [line.removeprefix("This reverts commit ").removesuffix(".") for line in self.body.splitlines() if line.startswith("This reverts commit ")]

    @property
    def settled(self) -> bool:
        """Return whether this is a fleet-settled record (git parses ``Fleet-state: settled`` from its trailers)."""
        return self.trailers.get("Fleet-state") == ["settled"]


def since_last_record(history: list[Commit], start: int) -> list[Commit]:
    """Return the commits of ``history`` (newest first) from ``start`` back to, not including, the next fleet-settled record."""
    end = next(index for index in range(start, len(history)) if history[index].settled)
    return history[start:end]


def settled_record(fleet: Fleet, name: str, record: Commit, run: list[str], version: str, reason: str = "") -> dict:
    """Assert ``record``'s trailers and that the clone ``name`` holds its status file at it; return the file's content."""
    assert record.subject == f"{ANOMALY_DETECTOR} {version}: fleet settled"
    assert record.trailers == {"Model": [ANOMALY_DETECTOR], "Version": [version], "Step": ["settled"], "Fleet-state": ["settled"],
                               **({"Reason": [reason]} if reason else {}), "Pipeline-Run": run}, record.trailers
    clone = fleet.state.parent / f"trailers-{name}"
    text = subprocess.run(["git", "-C", str(clone), "show", f"{record.revision}:{PATH}/status/{ANOMALY_DETECTOR}.yaml"],
                          capture_output=True, text=True, check=True).stdout
    content = yaml.safe_load(text)
    assert (content["model"], content["stable"], content["run"], content.get("reason", "")) == (ANOMALY_DETECTOR, version, run[0], reason)
    for wave in content["waves"]:
        for application in wave["applications"]:
            assert (application["sync"], application["health"]) == ("Synced", "Healthy"), wave
            contains = subprocess.run(["git", "-C", str(clone), "merge-base", "--is-ancestor", wave["revision"], application["revision"]])
            assert contains.returncode == 0, f"{application['name']} was read at a revision without what its wave was confirmed at: {wave}"
    return content


def parameters(repo_url: str) -> list[str]:
    """Return the run parameters that point a run at the fleet."""
    pairs = {"serving_target": "gitops", "gitops_repo": repo_url, "gitops_path": PATH, "endpoint": ENDPOINT_TEMPLATE,
             "namespace": NAMESPACE, "rollout_strategy": "standard-canary"}
    return [argument for name, value in pairs.items() for argument in ("--param", f"{name}={value}")]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, models):  # noqa: F811 (the fixture)
    work = tmp_path_factory.mktemp("fleet")
    (work / "git").mkdir()
    git = GitHttpServer(work / "git", PASSWORD).start()
    repo_url = git.create("fleet.git", {"README.md": "The platform team's fleet repository.\n", f"{PATH}/README.md": "Models, managed by model-pipelines.\n"})
    gitops = rendered(MANIFESTS / "gitops")
    crd = CRDS / "rhoai-3.5" / "serving.kserve.io_inferenceservices.yaml"
    (work / "pvcs" / PVC).mkdir(parents=True)
    hub = ArgoHub(work / "hub", repo_url, "main", SPOKES, work / "pvcs", crd if crd.is_file() else None,
                  gitops)
    hub.start()
    prometheus = PrometheusServer(work / "prometheus", file_sd=hub.scrape_targets).start()
    state = work / "state"
    state.mkdir()
    (state / "store").symlink_to(work / "pvcs" / PVC, target_is_directory=True)
    env = {**hub.client_env(hub.write_kubeconfig(work / "hub-kubeconfig")), "GITOPS_TOKEN": PASSWORD}
    fleet = Fleet(git, repo_url, hub, prometheus, state, env)
    try:
        v1 = fleet.store_version(models["detector"](1))
        first = fleet.rollout(v1)
        assert first.returncode == 0, first.stdout[-4000:]
        yield fleet
    finally:
        prometheus.stop()
        hub.stop()
        git.stop()


def test_the_first_deployment_reaches_every_cluster_through_one_commit_and_the_generated_applications_match_the_crd(fleet, validators):  # noqa: F811
    assert {cluster: fleet.stable(cluster) for cluster in SPOKES} == {cluster: "v1" for cluster in SPOKES}
    subjects = fleet.log("first")
    assert [subject.split(" ", 1)[1] for subject in subjects[:2]] == [
        f"{ANOMALY_DETECTOR} v1: fleet settled|model-pipelines", f"{ANOMALY_DETECTOR} v1: first deployment to every wave|model-pipelines"]
    record, deployment, *_ = fleet.commits("first")
    content = settled_record(fleet, "first", record, deployment.trailers["Pipeline-Run"], "v1")
    assert (content["after"], content["revision"]) == ("first deployment", deployment.revision)
    assert [(wave["wave"], wave["revision"], [a["cluster"] for a in wave["applications"]]) for wave in content["waves"]] == [
        ("1/2 (canary: spoke-1)", deployment.revision, ["spoke-1"]), ("2/2 (fleet: spoke-2, spoke-3)", deployment.revision, ["spoke-2", "spoke-3"])]
    paths = {name: app["spec"]["source"]["path"] for name, app in fleet.hub.applications.items()}
    for model in (ANOMALY_DETECTOR, PREDICTIVE_ANALYTICS):  # one Application per model and cluster, each syncing its model's overlay
        assert {f"{model}-{cluster}": paths[f"{model}-{cluster}"] for cluster in SPOKES} == {
            f"{model}-spoke-1": f"{PATH}/waves/canary/{model}", f"{model}-spoke-2": f"{PATH}/waves/fleet/{model}", f"{model}-spoke-3": f"{PATH}/waves/fleet/{model}"}
    assert {name: path for name, path in paths.items() if name.startswith("model-pipelines-spoke-")} == {
        f"model-pipelines-spoke-{cluster}": f"{PATH}/spoke" for cluster in SPOKES}
    assert not [name for name in paths if "finalizers" in fleet.hub.applications[name]["metadata"]], "preserveResourcesOnDeletion: no resources finalizer"
    for name in fleet.hub.applications:
        application = fleet.hub.application(name)
        application.pop("status")
        assert errors(validators, application) == [], name
    # kustomize (kubectl's, where this machine has it) and the stand-in's own renderer agree on every wave.
    export = fleet.hub._export(fleet.hub._head())
    assert (export / PATH / "status" / f"{ANOMALY_DETECTOR}.yaml").is_file(), "the record is in the tree the Applications render"
    for wave in ("canary", "fleet"):
        rendered = render(export / PATH / "waves" / wave / ANOMALY_DETECTOR, fleet.hub.kubectl)
        assert rendered == render_in_python(export / PATH / "waves" / wave / ANOMALY_DETECTOR)
        assert [document["metadata"]["name"] for document in rendered] == [ANOMALY_DETECTOR], "no Application renders the record"
        assert not (export / PATH / "waves" / wave / "kustomization.yaml").exists(), "each model's Applications sync its own overlay"


def test_a_good_candidate_goes_wave_by_wave_past_a_colleagues_concurrent_commit(fleet, models):  # noqa: F811
    v2 = fleet.store_version(models["detector"](2))
    fleet.git.before_next_push.append(lambda: fleet.git.commit_directly("fleet.git", "clusters/spoke-4.yaml", "name: spoke-4\n"))
    with contextlib.ExitStack() as stack:
        clients = fleet.clients(stack)
        result = fleet.rollout(v2, "--param", f"prometheus_url={fleet.prometheus.url}", "--param", "prometheus_window=10s",
                               "--param", "canary_interval_s=3", "--param", "failure_limit=2")
    output = logged(result)
    assert result.returncode == 0, output[-4000:]
    assert {cluster: fleet.stable(cluster) for cluster in SPOKES} == {cluster: v2 for cluster in SPOKES}
    for cluster, client in clients.items():
        assert client.sent > 10 and client.failures == [], f"{cluster}: {client.failures[:3]}"
    assert len([version for version in clients["spoke-1"].served if version]) >= 2, "wave 1's live traffic reached the canary"

    subjects = [line.split(" ", 1)[1] for line in fleet.log("promotion")]
    ours = [subject for subject in subjects if subject.startswith(f"{ANOMALY_DETECTOR} {v2}:")]
    assert [subject.split(": ", 1)[1].split(" in wave")[0].split(" to wave")[0].split("|")[0] for subject in reversed(ours)] == [
        "deploy as dark candidate", "canary 10 %", "canary 50 %", "canary 100 %", "promote", "promote", "fleet settled"]
    assert "wave 1/2 (canary: spoke-1)" in ours[-1] and "to wave 2/2 (fleet: spoke-2, spoke-3)" in ours[1]
    assert "colleague edits clusters/spoke-4.yaml|colleague" in subjects, "the colleague's commit stays in the history"
    assert subjects.index("colleague edits clusters/spoke-4.yaml|colleague") > subjects.index(ours[-1]), "ours were rebased onto theirs"
    assert all(subject.endswith("|model-pipelines") for subject in ours)
    history = fleet.commits("promotion")
    record, *promotion = [commit for commit in history if commit.trailers.get("Version") == [v2]]
    run = promotion[0].trailers["Pipeline-Run"]
    assert len(promotion) + 1 == len(ours) and len(run) == 1 and run[0], "every commit of the promotion carries its run"
    assert [(c.trailers["Model"], c.trailers["Step"], c.trailers["Wave"], c.trailers["Pipeline-Run"]) for c in reversed(promotion)] == [
        ([ANOMALY_DETECTOR], [step], [wave], run) for step, wave in (
            ("deploy as dark candidate", "1/2 (canary: spoke-1)"), ("canary 10 %", "1/2 (canary: spoke-1)"), ("canary 50 %", "1/2 (canary: spoke-1)"),
            ("canary 100 %", "1/2 (canary: spoke-1)"), ("promote", "1/2 (canary: spoke-1)"), ("promote", "2/2 (fleet: spoke-2, spoke-3)"))]
    # The fleet settled only after the last wave's promote commit was confirmed: the record comes right after it.
    assert history[0] == record and history[1] == promotion[0], [commit.subject for commit in history[:3]]
    assert [commit.subject for commit in history if commit.settled] == [f"{ANOMALY_DETECTOR} {v2}: fleet settled", f"{ANOMALY_DETECTOR} v1: fleet settled"]
    content = settled_record(fleet, "promotion", record, run, v2)
    assert (content["after"], content["revision"]) == ("promote", promotion[0].revision)
    assert [(wave["wave"], wave["revision"]) for wave in content["waves"]] == [
        ("1/2 (canary: spoke-1)", promotion[1].revision), ("2/2 (fleet: spoke-2, spoke-3)", promotion[0].revision)]
    # Every step passed, and a pass needs the live metrics the hub's Prometheus has for the candidate on wave 1's clusters.
    measured = [line for line in output.splitlines() if line.strip().startswith(f"canary {ANOMALY_DETECTOR} {v2} at ") and ": pass" in line]
    assert len(measured) >= 3, output[-3000:]

    export = fleet.hub._export(fleet.hub._head())
    for wave in ("canary", "fleet"):  # the promoted overlays patch labels, env and the predictor: both renderers agree
        rendered = render(export / PATH / "waves" / wave / ANOMALY_DETECTOR, fleet.hub.kubectl)
        assert rendered == render_in_python(export / PATH / "waves" / wave / ANOMALY_DETECTOR) and rendered[0]["spec"]["predictor"]["name"] == v2

    status = run_cli("serve", "status", "--target", "gitops", "--json", *parameters(fleet.repo_url), env=fleet.env)
    assert status.returncode == 0, status.stdout
    rows = json.loads(status.stdout)[ANOMALY_DETECTOR]
    assert [(row["wave"], row["cluster"], row["sync"], row["health"], row["stable"], row["candidate"]) for row in rows] == [
        (1, "spoke-1", "Synced", "Healthy", v2, None), (2, "spoke-2", "Synced", "Healthy", v2, None), (2, "spoke-3", "Synced", "Healthy", v2, None)]
    table = run_cli("serve", "status", "--target", "gitops", *parameters(fleet.repo_url), env=fleet.env)
    assert "spoke-3" in table.stdout and "Healthy" in table.stdout, table.stdout


def test_a_candidate_failing_analysis_in_wave_1_is_reverted_and_wave_2_is_never_touched(fleet, models):  # noqa: F811
    stable = fleet.stable("spoke-1")
    before = fleet.serving("spoke-1")["spec"]
    wave_2_writes = {cluster: len(fleet.hub.spokes[cluster].standin.writes) for cluster in WAVE_2}
    bad = fleet.store_version(models["alarmist"](0))
    with contextlib.ExitStack() as stack:
        clients = fleet.clients(stack)
        result = fleet.rollout(bad)
    assert result.returncode == 3, logged(result)[-4000:]
    assert "rejected at canary-promote" in logged(result)
    for cluster, client in clients.items():
        assert client.sent > 10 and client.failures == [], f"{cluster}: {client.failures[:3]}"
    assert {cluster: len(fleet.hub.spokes[cluster].standin.writes) for cluster in WAVE_2} == wave_2_writes, "wave 2 got no write"
    assert fleet.serving("spoke-1")["spec"] == before and fleet.stable("spoke-1") == stable
    subjects = [line.split(" ", 1)[1] for line in fleet.log("rejected")]
    assert subjects[0] == f"{ANOMALY_DETECTOR} {stable}: fleet settled|model-pipelines"
    assert subjects[1].startswith(f"{ANOMALY_DETECTOR} {bad}: rollback|model-pipelines")
    assert not any(subject.startswith(f"{ANOMALY_DETECTOR} {bad}: promote") for subject in subjects)
    index = FilesystemStore(fleet.state / "store").read_index(ANOMALY_DETECTOR)
    assert index["versions"][bad]["status"] == "rejected" and index["stable"] == stable
    history = fleet.commits("rejected")
    record, revert, *earlier = history
    reason = " ".join(index["versions"][bad]["rejected_reason"].split())
    assert reason.startswith("rejected at canary-promote: ") and revert.trailers["Reason"] == [reason], "the revert says why, as the store does"
    assert (revert.trailers["Step"], revert.trailers["Wave"]) == (["rollback"], ["1/2 (canary: spoke-1)"])
    assert revert.reverts() == [commit.revision for commit in earlier if commit.trailers.get("Version") == [bad]] != []
    assert revert.reverts() == [commit.revision for commit in since_last_record(history, 2)], "it reverts every commit since the last record"
    content = settled_record(fleet, "rejected", record, revert.trailers["Pipeline-Run"], stable, reason)
    assert (content["after"], content["revision"], [wave["wave"] for wave in content["waves"]]) == (
        "rollback", revert.revision, ["1/2 (canary: spoke-1)"]), "settled once wave 1, the one the revert changed, was confirmed at it"
    table = run_cli("serve", "status", "--target", "gitops", *parameters(fleet.repo_url), env=fleet.env)
    assert f"{ANOMALY_DETECTOR}: last rollback {bad} in {revert.revision[:7]}: {reason}" in table.stdout, table.stdout
    application = fleet.hub.application_of("spoke-1", ANOMALY_DETECTOR)["status"]
    assert application["sync"]["status"] == "Synced" and application["health"]["status"] == "Healthy"


def test_a_spoke_that_never_becomes_healthy_times_out_quoting_its_conditions_and_every_wave_is_reverted(fleet, models):  # noqa: F811
    stable = fleet.stable("spoke-1")
    candidate = fleet.store_version(models["detector"](4))
    fleet.hub.lag("spoke-2", 2.0)
    fleet.hub.fail("spoke-3", "model server exited: MemoryError while unpickling model.pkl")
    with contextlib.ExitStack() as stack:
        clients = fleet.clients(stack)
        try:
            result = fleet.rollout(candidate, "--param", "fleet_wave_timeout_s=12")
        finally:
            fleet.hub.fail("spoke-3", None)
            fleet.hub.lag("spoke-2", 0.0)
    output = logged(result)
    assert result.returncode == 3, output[-4000:]
    assert "wave 2/2 (fleet: spoke-2, spoke-3) was not Synced, Healthy and serving the overlay's versions within 12 s" in output
    assert f"Application {ANOMALY_DETECTOR}-spoke-3 (cluster spoke-3): Synced at" in output
    assert ("Degraded (InferenceService anomaly-detector: Degraded, 0: transitionStatus | BlockedByFailedLoad | 2: PredictorReady | False | "
            "RevisionFailed | model server exited: MemoryError while unpickling model.pkl") in output  # the Lua's message
    assert {cluster: fleet.stable(cluster) for cluster in SPOKES} == {cluster: stable for cluster in SPOKES}
    for cluster, client in clients.items():
        assert client.sent > 10 and client.failures == [], f"{cluster}: {client.failures[:3]}"
    subjects = [line.split(" ", 1)[1] for line in fleet.log("timeout")]
    assert subjects[0] == f"{ANOMALY_DETECTOR} {stable}: fleet settled|model-pipelines", "settled only after the revert was confirmed"
    assert subjects[1].startswith(f"{ANOMALY_DETECTOR} {candidate}: rollback|model-pipelines")
    assert subjects[2].startswith(f"{ANOMALY_DETECTOR} {candidate}: promote to wave 2/2"), "no record between the failed wait and its revert"
    fleet.log("after-timeout")
    history = fleet.commits("timeout")
    for name in fleet.hub.applications:
        application = fleet.hub.application(name)["status"]
        contains = subprocess.run(["git", "-C", str(fleet.state.parent / "trailers-timeout"), "merge-base", "--is-ancestor",
                                   history[1].revision, application["sync"]["revision"]])
        assert contains.returncode == 0 and application["health"]["status"] == "Healthy", name
    index = FilesystemStore(fleet.state / "store").read_index(ANOMALY_DETECTOR)
    assert index["versions"][candidate]["status"] == "rejected" and index["stable"] == stable
    record, revert, *earlier = history
    assert revert.trailers["Wave"] == ["1/2 (canary: spoke-1)", "2/2 (fleet: spoke-2, spoke-3)"]
    [reason] = revert.trailers["Reason"]
    assert reason.startswith("promotion failed: wave 2/2 (fleet: spoke-2, spoke-3) was not Synced, Healthy and serving the overlay's versions "
                             "within 12 s") and (
        f"Application {ANOMALY_DETECTOR}-spoke-3 (cluster spoke-3)" in reason and "MemoryError while unpickling model.pkl" in reason), reason
    assert revert.reverts() == [commit.revision for commit in earlier if commit.trailers.get("Version") == [candidate]] != []
    assert revert.reverts() == [commit.revision for commit in since_last_record(history, 2)], "nothing claimed settled in between"
    content = settled_record(fleet, "timeout", record, revert.trailers["Pipeline-Run"], stable, reason)
    assert (content["after"], content["revision"], [wave["wave"] for wave in content["waves"]]) == (
        "rollback", revert.revision, ["1/2 (canary: spoke-1)", "2/2 (fleet: spoke-2, spoke-3)"])
    clone = fleet.state.parent / "log-after-timeout"
    assert (clone / PATH / "README.md").read_text() == "Models, managed by model-pipelines.\n", "a file it did not create is untouched"
    assert {method for method, _ in fleet.hub.requests} == {"GET"} and not any("watch" in path for _, path in fleet.hub.requests)


def test_two_models_rolled_out_at_once_each_wait_for_their_own_applications_only(fleet, models):  # noqa: F811
    """Two runs at once: the detector's promotion stalls Degraded on spoke-2 and is reverted; meanwhile the forecaster's
    candidate passes wave 1 and is promoted to wave 2, spoke-2 included, while the detector's Application there is Degraded."""
    first = fleet.rollout(fleet.store_version(models["forecaster"](1.0), PREDICTIVE_ANALYTICS), model=PREDICTIVE_ANALYTICS)
    assert first.returncode == 0, logged(first)[-4000:]
    detector_stable = fleet.stable("spoke-1")
    stalled, good = fleet.store_version(models["detector"](5)), fleet.store_version(models["forecaster"](3.0), PREDICTIVE_ANALYTICS)
    detector_on_spoke_2 = lambda: fleet.hub.application_of("spoke-2", ANOMALY_DETECTOR)["status"]["health"]["status"]  # noqa: E731
    requests_before = len(fleet.hub.requests)
    fleet.hub.fail("spoke-2", "model server exited: MemoryError while unpickling model.pkl", ANOMALY_DETECTOR)
    try:
        with ThreadPoolExecutor(2) as pool:
            stalling = pool.submit(fleet.rollout, stalled, "--param", "fleet_wave_timeout_s=75")  # outlasts the forecaster's whole run (about 40 s)
            deadline = time.monotonic() + 300
            while detector_on_spoke_2() != "Degraded" and not stalling.done() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert detector_on_spoke_2() == "Degraded", logged(stalling.result())[-4000:] if stalling.done() else "spoke-2 never Degraded"
            promoted = pool.submit(fleet.rollout, good, "--param", "canary_steps=[25,100]", model=PREDICTIVE_ANALYTICS).result()
            meanwhile = detector_on_spoke_2()
            reverted = stalling.result()
    finally:
        fleet.hub.fail("spoke-2", None)
    assert promoted.returncode == 0, logged(promoted)[-4000:]
    assert meanwhile == "Degraded", "the forecaster's run waited for the detector's Degraded Application on spoke-2 (until its revert)"
    assert {cluster: fleet.stable(cluster, PREDICTIVE_ANALYTICS) for cluster in SPOKES} == {cluster: good for cluster in SPOKES}
    output = logged(reverted)
    assert reverted.returncode == 3 and "wave 2/2 (fleet: spoke-2, spoke-3) was not Synced, Healthy and serving the overlay's versions within 75 s" in output, output[-4000:]
    assert f"Application {ANOMALY_DETECTOR}-spoke-2 (cluster spoke-2)" in output and PREDICTIVE_ANALYTICS not in output.split("was not Synced")[1][:2000]
    assert {cluster: fleet.stable(cluster) for cluster in SPOKES} == {cluster: detector_stable for cluster in SPOKES}
    # Each run listed only its own model's Applications, and the detector's rollback reverted only the detector's commits.
    selectors = {urllib.parse.parse_qs(urllib.parse.urlsplit(path).query).get("labelSelector", [""])[0] for _, path in fleet.hub.requests[requests_before:]}
    assert {f"app.kubernetes.io/part-of=model-pipelines,model-pipelines.io/model={name}" for name in (ANOMALY_DETECTOR, PREDICTIVE_ANALYTICS)} <= selectors
    subjects = [line.split(" ", 1)[1] for line in fleet.log("two-models")]
    rollback = next(number for number, subject in enumerate(subjects) if subject.startswith(f"{ANOMALY_DETECTOR} {stalled}: rollback|"))
    promotion = subjects.index(f"{PREDICTIVE_ANALYTICS} {good}: promote to wave 2/2 (fleet: spoke-2, spoke-3)|model-pipelines")
    assert rollback < promotion, "the forecaster reached wave 2 before the detector's revert (newest first)"
    assert not any(subject.startswith(f"{PREDICTIVE_ANALYTICS} {good}: rollback") for subject in subjects)
    store = FilesystemStore(fleet.state / "store")
    assert store.read_index(ANOMALY_DETECTOR)["versions"][stalled]["status"] == "rejected"
    assert store.read_index(PREDICTIVE_ANALYTICS)["stable"] == good
    for cluster in SPOKES:
        application = fleet.hub.application_of(cluster, PREDICTIVE_ANALYTICS)
        assert application["metadata"]["name"] == f"{PREDICTIVE_ANALYTICS}-{cluster}" and application["status"]["health"]["status"] == "Healthy"


def test_a_spoke_whose_new_pods_stay_pending_reads_healthy_but_the_wave_is_not_promoted_while_it_serves_the_old_version(fleet, models):  # noqa: F811
    """Standard mode: the Deployment stays Available on its old pods, so KServe keeps every condition True and Argo CD's
    health check (the project's as much as the stock one) reads Healthy; the wave gate reads the served version. The hub
    plays an Argo CD older than 2.8 here, which has no health check for the kind at all."""
    stable = fleet.stable("spoke-1")
    candidate = fleet.store_version(models["detector"](5))
    checks = {mode: HEALTH_CHECKS[mode].read_text() for mode in ("stock", "customized")}
    stuck_health: list[tuple[bool, str, str]] = []  # (status observed?, stock, customized health) of spoke-3's InferenceService at the candidate
    done = threading.Event()

    def watch_spoke_3() -> None:
        while not done.wait(0.2):
            isvc = fleet.serving("spoke-3")
            if isvc["spec"]["predictor"].get("name") == predictor_name_for(candidate):
                observed = isvc.get("status", {}).get("observedGeneration") == isvc["metadata"]["generation"]
                stuck_health.append((observed, lua_health(checks["stock"], isvc, True)["status"], lua_health(checks["customized"], isvc, False)["status"]))

    fleet.hub.unschedulable("spoke-3", "0/3 nodes are available: 3 Insufficient memory.")
    fleet.hub.use_health_check("none")
    watcher = threading.Thread(target=watch_spoke_3, daemon=True)
    watcher.start()
    try:
        result = fleet.rollout(candidate, "--param", "fleet_wave_timeout_s=12")
    finally:
        done.set()
        watcher.join()
        fleet.hub.unschedulable("spoke-3", None)
        fleet.hub.use_health_check("customized")
    output = logged(result)
    assert result.returncode == 3, output[-4000:]
    # Once KServe observed the candidate's generation, both checks read Healthy though spoke-3 serves the old version.
    assert {(stock, customized) for observed, stock, customized in stuck_health if observed} == {("Healthy", "Healthy")}, stuck_health
    assert ("wave 2/2 (fleet: spoke-2, spoke-3) was not Synced, Healthy and serving the overlay's versions within 12 s: every Application "
            f"Synced and Healthy, but spoke-3 serves {stable} on its main URL, not {candidate}") in output
    assert "spoke-2 serves" not in output, "spoke-2 had room: it serves the candidate"
    assert {cluster: fleet.stable(cluster) for cluster in SPOKES} == {cluster: stable for cluster in SPOKES}
    subjects = [line.split(" ", 1)[1] for line in fleet.log("pending")]
    assert subjects[0] == f"{ANOMALY_DETECTOR} {stable}: fleet settled|model-pipelines"
    assert subjects[1].startswith(f"{ANOMALY_DETECTOR} {candidate}: rollback|model-pipelines")
    assert subjects[2].startswith(f"{ANOMALY_DETECTOR} {candidate}: promote to wave 2/2")
    index = FilesystemStore(fleet.state / "store").read_index(ANOMALY_DETECTOR)
    assert index["versions"][candidate]["status"] == "rejected" and index["stable"] == stable


def test_a_wave_cluster_that_leaves_the_placement_mid_promotion_fails_the_wave_at_once_and_its_spoke_keeps_serving(fleet, models):  # noqa: F811
    """spoke-3 stops syncing (its agent lost the hub) and ACM's unreachable taint on it is older than the Placements' 3600 s
    toleration: the ApplicationSet controller deletes its Applications while wave 2 waits for it."""
    stable, candidate = fleet.stable("spoke-1"), fleet.store_version(models["detector"](7))
    done = threading.Event()

    def taint_spoke_3_once_wave_2_is_promoted() -> None:
        while not done.wait(0.2):
            if fleet.serving("spoke-2")["spec"]["predictor"].get("name") == predictor_name_for(candidate):
                fleet.hub.taint("spoke-3", UNREACHABLE, time.time() - 3600)
                return

    fleet.hub.lag("spoke-3", 600)
    watcher = threading.Thread(target=taint_spoke_3_once_wave_2_is_promoted, daemon=True)
    watcher.start()
    try:
        result = fleet.rollout(candidate)
        left = fleet.hub.application_of("spoke-3", ANOMALY_DETECTOR)
    finally:
        done.set()
        watcher.join()
        fleet.hub.lag("spoke-3", 0.0)
        fleet.hub.untaint("spoke-3", UNREACHABLE)
    output = logged(result)
    assert result.returncode == 3 and left is None, output[-4000:]
    assert (f"wave 2/2 (fleet: spoke-2, spoke-3): the Application {ANOMALY_DETECTOR}-spoke-3 of cluster spoke-3 was deleted from the hub "
            "during the rollout") in output and "within 60 s" not in output, output[-4000:]
    assert fleet.hub.spokes["spoke-3"].standin.get(NAMESPACE, ANOMALY_DETECTOR) is not None, "preserveResourcesOnDeletion"
    assert {cluster: fleet.stable(cluster) for cluster in SPOKES} == {cluster: stable for cluster in SPOKES}
    with MainUrlClient(fleet.hub.main_url("spoke-3", ANOMALY_DETECTOR)) as client:
        time.sleep(1)
    assert client.sent > 0 and client.failures == [], client.failures[:3]
    assert served_version(*http_get(fleet.hub.main_url("spoke-3", ANOMALY_DETECTOR), timeout=5.0)) == stable, "spoke-3 still serves the stable version"
    [reason] = fleet.commits("left")[1].trailers["Reason"]
    assert reason.startswith(f"promotion failed: wave 2/2 (fleet: spoke-2, spoke-3): the Application {ANOMALY_DETECTOR}-spoke-3"), reason
    deadline = time.monotonic() + 60  # untainted, spoke-3 is decided again: its regenerated Application adopts the InferenceService
    while time.monotonic() < deadline and ((fleet.hub.application_of("spoke-3", ANOMALY_DETECTOR) or {}).get("status", {}).get("health", {})
                                           .get("status") != "Healthy"):
        time.sleep(0.2)
    assert fleet.hub.application_of("spoke-3", ANOMALY_DETECTOR)["status"]["sync"]["status"] == "Synced"


def test_every_inference_service_the_spokes_received_matches_the_kserve_0_20_crds(fleet, crd_schemas):  # noqa: F811
    written = [write for spoke in fleet.hub.spokes.values() for write in spoke.standin.writes]
    assert len(written) > 10
    for release in ("rhoai-3.5", "v0.20.0"):
        for document in written:
            body = {key: value for key, value in document.items() if key != "status"}
            assert [error.message for error in crd_schemas[release].iter_errors(body)] == [], (release, body["metadata"]["name"])


def test_waves_without_applications_and_bad_wave_lists_are_refused_with_the_fix(fleet):
    result = run_cli("serve", "status", "--target", "gitops", *parameters(fleet.repo_url), "--param", 'fleet_waves=[["eu-west"], ["*"]]', env=fleet.env)
    assert result.returncode == 1, result.stdout
    assert "has model-pipelines.io/wave in ['eu-west'] for wave 1: apply manifests/gitops (oc apply -k), label a ManagedCluster" in result.stdout
    refused = fleet.rollout("v1", "--param", 'fleet_waves=[["*"], ["canary"]]', "--param", "gitops_repo=https://token:x@git.example.com/f.git")
    assert refused.returncode == 2
    assert "fleet.waves=[['*'], ['canary']]: must be non-empty lists of cluster wave labels" in refused.stdout
    assert "fleet.repo='https://token:x@git.example.com/f.git': must be empty or the fleet repository" in refused.stdout


def test_the_candidate_isvc_strategy_goes_through_git_as_a_second_inference_service(tmp_path, models, monkeypatch):  # noqa: F811
    """The rhoai-3.x strategy, through the target's own interface: a second InferenceService in wave 1's overlay."""
    (tmp_path / "git").mkdir()
    git = GitHttpServer(tmp_path / "git", PASSWORD).start()
    repo_url = git.create("fleet.git", {"README.md": "fleet\n"})
    gitops = rendered(MANIFESTS / "gitops")
    crd = CRDS / "rhoai-3.4" / "serving.kserve.io_inferenceservices.yaml"
    (tmp_path / "pvcs" / PVC).mkdir(parents=True)
    hub = ArgoHub(tmp_path / "hub", repo_url, "main", {"spoke-1": SPOKES["spoke-1"], "spoke-2": SPOKES["spoke-2"]}, tmp_path / "pvcs",
                  crd if crd.is_file() else None, gitops, kserve="0.15").start()
    try:
        monkeypatch.setenv(TOKEN_ENV, PASSWORD)
        for key, value in hub.client_env(tmp_path / "kubeconfig").items():  # the fleet network: the wave gate GETs each spoke's version
            if key != "KUBECONFIG":
                monkeypatch.setenv(key, value)
        hub_api = kubernetes_client.CustomObjectsApi(kubernetes_config.new_client_from_config(config_file=str(hub.write_kubeconfig(tmp_path / "kubeconfig"))))
        store = FilesystemStore(tmp_path / "pvcs" / PVC)
        versions = []
        for seed in (1, 2, 3, 4):
            path = tmp_path / f"model-{seed}.pkl"
            joblib.dump(models["detector"](seed).estimator, path)
            versions.append(store.save_version(ANOMALY_DETECTOR, path, {"run_name": "test"}))
        target = GitopsTarget(KServeOptions(NAMESPACE, endpoint=ENDPOINT_TEMPLATE, rollout_strategy="candidate-isvc", run_name="run-1"),
                              GitopsOptions(repo_url, "main", PATH, wave_timeout_s=60), hub_api=hub_api)
        uri = lambda stored: f"pvc://{PVC}/{ANOMALY_DETECTOR}/{stored.version}"  # noqa: E731
        target.deploy(ANOMALY_DETECTOR, "v1", uri(versions[0]), versions[0].sha256, 60)
        status = target.deploy(ANOMALY_DETECTOR, "v2", uri(versions[1]), versions[1].sha256, 60)
        assert (status.stable, status.candidate) == ("v1", "v2")
        candidate_name = f"{ANOMALY_DETECTOR}-candidate"
        assert hub.spokes["spoke-1"].standin.get(NAMESPACE, candidate_name) is not None
        assert hub.spokes["spoke-2"].standin.get(NAMESPACE, candidate_name) is None, "wave 2 never sees the candidate"
        endpoints = target.endpoints(ANOMALY_DETECTOR)
        assert endpoints.candidate == f"http://{candidate_name}.{NAMESPACE}.spoke-1.fleet.test/v1/models/{ANOMALY_DETECTOR}"
        promoted = target.promote(ANOMALY_DETECTOR, 60)
        assert (promoted.stable, promoted.candidate) == ("v2", None)
        for cluster in ("spoke-1", "spoke-2"):
            standin = hub.spokes[cluster].standin
            assert standin.get(NAMESPACE, ANOMALY_DETECTOR)["spec"]["predictor"]["model"]["storageUri"].endswith("/v2")
            assert standin.get(NAMESPACE, candidate_name) is None, f"{cluster}: the candidate is pruned after promotion"
        target.deploy(ANOMALY_DETECTOR, "v3", uri(versions[2]), versions[2].sha256, 60)
        rolled_back = target.rollback(ANOMALY_DETECTOR, 60, reason="test: v3 is not wanted")
        assert (rolled_back.stable, rolled_back.candidate) == ("v2", None)
        assert hub.spokes["spoke-1"].standin.get(NAMESPACE, candidate_name) is None
        assert hub.spokes["spoke-1"].standin.get(NAMESPACE, ANOMALY_DETECTOR)["metadata"]["annotations"]["model-pipelines.io/stable-version"] == "v2"
        # A revert whose wave is not confirmed in time: pushed, but nothing claims the fleet settled, and the error says so.
        target.deploy(ANOMALY_DETECTOR, "v4", uri(versions[3]), versions[3].sha256, 60)
        hub.lag("spoke-1", 600)
        impatient = GitopsTarget(target.options, GitopsOptions(repo_url, "main", PATH, wave_timeout_s=1), hub_api=hub_api)
        with pytest.raises(ServingError, match=r"within 1 s: .*; the revert [0-9a-f]{7} is pushed but not confirmed, so no fleet-settled record "
                                               r"was written \(the model's last is [0-9a-f]{7}\)"):
            impatient.rollback(ANOMALY_DETECTOR, 60, reason="test: v4 is not wanted")
        hub.lag("spoke-1", 0)
        clone = tmp_path / "after-unconfirmed-revert"
        subprocess.run(["git", "clone", "--quiet", repo_url, str(clone)], check=True)
        newest = subprocess.run(["git", "-C", str(clone), "log", "--format=%s|%(trailers:key=Fleet-state,valueonly,separator=)"],
                                capture_output=True, text=True, check=True).stdout.splitlines()
        last_record = next(index for index, line in enumerate(newest) if line.endswith("|settled"))
        assert newest[0] == f"{ANOMALY_DETECTOR} v4: rollback|" and newest[last_record] == f"{ANOMALY_DETECTOR} v2: fleet settled|settled", newest
        assert all(line.startswith(f"{ANOMALY_DETECTOR} v4: ") for line in newest[:last_record]), newest
    finally:
        hub.stop()
        git.stop()
