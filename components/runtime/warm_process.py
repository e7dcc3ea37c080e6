"""What the warm processes (the model-server launcher and the step forkserver) share: the address that names the code they
run, and the check that a Unix socket's other end is this user. Standard library only: the step client imports it."""

from __future__ import annotations

import hashlib
import socket
import struct
from pathlib import Path

CODE = Path(__file__).resolve().parents[1]  # the whole components package: a changed module means a new warm process
SPECS = CODE / "model" / "builtin_specs"  # the built-in model specs and type table, which the contract reads at import: code too
SERVING_HOME_ENV = "MODEL_SERVING_HOME"  # a local run's serving home, whose logs/ the warm processes log to


def code_digest(*parts: str) -> str:
    """Return a short hex digest of ``parts`` and of every module and built-in spec of the components package."""
    digest = hashlib.sha256("\0".join(parts).encode())
    for source in [*sorted(CODE.rglob("*.py")), *sorted(path for path in SPECS.rglob("*") if path.is_file())]:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:32]


def peer_uid(connection: socket.socket) -> int:
    """Return the user id of the process at the other end of a Unix socket."""
    _pid, uid, _gid = struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return uid


def log_tail(path: Path, lines: int = 5) -> str:
    """Return the last ``lines`` lines of a log file joined with " | " (nothing when it does not exist)."""
    return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:]) if path.is_file() else ""
