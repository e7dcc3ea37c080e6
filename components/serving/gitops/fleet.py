"""The fleet as the hub shows it: the waves its clusters form by label, each model's Argo CD Applications, and the options of a
fleet rollout. Read with GET only (no watch), from the hub's Argo CD namespace."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from components.serving.target import ServingError

APPLICATIONS = ("argoproj.io", "v1alpha1", "applications")
HUB_NAMESPACE = "openshift-gitops"
APPLICATION_SELECTOR = "app.kubernetes.io/part-of=model-pipelines"
MODEL_LABEL = "model-pipelines.io/model"
WAVE_LABEL = "model-pipelines.io/wave"
CLUSTER_LABEL = "model-pipelines.io/cluster"
DEFAULT_WAVES = (("canary",), ("*",))
REST_OF_FLEET = "*"
NO_CLUSTERS = "no clusters"  # what a wave whose clusters all left the Placement's decisions lists as its clusters
DEFAULT_WAVE_TIMEOUT_S = 900.0  # Argo CD polls Git every 120 s plus up to 60 s jitter; a failed sync retries for about 5 min more


def model_selector(model_name: str) -> str:
    """Return the label selector of ``model_name``'s Applications (this project's, with the model label)."""
    return f"{APPLICATION_SELECTOR},{MODEL_LABEL}={model_name}"


def fleet_waves(value: object) -> tuple[tuple[str, ...], ...]:
    """Return ``fleet_waves`` checked: non-empty lists of wave label values, with "*" (every other cluster) alone and last."""
    if not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(wave, (list, tuple)) and wave and all(isinstance(label, str) and label for label in wave) for wave in value):
        raise ValueError(f"fleet_waves must be a list of non-empty lists of cluster wave labels, e.g. [[\"canary\"], [\"*\"]]; got {value!r}")
    waves = tuple(tuple(wave) for wave in value)
    starred = [number for number, wave in enumerate(waves) if REST_OF_FLEET in wave]
    if starred and (starred != [len(waves) - 1] or waves[-1] != (REST_OF_FLEET,)):
        raise ValueError(f"\"*\" (every cluster not in an earlier wave) may only be the whole last wave; got {value!r}")
    labels = [label for wave in waves for label in wave]
    if len(labels) != len(set(labels)):
        raise ValueError(f"a wave label may appear in one wave only; got {value!r}")
    return waves


@dataclass(frozen=True)
class GitopsOptions:
    """Which fleet repository, branch and path the target commits to, and the waves its clusters form."""

    repo: str = ""
    branch: str = "main"
    path: str = "fleet/models"
    waves: tuple[tuple[str, ...], ...] = DEFAULT_WAVES
    hub_namespace: str = HUB_NAMESPACE
    wave_timeout_s: float = DEFAULT_WAVE_TIMEOUT_S  # fleet_wave_timeout_s: how long every wave wait lasts, wave 1's included


@dataclass(frozen=True)
class Application:
    """What the hub reports about one Argo CD Application: its cluster, wave, path, sync and health."""

    name: str
    cluster: str
    wave: str
    path: str
    namespace: str
    sync: str
    revision: str
    health: str
    detail: str

    @classmethod
    def parse(cls, document: dict) -> "Application":
        """Return the Application's fields from its object on the hub."""
        labels = document["metadata"].get("labels") or {}
        spec, status = document.get("spec") or {}, document.get("status") or {}
        operation = status.get("operationState") or {}
        details = [status.get("health", {}).get("message", "")]  # Argo CD < 3 wrote a message here; later ones per resource:
        details += [f"{r.get('kind')} {r.get('name')}: {r['health'].get('status')}, {r['health'].get('message', '')}".rstrip(", ")
                    for r in status.get("resources") or [] if (r.get("health") or {}).get("status", "Healthy") != "Healthy"]
        details += [f"{c.get('type')}: {c.get('message', '')}" for c in status.get("conditions") or []]
        if operation.get("phase") in ("Failed", "Error") or (operation.get("phase") == "Running" and operation.get("retryCount")):
            details.append(f"sync {operation['phase']}: {operation.get('message', '')}")
        return cls(
            name=document["metadata"]["name"], cluster=labels.get(CLUSTER_LABEL) or spec.get("destination", {}).get("name", ""),
            wave=labels.get(WAVE_LABEL, ""), path=(spec.get("source") or {}).get("path", ""),
            namespace=spec.get("destination", {}).get("namespace", ""), sync=status.get("sync", {}).get("status", "Unknown"),
            revision=status.get("sync", {}).get("revision", ""), health=status.get("health", {}).get("status", "Unknown"),
            detail="; ".join(part for part in details if part),
        )

    def line(self) -> str:
        """Return one line on where this Application stands, quoting its conditions."""
        return (f"Application {self.name} (cluster {self.cluster}): {self.sync} at {self.revision[:7] or 'no revision'}, {self.health}"
                + (f" ({self.detail})" if self.detail else ""))


