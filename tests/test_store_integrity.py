"""A damaged store: clear errors, no lost or half-visible versions, and ``store list|verify|repair`` for both stores."""

import hashlib
import json
import os
import time

import joblib
import pytest
from sklearn.dummy import DummyRegressor

from components.s3_store import S3Store
from components.storage import INDEX_FILENAME, FilesystemStore, StoreError, load_model
from tests.conftest import run_cli
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


def test_replacing_model_and_record_together_is_caught_by_the_index_checksum(tmp_path, model_file):
    store = filesystem_with_versions(tmp_path / "store", model_file, count=1)
    version_dir = tmp_path / "store" / MODEL / "v1"
    payload = joblib.dump(DummyRegressor(constant=[9.0]).fit([[0]], [9.0]), tmp_path / "evil.pkl")[0]
    data = open(payload, "rb").read()
    (version_dir / "model.pkl").write_bytes(data)
    record = json.loads((version_dir / "version.json").read_text())
    record["sha256"] = hashlib.sha256(data).hexdigest()
    (version_dir / "version.json").write_text(json.dumps(record))
    with pytest.raises(StoreError) as refused:
        load_model(store, MODEL, "v1")
    assert "the index says" in str(refused.value)


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
