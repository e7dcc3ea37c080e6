"""A stand-in for an ACM hub running OpenShift GitOps (Argo CD), on 127.0.0.1, over spoke clusters that are
``KubeStandIn``s (KServe 0.20, or 0.15) serving with the real KServe model server.

- **Placement decisions** (OCM's placement controller, Placement API v1beta1 as in shared/reference/gitops-crds and
  open-cluster-management.io/concepts/placement "Taints/Tolerations"): a cluster is decided when the Placement's
  selector picks its ManagedCluster labels and each of its taints (``taint(cluster, key, added_at)``) is tolerated:
  a toleration matches by key (empty: any), operator Equal (value equal) or Exists, and effect (empty: any), and with
  ``tolerationSeconds`` only until the taint's ``timeAdded`` plus that many seconds; a NoSelect taint drops an
  untolerated cluster, NoSelectIfNew only one not decided yet, PreferNoSelect none. Every pass recomputes them.
- **Applications** are generated from the project's own ApplicationSets, Placements and GitOpsCluster
  (``manifests/gitops/``), as Argo CD's ApplicationSet controller (argo-cd v3, ``applicationset/generators/``) does,
  regenerated every pass (the real one requeues after ``requeueAfterSeconds``): an Application whose cluster left the
  decisions is deleted, its spoke's resources with it only when it has the resources finalizer (no
  ``preserveResourcesOnDeletion``); a regenerated one adopts what is there.
  A ``clusterDecisionResource`` generator gives, per cluster in its Placement's decisions, the decision's
  ``clusterName`` and ``reason``, the ``name`` and
  ``server`` of the Argo CD cluster of that name (a cluster the GitOpsCluster's Placement did not register is skipped)
  and its ``values``; a ``list`` generator its elements; a ``matrix`` generator every combination of its two children's
  parameters, merged with the first child's winning (goTemplate). The template's ``{{ .a.b }}`` fields are filled in
  with missingkey=error, and without ``syncPolicy.preserveResourcesOnDeletion`` an Application gets the resources
  finalizer.
- **The hub API** serves ``applications.argoproj.io`` to the real ``kubernetes`` client: get and list (with
  ``labelSelector``) only; every write and every watch is 403, as ``manifests/gitops``' hub-rbac.yaml grants.
- **The controller** polls the real Git server every ``poll_interval_s`` (Argo CD: timeout.reconciliation, 120 s plus
  up to 60 s jitter, unless a Git webhook says sooner). When a branch moves it exports the new revision, renders each
  Application's path with kustomize (``kubectl kustomize`` when this machine has it, else the same merge-patch
  semantics in Python) and applies the documents to that spoke: create, merge-patch from what it applied last, and
  prune what left the render. It then writes ``status.sync`` (Synced at the revision, or OutOfSync with a failed
  ``operationState``). As Argo CD's automated sync (docs/user-guide/auto_sync.md: it "will not reattempt a sync if the
  previous sync attempt against the same commit-SHA and parameters had failed"), a failed sync is attempted again only
  by the Application's ``syncPolicy.retry`` (docs/user-guide/application-specification: ``limit``, negative for no
  limit; ``backoff.duration`` times ``factor`` per retry, at most ``maxDuration``; RetryStrategy.NextRetryAt), the
  operationState Running with its ``retryCount`` meanwhile, Failed with a SyncError condition once they are spent;
  ``time_scale`` compresses the backoff for tests. It also writes each applied resource's health in
  ``status.resources[].health`` and the Application's ``status.health.status``: the worst of its resources' in gitops-engine's order (pkg/health/health.go ``healthOrder``:
  Healthy < Suspended < Progressing < Missing < Degraded < Unknown). A resource's health is what Argo CD's Lua health
  check says of the live object, run here by the real Lua (``lupa``, Lua 5.1 as gopher-lua) the way Argo CD's
  util/lua/lua.go runs it: ``obj`` as a table, the returned ``{status, message}`` (Unknown for an invalid status or a
  script error), a customization without the standard libraries; never ``os``, ``io``, ``debug`` or ``package``.
- **Health check** (``health_check``, the Argo CD the hub plays): ``"customized"`` (the default: the project's
  ``manifests/gitops/health/inferenceservice.lua`` is installed as manifests/gitops/health renders it),
  ``"observed-generation"`` (the same, as manifests/gitops/health-observed-generation renders it: its observedGeneration
  check on), ``"stock"`` (Argo CD 2.8 or later, its own health.lua, from shared/reference) or ``"none"`` (before 2.8: no
  check, so an InferenceService that exists is Healthy).
- **KServe** (``kserve``, ``observed_generation``): every spoke's ``KubeStandIn`` plays KServe 0.20 (or 0.15) and by
  default counts ``status.observedGeneration`` as those releases do, copied from the predictor's Deployment or Knative
  Service (``"deployment"``); ``"inferenceservice"`` plays a KServe that sets it from the InferenceService's own
  generation (kserve/kserve PR 6096). See ``KubeStandIn``.
- **Knobs:** ``taint(cluster, key, added_at)`` / ``untaint(cluster, key)`` set a ManagedCluster taint (e.g.
  cluster.open-cluster-management.io/unreachable, as ACM's registration controller does); ``fail_sync(cluster, times,
  message)`` fails each Application's next ``times`` sync attempts to that spoke (math.inf: all, 0 heals);
  ``lag(cluster, seconds)`` delays a spoke's syncs; ``fail(cluster, message, model_name="")`` makes every
  predictor that spoke starts from then on (only that model's, if named) fail to load (``None`` heals it); ``unschedulable(cluster, message)`` leaves every new
  predictor pod on that spoke Pending with ``message`` (``None`` schedules them), see ``KubeStandIn.unschedulable``.
- **The fleet network:** an HTTP proxy that resolves ``<service>.<namespace>.<cluster>.fleet.test`` to that spoke's
  Service (or the InferenceService's router for its own name), for the endpoint template
  ``http://{service}.{namespace}.{cluster}.fleet.test``.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import tarfile
import io
import threading
import time
import urllib.parse
from datetime import datetime, timezone
from http.server import ThreadingHTTPServer
from pathlib import Path

import yaml

from lupa import lua51

from components.serving.kserve.merge_patch import merge_diff, merge_patch
from tests.http_json import JsonHandler
from tests.k8s_standin import KubeStandIn, LoopbackCluster, forwarding_proxy, selector_matches

APPLICATION_PATH = re.compile(r"^/apis/argoproj\.io/v1alpha1/namespaces/([^/]+)/applications(?:/([^/]+))?$")
FLEET_DOMAIN = ".fleet.test"
ENDPOINT_TEMPLATE = "http://{service}.{namespace}.{cluster}" + FLEET_DOMAIN
PLACEMENT_LABEL = "cluster.open-cluster-management.io/placement"
GO_FIELD = re.compile(r"\{\{\s*\.([\w.]+)\s*\}\}")
RESOURCES_FINALIZER = "resources-finalizer.argocd.argoproj.io"
# gitops-engine pkg/health/health.go healthOrder, most to least healthy: an Application is as healthy as its worst resource.
HEALTH_ORDER = ["Healthy", "Suspended", "Progressing", "Missing", "Degraded", "Unknown"]
REPO = Path(__file__).resolve().parent.parent
HEALTH_CHECKS = {  # health_check -> the InferenceService health.lua that Argo CD runs (None: it has none)
    "customized": REPO / "manifests" / "gitops" / "health" / "inferenceservice.lua",
    "observed-generation": REPO / "manifests" / "gitops" / "health" / "inferenceservice.lua",  # with its switch on
    "stock": REPO.parent / "shared" / "reference" / "gitops-crds" / "argocd-health-inferenceservice" / "health.lua",
    "none": None,
}
# inferenceservice.lua's switch sits between two of these; the require-observed-generation component replaces it.
OBSERVED_GENERATION_MARKER = "--[[require-observed-generation]]"
NEVER_IN_SANDBOX = ("io", "os", "debug", "package", "require", "module", "dofile", "loadfile", "load", "loadstring", "python")
STANDARD_LIBRARIES = ("string", "math", "coroutine")  # Argo CD opens them for its built-in scripts only


def lua_health(script: str, obj: dict, standard_libraries: bool) -> dict:
    """Return the ``{"status", "message"}`` a health.lua ``script`` gives ``obj``, run the way Argo CD's Lua VM runs it."""
    runtime = lua51.LuaRuntime(register_eval=False, register_builtins=False)
    lua_globals = runtime.globals()
    for name in NEVER_IN_SANDBOX + (() if standard_libraries else STANDARD_LIBRARIES):
        lua_globals[name] = None
    lua_globals.obj = runtime.table_from(obj, recursive=True)
    try:
        result = runtime.execute(script)
    except lua51.LuaError as error:
        return {"status": "Unknown", "message": str(error)}
    if lua51.lua_type(result) != "table":
        return {"status": "Unknown", "message": f"expect table output from Lua script, not {lua51.lua_type(result) or type(result).__name__}"}
    if result["status"] not in HEALTH_ORDER:
        return {"status": "Unknown", "message": "Lua returned an invalid health status"}
    return {"status": result["status"], **({"message": result["message"]} if result["message"] else {})}


