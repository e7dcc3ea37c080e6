"""Upload, submit and schedule the pipelines on a Data Science Pipelines (KFP v2) server through ``kfp.Client``.

Connection settings follow what ``oc``/``kubectl`` users expect: ``--host`` or ``KF_PIPELINES_ENDPOINT``, a token
from ``--token``, ``KF_PIPELINES_TOKEN`` or the pod's service-account token (never printed), ``--ca-cert`` and
``--namespace``. Failures that users hit most (unreachable host, 401/403, a pipeline not uploaded yet) get a
message that names the fix.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import urllib.parse
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from components.credentials import ApiAdvice, api_request, token_from_environment, token_may_go_to
from pipelines.platforms import COMPILE_TIME_PARAMETERS

FINAL_STATES = {"SUCCEEDED", "FAILED", "CANCELED", "SKIPPED"}
COMPILED_FOR = r" Compiled for (\S+) \("  # the sentence platforms.describe adds to a profile's description, and its group label


class RemoteError(RuntimeError):
    """A remote operation failed; the message names the cause and the fix."""


KFP_API_ADVICE = ApiAdvice(
    "the KFP API", unreachable="check --host or KF_PIPELINES_ENDPOINT, the route, and that you can reach the cluster",
    tls="pass --ca-cert with the cluster's CA bundle",
    refused="pass a valid token with --token or KF_PIPELINES_TOKEN (oc whoami -t) and check that your user may use the project's pipelines",
)


@dataclass(frozen=True)
class Connection:
    """Where the KFP API is and how to authenticate; the token is never shown."""

    host: str
    token: str | None
    ca_cert: str | None
    namespace: str | None

    def __repr__(self) -> str:
        return f"Connection(host={self.host!r}, token={'***' if self.token else None}, ca_cert={self.ca_cert!r}, namespace={self.namespace!r})"


def resolve_connection(host: str | None, token: str | None, ca_cert: str | None, namespace: str | None) -> Connection:
    """Return the connection from options, then the environment, then the service-account token file."""
    host = host or os.environ.get("KF_PIPELINES_ENDPOINT")
    if not host:
        raise RemoteError(
            "no KFP host: pass --host https://ds-pipeline-dspa-<project>.apps.<cluster> or set KF_PIPELINES_ENDPOINT "
            "(oc get route ds-pipeline-dspa -o jsonpath='{.spec.host}')"
        )
    token = token or token_from_environment("KF_PIPELINES_TOKEN", host)
    if token and not token_may_go_to(host):
        raise RemoteError(f"refusing to send the token over plain {urllib.parse.urlparse(host).scheme or 'http'} to {host}: use the https address "
                          "(the DSP route, or https://ds-pipeline-dspa.<project>.svc:8443 from inside the cluster)")
    return Connection(host.rstrip("/"), token, ca_cert, namespace)


def check_reachable(connection: Connection, timeout_s: float = 10.0) -> None:
    """Ask the API's healthz once and turn the usual failures into clear errors."""
    headers = {"Authorization": f"Bearer {connection.token}"} if connection.token else {}
    answer = api_request("GET", f"{connection.host}/apis/v2beta1/healthz", KFP_API_ADVICE, RemoteError, headers=headers, timeout_s=timeout_s,
                         ca_bundle=connection.ca_cert)
    if answer.status_code >= 400:
        raise RemoteError(f"{connection.host} answered {answer.status_code} on healthz; is it a KFP v2 API endpoint?")


@dataclass(frozen=True)
class ExpectedProfile:
    """The compile profile a run must start: the sentence it adds to the description, its name, the command that uploads it."""

    compiled_for: str  # "" for the default output, which adds none
    name: str
    upload_command: str


def connect(connection: Connection):
    """Return a ``kfp.Client`` for a reachable, authorised API."""
    import kfp

    check_reachable(connection)
    with warnings.catch_warnings():  # kfp.Client warns on every construction that it needs KFP >= 2.0.0-beta.2, which DSP 2.x is
        warnings.filterwarnings("ignore", message="This client only works with Kubeflow Pipeline v2", category=FutureWarning)
        return kfp.Client(host=connection.host, existing_token=connection.token, ssl_ca_cert=connection.ca_cert,
                          namespace=connection.namespace)


