"""upload, submit and schedule through the real kfp.Client, driven by the CLI, against a KFP v2beta1 API stand-in."""


import json
import shlex

import pytest
import yaml

from pipelines.catalog import PIPELINE_FILES
from pipelines.cli import main
from tests.conftest import REPO, run_cli
from tests.kfp_standin import KfpStandIn


@pytest.fixture
def kfp():
    standin = KfpStandIn().start()
    yield standin
    standin.stop()


def cli(kfp, *args, token="kfp-test-token", env=None):
    options = ("--host", kfp.url, *(("--token", token) if token else ()))
    return run_cli(*args, *options, env=env, timeout=120)


def test_upload_creates_then_versions_then_is_idempotent(kfp):
    first = cli(kfp, "upload", "anomaly-detector")
    assert first.returncode == 0, first.stdout
    assert "uploaded pipeline anomaly-detector-retrain" in first.stdout and "Warning" not in first.stdout
    (upload,) = kfp.sent("POST", "/apis/v2beta1/pipelines/upload")
    assert upload["query"]["name"] == "anomaly-detector-retrain"
    assert upload["headers"]["content-type"].startswith("multipart/form-data")
    spec = next(yaml.safe_load_all(upload["files"]["uploadfile"]))
    assert spec["pipelineInfo"]["name"] == "anomaly-detector-retrain"
    assert upload["headers"]["authorization"] == "Bearer kfp-test-token"

    again = cli(kfp, "upload", "anomaly-detector")
    assert "already has this package" in again.stdout and "nothing to upload" in again.stdout
    assert kfp.sent("POST", "/apis/v2beta1/pipelines/upload_version") == []
    changed = cli(kfp, "upload", "anomaly-detector", "--image", "quay.io/acme/model-pipelines:dev")
    assert "uploaded anomaly-detector-retrain version anomaly-detector-retrain-" in changed.stdout
    assert "nothing to upload" in cli(kfp, "upload", "anomaly-detector", "--image", "quay.io/acme/model-pipelines:dev").stdout
    (version,) = kfp.sent("POST", "/apis/v2beta1/pipelines/upload_version")
    assert version["query"]["pipelineid"] == upload_id(kfp) and "quay.io/acme/model-pipelines:dev" in version["files"]["uploadfile"].decode()
    assert "kfp-test-token" not in first.stdout + again.stdout + changed.stdout


def upload_id(kfp) -> str:
    return next(iter(kfp.pipelines))


def test_submit_sends_the_run_body_and_wait_streams_states(kfp):
    assert cli(kfp, "upload", "predictive-analytics").returncode == 0
    result = cli(kfp, "submit", "predictive-analytics", "--param", "horizon_minutes=30", "--param", "canary_steps=10,100",
                 "--experiment", "nightly", "--wait", "--poll", "0.05")
    assert result.returncode == 0, result.stdout
    (run,) = kfp.sent("POST", "/apis/v2beta1/runs")
    body = run["json"]
    assert body["pipeline_version_reference"]["pipeline_id"] == upload_id(kfp)
    assert body["runtime_config"]["parameters"] == {"training": {"horizon_minutes": 30}, "canary_steps": [10, 100]}
    assert body["experiment_id"] == next(iter(kfp.experiments)) and kfp.experiments[body["experiment_id"]]["display_name"] == "nightly"
    assert "RUNNING" in result.stdout and "SUCCEEDED" in result.stdout


def test_wait_exit_code_follows_a_failed_run(kfp):
    kfp.run_states = ("PENDING", "RUNNING", "FAILED")
    assert cli(kfp, "upload", "anomaly-detector").returncode == 0
    result = cli(kfp, "submit", "anomaly-detector", "--wait", "--poll", "0.05")
    assert result.returncode == 1 and "FAILED" in result.stdout


