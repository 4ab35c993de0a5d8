"""Parameter counts of a checkpoint from its `config.json` alone, without reading any weights."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# Routed experts, not the shared ones: `mlp.experts.gate_up_proj`, but not `mlp.shared_experts.*`.
_ROUTED_EXPERT = re.compile(r"\.experts\.")
_EXPERT_COUNT_KEYS = ("n_routed_experts", "num_experts", "num_local_experts")


@dataclass(frozen=True)
class ParameterCounts:
    total: int
    active: int


def parameter_counts(directory: Path) -> ParameterCounts:
    """Total parameters, and those active for one token (a mixture of experts runs only its top-k experts).

    The model is built on PyTorch's meta device, so every architecture transformers knows is counted
    exactly as it would load, with no memory for weights: A.X K1's 519B take about 3 s.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = routed = 0
    for name, parameter in model.named_parameters():
        total += parameter.numel()
        if _ROUTED_EXPERT.search(name):
            routed += parameter.numel()
    experts = next((getattr(config, key) for key in _EXPERT_COUNT_KEYS if getattr(config, key, None)), None)
    per_token = getattr(config, "num_experts_per_tok", None)
    if not routed or not experts or not per_token:
        return ParameterCounts(total, total)
    return ParameterCounts(total, total - routed + routed * per_token // experts)


def human_count(count: int) -> str:
    """`518983052288` as `519.0B`."""
    for unit, size in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return str(count)
