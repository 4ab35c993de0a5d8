"""A.X K1 split for expert parallelism: the trunk in the model server, the routed experts in shards.

The trunk holds the embedding, Multi-head Latent Attention, the routers, the shared and dense MLPs,
the norms and the LM head; transformers' own modules (`AXK1RMSNorm`, `AXK1MLP`, `AXK1TopkRouter`,
`AXK1RotaryEmbedding`) do that math, so routing and norms are the reference's exactly. Attention is
ours: the latent KV cache holds one `[kv_lora_rank + qk_rope_head_dim]` row per token and layer
(MLA's compression, 70 KB per token for A.X K1 in bf16) in fixed sequence slots, and queries are
absorbed into the latent space, so the cache is never expanded per head. A step is a ragged batch:
new requests' whole prompts (prefill) and one token of each running request (decode) together, so
each MoE layer makes one call per expert shard per step.

`ExpertBank` holds a contiguous range of every MoE layer's routed experts; `shard_experts` says
which range a shard owns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AXK1Config
from transformers.models.axk1.modeling_axk1 import (
    AXK1MLP,
    AXK1RMSNorm,
    AXK1RotaryEmbedding,
    AXK1TopkRouter,
    apply_rotary_pos_emb,
    apply_rotary_pos_emb_interleave,
    yarn_apply_mscale,
)

from serving.checkpoint import CheckpointError
from serving.weights import CheckpointTensors

# (layer, hidden [T, H], expert ids [T, k], routing weights [T, k]) → the routed experts' sum [T, H].
ExpertDispatch = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


def moe_layers(config: AXK1Config) -> list[int]:
    """The MoE layers: `mlp_layer_types` where the config lists them (transformers ≥ 5.20), else all after the
    first `first_k_dense_replace` dense ones, as the transformers release vLLM pins reads it."""
    kinds = getattr(config, "mlp_layer_types", None)
    if kinds is not None:
        return [index for index, kind in enumerate(kinds) if kind == "sparse"]
    return list(range(config.first_k_dense_replace, config.num_hidden_layers))


def expert_tensor_names(layer: int, expert: int) -> list[str]:
    return [f"model.layers.{layer}.mlp.experts.{expert}.{projection}.weight" for projection in _PROJECTIONS]


def shard_experts(experts: int, shard: int, shards: int) -> range:
    """The contiguous block of routed experts shard `shard` of `shards` owns (the first ones take the remainder)."""
    if not 1 <= shards <= experts:
        raise ValueError(f"expert shards must be between 1 and the model's {experts} routed experts, not {shards}")
    base, extra = divmod(experts, shards)
    start = shard * base + min(shard, extra)
    return range(start, start + base + (shard < extra))


def expert_shapes(config: AXK1Config, experts: range) -> dict[str, tuple[int, int]]:
    """The shape `config.json` implies for each tensor of these routed experts, in every MoE layer."""
    hidden, inner = config.hidden_size, config.moe_intermediate_size
    shapes = {"gate_proj": (inner, hidden), "up_proj": (inner, hidden), "down_proj": (hidden, inner)}
    return {
        name: shapes[name.split(".")[-2]]
        for layer in moe_layers(config)
        for expert in experts
        for name in expert_tensor_names(layer, expert)
    }


class ExpertBank:
    """One shard's routed experts of every MoE layer, stacked per layer: `[experts, 2·inner, hidden]` and
    `[experts, hidden, inner]`, read from the checkpoint and nothing else."""

    def __init__(
        self, tensors: CheckpointTensors, config: AXK1Config, experts: range, dtype: torch.dtype, device: str
    ) -> None:
        self.experts = experts
        self.dtype = dtype
        tensors.check_shapes(expert_shapes(config, experts))
        self.gate_up: dict[int, torch.Tensor] = {}
        self.down: dict[int, torch.Tensor] = {}
        for layer in moe_layers(config):
            loaded = tensors.load([name for expert in experts for name in expert_tensor_names(layer, expert)], dtype)
            gate_up, down = [], []
            for expert in experts:
                gate, up, down_proj = (loaded[name] for name in expert_tensor_names(layer, expert))
                gate_up.append(torch.cat([gate, up]))
                down.append(down_proj)
            self.gate_up[layer] = torch.stack(gate_up).to(device)
            self.down[layer] = torch.stack(down).to(device)

    def forward(
        self, layer: int, hidden: torch.Tensor, token: torch.Tensor, expert: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        """Σ over assignments (token, local expert, weight) of weight · expert(hidden[token]), per token."""
        gate_up, down = self.gate_up[layer], self.down[layer]
        output = torch.zeros_like(hidden)
        order = torch.argsort(expert, stable=True)
        token, expert, weight = token[order], expert[order], weight[order]
        counts = torch.bincount(expert, minlength=len(self.experts)).tolist()
        start = 0
        for local, count in enumerate(counts):
            if not count:
                continue
            rows = token[start : start + count]
            gate, up = nn.functional.linear(hidden[rows], gate_up[local]).chunk(2, dim=-1)
            result = nn.functional.linear(nn.functional.silu(gate) * up, down[local])
            output.index_add_(0, rows, (result * weight[start : start + count, None]).to(output.dtype))
            start += count
        return output


@dataclass(frozen=True)
class StepBatch:
    """The ragged batch of one step: each sequence's slot, cached length and new tokens."""

    slots: Sequence[int]
    starts: Sequence[int]
    counts: Sequence[int]

    def index(self, device: torch.device | str) -> StepIndex:
        """The step's gather and scatter indices, built once and shared by every layer."""
        positions, slots, last_rows, prefills = [], [], [], []
        decode_rows, decode_slots = [], []
        row = 0
        for slot, start, count in zip(self.slots, self.starts, self.counts, strict=True):
            positions.extend(range(start, start + count))
            slots.extend([slot] * count)
            if count == 1:
                decode_rows.append(row)
                decode_slots.append(slot)
            else:
                prefills.append((slice(row, row + count), slot, start + count))
            row += count
            last_rows.append(row - 1)
        decoded_length = max(
            (start + 1 for start, count in zip(self.starts, self.counts, strict=True) if count == 1), default=0
        )
        return StepIndex(
            positions=torch.tensor(positions, device=device),
            slots=torch.tensor(slots, device=device),
            last_rows=torch.tensor(last_rows, device=device),
            decode_rows=torch.tensor(decode_rows, device=device),
            decode_slots=torch.tensor(decode_slots, device=device),
            decoded_length=decoded_length,
            prefills=prefills,
        )


