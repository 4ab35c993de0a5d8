"""The operator's pure parts: CRDs from the models, the planner's numbers, and reconcile for create,
update (a spec change, an alias change), an unapproved alias, an unreachable registry and a policy
violation, each giving the exact desired objects.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from operators.crds import custom_resource_definitions
from operators.planning import GIB, ModelSize, gpu_memory_bytes, gpu_problems, minimum_gpus, plan_replica
from operators.reconcile import (
    Deployment,
    Event,
    Observed,
    Resolution,
    ResolutionState,
    Settings,
    reconcile,
)
from operators.resources import GpuRequest, ModelDeploymentSpec, Parallelism, WeightDtype
from policies import load_default_policy
from tests.kube import policy_with_a_foreign_site, validate_builtin, validate_custom

AXK1 = ModelSize(parameters_total=519_000_000_000, parameters_active=33_000_000_000)
NOW = "2026-11-23T10:00:00Z"
LATER = "2026-11-23T10:05:00Z"


@pytest.fixture(scope="module")
def policy() -> Any:
    return load_default_policy()


def body(spec: dict[str, Any], generation: int = 1, name: str = "axk1") -> dict[str, Any]:
    return {
        "apiVersion": "sovereign-stack.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "models", "uid": "uid-1", "generation": generation},
        "spec": spec,
    }


VLLM_SPEC = {
    "model": "models:/axk1@production",
    "engine": "vllm",
    "gpu": {"type": "H100-80GB", "perNode": 8},
    "tenants": ["acme"],
}


def resolved(version: str = "3", size: ModelSize = AXK1) -> Resolution:
    return Resolution(ResolutionState.RESOLVED, version, size)


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {obj["kind"]: obj for obj in objects}


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def changed_paths(before: Any, after: Any, path: str = "") -> set[str]:
    """Every leaf path whose value differs; serveConfigV2 is compared as the YAML it holds."""
    if isinstance(before, str) and isinstance(after, str) and path.endswith("serveConfigV2"):
        before, after = yaml.safe_load(before), yaml.safe_load(after)
    if isinstance(before, dict) and isinstance(after, dict):
        keys = before.keys() | after.keys()
        return set().union(*(changed_paths(before.get(k), after.get(k), f"{path}.{k}") for k in keys))
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return set().union(
            set(), *(changed_paths(b, a, f"{path}[{i}]") for i, (b, a) in enumerate(zip(before, after, strict=True)))
        )
    return set() if before == after else {path}


# -- the planner ------------------------------------------------------------------------------------


def test_gpu_memory_is_read_from_the_type_in_binary_gigabytes() -> None:
    assert gpu_memory_bytes("H100-80GB") == 80 * GIB
    assert gpu_memory_bytes("H200-141GB") == 141 * GIB


@pytest.mark.parametrize(
    ("dtype", "gpu", "needed"),
    [(WeightDtype.BF16, "H100-80GB", 16), (WeightDtype.BF16, "H200-141GB", 8), (WeightDtype.FP8, "H100-80GB", 8)],
)
def test_axk1_needs_16_h100_in_bf16_and_8_h200_or_8_h100_in_fp8(dtype: WeightDtype, gpu: str, needed: int) -> None:
    assert minimum_gpus(AXK1, dtype, gpu) == needed


def test_auto_parallelism_is_tensor_in_a_node_and_pipeline_across_nodes() -> None:
    plan = plan_replica(AXK1, WeightDtype.BF16, GpuRequest(), Parallelism())
    assert (plan.parallelism.tensor, plan.parallelism.pipeline, plan.parallelism.expert) == (8, 2, 8)
    assert (plan.gpus_per_replica, plan.nodes_per_replica) == (16, 2)


def test_explicit_parallelism_is_checked_against_the_plan() -> None:
    eight = Parallelism(mode="explicit", tensor=8, expert=8)
    (too_few,) = gpu_problems(AXK1, WeightDtype.BF16, GpuRequest(), eight, 1, 64)
    assert "8 GPU(s) per replica" in too_few
    assert "need at least 16 × H100-80GB" in too_few
    thirty_two = Parallelism(mode="explicit", tensor=8, pipeline=4, expert=8)
    (too_many,) = gpu_problems(AXK1, WeightDtype.BF16, GpuRequest(), thirty_two, 1, 64)
    assert "asks for 32 GPUs per replica" in too_many
    assert "allows 16" in too_many
    (over_budget,) = gpu_problems(AXK1, WeightDtype.BF16, GpuRequest(), Parallelism(), 5, 64)
    assert "5 replica(s) × 16 GPUs = 80 GPUs, over the cluster's budget of 64" in over_budget


# -- the models and CRDs ----------------------------------------------------------------------------


def test_spec_rules_name_the_field() -> None:
    with pytest.raises(ValidationError, match=r"engine\n  Input should be 'vllm'"):
        ModelDeploymentSpec.model_validate({**VLLM_SPEC, "engine": "torch"})
    with pytest.raises(ValidationError, match=r"parallelism.expert: vLLM spreads experts over tensor × data = 8"):
        ModelDeploymentSpec.model_validate({**VLLM_SPEC, "parallelism": {"mode": "explicit", "tensor": 8, "expert": 4}})
    with pytest.raises(ValidationError, match="model"):
        ModelDeploymentSpec.model_validate({**VLLM_SPEC, "model": "axk1"})


def test_crds_are_valid_structural_and_carry_the_printer_columns() -> None:
    model_deployment, residency_policy = custom_resource_definitions()
    for crd in (model_deployment, residency_policy):
        validate_builtin(crd)
        text = json.dumps(crd)
        for forbidden in ('"$ref"', '"anyOf"', '"const"', '"additionalProperties": false', '"propertyNames"'):
            assert forbidden not in text, f"{crd['metadata']['name']} is not structural: {forbidden}"
    assert model_deployment["spec"]["scope"] == "Namespaced"
    assert residency_policy["spec"]["scope"] == "Cluster"
    version = model_deployment["spec"]["versions"][0]
    assert version["name"] == "v1alpha1"
    assert version["subresources"] == {"status": {}}
    columns = [column["name"] for column in version["additionalPrinterColumns"]]
    assert columns == ["Model", "Alias", "Version", "Engine", "GPUs", "Ready", "Compliant", "Age"]


def test_custom_resources_validate_against_the_generated_crds(policy: Any) -> None:
    model_deployment, residency_policy = custom_resource_definitions()
    validate_custom(body({**VLLM_SPEC, "sites": ["kr-seoul-1"], "autoscaling": {"maxReplicas": 2}}), model_deployment)
    document = policy.model_dump(mode="json", by_alias=True)
    validate_custom({**document, "metadata": {"name": "kr-default"}}, residency_policy)
    with pytest.raises(jsonschema.ValidationError, match="'sglang' is not one of"):
        validate_custom(body({**VLLM_SPEC, "engine": "sglang"}), model_deployment)


# -- reconcile --------------------------------------------------------------------------------------


def test_create_gives_the_exact_desired_objects(policy: Any) -> None:
    deployment = Deployment.from_body(body(VLLM_SPEC))
    outcome = reconcile(deployment, Observed(policy, resolved(), NOW), Settings())

    assert outcome.objects is not None
    assert [(o["kind"], o["metadata"]["name"]) for o in outcome.objects] == [
        ("RayService", "axk1"),
        ("NetworkPolicy", "axk1-egress"),
        ("ServiceMonitor", "axk1"),
        ("PodDisruptionBudget", "axk1"),
    ]
    objects = by_kind(outcome.objects)
    owner = {
        "apiVersion": "sovereign-stack.io/v1alpha1",
        "kind": "ModelDeployment",
        "name": "axk1",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    labels = {
        "app.kubernetes.io/name": "sovereign-model",
        "app.kubernetes.io/instance": "axk1",
        "app.kubernetes.io/component": "serving",
        "app.kubernetes.io/part-of": "sovereign-stack",
        "app.kubernetes.io/managed-by": "sovereign-operator",
        "sovereign-stack.io/model": "axk1",
        "sovereign-stack.io/model-version": "3",
    }
    for obj in outcome.objects:
        assert obj["metadata"]["namespace"] == "models"
        assert obj["metadata"]["ownerReferences"] == [owner]
        assert obj["metadata"]["labels"] == labels
    selector = {"app.kubernetes.io/instance": "axk1", "app.kubernetes.io/managed-by": "sovereign-operator"}

    assert objects["PodDisruptionBudget"]["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": {**selector, "sovereign-stack.io/role": "gpu-worker"}},
    }
    network = objects["NetworkPolicy"]
    assert network["metadata"]["annotations"] == {
        "sovereign-stack.io/egress-host-rules-not-enforced": "registry-mirror,model-store,identity-provider"
    }
    assert network["spec"] == {
        "podSelector": {"matchLabels": selector},
        "policyTypes": ["Egress"],
        "egress": [
            {
                "to": [
                    {
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                    }
                ],
                "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
            },
            {
                "to": [
                    {"podSelector": {"matchLabels": selector}},
                    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "sovereign-system"}}},
                ]
            },
            {
                "to": [{"ipBlock": {"cidr": "10.96.0.10/32"}}],
                "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
            },
        ],
    }
    monitor = objects["ServiceMonitor"]["spec"]
    assert monitor["selector"] == {"matchLabels": selector}
    assert monitor["endpoints"][0]["authorization"]["credentials"] == {"name": "sovereign-metrics-key", "key": "apiKey"}

    ray = objects["RayService"]["spec"]
    cluster = ray["rayClusterConfig"]
    (workers,) = cluster["workerGroupSpecs"]
    assert (workers["replicas"], workers["minReplicas"], workers["maxReplicas"]) == (2, 2, 2)
    worker_pod = workers["template"]["spec"]
    assert worker_pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert worker_pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    residency = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "node-restriction.kubernetes.io/residency", "operator": "In", "values": ["KR"]}
                        ]
                    }
                ]
            }
        }
    }
    assert worker_pod["affinity"] == residency
    assert cluster["headGroupSpec"]["template"]["spec"]["affinity"] == residency
    assert "tolerations" not in cluster["headGroupSpec"]["template"]["spec"]
    fetch = worker_pod["initContainers"][0]
    assert fetch["command"] == [
        "sovereign",
        "registry",
        "checkout",
        "axk1",
        "--alias",
        "production",
        "--expect-version",
        "3",
    ]
    assert {"name": "VAULT_K8S_ROLE", "value": "sovereign-serving"} in fetch["env"]
    for pod in (worker_pod, cluster["headGroupSpec"]["template"]["spec"]):
        for container in pod["containers"] + pod["initContainers"]:
            assert container["image"].startswith("registry.sovereign.kr/")
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
    (application,) = yaml.safe_load(ray["serveConfigV2"])["applications"]
    assert application["import_path"] == "serving.cluster:build", "our gateway in front, never vLLM's own server"
    llm = application["args"]["llm_config"]
    assert llm["model_loading_config"] == {"model_id": "axk1", "model_source": "/models/registry/axk1/3"}
    assert llm["engine_kwargs"] == {
        "tensor_parallel_size": 8,
        "pipeline_parallel_size": 2,
        "enable_expert_parallel": True,
        "max_model_len": 32768,
        "distributed_executor_backend": "ray",
    }
    assert llm["deployment_config"]["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 1,
        "target_ongoing_requests": 16,
    }

    validate_custom(objects["RayService"])
    validate_custom(objects["ServiceMonitor"])
    validate_builtin(objects["NetworkPolicy"])
    validate_builtin(objects["PodDisruptionBudget"])

    assert conditions(outcome.status) == {
        "Ready": ("False", "RayServicePending"),
        "PolicyCompliant": ("True", "Compliant"),
        "ModelResolved": ("True", "Resolved"),
    }
    assert all(c["lastTransitionTime"] == NOW and c["observedGeneration"] == 1 for c in outcome.status["conditions"])
    assert {
        key: outcome.status[key] for key in ("modelName", "alias", "modelVersion", "parallelism", "gpus", "rayService")
    } == {
        "modelName": "axk1",
        "alias": "production",
        "modelVersion": "3",
        "parallelism": "TP8 PP2 DP1 EP8",
        "gpus": 16,
        "rayService": "axk1",
    }
    assert outcome.events == [Event("Normal", "RollingOut", "serving axk1 version 3")]


def test_ready_when_the_ray_service_serves_and_unchanged_conditions_keep_their_time(policy: Any) -> None:
    deployment = Deployment.from_body(body(VLLM_SPEC))
    first = reconcile(deployment, Observed(policy, resolved(), NOW), Settings())
    second = reconcile(
        deployment,
        Observed(
            policy,
            resolved(),
            LATER,
            serving_version="3",
            ray_service_ready=True,
            conditions=first.status["conditions"],
        ),
        Settings(),
    )
    assert conditions(second.status)["Ready"] == ("True", "Serving")
    times = {c["type"]: c["lastTransitionTime"] for c in second.status["conditions"]}
    assert times == {"Ready": LATER, "PolicyCompliant": NOW, "ModelResolved": NOW}
    assert second.events == []
    assert second.objects == first.objects


def test_a_spec_change_changes_exactly_what_it_should(policy: Any) -> None:
    before = reconcile(Deployment.from_body(body(VLLM_SPEC)), Observed(policy, resolved(), NOW), Settings())
    scaled = {**VLLM_SPEC, "autoscaling": {"minReplicas": 1, "maxReplicas": 3}}
    after = reconcile(
        Deployment.from_body(body(scaled, generation=2)),
        Observed(policy, resolved(), LATER, serving_version="3", conditions=before.status["conditions"]),
        Settings(),
    )
    assert before.objects is not None
    assert after.objects is not None
    (ray_before, *rest_before), (ray_after, *rest_after) = before.objects, after.objects
    assert rest_before == rest_after
    assert changed_paths(ray_before, ray_after) == {
        ".spec.rayClusterConfig.enableInTreeAutoscaling",
        ".spec.rayClusterConfig.workerGroupSpecs[0].maxReplicas",
        ".spec.serveConfigV2.applications[0].args.llm_config.deployment_config.autoscaling_config.max_replicas",
        ".spec.serveConfigV2.applications[0].deployments[0].autoscaling_config.max_replicas",
    }
    assert ray_after["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] == 6
    assert after.status["gpus"] == 48
    assert all(c["observedGeneration"] == 2 for c in after.status["conditions"])
    assert after.events == []


def test_an_alias_change_rolls_out_the_new_version(policy: Any) -> None:
    deployment = Deployment.from_body(body(VLLM_SPEC))
    before = reconcile(deployment, Observed(policy, resolved("3"), NOW), Settings())
    after = reconcile(
        deployment, Observed(policy, resolved("4"), LATER, serving_version="3", ray_service_ready=True), Settings()
    )
    assert before.objects is not None
    assert after.objects is not None
    changes = set().union(*(changed_paths(b, a) for b, a in zip(before.objects, after.objects, strict=True)))
    version_label = ".metadata.labels.sovereign-stack.io/model-version"
    init = ".spec.rayClusterConfig.{group}.template.spec.initContainers[0].command[7]"
    assert changes == {
        version_label,
        ".spec.serveService.metadata.labels.sovereign-stack.io/model-version",
        ".spec.rayClusterConfig.headGroupSpec.template.metadata.labels.sovereign-stack.io/model-version",
        ".spec.rayClusterConfig.workerGroupSpecs[0].template.metadata.labels.sovereign-stack.io/model-version",
        init.format(group="headGroupSpec"),
        init.format(group="workerGroupSpecs[0]"),
        ".spec.serveConfigV2.applications[0].args.llm_config.model_loading_config.model_source",
        ".spec.serveConfigV2.applications[0].args.model_path",
        ".spec.serveConfigV2.applications[0].args.revision",
    }
    assert after.status["modelVersion"] == "4"
    assert conditions(after.status)["Ready"] == ("False", "RayServicePending")
    assert after.events == [Event("Normal", "RollingOut", "serving axk1 version 4 (was 3)")]


def test_an_alias_moved_outside_promotion_leaves_the_approved_version_serving(policy: Any) -> None:
    deployment = Deployment.from_body(body(VLLM_SPEC))
    refused = Resolution(
        ResolutionState.NOT_APPROVED, message="models:/axk1@production points at version 5, which was never approved"
    )
    outcome = reconcile(
        deployment, Observed(policy, refused, NOW, serving_version="3", ray_service_ready=True), Settings()
    )
    assert outcome.objects is None
    assert outcome.status["modelVersion"] == "3"
    assert conditions(outcome.status) == {
        "Ready": ("True", "Serving"),
        "PolicyCompliant": ("True", "Compliant"),
        "ModelResolved": ("False", "AliasNotApproved"),
    }
    (warning,) = outcome.events
    assert warning.type == "Warning"
    assert warning.message.endswith("never approved; version 3 keeps serving")


def test_an_unreachable_registry_serves_nothing_new_and_says_so(policy: Any) -> None:
    unavailable = Resolution(
        ResolutionState.REGISTRY_UNAVAILABLE, message="the model registry at http://mlflow:5000 is not reachable"
    )
    outcome = reconcile(Deployment.from_body(body(VLLM_SPEC)), Observed(policy, unavailable, NOW), Settings())
    assert outcome.objects == []
    assert conditions(outcome.status) == {
        "Ready": ("False", "NotServing"),
        "PolicyCompliant": ("True", "Compliant"),
        "ModelResolved": ("Unknown", "RegistryUnavailable"),
    }


def test_a_site_outside_the_jurisdiction_or_a_missing_policy_removes_everything(policy: Any) -> None:
    with_foreign_site = policy_with_a_foreign_site()
    spec = {**VLLM_SPEC, "sites": ["kr-seoul-1", "us-east-1"]}
    outcome = reconcile(
        Deployment.from_body(body(spec)), Observed(with_foreign_site, resolved(), NOW, serving_version="3"), Settings()
    )
    assert outcome.objects == []
    assert conditions(outcome.status)["PolicyCompliant"] == ("False", "PolicyViolation")
    assert "site `us-east-1`" in outcome.status["conditions"][1]["message"]
    assert outcome.events[0].reason == "PolicyViolation"

    missing = reconcile(Deployment.from_body(body(VLLM_SPEC)), Observed(None, resolved(), NOW), Settings())
    assert missing.objects == []
    assert "ResidencyPolicy `kr-default` does not exist" in missing.status["conditions"][1]["message"]


def test_chosen_sites_pin_their_region_too(policy: Any) -> None:
    spec = {**VLLM_SPEC, "sites": ["kr-seoul-1"]}
    outcome = reconcile(Deployment.from_body(body(spec)), Observed(policy, resolved(), NOW), Settings())
    assert outcome.objects is not None
    pod = outcome.objects[0]["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [
        {"key": "node-restriction.kubernetes.io/residency", "operator": "In", "values": ["KR"]},
        {"key": "topology.kubernetes.io/region", "operator": "In", "values": ["kr-seoul"]},
    ]


def test_a_one_gpu_deployment_runs_our_app_with_arguments_its_builder_accepts(policy: Any) -> None:
    from serving.cluster import ClusterArguments

    tiny = ModelSize(parameters_total=6_000_000, parameters_active=3_000_000)
    spec = {**VLLM_SPEC, "gpu": {"type": "L4-24GB", "perNode": 1}}
    outcome = reconcile(Deployment.from_body(body(spec)), Observed(policy, resolved("1", tiny), NOW), Settings())
    assert outcome.objects is not None
    (application,) = yaml.safe_load(outcome.objects[0]["spec"]["serveConfigV2"])["applications"]
    assert application["import_path"] == "serving.cluster:build"
    arguments = ClusterArguments.model_validate(application["args"])
    assert str(arguments.model_path) == "/models/registry/axk1/1"
    assert arguments.revision == "axk1/1"
    assert arguments.site == "kr-seoul-1"
    assert arguments.policy == policy.model_dump(mode="json", by_alias=True)
    assert arguments.tenants == ["acme"]
    assert arguments.llm_config["engine_kwargs"] == {
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": 1,
        "enable_expert_parallel": False,
        "max_model_len": 32768,
    }
    assert application["deployments"] == [
        {
            "name": "LLMServer",
            "autoscaling_config": {"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 16},
            "placement_group_bundles": [{"CPU": 1}, {"GPU": 1}],
            "placement_group_strategy": "PACK",
        }
    ]
    assert outcome.status["parallelism"] == "TP1 PP1 DP1 EP1"
