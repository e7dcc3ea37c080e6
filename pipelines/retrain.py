"""The pipelines: per-model retraining DAGs and a rollout DAG, wiring the step components and exposing knobs.

Retrain: validate → ingest → train → evaluate → If(deploy) save → deploy → smoke-test → If(passed) canary-promote,
Else rollback, all inside an ExitHandler whose exit task leaves serving safe (stable serving, candidate at 0 %).
Rollout: validate → ingest → the same serving half for a version already in the store. The ingest is needed even when
the version already serves: the smoke test checks the served version against its stored model on that data, and the
canary probes with it.
Monitor: measure the live window's drift from the stable version's profile and decide → act: on a retrain decision
start the model's retrain pipeline through the KFP API (action=submit) or only report it.
"""

import ast
import inspect
import json
import re
import tempfile
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from functools import partial
from typing import Callable, NamedTuple

from kfp import compiler, dsl, kubernetes
from kfp.dsl import Markdown, Metrics

from components.data.prometheus import TOKEN_ENV
from components.kfp import steps
from components.kfp.config import MONITOR as MONITOR_KIND, RETRAIN, ROLLOUT as ROLLOUT_KIND, Installation, parameter_descriptions, pipeline_parameters
from components.kfp.workflow import ARGO_WORKFLOW_LABEL, RUN_ENV
from components.model.spec import ModelSpec, builtin_specs, spec_for
from components.release.approval import MAX_TIMEOUT_H as MAX_APPROVAL_TIMEOUT_H
from components.registry.client import TOKEN_ENV as REGISTRY_TOKEN_ENV
from components.serving.gitops import repo as gitops_repo
from components.store.filesystem import DEFAULT_STORE_ROOT
from components.store.s3 import DATA_CONNECTION_KEYS
from pipelines.catalog import DEFAULT_IMAGE, MONITOR, ROLLOUT, pipeline_file
from pipelines.platforms import DEFAULT_PLATFORM, PLATFORMS, STORES, Platform, adapt, is_default_output, output_key, platform_named, profile_folder

STEP_FUNCTIONS = (
    steps.validate_parameters,
    steps.ingest,
    steps.train,
    steps.evaluate,
    steps.save_to_storage,
    steps.deploy_inference_service,
    steps.smoke_test,
    steps.canary_promote,
    steps.rollback,
    steps.ensure_safe_serving,
    steps.monitor_drift,
    steps.trigger_retrain,
)
# Every retraining pipeline returns its evaluation, so that local runs and the kfp client can summarise a run.
PipelineOutputs = NamedTuple("PipelineOutputs", [("metrics", Metrics), ("report", Markdown)])
# The monitor returns its drift metrics and report, and the decision with its reason.
MonitorOutputs = NamedTuple("MonitorOutputs", [("metrics", Metrics), ("report", Markdown), ("decision", str), ("reason", str), ("regime_start", str)])


def make_components(image: str) -> SimpleNamespace:
    """Return the step components built on ``image``: no KFP install and no pip install at pod start."""
    return SimpleNamespace(
        **{
            function.__name__: dsl.component(func=function, base_image=image, install_kfp_package=False)
            for function in STEP_FUNCTIONS
        }
    )


# Upper bounds (activeDeadlineSeconds) for tasks with side effects, so that a hung step cannot hold a rollout open. canary-promote
# may also hold for approval, up to canary.approval_timeout_h's highest value (72 h), on top of its 4 h of traffic steps.
TIMEOUTS_S = {
    "validate-parameters": 300, "ingest": 3600, "evaluate": 3600, "save-to-storage": 900, "deploy-inference-service": 3600, "smoke-test": 1800,
    "canary-promote": 4 * 3600 + int(MAX_APPROVAL_TIMEOUT_H * 3600), "rollback": 3600, "ensure-safe-serving": 1800, "monitor-drift": 1800, "trigger-retrain": 600,
}


