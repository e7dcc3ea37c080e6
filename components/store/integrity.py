"""Store integrity for both stores: clear errors for damaged files, and ``store list|verify|repair``.

Only a save creates versions, and only the index (or, when it is damaged, its last good copy) vouches for them:
never a version's own version.json. ``verify`` checks every stored version's model file and record against the
index's sha256 and names every version the index does not list. ``repair`` restores the index's last good copy
when the index is damaged or wrong-shaped, and quarantines every version the index does not list, that is a
symbolic link, or whose bytes or record do not match the index: it moves them aside, it adopts and deletes nothing.
"""

from __future__ import annotations

from typing import Callable, ContextManager, Protocol

from components.store.filesystem import (
    INDEX_FILENAME,
    ChecksumMismatch,
    LinkRefused,
    StoreError,
    checked_bytes,
    listed_sha256,
    utc_now,
    version_number,
)


class CheckableStore(Protocol):
    """What verify and repair need from a store."""

    location: str

    def read_index(self, model_name: str) -> dict: ...
    def stored_versions(self, model_name: str) -> list[str]: ...
    def version_record(self, model_name: str, version: str) -> dict: ...
    def raw_model_bytes(self, model_name: str, version: str) -> bytes: ...
    def last_good_index(self, model_name: str) -> dict | None: ...
    def index_lock(self, model_name: str) -> ContextManager[None]: ...
    def write_index(self, model_name: str, index: dict) -> None: ...
    def quarantine(self, model_name: str, version: str, reason: str) -> str: ...


def vouching_index(store: CheckableStore, model_name: str) -> tuple[dict | None, str]:
    """Return the index that vouches for versions (the index, else its last good copy, else None) and the index's damage."""
    try:
        return store.read_index(model_name), ""
    except StoreError as error:
        return store.last_good_index(model_name), str(error)


def version_problem(store: CheckableStore, model_name: str, version: str, index: dict) -> tuple[str, str] | None:
    """Return (quarantine reason, problem) for a stored version that ``index`` does not vouch for, or None when it does."""
    if version not in index["versions"]:
        return "unlisted", (f"{model_name} {version} is stored but the index does not list it, and only a save creates versions; "
                            f"run `model-pipelines store repair {model_name}` to quarantine it")
    try:
        index_sha256 = listed_sha256(index, model_name, version)
        record = store.version_record(model_name, version)
        checked_bytes(store.raw_model_bytes(model_name, version), model_name, version, index_sha256, record.get("sha256"))
    except ChecksumMismatch as error:
        return "mismatch", str(error)
    except LinkRefused as error:
        return "symlink", str(error)
    except (StoreError, OSError) as error:
        return "unreadable", str(error)
    return None


def verify(store: CheckableStore, model_name: str) -> list[str]:
    """Return every integrity problem of ``model_name`` in ``store`` (empty when sound)."""
    index, damage = vouching_index(store, model_name)
    problems = [damage] if damage else []
    if index is None:
        return [*problems, f"{model_name}: the last good copy of {INDEX_FILENAME} is missing or damaged too, so nothing vouches for "
                           f"the stored versions; restore {INDEX_FILENAME} from a backup"]
    stored = store.stored_versions(model_name)
    for version in stored:
        found = version_problem(store, model_name, version, index)
        if found:
            problems.append(found[1])
    for version in sorted(set(index["versions"]) - set(stored), key=version_number):
        problems.append(f"{model_name} {version} is in the index but missing from {store.location}; run `model-pipelines store repair {model_name}`")
    for pointer in ("stable", "candidate"):
        if index.get(pointer) and index[pointer] not in stored:
            problems.append(f"{model_name}: the index's {pointer} {index[pointer]} is not stored; run `model-pipelines store repair {model_name}`")
    return problems


def repair(store: CheckableStore, model_name: str, say: Callable[[str], None] = print) -> dict:
    """Restore the index (its last good copy if damaged) and quarantine every version it does not vouch for; return the new index."""
    with store.index_lock(model_name):
        index, damage = vouching_index(store, model_name)
        if index is None:
            raise StoreError(f"{damage}; its last good copy is missing or damaged too, so nothing vouches for the stored versions: "
                             f"restore {INDEX_FILENAME} from a backup (repair changed nothing)")
        if damage:
            say(f"{model_name}: the index is damaged; restoring its last good copy")
        stored = store.stored_versions(model_name)
        quarantined = []
        for version in stored:
            found = version_problem(store, model_name, version, index)
            if found is None:
                continue
            reason, problem = found
            where = store.quarantine(model_name, version, reason)
            quarantined.append(version)
            index["versions"].pop(version, None)
            index["history"].append({"at": utc_now(), "event": "quarantined", "version": version, "detail": f"{reason}: {problem}",
                                     "location": where})
            say(f"{model_name} {version}: quarantined to {where} ({reason}: {problem})")
        for version in sorted(set(index["versions"]) - set(stored), key=version_number):
            del index["versions"][version]
            say(f"{model_name} {version}: in the index but not stored; removed from the index")
        for pointer in ("stable", "candidate"):
            if index.get(pointer) and index[pointer] not in index["versions"]:
                say(f"{model_name}: {pointer} {index[pointer]} is not a sound stored version; {pointer} is now none "
                    f"(roll out a sound one: `model-pipelines rollout {model_name} --version vN`)")
                index[pointer] = None
        index["history"].append({"at": utc_now(), "event": "repaired", "version": None,
                                 "detail": f"{'last good copy restored; ' if damage else ''}{len(quarantined)} version(s) quarantined"})
        store.write_index(model_name, index)
    say(f"{model_name}: index holds {len(index['versions'])} versions (stable {index.get('stable') or 'none'})")
    return index