def health_script(mode: str) -> str | None:
    """Return the InferenceService health.lua Argo CD runs under ``health_check=mode`` (None: it has none). For
    "observed-generation", the project's file with "true" between its two markers, as the kustomize replacement (option
    delimiter, index 1) of manifests/gitops/health/require-observed-generation writes it."""
    path = HEALTH_CHECKS[mode]
    if path is None:
        return None
    if not path.is_file():
        raise ValueError(f"health_check={mode} needs {path}: it ships beside the project in shared/reference")
    if mode != "observed-generation":
        return path.read_text()
    parts = path.read_text().split(OBSERVED_GENERATION_MARKER)
    if len(parts) != 3:
        raise ValueError(f"{path} must hold its switch between exactly two {OBSERVED_GENERATION_MARKER} markers")
    return OBSERVED_GENERATION_MARKER.join([parts[0], "true", parts[2]])


def kubectl_kustomize() -> str | None:
    """Return the kubectl binary when it builds kustomizations with ``patches`` (kustomize v4 or later), else None."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        return None
    result = subprocess.run([kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60)
    try:
        version = json.loads(result.stdout).get("kustomizeVersion", "v0")
    except ValueError:
        return None
    return kubectl if int(re.sub(r"^v(\d+).*", r"\1", version) or 0) >= 4 else None


def render_in_python(directory: Path) -> list[dict]:
    """Return the documents of a kustomization: resources (files or directories), then merge-patch ``patches``."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    documents: list[dict] = []
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        documents += render_in_python(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for entry in kustomization.get("patches", []):
        patch = yaml.safe_load((directory / entry["path"]).read_text())
        documents = [merge_patch(document, patch) if (document["kind"], document["metadata"]["name"]) ==
                     (patch["kind"], patch["metadata"]["name"]) else document for document in documents]
    return documents


def render(directory: Path, kubectl: str | None) -> list[dict]:
    """Return the rendered documents of ``directory`` with kubectl's kustomize, or in Python without it."""
    if kubectl is None:
        return render_in_python(directory)
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise ValueError(f"kustomize build {directory.name} failed: {result.stderr.strip()[-400:]}")
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def placement_selects(placement: dict, labels: dict) -> bool:
    """Return whether an ACM Placement's requiredClusterSelector (matchLabels, matchExpressions) selects a cluster's labels."""
    for predicate in placement["spec"].get("predicates", []):
        selector = predicate["requiredClusterSelector"]["labelSelector"]
        if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
            return False
        for expression in selector.get("matchExpressions", []):
            key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
            if not {"In": lambda: labels.get(key) in values, "NotIn": lambda: labels.get(key) not in values,
                    "Exists": lambda: key in labels, "DoesNotExist": lambda: key not in labels}[operator]():
                return False
    return True


def taint_time(taint: dict) -> float:
    """Return a ManagedCluster taint's ``timeAdded`` (RFC 3339) in epoch seconds; without one, the zero time (long past)."""
    added = taint.get("timeAdded")
    return datetime.fromisoformat(added.replace("Z", "+00:00")).timestamp() if added else float("-inf")


def tolerates(toleration: dict, taint: dict, now: float) -> bool:
    """Return whether a Placement's toleration matches ``taint`` at ``now`` (epoch seconds), as OCM's Placement API defines it:
    key (empty: any), operator Equal (values equal, the default) or Exists, effect (empty: any), and tolerationSeconds (NoSelect
    and PreferNoSelect only) counted from the taint's timeAdded.
    """
    if toleration.get("key") and toleration["key"] != taint["key"]:
        return False
    if toleration.get("operator", "Equal") == "Equal" and toleration.get("value", "") != taint.get("value", ""):
        return False
    if toleration.get("effect") and toleration["effect"] != taint["effect"]:
        return False
    seconds = toleration.get("tolerationSeconds")
    return seconds is None or taint["effect"] not in ("NoSelect", "PreferNoSelect") or now < taint_time(taint) + seconds


def placement_decides(placement: dict, labels: dict, taints: list[dict] = (), now: float = 0.0, decided: bool = False) -> bool:
    """Return whether a Placement puts a ManagedCluster (its labels and spec.taints) in its decisions at ``now``: its selector
    picks the labels, and every NoSelect taint (NoSelectIfNew: only for a cluster not ``decided`` yet) is tolerated.
    PreferNoSelect never filters (OCM: "not implemented yet ... will always be selected").
    """
    if not placement_selects(placement, labels):
        return False
    for taint in taints:
        if taint["effect"] == "PreferNoSelect" or (taint["effect"] == "NoSelectIfNew" and decided):
            continue
        if not any(tolerates(toleration, taint, now) for toleration in placement["spec"].get("tolerations", [])):
            return False
    return True


def placement_decisions(manifests: list[dict], clusters: dict[str, dict], now: float, previous: dict[str, set] | None = None) -> dict[str, list[str]]:
    """Return each Placement's decisions (name -> cluster names) over ``clusters`` (name -> {"labels", "taints"}) at ``now``,
    ``previous`` being the decisions before (for NoSelectIfNew).
    """
    previous = previous or {}
    return {item["metadata"]["name"]: [name for name, cluster in clusters.items()
                                       if placement_decides(item, cluster["labels"], cluster.get("taints", []), now,
                                                            name in previous.get(item["metadata"]["name"], ()))]
            for item in manifests if item["kind"] == "Placement"}


def go_template(text: str, parameters: dict) -> str:
    """Return ``text`` with each ``{{ .a.b }}`` replaced by that parameter; a missing one is an error (missingkey=error)."""
    def field(match: re.Match) -> str:
        value = parameters
        for key in match.group(1).split("."):
            if not isinstance(value, dict) or key not in value:
                raise KeyError(f"template: map has no entry for key {key!r} (in {match.group(0)})")
            value = value[key]
        return str(value)

    filled = GO_FIELD.sub(field, text)
    if "{{" in filled:
        raise ValueError(f"the stand-in fills in only {{{{ .field }}}} actions: {filled[filled.index('{{'):][:80]}")
    return filled


def merged(fallback: dict, preferred: dict) -> dict:
    """Return ``fallback`` deep-merged with ``preferred``, whose values win (mergo.Merge WithOverride, as matrix does)."""
    result = copy.deepcopy(fallback)
    for key, value in preferred.items():
        result[key] = merged(result[key], value) if isinstance(value, dict) and isinstance(result.get(key), dict) else copy.deepcopy(value)
    return result


def retry_delay(retry: dict, retries: int) -> float:
    """Return the seconds Argo CD waits before retry number ``retries + 1`` of a failed sync: backoff.duration *
    factor^retries, at most maxDuration (RetryStrategy.NextRetryAt; defaults 5s, 2, 3m).
    """
    backoff = retry.get("backoff") or {}
    delay = duration_seconds(backoff.get("duration", "5s")) * float(backoff.get("factor", 2)) ** retries
    return min(delay, duration_seconds(backoff.get("maxDuration", "3m")))


def duration_seconds(value: object) -> float:
    """Return a Go duration ("10s", "3m", "1h30m") or a number of seconds, in seconds."""
    if isinstance(value, (int, float)) or str(value).isdigit():
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", str(value))
    if not parts or "".join(number + unit for number, unit in parts) != str(value):
        raise ValueError(f"not a duration: {value!r}")
    return sum(float(number) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit] for number, unit in parts)


