"""Expert parallelism on Ray: each routed-expert shard is a Ray actor holding only its own experts.

For every MoE layer of a step the trunk sends each shard, in one call, the hidden states of the
tokens routed to it with their local expert ids and routing weights; the shards run concurrently
and the trunk adds their results. A shard that dies or stops answering fails the step with
`ExpertShardFailed`; `ShardPool.restart` replaces it with a fresh actor that reloads its experts.
With `shards=0` the experts stay in the trunk's process (`LocalExperts`), for one-device serving.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError
from transformers import AXK1Config

from monitoring import catalogue
from serving.axk1 import ExpertBank, expert_shapes, shard_experts
from serving.errors import ExpertShardFailed
from serving.weights import CheckpointTensors

SHARD_CALL_TIMEOUT_SECONDS = 60.0


def check_expert_tensors(tensors: CheckpointTensors, config: AXK1Config) -> None:
    """Every routed expert's tensors are present with their configured shapes, before any shard starts."""
    tensors.check_shapes(expert_shapes(config, range(config.n_routed_experts)))


def to_wire(tensor: torch.Tensor) -> np.ndarray:
    """A CPU array Ray passes without pickling tensor storage (bfloat16, which numpy lacks, as its bits)."""
    tensor = tensor.detach().cpu()
    return (tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor).numpy()


