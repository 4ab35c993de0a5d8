"""The model-hosting Ray Serve deployment: prompt rendering, context checks and token streaming.

It streams plain-dict events to the ingress so that expected errors cross the Ray boundary as data:
`start` (prompt size, mode), `delta` (reasoning/content text), `end` (finish reason, token count),
or a single `error` in place of `start`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ray import serve

from monitoring import catalogue
from serving.checkpoint import ModelCard
from serving.config import MAX_SEQUENCES
from serving.errors import APIError, EngineFailure
from serving.generation import OutputStream, SamplingParams

if TYPE_CHECKING:
    from serving.vllm_engine import VLLMEngine


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


@serve.deployment(name="LLMServer", max_ongoing_requests=MAX_SEQUENCES, ray_actor_options={"num_cpus": 1})
class LLMServer:
    def __init__(self, card: ModelCard, engine_kwargs: dict[str, Any]) -> None:
        from serving.vllm_engine import VLLMEngine

        self.card = card
        self.engine: VLLMEngine = VLLMEngine(card.path, engine_kwargs)
        self.running = 0
        self.cancelled_total = 0
        catalogue.initialise_series()

    def __del__(self) -> None:
        # Serve calls this when the replica shuts down: vLLM's engine process goes with it.
        if (engine := getattr(self, "engine", None)) is not None:
            engine.close()

    def decode(self, token_ids: list[int]) -> str | None:
        """Text of a token-id prompt, so the gateway can inspect it; None when an id is out of range."""
        if any(not 0 <= token < len(self.engine.tokenizer) for token in token_ids):
            return None
        return self.engine.tokenizer.decode(token_ids)

    def stats(self) -> dict[str, Any]:
        """Requests generating now, requests whose client went away, and the requests vLLM still holds."""
        return {
            "running": self.running,
            "cancelled_total": self.cancelled_total,
            "engine_unfinished": self.engine.unfinished_requests(),
        }

    async def generate(self, job: GenerationJob) -> AsyncIterator[dict[str, Any]]:
        started = time.perf_counter()
        try:
            prompt_ids = self._prompt_ids(job)
            params = self._bounded(job, len(prompt_ids))
        except APIError as error:
            yield error.as_event()
            return
        engine = self.engine
        thinking = engine.starts_thinking(prompt_ids)
        yield {"event": "start", "prompt_tokens": len(prompt_ids), "thinking": thinking}
        mode = "think" if thinking else "non_think"
        catalogue.PROMPT_TOKENS.labels(mode).inc(len(prompt_ids))
        output = OutputStream(engine.tokenizer, params.stop, engine.think_end_id, thinking)
        tokens = engine.submit(prompt_ids, params)
        generated, finish_reason, ended = 0, "length", False
        self.running += 1
        catalogue.REQUESTS_WAITING.inc()
        last_token_at: float | None = None
        try:
            async for token in tokens:
                now = time.perf_counter()
                if last_token_at is None:
                    catalogue.TIME_TO_FIRST_TOKEN.labels(mode).observe(now - started)
                    catalogue.REQUESTS_WAITING.dec()
                    catalogue.REQUESTS_RUNNING.inc()
                else:
                    catalogue.INTER_TOKEN_LATENCY.labels(mode).observe(now - last_token_at)
                last_token_at = now
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
        except EngineFailure as failure:
            # The step failed for every request in the batch; this one ends with the reason, never half-wrong.
            yield APIError(503, str(failure), code="engine_failure").as_event()
        finally:
            # Reached on completion, on error and when the client goes away (Serve cancels this
            # generator); the batcher frees the request's slot before its next step.
            tokens.cancel()
            self.running -= 1
            self.cancelled_total += not ended
            (catalogue.REQUESTS_WAITING if last_token_at is None else catalogue.REQUESTS_RUNNING).dec()
            catalogue.GENERATION_TOKENS.labels(mode).inc(generated)
            catalogue.GENERATION_LATENCY.labels(mode).observe(time.perf_counter() - started)

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
