"""Keep the registry in step with the store: register each stored version once, mirror its status at every step, resolve
``model-registry://`` references back to the store (checked against its checksum), read and write a version's properties.

The store is the source of truth (data flows store -> registry). A version's ``status`` and ``status_reason`` properties
mirror the index; a rejected version is ARCHIVED (the store judged it unfit, so the dashboard no longer offers it for
deployment) and every other version is LIVE: a retired version was stable and is the one a rollback goes back to. The
state is worked out from the store at each sync, so a rejected version that a later rollout makes stable is LIVE again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from components.registry.client import RegistryClient, RegistryConflict, RegistryError, plain_values, property_values
from components.store.filesystem import ModelStore, StoreError, version_number

URI_SCHEME = "model-registry://"
STATUS, STATUS_REASON, SHA256 = "status", "status_reason", "sha256"
MODEL_FORMAT = "sklearn"
# Every RegisteredModel and ModelVersion the project creates carries this custom property; it writes to no other entry.
MANAGED_BY, MANAGER = "managed_by", "model-pipelines"
OWNERSHIP = property_values({MANAGED_BY: MANAGER})


@dataclass
class SyncReport:
    """What one sync did: versions newly registered, versions whose status or state changed, and what could not be registered."""

    model_name: str
    registered: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)  # "vN NOT in step: why" for a version whose registry entry someone else made

    def message(self) -> str:
        """Return one line for a step's log and a run's summary."""
        parts = [f"registered {', '.join(self.registered)}" if self.registered else "",
                 f"status mirrored for {', '.join(self.updated)}" if self.updated else "",
                 f"{len(self.unchanged)} version(s) already in step" if self.unchanged else "", *self.foreign]
        return f"{self.model_name}: " + ("; ".join(part for part in parts if part) or "no versions stored")


def version_status(index: dict, version: str) -> tuple[str, str]:
    """Return a version's status in the store's index and the reason that goes with it ("" when none)."""
    entry = index["versions"][version]
    status = entry.get("status", "stored")
    reason = entry.get("rejected_reason") or entry.get("held_reason") or (f"duplicate of {entry['duplicate_of']}" if entry.get("duplicate_of") else "")
    return status, reason if status in ("rejected", "held", "duplicate") else ""


def version_state(status: str) -> str:
    """Return the registry state of a version with the store status ``status``: ARCHIVED when rejected, else LIVE."""
    return "ARCHIVED" if status == "rejected" else "LIVE"


def version_properties(record: dict, index: dict, version: str) -> dict[str, object]:
    """Return a stored version's custom properties: checksum, evaluation metrics, data lineage, pipeline lineage, image, champion, status."""
    status, reason = version_status(index, version)
    window = record.get("data_window") or {}
    run_name = record.get("run_name", "")
    properties: dict[str, object] = {
        SHA256: index["versions"][version]["sha256"],
        **{f"metric_{name}": float(value) for name, value in sorted(record.get("metrics", {}).items())
           if isinstance(value, (int, float)) and not isinstance(value, bool)},
        "data_source": record.get("data_source", "unknown"),
        "data_window_start": window.get("start"),
        "data_window_end": window.get("end"),
        "training_rows": record.get("training_rows"),
        "data_fingerprint": record.get("data_fingerprint"),
        "pipeline_name": record.get("pipeline_name") or (f"{record.get('model', '')}-retrain" if run_name else "none (saved outside a pipeline)"),
        "pipeline_version": record.get("project_version"),
        "pipeline_run_id": run_name or "none",
        "image": record.get("image") or "unknown (saved outside a pipeline)",
        "champion": record.get("champion") or "none",
        "python_version": record.get("python_version"),
        STATUS: status,
        STATUS_REASON: reason,
    }
    return {key: value for key, value in properties.items() if value is not None}


def artifact_body(store: ModelStore, record: dict, model_name: str, version: str, storage_key: str) -> dict:
    """Return the ModelArtifact of a stored version: its storage URI, format sklearn at the training scikit-learn version, and for an
    S3 store the data connection (storageKey) and the key prefix in its bucket (storagePath)."""
    uri = store.storage_uri(model_name, version)
    body = {"name": f"{model_name}-{version}", "uri": uri, "modelFormatName": MODEL_FORMAT,
            "modelFormatVersion": str(record.get("sklearn_version", "")), "state": "LIVE",
            "description": f"{model_name} {version}: model.pkl and version.json in the model store"}
    if uri.startswith("s3://") and storage_key:
        body.update(storageKey=storage_key, storagePath=uri.removeprefix("s3://").partition("/")[2])
    return body


