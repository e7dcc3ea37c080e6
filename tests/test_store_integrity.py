"""A damaged store: clear errors, no lost or half-visible versions, and ``store list|verify|repair`` for both stores."""

import hashlib
import json
import os
import threading
import time

import joblib
import pytest
from sklearn.dummy import DummyRegressor

from components.store.s3 import S3Store
from components.store.filesystem import INDEX_FILENAME, FilesystemStore, StoreError, load_model
from tests.conftest import run_cli, snapshot
from tests.servers import S3_BUCKET
from tests.test_s3_store import s3  # noqa: F401 (the SeaweedFS fixture)

MODEL = "predictive-analytics"


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.pkl"
    joblib.dump(DummyRegressor(constant=[1.0]).fit([[0]], [1.0]), path)
    return path


def filesystem_with_versions(root, model_file, count=3) -> FilesystemStore:
    store = FilesystemStore(root)
    for number in range(count):
        store.save_version(MODEL, model_file, {"run_name": f"r{number}", "metrics": {"mase_mean": 0.9 + number / 100}})
    store.update_index(MODEL, lambda index: index.update(stable="v2"))
    return store


def test_a_truncated_index_is_a_store_error_naming_the_file_and_no_save_becomes_visible(tmp_path, model_file):
    store = filesystem_with_versions(tmp_path / "store", model_file)
    index_path = tmp_path / "store" / MODEL / INDEX_FILENAME
    index_path.write_bytes(index_path.read_bytes()[:40])
    with pytest.raises(StoreError) as read:
        store.read_index(MODEL)
    assert str(index_path) in str(read.value) and "store repair" in str(read.value)
    with pytest.raises(StoreError):
        store.save_version(MODEL, model_file, {"run_name": "during damage"})
    assert store.stored_versions(MODEL) == ["v1", "v2", "v3"], "the failed save published nothing"
    with pytest.raises(StoreError):
        store.model_bytes(MODEL, "v2")


def test_one_corrupt_record_does_not_block_the_index(tmp_path, model_file):
    store = filesystem_with_versions(tmp_path / "store", model_file, count=1)
    saved = store.save_version(MODEL, model_file, {"run_name": "r"})
    # A damaged record of a version that is not indexed (as if its save crashed before indexing).
    (tmp_path / "store" / MODEL / saved.version / "version.json").write_text("{trunc")
    store.update_index(MODEL, lambda index: index["versions"].pop(saved.version))
    assert saved.version not in store.read_index(MODEL)["versions"]
    assert store.save_version(MODEL, model_file, {"run_name": "later"}).version == "v3"


def unsaved_model_bytes(tmp_path) -> bytes:
    """Return the pickle of a model that was never saved."""
    return open(joblib.dump(DummyRegressor(constant=[9.0]).fit([[0]], [9.0]), tmp_path / "unsaved.pkl")[0], "rb").read()


def forged_record(record: dict, data: bytes, version: str) -> dict:
    """Return ``record`` rewritten to vouch for ``data`` as ``version``, as a forger would."""
    return {**record, "version": version, "sha256": hashlib.sha256(data).hexdigest()}


def test_replacing_model_and_record_together_is_refused_and_repair_quarantines_the_forgery(tmp_path, model_file):
    root = tmp_path / "store"
    store = filesystem_with_versions(root, model_file, count=2)
    store.update_index(MODEL, lambda index: index.update(stable="v1"))
    forged = unsaved_model_bytes(tmp_path)
    version_dir = root / MODEL / "v1"
    (version_dir / "model.pkl").write_bytes(forged)
    (version_dir / "version.json").write_text(json.dumps(forged_record(json.loads((version_dir / "version.json").read_text()), forged, "v1")))
    with pytest.raises(StoreError) as refused:
        load_model(store, MODEL, "v1")
    assert "the index says" in str(refused.value) and "store repair" in str(refused.value)
    repaired = run_cli("store", "repair", MODEL, "--store-dir", str(root))
    assert repaired.returncode == 0 and "v1: quarantined" in repaired.stdout and "(mismatch:" in repaired.stdout, repaired.stdout
    assert "stable none" in repaired.stdout, "the forgery is not blessed as stable"
    index = store.read_index(MODEL)
    assert sorted(index["versions"]) == ["v2"] and index["stable"] is None
    assert store.stored_versions(MODEL) == ["v2"]
    [kept] = (root / MODEL / ".quarantine").iterdir()
    assert kept.name.startswith("v1-mismatch-") and (kept / "model.pkl").read_bytes() == forged, "quarantined as it was"
    assert run_cli("store", "verify", MODEL, "--store-dir", str(root)).returncode == 0
    with pytest.raises(StoreError, match="v1 is not in the index"):
        load_model(store, MODEL, "v1")