def test_schedule_lifecycle_and_recurring_run_body(kfp):
    assert cli(kfp, "upload", "anomaly-detector").returncode == 0
    created = cli(kfp, "schedule", "create", "anomaly-detector", "--cron", "0 0 2 * * 0", "--name", "weekly", "--param", "days=14")
    assert created.returncode == 0, created.stdout
    (request,) = kfp.sent("POST", "/apis/v2beta1/recurringruns")
    body = request["json"]
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 2 * * 0"
    assert body["max_concurrency"] in (1, "1") and body["no_catchup"] is True and body["mode"] == "ENABLE"
    assert body["runtime_config"]["parameters"] == {"days": 14.0}
    listed = cli(kfp, "schedule", "list")
    assert "weekly" in listed.stdout and "0 0 2 * * 0" in listed.stdout
    assert "disabled" in cli(kfp, "schedule", "disable", "weekly").stdout
    assert next(iter(kfp.recurring.values()))["status"] == "DISABLED"
    assert cli(kfp, "schedule", "enable", "weekly").returncode == 0
    assert kfp.sent("POST", "/apis/v2beta1/recurringruns/")[-1]["path"].endswith(":enable")
    assert cli(kfp, "schedule", "delete", "weekly").returncode == 0 and kfp.recurring == {}


def test_five_field_cron_is_refused_with_a_hint(kfp):
    result = cli(kfp, "schedule", "create", "anomaly-detector", "--cron", "0 2 * * 0")
    assert result.returncode == 2 and "6 fields, seconds first" in result.stdout and "did you mean '0 0 2 * * 0'" in result.stdout
    assert kfp.requests == [], "refused before contacting the server"


def test_connection_errors_are_clear(kfp, tmp_path):
    unreachable = run_cli("upload", "anomaly-detector", "--host", "http://127.0.0.1:9", "--token", "x")
    assert unreachable.returncode == 1 and "cannot reach the KFP API at http://127.0.0.1:9" in unreachable.stdout
    denied = cli(kfp, "upload", "anomaly-detector", token="wrong-secret-token")
    assert denied.returncode == 1 and "refused the credentials (401)" in denied.stdout and "wrong-secret-token" not in denied.stdout
    missing = cli(kfp, "submit", "anomaly-detector")
    assert missing.returncode == 1 and "pipeline 'anomaly-detector-retrain' is not on" in missing.stdout and "model-pipelines upload" in missing.stdout
    no_host = run_cli("submit", "anomaly-detector", env={"KF_PIPELINES_ENDPOINT": ""})
    assert no_host.returncode == 1 and "no KFP host" in no_host.stdout


def test_host_and_token_come_from_the_environment(kfp):
    result = run_cli("upload", "anomaly-detector", env={"KF_PIPELINES_ENDPOINT": kfp.url, "KF_PIPELINES_TOKEN": "kfp-test-token"})
    assert result.returncode == 0, result.stdout
    assert kfp.sent("POST", "/apis/v2beta1/pipelines/upload")[0]["headers"]["authorization"] == "Bearer kfp-test-token"


def test_a_misspelt_parameter_is_named_before_any_connection(kfp):
    for verb in (("submit", "anomaly-detector"), ("schedule", "create", "anomaly-detector", "--cron", "0 0 2 * * 0")):
        result = cli(kfp, *verb, "--param", "dayz=3")
        assert result.returncode == 2 and "has no parameter 'dayz'; did you mean 'days'?" in result.stdout, result.stdout
        offline = run_cli(*verb, "--param", "dayz=3", "--host", "http://127.0.0.1:9", "--token", "x")
        assert offline.returncode == 2 and "dayz" in offline.stdout and "cannot reach" not in offline.stdout
    bad_value = cli(kfp, "submit", "anomaly-detector", "--param", "canary_steps=50,10")
    assert bad_value.returncode == 2 and "canary_steps=[50, 10]: must be strictly increasing" in bad_value.stdout
    assert kfp.requests == [], "refused before contacting the server"


