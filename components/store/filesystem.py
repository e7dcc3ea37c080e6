"""save-to-storage: an immutable, versioned model store with an index of stable, candidate and rejected versions.

``ModelStore`` is the seam; ``FilesystemStore`` is the PVC layout::

    <root>/<model>/v<N>/model.pkl      the stock sklearn pickle
    <root>/<model>/v<N>/version.json   that version's immutable record (sha256, metrics, parameters, ...)
    <root>/<model>/metadata.json       the index: versions, stable and candidate pointers, history

Only ``save_version`` adds a version to the index, and the index's sha256 is what vouches for a version's bytes
(never the version.json beside them). The pipeline's save passes ``reuse_identical``: bytes already stored under a
version get no new number, the history records the duplicate. Files are opened one path component at a time without
following links.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import hashlib
import io
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

from components.files import exclusive_lock, fsync_directory, write_json_atomically
from components.model.contract import schema_for

RECORD_FILENAME = "version.json"
INDEX_FILENAME = "metadata.json"
BACKUP_SUFFIX = ".last-good"
QUARANTINE_DIR = ".quarantine"
STALE_STAGING_S = 3600
VERSION_PATTERN = re.compile(r"^v([1-9][0-9]*)$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_PVC = "model-storage-pvc"
DEFAULT_STORE_ROOT = "/mnt/models"
MODEL_FILENAME = "model.pkl"  # the one file the stock sklearn runtime loads from a version directory
TRAINING_FILENAME = "training.json"  # beside model.pkl in a trained Model artifact: parameters, lineage, input profile


class StoreError(RuntimeError):
    """A store operation failed; the message names what and how to fix it."""


class ChecksumMismatch(StoreError):
    """A version's model.pkl or record does not match the sha256 its index entry holds."""


class LinkRefused(StoreError):
    """A path in the store is a symbolic link (or would leave the store), which the store never follows."""


@dataclass(frozen=True)
class StoredVersion:
    """A version written to the store, and where serving finds it."""

    model_name: str
    version: str
    sha256: str
    storage_uri: str
    location: str
    already_stored: bool = False  # the bytes were already stored as ``version``: nothing new was written


def parse_json(data: bytes | str, where: str, model_name: str) -> dict:
    """Return the JSON object in ``data`` or raise StoreError naming ``where`` and the repair command."""
    try:
        parsed = json.loads(data)
    except ValueError as error:
        raise StoreError(f"{where} is damaged ({error}); run `model-pipelines store repair {model_name}`: it restores the index's "
                         "last good copy and quarantines the versions it cannot vouch for (nothing is deleted)") from None
    if not isinstance(parsed, dict):
        raise StoreError(f"{where} is damaged (not a JSON object); run `model-pipelines store repair {model_name}`")
    return parsed


def index_shape_problem(index: dict) -> str | None:
    """Return what keeps ``index`` from being a model index (versions, history, pointers of the right types), or None."""
    versions = index.get("versions")
    if not isinstance(versions, dict):
        return "'versions' is missing or not an object"
    for version, entry in versions.items():
        if not VERSION_PATTERN.match(version):
            return f"{version!r} in 'versions' is not a version name"
        if not isinstance(entry, dict):
            return f"the entry of {version} is not an object"
    if not isinstance(index.get("history"), list):
        return "'history' is missing or not a list"
    for pointer in ("stable", "candidate"):
        if index.get(pointer) is not None and not VERSION_PATTERN.match(str(index[pointer])):
            return f"'{pointer}' is not a version name"
    return None


def parse_index(data: bytes | str, where: str, model_name: str) -> dict:
    """Return the index in ``data`` or raise StoreError naming ``where``, what is wrong and the repair command."""
    index = parse_json(data, where, model_name)
    problem = index_shape_problem(index)
    if problem:
        raise StoreError(f"{where} is not a model index ({problem}); run `model-pipelines store repair {model_name}` to restore "
                         "its last good copy (nothing is deleted)")
    return index


def check_index_change(model_name: str, listed_before: set[str], after: dict, saved_version: str | None = None) -> None:
    """Raise StoreError unless ``after`` is a well-formed index that lists no new version but ``saved_version``."""
    problem = index_shape_problem(after)
    if problem:
        raise StoreError(f"{model_name}: refusing to write an index that is not well formed ({problem})")
    added = set(after["versions"]) - listed_before - {saved_version}
    if added:
        raise StoreError(f"{model_name}: refusing to add {', '.join(sorted(added))} to the index: only a save creates versions")


