"""What authentication and authorisation add to each request, with a warm key cache.

    python -m tests.benchmarks.auth            (or: make bench)

Two measurements, against a real OpenBao dev server:
- the gate alone: `AccessGate.authenticate` (parse the key, cached lookup, SHA-256 compare, tenant
  lookup) + `authorize` + `admit` (site, token bucket, quota), per call;
- the same FastAPI route served in-process with and without `AccessMiddleware` and `requires`,
  side by side in one run, so the difference is the whole cost of the wiring as a client sees it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated

import httpx
from fastapi import FastAPI
from rich.console import Console
from rich.table import Table

from policies import Permission, load_default_policy
from policies.access import Tenant
from policies.openbao import AccessStore, bootstrap, start_dev_server
from serving.auth import AccessGate, AccessMiddleware, Caller, requires
from serving.launcher import free_port
from tests.benchmarks.startup import machine

console = Console()


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e3, ordered[int(len(ordered) * 0.99)] * 1e3


async def _no_events(kind: str, fields: dict) -> None:
    return None


def build_apps(gate: AccessGate) -> tuple[FastAPI, FastAPI]:
    open_app, guarded_app = FastAPI(), FastAPI()

    @open_app.get("/v1/ping")
    async def open_ping() -> dict[str, bool]:
        return {"ok": True}

    guarded_app.add_middleware(AccessMiddleware)
    guarded_app.state.access = gate

    @guarded_app.get("/v1/ping")
    async def guarded_ping(caller: Annotated[Caller, requires(Permission.INFERENCE, admission="model")]) -> dict:
        return {"ok": True}

    return open_app, guarded_app


async def gate_only(gate: AccessGate, key: str, iterations: int) -> list[float]:
    samples = []
    header = f"Bearer {key}"
    for _ in range(iterations):
        started = time.perf_counter()
        principal, tenant = await gate.authenticate(header, "127.0.0.1")
        gate.authorize(principal, Permission.INFERENCE)
        gate.admit(tenant)
        samples.append(time.perf_counter() - started)
    return samples


async def through_http(app: FastAPI, key: str, iterations: int) -> list[float]:
    samples = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        headers = {"Authorization": f"Bearer {key}"}
        for _ in range(iterations):
            started = time.perf_counter()
            response = await client.get("/v1/ping", headers=headers)
            samples.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
    return samples


async def measure(iterations: int) -> None:
    policy = load_default_policy()
    with tempfile.TemporaryDirectory() as directory:
        server = start_dev_server(free_port(), Path(directory))
        try:
            bootstrap(server.client())
            store = AccessStore(server.client())
            store.put_tenant(Tenant(name="bench", requests_per_minute=10**9, tokens_per_day=10**12))
            _, key = store.create_key("bench", "model-user", "bench", "benchmark")
            # The key cache must stay warm for the whole run, as it does between refreshes in production.
            policy = policy.model_copy(
                update={
                    "spec": policy.spec.model_copy(
                        update={"access": policy.spec.access.model_copy(update={"key_cache_seconds": 60})}
                    )
                }
            )
            gate = AccessGate(policy, store, "local", _no_events)
            await gate_only(gate, key, 1000)  # warm the cache and the interpreter
            gate_samples = await gate_only(gate, key, iterations)
            open_app, guarded_app = build_apps(gate)
            await through_http(open_app, key, 500)
            await through_http(guarded_app, key, 500)
            # Interleave the two so drift in machine load hits both alike.
            open_samples: list[float] = []
            guarded_samples: list[float] = []
            for _ in range(10):
                open_samples += await through_http(open_app, key, iterations // 10)
                guarded_samples += await through_http(guarded_app, key, iterations // 10)
        finally:
            server.stop()
    table = Table(title=f"Authentication + authorisation per request, warm cache ({iterations} requests)")
    for column in ("path", "p50 ms", "p99 ms"):
        table.add_column(column, justify="right" if column != "path" else "left")
    gate_p50, gate_p99 = percentiles(gate_samples)
    open_p50, open_p99 = percentiles(open_samples)
    guarded_p50, guarded_p99 = percentiles(guarded_samples)
    table.add_row("AccessGate: authenticate + authorize + admit", f"{gate_p50:.4f}", f"{gate_p99:.4f}")
    table.add_row("FastAPI route, no access control", f"{open_p50:.3f}", f"{open_p99:.3f}")
    table.add_row("FastAPI route, AccessMiddleware + requires", f"{guarded_p50:.3f}", f"{guarded_p99:.3f}")
    table.add_row(
        "added by access control (difference)", f"{guarded_p50 - open_p50:.3f}", f"{guarded_p99 - open_p99:.3f}"
    )
    console.print(table)
    console.print(f"ratio guarded/open: p50 {guarded_p50 / open_p50:.2f}×, p99 {guarded_p99 / open_p99:.2f}×")
    console.print(f"machine: {machine()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20_000, help="Requests per measurement.")
    asyncio.run(measure(parser.parse_args().iterations))


if __name__ == "__main__":
    main()
