"""Compile profiles per OpenShift AI release / KFP backend, proved against each release's own protos."""

import filecmp
import json
import shutil

import pytest
import yaml

from pipelines.platforms import PLATFORMS, output_key, profile_folder
from components.kfp.config import Installation
from pipelines.catalog import PIPELINE_FILES
from pipelines.retrain import compile_pipelines
from tests.conftest import REPO, run_cli
from tests.dsp_protos import DSP_BACKENDS, message_classes, releases, strict_parse_errors

COMPILED = REPO / "compiled"
RELEASES = releases()
needs_protos = pytest.mark.skipif(not RELEASES, reason=f"the DSP backend protos are not at {DSP_BACKENDS} (shared/ is not beside this clone)")


@pytest.fixture(scope="module")
def protos(tmp_path_factory):
    work = tmp_path_factory.mktemp("protos")
    return {release: message_classes(release, work) for release in RELEASES}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Compile every release with both stores through the public compile function, once per group of identical outputs."""
    root = tmp_path_factory.mktemp("profiles")
    outputs, by_key = {}, {}
    for release in RELEASES:
        for store in ("pvc", "s3"):
            key = output_key(PLATFORMS[release], store)
            if key not in by_key:
                paths = compile_pipelines(root / f"{release}-{store}", platform=release, store=store)
                by_key[key] = {path.name: list(yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader)) for path in paths}
            outputs[release, store] = by_key[key]
    return outputs


def executors(documents: list[dict]) -> dict:
    return documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@needs_protos
@pytest.mark.parametrize("store", ["pvc", "s3"])
def test_every_release_profile_parses_strictly_against_that_releases_protos(compiled, protos, store):
    for release in RELEASES:
        for name, documents in compiled[release, store].items():
            assert strict_parse_errors(documents, protos[release]) == [], f"{release} --store {store}: {name}"


@needs_protos
def test_the_strict_parse_rejects_the_default_yaml_on_older_backends(protos):
    documents = list(yaml.safe_load_all((COMPILED / "model-rollout.yaml").read_text()))
    assert any("pvcNameParameter" in error for error in strict_parse_errors(documents, protos["rhoai-2.16"]))
    assert any('"optional"' in error for error in strict_parse_errors(documents, protos["rhoai-2.25"]))
    assert strict_parse_errors(documents, protos["rhoai-3.5"]) == []


@needs_protos
def test_legacy_fields_and_no_optional_secret_before_3_0(compiled):
    for (release, store), outputs in compiled.items():
        platform = PLATFORMS[release]
        for documents in outputs.values():
            parameters = documents[0]["root"]["inputDefinitions"]["parameters"]
            if "serving_target" in parameters:  # the monitor serves nothing
                assert parameters["serving"]["defaultValue"]["rollout_strategy"] == platform.rollout_strategy
            configs = executors(documents)
            mounts = [mount for config in configs.values() for mount in config.get("pvcMount", [])]
            secrets = [secret for config in configs.values() for secret in config.get("secretAsEnv", [])]
            assert mounts and all(mount["constant"] == "model-storage-pvc" for mount in mounts)
            if platform.optional_secrets:
                assert parameters["model_store"]["defaultValue"] == store
                assert secrets and all(secret["optional"] is True for secret in secrets)
                continue
            assert "model_store" not in parameters and "s3_secret" not in parameters, f"{release}: the store is fixed at compile time"
            assert "no optional Secrets" in documents[0]["pipelineInfo"]["description"]
            assert all("optional" not in secret for secret in secrets)
            if platform.legacy_names_only:
                assert not any("pvcNameParameter" in mount for mount in mounts)
                assert not any("secretNameParameter" in secret for secret in secrets)
            if store == "pvc":
                assert secrets == [], f"{release} --store pvc must reference no Secret"
            else:
                assert secrets and all(secret["secretName"] == "model-storage-config" for secret in secrets)


@needs_protos
def test_compiling_for_each_release_gives_the_committed_folder_of_its_profile(compiled):
    for (release, store), outputs in compiled.items():
        folder = COMPILED / profile_folder(PLATFORMS[release], store)
        for name, documents in outputs.items():
            assert documents == list(yaml.load_all((folder / name).read_text(), Loader=yaml.CSafeLoader)), f"{release} --store {store}: {name}"


def test_compile_for_a_platform_writes_its_profile_folder_and_leaves_the_default_files(tmp_path):
    (tmp_path / "compiled").mkdir()
    for name in PIPELINE_FILES.values():
        shutil.copy(COMPILED / name, tmp_path / "compiled" / name)
    result = run_cli("compile", "--platform", "rhoai-2.22", cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines()[0] == ("compiling for platform rhoai-2.22, store pvc (the rhoai-2.20-2.25-pvc profile) "
                                             "into compiled/rhoai-2.20-2.25-pvc/")
    for name in PIPELINE_FILES.values():
        assert filecmp.cmp(tmp_path / "compiled" / name, COMPILED / name, shallow=False), f"the default {name} was rewritten"
        assert filecmp.cmp(tmp_path / "compiled" / "rhoai-2.20-2.25-pvc" / name, COMPILED / "rhoai-2.20-2.25-pvc" / name, shallow=False)
    assert sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*.yaml")) == sorted(
        [f"compiled/{name}" for name in PIPELINE_FILES.values()] + [f"compiled/rhoai-2.20-2.25-pvc/{name}" for name in PIPELINE_FILES.values()])


def test_pre_3_0_store_is_passed_as_a_constant_to_the_steps(tmp_path):
    paths = compile_pipelines(tmp_path, platform="rhoai-2.16", store="s3", installation=Installation(s3_secret="team-bucket"))
    pipeline_spec, platform_spec = yaml.safe_load_all(paths[0].read_text())
    root_inputs = [spec for task in pipeline_spec["root"]["dag"]["tasks"].values() for spec in task.get("inputs", {}).get("parameters", {}).values()]
    assert {"runtimeValue": {"constant": "s3"}} in root_inputs
    assert {"s3_secret": "team-bucket"}.items() <= next(spec["runtimeValue"]["constant"] for spec in root_inputs
                                                          if isinstance(spec.get("runtimeValue", {}).get("constant"), dict)).items()
    assert all(spec.get("componentInputParameter") != "model_store" for spec in root_inputs)
    secrets = [secret for config in executors([pipeline_spec, platform_spec]).values() for secret in config.get("secretAsEnv", [])]
    assert secrets and {secret["secretName"] for secret in secrets} == {"team-bucket"}


def test_committed_profile_folders_equal_a_fresh_compile(tmp_path):
    result = run_cli("compile", "--all-platforms", "--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stdout
    fresh = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*.yaml"))
    assert fresh == sorted(path.relative_to(COMPILED) for path in COMPILED.rglob("*.yaml")), "run `make compile`"
    for relative in fresh:
        assert filecmp.cmp(COMPILED / relative, tmp_path / relative, shallow=False), f"{relative} differs: run `make compile`"
    folders = {path.parent.name for path in fresh if str(path.parent) != "."}
    assert {"rhoai-2.16-2.19-pvc", "rhoai-2.20-2.25-s3", "rhoai-3.0-3.5-pvc", "rhoai-3.0-3.5-s3"} <= folders
    assert all(sorted(path.name for path in (tmp_path / folder).iterdir()) == sorted(PIPELINE_FILES.values()) for folder in folders)


def test_an_unknown_platform_is_refused_with_the_known_names(tmp_path):
    result = run_cli("compile", "--platform", "rhoai-2.1", "--output-dir", str(tmp_path))
    assert result.returncode == 2
    assert "unknown platform 'rhoai-2.1'" in result.stdout and "rhoai-2.16" in result.stdout and "kfp-2.16" in result.stdout
    assert not list(tmp_path.iterdir())


def test_no_platform_config_reads_a_run_parameter():
    """A run cannot point a pod at another volume or Secret, and kubeflow/pipelines issue 12617 (a parameter used only by a platform
    config is not passed into a dsl.If sub-DAG) cannot bite: every PVC and Secret name is the installation's constant."""
    checked = 0
    for path in COMPILED.rglob("*.yaml"):
        _, platform_spec = yaml.safe_load_all(path.read_text())
        for config in platform_spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values():
            for mount in config.get("pvcMount", []):
                assert set(mount) <= {"mountPath", "constant", "pvcNameParameter"} and mount["constant"], f"{path}: {mount}"
                checked += 1
            for secret in config.get("secretAsEnv", []):
                assert secret["secretName"] and "componentInputParameter" not in secret.get("secretNameParameter", {}), f"{path}: {secret}"
                checked += 1
    assert checked > 50