def listed_sha256(index: dict, model_name: str, version: str) -> str:
    """Return the sha256 the index holds for ``version``; a bad name or a version it does not list is a StoreError."""
    version_number(version)
    entry = index["versions"].get(version)
    if entry is None:
        raise StoreError(f"{model_name} {version} is not in the index, and only a save creates versions: nothing vouches for it "
                         f"(`model-pipelines store list {model_name}` shows the versions; `store repair` quarantines what the index does not list)")
    sha256 = entry.get("sha256")
    if not isinstance(sha256, str) or not SHA256_PATTERN.match(sha256):
        raise StoreError(f"{model_name} {version}: its index entry holds no sha256, so nothing vouches for its bytes; "
                         f"run `model-pipelines store repair {model_name}` to quarantine it")
    return sha256


def checked_bytes(data: bytes, model_name: str, version: str, index_sha256: str, record_sha256: str | None) -> bytes:
    """Return ``data`` if its sha256 is the index's and the record repeats it, else raise ChecksumMismatch saying which differs."""
    actual = hashlib.sha256(data).hexdigest()
    fix = f"do not serve it; `model-pipelines store repair {model_name}` quarantines it (nothing is deleted)"
    if actual != index_sha256 and actual == record_sha256:
        raise ChecksumMismatch(f"{model_name} {version}: model.pkl and its record agree on sha256 {actual[:12]}… but the index says "
                               f"{index_sha256[:12]}…: both were replaced after the save; {fix}")
    if actual != index_sha256:
        raise ChecksumMismatch(f"{model_name} {version}: model.pkl has sha256 {actual[:12]}… but the record says {(record_sha256 or '-')[:12]}… "
                               f"and the index {index_sha256[:12]}…: the file was changed or corrupted after it was saved; {fix}")
    if record_sha256 != index_sha256:
        raise ChecksumMismatch(f"{model_name} {version}: version.json says sha256 {(record_sha256 or '-')[:12]}… but model.pkl and the "
                               f"index agree on {actual[:12]}…: the record was changed after the save; {fix}")
    return data


def wall_clock() -> dt.datetime:
    """Return the current UTC time."""
    return dt.datetime.now(dt.timezone.utc)


# What "now" is for the index history and the monitor's decisions. A simulation of days in minutes
# (``python -m benchmarks unattended``) replaces it with its own clock; nothing else does.
clock: Callable[[], dt.datetime] = wall_clock


def current_time() -> dt.datetime:
    """Return the current UTC time by ``clock``."""
    return clock()


def utc_now() -> str:
    """Return the current UTC time (by ``clock``) as an ISO 8601 string."""
    return current_time().isoformat(timespec="seconds")


def empty_index(model_name: str) -> dict:
    """Return the index of a model with no versions."""
    return {"model": model_name, "stable": None, "candidate": None, "versions": {}, "history": []}


def champion_version(index: dict) -> str | None:
    """Return the version new candidates are compared against: the stable one, else the newest not rejected."""
    if index.get("stable"):
        return index["stable"]
    usable = [name for name, entry in index["versions"].items() if entry.get("status") != "rejected"]
    return max(usable, key=version_number) if usable else None


DUPLICATE_EVENT = "duplicate"  # a history event: a save whose bytes were already stored, so no new version


def reusable_version(store: ModelStore, model_name: str, index: dict, sha256: str) -> str | None:
    """Return the indexed version whose bytes have ``sha256`` and still check out (stable first, then newest first), or None.

    A version whose stored bytes no longer check out is never reused: without an intact one the save stores a good
    copy, and ``store repair`` deals with the damaged one.
    """
    matches = sorted((version for version, entry in index["versions"].items() if entry.get("sha256") == sha256),
                     key=lambda version: (version == index.get("stable"), version_number(version)), reverse=True)
    for version in matches:
        try:
            store.model_bytes(model_name, version)
        except (StoreError, OSError):
            continue
        return version
    return None


