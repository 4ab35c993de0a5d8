"""A checkpoint vLLM cannot load is refused before any engine starts, naming the tensor or the config field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from serving.checkpoint import CheckpointError
from serving.engine_checks import axk1_tensor_shapes, check_vllm_checkpoint, cpu_mla_problem

DENSE_NORM = "model.layers.0.post_mlp_layernorm.weight"


@pytest.fixture
def checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_checkpoint, tmp_path / "model"))


def rewrite(checkpoint: Path, change: object) -> None:
    tensors = load_file(checkpoint / "model.safetensors")
    change(tensors)
    save_file(tensors, checkpoint / "model.safetensors", metadata={"format": "pt"})


def test_the_tiny_checkpoint_holds_every_tensor_vllm_loads(tiny_checkpoint: Path) -> None:
    check_vllm_checkpoint(tiny_checkpoint, on_cpu=True)
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    held = set(load_file(tiny_checkpoint / "model.safetensors"))
    assert held == set(axk1_tensor_shapes(config)), "nothing missing and nothing vLLM would not load"


def test_a_missing_dense_post_mlp_layernorm_is_named(checkpoint: Path) -> None:
    rewrite(checkpoint, lambda tensors: tensors.pop(DENSE_NORM))
    with pytest.raises(CheckpointError, match=rf"tensor `{DENSE_NORM}` is missing from the checkpoint"):
        check_vllm_checkpoint(checkpoint, on_cpu=False)


def test_a_misshapen_tensor_is_named_with_the_shape_config_json_implies(checkpoint: Path) -> None:
    name = "model.layers.1.mlp.gate.weight"
    rewrite(checkpoint, lambda tensors: tensors.__setitem__(name, tensors[name][:4].clone()))
    shapes = r"has shape \[4, 128\], but config.json implies \[8, 128\]"
    with pytest.raises(CheckpointError, match=rf"tensor `{name}` .* {shapes}"):
        check_vllm_checkpoint(checkpoint, on_cpu=False)


def test_a_latent_width_the_cpu_kernels_lack_is_refused_on_cpu_only(checkpoint: Path) -> None:
    config = json.loads((checkpoint / "config.json").read_text())
    assert cpu_mla_problem(config) is None
    config["kv_lora_rank"] = 256
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json`: kv_lora_rank \+ qk_rope_head_dim is 320, .* only 576"):
        check_vllm_checkpoint(checkpoint, on_cpu=True)
    # On a GPU the width is fine, so the tensors are what disagrees with config.json.
    with pytest.raises(CheckpointError, match=r"kv_a_proj_with_mqa\.weight` .* implies \[320, 128\]"):
        check_vllm_checkpoint(checkpoint, on_cpu=False)


def test_a_config_without_an_mla_field_is_named(checkpoint: Path) -> None:
    config = json.loads((checkpoint / "config.json").read_text())
    del config["q_lora_rank"]
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json` has no `q_lora_rank`, which A.X K1 needs"):
        check_vllm_checkpoint(checkpoint, on_cpu=True)
