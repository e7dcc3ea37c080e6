"""A stand-in for a Kubernetes API server with KServe, on 127.0.0.1, for tests the real ``kubernetes`` client drives.

It follows the documented semantics the pipeline depends on: InferenceService create/get/list/merge-patch/delete,
``metadata.generation`` bumped only by spec changes, ``resourceVersion`` on every write and 409 when a write
carries a stale one, 404 and 409 (AlreadyExists) as Status objects, and 403 for PUT (update) and watch, as the
DSP ``pipeline-runner`` role answers. A controller thread plays KServe: after a delay it serves each predictor
revision with the real KServe model server (``components.model_server``) and reports ``observedGeneration``,
conditions, revisions and traffic. Serverless splits traffic by ``canaryTrafficPercent`` through a router whose
URL is ``status.url``; RawDeployment ignores it and rolls the new revision out to all traffic.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import ThreadingHTTPServer
from pathlib import Path

from components.local_serving import free_port, http_get, process_alive, stop_process
from tests.http_json import JsonHandler

ISVC_PATH = re.compile(r"^/apis/serving\.kserve\.io/v1beta1/namespaces/([^/]+)/inferenceservices(?:/([^/]+))?$")


def merge_patch(target: object, patch: object) -> object:
    """Return ``target`` with an RFC 7386 JSON merge patch applied (null removes a key)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class KubeStandIn:
    """The API server, its objects and the KServe-like controller."""

    def __init__(self, store_root: Path, work: Path, *, ready_delay_s: float = 0.1, default_mode: str = "Serverless") -> None:
        self.store_root, self.work = Path(store_root), Path(work)
        self.ready_delay_s, self.default_mode = ready_delay_s, default_mode
        self.objects: dict[tuple[str, str], dict] = {}
        self.runtime: dict[tuple[str, str], dict] = {}
        self.requests: list[tuple[str, str, str]] = []
        self.writes: list[dict] = []
        self.faults: list[tuple[str, int]] = []
        self.lock = threading.RLock()
        self.resource_version = 100
        self._stop = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> "KubeStandIn":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        threading.Thread(target=self._control_loop, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.server.shutdown()
        with self.lock:
            for state in self.runtime.values():
                self._stop_runtime(state)
            self.runtime.clear()

    def write_kubeconfig(self, path: Path, namespace: str = "self-healing-platform") -> Path:
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "standin",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "standin", "user": {"token": "standin-token"}}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "standin", "namespace": namespace}}],
        }
        path.write_text(json.dumps(config))
        return path

    def inject(self, method: str, status: int) -> None:
        """Answer the next ``method`` request with ``status`` (once)."""
        with self.lock:
            self.faults.append((method, status))

    def get(self, namespace: str, name: str) -> dict | None:
        with self.lock:
            found = self.objects.get((namespace, name))
            return copy.deepcopy(found) if found else None

    # -- HTTP ---------------------------------------------------------------------------------------------------
    def _handler(self):
        standin = self

        class Handler(JsonHandler):

            def _status(self, code: int, reason: str, message: str) -> None:
                self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason, "code": code})

            def _dispatch(self, method: str) -> None:
                parsed = urllib.parse.urlparse(self.path)
                query = urllib.parse.parse_qs(parsed.query)
                standin.requests.append((method, parsed.path, parsed.query))
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with standin.lock:
                    fault = next((f for f in standin.faults if f[0] == method), None)
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
                code, answer = standin.handle(method, namespace, name, body)
                self._send(code, answer)






        return Handler

    def _failure(self, code: int, reason: str, message: str) -> tuple[int, dict]:
        return code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason, "code": code}

    def handle(self, method: str, namespace: str, name: str | None, body: dict | None) -> tuple[int, dict]:
        """Apply one API request to the object store and return (HTTP code, body)."""
        with self.lock:
            key = (namespace, name)
            current = self.objects.get(key)
            if method == "GET" and name is None:
                items = [copy.deepcopy(o) for (ns, _), o in self.objects.items() if ns == namespace]
                return 200, {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceServiceList", "items": items}
            if method == "POST":
                name = body["metadata"]["name"]
                if (namespace, name) in self.objects:
                    return self._failure(409, "AlreadyExists", f'inferenceservices.serving.kserve.io "{name}" already exists')
                created = copy.deepcopy(body)
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
                del self.objects[key]
                state = self.runtime.pop(key, None)
                if state:
                    threading.Thread(target=self._stop_runtime, args=(state,), daemon=True).start()
                return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}
            if method == "PATCH":
                expected = (body.get("metadata") or {}).get("resourceVersion")
                if expected and expected != current["metadata"]["resourceVersion"]:
                    return self._failure(409, "Conflict", f'Operation cannot be fulfilled on inferenceservices.serving.kserve.io "{name}": the object has been modified')
                patch = {k: v for k, v in body.items() if k != "status"}
                updated = merge_patch(current, patch)
                self.resource_version += 1
                updated["metadata"]["resourceVersion"] = str(self.resource_version)
                if updated.get("spec") != current.get("spec"):
                    updated["metadata"]["generation"] = current["metadata"]["generation"] + 1
                self.objects[key] = updated
                self.writes.append(copy.deepcopy(updated))
                return 200, copy.deepcopy(updated)
            return self._failure(405, "MethodNotAllowed", method)

    # -- the KServe-like controller ------------------------------------------------------------------------------
    def _control_loop(self) -> None:
        busy: set[tuple[str, str]] = set()
        while not self._stop.is_set():
            with self.lock:
                pending = [key for key, obj in self.objects.items()
                           if obj.get("status", {}).get("observedGeneration") != obj["metadata"]["generation"] and key not in busy]
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
            mode = obj["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode", self.default_mode)
            predictor = obj["spec"]["predictor"]
            template = json.dumps({k: v for k, v in predictor.items() if k != "canaryTrafficPercent"}, sort_keys=True)
            revision = next((r for r in state["revisions"] if r["template"] == template and r.get("ready")), None)
            failure = None
            if revision is None:
                revision = self._start_revision(name, generation, predictor, template)
                state["revisions"].append(revision)
                failure = revision.get("failure")
            self._ensure_router(name, state)
            with self.lock:
                current = self.objects.get(key)
                if current is None or current["metadata"]["generation"] != generation:
                    return
                status = current.setdefault("status", {})
                status["deploymentMode"] = mode
                status["observedGeneration"] = generation
                if failure:
                    status["conditions"] = [
                        {"type": "IngressReady", "status": "True"},
                        {"type": "PredictorReady", "status": "False", "reason": "RevisionFailed", "message": failure},
                        {"type": "Ready", "status": "False", "reason": "RevisionFailed", "message": failure},
                    ]
                    return
                self._route(name, state, revision, predictor.get("canaryTrafficPercent"), mode, status)
                status["conditions"] = [{"type": kind, "status": "True"} for kind in ("IngressReady", "PredictorReady", "Ready")]
                status["url"] = f"http://127.0.0.1:{state['router']['port']}"
                self.resource_version += 1
                current["metadata"]["resourceVersion"] = str(self.resource_version)
        finally:
            busy.discard(key)

    def _start_revision(self, name: str, generation: int, predictor: dict, template: str) -> dict:
        revision = {"name": f"{name}-predictor-{generation:05d}", "template": template}
        uri = predictor["model"]["storageUri"]
        if not uri.startswith("pvc://"):
            revision["failure"] = f"storage initializer: unsupported storageUri {uri}"
            return revision
        model_dir = self.store_root / uri.removeprefix("pvc://").partition("/")[2]
        port = free_port()
        log = self.work / f"{revision['name']}.log"
        with open(log, "ab") as handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "components.model_server", "--name", name.removesuffix("-candidate"), "--version", revision["name"],
                 "--model-dir", str(model_dir), "--port", str(port)],
                stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
            )
        revision.update(pid=process.pid, port=port, url=f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-2:])
                revision["failure"] = f"container exited: {tail}"
                return revision
            if http_get(f"{revision['url']}/v1/models/{name.removesuffix('-candidate')}", timeout=1.0)[0] == 200:
                revision["ready"] = True
                return revision
            time.sleep(0.1)
        stop_process(process.pid)
        revision["failure"] = "container not ready in 90 s"
        return revision

    def _ensure_router(self, name: str, state: dict) -> None:
        if state["router"] and process_alive(state["router"]["pid"]):
            return
        port = free_port()
        routes = self.work / f"{name}.routes.json"
        routes.write_text("{}")
        log = open(self.work / f"{name}-router.log", "ab")
        process = subprocess.Popen([sys.executable, "-m", "components.router", "--model", name.removesuffix("-candidate"),
                                    "--routes", str(routes), "--port", str(port)],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        state["router"] = {"pid": process.pid, "port": port, "routes": routes}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and http_get(f"http://127.0.0.1:{port}/metrics", timeout=1.0)[0] != 200:
            time.sleep(0.1)

    def _route(self, name: str, state: dict, latest: dict, canary: int | None, mode: str, status: dict) -> None:
        by_name = {r["name"]: r for r in state["revisions"]}
        rolled = by_name.get(state["rolled"])
        if mode == "Serverless" and canary is not None and rolled and rolled is not latest:
            percent = int(canary)
        else:
            if rolled is not latest:
                if mode != "Serverless" and rolled:
                    threading.Thread(target=stop_process, args=(rolled.get("pid"),), daemon=True).start()
                state["previous"], state["rolled"] = state["rolled"], latest["name"]
            percent, rolled = 100, latest
        routes = {"stable": {"version": rolled["name"], "port": rolled["port"]}, "candidate": None, "candidate_percent": 0}
        traffic = [{"revisionName": latest["name"], "percent": percent, "latestRevision": True, "tag": "latest", "url": latest["url"]}]
        if rolled is not latest:
            routes.update(candidate={"version": latest["name"], "port": latest["port"]}, candidate_percent=percent)
            traffic.append({"revisionName": rolled["name"], "percent": 100 - percent, "latestRevision": False, "tag": "prev", "url": rolled["url"]})
        elif state["previous"] in by_name and mode == "Serverless":
            previous = by_name[state["previous"]]
            traffic.append({"revisionName": previous["name"], "percent": 0, "latestRevision": False, "tag": "prev", "url": previous["url"]})
        temporary = state["router"]["routes"].with_suffix(".tmp")
        temporary.write_text(json.dumps(routes))
        temporary.replace(state["router"]["routes"])
        status["components"] = {"predictor": {
            "latestCreatedRevision": latest["name"], "latestReadyRevision": latest["name"], "latestRolledoutRevision": rolled["name"],
            "previousRolledoutRevision": state["previous"], "traffic": traffic, "url": status.get("url", ""),
        }}
        if not status["components"]["predictor"]["previousRolledoutRevision"]:
            status["components"]["predictor"].pop("previousRolledoutRevision")
        if mode != "Serverless":
            status["components"]["predictor"]["traffic"] = [{"revisionName": latest["name"], "percent": 100, "latestRevision": True}]

    def _stop_runtime(self, state: dict) -> None:
        for revision in state["revisions"]:
            stop_process(revision.get("pid"))
        if state.get("router"):
            stop_process(state["router"]["pid"])
