"""Inspect a local HF-format checkpoint directory before any process tries to load it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class CheckpointError(ValueError):
    """A model directory that cannot be served; the message says which file and what to do."""


@dataclass(frozen=True)
class ModelCard:
    """What the gateway needs to know about a served model, read without loading weights."""

    id: str
    path: Path
    model_type: str
    max_model_len: int
    created: int
    revision: str | None = None  # `NAME/VERSION` when served from the registry


_LAYOUT_HINT = "an HF-format checkpoint directory holds config.json, *.safetensors and tokenizer.json"


def inspect_checkpoint(path: Path, model_id: str | None = None) -> ModelCard:
    """Check that `path` holds a loadable checkpoint and describe it."""
    path = path.expanduser()
    if not path.exists():
        raise CheckpointError(f"model directory `{path}` does not exist; {_LAYOUT_HINT}")
    if not path.is_dir():
        raise CheckpointError(f"`{path}` is a file, not a model directory; {_LAYOUT_HINT}")
    config = _read_json(path / "config.json")
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        raise CheckpointError(f"`{path / 'config.json'}` has no `model_type`; is it a transformers config?")
    max_model_len = config.get("max_position_embeddings")
    if not isinstance(max_model_len, int) or max_model_len < 1:
        raise CheckpointError(
            f"`{path / 'config.json'}` has no positive integer `max_position_embeddings` (the context length)"
        )
    _check_weights(path)
    if not (path / "tokenizer.json").is_file():
        raise CheckpointError(f"`{path}` has no tokenizer.json; {_LAYOUT_HINT}")
    return ModelCard(
        id=model_id or path.resolve().name,
        path=path.resolve(),
        model_type=model_type,
        max_model_len=max_model_len,
        created=int((path / "config.json").stat().st_mtime),
    )


def _check_weights(path: Path) -> None:
    index_path = path / "model.safetensors.index.json"
    if index_path.is_file():
        weight_map = _read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"`{index_path}` has no `weight_map` object")
        for shard in sorted(set(weight_map.values())):
            if not (path / shard).is_file():
                raise CheckpointError(f"`{index_path}` lists shard `{shard}`, which is missing from `{path}`")
        return
    if not any(path.glob("*.safetensors")):
        raise CheckpointError(f"`{path}` has no *.safetensors weights; {_LAYOUT_HINT}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"`{path}` is missing; {_LAYOUT_HINT}") from None
    except json.JSONDecodeError as error:
        raise CheckpointError(f"`{path}` line {error.lineno}: invalid JSON: {error.msg}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"`{path}` must hold a JSON object")
    return data
