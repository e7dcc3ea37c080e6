"""The S3 model store against a real S3 server (SeaweedFS) on 127.0.0.1, which rejects bad checksums and signatures."""

import hashlib
import json
import multiprocessing
import os

import joblib
import pytest
from sklearn.dummy import DummyRegressor

from components.store.s3 import S3Store, s3_client_from_environment
from components.store.filesystem import StoreError, load_model
from tests.conftest import run_cli
from tests.servers import S3_BUCKET, SeaweedS3

MODEL = "predictive-analytics"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def store(s3, request):
    return S3Store(s3.client(), S3_BUCKET, f"test-{request.node.name[:40]}")


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.pkl"
    joblib.dump(DummyRegressor(), path)
    return path


def test_versions_are_immutable_checked_and_indexed(store, model_file):
    first = store.save_version(MODEL, model_file, {"run_name": "r1"})
    second = store.save_version(MODEL, model_file, {"run_name": "r2"})
    assert (first.version, second.version) == ("v1", "v2")
    assert second.storage_uri == f"s3://{S3_BUCKET}/{store.prefix}/{MODEL}/v2/"
    keys = {item["Key"] for item in store.client.list_objects_v2(Bucket=S3_BUCKET, Prefix=store.prefix)["Contents"]}
    assert keys == {f"{store.prefix}/{MODEL}/{name}" for name in ("v1/model.pkl", "v1/version.json", "v2/model.pkl", "v2/version.json", "metadata.json", "metadata.json.last-good")}
    index = store.read_index(MODEL)
    assert sorted(index["versions"]) == ["v1", "v2"] and index["versions"]["v1"]["sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert isinstance(load_model(store, MODEL, "v2"), DummyRegressor)


def test_identical_bytes_saved_with_reuse_identical_claim_no_number(store, model_file, tmp_path):
    first = store.save_version(MODEL, model_file, {"run_name": "r1"}, reuse_identical=True)
    again = store.save_version(MODEL, model_file, {"run_name": "r2"}, reuse_identical=True)
    assert (first.version, first.already_stored, again.version, again.already_stored) == ("v1", False, "v1", True)
    assert again.storage_uri == first.storage_uri
    keys = {item["Key"] for item in store.client.list_objects_v2(Bucket=S3_BUCKET, Prefix=store.prefix)["Contents"]}
    assert not any("/v2/" in key for key in keys), "no number was claimed"
    index = store.read_index(MODEL)
    assert list(index["versions"]) == ["v1"] and index["history"][-1]["event"] == "duplicate"
    assert index["history"][-1]["detail"].startswith("r2: byte-identical to v1 (stored)")
    assert store.version_record(MODEL, "v1")["run_name"] == "r1", "the stored version is untouched"
    other = tmp_path / "other.pkl"
    joblib.dump(DummyRegressor(strategy="median"), other)
    assert store.save_version(MODEL, other, {}, reuse_identical=True).version == "v2"


def _save(prefix: str, environment: dict, path: str, count: int, results) -> None:
    os.environ.update(environment)
    client, bucket = s3_client_from_environment()
    store = S3Store(client, bucket, prefix)
    for number in range(count):
        results.put(store.save_version(MODEL, path, {"run_name": f"{os.getpid()}-{number}"}).version)


def test_concurrent_saves_get_distinct_versions_and_a_complete_index(s3, model_file):
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_save, args=("concurrent", s3.environment(), str(model_file), 3, results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    versions = sorted((results.get(timeout=10) for _ in range(12)), key=lambda v: int(v[1:]))
    assert versions == [f"v{n}" for n in range(1, 13)]
    index = S3Store(s3.client(), S3_BUCKET, "concurrent").read_index(MODEL)
    assert sorted(index["versions"], key=lambda v: int(v[1:])) == versions
    assert len([event for event in index["history"] if event["event"] == "saved"]) == 12


def test_a_corrupted_object_is_refused_on_download(store, model_file):
    store.save_version(MODEL, model_file, {})
    key = f"{store.prefix}/{MODEL}/v1/model.pkl"
    store.client.put_object(Bucket=S3_BUCKET, Key=key, Body=model_file.read_bytes() + b"flipped")
    with pytest.raises(StoreError, match="v1: model.pkl has sha256 .* the file was changed or corrupted"):
        store.model_bytes(MODEL, "v1")


def test_a_claimed_number_is_never_reused_and_half_versions_stay_invisible(store, model_file):
    store.client.put_object(Bucket=S3_BUCKET, Key=f"{store.prefix}/{MODEL}/v1/model.pkl", Body=b"crashed before its record")
    assert store.stored_versions(MODEL) == []
    assert store.save_version(MODEL, model_file, {}).version == "v2"
    assert list(store.read_index(MODEL)["versions"]) == ["v2"]


def test_missing_data_connection_key_names_the_key_and_the_secret(monkeypatch, s3):
    for key, value in s3.environment().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_S3_BUCKET")
    with pytest.raises(StoreError, match="AWS_S3_BUCKET not set: the S3 store reads the data connection secret 'my-connection'"):
        s3_client_from_environment("my-connection")


def test_a_dashboard_connection_without_a_region_or_an_endpoint_scheme_is_read_as_the_dashboard_reads_it(monkeypatch, s3):
    for key, value in s3.environment().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "")  # Region is optional in the dashboard's S3 connection form
    client, _ = s3_client_from_environment()
    assert client.meta.region_name == "us-east-1"
    S3Store(client, S3_BUCKET).read_index(MODEL)  # the local server answers a us-east-1 signature
    monkeypatch.setenv("AWS_S3_ENDPOINT", " s3.openshift-storage.svc ")
    client, _ = s3_client_from_environment()
    assert client.meta.endpoint_url == "https://s3.openshift-storage.svc"
    # Path style on AWS's global endpoint answers 301 for a bucket outside us-east-1: the region's endpoint is used.
    monkeypatch.setenv("AWS_S3_ENDPOINT", "https://s3.amazonaws.com")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    client, _ = s3_client_from_environment()
    assert (client.meta.endpoint_url, client.meta.region_name) == ("https://s3.eu-west-1.amazonaws.com", "eu-west-1")


def test_a_version_uri_ends_in_a_slash_so_kserve_downloads_only_that_version(store, model_file):
    # KServe's storage initializer lists keys with the URI's path as a prefix: models/<model>/v1 would match v10 to v19 too.
    for _ in range(10):
        store.save_version(MODEL, model_file, {})
    uri = store.storage_uri(MODEL, "v1")
    assert uri == f"s3://{S3_BUCKET}/{store.prefix}/{MODEL}/v1/"
    prefix = uri.removeprefix(f"s3://{S3_BUCKET}/")
    listed = store.client.list_objects_v2(Bucket=S3_BUCKET, Prefix=prefix)["Contents"]
    assert {item["Key"].removeprefix(prefix) for item in listed} == {"model.pkl", "version.json"}, [item["Key"] for item in listed]


def test_a_backend_that_ignores_conditional_writes_is_refused_before_anything_is_saved(s3, model_file, request):
    # As MinIO before 2024 or a NooBaa namespace bucket: the conditional headers never reach the server's check.
    client = s3.client()

    def drop_conditions(request, **_):
        for header in ("If-None-Match", "If-Match"):
            if header in request.headers:
                del request.headers[header]

    client.meta.events.register("before-sign.s3.PutObject", drop_conditions)
    careless = S3Store(client, S3_BUCKET, f"test-{request.node.name[:40]}")
    with pytest.raises(StoreError, match=r"ignores If-None-Match: \* and If-Match on PUT, so two saves at once could overwrite .* nothing was saved"):
        careless.save_version(MODEL, model_file, {})
    listed = client.list_objects_v2(Bucket=S3_BUCKET, Prefix=careless.prefix).get("Contents", [])
    assert listed == [], [item["Key"] for item in listed]


def test_wrong_credentials_are_refused_by_the_server(monkeypatch, s3):
    for key, value in {**s3.environment(), "AWS_SECRET_ACCESS_KEY": "wrong"}.items():
        monkeypatch.setenv(key, value)
    client, bucket = s3_client_from_environment()
    with pytest.raises(StoreError, match="cannot read .*SignatureDoesNotMatch"):
        S3Store(client, bucket).read_index(MODEL)


def test_full_local_pipeline_run_with_the_s3_store(s3, tmp_path):
    state = tmp_path / "state"
    try:
        result = run_cli("run", MODEL, "--local", "--state-dir", str(state), "--param", "model_store=s3", "--param", "s3_prefix=pipeline",
                         "--param", "canary_interval_s=0.3", env=s3.environment())
    finally:
        run_cli("serve", "stop", "--state-dir", str(state))
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"s3://{S3_BUCKET}/pipeline/{MODEL}/v1" in result.stdout and f"store:   s3://{S3_BUCKET}/pipeline" in result.stdout
    index = json.loads(s3.client().get_object(Bucket=S3_BUCKET, Key=f"pipeline/{MODEL}/metadata.json")["Body"].read())
    assert index["stable"] == "v1" and index["versions"]["v1"]["status"] == "stable"
    assert not (state / "store" / MODEL).exists(), "nothing went to the filesystem store"


def test_keys_are_built_only_from_version_names_under_the_prefix(store, s3, model_file):
    store.save_version(MODEL, model_file, {})
    for name in ("../v1", "v1/../../other", "latest"):
        for read in (store.model_bytes, store.raw_model_bytes, store.version_record, store.storage_uri):
            with pytest.raises(StoreError, match="is not a version name"):
                read(MODEL, name)
    # A version-named directory nested deeper is not a version of this model.
    store.client.put_object(Bucket=S3_BUCKET, Key=f"{store.prefix}/{MODEL}/nested/v7/version.json", Body=b"{}")
    assert store.stored_versions(MODEL) == ["v1"]
    with pytest.raises(StoreError, match="'..' segment"):
        S3Store(s3.client(), S3_BUCKET, "models/../elsewhere")
