"""Every kustomization under manifests/, rendered with ``kubectl kustomize`` and each object checked against its schema:
the CRDs in shared/reference for custom kinds, the kubernetes client's models (the API's OpenAPI types) for core ones."""

import functools
import json
import re
import shutil
from pathlib import Path

import jsonschema
import pytest
import yaml
from kubernetes import client

from components.store.s3 import DEFAULT_SECRET
from tests.conftest import REPO
from tests.k8s_standin import load_crd
from tests.kustomize import KUSTOMIZATIONS, MANIFESTS, by_kind, rendered
from tests.test_kserve import strict

REFERENCE = REPO.parent / "shared" / "reference"
PRIMITIVES = {"str", "int", "bool", "float", "object", "datetime", "date"}
KUBERNETES_GROUPS = {"", "apps", "batch", "policy", "autoscaling"}  # and every *.k8s.io group
# Kinds with no schema in shared/reference, each checked by hand (2026-12) against its upstream schema, named in the
# reason. A kind that is neither here nor in shared/reference fails the test; a CRD added there is used at once.
WITHOUT_SCHEMA = {
    "DataSciencePipelinesApplication": "no DSPA CRD in shared/reference; checked against the data-science-pipelines-operator CRD "
                                       "of OpenShift AI 2.16 (the first with v1), 2.19, 2.25, 3.4 and 3.5",
    "ImageStream": "an OpenShift API type, not a CRD; checked against openshift/api's openapi.json",
    "BuildConfig": "an OpenShift API type, not a CRD; checked against openshift/api's openapi.json",
    "PodMonitor": "no prometheus-operator CRDs in shared/reference; checked against prometheus-operator main",
    "PrometheusRule": "no prometheus-operator CRDs in shared/reference; checked against prometheus-operator main",
    "GrafanaDashboard": "no grafana-operator CRD in shared/reference; checked against grafana-operator main (v1beta1)",
}
NAMESPACE = "self-healing-platform"


def schema_errors(value: object, type_name: str, path: str = "") -> list[str]:
    """Return every field of ``value`` that the kubernetes client model ``type_name`` does not define, or mistypes."""
    if type_name in PRIMITIVES:
        return []
    if type_name.startswith("list["):
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [error for number, item in enumerate(value) for error in schema_errors(item, type_name[5:-1], f"{path}[{number}]")]
    if type_name.startswith("dict("):
        inner = type_name[5:-1].split(", ", 1)[1]
        return [error for key, item in (value or {}).items() for error in schema_errors(item, inner, f"{path}.{key}")]
    model = getattr(client, type_name)
    if not isinstance(value, dict):
        return [f"{path}: expected an object ({type_name})"]
    by_json = {json_name: model.openapi_types[attribute] for attribute, json_name in model.attribute_map.items()}
    errors = [f"{path}.{key}: not a field of {type_name}" for key in value if key not in by_json]
    return errors + [error for key, item in value.items() if key in by_json for error in schema_errors(item, by_json[key], f"{path}.{key}")]


@functools.cache
def crd_validators(group: str, version: str, kind: str) -> tuple[tuple[str, jsonschema.Draft7Validator | None], ...]:
    """Return (CRD file, validator of ``version`` or None if that file does not serve it) for each CRD of the kind in shared/reference."""
    found = []
    for path in sorted(REFERENCE.rglob(f"{group}_{kind.lower()}*.yaml")):
        crd = load_crd(path)
        if crd.get("kind") != "CustomResourceDefinition" or crd["spec"]["names"]["kind"] != kind:
            continue
        served = next((entry for entry in crd["spec"]["versions"] if entry["name"] == version and entry.get("served", True)), None)
        if served is None:
            found.append((str(path.relative_to(REFERENCE)), None))
            continue
        schema = strict(served["schema"]["openAPIV3Schema"])
        schema["properties"].pop("status", None)
        schema["properties"]["metadata"] = {"type": "object"}  # checked against ObjectMeta below
        found.append((str(path.relative_to(REFERENCE)), jsonschema.Draft7Validator(schema)))
    return tuple(found)


def object_errors(item: dict) -> tuple[list[str], str]:
    """Return the object's schema errors and what it was checked against ("" when its kind has no schema anywhere)."""
    group, _, version = item["apiVersion"].rpartition("/")
    errors = schema_errors(item.get("metadata"), "V1ObjectMeta", ".metadata")
    if group in KUBERNETES_GROUPS or group.endswith(".k8s.io"):
        model = f"{version.capitalize()}{item['kind']}"
        if not hasattr(client, model):
            return errors + [f"{item['apiVersion']} {item['kind']}: the kubernetes client has no model {model}"], ""
        return errors + schema_errors(item, model), f"kubernetes client {model}"
    validators = crd_validators(group, version, item["kind"])
    for path, validator in validators:
        if validator is None:
            errors.append(f"{path} does not serve {item['apiVersion']}")
        else:
            errors += [f"{path}: {'.'.join(map(str, error.path))}: {error.message}" for error in validator.iter_errors(item)]
    if validators:
        return errors, ", ".join(path for path, _ in validators)
    if item["kind"] not in WITHOUT_SCHEMA:
        errors.append(f"{item['apiVersion']} {item['kind']}: no schema in {REFERENCE} and not in WITHOUT_SCHEMA (add the CRD, or list it with the reason)")
    return errors, ""


