"""Local runs fork their steps from one warm forkserver: each step still sees its own run's environment, directory and
streams, fails and dies as a fresh process would, and the forkserver holds no run's secrets and refuses other work."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kfp import dsl, local

from components.runtime.step_client import SWITCH
from components.runtime.step_forkserver import EXECUTOR_MODULE
from pipelines.local import forked_steps
from tests.conftest import REPO, ask_warm_process, command_lines


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def report_process(name: str) -> str:
    """Return what the step's process sees: its pid and parent, directory and the run's token."""
    import json
    import os

    print(f"step {name} says hello")
    return json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "directory": os.getcwd(), "token": os.environ.get("RUN_TOKEN", "")})


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def fail_loudly() -> str:
    """Raise, as a step whose input is bad does."""
    raise ValueError("the input has 7 features, the model takes 45: retrain the model or fix the query")


@dsl.pipeline(name="two-reports")
def two_reports() -> str:
    first = report_process(name="first")
    return report_process(name=first.output).output


@dsl.pipeline(name="one-failure")
def one_failure() -> str:
    return fail_loudly().output


def forkserver_pids() -> set[int]:
    """Return the pids of the step forkservers running this checkout's code."""
    return {pid for pid, command in command_lines() if b"components.runtime.step_forkserver" in command}


def environ_of(pid: int) -> dict[str, str]:
    """Return the environment process ``pid`` started with."""
    pairs = (item.split(b"=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in item)
    return {name.decode(): value.decode() for name, value in pairs}


@pytest.fixture
def local_runner(tmp_path, monkeypatch):
    """kfp.local's subprocess runner in ``tmp_path``, with the serving home a local run sets and a run token."""
    monkeypatch.setenv("MODEL_SERVING_HOME", str(tmp_path / "serving"))
    monkeypatch.setenv("RUN_TOKEN", "s3cr3t-for-this-run-only")
    monkeypatch.chdir(tmp_path)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "runs"), raise_on_error=True)
    return tmp_path


def test_local_steps_are_forked_by_a_warm_forkserver_with_the_runs_environment_and_directory(local_runner, capsys):
    reports = [json.loads(forked_steps(two_reports)().output) for _ in range(2)]
    parents = {report["ppid"] for report in reports}
    assert len(parents) == 1, "every step of both runs was forked by the same process"
    (forkserver,) = parents
    assert forkserver in forkserver_pids()
    assert {report["directory"] for report in reports} == {str(local_runner)}
    assert {report["token"] for report in reports} == {"s3cr3t-for-this-run-only"}, "each step has its run's environment"
    assert "RUN_TOKEN" not in environ_of(forkserver), "the forkserver holds no run's credentials"
    assert "step first says hello" in capsys.readouterr().out, "the step's output reaches the runner"


def test_without_the_forkserver_each_step_is_a_fresh_process(local_runner, monkeypatch):
    monkeypatch.setenv(SWITCH, "off")
    report = json.loads(forked_steps(two_reports)().output)
    assert report["ppid"] not in forkserver_pids()
    assert report["token"] == "s3cr3t-for-this-run-only"


def test_a_failing_forked_step_fails_the_run_with_its_traceback(local_runner, capsys):
    with pytest.raises(RuntimeError):
        forked_steps(one_failure)()
    output = capsys.readouterr().out
    assert "ValueError: the input has 7 features, the model takes 45: retrain the model or fix the query" in output
    assert "Traceback" in output


SLEEPER = '''
import os
import time


def sleeper(marker: str) -> str:
    with open(marker, "w") as handle:
        handle.write(str(os.getpid()))
    time.sleep(120)
    return "woke"


def quick(marker: str) -> str:
    with open(marker, "w") as handle:
        handle.write(str(os.getppid()))
    return "done"
'''


def step_command(tmp_path: Path, function: str, **environment: str) -> tuple[list[str], dict[str, str], Path]:
    """Return the client command of a step running ``function`` of SLEEPER, its environment and the marker it writes."""
    module = tmp_path / "sleeper.py"
    module.write_text(SLEEPER)
    marker = tmp_path / "step.pid"
    executor_input = {"inputs": {"parameterValues": {"marker": str(marker)}},
                      "outputs": {"parameters": {"Output": {"outputFile": str(tmp_path / "output")}}, "outputFile": str(tmp_path / "executor_output.json")}}
    command = [sys.executable, "-m", "components.runtime.step_client", EXECUTOR_MODULE, "--component_module_path", str(module),
               "--function_to_execute", function, "--executor_input", json.dumps(executor_input)]
    return command, {**os.environ, "_KFP_RUNTIME": "true", "MODEL_SERVING_HOME": str(tmp_path / "serving"), **environment}, marker


