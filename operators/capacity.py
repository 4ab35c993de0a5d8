"""The sharding and capacity planner behind `sovereign plan`: the layout of a GPU inventory that serves a
model, and how many sequences of a given context it holds at once.

The model's shape comes from its Hugging Face `config.json` (or a built-in one), so parameters and the
KV cache per token are counted exactly, without weights or torch. The memory model, per GPU:

- usable memory = the GPU's memory × `WEIGHT_SHARE` (0.9, vLLM's `gpu_memory_utilization`);
- weights at `BYTES_PER_PARAMETER` (bf16 2 bytes, fp8 1 byte), plus the fp32 router bias of DeepSeek-V3-
  style models; the KV cache in bf16 (2 bytes per element);
- KV room = usable memory − weights. A layout fits when its weights fit and one sequence of `context`
  tokens fits in the KV room; its concurrent sequences are the KV room over one sequence's KV cache.

The layouts use every GPU of the inventory:

- tensor × pipeline: tensor a power of two within a node, pipeline stages over the rest (across
  nodes), the experts spread over the tensor ranks; weights per GPU = all weights / GPUs. MLA's latent
  KV cannot be split over heads, so every tensor rank holds the whole latent cache of its stage's
  layers: KV per token per GPU = KV per token / pipeline (GQA: also / min(tensor, KV heads)).
- data-parallel attention with expert parallelism over N GPUs: each rank holds the non-expert weights
  and 1/N of the experts, and the KV cache of its own sequences only, so sequences add up over ranks.

The recommendation is the fitting layout with the fewest pipeline stages, which is vLLM's multi-node
recipe: tensor parallel inside a node, pipeline stages across nodes, so every token crosses as few
stages as possible. Ties go to the layout holding more sequences, so data-parallel attention wins on
one node when it fits. Deeper pipelines hold more sequences of MLA (each stage caches fewer layers);
they are listed as alternatives with their counts.

The counts are upper bounds: vLLM also takes the activations' peak out of the KV room, and its pipeline
stages differ by a layer and hold the embeddings and LM head at the ends; the plan evens them out.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from operators.admission import field_problems
from operators.planning import (
    BYTES_PER_PARAMETER,
    GIB,
    WEIGHT_SHARE,
    ModelSize,
    Plan,
    PlanError,
    gpu_memory_bytes,
    minimum_gpus,
)
from operators.reconcile import Deployment, Settings, ray_service, serve_application
from operators.resources import API_VERSION, Engine, Parallelism, ParallelismMode, WeightDtype
from policies.evaluation import PolicyEvaluator
from policies.model import ResidencyPolicy

KV_BYTES_PER_ELEMENT = 2  # the KV cache stays bf16 whatever the weights' dtype
ROUTER_BIAS_BYTES = 4  # `e_score_correction_bias` is kept in fp32
MAX_GPUS_SEARCHED = 1024
# Where each architecture keeps its routed-expert count: DeepSeek/A.X K1, Mixtral, Qwen.
EXPERT_COUNT_KEYS = ("n_routed_experts", "num_local_experts", "num_experts")
# DeepSeek-V3-style routers add a per-expert score bias; A.X K1 also an RMSNorm after every MoE block.
ROUTER_BIAS_MODEL_TYPES = frozenset({"deepseek_v3", "axk1"})
POST_MLP_NORM_MODEL_TYPES = frozenset({"axk1"})

BUILTIN_MODELS: dict[str, dict[str, Any]] = {
    # A.X K1's published architecture (519B total, about 33B active): layer 0 dense, 60 MoE layers.
    "axk1-519b": {
        "architectures": ["AXK1ForCausalLM"],
        "model_type": "axk1",
        "hidden_size": 7168,
        "intermediate_size": 18432,
        "moe_intermediate_size": 2048,
        "num_hidden_layers": 61,
        "first_k_dense_replace": 1,
        "num_attention_heads": 64,
        "num_key_value_heads": 64,
        "n_routed_experts": 192,
        "n_shared_experts": 1,
        "num_experts_per_tok": 8,
        "n_group": 8,
        "topk_group": 4,
        "routed_scaling_factor": 2.5,
        "kv_lora_rank": 512,
        "q_lora_rank": 1536,
        "qk_rope_head_dim": 64,
        "qk_nope_head_dim": 128,
        "v_head_dim": 128,
        "vocab_size": 163840,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": False,
    }
}


def _integer(config: Mapping[str, Any], key: str, source: str, minimum: int = 1, default: int | None = None) -> int:
    value = default if config.get(key) is None else config[key]
    if value is None:
        raise PlanError(f"{source}: `{key}` is missing; the model's Hugging Face config.json has it")
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PlanError(f"{source}: `{key}` must be a whole number ≥ {minimum}, not {value!r}")
    return value


def _flag(config: Mapping[str, Any], key: str, source: str) -> bool:
    value = config.get(key, False)
    if not isinstance(value, bool):
        raise PlanError(f"{source}: `{key}` must be true or false, not {value!r}")
    return value


def _dense_layers(config: Mapping[str, Any], source: str, layers: int) -> int:
    """Layers with a dense MLP in a mixture of experts: `mlp_layer_types` (transformers 5), else the first k."""
    types = config.get("mlp_layer_types")
    if types is None:
        dense = _integer(config, "first_k_dense_replace", source, minimum=0, default=0)
    elif isinstance(types, list) and len(types) == layers and all(kind in ("dense", "sparse") for kind in types):
        dense = types.count("dense")
    else:
        raise PlanError(f"{source}: `mlp_layer_types` must list `dense` or `sparse` for each of the {layers} layers")
    if dense > layers:
        raise PlanError(f"{source}: `first_k_dense_replace` ({dense}) is more than `num_hidden_layers` ({layers})")
    return dense


@dataclass(frozen=True, kw_only=True)
class ModelShape:
    """A decoder-only model's dimensions. Counts are exact (the tests check them against transformers) for
    MLA models with routed and shared experts (A.X K1, DeepSeek-V3) and for GQA models with or without
    experts (Llama, Mixtral)."""

    name: str
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    vocab_size: int
    intermediate_size: int
    num_attention_heads: int
    max_position_embeddings: int
    tie_word_embeddings: bool
    dense_layers: int
    n_routed_experts: int = 0
    n_shared_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    # Multi-head latent attention, when kv_lora_rank > 0; q_lora_rank None is a full-rank query projection.
    q_lora_rank: int | None = None
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # Grouped-query attention otherwise.
    num_key_value_heads: int = 0
    head_dim: int = 0
    attention_bias: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any], name: str, source: str) -> ModelShape:
        """Read a `config.json` dict; `source` (a file, or `built-in model X`) starts every error message."""
        layers = _integer(config, "num_hidden_layers", source)
        hidden = _integer(config, "hidden_size", source)
        heads = _integer(config, "num_attention_heads", source)
        intermediate = _integer(config, "intermediate_size", source)
        expert_key = next((key for key in EXPERT_COUNT_KEYS if config.get(key)), None)
        moe: dict[str, Any] = {"dense_layers": layers}
        if expert_key is not None:
            moe = {
                "dense_layers": _dense_layers(config, source, layers),
                "n_routed_experts": _integer(config, expert_key, source),
                "n_shared_experts": _integer(config, "n_shared_experts", source, minimum=0, default=0),
                "num_experts_per_tok": _integer(config, "num_experts_per_tok", source),
                # Mixtral's experts are `intermediate_size` wide; DeepSeek's have their own size.
                "moe_intermediate_size": _integer(config, "moe_intermediate_size", source, default=intermediate),
            }
        if config.get("kv_lora_rank"):
            q_lora_rank = config.get("q_lora_rank")
            attention: dict[str, Any] = {
                "q_lora_rank": None if q_lora_rank is None else _integer(config, "q_lora_rank", source),
                "kv_lora_rank": _integer(config, "kv_lora_rank", source),
                "qk_nope_head_dim": _integer(config, "qk_nope_head_dim", source),
                "qk_rope_head_dim": _integer(config, "qk_rope_head_dim", source),
                "v_head_dim": _integer(config, "v_head_dim", source),
            }
        else:
            attention = {
                "num_key_value_heads": _integer(config, "num_key_value_heads", source, default=heads),
                "head_dim": _integer(config, "head_dim", source, default=hidden // heads),
                "attention_bias": _flag(config, "attention_bias", source),
            }
        return cls(
            name=name,
            model_type=str(config.get("model_type", "")),
            hidden_size=hidden,
            num_hidden_layers=layers,
            vocab_size=_integer(config, "vocab_size", source),
            intermediate_size=intermediate,
            num_attention_heads=heads,
            max_position_embeddings=_integer(config, "max_position_embeddings", source),
            tie_word_embeddings=_flag(config, "tie_word_embeddings", source),
            **moe,
            **attention,
        )

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def moe_layers(self) -> int:
        return self.num_hidden_layers - self.dense_layers if self.n_routed_experts else 0

    def _attention_parameters(self) -> int:
        hidden, heads = self.hidden_size, self.num_attention_heads
        if self.is_mla:
            qk_head = self.qk_nope_head_dim + self.qk_rope_head_dim
            if self.q_lora_rank is None:
                query = hidden * heads * qk_head
            else:  # down-projection, its RMSNorm, up-projection
                query = hidden * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * heads * qk_head
            # The latent and the rope key in one projection, the latent's RMSNorm, its up-projection to K and V.
            key_value = (
                hidden * (self.kv_lora_rank + self.qk_rope_head_dim)
                + self.kv_lora_rank
                + self.kv_lora_rank * heads * (self.qk_nope_head_dim + self.v_head_dim)
            )
            return query + key_value + heads * self.v_head_dim * hidden
        query, key_value = heads * self.head_dim, 2 * self.num_key_value_heads * self.head_dim
        biases = query + key_value + hidden if self.attention_bias else 0
        return hidden * (query + key_value) + query * hidden + biases

    @property
    def expert_parameters(self) -> int:
        """The routed experts of every MoE layer (gate, up and down projections)."""
        return self.moe_layers * self.n_routed_experts * 3 * self.hidden_size * self.moe_intermediate_size

    @property
    def parameters_total(self) -> int:
        hidden = self.hidden_size
        layer = self._attention_parameters() + 2 * hidden  # input and post-attention RMSNorms
        dense_mlp = 3 * hidden * self.intermediate_size
        moe_block = (
            3 * hidden * self.moe_intermediate_size * self.n_shared_experts
            + self.n_routed_experts * hidden  # the router
            + (hidden if self.model_type in POST_MLP_NORM_MODEL_TYPES else 0)
        )
        embeddings = self.vocab_size * hidden * (1 if self.tie_word_embeddings else 2)
        return (
            embeddings
            + hidden  # the final RMSNorm
            + self.num_hidden_layers * layer
            + self.dense_layers * dense_mlp
            + self.moe_layers * moe_block
            + self.expert_parameters
        )

    @property
    def parameters_active(self) -> int:
        """Parameters one token runs through: all but the routed experts it is not sent to."""
        if not self.moe_layers:
            return self.parameters_total
        routed = self.expert_parameters
        return self.parameters_total - routed + routed * self.num_experts_per_tok // self.n_routed_experts

    @property
    def size(self) -> ModelSize:
        return ModelSize(self.parameters_total, self.parameters_active)

    def kv_cache_bytes_per_token(self, bytes_per_element: int = KV_BYTES_PER_ELEMENT) -> int:
        """MLA caches one latent and one rope key per layer; GQA a key and a value per KV head and layer."""
        if self.is_mla:
            per_layer = self.kv_lora_rank + self.qk_rope_head_dim
        else:
            per_layer = 2 * self.num_key_value_heads * self.head_dim
        return per_layer * self.num_hidden_layers * bytes_per_element

    def weight_bytes(self, dtype: WeightDtype) -> int:
        """The weights in GPU memory. transformers keeps `e_score_correction_bias` as a buffer, so it is not in
        `parameters_total`, but checkpoints store it and vLLM loads it."""
        router_bias = self.moe_layers * self.n_routed_experts if self.model_type in ROUTER_BIAS_MODEL_TYPES else 0
        return self.parameters_total * BYTES_PER_PARAMETER[dtype] + router_bias * ROUTER_BIAS_BYTES

    def check_context(self, context: int) -> None:
        if not 1 <= context <= self.max_position_embeddings:
            raise PlanError(
                f"context {context:,} tokens: {self.name} takes 1 to {self.max_position_embeddings:,} "
                "(max_position_embeddings); ask for a context in that range"
            )


def load_model_shape(reference: str) -> ModelShape:
    """A built-in model's name, a `config.json` file, or a checkpoint directory holding one."""
    if reference in BUILTIN_MODELS:
        return ModelShape.from_config(BUILTIN_MODELS[reference], reference, f"built-in model `{reference}`")
    path = Path(reference)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        where = f"directory {path} has no config.json" if path.is_dir() else f"there is no file {path}"
        raise PlanError(
            f"model `{reference}`: not a built-in model ({', '.join(BUILTIN_MODELS)}) and {where}; "
            "name a built-in model, a config.json or a Hugging Face checkpoint directory"
        )
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except OSError as error:
        raise PlanError(f"cannot read {file}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise PlanError(f"{file} is not UTF-8 text; point at the model's config.json") from None
    except json.JSONDecodeError as error:
        raise PlanError(f"{file}:{error.lineno}: not valid JSON: {error.msg}") from None
    if not isinstance(config, dict):
        raise PlanError(f"{file}: a config.json holds one JSON object, not {type(config).__name__}")
    name = file.parent.resolve().name if file.name == "config.json" else file.stem
    return ModelShape.from_config(config, name, str(file))


class GpuInventory(BaseModel):
    """GPUs of one type: `16xH100-80GB`."""

    model_config = ConfigDict(frozen=True)

    count: int
    gpu_type: str

    @classmethod
    def parse(cls, text: str) -> GpuInventory:
        match = re.fullmatch(r"\s*([0-9]+)\s*[xX×]\s*(\S+)\s*", text)
        if match is None or int(match.group(1)) < 1:
            raise PlanError(f"GPU inventory `{text}` is not COUNTxTYPE, e.g. 16xH100-80GB")
        inventory = cls(count=int(match.group(1)), gpu_type=match.group(2))
        try:
            gpu_memory_bytes(inventory.gpu_type)
        except PlanError:
            raise PlanError(
                f"GPU inventory `{text}`: the type `{inventory.gpu_type}` is not MODEL-<memory>GB, e.g. 16xH100-80GB"
            ) from None
        return inventory

    @property
    def usable_bytes_per_gpu(self) -> int:
        return int(gpu_memory_bytes(self.gpu_type) * WEIGHT_SHARE)

    def __str__(self) -> str:
        return f"{self.count}x{self.gpu_type}"


class Layout(BaseModel):
    """One way to spread a replica over the inventory, with what it leaves for the KV cache."""

    model_config = ConfigDict(frozen=True)

    parallelism: Parallelism
    weight_bytes_per_gpu: int
    kv_bytes_per_token_per_gpu: int
    # Usable memory left after the weights; negative when they do not fit.
    kv_room_per_gpu: int
    max_concurrent_sequences: int

    def longest_context(self) -> int:
        """The most tokens one sequence may have, were it alone."""
        return max(0, self.kv_room_per_gpu) // self.kv_bytes_per_token_per_gpu


class CapacityPlan(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    parameters_total: int
    parameters_active: int
    inventory: GpuInventory
    dtype: WeightDtype
    context: int
    gpus_per_node: int
    nodes: int
    usable_bytes_per_gpu: int
    kv_bytes_per_token: int
    layout: Layout
    alternatives: list[Layout]

    @property
    def kv_bytes_per_sequence(self) -> int:
        return self.kv_bytes_per_token * self.context


def _layout(inventory: GpuInventory, context: int, degrees: dict[str, int], weights: int, kv: int) -> Layout | None:
    """The layout with these degrees, or None where `Parallelism` cannot express them."""
    try:
        parallelism = Parallelism(mode=ParallelismMode.EXPLICIT, **degrees)
    except ValidationError:
        return None
    room = inventory.usable_bytes_per_gpu - weights
    sequences = room // (kv * context) * parallelism.data if room > 0 else 0
    return Layout(
        parallelism=parallelism,
        weight_bytes_per_gpu=weights,
        kv_bytes_per_token_per_gpu=kv,
        kv_room_per_gpu=room,
        max_concurrent_sequences=sequences,
    )


def _layouts(
    shape: ModelShape, inventory: GpuInventory, dtype: WeightDtype, context: int, gpus_per_node: int
) -> list[Layout]:
    """Every layout vLLM can run on all the GPUs, best first: those that fit, with the fewest pipeline stages
    (lowest latency per token), then the most concurrent sequences."""
    gpus, weights, kv = inventory.count, shape.weight_bytes(dtype), shape.kv_cache_bytes_per_token()
    moe = shape.moe_layers > 0
    candidates = []
    for tensor in (1 << power for power in range(min(gpus, gpus_per_node).bit_length())):
        pipeline = gpus // tensor
        if gpus % tensor or gpus_per_node % tensor or shape.num_attention_heads % tensor:
            continue
        if pipeline > shape.num_hidden_layers:  # every stage needs a layer
            continue
        head_split = 1 if shape.is_mla else min(tensor, shape.num_key_value_heads)
        kv_per_gpu = math.ceil(kv / (pipeline * head_split))
        degrees = {"tensor": tensor, "pipeline": pipeline, "expert": tensor if moe and tensor > 1 else 1}
        candidates.append(_layout(inventory, context, degrees, math.ceil(weights / gpus), kv_per_gpu))
    if gpus > 1:
        per_rank = weights
        if moe:
            expert_bytes = shape.expert_parameters * BYTES_PER_PARAMETER[dtype]
            per_expert = expert_bytes // shape.n_routed_experts
            per_rank = weights - expert_bytes + per_expert * math.ceil(shape.n_routed_experts / gpus)
        degrees = {"data": gpus, "expert": gpus if moe else 1}
        candidates.append(_layout(inventory, context, degrees, per_rank, kv))
    layouts = [layout for layout in candidates if layout is not None]
    return sorted(
        layouts,
        key=lambda layout: (
            not layout.max_concurrent_sequences,
            layout.parallelism.pipeline,
            -layout.max_concurrent_sequences,
        ),
    )


def _whole_nodes(gpus: int, gpus_per_node: int) -> bool:
    return gpus <= gpus_per_node or gpus % gpus_per_node == 0


def _best(
    shape: ModelShape, inventory: GpuInventory, dtype: WeightDtype, context: int, gpus_per_node: int
) -> Layout | None:
    if not _whole_nodes(inventory.count, gpus_per_node):
        return None
    layouts = _layouts(shape, inventory, dtype, context, gpus_per_node)
    return layouts[0] if layouts and layouts[0].max_concurrent_sequences else None


def _gib(count: int) -> str:
    return f"{count / GIB:.1f} GiB"


def _fits(layout: Layout, context: int) -> str:
    sequences = layout.max_concurrent_sequences
    return f"{layout.parallelism.describe()}, {sequences} concurrent sequence(s) of {context:,} tokens"


def _why_nothing_fits(
    shape: ModelShape,
    inventory: GpuInventory,
    dtype: WeightDtype,
    context: int,
    gpus_per_node: int,
    layouts: list[Layout],
) -> str:
    weights_fit = [layout for layout in layouts if layout.kv_room_per_gpu > 0]
    if not layouts:
        reason = (
            f"no tensor/pipeline/data layout of {inventory} suits {shape.name} "
            f"({shape.num_hidden_layers} layers, {shape.num_attention_heads} attention heads)"
        )
    elif not weights_fit:
        leanest = min(layouts, key=lambda layout: layout.weight_bytes_per_gpu)
        reason = (
            f"in {dtype.value} the weights take {_gib(leanest.weight_bytes_per_gpu)} per GPU even as "
            f"{leanest.parallelism.describe()}, over the {_gib(inventory.usable_bytes_per_gpu)} usable on each "
            f"{inventory.gpu_type} ({WEIGHT_SHARE:.0%} of its memory)"
        )
    else:
        roomiest = max(weights_fit, key=Layout.longest_context)
        reason = (
            f"the weights fit ({roomiest.parallelism.describe()}: {_gib(roomiest.weight_bytes_per_gpu)} per GPU) "
            f"but leave {_gib(roomiest.kv_room_per_gpu)} per GPU for the KV cache, less than one {context:,}-token "
            f"sequence takes there ({_gib(roomiest.kv_bytes_per_token_per_gpu * context)})"
        )
    # The weights alone set a lower bound; the KV cache may need more.
    fewest = GpuInventory(count=minimum_gpus(shape.size, dtype, inventory.gpu_type), gpu_type=inventory.gpu_type)
    while (layout := _best(shape, fewest, dtype, context, gpus_per_node)) is None and fewest.count < MAX_GPUS_SEARCHED:
        fewest = GpuInventory(count=fewest.count * 2, gpu_type=inventory.gpu_type)
    if layout is None:
        would_fit = [f"no power of two up to {MAX_GPUS_SEARCHED} × {inventory.gpu_type} in {dtype.value}"]
    else:
        would_fit = [f"{fewest} in {dtype.value} ({_fits(layout, context)})"]
    if dtype is WeightDtype.BF16:
        fp8 = _best(shape, inventory, WeightDtype.FP8, context, gpus_per_node)
        would_fit.append(f"{inventory} in fp8 ({_fits(fp8, context)})" if fp8 else f"not {inventory} in fp8 either")
    if weights_fit:
        longest = max(weights_fit, key=Layout.longest_context)
        would_fit.append(
            f"{inventory} in {dtype.value} at a context of up to {longest.longest_context():,} tokens "
            f"({longest.parallelism.describe()})"
        )
    return f"{reason}. What would fit: " + "; ".join(would_fit)


def plan_capacity(
    shape: ModelShape, inventory: GpuInventory, dtype: WeightDtype, context: int, gpus_per_node: int = 8
) -> CapacityPlan:
    """The recommended layout of `inventory` for sequences of `context` tokens, with the others (see the
    module's memory model and choice); PlanError says why nothing fits and what would."""
    shape.check_context(context)
    if gpus_per_node < 1:
        raise PlanError(f"gpus per node must be 1 or more, not {gpus_per_node}")
    if not _whole_nodes(inventory.count, gpus_per_node):
        raise PlanError(
            f"{inventory.count} GPUs do not make whole nodes of {gpus_per_node}: pipeline stages span nodes, so "
            f"give a multiple of {gpus_per_node} GPUs, or the real GPUs per node"
        )
    layouts = _layouts(shape, inventory, dtype, context, gpus_per_node)
    if not layouts or not layouts[0].max_concurrent_sequences:
        raise PlanError(_why_nothing_fits(shape, inventory, dtype, context, gpus_per_node, layouts))
    return CapacityPlan(
        model=shape.name,
        parameters_total=shape.parameters_total,
        parameters_active=shape.parameters_active,
        inventory=inventory,
        dtype=dtype,
        context=context,
        gpus_per_node=gpus_per_node,
        nodes=math.ceil(inventory.count / gpus_per_node),
        usable_bytes_per_gpu=inventory.usable_bytes_per_gpu,
        kv_bytes_per_token=shape.kv_cache_bytes_per_token(),
        layout=layouts[0],
        alternatives=layouts[1:],
    )


def planned_manifests(
    plan: CapacityPlan, model_name: str, policy: ResidencyPolicy, *, version: str = "1", namespace: str = "models"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Ray Serve config and the KubeRay `RayService` the operator writes for a `ModelDeployment` of
    `models:/MODEL_NAME@production` (registry version `version`) with the plan's explicit parallelism, on
    the policy's in-country sites. PlanError names the field a model name or the context breaks."""
    body = {
        "apiVersion": API_VERSION,
        "kind": "ModelDeployment",
        # Kubernetes names are lower-case DNS labels; registered model names need not be.
        "metadata": {"name": re.sub(r"[^a-z0-9-]+", "-", model_name.lower()).strip("-"), "namespace": namespace},
        "spec": {
            "model": f"models:/{model_name}@production",
            "engine": Engine.VLLM.value,
            "policyRef": policy.metadata.name,
            "sites": [site.name for site in PolicyEvaluator(policy).in_country_sites()],
            "dtype": plan.dtype.value,
            "maxContextLength": plan.context,
            "gpu": {"type": plan.inventory.gpu_type, "perNode": plan.gpus_per_node},
            "parallelism": plan.layout.parallelism.model_dump(mode="json", by_alias=True),
            # vLLM's app does not check tenants (the gateway does); the spec needs one.
            "tenants": [policy.spec.access.operator_tenant],
        },
    }
    try:
        deployment = Deployment.from_body(body)
    except ValidationError as error:
        raise PlanError("; ".join(field_problems(error, "spec"))) from None
    parallelism = plan.layout.parallelism
    replica = Plan(
        parallelism=parallelism,
        gpus_per_replica=parallelism.gpus(),
        nodes_per_replica=plan.nodes,
        weight_bytes_per_gpu=plan.layout.weight_bytes_per_gpu,
    )
    serve_config = {"applications": [serve_application(deployment, replica, version, policy)]}
    manifest = ray_service(deployment, Settings(), replica, version, policy)
    # No ModelDeployment owns a planned RayService, and the API server refuses an owner reference without a uid.
    del manifest["metadata"]["ownerReferences"]
    return serve_config, manifest
