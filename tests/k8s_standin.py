"""A stand-in for a Kubernetes API server with KServe, on 127.0.0.1, for tests the real ``kubernetes`` client drives.

It follows the documented semantics the pipeline depends on: InferenceService create/get/list (with
``labelSelector``)/merge-patch/delete (with preconditions), ``metadata.generation`` bumped only by spec changes and
never writable, ``resourceVersion`` on every write and 409 when a write carries a stale one, 400 for a create that
carries a ``resourceVersion`` or another namespace, 404 and 409 (AlreadyExists) as Status objects, and 403 for PUT
(update) and watch, as the DSP ``pipeline-runner`` role answers. Given a CRD schema it prunes unknown fields on
write, silently, as a real API server does with structural schemas.

``kserve`` picks the KServe generation the controller thread plays: ``"0.15"`` (Serverless by default, modes kept as
written) or ``"0.20"`` (Standard by default, modes normalised in status, the 0.20 validating webhook, and the native
canary: a revision and a Service ``<isvc>-<name>-predictor`` per ``spec.canary`` entry, traffic split by
``trafficPercent``, ``status.canaryStatuses`` and ``CanaryPredictorReady``). Every predictor revision is served by the
real KServe model server (``components.runtime.model_server``), with the predictor's environment as a container gets
it (the names the runtime reads, e.g. ``PREDICT_PROBA``; the version and checksum as its arguments); the main URL (``status.url``) is a router that splits
traffic. Services are reachable by their in-cluster names through ``network_proxy``, an HTTP proxy on loopback
that plays the cluster network (set ``HTTP_PROXY`` to it).

Status follows KServe 0.20 (pkg/apis/serving/v1beta1/inference_service_status.go): ``modelStatus.transitionStatus``
UpToDate when ready, BlockedByFailedLoad (with ``lastFailureInfo``) when a predictor failed to load
(``failing_revisions``). ``unschedulable`` leaves every new predictor pod Pending with the scheduler's message; in
Standard mode a rolling update then keeps the old pods serving and, as KServe's ``PropagateRawStatus`` takes
PredictorReady from the Deployment's Available condition (still True) and ``PropagateModelStatus`` reports a Ready raw
predictor as Loaded, every condition stays True and transitionStatus UpToDate, with ``observedGeneration`` moved on
(the Deployment controller observed the new template; with PR 6096, the new generation). A first deployment that
cannot be scheduled is not Available: PredictorReady and Ready False (MinimumReplicasUnavailable), transitionStatus
InProgress. Clearing the knob schedules them.

``observed_generation`` picks what ``status.observedGeneration`` counts. ``"deployment"`` (the default) is KServe as
released, up to 0.20 (v0.15.0, v0.17.0, v0.20.0 and master of 2026-08-21, pkg/apis/serving/v1beta1/
inference_service_status.go, kserve/kserve issue 6081): in Standard mode ``PropagateRawStatus`` copies the stable
predictor Deployment's ``status.observedGeneration`` (v0.20.0 l.456), in Knative mode ``PropagateStatus`` the Knative
Service's (l.635); the stand-in counts those as Kubernetes does (1 on creation, +1 for each change of their spec:
the stable predictor's pod template in Standard mode, so a ``spec.canary`` entry or its ``trafficPercent`` moves no
counter; the predictor with its ``canaryTrafficPercent`` in Knative mode), observed at once by their controllers. One
counter stands for the stable predictor even when a promotion renames it, though KServe then copies another
Deployment's (``reconcileCanaryDeployments`` keeps one Deployment per predictor name). ``"inferenceservice"`` is the
InferenceService's own ``metadata.generation``, as kserve/kserve PR 6096 (open) would set it on every status update.

Knative mode writes, as KServe does, a first status for a new spec before any new revision runs: ``KsvcReconciler``
(pkg/controller/v1beta1/inferenceservice/reconcilers/knative/ksvc_reconciler.go, ``Reconcile``) returns the status of
the Knative Service its update answered, the previous one, which ``PropagateStatus`` copies: Ready, the previous
revisions and traffic, with ``observedGeneration`` the Knative Service's previous counter (or, with PR 6096, the new
generation). A revision that failed or is Pending is the ``latestCreatedRevision`` (Knative names a revision once
created), the ready one stays ``latestReadyRevision``. ``paused`` holds named InferenceServices at that first status
(in Standard mode: at the previous spec's status): their new predictor pods never start until the name is removed.

In Standard mode ``status.components.predictor`` carries only the predictor's ``url``, all ``PropagateRawStatus``
writes (no revisions, no traffic).

Given ``registry`` (a ``RegistryAccess``), the stand-in also runs the Model Registry's InferenceService controller
(``tests.registry_controller``, after kubeflow/model-registry ``pkg/inferenceservice-controller/controller.go``), which
adds a finalizer to each InferenceService it links: a DELETE then marks the object (``deletionTimestamp``) and it goes once
its last finalizer is removed, as Kubernetes does (an object without finalizers goes at once, as before).
"""

from __future__ import annotations

