"""The filesystem model store: immutable versions, safe allocation under concurrency, checksums, crash safety."""

import json
import multiprocessing
import os
import subprocess
import sys

import joblib
import pytest
from sklearn.dummy import DummyRegressor

from components.store.filesystem import FilesystemStore, StoreError, champion_version, load_model
from tests.conftest import REPO, run_cli

MODEL = "predictive-analytics"


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "candidate" / "model.pkl"
    path.parent.mkdir()
    joblib.dump(DummyRegressor(), path)
    return path


def test_versions_are_numbered_recorded_and_indexed(tmp_path, model_file):
    store = FilesystemStore(tmp_path / "store", pvc_name="my-pvc")
    first = store.save_version(MODEL, model_file, {"run_name": "run-1", "metrics": {"mase_mean": 0.9}})
    second = store.save_version(MODEL, model_file, {"run_name": "run-2"})
    assert (first.version, second.version) == ("v1", "v2")
    assert second.storage_uri == "pvc://my-pvc/predictive-analytics/v2"
    record = json.loads((tmp_path / "store" / MODEL / "v1" / "version.json").read_text())
    assert record["version"] == "v1" and record["run_name"] == "run-1" and len(record["sha256"]) == 64
    index = store.read_index(MODEL)
    assert list(index["versions"]) == ["v1", "v2"] and [event["event"] for event in index["history"]] == ["saved", "saved"]
    assert champion_version(index) == "v2"
    assert isinstance(load_model(store, MODEL, "v1"), DummyRegressor)
    assert sorted(os.listdir(tmp_path / "store" / MODEL / "v1")) == ["model.pkl", "version.json"]


def _save_many(root: str, model_file: str, count: int, queue) -> None:
    store = FilesystemStore(root)
    for number in range(count):
        queue.put(store.save_version(MODEL, model_file, {"run_name": f"{os.getpid()}-{number}"}).version)


def test_concurrent_saves_get_distinct_versions_and_a_complete_index(tmp_path, model_file):
    queue = multiprocessing.get_context("fork").Queue()
    workers = [
        multiprocessing.get_context("fork").Process(target=_save_many, args=(str(tmp_path / "store"), str(model_file), 5, queue))
        for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    versions = [queue.get(timeout=5) for _ in range(20)]
    assert sorted(versions, key=lambda v: int(v[1:])) == [f"v{n}" for n in range(1, 21)]
    index = FilesystemStore(tmp_path / "store").read_index(MODEL)
    assert set(index["versions"]) == set(versions)
    assert len({entry["run_name"] for entry in index["versions"].values()}) == 20


def _save_identical(root: str, model_file: str, run_name: str, queue) -> None:
    stored = FilesystemStore(root).save_version(MODEL, model_file, {"run_name": run_name}, reuse_identical=True)
    queue.put((stored.version, stored.already_stored))


def test_identical_bytes_saved_at_once_with_reuse_identical_get_one_version_and_a_duplicate_event_each(tmp_path, model_file):
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_save_identical, args=(str(tmp_path / "store"), str(model_file), f"run-{n}", queue)) for n in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    results = sorted(queue.get(timeout=5) for _ in range(4))
    assert results == [("v1", False), ("v1", True), ("v1", True), ("v1", True)], "stored once, under the index lock"
    store = FilesystemStore(tmp_path / "store")
    index = store.read_index(MODEL)
    assert list(index["versions"]) == ["v1"] and store.stored_versions(MODEL) == ["v1"]
    assert not list((tmp_path / "store" / MODEL).glob(".staging-*"))
    duplicates = [event for event in index["history"] if event["event"] == "duplicate"]
    assert [event["event"] for event in index["history"]].count("saved") == 1 and len(duplicates) == 3
    saver = json.loads((tmp_path / "store" / MODEL / "v1" / "version.json").read_text())["run_name"]
    assert {event["detail"].split(":")[0] for event in duplicates} == {f"run-{n}" for n in range(4)} - {saver}
    assert all(f"byte-identical to v1 (stored) (sha256 {index['versions']['v1']['sha256'][:12]}" in event["detail"] for event in duplicates)
    other = tmp_path / "other.pkl"
    joblib.dump(DummyRegressor(strategy="median"), other)
    assert store.save_version(MODEL, other, {}, reuse_identical=True).version == "v2", "new bytes take the next number"
    assert store.save_version(MODEL, model_file, {}).version == "v3", "without reuse_identical every save is a new version"
    with open(tmp_path / "store" / MODEL / "v3" / "model.pkl", "ab") as handle:
        handle.write(b"damaged")
    assert store.save_version(MODEL, model_file, {}, reuse_identical=True).version == "v1", "an intact copy, not the damaged v3"
    with open(tmp_path / "store" / MODEL / "v1" / "model.pkl", "ab") as handle:
        handle.write(b"damaged")
    assert store.save_version(MODEL, model_file, {}, reuse_identical=True).version == "v4", "no intact copy: a good one is stored"


