"""The gitops serving target: rollouts become commits to a fleet repository that Argo CD syncs to ACM spoke clusters.

Layout under ``gitops_path`` (kustomize): ``base/<model>/`` holds the InferenceService of the model's first
deployment; ``waves/<wave>/<model>/`` is the model's overlay in a wave, which patches the base with the version,
storageUri and traffic that wave serves. Each model has its own Application per cluster (``manifests/gitops``: labels
``model-pipelines.io/model``, ``/wave`` and ``/cluster``), whose ``spec.source.path`` is that overlay; a rollout reads
only its model's Applications, so another model's state never blocks it.

The documents are the kserve target's own: its rollout strategies talk to ``WaveOverlays``, which answers their
CustomObjectsApi calls from one wave's overlay and turns each write into a commit whose last paragraph holds git
trailers: Model, Version, Step, Wave (the wave it acts on) and Pipeline-Run. An InferenceService read back is Ready when every Application of the wave reports ``Synced`` at a revision that
contains the model's last commit, and ``Healthy``; the Applications are read from the hub with GET (no watch).

Deploy, smoke test and canary analysis act on wave 1. Promotion promotes wave 1, then gives each later wave the same
overlay, one wave at a time. When a rollout is confirmed (a first deployment once every wave is Synced at it and
Healthy, a promotion once the last wave is, a rollback once every wave it changed is), one more commit writes the
model's fleet-settled record ``status/<model>.yaml``, which no Application syncs: the stable version, the revision each
wave was confirmed at and its Applications as read, the run (and a rollback's reason); its trailers are Step: settled
and Fleet-state: settled. A wait that fails writes no record. Rollback is one revert commit of every commit for the
model since its last record, then a wait until every affected wave is Synced at it and Healthy; the revert says why (a
Reason trailer) and ``This reverts commit <sha>.`` for each commit. A revert is made from Git alone: when every cluster of
a wave has left the Placement's decisions, the wave's overlay is read from the model's own commits (their Wave trailer),
reverted like the others and, with no cluster to confirm it on, named in the revert and the record instead of waited
for. Nothing is force-pushed and no file this project did not create is written.
"""

from __future__ import annotations

import copy
import posixpath
import re
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import yaml

from components.serving.gitops.fleet import (
    GitopsOptions,
    Hub,
    REST_OF_FLEET,
    WAVE_LABEL,
    Wave,
)
from components.serving.gitops.repo import GitopsError, GitopsRepo, commit_message
from components.serving.kserve import KServeOptions, KServeTarget
from components.serving.kserve.candidate_isvc import CandidateIsvcStrategy
from components.serving.kserve.standard_canary import StandardCanaryStrategy
from components.serving.kserve.api import MODE_ANNOTATION, recorded_backend
from components.serving.kserve.readiness import NO_VERSION, served_version
from components.serving.local import http_get
from components.serving.kserve.merge_patch import merge_diff, merge_patch
from components.serving.target import Endpoints, ServingError, ServingStatus, namespace_scope

PATCH_FILE = "inferenceservice-patch.yaml"
KUSTOMIZATION = "kustomization.yaml"
FIRST_DEPLOYMENT, PROMOTE, ROLLBACK, SETTLED = "first deployment", "promote", "rollback", "settled"
UNCONFIRMED = "versions not confirmed on"
WAVE_TRAILER = re.compile(r"^(\d+)/(\d+) \(([^:]*):")  # the Wave trailer's "<number>/<total> (<labels>: <clusters>)"


@dataclass(frozen=True)
class VersionProbe:
    """One URL of one cluster that must serve one of ``wanted``, and what it answered."""

    cluster: str
    role: str
    url: str
    wanted: frozenset[str]
    answer: str | None  # the version named, NO_VERSION, or None when nothing answered with 200

    def problem(self) -> str:
        """Return "" when the URL serves a wanted version (or cannot say which), else what it serves instead."""
        if self.answer is None:
            return f"{self.cluster}: {self.role} did not answer GET {self.url}"
        if self.answer != NO_VERSION and self.answer not in self.wanted:
            return f"{self.cluster} serves {self.answer} on its {self.role}, not {' or '.join(sorted(self.wanted))}"
        return ""


def identity(document: dict) -> dict:
    """Return the fields kustomize matches a patch by: apiVersion, kind and name."""
    return {"apiVersion": document["apiVersion"], "kind": document["kind"], "metadata": {"name": document["metadata"]["name"]}}


def dump(document: dict) -> str:
    """Return a document as block-style YAML in its own key order."""
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