import atexit
import copy
import functools
import hashlib
import itertools
import json
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

from components.serving.local import http_get, log_tail, process_alive, start_listening, stop_process
from components.serving.kserve.merge_patch import merge_patch
from components.runtime.server_launcher import RUNTIME_ENVIRONMENT, ServerLauncher
from components.serving.target import ServingError
from tests.http_json import JsonHandler
from tests.registry_controller import InferenceServiceRegistryController, RegistryAccess
from tests.servers import start_server

LOADED_MODEL_STATUS = {"transitionStatus": "UpToDate", "modelRevisionStates": {"activeModelState": "Loaded", "targetModelState": "Loaded"}}  # KServe 0.20's modelStatus of a Ready predictor (PropagateModelStatus)

ISVC_PATH = re.compile(r"^/apis/serving\.kserve\.io/v1beta1/namespaces/([^/]+)/inferenceservices(?:/([^/]+))?$")
MODE_KEY = "serving.kserve.io/deploymentMode"
NORMALIZED = {"Serverless": "Knative", "Knative": "Knative", "RawDeployment": "Standard", "Standard": "Standard"}
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
SERVER_MANAGED = ("generation", "uid", "creationTimestamp", "namespace")
OBSERVED_GENERATION = ("inferenceservice", "deployment")  # what status.observedGeneration counts (the observed_generation knob)
CLUSTER_NUMBERS = itertools.count(1)  # names each stand-in's runtime logs in the shared launcher's logs/


@functools.cache
def shared_launcher() -> ServerLauncher:
    """Return this test process's client of the warm launcher, whose logs/ holds its stand-in clusters' runtime logs, removed
    when the process exits; the launcher stops then too unless another directory's server lives (it serves them all)."""
    home = Path(tempfile.mkdtemp(prefix="standin-runtimes-"))
    launcher = ServerLauncher(home)
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    atexit.register(launcher.stop)  # runs first: atexit calls in reverse order
    return launcher


def prune(value: object, schema: dict | None) -> object:
    """Return ``value`` without the fields a structural schema does not know (as the API server drops them)."""
    if not schema or schema.get("x-kubernetes-preserve-unknown-fields") and "properties" not in schema:
        return value
    if isinstance(value, dict):
        properties, additional = schema.get("properties"), schema.get("additionalProperties")
        if properties is None and not isinstance(additional, dict):
            return value if schema.get("type") != "object" else {}
        kept = {}
        for key, item in value.items():
            if properties and key in properties:
                kept[key] = prune(item, properties[key])
            elif isinstance(additional, dict):
                kept[key] = prune(item, additional)
            elif schema.get("x-kubernetes-preserve-unknown-fields"):
                kept[key] = item
        return kept
    if isinstance(value, list):
        return [prune(item, schema.get("items")) for item in value]
    return value


@functools.lru_cache(maxsize=None)
def load_crd(crd_file: Path) -> dict:
    """Return a CRD file parsed once per process, with libyaml (the CRDs are megabytes of YAML)."""
    import yaml

    return yaml.load(Path(crd_file).read_text(), Loader=yaml.CSafeLoader)


def crd_schema(crd_file: Path) -> dict:
    """Return the v1beta1 openAPIV3Schema of an InferenceService CRD file."""
    crd = load_crd(Path(crd_file))
    return copy.deepcopy(next(version for version in crd["spec"]["versions"] if version["name"] == "v1beta1")["schema"]["openAPIV3Schema"])


