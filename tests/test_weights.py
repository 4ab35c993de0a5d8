"""Checkpoint headers: sharded safetensors through the index, and errors that name the tensor, before vLLM loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from serving.checkpoint import CheckpointError
from serving.engine_checks import check_vllm_checkpoint
from serving.weights import INDEX_FILE, CheckpointTensors

EXPERT = "model.layers.2.mlp.experts.5.up_proj.weight"


@pytest.fixture
def sharded(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    """The tiny checkpoint re-saved as three files with an index: trunk, MoE layer 1, MoE layer 2."""
    tensors = load_file(tiny_checkpoint / "model.safetensors")
    files: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        part = "layer-2" if ".layers.2." in name else "layer-1" if ".layers.1." in name else "trunk"
        files.setdefault(f"model-{part}.safetensors", {})[name] = tensor
    weight_map = {}
    for file_name, part in files.items():
        save_file(part, tmp_path / file_name)
        weight_map |= dict.fromkeys(part, file_name)
    (tmp_path / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (tiny_checkpoint / name).is_file():
            shutil.copy(tiny_checkpoint / name, tmp_path / name)
    return tmp_path


def test_a_sharded_checkpoint_is_read_through_its_index_with_the_same_tensors(
    tiny_checkpoint: Path, sharded: Path
) -> None:
    single, split = CheckpointTensors(tiny_checkpoint), CheckpointTensors(sharded)
    assert {entry.file.name for entry in split.entries.values()} == {
        "model-trunk.safetensors",
        "model-layer-1.safetensors",
        "model-layer-2.safetensors",
    }
    assert {name: (e.shape, e.dtype) for name, e in single.entries.items()} == {
        name: (e.shape, e.dtype) for name, e in split.entries.items()
    }
    check_vllm_checkpoint(sharded, on_cpu=True)


def test_a_missing_expert_tensor_is_named(sharded: Path) -> None:
    index = sharded / INDEX_FILE
    document = json.loads(index.read_text())
    file_name = document["weight_map"].pop(EXPERT)
    index.write_text(json.dumps(document))
    tensors = load_file(sharded / file_name)
    del tensors[EXPERT]
    save_file(tensors, sharded / file_name)
    with pytest.raises(CheckpointError, match=f"tensor `{EXPERT}` is missing from the checkpoint"):
        check_vllm_checkpoint(sharded, on_cpu=True)


def test_an_index_that_points_at_the_wrong_file_is_named(sharded: Path) -> None:
    index = sharded / INDEX_FILE
    document = json.loads(index.read_text())
    document["weight_map"][EXPERT] = "model-trunk.safetensors"
    index.write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match=f"tensor `{EXPERT}` is listed in .* under `model-trunk.safetensors`"):
        CheckpointTensors(sharded)


def test_a_truncated_file_names_the_tensor_whose_bytes_are_gone(sharded: Path) -> None:
    path = sharded / "model-layer-2.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(
        CheckpointError, match=r"tensor `model\.layers\.2\..*` in `.*model-layer-2.safetensors` is corrupt"
    ):
        CheckpointTensors(sharded)


def test_a_corrupt_header_names_the_file(sharded: Path) -> None:
    path = sharded / "model-layer-1.safetensors"
    data = bytearray(path.read_bytes())
    data[8:16] = b"\xff" * 8  # the start of the JSON header
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model-layer-1\.safetensors` is corrupt: its safetensors header is not"):
        CheckpointTensors(sharded)


def test_a_shape_that_does_not_match_config_json_names_the_tensor_and_the_config(sharded: Path) -> None:
    config = json.loads((sharded / "config.json").read_text())
    config["moe_intermediate_size"] = 48
    (sharded / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError,
        match=r"tensor `model\.layers\.1\.mlp\.experts\.0\.gate_proj\.weight` .* "
        r"has shape \[64, 128\], but config.json implies \[48, 128\]",
    ):
        check_vllm_checkpoint(sharded, on_cpu=False)
