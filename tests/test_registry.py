"""The model registry: every stored version registered with its lineage and status, through the CLI as a user runs it, against a
stand-in that validates every call against the published API (tests/registry_standin.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.model.spec import spec_for
from components.registry.client import RegistryClient, property_values
from components.registry.sync import artifact_body, sync_model
from components.store.filesystem import FilesystemStore
from components.store.s3 import S3Store
from pipelines.catalog import DEFAULT_IMAGE
from tests.conftest import FAST_CANARY, REPO, logged, run_cli, snapshot
from tests.registry_standin import API_FILE, RegistryStandin
from tests.servers import refused_url

MODEL = "anomaly-detector"
TOKEN = "planted-registry-token-5c81e0d2"
ENV = {"MODEL_REGISTRY_TOKEN": TOKEN}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Yield the registry stand-in on 127.0.0.1 over TLS with its test CA; stop it after the module."""
    if not API_FILE.is_file():
        pytest.skip(f"the Model Registry's OpenAPI is not at {API_FILE} (it ships beside the project in shared/reference)")
    standin = RegistryStandin(tmp_path_factory.mktemp("registry"), TOKEN)
    yield standin
    standin.stop()


@pytest.fixture(autouse=True)
def every_call_matches_the_api(registry):
    """Fail any test during which a request or a response did not match model-registry.openapi.yaml."""
    yield
    assert registry.errors == [], registry.errors


def settings(url: str, cert: Path, *extra: str) -> list[str]:
    """Return the --param pairs that point a command at the registry ``url`` trusted through ``cert``."""
    return ["--param", f"store.registry_url={url}", "--param", f"store.registry_ca_bundle={cert}", "--param", "store.registry_name=team-registry",
            *extra]


def summary_of(result) -> str:
    """Return the Summary part of a run's output."""
    return result.stdout[result.stdout.rindex("Summary"):]


def index_of(state: Path) -> dict:
    """Return the store's index of the model."""
    return json.loads((state / "store" / MODEL / "metadata.json").read_text())


@pytest.fixture(scope="module")
def history(registry, tmp_path_factory):
    """Yield what a user's sequence did to one state dir and the registry: a run while the registry is down (v1), `registry sync`
    (backfills v1), a run with the registry (v2), the same run again (a byte-identical duplicate), and a run with
    registry_required=true while the registry is down (v3); stop serving after."""
    state = tmp_path_factory.mktemp("state")
    run = ("run", MODEL, "--local", "--state-dir", str(state), *FAST_CANARY)
    steps = {}
    with refused_url() as down:
        try:
            steps["down"] = run_cli(*run, *settings(down, registry.cert), env=ENV)
            steps["before_sync"] = registry.creates()
            steps["sync"] = run_cli("registry", "sync", MODEL, "--state-dir", str(state), *settings(registry.url, registry.cert), env=ENV)
            steps["sync_again"] = run_cli("registry", "sync", MODEL, "--state-dir", str(state), *settings(registry.url, registry.cert), env=ENV)
            steps["after_sync"] = registry.creates()
            steps["registered"] = run_cli(*run, "--param", "seed=43", *settings(registry.url, registry.cert), env=ENV)
            steps["after_run"] = registry.creates()
            steps["duplicate"] = run_cli(*run, "--param", "seed=43", *settings(registry.url, registry.cert), env=ENV)
            steps["after_duplicate"] = registry.creates()
            steps["store_before_required"] = snapshot(state / "store")
            steps["required"] = run_cli(*run, "--param", "seed=44", "--param", "champion_tolerance=1",
                                           *settings(down, registry.cert, "--param", "store.registry_required=true"), env=ENV)
            yield state, steps
        finally:
            run_cli("serve", "stop", "--state-dir", str(state))


def test_a_run_with_the_registry_down_goes_on_and_says_what_was_not_registered(history):
    _, steps = history
    result = steps["down"]
    assert result.returncode == 0, result.stdout[-3000:]
    summary = summary_of(result)
    assert f"  {MODEL:<21} v1    promoted" in summary
    assert "registry: NOT in step, nothing registered or mirrored for anomaly-detector: cannot reach the model registry at https://127.0.0.1:" in summary
    assert f"`model-pipelines registry sync {MODEL}` registers what the store holds" in summary
    assert steps["before_sync"] == 0