class Wiring:
    """What every task of one pipeline is built with: the components, the installation's PVC and Secrets, and the pipeline's kind."""

    def __init__(self, image: str, installation: Installation, kind: str, model: ModelSpec | object) -> None:
        self.ops = make_components(image)
        self.image = image
        self.installation = installation
        self.kind = kind
        self.spec = model if isinstance(model, ModelSpec) else None  # the pipeline's own model, carried in the YAML
        self.model_name = model.name if isinstance(model, ModelSpec) else model  # else the model_name run parameter's channel

    def side_effect(self, task: dsl.PipelineTask, *, store: bool = False, prometheus: bool = False, gitops: bool = False,
                    registry: bool = False) -> dsl.PipelineTask:
        """Never cache ``task`` and bound its run time; mount the store and inject the credentials it needs, and to a task that takes
        ``run_name`` its Argo workflow's name (what the task records on, or checks against, what its run deployed).

        The store's PVC is mounted at /mnt/models whichever store is selected, and the data connection's keys are injected
        (optional, so that PVC-only users need no Secret); the Prometheus token, the fleet repository's credentials and the model
        registry's token likewise (a step that changes the store's index mirrors it into the registry).
        """
        installed = self.installation
        if store:
            kubernetes.mount_pvc(task, pvc_name=installed.pvc_name, mount_path=DEFAULT_STORE_ROOT)
            kubernetes.use_secret_as_env(task, secret_name=installed.s3_secret, secret_key_to_env={key: key for key in DATA_CONNECTION_KEYS}, optional=True)
        if registry:
            kubernetes.use_secret_as_env(task, secret_name=installed.registry_secret, secret_key_to_env={"token": REGISTRY_TOKEN_ENV}, optional=True)
        if prometheus:
            kubernetes.use_secret_as_env(task, secret_name=installed.prometheus_secret, secret_key_to_env={"token": TOKEN_ENV}, optional=True)
        if gitops:
            kubernetes.use_secret_as_env(task, secret_name=installed.gitops_secret, secret_key_to_env=gitops_repo.SECRET_KEY_TO_ENV, optional=True)
        if "run_name" in (task.component_spec.inputs or {}):
            kubernetes.use_field_path_as_env(task, env_name=RUN_ENV, field_path=ARGO_WORKFLOW_LABEL)
        step = task.component_spec.name.replace("_", "-")
        kubernetes.set_timeout(task, next(seconds for prefix, seconds in TIMEOUTS_S.items() if step.startswith(prefix)))
        return task.set_caching_options(False)

    def validate(self, p: dict) -> dsl.PipelineTask:
        """Add the first task: one check of every run parameter, writing the configuration every later step reads (a rollout's also
        resolves a model-registry:// version, so it reads the store and the registry; a retrain's reads the regime its stable version
        learned from the store)."""
        arguments = {name: value for name, value in p.items() if name != "model_name"}
        rollout = self.kind == ROLLOUT_KIND
        return self.side_effect(self.ops.validate_parameters(
            kind=self.kind, model_name=self.model_name, installation=asdict(self.installation), model_spec=spec_constant(self.spec), **arguments,
        ), store=rollout or self.kind == RETRAIN, registry=rollout).set_display_name("Check run parameters")

    def ingest(self, config) -> dsl.PipelineTask:
        """Add the ingest task (never cached: its source changes under it)."""
        return self.side_effect(self.ops.ingest(config=config), prometheus=True).set_display_name("Ingest metrics")

    def exit_task(self, p: dict) -> dsl.PipelineTask:
        """Return the exit task that leaves serving safe whatever happened (it may depend on no task, so it takes run parameters)."""
        return self.side_effect(self.ops.ensure_safe_serving(
            kind=self.kind, model_name=self.model_name, installation=asdict(self.installation), model_spec=spec_constant(self.spec),
            run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            **{name: p[name] for name in ("serving_target", "namespace", "model_store", "store", "serving", "canary", "fleet")},
        ), store=True, gitops=True, registry=True).set_display_name("Leave serving safe")

    def roll_out(self, config, version, validation_data, after: dsl.PipelineTask | None = None) -> None:
        """Add deploy → smoke-test → If(passed) canary-promote / Else rollback for ``version``; deploy waits for ``after`` too."""
        run_name = dsl.PIPELINE_JOB_NAME_PLACEHOLDER
        deploy = self.side_effect(self.ops.deploy_inference_service(config=config, version=version, run_name=run_name), store=True, gitops=True,
                                  registry=True)
        deploy.set_display_name("Deploy as dark candidate")
        if after is not None:
            deploy.after(after)
        smoke = self.side_effect(self.ops.smoke_test(config=config, version=version, validation_data=validation_data), store=True, gitops=True,
                                 registry=True)
        smoke.after(deploy).set_display_name("Smoke-test the new version")
        with dsl.If(smoke.outputs["passed"] == True, name="smoke-test-passed"):  # noqa: E712 (KFP condition syntax)
            self.side_effect(self.ops.canary_promote(config=config, version=version, run_name=run_name, validation_data=validation_data),
                             store=True, prometheus=True, gitops=True, registry=True).set_display_name("Canary-promote or roll back")
        with dsl.Else(name="smoke-test-failed"):
            self.side_effect(self.ops.rollback(config=config, version=version, run_name=run_name, reason=smoke.outputs["reason"]),
                             store=True, gitops=True, registry=True).set_display_name("Roll back (smoke test failed)")