@dataclass(frozen=True)
class StepIndex:
    positions: torch.Tensor  # [tokens] position of each new token in its sequence
    slots: torch.Tensor  # [tokens] cache slot of each new token
    last_rows: torch.Tensor  # [sequences] row whose logits choose the next token
    decode_rows: torch.Tensor  # rows of sequences with one new token: attended together
    decode_slots: torch.Tensor
    decoded_length: int  # the longest decoding sequence's length, padding for the batched attention
    prefills: list[tuple[slice, int, int]]  # (rows, slot, length) of each sequence with a whole prompt


class LatentCache:
    """MLA's compressed KV per layer in `slots` fixed sequence slots; capacity doubles as sequences grow."""

    def __init__(self, layers: int, slots: int, width: int, limit: int, dtype: torch.dtype, device: str) -> None:
        self.limit = limit
        self._shape = (layers, slots, width)
        self.rows = torch.zeros(layers, slots, min(limit, 64), width, dtype=dtype, device=device)

    def reserve(self, length: int) -> None:
        capacity = self.rows.shape[2]
        if length <= capacity:
            return
        grown = min(self.limit, 1 << (length - 1).bit_length())
        layers, slots, width = self._shape
        rows = self.rows.new_zeros(layers, slots, grown, width)
        rows[:, :, :capacity] = self.rows
        self.rows = rows

    def bytes(self) -> int:
        return self.rows.numel() * self.rows.element_size()