def test_submit_and_schedule_use_the_newest_of_two_uploaded_versions(kfp):
    assert cli(kfp, "upload", "anomaly-detector").returncode == 0
    assert cli(kfp, "upload", "anomaly-detector", "--image", "quay.io/acme/model-pipelines:dev").returncode == 0
    pipeline_id = upload_id(kfp)
    first, newest = (version["pipeline_version_id"] for version in kfp.versions[pipeline_id])
    assert cli(kfp, "submit", "anomaly-detector", "--experiment", "nightly").returncode == 0
    assert cli(kfp, "schedule", "create", "anomaly-detector", "--cron", "0 0 2 * * 0", "--experiment", "nightly").returncode == 0
    experiment_id = next(experiment_id for experiment_id, e in kfp.experiments.items() if e["display_name"] == "nightly")
    for body in (kfp.sent("POST", "/apis/v2beta1/runs")[0]["json"], kfp.sent("POST", "/apis/v2beta1/recurringruns")[0]["json"]):
        assert body["pipeline_version_reference"] == {"pipeline_id": pipeline_id, "pipeline_version_id": newest}, "the newest, not the first"
        assert body["experiment_id"] == experiment_id
    assert newest != first


def test_a_parameter_the_uploaded_version_lacks_is_refused_with_the_fix(kfp, tmp_path):
    package = tmp_path / "old.yaml"
    documents = list(yaml.safe_load_all((REPO / "compiled" / "anomaly-detector-retrain.yaml").read_text()))
    del documents[0]["root"]["inputDefinitions"]["parameters"]["canary"]["defaultValue"]["max_live_p95_latency_ms"]  # as an older release had it
    package.write_text(yaml.safe_dump_all(documents))
    assert cli(kfp, "upload", "anomaly-detector", "--package", str(package)).returncode == 0
    result = cli(kfp, "submit", "anomaly-detector", "--param", "max_live_p95_latency_ms=50")
    assert result.returncode == 1 and "has no parameter(s) canary.max_live_p95_latency_ms" in result.stdout and "model-pipelines upload" in result.stdout
    assert kfp.sent("POST", "/apis/v2beta1/runs") == []


def test_the_standin_is_as_strict_as_the_api(kfp):
    import requests

    headers = {"Authorization": "Bearer kfp-test-token"}
    api = f"{kfp.url}/apis/v2beta1"
    assert requests.post(f"{api}/runs", json={"display_name": "r"}, headers=headers, timeout=10).status_code == 400
    assert requests.post(f"{api}/runs", json={"display_name": "r", "pipeline_version_reference": {"pipeline_id": "p", "pipeline_version_id": "v"}},
                         headers=headers, timeout=10).status_code == 404
    assert requests.post(f"{api}/recurringruns", json={"display_name": "r"}, headers=headers, timeout=10).status_code == 400
    assert requests.post(f"{api}/pipelines/upload?name=x", headers=headers, timeout=10).status_code == 400
    assert requests.get(f"{api}/pipelines/unknown/versions", headers=headers, timeout=10).status_code == 404
    assert cli(kfp, "upload", "anomaly-detector").returncode == 0
    package = (REPO / "compiled" / "anomaly-detector-retrain.yaml").read_bytes()
    duplicate = requests.post(f"{api}/pipelines/upload?name=anomaly-detector-retrain", files={"uploadfile": ("p.yaml", package)}, headers=headers, timeout=10)
    assert duplicate.status_code == 409
    versions = requests.get(f"{api}/pipelines/{upload_id(kfp)}/versions?sort_by=created_at", headers=headers, timeout=10).json()["pipeline_versions"]
    assert len(versions) == 1 and versions[0]["pipeline_spec"]["pipelineInfo"]["name"] == "anomaly-detector-retrain"