def pipeline_function(kind: str, spec: ModelSpec | None, summary: str, body: Callable[[dict], object], returns: object = inspect.Signature.empty) -> Callable:
    """Return a function KFP compiles into a pipeline: the ``kind`` pipeline's run parameters (from the knob table) handed to ``body`` by name.

    The signature, the defaults and the docstring's ``Args:`` (which KFP turns into each parameter's description in the
    run form) all come from ``components.kfp.config``, where each knob is written once.
    """
    parameters = pipeline_parameters(kind, spec)
    names = list(parameters)

    def pipeline(*arguments):
        return body(dict(zip(names, arguments)))

    pipeline.__signature__ = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=value, annotation=type(value)) for name, value in parameters.items()],
        return_annotation=returns,
    )
    descriptions = parameter_descriptions(kind, spec)
    pipeline.__doc__ = "\n".join([summary, "", "Args:", *(f"    {name}: {descriptions[name]}" for name in names)])
    return pipeline


def spec_constant(spec: ModelSpec | None) -> str:
    """Return what a pipeline carries of its model's spec: JSON text of its source and document ("" for the built-in model chosen by
    model_name). Text, not a struct: a struct would hand every number over as a float (PCA's 15 as 15.0)."""
    if spec is None:
        return ""
    source = Path(spec.source)  # its folder and file name: the same YAML whichever directory compiles it
    return json.dumps({"source": f"{source.parent.name}/{source.name}", "document": spec.document.value}, sort_keys=True)


def build_retrain_pipeline(spec: ModelSpec, image: str = DEFAULT_IMAGE, installation: Installation = Installation()):
    """Return ``spec``'s retraining pipeline on ``image``: validate → ingest → train → evaluate → If(deploy) save and roll out."""
    wiring = Wiring(image, installation, RETRAIN, spec)

    def body(p: dict) -> PipelineOutputs:
        config = wiring.validate(p).outputs["config"]
        ingest = wiring.ingest(config)
        train = wiring.ops.train(config=config, train_data=ingest.outputs["train_data"]).set_display_name(f"Train {spec.name}")
        evaluate = wiring.side_effect(wiring.ops.evaluate(
            config=config, model=train.outputs["model"], validation_data=ingest.outputs["validation_data"], data_description=ingest.outputs["Output"],
        ), store=True).set_display_name("Evaluate against gates and champion")
        with dsl.ExitHandler(wiring.exit_task(p), name="rollout-safely"):
            with dsl.If(evaluate.outputs["Output"] == True, name="deploy-approved"):  # noqa: E712 (KFP condition syntax)
                save = wiring.side_effect(wiring.ops.save_to_storage(
                    config=config, model=train.outputs["model"], metrics=evaluate.outputs["metrics"], run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                    image=wiring.image,
                ), store=True, registry=True).set_display_name("Save version to the store")
                wiring.roll_out(config, save.outputs["version"], ingest.outputs["validation_data"])
        return PipelineOutputs(metrics=evaluate.outputs["metrics"], report=evaluate.outputs["report"])

    summary = f"Retrain, evaluate, store and roll out {spec.name} ({spec.type}); return its evaluation."
    function = pipeline_function(RETRAIN, spec, summary, body, PipelineOutputs)
    return dsl.pipeline(
        name=f"{spec.name}-retrain",
        description=f"Retrain {spec.name} ({spec.description.rstrip('.')}); evaluate against gates and the champion; save; deploy, smoke-test and canary-promote.",
    )(function)


