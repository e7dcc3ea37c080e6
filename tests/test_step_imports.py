"""A pipeline step's process imports only what its own path needs: the serving, storage and bookkeeping steps start
without numpy, pandas, scikit-learn, SciPy, requests or jsonschema (each step is a fresh Python process)."""

import ast
import json
import os
import subprocess
import sys

import pytest

from components.kfp.config import RETRAIN, carried_spec, config_from_arguments
from components.model.contract import ANOMALY_DETECTOR
from components.model.spec import spec_for
from pipelines.retrain import spec_constant
from tests.conftest import REPO

STEPS = REPO / "components" / "kfp" / "steps.py"
NUMERIC = ("numpy", "pandas", "sklearn", "scipy")
# Steps whose own work is numeric (ingest and train compute with numpy and pandas) are left out; every other step
# imports its numeric stack, requests and jsonschema inside the functions that use them, never at its start.
NOT_AT_START = {
    "validate_parameters": (*NUMERIC, "requests"),  # its own work, the spec of a retrain with knobs, takes jsonschema
    "evaluate": (*NUMERIC, "requests", "jsonschema"),
    "save_to_storage": (*NUMERIC, "requests", "jsonschema"),
    "deploy_inference_service": (*NUMERIC, "requests", "jsonschema"),
    "smoke_test": (*NUMERIC, "requests", "jsonschema"),
    "canary_promote": (*NUMERIC, "requests", "jsonschema"),
    "rollback": (*NUMERIC, "requests", "jsonschema"),
    "ensure_safe_serving": (*NUMERIC, "requests"),
    "monitor_drift": (*NUMERIC, "requests", "jsonschema"),
    "trigger_retrain": (*NUMERIC, "requests", "jsonschema"),
}


def step_imports(step: str) -> list[str]:
    """Return the import statements at the top level of the step wrapper's body in components/kfp/steps.py, as source."""
    tree = ast.parse(STEPS.read_text())
    function = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == step)
    return [ast.unparse(node) for node in function.body if isinstance(node, (ast.Import, ast.ImportFrom))]


CARRIED = spec_constant(spec_for(ANOMALY_DETECTOR))  # what the anomaly detector's retrain pipeline carries of its spec


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    """A configuration artifact as validate-parameters writes it, of a retrain of the anomaly detector."""
    path = tmp_path_factory.mktemp("config") / "config"
    path.write_text(config_from_arguments(RETRAIN, {}, {}, carried_spec(CARRIED)).to_json())
    return path


@pytest.mark.parametrize("step", sorted(NOT_AT_START))
def test_a_step_starts_without_the_modules_its_path_does_not_need(step, config_file):
    imports = step_imports(step)
    assert imports, f"{step} imports the project inside its body"
    # What the step does first: read the configuration artifact, or (validate-parameters, the exit handler) make it from the run's arguments.
    start = "settings = read_config(sys.argv[1]); settings.spec\n" if any("read_config" in line for line in imports) else \
        f"config_from_arguments({RETRAIN!r}, {{}}, {{}}, carried_spec(sys.argv[2]))\n"
    probe = "import json, sys\nimport kfp.dsl.executor_main\n" + "\n".join(imports) + "\n" + start + \
        "print(json.dumps(sorted(name for name in sys.modules if '.' not in name)))\n"
    result = subprocess.run([sys.executable, "-c", probe, str(config_file), CARRIED], cwd=REPO, env={**os.environ, "_KFP_RUNTIME": "true"},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = set(json.loads(result.stdout))
    assert not loaded & set(NOT_AT_START[step]), f"{step} imported {sorted(loaded & set(NOT_AT_START[step]))} before its work needs them"
