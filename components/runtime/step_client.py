"""The command of a local run's step: ``python -m components.runtime.step_client kfp.dsl.executor_main ARGS``.

It asks the step forkserver (``components.runtime.step_forkserver``, started here when none answers) to fork the step
with this process's arguments, environment, working directory and standard streams, forwards SIGINT, SIGTERM and SIGHUP
to it, and exits as the step did; the forkserver logs to the run's serving home (``$MODEL_SERVING_HOME/logs``). Without a
forkserver (``MODEL_PIPELINES_STEP_FORKSERVER=off``, no serving home, or a forkserver that cannot start or refuses), it
runs the step itself, in this process, as a fresh ``python -m kfp.dsl.executor_main``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import BinaryIO

from components.runtime.step_forkserver import EXECUTOR_MODULE, STEP_ENVIRONMENT, forkserver_address
from components.runtime.warm_process import SERVING_HOME_ENV, WarmProcessError, connect, send_request, start

SWITCH = "MODEL_PIPELINES_STEP_FORKSERVER"  # "off": every step in a fresh process
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class NoForkserver(Exception):
    """No forkserver can run this step, and none has forked it: the reason is the message."""


class LostForkserver(Exception):
    """The forkserver went away after it may have forked the step: the reason is the message."""


def submit(connection: socket.socket, replies: BinaryIO, module: str, arguments: list[str]) -> int:
    """Send the step (arguments, environment, working directory, standard streams) to the forkserver; return the pid it
    answers on ``replies`` (the connection's one reader: the step's status may follow at once)."""
    body = json.dumps({"module": module, "arguments": arguments, "environment": dict(os.environ), "directory": os.getcwd()}).encode()
    sys.stdout.flush()
    sys.stderr.flush()
    send_request(connection, body, [0, 1, 2])
    try:
        reply = json.loads(replies.readline() or b"{}")
    except (OSError, ValueError) as error:  # the step may have been forked: it must not run twice
        raise LostForkserver(f"the step forkserver's answer was lost: {error}") from error
    if "pid" not in reply:
        raise NoForkserver(f"the step forkserver refused the step: {reply.get('error', 'no answer')}")
    return int(reply["pid"])


def forward(number: int, pid: int) -> None:
    """Send the signal ``number`` to the forked step's session, if it still runs."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, number)


def waited(replies: BinaryIO, pid: int) -> int:
    """Wait for the forked step ``pid``, forwarding signals to it; return its exit code (or die of the signal that ended it)."""
    for signal_number in FORWARDED_SIGNALS:
        signal.signal(signal_number, lambda number, _frame: forward(number, pid))
    try:
        ended = json.loads(replies.readline() or b"{}")
    except (OSError, ValueError):
        ended = {}
    if "signal" in ended:
        signal.signal(ended["signal"], signal.SIG_DFL)
        os.kill(os.getpid(), ended["signal"])
    if "exit" not in ended:
        print(f"step client: the step forkserver ended before step {pid} did", file=sys.stderr)
        return 1
    return int(ended["exit"])


def run_fresh(module: str, arguments: list[str]) -> None:
    """Run ``module`` in this process as ``python -m module arguments`` would; never return."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", module, *arguments])


def main(argv: list[str] | None = None) -> int:
    """Run the step that ``MODULE ARGS`` names through the forkserver, or fresh without one; return its exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != EXECUTOR_MODULE:
        print(f"usage: python -m components.runtime.step_client {EXECUTOR_MODULE} ARGUMENTS", file=sys.stderr)
        return 2
    module, arguments = argv[0], argv[1:]
    if os.environ.get(SWITCH) == "off" or not os.environ.get(SERVING_HOME_ENV):
        run_fresh(module, arguments)
    logs = Path(os.environ[SERVING_HOME_ENV]) / "logs"
    address = forkserver_address(sys.path[1:], dict(os.environ))
    try:
        try:
            connection = connect(address)
        except (ConnectionRefusedError, FileNotFoundError):
            connection = start("components.runtime.step_forkserver", address, STEP_ENVIRONMENT, logs / "step-forkserver.log")
        replies = connection.makefile("rb")
        pid = submit(connection, replies, module, arguments)
    except (NoForkserver, WarmProcessError, OSError) as error:  # nothing was forked: the step runs here
        print(f"step client: {error}; the step runs in a fresh process", file=sys.stderr)
        run_fresh(module, arguments)
    except LostForkserver as error:
        print(f"step client: {error}", file=sys.stderr)
        return 1
    with connection:
        return waited(replies, pid)


if __name__ == "__main__":
    sys.exit(main())
