"""The tiny default model has A.X K1's architecture, builds deterministically and loads like a checkpoint."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from serving.checkpoint import CheckpointError, inspect_checkpoint
from serving.tiny_model import CONTEXT_LENGTH, TINY_MODEL_ID, build_tiny_checkpoint, ensure_tiny_checkpoint


def digests(directory: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(directory.iterdir())}


def test_build_is_deterministic(tiny_checkpoint: Path, tmp_path: Path) -> None:
    build_tiny_checkpoint(tmp_path)
    assert digests(tmp_path) == digests(tiny_checkpoint)


def test_cached_build_is_reused(tiny_checkpoint: Path, cache_dir: Path) -> None:
    assert ensure_tiny_checkpoint(cache_dir) == tiny_checkpoint
    assert [p.name for p in (cache_dir / "models").iterdir()] == [tiny_checkpoint.name]


def test_architecture_is_axk1_in_miniature(tiny_checkpoint: Path) -> None:
    config = json.loads((tiny_checkpoint / "config.json").read_text())
    assert config["model_type"] == "axk1"
    assert config["architectures"] == ["AXK1ForCausalLM"]
    assert config["first_k_dense_replace"] == 1
    assert config["num_hidden_layers"] > 1
    assert config["n_shared_experts"] == 1
    assert config["n_routed_experts"] > config["num_experts_per_tok"] > 1
    assert config["n_group"] > config["topk_group"] >= 1
    assert config["kv_lora_rank"] > 0
    assert config["q_lora_rank"] > 0
    assert config["max_position_embeddings"] == CONTEXT_LENGTH


def test_loads_with_transformers_and_routes_through_experts(tiny_checkpoint: Path) -> None:
    import torch
    from transformers import AXK1ForCausalLM

    model = AXK1ForCausalLM.from_pretrained(tiny_checkpoint).eval()
    moe = model.model.layers[1].mlp
    assert type(moe).__name__ == "AXK1MoE"
    assert hasattr(moe, "post_mlp_layernorm")
    with torch.inference_mode():
        logits = model(torch.tensor([[5, 6, 7]])).logits
    assert logits.shape == (1, 3, model.config.vocab_size)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(("enable_thinking", "suffix"), [(True, "<think>\n"), (False, "<think>\n\n</think>\n\n")])
def test_chat_template_toggles_thinking(tiny_checkpoint: Path, enable_thinking: bool, suffix: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    messages = [{"role": "user", "content": "안녕하세요"}]
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking
    )
    assert text == "<|im_start|>user\n안녕하세요<|im_end|>\n<|im_start|>assistant\n" + suffix


def test_chat_template_drops_earlier_reasoning(tiny_checkpoint: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "<think>\nsecret steps\n</think>\n\nanswer"},
        {"role": "user", "content": "q2"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert "secret steps" not in text
    assert "<|im_start|>assistant\nanswer<|im_end|>" in text


def test_special_tokens_are_single_tokens(tiny_checkpoint: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    for token in ("<|im_start|>", "<|im_end|>", "<think>", "</think>"):
        assert len(tokenizer.encode(token, add_special_tokens=False)) == 1


def test_inspect_describes_the_checkpoint(tiny_checkpoint: Path) -> None:
    card = inspect_checkpoint(tiny_checkpoint, TINY_MODEL_ID)
    assert (card.id, card.model_type, card.max_model_len) == (TINY_MODEL_ID, "axk1", CONTEXT_LENGTH)
    assert inspect_checkpoint(tiny_checkpoint).id == tiny_checkpoint.name


def copy_checkpoint(source: Path, target: Path, skip: str = "") -> Path:
    target.mkdir()
    for path in source.iterdir():
        if path.name != skip:
            (target / path.name).write_bytes(path.read_bytes())
    return target


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"model directory `.*/absent` does not exist; an HF-format"):
        inspect_checkpoint(tmp_path / "absent")


def test_file_instead_of_directory(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="is a file, not a model directory"):
        inspect_checkpoint(tmp_path / "weights.bin")


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("config.json", "config.json` is missing"),
        ("model.safetensors", "has no \\*.safetensors weights"),
        ("tokenizer.json", "has no tokenizer.json"),
    ],
)
def test_missing_files_are_named(tiny_checkpoint: Path, tmp_path: Path, missing: str, message: str) -> None:
    broken = copy_checkpoint(tiny_checkpoint, tmp_path / "broken", skip=missing)
    with pytest.raises(CheckpointError, match=message):
        inspect_checkpoint(broken)


def test_invalid_config_json_names_the_line(tiny_checkpoint: Path, tmp_path: Path) -> None:
    broken = copy_checkpoint(tiny_checkpoint, tmp_path / "broken")
    (broken / "config.json").write_text('{\n  "model_type": "axk1",\n  oops\n}')
    with pytest.raises(CheckpointError, match=r"config.json` line 3: invalid JSON"):
        inspect_checkpoint(broken)


def test_config_without_context_length(tiny_checkpoint: Path, tmp_path: Path) -> None:
    broken = copy_checkpoint(tiny_checkpoint, tmp_path / "broken")
    (broken / "config.json").write_text('{"model_type": "axk1"}')
    with pytest.raises(CheckpointError, match="no positive integer `max_position_embeddings`"):
        inspect_checkpoint(broken)


def test_sharded_checkpoint_with_a_missing_shard(tiny_checkpoint: Path, tmp_path: Path) -> None:
    broken = copy_checkpoint(tiny_checkpoint, tmp_path / "broken", skip="model.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    (broken / "model-00001-of-00002.safetensors").write_bytes(b"")
    with pytest.raises(
        CheckpointError, match=re.escape("lists shard `model-00002-of-00002.safetensors`, which is missing")
    ):
        inspect_checkpoint(broken)
