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
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

import joblib

from components.contract import schema_for
from components.train import MODEL_FILENAME

RECORD_FILENAME = "version.json"
INDEX_FILENAME = "metadata.json"
VERSION_PATTERN = re.compile(r"^v([1-9][0-9]*)$")
DEFAULT_PVC = "model-storage-pvc"
DEFAULT_STORE_ROOT = "/mnt/models"


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
    """Add index entries for complete versions a crashed save left unindexed (the index is always written last)."""
    for version in stored:
        if version not in index["versions"]:
            index["versions"][version] = index_entry(read_record(version))
            index["history"].append({"at": utc_now(), "event": "repaired", "version": version})


def load_model(store: ModelStore, model_name: str, version: str) -> object:
    """Return the estimator of a stored version, verified against its checksum."""
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

        self.update_index(model_name, add_entry)
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
        return json.loads(path.read_text())

    def model_bytes(self, model_name: str, version: str) -> bytes:
        """Return a version's model.pkl bytes after checking them against the recorded sha256."""
        record = self.version_record(model_name, version)
        data = (self.version_dir(model_name, version) / MODEL_FILENAME).read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != record["sha256"]:
            raise StoreError(
                f"{model_name} {version}: model.pkl has sha256 {actual[:12]}… but the record says {record['sha256'][:12]}…; "
                "the file was changed or corrupted after it was saved: do not serve it, save a new version instead"
            )
        return data

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
        """Return the model's index (an empty one when nothing is stored)."""
        path = self.model_dir(model_name) / INDEX_FILENAME
        if not path.is_file():
            return empty_index(model_name)
        return json.loads(path.read_text())

    def update_index(self, model_name: str, change: Callable[[dict], None]) -> dict:
        """Apply ``change`` under the lock, repairing entries for versions a crashed run left unindexed."""
        with self._index_lock(model_name):
            index = self.read_index(model_name)
            change(index)
            repair_index(index, self.stored_versions(model_name), lambda version: self.version_record(model_name, version))
            _write_json_atomically(self.model_dir(model_name) / INDEX_FILENAME, index)
            return index
