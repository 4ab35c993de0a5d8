"""The vLLM engine's configuration: Ray Serve LLM's `LLMConfig` and its Serve application, as plain dicts.

This is the one builder of that configuration: the operator writes it into a `ModelDeployment`'s
RayService and `sovereign plan` prints it. The dicts are what a Serve config file holds (`serve deploy`,
KubeRay's `serveConfigV2`), so they validate against `ray.serve.schema.ServeDeploySchema`.

vLLM is the `vllm` extra (its CPU build, which the lock and the tests install; GPU nodes run the CUDA
build from the vLLM image). This module imports neither vLLM nor Ray nor torch, so the config is built
and checked on machines without them (`ray.serve.llm` itself cannot be imported without vLLM).
"""

from __future__ import annotations

from typing import Any

BUILD_OPENAI_APP = "ray.serve.llm:build_openai_app"
# Data-parallel attention: one Serve replica per DP rank, gang-scheduled, behind one OpenAI ingress.
BUILD_DP_OPENAI_APP = "ray.serve.llm:build_dp_openai_app"


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
    if data > 1:
        kwargs["data_parallel_size"] = data
    if quantization is not None:
        kwargs["quantization"] = quantization
    return kwargs


def llm_config(
    model_id: str,
    model_source: str,
    accelerator_type: str,
    engine_kwargs: dict[str, Any],
    autoscaling: dict[str, Any] | None,
) -> dict[str, Any]:
    """`ray.serve.llm.LLMConfig` as a dict; without `autoscaling`, Ray Serve LLM's default of one replica.

    `autoscaling` counts whole-model replicas in both forms: with data parallelism Ray Serve LLM's
    `DPServer` treats a replica as a DP group and multiplies `min_replicas`/`max_replicas` by
    `data_parallel_size` itself.
    """
    return {
        "model_loading_config": {"model_id": model_id, "model_source": model_source},
        "accelerator_type": accelerator_type,
        "engine_kwargs": engine_kwargs,
        "deployment_config": {"autoscaling_config": autoscaling} if autoscaling is not None else {},
    }


def serve_application(
    name: str, route_prefix: str, llm_config_dict: dict[str, Any], data_parallel: bool
) -> dict[str, Any]:
    """One Serve application: `build_openai_app` takes `LLMServingArgs` (a list of configs),
    `build_dp_openai_app` takes `DPOpenAiServingArgs` (exactly one config)."""
    if data_parallel:
        import_path, args = BUILD_DP_OPENAI_APP, {"llm_config": llm_config_dict}
    else:
        import_path, args = BUILD_OPENAI_APP, {"llm_configs": [llm_config_dict]}
    return {"name": name, "route_prefix": route_prefix, "import_path": import_path, "args": args}
