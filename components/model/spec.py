"""A model is a spec: the ModelSpec file, its types, the checks its JSON Schema cannot make, and where specs are found.

A spec (YAML, ``apiVersion: model-pipelines.io/v1alpha1``, ``kind: ModelSpec``) names a model and its ADR-040 type,
its inputs (unit, bounds, PromQL), feature recipe, outputs, a stock scikit-learn estimator from ``ESTIMATOR_ALLOWLIST``,
and its gates, smoke probe, canary comparison, drift settings and coordination-engine registration. The type brings
the behaviour and the defaults (``TYPE_BEHAVIOUR``), so a spec states only what differs. ``load_spec`` validates a
file against ``models/modelspec.schema.json`` and then against the rules here; every error reads
``FILE:LINE: <json path>: <problem>; <fix>``.

The built-in specs are ``models/*.yaml``. ``builtin_specs`` is a link to that folder inside the package, so a checkout,
an editable install, a wheel and the image (which copies ``models/``) all find them; ``examples/*/model.yaml`` of a
checkout are known too. Nothing here imports numpy or scikit-learn until an estimator is built.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Mapping

# The spec's parts and the type table are defined in spec_types and spec_yaml; importers take them from here.
from components.model.spec_types import (
    ANOMALY,
    CANARY_LIMITS,
    CHAMPION_TOLERANCE,
    CLASSIFICATION,
    COMMON_GATES,
    DRIFT_DEFAULTS,
    ENGINE_ANOMALY_NAME,
    ENGINE_FORECAST_NAME,
    ESTIMATOR_ALLOWLIST,
    FEATURE_RECIPES,
    LIVE_FACTOR_DEFAULT,
    LINEAR_REGRESSORS,
    PREDICTIVE,
    RAW,
    RESERVED_COLUMNS,
    SPEC_UNITS,
    TRANSFORM,
    TYPE_BEHAVIOUR,
    WINDOW_9,
    Alert,
    CanaryComparison,
    DriftSettings,
    EngineRegistration,
    Estimator,
    EstimatorStep,
    FeatureRecipe,
    Gates,
    Input,
    Labels,
    ModelSpec,
    OutputClass,
    Outputs,
    OutputValue,
    SmokeProbe,
    TypeBehaviour,
)
from components.model.spec_yaml import Document, Problem, SpecError, parse_document, read_document, schema_problems
from components.model.units import UNIT_LIMITS

BUILTIN_DIR = Path(__file__).with_name("builtin_specs")  # a link to the checkout's models/, a copy in a wheel
SCHEMA_FILE = BUILTIN_DIR / "modelspec.schema.json"
EXAMPLE_SPEC = "model.yaml"


# --- loading -----------------------------------------------------------------------------------------------------


def load_spec(path: str | Path) -> ModelSpec:
    """Return the validated spec in the file ``path``; raise SpecError listing every problem as FILE:LINE: path: problem; fix."""
    return _load(Path(path), against_schema=True)


def spec_from_text(text: str, source: str) -> ModelSpec:
    """Return the validated spec in ``text``, a spec file's content (e.g. carried by a compiled pipeline); errors name ``source``.

    Text has no folder, so ``data.file`` is not looked for (``ModelSpec.data_file`` is None).
    """
    return _checked(parse_document(text.encode(), source), None, against_schema=True)


def spec_from_checked_text(text: str, source: str) -> ModelSpec:
    """Return the spec in ``text`` that already passed the JSON Schema (a run's configuration), checked by the rules here alone."""
    return _checked(parse_document(text.encode(), source), None, against_schema=False)


def _load(path: Path, against_schema: bool) -> ModelSpec:
    """Return the spec in the file ``path``, checked by the rules here and, when ``against_schema``, first by the JSON Schema."""
    return _checked(read_document(path, _display(path)), path.parent, against_schema)


def _checked(document: Document, folder: Path | None, against_schema: bool) -> ModelSpec:
    """Return the spec of ``document`` (read from ``folder``), checked by the rules here and optionally first by the schema."""
    problems = schema_problems(document, SCHEMA_FILE) if against_schema else []
    if problems:
        raise SpecError(problems=problems)
    checks = _Checks(document)
    try:
        spec = _build(document.value, checks, folder)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        if against_schema:
            raise
        return _checked(document, folder, against_schema=True)  # a built-in broken beyond the rules: the schema names where
    checks.raise_any()
    reading = engine_reading(spec)
    if spec.engine is not None:
        if reading.misread and not spec.engine.accept_misread:
            checks.add("$.outputs.probabilities" if spec.outputs.probabilities else f"$.outputs.{spec.behaviour.outputs}",
                       f"the coordination engine would misread this output: {reading.misread}",
                       "serve what it reads, or state why that is fine in engine.accept_misread (spec check then warns and prints it)")
        elif spec.engine.accept_misread and not reading.misread:
            checks.add("$.engine.accept_misread", f"the engine reads this output as it is meant ({reading.read_as})", "remove accept_misread")
    checks.raise_any()
    return spec


@cache
def builtin_specs() -> tuple[ModelSpec, ...]:
    """Return the built-in specs (``models/*.yaml``), by file name.

    Every process that imports the contract reads them, so the JSON Schema check (importing jsonschema costs 60 ms) is
    left to the tests and ``spec check``, which hold the built-ins to it; the rules here still apply.
    """
    return tuple(_load(path, against_schema=False) for path in sorted(BUILTIN_DIR.resolve().glob("*.yaml")))


def example_spec_files() -> list[Path]:
    """Return the example specs of a checkout (``examples/*/model.yaml`` beside ``models/``); none in an installed wheel."""
    models = BUILTIN_DIR.resolve()
    return sorted((models.parent / "examples").glob(f"*/{EXAMPLE_SPEC}")) if models.name == "models" else []


def known_spec_files() -> list[Path]:
    """Return the files of every known spec: the built-ins, then the examples."""
    return [*sorted(BUILTIN_DIR.resolve().glob("*.yaml")), *example_spec_files()]


def known_specs() -> tuple[ModelSpec, ...]:
    """Return every known spec (built-ins, then examples); raise SpecError for a broken one or a name used twice."""
    specs = (*builtin_specs(), *(load_spec(path) for path in example_spec_files()))
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.name in seen:
            raise SpecError(problems=[spec.problem("$.name", f"the name {spec.name!r} is already used by {seen[spec.name]}", "rename one")])
        seen[spec.name] = spec.source
    return specs


def spec_named(reference: str) -> ModelSpec:
    """Return the spec a run names: a path (with '/' or ending .yaml/.yml) is loaded, a name is looked up among the known specs."""
    if "/" in reference or reference.endswith((".yaml", ".yml")):
        return load_spec(reference)
    for spec in builtin_specs():
        if spec.name == reference:
            return spec
    for path in example_spec_files():
        spec = load_spec(path)
        if spec.name == reference:
            return spec
    names = [spec.name for spec in builtin_specs()] + [path.parent.name for path in example_spec_files()]
    raise SpecError(f"no known model is called {reference!r}: use one of {', '.join(names)}, or the path of a spec file")


_IN_USE: dict[str, ModelSpec] = {}


def use_spec(spec: ModelSpec) -> ModelSpec:
    """Make ``spec`` the one ``spec_for`` returns for its name in this process (a step reads it from the run's configuration,
    the model server from the version it serves), so a model that is neither built in nor an example works in a pod; return it."""
    _IN_USE[spec.name] = spec
    return spec


def spec_for(model_name: str) -> ModelSpec:
    """Return the spec of ``model_name``: the one this process uses (``use_spec``), else a built-in or an example's."""
    return _IN_USE.get(model_name) or spec_named(model_name)


def _display(path: Path) -> str:
    """Return ``path`` as messages name it: relative to the working directory when inside it, else absolute."""
    resolved = path.resolve()
    try:
        return str(resolved.relative_to(Path.cwd()))
    except ValueError:
        return str(path) if not path.is_absolute() else str(resolved)


# --- the rules the schema cannot express -------------------------------------------------------------------------


class _Checks:
    """Collects problems found while building a spec from its document."""

    def __init__(self, document: Document) -> None:
        self.document = document
        self.problems: list[Problem] = []

    def add(self, path: str, problem: str, fix: str) -> None:
        """Record a problem at ``path``."""
        self.problems.append(self.document.problem(path, problem, fix))

    def raise_any(self) -> None:
        """Raise SpecError with every recorded problem, in file order, if there is one."""
        if self.problems:
            raise SpecError(problems=sorted(self.problems, key=lambda problem: (problem.line, problem.path)))

    def own_keys(self, section: Mapping, path: str, allowed: Iterable[str], kind: str, what: str) -> None:
        """Record each key of ``section`` that is not among the ``allowed`` ones of type ``kind``."""
        allowed = list(allowed)
        for key in section:
            if key not in allowed:
                self.add(f"{path}.{key}", f"{key} is not a {what} of {kind} models",
                         f"remove it; {kind} models take {', '.join(allowed) if allowed else 'none'}")


def _interval(values: list) -> tuple[float, float]:
    """Return a [low, high] list as a float pair."""
    return float(values[0]), float(values[1])


def _build(doc: dict, checks: _Checks, folder: Path | None) -> ModelSpec:
    """Return the spec of a schema-valid document read from ``folder``, recording every rule it breaks in ``checks``."""
    kind = doc["type"]
    behaviour = TYPE_BEHAVIOUR[kind]
    inputs = tuple(_input(item, f"$.inputs[{index}]", checks) for index, item in enumerate(doc["inputs"]))
    _unique([item.name for item in inputs], "$.inputs[{}].name", "input", checks)
    recipe = FeatureRecipe(doc["features"]["recipe"])
    labels = _labels(doc.get("labels"), behaviour, kind, inputs, checks)
    outputs = _outputs(doc["outputs"], behaviour, kind, inputs, checks)
    estimator = _estimator(doc["estimator"], behaviour, kind, checks)
    gates_doc = doc.get("gates", {})
    rules = (*behaviour.gates, *COMMON_GATES)
    checks.own_keys({key: value for key, value in gates_doc.items() if key != "champion_tolerance"}, "$.gates",
                    [rule.name for rule in rules], kind, "gate")
    gates = Gates(tuple(replace(rule, limit=float(gates_doc.get(rule.name, rule.limit))) for rule in rules),
                  behaviour.champion_metric, float(gates_doc.get("champion_tolerance", CHAMPION_TOLERANCE)))
    smoke = _smoke(doc.get("smoke"), kind, inputs, recipe, checks)
    if estimator.training.get("impute_fallback") and not (smoke and smoke.engine_fallback and smoke.per_input):
        checks.add("$.estimator.training.impute_fallback", "the no-data imputer replaces the engine's fallback values, and the spec gives none",
                   "give smoke.probe_per_input with engine_fallback: true, or remove impute_fallback")
    canary = _canary(doc.get("canary", {}), behaviour, kind, outputs, checks)
    drift_doc = doc.get("drift", {})
    checks.own_keys(drift_doc, "$.drift", [*DRIFT_DEFAULTS, behaviour.live_factor], kind, "drift setting")
    drift = DriftSettings(**{key: type(default)(drift_doc.get(key, default)) for key, default in DRIFT_DEFAULTS.items()},
                          live_factor_name=behaviour.live_factor, live_factor=float(drift_doc.get(behaviour.live_factor, LIVE_FACTOR_DEFAULT)))
    engine = None
    if "engine" in doc:
        section = doc["engine"]
        engine = EngineRegistration(section.get("service", f"{doc['name']}-predictor"), section.get("namespace", ""),
                                    section.get("description", doc.get("description", "")), section.get("accept_misread", ""))
    data_file = None
    if folder is not None and "file" in doc.get("data", {}):
        data_file = folder / doc["data"]["file"]
        if not data_file.is_file():
            checks.add("$.data.file", f"{doc['data']['file']} does not exist beside the spec", "create it (an example's generate.py writes it) or fix the name")
    return ModelSpec(doc["name"], kind, doc.get("description", ""), doc.get("owner", ""), inputs, recipe, labels, outputs, estimator, gates,
                     smoke, canary, drift, engine, data_file, checks.document.file, checks.document)


def _unique(names: list, path_template: str, what: str, checks: _Checks) -> None:
    """Record every repeat of a name in ``names`` at its own path."""
    seen: set = set()
    for index, name in enumerate(names):
        if name in seen:
            checks.add(path_template.format(index), f"the {what} {name!r} is given twice", f"give each {what} its own name")
        seen.add(name)


def _input(item: dict, path: str, checks: _Checks) -> Input:
    """Return one input, recording bounds that are reversed or outside what its unit allows."""
    unit = SPEC_UNITS[item["unit"]]
    low, high = _interval(item["bounds"])
    limits = UNIT_LIMITS[unit]
    if item["name"] in RESERVED_COLUMNS:
        checks.add(f"{path}.name", f"{item['name']!r} is the data's time column", "name the input after the metric")
    if low >= high:
        checks.add(f"{path}.bounds", f"the bounds [{low:g}, {high:g}] are reversed or empty", "write [low, high] with low < high")
    if low < 0:
        checks.add(f"{path}.bounds", f"{limits.expected} cannot be negative, but the bounds start at {low:g}", "start them at 0 or above")
    if high > limits.maximum:
        mix_up = next((mix for mix in limits.mix_ups if high / mix.factor <= limits.maximum), None)
        checks.add(f"{path}.bounds", f"the upper bound {high:g} is more than {item['unit']} allows ({limits.expected})",
                   f"it looks like {mix_up.name}: send {item['unit']} (divide by {mix_up.factor:g} in the query) and bound it by "
                   f"{limits.maximum:g}" if mix_up else f"lower it to at most {limits.maximum:g}, or pick the unit the metric is sent in")
    return Input(item["name"], unit, (low, high), item["query"], item.get("query_divisor"), item.get("description", ""))


def _labels(section: dict | None, behaviour: TypeBehaviour, kind: str, inputs: tuple[Input, ...], checks: _Checks) -> Labels | None:
    """Return the label column, recording one the type refuses or lacks, or one that names an input."""
    if section is None:
        if behaviour.labels == "required":
            checks.add("$", f"{kind} models learn from labels, and labels is missing", "add labels: {column: <the label column of the data>}")
        return None
    if behaviour.labels == "refused":
        checks.add("$.labels", f"{kind} models learn from their inputs' future, not from labels", "remove labels")
    if section["column"] in [item.name for item in inputs] or section["column"] in RESERVED_COLUMNS:
        checks.add("$.labels.column", f"{section['column']!r} is an input or the time column", "name the label column of the data")
    return Labels(section["column"], section.get("description", ""))


def _outputs(section: dict, behaviour: TypeBehaviour, kind: str, inputs: tuple[Input, ...], checks: _Checks) -> Outputs:
    """Return the outputs, recording fields another type uses and values, classes or an alert that do not fit."""
    needed = behaviour.outputs
    own = {"labels": ("labels",), "values": ("values",), "classes": ("classes", "probabilities", "alert")}[needed]
    if needed not in section:
        checks.add("$.outputs", f"{kind} models answer with {needed}, and outputs.{needed} is missing", f"add outputs.{needed}")
    for key in section:
        if key not in own:
            checks.add(f"$.outputs.{key}", f"{key} is not an output of {kind} models", f"remove it; {kind} models declare {', '.join(own)}")
    values = tuple(OutputValue(item["name"], _interval(item["range"]), item.get("description", "")) for item in section.get("values", []))
    for index, value in enumerate(values):
        if value.range[0] >= value.range[1]:
            checks.add(f"$.outputs.values[{index}].range", f"the range [{value.range[0]:g}, {value.range[1]:g}] is reversed or empty",
                       "write [low, high] with low < high")
    if values and [value.name for value in values] != [item.name for item in inputs]:
        checks.add("$.outputs.values", f"a predictive model forecasts its inputs, but the values are {[value.name for value in values]}",
                   f"name them as the inputs, in order: {[item.name for item in inputs]}")
    classes = tuple(OutputClass(item["value"], item["name"], item.get("description", "")) for item in section.get("classes", []))
    _unique([item.value for item in classes], "$.outputs.classes[{}].value", "class value", checks)
    _unique([item.name for item in classes], "$.outputs.classes[{}].name", "class name", checks)
    if [item.value for item in classes] != sorted(item.value for item in classes):
        checks.add("$.outputs.classes", "the classes are not in ascending order of value, the order of predict_proba's columns",
                   "list them by ascending value")
    alert = None
    if "alert" in section:
        alert = Alert(section["alert"]["class"], float(section["alert"]["threshold"]), section["alert"].get("description", ""))
        if alert.class_value not in [item.value for item in classes]:
            checks.add("$.outputs.alert.class", f"{alert.class_value} is not one of the classes", f"use one of {[item.value for item in classes]}")
        if not section.get("probabilities", False):
            checks.add("$.outputs.alert", "the alert threshold applies to a probability, and the model serves class labels",
                       "set outputs.probabilities: true, or remove the alert")
    return Outputs(MappingProxyType(dict(section.get("labels", {}))), values, classes, bool(section.get("probabilities", False)), alert)


def _estimator(section: dict, behaviour: TypeBehaviour, kind: str, checks: _Checks) -> Estimator:
    """Return the estimator, recording classes outside the allowlist, steps in the wrong role and knobs of another type."""
    steps = []
    for index, item in enumerate(section["steps"]):
        path, class_path = f"$.estimator.steps[{index}].class", item["class"]
        last = index == len(section["steps"]) - 1
        wanted = behaviour.final_step if last else TRANSFORM
        fitting = f"use one of the {wanted}s: {', '.join(known for known, role in ESTIMATOR_ALLOWLIST.items() if role == wanted)}"
        if class_path not in ESTIMATOR_ALLOWLIST:
            checks.add(path, f"{class_path} is not in the allowlist of stock scikit-learn classes the stock sklearn runtime loads", fitting)
            continue
        role = ESTIMATOR_ALLOWLIST[class_path]
        if role != wanted:
            checks.add(path, f"the last step of a {kind} model must be a {wanted}, and {class_path} is a {role}" if last
                       else f"{class_path} is a {role}, and only the last step may be one", fitting)
        steps.append(EstimatorStep(item.get("name", class_path.rpartition(".")[2].lower()), class_path, MappingProxyType(dict(item.get("params", {})))))
    _unique([step.name for step in steps], "$.estimator.steps[{}].name", "step name", checks)
    training = dict(section.get("training", {}))
    checks.own_keys(training, "$.estimator.training", behaviour.training, kind, "training knob")
    knobs = {**behaviour.training, **training}
    if knobs.get("fit_change") and [step.class_path for step in steps] not in [[path] for path in LINEAR_REGRESSORS]:
        checks.add("$.estimator.training.fit_change", "fit_change adds the identity to a linear regressor's coefficients, and the estimator is "
                   f"{' -> '.join(step.class_path for step in steps)}", f"use one step of {', '.join(LINEAR_REGRESSORS)}, or set fit_change: false")
    estimator = Estimator(tuple(steps), MappingProxyType(knobs))
    problem = estimator.residual_problem()
    if problem:
        checks.add("$.estimator.training.residual_weight", *problem)
    return estimator


def _smoke(section: dict | None, kind: str, inputs: tuple[Input, ...], recipe: FeatureRecipe, checks: _Checks) -> SmokeProbe | None:
    """Return the smoke probe, recording a missing or doubled probe, a wrong length and raw values outside the bounds."""
    if section is None:
        return None
    if ("probe" in section) == ("probe_per_input" in section):
        checks.add("$.smoke", "give exactly one of probe (a whole instance) and probe_per_input (repeated for each input)", "keep one")
        return None
    width = len(inputs) * len(recipe.suffixes)
    if "probe_per_input" in section:
        per_input = tuple(float(value) for value in section["probe_per_input"])
        if len(per_input) != len(recipe.suffixes):
            checks.add("$.smoke.probe_per_input", f"has {len(per_input)} value(s), and the {recipe.name} recipe makes {len(recipe.suffixes)} per input",
                       f"give {len(recipe.suffixes)} values: {', '.join(recipe.suffixes)}")
        instance = per_input * len(inputs)
    else:
        per_input, instance = (), tuple(float(value) for value in section["probe"])
        if len(instance) != width:
            checks.add("$.smoke.probe", f"has {len(instance)} value(s), and an instance has {width}", f"give {width} values, one per feature")
    if recipe.name == RAW and len(instance) == width:
        for index, (value, item) in enumerate(zip(instance, inputs)):
            if not item.bounds[0] <= value <= item.bounds[1]:
                checks.add(f"$.smoke.probe[{index}]" if "probe" in section else "$.smoke.probe_per_input",
                           f"{value:g} is outside {item.name}'s bounds [{item.bounds[0]:g}, {item.bounds[1]:g}]", "send a value the model accepts")
    if section.get("engine_fallback") and kind != ANOMALY:
        checks.add("$.smoke.engine_fallback", "the engine's no-data fallback is defined for anomaly models only", "remove engine_fallback")
    return SmokeProbe(instance, bool(section.get("engine_fallback", False)), per_input)


def _canary(section: dict, behaviour: TypeBehaviour, kind: str, outputs: Outputs, checks: _Checks) -> CanaryComparison:
    """Return the canary comparison, recording one that does not fit the type's answers and limits of another comparison."""
    fitting = [compare for compare in behaviour.canary_compares if outputs.probabilities or "probability" not in compare]
    compare = section.get("compare", fitting[0] if fitting else behaviour.canary_compares[0])
    if compare not in fitting:
        checks.add("$.canary.compare", f"{compare} does not fit a {kind} model" + ("" if outputs.probabilities or kind != CLASSIFICATION
                                                                                 else " without probabilities"), f"use {' or '.join(fitting)}")
        return CanaryComparison(compare, MappingProxyType({}))
    limits = {key: value for key, value in section.items() if key != "compare"}
    checks.own_keys(limits, "$.canary", CANARY_LIMITS[compare], compare, "limit")
    return CanaryComparison(compare, MappingProxyType({key: float(limits.get(key, default)) for key, default in CANARY_LIMITS[compare].items()}))


# --- the coordination engine -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineReading:
    """How the coordination engine's own client reads the model's answer, and why that is a misread (empty if it is not)."""

    logical_name: str
    parser: str
    served: str
    read_as: str
    misread: str


def engine_reading(spec: ModelSpec) -> EngineReading:
    """Return how the engine's client (KubeHeal/openshift-coordination-engine pkg/kserve/proxy.go) reads ``spec``'s predictions.

    The logical name comes from ``KSERVE_<NAME>_SERVICE`` and is the spec's name. anomaly-detector is decoded as Go
    ``[]int`` anomaly labels, predictive-analytics as a forecast; any other name is auto-detected: integers in
    {-1, 0, 1} are anomaly labels, other numbers and rows a forecast with row[0] CPU and row[1] memory.
    """
    outputs = spec.outputs
    if spec.type == ANOMALY:
        served, integers = "JSON integers -1 (anomaly) and 1 (normal)", {-1, 1}
    elif spec.type == PREDICTIVE:
        served, integers = f"rows of {len(outputs.values)} floats ({', '.join(value.name for value in outputs.values)})", None
    elif outputs.probabilities:
        served, integers = f"rows of {len(outputs.classes)} probabilities (p({'), p('.join(item.name for item in outputs.classes)}))", None
    else:
        served, integers = f"class labels {'/'.join(str(item.value) for item in outputs.classes)}", {item.value for item in outputs.classes}
    labels = "anomaly labels (-1 anomaly, 1 normal)"
    forecast = "a forecast: row[0] as CPU and row[1] as memory, ratios shown as percent"
    # The engine's fixed parsers, by logical name: (the parser, what it reads integers as, what it reads floats as).
    fixed = {ENGINE_ANOMALY_NAME: (f"its fixed {ENGINE_ANOMALY_NAME} parser (Go []int)", labels,
                                   "nothing: it decodes JSON integers only, and these are floats"),
             ENGINE_FORECAST_NAME: (f"its fixed {ENGINE_FORECAST_NAME} parser", forecast, forecast)}
    auto_labels = labels if integers is not None and integers <= {-1, 0, 1} else forecast
    parser, from_integers, from_floats = fixed.get(spec.name, ("auto-detection (no fixed parser for this name)", auto_labels, auto_labels))
    read_as = from_integers if integers is not None else from_floats
    misread = ""
    if read_as == labels and spec.type != ANOMALY:
        misread = f"its {served} would be read as {labels}"
    elif read_as == forecast:
        names = [value.name for value in outputs.values][:2] if spec.type == PREDICTIVE else []
        ratios = all(value.range == (0.0, 1.0) for value in outputs.values[:2])
        if spec.type != PREDICTIVE or names != ["cpu", "memory"][: len(names)] or not ratios:
            misread = f"its {served} would be read as {forecast}"
    elif read_as != labels:
        misread = f"its {served} would be read as {read_as}"
    return EngineReading(spec.name, parser, served, read_as, misread)


def engine_environment(specs: Iterable[ModelSpec]) -> tuple[list[str], list[str]]:
    """Return (the engine's environment lines for the registered ``specs``, warnings): both discovery forms.

    ``KSERVE_<NAME>_SERVICE`` and ``KSERVE_<NAME>_MODEL`` per model (what the engine's client reads), ``KSERVE_NAMESPACE``
    when every model names the same one, and ``KSERVE_MODEL_REGISTRY``, ADR-040's JSON list of name, service,
    namespace (omitted: the engine's own), type and description.
    """
    lines, warnings, registry = [], [], []
    specs = list(specs)
    for spec in specs:
        if spec.engine is None:
            warnings.append(f"{spec.name} ({spec.source}) has no engine section: not registered with the coordination engine")
            continue
        name = spec.engine.environment_name(spec.name)
        lines += [f"KSERVE_{name}_SERVICE={spec.engine.service}", f"KSERVE_{name}_MODEL={spec.name}"]
        registry.append({"name": spec.name, "service": spec.engine.service, **({"namespace": spec.engine.namespace} if spec.engine.namespace else {}),
                         "type": spec.type, "description": spec.engine.description})
        if spec.engine.accept_misread:
            warnings.append(f"{spec.name}: {engine_reading(spec).misread}; accepted because: {spec.engine.accept_misread}")
    namespaces = {spec.engine.namespace for spec in specs if spec.engine is not None}
    if len(namespaces) == 1 and "" not in namespaces:
        lines.append(f"KSERVE_NAMESPACE={namespaces.pop()}")
    elif len(namespaces) > 1:
        named = ", ".join(f"{spec.name}: {spec.engine.namespace or 'none'}" for spec in specs if spec.engine is not None)
        warnings.append(f"the models name different namespaces ({named}); KSERVE_NAMESPACE is one namespace for all, so it is not printed and "
                        "the engine's client looks in its own: only KSERVE_MODEL_REGISTRY carries each model's namespace")
    lines.append("KSERVE_MODEL_REGISTRY=" + json.dumps(registry, separators=(",", ":")))
    return lines, warnings


def check_estimator(spec: ModelSpec) -> None:
    """Build each estimator step (imports scikit-learn) and raise SpecError naming the line of a parameter it refuses."""
    problems = []
    for index, step in enumerate(spec.estimator.steps):
        try:
            step.build()._validate_params()  # what fit runs first (scikit-learn >= 1.2): names and values of the parameters
        except (TypeError, ValueError) as error:
            problems.append(spec.problem(f"$.estimator.steps[{index}].params", f"{step.class_path} refuses its params ({error})",
                                         f"use the parameters {step.class_path.rpartition('.')[2]} documents"))
    if problems:
        raise SpecError(problems=problems)
    spec.estimator.build()._validate_params()  # the Pipeline itself: its steps' names and order
