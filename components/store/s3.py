"""The model store on S3-compatible object storage, with the filesystem store's semantics.

Layout: ``s3://<bucket>/<prefix>/<model>/v<N>/model.pkl``, ``.../v<N>/version.json`` and
``<prefix>/<model>/metadata.json``. A version is claimed by creating its ``model.pkl`` with ``If-None-Match: *``
(never overwritten; a taken N answers 412 and the next is tried) and becomes visible when its record is written.
Uploads carry their SHA-256 so that the server rejects a corrupted transfer, and downloads are checked against the
record. The index is written last, with ``If-Match`` on the ETag read (``If-None-Match`` for a new index), redone
on 412, so concurrent saves never lose an entry; only a save adds a version to it. A save with ``reuse_identical``
returns the version the index already lists for the same bytes instead of claiming a number (S3 has no lock: two
such saves racing with identical bytes may both store them, as distinct versions). Keys are built only from a known
model name, a checked version name and the store's own file names, under the store's prefix. Credentials come from an
OpenShift AI data connection's keys.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Callable, Iterator

from components.credentials import trusted_cas
from components.model.contract import schema_for
from components.store.filesystem import (
    BACKUP_SUFFIX,
    INDEX_FILENAME,
    MODEL_FILENAME,
    QUARANTINE_DIR,
    RECORD_FILENAME,
    VERSION_PATTERN,
    StoredVersion,
    StoreError,
    check_index_change,
    checked_bytes,
    empty_index,
    listed_sha256,
    parse_index,
    parse_json,
    record_duplicate,
    reusable_version,
    saved_version_entry,
    utc_now,
    version_number,
)

DATA_CONNECTION_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_S3_ENDPOINT", "AWS_DEFAULT_REGION", "AWS_S3_BUCKET")
DEFAULT_SECRET = "model-storage-config"
INDEX_RETRIES = 20
CONDITION_FAILED = ("PreconditionFailed", "412", "ConditionalRequestConflict")  # the codes of a conditional write whose condition did not hold


def s3_client_from_environment(secret_name: str = DEFAULT_SECRET, ca_bundle: str = "", verify: bool = True):
    """Return (boto3 S3 client, bucket) from the data-connection keys in the environment, naming any missing key.

    As the OpenShift AI dashboard does with its connections, an endpoint without a scheme is https and an empty region is
    us-east-1; AWS's global endpoint becomes the region's. Without a CA bundle, an in-cluster ``*.svc`` endpoint (OpenShift Data
    Foundation) is trusted through the service CA.
    """
    import boto3
    from botocore.config import Config

    missing = [key for key in DATA_CONNECTION_KEYS if key != "AWS_DEFAULT_REGION" and not os.environ.get(key, "").strip()]
    if missing:
        raise StoreError(
            f"{', '.join(missing)} not set: the S3 store reads the data connection secret {secret_name!r}; add the key(s) to that "
            "secret (OpenShift AI: Data connections) and pass its name as s3_secret"
        )
    region = os.environ.get("AWS_DEFAULT_REGION", "").strip() or "us-east-1"
    endpoint = os.environ["AWS_S3_ENDPOINT"].strip()
    endpoint = endpoint if "://" in endpoint else f"https://{endpoint}"
    # Path-style requests to AWS's global endpoint for a bucket in another region get 301 PermanentRedirect: use the region's.
    endpoint = endpoint.replace("://s3.amazonaws.com", f"://s3.{region}.amazonaws.com") if region != "us-east-1" else endpoint
    verify_setting: bool | str = trusted_cas(endpoint, ca_bundle or os.environ.get("AWS_CA_BUNDLE", "")) if verify else False
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        verify=verify_setting,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"}),
    )
    return client, os.environ["AWS_S3_BUCKET"]


def _code(error) -> str:
    """Return the S3 error code of a botocore ClientError."""
    return error.response.get("Error", {}).get("Code", "")


class S3Store:
    """Immutable versions and an index in one bucket under one prefix."""

    def __init__(self, client, bucket: str, prefix: str = "models") -> None:
        """Use ``client`` (a boto3 S3 client) on ``bucket``, with keys under ``prefix`` (no '.' or '..' segment)."""
        self.client, self.bucket, self.prefix = client, bucket, prefix.strip("/")
        if self.prefix and any(segment in ("", ".", "..") for segment in self.prefix.split("/")):
            raise StoreError(f"s3_prefix {prefix!r} has an empty, '.' or '..' segment; name a plain prefix such as 'models'")
        self._conditions_enforced = False  # checked once, before the first conditional write

    @property
    def location(self) -> str:
        """Return ``s3://<bucket>/<prefix>``."""
        return f"s3://{self.bucket}/{self.prefix}"

    def _key(self, model_name: str, *parts: str) -> str:
        """Return the key of ``parts`` under a known model's directory in the prefix."""
        schema_for(model_name)
        return "/".join(part for part in (self.prefix, model_name, *parts) if part)

    def _version_key(self, model_name: str, version: str, *parts: str) -> str:
        """Return the key of ``parts`` in a version's directory; a name that is not v<N> is a StoreError."""
        version_number(version)
        return self._key(model_name, version, *parts)

    def storage_uri(self, model_name: str, version: str) -> str:
        """Return ``s3://<bucket>/<prefix>/<model>/<version>/``: KServe downloads every key under it as a prefix, and without the
        slash ``v1`` would take ``v10``, ``v11`` ... along."""
        return f"s3://{self.bucket}/{self._version_key(model_name, version)}/"

    def _put(self, key: str, body: bytes, **conditions) -> dict:
        if conditions and not self._conditions_enforced:
            self._check_conditional_writes()
        checksum = base64.b64encode(hashlib.sha256(body).digest()).decode()
        return self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ChecksumSHA256=checksum, **conditions)

    def _check_conditional_writes(self) -> None:
        """Raise StoreError, before anything is written, when the backend ignores If-None-Match or If-Match on PUT.

        Versions are claimed and the index is updated with those headers; a backend that drops them (MinIO before 2024,
        NooBaa namespace buckets before 2026) lets two saves at once overwrite each other's version and index entry.
        """
        from botocore.exceptions import ClientError

        key = "/".join(part for part in (self.prefix, f".conditional-write-check-{uuid.uuid4().hex}") if part)
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=b"", IfNoneMatch="*")
        except ClientError as error:
            raise StoreError(f"cannot write s3://{self.bucket}/{key} with If-None-Match: {_code(error)}; nothing was saved: check the "
                             "bucket, the credentials and that the backend takes conditional writes") from error
        ignored = []
        try:
            for header, conditions in (("If-None-Match: *", {"IfNoneMatch": "*"}), ("If-Match", {"IfMatch": '"0"'})):
                try:
                    self.client.put_object(Bucket=self.bucket, Key=key, Body=b"", **conditions)
                    ignored.append(header)
                except ClientError as error:
                    if _code(error) not in CONDITION_FAILED:
                        raise StoreError(f"cannot check s3://{self.bucket}/{key}: {_code(error)}") from error
        finally:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        if ignored:
            raise StoreError(f"the S3 endpoint of s3://{self.bucket} ignores {' and '.join(ignored)} on PUT, so two saves at once could overwrite "
                             "each other's version and index entry; nothing was saved: use a backend that enforces conditional writes "
                             "(AWS S3, MinIO since 2024, Ceph RGW, OpenShift Data Foundation's database-backed buckets) or model_store=pvc")
        self._conditions_enforced = True

    def _get(self, key: str) -> tuple[bytes, str] | None:
        from botocore.exceptions import ClientError

        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _code(error) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise StoreError(f"cannot read s3://{self.bucket}/{key}: {_code(error)}; check the bucket and the credentials") from error
        return answer["Body"].read(), answer["ETag"]

    def _versions_with(self, model_name: str, filename: str) -> list[str]:
        """Return the versions whose directory, directly under the model's, has ``filename``, oldest first."""
        paginator = self.client.get_paginator("list_objects_v2")
        directory = self._key(model_name) + "/"
        versions = set()
        for page in paginator.paginate(Bucket=self.bucket, Prefix=directory):
            for item in page.get("Contents", []):
                parts = item["Key"].removeprefix(directory).split("/")
                if len(parts) == 2 and parts[1] == filename and VERSION_PATTERN.match(parts[0]):
                    versions.add(parts[0])
        return sorted(versions, key=version_number)

    def stored_versions(self, model_name: str) -> list[str]:
        """Return the complete versions (those with a record), oldest first."""
        return self._versions_with(model_name, RECORD_FILENAME)

    def save_version(self, model_name: str, model_file: Path, record: dict, *, reuse_identical: bool = False) -> StoredVersion:
        """Claim the next free v<N> with a conditional create, upload with checksums, write the record, then index.

        With ``reuse_identical``, bytes the index already lists are not stored again: the existing version is returned
        and the history records the duplicate.
        """
        from botocore.exceptions import ClientError

        body = Path(model_file).read_bytes()
        checksum = hashlib.sha256(body).hexdigest()
        existing = reusable_version(self, model_name, self.read_index(model_name), checksum) if reuse_identical else None
        if existing:
            self._update_index(model_name, lambda index: record_duplicate(index, existing, record.get("run_name", "")))
            uri = self.storage_uri(model_name, existing)
            return StoredVersion(model_name, existing, checksum, uri, uri, already_stored=True)
        # Every N whose model.pkl exists is taken, complete or not: a claimed number is never reused.
        claimed = self._versions_with(model_name, MODEL_FILENAME)
        number = version_number(claimed[-1]) + 1 if claimed else 1
        while True:
            version = f"v{number}"
            try:
                self._put(self._version_key(model_name, version, MODEL_FILENAME), body, IfNoneMatch="*")
                break
            except ClientError as error:
                if _code(error) in CONDITION_FAILED:
                    number += 1
                    continue
                raise StoreError(f"cannot upload to s3://{self.bucket}/{self._version_key(model_name, version)}: {_code(error)}") from error
        head = self.client.head_object(Bucket=self.bucket, Key=self._version_key(model_name, version, MODEL_FILENAME), ChecksumMode="ENABLED")
        stored_checksum = head.get("ChecksumSHA256")
        if head["ContentLength"] != len(body) or (stored_checksum and base64.b64decode(stored_checksum).hex() != checksum):
            raise StoreError(f"{model_name} {version}: the uploaded model.pkl does not match what was sent; save again")
        full_record = {**record, "sha256": checksum, "saved_at": utc_now(), "version": version}
        self._put(self._version_key(model_name, version, RECORD_FILENAME), json.dumps(full_record, indent=2, sort_keys=True).encode(), IfNoneMatch="*")
        try:
            self._update_index(model_name, saved_version_entry(version, full_record), saved_version=version)
        except Exception:
            # Without its record the claimed number stays taken but no version becomes visible.
            self.client.delete_object(Bucket=self.bucket, Key=self._version_key(model_name, version, RECORD_FILENAME))
            raise
        return StoredVersion(model_name, version, checksum, self.storage_uri(model_name, version), self.storage_uri(model_name, version))

    def version_record(self, model_name: str, version: str) -> dict:
        """Return a version's immutable record."""
        key = self._version_key(model_name, version, RECORD_FILENAME)
        found = self._get(key)
        if found is None:
            raise StoreError(f"{model_name} {version} does not exist in s3://{self.bucket}/{self._key(model_name)}")
        return parse_json(found[0], f"s3://{self.bucket}/{key}", model_name)

    def raw_model_bytes(self, model_name: str, version: str) -> bytes:
        """Return a version's model.pkl unchecked (``model_bytes`` checks it)."""
        found = self._get(self._version_key(model_name, version, MODEL_FILENAME))
        if found is None:
            raise StoreError(f"{model_name} {version}: model.pkl is missing from s3://{self.bucket}/{self._version_key(model_name, version)}")
        return found[0]

    def model_bytes(self, model_name: str, version: str) -> bytes:
        """Return a version's model.pkl after checking it against the index's sha256 (and the record's)."""
        index_sha256 = listed_sha256(self.read_index(model_name), model_name, version)
        record = self.version_record(model_name, version)
        return checked_bytes(self.raw_model_bytes(model_name, version), model_name, version, index_sha256, record.get("sha256"))

    def read_index(self, model_name: str) -> dict:
        """Return the model's index (an empty one when nothing is stored); a damaged or wrong-shaped one is a StoreError."""
        key = self._key(model_name, INDEX_FILENAME)
        found = self._get(key)
        return parse_index(found[0], f"s3://{self.bucket}/{key}", model_name) if found else empty_index(model_name)

    def last_good_index(self, model_name: str) -> dict | None:
        """Return the copy of the index written beside it at its last update, if it is readable and well formed."""
        key = self._key(model_name, INDEX_FILENAME + BACKUP_SUFFIX)
        found = self._get(key)
        try:
            return parse_index(found[0], key, model_name) if found else None
        except StoreError:
            return None

    @contextlib.contextmanager
    def index_lock(self, model_name: str) -> Iterator[None]:
        """Lock nothing: S3 has no locks (index updates are conditional writes), so run ``store repair`` while no run saves."""
        yield

    def write_index(self, model_name: str, index: dict) -> None:
        """Replace the index and its last good copy unconditionally (``store repair``)."""
        body = json.dumps(index, indent=2, sort_keys=True).encode()
        self._put(self._key(model_name, INDEX_FILENAME), body)
        self._put(self._key(model_name, INDEX_FILENAME + BACKUP_SUFFIX), body)

    def quarantine(self, model_name: str, version: str, reason: str = "quarantined") -> str:
        """Copy a version's objects under ``.quarantine/`` and remove them from view; return where they went."""
        source = self._version_key(model_name, version) + "/"
        target = self._key(model_name, QUARANTINE_DIR, f"{version}-{reason}-{uuid.uuid4().hex[:8]}")
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=source):
            for item in page.get("Contents", []):
                name = item["Key"].removeprefix(source)
                self.client.copy_object(Bucket=self.bucket, Key=f"{target}/{name}", CopySource={"Bucket": self.bucket, "Key": item["Key"]})
                self.client.delete_object(Bucket=self.bucket, Key=item["Key"])
        return f"s3://{self.bucket}/{target}"

    def update_index(self, model_name: str, change: Callable[[dict], None]) -> dict:
        """Read the index with its ETag, apply ``change``, write it only if unchanged since (412: read again); no version may be added."""
        return self._update_index(model_name, change)

    def _update_index(self, model_name: str, change: Callable[[dict], None], saved_version: str | None = None) -> dict:
        """Apply ``change`` to the index with a conditional write, redone on 412; only a save passes ``saved_version``."""
        from botocore.exceptions import ClientError

        key = self._key(model_name, INDEX_FILENAME)
        for _ in range(INDEX_RETRIES):
            found = self._get(key)
            index, condition = (parse_index(found[0], f"s3://{self.bucket}/{key}", model_name), {"IfMatch": found[1]}) if found \
                else (empty_index(model_name), {"IfNoneMatch": "*"})
            listed_before = set(index["versions"])
            change(index)
            check_index_change(model_name, listed_before, index, saved_version)
            body = json.dumps(index, indent=2, sort_keys=True).encode()
            try:
                self._put(key, body, **condition)
                self._put(self._key(model_name, INDEX_FILENAME + BACKUP_SUFFIX), body)
                return index
            except ClientError as error:
                if _code(error) in CONDITION_FAILED:
                    continue
                raise StoreError(f"cannot write the index s3://{self.bucket}/{key}: {_code(error)}") from error
        raise StoreError(f"the index s3://{self.bucket}/{key} kept changing ({INDEX_RETRIES} conflicts); try again")
