"""What the metrics cost on the request path: the same work with and without instrumentation, side by side.

    python -m tests.benchmarks.metrics            (or: make bench)

Metrics are recorded as in the embedded stack: prometheus-client's multiprocess mode, into a
temporary directory. Two measurements, interleaved in rounds so machine drift hits both sides:
- the gateway: one FastAPI route served in-process, with and without `GatewayMetricsMiddleware`;
- the model server's decode loop on the tiny A.X K1 model: plain, and with the routers' expert
  counts (`ExpertLoad`, flushed as each request leaves the batch) and the per-token histograms and gauges.
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

from monitoring import catalogue  # noqa: E402
from serving.engine import TorchEngine  # noqa: E402
from serving.generation import SamplingParams  # noqa: E402
from serving.metrics import GatewayMetricsMiddleware  # noqa: E402
from serving.tiny_model import ensure_tiny_checkpoint  # noqa: E402
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


def decode(engine: TorchEngine, tokens: int, instrumented: bool) -> list[float]:
    """Per-token times of one greedy generation; `instrumented` records what LLMServer records."""
    prompt = engine.encode("서울의 날씨를 알려 주세요. " * 4)
    samples = []
    last = time.perf_counter()
    for _ in engine.submit(prompt, SamplingParams(max_tokens=tokens, temperature=0)):
        now = time.perf_counter()
        if instrumented:
            catalogue.INTER_TOKEN_LATENCY.labels("non_think").observe(now - last)
            catalogue.KV_CACHE_USAGE.set(0.1)
        samples.append(now - last)
        last = time.perf_counter()
    if instrumented:
        catalogue.GENERATION_TOKENS.labels("non_think").inc(len(samples))
    return samples


def summary(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e3, ordered[int(len(ordered) * 0.99)] * 1e3, len(samples) / sum(samples)


async def measure(requests: int, generations: int) -> None:
    plain_app, metered_app = gateway_apps()
    await requests_through(plain_app, 300)
    await requests_through(metered_app, 300)
    gateway: dict[str, list[float]] = {"plain": [], "metered": []}
    for _ in range(10):
        gateway["plain"] += await requests_through(plain_app, requests // 10)
        gateway["metered"] += await requests_through(metered_app, requests // 10)

    checkpoint = ensure_tiny_checkpoint(None)
    # Experts in the model server, so the comparison is the metrics and nothing of Ray's.
    plain_engine, metered_engine = TorchEngine(checkpoint, expert_shards=0), TorchEngine(checkpoint, expert_shards=0)
    plain_engine.model.expert_load = None  # no router counting: the uninstrumented side
    decode(plain_engine, 8, False)
    decode(metered_engine, 8, True)
    engine: dict[str, list[float]] = {"plain": [], "metered": []}
    for _ in range(generations):
        engine["plain"] += decode(plain_engine, 64, False)
        engine["metered"] += decode(metered_engine, 64, True)

    table = Table(title="Instrumentation on the request path (multiprocess metrics, as in the stack)")
    for column in ("path", "metrics", "p50 ms", "p99 ms", "throughput"):
        table.add_column(column, justify="left" if column in {"path", "metrics"} else "right")
    rows: dict[str, Any] = {}
    for label, samples, unit in (("gateway request", gateway, "req/s"), ("decode step (tiny model)", engine, "tok/s")):
        for side in ("plain", "metered"):
            p50, p99, rate = summary(samples[side])
            rows[(label, side)] = (p50, rate)
            table.add_row(label, "off" if side == "plain" else "on", f"{p50:.4f}", f"{p99:.4f}", f"{rate:,.0f} {unit}")
    console.print(table)
    for label in ("gateway request", "decode step (tiny model)"):
        (plain_p50, plain_rate), (metered_p50, metered_rate) = rows[(label, "plain")], rows[(label, "metered")]
        console.print(
            f"{label}: +{(metered_p50 - plain_p50) * 1e3:.1f} µs at p50; throughput "
            f"{metered_rate / plain_rate:.3f}× of uninstrumented"
        )
    console.print(f"machine: {machine()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000, help="Gateway requests per side.")
    parser.add_argument("--generations", type=int, default=30, help="64-token generations per side.")
    arguments = parser.parse_args()
    asyncio.run(measure(arguments.requests, arguments.generations))


if __name__ == "__main__":
    main()
