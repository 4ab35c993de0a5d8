"""Session-wide fixtures: one tiny checkpoint and one live embedded stack for the whole run."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from policies import ResidencyPolicy, load_default_policy


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def allocate_port() -> Callable[[], int]:
    """A free loopback port for each server a test starts."""
    return free_port


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test, and every `sovereign` process a test starts, builds into one throw-away cache."""
    path = tmp_path_factory.mktemp("sovereign-cache")
    os.environ["SOVEREIGN_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The audit log and its key, for the in-process stack and every `sovereign` process a test starts."""
    path = tmp_path_factory.mktemp("sovereign-state")
    os.environ["SOVEREIGN_STATE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def default_policy() -> ResidencyPolicy:
    return load_default_policy()


@pytest.fixture(scope="session")
def tiny_checkpoint(cache_dir: Path) -> Path:
    from serving.tiny_model import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint(cache_dir)


@pytest.fixture(scope="session")
def stack(tiny_checkpoint: Path, default_policy: ResidencyPolicy) -> Iterator[object]:
    """The embedded stack, in-process: `ray.init`, Ray Serve on a random loopback port, the tiny model."""
    from serving.config import ServingConfig
    from serving.launcher import start_stack

    running = start_stack(ServingConfig(port=free_port()), default_policy)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def client(stack: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def http(stack: object) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=60) as session:
        yield session
