"""The built-in torch engine: a local HF checkpoint, continuously batched, its experts sharded on Ray.

A.X K1 checkpoints (`model_type: axk1`) run on our split model (`serving/axk1.py`): the trunk in this
process, the routed experts in `expert_shards` Ray actors (`serving/expert_shards.py`), or here with
`expert_shards=0`. Any other causal LM that transformers knows (a distilled student, say) runs on
transformers' own model class with one KV cache per sequence. Both sit behind the same continuous
batcher (`serving/batching.py`), so think and non-think requests share every step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, AXK1Config, DynamicCache
from transformers.utils import logging as transformers_logging

from serving.axk1 import LatentCache, StepBatch, Trunk, moe_layers
from serving.batching import ContinuousBatcher, TokenStream
from serving.config import MAX_SEQUENCES
from serving.errors import EngineFailure, ExpertShardFailed
from serving.expert_shards import LocalExperts, ShardPool, check_expert_tensors
from serving.generation import SamplingParams, starts_in_think_block
from serving.metrics import ExpertLoad
from serving.tokenizer import THINK_END, THINK_START
from serving.weights import CheckpointTensors

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype(name: str, config: Any) -> torch.dtype:
    """`auto` keeps the checkpoint's dtype, as transformers does."""
    if name != "auto":
        return _DTYPES[name]
    return getattr(config, "dtype", None) or torch.float32


class ShardedAXK1:
    """A.X K1 for the batcher: trunk and latent cache here, routed experts in shards."""

    def __init__(
        self, model_path: Path, config: AXK1Config, dtype: torch.dtype, expert_shards: int, slots: int, name: str
    ) -> None:
        tensors = CheckpointTensors(model_path)
        check_expert_tensors(tensors, config)
        device = _device()
        self.trunk = Trunk.load(tensors, config, dtype, device)
        self.trunk_bytes_read = tensors.bytes_read
        self.experts: LocalExperts | ShardPool = (
            ShardPool(model_path, config, expert_shards, dtype, name_prefix=f"{name}-expert-shard")
            if expert_shards
            else LocalExperts(tensors, config, dtype, device)
        )
        self.slots = slots
        width = config.kv_lora_rank + config.qk_rope_head_dim
        self.cache = LatentCache(config.num_hidden_layers, slots, width, config.max_position_embeddings, dtype, device)
        self.expert_load: ExpertLoad | None = ExpertLoad(
            [str(layer) for layer in moe_layers(config)], config.n_routed_experts
        )
        self._device = device

    def step(self, tokens: list[int], batch: StepBatch) -> torch.Tensor:
        self.cache.reserve(max(start + count for start, count in zip(batch.starts, batch.counts, strict=True)))
        observer = self.expert_load.record if self.expert_load else None
        return self.trunk(torch.tensor(tokens, device=self._device), batch, self.cache, self.experts, observer)

    def release(self, slot: int) -> None:
        if self.expert_load:
            self.expert_load.flush()

    def recover(self, failure: EngineFailure) -> None:
        if isinstance(failure, ExpertShardFailed):
            self.experts.restart(failure.shard)

    def close(self) -> None:
        self.experts.close()


class TransformersModel:
    """Any other causal LM, through transformers: one `DynamicCache` per slot, sequences run one by one."""

    def __init__(self, model_path: Path, dtype: str, slots: int) -> None:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=_DTYPES.get(dtype, "auto"))
        self.model = model.to(_device()).eval()
        self.slots = slots
        self._caches: dict[int, DynamicCache] = {}

    @torch.inference_mode()
    def step(self, tokens: list[int], batch: StepBatch) -> torch.Tensor:
        logits, start = [], 0
        for slot, count in zip(batch.slots, batch.counts, strict=True):
            cache = self._caches.setdefault(slot, DynamicCache(config=self.model.config))
            inputs = torch.tensor([tokens[start : start + count]], device=self.model.device)
            logits.append(self.model(inputs, past_key_values=cache, use_cache=True).logits[0, -1].float())
            start += count
        return torch.stack(logits)

    def release(self, slot: int) -> None:
        self._caches.pop(slot, None)

    def recover(self, failure: EngineFailure) -> None:
        pass

    def close(self) -> None:
        pass


class TorchEngine:
    """Tokenizer, chat template and the continuous batcher over the checkpoint's model."""

    def __init__(self, model_path: Path, dtype: str = "auto", expert_shards: int = 1, name: str = "llm") -> None:
        transformers_logging.disable_progress_bar()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        config = AutoConfig.from_pretrained(model_path)
        self.model: ShardedAXK1 | TransformersModel = (
            ShardedAXK1(model_path, config, _dtype(dtype, config), expert_shards, MAX_SEQUENCES, name)
            if config.model_type == "axk1"
            else TransformersModel(model_path, dtype, MAX_SEQUENCES)
        )
        self.max_model_len: int = config.max_position_embeddings
        self.think_start_id = _token_id(self.tokenizer, THINK_START)
        self.think_end_id = _token_id(self.tokenizer, THINK_END)
        self.eos_token_ids = _eos_token_ids(config, self.tokenizer, model_path)
        self.batcher = ContinuousBatcher(self.model, self.eos_token_ids)

    def render_chat(self, messages: list[dict[str, str]], enable_thinking: bool) -> list[int]:
        """Apply the checkpoint's chat template and tokenize the resulting prompt."""
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking
        )
        return self.encode(text)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def starts_thinking(self, prompt_ids: list[int]) -> bool:
        return starts_in_think_block(prompt_ids, self.think_start_id, self.think_end_id)

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> TokenStream:
        """Queue a request on the running batch; its tokens arrive on the stream until EOS or `max_tokens`."""
        return self.batcher.submit(prompt_ids, params)

    def close(self) -> None:
        self.batcher.close()
        self.model.close()


def _token_id(tokenizer: Any, token: str) -> int | None:
    token_id = tokenizer.convert_tokens_to_ids(token)
    return token_id if isinstance(token_id, int) and token_id != tokenizer.unk_token_id else None


def _eos_token_ids(config: Any, tokenizer: Any, model_path: Path) -> frozenset[int]:
    ids: set[int] = set()
    generation = model_path / "generation_config.json"
    generation_eos = None
    if generation.is_file():
        generation_eos = json.loads(generation.read_text(encoding="utf-8")).get("eos_token_id")
    for source in (generation_eos, config.eos_token_id, tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list):
            ids.update(source)
    return frozenset(ids)
