"""save-to-storage: an immutable, versioned model store with an index of stable, candidate and rejected versions.

``ModelStore`` is the seam; ``FilesystemStore`` is the PVC layout::

    <root>/<model>/v<N>/model.pkl      the stock sklearn pickle
    <root>/<model>/v<N>/version.json   that version's immutable record (sha256, metrics, parameters, ...)
    <root>/<model>/metadata.json       the index: versions, stable and candidate pointers, history
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

from components.contract import schema_for

RECORD_FILENAME = "version.json"
INDEX_FILENAME = "metadata.json"
BACKUP_SUFFIX = ".last-good"
QUARANTINE_DIR = ".quarantine"
STALE_STAGING_S = 3600
VERSION_PATTERN = re.compile(r"^v([1-9][0-9]*)$")
DEFAULT_PVC = "model-storage-pvc"
DEFAULT_STORE_ROOT = "/mnt/models"
MODEL_FILENAME = "model.pkl"  # the one file the stock sklearn runtime loads from a version directory
TRAINING_FILENAME = "training.json"  # beside model.pkl in a trained Model artifact: parameters, lineage, input profile


class StoreError(RuntimeError):
    """A store operation failed; the message names what and how to fix it."""


@dataclass(frozen=True)
class StoredVersion:
    """A version written to the store, and where serving finds it."""

    model_name: str
    version: str
    sha256: str
    storage_uri: str
    location: str


def parse_json(data: bytes | str, where: str, model_name: str) -> dict:
    """Return the JSON object in ``data`` or raise StoreError naming ``where`` and the repair command."""
    try:
        parsed = json.loads(data)
    except ValueError as error:
        raise StoreError(f"{where} is damaged ({error}); run `model-pipelines store repair {model_name}` to rebuild it from the "
                         "version records (nothing is deleted)") from None
    if not isinstance(parsed, dict):
        raise StoreError(f"{where} is damaged (not a JSON object); run `model-pipelines store repair {model_name}`")
    return parsed


def checked_bytes(data: bytes, model_name: str, version: str, record_sha256: str, index_sha256: str | None) -> bytes:
    """Return ``data`` if its sha256 matches the record's and the index's, else raise StoreError saying which differs."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != record_sha256:
        raise StoreError(f"{model_name} {version}: model.pkl has sha256 {actual[:12]}… but the record says {record_sha256[:12]}…; "
                         "the file was changed or corrupted after it was saved: do not serve it, save a new version instead")
    if index_sha256 and actual != index_sha256:
        raise StoreError(f"{model_name} {version}: model.pkl and its record agree on sha256 {actual[:12]}… but the index says "
                         f"{index_sha256[:12]}…: both were replaced after the save; do not serve it, run `model-pipelines store verify`")
    return data


def utc_now() -> str:
    """Return the current UTC time as an ISO 8601 string."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def empty_index(model_name: str) -> dict:
    """Return the index of a model with no versions."""
    return {"model": model_name, "stable": None, "candidate": None, "versions": {}, "history": []}


def champion_version(index: dict) -> str | None:
    """Return the version new candidates are compared against: the stable one, else the newest not rejected."""
    if index.get("stable"):
        return index["stable"]
    usable = [name for name, entry in index["versions"].items() if entry.get("status") != "rejected"]
    return max(usable, key=version_number) if usable else None


def version_number(version: str) -> int:
    """Return N for a version name 'vN'."""
    match = VERSION_PATTERN.match(version)
    if not match:
        raise StoreError(f"{version!r} is not a version name; versions are v1, v2, ...")
    return int(match.group(1))


class ModelStore(Protocol):
    """Where versions live: immutable versions plus an index updated last."""

    def save_version(self, model_name: str, model_file: Path, record: dict) -> StoredVersion:
        """Store ``model_file`` as the next version with ``record`` and return it; never overwrite."""

    def model_bytes(self, model_name: str, version: str) -> bytes:
        """Return a version's model.pkl bytes after checking them against the recorded sha256."""

    def version_record(self, model_name: str, version: str) -> dict:
        """Return a version's immutable record."""

    def read_index(self, model_name: str) -> dict:
        """Return the model's index (an empty one when nothing is stored)."""

    def update_index(self, model_name: str, change: Callable[[dict], None]) -> dict:
        """Apply ``change`` to the index under concurrency control and return the new index."""

    def storage_uri(self, model_name: str, version: str) -> str:
        """Return the storageUri KServe uses to load a version."""

    @property
    def location(self) -> str:
        """Return where the store lives, for people (a directory or an s3:// prefix)."""