def package_pipeline_name(package: Path) -> str:
    """Return the pipeline name a compiled package declares (its ``pipelineInfo.name``), or explain why it has none."""
    if not package.is_file():
        raise RemoteError(f"{package} does not exist; pass a YAML file from compiled/ or run `model-pipelines compile` first")
    try:
        document = next(yaml.load_all(package.read_text(), Loader=yaml.CSafeLoader), None)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise RemoteError(f"{package} is not YAML ({error.__class__.__name__}); pass a compiled pipeline from compiled/") from None
    name = document.get("pipelineInfo", {}).get("name") if isinstance(document, dict) else None
    if not isinstance(name, str):
        raise RemoteError(f"{package} has no pipelineInfo.name, so it is not a compiled pipeline; pass a YAML file from compiled/")
    return name


def package_digest(package: Path) -> str:
    """Return a short digest that changes exactly when the compiled package changes."""
    return hashlib.sha256(package.read_bytes()).hexdigest()[:12]


def upload(client, package: Path, pipeline_name: str) -> str:
    """Upload the package as a new pipeline, or as a new version of the pipeline with that name; return what happened.

    Idempotent: a package already uploaded (as the first version, whose digest is in the pipeline's description,
    or as a version named ``<pipeline>-<digest>``) is not uploaded again.
    """
    if not package.is_file():
        raise RemoteError(f"{package} does not exist; run `model-pipelines compile` first")
    digest = package_digest(package)
    pipeline_id = client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(str(package), pipeline_name=pipeline_name, description=f"model-pipelines package {digest}")
        return f"uploaded pipeline {pipeline_name} ({pipeline.pipeline_id})"
    version_name = f"{pipeline_name}-{digest}"
    first_version_digest = (client.get_pipeline(pipeline_id).description or "").removeprefix("model-pipelines package ")
    if digest == first_version_digest or version_name in {version.display_name for version in _versions(client, pipeline_id)}:
        return f"{pipeline_name} already has this package ({digest}): nothing to upload"
    version = client.upload_pipeline_version(str(package), pipeline_version_name=version_name, pipeline_id=pipeline_id)
    return f"uploaded {pipeline_name} version {version_name} ({version.pipeline_version_id})"


def _versions(client, pipeline_id: str) -> list:
    """Return every version of a pipeline, newest first."""
    versions, token = [], ""
    while True:
        page = client.list_pipeline_versions(pipeline_id, page_token=token, page_size=100, sort_by="created_at desc")
        versions += page.pipeline_versions or []
        token = page.next_page_token
        if not token:
            return versions


def latest_version(client, pipeline_name: str, host: str) -> tuple[str, str]:
    """Return (pipeline id, newest version id) of an uploaded pipeline, or explain how to upload it."""
    pipeline_id = client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        raise RemoteError(f"pipeline {pipeline_name!r} is not on {host}; run `model-pipelines upload` for it first")
    versions = _versions(client, pipeline_id)
    if not versions:
        raise RemoteError(f"pipeline {pipeline_name!r} has no versions on {host}; upload it again")
    return pipeline_id, versions[0].pipeline_version_id


def uploaded_spec(client, pipeline_id: str, version_id: str) -> dict:
    """Return the pipeline spec of an uploaded version."""
    spec = client.get_pipeline_version(pipeline_id, version_id).pipeline_spec or {}
    return spec.get("pipeline_spec", spec)  # a version uploaded with its platform spec nests the pipeline spec


def check_uploaded_profile(spec: dict, expected: ExpectedProfile, version_id: str, pipeline_name: str) -> None:
    """Raise RemoteError, naming the upload that fixes it, unless the uploaded version was compiled for ``expected``."""
    description = spec.get("pipelineInfo", {}).get("description", "")
    found = re.search(COMPILED_FOR, description)
    if (expected.compiled_for in description) if expected.compiled_for else found is None:
        return
    uploaded = f"{found.group(1)} with other store settings" if found and found.group(0) in expected.compiled_for else (
        found.group(1) if found else "the default profile (kfp-2.15-2.16, --store pvc)")
    raise RemoteError(f"the newest uploaded {pipeline_name} (version {version_id}) was compiled for {uploaded}, not for {expected.name}: "
                      f"run `{expected.upload_command}`, then start it again")