class WaveOverlays:
    """The CustomObjectsApi calls of the kserve target, answered from one wave's overlay of the model; writes are commits."""

    def __init__(self, fleet: "GitopsTarget", wave: Wave) -> None:
        """Bind to the fleet's repository and hub and to ``wave``."""
        self.fleet, self.wave = fleet, wave

    def _overlay(self, model_name: str) -> str:
        """Return the model's overlay directory in this wave, relative to gitops_path."""
        return f"{self.wave.directory}/{model_name}"

    def extra_file(self, model_name: str, name: str) -> str:
        """Return the file of another InferenceService of the model (e.g. ``<model>-candidate``) in this wave."""
        return f"{self._overlay(model_name)}/{name}.yaml"

    def document(self, name: str) -> dict | None:
        """Return the InferenceService ``name`` as this wave's overlay renders it (without status), or None."""
        model_name, repo = self.fleet.model_name, self.fleet.repo
        if name != model_name:
            text = repo.read(self.extra_file(model_name, name))
            return yaml.safe_load(text) if text else None
        base, patch = repo.read(base_file(model_name)), repo.read(f"{self._overlay(model_name)}/{PATCH_FILE}")
        if base is None or patch is None:
            return None
        return merge_patch(yaml.safe_load(base), yaml.safe_load(patch))

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str) -> dict:
        """Return the rendered InferenceService with a status read from the wave's Applications; 404 when absent."""
        from kubernetes.client.rest import ApiException

        document = self.document(name)
        if document is None:
            raise ApiException(status=404, reason="NotFound")
        done, detail = self.fleet.wave_state(self.wave)
        document["metadata"].update(generation=1, resourceVersion=self.fleet.repo.head(), uid=f"gitops-{name}")
        document["status"] = self.fleet.synthesized_status(document, self.wave, done, detail)
        return document

    def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, body: dict) -> dict:
        """Write a new InferenceService: the model's first deployment goes to every wave in one commit."""
        model_name, name = self.fleet.model_name, body["metadata"]["name"]
        document = strip_server_fields(body)
        if name == model_name:
            files = {base_file(model_name): dump(document), f"base/{model_name}/{KUSTOMIZATION}": dump(kustomization(["inferenceservice.yaml"]))}
            for wave in self.fleet.waves:
                files.update(WaveOverlays(self.fleet, wave).overlay_files(document, {}))
            self.fleet.commit(files, [], "first deployment to every wave", step=FIRST_DEPLOYMENT)
        else:
            extras = self.extras(model_name)
            extras[name] = document
            self.fleet.commit(self.overlay_files(self.document(model_name), extras), [], f"create {name} in {self.fleet.where(self.wave)}", self.wave)
        return self.get_namespaced_custom_object(group, version, namespace, plural, name)

    def patch_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str, body: dict) -> dict:
        """Merge-patch the InferenceService in this wave's overlay and commit it."""
        model_name = self.fleet.model_name
        current = self.document(name)
        if current is None:
            from kubernetes.client.rest import ApiException

            raise ApiException(status=404, reason="NotFound")
        changed = strip_server_fields(merge_patch(current, {key: value for key, value in body.items() if key != "status"}))
        extras = self.extras(model_name)
        main = changed if name == model_name else self.document(model_name)
        if name != model_name:
            extras[name] = changed
        self.fleet.commit(self.overlay_files(main, extras), [], self.fleet.step_name(self.wave), self.wave)
        return self.get_namespaced_custom_object(group, version, namespace, plural, name)

    def delete_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str, body: dict | None = None) -> dict:
        """Remove a second InferenceService (a candidate's) from this wave's overlay; the main one is removed by a revert."""
        model_name = self.fleet.model_name
        if name == model_name:
            raise ServingError(f"the gitops target never deletes {model_name} by a commit: it reverts the model's commits instead")
        extras = self.extras(model_name)
        extras.pop(name, None)
        self.fleet.commit(self.overlay_files(self.document(model_name), extras), [self.extra_file(model_name, name)],
                          f"remove {name} from {self.fleet.where(self.wave)}", self.wave)
        return {"kind": "Status", "status": "Success"}

    def extras(self, model_name: str) -> dict[str, dict]:
        """Return the model's other InferenceServices in this wave (e.g. ``<model>-candidate``), by name."""
        listed = yaml.safe_load(self.fleet.repo.read(f"{self._overlay(model_name)}/{KUSTOMIZATION}") or "{}") or {}
        names = [entry.removesuffix(".yaml") for entry in listed.get("resources", []) if not entry.startswith(".")]
        return {name: self.document(name) for name in names}

    def overlay_files(self, main: dict, extras: dict[str, dict]) -> dict[str, str]:
        """Return the wave's overlay of the model: a kustomization over the base, the patch, and any other InferenceServices."""
        model_name = main["metadata"]["name"]
        base = yaml.safe_load(self.fleet.repo.read(base_file(model_name)) or "null") or main
        overlay = self._overlay(model_name)
        to_base = posixpath.relpath(f"base/{model_name}", overlay)
        files = {f"{overlay}/{PATCH_FILE}": dump(merge_patch(identity(main), merge_diff(base, main))),
                 f"{overlay}/{KUSTOMIZATION}": dump(kustomization([to_base, *(f"{name}.yaml" for name in sorted(extras))], [PATCH_FILE]))}
        files.update({self.extra_file(model_name, name): dump(document) for name, document in extras.items()})
        return files