def build_rollout_pipeline(image: str = DEFAULT_IMAGE, installation: Installation = Installation(), spec: ModelSpec | None = None):
    """Return the pipeline that rolls out a version already in the store (deploy, smoke-test, canary): of the built-in model
    model_name names, or of ``spec``'s model."""

    def body(p: dict) -> None:
        wiring = Wiring(image, installation, ROLLOUT_KIND, spec or p["model_name"])
        with dsl.ExitHandler(wiring.exit_task(p), name="rollout-safely"):
            validate = wiring.validate(p)
            config = validate.outputs["config"]
            ingest = wiring.ingest(config)
            # Deploy only after the parameter check and once the data to check the deployment is in: a bad parameter
            # or a failing source then leaves serving untouched (and the step list follows the DAG). The version is the checked
            # one validate returns (a model-registry:// reference resolved to the store's vN).
            wiring.roll_out(config, validate.outputs["Output"], ingest.outputs["validation_data"], after=ingest)

    function = pipeline_function(ROLLOUT_KIND, spec, "Roll out a stored version: deploy, smoke-test, canary-promote or roll back.", body)
    return dsl.pipeline(
        name=f"{spec.name}-rollout" if spec else ROLLOUT,
        description="Roll out a stored model version: deploy as a dark candidate, smoke-test, canary-promote or roll back.",
    )(function)


def build_monitor_pipeline(image: str = DEFAULT_IMAGE, installation: Installation = Installation(), spec: ModelSpec | None = None):
    """Return the drift monitor pipeline, one model per run, hourly on a schedule: of the built-in model model_name names, or of ``spec``'s."""

    def body(p: dict) -> MonitorOutputs:
        wiring = Wiring(image, installation, MONITOR_KIND, spec or p["model_name"])
        config = wiring.validate(p).outputs["config"]
        monitor = wiring.side_effect(wiring.ops.monitor_drift(config=config), store=True, prometheus=True).set_display_name("Measure drift and decide")
        # No dsl.If on the decision: kfp.local cannot resolve a named output in a condition, so the step decides itself.
        wiring.side_effect(wiring.ops.trigger_retrain(
            config=config, decision=monitor.outputs["decision"], stable_version=monitor.outputs["stable_version"],
            reason=monitor.outputs["reason"], regime_start=monitor.outputs["regime_start"],
        ), store=True).set_display_name("Act on the decision")
        return MonitorOutputs(metrics=monitor.outputs["metrics"], report=monitor.outputs["report"], decision=monitor.outputs["decision"],
                              reason=monitor.outputs["reason"], regime_start=monitor.outputs["regime_start"])

    function = pipeline_function(MONITOR_KIND, spec, "Check one model for drift and start its retrain pipeline when needed; return the drift report and decision.",
                                 body, MonitorOutputs)
    return dsl.pipeline(
        name=f"{spec.name}-monitor" if spec else MONITOR,
        description="Measure drift of the live metrics from the stable version's profile; retrain (or report) when it crosses the thresholds.",
    )(function)


def pipeline_builders(spec: ModelSpec | None = None) -> dict[str, Callable]:
    """Return the pipelines to compile, by key, each a ``builder(image, installation)``: the built-in models' retrains with the shared
    rollout and monitor, or ``spec``'s own three."""
    if spec is None:
        retrains = {builtin.name: partial(build_retrain_pipeline, builtin) for builtin in builtin_specs()}
        return {**retrains, ROLLOUT: build_rollout_pipeline, MONITOR: build_monitor_pipeline}
    return {spec.name: partial(build_retrain_pipeline, spec), f"{spec.name}-rollout": partial(_for_spec, build_rollout_pipeline, spec),
            f"{spec.name}-monitor": partial(_for_spec, build_monitor_pipeline, spec)}


def _for_spec(builder: Callable, spec: ModelSpec, image: str = DEFAULT_IMAGE, installation: Installation = Installation()):
    """Return ``builder``'s pipeline for ``spec``'s model."""
    return builder(image, installation, spec)


