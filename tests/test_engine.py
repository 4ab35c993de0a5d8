"""The sharded MoE engine: expert shards on Ray, continuous batching and parity with transformers.

The reference is transformers' own `AXK1ForCausalLM` on the same tiny checkpoint. Shards are real
Ray actors in the session's Ray cluster (started by the `stack` fixture).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import torch
from transformers import AXK1ForCausalLM

from serving.axk1 import StepBatch, shard_experts
from serving.batching import ContinuousBatcher
from serving.engine import ShardedAXK1, TorchEngine
from serving.errors import EngineFailure
from serving.generation import SamplingParams

SHARD_COUNTS = (1, 2, 4)
MODEL = "axk1-tiny"


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path) -> AXK1ForCausalLM:
    return AXK1ForCausalLM.from_pretrained(tiny_checkpoint).eval()


@pytest.fixture(scope="module")
def engines(stack: object, tiny_checkpoint: Path) -> Iterator[dict[int, TorchEngine]]:
    """One engine per shard count, in float32 like the checkpoint, sharing the session's Ray cluster."""
    built = {shards: TorchEngine(tiny_checkpoint, "float32", shards, f"test-{shards}") for shards in SHARD_COUNTS}
    yield built
    for engine in built.values():
        engine.close()


def prompt(engine: TorchEngine, text: str, thinking: bool = False) -> list[int]:
    return engine.render_chat([{"role": "user", "content": text}], enable_thinking=thinking)


def greedy(length: int) -> SamplingParams:
    return SamplingParams(max_tokens=length, temperature=0)


class RecordingModel:
    """The engine's real model, with every step's ragged batch written down.

    With `pause_at=k`, step k waits until the test calls `resume()`, so what the test does between
    (submit, cancel, kill a shard) lands at a known step instead of racing the batcher.
    """

    def __init__(self, model: ShardedAXK1, pause_at: int | None = None) -> None:
        self.model = model
        self.slots = model.slots
        self.steps: list[StepBatch] = []
        self.pause_at = pause_at
        self.paused = threading.Event()
        self._resume = threading.Event()

    def resume(self) -> None:
        self._resume.set()

    def step(self, tokens: list[int], batch: StepBatch) -> torch.Tensor:
        if len(self.steps) == self.pause_at:
            self.paused.set()
            assert self._resume.wait(timeout=60), "the test never resumed the batcher"
        self.steps.append(batch)
        return self.model.step(tokens, batch)

    def release(self, slot: int) -> None:
        self.model.release(slot)

    def recover(self, failure: EngineFailure) -> None:
        self.model.recover(failure)


