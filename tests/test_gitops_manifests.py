"""The fleet manifests (the manifests/gitops kustomization, rendered), checked against the Argo CD and ACM CRD schemas in shared/reference."""

import copy

import jsonschema
import pytest

from components.serving.gitops.fleet import GitopsOptions, Hub
from components.store.s3 import DEFAULT_SECRET
from components.serving.target import ServingError
from tests.argo_hub import OBSERVED_GENERATION_MARKER, generated_applications, health_script, placement_selects
from tests.conftest import REPO
from tests.k8s_standin import load_crd, selector_matches
from tests.kustomize import MANIFESTS, rendered
from tests.test_kserve import strict
from tests.test_manifests import REFERENCE, object_errors

CRDS = REPO.parent / "shared" / "reference" / "gitops-crds"
CRD_FILES = {
    "ApplicationSet": "argoproj.io_applicationsets.yaml",
    "Application": "argoproj.io_applications.yaml",
    "Placement": "cluster.open-cluster-management.io_placements.yaml",
    "AppProject": "argoproj.io_appprojects.yaml",
    "GitOpsCluster": "apps.open-cluster-management.io_gitopsclusters.yaml",
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


CLUSTERS = {"spoke-1": {"model-pipelines.io/serving": "true", "model-pipelines.io/wave": "canary"}, "spoke-2": {"model-pipelines.io/serving": "true"},
            "spoke-3": {"model-pipelines.io/serving": "true", "model-pipelines.io/wave": "eu"}, "retired": {"model-pipelines.io/wave": "canary"}}
MODELS = ["anomaly-detector", "predictive-analytics"]
TAINTS = {"cluster.open-cluster-management.io/unreachable", "cluster.open-cluster-management.io/unavailable"}


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    """Return the one object of ``kind`` (named ``name``)."""
    (found,) = [item for item in objects if item["kind"] == kind and name in (None, item["metadata"]["name"])]
    return found


def applications(objects: list[dict], name: str) -> list[dict]:
    """Return the Applications the ApplicationSet ``name`` generates over CLUSTERS, as the ApplicationSet controller would."""
    return generated_applications(one(objects, "ApplicationSet", name), objects, CLUSTERS)


def test_every_gitops_object_and_every_generated_application_matches_its_crd(validators):
    objects, checked = documents(), {kind: 0 for kind in CRD_FILES}
    for document in objects + applications(objects, "model-pipelines-models") + applications(objects, "model-pipelines-spoke"):
        if document["kind"] in validators:
            assert errors(validators, document) == [], f"{document['kind']} {document['metadata']['name']}"
            checked[document["kind"]] += 1
    assert checked == {"ApplicationSet": 2, "Placement": 3, "AppProject": 1, "GitOpsCluster": 1, "Application": 2 * 3 + 3}


@pytest.mark.parametrize("kind, path, misspelt", [
    ("ApplicationSet", ("spec", "generators", 0, "matrix", "generators", 1, "clusterDecisionResource"), "configMapRefs"),
    ("ApplicationSet", ("spec", "template", "spec", "syncPolicy", "retry", "backoff"), "maxDurations"),
    ("Placement", ("spec", "tolerations", 0), "tolerationSecond"),
    ("AppProject", ("spec",), "namespaceResourceWhitelists"),
    ("GitOpsCluster", ("spec", "argoServer"), "argoNamespaces"),
])
def test_the_schema_check_catches_a_misspelt_field(validators, kind, path, misspelt):
    broken = copy.deepcopy(next(document for document in documents() if document["kind"] == kind))
    parent = broken
    for key in path:
        parent = parent[key]
    parent[misspelt] = parent.get(misspelt.rstrip("s"), "x")
    assert any(misspelt in error for error in errors(validators, broken)), misspelt


def test_one_application_per_model_and_cluster_each_syncing_its_models_overlay_under_the_project():
    objects = documents()
    generated = {app["metadata"]["name"]: app for app in applications(objects, "model-pipelines-models")}
    waves = {"spoke-1": "canary", "spoke-2": "fleet", "spoke-3": "fleet"}  # "retired" is not serving: no Application
    assert sorted(generated) == sorted(f"{model}-{cluster}" for model in MODELS for cluster in waves)
    for model in MODELS:
        for cluster, wave in waves.items():
            application = generated[f"{model}-{cluster}"]
            assert application["metadata"]["labels"] == {"app.kubernetes.io/part-of": "model-pipelines", "model-pipelines.io/model": model,
                                                         "model-pipelines.io/wave": wave, "model-pipelines.io/cluster": cluster}
            assert application["spec"]["source"]["path"] == f"fleet/models/waves/{wave}/{model}"
            assert application["spec"]["destination"] == {"server": f"https://api.{cluster}.fleet.test:6443", "namespace": "self-healing-platform"}
            assert application["spec"]["project"] == "model-pipelines" and "finalizers" not in application["metadata"]
    prerequisites = applications(objects, "model-pipelines-spoke")
    assert sorted(app["metadata"]["name"] for app in prerequisites) == [f"model-pipelines-spoke-{cluster}" for cluster in waves]
    assert "model-pipelines.io/model" not in prerequisites[0]["metadata"]["labels"], "the pipelines never wait for it"


def test_each_wave_has_a_placement_the_fleet_excludes_the_canary_wave_and_the_registered_clusters_span_both():
    objects = documents()
    placements = {document["metadata"]["name"]: document for document in objects if document["kind"] == "Placement"}
    chosen = [generator["matrix"]["generators"][1]["clusterDecisionResource"]["labelSelector"]["matchLabels"]["cluster.open-cluster-management.io/placement"]
              for generator in one(objects, "ApplicationSet", "model-pipelines-models")["spec"]["generators"]]
    assert chosen == ["model-serving-canary", "model-serving-fleet"]
    fleet = placements["model-serving-fleet"]["spec"]["predicates"][0]["requiredClusterSelector"]["labelSelector"]
    assert {"key": "model-pipelines.io/wave", "operator": "NotIn", "values": ["canary"]} in fleet["matchExpressions"]
    registered = one(objects, "GitOpsCluster")["spec"]["placementRef"]["name"]
    for labels in CLUSTERS.values():
        in_a_wave = any(placement_selects(placements[name], labels) for name in chosen)
        assert placement_selects(placements[registered], labels) == in_a_wave, labels


def test_the_placements_tolerate_unreachable_and_unavailable_clusters_for_a_while_and_deletion_keeps_the_spokes_resources():
    objects = documents()
    for placement in (document for document in objects if document["kind"] == "Placement"):
        tolerations = {toleration["key"]: toleration for toleration in placement["spec"]["tolerations"]}
        assert set(tolerations) == TAINTS, placement["metadata"]["name"]
        assert all(t["operator"] == "Exists" and t["effect"] == "NoSelect" and 0 < t["tolerationSeconds"] <= 3600 for t in tolerations.values())
    for application_set in (document for document in objects if document["kind"] == "ApplicationSet"):
        assert application_set["spec"]["syncPolicy"] == {"preserveResourcesOnDeletion": True}
        retry = application_set["spec"]["template"]["spec"]["syncPolicy"]["retry"]
        assert retry["limit"] > 0 and set(retry["backoff"]) == {"duration", "factor", "maxDuration"}


def test_the_project_allows_the_fleet_repository_the_models_namespace_and_what_the_spokes_need_only():
    objects = documents()
    project = one(objects, "AppProject")["spec"]
    repositories = {app["spec"]["source"]["repoURL"] for name in ("model-pipelines-models", "model-pipelines-spoke") for app in applications(objects, name)}
    assert project["sourceRepos"] == sorted(repositories) and len(repositories) == 1
    assert project["destinations"] == [{"server": "*", "namespace": "self-healing-platform"},
                                       {"server": "!https://kubernetes.default.svc", "namespace": "*"}]
    assert project["clusterResourceWhitelist"] == [{"group": "", "kind": "Namespace", "name": "self-healing-platform"}]
    allowed = {(entry["group"], entry["kind"]) for entry in project["namespaceResourceWhitelist"]}
    needed = {(item["apiVersion"].rpartition("/")[0], item["kind"]) for item in rendered(MANIFESTS / "gitops" / "spoke")}
    assert allowed == needed | {("serving.kserve.io", "InferenceService")}, "each allowed kind is one the spokes receive"


def test_the_spoke_prerequisites_render_match_their_schemas_carry_the_projects_runtime_and_no_secret():
    if not REFERENCE.is_dir():
        pytest.skip(f"the CRD schemas are not at {REFERENCE}")
    spoke = rendered(MANIFESTS / "gitops" / "spoke")
    for item in spoke:
        problems, checked_against = object_errors(item)
        assert problems == [] and checked_against, f"{item['kind']} {item['metadata']['name']}: {problems}"
    assert {item["kind"] for item in spoke} == {"ServingRuntime", "ServiceAccount"}
    runtime, base_runtime = one(spoke, "ServingRuntime"), one(rendered(MANIFESTS / "base"), "ServingRuntime")
    assert runtime["spec"]["containers"][0].pop("image").endswith("/model-pipelines:" + base_runtime["spec"]["containers"][0].pop("image").split(":")[-1])
    assert runtime["spec"] == base_runtime["spec"], "the spokes run the ServingRuntime of manifests/base"
    assert one(spoke, "ServiceAccount")["secrets"] == [{"name": DEFAULT_SECRET}]
    assert all("namespace" not in item["metadata"] for item in spoke), "the Applications' destination namespace applies"


def test_the_hub_rbac_only_reads_applications():
    role, binding = (document for document in documents() if document["kind"] in ("Role", "RoleBinding"))
    assert role["rules"] == [{"apiGroups": ["argoproj.io"], "resources": ["applications"], "verbs": ["get", "list"]}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pipeline-runner-dspa", "namespace": "self-healing-platform"}]


class GeneratedApplications:
    """The hub's list call (CustomObjectsApi.list_namespaced_custom_object) over a fixed set of Applications, filtered by labels."""

    def __init__(self, items: list[dict]) -> None:
        self.items = items

    def list_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, label_selector: str = "") -> dict:
        """Return the Applications whose labels match ``label_selector``."""
        return {"items": [item for item in self.items if selector_matches(item["metadata"].get("labels", {}), label_selector)]}


def test_the_gitops_target_groups_only_its_models_generated_applications_into_waves_and_names_the_fix_otherwise():
    objects = documents()
    hub = Hub(GeneratedApplications(applications(objects, "model-pipelines-models") + applications(objects, "model-pipelines-spoke")), "openshift-gitops")
    options = GitopsOptions("https://git.example.com/platform/model-fleet.git", "main", "fleet/models")
    canary, fleet = hub.waves(options, "predictive-analytics")
    assert (canary.directory, canary.clusters, fleet.directory, fleet.clusters) == ("waves/canary", ["spoke-1"], "waves/fleet", ["spoke-2", "spoke-3"])
    assert {application.name for wave in (canary, fleet) for application in wave.applications} == {
        "predictive-analytics-spoke-1", "predictive-analytics-spoke-2", "predictive-analytics-spoke-3"}
    with pytest.raises(ServingError, match=r"labels app.kubernetes.io/part-of=model-pipelines,model-pipelines.io/model=churn: list churn in the "
                                           r"models of manifests/gitops/applicationset.yaml"):
        hub.waves(options, "churn")
    moved = GitopsOptions(options.repo, "main", "elsewhere/models")
    with pytest.raises(ServingError, match=r"must all sync elsewhere/models/waves/<wave>/predictive-analytics .*\.values\.wave \}\}/\{\{ \.model \}\}"):
        hub.waves(moved, "predictive-analytics")


def test_the_inference_service_health_check_renders_from_its_one_lua_file_for_argo_cd_and_for_openshift_gitops():
    """Each of the two installs comes in two variants from the one Lua file: the default (its observedGeneration check off,
    for KServe <= 0.20) and the observed-generation one (on, for a KServe whose observedGeneration is the InferenceService's
    own), which differs only by the switch between the two markers, as the hub stand-in plays it (health_script)."""
    from tests.test_manifests import object_errors

    lua = (MANIFESTS / "gitops" / "health" / "inferenceservice.lua").read_text()
    switched_on = health_script("observed-generation")
    assert lua.count(OBSERVED_GENERATION_MARKER) == 2 and f"{OBSERVED_GENERATION_MARKER}false{OBSERVED_GENERATION_MARKER}" in lua
    assert switched_on == lua.replace(f"{OBSERVED_GENERATION_MARKER}false{OBSERVED_GENERATION_MARKER}", f"{OBSERVED_GENERATION_MARKER}true{OBSERVED_GENERATION_MARKER}")
    for directory, check in (("health", lua), ("health-observed-generation", switched_on)):
        (config_map,) = rendered(MANIFESTS / "gitops" / directory)
        assert (config_map["kind"], config_map["metadata"]["name"], config_map["metadata"]["namespace"]) == ("ConfigMap", "argocd-cm", "argocd")
        assert config_map["metadata"]["labels"]["app.kubernetes.io/part-of"] == "argocd", "Argo CD reads only a labelled argocd-cm"
        assert config_map["data"] == {"resource.customizations.health.serving.kserve.io_InferenceService": check}, directory
        assert object_errors(config_map)[0] == []
    # The ArgoCD resource of OpenShift GitOps (argoproj.io/v1beta1; checked by hand against argoproj-labs/argocd-operator's
    # config/crd/bases/argoproj.io_argocds.yaml at cf5d1c0, 2026-07: resourceHealthChecks[] of group, kind and check).
    for directory, check in (("health-openshift-gitops", lua), ("health-openshift-gitops-observed-generation", switched_on)):
        (argocd,) = rendered(MANIFESTS / "gitops" / directory)
        assert (argocd["apiVersion"], argocd["kind"], argocd["metadata"]) == (
            "argoproj.io/v1beta1", "ArgoCD", {"name": "openshift-gitops", "namespace": "openshift-gitops"})
        assert argocd["spec"] == {"resourceHealthChecks": [{"group": "serving.kserve.io", "kind": "InferenceService", "check": check}]}, directory
