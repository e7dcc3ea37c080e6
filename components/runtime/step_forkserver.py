"""A warm forkserver for local pipeline steps: one process that has imported the steps' libraries forks each step.

A local run's step is a fresh ``python -m kfp.dsl.executor_main`` process, and most of its CPU goes to imports: pandas,
pyarrow and scikit-learn for ingest, train, evaluate and the smoke test; the project's configuration in every step. The
forkserver imports them once. ``components.runtime.step_client`` (the step command of a local run, see
``pipelines.local.forked_steps``) hands it the step's arguments, environment, working directory and standard streams;
a forked child runs ``kfp.dsl.executor_main`` with them, as the fresh process would have, and the client exits with the
child's status. Cluster runs are not touched: their compiled command runs the executor in the pod.

The forkserver listens on an abstract Unix socket named after the interpreter, the project's code, the Python path and
the environment that the preloaded libraries read at import (``STEP_ENVIRONMENT``), so it never runs a step with code or
settings other than the step's own; each end checks that the other runs as the same user. Its own environment holds only
those names: a step's credentials reach the step's child alone. It exits after IDLE_EXIT_S with no step running.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import json
import os
import selectors
import signal
import socket
import sys
import time
import traceback

from components.runtime.warm_process import INTERPRETER_ENVIRONMENT, bind, keyed_environment, peer_uid, read_request, warm_address

IDLE_EXIT_S = 120.0
MAX_REQUEST_BYTES = 1024 * 1024
REQUEST_TIMEOUT_S = 10.0
EXECUTOR_MODULE = "kfp.dsl.executor_main"  # the one module a step runs
STEP_ENVIRONMENT = (*INTERPRETER_ENVIRONMENT, "_KFP_")  # and KFP's runtime switch: a step whose values differ gets a forkserver of its own


def forkserver_address(python_path: list[str], environment: dict[str, str]) -> str:
    """Return the abstract socket address of the forkserver for this interpreter and code, ``python_path`` (without the
    working directory) and the STEP_ENVIRONMENT names of ``environment``."""
    return warm_address("steps", python_path, keyed_environment(environment, STEP_ENVIRONMENT))


def preload() -> None:
    """Import what the steps import: KFP's executor, the numeric, Parquet and HTTP libraries, and the project's step logic
    with the configuration every step reads, the registry client and the serving targets."""
    import concurrent.futures.thread  # noqa: F401
    import netrc  # noqa: F401
    import shlex  # noqa: F401

    import jsonschema  # noqa: F401
    import kubernetes.client  # noqa: F401
    import pandas  # noqa: F401
    import pandas.core.arrays.arrow.extension_types  # noqa: F401
    import pyarrow.dataset  # noqa: F401
    import pyarrow.pandas_compat  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import requests  # noqa: F401
    import sklearn.metrics  # noqa: F401
    import kfp.dsl.executor_main  # noqa: F401

    import components.data.ingest  # noqa: F401
    import components.data.prometheus  # noqa: F401
    import components.kfp.config  # noqa: F401
    import components.kfp.run_parameters  # noqa: F401
    import components.kfp.workflow  # noqa: F401
    import components.model.evaluate  # noqa: F401
    import components.model.train  # noqa: F401
    import components.monitoring.drift  # noqa: F401
    import components.registry.sync  # noqa: F401
    import components.release.approval  # noqa: F401
    import components.release.rollout  # noqa: F401
    import components.serving.gitops.target  # noqa: F401
    import components.serving.kserve  # noqa: F401
    import components.serving.kserve.merge_patch  # noqa: F401


def parse_request(raw: bytes) -> tuple[list[str], dict[str, str], str]:
    """Return (executor arguments, environment, working directory) from a request, refusing anything but bounded strings,
    the executor module and an existing absolute directory."""
    request = json.loads(raw)
    module, arguments = request.get("module"), request.get("arguments")
    environment, directory = request.get("environment"), request.get("directory")
    if module != EXECUTOR_MODULE:
        raise ValueError(f"only {EXECUTOR_MODULE} runs in a forked step, not {module!r}")
    if not (isinstance(arguments, list) and all(isinstance(argument, str) for argument in arguments)):
        raise ValueError("arguments must be a list of strings")
    if not (isinstance(environment, dict) and all(isinstance(name, str) and isinstance(value, str) for name, value in environment.items())):
        raise ValueError("the environment must map names to strings")
    if not (isinstance(directory, str) and os.path.isabs(directory) and os.path.isdir(directory)):
        raise ValueError("the working directory must be an existing absolute path")
    return arguments, environment, directory


def fresh_process_state() -> None:
    """Forget what the preloaded modules derived from the forkserver's environment and randomness: the time zone, the
    temporary directory and NumPy's global random state are the step's own, as in a fresh process."""
    import tempfile

    time.tzset()
    tempfile.tempdir = None
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()


def run_step(arguments: list[str], environment: dict[str, str], directory: str, streams: list[int]) -> None:
    """In a forked child: take the client's standard streams, environment and directory, run the KFP executor with
    ``arguments`` in a session of its own, as ``python -m kfp.dsl.executor_main`` would; never return."""
    code, fatal_signal = 1, 0
    try:
        os.setsid()
        import setproctitle  # before the environment changes: it finds the command line's memory beside the environment's

        # ps and pgrep -f show which step runs, not the forkserver's command line
        function = arguments[arguments.index("--function_to_execute") + 1] if "--function_to_execute" in arguments[:-1] else "?"
        setproctitle.setproctitle(f"{sys.executable} -m {EXECUTOR_MODULE} --function_to_execute {function} (forked)")
        signal.set_wakeup_fd(-1)
        for signal_number, handler in ((signal.SIGCHLD, signal.SIG_DFL), (signal.SIGTERM, signal.SIG_DFL), (signal.SIGINT, signal.default_int_handler)):
            signal.signal(signal_number, handler)
        for target, descriptor in zip((0, 1, 2), streams):
            os.dup2(descriptor, target)
            os.close(descriptor)
        os.chdir(directory)
        os.environ.clear()
        os.environ.update(environment)
        sys.path[0] = directory  # as `python -m` puts it first
        fresh_process_state()
        from kfp.dsl import executor_main

        sys.argv = [executor_main.__file__, *arguments]
        executor_main.executor_main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
        if not isinstance(exit_.code, (int, type(None))):
            print(exit_.code, file=sys.stderr)
    except KeyboardInterrupt:  # as Python does: the traceback, then die of the signal
        traceback.print_exc()
        fatal_signal = signal.SIGINT
    except BaseException:  # noqa: BLE001 - as an uncaught exception ends a fresh process
        traceback.print_exc()
    finally:
        atexit._run_exitfuncs()  # what the step registered (temporary directories, logging) ends as at a normal exit
        sys.stdout.flush()
        sys.stderr.flush()
        if fatal_signal:
            signal.signal(fatal_signal, signal.SIG_DFL)
            os.kill(os.getpid(), fatal_signal)
        os._exit(code)


def status_message(status: int) -> dict:
    """Return what the client is told of a child's wait status: its exit code, or the signal that ended it."""
    return {"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"exit": os.waitstatus_to_exitcode(status)}


def drain(descriptor: int) -> None:
    """Read a non-blocking pipe until it is empty."""
    try:
        while os.read(descriptor, 512):
            pass
    except BlockingIOError:
        pass


class Forkserver:
    """The accept loop: fork a child per request, tell its client the pid and then the status, and end a child whose client
    went away."""

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.selector = selectors.DefaultSelector()
        self.clients: dict[int, socket.socket] = {}  # a running child's pid -> its client's connection
        self.last_activity = time.monotonic()

    def answer(self, connection: socket.socket) -> None:
        """Serve one request: check the peer and the request, fork the step, send its pid."""
        connection.settimeout(REQUEST_TIMEOUT_S)
        if peer_uid(connection) != os.getuid():
            connection.sendall(b'{"error": "only the forkserver\'s own user may run steps"}\n')
            connection.close()
            return
        try:
            body, streams = read_request(connection, 3, MAX_REQUEST_BYTES)
            try:
                if len(streams) != 3:
                    raise ValueError("a request passes the three standard streams")
                arguments, environment, directory = parse_request(body)
            except ValueError:
                for descriptor in streams:
                    os.close(descriptor)
                raise
        except (ValueError, OSError, AttributeError) as error:
            connection.sendall(json.dumps({"error": f"bad request: {error}"}).encode() + b"\n")
            connection.close()
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self.listener.close()
            connection.close()
            for client in self.clients.values():
                client.close()
            run_step(arguments, environment, directory, streams)
        for descriptor in streams:
            os.close(descriptor)
        self.clients[pid] = connection
        self.selector.register(connection, selectors.EVENT_READ, pid)
        try:
            connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        except OSError:
            self.client_left(pid)
        connection.setblocking(False)

    def client_left(self, pid: int) -> None:
        """End the step of a client that closed its connection (its pipeline run was stopped)."""
        connection = self.clients[pid]
        try:
            if connection.recv(4096):
                return  # a client sends nothing after its request: ignore it
        except OSError:  # nothing to read (BlockingIOError), or the connection broke: either way the client is gone
            pass
        self.selector.unregister(connection)
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def reap(self) -> None:
        """Collect every ended child and send its status to its client."""
        for pid in list(self.clients):
            try:
                ended, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                ended, status = pid, 1 << 8
            if ended != pid:
                continue
            connection = self.clients.pop(pid)
            try:
                self.selector.unregister(connection)
            except (KeyError, ValueError):
                pass
            try:
                connection.settimeout(REQUEST_TIMEOUT_S)  # a client that stops reading cannot hold the forkserver
                connection.sendall(json.dumps(status_message(status)).encode() + b"\n")
            except OSError:
                pass
            connection.close()
            self.last_activity = time.monotonic()

    def serve(self, idle_exit_s: float) -> None:
        """Serve until no step has run for ``idle_exit_s``."""
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(wake_read, selectors.EVENT_READ, "child")
        while self.clients or time.monotonic() - self.last_activity < idle_exit_s:
            for key, _ in self.selector.select(timeout=1.0):
                if key.data == "accept":
                    connection, _ = self.listener.accept()
                    self.last_activity = time.monotonic()
                    try:
                        self.answer(connection)
                    except OSError:
                        connection.close()
                elif key.data == "child":
                    drain(wake_read)
                else:
                    self.client_left(key.data)
            self.reap()


def main(argv: list[str] | None = None) -> int:
    """Bind the forkserver's address, preload and fork steps until idle; return 0 (exit 1 when another forkserver holds the
    address, 2 when it is not the one its client expects)."""
    parser = argparse.ArgumentParser(description="Fork local pipeline steps from one process that has imported their libraries.")
    parser.add_argument("--idle-exit-s", type=float, default=IDLE_EXIT_S)
    parser.add_argument("--expect-address", help="the address its client computed: exit 2 at once if this process's differs")
    args = parser.parse_args(argv)
    address = forkserver_address(sys.path[1:], dict(os.environ))  # as started: scikit-learn sets KMP_ names when imported
    # bound before the imports: a forkserver started at the same time by another client exits at once
    listener = bind("step forkserver", address, args.expect_address, "its Python path or environment")
    preload()
    gc.freeze()  # the preloaded objects stay out of the children's collections, and their pages shared
    listener.listen(64)
    print(f"step forkserver: pid {os.getpid()} ready on @{address[1:]}", flush=True)
    try:
        Forkserver(listener).serve(args.idle_exit_s)
    finally:
        listener.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
