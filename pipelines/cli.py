"""The model-pipelines command line: compile the pipelines, run them locally or on a cluster, manage local serving.

Verbs import kfp and the pipelines only when they compile or run one, so that serve and store answer at once.
"""

from __future__ import annotations

import argparse
import functools
import getpass
import json
import os
import shlex
import sys
import time
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from components.model.contract import ANOMALY_DETECTOR, MODEL_NAMES
from components.serving.local import local_target, state_dir
from components.store.s3 import DEFAULT_SECRET
from components.serving.target import ServingError
from components.store.filesystem import StoreError
from pipelines import kfp_remote
from pipelines.catalog import DEFAULT_IMAGE, MONITOR, PIPELINE_FILES, ROLLOUT, model_pipeline_key, pipeline_file, pipeline_name
from pipelines.platforms import DEFAULT_PLATFORM, STORES, Platform, compile_time_parameters, compiled_for, platform_named, profile_folder
from pipelines.spec_commands import add_spec_verbs

if TYPE_CHECKING:
    from components.model.spec import ModelSpec
    from pipelines.local import MonitorSummary, RunSummary

DEFAULT_STATE_DIR = state_dir()


def _profile(args: argparse.Namespace) -> tuple[Platform, str, str]:
    """Return the chosen platform, store and S3 Secret, defaults filled in; raise ValueError for an unknown platform."""
    return platform_named(args.platform or DEFAULT_PLATFORM), args.store or "pvc", args.s3_secret or DEFAULT_SECRET


def _profile_chosen(args: argparse.Namespace) -> bool:
    """Return whether --platform, --store or --s3-secret was given (rather than left to its default)."""
    return any(value is not None for value in (args.platform, args.store, args.s3_secret))


def _installation(args: argparse.Namespace):
    """Return the installation's PVC and Secret names the compile fixes (flags, else the defaults); raise ValueError for a bad name."""
    from components.kfp.config import Installation
    from components.kfp.run_parameters import installation_problems

    given = {name: getattr(args, name, None) for name in ("pvc_name", "s3_secret", "prometheus_secret", "gitops_secret", "registry_secret")}
    installation = Installation(**{name: value for name, value in given.items() if value is not None})
    problems = installation_problems(vars(installation))
    if problems:
        raise ValueError("; ".join(f"--{problem.replace('_', '-', 1)}" for problem in problems))
    return installation


def _describe_profile(platform: Platform, store: str) -> str:
    """Return how output names a compile profile: the platform, the store and the compiled/ folder with the same output."""
    return f"platform {platform.name}, store {store} (the {profile_folder(platform, store)} profile)"


