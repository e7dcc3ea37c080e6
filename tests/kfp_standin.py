"""A stand-in for the KFP v2beta1 REST API (as Data Science Pipelines serves it) on 127.0.0.1.

It keeps pipelines, versions (with the uploaded spec and file), experiments, runs and recurring runs in memory, answers
with the API's JSON shapes so that the real ``kfp.Client`` parses them, and is as strict as the API: a bearer
token when one is configured (401), an upload needs a file (400) and a new name (409), versions of an unknown
pipeline are 404, ``sort_by`` is honoured, and a run or recurring run needs a pipeline version reference that
exists (400 without one, 404 for an unknown one) and a known experiment. Every request (method, path, query,
headers, body) is recorded so that tests can assert exactly what the client sent.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import urllib.parse
import uuid
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import ThreadingHTTPServer

import yaml

from tests.http_json import JsonHandler


_TICKS = itertools.count()


def _now() -> str:
    """Return an RFC 3339 creation time, strictly increasing even within one second (so sort_by has an order)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{next(_TICKS) % 1_000_000:06d}Z"


def _error(code: int, message: str) -> tuple[int, dict]:
    """Return the API's error body for an HTTP status."""
    grpc = {400: 3, 404: 5, 409: 6}[code]
    return code, {"error": message, "code": grpc, "message": message}