def test_a_crash_mid_save_leaves_no_visible_version_and_repair_quarantines_what_the_index_never_listed(tmp_path, model_file):
    store = FilesystemStore(tmp_path / "store")
    store.save_version(MODEL, model_file, {})
    model_dir = tmp_path / "store" / MODEL
    # A crash before the rename leaves only a hidden staging directory.
    (model_dir / ".staging-dead").mkdir()
    (model_dir / ".staging-dead" / "model.pkl").write_bytes(b"half")
    assert store.stored_versions(MODEL) == ["v1"]
    # A crash after the rename but before the index update leaves an unindexed version: the next save does not adopt it.
    (model_dir / "v2").mkdir()
    for name in ("model.pkl", "version.json"):
        (model_dir / "v2" / name).write_bytes((model_dir / "v1" / name).read_bytes())
    third = store.save_version(MODEL, model_file, {})
    assert third.version == "v3"
    assert set(store.read_index(MODEL)["versions"]) == {"v1", "v3"}
    with pytest.raises(StoreError, match="v2 is not in the index, and only a save creates versions"):
        load_model(store, MODEL, "v2")
    repaired = run_cli("store", "repair", MODEL, "--store-dir", str(tmp_path / "store"))
    assert repaired.returncode == 0 and "v2: quarantined" in repaired.stdout and "(unlisted:" in repaired.stdout, repaired.stdout
    assert store.stored_versions(MODEL) == ["v1", "v3"] and set(store.read_index(MODEL)["versions"]) == {"v1", "v3"}
    assert [path.name.split("-")[:2] for path in (model_dir / ".quarantine").iterdir()] == [["v2", "unlisted"]]


def test_a_save_that_cannot_write_fails_naming_why_and_leaves_the_stored_versions_as_they_were(tmp_path, model_file):
    store = FilesystemStore(tmp_path / "store")
    store.save_version(MODEL, model_file, {})
    model_dir = tmp_path / "store" / MODEL
    index_before = (model_dir / "metadata.json").read_bytes()
    large = tmp_path / "large" / "model.pkl"
    large.parent.mkdir()
    large.write_bytes(os.urandom(1 << 20))
    # The save runs with a 64 KiB file size limit, so writing the 1 MiB model fails the way a full volume does (EFBIG, not ENOSPC).
    script = ("import resource, signal, sys; from pathlib import Path; from components.store.filesystem import FilesystemStore\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))\n"
              f"FilesystemStore({str(tmp_path / 'store')!r}).save_version({MODEL!r}, Path({str(large)!r}), {{}})")
    failed = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1, failed.stderr
    assert (f"StoreError: cannot save {MODEL} in {model_dir}: File too large; nothing was saved, and the stored versions are as they were; "
            "check that the model-storage PVC is mounted, writable and not full") in failed.stderr, failed.stderr
    assert sorted(path.name for path in model_dir.iterdir() if not path.name.startswith(".")) == ["metadata.json", "metadata.json.last-good", "v1"]
    assert not list(model_dir.glob(".staging-*")) and (model_dir / "metadata.json").read_bytes() == index_before
    assert store.stored_versions(MODEL) == ["v1"] and load_model(store, MODEL, "v1") is not None


def test_a_changed_model_file_is_refused_on_load(tmp_path, model_file):
    store = FilesystemStore(tmp_path / "store")
    store.save_version(MODEL, model_file, {})
    with open(tmp_path / "store" / MODEL / "v1" / "model.pkl", "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(StoreError, match="v1: model.pkl has sha256 .* but the record says"):
        load_model(store, MODEL, "v1")


def test_missing_version_and_bad_names_are_clear(tmp_path):
    store = FilesystemStore(tmp_path / "store")
    with pytest.raises(StoreError, match="v9 does not exist"):
        store.version_record(MODEL, "v9")
    with pytest.raises(StoreError, match="'latest' is not a version name"):
        store.version_record(MODEL, "latest")
    assert champion_version(store.read_index(MODEL)) is None
