"""The compiled YAML: reproducible, on the project image, no pip install at pod start, side effects uncached."""

import filecmp
import os

import yaml

from tests.conftest import REPO, run_cli

COMPILED = REPO / "compiled"
FILES = ["anomaly-detector-retrain.yaml", "predictive-analytics-retrain.yaml"]


def load(name: str) -> list[dict]:
    return list(yaml.safe_load_all((COMPILED / name).read_text()))


def test_committed_yaml_equals_a_fresh_compile(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "KFP_DISABLE_EXECUTION_CACHING_BY_DEFAULT"}
    result = run_cli("compile", "--output-dir", str(tmp_path), env=env)
    assert result.returncode == 0, result.stdout
    for name in FILES:
        assert filecmp.cmp(COMPILED / name, tmp_path / name, shallow=False), f"{name} differs: run `make compile`"


def test_executors_install_nothing_and_use_the_project_image():
    for name in FILES:
        pipeline_spec = load(name)[0]
        executors = pipeline_spec["deploymentSpec"]["executors"]
        assert len(executors) == 4
        for executor in executors.values():
            container = executor["container"]
            text = " ".join(container.get("command", []) + container.get("args", []))
            assert "pip install" not in text and "pip3 install" not in text
            assert container["image"].endswith("/model-pipelines:0.1.0")


def test_image_option_changes_every_executor(tmp_path):
    result = run_cli("compile", "--output-dir", str(tmp_path), "--image", "quay.io/acme/model-pipelines:dev")
    assert result.returncode == 0, result.stdout
    images = {e["container"]["image"] for e in next(yaml.safe_load_all((tmp_path / FILES[0]).read_text()))["deploymentSpec"]["executors"].values()}
    assert images == {"quay.io/acme/model-pipelines:dev"}


def test_side_effect_tasks_are_not_cached_and_mount_the_store_pvc():
    for name in FILES:
        pipeline_spec, platform_spec = load(name)
        tasks = dict(pipeline_spec["root"]["dag"]["tasks"])
        tasks.update(pipeline_spec["components"]["comp-condition-1"]["dag"]["tasks"])
        caching = {task: spec.get("cachingOptions", {}).get("enableCache", False) for task, spec in tasks.items()}
        side_effects = [task for task in caching if task.startswith(("ingest", "evaluate", "save"))]
        assert len(side_effects) == 3 and not any(caching[task] for task in side_effects)
        executors = platform_spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        mounts = {executor: spec["pvcMount"][0] for executor, spec in executors.items()}
        assert {executor.removeprefix("exec-").split("-")[0] for executor in mounts} == {"evaluate", "save"}
        assert all(mount["mountPath"] == "/mnt/models" for mount in mounts.values())
        assert pipeline_spec["root"]["inputDefinitions"]["parameters"]["pvc_name"]["defaultValue"] == "model-storage-pvc"
