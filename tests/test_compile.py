"""The compiled YAML: reproducible, on the project image, no pip install at pod start, side effects uncached."""

import filecmp
import os

import pytest
import yaml

from components.kfp.workflow import ARGO_WORKFLOW_LABEL, RUN_ENV, this_run
from tests.conftest import REPO, run_cli
from tests.kustomize import MANIFESTS, by_kind, rendered

COMPILED = REPO / "compiled"
FILES = ["anomaly-detector-retrain.yaml", "predictive-analytics-retrain.yaml", "model-rollout.yaml"]
EXECUTOR_COUNTS = {FILES[0]: 10, FILES[1]: 10, FILES[2]: 7}
# Never cached and time-bounded: every task but train (validate-parameters must run on every run too).
SIDE_EFFECTS = ("validate", "ingest", "evaluate", "save", "deploy", "smoke", "canary", "rollback", "ensure-safe")
STORE_USERS = {"validate", "evaluate", "save", "deploy", "smoke", "canary", "rollback", "ensure-safe"}


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
        assert len(executors) == EXECUTOR_COUNTS[name]
        for executor in executors.values():
            container = executor["container"]
            text = " ".join(container.get("command", []) + container.get("args", []))
            assert "pip install" not in text and "pip3 install" not in text
            assert container["image"].endswith("/model-pipelines:0.1.0")
        defaults = {k: v.get("defaultValue") for k, v in pipeline_spec["root"]["inputDefinitions"]["parameters"].items()}
        assert defaults["serving_target"] == "kserve" and defaults["serving"]["deployment_mode"] == "auto"


def test_every_compiled_cluster_pipeline_defaults_to_the_clusters_own_metrics():
    compiled = sorted(COMPILED.glob("**/*.yaml"))
    assert len(compiled) > 20
    for path in compiled:
        parameters = next(yaml.safe_load_all(path.read_text()))["root"]["inputDefinitions"]["parameters"]
        defaults = {name: spec.get("defaultValue") for name, spec in parameters.items()}
        assert defaults["source"] == "prometheus", path
        assert defaults["prometheus_url"] == "https://thanos-querier.openshift-monitoring.svc.cluster.local:9091", path
        assert defaults["prometheus"]["ca_bundle"] == "/var/run/secrets/kubernetes.io/serviceaccount/service-ca.crt", path
        if "monitor" not in path.name:
            assert defaults["serving"]["allow_synthetic_deploy"] is False, path


def test_image_option_changes_every_executor(tmp_path):
    result = run_cli("compile", "--output-dir", str(tmp_path), "--image", "quay.io/acme/model-pipelines:dev")
    assert result.returncode == 0, result.stdout
    images = {e["container"]["image"] for e in next(yaml.safe_load_all((tmp_path / FILES[0]).read_text()))["deploymentSpec"]["executors"].values()}
    assert images == {"quay.io/acme/model-pipelines:dev"}


def all_tasks(pipeline_spec: dict) -> dict[str, dict]:
    """Return every task of the pipeline, nested condition and exit-handler groups included."""
    tasks = dict(pipeline_spec["root"]["dag"]["tasks"])
    for component in pipeline_spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return {name: spec for name, spec in tasks.items() if "componentRef" in spec and not name.startswith(("condition-", "exit-handler-"))}


def test_side_effect_tasks_are_not_cached_and_mount_the_store_pvc():
    for name in FILES:
        pipeline_spec, platform_spec = load(name)
        tasks = all_tasks(pipeline_spec)
        side_effects = [task for task in tasks if task.startswith(SIDE_EFFECTS)]
        assert sorted(set(tasks) - set(side_effects)) == (["train"] if "retrain" in name else [])
        assert not any(tasks[task].get("cachingOptions", {}).get("enableCache") for task in side_effects)
        executors = platform_spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        mounting = {executor: spec for executor, spec in executors.items() if "pvcMount" in spec}
        users = {next(user for user in STORE_USERS if executor.removeprefix("exec-").startswith(user)) for executor in mounting}
        # The parameter check reads the store: a rollout's resolves a model-registry:// version against it, a retrain's reads the
        # regime its stable version learned.
        assert users == (STORE_USERS - {"evaluate", "save"} if name == FILES[2] else STORE_USERS)
        assert all(spec["pvcMount"][0]["mountPath"] == "/mnt/models" for spec in mounting.values())
        assert {spec["pvcMount"][0]["constant"] for spec in mounting.values()} == {"model-storage-pvc"}, "the installation's PVC, no run parameter"
        assert "pvc_name" not in pipeline_spec["root"]["inputDefinitions"]["parameters"]


