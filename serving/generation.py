"""Turn a stream of sampled token ids into OpenAI-style text deltas.

Pure logic with no Ray and no HTTP: sampling, incremental detokenization, stop strings that may
straddle deltas, and the split of a Think Fusion answer into `reasoning` and `content`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch


class Detokenizer(Protocol):
    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings, already validated by the API layer.

    `max_tokens=None` means "until the context is full"; the model server resolves it.
    """

    max_tokens: int | None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


def sample_next_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """Pick the next token from one position's logits: greedy at temperature 0, else nucleus sampling."""
    import torch

    if params.temperature == 0:
        return int(torch.argmax(logits))
    probabilities = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probabilities, order = torch.sort(probabilities, descending=True)
        # Keep the smallest prefix whose mass reaches top_p; the most likely token always stays.
        outside = torch.cumsum(sorted_probabilities, dim=-1) - sorted_probabilities >= params.top_p
        sorted_probabilities[outside] = 0.0
        probabilities = torch.zeros_like(probabilities).scatter(0, order, sorted_probabilities)
    return int(torch.multinomial(probabilities, 1, generator=generator))


class IncrementalDecoder:
    """Decodes tokens one at a time, holding back bytes until they form whole characters."""

    def __init__(self, tokenizer: Detokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        before = self._decode(self._prefix_offset, self._read_offset)
        after = self._decode(self._prefix_offset, len(self._ids))
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back at the end of generation."""
        before = self._decode(self._prefix_offset, self._read_offset)
        rest = self._decode(self._prefix_offset, len(self._ids))[len(before) :]
        self._prefix_offset = self._read_offset = len(self._ids)
        return rest

    def _decode(self, start: int, end: int) -> str:
        return self._tokenizer.decode(self._ids[start:end], skip_special_tokens=True)


class StopFilter:
    """Cuts text at the first stop string, holding back a tail that could still become one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Return the text that is safe to emit, and whether a stop string was reached."""
        buffer = self._held + text
        hits = [buffer.find(stop) for stop in self._stops if stop in buffer]
        if hits:
            self._held = ""
            return buffer[: min(hits)], True
        keep = max(
            (size for stop in self._stops for size in range(1, len(stop)) if buffer.endswith(stop[:size])),
            default=0,
        )
        self._held = buffer[len(buffer) - keep :]
        return buffer[: len(buffer) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


@dataclass
class Delta:
    reasoning: str = ""
    content: str = ""

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content)


@dataclass
class _Channel:
    decoder: IncrementalDecoder
    stops: StopFilter
    started: bool = False


@dataclass
class OutputStream:
    """Routes generated tokens to the reasoning or the answer channel and applies stop strings.

    A Think Fusion model in think mode starts inside a think block: everything up to the
    think-end token is reasoning, the rest is the answer. The think-end token itself is dropped.
    """

    tokenizer: Detokenizer
    stop: tuple[str, ...]
    think_end_id: int | None
    thinking: bool
    stopped: bool = False
    _reasoning: _Channel = field(init=False)
    _content: _Channel = field(init=False)

    def __post_init__(self) -> None:
        self._reasoning = _Channel(IncrementalDecoder(self.tokenizer), StopFilter(self.stop))
        self._content = _Channel(IncrementalDecoder(self.tokenizer), StopFilter(self.stop))

    @property
    def answer_started(self) -> bool:
        return not self.thinking or self._content.started

    def push(self, token_id: int) -> Delta:
        if self.thinking and token_id == self.think_end_id:
            self.thinking = False
            self._content.started = True
            return self._finish_channel(self._reasoning, "reasoning")
        channel, name = (self._reasoning, "reasoning") if self.thinking else (self._content, "content")
        channel.started = True
        text, self.stopped = channel.stops.feed(channel.decoder.push(token_id))
        return Delta(**{name: text})

    def finish(self) -> Delta:
        """Release what is held back once generation has ended for any reason other than a stop."""
        if self.stopped:
            return Delta()
        channel, name = (self._reasoning, "reasoning") if self.thinking else (self._content, "content")
        return self._finish_channel(channel, name)

    def _finish_channel(self, channel: _Channel, name: str) -> Delta:
        text, self.stopped = channel.stops.feed(channel.decoder.flush())
        if not self.stopped:
            text += channel.stops.flush()
        return Delta(**{name: text})


def starts_in_think_block(prompt_ids: list[int], think_start_id: int | None, think_end_id: int | None) -> bool:
    """Does the prompt leave the model inside an open think block (thinking on)?"""
    if think_start_id is None or think_end_id is None:
        return False
    last_start = max((i for i, token in enumerate(prompt_ids) if token == think_start_id), default=-1)
    last_end = max((i for i, token in enumerate(prompt_ids) if token == think_end_id), default=-1)
    return last_start > last_end
