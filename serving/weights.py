"""The tensors of an HF-format safetensors checkpoint, from the headers of its files alone.

Only the headers are read (8 bytes of length, then JSON), so a missing tensor, a truncated file or a
shape that disagrees with `config.json` is reported by name before any engine reads a weight.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from serving.checkpoint import CheckpointError

if TYPE_CHECKING:
    pass

INDEX_FILE = "model.safetensors.index.json"
_ELEMENT_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_ELEMENT_BYTES |= {"F8_E4M3": 1, "F8_E5M2": 1}
_HEADER_LIMIT = 100 * 1024**2  # safetensors' own cap on header size


@dataclass(frozen=True)
class TensorEntry:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


class CheckpointTensors:
    """The tensors of a checkpoint directory, found through its index JSON or its one safetensors file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.entries: dict[str, TensorEntry] = {}
        index = directory / INDEX_FILE
        if index.is_file():
            files = _index_files(index)
        else:
            files = sorted(directory.glob("*.safetensors"))
            if not files:
                raise CheckpointError(f"`{directory}` has no *.safetensors weights and no {INDEX_FILE}")
        for file in files:
            self.entries.update(_read_header(file))
        if index.is_file():
            self._check_index(index)

    def _check_index(self, index: Path) -> None:
        for name, file_name in _weight_map(index).items():
            entry = self.entries.get(name)
            if entry is None or entry.file.name != file_name:
                raise CheckpointError(
                    f"tensor `{name}` is listed in `{index}` under `{file_name}`, but that file does not hold it; "
                    "the checkpoint is incomplete or its index is stale"
                )

    def check_shapes(self, expected: Mapping[str, tuple[int, ...]]) -> None:
        """Every expected tensor is present with the shape `config.json` implies."""
        for name, shape in expected.items():
            entry = self._entry(name)
            if entry.shape != tuple(shape):
                raise CheckpointError(
                    f"tensor `{name}` in `{entry.file.name}` has shape {list(entry.shape)}, but config.json implies "
                    f"{list(shape)}; the weights do not belong to this config"
                )

    def _entry(self, name: str) -> TensorEntry:
        entry = self.entries.get(name)
        if entry is None:
            raise CheckpointError(
                f"tensor `{name}` is missing from the checkpoint in `{self.directory}`; "
                "re-export or re-download it with all its files"
            )
        return entry


def _index_files(index: Path) -> list[Path]:
    files = []
    for file_name in sorted(set(_weight_map(index).values())):
        file = index.parent / file_name
        if not file.is_file():
            raise CheckpointError(f"`{index}` lists shard `{file_name}`, which is missing from `{index.parent}`")
        files.append(file)
    return files


def _weight_map(index: Path) -> dict[str, str]:
    try:
        document = json.loads(index.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"`{index}` line {error.lineno}: invalid JSON: {error.msg}") from None
    weight_map = document.get("weight_map") if isinstance(document, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(value, str) for value in weight_map.values()):
        raise CheckpointError(f"`{index}` has no `weight_map` object of tensor name → file name")
    return weight_map


def _read_header(file: Path) -> dict[str, TensorEntry]:
    """Parse one file's header and check that every tensor's bytes lie inside the file."""
    size = file.stat().st_size
    with file.open("rb") as stream:
        prefix = stream.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"`{file}` is truncated: it has no safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(_HEADER_LIMIT, size - 8):
            raise CheckpointError(f"`{file}` is corrupt: its header claims {length} bytes, more than the file holds")
        try:
            header = json.loads(stream.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"`{file}` is corrupt: its safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"`{file}` is corrupt: its safetensors header is not a JSON object")
    data_size = size - 8 - length
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            expected = math.prod(shape) * _ELEMENT_BYTES[dtype]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"tensor `{name}` in `{file}` has a malformed header entry") from None
        if end - start != expected or not 0 <= start <= end <= data_size:
            raise CheckpointError(
                f"tensor `{name}` in `{file}` is corrupt or truncated: its bytes {start}..{end} do not hold "
                f"{list(shape)} {dtype} inside the file's {data_size} data bytes"
            )
        entries[name] = TensorEntry(file, dtype, shape, expected)
    return entries
