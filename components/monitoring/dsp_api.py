"""The KFP v2beta1 REST calls the drift monitor makes from inside the cluster: which runs are active, start a run.

Plain ``requests``, not ``kfp.Client``: a pipeline step runs with ``_KFP_RUNTIME=true``, where importing the
client fails on a circular import. The token is the pod's service-account token (or ``KF_PIPELINES_TOKEN``); it is
sent only over https, or over plain http to this machine, never followed through a redirect and never printed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from components.credentials import ApiAdvice, api_request, json_object, token_from_environment, token_may_go_to

ACTIVE_STATES = {"PENDING", "RUNNING", "PAUSED", "CANCELING"}
NEWEST_RUNS = 100  # how many of the newest runs the active-run check looks at


class DspApiError(RuntimeError):
    """A call to the DSP API failed; the message names the cause and the fix."""


DSP_API_ADVICE = ApiAdvice(
    "the DSP API", unreachable="check dsp_api_url",
    tls="set dsp_ca_bundle to the service CA bundle (/var/run/secrets/kubernetes.io/serviceaccount/service-ca.crt)",
    refused="give the service account the project's pipeline permissions (the ds-pipeline-user-access role)",
)


def _display_name_filter(name: str) -> str:
    """Return the API's filter for objects whose display name is ``name``."""
    return json.dumps({"predicates": [{"key": "display_name", "operation": "EQUALS", "string_value": name}]})


@dataclass(frozen=True)
class DspApi:
    """The DSP (KFP) API at ``url`` with the pod's credentials."""

    url: str
    ca_bundle: str = ""
    timeout_s: float = 30.0

    def _headers(self) -> dict:
        """Return the Authorization header, refusing a token over plain http to another machine."""
        token = token_from_environment("KF_PIPELINES_TOKEN", self.url)
        if not token:
            return {}
        if not token_may_go_to(self.url):
            raise DspApiError(f"refusing to send the token over plain http to {self.url}: use the https address, e.g. "
                              "https://ds-pipeline-dspa.<project>.svc:8443")
        return {"Authorization": f"Bearer {token}"}

    def _call(self, method: str, path: str, params: dict | None = None, body: dict | None = None) -> dict:
        """Return the JSON answer of one API call, or raise DspApiError naming the problem."""
        answer = api_request(method, f"{self.url.rstrip('/')}/apis/v2beta1/{path}", DSP_API_ADVICE, DspApiError, params=params, body=body,
                             headers=self._headers(), timeout_s=self.timeout_s, ca_bundle=self.ca_bundle)
        if answer.status_code >= 400:
            raise DspApiError(f"the DSP API at {self.url} answered {answer.status_code} to {method} {path}: {answer.text[:200]}")
        found = json_object(answer)
        if found is None:
            raise DspApiError(f"the DSP API at {self.url} answered {method} {path} without a JSON object: is dsp_api_url the API's address "
                              "(https://ds-pipeline-dspa.<project>.svc:8443)?")
        return found

    def pipeline_id(self, pipeline_name: str) -> str | None:
        """Return the id of the uploaded pipeline named ``pipeline_name``, or None."""
        found = self._call("GET", "pipelines", {"filter": _display_name_filter(pipeline_name)}).get("pipelines") or []
        return found[0]["pipeline_id"] if found else None

    def active_runs(self, pipeline_name: str) -> list[str]:
        """Return 'run <id> (<state>)' for each run of the pipeline, any version, among the newest runs that has not ended."""
        pipeline_id = self.pipeline_id(pipeline_name)
        if pipeline_id is None:
            return []
        runs = self._call("GET", "runs", {"page_size": NEWEST_RUNS, "sort_by": "created_at desc"}).get("runs") or []
        return [f"run {run['run_id']} ({run['state']})" for run in runs
                if (run.get("pipeline_version_reference") or {}).get("pipeline_id") == pipeline_id and run.get("state") in ACTIVE_STATES]

    def start_run(self, pipeline_name: str, parameters: dict, experiment: str, display_name: str) -> str:
        """Start a run of the pipeline's newest version in ``experiment`` (created if missing); return the run id."""
        pipeline_id = self.pipeline_id(pipeline_name)
        if pipeline_id is None:
            raise DspApiError(f"pipeline {pipeline_name!r} is not uploaded to {self.url}; run `model-pipelines upload` for it first")
        versions = self._call("GET", f"pipelines/{pipeline_id}/versions", {"page_size": 1, "sort_by": "created_at desc"}).get("pipeline_versions") or []
        if not versions:
            raise DspApiError(f"pipeline {pipeline_name!r} has no versions on {self.url}; upload it again")
        experiments = self._call("GET", "experiments", {"filter": _display_name_filter(experiment)}).get("experiments") or []
        experiment_id = experiments[0]["experiment_id"] if experiments else self._call("POST", "experiments", body={"display_name": experiment})["experiment_id"]
        run = self._call("POST", "runs", body={
            "display_name": display_name,
            "experiment_id": experiment_id,
            "pipeline_version_reference": {"pipeline_id": pipeline_id, "pipeline_version_id": versions[0]["pipeline_version_id"]},
            "runtime_config": {"parameters": parameters},
        })
        return run["run_id"]