def test_the_hourly_drift_monitor_schedule_as_the_readme_shows_it(kfp):
    assert cli(kfp, "upload", "model-monitor").returncode == 0
    retrain = '{"source": "prometheus", "prometheus_url": "https://thanos-querier.openshift-monitoring.svc:9091"}'
    created = cli(kfp, "schedule", "create", "model-monitor", "--cron", "0 0 * * * *", "--name", "drift-anomaly-detector",
                  "--param", "model_name=anomaly-detector", "--param", "source=prometheus",
                  "--param", "prometheus_url=https://thanos-querier.openshift-monitoring.svc:9091", "--param", "action=submit",
                  "--param", "dsp_api_url=https://ds-pipeline-dspa.models.svc:8443", "--param", f"retrain_parameters={retrain}")
    assert created.returncode == 0, created.stdout
    (request,) = kfp.sent("POST", "/apis/v2beta1/recurringruns")
    body = request["json"]
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 * * * *" and body["display_name"] == "drift-anomaly-detector"
    assert body["runtime_config"]["parameters"]["monitor"] == {"dsp_api_url": "https://ds-pipeline-dspa.models.svc:8443",
                                                              "retrain_parameters": json.loads(retrain)}
    assert body["runtime_config"]["parameters"]["action"] == "submit"
    bad = cli(kfp, "schedule", "create", "model-monitor", "--cron", "0 0 * * * *", "--param", "action=retrain")
    assert bad.returncode == 2 and "action='retrain': must be one of report, submit" in bad.stdout


def test_a_local_verb_without_local_prints_the_submit_command_that_does_it_on_a_cluster(kfp):
    refused = run_cli("rollout", "anomaly-detector", "--version", "v3", "--param", "canary_steps=[5, 50]")
    assert refused.returncode == 2 and "`model-pipelines rollout` runs on this machine, with --local" in refused.stdout, refused.stdout
    (command,) = [line.strip() for line in refused.stdout.splitlines() if line.strip().startswith("model-pipelines submit")]
    assert cli(kfp, "upload", "model-rollout").returncode == 0
    submitted = cli(kfp, *shlex.split(command)[1:])
    assert submitted.returncode == 0, submitted.stdout
    (run,) = kfp.sent("POST", "/apis/v2beta1/runs")
    assert run["json"]["runtime_config"]["parameters"] == {"model_name": "anomaly-detector", "version": "v3", "canary_steps": [5, 50]}
    monitor = run_cli("monitor", "all")
    assert monitor.returncode == 2 and [line.strip() for line in monitor.stdout.splitlines() if "submit" in line] == [
        "model-pipelines submit model-monitor --param model_name=anomaly-detector",
        "model-pipelines submit model-monitor --param model_name=predictive-analytics"]


def test_every_profile_folder_uploads_under_its_pipelines_names_byte_for_byte_and_platform_compiles_the_same(kfp, capsys):
    """One stand-in for every upload; the CLI runs in this process so that kfp is imported once for about sixty uploads."""
    connection = ("--host", kfp.url, "--token", "kfp-test-token")
    by_platform = {("rhoai-2.22", "pvc"): "rhoai-2.20-2.25-pvc", ("rhoai-2.16", "s3"): "rhoai-2.16-2.19-s3"}
    for (platform, store), folder in by_platform.items():
        assert main(["upload", "all", "--platform", platform, "--store", store, *connection]) == 0
        assert f"compiled for platform {platform}, store {store} (the {folder} profile)" in capsys.readouterr().out
    folders = sorted(path for path in (REPO / "compiled").iterdir() if path.is_dir())
    assert len(folders) == 12  # six distinct outputs (three OpenShift AI, three upstream), each for the PVC and the S3 store
    for folder in folders:
        for key, file_name in PIPELINE_FILES.items():
            assert main(["upload", key, "--package", str(folder / file_name), *connection]) == 0
        printed = capsys.readouterr().out
        # the --platform uploads above compiled exactly these files, so uploading them again adds nothing
        assert printed.count("already has this package") == (4 if folder.name in by_platform.values() else 0), printed

    names = {pipeline_id: pipeline["display_name"] for pipeline_id, pipeline in kfp.pipelines.items()}
    stored = [(names[version["pipeline_id"]], version) for versions in kfp.versions.values() for version in versions]
    assert sorted(names.values()) == sorted(name.removesuffix(".yaml") for name in PIPELINE_FILES.values())
    assert all(version["pipeline_spec"]["pipelineInfo"]["name"] == name for name, version in stored)
    files = {(path.stem, path.read_bytes()) for folder in folders for path in folder.glob("*.yaml")}
    assert len(stored) == len(files) == 12 * 4
    assert {(name, kfp.packages[version["pipeline_version_id"]]) for name, version in stored} == files


