"""The tiny default model: A.X K1's architecture at toy size, built locally with a fixed seed.

It is written as an ordinary HF checkpoint directory (`config.json`, `model.safetensors`,
`tokenizer.json`), so the server loads it exactly the way it loads a real A.X K1 checkpoint.
Builds are cached by a digest of everything that shapes them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from serving.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, training_corpus

TINY_MODEL_ID = "axk1-tiny"
SEED = 20260101
CONTEXT_LENGTH = 2048
# A.X K1's shape in miniature: layer 0 dense, the rest MoE; 8 routed experts in 4 groups with
# sigmoid group-limited top-2 routing, one shared expert, MLA with low-rank q and kv projections.
# The MLA latent keeps A.X K1's real width (kv_lora_rank 512 + qk_rope_head_dim 64 = 576): it is the
# only head size vLLM's CPU MLA kernels support. Everything else is small.
TINY_ARCHITECTURE: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "moe_intermediate_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "n_shared_experts": 1,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "n_group": 4,
    "topk_group": 2,
    "routed_scaling_factor": 2.5,
    "kv_lora_rank": 512,
    "q_lora_rank": 64,
    "qk_rope_head_dim": 64,
    "qk_nope_head_dim": 32,
    "v_head_dim": 32,
    "max_position_embeddings": CONTEXT_LENGTH,
    "first_k_dense_replace": 1,
}
_BUILD_VERSION = "2"


def default_cache_dir() -> Path:
    """Where built models are kept: `$SOVEREIGN_CACHE_DIR`, else the XDG cache directory."""
    configured = os.environ.get("SOVEREIGN_CACHE_DIR")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sovereign-stack"


def build_digest() -> str:
    """Changes whenever anything that shapes the tiny checkpoint changes."""
    recipe = json.dumps(
        {
            "architecture": TINY_ARCHITECTURE,
            "seed": SEED,
            "special_tokens": SPECIAL_TOKENS,
            "chat_template": CHAT_TEMPLATE,
            "corpus": training_corpus(),
            "version": _BUILD_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def ensure_tiny_checkpoint(cache_dir: Path | None = None) -> Path:
    """Return the tiny checkpoint's directory, building it first if it is not cached yet."""
    target = (cache_dir or default_cache_dir()) / "models" / f"{TINY_MODEL_ID}-{build_digest()}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so a crash never leaves a half-written checkpoint behind.
    staging = Path(tempfile.mkdtemp(prefix=f".{TINY_MODEL_ID}-", dir=target.parent))
    try:
        build_tiny_checkpoint(staging)
        staging.rename(target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def build_tiny_checkpoint(directory: Path, initializer_range: float | None = None) -> None:
    """Write the tokenizer, config and seeded random weights of the tiny model into `directory`.

    `initializer_range` (the weights' standard deviation) defaults to transformers' 0.02, at which a random
    model's next-token distribution is nearly flat; the parity tests build a sharper one.
    """
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer, AXK1Config, AXK1ForCausalLM, GenerationConfig
    from transformers.utils import logging as transformers_logging

    from serving.tokenizer import build_tokenizer

    transformers_logging.disable_progress_bar()
    build_tokenizer(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    sizes = TINY_ARCHITECTURE | ({} if initializer_range is None else {"initializer_range": initializer_range})
    config = AXK1Config(
        **sizes,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(SEED)
    model = AXK1ForCausalLM(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(directory)
    # Released A.X K1 checkpoints hold a `post_mlp_layernorm` in every layer and vLLM's loader asks for each;
    # transformers writes it only for MoE layers (the only ones that apply it), so the dense ones get theirs here.
    weights_file = directory / "model.safetensors"
    weights = load_file(weights_file)
    for layer in range(config.first_k_dense_replace):
        weights[f"model.layers.{layer}.post_mlp_layernorm.weight"] = torch.ones(config.hidden_size)
    save_file(weights, weights_file, metadata={"format": "pt"})