BUILDERS = pipeline_builders()


def builder_for(pipeline_name: str, spec: ModelSpec | None = None) -> Callable:
    """Return the ``builder(image, installation)`` of ``pipeline_name``: a model's retrain, or ROLLOUT or MONITOR (``spec``'s own, or the
    shared ones for the built-in models)."""
    if pipeline_name in (ROLLOUT, MONITOR):
        builder = build_rollout_pipeline if pipeline_name == ROLLOUT else build_monitor_pipeline
        return builder if spec is None else partial(_for_spec, builder, spec)
    return partial(build_retrain_pipeline, spec if spec is not None else spec_for(pipeline_name))


HEADER_STRUCT_DEFAULT = re.compile(r"^(#    \w+: dict \[Default: )(\{.*\})(\])$")


def _stable_header(path: Path) -> None:
    """Rewrite the compiled file's header comment with each struct default's keys sorted (KFP prints them in protobuf map order,
    which changes from one process to the next), so that a compile is reproducible."""
    lines = path.read_text().split("\n")
    for number, line in enumerate(lines):
        if not line.startswith("#"):
            break
        match = HEADER_STRUCT_DEFAULT.match(line)
        if match:
            default = ast.literal_eval(match.group(2))
            lines[number] = f"{match.group(1)}{dict(sorted(default.items()))}{match.group(3)}"
    path.write_text("\n".join(lines))


def _write_adapted(compiled: Path, destination: Path, platform: Platform, store: str, s3_secret: str) -> None:
    """Write the kfp-compiled YAML at ``compiled`` to ``destination``, rewritten for ``platform`` and ``store``."""
    import yaml
    from google.protobuf import json_format
    from kfp.compiler.pipeline_spec_builder import write_pipeline_spec_to_file
    from kfp.pipeline_spec import pipeline_spec_pb2

    pipeline_doc, platform_doc = yaml.safe_load_all(compiled.read_text())
    pipeline_doc, platform_doc = adapt(pipeline_doc, platform_doc, platform, store, s3_secret)
    write_pipeline_spec_to_file(
        json_format.ParseDict(pipeline_doc, pipeline_spec_pb2.PipelineSpec()), pipeline_doc["pipelineInfo"].get("description"),
        json_format.ParseDict(platform_doc, pipeline_spec_pb2.PlatformSpec()), str(destination),
    )
    _stable_header(destination)


def compile_pipelines(
    output_dir: "str | Path", image: str = DEFAULT_IMAGE, platform: str = DEFAULT_PLATFORM, store: str = "pvc",
    installation: Installation = Installation(), spec: ModelSpec | None = None,
) -> list[Path]:
    """Compile every pipeline for ``platform``, ``store`` and the installation's PVC and Secrets to ``output_dir``; return the written YAML paths."""
    profile = platform_named(platform)
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as scratch:
        for name, builder in pipeline_builders(spec).items():
            path = directory / pipeline_file(name)
            if is_default_output(profile, store):
                compiler.Compiler().compile(builder(image, installation), str(path))
                _stable_header(path)
            else:
                compiled = Path(scratch) / pipeline_file(name)
                compiler.Compiler().compile(builder(image, installation), str(compiled))
                _write_adapted(compiled, path, profile, store, installation.s3_secret)
            written.append(path)
    return written


def compile_every_profile(output_dir: "str | Path", image: str = DEFAULT_IMAGE, installation: Installation = Installation(),
                          spec: ModelSpec | None = None) -> list[Path]:
    """Compile the default into ``output_dir`` and one folder per distinct profile output, named for its releases (the built-in
    models' pipelines, or ``spec``'s)."""
    directory = Path(output_dir)
    written = compile_pipelines(directory, image, installation=installation, spec=spec)
    seen: set[tuple] = set()
    for profile in PLATFORMS.values():
        for store in STORES:
            key = output_key(profile, store)
            if key in seen:
                continue
            seen.add(key)
            folder = directory / profile_folder(profile, store)
            folder.mkdir(parents=True, exist_ok=True)
            for name in map(pipeline_file, pipeline_builders(spec)):
                _write_adapted(directory / name, folder / name, profile, store, installation.s3_secret)
                written.append(folder / name)
    return written