def test_side_effect_tasks_have_timeouts_and_the_yaml_holds_no_secrets():
    import re

    for name in FILES:
        pipeline_spec, platform_spec = load(name)
        executors = platform_spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        side_effect_executors = [e for e in pipeline_spec["deploymentSpec"]["executors"] if not e.startswith("exec-train")]
        assert all(int(executors[e]["activeDeadlineSeconds"]) > 0 for e in side_effect_executors)
        text = (COMPILED / name).read_text()
        assert not re.search(r"AKIA[0-9A-Z]{16}|BEGIN [A-Z ]*PRIVATE KEY|standin-token|kfp-test-token", text)
        for executor in pipeline_spec["deploymentSpec"]["executors"].values():
            assert "env" not in executor["container"], "credentials must come from the secret at run time, not the YAML"
        for spec in executors.values():
            for secret in spec.get("secretAsEnv", []):
                assert secret["optional"] is True
                assert secret["secretNameParameter"] == {"runtimeValue": {"constant": secret["secretName"]}}, "the installation's, no run parameter"
                if secret["secretName"] == "prometheus-token":
                    assert secret["keyToEnv"] == [{"envVar": "PROMETHEUS_TOKEN", "secretKey": "token"}]
                    continue
                if secret["secretName"] == "model-registry-token":
                    assert secret["keyToEnv"] == [{"envVar": "MODEL_REGISTRY_TOKEN", "secretKey": "token"}]
                    continue
                if secret["secretName"] == "gitops-credentials":
                    assert {(pair["secretKey"], pair["envVar"]) for pair in secret["keyToEnv"]} == {
                        ("token", "GITOPS_TOKEN"), ("ssh-privatekey", "GITOPS_SSH_KEY"), ("known_hosts", "GITOPS_KNOWN_HOSTS")}
                    continue
                assert secret["secretName"] == "model-storage-config"
                assert {pair["envVar"] for pair in secret["keyToEnv"]} == {
                    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_S3_ENDPOINT", "AWS_DEFAULT_REGION", "AWS_S3_BUCKET"}
        parameters = pipeline_spec["root"]["inputDefinitions"]["parameters"]
        assert not [name for name in parameters if "token" in name or "password" in name or "secret" in name], "no credential is a run parameter"


def test_every_step_that_records_or_checks_its_runs_deployments_reads_its_argo_workflows_name_on_every_backend():
    # A recurring run's run-name placeholder is empty (KFP compiles a schedule with no display name) and KFP 2.2-2.4 pass it
    # unresolved: the same for every run. The workflow's name, from the pod's label, is the run's own on every backend.
    checked = 0
    for path in sorted(COMPILED.glob("**/*.yaml")):
        pipeline_spec, platform_spec = yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader)
        executors = platform_spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        for component in pipeline_spec["components"].values():
            executor = component.get("executorLabel")
            if executor and "run_name" in component.get("inputDefinitions", {}).get("parameters", {}):
                assert executors[executor].get("fieldPathAsEnv") == [{"name": RUN_ENV, "fieldPath": ARGO_WORKFLOW_LABEL}], (path, executor)
                checked += 1
    # save, deploy, canary-promote, rollback and the exit handler in a retrain; all but save in a rollout
    assert checked == 5 * len(list(COMPILED.glob("**/*-retrain.yaml"))) + 4 * len(list(COMPILED.glob("**/model-rollout.yaml"))), checked


def test_a_step_names_its_run_by_its_workflow_and_refuses_to_deploy_without_a_name_of_its_own(monkeypatch):
    monkeypatch.delenv(RUN_ENV, raising=False)
    assert this_run("model-rollout-2026-12-06-22-08-17-653271") == "model-rollout-2026-12-06-22-08-17-653271", "a local run's own name"
    for nameless in ("", " ", "{{$.pipeline_job_name}}"):  # a recurring run's; KFP 2.2-2.4's unresolved placeholder
        with pytest.raises(ValueError, match=r"this run has no name of its own .* nothing was changed: upload the YAML this project compiles"):
            this_run(nameless)
    monkeypatch.setenv(RUN_ENV, "anomaly-detector-retrain-x7k2p\n")
    assert this_run("") == this_run("{{$.pipeline_job_name}}") == this_run("a display name") == "anomaly-detector-retrain-x7k2p"