def cluster_server(cluster: str) -> str:
    """Return the API server URL the GitOpsCluster registers for a spoke (its ManagedCluster's API URL)."""
    return f"https://api.{cluster}{FLEET_DOMAIN}:6443"


def generator_parameters(generator: dict, manifests: list[dict], clusters: dict[str, dict], decisions: dict[str, list[str]] | None = None) -> list[dict]:
    """Return the parameter sets one generator (list, clusterDecisionResource or matrix) produces over ``clusters``
    (name -> ManagedCluster labels), in goTemplate form, given the Placements and GitOpsClusters in ``manifests`` and the
    Placements' ``decisions`` (``placement_decisions``; by default every cluster their selector picks, untainted).
    """
    if "list" in generator:
        return copy.deepcopy(generator["list"]["elements"])
    if decisions is None:
        decisions = placement_decisions(manifests, {name: {"labels": labels} for name, labels in clusters.items()}, 0.0)
    if "clusterDecisionResource" in generator:
        registered = {name for item in manifests if item["kind"] == "GitOpsCluster" for name in decisions[item["spec"]["placementRef"]["name"]]}
        resource = generator["clusterDecisionResource"]
        chosen = decisions[resource["labelSelector"]["matchLabels"][PLACEMENT_LABEL]]
        values = {"values": dict(resource["values"])} if resource.get("values") else {}
        return [{"name": name, "server": cluster_server(name), "clusterName": name, "reason": "", **values}
                for name in clusters if name in chosen and name in registered]
    if "matrix" in generator:
        first, second = generator["matrix"]["generators"]
        return [merged(b, a) for a in generator_parameters(first, manifests, clusters, decisions)
                for b in generator_parameters(second, manifests, clusters, decisions)]
    raise ValueError(f"the stand-in generates from list, clusterDecisionResource and matrix generators, not {sorted(generator)}")