@pytest.mark.parametrize("shards", SHARD_COUNTS)
def test_each_shard_holds_only_its_experts_and_reads_only_their_bytes(
    engines: dict[int, TorchEngine], tiny_checkpoint: Path, shards: int
) -> None:
    from serving.weights import CheckpointTensors

    entries = CheckpointTensors(tiny_checkpoint).entries
    expert_bytes = sum(entry.nbytes for name, entry in entries.items() if ".mlp.experts." in name)
    model = engines[shards].model
    described = model.experts.describe()
    assert [shard["experts"] for shard in described] == [
        [block.start, block.stop] for block in (shard_experts(8, index, shards) for index in range(shards))
    ]
    assert [shard["bytes_read"] for shard in described] == [expert_bytes // shards] * shards
    assert len({shard["pid"] for shard in described}) == shards, "every shard is its own process"
    # The trunk read everything but the routed experts and the dense layer's `post_mlp_layernorm`, which
    # the checkpoint holds for vLLM's loader and no dense layer applies.
    unused = entries["model.layers.0.post_mlp_layernorm.weight"].nbytes
    assert model.trunk_bytes_read == sum(entry.nbytes for entry in entries.values()) - expert_bytes - unused


@pytest.mark.parametrize("shards", SHARD_COUNTS)
def test_logits_match_transformers_at_prefill_and_every_decode_step(
    engines: dict[int, TorchEngine], reference: AXK1ForCausalLM, shards: int
) -> None:
    engine = engines[shards]
    model = RecordingModel(engine.model)
    tokens = prompt(engine, "서울의 날씨를 알려 주세요.")
    slot = 5
    logits = model.step(tokens, StepBatch([slot], [0], [len(tokens)]))[0]
    sequence = list(tokens)
    for _ in range(6):
        with torch.no_grad():
            expected = reference(torch.tensor([sequence])).logits[0, -1]
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
        sequence.append(int(logits.argmax()))
        logits = model.step([sequence[-1]], StepBatch([slot], [len(sequence) - 1], [1]))[0]


@pytest.mark.parametrize("shards", SHARD_COUNTS)
def test_greedy_generations_are_token_identical_to_transformers_generate(
    engines: dict[int, TorchEngine], reference: AXK1ForCausalLM, shards: int
) -> None:
    engine = engines[shards]
    prompts = [prompt(engine, text) for text in ("안녕하세요", "What is MLA?", "서울의 날씨", "one two three four")]
    streams = [engine.submit(tokens, greedy(24)) for tokens in prompts]  # one batch, prompts of different lengths
    for tokens, stream in zip(prompts, streams, strict=True):
        expected = reference.generate(torch.tensor([tokens]), max_new_tokens=24, do_sample=False)[0, len(tokens) :]
        assert list(stream) == expected.tolist()


def test_bfloat16_logits_stay_within_bfloat16_tolerance(
    stack: object, tiny_checkpoint: Path, reference: AXK1ForCausalLM
) -> None:
    engine = TorchEngine(tiny_checkpoint, "bfloat16", 2, "test-bf16")
    try:
        tokens = prompt(engine, "서울의 날씨를 알려 주세요.")
        logits = engine.model.step(tokens, StepBatch([0], [0], [len(tokens)]))[0]
    finally:
        engine.close()
    with torch.no_grad():
        expected = reference(torch.tensor([tokens])).logits[0, -1]
    torch.testing.assert_close(logits, expected, atol=0.05 * float(expected.abs().max()), rtol=0.05)
    assert int(logits.argmax()) == int(expected.argmax())


def test_requests_join_and_leave_the_running_batch_at_every_step(engines: dict[int, TorchEngine]) -> None:
    engine = engines[2]
    model = RecordingModel(engine.model, pause_at=5)
    batcher = ContinuousBatcher(model, engine.eos_token_ids)
    try:
        first_prompt, second_prompt = prompt(engine, "서울의 날씨"), prompt(engine, "부산", thinking=True)
        first = batcher.submit(first_prompt, greedy(30))
        assert model.paused.wait(timeout=60)
        second = batcher.submit(second_prompt, greedy(8))  # arrives while the first request is decoding
        model.resume()
        first_tokens, second_tokens = list(first), list(second)
    finally:
        batcher.close()
    sizes = [len(step.slots) for step in model.steps]
    # Step 6 decoded the first request and prefilled the think-mode one together; the second left after
    # its 8 tokens and the first went on alone: 30 steps for 38 tokens.
    assert sizes == [1] * 6 + [2] * 8 + [1] * 16
    assert sorted(model.steps[6].counts) == [1, len(second_prompt)]
    assert first_tokens == list(engine.submit(first_prompt, greedy(30)))
    assert second_tokens == list(engine.submit(second_prompt, greedy(8)))


def test_sampling_settings_are_per_request_in_a_shared_batch(engines: dict[int, TorchEngine]) -> None:
    engine = engines[1]
    tokens = prompt(engine, "이야기를 하나 들려 주세요")
    settings = [
        SamplingParams(max_tokens=12, temperature=0.9, seed=7),
        SamplingParams(max_tokens=12, temperature=0.9, seed=7),
        SamplingParams(max_tokens=12, temperature=0.9, seed=8),
        SamplingParams(max_tokens=5, temperature=0),
        SamplingParams(max_tokens=12, temperature=1.0, top_p=1e-6, seed=3),
    ]
    streams = [engine.submit(tokens, params) for params in settings]  # all in one batch
    same_seed, twin, other_seed, short, nucleus = (list(stream) for stream in streams)
    assert same_seed == twin, "one seed, one sample, whatever else shares the batch"
    assert same_seed != other_seed
    assert len(short) == 5
    # top_p that keeps only the most likely token is greedy decoding.
    assert nucleus == list(engine.submit(tokens, greedy(12)))


def test_a_cancelled_request_frees_its_slot_at_the_next_step(engines: dict[int, TorchEngine]) -> None:
    engine = engines[1]
    model = RecordingModel(engine.model, pause_at=3)
    batcher = ContinuousBatcher(model, frozenset())
    try:
        stream = batcher.submit(prompt(engine, "서울의 날씨"), greedy(1000))
        assert model.paused.wait(timeout=60)
        stream.cancel()
        model.resume()
        assert len(list(stream)) == 3, "the token of the step in flight is dropped; no step after the cancel"
        follower = batcher.submit(prompt(engine, "부산"), greedy(3))
        assert len(list(follower)) == 3
    finally:
        batcher.close()
    assert [len(step.slots) for step in model.steps] == [1] * 4 + [1] * 3
    assert model.steps[4].slots == model.steps[0].slots, "the freed slot was the next request's"


def test_a_dead_expert_shard_fails_the_step_then_is_replaced(engines: dict[int, TorchEngine]) -> None:
    import ray

    engine = engines[2]
    tokens = prompt(engine, "서울의 날씨")
    expected = list(engine.submit(tokens, greedy(12)))
    model = RecordingModel(engine.model, pause_at=2)
    batcher = ContinuousBatcher(model, frozenset())
    try:
        streams = [batcher.submit(tokens, greedy(1000)) for _ in range(3)]
        assert model.paused.wait(timeout=60)
        old = engine.model.experts.describe()[1]
        ray.kill(engine.model.experts.shards[1].actor, no_restart=True)
        model.resume()
        started = time.monotonic()
        for stream in streams:
            with pytest.raises(EngineFailure, match="expert shard 1 failed during generation"):
                list(stream)
        assert time.monotonic() - started < 30, "in-flight requests ended promptly"
        assert list(batcher.submit(tokens, greedy(12))) == expected, "the replacement computes the same tokens"
    finally:
        batcher.close()
    assert engine.model.experts.describe()[1]["pid"] != old["pid"]
    assert len(model.steps) == 3 + 12, "two good steps, the failed one, then the follow-up request's 12"


def test_a_dense_model_runs_through_transformers_behind_the_same_batcher(stack: object, tmp_path: Path) -> None:
    """A distilled student of another architecture: transformers' class, one cache per slot."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from serving.tokenizer import build_tokenizer

    build_tokenizer(tmp_path)
    torch.manual_seed(0)
    LlamaForCausalLM(
        LlamaConfig(vocab_size=2048, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    ).save_pretrained(tmp_path)
    engine = TorchEngine(tmp_path, "float32")
    reference = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    try:
        prompts = [engine.encode("서울"), engine.encode("hello there")]
        streams = [engine.submit(tokens, greedy(10)) for tokens in prompts]
        for tokens, stream in zip(prompts, streams, strict=True):
            expected = reference.generate(torch.tensor([tokens]), max_new_tokens=10, do_sample=False)
            assert list(stream) == expected[0, len(tokens) :].tolist()
    finally:
        engine.close()


def test_a_request_without_a_resolved_max_tokens_is_refused(engines: dict[int, TorchEngine]) -> None:
    engine = engines[1]
    with pytest.raises(ValueError, match="max_tokens must be resolved"):
        engine.submit(prompt(engine, "안녕하세요"), SamplingParams(max_tokens=None))
    assert engine.batcher.stats()["waiting"] == 0


def test_shard_counts_outside_the_experts_are_refused() -> None:
    with pytest.raises(ValueError, match="between 1 and the model's 8 routed experts, not 9"):
        shard_experts(8, 0, 9)
    assert [len(shard_experts(10, index, 4)) for index in range(4)] == [3, 3, 2, 2]


def test_thread_safety_of_submissions_from_many_threads(engines: dict[int, TorchEngine]) -> None:
    engine = engines[4]
    tokens = prompt(engine, "안녕하세요")
    expected = list(engine.submit(tokens, greedy(10)))
    results: list[list[int]] = []

    def run() -> None:
        results.append(list(engine.submit(tokens, greedy(10))))

    threads = [threading.Thread(target=run) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == [expected] * 16


def test_killing_the_stacks_expert_shard_by_actor_id_fails_requests_in_flight_then_serves_again(
    client: openai.OpenAI,
) -> None:
    """Through the API, as a client sees it: a streaming and a plain request are in flight when the
    shard's process is killed; both end with the shard named, and the next request is answered."""
    from ray import serve

    model_server = serve.get_deployment_handle("LLMServer", app_name="sovereign")
    # The shard actor reports its own actor id and the process it runs in; that process is killed.
    shard = model_server.stats.remote().result()["expert_shards"][0]
    messages = [{"role": "user", "content": "서울의 날씨"}]  # greedy: no end of text for over 1,200 tokens
    stream = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=1500, stream=True)
    plain: dict[str, BaseException] = {}

    def plain_request() -> None:
        try:
            client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=1500)
        except openai.APIError as error:
            plain["error"] = error

    next(iter(stream))
    thread = threading.Thread(target=plain_request)
    thread.start()
    deadline = time.monotonic() + 30
    while model_server.stats.remote().result()["batcher"]["running"] < 2:  # both in the batch
        assert time.monotonic() < deadline, "the plain request never joined the batch"
    os.kill(shard["pid"], signal.SIGKILL)
    with pytest.raises(openai.APIError, match="expert shard 0 failed during generation"):
        for _ in stream:
            pass
    thread.join(timeout=60)
    assert isinstance(plain.get("error"), openai.InternalServerError)
    assert plain["error"].status_code == 503
    assert "expert shard 0 failed" in str(plain["error"])
    answer = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=8)
    assert answer.usage.completion_tokens == 8
    replaced = model_server.stats.remote().result()["expert_shards"][0]
    assert replaced["actor_id"] != shard["actor_id"]
    assert replaced["experts"] == shard["experts"]
