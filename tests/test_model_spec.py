"""Model specs: line-numbered errors, the published schema, the built-ins as today's contract, the CLI verbs, the
engine's reading of an output, and the disk-failure example. No servers, no training.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from components.model import contract, spec as spec_module
from components.model.spec import (
    CANARY_LIMITS,
    DRIFT_DEFAULTS,
    ESTIMATOR_ALLOWLIST,
    FEATURE_RECIPES,
    SPEC_UNITS,
    TYPE_BEHAVIOUR,
    SpecError,
    builtin_specs,
    engine_environment,
    engine_reading,
    known_specs,
    load_spec,
    spec_named,
)
from components.model.spec_yaml import MAX_SPEC_BYTES
from components.model.units import UNIT_LIMITS, Unit
from tests.conftest import REPO, run_cli

EXAMPLE = REPO / "examples" / "disk-failure-predictor"
EXAMPLE_SPEC = EXAMPLE / "model.yaml"
SCHEMA = REPO / "models" / "modelspec.schema.json"
# The PromQL the engine's two models read, as the platform contract gives them (docs/contract.md).
CONTRACT_QUERIES = {
    "anomaly-detector": {
        "node_cpu_utilization": '1 - avg(rate(node_cpu_seconds_total{mode="idle"}[5m]))',
        "node_memory_utilization": "1 - sum(node_memory_MemAvailable_bytes) / sum(node_memory_MemTotal_bytes)",
        "pod_cpu_usage": 'sum(rate(container_cpu_usage_seconds_total{container!=""}[5m]))',
        "pod_memory_usage": 'sum(container_memory_working_set_bytes{container!=""}) / sum(kube_pod_container_resource_limits{resource="memory"})',
        "container_restart_count": "sum(kube_pod_container_status_restarts_total)",
    },
    "predictive-analytics": {
        "cpu": '1 - avg(rate(node_cpu_seconds_total{mode="idle"}[5m]))',
        "memory": "1 - sum(node_memory_MemAvailable_bytes) / sum(node_memory_MemTotal_bytes)",
        "disk": '1 - sum(node_filesystem_avail_bytes{mountpoint="/"}) / sum(node_filesystem_size_bytes{mountpoint="/"})',
        "network_in": 'sum(rate(node_network_receive_bytes_total{device!="lo"}[5m]))',
        "network_out": 'sum(rate(node_network_transmit_bytes_total{device!="lo"}[5m]))',
    },
}


def edited(tmp_path: Path, old: str, new: str, source: Path = EXAMPLE_SPEC) -> tuple[Path, int]:
    """Write ``source`` with its one ``old`` replaced by ``new`` into ``tmp_path``; return the file and the edited line."""
    text = source.read_text()
    assert text.count(old) == 1, f"{old!r} must occur once in {source}"
    path = tmp_path / "model.yaml"
    path.write_text(text.replace(old, new))
    (tmp_path / "disks.csv").write_text("timestamp\n")  # the example's data.file, beside the copy
    return path, text[: text.index(old)].count("\n") + 1


def problems_of(path: Path) -> str:
    """Return the problems load_spec reports for ``path`` (failing the test if it loads)."""
    with pytest.raises(SpecError) as refused:
        load_spec(path)
    return str(refused.value)


# --- line-numbered errors ------------------------------------------------------------------------------------------

BROKEN = {
    "wrong type": ("type: classification", "type: classifier", "$.type", "use one of anomaly, predictive, classification"),
    "unknown unit": ("unit: per_second", "unit: iops", "$.inputs[1].unit", "use one of ratio, cores, count, per_second, days"),
    "class outside the allowlist": ("class: sklearn.linear_model.LogisticRegression", "class: sklearn.svm.SVC",
                                    "$.estimator.steps[1].class", "sklearn.svm.SVC is not in the allowlist"),
    "bounds reversed": ("bounds: [0, 3650]", "bounds: [3650, 0]", "$.inputs[2].bounds", "the bounds [3650, 0] are reversed"),
    "duplicate input": ("- name: disk_age_days", "- name: disk_iops", "$.inputs[2].name", "the input 'disk_iops' is given twice"),
    "percent bounds on a ratio": ("bounds: [0, 1]\n", "bounds: [0, 100]\n", "$.inputs[0].bounds", "it looks like percent: send ratio (divide by 100"),
    "a gate of another type": ("  min_recall: 0.5", "  max_mase: 1.0", "$.gates.max_mase", "max_mase is not a gate of classification models"),
    "a regressor ends a classifier": ("class: sklearn.linear_model.LogisticRegression", "class: sklearn.linear_model.Ridge",
                                      "$.estimator.steps[1].class", "must be a classifier, and sklearn.linear_model.Ridge is a regressor"),
    "unknown field": ("owner: storage team", "ownr: storage team", "$.ownr", "unknown field; remove it or correct its spelling"),
    "an unquoted yes": ("threshold: 0.7", "threshold: yes", "$.outputs.alert.threshold", "YAML reads the unquoted 'yes' as a boolean"),
}


@pytest.mark.parametrize("case", BROKEN, ids=list(BROKEN))
def test_a_broken_spec_is_refused_naming_file_line_path_and_fix(tmp_path, case):
    old, new, json_path, says = BROKEN[case]
    path, line = edited(tmp_path, old, new)
    problems = problems_of(path)
    assert f"{path}:{line}: {json_path}: " in problems, problems
    assert says in problems
    assert "; " in problems.split(f"{json_path}: ", 1)[1], "a problem and its fix"


def test_a_residual_weight_without_a_pca_and_an_envelope_last_is_refused_naming_the_fix(tmp_path):
    path, _ = edited(tmp_path, "class: sklearn.covariance.EllipticEnvelope, params: {random_state: 42, support_fraction: 0.99}",
                     "class: sklearn.ensemble.IsolationForest", REPO / "models" / "anomaly-detector.yaml")
    line = path.read_text().splitlines().index("    residual_weight: 2.0  # the envelope's distance plus twice the squared residual off the 15 "
                                               "components, each over its training median") + 1
    problems = problems_of(path)
    assert f"{path}:{line}: $.estimator.training.residual_weight: residual_weight adds the distance off a PCA's components" in problems, problems
    assert "end it with sklearn.decomposition.PCA (without whiten) then sklearn.covariance.EllipticEnvelope, or set residual_weight: 0" in problems


def test_spec_check_exits_2_with_the_line_numbered_problems(tmp_path):
    path, line = edited(tmp_path, "unit: per_second", "unit: iops")
    checked = run_cli("spec", "check", str(path))
    assert checked.returncode == 2, checked.stdout
    assert f"{path}:{line}: $.inputs[1].unit: \"iops\" is not allowed; use one of ratio, cores, count, per_second, days" in checked.stdout


@pytest.mark.parametrize("text, line, says", [
    ("a: &shared [1, 2]\nb: *shared\n", 1, "YAML anchors and aliases (&shared, *shared) are not allowed"),
    ("- 1\n- 2\n", 1, "the document is a list, not a mapping"),
    ("apiVersion: x\n---\nkind: y\n", 2, "more than one YAML document"),
    ("name: a\ntype: anomaly\nname: b\n", 3, "$.name: this field is given twice"),
    ("owner: 2026-01-01\n", 1, "$.owner: YAML reads '2026-01-01' as a timestamp, which JSON cannot hold; quote it"),
    ("a: .nan\n", 1, "$.a: .nan is not a finite number"),
    ("a:\n" + "".join("  " * depth + "- \n" for depth in range(1, 30)), 21, "nested deeper than 20 levels"),
    ("", 1, "the file is empty"),
])
def test_the_reader_refuses_what_a_spec_never_needs(tmp_path, text, line, says):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    problems = problems_of(path)
    assert f"{path}:{line}: " in problems and says in problems, problems


def test_a_file_over_the_size_limit_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("a: [" + "1, " * (MAX_SPEC_BYTES // 3) + "1]\n")
    assert f"{path}:1: $: the file has {path.stat().st_size} bytes, more than the {MAX_SPEC_BYTES}" in problems_of(path)


def test_a_spec_carried_as_text_loads_as_its_file_and_names_the_source_in_errors():
    from components.model.spec import spec_from_text

    text = EXAMPLE_SPEC.read_text()
    assert spec_from_text(text, "compiled: disk-failure-predictor") == load_spec(EXAMPLE_SPEC)
    assert spec_from_text(text, "compiled").data_file is None, "text has no folder to find data.file in"
    line = text[: text.index("unit: per_second")].count("\n") + 1
    with pytest.raises(SpecError, match=re.escape(f"compiled: disk-failure-predictor:{line}: $.inputs[1].unit: ")):
        spec_from_text(text.replace("unit: per_second", "unit: iops"), "compiled: disk-failure-predictor")


def test_yaml_1_2_exponents_are_numbers(tmp_path):
    path, _ = edited(tmp_path, "bounds: [0, 1.0e+7]", "bounds: [0, 1e7]")
    assert load_spec(path).inputs[1].bounds == (0.0, 1e7)


# --- the published schema -----------------------------------------------------------------------------------------


def test_the_loader_validates_against_the_published_schema_file(tmp_path, monkeypatch):
    from jsonschema import Draft202012Validator

    schema = json.loads(SCHEMA.read_text())
    Draft202012Validator.check_schema(schema)
    assert spec_module.SCHEMA_FILE.resolve() == SCHEMA.resolve()
    # A rule only the schema has (descriptions of at most 1000 characters) is enforced ...
    path, line = edited(tmp_path, "description: Predicts which disks", f"description: {'x' * 1001} Predicts which disks")
    assert f"{path}:{line}: $.description: " in problems_of(path)
    # ... and it is read from the file at load time: a stricter copy of the schema is what the loader then applies.
    schema["properties"]["owner"]["maxLength"] = 3
    stricter = tmp_path / "stricter.schema.json"
    stricter.write_text(json.dumps(schema))
    monkeypatch.setattr(spec_module, "SCHEMA_FILE", stricter)
    assert "$.owner: " in problems_of(EXAMPLE_SPEC)


def test_the_schema_and_the_type_table_name_the_same_things():
    schema = json.loads(SCHEMA.read_text())
    properties = schema["properties"]
    assert properties["type"]["enum"] == list(TYPE_BEHAVIOUR)
    assert schema["$defs"]["input"]["properties"]["unit"]["enum"] == list(SPEC_UNITS)
    assert properties["features"]["properties"]["recipe"]["enum"] == list(FEATURE_RECIPES)
    assert set(properties["estimator"]["properties"]["training"]["properties"]) == {knob for kind in TYPE_BEHAVIOUR.values() for knob in kind.training}
    gates = {rule.name for kind in TYPE_BEHAVIOUR.values() for rule in kind.gates} | {"max_predict_latency_ms", "max_pickle_mb", "champion_tolerance"}
    assert set(properties["gates"]["properties"]) == gates
    assert properties["canary"]["properties"]["compare"]["enum"] == list(CANARY_LIMITS)
    assert set(properties["canary"]["properties"]) == {"compare"} | {limit for limits in CANARY_LIMITS.values() for limit in limits}
    assert set(properties["drift"]["properties"]) == set(DRIFT_DEFAULTS) | {kind.live_factor for kind in TYPE_BEHAVIOUR.values()}
    class_pattern = re.compile(properties["estimator"]["properties"]["steps"]["items"]["properties"]["class"]["pattern"])
    assert all(class_pattern.match(path) for path in ESTIMATOR_ALLOWLIST)
    assert {kind.final_step for kind in TYPE_BEHAVIOUR.values()} <= set(ESTIMATOR_ALLOWLIST.values())


def test_every_allowlisted_class_is_stock_scikit_learn():
    from components.model.spec import EstimatorStep
    from components.model.train import foreign_pickle_modules

    for path in ESTIMATOR_ALLOWLIST:
        assert foreign_pickle_modules(EstimatorStep("step", path, {}).build()) == [], path


# --- the built-ins are today's contract ----------------------------------------------------------------------------


def test_the_builtin_specs_state_the_contract():
    detector, forecaster = builtin_specs()
    assert (detector.name, forecaster.name) == contract.MODEL_NAMES == ("anomaly-detector", "predictive-analytics")
    assert (detector.n_features, forecaster.n_features) == (45, 5)
    assert contract.schema_of(detector).feature_names[9 * 2 + 7] == "pod_cpu_usage__diff_1m"
    assert [item.unit for item in detector.inputs] == [Unit.RATIO, Unit.RATIO, Unit.CORES, Unit.RATIO, Unit.COUNT]
    assert [item.unit for item in forecaster.inputs] == [Unit.RATIO] * 5
    assert all(item.bounds == (0.0, UNIT_LIMITS[item.unit].maximum) for spec in (detector, forecaster) for item in spec.inputs)
    assert {spec.name: {item.name: item.query for item in spec.inputs} for spec in builtin_specs()} == CONTRACT_QUERIES
    assert {item.name: item.query_divisor for item in forecaster.inputs if item.query_divisor} == {
        "network_in": contract.NETWORK_SCALE_BYTES_PER_SECOND, "network_out": contract.NETWORK_SCALE_BYTES_PER_SECOND}
    assert detector.smoke.per_input == (0.5, 0.5, 0.1, 0.3, 0.7, 0.5, 0.5, 0.0, 0.0) and detector.smoke.engine_fallback
    assert [(value.name, value.range) for value in forecaster.outputs.values] == [(name, (0.0, 1.0)) for name in CONTRACT_QUERIES["predictive-analytics"]]
    assert all(engine_reading(spec).misread == "" for spec in builtin_specs())


def test_the_builtins_pass_the_schema_that_the_import_time_load_leaves_to_the_tests():
    assert builtin_specs() == tuple(load_spec(REPO / "models" / f"{name}.yaml") for name in contract.MODEL_NAMES)


def test_a_broken_builtin_is_reported_by_the_schema_although_the_import_time_load_skips_it(tmp_path, monkeypatch):
    path, line = edited(tmp_path, "inputs:  #", "input:  #", source=REPO / "models" / "anomaly-detector.yaml")
    path.rename(tmp_path / "anomaly-detector.yaml")
    monkeypatch.setattr(spec_module, "BUILTIN_DIR", tmp_path)
    with pytest.raises(SpecError) as refused:
        builtin_specs.__wrapped__()  # the cached function's body, on the broken copy
    assert f"anomaly-detector.yaml:{line}: $.input: unknown field" in str(refused.value)


def test_the_contract_and_the_queries_are_read_from_the_spec_files(tmp_path):
    models = shutil.copytree(REPO / "models", tmp_path / "models")
    detector, forecaster = models / "anomaly-detector.yaml", models / "predictive-analytics.yaml"
    detector.write_text(detector.read_text().replace("[0.5, 0.5, 0.1, 0.3, 0.7, 0.5, 0.5, 0, 0]", "[0.4, 0.5, 0.1, 0.3, 0.7, 0.5, 0.5, 0, 0]")
                        .replace("    unit: ratio\n    bounds: [0, 1]\n    query: sum(container_memory", "    unit: cores\n    bounds: [0, 1]\n    query: sum(container_memory"))
    forecaster.write_text(forecaster.read_text().replace('{mountpoint="/"}', '{mountpoint="/var"}'))
    probe = ("import json, pathlib, components.model.spec as spec\n"
             f"spec.BUILTIN_DIR = pathlib.Path({str(models)!r})\n"
             "from components.model import contract\nfrom components.data import prometheus\n"
             "print(json.dumps([contract.FALLBACK_METRIC_FEATURES, contract.SCHEMAS['anomaly-detector'].base_metrics[3].unit.name, "
             "prometheus.default_queries('predictive-analytics')['disk']]))")
    fallback, unit, query = json.loads(subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True).stdout)
    assert (fallback[0], unit, query.count('mountpoint="/var"')) == (0.4, "CORES", 2)


def test_the_builtins_state_what_the_code_does_today():
    from components.monitoring.monitor import MonitorSettings
    from components.release.rollout import CanarySpec
    from tests.recipes_before_specs import DETECTOR_DEFAULTS, FORECASTER_DEFAULTS, GATES_BEFORE_SPECS, OUTPUT_RANGES, detector_pipeline

    detector, forecaster = builtin_specs()
    today = detector_pipeline(45)
    assert [name for name, _ in today.steps] == ["no_data", *(step.name for step in detector.estimator.steps)]
    for step, (_, built) in zip(detector.estimator.steps, today.steps[1:]):
        assert f"{type(built).__module__.split('._')[0]}.{type(built).__name__}" == step.class_path
        assert built.get_params() == {**built.get_params(), **step.params}
    # The detector-quality recipe (2026-12-07) added the residual; tests/test_train_spec.py shows that without it the spec
    # trains the recipe from before specs byte for byte.
    assert detector.estimator.training == {"target_false_positive_rate": DETECTOR_DEFAULTS["target_false_positive_rate"], "impute_fallback": True,
                                           "residual_weight": 2.0}
    assert forecaster.estimator.steps[0].params == {"alpha": FORECASTER_DEFAULTS["alpha"]}
    assert forecaster.estimator.training["horizon_minutes"] == FORECASTER_DEFAULTS["horizon_minutes"]
    assert {value.name: value.range for value in forecaster.outputs.values} == OUTPUT_RANGES
    gates = GATES_BEFORE_SPECS
    for spec in (detector, forecaster):
        assert {gate.name: gate.limit for gate in spec.gates.gates} == {gate.name: gates[gate.name] for gate in spec.gates.gates}
        assert spec.gates.champion_tolerance == gates["champion_tolerance"]
        assert dict(spec.canary.limits) == {"max_prediction_shift": CanarySpec().max_prediction_shift}
        settings = MonitorSettings()
        assert asdict(spec.drift) == {**asdict(settings.thresholds), "cooldown_hours": settings.cooldown_hours, "min_predictions": settings.min_predictions,
                                      "min_regime_hours": settings.min_regime_hours, "max_retrains_per_episode": settings.max_retrains_per_episode,
                                      "live_factor_name": spec.behaviour.live_factor, "live_factor": getattr(settings, spec.behaviour.live_factor)}
    # The type table's defaults are today's values too: a new model of either type starts where the built-ins are.
    defaults = {rule.name: rule.limit for kind in TYPE_BEHAVIOUR.values() for rule in kind.gates}
    assert {name: defaults[name] for name in ("min_f1", "max_anomaly_rate", "max_mase")} == {name: gates[name] for name in ("min_f1", "max_anomaly_rate", "max_mase")}
    assert TYPE_BEHAVIOUR["anomaly"].training["target_false_positive_rate"] == DETECTOR_DEFAULTS["target_false_positive_rate"]
    assert TYPE_BEHAVIOUR["predictive"].training["horizon_minutes"] == FORECASTER_DEFAULTS["horizon_minutes"]


# --- the coordination engine ---------------------------------------------------------------------------------------


def test_an_output_the_engine_would_misread_is_refused_unless_the_spec_says_why(tmp_path):
    text = EXAMPLE_SPEC.read_text()
    reason = text[text.index("  accept_misread:"):]
    path, _ = edited(tmp_path, reason, "")
    line = text[: text.index("probabilities: true")].count("\n") + 1
    assert f"{path}:{line}: $.outputs.probabilities: the coordination engine would misread this output: its rows of 2 probabilities " \
           "(p(healthy), p(failing)) would be read as a forecast: row[0] as CPU and row[1] as memory" in problems_of(path)
    # Class labels 0/1 without probabilities are read as anomaly labels: refused too.
    labels = tmp_path / "labels"
    labels.mkdir()
    path, _ = edited(labels, reason, "")
    path.write_text(path.read_text().replace("  probabilities: true", "  probabilities: false").replace("  alert:\n    class: 1\n    threshold: 0.7\n", "")
                    .replace("    description: alert when p(failing) is above 0.7 (ADR-040's outputFormat field and threshold)\n", ""))
    assert "$.outputs.classes: the coordination engine would misread this output: its class labels 0/1 would be read as anomaly labels" in problems_of(path)
    # A reason where the engine reads the output as meant is stale: refused.
    stale = tmp_path / "stale"
    stale.mkdir()
    path, _ = edited(stale, "  service: anomaly-detector-predictor\n", "  service: anomaly-detector-predictor\n  accept_misread: no reason at all\n",
                     source=REPO / "models" / "anomaly-detector.yaml")
    assert "$.engine.accept_misread: the engine reads this output as it is meant (anomaly labels (-1 anomaly, 1 normal)); remove accept_misread" in problems_of(path)


def test_a_forecast_of_other_quantities_than_cpu_and_memory_is_a_misread(tmp_path):
    text = (REPO / "models" / "predictive-analytics.yaml").read_text()
    path = tmp_path / "model.yaml"
    path.write_text(text.replace("name: predictive-analytics", "name: network-traffic-predictor")
                    .replace("  - name: cpu\n", "  - name: rx\n").replace("{name: cpu,", "{name: rx,"))
    assert "its rows of 5 floats (rx, memory, disk, network_in, network_out) would be read as a forecast" in problems_of(path)


def test_engine_config_prints_both_discovery_forms_for_the_builtins():
    printed = run_cli("engine-config")
    assert printed.returncode == 0, printed.stdout
    lines = printed.stdout.splitlines()
    assert lines[:4] == ["KSERVE_ANOMALY_DETECTOR_SERVICE=anomaly-detector-predictor", "KSERVE_ANOMALY_DETECTOR_MODEL=anomaly-detector",
                         "KSERVE_PREDICTIVE_ANALYTICS_SERVICE=predictive-analytics-predictor", "KSERVE_PREDICTIVE_ANALYTICS_MODEL=predictive-analytics"]
    assert not any(line.startswith("KSERVE_NAMESPACE=") for line in lines), "no spec names a namespace: the engine's own"
    registry = json.loads(lines[4].removeprefix("KSERVE_MODEL_REGISTRY="))
    assert [(entry["name"], entry["service"], entry["type"]) for entry in registry] == [
        ("anomaly-detector", "anomaly-detector-predictor", "anomaly"), ("predictive-analytics", "predictive-analytics-predictor", "predictive")]
    assert all(entry["description"] and "namespace" not in entry for entry in registry)


def test_engine_config_takes_spec_files_and_warns_about_an_accepted_misread():
    printed = run_cli("engine-config", "anomaly-detector", str(EXAMPLE_SPEC))
    assert printed.returncode == 0, printed.stdout
    assert "KSERVE_DISK_FAILURE_PREDICTOR_SERVICE=disk-failure-predictor-predictor\nKSERVE_DISK_FAILURE_PREDICTOR_MODEL=disk-failure-predictor" in printed.stdout
    registry = json.loads(next(line for line in printed.stdout.splitlines() if line.startswith("KSERVE_MODEL_REGISTRY=")).split("=", 1)[1])
    assert [entry["type"] for entry in registry] == ["anomaly", "classification"]
    assert "warning: disk-failure-predictor: its rows of 2 probabilities" in printed.stdout and "accepted because: ADR-040" in printed.stdout


def test_engine_config_prints_kserve_namespace_only_when_the_models_agree(tmp_path):
    def placed(name: str, namespace: str):
        path = tmp_path / f"{name}-{namespace or 'own'}.yaml"
        source = (REPO / "models" / f"{name}.yaml").read_text()
        path.write_text(source.replace(f"  service: {name}-predictor\n", f"  service: {name}-predictor\n  namespace: {namespace or chr(34) * 2}\n"))
        return load_spec(path)

    together = [placed("anomaly-detector", "self-healing-platform"), placed("predictive-analytics", "self-healing-platform")]
    lines, warnings = engine_environment(together)
    assert "KSERVE_NAMESPACE=self-healing-platform" in lines and warnings == []
    assert all(entry["namespace"] == "self-healing-platform" for entry in json.loads(lines[-1].split("=", 1)[1]))
    lines, warnings = engine_environment([together[0], placed("predictive-analytics", "")])
    assert not any(line.startswith("KSERVE_NAMESPACE=") for line in lines)
    assert "different namespaces (anomaly-detector: self-healing-platform, predictive-analytics: none)" in warnings[0]


# --- the CLI's spec verbs and the example --------------------------------------------------------------------------


def test_spec_check_prints_the_example_with_its_defaults_and_the_reason_for_the_misread():
    checked = run_cli("spec", "check", str(EXAMPLE_SPEC.relative_to(REPO)))
    assert checked.returncode == 0, checked.stdout
    out = checked.stdout
    assert "examples/disk-failure-predictor/model.yaml: disk-failure-predictor is a valid classification model" in out
    assert "disk_utilization (ratio 0-1), disk_iops (per_second 0-1e+07), disk_age_days (days 0-3650)" in out
    assert "probabilities (the predictor runs with PREDICT_PROBA=true); alert when p(failing) > 0.7" in out
    assert "canary     label_flip_rate_and_probability_shift: max_label_flip_rate 0.05, max_probability_shift 0.1" in out
    assert "engine reads it with auto-detection (no fixed parser for this name): rows of 2 probabilities" in out
    assert "warning: accepted because: ADR-040 registers this model as a classification" in out


def test_a_specs_canary_limit_and_drift_settings_are_its_own_pipelines_defaults_and_a_run_value_overrides_them(tmp_path):
    from components.kfp.config import MONITOR, ROLLOUT, config_from_arguments

    path, _ = edited(tmp_path, "name: disk-failure-predictor", "name: disk-failure-predictor\ncanary: {compare: label_flip_rate, max_label_flip_rate: 0.2}"
                     "\ndrift: {psi: 0.6, min_regime_hours: 72, max_retrains_per_episode: 5, alert_rate_factor: 4}")
    spec = load_spec(path)
    monitor_form = run_cli("parameters", "model-monitor", "--model", str(path))
    assert monitor_form.returncode == 0, monitor_form.stderr
    monitor_defaults = json.loads(next(line for line in monitor_form.stdout.splitlines() if line.startswith("monitor = ")).split(" = ", 1)[1])
    assert (monitor_defaults["psi_threshold"], monitor_defaults["min_regime_hours"], monitor_defaults["ks_excess"]) == (0.6, 72.0, 0.45)
    assert not {"anomaly_rate_factor", "forecast_bias_factor"} & set(monitor_defaults), "a classifier's monitor has neither type's live factor"
    rollout_form = run_cli("parameters", "model-rollout", "--model", str(path))
    assert json.loads(next(line for line in rollout_form.stdout.splitlines() if line.startswith("canary = ")).split(" = ", 1)[1])[
        "max_prediction_shift"] == 0.2, rollout_form.stdout
    # What validate-parameters makes of a run that sets nothing, and of one that sets a value: the spec's, then the run's.
    settings = config_from_arguments(MONITOR, {}, spec=spec)
    decided = settings.monitor.settings(settings.spec.drift.max_retrains_per_episode)
    assert (decided.thresholds.psi, decided.min_regime_hours, decided.max_retrains_per_episode, decided.live_factor(spec)) == (0.6, 72.0, 5, 4.0)
    assert config_from_arguments(MONITOR, {"monitor": {"psi_threshold": 0.3}}, spec=spec).monitor.psi_threshold == 0.3
    assert config_from_arguments(ROLLOUT, {}, spec=spec).canary.max_prediction_shift == 0.2
    assert config_from_arguments(ROLLOUT, {"canary": {"max_prediction_shift": 0.05}}, spec=spec).canary.max_prediction_shift == 0.05


def test_models_lists_the_builtins_and_the_example():
    listed = run_cli("models")
    assert listed.returncode == 0, listed.stdout
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert [(row[0], row[1], row[-1]) for row in rows] == [
        ("anomaly-detector", "anomaly", "models/anomaly-detector.yaml"),
        ("predictive-analytics", "predictive", "models/predictive-analytics.yaml"),
        ("disk-failure-predictor", "classification", "examples/disk-failure-predictor/model.yaml")]
    assert "5 x window-9 = 45 -> label -1/1" in listed.stdout and "3 raw -> classes 0/1 + probabilities" in listed.stdout


def test_the_example_loads_with_its_data():
    import pandas as pd

    example = spec_named(str(EXAMPLE_SPEC))
    assert example == spec_named("disk-failure-predictor") and example in known_specs()
    assert (example.type, example.n_features, example.outputs.probabilities, example.outputs.alert.threshold) == ("classification", 3, True, 0.7)
    assert [item.unit for item in example.inputs] == [Unit.RATIO, Unit.PER_SECOND, Unit.DAYS]
    spec_module.check_estimator(example)  # every step takes its parameters
    assert example.data_file.stat().st_size < 300_000
    data = pd.read_csv(example.data_file)
    assert list(data.columns) == ["timestamp", *contract.schema_of(example).metric_names, example.labels.column]
    minutes = pd.to_datetime(data["timestamp"], utc=True).diff().dropna()
    assert (minutes == pd.Timedelta(minutes=1)).all(), "the file source's 1-minute grid"
    for item in example.inputs:
        assert data[item.name].between(*item.bounds).all(), item.name
    assert set(data[example.labels.column]) == {item.value for item in example.outputs.classes}


def test_generate_py_writes_the_committed_data(tmp_path):
    written = tmp_path / "disks.csv"
    subprocess.run([sys.executable, str(EXAMPLE / "generate.py"), "--output", str(written)], check=True, capture_output=True)
    assert written.read_bytes() == (EXAMPLE / "disks.csv").read_bytes()


def test_no_product_file_names_the_example():
    named = [str(path.relative_to(REPO)) for package in ("components", "pipelines") for path in (REPO / package).rglob("*")
             if path.is_file() and "__pycache__" not in path.parts
             and (re.search("disk[-_]failure", path.name, re.I) or re.search("disk[-_]failure", path.read_text(errors="replace"), re.I))]
    assert named == [], "the example must need no code: remove its name from these files"