def copy_of(tmp_path: Path, *names: str) -> Path:
    """Return a copy of manifests/ with only the named kustomizations, to edit and render."""
    for name in names:
        shutil.copytree(MANIFESTS / name, tmp_path / name)
    return tmp_path


def test_the_schema_check_catches_a_misspelt_field():
    assert schema_errors({"spec": {"podSelectr": {}}}, "V1NetworkPolicy") == [".spec.podSelectr: not a field of V1NetworkPolicySpec"]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_kustomization_renders_and_each_object_matches_its_schema(name):
    if not REFERENCE.is_dir():
        pytest.skip(f"the CRD schemas are not at {REFERENCE} (they ship beside the project in shared/reference)")
    objects = rendered(MANIFESTS / name)
    assert objects, f"manifests/{name} renders nothing"
    for item in objects:
        errors, checked_against = object_errors(item)
        assert errors == [], f"manifests/{name}: {item['kind']} {item['metadata']['name']}: {errors}"
        assert checked_against or item["kind"] in WITHOUT_SCHEMA
    assert not [item for item in objects if item["metadata"]["name"] == "model-pipelines-settings"], "the settings are local-config, never applied"


def test_the_object_check_catches_an_unknown_crd_field_and_a_kind_without_schema():
    if not REFERENCE.is_dir():
        pytest.skip(f"the CRD schemas are not at {REFERENCE}")
    (runtime,) = by_kind(rendered(MANIFESTS / "base"), "ServingRuntime")
    runtime["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    errors, checked_against = object_errors(runtime)
    assert "kserve-crds/v0.20.0/serving.kserve.io_servingruntimes.yaml" in checked_against
    assert any("imagePullPolicyy" in error for error in errors), errors
    errors, _ = object_errors({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "namspace": "x"}})
    assert any("Widget: no schema" in error for error in errors) and ".metadata.namspace: not a field of V1ObjectMeta" in errors


def test_setting_the_namespace_and_the_pipeline_server_once_changes_every_object_and_the_image(tmp_path):
    manifests = copy_of(tmp_path, "base", "monitoring", "grafana-operator", "gitops", "metrics-reader")
    for name in ("base", "monitoring", "metrics-reader"):
        kustomization = manifests / name / "kustomization.yaml"
        kustomization.write_text(re.sub(r"(?m)^namespace: \S+", "namespace: ml-team-a", kustomization.read_text(), count=1))
    settings = {"dspaName=dspa": "dspaName=pipelines", "pipelinesNamespace=self-healing-platform": "pipelinesNamespace=ml-hub",
                "modelsNamespace=self-healing-platform": "modelsNamespace=ml-serving"}
    for name in ("base", "gitops", "metrics-reader"):
        kustomization = manifests / name / "kustomization.yaml"
        text = kustomization.read_text()
        for old, new in settings.items():
            text = text.replace(f"- {old}", f"- {new}")
        kustomization.write_text(text)

    base = rendered(manifests / "base")
    project = base + rendered(manifests / "monitoring") + by_kind(rendered(manifests / "grafana-operator"), "GrafanaDashboard")
    assert {item["metadata"]["namespace"] for item in project} == {"ml-team-a"}
    (runtime,), (binding,), (dspa,) = by_kind(base, "ServingRuntime"), by_kind(base, "RoleBinding"), by_kind(base, "DataSciencePipelinesApplication")
    assert runtime["spec"]["containers"][0]["image"].startswith("image-registry.openshift-image-registry.svc:5000/ml-team-a/model-pipelines:")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pipeline-runner-pipelines", "namespace": "ml-team-a"}]
    assert dspa["metadata"]["name"] == "pipelines"
    (reader,) = by_kind(rendered(manifests / "metrics-reader"), "ClusterRoleBinding")  # the Thanos querier admits cluster-monitoring-view
    assert reader["metadata"]["name"] == "model-pipelines-metrics-reader.ml-team-a", "one binding per project"
    assert reader["subjects"] == binding["subjects"] and reader["roleRef"]["name"] == "cluster-monitoring-view"
    leftovers = [line for item in project for line in yaml.safe_dump(item).splitlines()
                 if NAMESPACE in line and "app.kubernetes.io/part-of" not in line]
    assert leftovers == [], "the old namespace is hard-coded somewhere"

    gitops = rendered(manifests / "gitops")
    (hub_binding,), (project,) = by_kind(gitops, "RoleBinding"), by_kind(gitops, "AppProject")
    assert hub_binding["subjects"] == [{"kind": "ServiceAccount", "name": "pipeline-runner-pipelines", "namespace": "ml-hub"}]
    assert [item["spec"]["template"]["spec"]["destination"]["namespace"] for item in by_kind(gitops, "ApplicationSet")] == ["ml-serving"] * 2
    assert project["spec"]["destinations"][0]["namespace"] == "ml-serving" and project["spec"]["clusterResourceWhitelist"][0]["name"] == "ml-serving"
    assert {item["metadata"]["namespace"] for item in gitops} == {"openshift-gitops"}
    assert not [line for item in gitops for line in yaml.safe_dump(item).splitlines() if NAMESPACE in line]


