"""Continuous batching: requests join and leave the running batch at every decode step.

One thread runs the steps. Each step takes every running sequence's last token (decode) and the
whole prompt of each newly admitted request (prefill) as one ragged batch, samples one token per
sequence with that request's own settings and generator, and hands it to the request's
`TokenStream`. A sequence leaves at EOS, at `max_tokens`, or when its consumer cancels (a client
that went away, or a stop string reached); its slot is free for the next step's admissions. A
failed step ends every request in it with the failure's message; the model then recovers (an expert
shard is restarted) before the next step, so no request ever continues on a broken model.
"""

from __future__ import annotations

import asyncio
import queue
import secrets
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from monitoring import catalogue
from serving.axk1 import StepBatch
from serving.errors import EngineFailure
from serving.generation import SamplingParams, sample_next_token


class BatchModel(Protocol):
    """A model that computes one ragged step over sequence slots."""

    slots: int

    def step(self, tokens: list[int], batch: StepBatch) -> torch.Tensor:
        """Logits `[sequences, vocab]` of each sequence's last new token; raises `EngineFailure`."""
        ...

    def release(self, slot: int) -> None: ...

    def recover(self, failure: EngineFailure) -> None: ...

    def close(self) -> None: ...


_END = object()


class TokenStream:
    """One request's sampled tokens, consumed asynchronously (in the model server) or by plain iteration."""

    def __init__(self, batcher: ContinuousBatcher) -> None:
        self._batcher = batcher
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self._async_items: asyncio.Queue[Any] = asyncio.Queue()
        self._items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.cancelled = False

    def deliver(self, item: Any) -> None:
        """Called by the step thread with a token, `_END` or an `EngineFailure`."""
        if self._loop is None:
            self._items.put(item)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._async_items.put_nowait, item)

    def cancel(self) -> None:
        """Stop generating for this request and free its slot at the next step."""
        if not self.cancelled:
            self.cancelled = True
            self._batcher.wake()

    def __aiter__(self) -> AsyncIterator[int]:
        return self

    async def __anext__(self) -> int:
        return self._unpack(await self._async_items.get(), StopAsyncIteration)

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        return self._unpack(self._items.get(), StopIteration)

    @staticmethod
    def _unpack(item: Any, end: type[Exception]) -> int:
        if item is _END:
            raise end
        if isinstance(item, EngineFailure):
            raise item
        return item


@dataclass
class _Sequence:
    stream: TokenStream
    params: SamplingParams
    pending: list[int]
    generator: torch.Generator
    slot: int = -1
    cached: int = 0
    generated: int = 0
    greedy: bool = field(init=False)

    def __post_init__(self) -> None:
        self.greedy = self.params.temperature == 0


class ContinuousBatcher:
    """Schedules requests over `model.slots` sequence slots, one step at a time, in a daemon thread."""

    def __init__(self, model: BatchModel, eos_token_ids: frozenset[int]) -> None:
        self.model = model
        self.eos_token_ids = eos_token_ids
        self.steps = 0
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._free = list(range(model.slots - 1, -1, -1))
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="continuous-batcher", daemon=True)
        self._thread.start()

    def submit(self, prompt_ids: list[int], params: SamplingParams) -> TokenStream:
        """Queue a request; its tokens arrive on the returned stream."""
        if params.max_tokens is None:
            raise ValueError("max_tokens must be resolved (the room left in the context) before a request is queued")
        generator = torch.Generator()
        generator.manual_seed(params.seed if params.seed is not None else secrets.randbits(63))
        stream = TokenStream(self)
        with self._wake:
            self._waiting.append(_Sequence(stream, params, list(prompt_ids), generator))
            self._wake.notify()
        return stream

    def wake(self) -> None:
        with self._wake:
            self._wake.notify()

    def stats(self) -> dict[str, int]:
        return {"running": len(self._running), "waiting": len(self._waiting), "steps": self.steps}

    def close(self) -> None:
        """Stop stepping; the model stays loaded for its owner to close."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            with self._wake:
                self._drop_cancelled()
                while not self._closed and not self._running and not self._waiting:
                    self._wake.wait()
                    self._drop_cancelled()
                if self._closed:
                    return
                while self._waiting and self._free:
                    sequence = self._waiting.popleft()
                    sequence.slot = self._free.pop()
                    self._running.append(sequence)
                batch = list(self._running)
            if batch:
                self._step(batch)

    def _drop_cancelled(self) -> None:
        self._waiting = deque(sequence for sequence in self._waiting if not sequence.stream.cancelled)
        for sequence in [sequence for sequence in self._running if sequence.stream.cancelled]:
            self._leave(sequence)

    def _leave(self, sequence: _Sequence, last: Any = _END) -> None:
        self._running.remove(sequence)
        self.model.release(sequence.slot)
        self._free.append(sequence.slot)
        sequence.stream.deliver(last)

    def _step(self, batch: list[_Sequence]) -> None:
        tokens = [token for sequence in batch for token in sequence.pending]
        step = StepBatch(
            [sequence.slot for sequence in batch],
            [sequence.cached for sequence in batch],
            [len(sequence.pending) for sequence in batch],
        )
        catalogue.BATCH_SEQUENCES.observe(len(batch))
        try:
            logits = self.model.step(tokens, step)
        except EngineFailure as failure:
            with self._wake:
                for sequence in batch:
                    self._leave(sequence, failure)
            self.model.recover(failure)
            return
        self.steps += 1
        chosen = self._sample(batch, logits)
        with self._wake:
            for sequence, token in zip(batch, chosen, strict=True):
                sequence.cached += len(sequence.pending)
                sequence.pending = [token]
                sequence.generated += 1
                if sequence.stream.cancelled:
                    continue  # dropped before the next step
                sequence.stream.deliver(token)
                if token in self.eos_token_ids or sequence.generated >= sequence.params.max_tokens:
                    self._leave(sequence)

    @staticmethod
    def _sample(batch: list[_Sequence], logits: torch.Tensor) -> list[int]:
        greedy = logits.argmax(dim=-1).tolist()
        return [
            greedy[row] if one.greedy else sample_next_token(logits[row].cpu(), one.params, one.generator)
            for row, one in enumerate(batch)
        ]
