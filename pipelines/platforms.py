"""Compile profiles: the platform-spec fields each Data Science Pipelines / KFP backend knows, per release.

Every backend parses the compiled YAML strictly (Go ``protojson``: an unknown field is an error), and its driver
reads only the fields of its own release. kfp-kubernetes 2.17 writes the newest forms; ``adapt`` rewrites the
compiled documents for an older backend:

- ``pvcNameParameter``/``secretNameParameter``: dropped where the driver reads only the legacy forms (KFP <= 2.4,
  OpenShift AI <= 2.19); the PVC then comes from ``componentInputParameter`` and a Secret from ``secretName``.
- ``optional`` on ``secretAsEnv`` (KFP >= 2.15 and the OpenShift AI 3.x fork): without it a Secret can only be
  required, so the store is fixed at compile time: ``--store pvc`` references no Secret at all, ``--store s3``
  injects the data-connection Secret. ``model_store`` then stops being a run parameter.

The PVC and Secret names are never run parameters: they are the installation's, fixed at every compile.

Each profile also sets the default ``rollout_strategy`` for the KServe that release ships, and the default
``store.registry_labels``: OpenShift AI's dashboard and odh-model-controller read ``modelregistry.opendatahub.io/`` labels,
upstream Kubeflow's controller ``modelregistry.kubeflow.org/`` ones.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from components.serving.gitops.repo import TOKEN_ENV as GITOPS_TOKEN_ENV
from components.data.prometheus import TOKEN_ENV
from components.registry.client import TOKEN_ENV as REGISTRY_TOKEN_ENV

STORES = ("pvc", "s3")
# Before OpenShift AI 3.0 (no optional Secrets) these stop being run parameters: the compile binds them to constants.
COMPILE_TIME_PARAMETERS = ("model_store",)


@dataclass(frozen=True)
class Platform:
    """One OpenShift AI release or upstream KFP backend, and what its pipelines backend and KServe accept."""

    name: str
    kfp_backend: str
    legacy_names_only: bool  # the driver reads only componentInputParameter/constant and secretName
    optional_secrets: bool  # SecretAsEnv has ``optional``
    rollout_strategy: str
    kserve: str

    @property
    def registry_labels(self) -> str:
        """Return the registry label family this platform's controller reads: opendatahub (OpenShift AI) or kubeflow."""
        return "opendatahub" if self.name.startswith("rhoai-") else "kubeflow"

    @property
    def store_is_a_run_parameter(self) -> bool:
        """Return whether ``model_store`` stays a run parameter (only where a Secret can be optional)."""
        return self.optional_secrets


def _releases() -> dict[str, Platform]:
    """Return every known platform by name: OpenShift AI releases first, then upstream KFP backends."""
    rows = [
        *[(f"rhoai-2.{minor}", "2.2.0", True, False, "knative", "0.14") for minor in (16, 17, 18)],
        ("rhoai-2.19", "2.4.0", True, False, "knative", "0.14"),
        *[(f"rhoai-2.{minor}", "2.5.0", False, False, "knative", "0.15") for minor in range(20, 26)],
        *[(f"rhoai-3.{minor}", "2.14.3", False, True, "candidate-isvc", "0.15") for minor in range(0, 4)],
        ("rhoai-3.4", "2.16.0", False, True, "candidate-isvc", "0.17"),
        ("rhoai-3.5", "2.16.1", False, True, "candidate-isvc", "0.20"),
        *[(f"kfp-2.{minor}", f"2.{minor}", True, False, "auto", "any") for minor in (2, 3, 4)],
        *[(f"kfp-2.{minor}", f"2.{minor}", False, False, "auto", "any") for minor in (5, 14)],
        *[(f"kfp-2.{minor}", f"2.{minor}", False, True, "auto", "any") for minor in (15, 16)],
    ]
    return {row[0]: Platform(*row) for row in rows}


PLATFORMS = _releases()
DEFAULT_PLATFORM = "kfp-2.16"


def platform_named(name: str) -> Platform:
    """Return the named platform, or raise ValueError listing the known names."""
    if name not in PLATFORMS:
        raise ValueError(f"unknown platform {name!r}; known: {', '.join(PLATFORMS)}")
    return PLATFORMS[name]


def output_key(platform: Platform, store: str) -> tuple:
    """Return what decides the compiled output: two platforms with the same key compile to the same YAML."""
    store_part = store if platform.store_is_a_run_parameter else f"fixed-{store}"
    return platform.legacy_names_only, platform.optional_secrets, platform.rollout_strategy, platform.registry_labels, store_part


def group_of(platform: Platform, store: str) -> list[Platform]:
    """Return every platform whose compile with ``store`` is identical to ``platform``'s, in order."""
    key = output_key(platform, store)
    return [other for other in PLATFORMS.values() if output_key(other, store) == key]


def group_label(platform: Platform, store: str) -> str:
    """Return the name of the releases one output serves, e.g. ``rhoai-2.16-2.19`` or ``rhoai-3.5``."""
    names = [other.name for other in group_of(platform, store)]
    prefix = names[0].rsplit("-", 1)[0]
    first, last = names[0].rsplit("-", 1)[1], names[-1].rsplit("-", 1)[1]
    return f"{prefix}-{first}" if first == last else f"{prefix}-{first}-{last}"


def profile_folder(platform: Platform, store: str) -> str:
    """Return the ``compiled/`` folder that holds ``platform``'s output with ``store``, e.g. ``rhoai-2.20-2.25-pvc``."""
    return f"{group_label(platform, store)}-{store}"


