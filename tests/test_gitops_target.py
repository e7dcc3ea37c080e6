"""The gitops target's Git side without spokes: a real Git server, and a hub that lists the Applications the project's
ApplicationSets generate (manifests/gitops, through the hub stand-in's generator and Placement semantics), each reported
Synced at the branch's head and Healthy, over clusters whose ManagedCluster taints the test sets.
"""

import json
import subprocess
import time
from http.server import BaseHTTPRequestHandler

import pytest
import yaml

from components.serving.gitops.repo import TOKEN_ENV
from components.serving.gitops.fleet import GitopsOptions
from components.serving.gitops.target import GitopsTarget, status_file
from components.serving.kserve import KServeOptions
from components.serving.target import ServingError
from tests.argo_hub import generated_applications, placement_decisions
from tests.git_server import GitHttpServer, LoopbackHttpServer
from tests.k8s_standin import selector_matches
from tests.kustomize import MANIFESTS, rendered

PASSWORD = "fleet-target-token-41b7"
PATH = "fleet/models"
MODEL = "anomaly-detector"
NAMESPACE = "self-healing-platform"
CLUSTERS = {"spoke-1": {"model-pipelines.io/serving": "true", "model-pipelines.io/wave": "canary"}, "spoke-2": {"model-pipelines.io/serving": "true"}}
UNREACHABLE = "cluster.open-cluster-management.io/unreachable"


class SyncedHub:
    """The hub's list of Applications (CustomObjectsApi.list_namespaced_custom_object): what the ApplicationSets generate
    from the Placements' decisions now, each Synced at ``repo``'s head and Healthy, as Argo CD reports them once synced."""

    def __init__(self, repo: str) -> None:
        self.repo, self.manifests = repo, rendered(MANIFESTS / "gitops")
        self.taints: dict[str, list[dict]] = {name: [] for name in CLUSTERS}

    def list_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, label_selector: str = "") -> dict:
        """Return the Applications whose labels match ``label_selector``, with their status."""
        decisions = placement_decisions(self.manifests, {name: {"labels": labels, "taints": self.taints[name]} for name, labels in CLUSTERS.items()}, time.time())
        head = subprocess.run(["git", "ls-remote", self.repo, "refs/heads/main"], capture_output=True, text=True, check=True).stdout.split()[0]
        items = [{**application, "status": {"sync": {"status": "Synced", "revision": head}, "health": {"status": "Healthy"}}}
                 for applicationset in self.manifests if applicationset["kind"] == "ApplicationSet"
                 for application in generated_applications(applicationset, self.manifests, CLUSTERS, decisions)]
        return {"items": [item for item in items if selector_matches(item["metadata"]["labels"], label_selector)]}


