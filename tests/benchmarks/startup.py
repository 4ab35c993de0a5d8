"""Time from `make up` in a fresh clone to the first chat completion, as an evaluator meets it.

    python -m tests.benchmarks.startup            # cold: fresh clone, empty venv, uv and model caches
    python -m tests.benchmarks.startup --warm     # the same clone started a second time

Each run clones HEAD into a temporary directory, runs `make up` on a free loopback port, waits for
`/v1/models`, sends one chat completion with the official openai client, then sends Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import openai
from rich.console import Console
from rich.table import Table

REPOSITORY = Path(__file__).resolve().parents[2]
console = Console()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_make_up(clone: Path, caches: Path) -> dict[str, float]:
    port = free_port()
    environment = {
        **os.environ,
        "UV_CACHE_DIR": str(caches / "uv"),
        "SOVEREIGN_CACHE_DIR": str(caches / "sovereign"),
        "SOVEREIGN_STATE_DIR": str(caches / "state"),
        "COLUMNS": "200",
    }
    started = time.monotonic()
    process = subprocess.Popen(
        ["make", "up", f"ARGS=--port {port}"],
        cwd=clone,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    timings: dict[str, float] = {}
    api_key = ""
    try:
        for line in process.stdout:
            if (key := re.search(r"OPENAI_API_KEY=(\S+)", line)) is not None:
                api_key = key.group(1)
            # make echoes each install command as it starts it.
            if "uv pip sync" in line:
                timings["venv, uv and the lock check ready; sync from the lock starts"] = time.monotonic() - started
            if "uv pip install" in line:
                timings["lock synced; the project's editable install starts"] = time.monotonic() - started
            if (step := re.search(r"✓ (.+) \((\d+\.\d) s\)", line)) is not None:
                timings[f"  step: {step.group(1)}"] = float(step.group(2))
            if (match := re.search(r"Serving \S+ in (\d+\.\d) s", line)) is not None:
                timings["sovereign up (its own clock)"] = float(match.group(1))
            if "Ctrl-C stops the stack." in line:
                break
        else:
            raise RuntimeError("make up ended before serving")
        timings["make up → serving"] = time.monotonic() - started
        headers = {"Authorization": f"Bearer {api_key}"}
        httpx.get(f"http://127.0.0.1:{port}/v1/models", headers=headers, timeout=30).raise_for_status()
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=api_key, max_retries=0)
        client.chat.completions.create(
            model="axk1-tiny", messages=[{"role": "user", "content": "안녕하세요"}], max_tokens=16
        )
        timings["make up → first completion"] = time.monotonic() - started
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=120)
    return timings


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return f"{os.cpu_count()} cores ({model}), {memory_kib / 2**20:.0f} GiB, {platform.platform()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm", action="store_true", help="also time a second start of the same clone")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sovereign-bench-") as scratch:
        clone, caches = Path(scratch) / "clone", Path(scratch) / "caches"
        subprocess.run(["git", "clone", "--quiet", str(REPOSITORY), str(clone)], check=True)
        runs = {"cold (fresh clone)": run_make_up(clone, caches)}
        if arguments.warm:
            runs["warm (second start)"] = run_make_up(clone, caches)
    table = Table(title=f"make up on {machine()}")
    table.add_column("run")
    table.add_column("milestone")
    table.add_column("seconds", justify="right")
    for run, timings in runs.items():
        for milestone, seconds in timings.items():
            table.add_row(run, milestone, f"{seconds:.1f}")
    console.print(table)


if __name__ == "__main__":
    main()
