"""The custom resources the operator serves, as pydantic models: the one source of their CRD schemas.

`ModelDeployment` (namespaced) asks for a registered model to be served; `ResidencyPolicy`
(cluster-scoped) carries the policy document, validated by the same `policies` model the rest of the
stack uses. Keys are camelCase, as `kubectl` users expect; Python uses the snake_case names.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.alias_generators import to_camel

from policies.model import Name

GROUP = "sovereign-stack.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
# The policy document's description, which the ResidencyPolicy CRD has no field for.
DESCRIPTION_ANNOTATION = f"{GROUP}/description"
MODEL_REFERENCE_PATTERN = r"^models:/[A-Za-z0-9][A-Za-z0-9._-]*@[A-Za-z0-9_-]+$"


class _Spec(BaseModel):
    """Strict: unknown keys are errors (the API server prunes them; the webhook names them)."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)


class Engine(StrEnum):
    """The inference engine behind the gateway's OpenAI API: vLLM, the one engine from laptop to cluster."""

    VLLM = "vllm"


class WeightDtype(StrEnum):
    BF16 = "bf16"
    FP8 = "fp8"


class ParallelismMode(StrEnum):
    AUTO = "auto"
    EXPLICIT = "explicit"


class Parallelism(_Spec):
    mode: ParallelismMode = Field(
        ParallelismMode.AUTO,
        description="`auto` lets the planner choose from the model's size and the GPU type; `explicit` uses the "
        "degrees below.",
    )
    tensor: int = Field(1, ge=1, le=64, description="Tensor-parallel degree (GPUs one layer is split over).")
    pipeline: int = Field(1, ge=1, le=64, description="Pipeline-parallel degree (stages the layers are split into).")
    data: int = Field(1, ge=1, le=64, description="Data-parallel degree inside one replica (attention ranks).")
    expert: int = Field(
        1,
        ge=1,
        le=256,
        description="Expert-parallel degree: vLLM spreads the routed experts over this many GPUs; 1 or tensor × data.",
    )

    def gpus(self) -> int:
        """GPUs one replica occupies."""
        return max(self.tensor * self.pipeline * self.data, self.expert)

    def describe(self) -> str:
        return f"TP{self.tensor} PP{self.pipeline} DP{self.data} EP{self.expert}"


class GpuRequest(_Spec):
    type: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]+-[0-9]+GB$")] = Field(
        "H100-80GB", description="GPU model and memory, as the planner knows it, e.g. `H100-80GB` or `H200-141GB`."
    )
    per_node: int = Field(8, ge=1, le=16, description="GPUs each worker pod requests (usually all of a node's).")
    resource_name: str = Field("nvidia.com/gpu", description="The extended resource the device plugin advertises.")


class Autoscaling(_Spec):
    min_replicas: int = Field(1, ge=0, description="Replicas kept running when idle.")
    max_replicas: int = Field(1, ge=1, description="Replicas at most; each needs the plan's GPUs.")
    target_ongoing_requests: int = Field(16, ge=1, description="Ongoing requests per replica Serve scales towards.")

    @model_validator(mode="after")
    def _bounds_ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"minReplicas ({self.min_replicas}) is above maxReplicas ({self.max_replicas})")
        return self


class ModelDeploymentSpec(_Spec):
    model: Annotated[str, StringConstraints(pattern=MODEL_REFERENCE_PATTERN)] = Field(
        description="The registered model and alias to serve, `models:/NAME@ALIAS`; only a version promoted to that "
        "alias through the registry's gates is served."
    )
    engine: Engine = Field(Engine.VLLM, description="`vllm`: the engine `sovereign up` runs too, behind the gateway.")
    policy_ref: Name = Field(
        "kr-default", description="Name of the cluster's `ResidencyPolicy` this deployment must comply with."
    )
    sites: list[Name] = Field(
        default_factory=list,
        description="Sites of the policy the workers may run on; empty means every in-country site.",
    )
    dtype: WeightDtype = Field(WeightDtype.BF16, description="Weight dtype the engine loads.")
    max_context_length: int = Field(32768, ge=512, description="Longest context (prompt + output) served, in tokens.")
    gpu: GpuRequest = Field(default_factory=GpuRequest, description="The GPUs each worker pod gets.")
    parallelism: Parallelism = Field(default_factory=Parallelism, description="How one replica spreads over GPUs.")
    replicas: int = Field(1, ge=0, description="Replicas when `autoscaling` is not set.")
    autoscaling: Autoscaling | None = Field(None, description="Replica bounds for Ray Serve's autoscaler.")
    tenants: list[Name] = Field(min_length=1, description="Tenants allowed to call this model through the gateway.")

    @model_validator(mode="after")
    def _engine_parallelism_consistent(self) -> ModelDeploymentSpec:
        degrees = self.parallelism
        if degrees.expert not in (1, degrees.tensor * degrees.data):
            raise ValueError(
                f"parallelism.expert: vLLM spreads experts over tensor × data = {degrees.tensor * degrees.data} GPUs; "
                "set expert to 1 (off) or to that number"
            )
        return self

    def replica_bounds(self) -> tuple[int, int]:
        if self.autoscaling is None:
            return self.replicas, self.replicas
        return self.autoscaling.min_replicas, self.autoscaling.max_replicas


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(_Spec):
    type: str = Field(description="`Ready`, `PolicyCompliant` or `ModelResolved`.")
    status: ConditionStatus = Field(description="`True`, `False` or `Unknown`.")
    reason: str = Field(description="One CamelCase word for machines, e.g. `AliasNotApproved`.")
    message: str = Field("", description="What happened and what to do, for people.")
    last_transition_time: str = Field(description="When the status last changed (RFC 3339).")
    observed_generation: int = Field(0, description="The `metadata.generation` this condition was computed for.")


class ModelDeploymentStatus(_Spec):
    observed_generation: int = Field(0, description="The `metadata.generation` the operator last reconciled.")
    model_name: str = Field("", description="The registered model's name.")
    alias: str = Field("", description="The alias served.")
    model_version: str = Field("", description="The version the alias pointed at when last reconciled.")
    parallelism: str = Field("", description="The parallelism in force, e.g. `TP8 PP1 DP2 EP16`.")
    gpus: int = Field(0, description="GPUs at the most replicas: replicas × GPUs per replica.")
    ray_service: str = Field("", description="The KubeRay `RayService` serving it.")
    conditions: list[Condition] = Field(default_factory=list, description="Ready, PolicyCompliant, ModelResolved.")


class ResidencyPolicyStatus(_Spec):
    observed_generation: int = Field(0, description="The `metadata.generation` the operator last validated.")
    digest: str = Field("", description="SHA-256 of the policy document in force, as audit records cite it.")
    conditions: list[Condition] = Field(default_factory=list, description="`Valid`: the document passed validation.")