def generated_applications(applicationset: dict, manifests: list[dict], clusters: dict[str, dict], decisions: dict[str, list[str]] | None = None) -> list[dict]:
    """Return the Applications an ApplicationSet generates: its template filled in with each generator's parameter sets."""
    spec, generated = applicationset["spec"], []
    template = json.dumps(spec["template"])
    preserve = (spec.get("syncPolicy") or {}).get("preserveResourcesOnDeletion", False)
    for generator in spec["generators"]:
        for parameters in generator_parameters(generator, manifests, clusters, decisions):
            application = json.loads(go_template(template, parameters))
            if not preserve:
                application["metadata"]["finalizers"] = [RESOURCES_FINALIZER]
            generated.append({"apiVersion": "argoproj.io/v1alpha1", "kind": "Application", **application})
    return generated


class Spoke:
    """One managed cluster: its KubeStandIn, ManagedCluster labels and sync knobs."""

    def __init__(self, name: str, labels: dict, standin: KubeStandIn) -> None:
        self.name, self.labels, self.standin = name, labels, standin
        self.taints: list[dict] = []  # the ManagedCluster's spec.taints
        self.lag_s = 0.0
        self.seen: dict[str, float] = {}  # revision -> when this spoke first saw it (for the lag knob)
        self.failing_syncs, self.sync_failure = 0.0, ""  # how many sync attempts of each Application fail, and with what message
        self.failed_syncs: dict[str, int] = {}  # Application -> its sync attempts failed so far by the fail_sync knob