def test_retrain_dag_order_and_safe_exit():
    pipeline_spec, _ = load(FILES[0])
    tasks = all_tasks(pipeline_spec)
    upstream = {name: set(spec.get("dependentTasks", [])) for name, spec in tasks.items()}
    assert upstream["deploy-inference-service"] == {"save-to-storage"}
    assert upstream["smoke-test"] >= {"deploy-inference-service"}
    exit_task = pipeline_spec["root"]["dag"]["tasks"]["ensure-safe-serving"]
    assert exit_task["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    conditions = [spec["triggerPolicy"]["condition"] for spec in pipeline_spec["components"]["comp-exit-handler-1"]["dag"]["tasks"].values() if "triggerPolicy" in spec]
    assert any("evaluate-Output" in condition for condition in conditions)


def test_image_build_manifests_produce_the_default_image_tag_without_building_on_apply():
    from components import __version__
    from pipelines.retrain import DEFAULT_IMAGE

    base = rendered(MANIFESTS / "base")
    (stream,), (build,), (runtime,) = by_kind(base, "ImageStream"), by_kind(base, "BuildConfig"), by_kind(base, "ServingRuntime")
    assert build["spec"]["strategy"]["dockerStrategy"]["dockerfilePath"] == "Containerfile"
    assert "triggers" not in build["spec"], "a trigger would start a build from the placeholder Git URL on `oc apply`"
    tag = build["spec"]["output"]["to"]["name"]
    assert tag.split(":")[0] == stream["metadata"]["name"] and tag.endswith(f":{__version__}")
    assert DEFAULT_IMAGE.endswith(f"/{build['metadata']['namespace']}/{tag}")
    assert runtime["spec"]["containers"][0]["image"] == DEFAULT_IMAGE, "the ServingRuntime runs the image the build pushes"
    containerfile = (REPO / "Containerfile").read_text()
    assert "ubi9/python-311" in containerfile and "pip install --no-cache-dir ." in containerfile


def waited_for(pipeline_spec: dict) -> dict[str, set[str]]:
    """Return, per task, every task it starts after: its dependencies, the tasks inside them, theirs, and its group's."""
    dags = {"": pipeline_spec["root"]["dag"]["tasks"]}
    dags.update({name: component["dag"]["tasks"] for name, component in pipeline_spec["components"].items() if "dag" in component})
    group_of = {spec["componentRef"]["name"]: task for tasks in dags.values() for task, spec in tasks.items() if spec["componentRef"]["name"] in dags}
    parent = {task: group_of.get(component) for component, tasks in dags.items() for task in tasks}
    direct = {task: set(spec.get("dependentTasks", [])) for tasks in dags.values() for task, spec in tasks.items()}
    inside = {group: set(dags[component]) for component, group in group_of.items()}

    def before(task: str) -> set[str]:
        found = set()
        for upstream in direct[task]:
            found |= {upstream, *inside.get(upstream, ())} | before(upstream)
        return found | (before(parent[task]) if parent[task] else set())

    return {task: before(task) for task in direct}


def test_the_first_task_checks_every_run_parameter_of_every_pipeline():
    for name in FILES:
        pipeline_spec = load(name)[0]
        declared = set(pipeline_spec["root"]["inputDefinitions"]["parameters"])
        check = all_tasks(pipeline_spec)["validate-parameters"]
        assert "config" in pipeline_spec["components"]["comp-validate-parameters"]["outputDefinitions"]["artifacts"], "it writes the configuration"
        wired = {  # in a sub-DAG the pipeline parameter arrives under the name the sub-DAG gives it
            argument: spec["componentInputParameter"].removeprefix("pipelinechannel--")
            for argument, spec in check["inputs"]["parameters"].items() if "componentInputParameter" in spec
        }
        assert set(wired.values()) == declared, f"{name}: unchecked run parameters {sorted(declared - set(wired.values()))}"
        assert all(argument == parameter for argument, parameter in wired.items())
        assert not check.get("dependentTasks"), "it runs first"
        # Every other task starts after the check (the exit handler after the whole group that holds it).
        unchecked = [task for task, upstream in waited_for(pipeline_spec).items() if task in all_tasks(pipeline_spec)
                     and "validate-parameters" not in upstream and task != "validate-parameters"]
        assert unchecked == [], f"{name}: {unchecked} may start before the parameter check"


def test_every_parameter_has_a_description_and_every_task_a_display_name():
    for name in FILES:
        pipeline_spec = load(name)[0]
        parameters = pipeline_spec["root"]["inputDefinitions"]["parameters"]
        undescribed = sorted(parameter for parameter, spec in parameters.items() if len(spec.get("description", "")) < 15)
        assert undescribed == [], f"{name}: parameters without a description (components/kfp/config.py KNOBS): {undescribed}"
        for task_name, task in all_tasks(pipeline_spec).items():
            shown = task["taskInfo"]["name"]
            assert shown != task_name and shown[0].isupper(), f"{name}: task {task_name} has no display name (.set_display_name)"
