"""The torch engine on CPU: continuous batching and expert sharding against transformers `generate`.

    python -m tests.benchmarks.engine            (or: make bench)

On the tiny A.X K1 checkpoint, in float32, greedy, every request generating exactly `--tokens`
tokens (end of text ignored on both sides, so both do the same work):
- tokens/s and time to first token at concurrency 1, 8 and 32, experts in one Ray shard actor;
- transformers `AXK1ForCausalLM.generate` on the same weights with the same batch (1, 8, 32);
- the cost of expert sharding at concurrency 32: experts in the model server (0) or in 1, 2, 4 shards.
Both sides run with one intra-op thread, as the stack's model server does (`--threads` changes it).
Each configuration runs `--rounds` times, interleaved, and the median round is reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray
import torch
from rich.console import Console
from rich.table import Table
from transformers import AXK1ForCausalLM

from serving.batching import ContinuousBatcher, TokenStream
from serving.engine import TorchEngine
from serving.generation import SamplingParams
from serving.tiny_model import ensure_tiny_checkpoint
from tests.benchmarks.startup import machine

console = Console()
CONCURRENCY = (1, 8, 32)
SHARDS = (0, 1, 2, 4)


@dataclass(frozen=True)
class Round:
    tokens_per_second: float
    first_token_seconds: float  # median over the round's requests


def engine_round(engine: TorchEngine, prompt: list[int], concurrency: int, tokens: int) -> Round:
    batcher = ContinuousBatcher(engine.model, frozenset())  # no end of text: exactly `tokens` each
    first_tokens: list[float] = []
    counts: list[int] = []

    def client(stream: TokenStream) -> None:  # one consumer per request, as the model server has
        next(stream)
        first_tokens.append(time.perf_counter() - started)
        counts.append(1 + sum(1 for _ in stream))

    try:
        started = time.perf_counter()
        streams = [batcher.submit(prompt, SamplingParams(max_tokens=tokens, temperature=0)) for _ in range(concurrency)]
        clients = [threading.Thread(target=client, args=(stream,)) for stream in streams]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        elapsed = time.perf_counter() - started
    finally:
        batcher.close()
    assert sum(counts) == concurrency * tokens
    return Round(sum(counts) / elapsed, statistics.median(first_tokens))


def transformers_round(model: AXK1ForCausalLM, prompt: list[int], batch: int, tokens: int) -> Round:
    inputs = torch.tensor([prompt] * batch)
    options = {"max_new_tokens": tokens, "min_new_tokens": tokens, "do_sample": False}
    with torch.inference_mode():
        started = time.perf_counter()
        model.generate(inputs, max_new_tokens=1, do_sample=False)
        first_token = time.perf_counter() - started
        started = time.perf_counter()
        output = model.generate(inputs, **options)
        elapsed = time.perf_counter() - started
    assert output.shape == (batch, len(prompt) + tokens)
    return Round(batch * tokens / elapsed, first_token)


def median_round(rounds: list[Round]) -> Round:
    middle = sorted(rounds, key=lambda item: item.tokens_per_second)[len(rounds) // 2]
    return Round(middle.tokens_per_second, statistics.median(item.first_token_seconds for item in rounds))


def measure(checkpoint: Path, tokens: int, rounds: int) -> None:
    engines = {}
    for shards in SHARDS:
        engine = TorchEngine(checkpoint, "float32", shards, f"bench-{shards}")
        engine.batcher.close()  # each round runs a batcher of its own over the engine's model
        engines[shards] = engine
    reference = AXK1ForCausalLM.from_pretrained(checkpoint).eval()
    prompt = engines[1].render_chat([{"role": "user", "content": "서울의 날씨를 알려 주세요."}], False)
    ours: dict[int, list[Round]] = {c: [] for c in CONCURRENCY}
    theirs: dict[int, list[Round]] = {c: [] for c in CONCURRENCY}
    sharded: dict[int, list[Round]] = {s: [] for s in SHARDS}
    engine_round(engines[1], prompt, 8, 8)  # warm-up: first calls into the shard actors
    transformers_round(reference, prompt, 8, 8)
    for _ in range(rounds):
        for concurrency in CONCURRENCY:
            ours[concurrency].append(engine_round(engines[1], prompt, concurrency, tokens))
            theirs[concurrency].append(transformers_round(reference, prompt, concurrency, tokens))
        for shards in SHARDS:
            sharded[shards].append(engine_round(engines[shards], prompt, 32, tokens))

    table = Table(title=f"Tiny A.X K1 on CPU, float32, {tokens} tokens per request, greedy (median of {rounds})")
    for column in ("concurrency", "engine tok/s", "engine TTFT ms", "transformers tok/s", "transformers TTFT ms", "×"):
        table.add_column(column, justify="right")
    results = {c: (median_round(ours[c]), median_round(theirs[c])) for c in CONCURRENCY}
    for concurrency, (engine, transformers) in results.items():
        table.add_row(
            str(concurrency),
            f"{engine.tokens_per_second:,.0f}",
            f"{engine.first_token_seconds * 1e3:.1f}",
            f"{transformers.tokens_per_second:,.0f}",
            f"{transformers.first_token_seconds * 1e3:.1f}",
            f"{engine.tokens_per_second / transformers.tokens_per_second:.2f}",
        )
    console.print(table)
    shard_table = Table(title="Cost of expert sharding at concurrency 32 (0 = experts in the model server)")
    for column in ("expert shards", "tok/s", "TTFT ms", "vs in-process"):
        shard_table.add_column(column, justify="right")
    base = median_round(sharded[0]).tokens_per_second
    for shards in SHARDS:
        result = median_round(sharded[shards])
        shard_table.add_row(
            str(shards),
            f"{result.tokens_per_second:,.0f}",
            f"{result.first_token_seconds * 1e3:.1f}",
            f"{result.tokens_per_second / base:.2f}",
        )
    console.print(shard_table)
    scaling = results[32][0].tokens_per_second / results[1][0].tokens_per_second
    versus = results[32][0].tokens_per_second / results[32][1].tokens_per_second
    console.print(f"throughput at concurrency 32 / concurrency 1: {scaling:.1f}× (target ≥ 8×)")
    console.print(f"throughput vs transformers generate at batch 32: {versus:.2f}× (target ≥ 2×)")
    console.print(f"machine: {machine()}")
    for engine in engines.values():
        engine.model.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128, help="Tokens each request generates.")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds per configuration.")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, for both sides.")
    arguments = parser.parse_args()
    # One intra-op thread, as in the stack: Ray gives the model server a 1-CPU replica and sets
    # OMP_NUM_THREADS=1 there. Both sides run under it.
    torch.set_num_threads(arguments.threads)
    ray.init(include_dashboard=False, log_to_driver=False)
    try:
        measure(ensure_tiny_checkpoint(None), arguments.tokens, arguments.rounds)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
