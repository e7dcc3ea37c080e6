"""Store integrity for both stores: clear errors for damaged files, and ``store list|verify|repair``.

A damaged index or version record is a ``StoreError`` naming the file and the repair command. ``verify`` checks the
index, every record and every model file against both the index's and the record's sha256. ``repair`` rebuilds the
index from the version records (keeping the stable/candidate pointers and history of the index, or of its last
good copy, where they still name healthy versions) and quarantines versions whose record or model file is
unreadable or does not match: it moves them aside, it deletes nothing.
"""

from __future__ import annotations

from typing import Callable, Protocol

from components.storage import StoreError, checked_bytes, empty_index, index_entry, utc_now, version_number


class CheckableStore(Protocol):
    """What verify and repair need from a store."""

    location: str

    def read_index(self, model_name: str) -> dict: ...
    def stored_versions(self, model_name: str) -> list[str]: ...
    def version_record(self, model_name: str, version: str) -> dict: ...
    def raw_model_bytes(self, model_name: str, version: str) -> bytes: ...
    def last_good_index(self, model_name: str) -> dict | None: ...
    def write_index(self, model_name: str, index: dict) -> None: ...
    def quarantine(self, model_name: str, version: str) -> str: ...


def verify(store: CheckableStore, model_name: str) -> list[str]:
    """Return every integrity problem of ``model_name`` in ``store`` (empty when sound)."""
    problems = []
    try:
        index = store.read_index(model_name)
    except StoreError as error:
        problems.append(str(error))
        index = None
    stored = store.stored_versions(model_name)
    for version in stored:
        try:
            record = store.version_record(model_name, version)
            index_sha256 = (index or {}).get("versions", {}).get(version, {}).get("sha256")
            checked_bytes(store.raw_model_bytes(model_name, version), model_name, version, record["sha256"], index_sha256)
        except (StoreError, KeyError, OSError) as error:
            problems.append(str(error))
    if index is not None:
        for version in sorted(set(index["versions"]) - set(stored), key=version_number):
            problems.append(f"{model_name} {version} is in the index but missing from {store.location}; run `model-pipelines store repair {model_name}`")
        for version in sorted(set(stored) - set(index["versions"]), key=version_number):
            problems.append(f"{model_name} {version} is stored but not in the index; run `model-pipelines store repair {model_name}`")
        for pointer in ("stable", "candidate"):
            if index.get(pointer) and index[pointer] not in stored:
                problems.append(f"{model_name}: the index's {pointer} {index[pointer]} is not stored; run `model-pipelines store repair {model_name}`")
    return problems


def repair(store: CheckableStore, model_name: str, say: Callable[[str], None] = print) -> dict:
    """Quarantine unreadable or mismatching versions and rebuild the index from the records; return the new index."""
    try:
        previous = store.read_index(model_name)
    except StoreError:
        previous = store.last_good_index(model_name) or empty_index(model_name)
        say(f"{model_name}: the index is damaged; rebuilding from the version records and its last good copy")
    healthy = {}
    for version in store.stored_versions(model_name):
        try:
            record = store.version_record(model_name, version)
            checked_bytes(store.raw_model_bytes(model_name, version), model_name, version, record["sha256"], None)
            healthy[version] = record
        except (StoreError, KeyError, OSError) as error:
            say(f"{model_name} {version}: quarantined to {store.quarantine(model_name, version)} ({error})")
    index = empty_index(model_name)
    index["history"] = list(previous.get("history", []))
    for version, record in healthy.items():
        old = previous.get("versions", {}).get(version, {})
        index["versions"][version] = {**index_entry(record), **{key: old[key] for key in ("status", "rejected_reason", "duplicate_of") if key in old}}
    for pointer in ("stable", "candidate"):
        index[pointer] = previous.get(pointer) if previous.get(pointer) in healthy else None
    index["history"].append({"at": utc_now(), "event": "repaired", "version": None,
                             "detail": f"index rebuilt from {len(healthy)} version records"})
    store.write_index(model_name, index)
    say(f"{model_name}: index rebuilt with {len(healthy)} versions (stable {index['stable'] or 'none'})")
    return index
