"""What the metrics cost on the request path: the same work with and without instrumentation, side by side.

    python -m tests.benchmarks.metrics            (or: make bench)

Metrics are recorded as in the embedded stack: prometheus-client's multiprocess mode, into a
temporary directory. One FastAPI route served in-process, with and without `GatewayMetricsMiddleware`,
interleaved in rounds so machine drift hits both sides. (The engine's own metrics are vLLM's.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from typing import Any

METRICS_DIR = tempfile.mkdtemp(prefix="sovereign-bench-metrics-")
os.environ["SOVEREIGN_METRICS_DIR"] = METRICS_DIR  # before the catalogue is imported

import httpx  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from serving.metrics import GatewayMetricsMiddleware  # noqa: E402
from tests.benchmarks.startup import machine  # noqa: E402

console = Console()


def gateway_apps() -> tuple[FastAPI, FastAPI]:
    plain, instrumented = FastAPI(), FastAPI()
    instrumented.add_middleware(GatewayMetricsMiddleware)
    for app in (plain, instrumented):

        @app.get("/v1/ping")
        async def ping() -> dict[str, bool]:
            return {"ok": True}

    return plain, instrumented


async def requests_through(app: FastAPI, count: int) -> list[float]:
    samples = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client:
        for _ in range(count):
            started = time.perf_counter()
            response = await client.get("/v1/ping")
            samples.append(time.perf_counter() - started)
            assert response.status_code == 200
    return samples


def summary(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e3, ordered[int(len(ordered) * 0.99)] * 1e3, len(samples) / sum(samples)


async def measure(requests: int) -> None:
    plain_app, metered_app = gateway_apps()
    await requests_through(plain_app, 300)
    await requests_through(metered_app, 300)
    gateway: dict[str, list[float]] = {"plain": [], "metered": []}
    for _ in range(10):
        gateway["plain"] += await requests_through(plain_app, requests // 10)
        gateway["metered"] += await requests_through(metered_app, requests // 10)

    table = Table(title="Instrumentation on the request path (multiprocess metrics, as in the stack)")
    for column in ("path", "metrics", "p50 ms", "p99 ms", "throughput"):
        table.add_column(column, justify="left" if column in {"path", "metrics"} else "right")
    rows: dict[str, Any] = {}
    for label, samples, unit in (("gateway request", gateway, "req/s"),):
        for side in ("plain", "metered"):
            p50, p99, rate = summary(samples[side])
            rows[(label, side)] = (p50, rate)
            table.add_row(label, "off" if side == "plain" else "on", f"{p50:.4f}", f"{p99:.4f}", f"{rate:,.0f} {unit}")
    console.print(table)
    for label in ("gateway request",):
        (plain_p50, plain_rate), (metered_p50, metered_rate) = rows[(label, "plain")], rows[(label, "metered")]
        console.print(
            f"{label}: +{(metered_p50 - plain_p50) * 1e3:.1f} µs at p50; throughput "
            f"{metered_rate / plain_rate:.3f}× of uninstrumented"
        )
    console.print(f"machine: {machine()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="Gateway requests per side.")
    arguments = parser.parse_args()
    asyncio.run(measure(arguments.requests))


if __name__ == "__main__":
    main()