def test_a_package_for_all_or_for_another_pipeline_is_refused_naming_both_and_the_fix(kfp, capsys):
    detector = "compiled/rhoai-2.20-2.25-pvc/anomaly-detector-retrain.yaml"
    connection = ("--host", kfp.url, "--token", "kfp-test-token")
    assert main(["upload", "all", "--package", detector, *connection]) == 2
    refused = capsys.readouterr().err
    assert "--package is one pipeline" in refused and "model-pipelines upload all --platform <your release>" in refused
    assert f"model-pipelines upload anomaly-detector --package {detector}" in refused
    assert main(["upload", "predictive-analytics", "--package", detector, *connection]) == 2
    refused = capsys.readouterr().err
    assert f"{detector} is pipeline 'anomaly-detector-retrain', not 'predictive-analytics-retrain'" in refused
    assert "predictive-analytics's own file (compiled/rhoai-2.20-2.25-pvc/predictive-analytics-retrain.yaml)" in refused
    assert main(["upload", "anomaly-detector", "--package", detector, "--platform", "rhoai-2.22", *connection]) == 2
    assert "takes none of the compile options (--platform)" in capsys.readouterr().err
    assert kfp.requests == [], "refused before contacting the server"


def test_submit_and_schedule_with_a_platform_start_only_its_upload_and_refuse_the_parameters_it_fixes(kfp, capsys):
    connection = ("--host", kfp.url, "--token", "kfp-test-token")
    assert main(["upload", "anomaly-detector", "--package", "compiled/rhoai-2.20-2.25-pvc/anomaly-detector-retrain.yaml", *connection]) == 0
    assert main(["submit", "anomaly-detector", "--platform", "rhoai-2.22", "--param", "days=3", *connection]) == 0
    assert main(["schedule", "create", "anomaly-detector", "--platform", "rhoai-2.25", "--cron", "0 0 2 * * 0", *connection]) == 0
    capsys.readouterr()
    assert main(["submit", "anomaly-detector", "--platform", "rhoai-3.5", *connection]) == 1
    assert ("was compiled for rhoai-2.20-2.25, not for rhoai-3.5 --store pvc: "
            "run `model-pipelines upload anomaly-detector --platform rhoai-3.5 --store pvc`") in capsys.readouterr().err
    assert main(["schedule", "create", "anomaly-detector", "--platform", "rhoai-2.22", "--store", "s3", "--cron", "0 0 2 * * 0", *connection]) == 1
    assert "compiled for rhoai-2.20-2.25 with other store settings, not for rhoai-2.22 --store s3" in capsys.readouterr().err
    assert main(["submit", "anomaly-detector", "--param", "model_store=s3", *connection]) == 1
    assert "was compiled for rhoai-2.20-2.25, which fixes model_store at compile time" in capsys.readouterr().err
    contacted = len(kfp.requests)
    assert main(["submit", "anomaly-detector", "--platform", "rhoai-2.22", "--param", "model_store=s3", *connection]) == 2
    assert "rhoai-2.22 has no optional Secrets, so the compile fixes model_store" in capsys.readouterr().err
    assert len(kfp.requests) == contacted, "refused before contacting the server"
    assert len(kfp.runs) == 1 and len(kfp.recurring) == 1