class ArgoHub(LoopbackCluster):
    """The hub API, the Argo CD-like controller and the fleet network over ``spokes`` (name -> ManagedCluster labels)."""

    context = "hub"

    def __init__(self, work: Path, repo_url: str, branch: str, spokes: dict[str, dict], store_root: Path, crd_file: Path | None,
                 manifests: list[dict], namespace: str = "openshift-gitops", kserve: str = "0.20",
                 health_check: str = "customized", poll_interval_s: float = 0.2, time_scale: float = 1.0,
                 observed_generation: str = "deployment") -> None:
        self.work, self.repo_url, self.branch, self.namespace = work, repo_url, branch, namespace
        self.poll_interval_s = poll_interval_s  # Argo CD: timeout.reconciliation (120 s) plus jitter, compressed for tests
        self.time_scale = time_scale  # multiplies the Applications' sync retry backoff (test-only time compression)
        self.health_script, self.health_check = None, ""
        self.use_health_check(health_check)
        self.kubectl = kubectl_kustomize()
        self.spokes = {name: Spoke(name, labels, KubeStandIn(store_root, self._mkdir(f"spoke-{name}"), kserve=kserve, crd_file=crd_file,
                                                                observed_generation=observed_generation))
                       for name, labels in spokes.items()}
        self.manifests = manifests
        self.decisions: dict[str, list[str]] = {}
        self.applications: dict[str, dict] = {}
        self.applied: dict[str, dict[str, dict]] = {}
        self.retry_at: dict[str, float] = {}  # Application -> when its next sync retry is due
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.RLock()
        self.regenerate(time.time())
        self._stop = threading.Event()
        self.mirror = work / "mirror.git"
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.scrape_targets = work / "targets.json"
        self.scrape_targets.write_text("[]")

    def _mkdir(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- the placement controller and the ApplicationSet controller ------------------------------------------------
    def generate(self, applicationset: dict) -> list[dict]:
        """Return the Applications the ApplicationSet generates from the current decisions, as stored on the hub (pointing at the test's Git server)."""
        generated = []
        labels = {name: spoke.labels for name, spoke in self.spokes.items()}
        for application in generated_applications(applicationset, self.manifests, labels, self.decisions):
            application["spec"]["source"]["repoURL"] = self.repo_url
            application["metadata"].update(namespace=self.namespace, resourceVersion="1", uid=f"uid-{application['metadata']['name']}", generation=1)
            generated.append({**application, "status": {"sync": {"status": "OutOfSync"}, "health": {"status": "Missing"}}})
        return generated

    def regenerate(self, now: float) -> None:
        """Recompute every Placement's decisions from the ManagedClusters' labels and taints at ``now`` and regenerate the
        Applications: create the new ones, update the spec and labels of the kept ones, delete those whose cluster left
        (with the resources finalizer, deleting what they applied to the spoke first; without it, leaving it there).
        """
        clusters = {name: {"labels": spoke.labels, "taints": spoke.taints} for name, spoke in self.spokes.items()}
        self.decisions = placement_decisions(self.manifests, clusters, now, {name: set(chosen) for name, chosen in self.decisions.items()})
        wanted = {document["metadata"]["name"]: document for item in self.manifests if item["kind"] == "ApplicationSet"
                  for document in self.generate(item)}
        with self.lock:
            for name in [name for name in self.applications if name not in wanted]:
                self._delete_application(name)
            for name, document in wanted.items():
                if name in self.applications:
                    self.applications[name]["metadata"]["labels"] = document["metadata"]["labels"]
                    self.applications[name]["spec"] = document["spec"]
                else:
                    self.applications[name], self.applied[name] = document, {}

    def _delete_application(self, name: str) -> None:
        """Delete an Application as Argo CD does: with the resources finalizer its resources go first (cascade), else they stay."""
        application = self.applications.pop(name)
        applied = self.applied.pop(name, {})
        self.retry_at.pop(name, None)
        if RESOURCES_FINALIZER in application["metadata"].get("finalizers", []):
            spoke = self.spokes[application["metadata"]["labels"]["model-pipelines.io/cluster"]]
            for object_name in applied:
                spoke.standin.handle("DELETE", application["spec"]["destination"]["namespace"], object_name, None)

    # -- lifecycle --------------------------------------------------------------------------------------------------
    def start(self) -> "ArgoHub":
        for spoke in self.spokes.values():
            spoke.standin.start()
        self._serve(forwarding_proxy(self.resolve))
        return self

    def stop(self) -> None:
        self._shut_down()
        for spoke in self.spokes.values():
            spoke.standin.stop()

    # -- knobs ----------------------------------------------------------------------------------------------------
    def lag(self, cluster: str, seconds: float) -> None:
        """Make ``cluster`` sync each new revision only ``seconds`` after it appears."""
        self.spokes[cluster].lag_s = seconds

    def fail(self, cluster: str, message: str | None, model_name: str = "") -> None:
        """Make every predictor ``cluster`` starts from now on (only ``model_name``'s, if given) fail with ``message`` (None heals it)."""
        self.spokes[cluster].standin.failing_revisions = message or ""
        self.spokes[cluster].standin.failing_model = model_name

    def taint(self, cluster: str, key: str, added_at: float, effect: str = "NoSelect") -> None:
        """Taint ``cluster``'s ManagedCluster as ACM's registration controller does (e.g. key
        cluster.open-cluster-management.io/unreachable), with timeAdded ``added_at`` (epoch seconds)."""
        added = datetime.fromtimestamp(added_at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.untaint(cluster, key)
        self.spokes[cluster].taints.append({"key": key, "effect": effect, "timeAdded": added})

    def untaint(self, cluster: str, key: str) -> None:
        """Remove ``cluster``'s taint ``key`` (the cluster is reachable again)."""
        self.spokes[cluster].taints = [taint for taint in self.spokes[cluster].taints if taint["key"] != key]

    def fail_sync(self, cluster: str, times: float, message: str = "") -> None:
        """Make each Application's next ``times`` sync attempts to ``cluster`` fail with ``message`` (math.inf: every one; 0 heals it)."""
        spoke = self.spokes[cluster]
        spoke.failing_syncs, spoke.sync_failure, spoke.failed_syncs = times, message, {}

    def unschedulable(self, cluster: str, message: str | None) -> None:
        """Leave every predictor pod ``cluster`` starts from now on Pending with ``message`` (None schedules them)."""
        self.spokes[cluster].standin.unschedulable = message or ""

    def use_health_check(self, mode: str) -> None:
        """Play an Argo CD with the project's check ("customized", or "observed-generation" with its switch on), its own
        (>= 2.8, "stock") or none (< 2.8, "none")."""
        if mode not in HEALTH_CHECKS:
            raise ValueError(f"health_check must be one of {sorted(HEALTH_CHECKS)}; got {mode!r}")
        self.health_script, self.health_check = health_script(mode), mode

    def resource_health(self, isvc: dict) -> dict | None:
        """Return Argo CD's health of a live InferenceService under the current health check (None: Argo CD has none)."""
        if self.health_script is None:
            return None
        return lua_health(self.health_script, isvc, standard_libraries=self.health_check == "stock")

    def application(self, name: str) -> dict:
        with self.lock:
            return copy.deepcopy(self.applications[name])

    def application_of(self, cluster: str, model_name: str) -> dict | None:
        """Return the Application of ``model_name`` on ``cluster``, or None when there is none."""
        with self.lock:
            return next((self.application(name) for name, app in self.applications.items()
                         if app["metadata"]["labels"]["model-pipelines.io/cluster"] == cluster
                         and app["metadata"]["labels"].get("model-pipelines.io/model") == model_name), None)

    # -- the fleet network -------------------------------------------------------------------------------------------
    def resolve(self, host: str) -> int | None:
        """Return the loopback port behind ``<service>.<namespace>.<cluster>.fleet.test``, or None."""
        if not host.endswith(FLEET_DOMAIN):
            return None
        service, namespace, cluster = host.removesuffix(FLEET_DOMAIN).split(".", 2)
        spoke = self.spokes.get(cluster)
        if spoke is None:
            return None
        isvc = spoke.standin.get(namespace, service)
        if isvc and isvc.get("status", {}).get("url"):
            return urllib.parse.urlparse(isvc["status"]["url"]).port
        return spoke.standin.services.get(f"{service}.{namespace}.svc.cluster.local")

    def main_url(self, cluster: str, model_name: str, namespace: str = "self-healing-platform") -> str:
        """Return the model's main URL on ``cluster`` as the coordination engine there calls it (its router)."""
        isvc = self.spokes[cluster].standin.get(namespace, model_name)
        return f"{isvc['status']['url']}/v1/models/{model_name}"

    # -- the hub API ------------------------------------------------------------------------------------------------
    def _handler(self):
        hub = self

        class Handler(JsonHandler):
            def _refuse(self, code: int, reason: str, message: str) -> None:
                self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason, "code": code})

            def _dispatch(self, method: str) -> None:
                parsed = urllib.parse.urlparse(self.path)
                query = urllib.parse.parse_qs(parsed.query)
                hub.requests.append((method, self.path))
                match = APPLICATION_PATH.match(parsed.path)
                if not match:
                    return self._refuse(404, "NotFound", f"the server could not find the requested resource {parsed.path}")
                verb = "watch" if query.get("watch", ["false"])[0].lower() in ("true", "1") else {
                    "GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
                if verb not in ("get", "list") and not (verb == "get" and match.group(2) is None):
                    return self._refuse(403, "Forbidden", f'applications.argoproj.io is forbidden: User "system:serviceaccount:self-healing-platform:'
                                                          f'pipeline-runner-dspa" cannot {verb} resource "applications"')
                namespace, name = match.groups()
                with hub.lock:
                    if name is None:
                        selector = query.get("labelSelector", [""])[0]
                        items = [copy.deepcopy(app) for app in hub.applications.values()
                                 if app["metadata"]["namespace"] == namespace and selector_matches(app["metadata"].get("labels", {}), selector)]
                        return self._send(200, {"apiVersion": "argoproj.io/v1alpha1", "kind": "ApplicationList", "items": items,
                                                "metadata": {"resourceVersion": "1"}})
                    found = hub.applications.get(name)
                    if found is None or found["metadata"]["namespace"] != namespace:
                        return self._refuse(404, "NotFound", f'applications.argoproj.io "{name}" not found')
                    return self._send(200, copy.deepcopy(found))

        return Handler

    # -- the Argo CD-like controller ------------------------------------------------------------------------------
    def _head(self) -> str:
        result = subprocess.run(["git", "ls-remote", self.repo_url, f"refs/heads/{self.branch}"], capture_output=True, text=True, timeout=60)
        return result.stdout.split()[0] if result.returncode == 0 and result.stdout else ""

    def _export(self, revision: str) -> Path:
        """Return a directory holding the repository at ``revision`` (fetched into the mirror when new)."""
        target = self.work / "revisions" / revision
        if not self.mirror.is_dir():
            subprocess.run(["git", "clone", "--quiet", "--mirror", self.repo_url, str(self.mirror)], check=True, capture_output=True)
        if not target.is_dir():
            subprocess.run(["git", "-C", str(self.mirror), "fetch", "--quiet", "origin", "+refs/heads/*:refs/heads/*"], check=True, capture_output=True)
            archive = subprocess.run(["git", "-C", str(self.mirror), "archive", "--format=tar", revision], check=True, capture_output=True).stdout
            staging = target.with_suffix(".partial")
            staging.mkdir(parents=True, exist_ok=True)
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                tar.extractall(staging, filter="data")
            staging.rename(target)
        return target

    def _control_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconcile(time.time())
            except Exception as error:  # the controller keeps going, as Argo CD does; the error shows on the Application
                with self.lock:
                    for app in self.applications.values():
                        app["status"]["conditions"] = [{"type": "ComparisonError", "message": str(error)[:300]}]
            time.sleep(self.poll_interval_s)

    def reconcile(self, now: float) -> None:
        """One pass of the hub's controllers at ``now`` (epoch seconds): placement decisions and Applications, then each
        Application against the branch's head, then the scrape targets."""
        self.regenerate(now)
        head = self._head()
        for name in list(self.applications):
            self._reconcile(name, head, now)
        self._write_scrape_targets()

    def _reconcile(self, name: str, head: str, now: float) -> None:
        """Auto-sync one Application to ``head`` when due (the lag knob), then report its health.

        As Argo CD's automated sync (docs/user-guide/auto_sync.md): a sync that failed is not attempted again for the same
        revision, except by the Application's ``syncPolicy.retry``: ``limit`` retries (negative: no limit), the n-th after
        backoff ``duration * factor^(n-1)``, at most ``maxDuration`` (times ``time_scale``); meanwhile its operationState is
        Running with a retryCount, and once retries are exhausted Failed, with a SyncError condition.
        """
        app = self.application(name)
        spoke = self.spokes[app["metadata"]["labels"]["model-pipelines.io/cluster"]]
        namespace = app["spec"]["destination"]["namespace"]
        synced = app["status"]["sync"].get("revision")
        operation = app["status"].get("operationState") or {}
        attempted = operation.get("syncResult", {}).get("revision") == head
        due = head and head != synced and now - spoke.seen.setdefault(head, now) >= spoke.lag_s
        status = copy.deepcopy(app["status"])
        if due and attempted and operation.get("phase") == "Failed":
            status["conditions"] = [{"type": "SyncError", "message": f"Failed sync attempt to {head}: {operation['message']}"}]
        elif due and not (attempted and operation.get("phase") == "Running" and now < self.retry_at.get(name, now)):
            retries = operation.get("retryCount", 0) if attempted else 0
            try:
                if spoke.failed_syncs.get(name, 0) < spoke.failing_syncs:
                    spoke.failed_syncs[name] = spoke.failed_syncs.get(name, 0) + 1
                    raise ValueError(spoke.sync_failure or "the spoke refused the sync")
                directory = self._export(head) / app["spec"]["source"]["path"]
                documents = render(directory, self.kubectl) if (directory / "kustomization.yaml").is_file() else []
                self._apply(name, spoke, namespace, documents)
                status["sync"] = {"status": "Synced", "revision": head}
                status["operationState"] = {"phase": "Succeeded", "message": "successfully synced (all tasks run)", "retryCount": retries,
                                            "syncResult": {"revision": head}}
                status.pop("conditions", None)
            except ValueError as error:
                retry = (app["spec"].get("syncPolicy") or {}).get("retry")
                status["sync"] = {"status": "OutOfSync", "revision": synced or ""}
                if retry is not None and (int(retry.get("limit", 0)) < 0 or retries < int(retry.get("limit", 0))):
                    self.retry_at[name] = now + retry_delay(retry, retries) * self.time_scale
                    status["operationState"] = {"phase": "Running", "message": f"{error}. Retrying attempt #{retries + 1}",
                                                "retryCount": retries + 1, "syncResult": {"revision": head}}
                else:
                    status["operationState"] = {"phase": "Failed", "message": str(error) + (f" (retried {retries} times)" if retries else ""),
                                                "retryCount": retries, "syncResult": {"revision": head}}
        status["resources"], status["health"] = self._health(name, spoke, namespace)
        with self.lock:
            if name in self.applications:
                self.applications[name]["status"] = status

    def _apply(self, name: str, spoke: Spoke, namespace: str, documents: list[dict]) -> None:
        """Create, merge-patch (from the last applied document) and prune, as ``kubectl apply --prune`` does."""
        applied, wanted = self.applied[name], {document["metadata"]["name"]: document for document in documents}
        for object_name, document in wanted.items():
            if spoke.standin.get(namespace, object_name) is None:
                code, answer = spoke.standin.handle("POST", namespace, None, {**document, "metadata": {**document["metadata"], "namespace": namespace}})
            else:
                patch = merge_diff(applied.get(object_name) or {}, document)
                code, answer = spoke.standin.handle("PATCH", namespace, object_name, patch) if patch else (200, {})
            if code >= 400:
                raise ValueError(f"InferenceService {namespace}/{object_name}: {answer.get('message')}")
            applied[object_name] = document
        for object_name in [n for n in applied if n not in wanted]:
            spoke.standin.handle("DELETE", namespace, object_name, None)
            del applied[object_name]

    def _health(self, name: str, spoke: Spoke, namespace: str) -> tuple[list[dict], dict]:
        """Return the Application's resources with their health, and its health: the worst of theirs (controller/health.go)."""
        resources, worst = [], "Healthy"
        for object_name in self.applied[name]:
            isvc = spoke.standin.get(namespace, object_name)
            health = {"status": "Missing"} if isvc is None else self.resource_health(isvc)
            resource = {"group": "serving.kserve.io", "version": "v1beta1", "kind": "InferenceService", "namespace": namespace,
                        "name": object_name, "status": "Synced"}
            resources.append({**resource, **({"health": health} if health else {})})
            if health and HEALTH_ORDER.index(health["status"]) > HEALTH_ORDER.index(worst):
                worst = health["status"]
        return resources, {"status": worst}

    def _write_scrape_targets(self) -> None:
        """Write every spoke predictor's metrics address, labelled with its cluster and namespace (as user workload monitoring and
        ACM observability label them), for the hub's Prometheus (file_sd)."""
        groups = []
        for spoke in self.spokes.values():
            by_namespace: dict[str, list[int]] = {}
            with spoke.standin.lock:
                for (namespace, _), state in spoke.standin.runtime.items():
                    by_namespace.setdefault(namespace, []).extend(revision["port"] for revision in state["revisions"] if revision.get("ready"))
            groups.extend({"targets": [f"127.0.0.1:{port}" for port in sorted(ports)], "labels": {"cluster": spoke.name, "namespace": namespace}}
                          for namespace, ports in sorted(by_namespace.items()) if ports)
        text = json.dumps(groups)
        if self.scrape_targets.read_text() != text:
            temporary = self.scrape_targets.with_suffix(".tmp")
            temporary.write_text(text)
            temporary.replace(self.scrape_targets)
