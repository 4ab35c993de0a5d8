"""The engine on CPU: vLLM against transformers `generate` on the same tiny A.X K1 checkpoint.

    python -m tests.benchmarks.engine            (or: make bench)

Both in float32, greedy, every request generating exactly `--tokens` tokens (end of text ignored on both
sides, so both do the same work), batch 1 and 32, in one process one after the other, each `--rounds`
times interleaved, the median reported. vLLM runs as the stack runs it (`serving.vllm.local_engine_kwargs`:
eager, CPU_MLA, the rotary workaround); `--compiled` lets vLLM compile the model instead (torch.compile).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from serving.vllm import local_engine_kwargs, local_environment

console = Console()
BATCHES = (1, 32)


def vllm_rate(llm: object, prompt: list[int], batch: int, tokens: int) -> float:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=tokens, min_tokens=tokens, ignore_eos=True, temperature=0)
    started = time.perf_counter()
    outputs = llm.generate([TokensPrompt(prompt_token_ids=prompt)] * batch, params, use_tqdm=False)
    elapsed = time.perf_counter() - started
    assert sum(len(output.outputs[0].token_ids) for output in outputs) == batch * tokens
    return batch * tokens / elapsed


def transformers_rate(model: object, prompt: list[int], batch: int, tokens: int) -> float:
    import torch

    inputs = torch.tensor([prompt] * batch)
    with torch.inference_mode():
        started = time.perf_counter()
        output = model.generate(inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        elapsed = time.perf_counter() - started
    assert output.shape == (batch, len(prompt) + tokens)
    return batch * tokens / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per request (default 64)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per configuration; the median is reported")
    parser.add_argument("--compiled", action="store_true", help="let vLLM compile the model (slower start)")
    arguments = parser.parse_args()
    os.environ.update(local_environment())
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import LLM

    from serving.tiny_model import ensure_tiny_checkpoint
    from tests.benchmarks.startup import machine

    checkpoint: Path = ensure_tiny_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "서울의 날씨를 알려 주세요."}],
        tokenize=False,
        add_generation_prompt=True,
        enable_thinking=False,
    )
    prompt = tokenizer.encode(text, add_special_tokens=False)
    engine = local_engine_kwargs(2048, "float32") | ({"enforce_eager": False} if arguments.compiled else {})
    llm = LLM(model=str(checkpoint), max_num_seqs=64, **engine)
    reference = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    vllm_rate(llm, prompt, 8, 8)  # warm-up
    transformers_rate(reference, prompt, 8, 8)
    ours: dict[int, list[float]] = {batch: [] for batch in BATCHES}
    theirs: dict[int, list[float]] = {batch: [] for batch in BATCHES}
    for _ in range(arguments.rounds):
        for batch in BATCHES:
            ours[batch].append(vllm_rate(llm, prompt, batch, arguments.tokens))
            theirs[batch].append(transformers_rate(reference, prompt, batch, arguments.tokens))
    mode = "compiled" if arguments.compiled else "eager"
    table = Table(title=f"Tiny A.X K1, float32, {arguments.tokens} new tokens, greedy, median of {arguments.rounds}")
    for column in ("batch", f"vLLM ({mode}) tok/s", "transformers tok/s", "×"):
        table.add_column(column, justify="right")
    for batch in BATCHES:
        vllm_tps, hf_tps = statistics.median(ours[batch]), statistics.median(theirs[batch])
        table.add_row(str(batch), f"{vllm_tps:,.0f}", f"{hf_tps:,.0f}", f"{vllm_tps / hf_tps:.2f}")
    console.print(table)
    console.print(machine())


if __name__ == "__main__":
    main()