def test_registry_sync_backfills_versions_stored_before_the_registry_was_there_and_creates_nothing_twice(history, registry):
    _, steps = history
    assert steps["sync"].returncode == 0, steps["sync"].stdout
    assert f"registry: {MODEL}: registered v1 ({registry.url})" in steps["sync"].stdout
    assert steps["sync_again"].returncode == 0 and f"registry: {MODEL}: 1 version(s) already in step" in steps["sync_again"].stdout
    assert steps["after_sync"] == 3, "one RegisteredModel, one ModelVersion, one ModelArtifact"


def test_save_to_storage_registers_the_version_with_its_lineage_and_every_step_mirrors_its_status(history, registry):
    state, steps = history
    result = steps["registered"]
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"registry: {MODEL}: " in summary_of(result)
    spec = spec_for(MODEL)
    model = next(item for item in registry.registered_models.values() if item["name"] == MODEL)
    assert (model["description"], model["owner"]) == (spec.description, spec.owner)
    record = json.loads((state / "store" / MODEL / "v2" / "version.json").read_text())
    version = registry.version(MODEL, "v2")
    properties = {key: next(value for name, value in typed.items() if name != "metadataType") for key, typed in version["customProperties"].items()}
    assert version["author"] == record["run_name"] == properties["pipeline_run_id"] and record["run_name"].startswith(f"{MODEL}-retrain-")
    assert properties["sha256"] == record["sha256"] == index_of(state)["versions"]["v2"]["sha256"]
    assert {key: properties[f"metric_{key}"] for key in record["metrics"]} == record["metrics"]
    assert (properties["data_source"], properties["training_rows"]) == ("synthetic", str(record["training_rows"]))
    assert properties["data_window_start"] < properties["data_window_end"]
    assert (properties["pipeline_name"], properties["pipeline_version"], properties["image"]) == (f"{MODEL}-retrain", "0.1.0", DEFAULT_IMAGE)
    assert properties["champion"] == "v1"
    assert (properties["status"], version["state"]) == ("stable", "LIVE")
    artifact = registry.artifact_of(version)
    assert artifact["uri"] == f"pvc://model-storage-pvc/{MODEL}/v2"
    assert (artifact["modelFormatName"], artifact["modelFormatVersion"]) == ("sklearn", record["sklearn_version"])
    retired = registry.version(MODEL, "v1")
    assert (retired["customProperties"]["status"]["string_value"], retired["state"]) == ("retired", "LIVE")
    said = [line for line in logged(result).splitlines() if line.strip().startswith("registry: ")]
    assert len(said) >= 5, "save, deploy, smoke test, canary and the exit handler each mirror the store"
    assert steps["after_run"] - steps["after_sync"] == 2, "one ModelVersion and its ModelArtifact"


def test_a_byte_identical_rerun_registers_nothing_twice(history):
    _, steps = history
    assert steps["duplicate"].returncode == 0 and "duplicate of stable v2" in summary_of(steps["duplicate"])
    assert steps["after_duplicate"] == steps["after_run"]


def test_registry_required_fails_the_save_before_any_deploy_and_keeps_what_was_stored(history, registry):
    state, steps = history
    result = steps["required"]
    assert result.returncode == 1, result.stdout[-3000:]
    summary = summary_of(result)
    assert "failed at save-to-storage: RegistryError: cannot reach the model registry at https://127.0.0.1:" in summary
    assert "registry_required=true, so the run stops before any deploy" in logged(result)
    assert "deploy-inference-service" not in result.stdout, "nothing deployed"
    index = index_of(state)
    assert (index["stable"], index["versions"]["v3"]["status"]) == ("v2", "stored")
    before = steps["store_before_required"]
    after = snapshot(state / "store")
    assert {path: digest for path, digest in after.items() if path in before and not path.endswith("metadata.json") and "last-good" not in path} == \
        {path: digest for path, digest in before.items() if not path.endswith("metadata.json") and "last-good" not in path}
    assert "serving: stable v2 at http://127.0.0.1:" in summary


