"""Token streams become OpenAI deltas: detokenization, stop strings, and the reasoning/answer split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from serving.generation import (
    IncrementalDecoder,
    OutputStream,
    SamplingParams,
    StopFilter,
    sample_next_token,
    starts_in_think_block,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_checkpoint)


@pytest.mark.parametrize("text", ["안녕하세요, 세계!", "mixed 한국어 and 日本語 ¡hola!", "emoji 🙂 at the end 🙂"])
def test_incremental_decoding_reassembles_multibyte_text_exactly(tokenizer, text: str) -> None:
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(token) for token in tokenizer.encode(text)]
    assert "".join(pieces) + decoder.flush() == text
    assert all("\ufffd" not in piece for piece in pieces)


def test_incomplete_character_is_held_back_until_complete(tokenizer) -> None:
    byte_tokens = [tokenizer.convert_tokens_to_ids(token) for token in tokenizer.tokenize("🙂")]
    assert len(byte_tokens) > 1, "the emoji must span several byte-level tokens for this test"
    decoder = IncrementalDecoder(tokenizer)
    assert [decoder.push(token) for token in byte_tokens[:-1]] == [""] * (len(byte_tokens) - 1)
    assert decoder.push(byte_tokens[-1]) == "🙂"


def test_truncated_character_is_flushed_at_the_end(tokenizer) -> None:
    byte_tokens = [tokenizer.convert_tokens_to_ids(token) for token in tokenizer.tokenize("🙂")]
    decoder = IncrementalDecoder(tokenizer)
    for token in byte_tokens[:-1]:
        decoder.push(token)
    assert decoder.flush() == "\ufffd"


def test_stop_string_across_deltas_is_cut_and_never_emitted() -> None:
    stops = StopFilter(("END",))
    assert stops.feed("hello E") == ("hello ", False)
    assert stops.feed("N") == ("", False)
    assert stops.feed("D and more") == ("", True)


def test_held_text_that_is_not_a_stop_is_released() -> None:
    stops = StopFilter(("END",))
    assert stops.feed("hello EN") == ("hello ", False)
    assert stops.feed("ough") == ("ENough", False)
    assert stops.feed("tail E") == ("tail ", False)
    assert stops.flush() == "E"


def test_earliest_of_several_stops_wins() -> None:
    assert StopFilter(("world", "lo")).feed("hello world") == ("hel", True)


def encode_all(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def test_think_mode_splits_reasoning_from_answer_and_drops_the_tag(tokenizer) -> None:
    think_end = tokenizer.convert_tokens_to_ids("</think>")
    stream = OutputStream(tokenizer, (), think_end, thinking=True)
    reasoning, content = "", ""
    for token in encode_all(tokenizer, "먼저 질문을 읽고</think>\n\n짧은 답변"):
        delta = stream.push(token)
        reasoning, content = reasoning + delta.reasoning, content + delta.content
    tail = stream.finish()
    reasoning, content = reasoning + tail.reasoning, content + tail.content
    assert reasoning == "먼저 질문을 읽고"
    assert content == "\n\n짧은 답변"
    assert stream.answer_started


def test_non_think_mode_is_all_answer_even_if_the_tag_appears(tokenizer) -> None:
    think_end = tokenizer.convert_tokens_to_ids("</think>")
    stream = OutputStream(tokenizer, (), think_end, thinking=False)
    deltas = [stream.push(token) for token in encode_all(tokenizer, "answer</think>more")]
    assert "".join(delta.reasoning for delta in deltas) == ""
    assert "".join(delta.content for delta in deltas) + stream.finish().content == "answermore"


def test_reasoning_that_never_closes_leaves_the_answer_unstarted(tokenizer) -> None:
    stream = OutputStream(tokenizer, (), tokenizer.convert_tokens_to_ids("</think>"), thinking=True)
    text = "".join(stream.push(token).reasoning for token in encode_all(tokenizer, "still thinking"))
    assert text + stream.finish().reasoning == "still thinking"
    assert not stream.answer_started


def test_stop_string_ends_the_stream(tokenizer) -> None:
    stream = OutputStream(tokenizer, ("답변",), None, thinking=False)
    emitted = ""
    for token in encode_all(tokenizer, "짧은 답변 그리고 더"):
        emitted += stream.push(token).content
        if stream.stopped:
            break
    assert stream.stopped
    assert emitted == "짧은 "
    assert stream.finish().content == ""


def test_prompt_think_state() -> None:
    assert starts_in_think_block([1, 2, 3, 9], think_start_id=3, think_end_id=4)
    assert not starts_in_think_block([1, 3, 4, 9], think_start_id=3, think_end_id=4)
    assert not starts_in_think_block([1, 2], think_start_id=3, think_end_id=4)
    assert not starts_in_think_block([3], think_start_id=None, think_end_id=None)


def test_greedy_sampling_picks_the_argmax() -> None:
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    params = SamplingParams(max_tokens=1, temperature=0)
    assert sample_next_token(logits, params, torch.Generator().manual_seed(0)) == 1


def test_top_p_keeps_only_the_nucleus() -> None:
    logits = torch.tensor([5.0, 4.0, -5.0, -5.0])
    params = SamplingParams(max_tokens=1, temperature=1.0, top_p=0.5)
    generator = torch.Generator().manual_seed(0)
    assert {sample_next_token(logits, params, generator) for _ in range(200)} == {0}


def test_seeded_sampling_is_reproducible_and_covers_the_distribution() -> None:
    logits = torch.zeros(8)
    params = SamplingParams(max_tokens=1, temperature=1.0, seed=7)

    def draw() -> list[int]:
        generator = torch.Generator().manual_seed(7)
        return [sample_next_token(logits, params, generator) for _ in range(64)]

    first = draw()
    assert first == draw()
    assert len(set(first)) == 8