class KfpStandIn:
    """The API's state and the recorded requests."""

    def __init__(self, token: str | None = "kfp-test-token", run_states: tuple[str, ...] = ("PENDING", "RUNNING", "SUCCEEDED")) -> None:
        self.token = token
        self.run_states = run_states
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, list[dict]] = {}
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.run_polls: dict[str, int] = {}
        self.recurring: dict[str, dict] = {}
        self.packages: dict[str, bytes] = {}  # each stored version's uploaded file, by pipeline_version_id
        self.requests: list[dict] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "KfpStandIn":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()

    def sent(self, method: str, path_prefix: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and r["path"].startswith(path_prefix)]

    def _handler(self):
        standin = self

        class Handler(JsonHandler):

            def _dispatch(self, method: str) -> None:
                parsed = urllib.parse.urlparse(self.path)
                query = {k: v[0] for k, v in urllib.parse.parse_qs(parsed.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                record = {"method": method, "path": parsed.path, "query": query, "headers": {k.lower(): v for k, v in self.headers.items()}, "raw": raw}
                content_type = self.headers.get("Content-Type", "")
                if content_type.startswith("multipart/form-data"):
                    message = BytesParser(policy=email_policy).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
                    record["files"] = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
                                       for part in message.iter_parts() if part.get_filename()}
                elif raw:
                    record["json"] = json.loads(raw)
                standin.requests.append(record)
                if standin.token and self.headers.get("Authorization") != f"Bearer {standin.token}":
                    return self._send(401, {"error": "Unauthorized", "code": 16, "message": "Unauthorized: invalid token"})
                code, body = standin.handle(method, parsed.path, query, record)
                self._send(code, body)




        return Handler

    @staticmethod
    def _sorted(items: list[dict], query: dict) -> list[dict]:
        """Return ``items`` in the order ``sort_by`` ("field" or "field desc") asks for, else as stored."""
        if not query.get("sort_by"):
            return items
        field, _, direction = query["sort_by"].partition(" ")
        return sorted(items, key=lambda item: item.get(field, ""), reverse=direction.strip().lower() == "desc")

    def _version_reference_error(self, body: dict) -> tuple[int, dict] | None:
        """Return the API's error for a run body whose pipeline version reference or experiment is missing or unknown."""
        reference = body.get("pipeline_version_reference") or {}
        pipeline_id, version_id = reference.get("pipeline_id"), reference.get("pipeline_version_id")
        if not pipeline_id or not version_id:
            return _error(400, "Invalid input error: a run needs pipeline_version_reference with pipeline_id and pipeline_version_id")
        if version_id not in {version["pipeline_version_id"] for version in self.versions.get(pipeline_id, [])}:
            return _error(404, f"pipeline version {version_id} of pipeline {pipeline_id} not found")
        if body.get("experiment_id") and body["experiment_id"] not in self.experiments:
            return _error(404, f"experiment {body['experiment_id']} not found")
        return None

    @staticmethod
    def _filtered(items: list[dict], query: dict) -> list[dict]:
        if "filter" not in query:
            return items
        predicates = json.loads(query["filter"]).get("predicates", [])
        for predicate in predicates:
            key, value = predicate["key"], predicate.get("stringValue", predicate.get("string_value"))
            items = [item for item in items if item.get(key) == value]
        return items

    @staticmethod
    def _version(pipeline_id: str, name: str, package: bytes) -> dict:
        """Return a new pipeline version holding the uploaded package's pipeline spec."""
        spec = next(yaml.load_all(package, Loader=yaml.CSafeLoader))
        return {"pipeline_id": pipeline_id, "pipeline_version_id": str(uuid.uuid4()), "display_name": name, "created_at": _now(),
                "pipeline_spec": spec}

    def handle(self, method: str, path: str, query: dict, record: dict) -> tuple[int, dict]:
        parts = path.removeprefix("/apis/v2beta1/").split("/")
        if path == "/apis/v2beta1/healthz":
            return 200, {"multi_user": False, "commit_sha": "standin", "tag_name": "2.5.0"}
        if parts[0] == "pipelines":
            if method == "GET" and len(parts) == 1:
                items = self._filtered(list(self.pipelines.values()), query)
                return 200, {"pipelines": items, "total_size": len(items)}
            uploaded = record.get("files", {}).get("uploadfile")
            if method == "POST" and parts[1:] in (["upload"], ["upload_version"]) and not uploaded:
                return _error(400, "Invalid input error: no uploadfile in the request")
            if method == "POST" and parts[1:] == ["upload"]:
                name = query.get("name") or query.get("display_name")
                if any(pipeline["display_name"] == name for pipeline in self.pipelines.values()):
                    return _error(409, f"Already exist error: a pipeline named {name} already exists")
                pipeline = {"pipeline_id": str(uuid.uuid4()), "display_name": name, "description": query.get("description", ""), "created_at": _now()}
                self.pipelines[pipeline["pipeline_id"]] = pipeline
                self.versions[pipeline["pipeline_id"]] = [self._version(pipeline["pipeline_id"], name, uploaded)]
                self.packages[self.versions[pipeline["pipeline_id"]][0]["pipeline_version_id"]] = uploaded
                return 200, pipeline
            if method == "POST" and parts[1:] == ["upload_version"]:
                pipeline_id = query.get("pipelineid", "")
                if pipeline_id not in self.pipelines:
                    return _error(404, f"pipeline {pipeline_id} not found")
                name = query.get("name") or query.get("display_name")
                if any(v["display_name"] == name for v in self.versions[pipeline_id]):
                    return _error(409, f"Already exist error: version {name} already exists")
                version = self._version(pipeline_id, name, uploaded)
                self.versions[pipeline_id].append(version)
                self.packages[version["pipeline_version_id"]] = uploaded
                return 200, version
            if method == "GET" and len(parts) == 2 and parts[1] in self.pipelines:
                return 200, self.pipelines[parts[1]]
            if method == "GET" and len(parts) >= 3 and parts[2] == "versions":
                if parts[1] not in self.pipelines:
                    return _error(404, f"pipeline {parts[1]} not found")
                versions = self.versions[parts[1]]
                if len(parts) == 4:
                    found = [version for version in versions if version["pipeline_version_id"] == parts[3]]
                    return (200, found[0]) if found else _error(404, f"pipeline version {parts[3]} not found")
                versions = self._sorted(versions, query)
                return 200, {"pipeline_versions": versions, "total_size": len(versions)}
        if parts[0] == "experiments":
            if method == "GET":
                items = self._filtered(list(self.experiments.values()), query)
                return 200, {"experiments": items, "total_size": len(items)}
            if method == "POST":
                experiment = {"experiment_id": str(uuid.uuid4()), "display_name": record["json"]["display_name"], "created_at": _now(), "storage_state": "AVAILABLE"}
                self.experiments[experiment["experiment_id"]] = experiment
                return 200, experiment
        if parts[0] == "runs":
            if method == "POST":
                if refused := self._version_reference_error(record["json"]):
                    return refused
                run = {**record["json"], "run_id": str(uuid.uuid4()), "created_at": _now(), "state": self.run_states[0]}
                self.runs[run["run_id"]] = run
                return 200, run
            if method == "GET" and len(parts) == 1:
                runs = self._sorted(self._filtered(list(self.runs.values()), query), query)[: int(query.get("page_size") or 10)]
                return 200, {"runs": runs, "total_size": len(runs)}
            if method == "GET" and len(parts) == 2 and parts[1] in self.runs:
                polls = self.run_polls[parts[1]] = self.run_polls.get(parts[1], 0) + 1
                run = self.runs[parts[1]]
                run["state"] = self.run_states[min(polls, len(self.run_states) - 1)]
                return 200, run
        if parts[0] == "recurringruns":
            if method == "POST" and len(parts) == 1:
                if refused := self._version_reference_error(record["json"]):
                    return refused
                recurring = {**record["json"], "recurring_run_id": str(uuid.uuid4()), "created_at": _now(),
                             "status": "ENABLED" if record["json"].get("mode") == "ENABLE" else "DISABLED"}
                self.recurring[recurring["recurring_run_id"]] = recurring
                return 200, recurring
            if method == "GET" and len(parts) == 1:
                items = list(self.recurring.values())
                return 200, {"recurringRuns": items, "recurring_runs": items, "total_size": len(items)}
            target = parts[1].split(":")[0] if len(parts) > 1 else ""
            if target in self.recurring:
                if method == "DELETE":
                    del self.recurring[target]
                    return 200, {}
                if parts[1].endswith(":enable"):
                    self.recurring[target].update(mode="ENABLE", status="ENABLED")
                    return 200, {}
                if parts[1].endswith(":disable"):
                    self.recurring[target].update(mode="DISABLE", status="DISABLED")
                    return 200, {}
        return 404, {"error": f"not found: {method} {path}", "code": 5, "message": f"not found: {method} {path}"}