def from_wire(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    # Ray hands over read-only views of its object store; torch wants buffers it may write.
    tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
    return tensor.view(torch.bfloat16) if dtype == torch.bfloat16 else tensor


def _assignments(chosen: torch.Tensor, experts: range) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(token, top-k slot) pairs routed into `experts`, or None when the shard has no work this layer."""
    inside = (chosen >= experts.start) & (chosen < experts.stop)
    token, slot = inside.nonzero(as_tuple=True)
    return None if token.numel() == 0 else (token, slot)


class ExpertShard:
    """A shard's experts, loaded in its own process (a Ray actor) from the checkpoint directory."""

    def __init__(self, model_path: str, shard: int, shards: int, dtype: torch.dtype, device: str) -> None:
        config = AXK1Config.from_pretrained(model_path)
        tensors = CheckpointTensors(Path(model_path))
        self.device = device
        self.bank = ExpertBank(tensors, config, shard_experts(config.n_routed_experts, shard, shards), dtype, device)
        self.bytes_read = tensors.bytes_read

    def describe(self) -> dict[str, Any]:
        """What this shard holds: its experts, the checkpoint bytes it read, and its process id."""
        experts = self.bank.experts
        return {
            "experts": [experts.start, experts.stop],
            "bytes_read": self.bytes_read,
            "pid": os.getpid(),
            "actor_id": ray.get_runtime_context().get_actor_id(),
        }

    def run(
        self, layer: int, hidden: np.ndarray, token: np.ndarray, expert: np.ndarray, weight: np.ndarray
    ) -> np.ndarray:
        """The weighted sum of this shard's experts for each routed token, in `to_wire` form both ways."""
        device, dtype = self.device, self.bank.dtype
        tensors = [from_wire(array, torch.int64).to(device) for array in (token, expert)]
        tensors.append(from_wire(weight, torch.float32).to(device))
        result = self.bank.forward(layer, from_wire(hidden, dtype).to(device), *tensors)
        return to_wire(result)


class LocalExperts:
    """All routed experts in the trunk's process: no shard calls."""

    def __init__(self, tensors: CheckpointTensors, config: AXK1Config, dtype: torch.dtype, device: str) -> None:
        self.bank = ExpertBank(tensors, config, range(config.n_routed_experts), dtype, device)
        catalogue.EXPERT_SHARD_UP.labels("0").set(1)  # one shard: this process

    def __call__(self, layer: int, hidden: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        token = torch.arange(chosen.shape[0], device=chosen.device).repeat_interleave(chosen.shape[1])
        return self.bank.forward(layer, hidden, token, chosen.flatten(), weights.flatten())

    def restart(self, shard: int) -> None:
        raise AssertionError("in-process experts have no shard to restart")

    def describe(self) -> list[dict[str, Any]]:
        return []

    def close(self) -> None:
        pass


@dataclass
class _Shard:
    index: int
    experts: range
    actor: Any


class ShardPool:
    """N expert-shard actors and the dispatch/combine of one MoE layer over them."""

    def __init__(
        self, model_path: Path, config: AXK1Config, shards: int, dtype: torch.dtype, name_prefix: str = "expert-shard"
    ) -> None:
        self.model_path = str(model_path)
        self.dtype = dtype
        self.count = shards
        self.name_prefix = name_prefix
        self.call_timeout = SHARD_CALL_TIMEOUT_SECONDS
        use_gpu = torch.cuda.is_available()
        # One GPU per shard where there are GPUs; on CPU the shards take no CPU reservation, because they
        # compute only while the trunk waits for them.
        self._options = {"num_gpus": 1, "num_cpus": 1} if use_gpu else {"num_cpus": 0}
        self._device = "cuda" if use_gpu else "cpu"
        self.descriptions: dict[int, dict[str, Any]] = {}
        self.shards = [
            _Shard(index, shard_experts(config.n_routed_experts, index, shards), None) for index in range(shards)
        ]
        for shard in self.shards:
            shard.actor = self._start(shard.index)
        self._await_ready(self.shards)

    def _start(self, index: int) -> Any:
        actor_class = ray.remote(ExpertShard).options(
            name=f"{self.name_prefix}-{index}", max_restarts=0, max_concurrency=1, **self._options
        )
        return actor_class.remote(self.model_path, index, self.count, self.dtype, self._device)

    def _await_ready(self, shards: list[_Shard]) -> None:
        descriptions = ray.get([shard.actor.describe.remote() for shard in shards])
        for shard, description in zip(shards, descriptions, strict=True):
            self.descriptions[shard.index] = description
            catalogue.EXPERT_SHARD_UP.labels(str(shard.index)).set(1)
            catalogue.EXPERT_SHARD_ERRORS.labels(str(shard.index))

    def describe(self) -> list[dict[str, Any]]:
        return [{"shard": index, **self.descriptions[index]} for index in sorted(self.descriptions)]

    def __call__(self, layer: int, hidden: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        output = torch.zeros_like(hidden)
        calls: dict[Any, tuple[_Shard, torch.Tensor, float]] = {}
        for shard in self.shards:
            routed = _assignments(chosen, shard.experts)
            if routed is None:
                continue
            token, slot = routed
            rows, local_token = torch.unique(token, return_inverse=True)
            reference = shard.actor.run.remote(
                layer,
                to_wire(hidden[rows]),
                to_wire(local_token),
                to_wire(chosen[token, slot] - shard.experts.start),
                to_wire(weights[token, slot]),
            )
            calls[reference] = (shard, rows, time.perf_counter())
        pending = list(calls)
        deadline = time.monotonic() + self.call_timeout
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                self._fail(calls[pending[0]][0], f"no answer within {self.call_timeout:g} s")
            shard, rows, started = calls[ready[0]]
            try:
                result = ray.get(ready[0], timeout=0)
            except (RayActorError, GetTimeoutError) as error:
                self._fail(shard, type(error).__name__)
            catalogue.EXPERT_SHARD_CALL_LATENCY.labels(str(shard.index)).observe(time.perf_counter() - started)
            output.index_add_(0, rows, from_wire(result, output.dtype).to(output.device))
        return output

    def _fail(self, shard: _Shard, reason: str) -> None:
        catalogue.EXPERT_SHARD_ERRORS.labels(str(shard.index)).inc()
        catalogue.EXPERT_SHARD_UP.labels(str(shard.index)).set(0)
        raise ExpertShardFailed(shard.index, reason)

    def restart(self, index: int) -> None:
        """Replace shard `index` with a fresh actor that reloads its experts; blocks until it answers."""
        shard = self.shards[index]
        ray.kill(shard.actor, no_restart=True)
        shard.actor = self._start(index)
        self._await_ready([shard])
        catalogue.EXPERT_SHARD_RESTARTS.labels(str(index)).inc()

    def close(self) -> None:
        for shard in self.shards:
            ray.kill(shard.actor, no_restart=True)
            catalogue.EXPERT_SHARD_UP.labels(str(shard.index)).set(0)