def _compile(args: argparse.Namespace) -> int:
    """Compile every pipeline for one platform (or every profile) and print where they went; return the exit code.

    With --model, the model's own pipelines (retrain, rollout, monitor) go beside its spec, in ``compiled/``, for every profile
    unless --platform or --store picks one.
    """
    from pipelines.retrain import compile_every_profile, compile_pipelines

    try:
        spec = _model_spec(args)
        installation = _installation(args)
        platform, store, _ = _profile(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    home = Path(args.output_dir or (Path(spec.source).parent / "compiled" if spec is not None else "compiled"))
    if args.all_platforms or (spec is not None and not _profile_chosen(args)):
        if args.all_platforms and _profile_chosen(args):
            print("error: --all-platforms compiles every platform with both stores: drop --platform, --store and --s3-secret", file=sys.stderr)
            return 2
        print(f"compiling {spec.name if spec else 'the built-in models'}' pipelines for every platform profile into {home}/")
        paths = compile_every_profile(home, args.image, installation, spec)
    else:
        # A chosen profile goes to its own folder, as `compile --all-platforms` lays them out, never over the default files.
        output_dir = home / profile_folder(platform, store) if _profile_chosen(args) and not args.output_dir else home
        print(f"compiling for {_describe_profile(platform, store)} into {output_dir}/")
        paths = compile_pipelines(output_dir, args.image, platform.name, store, installation, spec)
    for path in paths:
        print(f"compiled {path}")
    return 0


def _parameters(args: argparse.Namespace) -> int:
    """Print a pipeline's run form (top-level parameters and groups with their keys and defaults; with --model, that model's own), or
    with --markdown the docs table; return 0 (2 for a bad --model)."""
    from components.kfp.config import parameter_descriptions, pipeline_parameters, run_form_markdown
    from pipelines.local import pipeline_kind

    if args.markdown:
        print(run_form_markdown())
        return 0
    try:
        spec, pipeline = _remote_pipeline(args) if args.model_spec else (None, args.pipeline or ANOMALY_DETECTOR)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    kind, model = pipeline_kind(pipeline, spec)
    descriptions = parameter_descriptions(kind, model)
    for name, default in pipeline_parameters(kind, model).items():
        print(f"{name} = {json.dumps(default)}\n    {descriptions[name]}")
    return 0


def _require_local(args: argparse.Namespace, verb: str, submissions: list[list[str]], upload: list[str]) -> bool:
    """Return whether --local was given; otherwise print the ``upload`` (its arguments) and ``submit`` commands that do the same on a
    cluster."""
    if not args.local:
        commands = [shlex.join(["model-pipelines", "submit", *submission, *(part for param in args.param for part in ("--param", param))])
                    for submission in submissions]
        print(f"error: `model-pipelines {verb}` runs on this machine, with --local. On a cluster, upload the pipeline once "
              f"(`{shlex.join(['model-pipelines', 'upload', *upload])} --platform <your release, e.g. rhoai-2.25>`), then:\n  "
              + "\n  ".join(commands), file=sys.stderr)
    return args.local


def _model_spec(args: argparse.Namespace):
    """Return the spec --model names (a spec file, or a known model's name), or None; raise ValueError (SpecError) naming the problem."""
    from components.model.spec import spec_named

    return spec_named(args.model_spec) if args.model_spec else None


def _local_models(args: argparse.Namespace, verb: str, submission: Callable[[list[str]], list[str]]) -> tuple | None:
    """Return (spec or None, models) a local verb acts on (--model's, else the positional choice, all: every built-in model), or None
    after printing why it cannot run: no model named, a bad spec, or no --local (then the ``submission`` that does it on a cluster,
    given the arguments that name a model: the model for run, model_name for the shared rollout and monitor, --model for a spec)."""
    try:
        spec = _model_spec(args)
        if spec is None and not args.model:
            raise ValueError("name a model (anomaly-detector, predictive-analytics or all), or a spec file with --model FILE")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return None
    if spec is not None:
        chosen = _require_local(args, verb, [submission(["--model", args.model_spec])], ["--model", args.model_spec])
        return (spec, [spec.name]) if chosen else None
    models = list(MODEL_NAMES) if args.model == "all" else [args.model]
    naming = (lambda model: [model]) if verb == "run" else (lambda model: ["--param", f"model_name={model}"])
    return (spec, models) if _require_local(args, verb, [submission(naming(model)) for model in models], ["all"]) else None


def _run(args: argparse.Namespace) -> int:
    """Run the chosen retraining pipelines locally, print progress and a summary; return the exit code (README)."""
    from pipelines.local import exit_code, local_defaults, params_per_model, parse_params, run_local

    chosen = _local_models(args, "run", lambda naming: naming)
    if chosen is None:
        return 2
    spec, models = chosen
    try:
        if spec is not None:
            arguments = {spec.name: parse_params([*local_defaults(spec.name, spec), *args.param], spec.name, spec)}
        else:
            arguments = params_per_model([*local_defaults(models[0]), *args.param], models)
        installation = _installation(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    state_dir = Path(args.state_dir)
    print(f"model store: {(state_dir / 'store').resolve()}  (change with --state-dir or MODEL_PIPELINES_HOME)")
    summaries = []
    for number, model in enumerate(models, start=1):
        print(f"==> [{number}/{len(models)}] {model}", flush=True)
        summaries.append(run_local(model, arguments[model], state_dir, verbose=args.verbose, installation=installation, spec=spec))
    print(format_summary(summaries, state_dir))
    return exit_code(summaries)


def _monitor(args: argparse.Namespace) -> int:
    """Check each chosen model for drift locally, print the drift table and decision; return the exit code (README)."""
    from pipelines.local import local_defaults, parse_params, retrain_arguments, run_config, run_monitor_local, worst_exit_code

    chosen = _local_models(args, "monitor", lambda naming: [MONITOR, *naming])
    if chosen is None:
        return 2
    spec, models = chosen
    try:
        arguments = parse_params([*local_defaults(MONITOR, spec), *args.param], MONITOR, spec)
        installation = _installation(args)
        for model in models:
            chosen = {} if spec is not None else {"model_name": model}
            retrain_arguments(model, run_config(MONITOR, {**arguments, **chosen}, spec=spec).monitor.retrain_parameters, spec=spec)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    state_dir = Path(args.state_dir)
    summaries = []
    for number, model in enumerate(models, start=1):
        print(f"==> [{number}/{len(models)}] drift check of {model}", flush=True)
        summary = run_monitor_local(model, arguments, state_dir, verbose=args.verbose, installation=installation, spec=spec)
        summaries.append(summary)
        print(format_monitor_summary(summary))
    code = worst_exit_code(summary.exit_code for summary in summaries)
    print(f"exit code {code}: {MONITOR_EXIT_MEANINGS[code]}")
    return code


def format_monitor_summary(summary: MonitorSummary) -> str:
    """Return a drift check's table of the most drifted features, its decision and where its report and log are."""
    if not summary.succeeded:
        return f"  {summary.model_name}: {summary.error}\n  log: {summary.log}"
    table = [line for line in Path(summary.report).read_text().splitlines() if line.startswith("|") and "---" not in line]
    lines = [f"  {line}" for line in table]
    lines.append(f"  decision: {summary.decision}: {summary.reason}")
    if summary.retrain is not None:
        lines.append(f"  retrain: {summary.retrain.version or '-'} {summary.retrain.outcome}")
    lines.append(f"  report:   {summary.report}")
    lines.append(f"  log:      {summary.log}")
    return "\n".join(lines)


def _rollout(args: argparse.Namespace) -> int:
    """Roll out a stored version locally (deploy, smoke-test, canary); return the exit code (README)."""
    from pipelines.local import check_stored_version, exit_code, local_defaults, open_run_store, parse_params, run_config, run_local

    chosen = _local_models(args, "rollout", lambda naming: [ROLLOUT, *naming, "--param", f"version={args.version}"])
    if chosen is None:
        return 2
    spec, (model,) = chosen
    state_dir = Path(args.state_dir)
    from components.kfp.workflow import registry_version
    from components.registry.client import RegistryError

    try:
        chosen = [] if spec is not None else [f"model_name={model}"]
        arguments = parse_params([*local_defaults(ROLLOUT, spec), *args.param, *chosen, f"version={args.version}"], ROLLOUT, spec)
        installation = _installation(args)
        config = run_config(ROLLOUT, arguments, installation, spec)
        store = open_run_store(config, state_dir)
        # A model-registry:// version is resolved here too (the pipeline's validate-parameters does it for a run started elsewhere),
        # so that a mismatch exits 2 before anything runs.
        config = registry_version(config, store)
        check_stored_version(store, model, config.version)
    except (ValueError, StoreError, RegistryError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.version = arguments["version"] = config.version
    print(f"==> {model} {args.version}: deploy -> smoke-test -> canary", flush=True)
    summary = run_local(model, arguments, state_dir, pipeline_name=ROLLOUT, verbose=args.verbose, installation=installation, spec=spec)
    print(format_summary([summary], state_dir))
    return exit_code([summary])


def _registry(args: argparse.Namespace) -> int:
    """Reconcile the store's index into the model registry (register missing versions, mirror every status); return the exit code."""
    from components.kfp.workflow import sync_registry
    from pipelines.local import local_defaults, open_run_store, parse_params, run_config

    models = list(MODEL_NAMES) if args.model in (None, "all") else [args.model]
    try:
        installation = _installation(args)
        configs = [run_config(ROLLOUT, parse_params([*local_defaults(ROLLOUT), *args.param, f"model_name={model}"], ROLLOUT), installation)
                   for model in models]
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not configs[0].registry.enabled:
        print("error: no registry to sync into: --param store.registry_url=https://<the registry's REST route> (token in $MODEL_REGISTRY_TOKEN)",
              file=sys.stderr)
        return 2
    code = 0
    for config in configs:
        try:
            line = sync_registry(config, open_run_store(config, Path(args.state_dir)))
        except StoreError as error:
            print(f"error: {error}", file=sys.stderr)
            code = 1
            continue
        code = code or (1 if " NOT in step" in line else 0)
    return code


def curl_line(url: str, model_name: str) -> str:
    """Return a curl command that asks the served model about a contract-valid instance: its spec's smoke probe."""
    from components.model.spec import spec_for

    spec = spec_for(model_name)
    body = json.dumps({"instances": [list(spec.smoke.instance) if spec.smoke else [0.0] * spec.n_features]})
    return f"curl -s -H 'Content-Type: application/json' {url}:predict -d {shlex.quote(body)}"


EXIT_MEANINGS = {0: "every candidate was promoted or needed no rollout", 3: "a candidate was rejected or held back by a gate",
                 1: "a run failed"}
MONITOR_EXIT_MEANINGS = {0: "no drift, or the retrain it started promoted its candidate or needed no rollout",
                         3: "drift found but no retrain started (action=report, cooldown, a running retrain, waiting for the new regime or "
                            "needs a human), or the retrain's "
                            "candidate was rejected or held back",
                         1: "a check or the retrain it started failed"}


def format_summary(summaries: list[RunSummary], state_dir: Path) -> str:
    """Return the end-of-run summary: per model what happened to the new version and why, its report, serving and paths."""
    from pipelines.local import HELD_BACK, exit_code

    lines = ["", "Summary"]
    for summary in summaries:
        lines.append(f"  {summary.model_name:<21} {summary.version or '-':<5} {summary.outcome}")
        keys = ("f1", "precision", "recall", "roc_auc") if "f1" in summary.metrics else ("mase_mean", "mase_cpu", "mase_memory")
        metrics = " ".join(f"{key}={summary.metrics[key]:.3f}" for key in keys if key in summary.metrics)
        decision = f"; {summary.decision}" if summary.decision and summary.kind != HELD_BACK else ""
        if metrics or decision:
            lines.append(f"      evaluate: {metrics or 'no metrics'}{decision}")
        if summary.report:
            lines.append(f"      report:   {summary.report}")
        if summary.registry:
            lines.append(f"      registry: {summary.registry}")
        serving = summary.serving
        if serving and serving.url:
            candidate = f", candidate {serving.candidate} at {serving.candidate_percent} %" if serving.candidate else ""
            lines.append(f"  {summary.model_name} serving: stable {serving.stable}{candidate} at {serving.url}")
        else:
            lines.append(f"  {summary.model_name} serving: nothing")
    locations = sorted({summary.store_location for summary in summaries if summary.store_location}) or [str((state_dir / "store").resolve())]
    lines.append(f"store:   {', '.join(map(str, locations))}")
    for summary in summaries:
        for uri in summary.storage_uris:
            lines.append(f"  {summary.model_name}: {uri}")
    logs = [summary.log for summary in summaries if summary.log]
    lines.append(f"logs:    {', '.join(logs) or '-'}  (--verbose prints them as they run)")
    served = [summary for summary in summaries if summary.serving and summary.serving.url]
    if served:
        lines.append("try:")
        lines += [f"  {curl_line(summary.serving.url, summary.model_name)}" for summary in served]
    code = exit_code(summaries)
    lines.append(f"exit code {code}: {EXIT_MEANINGS[code]}")
    return "\n".join(lines)


def _fleet_status(args: argparse.Namespace) -> int:
    """Print each wave's clusters with their Application's revision, sync and health, what the wave serves, and each model's last
    rollback with its reason (from the fleet repository's Reason trailer); return 0 or 1.
    """
    from components.serving.gitops.target import GitopsTarget
    from pipelines.local import parse_params, run_config

    try:
        config = run_config(ROLLOUT, parse_params(args.param, ROLLOUT))
        target = GitopsTarget(config.serving.kserve_options(), config.fleet.gitops_options())
        rows = {model: target.fleet_status(model) for model in MODEL_NAMES}
        reasons = {model: target.last_reason(model) for model in MODEL_NAMES}
    except (ValueError, ServingError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<22} {'wave':<14} {'cluster':<14} {'revision':<9} {'sync':<10} {'health':<12} {'stable':<8} {'candidate':<10} traffic")
    for model, model_rows in rows.items():
        for row in model_rows:
            traffic = f"{row['candidate_percent']}%" if row["candidate"] else "-"
            print(f"{model:<22} {str(row['wave']) + ' ' + row['labels']:<14} {row['cluster']:<14} {row['revision'] or '-':<9} {row['sync']:<10} "
                  f"{row['health']:<12} {row['stable'] or '-':<8} {row['candidate'] or '-':<10} {traffic}")
    for model, last in reasons.items():
        if last:
            print(f"{model}: last rollback {last['version']} in {last['revision']}: {last['reason']}")
    return 0


def _serve_status(args: argparse.Namespace) -> int:
    """Print the serving status of every model (local, or the fleet with --target gitops), as a table or as JSON; return 0."""
    if args.target == "gitops":
        return _fleet_status(args)
    target = local_target(Path(args.state_dir))
    statuses = {model: target.status(model) for model in sorted({*MODEL_NAMES, *target.served_models()})}  # the built-ins, and any other served here
    if args.json:
        print(json.dumps({model: status.as_json() for model, status in statuses.items() if status.url}, indent=2))
        return 0
    print(f"{'model':<22} {'stable':<8} {'candidate':<10} {'traffic':<8} {'processes':<28} url")
    for model, status in statuses.items():
        if not status.url:
            print(f"{model:<22} {'-':<8} {'-':<10} {'-':<8} {'not served':<28} -")
            continue
        health = ",".join(f"{role}={'up' if alive else 'DOWN'}" for role, alive in target.health(model).items())
        traffic = f"{status.candidate_percent}%" if status.candidate else "-"
        print(f"{model:<22} {status.stable or '-':<8} {status.candidate or '-':<10} {traffic:<8} {health:<28} {status.url}")
    return 0


APPROVAL_EXIT_MEANINGS = {0: "the decision is recorded; the held rollout acts on it at its next look", 1: "the decision could not be recorded",
                          2: "nothing recorded: the command line or the version named was wrong"}


def _user_name() -> str:
    """Return who runs this command (the login name), or "" when the system cannot say."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return ""


def _decide(args: argparse.Namespace, approved: bool) -> int:
    """Record an approval (or rejection) of the candidate a rollout holds, where the --target keeps decisions; return the exit code."""
    from components.registry.client import RegistryError
    from components.release.approval import ApprovalError, approval_source, decide
    from components.serving.gitops.repo import GitopsError
    from pipelines.local import parse_params, run_config

    from components.kfp.run_parameters import DNS_LABEL

    by = " ".join((args.by or _user_name()).split())
    if not by or len(by) > 100 or not by.isprintable():
        print(f"error: --by {args.by!r}: must be a name of 1-100 printable characters", file=sys.stderr)
        return 2
    if not DNS_LABEL.match(args.model):
        print(f"error: {args.model!r} is not a model name: lower-case letters, digits and '-' (e.g. anomaly-detector)", file=sys.stderr)
        return 2
    state = Path(args.state_dir)
    try:
        config = run_config(ROLLOUT, parse_params([*args.param, f"serving_target={args.target}"], ROLLOUT))
        if args.target == "local":
            target = local_target(state)
        elif args.target == "kserve":
            from components.serving.kserve import KServeTarget

            target = KServeTarget(config.serving.kserve_options())
        else:
            from components.serving.gitops.target import GitopsTarget

            target = GitopsTarget(config.serving.kserve_options(), config.fleet.gitops_options())
        registry = config.registry.client() if config.registry.enabled else None
        source = approval_source(args.target, target, state / "serving", registry)
        decision = decide(target, source, args.model, args.version, approved, by)
    except (ApprovalError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (ServingError, GitopsError, RegistryError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    verdict = f"{'approved' if decision.approved else 'rejected'} by {decision.by}"
    effect = "the held rollout promotes it" if decision.approved else "the held rollout rolls it back; stable keeps serving"
    print(f"\nSummary\n  {args.model:<21} {args.version:<5} {verdict}: {effect}\ndecision: {source.where.replace('<model>', args.model)}")
    print(f"exit code 0: {APPROVAL_EXIT_MEANINGS[0]}")
    return 0


def _serve_stop(args: argparse.Namespace) -> int:
    """Stop every local model server and router; return 0."""
    stopped = local_target(Path(args.state_dir)).stop_all()
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was being served")
    return 0


def _open_store(args: argparse.Namespace):
    """Return the store a ``store`` verb works on: the directory, or S3 from the data connection in the environment."""
    from components.store.s3 import S3Store, s3_client_from_environment
    from components.store.filesystem import FilesystemStore

    if args.store == "s3":
        client, bucket = s3_client_from_environment(args.s3_secret)
        return S3Store(client, bucket, args.s3_prefix)
    return FilesystemStore(args.store_dir)


def _store(args: argparse.Namespace) -> int:
    """List, verify or repair stored versions; return 1 when verify finds problems or the store cannot be read."""
    from components.store import integrity as store_integrity
    from components.store.filesystem import StoreError, version_number

    models = list(MODEL_NAMES) if args.model == "all" else [args.model]
    try:
        store = _open_store(args)
        if args.store_verb == "list":
            for model in models:
                index = store.read_index(model)
                print(f"{model}  (stable {index.get('stable') or '-'}, candidate {index.get('candidate') or '-'})  {store.location}")
                print(f"  {'version':<8} {'status':<11} {'sha256':<14} {'saved':<26} metrics")
                for version, entry in sorted(index["versions"].items(), key=lambda item: version_number(item[0])):
                    metrics = store.version_record(model, version).get("metrics", {})
                    shown = " ".join(f"{key}={value:.3f}" for key, value in list(metrics.items())[:4] if isinstance(value, (int, float)))
                    print(f"  {version:<8} {entry.get('status', '-'):<11} {entry.get('sha256', '')[:12]:<14} {entry.get('saved_at', ''):<26} {shown}")
            return 0
        if args.store_verb == "verify":
            problems = [problem for model in models for problem in store_integrity.verify(store, model)]
            for problem in problems:
                print(f"PROBLEM {problem}")
            print(f"{len(problems)} problem(s) in {store.location}" if problems else f"ok: every index, record and checksum in {store.location} agrees")
            return 1 if problems else 0
        for model in models:
            store_integrity.repair(store, model)
        return 0
    except StoreError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _remote(handler):
    """Wrap a remote verb: check its command line (exit 2), connect, run it, and turn RemoteError into exit code 1."""

    def run(args: argparse.Namespace) -> int:
        from pipelines.local import parse_params

        try:  # a bad command line is reported before any talk of the connection
            if getattr(args, "cron", None):
                kfp_remote.check_cron(args.cron)
            if hasattr(args, "pipeline"):
                args.spec, args.pipeline = _remote_pipeline(args)
            if hasattr(args, "platform"):
                _profile(args)
            if hasattr(args, "package"):
                _check_package(args)
            if hasattr(args, "param"):
                args.arguments = parse_params(args.param, args.pipeline, args.spec)
                _check_profile_parameters(args)
        except (kfp_remote.RemoteError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        try:
            connection = kfp_remote.resolve_connection(args.host, args.token, args.ca_cert, args.namespace)
            return handler(args, kfp_remote.connect(connection), connection)
        except (kfp_remote.RemoteError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1

    return run


def _remote_pipeline(args: argparse.Namespace) -> tuple[ModelSpec | None, str]:
    """Return (the --model spec or None, the pipeline a remote verb acts on); raise ValueError when neither names one.

    With --model the pipeline is that model's own: its retrain when none is named (upload: all three), model-rollout or
    model-monitor its rollout or monitor.
    """
    spec = _model_spec(args)
    if spec is None:
        if args.pipeline is None:
            raise ValueError("name a pipeline (anomaly-detector, predictive-analytics, model-rollout, model-monitor"
                             f"{', all' if args.verb == 'upload' else ''}), or a model spec file with --model FILE")
        return None, args.pipeline
    if args.pipeline in MODEL_NAMES:
        raise ValueError(f"--model {args.model_spec} names the model ({spec.name}), so drop {args.pipeline}: name no pipeline for its "
                         "retrain, or model-rollout or model-monitor for its own rollout or monitor")
    return spec, args.pipeline or ("all" if args.verb == "upload" else spec.name)


def _every_pipeline(args: argparse.Namespace) -> list[str]:
    """Return the CLI pipeline keys `upload all` uploads: the built-in models' retrains with the shared rollout and monitor, or with
    --model that model's retrain, rollout and monitor."""
    return [args.spec.name, ROLLOUT, MONITOR] if args.spec is not None else list(PIPELINE_FILES)


def _catalog_key(key: str, spec=None) -> str:
    """Return the catalog key of a CLI pipeline key: itself, or with --model the ``spec`` model's own pipeline it names."""
    return key if spec is None else model_pipeline_key(spec.name, key)


def _pipeline_name(key: str, spec=None) -> str:
    """Return the pipeline name on the server for a CLI pipeline key (``spec``'s own pipeline with --model)."""
    return pipeline_name(_catalog_key(key, spec))


def _check_package(args: argparse.Namespace) -> None:
    """Raise ValueError unless --package is one compiled pipeline, the one requested, given without the compile options."""
    if not args.package:
        return
    given = [option for option, value in (("--platform", args.platform), ("--store", args.store), ("--s3-secret", args.s3_secret),
                                          ("--image", args.image)) if value is not None]
    if given:
        raise ValueError(f"--package uploads a compiled file as it is, so it takes none of the compile options ({', '.join(given)}): "
                         "drop them, or drop --package")
    package = Path(args.package)
    declared = kfp_remote.package_pipeline_name(package)
    keys = _every_pipeline(args)
    declared_key = next((key for key in keys if _pipeline_name(key, args.spec) == declared), None)
    upload_as_itself = f"`{shlex.join(_upload_words(args, declared_key))} --package {package}`" if declared_key else ""
    if args.pipeline == "all":
        raise ValueError(f"--package is one pipeline ({package} is {declared!r}) and `upload all` is {len(keys)}: run "
                         f"`{shlex.join(_upload_words(args, 'all'))} --platform <your release>` to compile and upload all of them for "
                         f"your release, or upload each file with its own pipeline name{', e.g. ' + upload_as_itself if upload_as_itself else ''}")
    wanted = _pipeline_name(args.pipeline, args.spec)
    if declared != wanted:
        own_file = package.with_name(f"{wanted}.yaml")
        raise ValueError(f"{package} is pipeline {declared!r}, not {wanted!r} (what `{shlex.join(_upload_words(args, args.pipeline)[1:])}` "
                         f"uploads): pass {args.pipeline}'s own file{f' ({own_file})' if own_file.is_file() else ''}"
                         f"{', or upload this one as ' + upload_as_itself if upload_as_itself else ''}")


def _upload_words(args: argparse.Namespace, key: str) -> list[str]:
    """Return the words of the `model-pipelines upload` command for the CLI pipeline ``key`` (with --model, the model's own: its
    retrain needs no key)."""
    if args.spec is None:
        return ["model-pipelines", "upload", key]
    return ["model-pipelines", "upload", *([] if key == args.spec.name else [key]), "--model", args.model_spec]


def _check_profile_parameters(args: argparse.Namespace) -> None:
    """Raise ValueError if --param sets a run parameter that the chosen platform fixes at compile time."""
    if not _profile_chosen(args):
        return
    platform, store, _ = _profile(args)
    fixed = [name for name in args.arguments if name in compile_time_parameters(platform)]
    if fixed:
        raise ValueError(f"{platform.name} has no optional Secrets, so the compile fixes {', '.join(fixed)} (here for --store {store}): "
                         f"drop --param {fixed[0]}; for another store, run `{shlex.join(_upload_words(args, args.pipeline))} --platform {platform.name} "
                         "--store pvc|s3 [--s3-secret NAME]` and pass the same --store here")


def _expected_profile(args: argparse.Namespace) -> kfp_remote.ExpectedProfile | None:
    """Return the profile the newest uploaded version must be compiled for, when --platform, --store or --s3-secret is given."""
    if not _profile_chosen(args):
        return None
    platform, store, s3_secret = _profile(args)
    upload = [*_upload_words(args, args.pipeline), "--platform", platform.name, "--store", store]
    upload += ["--s3-secret", s3_secret] if args.s3_secret else []
    return kfp_remote.ExpectedProfile(compiled_for(platform, store, s3_secret), f"{platform.name} --store {store}", shlex.join(upload))


def _upload(args: argparse.Namespace, client, connection) -> int:
    """Upload the --package file as it is, or each chosen pipeline compiled now for --platform and --store; return 0."""
    if args.package:
        print(kfp_remote.upload(client, Path(args.package), _pipeline_name(args.pipeline, args.spec)))
        return 0
    from pipelines.retrain import compile_pipelines

    platform, store, _ = _profile(args)
    keys = _every_pipeline(args) if args.pipeline == "all" else [args.pipeline]
    with tempfile.TemporaryDirectory() as scratch:
        compile_pipelines(scratch, args.image or DEFAULT_IMAGE, platform.name, store, _installation(args), args.spec)
        default = "" if args.platform else ("; the default, upstream Kubeflow's (its model-registry labels), which needs OpenShift AI 3.0 or later: "
                                            "on OpenShift AI pass --platform rhoai-<your release>")
        print(f"compiled {f'{args.spec.name} ' if args.spec is not None else ''}for {_describe_profile(platform, store)}{default}")
        for key in map(functools.partial(_catalog_key, spec=args.spec), keys):
            print(kfp_remote.upload(client, Path(scratch) / pipeline_file(key), pipeline_name(key)))
    return 0


def _submit(args: argparse.Namespace, client, connection) -> int:
    """Start a run; with --wait, stream its state and return 0 only if it succeeded."""
    run = kfp_remote.submit(client, _pipeline_name(args.pipeline, args.spec), args.arguments, args.experiment, connection.host, args.run_name,
                            _expected_profile(args))
    print(f"run {run.run_id} started in experiment {args.experiment!r}")
    if not args.wait:
        return 0
    state = kfp_remote.wait(client, run.run_id, args.timeout, lambda state: print(f"  {time.strftime('%H:%M:%S')} {state}", flush=True),
                            poll_s=args.poll)
    print(f"run {run.run_id}: {state}")
    return 0 if state == "SUCCEEDED" else 1


def _schedule(args: argparse.Namespace, client, connection) -> int:
    """Create, list, enable, disable or delete recurring runs; return 0."""
    if args.schedule_verb == "create":
        name = args.name or f"{_pipeline_name(args.pipeline, args.spec)}-schedule"
        schedule = kfp_remote.create_schedule(client, _pipeline_name(args.pipeline, args.spec), name, args.cron, args.arguments,
                                              args.experiment, connection.host, args.max_concurrency, _expected_profile(args))
        print(f"schedule {name} ({schedule.recurring_run_id}) created: cron {args.cron!r}, max concurrency {args.max_concurrency}, no catch-up")
    elif args.schedule_verb == "list":
        print(f"{'name':<40} {'status':<10} {'cron':<18} id")
        for schedule in kfp_remote.list_schedules(client):
            cron = schedule.trigger.cron_schedule.cron if schedule.trigger and schedule.trigger.cron_schedule else "-"
            print(f"{schedule.display_name:<40} {str(schedule.status):<10} {cron:<18} {schedule.recurring_run_id}")
    else:
        schedule = kfp_remote.find_schedule(client, args.schedule)
        {"enable": client.enable_recurring_run, "disable": client.disable_recurring_run, "delete": client.delete_recurring_run}[args.schedule_verb](
            schedule.recurring_run_id)
        print(f"schedule {schedule.display_name} ({schedule.recurring_run_id}): {args.schedule_verb}d")
    return 0


def _add_connection_options(verb: argparse.ArgumentParser) -> None:
    """Add the KFP connection options every remote verb takes."""
    verb.add_argument("--host", help="KFP API URL, e.g. the DSP route (default: $KF_PIPELINES_ENDPOINT)")
    verb.add_argument("--token", help="bearer token; prefer $KF_PIPELINES_TOKEN, because a flag's value is visible to other users "
                      "in the process list and stays in the shell history (default: $KF_PIPELINES_TOKEN, else the service-account "
                      "token); never printed")
    verb.add_argument("--ca-cert", help="CA bundle for the route's TLS certificate")
    verb.add_argument("--namespace", help="the data science project (namespace) of a multi-user server")


def _add_platform_options(verb: argparse.ArgumentParser, purpose: str, compiles: bool) -> None:
    """Add the compile profile options (--platform, --store, --s3-secret) to a verb; ``purpose`` says what the profile is for."""
    defaults = (DEFAULT_PLATFORM, "pvc", DEFAULT_SECRET) if compiles else ("no check",) * 3
    verb.add_argument("--platform", help=f"OpenShift AI release (rhoai-2.16 ... rhoai-3.5) or KFP backend (kfp-2.2 ... kfp-2.16) {purpose} "
                      f"(default: {defaults[0]})")
    verb.add_argument("--store", choices=STORES, help="model store; before OpenShift AI 3.0 it is fixed at compile time, from 3.0 on "
                      f"it sets model_store's default (default: {defaults[1]})")
    verb.add_argument("--s3-secret", help=f"the data connection Secret (S3 store) the pods read (default: {defaults[2]})")
    if compiles:
        _add_installation_options(verb)


def _add_installation_options(verb: argparse.ArgumentParser) -> None:
    """Add the installation's PVC and Secret names other than --s3-secret (fixed when the pipelines are compiled)."""
    from components.kfp.config import Installation

    installed = Installation()
    verb.add_argument("--pvc-name", help=f"the store's PersistentVolumeClaim the pods mount (default: {installed.pvc_name})")
    verb.add_argument("--prometheus-secret", help=f"the Secret whose key token holds the Prometheus bearer token; absent: the "
                      f"service-account token (default: {installed.prometheus_secret})")
    verb.add_argument("--gitops-secret", help=f"the Secret with the fleet repository's token, or ssh-privatekey and known_hosts "
                      f"(default: {installed.gitops_secret})")
    verb.add_argument("--registry-secret", help=f"the Secret whose key token holds the model registry's bearer token; absent: the "
                      f"service-account token (default: {installed.registry_secret})")


def _add_model_option(verb: argparse.ArgumentParser) -> None:
    """Add --model, a model spec file (or a known model's name), to a verb."""
    verb.add_argument("--model", dest="model_spec", metavar="SPEC", help="a model spec file, e.g. examples/<model>/model.yaml (`model-pipelines "
                      "models` lists the known ones): that model's own pipelines")


def _version_name(text: str) -> str:
    """Return the stored version name --version means: v7 as given, a bare number such as 7 as v7, a model-registry:// URI as given."""
    return f"v{text}" if text.isdigit() else text


def _add_local_options(verb: argparse.ArgumentParser, per_model: bool = False) -> None:
    """Add --local, --param and --state-dir to a verb that runs a pipeline (``per_model``: one that runs several models)."""
    verb.add_argument("--local", action="store_true", help="run on this machine with kfp.local (no cluster)")
    verb.add_argument("--param", action="append", default=[], metavar="K=V",
                      help="set a pipeline parameter; repeatable" + ("; <model>.K=V sets it for one model only (with all)" if per_model else ""))
    verb.add_argument("--verbose", action="store_true", help="print every step's log as it runs (it always goes to the run's log file)")
    verb.add_argument("--s3-secret", help="the data connection Secret named in the run's store records (default: model-storage-config)")
    _add_installation_options(verb)
    _add_state_dir(verb)


def _add_state_dir(verb: argparse.ArgumentParser) -> None:
    """Add --state-dir to a verb."""
    verb.add_argument(
        "--state-dir", default=str(DEFAULT_STATE_DIR), help=f"local store, serving state and run outputs (default: {DEFAULT_STATE_DIR})"
    )


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for every verb."""
    parser = argparse.ArgumentParser(prog="model-pipelines", description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)

    compile_verb = verbs.add_parser("compile", help="compile the pipelines to YAML for Data Science Pipelines")
    compile_verb.add_argument("--output-dir", help="directory for the YAML files (default: compiled/<profile folder> when --platform or "
                              "--store is given, else compiled, whose top-level files are the default)")
    compile_verb.add_argument("--image", default=DEFAULT_IMAGE, help=f"component image (default: {DEFAULT_IMAGE})")
    _add_platform_options(compile_verb, "to compile for", compiles=True)
    compile_verb.add_argument("--all-platforms", action="store_true",
                              help="write the default and one folder per distinct platform output (what compiled/ holds)")
    _add_model_option(compile_verb)
    compile_verb.set_defaults(handler=_compile)

    parameters_verb = verbs.add_parser("parameters", help="show a pipeline's run form: its parameters, groups, keys and defaults")
    parameters_verb.add_argument("pipeline", nargs="?", choices=list(PIPELINE_FILES), help=f"default {ANOMALY_DETECTOR}; with --model: none (the "
                                 "model's retrain), model-rollout or model-monitor (its own)")
    _add_model_option(parameters_verb)
    parameters_verb.add_argument("--markdown", action="store_true", help="print every knob of every pipeline as the docs' table")
    parameters_verb.set_defaults(handler=_parameters)

    run_verb = verbs.add_parser("run", help="run a retraining pipeline: train, evaluate, save, deploy, smoke-test, canary")
    run_verb.add_argument("model", nargs="?", choices=[*MODEL_NAMES, "all"])
    _add_model_option(run_verb)
    _add_local_options(run_verb, per_model=True)
    run_verb.set_defaults(handler=_run)

    rollout_verb = verbs.add_parser("rollout", help="roll out a version already in the store: deploy, smoke-test, canary")
    rollout_verb.add_argument("model", nargs="?", choices=MODEL_NAMES)
    _add_model_option(rollout_verb)
    rollout_verb.add_argument("--version", required=True, type=_version_name, help="the stored version, e.g. v3 (3 means v3)")
    _add_local_options(rollout_verb)
    rollout_verb.set_defaults(handler=_rollout)

    monitor_verb = verbs.add_parser("monitor", help="check models for drift against their stable version's profile; retrain on drift "
                                    "with --param action=submit")
    monitor_verb.add_argument("model", nargs="?", choices=[*MODEL_NAMES, "all"])
    _add_model_option(monitor_verb)
    _add_local_options(monitor_verb)
    monitor_verb.set_defaults(handler=_monitor)

    pipelines = [*MODEL_NAMES, ROLLOUT, MONITOR]
    upload_verb = verbs.add_parser("upload", help="upload a pipeline, or a new version of it, to a KFP server (by name)")
    upload_verb.add_argument("pipeline", nargs="?", choices=[*pipelines, "all"], help="the pipeline to upload, or all; with --model: none or "
                             "all (the model's three), model-rollout or model-monitor (its own)")
    _add_model_option(upload_verb)
    upload_verb.add_argument("--image", help=f"component image to compile with (default: {DEFAULT_IMAGE})")
    _add_platform_options(upload_verb, "to compile for", compiles=True)
    upload_verb.add_argument("--package", help="upload this compiled YAML (one pipeline, e.g. compiled/rhoai-2.20-2.25-pvc/model-rollout.yaml) "
                             "as it is, instead of compiling")
    _add_connection_options(upload_verb)
    upload_verb.set_defaults(handler=_remote(_upload))

    submit_verb = verbs.add_parser("submit", help="start a run of an uploaded pipeline")
    submit_verb.add_argument("pipeline", nargs="?", choices=pipelines, help="the uploaded pipeline to run; with --model: none (the model's "
                             "retrain), model-rollout or model-monitor (its own)")
    _add_model_option(submit_verb)
    submit_verb.add_argument("--param", action="append", default=[], metavar="K=V", help="set a pipeline parameter; repeatable")
    submit_verb.add_argument("--experiment", default="self-healing-models", help="experiment name (created if missing)")
    submit_verb.add_argument("--run-name", help="run name (default: pipeline name and time)")
    submit_verb.add_argument("--wait", action="store_true", help="stream the run's state and exit non-zero unless it succeeds")
    submit_verb.add_argument("--timeout", type=float, default=6 * 3600, help="seconds to wait with --wait")
    submit_verb.add_argument("--poll", type=float, default=5.0, help="seconds between status checks with --wait")
    _add_platform_options(submit_verb, "the uploaded pipeline must be compiled for; --param is checked against it too", compiles=False)
    _add_connection_options(submit_verb)
    submit_verb.set_defaults(handler=_remote(_submit))

    schedule_verb = verbs.add_parser("schedule", help="manage recurring runs")
    schedule_verbs = schedule_verb.add_subparsers(dest="schedule_verb", required=True)
    create_verb = schedule_verbs.add_parser("create", help="create a recurring run (6-field cron, seconds first)")
    create_verb.add_argument("pipeline", nargs="?", choices=pipelines, help="the uploaded pipeline to run; with --model: none (the model's "
                             "retrain), model-rollout or model-monitor (its own)")
    _add_model_option(create_verb)
    create_verb.add_argument("--cron", required=True, help="6 fields, seconds first, e.g. '0 0 2 * * 0' (Sundays 02:00)")
    create_verb.add_argument("--name", help="schedule name (default: <pipeline>-schedule)")
    create_verb.add_argument("--param", action="append", default=[], metavar="K=V")
    create_verb.add_argument("--experiment", default="self-healing-models")
    create_verb.add_argument("--max-concurrency", type=int, default=1)
    _add_platform_options(create_verb, "the uploaded pipeline must be compiled for; --param is checked against it too", compiles=False)
    for verb_name in ("list", "enable", "disable", "delete"):
        verb = schedule_verbs.add_parser(verb_name, help=f"{verb_name} recurring runs")
        if verb_name != "list":
            verb.add_argument("schedule", help="schedule name or id")
        _add_connection_options(verb)
    _add_connection_options(create_verb)
    schedule_verb.set_defaults(handler=_remote(_schedule))

    store_verb = verbs.add_parser("store", help="list, verify or repair the stored model versions")
    store_verbs = store_verb.add_subparsers(dest="store_verb", required=True)
    for verb_name, verb_help in (("list", "show versions, status, sha256 and metrics"),
                                 ("verify", "check every index, record and checksum; exit 1 naming each problem"),
                                 ("repair", "restore the index (its last good copy if damaged); quarantine versions it does not list or that do not match it (deletes nothing)")):
        verb = store_verbs.add_parser(verb_name, help=verb_help)
        verb.add_argument("model", nargs="?", default="all", choices=[*MODEL_NAMES, "all"])
        verb.add_argument("--store-dir", default=str(DEFAULT_STATE_DIR / "store"), help=f"filesystem store root (default: {DEFAULT_STATE_DIR / 'store'}; /mnt/models in a pod)")
        verb.add_argument("--store", choices=STORES, default="pvc", help="pvc (a directory) or s3 (the data connection's AWS_* environment)")
        verb.add_argument("--s3-prefix", default="models")
        verb.add_argument("--s3-secret", default=DEFAULT_SECRET, help="the data connection's name, for messages")
        verb.set_defaults(handler=_store)

    registry_verb = verbs.add_parser("registry", help="the model registry: reconcile the store's versions into it")
    registry_verbs = registry_verb.add_subparsers(dest="registry_verb", required=True)
    sync_verb = registry_verbs.add_parser("sync", help="register every stored version missing from the registry and mirror each version's "
                                          "status (idempotent; backfills versions stored before the registry was configured)")
    sync_verb.add_argument("model", nargs="?", default="all", choices=[*MODEL_NAMES, "all"])
    sync_verb.add_argument("--param", action="append", default=[], metavar="K=V",
                           help="store.registry_url (required), store.registry_ca_bundle, model_store, store.s3_prefix ...; the token comes "
                                "from $MODEL_REGISTRY_TOKEN (or the service account)")
    sync_verb.add_argument("--s3-secret", help="the data connection Secret (S3 store), named as the artifacts' storageKey")
    _add_installation_options(sync_verb)
    _add_state_dir(sync_verb)
    sync_verb.set_defaults(handler=_registry)

    serve_verb = verbs.add_parser("serve", help="inspect or stop local serving")
    serve_verbs = serve_verb.add_subparsers(dest="serve_verb", required=True)
    status_verb = serve_verbs.add_parser("status", help="show what serves each model")
    status_verb.add_argument("--json", action="store_true", help="print JSON")
    status_verb.add_argument("--target", choices=("local", "gitops"), default="local",
                             help="local: this machine's servers; gitops: each wave's spoke clusters, read from the hub and the fleet repository")
    status_verb.add_argument("--param", action="append", default=[], metavar="K=V",
                             help="with --target gitops: gitops_repo, gitops_branch, gitops_path, fleet_waves, endpoint, namespace, rollout_strategy")
    _add_state_dir(status_verb)
    status_verb.set_defaults(handler=_serve_status)
    stop_verb = serve_verbs.add_parser("stop", help="stop every local model server and router")
    _add_state_dir(stop_verb)
    stop_verb.set_defaults(handler=_serve_stop)
    for verb_name, approved in (("approve", True), ("reject", False)):
        decide_verb = verbs.add_parser(verb_name, help=f"{verb_name} the candidate a rollout with canary.approval=before-promote holds: "
                                       + ("it is promoted" if approved else "it is rolled back"))
        decide_verb.add_argument("model", help="the model, e.g. anomaly-detector")
        decide_verb.add_argument("version", type=_version_name, help="the held candidate's version, e.g. v3 (3 means v3)")
        decide_verb.add_argument("--target", choices=("local", "kserve", "gitops"), default="local",
                                 help="where the rollout serves: local (this machine's state dir), kserve (annotations on the InferenceService, "
                                      "through KUBECONFIG) or gitops (approvals/<model>.yaml in the fleet repository)")
        decide_verb.add_argument("--param", action="append", default=[], metavar="K=V",
                                 help="the rollout's settings: namespace (kserve), gitops_repo, gitops_branch, gitops_path, fleet_waves, endpoint "
                                      "(gitops); with a model registry, store.registry_url and store.registry_ca_bundle: the decision is then the "
                                      "version's custom property approved there (token in $MODEL_REGISTRY_TOKEN)")
        decide_verb.add_argument("--by", help="who decides, recorded with the decision (default: your user name)")
        _add_state_dir(decide_verb)
        decide_verb.set_defaults(handler=functools.partial(_decide, approved=approved))
    add_spec_verbs(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except BrokenPipeError:  # the reader stopped (`| head`): no traceback; stdout goes nowhere from here on, as Python's docs do it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1  # the verb did not finish (a run stops where its output could not be written)


if __name__ == "__main__":
    sys.exit(main())
