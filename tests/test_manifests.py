"""Core Kubernetes manifests checked against the API's own models (the kubernetes client's OpenAPI types)."""

import yaml
from kubernetes import client

from tests.conftest import REPO

PRIMITIVES = {"str", "int", "bool", "float", "object", "datetime", "date"}


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


def test_the_schema_check_catches_a_misspelt_field():
    assert schema_errors({"spec": {"podSelectr": {}}}, "V1NetworkPolicy") == [".spec.podSelectr: not a field of V1NetworkPolicySpec"]


def test_network_policy_admits_only_the_namespace_and_the_serving_platform():
    policy = yaml.safe_load((REPO / "manifests" / "predictor-networkpolicy.yaml").read_text())
    assert schema_errors(policy, "V1NetworkPolicy") == []
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["policyTypes"] == ["Ingress"]
    (selector,) = policy["spec"]["podSelector"]["matchExpressions"]
    assert selector["key"] == "serving.kserve.io/inferenceservice"
    assert set(selector["values"]) == {f"{model}{suffix}" for model in ("anomaly-detector", "predictive-analytics") for suffix in ("", "-candidate")}
    (rule,) = policy["spec"]["ingress"]
    peers = rule["from"]
    assert {"podSelector": {}} in peers, "the namespace's own pods (clients and DSP pods)"
    namespaces = {peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in peers if "namespaceSelector" in peer}
    assert namespaces == {"knative-serving", "istio-system", "openshift-user-workload-monitoring"}
    assert all(set(peer) <= {"podSelector", "namespaceSelector"} and "ipBlock" not in peer for peer in peers)


def test_rbac_manifest_matches_the_api():
    role, binding = yaml.safe_load_all((REPO / "manifests" / "pipeline-runner-rbac.yaml").read_text())
    assert schema_errors(role, "V1Role") == [] and schema_errors(binding, "V1RoleBinding") == []
