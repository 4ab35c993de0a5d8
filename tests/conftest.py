"""Session-wide fixtures: one tiny checkpoint and one live embedded stack for the whole run."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from policies import ResidencyPolicy, load_default_policy
from policies.access import Tenant
from policies.openbao import AccessStore, BaoServer, bootstrap, start_dev_server
from serving.launcher import free_port

# The tenant of the session's default API key.
TENANT = "acme"


def all_records(state_dir: Path) -> list[dict[str, Any]]:
    """Every record of the installation's audit log, oldest first."""
    from policies.audit import read_records

    return read_records(state_dir / "audit", tenant=None, limit=sys.maxsize)


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
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BaoServer]:
    """`bao server -dev` on a random loopback port, bootstrapped; its root token is the operator's VAULT_TOKEN."""
    server = start_dev_server(free_port(), tmp_path_factory.mktemp("openbao"))
    bootstrap(server.client())
    os.environ["VAULT_TOKEN"] = server.root_token
    yield server
    server.stop()


@pytest.fixture(scope="session")
def access_store(openbao: BaoServer) -> AccessStore:
    return AccessStore(openbao.client())


@pytest.fixture(scope="session")
def make_key(access_store: AccessStore, default_policy: ResidencyPolicy) -> Callable[..., str]:
    """`make_key(tenant, role)`: a new API key; a tenant given as a `Tenant` is (re)written first."""
    from policies.openbao import save_tenant

    def make(tenant: str | Tenant = TENANT, role: str = "model-user") -> str:
        if isinstance(tenant, Tenant):
            save_tenant(access_store, default_policy, tenant)
            tenant = tenant.name
        elif access_store.tenant(tenant) is None:
            save_tenant(access_store, default_policy, Tenant(name=tenant, requests_per_minute=10_000))
        return access_store.create_key(tenant, role, "test", created_by="pytest")[1]

    return make


@pytest.fixture(scope="session")
def api_key(make_key: Callable[..., str]) -> str:
    """A model-user key of tenant `acme`, used by `client` and `http`."""
    return make_key(TENANT)


@pytest.fixture(scope="session")
def stack(tiny_checkpoint: Path, default_policy: ResidencyPolicy, openbao: BaoServer) -> Iterator[object]:
    """The embedded stack, in-process: `ray.init`, Ray Serve on a random loopback port, the tiny model, OpenBao."""
    from serving.config import ServingConfig
    from serving.launcher import start_stack

    running = start_stack(ServingConfig(port=free_port(), vault_addr=openbao.address), default_policy)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def client(stack: object, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=api_key, max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def http(stack: object, api_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=60, headers={"Authorization": f"Bearer {api_key}"}) as session:
        yield session


@contextmanager
def running_registry(directory: Path) -> Iterator[object]:
    """A real MLflow server on SQLite with a local proxied artifact store, on a random loopback port."""
    from serving import registry_server as server_module

    server = server_module.start(directory, free_port())
    server.wait_ready()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def registry_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    with running_registry(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@pytest.fixture(scope="session")
def signer(openbao: BaoServer) -> object:
    """Signs and verifies registry records with OpenBao's `registry-approvals` transit key."""
    from policies.openbao import APPROVAL_KEY, TransitSigner

    return TransitSigner(openbao.client(), key=APPROVAL_KEY)


@pytest.fixture(scope="session")
def audit(state_dir: Path, signer: object) -> object:
    from policies.audit import open_log

    return open_log(state_dir, signer)


@pytest.fixture(scope="session")
def registry(registry_server: object, default_policy: ResidencyPolicy, signer: object) -> object:
    from serving.registry import Registry

    return Registry(registry_server.address, default_policy, signer)


@pytest.fixture(scope="session")
def person(make_key: Callable[..., str], access_store: AccessStore, default_policy: ResidencyPolicy) -> Callable:
    """`person(role)`: a new principal of tenant acme, with its own API key; returns (Registrant, key)."""
    from policies.access import Roles
    from policies.openbao import authenticate_key
    from serving.registry import Registrant

    def make(role: str = "model-admin") -> tuple[Registrant, str]:
        key = make_key(TENANT, role)
        principal, record = authenticate_key(access_store, Roles(default_policy), key)
        return Registrant(principal, record.name), key

    return make


@pytest.fixture(scope="session")
def publish(registry: object, person: Callable, audit: object, tiny_checkpoint: Path) -> Callable[[str], str]:
    """`publish(name)`: register the tiny checkpoint as `name` and promote it to @production (two people)."""

    def make(name: str) -> str:
        registrant, approver = person()[0], person()[0]
        version = registry.register(tiny_checkpoint, name, registrant, [], license_name="apache-2.0")
        registry.promote(name, version, "production", approver, "SEC-100", audit)
        return version

    return make


def manifest_of(directory: Path) -> object:
    """The checksum manifest of a local checkpoint, computed apart from the registry's upload path."""
    from policies.registry import FileEntry, Manifest, checkpoint_files, read_chunks, sha256_stream

    return Manifest(
        {
            path.relative_to(directory).as_posix(): FileEntry(sha256_stream(read_chunks(path)), path.stat().st_size)
            for path in checkpoint_files(directory)
        }
    )
