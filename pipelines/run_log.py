"""The log of a local run: everything kfp.local and the steps print goes to a file; the terminal gets one line per task."""

from __future__ import annotations

import io
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

ANSI = re.compile(r"\x1b\[[0-9;]*m")
TASK_STARTED = re.compile(r"Executing task '(?P<task>[^']+)'")
TASK_FINISHED = re.compile(r"Task '(?P<task>[^']+)' finished with status (?P<status>[A-Z]+)")
# The last line of a Python traceback: "package.module.SomeError: message".
EXCEPTION_LINE = re.compile(r"^\s*(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception): .+")
RESULT_PREFIX = "result: "  # what a step prints as its key result (components/kfp/steps.py)
RESULT_WIDTH = 110


def strip_ansi(text: str) -> str:
    """Return ``text`` without terminal colour codes."""
    return ANSI.sub("", text)


@dataclass
class TaskLine:
    """One finished task: its name, state, duration and key result (or error)."""

    task: str
    succeeded: bool
    seconds: float
    result: str

    def render(self) -> str:
        """Return the task's progress line."""
        result = self.result if len(self.result) <= RESULT_WIDTH else self.result[: RESULT_WIDTH - 1] + "…"
        return f"  {self.task:<29} {'ok' if self.succeeded else 'FAILED':<6} {self.seconds:5.1f}s  {result}".rstrip()


class RunLog(io.TextIOBase):
    """A stdout for one run: writes every line to ``path`` and prints a progress line per finished task to ``terminal``.

    With ``verbose`` the terminal also gets everything (colour only when it is a terminal).
    """

    def __init__(self, path: Path, terminal: TextIO, verbose: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.file = path.open("w", encoding="utf-8")
        self.terminal = terminal
        self.verbose = verbose
        self.colour = terminal.isatty()
        self.tasks: list[TaskLine] = []
        self._pending = ""
        self._started: dict[str, float] = {}
        self._current = ""
        self._results: dict[str, str] = {}
        self._errors: dict[str, str] = {}

    def write(self, text: str) -> int:
        """Log ``text``, echo it when verbose, and react to each complete line; return its length."""
        plain = strip_ansi(text)
        self.file.write(plain)
        if self.verbose:
            self.terminal.write(text if self.colour else plain)
        self._pending += plain
        *complete, self._pending = self._pending.split("\n")
        for line in complete:
            self._observe(line)
        return len(text)

    def flush(self) -> None:
        """Flush the log file and the terminal."""
        if not self.file.closed:
            self.file.flush()
        self.terminal.flush()

    def close(self) -> None:
        """Close the log file (the terminal stays open)."""
        self.flush()
        self.file.close()

    def _observe(self, line: str) -> None:
        """Track task starts, key results, errors and finishes; print the progress line of a finished task."""
        if started := TASK_STARTED.search(line):
            self._current = started["task"]
            self._started[self._current] = time.monotonic()
        elif finished := TASK_FINISHED.search(line):
            task = finished["task"]
            if task not in self._started:  # the pipeline (a DAG) finishing, not a task
                return
            succeeded = finished["status"] == "SUCCESS"
            result = self._results.get(task, "") if succeeded else self._errors.get(task, "see the log")
            self.tasks.append(TaskLine(task, succeeded, time.monotonic() - self._started.pop(task), result))
            self.terminal.write(self.tasks[-1].render() + "\n")
            self.terminal.flush()
        elif line.strip().startswith(RESULT_PREFIX) and self._current:
            self._results[self._current] = line.strip().removeprefix(RESULT_PREFIX)
        elif EXCEPTION_LINE.match(line) and self._current:
            kind, _, message = line.strip().partition(": ")
            self._errors[self._current] = f"{kind.rsplit('.', 1)[-1]}: {message}"

    def first_failure(self) -> TaskLine | None:
        """Return the first task that failed, or None."""
        return next((task for task in self.tasks if not task.succeeded), None)
