"""The model-spec verbs: ``models`` lists the known specs, ``spec check FILE`` validates one, ``engine-config`` prints
what the coordination engine reads to find the chosen models.
"""

from __future__ import annotations

import argparse
import json
import sys

from components.model.spec import (
    ESTIMATOR_ALLOWLIST,
    ModelSpec,
    SpecError,
    builtin_specs,
    check_estimator,
    engine_environment,
    engine_reading,
    known_spec_files,
    load_spec,
    spec_named,
)

INVALID = 2  # the exit code of a spec with problems


def _number(value: object) -> str:
    """Return a number or flag as a spec would write it (1e+06, 0.25, true)."""
    return json.dumps(value) if isinstance(value, bool) else f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _shape(spec: ModelSpec) -> str:
    """Return the model's inputs and outputs in a few words: ``5 x window-9 = 45 -> label -1/1``."""
    recipe = spec.features.name
    inputs = f"{len(spec.inputs)} {recipe}" if recipe == "raw" else f"{len(spec.inputs)} x {recipe} = {spec.n_features}"
    return f"{inputs} -> {spec.outputs.describe()}"


def spec_summary(spec: ModelSpec) -> list[str]:
    """Return the lines ``spec check`` prints: every setting with the type's defaults filled in, and how the engine reads it."""
    behaviour, estimator = spec.behaviour, spec.estimator
    steps = [f"{step.name}={step.class_path.rpartition('.')[2]}({', '.join(f'{key}={_number(value)}' for key, value in step.params.items())})"
             for step in estimator.steps]
    if estimator.training.get("impute_fallback"):
        steps.insert(0, "no_data=ColumnTransformer(SimpleImputer per fallback value)")
    outputs = spec.outputs
    if outputs.classes:
        described = ", ".join(f"{item.name}={item.value}" for item in outputs.classes)
        described += "; probabilities (the predictor runs with PREDICT_PROBA=true)" if outputs.probabilities else "; class labels"
        if outputs.alert:
            name = next(item.name for item in outputs.classes if item.value == outputs.alert.class_value)
            described += f"; alert when p({name}) > {outputs.alert.threshold:g}"
    elif outputs.values:
        described = ", ".join(f"{value.name} [{value.range[0]:g}, {value.range[1]:g}]" for value in outputs.values)
    else:
        described = ", ".join(f"{name} {value}" for name, value in outputs.labels.items())
    gates = [f"{gate.metric} {'>=' if gate.name.startswith('min_') else '<='} {gate.limit:g}" for gate in spec.gates.gates]
    drift = spec.drift
    lines = [
        f"{spec.source}: {spec.name} is a valid {spec.type} model ({behaviour.summary})",
        f"  inputs     {', '.join(f'{item.name} ({item.unit.spec_name} {item.bounds[0]:g}-{item.bounds[1]:g})' for item in spec.inputs)}",
        f"  features   {spec.features.name}: {len(spec.features.suffixes)} per input, {spec.n_features} per instance",
        f"  labels     {spec.labels.column if spec.labels else 'none'} ({behaviour.labels} for {spec.type} models)",
        f"  outputs    {described}",
        f"  estimator  {' -> '.join(steps)}: stock scikit-learn, loaded by the stock sklearn runtime",
        f"  training   {', '.join(f'{key}={_number(value)}' for key, value in estimator.training.items()) or 'no knobs'}",
        f"  metrics    {', '.join(behaviour.metrics)}",
        f"  gates      {', '.join(gates)}; champion: {spec.gates.champion_metric} within {spec.gates.champion_tolerance:g}",
        f"  smoke      {_probe(spec)}: {behaviour.smoke_expectation}",
        f"  canary     {spec.canary.compare}: {', '.join(f'{key} {value:g}' for key, value in spec.canary.limits.items())}",
        f"  drift      psi {drift.psi:g}, ks_excess {drift.ks_excess:g}, level_excess {drift.level_excess:g}, min_predictions "
        f"{drift.min_predictions}, {drift.live_factor_name} {drift.live_factor:g} ({behaviour.live_check}), cooldown_hours "
        f"{drift.cooldown_hours:g}, min_regime_hours {drift.min_regime_hours:g}, max_retrains_per_episode {drift.max_retrains_per_episode}",
    ]
    if spec.engine is None:
        return [*lines, "  engine     not registered (no engine section)"]
    reading = engine_reading(spec)
    name = spec.engine.environment_name(spec.name)
    namespace = spec.engine.namespace or "the engine's namespace"
    lines.append(f"  engine     KSERVE_{name}_SERVICE={spec.engine.service} in {namespace}")
    misread = ": a misread, accepted (see the warning)" if reading.misread else ""
    lines.append(f"  engine reads it with {reading.parser}: {reading.served} -> {reading.read_as}{misread}")
    return lines


