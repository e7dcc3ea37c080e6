"""The fleet manifests (the manifests/gitops kustomization, rendered), checked against the Argo CD and ACM CRD schemas in shared/reference."""

import copy
import re

import jsonschema
import pytest
import yaml

from tests.conftest import REPO
from tests.k8s_standin import load_crd
from tests.kustomize import MANIFESTS, rendered
from tests.test_kserve import strict

CRDS = REPO.parent / "shared" / "reference" / "gitops-crds"
CRD_FILES = {
    "ApplicationSet": "argoproj.io_applicationsets.yaml",
    "Application": "argoproj.io_applications.yaml",
    "Placement": "cluster.open-cluster-management.io_placements.yaml",
}


@pytest.fixture(scope="module")
def validators():
    if not CRDS.is_dir():
        pytest.skip(f"the GitOps CRD schemas are not at {CRDS} (they ship beside the project in shared/reference)")
    found = {}
    for kind, name in CRD_FILES.items():
        crd = load_crd(CRDS / name)
        version = next(version for version in crd["spec"]["versions"] if version.get("storage"))
        schema = strict(version["schema"]["openAPIV3Schema"])
        schema["properties"].pop("status", None)
        schema["properties"]["metadata"] = {"type": "object"}
        found[kind] = (f"{crd['spec']['group']}/{version['name']}", jsonschema.Draft7Validator(schema))
    return found


def documents() -> list[dict]:
    """Return the objects the gitops kustomization renders."""
    return rendered(MANIFESTS / "gitops")


def errors(validators, document: dict) -> list[str]:
    api_version, validator = validators[document["kind"]]
    assert document["apiVersion"] == api_version, f"{document['kind']} {document['metadata']['name']}: the CRD stores {api_version}"
    return [f"{'.'.join(map(str, error.path))}: {error.message}" for error in validator.iter_errors(document)]


def rendered_application(application_set: dict, cluster: str, server: str, wave: str) -> dict:
    """Return the Application the ApplicationSet's Go template makes for one PlacementDecision entry."""
    values = {".name": cluster, ".server": server, ".values.wave": wave}
    text = re.sub(r"\{\{\s*(\.[\w.]+)\s*\}\}", lambda match: values[match.group(1)], yaml.safe_dump(application_set["spec"]["template"]))
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application", **yaml.safe_load(text)}


def test_every_applicationset_placement_and_generated_application_matches_its_crd(validators):
    checked = {"ApplicationSet": 0, "Placement": 0, "Application": 0}
    for document in documents():
        if document["kind"] not in validators:
            continue
        assert errors(validators, document) == [], document["metadata"]["name"]
        checked[document["kind"]] += 1
        if document["kind"] == "ApplicationSet":
            for generator in document["spec"]["generators"]:
                wave = generator["clusterDecisionResource"]["values"]["wave"]
                application = rendered_application(document, "spoke-1", "https://api.spoke-1.example.com:6443", wave)
                assert errors(validators, application) == [], wave
                assert application["spec"]["source"]["path"] == f"fleet/models/waves/{wave}"
                checked["Application"] += 1
    assert checked == {"ApplicationSet": 1, "Placement": 2, "Application": 2}


def test_the_schema_check_catches_a_misspelt_generator_field(validators):
    application_set = next(document for document in documents() if document["kind"] == "ApplicationSet")
    broken = copy.deepcopy(application_set)
    broken["spec"]["generators"][0]["clusterDecisionResource"]["configMapRefs"] = "acm-placement"
    assert any("configMapRefs" in error for error in errors(validators, broken))


def test_each_wave_has_a_placement_and_the_fleet_excludes_the_canary_wave():
    placements = {document["metadata"]["name"]: document for document in documents() if document["kind"] == "Placement"}
    application_set = next(document for document in documents() if document["kind"] == "ApplicationSet")
    chosen = [generator["clusterDecisionResource"]["labelSelector"]["matchLabels"]["cluster.open-cluster-management.io/placement"]
              for generator in application_set["spec"]["generators"]]
    assert chosen == ["model-serving-canary", "model-serving-fleet"] and set(chosen) == set(placements)
    fleet = placements["model-serving-fleet"]["spec"]["predicates"][0]["requiredClusterSelector"]["labelSelector"]
    assert {"key": "model-pipelines.io/wave", "operator": "NotIn", "values": ["canary"]} in fleet["matchExpressions"]


def test_the_hub_rbac_only_reads_applications():
    role, binding = (document for document in documents() if document["kind"] in ("Role", "RoleBinding"))
    assert role["rules"] == [{"apiGroups": ["argoproj.io"], "resources": ["applications"], "verbs": ["get", "list"]}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pipeline-runner-dspa", "namespace": "self-healing-platform"}]


def test_the_inference_service_health_check_renders_from_its_one_lua_file_for_argo_cd_and_for_openshift_gitops():
    from tests.test_manifests import object_errors

    lua = (MANIFESTS / "gitops" / "health" / "inferenceservice.lua").read_text()
    (config_map,) = rendered(MANIFESTS / "gitops" / "health")
    assert (config_map["kind"], config_map["metadata"]["name"], config_map["metadata"]["namespace"]) == ("ConfigMap", "argocd-cm", "argocd")
    assert config_map["metadata"]["labels"]["app.kubernetes.io/part-of"] == "argocd", "Argo CD reads only a labelled argocd-cm"
    assert config_map["data"] == {"resource.customizations.health.serving.kserve.io_InferenceService": lua}
    assert object_errors(config_map)[0] == []
    # The ArgoCD resource of OpenShift GitOps (argoproj.io/v1beta1; checked by hand against argoproj-labs/argocd-operator's
    # config/crd/bases/argoproj.io_argocds.yaml at cf5d1c0, 2026-07: resourceHealthChecks[] of group, kind and check).
    (argocd,) = rendered(MANIFESTS / "gitops" / "health-openshift-gitops")
    assert (argocd["apiVersion"], argocd["kind"], argocd["metadata"]) == (
        "argoproj.io/v1beta1", "ArgoCD", {"name": "openshift-gitops", "namespace": "openshift-gitops"})
    assert argocd["spec"] == {"resourceHealthChecks": [{"group": "serving.kserve.io", "kind": "InferenceService", "check": lua}]}