def test_rollout_resolves_model_registry_uris_and_refuses_an_entry_the_store_does_not_vouch_for(history, registry):
    state, _ = history
    rollout = ("rollout", MODEL, "--local", "--state-dir", str(state), *FAST_CANARY, *settings(registry.url, registry.cert))
    artifact = registry.artifact_of(registry.version(MODEL, "v1"))
    artifact["uri"] = f"pvc://model-storage-pvc/{MODEL}/v2"
    tampered = run_cli(*rollout, "--version", f"model-registry://{MODEL}/v1", env=ENV)
    artifact["uri"] = f"pvc://model-storage-pvc/{MODEL}/v1"
    assert tampered.returncode == 2, tampered.stdout
    assert f"model-registry://{MODEL}/v1 points at 'pvc://model-storage-pvc/{MODEL}/v2', but the store holds v1 at" in tampered.stdout
    assert "==>" not in tampered.stdout, "refused before anything ran"
    sha = registry.version(MODEL, "v1")["customProperties"]["sha256"]
    real, sha["string_value"] = sha["string_value"], "0" * 64
    forged = run_cli(*rollout, "--version", f"model-registry://{MODEL}/1", env=ENV)
    sha["string_value"] = real
    assert forged.returncode == 2 and f"model-registry://{MODEL}/v1 has sha256 000000000000…, but the store's v1 has" in forged.stdout
    resolved = run_cli(*rollout, "--version", f"model-registry://{MODEL}/v2", env=ENV)
    assert resolved.returncode == 0, resolved.stdout[-3000:]
    assert f"model registry: model-registry://{MODEL}/v2 is the store's v2 (artifact and sha256 checked)" in resolved.stdout
    assert "v2 already stable: nothing to roll out" in summary_of(resolved)
    assert index_of(state)["stable"] == "v2"


def test_sync_writes_only_to_registry_entries_the_project_created(registry, tmp_path):
    """A RegisteredModel or ModelVersion of the same name that someone else made (the dashboard, another tool) is left as it is,
    and the sync names it and the fix; one handed over with managed_by=model-pipelines is synced."""
    name = "predictive-analytics"
    store = FilesystemStore(tmp_path / "store")
    (tmp_path / "model.pkl").write_bytes(b"a stored model")
    store.save_version(name, tmp_path / "model.pkl", {"run_name": "test"})
    someone = RegistryClient(registry.url, str(registry.cert), TOKEN)
    theirs = someone.create_registered_model({"name": name, "description": "made by hand", "owner": "someone", "state": "LIVE"})
    sync = ("registry", "sync", name, "--state-dir", str(tmp_path), *settings(registry.url, registry.cert))
    refused = run_cli(*sync, env=ENV)
    assert refused.returncode == 1, refused.stdout
    assert f"already has a RegisteredModel named '{name}', which model-pipelines did not create" in refused.stdout
    assert "rename or remove that entry in the registry, or set its property managed_by to model-pipelines" in refused.stdout
    assert someone.find_registered_model(name) == theirs, "their entry is untouched"
    assert not [item for item in registry.model_versions.values() if item["registeredModelId"] == theirs["id"]]
    someone.update_registered_model(theirs["id"], {"customProperties": property_values({"managed_by": "model-pipelines"})})
    handed_over = run_cli(*sync, env=ENV)
    assert handed_over.returncode == 0 and f"registry: {name}: registered v1" in handed_over.stdout, handed_over.stdout
    assert registry.version(name, "v1")["customProperties"]["managed_by"]["string_value"] == "model-pipelines"
    store.save_version(name, tmp_path / "model.pkl", {"run_name": "test-2"})
    their_version = someone.create_model_version({"name": "v2", "registeredModelId": theirs["id"], "author": "someone", "state": "LIVE"})
    store.save_version(name, tmp_path / "model.pkl", {"run_name": "test-3"})
    refused_version = run_cli(*sync, env=ENV)
    assert refused_version.returncode == 1 and f"v2 NOT in step: the model registry at {registry.url} already has a ModelVersion 'v2' of " \
                                                f"'{name}', which model-pipelines did not create" in refused_version.stdout, refused_version.stdout
    assert registry.version(name, "v2") == their_version and not someone.model_artifacts(their_version["id"])
    assert "registered v3" in refused_version.stdout and registry.version(name, "v3")["customProperties"]["managed_by"]["string_value"] == "model-pipelines", \
        "a hand-made v2 stops only itself"