@dataclass(frozen=True)
class Wave:
    """One rollout wave: its number, the wave labels it takes and the Applications of its clusters."""

    number: int
    labels: tuple[str, ...]
    applications: tuple[Application, ...]
    directory: str

    @property
    def clusters(self) -> list[str]:
        """Return the wave's cluster names."""
        return [application.cluster for application in self.applications]

    @property
    def namespace(self) -> str:
        """Return the namespace the wave's Applications deploy to ("" when it has none)."""
        return next((application.namespace for application in self.applications if application.namespace), "")

    def describe(self, total: int) -> str:
        """Return e.g. "wave 1/2 (canary: spoke-1)", or "wave 1/2 (canary: no clusters)" when it has none."""
        labels = sorted({application.wave for application in self.applications}) or list(self.labels)
        return f"wave {self.number}/{total} ({','.join(labels)}: {', '.join(self.clusters) or NO_CLUSTERS})"


class Hub:
    """The Argo CD Applications on the ACM hub, read with GET (list by label), never watched or written."""

    def __init__(self, api, namespace: str) -> None:
        """Wrap a CustomObjectsApi connected to the hub."""
        self.api, self.namespace = api, namespace

    def applications(self, model_name: str = "") -> list[Application]:
        """Return this project's Applications (label app.kubernetes.io/part-of=model-pipelines), only ``model_name``'s if given, by name."""
        from kubernetes.client.rest import ApiException

        selector = model_selector(model_name) if model_name else APPLICATION_SELECTOR
        try:
            listing = self.api.list_namespaced_custom_object(*APPLICATIONS[:2], self.namespace, APPLICATIONS[2], label_selector=selector)
        except ApiException as error:
            hint = " apply manifests/gitops on the hub (oc apply -k manifests/gitops)" if error.status in (401, 403) else ""
            raise ServingError(f"cannot list Argo CD Applications in {self.namespace} on the hub: {error.status} {error.reason};{hint}") from error
        return sorted((Application.parse(item) for item in listing.get("items", [])), key=lambda application: application.name)

    def waves(self, options: GitopsOptions, model_name: str, keep_empty: bool = False) -> list[Wave]:
        """Group ``model_name``'s Applications into ``options.waves`` by their wave label, all of a wave syncing
        ``<gitops_path>/<one directory>/<model_name>``; each wave must have some, unless ``keep_empty``: then a wave without
        any is returned with no Applications and no directory (its clusters all left the Placement's decisions).
        """
        applications, claimed, waves = self.applications(model_name), set(), []
        selector, root = model_selector(model_name), options.path.rstrip("/")
        if not applications and not keep_empty:
            raise ServingError(f"no Argo CD Application on the hub (namespace {self.namespace}) has the labels {selector}: list {model_name} "
                               "in the models of manifests/gitops/applicationset.yaml and apply it (oc apply -k manifests/gitops); "
                               "Applications without the model label come from an older manifests/gitops")
        for number, labels in enumerate(options.waves, start=1):
            members = tuple(a for a in applications if a.name not in claimed and (labels == (REST_OF_FLEET,) or a.wave in labels))
            if not members and keep_empty:
                waves.append(Wave(number, labels, (), ""))
                continue
            if not members:
                raise ServingError(f"no Argo CD Application on the hub (namespace {self.namespace}, labels {selector}) has "
                                   f"{WAVE_LABEL} in {list(labels)} for wave {number}: apply manifests/gitops (oc apply -k), label a ManagedCluster "
                                   f"{WAVE_LABEL}=..., or change fleet_waves")
            directories = {posixpath.dirname(a.path) for a in members}
            misplaced = sorted(a.path for a in members if posixpath.basename(a.path) != model_name or not a.path.startswith(f"{root}/"))
            if misplaced or len(directories) != 1:
                raise ServingError(f"wave {number}'s Applications of {model_name} must all sync {root}/waves/<wave>/{model_name} (gitops_path "
                                   f"{options.path}); they sync {sorted({a.path for a in members})}: set the ApplicationSet's source path to "
                                   f"{root}/waves/{{{{ .values.wave }}}}/{{{{ .model }}}}")
            claimed.update(a.name for a in members)
            waves.append(Wave(number, labels, members, directories.pop().removeprefix(f"{root}/")))
        return waves