def index_entry(record: dict) -> dict:
    """Return the index entry of a freshly saved version from its record."""
    return {"status": "stored", "sha256": record["sha256"], "saved_at": record.get("saved_at", ""), "run_name": record.get("run_name", "")}


def repair_index(index: dict, stored: list[str], read_record: Callable[[str], dict]) -> None:
    """Add index entries for complete versions a crashed save left unindexed (the index is always written last).

    A version whose record cannot be read is left out, so one damaged record never blocks the index; ``store
    verify`` names it and ``store repair`` quarantines it.
    """
    for version in stored:
        if version not in index["versions"]:
            try:
                index["versions"][version] = index_entry(read_record(version))
            except StoreError:
                continue
            index["history"].append({"at": utc_now(), "event": "repaired", "version": version})


def load_model(store: ModelStore, model_name: str, version: str) -> object:
    """Return the estimator of a stored version, verified against its checksum."""
    import joblib

    return joblib.load(io.BytesIO(store.model_bytes(model_name, version)))


def sha256_file(path: Path) -> str:
    """Return the sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_directory(path: Path) -> None:
    """Flush a directory entry to disk so that a rename survives a crash."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_json_atomically(path: Path, payload: dict) -> None:
    """Write JSON to a temporary file beside ``path``, then rename it over ``path``."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(handle.name, path)
    _fsync_directory(path.parent)


class FilesystemStore:
    """The model store on a filesystem, such as the model-storage PVC mounted at /mnt/models."""

    def __init__(self, root: str | Path, pvc_name: str = DEFAULT_PVC) -> None:
        """Open (without creating) the store at ``root``; storage URIs name ``pvc_name``."""
        self.root = Path(root)
        self.pvc_name = pvc_name

    @property
    def location(self) -> str:
        """Return the store's root directory."""
        return str(self.root.resolve())

    def model_dir(self, model_name: str) -> Path:
        """Return the directory holding a model's versions and index."""
        schema_for(model_name)
        return self.root / model_name

    def storage_uri(self, model_name: str, version: str) -> str:
        """Return ``pvc://<pvc>/<model>/<version>``."""
        return f"pvc://{self.pvc_name}/{model_name}/{version}"

    def version_dir(self, model_name: str, version: str) -> Path:
        """Return the directory of one version."""
        version_number(version)
        return self.model_dir(model_name) / version

    def stored_versions(self, model_name: str) -> list[str]:
        """Return the complete versions on disk, oldest first (staging directories are never listed)."""
        directory = self.model_dir(model_name)
        if not directory.is_dir():
            return []
        names = [entry.name for entry in directory.iterdir() if VERSION_PATTERN.match(entry.name) and entry.is_dir()]
        return sorted(names, key=version_number)

    def save_version(self, model_name: str, model_file: Path, record: dict) -> StoredVersion:
        """Copy ``model_file`` into a staging directory, then rename it to the next free v<N>, then index it."""
        directory = self.model_dir(model_name)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"cannot create {directory}: {error}; is the model-storage PVC mounted and writable?") from error
        self.read_index(model_name)  # a damaged index fails the save before anything is published
        staging = directory / f".staging-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            shutil.copyfile(model_file, staging / MODEL_FILENAME)
            checksum = sha256_file(staging / MODEL_FILENAME)
            full_record = {**record, "sha256": checksum, "saved_at": utc_now()}
            version = self._publish(model_name, staging, full_record)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        stored = StoredVersion(model_name, version, checksum, self.storage_uri(model_name, version), str(directory / version))

        def add_entry(index: dict) -> None:
            index["versions"][version] = index_entry(full_record)
            index["history"].append({"at": utc_now(), "event": "saved", "version": version})

        try:
            self.update_index(model_name, add_entry)
        except Exception:
            self.quarantine(model_name, version, reason="failed-save")  # never leave a version visible without its index entry
            raise
        return stored

    def _publish(self, model_name: str, staging: Path, record: dict) -> str:
        """Finish the staging directory and rename it to the first free v<N>; return N's name."""
        existing = self.stored_versions(model_name)
        number = version_number(existing[-1]) + 1 if existing else 1
        while True:
            version = f"v{number}"
            _write_json_atomically(staging / RECORD_FILENAME, {**record, "version": version})
            with open(staging / MODEL_FILENAME, "rb") as handle:
                os.fsync(handle.fileno())
            _fsync_directory(staging)
            target = self.model_dir(model_name) / version
            try:
                # rename(2) of a directory fails when the target exists and is not empty: the atomic claim of vN.
                if target.exists():
                    raise FileExistsError(target)
                os.rename(staging, target)
            except OSError:
                number += 1
                continue
            _fsync_directory(target.parent)
            return version

    def version_record(self, model_name: str, version: str) -> dict:
        """Return a version's immutable record."""
        path = self.version_dir(model_name, version) / RECORD_FILENAME
        if not path.is_file():
            raise StoreError(f"{model_name} {version} does not exist in {self.root}; see the index {INDEX_FILENAME} for versions")
        return parse_json(path.read_bytes(), str(path), model_name)

    def raw_model_bytes(self, model_name: str, version: str) -> bytes:
        """Return a version's model.pkl bytes unchecked (``model_bytes`` checks them)."""
        path = self.version_dir(model_name, version) / MODEL_FILENAME
        try:
            return path.read_bytes()
        except OSError as error:
            raise StoreError(f"{model_name} {version}: cannot read {path}: {error}") from error

    def model_bytes(self, model_name: str, version: str) -> bytes:
        """Return a version's model.pkl bytes after checking them against the record's and the index's sha256."""
        record = self.version_record(model_name, version)
        index_sha256 = self.read_index(model_name)["versions"].get(version, {}).get("sha256")
        return checked_bytes(self.raw_model_bytes(model_name, version), model_name, version, record.get("sha256", ""), index_sha256)

    def quarantine(self, model_name: str, version: str, reason: str = "quarantined") -> str:
        """Move a version out of view into ``.quarantine/`` (nothing is deleted); return where it went."""
        target = self.model_dir(model_name) / QUARANTINE_DIR / f"{version}-{reason}-{uuid.uuid4().hex[:8]}"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(self.version_dir(model_name, version), target)
        return str(target)

    def last_good_index(self, model_name: str) -> dict | None:
        """Return the copy of the index written beside it at its last update, if it is readable."""
        path = self.model_dir(model_name) / (INDEX_FILENAME + BACKUP_SUFFIX)
        try:
            return parse_json(path.read_bytes(), str(path), model_name) if path.is_file() else None
        except StoreError:
            return None

    def write_index(self, model_name: str, index: dict) -> None:
        """Replace the index under the lock (``store repair``)."""
        with self._index_lock(model_name):
            self._write_index_files(model_name, index)

    @contextlib.contextmanager
    def _index_lock(self, model_name: str) -> Iterator[None]:
        """Hold an exclusive lock on the model's index."""
        directory = self.model_dir(model_name)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / ".index.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read_index(self, model_name: str) -> dict:
        """Return the model's index (an empty one when nothing is stored); a damaged one is a StoreError."""
        path = self.model_dir(model_name) / INDEX_FILENAME
        if not path.is_file():
            return empty_index(model_name)
        return parse_json(path.read_bytes(), str(path), model_name)

    def update_index(self, model_name: str, change: Callable[[dict], None]) -> dict:
        """Apply ``change`` under the lock, repairing entries for versions a crashed run left unindexed."""
        with self._index_lock(model_name):
            self._remove_stale_staging(model_name)
            index = self.read_index(model_name)
            change(index)
            repair_index(index, self.stored_versions(model_name), lambda version: self.version_record(model_name, version))
            self._write_index_files(model_name, index)
            return index

    def _write_index_files(self, model_name: str, index: dict) -> None:
        """Write the index, then its last good copy (what ``store repair`` falls back on if the index is damaged)."""
        path = self.model_dir(model_name) / INDEX_FILENAME
        _write_json_atomically(path, index)
        _write_json_atomically(path.with_name(INDEX_FILENAME + BACKUP_SUFFIX), index)

    def _remove_stale_staging(self, model_name: str) -> None:
        """Remove staging directories that crashed saves left behind (older than STALE_STAGING_S; call under the lock)."""
        cutoff = time.time() - STALE_STAGING_S
        for staging in self.model_dir(model_name).glob(".staging-*"):
            with contextlib.suppress(OSError):
                if staging.stat().st_mtime < cutoff:
                    shutil.rmtree(staging)