class StockRuntime(LoopbackHttpServer):
    """Every cluster's model URL, answering V1 metadata without a version as KServe's stock runtime does (so the wave gate
    trusts Argo CD's view)."""

    def _handler(self):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = json.dumps({"name": MODEL, "ready": True}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


def git(clone, *args: str) -> str:
    """Return the output of a git command in ``clone``."""
    return subprocess.run(["git", "-C", str(clone), *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def fleet_repo(tmp_path, monkeypatch):
    """Yield (the fleet repository's URL on a real Git server, a SyncedHub of it, the StockRuntime), the push token in the
    environment and no proxy; stop the servers after."""
    (tmp_path / "git").mkdir()
    server = GitHttpServer(tmp_path / "git", PASSWORD).start()
    runtime = StockRuntime().start()
    try:
        repo = server.create("fleet.git", {"README.md": "fleet\n"})
        monkeypatch.setenv(TOKEN_ENV, PASSWORD)
        for proxy in ("HTTP_PROXY", "http_proxy"):
            monkeypatch.delenv(proxy, raising=False)
        yield repo, SyncedHub(repo), runtime
    finally:
        runtime.stop()
        server.stop()


def test_when_every_cluster_of_wave_1_left_the_placement_the_candidate_is_reverted_from_git_alone(tmp_path, fleet_repo, capsys):
    """spoke-1, wave 1's only cluster, is tainted unreachable for longer than the Placements tolerate while its candidate
    is dark: no rollout step can act on wave 1, but the rollback still reverts the candidate's commit, naming the wave."""
    repo, hub, runtime = fleet_repo
    options = KServeOptions(NAMESPACE, endpoint=runtime.url + "/{cluster}/{namespace}/{service}", rollout_strategy="standard-canary", run_name="run-7")
    target = GitopsTarget(options, GitopsOptions(repo, "main", PATH, wave_timeout_s=20), hub_api=hub, workdir=tmp_path / "work")
    target.deploy(MODEL, "v1", f"pvc://models/{MODEL}/v1", "1" * 64, 20)  # first deployment: every wave, then its record
    before = target.repo.head()
    target.deploy(MODEL, "v2", f"pvc://models/{MODEL}/v2", "2" * 64, 20)  # v2 dark in wave 1
    candidate = target.repo.head()
    hub.taints["spoke-1"].append({"key": UNREACHABLE, "effect": "NoSelect", "timeAdded": "2026-01-01T00:00:00Z"})

    with pytest.raises(ServingError, match=r"has model-pipelines.io/wave in \['canary'\] for wave 1"):
        target.set_traffic(MODEL, 10, 20)
    status = target.status(MODEL)
    assert (status.stable, status.candidate, status.url) == ("v1", "v2", None), "read from wave 1's overlay in Git"
    assert target.wave_state(target.waves[0]) == (False, "wave 1/2 (canary: no clusters): every cluster of the wave left the "
                                                         "Placement's decisions, so none follows its overlay"), "never done"
    after = target.rollback(MODEL, 20, reason="test: wave 1 has no cluster")
    assert (after.stable, after.candidate) == ("v1", None)

    clone = tmp_path / "check"
    subprocess.run(["git", "clone", "--quiet", repo, str(clone)], check=True)
    record, revert = git(clone, "log", "-2", "--format=%H").split()
    assert git(clone, "diff", before, revert, "--", f"{PATH}/base", f"{PATH}/waves") == "", "the revert restores the tree exactly"
    trailers = git(clone, "log", "-1", "--format=%(trailers:only,unfold)", revert).strip().splitlines()
    assert trailers == ["Model: anomaly-detector", "Version: v2", "Step: rollback", "Wave: 1/2 (canary: no clusters)",
                        "Reason: test: wave 1 has no cluster", "Pipeline-Run: run-7"]
    body = git(clone, "log", "-1", "--format=%b", revert)
    assert f"This reverts commit {candidate}." in body
    assert ("wave 1/2 (canary: no clusters): every cluster of the wave left the Placement's decisions, so no cluster confirms this "
            "revert there; a returning cluster's Application syncs it.") in body
    assert f"the revert {revert[:7]} is pushed; wave 1/2 (canary: no clusters): every cluster" in capsys.readouterr().out
    content = yaml.safe_load(git(clone, "show", f"{record}:{PATH}/{status_file(MODEL)}"))
    assert (content["stable"], content["after"], content["waves"]) == ("v1", "rollback", [
        {"wave": "1/2 (canary: no clusters)", "revision": revert, "applications": []}])
    assert "- wave 1/2 (canary: no clusters) at" in git(clone, "log", "-1", "--format=%b", record)

    # Git names the wave's overlay only for the waves its commits acted on: a wave list they never used is refused.
    elsewhere = GitopsTarget(options, GitopsOptions(repo, "main", PATH, (("eu-west",), ("*",))), hub_api=hub, workdir=tmp_path / "elsewhere")
    with pytest.raises(ServingError, match=r"wave 1/2 \(eu-west: no clusters\): no Argo CD Application of anomaly-detector .* no commit of "
                                           r"anomaly-detector in .* acted on that wave alone"):
        elsewhere.rollback(MODEL, 20, reason="test")
