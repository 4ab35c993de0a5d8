"""What vLLM's A.X K1 loader expects of a checkpoint, checked from its headers before any engine starts.

vLLM's own error for a bad checkpoint comes from a worker process, after Serve has started, as a set of
parameter names it did not initialise. This check reads only `config.json` and the safetensors headers,
and names the first missing or misshapen tensor with the shape `config.json` implies.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from serving.checkpoint import CheckpointError
from serving.weights import CheckpointTensors

# vLLM's CPU MLA kernels (decode and the SDPA prefill) are built for one latent head size only.
CPU_MLA_HEAD_SIZE = 576


def axk1_tensor_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor vLLM's `AXK1ForCausalLM` loads, with the shape `config.json` implies.

    Unlike transformers, vLLM gives every decoder layer a `post_mlp_layernorm`, the dense ones too, and
    refuses a checkpoint without it.
    """
    hidden, vocab, heads = config["hidden_size"], config["vocab_size"], config["num_attention_heads"]
    nope, rope, value = config["qk_nope_head_dim"], config["qk_rope_head_dim"], config["v_head_dim"]
    q_rank, kv_rank = config["q_lora_rank"], config["kv_lora_rank"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    if not config.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (vocab, hidden)

    def mlp(prefix: str, inner: int) -> dict[str, tuple[int, ...]]:
        return {
            f"{prefix}.gate_proj.weight": (inner, hidden),
            f"{prefix}.up_proj.weight": (inner, hidden),
            f"{prefix}.down_proj.weight": (hidden, inner),
        }

    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}"
        for norm in ("input_layernorm", "post_attention_layernorm", "post_mlp_layernorm"):
            shapes[f"{prefix}.{norm}.weight"] = (hidden,)
        attention = f"{prefix}.self_attn"
        shapes |= {
            f"{attention}.q_a_proj.weight": (q_rank, hidden),
            f"{attention}.q_a_layernorm.weight": (q_rank,),
            f"{attention}.q_b_proj.weight": (heads * (nope + rope), q_rank),
            f"{attention}.kv_a_proj_with_mqa.weight": (kv_rank + rope, hidden),
            f"{attention}.kv_a_layernorm.weight": (kv_rank,),
            f"{attention}.kv_b_proj.weight": (heads * (nope + value), kv_rank),
            f"{attention}.o_proj.weight": (hidden, heads * value),
        }
        if layer < config["first_k_dense_replace"]:
            shapes |= mlp(f"{prefix}.mlp", config["intermediate_size"])
            continue
        experts, inner = config["n_routed_experts"], config["moe_intermediate_size"]
        shapes[f"{prefix}.mlp.gate.weight"] = (experts, hidden)
        shapes[f"{prefix}.mlp.gate.e_score_correction_bias"] = (experts,)
        for expert in range(experts):
            shapes |= mlp(f"{prefix}.mlp.experts.{expert}", inner)
        shapes |= mlp(f"{prefix}.mlp.shared_experts", inner * config["n_shared_experts"])
    return shapes


def cpu_mla_problem(config: Mapping[str, Any]) -> str | None:
    """Why vLLM's CPU build cannot run this model's attention, or None when it can."""
    head_size = config.get("kv_lora_rank", 0) + config.get("qk_rope_head_dim", 0)
    if head_size == CPU_MLA_HEAD_SIZE:
        return None
    return (
        f"kv_lora_rank + qk_rope_head_dim is {head_size}, but vLLM's CPU attention supports only "
        f"{CPU_MLA_HEAD_SIZE} (512 + 64, as A.X K1 has); run it on a GPU node or fix config.json"
    )


def check_vllm_checkpoint(directory: Path, on_cpu: bool) -> None:
    """Refuse, naming the tensor or the `config.json` field, a checkpoint that vLLM would fail to load."""
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") != "axk1":
        return  # other architectures: vLLM's own loader is the check
    try:
        expected = axk1_tensor_shapes(config)
    except KeyError as error:
        raise CheckpointError(f"`{directory / 'config.json'}` has no `{error.args[0]}`, which A.X K1 needs") from None
    if on_cpu and (problem := cpu_mla_problem(config)) is not None:
        raise CheckpointError(f"`{directory / 'config.json'}`: {problem}")
    CheckpointTensors(directory).check_shapes(expected)