def record_duplicate(index: dict, version: str, run_name: str) -> None:
    """Append to the history that a save by ``run_name`` found its bytes already stored as ``version``."""
    entry = index["versions"][version]
    existing = f"stable {version}" if index.get("stable") == version else f"{version} ({entry.get('status', 'stored')})"
    index["history"].append({"at": utc_now(), "event": DUPLICATE_EVENT, "version": version,
                             "detail": f"{run_name or 'a save'}: byte-identical to {existing} (sha256 {entry['sha256'][:12]}…), nothing new stored"})


def version_number(version: str) -> int:
    """Return N for a version name 'vN'."""
    match = VERSION_PATTERN.match(version)
    if not match:
        raise StoreError(f"{version!r} is not a version name; versions are v1, v2, ...")
    return int(match.group(1))


class ModelStore(Protocol):
    """Where versions live: immutable versions plus an index updated last."""

    def save_version(self, model_name: str, model_file: Path, record: dict, *, reuse_identical: bool = False) -> StoredVersion:
        """Store ``model_file`` as the next version with ``record`` and return it; never overwrite.

        With ``reuse_identical``, bytes the index already lists are not stored again: the existing version is returned
        (``already_stored``) and the history records the duplicate.
        """

    def model_bytes(self, model_name: str, version: str) -> bytes:
        """Return a version's model.pkl bytes after checking them against the recorded sha256."""

    def version_record(self, model_name: str, version: str) -> dict:
        """Return a version's immutable record."""

    def read_index(self, model_name: str) -> dict:
        """Return the model's index (an empty one when nothing is stored)."""

    def update_index(self, model_name: str, change: Callable[[dict], None]) -> dict:
        """Apply ``change`` to the index under concurrency control and return the new index (it may add no version)."""

    def storage_uri(self, model_name: str, version: str) -> str:
        """Return the storageUri KServe uses to load a version."""

    @property
    def location(self) -> str:
        """Return where the store lives, for people (a directory or an s3:// prefix)."""


