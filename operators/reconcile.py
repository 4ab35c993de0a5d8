"""Pure reconcile functions: a `ModelDeployment`, what was observed, and the operator's settings in; the
desired objects, the status and the events out. No API calls, so every case is tested directly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import yaml

from operators.admission_policies import residency_node_labels
from operators.chart_values import ChartValues
from operators.network_policies import egress_network_policy
from operators.planning import ModelSize, Plan, PlanError, deployment_gpu_problems, plan_replica
from operators.resources import API_VERSION, ModelDeploymentSpec, WeightDtype
from policies.evaluation import PolicyEvaluator
from policies.model import ResidencyPolicy, Site
from serving import vllm

MANAGED_BY = "sovereign-operator"
MODEL_CACHE = "/models"
SERVE_PORT = 8000
RAY_METRICS_PORT = 8080
GPU_TAINT = "nvidia.com/gpu"
CPU_PER_GPU = 8
MEMORY_PER_GPU = "96Gi"
SERVE_APPLICATION = "sovereign"


class ConditionType(StrEnum):
    READY = "Ready"
    POLICY_COMPLIANT = "PolicyCompliant"
    MODEL_RESOLVED = "ModelResolved"


class ResolutionState(StrEnum):
    RESOLVED = "Resolved"
    NOT_APPROVED = "AliasNotApproved"
    REGISTRY_UNAVAILABLE = "RegistryUnavailable"


@dataclass(frozen=True)
class Resolution:
    """What the registry says `spec.model` is now: a version approved for that alias, or why not."""

    state: ResolutionState
    version: str = ""
    size: ModelSize | None = None
    message: str = ""


class ModelResolver(Protocol):
    def resolve(self, reference: str) -> Resolution: ...


@dataclass(frozen=True)
class Deployment:
    name: str
    namespace: str
    uid: str
    generation: int
    spec: ModelDeploymentSpec

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Deployment:
        metadata = body["metadata"]
        return cls(
            name=metadata["name"],
            namespace=metadata["namespace"],
            uid=metadata.get("uid", ""),
            generation=int(metadata.get("generation", 1)),
            spec=ModelDeploymentSpec.model_validate(dict(body.get("spec") or {})),
        )

    @property
    def model_name(self) -> str:
        return self.spec.model.removeprefix("models:/").partition("@")[0]

    @property
    def alias(self) -> str:
        return self.spec.model.partition("@")[2]


# Outside the chart (`sovereign operator run` by hand), the operator assumes the chart's defaults.
_CHART = ChartValues()


@dataclass(frozen=True)
class Settings:
    """How the operator was installed (Helm values, as environment variables of its pod)."""

    image: str = f"{_CHART.global_.image_registry}/{_CHART.image.repository}:{_CHART.image.tag}"
    ray_version: str = _CHART.operator.ray_version
    registry_uri: str = "http://sovereign-stack-mlflow:5000"
    vault_addr: str = _CHART.openbao.address
    vault_role: str = _CHART.openbao.kubernetes_auth.roles.serving
    vault_mount: str = _CHART.openbao.kubernetes_auth.mount_path
    stack_namespace: str = "sovereign-system"
    gpu_budget: int = _CHART.operator.max_gpus
    metrics_secret: str = _CHART.operator.metrics_secret.name
    metrics_secret_key: str = _CHART.operator.metrics_secret.key

    @classmethod
    def from_environment(cls, environment: Mapping[str, str] = os.environ) -> Settings:
        defaults = cls()
        return cls(
            image=environment.get("SOVEREIGN_IMAGE", defaults.image),
            ray_version=environment.get("SOVEREIGN_RAY_VERSION", defaults.ray_version),
            registry_uri=environment.get("MLFLOW_TRACKING_URI", defaults.registry_uri),
            vault_addr=environment.get("VAULT_ADDR", defaults.vault_addr),
            vault_role=environment.get("SOVEREIGN_SERVING_VAULT_ROLE", defaults.vault_role),
            vault_mount=environment.get("VAULT_K8S_MOUNT", defaults.vault_mount),
            stack_namespace=environment.get("POD_NAMESPACE", defaults.stack_namespace),
            gpu_budget=int(environment.get("SOVEREIGN_MAX_GPUS", defaults.gpu_budget)),
            metrics_secret=environment.get("SOVEREIGN_METRICS_SECRET", defaults.metrics_secret),
            metrics_secret_key=environment.get("SOVEREIGN_METRICS_SECRET_KEY", defaults.metrics_secret_key),
        )


@dataclass(frozen=True)
class Observed:
    """What the handler read before calling `reconcile`."""

    policy: ResidencyPolicy | None
    resolution: Resolution
    now: str
    serving_version: str = ""
    ray_service_ready: bool | None = None
    conditions: list[Mapping[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class Outcome:
    objects: list[dict[str, Any]] | None
    status: dict[str, Any]
    events: list[Event]


def chosen_sites(spec: ModelDeploymentSpec, policy: ResidencyPolicy) -> list[Site]:
    evaluator = PolicyEvaluator(policy)
    if not spec.sites:
        return evaluator.in_country_sites()
    by_name = {site.name: site for site in policy.spec.sites}
    return [by_name[name] for name in spec.sites if name in by_name]


def compliance_problems(spec: ModelDeploymentSpec, policy: ResidencyPolicy | None) -> list[str]:
    """Why the deployment breaks its residency policy; empty when it complies."""
    if policy is None:
        return [f"ResidencyPolicy `{spec.policy_ref}` does not exist or is not valid"]
    evaluator = PolicyEvaluator(policy)
    problems = []
    for name in spec.sites:
        decision = evaluator.site_in_country(name)
        if not decision.allowed:
            problems.append(f"site `{name}`: {decision.reason}")
    if not chosen_sites(spec, policy):
        problems.append(f"policy `{policy.metadata.name}` has no in-country site to run on")
    return problems


def _labels(deployment: Deployment, version: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "sovereign-model",
        "app.kubernetes.io/instance": deployment.name,
        "app.kubernetes.io/component": "serving",
        "app.kubernetes.io/part-of": "sovereign-stack",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "sovereign-stack.io/model": deployment.model_name,
        "sovereign-stack.io/model-version": version,
    }


def selector(name: str) -> dict[str, str]:
    """The labels that find every object and pod of one deployment (the version label changes on rollout)."""
    return {"app.kubernetes.io/instance": name, "app.kubernetes.io/managed-by": MANAGED_BY}


def _metadata(deployment: Deployment, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": deployment.namespace,
        "labels": labels,
        "ownerReferences": [
            {
                "apiVersion": API_VERSION,
                "kind": "ModelDeployment",
                "name": deployment.name,
                "uid": deployment.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }


def node_affinity(policy: ResidencyPolicy, sites: list[Site]) -> dict[str, Any]:
    """Required: the residency labels every in-country node has, and each label the chosen sites share."""
    expressions = {key: {value} for key, value in residency_node_labels(policy).items()}
    shared_keys = set.intersection(*(set(site.node_labels) for site in sites)) if sites else set()
    for key in sorted(shared_keys - expressions.keys()):
        expressions[key] = {site.node_labels[key] for site in sites}
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": key, "operator": "In", "values": sorted(values)}
                            for key, values in sorted(expressions.items())
                        ]
                    }
                ]
            }
        }
    }


def _environment(settings: Settings) -> list[dict[str, str]]:
    return [
        {"name": "MLFLOW_TRACKING_URI", "value": settings.registry_uri},
        {"name": "VAULT_ADDR", "value": settings.vault_addr},
        {"name": "VAULT_K8S_ROLE", "value": settings.vault_role},
        {"name": "VAULT_K8S_MOUNT", "value": settings.vault_mount},
        {"name": "SOVEREIGN_CACHE_DIR", "value": MODEL_CACHE},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
        {"name": "RAY_USAGE_STATS_ENABLED", "value": "0"},
    ]


def _pod_template(
    deployment: Deployment,
    settings: Settings,
    labels: dict[str, str],
    affinity: dict[str, Any],
    container: str,
    resources: dict[str, Any],
    version: str,
    gpu_nodes: bool,
) -> dict[str, Any]:
    environment = _environment(settings)
    mount = [{"name": "model-cache", "mountPath": MODEL_CACHE}]
    hardened = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    spec: dict[str, Any] = {
        "affinity": affinity,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        # The init container fetches the approved version and checks every file's SHA-256 before Ray starts.
        "initContainers": [
            {
                "name": "fetch-model",
                "image": settings.image,
                "command": [
                    "sovereign",
                    "registry",
                    "checkout",
                    deployment.model_name,
                    "--alias",
                    deployment.alias,
                    "--expect-version",
                    version,
                ],
                "env": environment,
                "volumeMounts": mount,
                "securityContext": hardened,
            }
        ],
        "containers": [
            {
                "name": container,
                "image": settings.image,
                "env": environment,
                "resources": resources,
                "volumeMounts": mount,
                "securityContext": hardened,
            }
        ],
        "volumes": [{"name": "model-cache", "emptyDir": {}}],
    }
    if gpu_nodes:
        spec["tolerations"] = [{"key": GPU_TAINT, "operator": "Exists", "effect": "NoSchedule"}]
    return {"metadata": {"labels": labels}, "spec": spec}


def serve_application(deployment: Deployment, plan: Plan, version: str, policy: ResidencyPolicy) -> dict[str, Any]:
    """The Ray Serve application: our gateway in front of the vLLM model server, as `sovereign up` runs it, with
    the planner's parallelism in the `LLMConfig` (`serving.vllm`) and a placement group for the replica's GPUs."""
    spec = deployment.spec
    model_path = f"{MODEL_CACHE}/registry/{deployment.model_name}/{version}"
    minimum, maximum = spec.replica_bounds()
    autoscaling = {
        "min_replicas": minimum,
        "max_replicas": maximum,
        "target_ongoing_requests": spec.autoscaling.target_ongoing_requests if spec.autoscaling else 16,
    }
    degrees = plan.parallelism
    quantization = "fp8" if spec.dtype is WeightDtype.FP8 else None
    kwargs = vllm.engine_kwargs(
        degrees.tensor, degrees.pipeline, degrees.data, degrees.expert, spec.max_context_length, quantization
    )
    config = vllm.llm_config(deployment.model_name, model_path, spec.gpu.type.split("-")[0], kwargs, autoscaling)
    return {
        "name": SERVE_APPLICATION,
        "route_prefix": "/",
        "import_path": "serving.cluster:build",
        "args": {
            "model_path": model_path,
            "served_model_name": deployment.model_name,
            "revision": f"{deployment.model_name}/{version}",
            "dtype": "bfloat16",
            "site": chosen_sites(spec, policy)[0].name,
            "policy": policy.model_dump(mode="json", by_alias=True),
            "tenants": list(spec.tenants),
            "llm_config": config,
        },
        "deployments": [vllm.model_server_deployment(plan.gpus_per_replica, autoscaling)],
    }


def ray_service(
    deployment: Deployment, settings: Settings, plan: Plan, version: str, policy: ResidencyPolicy
) -> dict[str, Any]:
    spec = deployment.spec
    labels = _labels(deployment, version)
    affinity = node_affinity(policy, chosen_sites(spec, policy))
    minimum, maximum = spec.replica_bounds()
    gpus_per_pod = min(plan.gpus_per_replica, spec.gpu.per_node)
    worker_resources = {
        "limits": {spec.gpu.resource_name: gpus_per_pod, "cpu": CPU_PER_GPU * gpus_per_pod, "memory": MEMORY_PER_GPU},
        "requests": {"cpu": CPU_PER_GPU * gpus_per_pod, "memory": MEMORY_PER_GPU},
    }
    head_resources = {"limits": {"cpu": 4, "memory": "16Gi"}, "requests": {"cpu": 2, "memory": "8Gi"}}
    worker_labels = {**labels, "sovereign-stack.io/role": "gpu-worker"}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": _metadata(deployment, deployment.name, labels),
        "spec": {
            "serveConfigV2": yaml.safe_dump(
                {"applications": [serve_application(deployment, plan, version, policy)]}, sort_keys=False
            ),
            "serveService": {
                "metadata": {"name": f"{deployment.name}-serve", "labels": labels},
                "spec": {
                    "type": "ClusterIP",
                    "ports": [
                        {"name": "serve", "port": SERVE_PORT, "targetPort": SERVE_PORT},
                        {"name": "ray-metrics", "port": RAY_METRICS_PORT, "targetPort": RAY_METRICS_PORT},
                    ],
                },
            },
            "rayClusterConfig": {
                "rayVersion": settings.ray_version,
                "enableInTreeAutoscaling": spec.autoscaling is not None,
                "headGroupSpec": {
                    "rayStartParams": {"num-gpus": "0", "metrics-export-port": str(RAY_METRICS_PORT)},
                    "template": _pod_template(
                        deployment, settings, labels, affinity, "ray-head", head_resources, version, gpu_nodes=False
                    ),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "gpu-workers",
                        "replicas": minimum * plan.nodes_per_replica,
                        "minReplicas": minimum * plan.nodes_per_replica,
                        "maxReplicas": maximum * plan.nodes_per_replica,
                        "rayStartParams": {"metrics-export-port": str(RAY_METRICS_PORT)},
                        "template": _pod_template(
                            deployment, settings, worker_labels, affinity, "ray-worker", worker_resources, version, True
                        ),
                    }
                ],
            },
        },
    }


def network_policy(
    deployment: Deployment, settings: Settings, policy: ResidencyPolicy, labels: dict[str, str]
) -> dict[str, Any]:
    """Egress denied but for DNS, the deployment's own pods, the stack's namespace and the policy's networks."""
    stack = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": settings.stack_namespace}}}
    own_pods = {"podSelector": {"matchLabels": selector(deployment.name)}}
    name = f"{deployment.name}-egress"
    generated = egress_network_policy(
        policy, name, {"matchLabels": selector(deployment.name)}, labels, [own_pods, stack]
    )
    generated["metadata"] |= _metadata(deployment, name, labels)
    return generated