def status_file(model_name: str) -> str:
    """Return the model's fleet-settled record, relative to gitops_path (under status/, which no Application syncs)."""
    return f"status/{model_name}.yaml"


def base_file(model_name: str) -> str:
    """Return the base InferenceService file of a model, relative to gitops_path."""
    return f"base/{model_name}/inferenceservice.yaml"


def kustomization(resources: list[str], patches: list[str] = ()) -> dict:
    """Return a kustomization listing ``resources`` and applying the merge-patch files ``patches``."""
    document: dict = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": list(resources)}
    if patches:
        document["patches"] = [{"path": patch} for patch in patches]
    return document


def strip_server_fields(document: dict) -> dict:
    """Return a document without status and the fields an API server owns, as it belongs in Git."""
    cleaned = copy.deepcopy(document)
    cleaned.pop("status", None)
    for field in ("resourceVersion", "generation", "uid", "creationTimestamp", "namespace"):
        cleaned.get("metadata", {}).pop(field, None)
    return cleaned


class GitopsTarget:
    """Serves models on a fleet of spoke clusters through Git, wave by wave (see the module's docstring)."""

    strict_client_errors = False  # the spokes run the same runtimes as the kserve target

    def __init__(self, options: KServeOptions, gitops: GitopsOptions, hub_api=None, workdir: Path | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        """Clone the fleet repository and connect to the hub (the pod's service account, else the kubeconfig)."""
        if not gitops.repo:
            raise ServingError("serving_target=gitops needs gitops_repo: the https:// or ssh:// URL of the fleet repository")
        if "{cluster}" not in options.endpoint:
            raise ServingError("serving_target=gitops needs endpoint: the URL template of a spoke's routes with {cluster}, {service} and "
                               "{namespace}, e.g. https://{service}-{namespace}.apps.{cluster}.example.com")
        self.options, self.gitops, self.sleep = options, gitops, sleep
        self.repo = GitopsRepo(gitops.repo, gitops.branch, gitops.path.strip("/"), workdir or Path(tempfile.mkdtemp(prefix="gitops-")))
        self.hub = Hub(hub_api or KServeTarget.connect(), gitops.hub_namespace)
        self.model_name, self.version, self.step = "", "", ""
        self.waves: list[Wave] = []

    # -- context shared with WaveOverlays -----------------------------------------------------------------------
    def _begin(self, model_name: str, version: str, step: str, from_git: bool = False) -> None:
        """Fetch the branch and the waves, and name the model, version and step the next commits are for. With ``from_git``
        (reading and reverting), a wave whose clusters all left the Placement's decisions is kept, its overlay found in Git.
        """
        self.repo.sync()
        self.model_name, self.version, self.step = model_name, version, step
        self.waves = self.hub.waves(self.gitops, model_name, keep_empty=from_git)
        self.waves = [wave if wave.applications else replace(wave, directory=self._directory_in_git(wave)) for wave in self.waves]

    def _directory_in_git(self, wave: Wave) -> str:
        """Return the overlay directory (relative to gitops_path) of a wave with no Application left, from the model's own
        commits: the one changed by the newest that acted on that wave alone (its one Wave trailer has the wave's number,
        the number of waves and labels of the wave). Raise naming the wave when no commit says.
        """
        others = {label for labels in self.gitops.waves if labels != wave.labels for label in labels}
        for revision, trailers in self.repo.history(f"*/{self.model_name}/*"):
            marks = [WAVE_TRAILER.match(value) for key, value in trailers if key == "Wave"]
            if dict(trailers).get("Model") != self.model_name or len(marks) != 1 or marks[0] is None:
                continue
            number, total, labels = int(marks[0][1]), int(marks[0][2]), set(marks[0][3].split(","))
            if (number, total) != (wave.number, len(self.gitops.waves)) or labels & others or not (
                    wave.labels == (REST_OF_FLEET,) or labels <= set(wave.labels)):
                continue
            directories = {name.partition(f"/{self.model_name}/")[0] for name in self.repo.changed_files(revision) if f"/{self.model_name}/" in name}
            if len(directories - {"base"}) == 1:
                return (directories - {"base"}).pop()
        raise ServingError(f"{self.where(wave)}: no Argo CD Application of {self.model_name} on the hub (namespace {self.hub.namespace}) has "
                           f"{WAVE_LABEL} in {list(wave.labels)}, and no commit of {self.model_name} in {self.gitops.repo} acted on that "
                           "wave alone (a Wave trailer), so Git does not say which overlay it syncs either: bring a cluster of the wave back "
                           "(its ManagedCluster's labels and taints, the Placement's tolerations), label a ManagedCluster "
                           f"{WAVE_LABEL}=..., or change fleet_waves; meanwhile the model's commits since its last fleet-settled record "
                           f"({status_file(self.model_name)}) can only be reverted in the repository by hand")

    def where(self, wave: Wave) -> str:
        """Return e.g. "wave 1/2 (canary: spoke-1)"."""
        return wave.describe(len(self.waves))

    def step_name(self, wave: Wave) -> str:
        """Return the current step and the wave it acts on, for a commit message."""
        return f"{self.step} in {self.where(wave)}"

    def wave_trailer(self, wave: Wave) -> tuple[str, str]:
        """Return the ``Wave`` trailer of a commit acting on ``wave``, e.g. ("Wave", "1/2 (canary: spoke-1)")."""
        return "Wave", self.where(wave).removeprefix("wave ")

    def commit(self, files: dict[str, str], removed: list[str], subject: str, wave: Wave | None = None, step: str = "") -> str:
        """Write and remove owned files, then commit and push one change with the trailers Model, Version, Step, Wave
        (when it acts on one wave) and Pipeline-Run; return the pushed head.
        """
        trailers = [("Step", step or self.step), *([self.wave_trailer(wave)] if wave else [])]
        try:
            self.repo.write(files)
            self.repo.remove(removed)
            return self.repo.commit_and_push(commit_message(self.model_name, self.version, subject, self.options.run_name or "local", trailers=trailers))
        except GitopsError as error:
            raise ServingError(str(error)) from error

    # -- reading the fleet ------------------------------------------------------------------------------------------
    def wave_state(self, wave: Wave) -> tuple[bool, str]:
        """Return whether ``wave`` is done, and what is not: every Application Synced at the model's last commit and
        Healthy, and every cluster serving the versions the overlay names (``served_versions``). Raise at once when one of
        the wave's Applications is gone from the hub: waiting cannot bring its cluster back. A wave with no cluster is never done."""
        if not wave.applications:
            return False, f"{self.where(wave)}: every cluster of the wave left the Placement's decisions, so none follows its overlay"
        required = self._last_change(self.model_name, wave)
        reported = {application.name: application for application in self.hub.applications(self.model_name)}
        gone = [application for application in wave.applications if application.name not in reported]
        if gone:
            raise ServingError(f"{self.where(wave)}: " + "; ".join(
                f"the Application {a.name} of cluster {a.cluster} was deleted from the hub during the rollout, so {a.cluster} no longer "
                "follows the fleet repository" for a in gone)
                + ": its cluster left the Placement's decisions (ACM taints an unreachable or unavailable ManagedCluster and the Placement "
                  "tolerates that only for tolerationSeconds, or its labels changed); the spoke keeps what it last synced "
                  "(preserveResourcesOnDeletion). Bring the cluster back, or relabel it out of the fleet, then roll out again")
        lagging = [reported[a.name] for a in wave.applications if not (
            reported[a.name].sync == "Synced" and reported[a.name].health == "Healthy" and self.repo.contains(reported[a.name].revision, required))]
        if lagging:
            return False, f"waiting for {required[:7]}: " + "; ".join(a.line() for a in lagging)
        probes = self.served_versions(wave)
        problems = [problem for probe in probes if (problem := probe.problem())]
        if problems:
            return False, "every Application Synced and Healthy, but " + "; ".join(problems)
        unconfirmed = sorted({probe.cluster for probe in probes if probe.answer == NO_VERSION})
        return True, "every Application Synced and Healthy" + (
            f"; {UNCONFIRMED} {', '.join(unconfirmed)}: its runtime names no version (the stock KServe runtime), "
            "so Argo CD's health alone was trusted there" if unconfirmed else "")

    def served_versions(self, wave: Wave) -> list[VersionProbe]:
        """GET each cluster's V1 metadata on the stable and candidate URLs the overlay implies; return what each names.

        Through the endpoint template, as the smoke test reaches a spoke: the stable predictor's own URL (Standard mode:
        its Service; Knative with a candidate: the prev- tag; else the main URL) must name the stable version, the
        candidate's (its Service, latest- tag or InferenceService) the candidate version. The project's runtime names
        the version it loaded; a runtime that names none (stock KServe) leaves Argo CD's health as the only evidence.
        """
        overlay = WaveOverlays(self, wave)
        main = overlay.document(self.model_name)
        stable, candidate = recorded_backend(main, "stable"), recorded_backend(main, "candidate")
        if main is None or stable is None:
            return []
        name, namespace = self.model_name, wave.namespace or self.options.namespace
        strategy = self._wave_target(wave).strategy_for(main)
        predictor = main["spec"]["predictor"].get("name")
        urls = [("main URL", name, {stable["version"], *([candidate["version"]] if candidate else [])})]
        if isinstance(strategy, StandardCanaryStrategy):
            urls.append(("stable predictor", f"{name}-{predictor}-predictor" if predictor else f"{name}-predictor", {stable["version"]}))
            entries = main["spec"].get("canary") or []
            if candidate and entries:
                urls.append(("candidate predictor", f"{name}-{entries[0]['predictor']['name']}-predictor", {candidate["version"]}))
        elif isinstance(strategy, CandidateIsvcStrategy):
            urls[0] = ("main URL", name, {stable["version"]})
            if candidate and f"{name}-candidate" in overlay.extras(name):
                urls.append(("candidate InferenceService", f"{name}-candidate", {candidate["version"]}))
        elif candidate:  # Knative: the tag URLs
            urls += [("prev- tag", f"prev-{name}", {stable["version"]}), ("latest- tag", f"latest-{name}", {candidate["version"]})]
        probes = []
        for cluster in wave.clusters:
            for role, service, wanted in urls:
                url = f"{self.options.endpoint.format(service=service, namespace=namespace, cluster=cluster).rstrip('/')}/v1/models/{name}"
                probes.append(VersionProbe(cluster, role, url, frozenset(wanted), served_version(*http_get(url, timeout=5.0))))
        return probes

    def wait(self, wave: Wave) -> None:
        """Poll the hub until ``wave`` is done (``wave_state``); after ``gitops.wave_timeout_s`` raise quoting each unhealthy Application."""
        timeout_s = self.gitops.wave_timeout_s
        deadline, delay = time.monotonic() + timeout_s, 0.2
        while True:
            done, detail = self.wave_state(wave)
            if done:
                if UNCONFIRMED in detail:
                    print(f"{self.where(wave)}: {detail}", flush=True)
                return
            if time.monotonic() >= deadline:
                raise ServingError(f"{self.where(wave)} was not Synced, Healthy and serving the overlay's versions within {timeout_s:g} s: {detail}")
            self.sleep(delay)
            delay = min(delay * 1.5, 2.0)

    def spoke_url(self, url: str, wave: Wave) -> str:
        """Return ``url`` as the first cluster of ``wave`` exposes it: in-cluster Service names become the endpoint template."""
        parsed = urllib.parse.urlsplit(url)
        host = parsed.hostname or ""
        if not host.endswith(".svc.cluster.local"):
            return url
        service, namespace = host.split(".")[:2]
        return self.route(service, namespace, wave) + parsed.path

    def route(self, service: str, namespace: str, wave: Wave) -> str:
        """Return the base URL of ``service`` on ``wave``'s first cluster, from the endpoint template ("" when it has none)."""
        if not wave.clusters:
            return ""
        return self.options.endpoint.format(service=service, namespace=namespace, cluster=wave.clusters[0]).rstrip("/")

    def synthesized_status(self, document: dict, wave: Wave, done: bool, detail: str) -> dict:
        """Return the status a wave's InferenceService is read with: Ready when the wave is done, URLs on its first cluster."""
        name, namespace = document["metadata"]["name"], wave.namespace or self.options.namespace
        url = self.route(name, namespace, wave)
        predictor = document["spec"]["predictor"]
        status: dict = {
            "observedGeneration": 1 if done else 0, "url": url,
            "conditions": [{"type": "Ready", "status": "True" if done else "False", **({} if done else {"reason": "FleetNotSynced", "message": detail})}],
        }
        written_mode = document["metadata"].get("annotations", {}).get(MODE_ANNOTATION)
        if written_mode:  # as written: KServe < 0.20 reports the name it was given, and a normalised one would be written back
            status["deploymentMode"] = written_mode
        canaries = document["spec"].get("canary") or []
        if canaries:
            status["canaryStatuses"] = [{"name": e["predictor"]["name"], "ready": done, "trafficPercent": e.get("trafficPercent", 0)} for e in canaries]
            status["conditions"].append({"type": "CanaryPredictorReady", "status": "True" if done else "False"})
        percent = predictor.get("canaryTrafficPercent")
        traffic = [{"tag": "latest", "latestRevision": True, "percent": 100 if percent is None else percent,
                    "url": self.route(f"latest-{name}", namespace, wave)}]
        if percent is not None:
            traffic.append({"tag": "prev", "latestRevision": False, "percent": 100 - percent, "url": self.route(f"prev-{name}", namespace, wave)})
        status["components"] = {"predictor": {"traffic": traffic}}
        return status

    def _wave_target(self, wave: Wave) -> KServeTarget:
        """Return the kserve target whose InferenceServices are this wave's overlay (URLs come from the endpoint template)."""
        options = replace(self.options, endpoint="", namespace=wave.namespace or self.options.namespace)
        # The overlays' status is the wave gate's, computed for the overlay as committed: Ready at generation 1 only once
        # every cluster is Synced at its last commit, Healthy and naming its versions; never KServe's stale one.
        return KServeTarget(options, api=WaveOverlays(self, wave), sleep=self.sleep, status_tracks_spec=True)

    # -- the ServingTarget interface --------------------------------------------------------------------------------
    # Every wave waits ``gitops.wave_timeout_s`` (fleet_wave_timeout_s), wave 1's included, since every change reaches a
    # cluster through Argo CD's Git polling; the ``timeout_s`` these methods take (ready_timeout_s) is the kserve target's.
    def deploy(self, model_name: str, version: str, storage_uri: str, checksum: str, timeout_s: float) -> ServingStatus:
        """First deployment: commit it to every wave, wait for all, then commit the fleet-settled record; else a dark candidate
        in wave 1, waited for.
        """
        self._begin(model_name, version, "deploy as dark candidate")
        first = self.repo.read(base_file(model_name)) is None
        status = self._wave_target(self.waves[0]).deploy(model_name, version, storage_uri, checksum, self.gitops.wave_timeout_s)
        if first:
            for wave in self.waves[1:]:
                self.wait(wave)
            self._settle(model_name, FIRST_DEPLOYMENT, self.waves)
        return status

    def status(self, model_name: str) -> ServingStatus:
        """Return what wave 1 serves (it leads every rollout; later waves follow after promotion), as its overlay records."""
        self._begin(model_name, "", "status", from_git=True)
        return self._wave_target(self.waves[0]).status(model_name)

    def set_traffic(self, model_name: str, candidate_percent: int, timeout_s: float) -> ServingStatus:
        """Commit the candidate's traffic share in wave 1 and wait for its clusters."""
        self._begin(model_name, "", f"canary {candidate_percent} %")
        self.version = self._recorded(model_name)[1]
        return self._wave_target(self.waves[0]).set_traffic(model_name, candidate_percent, self.gitops.wave_timeout_s)

    def promote(self, model_name: str, timeout_s: float) -> ServingStatus:
        """Promote in wave 1, then give each later wave the same overlay, waiting for each, and commit the fleet-settled record
        once the last is confirmed; on any failure revert them all.
        """
        self._begin(model_name, "", PROMOTE)
        candidate = self.version = self._recorded(model_name)[1]
        first = self.waves[0]
        try:
            self._wave_target(first).promote(model_name, self.gitops.wave_timeout_s)
            for wave in self.waves[1:]:
                self._begin(model_name, candidate, PROMOTE)
                lead = WaveOverlays(self, first)
                follower = WaveOverlays(self, wave)
                extras = {name: lead.document(name) for name in lead.extras(model_name)}
                stale = [follower.extra_file(model_name, name) for name in follower.extras(model_name) if name not in extras]
                self.commit(follower.overlay_files(lead.document(model_name), extras), stale, f"promote to {self.where(wave)}", wave)
                self.wait(wave)
            for wave in self.waves[:-1]:  # the earlier waves still hold now that the last one is confirmed
                self.wait(wave)
        except ServingError as error:
            stable = self._revert(model_name, candidate, f"promotion failed: {error}")
            raise ServingError(f"promotion of {model_name} {candidate} stopped: {error}; every wave was reverted to {stable or 'nothing'}") from error
        self._settle(model_name, PROMOTE, self.waves)
        return self.status(model_name)

    def rollback(self, model_name: str, timeout_s: float, *, reason: str) -> ServingStatus:
        """Revert the candidate's commits in one commit giving ``reason`` and wait for every affected wave; with no candidate,
        change nothing.
        """
        self._revert(model_name, None, reason)
        return self.status(model_name)

    def remove(self, model_name: str, version: str, timeout_s: float, *, reason: str) -> ServingStatus:
        """Revert a failed first deployment of ``version`` giving ``reason``, only when every one of its commits carries this
        run's Pipeline-Run trailer (and no other); wait.
        """
        self._begin(model_name, version, "remove", from_git=True)
        for revision, trailers in self._unsettled_commits(model_name, version)[0]:
            if not self.options.run_name or [value for key, value in trailers if key == "Pipeline-Run"] != [self.options.run_name]:
                raise ServingError(f"{model_name} {version}: commit {revision[:7]} was not made by this run, so the deployment is left "
                                   "serving; revert it in Git by hand if it must go")
        self._revert(model_name, version, reason)
        return self.status(model_name)

    def _recorded(self, model_name: str) -> tuple[str, str]:
        """Return the (stable, candidate) versions wave 1's overlay records in the clone as last fetched ("" for none)."""
        document = WaveOverlays(self, self.waves[0]).document(model_name)
        stable, candidate = recorded_backend(document, "stable"), recorded_backend(document, "candidate")
        return (stable["version"] if stable else ""), (candidate["version"] if candidate else "")

    def _last_change(self, model_name: str, wave: Wave) -> str:
        """Return the newest revision that changed what ``wave``'s Applications of the model render: its base or its overlay."""
        return self.repo.last_change(f"base/{model_name}", f"{wave.directory}/{model_name}")

    def _model_paths(self, model_name: str) -> list[str]:
        """Return the model's manifests that Applications sync, relative to gitops_path: its base and every wave's overlay."""
        return [f"base/{model_name}", *(f"{wave.directory}/{model_name}" for wave in self.waves)]

    def _unsettled_commits(self, model_name: str, version: str) -> tuple[list[tuple[str, list[tuple[str, str]]]], str]:
        """Return (revision, trailers) of the model's commits since its last fleet-settled record, newest first, and that
        record's revision ("" when there is none).

        The walk stops at the newest record of another version; it goes past a record of ``version`` itself (a first
        deployment confirmed on every wave whose smoke test then failed), which this revert undoes. The records passed
        are listed too (``remove`` checks every commit), but are never reverted.
        """
        found = []
        for revision, trailers in self.repo.history(status_file(model_name), *self._model_paths(model_name)):
            values = dict(trailers)
            if values.get("Model") != model_name:
                continue
            if values.get("Fleet-state") == SETTLED and values.get("Version") != version:
                return found, revision
            found.append((revision, trailers))
        return found, ""

    def _revert(self, model_name: str, version: str | None, reason: str) -> str:
        """Revert ``version``'s commits (None: wave 1's candidate, if any) and any of an unconfirmed rollout before them (every
        commit of the model since its last fleet-settled record) in one commit, whose message says ``This reverts commit
        <sha>.`` for each and carries the trailers Step: rollback, Wave (each wave it changes) and Reason; wait for those
        waves, then commit the fleet-settled record. Return the stable version wave 1 serves after. A wave with no cluster left
        is reverted all the same (from Git alone) and named in the revert, the log and the record, with nothing to wait for.
        """
        self._begin(model_name, version or "", ROLLBACK, from_git=True)
        if version is None:
            stable, candidate = self._recorded(model_name)
            if not candidate:
                return stable
            version = self.version = candidate
        found, settled = self._unsettled_commits(model_name, version)
        unsettled = [(revision, dict(trailers)) for revision, trailers in found if dict(trailers).get("Fleet-state") != SETTLED]
        reverted = [revision for revision, _ in unsettled]
        if reverted:
            touched = {name for revision in reverted for name in self.repo.changed_files(revision)}
            waves = [wave for wave in self.waves
                     if any(name.startswith((f"base/{model_name}/", f"{wave.directory}/{model_name}/")) for name in touched)]
            others = sorted({values.get("Version", "") for _, values in unsettled} - {version, ""})
            since = f"its last fleet-settled record {settled[:7]}" if settled else "its first commit (it has no fleet-settled record)"
            unfollowed = "; ".join(self.where(wave) for wave in waves if not wave.applications)
            if unfollowed:
                unfollowed = (f"{unfollowed}: every cluster of the wave left the Placement's decisions, so no cluster confirms this "
                              "revert there; a returning cluster's Application syncs it.")
            body = (f"Reverts {len(reverted)} commit{'s' if len(reverted) > 1 else ''} of {model_name}: {reason}\n\n"
                    + (f"Every commit of {model_name} since {since} is reverted, so this includes {', '.join(others)}, whose rollout "
                       "was never confirmed on every wave.\n\n" if others else "")
                    + (f"{unfollowed}\n\n" if unfollowed else "")
                    + "\n".join(f"This reverts commit {revision}." for revision in reverted))
            trailers = [("Step", ROLLBACK), *(self.wave_trailer(wave) for wave in waves), ("Reason", reason or "not given")]
            message = commit_message(model_name, version, ROLLBACK, self.options.run_name or "local", body, trailers)
            try:
                revert = self.repo.revert(reverted, message)
            except GitopsError as error:
                raise ServingError(str(error)) from error
            if unfollowed:
                print(f"{model_name}: the revert {revert[:7]} is pushed; {unfollowed}", flush=True)
            try:
                for wave in waves:
                    if wave.applications:
                        self.wait(wave)
            except ServingError as error:
                raise ServingError(f"{error}; the revert {revert[:7]} is pushed but not confirmed, so no fleet-settled record was written "
                                   f"(the model's last is {settled[:7] or 'none'}): the next rollback reverts from there again") from error
            self._settle(model_name, ROLLBACK, waves, reason or "not given")
        return self._recorded(model_name)[0]

    def _settle(self, model_name: str, after: str, waves: list[Wave], reason: str = "") -> str:
        """Commit the model's fleet-settled record (``status_file``) once ``waves`` are confirmed after ``after``: the stable
        version, the revision each wave was confirmed at and its Applications as the hub reports them now, the run and the
        reason; trailers Step: settled, Fleet-state: settled (and Reason). Return the pushed head.
        """
        stable, run = self._recorded(model_name)[0], self.options.run_name or "local"
        reported = {application.name: application for application in self.hub.applications(self.model_name)}
        confirmed = []
        for wave in waves:
            applications = [reported[application.name] for application in wave.applications if application.name in reported]
            confirmed.append({"wave": self.wave_trailer(wave)[1], "revision": self._last_change(model_name, wave),
                              "applications": [{"name": a.name, "cluster": a.cluster, "sync": a.sync, "revision": a.revision, "health": a.health}
                                               for a in applications]})
        revision = self.repo.last_change(*self._model_paths(model_name))
        record = {"model": model_name, "stable": stable or None, "after": after, "revision": revision, "waves": confirmed, "run": run,
                  **({"reason": reason} if reason else {})}
        body = (f"After {after}, each wave below is Synced and Healthy at a revision containing its last change to {model_name} "
                f"(the rollout's last commit is {revision[:7]}):\n"
                + "\n".join(f"- wave {entry['wave']} at {entry['revision'][:7]}: "
                             + (", ".join(f"{a['cluster']} {a['sync']} at {a['revision'][:7]} {a['health']}" for a in entry["applications"])
                                or "no cluster left in the wave, so none to confirm it on")
                             for entry in confirmed))
        trailers = [("Step", SETTLED), ("Fleet-state", SETTLED), *([("Reason", reason)] if reason else [])]
        try:
            self.repo.write({status_file(model_name): dump(record)})
            return self.repo.commit_and_push(commit_message(model_name, stable, "fleet settled", run, body, trailers))
        except GitopsError as error:
            raise ServingError(f"{model_name}: every wave is confirmed after {after}, but the fleet-settled record could not be "
                               f"committed: {error}; until a record is, the next rollback reverts this rollout too") from error

    def last_reason(self, model_name: str) -> dict | None:
        """Return the newest rollback of the model in the fleet repository as {revision, version, reason}, or None."""
        self._begin(model_name, "", "status")
        for revision, trailers in self.repo.history(*self._model_paths(model_name)):
            values = dict(trailers)
            if values.get("Model") == model_name and "Reason" in values:
                return {"revision": revision[:7], "version": values.get("Version", ""), "reason": values["Reason"]}
        return None

    def endpoints(self, model_name: str) -> Endpoints:
        """Return the main, stable and candidate URLs on wave 1's first cluster."""
        self._begin(model_name, "", "endpoints")
        wave = self.waves[0]
        found = self._wave_target(wave).endpoints(model_name)
        return Endpoints(*(self.spoke_url(url, wave) if url else None for url in (found.main, found.stable, found.candidate)))

    def traffic_strategy(self, model_name: str) -> str:
        """Return how wave 1 shifts traffic and that later waves follow one at a time after promotion."""
        self._begin(model_name, "", "strategy")
        first = self.waves[0]
        return (f"GitOps, {self.where(first)} first: {self._wave_target(first).traffic_strategy(model_name)}; after promotion each later "
                f"wave follows in turn ({', '.join(self.where(wave) for wave in self.waves[1:]) or 'none'})")

    def metric_scope(self, model_name: str) -> str:
        """Return the PromQL label matchers that limit live metrics to wave 1's clusters and its namespace."""
        self._begin(model_name, "", "scope")
        first = self.waves[0]
        return f',cluster=~"{"|".join(first.clusters)}"' + namespace_scope(first.namespace or self.options.namespace)

    def fleet_status(self, model_name: str) -> list[dict]:
        """Return, per wave and cluster, the Application's revision, sync and health and what the wave's overlay serves."""
        self._begin(model_name, "", "status")
        rows = []
        for wave in self.waves:
            document = WaveOverlays(self, wave).document(model_name)
            stable, candidate = recorded_backend(document, "stable"), recorded_backend(document, "candidate")
            percent = self._wave_target(wave).strategy_for(document).candidate_percent(document) if document and candidate else 0
            for application in wave.applications:
                rows.append({"wave": wave.number, "labels": ",".join(wave.labels), "cluster": application.cluster, "application": application.name,
                             "revision": application.revision[:7], "sync": application.sync, "health": application.health,
                             "stable": stable and stable["version"], "candidate": candidate and candidate["version"], "candidate_percent": percent})
        return rows