def selector_matches(labels: dict, selector: str) -> bool:
    """Return whether ``labels`` satisfy an equality-based label selector (``a=b,c!=d,e,!f``)."""
    for term in filter(None, (part.strip() for part in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def webhook_errors(new: dict, old: dict | None) -> str | None:
    """Return what KServe 0.20's validating webhook refuses in ``new`` (``old`` on update), or None."""
    name = new["metadata"]["name"]
    if not DNS_1035.match(name):
        return f"the InferenceService \"{name}\" is invalid: a DNS-1035 label must consist of lower case alphanumeric characters or '-'"
    annotation = new["metadata"].get("annotations", {}).get(MODE_KEY)
    if old is not None:
        status_mode = old.get("status", {}).get("deploymentMode")
        if status_mode and annotation is not None and annotation != NORMALIZED.get(status_mode, status_mode):
            return f"update rejected: deploymentMode cannot be changed from '{NORMALIZED.get(status_mode, status_mode)}' to '{annotation}'"
        old_predictor, new_predictor = old["spec"]["predictor"], new["spec"]["predictor"]
        if old_predictor.get("name") != new_predictor.get("name") and \
                old_predictor.get("model", {}).get("storageUri") == new_predictor.get("model", {}).get("storageUri"):
            return "predictor.name change requires a model change (e.g. storageUri)"
    canaries = new["spec"].get("canary") or []
    if not canaries:
        return None
    if annotation != "Standard":
        return "canary is only supported in Standard deployment mode"
    names, total = set(), 0
    for number, canary in enumerate(canaries):
        predictor = canary.get("predictor", {})
        canary_name = predictor.get("name", "")
        if not canary_name:
            return f"canary[{number}] predictor.name is required"
        if canary_name in names:
            return f"canary predictor.name {canary_name!r} is duplicated"
        names.add(canary_name)
        if canary_name == new["spec"]["predictor"].get("name"):
            return f"canary predictor.name {canary_name!r} conflicts with stable predictor name"
        percent = canary.get("trafficPercent", 0)
        if not 0 <= percent <= 100:
            return f"canary {canary_name!r} trafficPercent must be between 0 and 100, got {percent}"
        total += percent
        for forbidden in ("workerSpec", "maxReplicas", "scaleTarget", "scaleMetric", "autoScaling"):
            if forbidden in predictor:
                return f"canary {canary_name!r} must not set {forbidden}"
    if total > 100:
        return f"sum of canary trafficPercent values ({total}) must be <= 100"
    return None


def forwarding_proxy(resolve: Callable[[str], int | None]) -> type[BaseHTTPRequestHandler]:
    """Return an HTTP proxy handler that forwards a request for ``http://<host>/...`` to the loopback port ``resolve(host)``."""

    class Network(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _forward(self) -> None:
            target = urllib.parse.urlparse(self.path)
            port = resolve(target.hostname or "")
            if port is None:
                self.send_error(502, f"no Service answers at {target.hostname}")
                return
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length) if length else None
            request = urllib.request.Request(f"http://127.0.0.1:{port}{target.path}" + (f"?{target.query}" if target.query else ""),
                                             data=data, method=self.command,
                                             headers={k: v for k, v in self.headers.items() if k.lower() not in ("host", "proxy-connection")})
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            try:
                with opener.open(request, timeout=30) as response:
                    code, headers, payload = response.status, response.headers, response.read()
            except urllib.error.HTTPError as error:
                code, headers, payload = error.code, error.headers, error.read()
            except OSError as error:
                self.send_error(503, f"Service {target.hostname}: {error}")
                return
            self.send_response(code)
            for key, value in headers.items():
                if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _forward

    return Network


class LoopbackCluster:
    """What the stand-ins share: an API server, a cluster-network proxy and a control loop on 127.0.0.1, and the
    kubeconfig and environment a client process reaches them with. Subclasses set ``server``, ``url`` and ``_stop``."""

    context = "standin"  # the kubeconfig's cluster, user and context name; its token is "<context>-token"
    namespace = "self-healing-platform"  # the kubeconfig context's namespace

    def _serve(self, network_handler: type[BaseHTTPRequestHandler]) -> None:
        """Start the API server, the cluster-network proxy (``network_handler``) and ``_control_loop``, each on a thread."""
        self.network = ThreadingHTTPServer(("127.0.0.1", 0), network_handler)
        self.network_proxy = f"http://127.0.0.1:{self.network.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        threading.Thread(target=self.network.serve_forever, daemon=True).start()
        threading.Thread(target=self._control_loop, daemon=True).start()

    def _shut_down(self) -> None:
        """Stop the control loop and both servers."""
        self._stop.set()
        self.server.shutdown()
        self.network.shutdown()

    def client_env(self, kubeconfig: Path) -> dict[str, str]:
        """Return the environment a client process needs: the kubeconfig and the cluster network for Service names."""
        return {"KUBECONFIG": str(kubeconfig), "HTTP_PROXY": self.network_proxy, "http_proxy": self.network_proxy,
                "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}

    def write_kubeconfig(self, path: Path, namespace: str | None = None) -> Path:
        """Write a kubeconfig for this API server (context namespace ``namespace``, else the class's) and return its path."""
        name = self.context
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": name,
            "clusters": [{"name": name, "cluster": {"server": self.url}}],
            "users": [{"name": name, "user": {"token": f"{name}-token"}}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": namespace or self.namespace}}],
        }
        path.write_text(json.dumps(config))
        return path


class KubeStandIn(LoopbackCluster):
    """The API server, its objects and the KServe-like controller."""

    def __init__(self, store_root: Path, work: Path, *, ready_delay_s: float = 0.1, kserve: str = "0.15",
                 crd_file: Path | None = None, observed_generation: str = "deployment", registry: RegistryAccess | None = None) -> None:
        self.store_root, self.work = Path(store_root), Path(work)
        self.launcher = shared_launcher()  # forks each revision's model server, warm
        self.log_prefix = f"cluster{next(CLUSTER_NUMBERS)}-"  # this stand-in's runtime logs in the launcher's logs/
        self.ready_delay_s, self.kserve = ready_delay_s, kserve
        if observed_generation not in OBSERVED_GENERATION:
            raise ValueError(f"observed_generation must be one of {list(OBSERVED_GENERATION)}; got {observed_generation!r}")
        self.observed_generation = observed_generation
        self.default_mode = "Standard" if kserve == "0.20" else "Serverless"
        self.schema = crd_schema(crd_file) if crd_file else None
        self.services: dict[str, int] = {}
        self.other_writer: dict[str, dict] = {}
        self.conflicts = 0
        self.objects: dict[tuple[str, str], dict] = {}
        self.runtime: dict[tuple[str, str], dict] = {}
        self.requests: list[tuple[str, str, str]] = []
        self.writes: list[dict] = []
        self.faults: list[tuple[str, int, Callable[[dict | None], bool]]] = []
        self.failing_revisions = ""  # when set, every predictor revision started from now on fails with this message
        self.failing_model = ""  # when set, only that model's revisions (its own InferenceService and its candidate's) fail
        self.unschedulable = ""  # when set, every predictor pod started from now on stays Pending with this message
        self.held: set[str] = set()  # InferenceService names the controller leaves unreconciled for now (a slow controller)
        self.paused: set[str] = set()  # names held at KServe's first status for a new spec: no new pod starts
        self.lock = threading.RLock()
        self.resource_version = 100
        self._stop = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # The Model Registry's InferenceService controller (odh-model-controller), only when a test gives it a registry.
        self.registry_controller = InferenceServiceRegistryController(self, registry) if registry else None

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> "KubeStandIn":
        self._serve(self._network_handler())
        if self.registry_controller:
            self.registry_controller.start(self._stop)
        return self

    def stop(self) -> None:
        self._shut_down()
        with self.lock:
            for state in self.runtime.values():
                self._stop_runtime(state)
            self.runtime.clear()

    def inject(self, method: str, status: int, when: Callable[[dict | None], bool] = lambda body: True) -> None:
        """Answer the next ``method`` request whose body satisfies ``when`` with ``status`` (once)."""
        with self.lock:
            self.faults.append((method, status, when))

    def change_before_next_patch(self, name: str, patch: dict) -> None:
        """Apply ``patch`` as another writer would, between the client's GET of ``name`` and its next PATCH (once)."""
        with self.lock:
            self.other_writer[name] = patch

    def get(self, namespace: str, name: str) -> dict | None:
        with self.lock:
            found = self.objects.get((namespace, name))
            return copy.deepcopy(found) if found else None

    # -- HTTP ---------------------------------------------------------------------------------------------------
    def _handler(self):
        standin = self

        class Handler(JsonHandler):

            def _status(self, code: int, reason: str, message: str) -> None:
                self._send(*standin._failure(code, reason, message))

            def _dispatch(self, method: str) -> None:
                parsed = urllib.parse.urlparse(self.path)
                query = urllib.parse.parse_qs(parsed.query)
                standin.requests.append((method, parsed.path, parsed.query))
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with standin.lock:
                    fault = next((f for f in standin.faults if f[0] == method and f[2](body)), None)
                    if fault:
                        standin.faults.remove(fault)
                if fault:
                    reason = {409: "Conflict", 429: "TooManyRequests"}.get(fault[1], "InternalError")
                    return self._status(fault[1], reason, f"injected {fault[1]}")
                match = ISVC_PATH.match(parsed.path)
                if not match:
                    return self._status(404, "NotFound", f"the server could not find the requested resource {parsed.path}")
                if method == "PUT":
                    return self._status(403, "Forbidden", 'inferenceservices.serving.kserve.io is forbidden: User "system:serviceaccount:pipeline-runner" cannot update resource "inferenceservices"')
                if query.get("watch", ["false"])[0].lower() in ("true", "1", "t"):
                    return self._status(403, "Forbidden", 'inferenceservices.serving.kserve.io is forbidden: User "system:serviceaccount:pipeline-runner" cannot watch resource "inferenceservices"')
                namespace, name = match.groups()
                if method == "PATCH" and self.headers.get("Content-Type") != "application/merge-patch+json":
                    return self._status(415, "UnsupportedMediaType", f"only merge-patch is served here, got {self.headers.get('Content-Type')}")
                if method == "PATCH":
                    standin._other_writer_first(namespace, name)
                code, answer = standin.handle(method, namespace, name, body, query.get("labelSelector", [""])[0])
                self._send(code, answer)

        return Handler

    def _network_handler(self):
        """Return a forwarding proxy handler: ``http://<service>.<ns>.svc.cluster.local/...`` reaches that Service."""
        return forwarding_proxy(lambda host: self.services.get(host))

    def _failure(self, code: int, reason: str, message: str) -> tuple[int, dict]:
        return code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason, "code": code}

    def _other_writer_first(self, namespace: str, name: str) -> None:
        with self.lock:
            patch = self.other_writer.pop(name, None)
            if patch is not None and (namespace, name) in self.objects:
                self.handle("PATCH", namespace, name, copy.deepcopy(patch))

    def _admit(self, obj: dict, old: dict | None) -> tuple[dict, tuple[int, str] | None]:
        """Return the object as stored (pruned against the CRD) and (code, reason) if the schema or webhook refuses it."""
        if self.schema:
            import jsonschema

            spec_schema = self.schema["properties"]["spec"]
            obj = {**obj, "spec": prune(obj.get("spec", {}), spec_schema)}
            invalid = [f"spec.{'.'.join(map(str, error.path))}: {error.message}" for error in jsonschema.Draft7Validator(spec_schema).iter_errors(obj["spec"])]
            if invalid:
                return obj, (422, f'InferenceService.serving.kserve.io "{obj["metadata"]["name"]}" is invalid: {"; ".join(invalid)}')
        refused = webhook_errors(obj, old) if self.kserve == "0.20" else None
        if refused:
            return obj, (403, f'admission webhook "inferenceservice.kserve-webhook-server.validator" denied the request: {refused}')
        return obj, None

    def handle(self, method: str, namespace: str, name: str | None, body: dict | None, selector: str = "") -> tuple[int, dict]:
        """Apply one API request to the object store and return (HTTP code, body)."""
        with self.lock:
            key = (namespace, name)
            current = self.objects.get(key)
            if method == "GET" and name is None:
                items = [copy.deepcopy(o) for (ns, _), o in self.objects.items()
                         if ns == namespace and selector_matches(o["metadata"].get("labels", {}), selector)]
                return 200, {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceServiceList", "items": items,
                             "metadata": {"resourceVersion": str(self.resource_version)}}
            if method == "POST":
                metadata = body.get("metadata", {})
                name = metadata.get("name", "")
                if metadata.get("resourceVersion"):
                    return self._failure(400, "BadRequest", "resourceVersion should not be set on objects to be created")
                if metadata.get("namespace", namespace) != namespace:
                    return self._failure(400, "BadRequest", "the namespace of the provided object does not match the namespace sent on the request")
                if (namespace, name) in self.objects:
                    return self._failure(409, "AlreadyExists", f'inferenceservices.serving.kserve.io "{name}" already exists')
                created, refused = self._admit(copy.deepcopy(body), None)
                if refused:
                    return self._failure(refused[0], "Invalid" if refused[0] == 422 else "Forbidden", refused[1])
                created.pop("status", None)
                self.resource_version += 1
                created["metadata"].update(namespace=namespace, generation=1, resourceVersion=str(self.resource_version),
                                           uid=f"uid-{name}-{self.resource_version}", creationTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
                created["status"] = {}
                self.objects[(namespace, name)] = created
                self.writes.append(copy.deepcopy(created))
                return 201, copy.deepcopy(created)
            if current is None:
                return self._failure(404, "NotFound", f'inferenceservices.serving.kserve.io "{name}" not found')
            if method == "GET":
                return 200, copy.deepcopy(current)
            if method == "DELETE":
                preconditions = (body or {}).get("preconditions") or {}
                for field in ("uid", "resourceVersion"):
                    if preconditions.get(field) and preconditions[field] != current["metadata"][field]:
                        return self._failure(409, "Conflict", f"Precondition failed: {field} in precondition: {preconditions[field]}, "
                                                              f"{field} in object meta: {current['metadata'][field]}")
                if current["metadata"].get("finalizers"):  # Kubernetes marks it and waits for its finalizers' controllers
                    if not current["metadata"].get("deletionTimestamp"):
                        self.resource_version += 1
                        current["metadata"].update(deletionTimestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                                   resourceVersion=str(self.resource_version))
                    return 200, copy.deepcopy(current)
                self._remove(key)
                return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}
            if method == "PATCH":
                metadata = body.get("metadata") or {}
                expected = metadata.get("resourceVersion")
                if expected and expected != current["metadata"]["resourceVersion"]:
                    self.conflicts += 1
                    return self._failure(409, "Conflict", f'Operation cannot be fulfilled on inferenceservices.serving.kserve.io "{name}": the object has been modified; please apply your changes to the latest version and try again')
                if metadata.get("name", name) != name:
                    return self._failure(400, "BadRequest", f'the name of the object ({metadata["name"]}) does not match the name on the URL ({name})')
                if metadata.get("uid", current["metadata"]["uid"]) != current["metadata"]["uid"]:
                    return self._failure(422, "Invalid", f'InferenceService.serving.kserve.io "{name}" is invalid: metadata.uid: Invalid value: "{metadata["uid"]}": field is immutable')
                patch = {k: v for k, v in body.items() if k != "status"}
                updated, refused = self._admit(merge_patch(current, patch), current)
                if refused:
                    return self._failure(refused[0], "Invalid" if refused[0] == 422 else "Forbidden", refused[1])
                for field in SERVER_MANAGED:
                    updated["metadata"][field] = current["metadata"][field]
                updated["metadata"].pop("deletionTimestamp", None)
                if current["metadata"].get("deletionTimestamp"):
                    updated["metadata"]["deletionTimestamp"] = current["metadata"]["deletionTimestamp"]
                    if not updated["metadata"].get("finalizers"):  # the last finalizer removed: the object goes
                        self._remove(key)
                        return 200, copy.deepcopy(updated)
                self.resource_version += 1
                updated["metadata"]["resourceVersion"] = str(self.resource_version)
                if updated.get("spec") != current.get("spec"):
                    updated["metadata"]["generation"] = current["metadata"]["generation"] + 1
                self.objects[key] = updated
                self.writes.append(copy.deepcopy(updated))
                return 200, copy.deepcopy(updated)
            return self._failure(405, "MethodNotAllowed", method)

    def _remove(self, key: tuple[str, str]) -> None:
        """Drop an object and stop its runtime."""
        del self.objects[key]
        state = self.runtime.pop(key, None)
        if state:
            threading.Thread(target=self._stop_runtime, args=(state,), daemon=True).start()

    # -- the KServe-like controller ------------------------------------------------------------------------------
    def _control_loop(self) -> None:
        busy: set[tuple[str, str]] = set()
        while not self._stop.is_set():
            with self.lock:
                pending = [key for key, obj in self.objects.items()
                           if (self.runtime.get(key, {}).get("reconciled") != obj["metadata"]["generation"]
                               or self.runtime.get(key, {}).get("pending") and not self.unschedulable)
                           and key not in busy and key[1] not in self.held]
            for key in pending:
                busy.add(key)
                threading.Thread(target=self._reconcile, args=(key, busy), daemon=True).start()
            time.sleep(0.05)

    def _reconcile(self, key: tuple[str, str], busy: set) -> None:
        try:
            time.sleep(self.ready_delay_s)
            with self.lock:
                obj = copy.deepcopy(self.objects.get(key))
                state = self.runtime.setdefault(key, {"revisions": [], "rolled": None, "previous": None, "router": None})
            if obj is None:
                return
            name = key[1]
            generation = obj["metadata"]["generation"]
            written_mode = obj["metadata"].get("annotations", {}).get(MODE_KEY, self.default_mode)
            mode = NORMALIZED.get(written_mode, written_mode) if self.kserve == "0.20" else written_mode
            predictor = obj["spec"]["predictor"]
            if mode in ("Serverless", "Knative"):
                self._first_knative_status(key, generation)
            if name in self.paused:
                return
            revision, failure = self._revision(name, state, generation, {k: v for k, v in predictor.items() if k != "canaryTrafficPercent"},
                                               knative=mode in ("Serverless", "Knative"))
            canaries = []
            for entry in obj["spec"].get("canary") or [] if self.kserve == "0.20" else []:
                merged = merge_patch(predictor, entry["predictor"])
                canary_revision, canary_failure = self._revision(name, state, generation, merged)
                canaries.append((entry, canary_revision))
                failure = failure or canary_failure
            pending = next((r["pending"] for r in [revision, *(r for _, r in canaries)] if r.get("pending")), "")
            self._ensure_router(name, state)
            with self.lock:
                current = self.objects.get(key)
                if current is None or current["metadata"]["generation"] != generation:
                    return
                status = current.setdefault("status", {})
                status["deploymentMode"] = mode
                state["reconciled"] = generation
                status["observedGeneration"] = generation if self.observed_generation == "inferenceservice" else \
                    self._child_generation(state, mode, predictor)
                state["pending"] = bool(pending) and not failure
                self.resource_version += 1  # every status write is a write: it moves resourceVersion
                current["metadata"]["resourceVersion"] = str(self.resource_version)
                if (failure or pending) and mode in ("Serverless", "Knative"):  # Knative names a revision once created, ready or not
                    status.setdefault("components", {}).setdefault("predictor", {})["latestCreatedRevision"] = revision["name"]
                if failure:
                    status["conditions"] = [
                        {"type": "IngressReady", "status": "True"},
                        {"type": "PredictorReady", "status": "False", "reason": "RevisionFailed", "message": failure},
                        {"type": "Ready", "status": "False", "reason": "RevisionFailed", "message": failure},
                    ]
                    status["modelStatus"] = {"transitionStatus": "BlockedByFailedLoad", "modelRevisionStates": {"targetModelState": "FailedToLoad"},
                                             "lastFailureInfo": {"reason": "ModelLoadFailed", "message": failure}}
                    return
                if pending:
                    if mode in ("Standard", "RawDeployment") and state["rolled"]:  # the old ReplicaSet keeps the Deployment Available
                        status["conditions"] = [{"type": "IngressReady", "status": "True"},
                                                {"type": "PredictorReady", "status": "True", "reason": "MinimumReplicasAvailable",
                                                 "message": "Deployment has minimum availability."},
                                                {"type": "Ready", "status": "True"}]
                        status["modelStatus"] = copy.deepcopy(LOADED_MODEL_STATUS)
                    else:
                        unavailable = {"status": "False", "reason": "MinimumReplicasUnavailable", "message": f"Deployment does not have minimum availability. ({pending})"}
                        status["conditions"] = [{"type": "IngressReady", "status": "True"}, {"type": "PredictorReady", **unavailable}, {"type": "Ready", **unavailable}]
                        status["modelStatus"] = {"transitionStatus": "InProgress", "modelRevisionStates": {"targetModelState": "Pending"}}
                    return
                if mode in ("Serverless", "Knative"):
                    self._route(name, state, revision, predictor.get("canaryTrafficPercent"), status)
                else:
                    self._route_standard(name, key[0], state, revision, predictor.get("name"), canaries, status)
                status["conditions"] = [{"type": kind, "status": "True"} for kind in ("IngressReady", "PredictorReady", "Ready")]
                if canaries:
                    status["conditions"].append({"type": "CanaryPredictorReady", "status": "True", "reason": "AllCanariesReady"})
                status["modelStatus"] = copy.deepcopy(LOADED_MODEL_STATUS)
                status["url"] = f"http://127.0.0.1:{state['router']['port']}"
        finally:
            busy.discard(key)

    def _first_knative_status(self, key: tuple[str, str], generation: int) -> None:
        """Write the status KServe propagates from the Knative Service its update answered: the previous one, unchanged,
        but for ``observedGeneration``, the new generation with PR 6096 (``updateStatus`` sets it on every path)."""
        with self.lock:
            current = self.objects.get(key)
            if current is None or current["metadata"]["generation"] != generation or not current.get("status", {}).get("conditions"):
                return
            if self.observed_generation == "inferenceservice" and current["status"].get("observedGeneration") != generation:
                current["status"]["observedGeneration"] = generation
                self.resource_version += 1
                current["metadata"]["resourceVersion"] = str(self.resource_version)

    @staticmethod
    def _child_generation(state: dict, mode: str, predictor: dict) -> int:
        """Return the observedGeneration of the child KServe copies (the stable predictor's Deployment in Standard mode, the
        Knative Service in Knative mode), counting a change of its spec since the last reconcile."""
        spec = json.dumps(predictor if mode in ("Serverless", "Knative") else
                          {k: v for k, v in predictor.items() if k != "canaryTrafficPercent"}, sort_keys=True)
        if state.get("child_spec") != spec:
            state["child_spec"], state["child_generation"] = spec, state.get("child_generation", 0) + 1
        return state["child_generation"]

    def _revision(self, name: str, state: dict, generation: int, predictor: dict, knative: bool = False) -> tuple[dict, str | None]:
        """Return the ready revision serving ``predictor`` (started if new) and its failure, if any.

        A Deployment takes back the ReplicaSet of an identical pod template; Knative makes a new revision for every change of
        the template, even back to an older revision's, so in Knative mode only the latest revision is kept when it is unchanged.
        """
        template = json.dumps(predictor, sort_keys=True)
        reusable = state["revisions"][-1:] if knative else state["revisions"]
        revision = next((r for r in reusable if r["template"] == template and r.get("ready")), None)
        if revision is not None:
            return revision, None
        waiting = next((r for r in state["revisions"] if r["template"] == template and r.get("pending")), None)
        if waiting is not None:
            if self.unschedulable:
                return waiting, None
            state["revisions"].remove(waiting)  # the scheduler found room: the pod starts
        revision = self._start_revision(name, f"{generation:05d}-{len(state['revisions'])}", predictor, template)
        state["revisions"].append(revision)
        return revision, revision.get("failure")

    def _write_routes(self, state: dict, routes: dict) -> None:
        temporary = state["router"]["routes"].with_suffix(".tmp")
        temporary.write_text(json.dumps(routes))
        temporary.replace(state["router"]["routes"])

    def _retire(self, state: dict, keep: set[str]) -> None:
        """Stop the processes of revisions no longer routed to (after the new routes are written)."""
        for revision in state["revisions"]:
            if revision["name"] not in keep and revision.get("pid") and not revision.get("retired"):
                revision["retired"] = True
                threading.Thread(target=stop_process, args=(revision["pid"],), daemon=True).start()
        state["revisions"] = [revision for revision in state["revisions"] if not revision.get("retired")]

    def _route_standard(self, name: str, namespace: str, state: dict, stable: dict, predictor_name: str | None,
                        canaries: list[tuple[dict, dict]], status: dict) -> None:
        """Standard mode: stable takes what the canaries do not; each predictor gets its own Service."""
        routes = {"stable": {"version": stable["name"], "port": stable["port"]}, "candidate": None, "candidate_percent": 0}
        if canaries:
            entry, revision = canaries[0]
            routes.update(candidate={"version": revision["name"], "port": revision["port"]}, candidate_percent=int(entry.get("trafficPercent", 0)))
        self._write_routes(state, routes)
        stable_service = f"{name}-{predictor_name}-predictor" if predictor_name else f"{name}-predictor"
        services = {stable_service: stable["port"]}
        services.update({f"{name}-{entry['predictor']['name']}-predictor": revision["port"] for entry, revision in canaries})
        suffix = f".{namespace}.svc.cluster.local"
        for host in [host for host in self.services if host.startswith(f"{name}-") and host.endswith(suffix)]:
            del self.services[host]
        self.services.update({service + suffix: port for service, port in services.items()})
        self._retire(state, {stable["name"], *(revision["name"] for _, revision in canaries)})
        state["rolled"] = stable["name"]
        status["components"] = {"predictor": {"url": f"http://{stable_service}{suffix}"}}  # PropagateRawStatus: the URL alone
        if canaries:
            status["canaryStatuses"] = [{"name": entry["predictor"]["name"], "ready": True, "trafficPercent": int(entry.get("trafficPercent", 0))}
                                        for entry, _ in canaries]
        else:
            status.pop("canaryStatuses", None)

    def _start_revision(self, name: str, suffix: str, predictor: dict, template: str) -> dict:
        revision = {"name": f"{name}-predictor-{suffix}", "template": template}
        if self.failing_revisions and self.failing_model in ("", name.removesuffix("-candidate")):
            revision["failure"] = self.failing_revisions
            return revision
        if self.unschedulable:
            revision["pending"] = self.unschedulable
            return revision
        uri = predictor["model"]["storageUri"]
        if not uri.startswith("pvc://"):
            revision["failure"] = f"storage initializer: unsupported storageUri {uri}"
            return revision
        pvc, _, path = uri.removeprefix("pvc://").partition("/")
        model_dir = self.store_root / pvc / path  # store_root holds one directory per PVC
        env = {item["name"]: item.get("value", "") for item in predictor["model"].get("env", [])}
        # A predictor without the project's MODEL_SHA256 stands for the stock runtime, which checks nothing: the
        # stand-in hands the project's runtime the file's own checksum so that it serves whatever is there.
        checksum = env.get("MODEL_SHA256") or next(
            (hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(model_dir.glob("*.pkl"))), "")
        # The runtime's --name={{.Name}} is the InferenceService's name, and KServe appends the predictor's args after the runtime's.
        model = next((arg.partition("=")[2] for arg in reversed(predictor["model"].get("args", [])) if arg.startswith(("--name=", "--model_name="))), name)
        try:
            pid, port = start_listening(
                lambda port: self.launcher.spawn(["--name", model, "--version", env.get("MODEL_VERSION") or revision["name"], "--model-dir", str(model_dir),
                                                  "--port", str(port), "--sha256", checksum], self.log_prefix + revision["name"],
                                                 {name: value for name, value in env.items() if name in RUNTIME_ENVIRONMENT}),
                lambda: log_tail(self.launcher.home / "logs" / f"{self.log_prefix}{revision['name']}.log"), "container",
                lambda port: http_get(f"http://127.0.0.1:{port}/v1/models/{model}", timeout=1.0)[0] == 200, timeout_s=90)
        except ServingError as error:
            revision["failure"] = str(error)
            return revision
        revision.update(pid=pid, port=port, url=f"http://127.0.0.1:{port}", ready=True)
        return revision

    def _ensure_router(self, name: str, state: dict) -> None:
        if state["router"] and process_alive(state["router"]["pid"]):
            return
        routes = self.work / f"{name}.routes.json"
        routes.write_text("{}")
        process, port = start_server(
            lambda port: [sys.executable, "-m", "components.runtime.router", "--model", name.removesuffix("-candidate"), "--routes", str(routes), "--port", str(port)],
            self.work / f"{name}-router.log", "the router", lambda port: http_get(f"http://127.0.0.1:{port}/metrics", timeout=1.0)[0] == 200, timeout_s=30)
        state["router"] = {"pid": process.pid, "port": port, "routes": routes}

    def _route(self, name: str, state: dict, latest: dict, canary: int | None, status: dict) -> None:
        """Knative: the latest revision gets ``canaryTrafficPercent`` (all without it); the previous one the rest."""
        by_name = {r["name"]: r for r in state["revisions"]}
        rolled = by_name.get(state["rolled"])
        if canary is not None and rolled and rolled is not latest:
            percent = int(canary)
        else:
            if rolled is not latest:
                state["previous"], state["rolled"] = state["rolled"], latest["name"]
            percent, rolled = 100, latest
        routes = {"stable": {"version": rolled["name"], "port": rolled["port"]}, "candidate": None, "candidate_percent": 0}
        traffic = [{"revisionName": latest["name"], "percent": percent, "latestRevision": True, "tag": "latest", "url": latest["url"]}]
        if rolled is not latest:
            routes.update(candidate={"version": latest["name"], "port": latest["port"]}, candidate_percent=percent)
            traffic.append({"revisionName": rolled["name"], "percent": 100 - percent, "latestRevision": False, "tag": "prev", "url": rolled["url"]})
        elif state["previous"] in by_name:
            previous = by_name[state["previous"]]
            traffic.append({"revisionName": previous["name"], "percent": 0, "latestRevision": False, "tag": "prev", "url": previous["url"]})
        self._write_routes(state, routes)
        status["components"] = {"predictor": {
            "latestCreatedRevision": latest["name"], "latestReadyRevision": latest["name"], "latestRolledoutRevision": rolled["name"],
            "traffic": traffic, "url": status.get("url", ""),
        }}
        if state["previous"]:
            status["components"]["predictor"]["previousRolledoutRevision"] = state["previous"]

    def _stop_runtime(self, state: dict) -> None:
        for revision in state["revisions"]:
            stop_process(revision.get("pid"))
        if state.get("router"):
            stop_process(state["router"]["pid"])
