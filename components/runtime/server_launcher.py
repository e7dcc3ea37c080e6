"""A warm launcher for model servers: one process that has imported KServe and scikit-learn forks each server.

Starting ``python -m components.runtime.model_server`` costs about 3 s of CPU, nearly all of it importing KServe, FastAPI,
pandas and scikit-learn. The launcher imports them once; a server forked from it loads its model and listens in a
fraction of that. One launcher serves every state directory of a user that runs the same interpreter, code and
environment: it listens on an abstract Unix socket named after the interpreter, the project's code and the environment
names its imports read (``LAUNCHER_ENVIRONMENT``: thread pools, locale, KServe's and the request limits'), so a server
never runs with other code or limits than its client's; each end checks that the other runs as the same user. Its own
environment holds only those names, plus PATH and HOME: no run's credentials reach a model server.

A request (``warm_process.send_request``) is a JSON body with the model server's arguments, the client's working directory
and, optionally, the predictor environment the runtime reads (``RUNTIME_ENVIRONMENT``, e.g. ``PREDICT_PROBA``), passed
with the server's log file, which the client opens in its state directory's ``logs/``. The answer is the server's pid. The server runs
``components.runtime.model_server.main`` in a session of its own, as the command would, shows that command as its
process title, and outlives the launcher. The launcher stops on a ``stop`` request when no server it forked lives, and
exits after IDLE_EXIT_S with no living server.

``ServerLauncher(home).spawn(arguments, log_name)`` starts the launcher when none answers; ``LocalTarget`` uses it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
import time
import traceback
from pathlib import Path

from components.runtime.request_guard import LIMIT_ENVIRONMENT
from components.runtime.warm_process import (INTERPRETER_ENVIRONMENT, WarmProcessError, bind, connect, keyed_environment, log_tail,
                                             peer_log, peer_uid, read_request, send_request, start, warm_address)
from components.serving.target import ServingError

IDLE_EXIT_S = 300.0
MAX_REQUEST_BYTES = 64 * 1024
MAX_ARGUMENTS = 64
ACCEPT_POLL_S = 1.0
ASK_TIMEOUT_S = 30.0
RUNTIME_ENVIRONMENT = ("PREDICT_PROBA",)  # the predictor environment the model server reads (as KServe's sklearnserver does)
LAUNCHER_ENVIRONMENT = (*INTERPRETER_ENVIRONMENT, "KSERVE_", *LIMIT_ENVIRONMENT)  # what KServe and the request limits read at import
LOG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def launcher_address(environment: dict[str, str]) -> str:
    """Return the abstract socket address of this user's launcher for this interpreter, code and the LAUNCHER_ENVIRONMENT
    names of ``environment``."""
    return warm_address("launcher", keyed_environment(environment, LAUNCHER_ENVIRONMENT))


class ServerLauncher:
    """A state directory's client of the launcher: it starts the launcher when none answers, logging to the directory's
    ``logs/``, and asks it to fork servers or to stop."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.address = launcher_address(dict(os.environ))

    def spawn(self, arguments: list[str], log_name: str, environment: dict[str, str] | None = None) -> int:
        """Fork a model server with ``arguments`` and the predictor ``environment`` (RUNTIME_ENVIRONMENT names), logging to
        ``logs/<log_name>.log``; return its pid."""
        if not LOG_NAME.match(log_name):
            raise ServingError(f"{log_name!r} is not a log name: use letters, digits, '.', '_' and '-', at most 128")
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(logs / f"{log_name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            reply = self._ask({"arguments": arguments, "environment": environment or {}, "directory": os.getcwd()}, [descriptor])
        finally:
            os.close(descriptor)
        if "pid" not in reply:
            raise ServingError(f"the server launcher refused to start a model server: {reply.get('error')}")
        return int(reply["pid"])

    def stop(self) -> bool:
        """Stop the launcher if one runs and no server it forked lives; return whether none runs now."""
        try:
            connection = connect(self.address, ASK_TIMEOUT_S)
        except (ConnectionRefusedError, FileNotFoundError):
            return True
        except (OSError, WarmProcessError):
            return False
        with connection:
            try:
                send_request(connection, b'{"stop": true}', [])
                return bool(json.loads(connection.makefile("rb").readline(MAX_REQUEST_BYTES) or b"{}").get("stopped"))
            except (OSError, ValueError):
                return False

    def _ask(self, request: dict, descriptors: list[int]) -> dict:
        """Send ``request`` with ``descriptors`` to the launcher, starting it when none listens; return its answer."""
        try:
            try:
                connection = connect(self.address, ASK_TIMEOUT_S)
            except (ConnectionRefusedError, FileNotFoundError):  # no launcher listens (none yet, or it exited idle): start one
                connection = start("components.runtime.server_launcher", self.address, LAUNCHER_ENVIRONMENT, self.home / "logs" / "launcher.log")
                connection.settimeout(ASK_TIMEOUT_S)
            with connection:
                try:
                    send_request(connection, json.dumps(request).encode(), descriptors)
                    return json.loads(connection.makefile("rb").readline(MAX_REQUEST_BYTES) or b"{}")
                except (OSError, ValueError) as error:  # never asked again: the launcher may have forked a server before the answer was lost
                    log = peer_log(connection) or self.home / "logs" / "launcher.log"  # another state directory's, when that one started it
                    raise ServingError(f"the server launcher did not answer: {error}; its log ({log}): {log_tail(log)}") from error
        except WarmProcessError as error:
            raise ServingError(f"the server launcher could not start: {error}") from error
        except OSError as error:
            raise ServingError(f"the server launcher did not answer: {error}; its log: {log_tail(self.home / 'logs' / 'launcher.log')}") from error


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


def parse_request(request: dict) -> tuple[list[str], dict[str, str], str]:
    """Return (arguments, environment, working directory) from a request, refusing anything but bounded strings,
    RUNTIME_ENVIRONMENT names and an existing absolute directory."""
    arguments, environment, directory = request.get("arguments"), request.get("environment", {}), request.get("directory")
    if not (isinstance(arguments, list) and 0 < len(arguments) <= MAX_ARGUMENTS and all(isinstance(a, str) and len(a) <= 4096 for a in arguments)):
        raise ValueError(f"arguments must be a list of at most {MAX_ARGUMENTS} strings")
    if not (isinstance(environment, dict) and all(name in RUNTIME_ENVIRONMENT and isinstance(value, str) and len(value) <= 256
                                                  for name, value in environment.items())):
        raise ValueError(f"the environment may set only {', '.join(RUNTIME_ENVIRONMENT)}, to short strings")
    if not (isinstance(directory, str) and len(directory) <= 4096 and os.path.isabs(directory) and os.path.isdir(directory)):
        raise ValueError("the working directory must be an existing absolute path")
    return arguments, environment, directory


def run_server(arguments: list[str], log: int, environment: dict[str, str], directory: str) -> None:
    """In a forked child: detach, log to the file descriptor ``log``, take the RUNTIME_ENVIRONMENT names from
    ``environment`` (unset when absent) and run the model server with ``arguments`` in ``directory``, as its client would
    have run the command; never return."""
    code = 1
    try:
        os.setsid()
        os.chdir(directory)
        for name in RUNTIME_ENVIRONMENT:
            if name in environment:
                os.environ[name] = environment[name]
            else:
                os.environ.pop(name, None)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
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


def answer(connection: socket.socket, listener: socket.socket, children: set[int]) -> bool:
    """Serve one request: fork a server, or stop when none lives; send the answer and return whether to keep running."""
    if peer_uid(connection) != os.getuid():
        connection.sendall(b'{"error": "only the launcher\'s own user may start servers"}\n')
        return True
    try:
        body, descriptors = read_request(connection, 1, MAX_REQUEST_BYTES)
    except (ValueError, OSError) as error:
        connection.sendall(json.dumps({"error": f"bad request: {error}"}).encode() + b"\n")
        return True
    try:
        request = json.loads(body)
        if request == {"stop": True}:
            for descriptor in descriptors:
                os.close(descriptor)
            reap(children)
            connection.sendall(json.dumps({"stopped": not children, "serving": len(children)}).encode() + b"\n")
            return bool(children)
        if len(descriptors) != 1:
            raise ValueError("a request passes its server's log file")
        arguments, environment, directory = parse_request(request)
    except (ValueError, AttributeError) as error:
        for descriptor in descriptors:
            os.close(descriptor)
        connection.sendall(json.dumps({"error": f"bad request: {error}"}).encode() + b"\n")
        return True
    pid = os.fork()
    if pid == 0:
        listener.close()
        connection.close()
        run_server(arguments, descriptors[0], environment, directory)
    os.close(descriptors[0])
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


def serve_forever(listener: socket.socket, idle_exit_s: float) -> None:
    """Fork a server per request on ``listener`` until stopped, or idle with no living server for ``idle_exit_s``."""
    listener.listen(16)
    listener.settimeout(ACCEPT_POLL_S)
    children: set[int] = set()
    idle_since = time.monotonic()
    running = True
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
                running = answer(connection, listener, children)
            except OSError:
                continue  # the client went away: nothing was forked for it, or it learns from the server's log


def main(argv: list[str] | None = None) -> int:
    """Bind the launcher's address, preload and fork servers until stopped or idle; return 0 (exit 1 when another launcher
    holds the address, 2 when it is not the one its client expects)."""
    parser = argparse.ArgumentParser(description="Fork KServe model servers from one process that has imported their libraries.")
    parser.add_argument("--idle-exit-s", type=float, default=IDLE_EXIT_S)
    parser.add_argument("--expect-address", help="the address its client computed: exit 2 at once if this process's differs")
    args = parser.parse_args(argv)
    address = launcher_address(dict(os.environ))
    # bound before the imports: a launcher started at the same time by another client exits at once
    listener = bind("server launcher", address, args.expect_address, "its code or environment")
    try:
        preload()
        print(f"server launcher: pid {os.getpid()} ready on @{address[1:]}", flush=True)
        serve_forever(listener, args.idle_exit_s)
    finally:
        listener.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
