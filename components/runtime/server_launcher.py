"""A warm launcher for model servers: one process that has imported KServe and scikit-learn forks each server.

Starting ``python -m components.runtime.model_server`` costs about 3 s of CPU, nearly all of it importing KServe, FastAPI,
pandas and scikit-learn. The launcher imports them once; a server forked from it loads its model and listens in a
fraction of that. The launcher listens on an abstract Unix socket named after its serving directory and the
project's code, so a launcher never serves another directory or an older checkout; each end checks that the other
runs as the same user. A request is one JSON line: the model server's arguments, a log file in the serving
directory's ``logs/`` and, optionally, the predictor environment the runtime reads (``RUNTIME_ENVIRONMENT``, e.g.
``PREDICT_PROBA``). The answer is the server's pid. The server runs ``components.runtime.model_server.main`` in a session
of its own, as the command would, shows that command as its process title, and outlives the launcher. The launcher
exits on a ``stop`` request, or after IDLE_EXIT_S with no living server. Its environment is the one it started
with: every server it forks shares it, except the RUNTIME_ENVIRONMENT names, which each server has as its request says.

``ServerLauncher(home).spawn(arguments, log_name)`` starts the launcher when none answers; ``LocalTarget`` uses it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

from components.runtime.warm_process import code_digest, log_tail, peer_uid
from components.serving.target import ServingError

IDLE_EXIT_S = 300.0
MAX_REQUEST_BYTES = 64 * 1024
MAX_ARGUMENTS = 64
ACCEPT_POLL_S = 1.0
START_TIMEOUT_S = 60.0
ASK_TIMEOUT_S = 30.0
RUNTIME_ENVIRONMENT = ("PREDICT_PROBA",)  # the predictor environment the model server reads (as KServe's sklearnserver does)


def launcher_address(home: Path) -> str:
    """Return the abstract socket address of the launcher for ``home`` running this code with this interpreter."""
    return f"\0model-pipelines-launcher-{code_digest(str(home.resolve()), sys.executable)}"


class ServerLauncher:
    """The client of the launcher of one serving directory: it starts the launcher when none answers, and stops it."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.address = launcher_address(home)

    def spawn(self, arguments: list[str], log_name: str, environment: dict[str, str] | None = None) -> int:
        """Fork a model server with ``arguments`` and the predictor ``environment`` (RUNTIME_ENVIRONMENT names), logging to
        ``logs/<log_name>.log``; return its pid."""
        log = self.home / "logs" / f"{log_name}.log"
        request = {"arguments": arguments, "log": str(log), "environment": environment or {}}
        try:
            try:
                reply = self._ask(request)
            except ConnectionRefusedError:  # no launcher listens (none yet, or it exited idle): start one, ask once more
                self._start()
                reply = self._ask(request)
        except OSError as error:  # never asked again: the launcher may have forked a server before the answer was lost
            raise ServingError(f"the server launcher did not answer: {error}; its log: {log_tail(self.home / 'logs' / 'launcher.log')}") from error
        if "pid" not in reply:
            raise ServingError(f"the server launcher refused to start a model server: {reply.get('error')}")
        return int(reply["pid"])

    def stop(self) -> None:
        """Stop the launcher if one runs (the servers it started keep running)."""
        with contextlib.suppress(OSError):
            self._ask({"stop": True})

    def _ask(self, request: dict) -> dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(ASK_TIMEOUT_S)
            connection.connect(self.address)
            if peer_uid(connection) != os.getuid():
                raise ServingError("the server launcher's address is held by another user's process; stop it, or use another state directory")
            connection.sendall(json.dumps(request).encode() + b"\n")
            return json.loads(connection.makefile("rb").readline(MAX_REQUEST_BYTES) or b"{}")

    def _start(self) -> None:
        """Start the launcher (one at a time per directory) and wait until it answers."""
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(self.home / ".launcher.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self._answers():
                return
            with open(logs / "launcher.log", "ab") as log:
                process = subprocess.Popen([sys.executable, "-m", "components.runtime.server_launcher", "--home", str(self.home)],
                                           stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
            deadline = time.monotonic() + START_TIMEOUT_S
            while time.monotonic() < deadline and process.poll() is None:
                if self._answers():
                    return
                time.sleep(0.05)
            raise ServingError(f"the server launcher did not start within {START_TIMEOUT_S:g} s: {log_tail(logs / 'launcher.log')}")

    def _answers(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(self.address)
            except OSError:
                return False
        return True


def preload() -> None:
    """Import what every model server imports (KServe, its REST server, the estimators the recipes pickle) and build the spec validator."""
    import joblib  # noqa: F401
    import kserve.model_server  # noqa: F401
    import sklearn.compose  # noqa: F401
    import sklearn.covariance  # noqa: F401
    import sklearn.decomposition  # noqa: F401
    import sklearn.ensemble  # noqa: F401
    import sklearn.impute  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.pipeline  # noqa: F401
    import sklearn.preprocessing  # noqa: F401
    from kserve.protocol.rest.server import RESTServer  # noqa: F401

    import components.runtime.model_server  # noqa: F401
    from components.model.spec import known_spec_files, load_spec

    load_spec(known_spec_files()[0])  # builds the JSON Schema validator every server checks its version's spec with (40 ms a fork)


def parse_request(request: dict, logs: Path) -> tuple[list[str], Path, dict[str, str]]:
    """Return (arguments, log file, environment) from a request, refusing anything but bounded strings, a log in ``logs``
    and RUNTIME_ENVIRONMENT names."""
    arguments, log, environment = request.get("arguments"), request.get("log"), request.get("environment", {})
    if not (isinstance(arguments, list) and 0 < len(arguments) <= MAX_ARGUMENTS and all(isinstance(a, str) and len(a) <= 4096 for a in arguments)):
        raise ValueError(f"arguments must be a list of at most {MAX_ARGUMENTS} strings")
    if not isinstance(log, str) or Path(log).resolve().parent != logs.resolve():
        raise ValueError(f"the log must be a file in {logs}")
    if not (isinstance(environment, dict) and all(name in RUNTIME_ENVIRONMENT and isinstance(value, str) and len(value) <= 256
                                                  for name, value in environment.items())):
        raise ValueError(f"the environment may set only {', '.join(RUNTIME_ENVIRONMENT)}, to short strings")
    return arguments, Path(log), environment


def run_server(arguments: list[str], log: Path, environment: dict[str, str]) -> None:
    """In a forked child: detach, log to ``log``, take the RUNTIME_ENVIRONMENT names from ``environment`` (unset when absent)
    and run the model server with ``arguments``; never return."""
    code = 1
    try:
        os.setsid()
        for name in RUNTIME_ENVIRONMENT:
            if name in environment:
                os.environ[name] = environment[name]
            else:
                os.environ.pop(name, None)
        descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(descriptor, 1)
        os.dup2(descriptor, 2)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        import setproctitle

        from components.runtime import model_server

        # ps, pgrep -f and the ownership check read the command line: show the one the server would have been run with.
        setproctitle.setproctitle(" ".join([sys.executable, "-m", "components.runtime.model_server", *arguments]))
        sys.argv = ["components.runtime.model_server", *arguments]
        code = model_server.main(arguments)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:  # noqa: BLE001 - whatever ends the server, its log says why
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def answer(connection: socket.socket, listener: socket.socket, logs: Path, children: set[int]) -> bool:
    """Serve one request: fork a server, or stop; send the answer and return whether to keep running."""
    if peer_uid(connection) != os.getuid():
        connection.sendall(b'{"error": "only the launcher\'s own user may start servers"}\n')
        return True
    raw = connection.makefile("rb").readline(MAX_REQUEST_BYTES + 1)
    if len(raw) > MAX_REQUEST_BYTES:
        connection.sendall(json.dumps({"error": f"request over {MAX_REQUEST_BYTES} bytes"}).encode() + b"\n")
        return True
    try:
        request = json.loads(raw)
        if request == {"stop": True}:
            connection.sendall(b'{"stopped": true}\n')
            return False
        arguments, log, environment = parse_request(request, logs)
    except (ValueError, AttributeError) as error:
        connection.sendall(json.dumps({"error": f"bad request: {error}"}).encode() + b"\n")
        return True
    pid = os.fork()
    if pid == 0:
        listener.close()
        connection.close()
        run_server(arguments, log, environment)
    children.add(pid)
    connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    return True


def reap(children: set[int]) -> None:
    """Collect the exit status of every server that ended, so none stays a zombie."""
    for pid in list(children):
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                children.discard(pid)
        except ChildProcessError:
            children.discard(pid)


def serve_forever(home: Path, idle_exit_s: float) -> None:
    """Preload, then fork a server per request on the home's launcher address until stopped or idle for ``idle_exit_s``."""
    preload()
    logs = home / "logs"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(launcher_address(home))
    except OSError as error:
        raise SystemExit(f"server launcher: another launcher serves {home} already: {error}") from error
    listener.listen(16)
    listener.settimeout(ACCEPT_POLL_S)
    children: set[int] = set()
    idle_since = time.monotonic()
    running = True
    try:
        while running:
            reap(children)
            if children:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > idle_exit_s:
                break
            try:
                connection, _ = listener.accept()
            except socket.timeout:
                continue
            with connection:
                connection.settimeout(10)
                try:
                    running = answer(connection, listener, logs, children)
                except OSError:
                    continue  # the client went away: nothing was forked for it, or it learns from the server's log
    finally:
        listener.close()


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the launcher until stopped or idle; return 0."""
    parser = argparse.ArgumentParser(description="Fork KServe model servers from one process that has imported their libraries.")
    parser.add_argument("--home", required=True, type=Path, help="the serving directory; server logs must be in its logs/")
    parser.add_argument("--idle-exit-s", type=float, default=IDLE_EXIT_S)
    args = parser.parse_args(argv)
    serve_forever(args.home.resolve(), args.idle_exit_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