def test_help_is_plain_text_and_only_run_speaks_of_scoping_a_parameter_to_one_model(capsys):
    shown = {}
    for verb in ("", "run", "rollout", "monitor"):
        with pytest.raises(SystemExit):
            main([*verb.split(), "--help"])
        shown[verb] = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert [verb for verb, text in shown.items() if "``" in text] == []
    assert "<model>.K=V sets it for one model only (with all)" in shown["run"]
    assert "<model>.K=V" not in shown["rollout"] + shown["monitor"] and "run all" not in shown["rollout"] + shown["monitor"]


def test_a_spec_models_own_pipelines_upload_submit_and_schedule_by_its_spec_file(kfp, capsys):
    """A model added as a spec file goes to a cluster as the built-ins do: the commands a local verb prints, then --model."""
    spec_file = "examples/disk-failure-predictor/model.yaml"
    connection = ("--host", kfp.url, "--token", "kfp-test-token")
    assert main(["run", "--model", spec_file, "--param", "training.classifier.C=0.5"]) == 2
    printed = [line.strip() for line in capsys.readouterr().err.splitlines()]
    assert f"(`model-pipelines upload --model {spec_file} --platform <your release, e.g. rhoai-2.25>`), then:" in printed[0]
    assert printed[1] == f"model-pipelines submit --model {spec_file} --param training.classifier.C=0.5"

    assert main(["upload", "--model", spec_file, *connection]) == 0
    assert "compiled disk-failure-predictor for platform" in capsys.readouterr().out
    uploaded = {upload["query"]["name"]: next(yaml.safe_load_all(upload["files"]["uploadfile"]))
                for upload in kfp.sent("POST", "/apis/v2beta1/pipelines/upload")}
    names = ["disk-failure-predictor-retrain", "disk-failure-predictor-rollout", "disk-failure-predictor-monitor"]
    assert list(uploaded) == names and [package["pipelineInfo"]["name"] for package in uploaded.values()] == names
    pipeline_ids = {pipeline["display_name"]: pipeline_id for pipeline_id, pipeline in kfp.pipelines.items()}

    assert main([*shlex.split(printed[1])[1:], *connection]) == 0
    assert main(["submit", "model-rollout", "--model", spec_file, "--param", "version=v2", *connection]) == 0
    assert main(["schedule", "create", "--model", spec_file, "--cron", "0 0 2 * * 0", *connection]) == 0
    assert "schedule disk-failure-predictor-retrain-schedule" in capsys.readouterr().out
    retrain, rollout = (run["json"] for run in kfp.sent("POST", "/apis/v2beta1/runs"))
    assert retrain["pipeline_version_reference"]["pipeline_id"] == pipeline_ids["disk-failure-predictor-retrain"]
    assert retrain["runtime_config"]["parameters"] == {"training": {"classifier.C": 0.5}}
    assert rollout["pipeline_version_reference"]["pipeline_id"] == pipeline_ids["disk-failure-predictor-rollout"]
    assert rollout["runtime_config"]["parameters"] == {"version": "v2"}
    (recurring,) = (request["json"] for request in kfp.sent("POST", "/apis/v2beta1/recurringruns"))
    assert recurring["pipeline_version_reference"]["pipeline_id"] == pipeline_ids["disk-failure-predictor-retrain"]

    contacted = len(kfp.requests)
    for command, refusal in (
        (["submit", "model-rollout", "--model", spec_file, "--param", "model_name=anomaly-detector"], "has no parameter 'model_name'"),
        (["submit", "anomaly-detector", "--model", spec_file], "names the model (disk-failure-predictor), so drop anomaly-detector"),
        (["submit"], "name a pipeline (anomaly-detector, predictive-analytics, model-rollout, model-monitor), or a model spec file"),
        (["upload", "model-monitor", "--model", spec_file, "--package", "compiled/model-monitor.yaml"],
         "is pipeline 'model-monitor', not 'disk-failure-predictor-monitor'"),
    ):
        assert main([*command, *connection]) == 2, command
        assert refusal in capsys.readouterr().err, command
    assert len(kfp.requests) == contacted, "refused before contacting the server"
