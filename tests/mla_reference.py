"""A.X K1's forward pass written from the DeepSeek-V3 equations, in float64, independent of transformers and vLLM.

It reads the checkpoint's tensors directly and computes last-layer log-probabilities for every position of one
prompt: MLA with its low-rank q and kv projections and a decoupled rotary key shared by every head, causal
softmax, the dense and MoE MLPs (sigmoid scores, group-limited top-k with the correction bias used only for
selection, normalised and scaled weights, one shared expert) and A.X K1's `post_mlp_layernorm` on MoE layers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def rotate_pairs(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """DeepSeek's rotary layout: dimension pairs (0, 1), (2, 3), ...; pair i turns by position · theta^(-2i/d)."""
    dim = x.shape[-1]
    angles = positions[:, None].double() * theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    cos, sin = torch.cos(angles), torch.sin(angles)
    if x.dim() == 3:  # [tokens, heads, dim]
        cos, sin = cos[:, None], sin[:, None]
    even, odd = x[..., 0::2], x[..., 1::2]
    rotated = torch.empty_like(x)
    rotated[..., 0::2] = even * cos - odd * sin
    rotated[..., 1::2] = even * sin + odd * cos
    return rotated


def log_probs(directory: Path, token_ids: list[int]) -> torch.Tensor:
    """`[tokens, vocab]`: row t is the distribution of the token after `token_ids[: t + 1]`."""
    config = json.loads((directory / "config.json").read_text())
    weights = {name: tensor.double() for name, tensor in load_file(directory / "model.safetensors").items()}
    eps, heads = config["rms_norm_eps"], config["num_attention_heads"]
    nope, rope, value = config["qk_nope_head_dim"], config["qk_rope_head_dim"], config["v_head_dim"]
    rank, theta = config["kv_lora_rank"], config["rope_parameters"]["rope_theta"]
    count = len(token_ids)
    positions = torch.arange(count)
    future = torch.triu(torch.ones(count, count, dtype=torch.bool), 1)

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        return x @ weights[name].T

    def mlp(x: torch.Tensor, prefix: str) -> torch.Tensor:
        gate = torch.nn.functional.silu(linear(x, f"{prefix}.gate_proj.weight"))
        return linear(gate * linear(x, f"{prefix}.up_proj.weight"), f"{prefix}.down_proj.weight")

    hidden = weights["model.embed_tokens.weight"][torch.tensor(token_ids)]
    for layer in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{layer}"
        attention = f"{prefix}.self_attn"
        x = rms_norm(hidden, weights[f"{prefix}.input_layernorm.weight"], eps)
        q_latent = linear(x, f"{attention}.q_a_proj.weight")
        q_latent = rms_norm(q_latent, weights[f"{attention}.q_a_layernorm.weight"], eps)
        q = linear(q_latent, f"{attention}.q_b_proj.weight").view(count, heads, nope + rope)
        kv_in = linear(x, f"{attention}.kv_a_proj_with_mqa.weight")
        kv_latent = rms_norm(kv_in[:, :rank], weights[f"{attention}.kv_a_layernorm.weight"], eps)
        kv = linear(kv_latent, f"{attention}.kv_b_proj.weight").view(count, heads, nope + value)
        q_rope = rotate_pairs(q[..., nope:], positions, theta)
        k_rope = rotate_pairs(kv_in[:, rank:], positions, theta)  # one rotary key for every head
        scores = torch.einsum("thd,shd->hts", q[..., :nope], kv[..., :nope])
        scores = (scores + torch.einsum("thd,sd->hts", q_rope, k_rope)) * (nope + rope) ** -0.5
        weights_of_keys = torch.softmax(scores.masked_fill(future, -torch.inf), -1)
        attended = torch.einsum("hts,shd->thd", weights_of_keys, kv[..., nope:])
        hidden = hidden + linear(attended.reshape(count, heads * value), f"{attention}.o_proj.weight")

        x = rms_norm(hidden, weights[f"{prefix}.post_attention_layernorm.weight"], eps)
        if layer < config["first_k_dense_replace"]:
            hidden = hidden + mlp(x, f"{prefix}.mlp")
            continue
        experts, groups = config["n_routed_experts"], config["n_group"]
        scores = torch.sigmoid(linear(x, f"{prefix}.mlp.gate.weight"))
        biased = scores + weights[f"{prefix}.mlp.gate.e_score_correction_bias"]
        group_scores = biased.view(count, groups, experts // groups).topk(2, -1).values.sum(-1)
        kept_groups = group_scores.topk(config["topk_group"], -1).indices
        kept = torch.zeros(count, groups, dtype=torch.bool).scatter(1, kept_groups, True)
        biased = biased.masked_fill(~kept.repeat_interleave(experts // groups, 1), -torch.inf)
        chosen = biased.topk(config["num_experts_per_tok"], -1).indices
        gates = scores.gather(1, chosen)
        gates = gates / gates.sum(-1, keepdim=True) * config["routed_scaling_factor"]
        routed = torch.zeros_like(x)
        for t in range(count):
            for gate, expert in zip(gates[t], chosen[t], strict=True):
                routed[t] += gate * mlp(x[t], f"{prefix}.mlp.experts.{int(expert)}")
        moe = routed + mlp(x, f"{prefix}.mlp.shared_experts")
        hidden = hidden + rms_norm(moe, weights[f"{prefix}.post_mlp_layernorm.weight"], eps)
    hidden = rms_norm(hidden, weights["model.norm.weight"], eps)
    return torch.log_softmax(linear(hidden, "lm_head.weight"), -1)
