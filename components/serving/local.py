"""The local serving target: real KServe model servers and a traffic router as detached processes on 127.0.0.1.

State lives in ``<home>/<model>.json`` (written atomically; the router reads the same file), logs in
``<home>/logs/``, so serving survives the process that started it and ``model-pipelines serve`` can manage it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

from components.files import exclusive_lock, write_json_atomically
from components.model.spec import spec_for
from components.runtime.answers import predictor_environment
from components.runtime.server_launcher import ServerLauncher
from components.runtime.warm_process import log_tail
from components.store.filesystem import MODEL_FILENAME, RECORD_FILENAME
from components.serving.target import Endpoints, ServingError, ServingStatus, model_url

STATE_DIR_ENV = "MODEL_PIPELINES_HOME"
STATE_DIR_NAME = ".model-pipelines"  # under the working directory, when $MODEL_PIPELINES_HOME is unset
STOP_GRACE_S = 5.0
PORT_ATTEMPTS = 3
PORT_TAKEN = "address already in use"  # what a server that lost its port to another process logs
POLL_S = 0.1
SERVER_MODULES = (b"components.runtime.model_server", b"components.runtime.router")
MODEL_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")  # a spec's name is a DNS label, so its state file stays in the directory
PROMETHEUS_TARGETS = "prometheus-targets.json"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_alive(pid: int | None) -> bool:
    """Return whether ``pid`` is a running (not zombie) process, reaping it if it is our exited child."""
    if not pid:
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in {"Z", "X"}


def started_process(entry: dict | None) -> int | None:
    """Return the recorded pid only while /proc shows it is the project's server started on the recorded port.

    A pid from a state file may have been recycled by an unrelated process since; that one is never signalled.
    """
    if not entry or not entry.get("pid"):
        return None
    try:  # a server forked by the launcher shows its command as one title: split on spaces as well as NULs
        words = Path(f"/proc/{entry['pid']}/cmdline").read_bytes().replace(b"\0", b" ").split()
    except OSError:
        return None
    ours = any(word in SERVER_MODULES for word in words)
    port = str(entry.get("port", "")).encode()
    return entry["pid"] if ours and b"--port" in words and words[words.index(b"--port") + 1:][:1] == [port] else None


def listens_on(pid: int, port: int) -> bool:
    """Return whether process ``pid`` holds the socket listening on TCP ``port`` (from /proc), not some other process."""
    try:
        table = Path("/proc/net/tcp").read_text().splitlines()[1:]
        descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    listening = {fields[9] for fields in (line.split() for line in table) if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port}
    for descriptor in descriptors:
        try:
            target = os.readlink(descriptor)
            if target.startswith("socket:[") and target[len("socket:["):-1] in listening:
                return True
        except OSError:
            continue  # closed since it was listed: a busy server opens and closes connections all the time
    return False


def start_listening(spawn: Callable[[int], int], read_log: Callable[[], str], what: str, ready: Callable[[int], bool],
                    timeout_s: float, port: int | None = None) -> tuple[int, int]:
    """Start a server with ``spawn(port)`` on ``port`` (else a free one) and wait until it listens and is ready; return (pid, port).

    Another process may take a free port before the server binds it: only the spawned pid's own listening socket counts,
    and a server that lost its port (``read_log()`` shows PORT_TAKEN) is started again on another, up to PORT_ATTEMPTS times.
    """
    deadline = time.monotonic() + timeout_s
    port = port or free_port()
    for _attempt in range(PORT_ATTEMPTS):
        pid = spawn(port)
        while time.monotonic() < deadline:
            if not process_alive(pid):
                if PORT_TAKEN in read_log().lower():
                    break
                raise ServingError(f"{what} did not start: {read_log()}")
            if listens_on(pid, port) and ready(port):
                return pid, port
            time.sleep(POLL_S)
        else:
            stop_process(pid)
            raise ServingError(f"{what} was not ready within {timeout_s:g} s: {read_log()}")
        port = free_port()
    raise ServingError(f"{what} did not start: another process took its port {PORT_ATTEMPTS} times: {read_log()}")


def stop_process(pid: int | None) -> None:
    """Terminate ``pid`` gracefully (in-flight requests finish), killing it after STOP_GRACE_S."""
    if not process_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline and process_alive(pid):
        time.sleep(POLL_S)
    if process_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def http_get(url: str, timeout: float = 2.0, max_bytes: int = 65536) -> tuple[int, bytes]:
    """Return (status, at most ``max_bytes`` of the body) of a GET, with status 0 when nothing answers.

    A new opener per call reads the proxy settings from the environment as it is now (``urlopen`` keeps the first ones).
    """
    try:
        with urllib.request.build_opener().open(url, timeout=timeout) as response:
            return response.status, response.read(max_bytes)
    except urllib.error.HTTPError as error:
        return error.code, error.read(max_bytes)
    except (urllib.error.URLError, OSError):
        return 0, b""


class LocalTarget:
    """Serves models from the local store with the KServe model server, one process per version."""

    strict_client_errors = True

    def __init__(self, home: str | Path, store_root: str | Path, s3_store=None) -> None:
        """Use ``home`` for serving state and logs, ``store_root`` for pvc:// URIs and ``s3_store`` to fetch s3:// ones."""
        self.home = Path(home)
        self.store_root = Path(store_root)
        self.s3_store = s3_store

    @functools.cached_property
    def launcher(self) -> ServerLauncher:
        """Return the warm launcher that forks this directory's model servers."""
        return ServerLauncher(self.home)

    # -- state ---------------------------------------------------------------------------------------------
    def _state_path(self, model_name: str) -> Path:
        if not MODEL_NAME.match(model_name):
            raise ServingError(f"{model_name!r} is not a model name: a spec's name is a DNS label (lower-case letters, digits and '-')")
        return self.home / f"{model_name}.json"

    def _read(self, model_name: str) -> dict:
        path = self._state_path(model_name)
        if not path.is_file():
            return {"model": model_name, "router": None, "stable": None, "candidate": None, "candidate_percent": 0}
        return json.loads(path.read_text())

    def _write(self, model_name: str, state: dict) -> None:
        write_json_atomically(self._state_path(model_name), state)
        self._write_prometheus_targets()

    def _write_prometheus_targets(self) -> None:
        """Write ``prometheus-targets.json`` (file_sd) listing every model server with its model and version labels."""
        groups = []
        for model_name in self.served_models():
            state = self._read(model_name)
            for role in ("stable", "candidate"):
                backend = state.get(role)
                if backend:
                    groups.append({"targets": [f"127.0.0.1:{backend['port']}"],
                                   "labels": {"model_name": state["model"], "model_version": backend["version"], "role": role}})
        write_json_atomically(self.home / PROMETHEUS_TARGETS, groups)

    @contextlib.contextmanager
    def _locked(self, model_name: str) -> Iterator[dict]:
        """Yield the model's state under an exclusive lock; the caller writes it back explicitly."""
        with exclusive_lock(self.home / f".{model_name}.lock"):
            yield self._read(model_name)

    # -- processes -----------------------------------------------------------------------------------------
    def _spawn(self, arguments: list[str], log_name: str) -> int:
        """Start a detached Python module process logging to ``logs/<log_name>.log`` and return its pid."""
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{log_name}.log", "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", *arguments], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True,
            )
        return process.pid

    def _log_tail(self, log_name: str) -> str:
        return log_tail(self.home / "logs" / f"{log_name}.log")

    def _local_path(self, storage_uri: str) -> Path:
        """Return a directory holding the version: the local store for pvc://, a verified download for s3://.

        Like KServe's storage initializer, s3:// versions are copied to local disk before the server starts.
        """
        if storage_uri.startswith("pvc://"):
            return self.store_root / storage_uri.removeprefix("pvc://").partition("/")[2]
        if storage_uri.startswith("s3://") and self.s3_store is not None:
            model_name, version = storage_uri.rstrip("/").rsplit("/", 2)[-2:]
            directory = self.home / "downloads" / model_name / version
            directory.mkdir(parents=True, exist_ok=True)
            try:
                (directory / MODEL_FILENAME).write_bytes(self.s3_store.model_bytes(model_name, version))
                (directory / RECORD_FILENAME).write_text(json.dumps(self.s3_store.version_record(model_name, version)))
            except RuntimeError as error:
                raise ServingError(f"cannot fetch {storage_uri}: {error}") from error
            return directory
        raise ServingError(f"the local target cannot fetch {storage_uri!r}: it serves pvc:// from the local store and s3:// from the S3 store")

    def _start_version(self, model_name: str, version: str, storage_uri: str, checksum: str, timeout_s: float) -> dict:
        """Start a model server for one version, with its spec's predictor environment, and wait until it reports ready; return
        its backend entry."""
        environment = predictor_environment(spec_for(model_name))
        model_dir = self._local_path(storage_uri)
        if not model_dir.is_dir():
            raise ServingError(f"{storage_uri} does not exist at {model_dir}; was the version saved to this store?")

        def ready(port: int) -> bool:
            status, body = http_get(model_url(f"http://127.0.0.1:{port}", model_name), timeout=1.0)
            return status == 200 and bool(json.loads(body or b"{}").get("ready"))

        log_name = f"{model_name}-{version}"
        pid, port = self._start_listening(
            lambda port: self.launcher.spawn(["--name", model_name, "--version", version, "--model-dir", str(model_dir),
                                              "--sha256", checksum, "--port", str(port)], log_name, environment),
            log_name, f"{model_name} {version}", ready, timeout_s,
        )
        return {"version": version, "pid": pid, "port": port, "storage_uri": storage_uri, "checksum": checksum}

    def _ensure_router(self, model_name: str, state: dict, timeout_s: float) -> None:
        """Start the model's router if it is not running, on its previous port when that is free."""
        router = state.get("router") or {}
        if process_alive(started_process(router)):
            return
        port = router.get("port") or free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                port = free_port()
        pid, port = self._start_listening(
            lambda port: self._spawn(["components.runtime.router", "--model", model_name, "--routes", str(self._state_path(model_name)), "--port", str(port)],
                                     f"{model_name}-router"),
            f"{model_name}-router", f"the {model_name} router",
            lambda port: http_get(f"http://127.0.0.1:{port}/metrics", timeout=1.0)[0] == 200, timeout_s, port,
        )
        state["router"] = {"pid": pid, "port": port}

    def _start_listening(self, spawn: Callable[[int], int], log_name: str, what: str, ready: Callable[[int], bool],
                         timeout_s: float, port: int | None = None) -> tuple[int, int]:
        """Start a server with ``spawn(port)``, logging to ``logs/<log_name>.log``, as ``start_listening`` does; return (pid, port)."""
        return start_listening(spawn, lambda: self._log_tail(log_name), what, ready, timeout_s, port)

    # -- the ServingTarget interface ---------------------------------------------------------------------------
    def deploy(self, model_name: str, version: str, storage_uri: str, checksum: str, timeout_s: float) -> ServingStatus:
        """Serve ``version``: as stable when nothing serves yet, else as the candidate at 0 % traffic (stable's own: restart it)."""
        with self._locked(model_name) as state:
            stable = state.get("stable")
            if stable and not process_alive(started_process(stable)):
                state["stable"] = self._start_version(model_name, stable["version"], stable["storage_uri"], stable["checksum"], timeout_s)
                self._write(model_name, state)
            if stable and stable["version"] == version:
                self._ensure_router(model_name, state, timeout_s)
                self._write(model_name, state)
                return self.status(model_name)
            previous = state.get("candidate")
            backend = self._start_version(model_name, version, storage_uri, checksum, timeout_s)
            if state.get("stable"):
                state.update(candidate=backend, candidate_percent=0)
            else:
                state.update(stable=backend, candidate=None, candidate_percent=0)
            self._ensure_router(model_name, state, timeout_s)
            self._write(model_name, state)
        if previous:
            stop_process(started_process(previous))
        return self.status(model_name)

    def status(self, model_name: str) -> ServingStatus:
        """Return the serving status as recorded in the state file; a stable whose server died counts as nothing serving."""
        state = self._read(model_name)
        router, stable = state.get("router"), state.get("stable")
        return ServingStatus(
            model_name,
            stable["version"] if stable and process_alive(started_process(stable)) else None,
            (state.get("candidate") or {}).get("version"),
            int(state.get("candidate_percent", 0)),
            model_url(f"http://127.0.0.1:{router['port']}", model_name) if router else None,
        )

    def health(self, model_name: str) -> dict[str, bool]:
        """Return whether the router and each version's server process is running."""
        state = self._read(model_name)
        return {
            role: process_alive(started_process(state.get(role)))
            for role in ("router", "stable", "candidate")
            if state.get(role)
        }

    def set_traffic(self, model_name: str, candidate_percent: int, timeout_s: float) -> ServingStatus:
        """Route ``candidate_percent`` of main-URL traffic to the candidate (the router reloads on its next request)."""
        if not 0 <= candidate_percent <= 100:
            raise ServingError(f"candidate_percent must be 0-100, got {candidate_percent}")
        with self._locked(model_name) as state:
            if candidate_percent and not state.get("candidate"):
                raise ServingError(f"{model_name} has no candidate to send traffic to")
            if candidate_percent and not process_alive(started_process(state["candidate"])):
                raise ServingError(f"{model_name} candidate {state['candidate']['version']} is not running")
            state["candidate_percent"] = candidate_percent
            self._ensure_router(model_name, state, timeout_s)
            self._write(model_name, state)
        return self.status(model_name)

    def promote(self, model_name: str, timeout_s: float) -> ServingStatus:
        """Make the candidate stable with all traffic, then stop the old stable server once it drained."""
        with self._locked(model_name) as state:
            candidate = state.get("candidate")
            if not candidate:
                raise ServingError(f"{model_name} has no candidate to promote")
            if not process_alive(started_process(candidate)):
                raise ServingError(f"{model_name} candidate {candidate['version']} is not running; roll back instead")
            retired = state.get("stable")
            state.update(stable=candidate, candidate=None, candidate_percent=0)
            self._write(model_name, state)
        if retired:
            stop_process(started_process(retired))
        return self.status(model_name)

    def rollback(self, model_name: str, timeout_s: float, *, reason: str) -> ServingStatus:
        """Send all traffic to stable and stop the candidate; stable is never touched (``reason`` is the model store's to keep)."""
        with self._locked(model_name) as state:
            candidate = state.get("candidate")
            state.update(candidate=None, candidate_percent=0)
            self._write(model_name, state)
        if candidate:
            stop_process(started_process(candidate))
        return self.status(model_name)

    def remove(self, model_name: str, version: str, timeout_s: float, *, reason: str) -> ServingStatus:
        """Stop the stable ``version`` and its router (a failed first deployment); refuse when another version is stable
        (``reason`` is the model store's to keep).
        """
        with self._locked(model_name) as state:
            stable = state.get("stable")
            if stable and stable["version"] != version:
                raise ServingError(f"{model_name} serves {stable['version']} as stable, not {version}; it is left serving")
            removed = [stable, state.get("candidate"), state.get("router")]
            state.update(stable=None, candidate=None, router=None, candidate_percent=0)
            self._write(model_name, state)
        for backend in removed:
            if backend:
                stop_process(started_process(backend))
        return self.status(model_name)

    def endpoints(self, model_name: str) -> Endpoints:
        """Return the router's model URL and each version's own server URL."""
        state = self._read(model_name)

        def url(entry: dict | None) -> str | None:
            return model_url(f"http://127.0.0.1:{entry['port']}", model_name) if entry else None

        return Endpoints(url(state.get("router")), url(state.get("stable")), url(state.get("candidate")))

    def traffic_strategy(self, model_name: str) -> str:
        """Return how the local router shifts traffic."""
        return "the local router sends each percentage step of the main URL's requests to the candidate"

    def metric_scope(self, model_name: str) -> str:
        """Return "": one machine, so no label narrows the live metrics."""
        return ""

    def stop_all(self) -> list[str]:
        """Stop every process of every model and forget their state; return the models stopped."""
        stopped = []
        for model_name in self.served_models():
            state = self._read(model_name)
            for role in ("router", "candidate", "stable"):
                stop_process(started_process(state.get(role)))
            self._state_path(model_name).unlink()
            stopped.append(model_name)
        if stopped:
            self._write_prometheus_targets()
        self.launcher.stop()
        return stopped

    def served_models(self) -> list[str]:
        """Return the models that have serving state here: every state file, whatever its spec."""
        return sorted(path.stem for path in self.home.glob("*.json") if path.name != PROMETHEUS_TARGETS and MODEL_NAME.match(path.stem))


def state_dir() -> Path:
    """Return the local state directory: $MODEL_PIPELINES_HOME, else .model-pipelines in the working directory."""
    return Path(os.environ.get(STATE_DIR_ENV) or STATE_DIR_NAME)


def local_target(state_directory: Path) -> LocalTarget:
    """Return the local serving target of a state directory."""
    return LocalTarget(state_directory / "serving", state_directory / "store")