@needs_protos
def test_compile_model_writes_a_spec_models_own_pipelines_for_every_profile_and_each_parses_strictly(protos, tmp_path):
    spec_file = REPO / "examples" / "disk-failure-predictor" / "model.yaml"
    result = run_cli("compile", "--model", str(spec_file), "--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stdout
    names = ["disk-failure-predictor-retrain.yaml", "disk-failure-predictor-rollout.yaml", "disk-failure-predictor-monitor.yaml"]
    assert sorted(path.name for path in tmp_path.glob("*.yaml")) == sorted(names)
    for release in RELEASES:
        folder = tmp_path / profile_folder(PLATFORMS[release], "pvc")
        for name in names:
            documents = list(yaml.load_all((folder / name).read_text(), Loader=yaml.CSafeLoader))
            assert strict_parse_errors(documents, protos[release]) == [], f"{release}: {name}"
    retrain = next(yaml.safe_load_all((tmp_path / names[0]).read_text()))
    parameters = retrain["root"]["inputDefinitions"]["parameters"]
    assert len(parameters) <= 15 and "model_name" not in parameters
    assert parameters["gates"]["defaultValue"]["min_roc_auc"] == 0.9 and "classifier.C" in parameters["training"]["defaultValue"]
    carried = [spec["runtimeValue"]["constant"] for task in retrain["root"]["dag"]["tasks"].values()
               for name, spec in task.get("inputs", {}).get("parameters", {}).items() if name == "model_spec"]
    assert carried and json.loads(carried[0])["document"]["name"] == "disk-failure-predictor", "the pipeline carries its model's spec"
