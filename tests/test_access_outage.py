"""Fail closed: the gateway against an OpenBao that is killed by its pid mid-test and started again."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from policies import ResidencyPolicy
from policies.access import Tenant
from policies.openbao import (
    GATEWAY_POLICY,
    AccessStore,
    BaoServer,
    bootstrap,
    issue_token,
    start_embedded_server,
)

GRACE_SECONDS = 3.0


class Persistent:
    """An OpenBao with raft storage (what `sovereign up` runs), so a restart keeps keys and tokens."""

    def __init__(self, directory: Path, port: int, cluster_port: int) -> None:
        self.directory, self.port, self.cluster_port = directory, port, cluster_port
        self.start()

    def start(self) -> BaoServer:
        self.server = start_embedded_server(self.directory, self.port, self.cluster_port)
        return self.server


@pytest.fixture(scope="module")
def persistent(tmp_path_factory: pytest.TempPathFactory, allocate_port: Callable[[], int]) -> Iterator[Persistent]:
    openbao = Persistent(tmp_path_factory.mktemp("openbao-persistent"), allocate_port(), allocate_port())
    bootstrap(openbao.server.client())
    yield openbao
    openbao.server.stop()


@pytest.fixture(scope="module")
def outage_gateway(stack: object, persistent: Persistent, default_policy: ResidencyPolicy) -> Iterator[str]:
    from ray import serve

    from serving.app import build_app
    from serving.config import AccessConfig, ServingConfig

    access = default_policy.spec.access.model_copy(update={"key_cache_seconds": 0.5, "outage_grace_seconds": 3})
    policy = default_policy.model_copy(update={"spec": default_policy.spec.model_copy(update={"access": access})})
    client = persistent.server.client()
    token = issue_token(client, GATEWAY_POLICY)
    app = build_app(
        ServingConfig(), policy, stack.card, AccessConfig(vault_addr=persistent.server.address, vault_token=token)
    )
    serve.run(app, name="outage", route_prefix="/outage")
    yield f"{stack.base_url}/outage"
    serve.delete("outage")


def status(gateway: str, key: str) -> httpx.Response:
    return httpx.get(f"{gateway}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)


def test_keys_outlive_an_outage_for_the_grace_period_then_503_then_recover(
    outage_gateway: str, persistent: Persistent
) -> None:
    store = AccessStore(persistent.server.client())
    store.put_tenant(Tenant(name="outage", requests_per_minute=10_000))
    known = store.create_key("outage", "model-user", "known", "pytest")[1]
    revoked_record, revoked = store.create_key("outage", "model-user", "revoked", "pytest")
    never_seen = store.create_key("outage", "model-user", "never seen", "pytest")[1]
    assert status(outage_gateway, known).status_code == 200
    store.revoke_key(revoked_record.key_id)
    assert status(outage_gateway, revoked).status_code == 401

    os.kill(persistent.server.pid, signal.SIGKILL)
    persistent.server.process.wait()
    killed_at = time.monotonic()

    assert status(outage_gateway, known).status_code == 200, "a verified key stays valid in the grace period"
    assert status(outage_gateway, revoked).status_code == 401, "a revocation seen before the outage holds"
    unverifiable = status(outage_gateway, never_seen)
    assert unverifiable.status_code == 503
    assert unverifiable.json()["error"]["code"] == "access_control_unavailable"
    assert unverifiable.headers["retry-after"]

    while (response := status(outage_gateway, known)).status_code == 200:
        assert time.monotonic() - killed_at < GRACE_SECONDS + 2, "still open after the grace period"
        time.sleep(0.1)
    assert time.monotonic() - killed_at >= GRACE_SECONDS - 0.6  # the key was last verified up to 0.5 s before
    assert response.status_code == 503

    persistent.start()
    restarted_at = time.monotonic()
    while (response := status(outage_gateway, known)).status_code != 200:
        assert response.status_code == 503
        assert time.monotonic() - restarted_at < 10, "the gateway did not recover after OpenBao came back"
        time.sleep(0.1)
    assert status(outage_gateway, never_seen).status_code == 200
    assert status(outage_gateway, revoked).status_code == 401