def test_base_renders_without_its_optional_parts(tmp_path):
    kustomization = copy_of(tmp_path, "base") / "base" / "kustomization.yaml"
    optional = ("dspa.yaml", "sklearn-pvc-runtime.yaml", "image-build.yaml")
    kustomization.write_text("".join(line for line in kustomization.read_text().splitlines(keepends=True) if line.strip("- \n") not in optional))
    kinds = {item["kind"] for item in rendered(kustomization.parent)}
    assert kinds == {"ServiceAccount", "Role", "RoleBinding", "Secret", "PersistentVolumeClaim", "NetworkPolicy"}


def test_each_placeholder_is_marked_and_named_in_its_kustomizations_header():
    for name in KUSTOMIZATIONS:
        directory = MANIFESTS / name
        header = "\n".join(line for line in (directory / "kustomization.yaml").read_text().splitlines() if line.startswith("#"))
        for path in sorted(directory.glob("*.yaml")):
            lines = path.read_text().splitlines()
            values = [line for line in lines if "REPLACE_ME" in line and not line.lstrip().startswith("#")]
            assert all("# EDIT" in line for line in values), f"{path.name}: a REPLACE_ME without an # EDIT note"
            if path.name != "kustomization.yaml" and any("# EDIT" in line for line in lines):
                assert path.name in header, f"manifests/{name}/kustomization.yaml's header does not name {path.name}, which has a placeholder"


def test_the_pipeline_server_and_the_pipelines_use_the_data_connection_and_the_rbac_its_service_account():
    base = rendered(MANIFESTS / "base")
    (secret,), (dspa,), (binding,), (account,) = (by_kind(base, kind) for kind in ("Secret", "DataSciencePipelinesApplication", "RoleBinding", "ServiceAccount"))
    assert secret["metadata"]["name"] == DEFAULT_SECRET, "the pipelines' s3_secret default names the data connection"
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_S3_ENDPOINT", "AWS_DEFAULT_REGION", "AWS_S3_BUCKET"}
    assert secret["metadata"]["labels"]["opendatahub.io/dashboard"] == "true"
    credentials = dspa["spec"]["objectStorage"]["externalStorage"]["s3CredentialsSecret"]
    assert credentials["secretName"] == DEFAULT_SECRET and {credentials["accessKey"], credentials["secretKey"]} <= set(secret["stringData"])
    assert account["secrets"] == [{"name": DEFAULT_SECRET}], "KServe's storage initializer reads the same Secret"
    assert binding["subjects"][0]["name"] == f"pipeline-runner-{dspa['metadata']['name']}"
    (claim,) = by_kind(base, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"] and claim["spec"]["storageClassName"]


def test_the_dashboard_ships_as_a_sidecar_configmap_and_a_grafana_operator_dashboard():
    monitoring, operator = rendered(MANIFESTS / "monitoring"), rendered(MANIFESTS / "grafana-operator")
    (config_map,) = by_kind(monitoring, "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard_file = MANIFESTS / "monitoring" / "grafana-dashboard.json"
    assert json.loads(config_map["data"][dashboard_file.name]) == json.loads(dashboard_file.read_text())
    (dashboard,) = by_kind(operator, "GrafanaDashboard")
    assert dashboard["spec"]["configMapRef"] == {"name": config_map["metadata"]["name"], "key": dashboard_file.name}
    assert dashboard["metadata"]["namespace"] == config_map["metadata"]["namespace"]
    assert [item for item in operator if item["kind"] != "GrafanaDashboard"] == monitoring


def test_network_policy_admits_only_the_namespace_and_the_serving_platform():
    (policy,) = by_kind(rendered(MANIFESTS / "base"), "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (selector,) = policy["spec"]["podSelector"]["matchExpressions"]
    assert selector["key"] == "serving.kserve.io/inferenceservice"
    assert set(selector["values"]) == {f"{model}{suffix}" for model in ("anomaly-detector", "predictive-analytics") for suffix in ("", "-candidate")}
    (rule,) = policy["spec"]["ingress"]
    peers = rule["from"]
    assert {"podSelector": {}} in peers, "the namespace's own pods (clients and DSP pods)"
    namespaces = {peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in peers if "namespaceSelector" in peer}
    assert namespaces == {"knative-serving", "istio-system", "openshift-user-workload-monitoring"}
    assert all(set(peer) <= {"podSelector", "namespaceSelector"} and "ipBlock" not in peer for peer in peers)
