"""The built-in torch engine: a local HF checkpoint served by transformers' model classes.

Each request decodes with its own KV cache; forward passes of concurrent requests interleave at
step granularity under one lock, so think and non-think requests share the model in one replica.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
from transformers.utils import logging as transformers_logging

from serving.generation import SamplingParams, sample_next_token, starts_in_think_block
from serving.tokenizer import THINK_END, THINK_START

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TorchEngine:
    """Loads a checkpoint directory and generates tokens for one request at a time per step."""

    def __init__(self, model_path: Path, dtype: str = "auto") -> None:
        transformers_logging.disable_progress_bar()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=_DTYPES.get(dtype, "auto"))
        self.model = model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
        config = self.model.config
        self.max_model_len: int = config.max_position_embeddings
        self.think_start_id = _token_id(self.tokenizer, THINK_START)
        self.think_end_id = _token_id(self.tokenizer, THINK_END)
        self.eos_token_ids = _eos_token_ids(self.model, self.tokenizer)
        self._lock = threading.Lock()

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

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[int]:
        """Yield sampled token ids until EOS or `max_tokens`; each step runs when the caller asks for it."""
        generator = torch.Generator()
        generator.manual_seed(params.seed if params.seed is not None else secrets.randbits(63))
        cache = DynamicCache(config=self.model.config)
        inputs = torch.tensor([prompt_ids], device=self.model.device)
        for _ in range(params.max_tokens):
            with self._lock, torch.inference_mode():
                logits = self.model(inputs, past_key_values=cache, use_cache=True).logits[0, -1]
            token = sample_next_token(logits.cpu(), params, generator)
            yield token
            if token in self.eos_token_ids:
                return
            inputs = torch.tensor([[token]], device=self.model.device)


def _token_id(tokenizer: Any, token: str) -> int | None:
    token_id = tokenizer.convert_tokens_to_ids(token)
    return token_id if isinstance(token_id, int) and token_id != tokenizer.unk_token_id else None


def _eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (model.generation_config.eos_token_id, model.config.eos_token_id, tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list):
            ids.update(source)
    return frozenset(ids)