def plant_outside_version(tmp_path, root, version: str) -> tuple:
    """Put a complete version (another model, consistent record) outside the store and link ``version`` to it."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    data = unsaved_model_bytes(tmp_path)
    (outside / "model.pkl").write_bytes(data)
    (outside / "version.json").write_text(json.dumps(forged_record(json.loads((root / MODEL / "v1" / "version.json").read_text()), data, version)))
    (root / MODEL / version).symlink_to(outside, target_is_directory=True)
    return outside, snapshot(outside)


def test_a_planted_symlinked_version_is_never_adopted_and_repair_quarantines_it(tmp_path, model_file):
    state = tmp_path / "state"
    root = state / "store"
    store = filesystem_with_versions(root, model_file, count=1)
    outside, before = plant_outside_version(tmp_path, root, "v9")
    store.update_index(MODEL, lambda index: None)  # what every rollout step does
    assert "v9" not in store.read_index(MODEL)["versions"]
    assert not any(event.get("version") == "v9" for event in store.read_index(MODEL)["history"])
    with pytest.raises(StoreError, match="v9 is not in the index, and only a save creates versions"):
        load_model(store, MODEL, "v9")
    rollout = run_cli("rollout", MODEL, "--version", "v9", "--local", "--state-dir", str(state))
    assert rollout.returncode == 2 and "has no stored version 'v9'" in rollout.stdout, rollout.stdout
    assert not (state / "serving").exists(), "nothing was served"
    verified = run_cli("store", "verify", MODEL, "--store-dir", str(root))
    assert verified.returncode == 1 and "v9 is stored but the index does not list it" in verified.stdout, verified.stdout
    repaired = run_cli("store", "repair", MODEL, "--store-dir", str(root))
    assert repaired.returncode == 0 and "v9: quarantined" in repaired.stdout and "(unlisted:" in repaired.stdout, repaired.stdout
    [link] = (root / MODEL / ".quarantine").iterdir()
    assert link.name.startswith("v9-unlisted-") and link.is_symlink(), "the link itself moved aside"
    assert snapshot(outside) == before, "what it pointed to is untouched"
    index = store.read_index(MODEL)
    assert sorted(index["versions"]) == ["v1"] and store.stored_versions(MODEL) == ["v1"]
    assert [event["event"] for event in index["history"] if event.get("version") == "v9"] == ["quarantined"]
    assert run_cli("store", "verify", MODEL, "--store-dir", str(root)).returncode == 0


@pytest.mark.parametrize("linked", ["v1", "v1/model.pkl", "v1/version.json"])
def test_a_listed_version_whose_path_is_a_symlink_is_never_read_and_repair_quarantines_it(tmp_path, model_file, linked):
    root = tmp_path / "store"
    store = filesystem_with_versions(root, model_file, count=2)
    store.update_index(MODEL, lambda index: index.update(stable="v1"))
    # The same bytes, but outside the store: a link is refused whatever it points to.
    original = root / MODEL / linked
    outside = tmp_path / "elsewhere" / original.name
    outside.parent.mkdir()
    os.rename(original, outside)
    original.symlink_to(outside)
    with pytest.raises(StoreError, match=f"{original} is a symbolic link, which the store never follows"):
        load_model(store, MODEL, "v1")
    verified = run_cli("store", "verify", MODEL, "--store-dir", str(root))
    assert verified.returncode == 1 and f"{original} is a symbolic link" in verified.stdout, verified.stdout
    repaired = run_cli("store", "repair", MODEL, "--store-dir", str(root))
    assert repaired.returncode == 0 and "v1: quarantined" in repaired.stdout and "(symlink:" in repaired.stdout, repaired.stdout
    assert "stable none" in repaired.stdout and sorted(store.read_index(MODEL)["versions"]) == ["v2"]
    assert outside.exists(), "what the link pointed to is untouched"
    assert run_cli("store", "verify", MODEL, "--store-dir", str(root)).returncode == 0


@pytest.mark.parametrize("wrong", [{}, {"versions": [], "history": []}], ids=["empty-object", "versions-not-an-object"])
def test_a_wrong_shaped_index_is_a_clear_error_and_repair_restores_the_last_good_copy(tmp_path, model_file, wrong):
    state = tmp_path / "state"
    root = state / "store"
    store = filesystem_with_versions(root, model_file)
    index_path = root / MODEL / INDEX_FILENAME
    index_path.write_text(json.dumps(wrong))
    expected = f"{index_path} is not a model index ('versions' is missing or not an object); run `model-pipelines store repair {MODEL}`"
    with pytest.raises(StoreError) as read:
        load_model(store, MODEL, "v2")
    assert expected in str(read.value)
    verified = run_cli("store", "verify", MODEL, "--store-dir", str(root))
    assert verified.returncode == 1 and expected in verified.stdout and "Traceback" not in verified.stdout, verified.stdout
    run = run_cli("run", MODEL, "--local", "--state-dir", str(state))
    assert run.returncode == 1 and expected in run.stdout and "Traceback" not in run.stdout, run.stdout
    repaired = run_cli("store", "repair", MODEL, "--store-dir", str(root))
    assert repaired.returncode == 0 and "restoring its last good copy" in repaired.stdout and "stable v2" in repaired.stdout, repaired.stdout
    index = store.read_index(MODEL)
    assert index["stable"] == "v2" and sorted(index["versions"]) == ["v1", "v2", "v3"]
    assert run_cli("store", "verify", MODEL, "--store-dir", str(root)).returncode == 0


def test_repair_without_a_usable_index_or_last_good_copy_changes_nothing_and_says_so(tmp_path, model_file):
    root = tmp_path / "store"
    filesystem_with_versions(root, model_file)
    (root / MODEL / INDEX_FILENAME).write_text("{}")
    (root / MODEL / (INDEX_FILENAME + ".last-good")).write_text("{trunc")
    before = snapshot(root)
    repaired = run_cli("store", "repair", MODEL, "--store-dir", str(root))
    assert repaired.returncode == 1 and f"restore {INDEX_FILENAME} from a backup (repair changed nothing)" in repaired.stdout, repaired.stdout
    assert snapshot(root) == before


def test_only_a_save_adds_a_version_to_the_index(tmp_path, model_file):
    store = filesystem_with_versions(tmp_path / "store", model_file, count=1)
    entry = store.read_index(MODEL)["versions"]["v1"]
    with pytest.raises(StoreError, match="refusing to add v9 to the index: only a save creates versions"):
        store.update_index(MODEL, lambda index: index["versions"].update(v9=dict(entry)))
    assert sorted(store.read_index(MODEL)["versions"]) == ["v1"]


def test_a_save_publishes_nothing_while_repair_holds_the_index_lock(tmp_path, model_file):
    store = filesystem_with_versions(tmp_path / "store", model_file, count=1)
    saving = threading.Thread(target=store.save_version, args=(MODEL, model_file, {"run_name": "during repair"}))
    with store.index_lock(MODEL):  # what `store repair` holds from its look at the versions to its index write
        saving.start()
        saving.join(3)
        assert saving.is_alive() and store.stored_versions(MODEL) == ["v1"], "no version repair would take for unlisted"
    saving.join(60)
    assert store.stored_versions(MODEL) == ["v1", "v2"] and sorted(store.read_index(MODEL)["versions"]) == ["v1", "v2"]


def test_stale_staging_directories_are_removed_under_the_lock(tmp_path, model_file):
    store = filesystem_with_versions(tmp_path / "store", model_file, count=1)
    stale, fresh = tmp_path / "store" / MODEL / ".staging-old", tmp_path / "store" / MODEL / ".staging-new"
    for directory in (stale, fresh):
        directory.mkdir()
        (directory / "model.pkl").write_bytes(b"x" * 1000)
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    store.update_index(MODEL, lambda index: None)
    assert not stale.exists() and fresh.exists(), "only crashed saves' leftovers go; a save in progress keeps its staging"


def test_store_cli_lists_verifies_and_repairs_a_filesystem_store(tmp_path, model_file):
    root = tmp_path / "store"
    filesystem_with_versions(root, model_file)
    listed = run_cli("store", "list", MODEL, "--store-dir", str(root))
    assert listed.returncode == 0 and "stable v2" in listed.stdout and "mase_mean=0.910" in listed.stdout
    assert run_cli("store", "verify", "--store-dir", str(root)).returncode == 0
    index_path = root / MODEL / INDEX_FILENAME
    index_path.write_bytes(index_path.read_bytes()[:25])
    (root / MODEL / "v3" / "model.pkl").write_bytes(b"corrupted")
    failed = run_cli("store", "verify", "--store-dir", str(root))
    assert failed.returncode == 1
    assert str(index_path) in failed.stdout and "v3: model.pkl has sha256" in failed.stdout
    before = {path.name for path in (root / MODEL).rglob("*") if path.is_file()}
    repaired = run_cli("store", "repair", MODEL, "--store-dir", str(root))
    assert repaired.returncode == 0 and "v3: quarantined" in repaired.stdout and "stable v2" in repaired.stdout
    after = {path.name for path in (root / MODEL).rglob("*") if path.is_file()}
    assert before <= after, "repair deletes nothing"
    verified = run_cli("store", "verify", "--store-dir", str(root))
    assert verified.returncode == 0, verified.stdout
    assert FilesystemStore(root).read_index(MODEL)["stable"] == "v2"


def test_store_cli_verifies_and_repairs_an_s3_store(s3, model_file):
    store = S3Store(s3.client(), S3_BUCKET, "integrity")
    for number in range(2):
        store.save_version(MODEL, model_file, {"run_name": f"r{number}"})
    store.update_index(MODEL, lambda index: index.update(stable="v1"))
    env = s3.environment()
    args = ("--store", "s3", "--s3-prefix", "integrity")
    assert run_cli("store", "verify", MODEL, *args, env=env).returncode == 0
    s3.client().put_object(Bucket=S3_BUCKET, Key=f"integrity/{MODEL}/{INDEX_FILENAME}", Body=b'{"versions": {')
    failed = run_cli("store", "verify", MODEL, *args, env=env)
    assert failed.returncode == 1 and f"s3://{S3_BUCKET}/integrity/{MODEL}/{INDEX_FILENAME} is damaged" in failed.stdout
    assert run_cli("store", "repair", MODEL, *args, env=env).returncode == 0
    assert run_cli("store", "verify", MODEL, *args, env=env).returncode == 0
    assert store.read_index(MODEL)["stable"] == "v1" and sorted(store.read_index(MODEL)["versions"]) == ["v1", "v2"]


def test_s3_unlisted_and_forged_versions_are_never_adopted_and_repair_quarantines_them(s3, model_file, tmp_path):
    store = S3Store(s3.client(), S3_BUCKET, "unlisted")
    for number in range(2):
        store.save_version(MODEL, model_file, {"run_name": f"r{number}"})
    store.update_index(MODEL, lambda index: index.update(stable="v1"))
    client, base = s3.client(), f"unlisted/{MODEL}"
    record = json.loads(client.get_object(Bucket=S3_BUCKET, Key=f"{base}/v1/version.json")["Body"].read())
    data = unsaved_model_bytes(tmp_path)
    # v9 planted beside the saved versions, and v1 replaced: both with a model and a record that agree.
    for version in ("v9", "v1"):
        client.put_object(Bucket=S3_BUCKET, Key=f"{base}/{version}/model.pkl", Body=data)
        client.put_object(Bucket=S3_BUCKET, Key=f"{base}/{version}/version.json", Body=json.dumps(forged_record(record, data, version)).encode())
    store.update_index(MODEL, lambda index: None)  # what every rollout step does
    assert sorted(store.read_index(MODEL)["versions"]) == ["v1", "v2"]
    with pytest.raises(StoreError, match="v9 is not in the index, and only a save creates versions"):
        load_model(store, MODEL, "v9")
    with pytest.raises(StoreError, match="v1: model.pkl and its record agree on sha256 .* but the index says"):
        load_model(store, MODEL, "v1")
    env, args = s3.environment(), ("--store", "s3", "--s3-prefix", "unlisted")
    verified = run_cli("store", "verify", MODEL, *args, env=env)
    assert verified.returncode == 1 and "v9 is stored but the index does not list it" in verified.stdout, verified.stdout
    repaired = run_cli("store", "repair", MODEL, *args, env=env)
    assert repaired.returncode == 0 and "(unlisted:" in repaired.stdout and "(mismatch:" in repaired.stdout, repaired.stdout
    assert "stable none" in repaired.stdout
    index = store.read_index(MODEL)
    assert sorted(index["versions"]) == ["v2"] and index["stable"] is None and store.stored_versions(MODEL) == ["v2"]
    quarantined = client.list_objects_v2(Bucket=S3_BUCKET, Prefix=f"{base}/.quarantine/")["Contents"]
    keys = {item["Key"].removeprefix(f"{base}/.quarantine/") for item in quarantined}
    assert sorted(key.split("-")[:2] + [key.rsplit("/", 1)[1]] for key in keys) == [
        ["v1", "mismatch", "model.pkl"], ["v1", "mismatch", "version.json"], ["v9", "unlisted", "model.pkl"], ["v9", "unlisted", "version.json"]]
    assert run_cli("store", "verify", MODEL, *args, env=env).returncode == 0