def test_two_syncs_racing_to_create_the_same_entries_both_end_in_step(registry, tmp_path):
    """The loser of a create race (409: the other sync's entry landed between its lookup and its create) takes the winner's entry."""
    name = "disk-failure-predictor"
    store = FilesystemStore(tmp_path / "store")
    (tmp_path / "model.pkl").write_bytes(b"a stored model")
    store.save_version(name, tmp_path / "model.pkl", {"run_name": "test"})
    winner = RegistryClient(registry.url, str(registry.cert), TOKEN)
    assert sync_model(store, winner, name, "a disk model", "tests").registered == ["v1"]

    class LookedUpBeforeTheWinnersCreates(RegistryClient):
        """A client whose first lookup of the model and of the version ran before the winner's creates landed."""

        looked_up: set[str] = set()

        def find_registered_model(self, name):
            return super().find_registered_model(name) if self.seen("model") else None

        def find_model_version(self, name, registered_model_id):
            return super().find_model_version(name, registered_model_id) if self.seen("version") else None

        def seen(self, what: str) -> bool:
            """Return whether ``what`` was looked up before, and note that it now was."""
            before = what in self.looked_up
            self.looked_up.add(what)
            return before

    creates = registry.creates()
    loser = sync_model(store, LookedUpBeforeTheWinnersCreates(registry.url, str(registry.cert), TOKEN), name, "a disk model", "tests")
    assert (loser.registered, loser.updated, loser.unchanged) == ([], [], ["v1"]), loser
    assert registry.creates() == creates + 2, "one refused create each for the model and the version, nothing created twice"
    assert len([item for item in registry.model_versions.values() if item["name"] == "v1" and
                item["registeredModelId"] == winner.find_registered_model(name)["id"]]) == 1


def test_the_token_goes_only_over_https_to_a_registry_that_accepts_it_and_never_into_files(history, registry):
    state, _ = history
    plain = run_cli("registry", "sync", MODEL, "--state-dir", str(state), *settings(registry.url.replace("https", "http"), registry.cert), env=ENV)
    assert plain.returncode == 2 and "store.registry_url='http://127.0.0.1:" in plain.stdout and "must be empty or an https URL" in plain.stdout
    refused = run_cli("registry", "sync", MODEL, "--state-dir", str(state), *settings(registry.url, registry.cert),
                      env={"MODEL_REGISTRY_TOKEN": "another-token"})
    assert refused.returncode == 1 and f"the model registry at {registry.url} refused the credentials (401)" in refused.stdout
    assert [str(path) for path in state.rglob("*") if path.is_file() and TOKEN.encode() in path.read_bytes()] == []
    compiled = (REPO / "compiled" / f"{MODEL}-retrain.yaml").read_text()
    assert "secretName: model-registry-token" in compiled and "envVar: MODEL_REGISTRY_TOKEN" in compiled


def test_an_s3_version_artifact_names_its_data_connection_and_path():
    body = artifact_body(S3Store(None, "models", "team/models"), {"sklearn_version": "1.9.1"}, MODEL, "v3", "model-storage-config")
    assert (body["uri"], body["storageKey"], body["storagePath"]) == (f"s3://models/team/models/{MODEL}/v3/", "model-storage-config",
                                                                     f"team/models/{MODEL}/v3/")


def test_the_rollout_pipelines_own_check_resolves_a_model_registry_version_and_refuses_a_mismatch_before_any_side_effect(history, registry,
                                                                                                                         monkeypatch):
    """The compiled rollout pipeline as KFP runs it (kfp.local, started the way the CLI starts it, but without the CLI's own
    resolution): validate-parameters resolves the reference and hands the checked vN to every later step."""
    from pipelines.catalog import ROLLOUT
    from pipelines.local import local_defaults, parse_params, run_local

    state, _ = history
    monkeypatch.setenv("MODEL_REGISTRY_TOKEN", TOKEN)

    def rollout(reference: str):
        pairs = [*local_defaults(ROLLOUT), f"model_name={MODEL}", f"version={reference}", "canary_interval_s=0.3", "probe_requests=10",
                 f"store.registry_url={registry.url}", f"store.registry_ca_bundle={registry.cert}"]
        return run_local(MODEL, parse_params(pairs, ROLLOUT), state, pipeline_name=ROLLOUT)

    sha = registry.version(MODEL, "v1")["customProperties"]["sha256"]
    real, sha["string_value"] = sha["string_value"], "0" * 64
    before = snapshot(state / "store")
    forged = rollout(f"model-registry://{MODEL}/v1")
    sha["string_value"] = real
    log = Path(forged.log).read_text()
    assert not forged.succeeded and "validate-parameters" in forged.error, forged.error
    assert f"model-registry://{MODEL}/v1 has sha256 000000000000…, but the store's v1 has" in log
    assert "Executing task 'ingest'" not in log and "deploy-inference-service" not in log, "nothing ran after the check"
    assert snapshot(state / "store") == before
    resolved = rollout(f"model-registry://{MODEL}/2")
    log = Path(resolved.log).read_text()
    assert resolved.succeeded, resolved.error
    assert f"model registry: model-registry://{MODEL}/2 is the store's v2 (artifact and sha256 checked)" in log
    assert (resolved.version, resolved.outcome) == ("v2", "v2 already stable: nothing to roll out"), resolved.outcome