def saved_version_entry(version: str, record: dict) -> Callable[[dict], None]:
    """Return the index change that lists a freshly saved version (its entry from its record) and logs the save in the history."""

    def add_entry(index: dict) -> None:
        index["versions"][version] = {"status": "stored", "sha256": record["sha256"], "saved_at": record.get("saved_at", ""),
                                      "run_name": record.get("run_name", ""), "data_source": record.get("data_source", "unknown")}
        index["history"].append({"at": utc_now(), "event": "saved", "version": version})

    return add_entry


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
        """Return the directory holding a model's versions and index; a symbolic link there is refused."""
        schema_for(model_name)
        directory = self.root / model_name
        if directory.is_symlink():
            raise LinkRefused(f"{directory} is a symbolic link, which the store never follows: put the model's real directory there")
        return directory

    def storage_uri(self, model_name: str, version: str) -> str:
        """Return ``pvc://<pvc>/<model>/<version>``."""
        version_number(version)
        return f"pvc://{self.pvc_name}/{model_name}/{version}"

    def version_dir(self, model_name: str, version: str) -> Path:
        """Return the directory of one version."""
        version_number(version)
        return self.model_dir(model_name) / version

    def stored_versions(self, model_name: str) -> list[str]:
        """Return the version directories on disk, links included so that verify and repair see them, oldest first."""
        directory = self.model_dir(model_name)
        if not directory.is_dir():
            return []
        with os.scandir(directory) as entries:
            names = [entry.name for entry in entries
                     if VERSION_PATTERN.match(entry.name) and (entry.is_symlink() or entry.is_dir(follow_symlinks=False))]
        return sorted(names, key=version_number)

    def _open_inside(self, model_name: str, *parts: str) -> int:
        """Return a read-only descriptor of ``<root>/<model>/<parts>``, opened one component at a time following no link."""
        names = (self.model_dir(model_name).name, *parts)
        descriptor = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for position, name in enumerate(names):
                if name in ("", ".", "..") or "/" in name:
                    raise LinkRefused(f"{name!r} would leave the model's directory in {self.root}; the store reads only its own files")
                last = position == len(names) - 1
                try:
                    child = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | (0 if last else os.O_DIRECTORY), dir_fd=descriptor)
                except OSError as error:
                    path = self.root.joinpath(*names[:position + 1])
                    if error.errno in (errno.ELOOP, errno.ENOTDIR) and path.is_symlink():
                        raise LinkRefused(f"{path} is a symbolic link, which the store never follows; run "
                                          f"`model-pipelines store repair {model_name}` to quarantine it (nothing is deleted)") from None
                    raise
                os.close(descriptor)
                descriptor = child
        except BaseException:
            os.close(descriptor)
            raise
        return descriptor

    def _read_inside(self, model_name: str, *parts: str) -> bytes:
        """Return the bytes of the file ``<root>/<model>/<parts>``, following no link."""
        with os.fdopen(self._open_inside(model_name, *parts), "rb") as handle:
            return handle.read()

    def save_version(self, model_name: str, model_file: Path, record: dict, *, reuse_identical: bool = False) -> StoredVersion:
        """Copy ``model_file`` into a staging directory; under the index lock, rename it to the next free v<N> and index it.

        With ``reuse_identical``, bytes the index already lists (checked under the lock, so concurrent identical saves
        store them once) are not stored again: the existing version is returned and the history records the duplicate.
        """
        directory = self.model_dir(model_name)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"cannot create {directory}: {error}; is the model-storage PVC mounted and writable?") from error
        staging = directory / f".staging-{uuid.uuid4().hex}"
        try:
            staging.mkdir()
            shutil.copyfile(model_file, staging / MODEL_FILENAME)
            checksum = sha256_file(staging / MODEL_FILENAME)
            full_record = {**record, "sha256": checksum, "saved_at": utc_now()}
            # Publishing and indexing under one lock: ``store repair`` never sees a saved version its index does not list yet.
            with self.index_lock(model_name):
                index = self.read_index(model_name)  # a damaged index fails the save before anything is published
                existing = reusable_version(self, model_name, index, checksum) if reuse_identical else None
                if existing:
                    self._update_index_locked(model_name, lambda index: record_duplicate(index, existing, record.get("run_name", "")))
                    return StoredVersion(model_name, existing, checksum, self.storage_uri(model_name, existing), str(directory / existing),
                                         already_stored=True)
                version = self._publish(model_name, staging, full_record)
                try:
                    self._update_index_locked(model_name, saved_version_entry(version, full_record), saved_version=version)
                except Exception:
                    self.quarantine(model_name, version, reason="failed-save")  # never leave a version visible without its index entry
                    raise
        except OSError as error:  # a full or read-only volume: nothing was published, the stored versions and the index are as they were
            raise StoreError(f"cannot save {model_name} in {directory}: {error.strerror or error}; nothing was saved, and the stored versions "
                             "are as they were; check that the model-storage PVC is mounted, writable and not full (`df -h` on its mount "
                             "in the pod; `model-pipelines store list` lists what it holds)") from error
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return StoredVersion(model_name, version, checksum, self.storage_uri(model_name, version), str(directory / version))

    def _publish(self, model_name: str, staging: Path, record: dict) -> str:
        """Finish the staging directory and rename it to the first free v<N>; return N's name."""
        existing = self.stored_versions(model_name)
        number = version_number(existing[-1]) + 1 if existing else 1
        while True:
            version = f"v{number}"
            write_json_atomically(staging / RECORD_FILENAME, {**record, "version": version})
            with open(staging / MODEL_FILENAME, "rb") as handle:
                os.fsync(handle.fileno())
            fsync_directory(staging)
            target = self.model_dir(model_name) / version
            try:
                # rename(2) of a directory fails when the target exists and is not empty: the atomic claim of vN.
                if os.path.lexists(target):
                    raise FileExistsError(target)
                os.rename(staging, target)
            except OSError as error:
                if not isinstance(error, FileExistsError) and error.errno != errno.ENOTEMPTY:
                    raise  # not a claimed number: trying the next one would fail the same way, forever
                number += 1
                continue
            fsync_directory(target.parent)
            return version

    def version_record(self, model_name: str, version: str) -> dict:
        """Return a version's immutable record."""
        path = self.version_dir(model_name, version) / RECORD_FILENAME
        try:
            data = self._read_inside(model_name, version, RECORD_FILENAME)
        except (FileNotFoundError, NotADirectoryError):
            raise StoreError(f"{model_name} {version} does not exist in {self.root}; see the index {INDEX_FILENAME} for versions") from None
        except OSError as error:
            raise StoreError(f"{model_name} {version}: cannot read {path}: {error}") from error
        return parse_json(data, str(path), model_name)

    def raw_model_bytes(self, model_name: str, version: str) -> bytes:
        """Return a version's model.pkl bytes unchecked (``model_bytes`` checks them)."""
        path = self.version_dir(model_name, version) / MODEL_FILENAME
        try:
            return self._read_inside(model_name, version, MODEL_FILENAME)
        except OSError as error:
            raise StoreError(f"{model_name} {version}: cannot read {path}: {error}") from error

    def model_bytes(self, model_name: str, version: str) -> bytes:
        """Return a version's model.pkl bytes after checking them against the index's sha256 (and the record's)."""
        index_sha256 = listed_sha256(self.read_index(model_name), model_name, version)
        record = self.version_record(model_name, version)
        return checked_bytes(self.raw_model_bytes(model_name, version), model_name, version, index_sha256, record.get("sha256"))

    def quarantine(self, model_name: str, version: str, reason: str = "quarantined") -> str:
        """Move a version (a link itself, never what it points to) into ``.quarantine/``; nothing is deleted. Return where it went."""
        source = self.version_dir(model_name, version)
        holding = self.model_dir(model_name) / QUARANTINE_DIR
        if holding.is_symlink():
            raise LinkRefused(f"{holding} is a symbolic link, which the store never follows: put a real directory there")
        holding.mkdir(exist_ok=True)
        target = holding / f"{version}-{reason}-{uuid.uuid4().hex[:8]}"
        os.rename(source, target)
        return str(target)

    def last_good_index(self, model_name: str) -> dict | None:
        """Return the copy of the index written beside it at its last update, if it is readable and well formed."""
        path = self.model_dir(model_name) / (INDEX_FILENAME + BACKUP_SUFFIX)
        try:
            return parse_index(self._read_inside(model_name, path.name), str(path), model_name)
        except (StoreError, OSError):
            return None

    def write_index(self, model_name: str, index: dict) -> None:
        """Replace the index and its last good copy (``store repair``; call it under ``index_lock``)."""
        self._write_index_files(model_name, index)

    @contextlib.contextmanager
    def index_lock(self, model_name: str) -> Iterator[None]:
        """Hold the model's exclusive index lock (not reentrant): saves, index updates and repairs take it."""
        with exclusive_lock(self.model_dir(model_name) / ".index.lock"):
            yield

    def read_index(self, model_name: str) -> dict:
        """Return the model's index (an empty one when nothing is stored); a damaged or wrong-shaped one is a StoreError."""
        path = self.model_dir(model_name) / INDEX_FILENAME
        try:
            data = self._read_inside(model_name, INDEX_FILENAME)
        except FileNotFoundError:
            return empty_index(model_name)
        except OSError as error:
            raise StoreError(f"cannot read {path}: {error}") from error
        return parse_index(data, str(path), model_name)

    def update_index(self, model_name: str, change: Callable[[dict], None]) -> dict:
        """Apply ``change`` to the index under the lock and write it; a change may not add a version (only a save does)."""
        with self.index_lock(model_name):
            return self._update_index_locked(model_name, change)

    def _update_index_locked(self, model_name: str, change: Callable[[dict], None], saved_version: str | None = None) -> dict:
        """Apply ``change`` to the index and write it; the caller holds the lock and only a save passes ``saved_version``."""
        self._remove_stale_staging(model_name)
        index = self.read_index(model_name)
        listed_before = set(index["versions"])
        change(index)
        check_index_change(model_name, listed_before, index, saved_version)
        self._write_index_files(model_name, index)
        return index

    def _write_index_files(self, model_name: str, index: dict) -> None:
        """Write the index, then its last good copy (what ``store repair`` falls back on if the index is damaged)."""
        path = self.model_dir(model_name) / INDEX_FILENAME
        write_json_atomically(path, index)
        write_json_atomically(path.with_name(INDEX_FILENAME + BACKUP_SUFFIX), index)

    def _remove_stale_staging(self, model_name: str) -> None:
        """Remove staging directories that crashed saves left behind (older than STALE_STAGING_S; call under the lock)."""
        cutoff = time.time() - STALE_STAGING_S
        for staging in self.model_dir(model_name).glob(".staging-*"):
            with contextlib.suppress(OSError):
                if staging.stat().st_mtime < cutoff:
                    shutil.rmtree(staging)