class NotOursError(RegistryError):
    """A registry entry of the name the project would use was made by someone else; it is left as it is."""


def owned(client: RegistryClient, entry: dict, what: str) -> dict:
    """Return ``entry`` (a RegisteredModel or ModelVersion) when the project created it; raise NotOursError naming it otherwise."""
    if plain_values(entry.get("customProperties")).get(MANAGED_BY) != MANAGER:
        raise NotOursError(f"the model registry at {client.url} already has {what}, which model-pipelines did not create (it has no custom "
                            f"property {MANAGED_BY}={MANAGER}): left as it is, nothing registered or changed there; rename or remove that "
                            f"entry in the registry, or set its property {MANAGED_BY} to {MANAGER} to hand it to this project")
    return entry


def _found_or_created(client: RegistryClient, find: Callable[[], dict | None], create: Callable[[], dict], what: str) -> tuple[dict, bool]:
    """Return (the project's entry ``find`` looks up, else the one ``create`` makes; whether this call created it); when a create
    loses a race (409: another run created it between the lookup and the create) the winner's entry, if it is the project's; raise
    RegistryError when the entry found is someone else's."""
    found = find()
    if found is None:
        try:
            return create(), True
        except RegistryConflict:
            found = find() or {}
    return owned(client, found, what), False


def registered_model(client: RegistryClient, model_name: str, description: str, owner: str) -> dict:
    """Return the project's RegisteredModel ``model_name``, created (or its description and owner brought up to date) as the spec says;
    raise RegistryError when an entry of that name is someone else's."""
    found, created = _found_or_created(
        client, lambda: client.find_registered_model(model_name),
        lambda: client.create_registered_model({"name": model_name, "description": description, "owner": owner, "state": "LIVE",
                                                "customProperties": OWNERSHIP}),
        f"a RegisteredModel named {model_name!r}")
    if not created and (found.get("description", "") != description or found.get("owner", "") != owner):
        return client.update_registered_model(found["id"], {"description": description, "owner": owner})
    return found


def model_version(client: RegistryClient, model: dict, version: str, body: dict) -> tuple[dict, bool]:
    """Return (the project's ModelVersion ``version`` of ``model``, whether this call created it from ``body``); raise RegistryError
    when an entry of that name is someone else's."""
    return _found_or_created(client, lambda: client.find_model_version(version, model["id"]), lambda: client.create_model_version(body),
                             f"a ModelVersion {version!r} of {model['name']!r}")


def sync_model(store: ModelStore, client: RegistryClient, model_name: str, description: str, owner: str, storage_key: str = "") -> SyncReport:
    """Make the registry match the store's index for ``model_name``: register every stored version missing there (version, properties,
    artifact) and mirror each version's status; return what changed. Idempotent: a second call creates nothing."""
    report = SyncReport(model_name)
    index = store.read_index(model_name)
    if not index["versions"]:
        return report
    model = registered_model(client, model_name, description, owner)
    for version in sorted(index["versions"], key=version_number):
        record = store.version_record(model_name, version)
        wanted = {**property_values(version_properties(record, index, version)), **OWNERSHIP}
        state = version_state(version_status(index, version)[0])
        try:
            found, created = model_version(client, model, version, {
                "name": version, "registeredModelId": model["id"], "author": record.get("run_name") or "model-pipelines",
                "description": f"{model_name} {version}, saved {record.get('saved_at', '')}", "customProperties": wanted, "state": state})
        except NotOursError as error:  # one hand-made entry stops only its own version
            report.foreign.append(f"{version} NOT in step: {error}")
            continue
        if created:
            report.registered.append(version)
        elif any((found.get("customProperties") or {}).get(key) != value for key, value in wanted.items()) or found.get("state") != state:
            # Properties set in the registry by people (approved, notes) are kept: only the store's keys are written.
            client.update_model_version(found["id"], {"customProperties": {**(found.get("customProperties") or {}), **wanted}, "state": state})
            report.updated.append(version)
        else:
            report.unchanged.append(version)
        if not client.model_artifacts(found["id"]):
            client.add_model_artifact(found["id"], artifact_body(store, record, model_name, version, storage_key))
            if version not in report.registered:
                report.registered.append(version)
    return report


