"""What the warm processes (the model-server launcher and the step forkserver) share: the address that names the code and
environment they run, how a client starts one, the request framing that passes file descriptors, and the check that a
Unix socket's other end is this user. Standard library only: the step client imports it."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

CODE = Path(__file__).resolve().parents[1]  # the whole components package: a changed module means a new warm process
SPECS = CODE / "model" / "builtin_specs"  # the built-in model specs and type table, which the contract reads at import: code too
SERVING_HOME_ENV = "MODEL_SERVING_HOME"  # a local run's serving home, whose logs/ the warm processes log to
# Environment names read when the interpreter starts or the numeric libraries are imported (hash seed, path, thread pools,
# locale): a client whose values differ gets a warm process of its own. Each warm process adds the names its own imports read.
INTERPRETER_ENVIRONMENT = ("PYTHON", "OMP_", "OPENBLAS_", "MKL_", "KMP_", "NUMEXPR_", "SKLEARN_", "JOBLIB_", "LD_", "LANG", "LC_")
START_TIMEOUT_S = 60.0
LOST_RACE_EXIT = 1  # a warm process that finds its address taken exits with this: the other one serves
LENGTH = struct.Struct("!I")  # a request's body length, sent with its file descriptors


class WarmProcessError(Exception):
    """No warm process answers at an address and none could be started there: the message says why."""


def code_digest(*parts: str) -> str:
    """Return a short hex digest of ``parts`` and of every module and built-in spec of the components package."""
    digest = hashlib.sha256("\0".join(parts).encode())
    for source in [*sorted(CODE.rglob("*.py")), *sorted(path for path in SPECS.rglob("*") if path.is_file())]:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:32]


def keyed_environment(environment: dict[str, str], prefixes: tuple[str, ...]) -> dict[str, str]:
    """Return the names of ``environment`` that start with one of ``prefixes``, with their values, sorted."""
    return {name: value for name, value in sorted(environment.items()) if name.startswith(prefixes)}


def warm_address(kind: str, *key: object) -> str:
    """Return the abstract socket address of this user's warm process of ``kind`` for this interpreter, code and ``key``."""
    return f"\0model-pipelines-{kind}-{os.getuid()}-{code_digest(sys.executable, json.dumps(key))}"


def peer_uid(connection: socket.socket) -> int:
    """Return the user id of the process at the other end of a Unix socket."""
    return _peer_credentials(connection)[1]


def peer_log(connection: socket.socket) -> Path | None:
    """Return the file the process at the other end of a Unix socket writes its standard output to (a warm process's log),
    or None when /proc shows no file there."""
    try:
        target = os.readlink(f"/proc/{_peer_credentials(connection)[0]}/fd/1")
    except OSError:
        return None
    return Path(target) if target.startswith("/") else None


def _peer_credentials(connection: socket.socket) -> tuple[int, int, int]:
    """Return (pid, uid, gid) of the process at the other end of a Unix socket."""
    return struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))


def connect(address: str, timeout_s: float | None = None) -> socket.socket:
    """Return a connection to this user's warm process at ``address`` (ConnectionRefusedError or FileNotFoundError when none
    listens; WarmProcessError when another user's process holds it)."""
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.settimeout(timeout_s)
    try:
        connection.connect(address)
        if peer_uid(connection) != os.getuid():
            raise WarmProcessError(f"the address @{address[1:]} is held by another user's process")
    except BaseException:
        connection.close()
        raise
    return connection


def start(module: str, address: str, prefixes: tuple[str, ...], log: Path) -> socket.socket:
    """Start ``python -m module --expect-address ADDRESS`` (one start at a time per log directory) with only the
    ``prefixes`` names of this environment plus PATH and HOME, from the directory that holds this code, logging to
    ``log``; return a connection to it once it listens."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log.with_name(f".{log.stem}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return connect(address)
        except (ConnectionRefusedError, FileNotFoundError):
            pass
        environment = {**keyed_environment(dict(os.environ), prefixes), **{name: os.environ[name] for name in ("PATH", "HOME") if name in os.environ}}
        with open(log, "ab") as output:
            process = subprocess.Popen([sys.executable, "-m", module, "--expect-address", address[1:]], env=environment, cwd=CODE.parent,
                                       stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                return connect(address)
            except (ConnectionRefusedError, FileNotFoundError):
                if process.poll() is not None and process.returncode != LOST_RACE_EXIT:
                    raise WarmProcessError(f"{module} exited with {process.returncode}: {log_tail(log)}") from None
                time.sleep(0.05)
        raise WarmProcessError(f"{module} did not start within {START_TIMEOUT_S:g} s (its log: {log})")


def bind(name: str, address: str, expected: str | None, what_may_differ: str) -> socket.socket:
    """Return a socket bound to the warm process ``name``'s ``address``; print why and exit at once with 2 when its client
    expected another address (``what_may_differ`` says what), or with LOST_RACE_EXIT when another process holds it."""
    if expected is not None and expected != address[1:]:
        print(f"{name}: started as @{address[1:]}, not as the client's @{expected}: {what_may_differ} differs from the client's", file=sys.stderr)
        raise SystemExit(2)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(address)
    except OSError as error:
        listener.close()
        print(f"{name}: another {name} holds this address already: {error}", file=sys.stderr)
        raise SystemExit(LOST_RACE_EXIT) from None
    return listener


def send_request(connection: socket.socket, body: bytes, descriptors: list[int]) -> None:
    """Send a request: its length with ``descriptors`` attached, then ``body``."""
    socket.send_fds(connection, [LENGTH.pack(len(body))], descriptors)
    connection.sendall(body)


def read_request(connection: socket.socket, max_descriptors: int, max_bytes: int) -> tuple[bytes, list[int]]:
    """Return a request's body and the file descriptors passed with it, refusing more than ``max_bytes`` (ValueError);
    the caller owns the descriptors."""
    header, descriptors, _flags, _address = socket.recv_fds(connection, LENGTH.size, max_descriptors)
    try:
        if len(header) != LENGTH.size:
            raise ValueError("a request starts with its length")
        (length,) = LENGTH.unpack(header)
        if length > max_bytes:
            raise ValueError(f"request over {max_bytes} bytes")
        body = b""
        while len(body) < length:
            chunk = connection.recv(length - len(body))
            if not chunk:
                raise ValueError("the request ended before its length")
            body += chunk
    except BaseException:
        for descriptor in descriptors:
            os.close(descriptor)
        raise
    return body, descriptors


def log_tail(path: Path, lines: int = 5) -> str:
    """Return the last ``lines`` lines of a log file joined with " | " (nothing when it does not exist)."""
    return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:]) if path.is_file() else ""