def compile_time_parameters(platform: Platform) -> tuple[str, ...]:
    """Return the run parameters a compile for ``platform`` fixes as constants (none where a Secret can be optional)."""
    return () if platform.store_is_a_run_parameter else COMPILE_TIME_PARAMETERS


def is_default_output(platform: Platform, store: str) -> bool:
    """Return whether ``platform`` with ``store`` compiles to exactly the default YAML in ``compiled/``."""
    return output_key(platform, store) == output_key(PLATFORMS[DEFAULT_PLATFORM], "pvc")


def _bind_root_parameter(pipeline_spec: dict, name: str, value: object) -> None:
    """Remove run parameter ``name`` and pass ``value`` as a constant wherever the root DAG used it."""
    pipeline_spec["root"]["inputDefinitions"]["parameters"].pop(name, None)
    for task in pipeline_spec["root"]["dag"]["tasks"].values():
        for spec in task.get("inputs", {}).get("parameters", {}).values():
            if spec.get("componentInputParameter") == name:
                spec.pop("componentInputParameter")
                spec["runtimeValue"] = {"constant": value}


def _is_optional_credential(secret: dict) -> bool:
    """Return whether a secretAsEnv entry injects an optional credential: the Prometheus token, the fleet repository's or the registry's."""
    return any(pair.get("envVar") in (TOKEN_ENV, GITOPS_TOKEN_ENV, REGISTRY_TOKEN_ENV) for pair in secret.get("keyToEnv", []))


def _adapt_executor(config: dict, platform: Platform, store: str, s3_secret: str) -> dict:
    """Return one executor's Kubernetes config with only the fields ``platform`` knows."""
    config = copy.deepcopy(config)
    if platform.legacy_names_only:
        for mount in config.get("pvcMount", []):
            mount.pop("pvcNameParameter", None)
    if platform.optional_secrets or "secretAsEnv" not in config:
        return config
    # Without optional Secrets, the Prometheus token is the service account's, the fleet repository's credentials come
    # from no Secret (gitops needs a release with optional Secrets), and the S3 Secret is injected only with --store s3.
    config["secretAsEnv"] = [secret for secret in config["secretAsEnv"] if not _is_optional_credential(secret) and store == "s3"]
    if not config["secretAsEnv"]:
        del config["secretAsEnv"]
        return config
    for secret in config["secretAsEnv"]:
        secret.pop("optional", None)
        secret.pop("secretNameParameter", None)
        secret["secretName"] = s3_secret
        if not platform.legacy_names_only:
            secret["secretNameParameter"] = {"runtimeValue": {"constant": s3_secret}}
    return config


def compiled_for(platform: Platform, store: str, s3_secret: str) -> str:
    """Return the sentence a compile for ``platform`` and ``store`` adds to the pipeline description ("" for the default output)."""
    return "" if is_default_output(platform, store) else describe(platform, store, s3_secret)


def describe(platform: Platform, store: str, s3_secret: str) -> str:
    """Return the sentence the pipeline description gains for ``platform``'s group of releases."""
    backends = sorted({other.kfp_backend for other in group_of(platform, store)}, key=lambda v: tuple(map(int, v.split("."))))
    releases = f"{group_label(platform, store)} (KFP backend {', '.join(backends)})"
    if platform.store_is_a_run_parameter:
        return (f" Compiled for {releases}; default store {store}, default rollout strategy {platform.rollout_strategy}, "
                f"registry labels {platform.registry_labels}.")
    secret = f"the S3 store with data connection Secret {s3_secret!r} (required)" if store == "s3" else "the PVC store and no Secret"
    return (f" Compiled for {releases}, which has no optional Secrets: {secret}, fixed at compile time; Prometheus and the model registry use the service account token; serving_target=gitops has no credentials Secret;"
            f" default rollout strategy {platform.rollout_strategy}, registry labels {platform.registry_labels}.")


def adapt(pipeline_spec: dict, platform_spec: dict, platform: Platform, store: str, s3_secret: str) -> tuple[dict, dict]:
    """Return the compiled (pipeline spec, platform spec) rewritten for ``platform`` with ``store``."""
    if store not in STORES:
        raise ValueError(f"unknown store {store!r}; use one of {', '.join(STORES)}")
    pipeline_spec, platform_spec = copy.deepcopy(pipeline_spec), copy.deepcopy(platform_spec)
    parameters = pipeline_spec["root"]["inputDefinitions"]["parameters"]
    if "serving" in parameters:
        parameters["serving"]["defaultValue"]["rollout_strategy"] = platform.rollout_strategy
    if "registry_labels" in parameters.get("store", {}).get("defaultValue", {}):
        parameters["store"]["defaultValue"]["registry_labels"] = platform.registry_labels
    if is_default_output(platform, store):
        return pipeline_spec, platform_spec
    if platform.store_is_a_run_parameter:
        if "model_store" in parameters:
            parameters["model_store"]["defaultValue"] = store
    else:
        _bind_root_parameter(pipeline_spec, "model_store", store)
        executors = platform_spec["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        for name, config in executors.items():
            executors[name] = _adapt_executor(config, platform, store, s3_secret)
    info = pipeline_spec["pipelineInfo"]
    info["description"] = info.get("description", "") + describe(platform, store, s3_secret)
    return pipeline_spec, platform_spec