def _registered_version(client: RegistryClient, model_name: str, version: str) -> dict:
    """Return the registry's ModelVersion ``version`` of ``model_name``; raise RegistryError when either is not registered."""
    model = client.find_registered_model(model_name)
    found = client.find_model_version(version, model["id"]) if model else None
    if found is None:
        raise RegistryError(f"the model registry at {client.url} has no version {version!r} of {model_name!r}; "
                            f"`model-pipelines registry sync {model_name}` registers the stored ones")
    return found


def version_ids(client: RegistryClient, model_name: str, version: str) -> tuple[str, str]:
    """Return (registered model id, model version id) of ``version`` of ``model_name`` in the registry (what deployments are labelled
    with); raise RegistryError when it is not registered."""
    found = _registered_version(client, model_name, version)
    return found["registeredModelId"], found["id"]


def registered_properties(client: RegistryClient, model_name: str, version: str) -> dict[str, object]:
    """Return the custom properties of ``version`` of ``model_name`` in the registry as plain values (bool, int, float or str)."""
    return plain_values(_registered_version(client, model_name, version).get("customProperties"))


def update_registered_properties(client: RegistryClient, model_name: str, version: str, values: dict[str, bool | int | float | str],
                                 removed: tuple[str, ...] = ()) -> None:
    """Set the custom properties ``values`` of the project's ``version`` of ``model_name`` in the registry and drop those named in
    ``removed``, keeping its other properties."""
    found = owned(client, _registered_version(client, model_name, version), f"a ModelVersion {version!r} of {model_name!r}")
    kept = {key: value for key, value in (found.get("customProperties") or {}).items() if key not in removed}
    client.update_model_version(found["id"], {"customProperties": {**kept, **property_values(values)}})


REGISTRY_URI_MODEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")  # a model name is a DNS label
REGISTRY_URI_VERSION = re.compile(r"^v?[1-9][0-9]{0,8}$")  # vN or N


def parse_registry_uri(text: str) -> tuple[str, str] | None:
    """Return (model, version) of ``model-registry://<model>/<version>`` (a bare number N means vN), or None for another text."""
    if not text.startswith(URI_SCHEME):
        return None
    model, _, version = text.removeprefix(URI_SCHEME).partition("/")
    if not REGISTRY_URI_MODEL.match(model) or not REGISTRY_URI_VERSION.match(version):
        raise ValueError(f"{text[:120]!r} is not model-registry://<model>/<version>, e.g. model-registry://anomaly-detector/v3")
    return model, version if version.startswith("v") else f"v{version}"


def resolve_version(client: RegistryClient, store: ModelStore, model_name: str, version: str) -> str:
    """Return the stored version a registry entry names, after checking that its artifact URI and sha256 are the store's own for that
    version and that the stored bytes match; raise RegistryError naming any mismatch (nothing deploys)."""
    found = _registered_version(client, model_name, version)
    artifacts = client.model_artifacts(found["id"])
    if not artifacts:
        raise RegistryError(f"version {version} of {model_name} has no model artifact in the registry; `model-pipelines registry sync {model_name}`")
    artifact = artifacts[0]
    index = store.read_index(model_name)
    if version not in index["versions"]:
        raise RegistryError(f"the registry names {model_name} {version}, which the store at {store.location} does not hold; "
                            "a registry entry cannot point a rollout at a file the store does not vouch for")
    expected_uri = store.storage_uri(model_name, version)
    if str(artifact.get("uri")).rstrip("/") != expected_uri.rstrip("/"):  # S3 URIs end in "/" since 2026-12-06
        raise RegistryError(f"model-registry://{model_name}/{version} points at {artifact.get('uri')!r}, but the store holds {version} at "
                            f"{expected_uri!r}: refused, nothing deployed; fix the registry entry (`model-pipelines registry sync {model_name}` "
                            "does not rewrite an artifact) or roll out by the store's version name")
    registered_sha = plain_values(found.get("customProperties")).get(SHA256)
    stored_sha = index["versions"][version]["sha256"]
    if registered_sha != stored_sha:
        raise RegistryError(f"model-registry://{model_name}/{version} has sha256 {str(registered_sha)[:12]}…, but the store's {version} has "
                            f"{stored_sha[:12]}…: refused, nothing deployed")
    try:
        store.model_bytes(model_name, version)  # checks the bytes against the index's and the record's sha256
    except (StoreError, OSError) as error:
        raise RegistryError(f"the store's {model_name} {version} does not check out ({error}): refused, nothing deployed") from None
    return version
