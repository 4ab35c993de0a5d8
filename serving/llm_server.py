"""The model-hosting Ray Serve deployment: prompt rendering, context checks and token streaming.

It streams plain-dict events to the ingress so that expected errors cross the Ray boundary as data:
`start` (prompt size, mode), `delta` (reasoning/content text), `end` (finish reason, token count),
or a single `error` in place of `start`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ray import serve

from serving.checkpoint import ModelCard
from serving.errors import APIError
from serving.generation import OutputStream, SamplingParams

if TYPE_CHECKING:
    from serving.engine import TorchEngine


@dataclass(frozen=True)
class GenerationJob:
    """One choice to generate: a chat (rendered here with the model's template) or a raw prompt."""

    params: SamplingParams
    messages: list[dict[str, str]] | None = None
    enable_thinking: bool = False
    prompt: str | list[int] | None = None

    @property
    def prompt_field(self) -> str:
        return "messages" if self.messages is not None else "prompt"


@serve.deployment(name="LLMServer", max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
class LLMServer:
    def __init__(self, card: ModelCard, dtype: str) -> None:
        from serving.engine import TorchEngine

        self.card = card
        self.engine: TorchEngine = TorchEngine(card.path, dtype)
        self.running = 0
        self.cancelled_total = 0

    def decode(self, token_ids: list[int]) -> str | None:
        """Text of a token-id prompt, so the gateway can inspect it; None when an id is out of range."""
        if any(not 0 <= token < len(self.engine.tokenizer) for token in token_ids):
            return None
        return self.engine.tokenizer.decode(token_ids)

    def stats(self) -> dict[str, int]:
        """Requests generating now, and requests whose client went away before they finished."""
        return {"running": self.running, "cancelled_total": self.cancelled_total}

    async def generate(self, job: GenerationJob) -> AsyncIterator[dict[str, Any]]:
        try:
            prompt_ids = self._prompt_ids(job)
            params = self._bounded(job, len(prompt_ids))
        except APIError as error:
            yield error.as_event()
            return
        engine = self.engine
        thinking = engine.starts_thinking(prompt_ids)
        yield {"event": "start", "prompt_tokens": len(prompt_ids), "thinking": thinking}
        output = OutputStream(engine.tokenizer, params.stop, engine.think_end_id, thinking)
        tokens = engine.generate(prompt_ids, params)
        generated, finish_reason, ended = 0, "length", False
        self.running += 1
        try:
            while (token := await asyncio.to_thread(next, tokens, None)) is not None:
                generated += 1
                if token in engine.eos_token_ids:
                    finish_reason = "stop"
                    break
                delta = output.push(token)
                if delta:
                    yield {"event": "delta", "reasoning": delta.reasoning, "content": delta.content}
                if output.stopped:
                    finish_reason = "stop"
                    break
            tail = output.finish()
            if tail:
                yield {"event": "delta", "reasoning": tail.reasoning, "content": tail.content}
            ended = True
            yield {
                "event": "end",
                "finish_reason": finish_reason,
                "completion_tokens": generated,
                "answer_started": output.answer_started,
            }
        finally:
            # Reached on completion, on error and when the client goes away (Serve cancels this
            # generator); no further decode step runs once nobody pulls tokens.
            self.running -= 1
            self.cancelled_total += not ended

    def _prompt_ids(self, job: GenerationJob) -> list[int]:
        engine = self.engine
        if job.messages is not None:
            if engine.tokenizer.chat_template is None:
                raise APIError(400, f"model `{self.card.id}` has no chat template; use /v1/completions", "messages")
            try:
                ids = engine.render_chat(job.messages, job.enable_thinking)
            except Exception as error:  # Jinja raises many types for templates that reject a conversation.
                raise APIError(400, f"the chat template rejected these messages: {error}", "messages") from None
        elif isinstance(job.prompt, str):
            ids = engine.encode(job.prompt)
        else:
            ids = list(job.prompt or [])
            vocab = len(engine.tokenizer)
            if any(not 0 <= token < vocab for token in ids):
                raise APIError(400, f"token ids in `prompt` must be between 0 and {vocab - 1}", "prompt")
        if not ids:
            raise APIError(400, f"`{job.prompt_field}` encodes to no tokens", job.prompt_field)
        return ids

    def _bounded(self, job: GenerationJob, prompt_tokens: int) -> SamplingParams:
        limit = self.engine.max_model_len
        if prompt_tokens >= limit:
            raise APIError(
                400,
                f"This model's maximum context length is {limit} tokens. However, your {job.prompt_field} "
                f"resulted in {prompt_tokens} tokens. Please reduce the length of the {job.prompt_field}.",
                job.prompt_field,
                "context_length_exceeded",
            )
        room = limit - prompt_tokens
        if job.params.max_tokens is None:
            return dataclasses.replace(job.params, max_tokens=room)
        if job.params.max_tokens > room:
            raise APIError(
                400,
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_tokens + job.params.max_tokens} tokens ({prompt_tokens} in the {job.prompt_field}, "
                f"{job.params.max_tokens} in the completion). Please reduce the length of the "
                f"{job.prompt_field} or completion.",
                "max_tokens",
                "context_length_exceeded",
            )
        return job.params
