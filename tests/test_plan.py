"""The capacity planner (`operators/capacity.py`), the vLLM config builder (`serving/vllm.py`) and
`sovereign plan`: exact parameter counts against transformers, A.X K1's published memory numbers, the
layouts chosen, what the errors say would fit, and manifests that validate against Ray Serve's and
KubeRay's schemas.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema
from typer.testing import CliRunner

from operators.capacity import (
    BUILTIN_MODELS,
    CapacityPlan,
    GpuInventory,
    ModelShape,
    load_model_shape,
    plan_capacity,
    planned_manifests,
)
from operators.planning import GIB, PlanError
from operators.reconcile import Deployment, Observed, Resolution, ResolutionState, Settings, reconcile
from operators.resources import WeightDtype
from policies import ResidencyPolicy
from serving import vllm
from serving.model_size import parameter_counts
from sovereign.cli import app
from tests.kube import validate_custom

BF16, FP8 = WeightDtype.BF16, WeightDtype.FP8
AXK1_TOTAL = 518_983_052_288
# A Llama-3-70B-sized GQA model: 8 KV heads of 128 over 80 layers.
LLAMA_70B = {
    "model_type": "llama",
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "tie_word_embeddings": False,
}
runner = CliRunner()


@pytest.fixture(scope="module")
def axk1() -> ModelShape:
    return load_model_shape("axk1-519b")


def plan(shape: ModelShape, gpus: str, dtype: WeightDtype, context: int) -> CapacityPlan:
    return plan_capacity(shape, GpuInventory.parse(gpus), dtype, context)


def layouts(capacity: CapacityPlan) -> dict[str, int]:
    """Every layout considered, by name, with its concurrent sequences."""
    return {
        layout.parallelism.describe(): layout.max_concurrent_sequences
        for layout in [capacity.layout, *capacity.alternatives]
    }


def validate_serve_config(config: dict[str, Any]) -> None:
    ServeDeploySchema.model_validate(config)


# -- the model's shape ------------------------------------------------------------------------------


def test_axk1_parameters_equal_transformers_meta_count(tmp_path: Path, axk1: ModelShape) -> None:
    from transformers import AXK1Config

    # The built-in config, as transformers reads it: its own count must equal ours.
    config = {key: value for key, value in BUILTIN_MODELS["axk1-519b"].items() if key != "model_type"}
    AXK1Config(**config).save_pretrained(tmp_path)
    counts = parameter_counts(tmp_path)
    assert counts.total == AXK1_TOTAL
    # transformers writes `mlp_layer_types`; the built-in config has `first_k_dense_replace`.
    saved = load_model_shape(str(tmp_path))
    assert (saved.parameters_total, saved.parameters_active) == (counts.total, counts.active)
    assert (axk1.parameters_total, axk1.parameters_active) == (counts.total, counts.active)
    assert (saved.dense_layers, saved.moe_layers) == (axk1.dense_layers, axk1.moe_layers) == (1, 60)
    assert axk1.expert_parameters == 60 * 192 * 3 * 7168 * 2048


def test_tiny_model_parameters_equal_transformers_meta_count(tiny_checkpoint: Path) -> None:
    counts = parameter_counts(tiny_checkpoint)
    shape = load_model_shape(str(tiny_checkpoint))
    assert (shape.parameters_total, shape.parameters_active) == (counts.total, counts.active)
    assert shape.parameters_active < shape.parameters_total


@pytest.mark.parametrize(
    ("config_class", "arguments"),
    [
        # GQA, tied embeddings, attention biases.
        (
            "LlamaConfig",
            {"num_key_value_heads": 2, "num_attention_heads": 8, "tie_word_embeddings": True, "attention_bias": True},
        ),
        # GQA with routed experts and no dense layer.
        ("MixtralConfig", {"num_key_value_heads": 2, "num_attention_heads": 8, "num_local_experts": 4}),
        # MLA with a full-rank query projection, and a router score bias (a buffer, not a parameter).
        (
            "DeepseekV3Config",
            {
                "num_attention_heads": 8,
                "q_lora_rank": None,
                "kv_lora_rank": 32,
                "qk_rope_head_dim": 16,
                "qk_nope_head_dim": 32,
                "v_head_dim": 32,
                "n_routed_experts": 8,
                "num_experts_per_tok": 2,
                "n_group": 2,
                "topk_group": 1,
                "moe_intermediate_size": 48,
                "first_k_dense_replace": 1,
            },
        ),
    ],
)
def test_other_architectures_equal_transformers_meta_count(
    tmp_path: Path, config_class: str, arguments: dict[str, Any]
) -> None:
    import transformers

    common = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 3, "vocab_size": 1000}
    getattr(transformers, config_class)(**common, **arguments).save_pretrained(tmp_path)
    counts = parameter_counts(tmp_path)
    shape = load_model_shape(str(tmp_path / "config.json"))
    assert (shape.parameters_total, shape.parameters_active) == (counts.total, counts.active)


def test_kv_cache_per_token_for_mla_and_gqa(axk1: ModelShape) -> None:
    assert axk1.kv_cache_bytes_per_token() == (512 + 64) * 61 * 2 == 70_272
    one_sequence = axk1.kv_cache_bytes_per_token() * 131072
    assert one_sequence == 9_210_691_584  # about 9.2 GB
    assert round(one_sequence / 1e9, 1) == 9.2
    llama = ModelShape.from_config(LLAMA_70B, "llama-70b", "test")
    assert llama.kv_cache_bytes_per_token() == 2 * 8 * 128 * 80 * 2 == 327_680
    assert llama.kv_cache_bytes_per_token(bytes_per_element=1) == 163_840


def test_weights_add_the_fp32_router_bias_transformers_keeps_as_a_buffer(axk1: ModelShape) -> None:
    assert axk1.weight_bytes(BF16) == 2 * AXK1_TOTAL + 60 * 192 * 4
    assert axk1.weight_bytes(FP8) == AXK1_TOTAL + 60 * 192 * 4
    llama = ModelShape.from_config(LLAMA_70B, "llama-70b", "test")
    assert llama.weight_bytes(BF16) == 2 * llama.parameters_total


# -- the plans for A.X K1 ---------------------------------------------------------------------------


def test_axk1_bf16_on_16_h100(axk1: ModelShape) -> None:
    capacity = plan(axk1, "16xH100-80GB", BF16, 131072)
    layout = capacity.layout
    # Tensor parallel inside each node, two pipeline stages across the nodes: the fewest stages that fit.
    assert layout.parallelism.describe() == "TP8 PP2 DP1 EP8"
    assert layout.parallelism.mode == "explicit"
    assert layout.weight_bytes_per_gpu == math.ceil(axk1.weight_bytes(BF16) / 16)
    assert capacity.usable_bytes_per_gpu == int(80 * GIB * 0.9)
    assert layout.kv_room_per_gpu == capacity.usable_bytes_per_gpu - layout.weight_bytes_per_gpu
    assert round(layout.kv_room_per_gpu / GIB, 2) == 11.58
    # MLA's latent cache is whole on every tensor rank, so only the pipeline stages divide it.
    assert layout.kv_bytes_per_token_per_gpu == 70_272 // 2
    assert layout.max_concurrent_sequences == layout.kv_room_per_gpu // (70_272 // 2 * 131072) == 2
    assert capacity.nodes == 2
    assert capacity.kv_bytes_per_token == 70_272
    assert capacity.kv_bytes_per_sequence == 9_210_691_584
    assert layouts(capacity) == {
        "TP8 PP2 DP1 EP8": 2,
        "TP4 PP4 DP1 EP4": 5,
        "TP2 PP8 DP1 EP2": 10,
        "TP1 PP16 DP1 EP1": 21,
        # Every rank holds the 11.6B non-expert parameters and 12 of the 192 experts: 80.7 GiB.
        "TP1 PP1 DP16 EP16": 0,
    }
    assert plan(axk1, "16xH100-80GB", BF16, 32768).layout.max_concurrent_sequences == 10


def test_axk1_bf16_does_not_fit_8_h100_and_the_error_names_16(axk1: ModelShape) -> None:
    with pytest.raises(PlanError) as raised:
        plan(axk1, "8xH100-80GB", BF16, 131072)
    message = str(raised.value)
    assert "in bf16 the weights take 120.8 GiB per GPU" in message
    assert "over the 72.0 GiB usable on each H100-80GB" in message
    assert "What would fit: 16xH100-80GB in bf16 (TP8 PP2 DP1 EP8, 2 concurrent sequence(s)" in message
    assert "8xH100-80GB in fp8 (TP8 PP1 DP1 EP8, 1 concurrent sequence(s) of 131,072 tokens)" in message
    assert "at a context of up to" not in message  # the weights alone do not fit


@pytest.mark.parametrize(
    ("gpus", "dtype", "context", "best", "sequences"),
    [
        ("8xH200-141GB", BF16, 32768, "TP8 PP1 DP1 EP8", 2),
        # At full context TP8 holds no sequence (see below): two pipeline stages halve each GPU's cache.
        ("8xH200-141GB", BF16, 131072, "TP4 PP2 DP1 EP4", 1),
        ("8xH100-80GB", FP8, 32768, "TP8 PP1 DP1 EP8", 5),
        ("8xH100-80GB", FP8, 131072, "TP8 PP1 DP1 EP8", 1),
    ],
)
def test_axk1_fits_8_h200_in_bf16_and_8_h100_in_fp8(
    axk1: ModelShape, gpus: str, dtype: WeightDtype, context: int, best: str, sequences: int
) -> None:
    capacity = plan(axk1, gpus, dtype, context)
    assert (capacity.layout.parallelism.describe(), capacity.layout.max_concurrent_sequences) == (best, sequences)
    assert capacity.nodes == 1


def test_on_8_h200_at_full_context_pure_tensor_parallelism_holds_no_sequence(axk1: ModelShape) -> None:
    capacity = plan(axk1, "8xH200-141GB", BF16, 131072)
    assert layouts(capacity) == {
        "TP4 PP2 DP1 EP4": 1,
        "TP2 PP4 DP1 EP2": 2,
        "TP1 PP8 DP1 EP1": 5,
        "TP8 PP1 DP1 EP8": 0,  # 6.1 GiB of room, one sequence needs its whole 8.6 GiB on every rank
        "TP1 PP1 DP8 EP8": 0,
    }


def test_gqa_kv_is_split_over_kv_heads_and_a_kv_bound_error_gives_the_longest_context() -> None:
    llama = ModelShape.from_config(LLAMA_70B, "llama-70b", "test")
    capacity = plan(llama, "4xH100-80GB", BF16, 8192)
    tp4 = next(layout for layout in [capacity.layout, *capacity.alternatives] if layout.parallelism.tensor == 4)
    assert tp4.kv_bytes_per_token_per_gpu == 327_680 // 4
    with pytest.raises(PlanError) as raised:
        plan(llama, "2xH100-80GB", BF16, 131072)
    message = str(raised.value)
    assert message.startswith("the weights fit (")
    assert "less than one 131,072-token sequence takes there" in message
    longest = int(message.rpartition("at a context of up to ")[2].partition(" tokens")[0].replace(",", ""))
    assert plan(llama, "2xH100-80GB", BF16, longest).layout.max_concurrent_sequences == 1
    with pytest.raises(PlanError):
        plan(llama, "2xH100-80GB", BF16, longest + 1)
    assert "4xH100-80GB in bf16 (" in message
    assert "2xH100-80GB in fp8 (" in message


def test_data_parallel_attention_wins_where_the_experts_dominate() -> None:
    """A model whose weights are nearly all routed experts: EP16 leaves more room than a replicated latent."""
    moe = {
        **BUILTIN_MODELS["axk1-519b"],
        "n_routed_experts": 256,
        "num_hidden_layers": 8,
        "max_position_embeddings": 8192,
    }
    capacity = plan(ModelShape.from_config(moe, "wide-moe", "test"), "16xH100-80GB", BF16, 8192)
    assert capacity.layout.parallelism.describe() == "TP1 PP1 DP16 EP16"
    assert capacity.layout.max_concurrent_sequences % 16 == 0  # each rank holds its own sequences


def test_plan_input_errors(axk1: ModelShape) -> None:
    with pytest.raises(PlanError, match=r"context 262,144 tokens: axk1-519b takes 1 to 131,072"):
        plan(axk1, "16xH100-80GB", BF16, 262144)
    with pytest.raises(PlanError, match=r"12 GPUs do not make whole nodes of 8"):
        plan(axk1, "12xH100-80GB", BF16, 32768)


@pytest.mark.parametrize(
    ("text", "count", "gpu_type"),
    [("16xH100-80GB", 16, "H100-80GB"), ("8 × H200-141GB", 8, "H200-141GB"), ("2XL40S-48GB", 2, "L40S-48GB")],
)
def test_inventory_parses(text: str, count: int, gpu_type: str) -> None:
    inventory = GpuInventory.parse(text)
    assert (inventory.count, inventory.gpu_type, str(inventory)) == (count, gpu_type, f"{count}x{gpu_type}")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("H100-80GB", "GPU inventory `H100-80GB` is not COUNTxTYPE, e.g. 16xH100-80GB"),
        ("0xH100-80GB", "GPU inventory `0xH100-80GB` is not COUNTxTYPE, e.g. 16xH100-80GB"),
        ("8xA100", "GPU inventory `8xA100`: the type `A100` is not MODEL-<memory>GB, e.g. 16xH100-80GB"),
    ],
)
def test_inventory_errors_name_the_text_and_give_an_example(text: str, message: str) -> None:
    with pytest.raises(PlanError) as raised:
        GpuInventory.parse(text)
    assert str(raised.value) == message


def test_model_reference_errors(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match=r"model `axk2`: not a built-in model \(axk1-519b\) and there is no file axk2"):
        load_model_shape("axk2")
    with pytest.raises(PlanError, match=rf"directory {re.escape(str(tmp_path))} has no config\.json"):
        load_model_shape(str(tmp_path))
    broken = tmp_path / "config.json"
    broken.write_text('{\n  "hidden_size": 64,\n  "vocab_size": ,\n}\n')
    with pytest.raises(PlanError, match=rf"^{re.escape(str(broken))}:3: not valid JSON"):
        load_model_shape(str(tmp_path))
    missing = {key: value for key, value in BUILTIN_MODELS["axk1-519b"].items() if key != "vocab_size"}
    broken.write_text(json.dumps(missing))
    with pytest.raises(PlanError, match=rf"^{re.escape(str(broken))}: `vocab_size` is missing"):
        load_model_shape(str(broken))
    broken.write_text(json.dumps({**BUILTIN_MODELS["axk1-519b"], "kv_lora_rank": "512"}))
    with pytest.raises(
        PlanError, match=rf"^{re.escape(str(broken))}: `kv_lora_rank` must be a whole number ≥ 1, not '512'"
    ):
        load_model_shape(str(broken))
    broken.write_text("[]")
    with pytest.raises(PlanError, match=r"a config\.json holds one JSON object"):
        load_model_shape(str(broken))


# -- the vLLM config and the manifests --------------------------------------------------------------


def test_engine_kwargs_and_the_model_servers_placement() -> None:
    kwargs = vllm.engine_kwargs(8, 2, 1, 8, 32768, None)
    assert kwargs == {
        "tensor_parallel_size": 8,
        "pipeline_parallel_size": 2,
        "enable_expert_parallel": True,
        "max_model_len": 32768,
        "distributed_executor_backend": "ray",
    }
    dp_kwargs = vllm.engine_kwargs(1, 1, 16, 16, 32768, "fp8")
    assert (dp_kwargs["data_parallel_size"], dp_kwargs["data_parallel_backend"]) == (16, "ray")
    assert dp_kwargs["quantization"] == "fp8"
    one_gpu = vllm.engine_kwargs(1, 1, 1, 1, 4096, None)
    assert "distributed_executor_backend" not in one_gpu, "one rank runs in the replica's own process"
    config = vllm.llm_config("axk1", "/models/axk1", "H100", kwargs, None)
    assert config["deployment_config"] == {}
    server = vllm.model_server_deployment(16, {"min_replicas": 1, "max_replicas": 2})
    assert server["placement_group_bundles"] == [{"CPU": 1}] + [{"GPU": 1}] * 16
    application = {
        "name": "sovereign",
        "route_prefix": "/",
        "import_path": "serving.cluster:build",
        "args": {"llm_config": config},
        "deployments": [server],
    }
    validate_serve_config({"applications": [application]})


def test_the_embedded_engine_is_the_same_builder_with_one_cpu_replicas_numbers() -> None:
    from ray.serve.llm import LLMConfig

    local = vllm.local_engine_kwargs(2048, "float32")
    assert {key: local[key] for key in vllm.engine_kwargs(1, 1, 1, 1, 2048, None)} == vllm.engine_kwargs(
        1, 1, 1, 1, 2048, None
    )
    assert local["attention_backend"] == "CPU_MLA"
    assert local["compilation_config"] == {"custom_ops": ["-rotary_embedding"]}
    config = LLMConfig.model_validate(vllm.llm_config("axk1-tiny", "/models/tiny", None, local, None))
    assert config.engine_kwargs == local


def test_llm_configs_validate_against_ray_serve_llms_model() -> None:
    from ray.serve.llm import LLMConfig

    kwargs = vllm.engine_kwargs(1, 1, 16, 16, 131072, "fp8")
    config = LLMConfig.model_validate(vllm.llm_config("axk1", "/models/axk1", "H200", kwargs, {"max_replicas": 2}))
    assert config.engine_kwargs["data_parallel_size"] == 16
    assert config.deployment_config == {"autoscaling_config": {"max_replicas": 2}}


def test_planned_manifests_are_what_the_operator_writes(axk1: ModelShape, default_policy: ResidencyPolicy) -> None:
    capacity = plan(axk1, "16xH100-80GB", BF16, 131072)
    serve_config, manifest = planned_manifests(capacity, "axk1", default_policy, version="4")
    validate_serve_config(serve_config)
    validate_custom(manifest)
    assert yaml.safe_load(manifest["spec"]["serveConfigV2"]) == serve_config
    (application,) = serve_config["applications"]
    assert application["import_path"] == "serving.cluster:build", "our gateway in front, never vLLM's own server"
    llm = application["args"]["llm_config"]
    assert llm["model_loading_config"] == {"model_id": "axk1", "model_source": "/models/registry/axk1/4"}
    assert llm["accelerator_type"] == "H100"
    assert llm["engine_kwargs"] == {
        "tensor_parallel_size": 8,
        "pipeline_parallel_size": 2,
        "enable_expert_parallel": True,
        "max_model_len": 131072,
        "distributed_executor_backend": "ray",
    }
    (server,) = application["deployments"]
    assert server["placement_group_bundles"] == [{"CPU": 1}] + [{"GPU": 1}] * 16
    (workers,) = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    limits = workers["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert (workers["replicas"], limits["nvidia.com/gpu"]) == (2, 8)  # two nodes of 8
    assert "ownerReferences" not in manifest["metadata"]

    # The same ModelDeployment through the operator's reconcile gives the same RayService, owner aside.
    spec = {
        "model": "models:/axk1@production",
        "engine": "vllm",
        "sites": ["kr-seoul-1", "kr-daejeon-1", "local"],
        "maxContextLength": 131072,
        "gpu": {"type": "H100-80GB", "perNode": 8},
        "parallelism": {"mode": "explicit", "tensor": 8, "pipeline": 2, "expert": 8},
        "tenants": ["platform"],
    }
    deployment = Deployment.from_body({"metadata": {"name": "axk1", "namespace": "models"}, "spec": spec})
    resolved = Resolution(ResolutionState.RESOLVED, "4", axk1.size)
    outcome = reconcile(deployment, Observed(default_policy, resolved, "2026-11-23T10:00:00Z"), Settings())
    assert outcome.objects is not None
    operator_service = outcome.objects[0]
    del operator_service["metadata"]["ownerReferences"]
    assert operator_service == manifest


def test_planned_manifests_in_the_data_parallel_form(axk1: ModelShape, default_policy: ResidencyPolicy) -> None:
    capacity = plan(axk1, "16xH100-80GB", FP8, 32768)
    # In fp8 every rank holds the non-expert weights and 12 experts, so data-parallel attention fits and,
    # with no pipeline stage to cross, is the recommendation.
    assert capacity.layout.parallelism.describe() == "TP1 PP1 DP16 EP16"
    serve_config, manifest = planned_manifests(capacity, "axk1", default_policy)
    validate_serve_config(serve_config)
    validate_custom(manifest)
    (application,) = serve_config["applications"]
    assert application["import_path"] == "serving.cluster:build"
    assert application["args"]["llm_config"]["engine_kwargs"] == {
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": 1,
        "enable_expert_parallel": True,
        "max_model_len": 32768,
        "distributed_executor_backend": "ray",
        "data_parallel_size": 16,
        "data_parallel_backend": "ray",
        "quantization": "fp8",
    }


def test_planned_manifests_name_a_bad_model_name(axk1: ModelShape, default_policy: ResidencyPolicy) -> None:
    capacity = plan(axk1, "16xH100-80GB", BF16, 32768)
    with pytest.raises(PlanError, match=r"^spec.model: String should match pattern"):
        planned_manifests(capacity, "A.X K1", default_policy)


# -- the CLI ----------------------------------------------------------------------------------------


def test_cli_prints_the_plan() -> None:
    result = runner.invoke(
        app, ["plan", "--model", "axk1-519b", "--gpus", "16xH100-80GB", "--dtype", "bf16", "--context", "131072"]
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    for expected in ("60.42 GiB", "70.3 KB", "9.21 GB", "11.58 GiB", "TP1 PP16 DP1 EP1", "TP8 PP2 DP1 EP8"):
        assert expected in text


def test_cli_exits_1_saying_what_would_fit() -> None:
    result = runner.invoke(app, ["plan", "--gpus", "8xH100-80GB", "--context", "131072"])
    assert result.exit_code == 1
    assert result.stdout == ""
    message = " ".join(result.stderr.split())
    assert message.startswith("error: axk1-519b does not fit on 8xH100-80GB: in bf16 the weights take")
    assert "What would fit: 16xH100-80GB in bf16" in message


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--gpus", "16 H100s"], "GPU inventory `16 H100s` is not COUNTxTYPE"),
        (["--gpus", "8xH100-80GB", "--model", "axk2"], "model `axk2`: not a built-in model"),
        (["--gpus", "8xH100-80GB", "--context", "200000"], "context 200,000 tokens"),
    ],
)
def test_cli_exits_2_for_unreadable_input(arguments: list[str], message: str) -> None:
    result = runner.invoke(app, ["plan", *arguments])
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())


def test_cli_exits_2_for_a_bad_config_file(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"hidden_size": 64}')
    result = runner.invoke(app, ["plan", "--gpus", "8xH100-80GB", "--model", str(tmp_path)])
    assert result.exit_code == 2
    assert "`num_hidden_layers` is missing" in result.stderr


def test_cli_writes_the_manifests_and_prints_json(tmp_path: Path) -> None:
    output = tmp_path / "plan"
    arguments = ["plan", "--gpus", "8xH200-141GB", "--context", "32768", "--output", str(output), "--json"]
    result = runner.invoke(app, [*arguments, "--name", "axk1", "--model-version", "7"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["layout"]["parallelism"] == {"mode": "explicit", "tensor": 8, "pipeline": 1, "data": 1, "expert": 8}
    assert printed["layout"]["max_concurrent_sequences"] == 2
    assert printed["kv_bytes_per_token"] == 70_272
    serve_config = yaml.safe_load((output / "serve-config.yaml").read_text())
    manifest = yaml.safe_load((output / "rayservice.yaml").read_text())
    validate_serve_config(serve_config)
    assert serve_config["applications"][0]["args"]["llm_config"]["model_loading_config"] == {
        "model_id": "axk1",
        "model_source": "/models/registry/axk1/7",
    }
    assert "&id" not in (output / "rayservice.yaml").read_text()  # no YAML anchors for readers
    validate_custom(manifest)


def test_cli_refuses_an_output_that_is_a_file(tmp_path: Path) -> None:
    taken = tmp_path / "plan"
    taken.write_text("")
    result = runner.invoke(app, ["plan", "--gpus", "16xH100-80GB", "--output", str(taken)])
    assert result.exit_code == 2
    assert f"--output: {taken} is a file, not a folder" in " ".join(result.stderr.split())


def test_cli_help_teaches() -> None:
    result = runner.invoke(app, ["plan", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "sovereign plan --model axk1-519b --gpus 16xH100-80GB --dtype bf16 --context 131072" in text
    assert "Exit status: 0 it fits, 1 it does not" in text