def service_monitor(deployment: Deployment, settings: Settings, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": _metadata(deployment, deployment.name, labels),
        "spec": {
            "selector": {"matchLabels": selector(deployment.name)},
            "namespaceSelector": {"matchNames": [deployment.namespace]},
            "endpoints": [
                {
                    "port": "serve",
                    "path": "/metrics",
                    "authorization": {
                        "type": "Bearer",
                        "credentials": {"name": settings.metrics_secret, "key": settings.metrics_secret_key},
                    },
                },
                {"port": "ray-metrics", "path": "/metrics"},
            ],
        },
    }


def disruption_budget(deployment: Deployment, labels: dict[str, str]) -> dict[str, Any]:
    """One GPU worker at a time: a drain never takes down more of a replica than a restart would."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(deployment, deployment.name, labels),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": {**selector(deployment.name), "sovereign-stack.io/role": "gpu-worker"}},
        },
    }


def _condition(
    observed: Observed, generation: int, kind: ConditionType, status: str, reason: str, message: str
) -> dict[str, Any]:
    previous = next((c for c in observed.conditions if c.get("type") == kind.value), None)
    unchanged = previous is not None and previous.get("status") == status
    return {
        "type": kind.value,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": previous["lastTransitionTime"] if unchanged and previous else observed.now,
        "observedGeneration": generation,
    }


def _resolved_condition(spec: ModelDeploymentSpec, resolution: Resolution, kept: str) -> tuple[str, str, str]:
    if resolution.state is ResolutionState.RESOLVED:
        return "True", "Resolved", f"{spec.model} is version {resolution.version}, approved for this alias"
    still = f"; version {kept} keeps serving" if kept else ""
    status = "False" if resolution.state is ResolutionState.NOT_APPROVED else "Unknown"
    return status, resolution.state.value, resolution.message + still


def reconcile(deployment: Deployment, observed: Observed, settings: Settings) -> Outcome:
    """The desired objects for `deployment`, its status and the events worth telling `kubectl describe`.

    `Outcome.objects` is None when the objects must stay as they are: the registry is unreachable, or
    the alias points at a version that was never approved, so the approved version keeps serving.
    """
    spec = deployment.spec
    resolution = observed.resolution
    resolved = resolution.state is ResolutionState.RESOLVED
    events: list[Event] = []
    problems = compliance_problems(spec, observed.policy)
    plan: Plan | None = None
    if not problems and resolved and resolution.size is not None:
        problems = deployment_gpu_problems(spec, resolution.size, settings.gpu_budget)
        with suppress(PlanError):  # then `problems` already says why there is no plan
            plan = plan_replica(resolution.size, spec.dtype, spec.gpu, spec.parallelism)

    kept = observed.serving_version if not resolved and not problems else ""
    model_condition = _resolved_condition(spec, resolution, kept)
    if not resolved:
        events.append(Event("Warning", resolution.state.value, model_condition[2]))
    if problems:
        compliant = ("False", "PolicyViolation", "; ".join(problems))
        events.append(Event("Warning", "PolicyViolation", "; ".join(problems)))
    else:
        compliant = ("True", "Compliant", f"complies with ResidencyPolicy `{spec.policy_ref}`")

    objects: list[dict[str, Any]] | None = []
    version = ""
    if kept:
        objects, version = None, kept
    elif plan is not None and observed.policy is not None and not problems:
        version = resolution.version
        labels = _labels(deployment, version)
        objects = [
            ray_service(deployment, settings, plan, version, observed.policy),
            network_policy(deployment, settings, observed.policy, labels),
            service_monitor(deployment, settings, labels),
            disruption_budget(deployment, labels),
        ]
        if version != observed.serving_version:
            previous = f" (was {observed.serving_version})" if observed.serving_version else ""
            events.append(Event("Normal", "RollingOut", f"serving {deployment.model_name} version {version}{previous}"))

    if not version:
        ready = ("False", "NotServing", "nothing is served until the model resolves and the deployment complies")
    elif observed.ray_service_ready and version == observed.serving_version:
        ready = ("True", "Serving", f"RayService `{deployment.name}` serves version {version}")
    else:
        ready = ("False", "RayServicePending", f"waiting for RayService `{deployment.name}` to serve version {version}")

    conditions = [
        _condition(observed, deployment.generation, ConditionType.READY, *ready),
        _condition(observed, deployment.generation, ConditionType.POLICY_COMPLIANT, *compliant),
        _condition(observed, deployment.generation, ConditionType.MODEL_RESOLVED, *model_condition),
    ]
    _, maximum = spec.replica_bounds()
    status = {
        "observedGeneration": deployment.generation,
        "modelName": deployment.model_name,
        "alias": deployment.alias,
        "modelVersion": version,
        "conditions": conditions,
    }
    if plan is not None:
        status |= {"parallelism": plan.parallelism.describe(), "gpus": plan.gpus_per_replica * maximum}
    if version:
        status["rayService"] = deployment.name
    return Outcome(objects, status, events)