def start_sleeping_step(tmp_path: Path) -> tuple[subprocess.Popen, int]:
    """Start a step through the client, as a local run's command does; return the client and the forked step's pid."""
    command, environment, marker = step_command(tmp_path, "sleeper")
    client = subprocess.Popen(command, cwd=tmp_path, env=environment)
    deadline = time.monotonic() + 60
    while not marker.is_file() or not marker.read_text():
        assert client.poll() is None and time.monotonic() < deadline, "the step never started"
        time.sleep(0.05)
    return client, int(marker.read_text())


def wait_gone(pid: int, timeout_s: float = 30) -> bool:
    """Return whether process ``pid`` ended (or is a zombie) within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_a_signal_to_the_step_command_reaches_the_forked_step_and_the_command_dies_of_it(tmp_path):
    client, step = start_sleeping_step(tmp_path)
    assert step != client.pid
    assert b"kfp.dsl.executor_main --function_to_execute sleeper" in Path(f"/proc/{step}/cmdline").read_bytes(), "ps shows the step"
    client.send_signal(signal.SIGTERM)
    assert client.wait(timeout=30) == -signal.SIGTERM
    assert wait_gone(step), "the forked step outlived a SIGTERM to its command"


def test_a_step_whose_command_is_killed_is_ended_by_the_forkserver(tmp_path):
    client, step = start_sleeping_step(tmp_path)
    client.kill()
    client.wait(timeout=30)
    assert wait_gone(step), "the forked step outlived its killed command"


def test_the_forkserver_runs_only_the_kfp_executor_and_bounds_its_requests(tmp_path):
    environment = {"PATH": os.environ["PATH"], "_KFP_RUNTIME": "true", "PYTHONHASHSEED": "4242"}  # a forkserver of this test's own
    forkserver = subprocess.Popen([sys.executable, "-m", "components.runtime.step_forkserver", "--idle-exit-s", "1"], cwd=REPO, env=environment,
                                  stdout=subprocess.PIPE, text=True)
    try:
        ready = forkserver.stdout.readline()
        assert "ready on @model-pipelines-steps-" in ready
        address = "\0" + ready.strip().rsplit("@", 1)[1]
        request = {"module": "os", "arguments": [], "environment": {}, "directory": str(tmp_path)}
        streams = [0, 1, 2]
        assert "only kfp.dsl.executor_main runs" in ask_warm_process(address, json.dumps(request).encode(), streams)["error"]
        request["module"] = EXECUTOR_MODULE
        assert "working directory" in ask_warm_process(address, json.dumps({**request, "directory": "relative"}).encode(), streams)["error"]
        assert "request over" in ask_warm_process(address, b"", streams, announced_length=1024 * 1024 + 1)["error"]
        assert "three standard streams" in ask_warm_process(address, json.dumps(request).encode(), [1])["error"]
        assert forkserver.wait(timeout=60) == 0, "an idle forkserver exits by itself"
    finally:
        forkserver.kill()


def test_a_step_whose_forkserver_cannot_start_runs_fresh_and_says_why(tmp_path):
    (tmp_path / "not-a-directory").write_text("")
    # A keyed name no other test uses, so that no running forkserver answers, and a serving home where no log can be made.
    command, environment, marker = step_command(tmp_path, "quick", PYTHONHASHSEED="777", MODEL_SERVING_HOME=str(tmp_path / "not-a-directory"))
    result = subprocess.run(command, cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert result.returncode == 0, result.stdout
    assert "the step runs in a fresh process" in result.stdout
    assert int(marker.read_text()) not in forkserver_pids()
    assert json.loads((tmp_path / "executor_output.json").read_text())["parameterValues"]["Output"] == "done"


def test_a_forkserver_whose_environment_is_not_its_clients_exits_at_once_and_says_why():
    result = subprocess.run([sys.executable, "-m", "components.runtime.step_forkserver", "--expect-address", "model-pipelines-steps-elsewhere"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    assert result.returncode == 2
    assert "its Python path or environment differs from the client's" in result.stdout