def check_uploaded_inputs(spec: dict, version_id: str, arguments: dict, pipeline_name: str) -> None:
    """Raise RemoteError unless the uploaded version's spec declares every parameter in ``arguments`` (and every key set in a group)."""
    parameters = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    unknown = sorted(set(arguments) - set(parameters))
    for name, value in arguments.items():
        default = parameters.get(name, {}).get("defaultValue")
        if isinstance(value, dict) and isinstance(default, dict):
            unknown += sorted(f"{name}.{key}" for key in set(value) - set(default))
    profile = re.search(COMPILED_FOR, spec.get("pipelineInfo", {}).get("description", ""))
    if unknown and profile and set(unknown) <= set(COMPILE_TIME_PARAMETERS):
        raise RemoteError(f"the uploaded {pipeline_name} (newest version {version_id}) was compiled for {profile.group(1)}, which fixes "
                          f"{', '.join(unknown)} at compile time: drop --param {unknown[0]}, or upload it compiled with the store you "
                          "want (`model-pipelines upload <pipeline> --platform <your release> --store pvc|s3 [--s3-secret NAME]`)")
    if unknown:
        raise RemoteError(f"the uploaded {pipeline_name} (newest version {version_id}) has no parameter(s) {', '.join(unknown)}; "
                          f"it is older than this CLI: run `model-pipelines upload` to add the current version")


def _checked_latest_version(client, pipeline_name: str, host: str, arguments: dict, expected: ExpectedProfile | None) -> tuple[str, str]:
    """Return (pipeline id, newest version id) once that version takes ``arguments`` and, if given, is ``expected``'s compile."""
    pipeline_id, version_id = latest_version(client, pipeline_name, host)
    spec = uploaded_spec(client, pipeline_id, version_id)
    if expected is not None:
        check_uploaded_profile(spec, expected, version_id, pipeline_name)
    check_uploaded_inputs(spec, version_id, arguments, pipeline_name)
    return pipeline_id, version_id


def submit(client, pipeline_name: str, arguments: dict, experiment: str, host: str, run_name: str | None = None,
           expected: ExpectedProfile | None = None):
    """Start a run of the pipeline's newest version (checked against ``expected`` if given) in ``experiment`` and return it."""
    pipeline_id, version_id = _checked_latest_version(client, pipeline_name, host, arguments, expected)
    experiment_id = client.create_experiment(experiment).experiment_id
    name = run_name or f"{pipeline_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return client.run_pipeline(experiment_id=experiment_id, job_name=name, pipeline_id=pipeline_id, version_id=version_id, params=arguments)


def wait(client, run_id: str, timeout_s: float, report: Callable[[str], None], poll_s: float = 5.0) -> str:
    """Poll the run until it ends (reporting each state change) and return its final state."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        state = str(client.get_run(run_id).state)
        if state != last:
            report(state)
            last = state
        if state in FINAL_STATES:
            return state
        if time.monotonic() >= deadline:
            raise RemoteError(f"run {run_id} is still {state} after {timeout_s:g} s; it goes on, check it in the dashboard")
        time.sleep(poll_s)


CRON_FIELDS = 6


def check_cron(cron: str) -> str:
    """Return a 6-field cron (seconds first) or explain how to write one."""
    fields = cron.split()
    if len(fields) == 5:
        raise RemoteError(f"KFP cron has 6 fields, seconds first; {cron!r} has 5: did you mean '0 {cron}'?")
    if len(fields) != CRON_FIELDS or not all(re.fullmatch(r"[0-9*?/,\-A-Za-z#LW]+", field) for field in fields):
        raise RemoteError(f"{cron!r} is not a 6-field cron (seconds minutes hours day-of-month month day-of-week), e.g. '0 0 2 * * 0'")
    return cron


def create_schedule(client, pipeline_name: str, name: str, cron: str, arguments: dict, experiment: str, host: str,
                    max_concurrency: int = 1, expected: ExpectedProfile | None = None):
    """Create an enabled recurring run of the newest version (checked against ``expected`` if given) without catch-up; return it."""
    pipeline_id, version_id = _checked_latest_version(client, pipeline_name, host, arguments, expected)
    experiment_id = client.create_experiment(experiment).experiment_id
    return client.create_recurring_run(experiment_id=experiment_id, job_name=name, cron_expression=check_cron(cron),
                                       max_concurrency=max_concurrency, no_catchup=True, params=arguments,
                                       pipeline_id=pipeline_id, version_id=version_id, enabled=True)


def list_schedules(client) -> list:
    """Return every recurring run."""
    schedules, token = [], ""
    while True:
        page = client.list_recurring_runs(page_token=token, page_size=100)
        schedules += page.recurring_runs or []
        token = page.next_page_token
        if not token:
            return schedules


def find_schedule(client, name_or_id: str):
    """Return the recurring run with that display name or id, or explain what exists."""
    schedules = list_schedules(client)
    for schedule in schedules:
        if name_or_id in (schedule.display_name, schedule.recurring_run_id):
            return schedule
    names = ", ".join(schedule.display_name for schedule in schedules) or "none"
    raise RemoteError(f"no schedule named {name_or_id!r}; existing: {names}")