def _probe(spec: ModelSpec) -> str:
    """Return the smoke probe in a few words."""
    if spec.smoke is None:
        return "no probe (validation rows only)"
    values = spec.smoke.per_input or spec.smoke.instance
    shown = "[" + ", ".join(f"{value:g}" for value in values) + "]" + (" per input" if spec.smoke.per_input else "")
    return shown + (", the engine's no-data fallback" if spec.smoke.engine_fallback else "")


def _print_problems(error: SpecError) -> None:
    """Print a spec's problems (or the message of one without a file) to stderr."""
    for line in error.problems or [f"error: {error}"]:
        print(line, file=sys.stderr)


def _check(args: argparse.Namespace) -> int:
    """Validate one spec file (schema, rules, estimator parameters); print its summary, or its problems and exit 2."""
    try:
        spec = load_spec(args.file)
        check_estimator(spec)
    except SpecError as error:
        _print_problems(error)
        return INVALID
    print("\n".join(spec_summary(spec)))
    if spec.engine is not None and spec.engine.accept_misread:
        print(f"warning: the engine's client misreads this model: {engine_reading(spec).misread}", file=sys.stderr)
        print(f"warning: accepted because: {spec.engine.accept_misread}", file=sys.stderr)
    return 0


def _models(args: argparse.Namespace) -> int:
    """Print the known specs (built-ins, then examples) as a table; a broken one is listed with its problems (exit 2)."""
    rows, broken = [], []
    for path in known_spec_files():
        try:
            spec = load_spec(path)
        except SpecError as error:
            broken.append(error)
            rows.append(("?", "?", "invalid: see `model-pipelines spec check`", str(path)))
            continue
        rows.append((spec.name, spec.type, _shape(spec), spec.source))
    print(f"{'name':<24} {'type':<15} {'inputs -> outputs':<44} file")
    for name, kind, shape, source in rows:
        print(f"{name:<24} {kind:<15} {shape:<44} {source}")
    for error in broken:
        _print_problems(error)
    return INVALID if broken else 0


def _engine_config(args: argparse.Namespace) -> int:
    """Print the engine's environment for the chosen specs (default: the built-ins); warnings go to stderr."""
    try:
        specs = [spec_named(reference) for reference in args.specs] if args.specs else list(builtin_specs())
    except SpecError as error:
        _print_problems(error)
        return INVALID
    lines, warnings = engine_environment(specs)
    print("\n".join(lines))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def add_spec_verbs(verbs: argparse._SubParsersAction) -> None:
    """Add the ``models``, ``spec check`` and ``engine-config`` verbs to the command line's verbs."""
    models_verb = verbs.add_parser("models", help="list the known model specs: the built-ins (models/) and the examples")
    models_verb.set_defaults(handler=_models)
    spec_verb = verbs.add_parser("spec", help="work with model spec files")
    spec_verbs = spec_verb.add_subparsers(dest="spec_verb", required=True)
    check_verb = spec_verbs.add_parser("check", help="validate a model spec and print it with the type's defaults; exit 2 naming each "
                                       "problem's line", epilog=f"estimator allowlist: {', '.join(ESTIMATOR_ALLOWLIST)}")
    check_verb.add_argument("file", help="the spec file, e.g. models/anomaly-detector.yaml")
    check_verb.set_defaults(handler=_check)
    engine_verb = verbs.add_parser("engine-config", help="print the coordination engine's environment for the chosen models: "
                                   "KSERVE_<NAME>_SERVICE/_MODEL (and KSERVE_NAMESPACE) and the KSERVE_MODEL_REGISTRY list (ADR-040)")
    engine_verb.add_argument("specs", nargs="*", metavar="SPEC", help="model names or spec files (default: the built-in models)")
    engine_verb.set_defaults(handler=_engine_config)