class LatentAttention(nn.Module):
    """MLA with the query absorbed into the latent space: scores are q·W_uk·c + q_rot·k_rot, and the
    output is W_uv applied to the attention-weighted latents. Projections keep transformers' names."""

    def __init__(self, config: AXK1Config) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.nope, self.rope, self.value = config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim
        self.latent = config.kv_lora_rank
        self.interleaved = config.rope_interleave
        self.q_a_proj = nn.Linear(config.hidden_size, config.q_lora_rank, bias=config.attention_bias)
        self.q_a_layernorm = AXK1RMSNorm(config.q_lora_rank)
        self.q_b_proj = nn.Linear(config.q_lora_rank, self.heads * (self.nope + self.rope), bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(config.hidden_size, self.latent + self.rope, bias=config.attention_bias)
        self.kv_a_layernorm = AXK1RMSNorm(self.latent)
        self.kv_b_proj = nn.Linear(self.latent, self.heads * (self.nope + self.value), bias=False)
        self.o_proj = nn.Linear(self.heads * self.value, config.hidden_size, bias=config.attention_bias)
        self.scaling = yarn_apply_mscale(config.rope_parameters, (self.nope + self.rope) ** -0.5)

    def forward(
        self, hidden: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], step: StepIndex, cache: torch.Tensor
    ) -> torch.Tensor:
        tokens = hidden.shape[0]
        query = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(hidden))).view(tokens, self.heads, -1)
        query_nope, query_rot = query.split([self.nope, self.rope], dim=-1)
        latent, key_rot = self.kv_a_proj_with_mqa(hidden).split([self.latent, self.rope], dim=-1)
        latent = self.kv_a_layernorm(latent)
        cos, sin = rotary
        rotate = apply_rotary_pos_emb_interleave if self.interleaved else apply_rotary_pos_emb
        query_rot, key_rot = rotate(query_rot.transpose(0, 1)[None], key_rot[None, None], cos, sin)
        cache[step.slots, step.positions] = torch.cat([latent, key_rot[0, 0]], dim=-1).to(cache.dtype)

        # The absorbed products run in float32: they reassociate transformers' bf16 matmuls, and rounding
        # them in bf16 would add error the reference does not have (enough to flip a router's top-k).
        absorb = self.kv_b_proj.weight.view(self.heads, self.nope + self.value, self.latent).float()
        query_latent = torch.einsum("thn,hnl->thl", query_nope.float(), absorb[:, : self.nope])
        query_rot = query_rot[0].transpose(0, 1).float()
        context = torch.empty(tokens, self.heads, self.latent, dtype=torch.float32, device=hidden.device)
        if step.decoded_length:
            # One query per sequence: all of them in one padded batch over the longest cache.
            rows = step.decode_rows
            keys = cache[step.decode_slots, : step.decoded_length]
            context[rows] = self._attend(
                query_latent[rows, None], query_rot[rows, None], keys, step.positions[rows, None]
            )[:, 0]
        for rows, slot, length in step.prefills:
            keys = cache[slot, :length][None]
            context[rows] = self._attend(
                query_latent[rows][None], query_rot[rows][None], keys, step.positions[rows][None]
            )[0]
        output = torch.einsum("thl,hvl->thv", context, absorb[:, self.nope :]).to(hidden.dtype)
        return self.o_proj(output.reshape(tokens, self.heads * self.value))

    def _attend(
        self, query_latent: torch.Tensor, query_rot: torch.Tensor, keys: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        """[G, n, heads, ·] queries over [G, L, latent + rope] cached rows; a query at position p sees keys j ≤ p."""
        keys = keys.float()
        latents, key_rot = keys[..., : self.latent], keys[..., self.latent :]
        scores = torch.einsum("gnhl,gkl->gnhk", query_latent, latents)
        scores = scores + torch.einsum("gnhr,gkr->gnhk", query_rot, key_rot)
        future = torch.arange(keys.shape[1], device=keys.device)[None, None, :] > positions[..., None]
        scores = (scores * self.scaling).masked_fill(future[:, :, None, :], float("-inf"))
        return torch.einsum("gnhk,gkl->gnhl", torch.softmax(scores, dim=-1), latents)


class _SharedMoE(nn.Module):
    """The trunk's part of an MoE block: the router and the shared expert (the routed ones are sharded)."""

    def __init__(self, config: AXK1Config) -> None:
        super().__init__()
        self.gate = AXK1TopkRouter(config)
        self.shared_experts = AXK1MLP(config, config.moe_intermediate_size * config.n_shared_experts)


class _Layer(nn.Module):
    def __init__(self, config: AXK1Config, sparse: bool) -> None:
        super().__init__()
        self.input_layernorm = AXK1RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LatentAttention(config)
        self.post_attention_layernorm = AXK1RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.sparse = sparse
        self.mlp: nn.Module = _SharedMoE(config) if sparse else AXK1MLP(config)
        if sparse:
            self.post_mlp_layernorm = AXK1RMSNorm(config.hidden_size, config.rms_norm_eps)


class _Model(nn.Module):
    def __init__(self, config: AXK1Config) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        sparse = set(moe_layers(config))
        self.layers = nn.ModuleList(_Layer(config, index in sparse) for index in range(config.num_hidden_layers))
        self.norm = AXK1RMSNorm(config.hidden_size, config.rms_norm_eps)


class Trunk(nn.Module):
    """Everything but the routed experts, with the checkpoint's own tensor names."""

    def __init__(self, config: AXK1Config) -> None:
        super().__init__()
        self.config = config
        self.model = _Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    @classmethod
    def load(cls, tensors: CheckpointTensors, config: AXK1Config, dtype: torch.dtype, device: str) -> Trunk:
        """Build on the meta device, check every shape against the checkpoint, then read only the trunk's tensors."""
        with torch.device("meta"):
            trunk = cls(config)
        expected = {name: tuple(value.shape) for name, value in trunk.state_dict().items()}
        if config.tie_word_embeddings:
            expected.pop("lm_head.weight")
        tensors.check_shapes(expected)
        state = tensors.load(expected, dtype)
        if config.tie_word_embeddings:
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
        # The router's correction bias stays float32, as transformers keeps it.
        for name in state:
            if name.endswith("e_score_correction_bias"):
                state[name] = state[name].float()
        try:
            trunk.load_state_dict(state, assign=True)
        except RuntimeError as error:
            raise CheckpointError(f"the checkpoint's trunk tensors do not fit A.X K1's layout: {error}") from None
        trunk = trunk.to(device).eval()
        trunk.rotary = AXK1RotaryEmbedding(config).to(device)
        return trunk

    @torch.inference_mode()
    def forward(
        self,
        tokens: torch.Tensor,
        batch: StepBatch,
        cache: LatentCache,
        experts: ExpertDispatch,
        route_observer: Callable[[int, torch.Tensor], Any] | None = None,
    ) -> torch.Tensor:
        """Logits of each sequence's last new token, `[sequences, vocab]`."""
        hidden = self.model.embed_tokens(tokens)
        step = batch.index(hidden.device)
        rotary = self.rotary(hidden, step.positions[None])
        for index, layer in enumerate(self.model.layers):
            residual = hidden
            hidden = residual + layer.self_attn(layer.input_layernorm(hidden), rotary, step, cache.rows[index])
            residual = hidden
            normed = layer.post_attention_layernorm(hidden)
            if layer.sparse:
                _, weights, chosen = layer.mlp.gate(normed)
                if route_observer is not None:
                    route_observer(index, chosen)
                routed = experts(index, normed, chosen, weights)
                hidden = residual + layer.post_mlp_layernorm(routed + layer.mlp.shared_experts(normed))
            else:
                hidden = residual + layer.mlp(normed)
        last = hidden[step.last_rows]
        return self.lm_head(self.model.norm(last)).float()
