"""How many GPUs a replica of a model needs, and how it spreads over them.

The operator's seam to the sharding planner: `plan_replica` takes the model's size (from its registry
tags) and the deployment's GPU request and returns the parallelism. It counts weights only, with a
share of each GPU kept for the KV cache and activations. The full planner (`operators/capacity.py`,
`sovereign plan`) reads the model's shape and adds the KV cache per token and the context length.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from operators.resources import GpuRequest, ModelDeploymentSpec, Parallelism, ParallelismMode, WeightDtype

GIB = 1024**3
# Share of a GPU's memory the weights may take; the rest is KV cache, activations and the CUDA context.
WEIGHT_SHARE = 0.9
BYTES_PER_PARAMETER = {WeightDtype.BF16: 2, WeightDtype.FP8: 1}


class PlanError(ValueError):
    """The model cannot be placed as asked; the message says what would fit."""


@dataclass(frozen=True)
class ModelSize:
    parameters_total: int
    parameters_active: int

    @property
    def is_mixture_of_experts(self) -> bool:
        return self.parameters_active < self.parameters_total


@dataclass(frozen=True)
class Plan:
    parallelism: Parallelism
    gpus_per_replica: int
    nodes_per_replica: int
    weight_bytes_per_gpu: int


def gpu_memory_bytes(gpu_type: str) -> int:
    """`H100-80GB` → 80 GiB: vendors' "GB" on data-centre GPUs is the binary unit nvidia-smi reports."""
    match = re.fullmatch(r"[A-Za-z0-9]+-([0-9]+)GB", gpu_type)
    if match is None:
        raise PlanError(f"gpu.type `{gpu_type}` is not MODEL-<memory>GB, e.g. H100-80GB")
    return int(match.group(1)) * GIB


def minimum_gpus(size: ModelSize, dtype: WeightDtype, gpu_type: str) -> int:
    """The fewest GPUs, a power of two, whose memory holds the weights within `WEIGHT_SHARE`."""
    weights = size.parameters_total * BYTES_PER_PARAMETER[dtype]
    needed = max(1, math.ceil(weights / (gpu_memory_bytes(gpu_type) * WEIGHT_SHARE)))
    return 1 << (needed - 1).bit_length()


def auto_parallelism(gpus: int, gpu: GpuRequest, size: ModelSize) -> Parallelism:
    """Tensor parallel inside a node, pipeline stages across nodes; vLLM's experts over the tensor ranks."""
    tensor = min(gpus, gpu.per_node)
    expert = tensor if size.is_mixture_of_experts and tensor > 1 else 1
    return Parallelism(mode=ParallelismMode.AUTO, tensor=tensor, pipeline=gpus // tensor, expert=expert)


def plan_replica(size: ModelSize, dtype: WeightDtype, gpu: GpuRequest, parallelism: Parallelism) -> Plan:
    """The plan for one replica; explicit parallelism is checked against the minimum rather than chosen."""
    gpus = minimum_gpus(size, dtype, gpu.type)
    chosen = auto_parallelism(gpus, gpu, size) if parallelism.mode is ParallelismMode.AUTO else parallelism
    weights = size.parameters_total * BYTES_PER_PARAMETER[dtype]
    return Plan(
        parallelism=chosen,
        gpus_per_replica=chosen.gpus(),
        nodes_per_replica=math.ceil(chosen.gpus() / gpu.per_node),
        weight_bytes_per_gpu=weights // chosen.gpus(),
    )


def gpu_problems(
    size: ModelSize,
    dtype: WeightDtype,
    gpu: GpuRequest,
    parallelism: Parallelism,
    max_replicas: int,
    gpu_budget: int,
) -> list[str]:
    """Why the GPUs asked for do not match the plan: too few to hold the weights, more than it needs, or over budget."""
    needed = minimum_gpus(size, dtype, gpu.type)
    plan = plan_replica(size, dtype, gpu, parallelism)
    problems = []
    total_billions = size.parameters_total / 1e9
    if plan.gpus_per_replica < needed:
        problems.append(
            f"{parallelism.describe()} uses {plan.gpus_per_replica} GPU(s) per replica, but {total_billions:.1f}B "
            f"parameters in {dtype.value} need at least {needed} × {gpu.type}"
        )
    elif plan.gpus_per_replica > needed:
        problems.append(
            f"{parallelism.describe()} asks for {plan.gpus_per_replica} GPUs per replica; the plan for "
            f"{total_billions:.1f}B parameters in {dtype.value} on {gpu.type} allows {needed}. Add replicas for "
            "throughput instead"
        )
    if plan.gpus_per_replica % gpu.per_node and plan.gpus_per_replica > gpu.per_node:
        problems.append(
            f"{plan.gpus_per_replica} GPUs per replica do not fill whole nodes of gpu.perNode={gpu.per_node}"
        )
    if max_replicas * plan.gpus_per_replica > gpu_budget:
        problems.append(
            f"{max_replicas} replica(s) × {plan.gpus_per_replica} GPUs = {max_replicas * plan.gpus_per_replica} "
            f"GPUs, over the cluster's budget of {gpu_budget} for one deployment (operator.maxGpus)"
        )
    return problems


def deployment_gpu_problems(spec: ModelDeploymentSpec, size: ModelSize, gpu_budget: int) -> list[str]:
    """`gpu_problems` for a deployment at its most replicas; a GPU type the planner cannot read is one too."""
    _, maximum = spec.replica_bounds()
    try:
        return gpu_problems(size, spec.dtype, spec.gpu, spec.parallelism, maximum, gpu_budget)
    except PlanError as error:
        return [str(error)]
