"""`sovereign up` as a user runs it: a subprocess that serves, prints a working example and stops on Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from policies.state import METRICS_DIR_ENV

READY_LINE = "Ctrl-C stops the stack."


class Output:
    """Collects a process's output lines on a thread, so the test can wait for one with a deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(process,), daemon=True).start()

    def _pump(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float) -> None:
        while True:
            line = self._queue.get(timeout=timeout)
            if line is None:
                raise AssertionError("process ended before printing " + repr(text) + ":\n" + "\n".join(self.lines))
            self.lines.append(line)
            if text in line:
                return

    def rest(self, timeout: float) -> list[str]:
        while (line := self._queue.get(timeout=timeout)) is not None:
            self.lines.append(line)
        return self.lines


@contextmanager
def sovereign_up(*arguments: str) -> Iterator[tuple[subprocess.Popen[str], Output]]:
    """`sovereign up ARGUMENTS` in its own process group, ready; on the way out its whole group is stopped.

    Ctrl-C first, so the stack stops its servers; if that fails, the group is killed, so no OpenBao,
    registry or Prometheus outlives a failed test.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", "sovereign", "up", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        start_new_session=True,
    )
    output = Output(process)
    try:
        output.wait_for(READY_LINE, timeout=180)
        yield process, output
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="module")
def running_up(allocate_port: Callable[[], int]) -> Iterator[tuple[subprocess.Popen[str], Output, int]]:
    port, prometheus_port, registry_port = allocate_port(), allocate_port(), allocate_port()
    options = ["--port", str(port), "--prometheus", "--prometheus-port", str(prometheus_port)]
    with sovereign_up(*options, "--registry-port", str(registry_port)) as (process, output):
        yield process, output, port


def test_up_serves_and_prints_a_working_example(running_up: tuple[subprocess.Popen[str], Output, int]) -> None:
    _, output, port = running_up
    text = "\n".join(output.lines)
    assert re.search(r"Serving axk1-tiny in \d+\.\d s \(policy kr-default, site local\)", text)
    assert f"OpenAI API   http://127.0.0.1:{port}/v1" in text
    body = re.search(r"-d '(.*)'$", text, flags=re.MULTILINE)
    key = re.search(r"OPENAI_API_KEY=(sk-sov-\S+)$", text, flags=re.MULTILINE)
    assert body, text
    assert key, text
    assert f"-H 'Authorization: Bearer {key.group(1)}'" in text
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    assert httpx.post(url, json=json.loads(body.group(1)), timeout=60).status_code == 401
    headers = {"Authorization": f"Bearer {key.group(1)}"}
    response = httpx.post(url, json=json.loads(body.group(1)), headers=headers, timeout=60)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["reasoning"]
    assert httpx.get(f"http://127.0.0.1:{port}/healthz").json()["policy"]["name"] == "kr-default"


def test_up_with_prometheus_scrapes_the_stack(running_up: tuple[subprocess.Popen[str], Output, int]) -> None:
    _, output, port = running_up
    prometheus = re.search(r"Prometheus   (http://127\.0\.0\.1:\d+)", "\n".join(output.lines))
    assert prometheus, output.lines
    deadline = time.monotonic() + 30  # Prometheus hands new targets to its scrapers every 5 s
    while not (up := httpx.get(f"{prometheus.group(1)}/api/v1/query", params={"query": "up"}).json()["data"]["result"]):
        assert time.monotonic() < deadline, "Prometheus never scraped the stack"
        time.sleep(0.5)
    assert up[0]["metric"]["instance"] == f"127.0.0.1:{port}"
    assert up[0]["value"][1] == "1", "the scrape is authenticated with the monitoring key"
    rules = httpx.get(f"{prometheus.group(1)}/api/v1/rules").json()["data"]["groups"]
    assert {group["name"] for group in rules} == {"sovereign-slo-recording", "sovereign-alerts"}


def test_up_starts_the_registry_with_the_tiny_model_registered(
    running_up: tuple[subprocess.Popen[str], Output, int],
) -> None:
    _, output, _ = running_up
    registry = re.search(r"Registry UI  (http://127\.0\.0\.1:\d+)", "\n".join(output.lines))
    assert registry, output.lines
    found = httpx.get(f"{registry.group(1)}/api/2.0/mlflow/registered-models/get", params={"name": "axk1-tiny"})
    assert found.status_code == 200, "the first start registers the tiny model, so the UI is never empty"
    # `sovereign registry` finds the running embedded registry by itself.
    status = subprocess.run(
        [sys.executable, "-m", "sovereign", "registry", "status", "axk1-tiny", "--json"],
        capture_output=True,
        text=True,
        env={key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"},
        timeout=120,
    )
    assert status.returncode == 0, status.stderr
    (version,) = json.loads(status.stdout)
    assert version["tags"]["sovereign.residency.site"] == "local"
    assert version["aliases"] == [], "never promoted: approval needs two people"


def test_a_promotion_is_counted_in_the_stacks_metrics(running_up: tuple[subprocess.Popen[str], Output, int]) -> None:
    """`sovereign registry promote` is a separate process; its count still reaches the gateway's /metrics."""
    _, _, port = running_up
    # As a user's shell: no registry, OpenBao or metrics directory inherited from the test session's own stack.
    inherited = ("MLFLOW_TRACKING_URI", "VAULT_ADDR", METRICS_DIR_ENV)
    environment = {key: value for key, value in os.environ.items() if key not in inherited}

    def sovereign(*arguments: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
        extra = {"SOVEREIGN_API_KEY": key} if key else {}
        return subprocess.run(
            [sys.executable, "-m", "sovereign", *arguments],
            capture_output=True,
            text=True,
            env={**environment, **extra, "COLUMNS": "200"},
            timeout=120,
        )

    approver = sovereign("keys", "create", "--tenant", "local", "--role", "model-admin", "--name", "officer")
    monitor = sovereign("keys", "create", "--tenant", "platform", "--role", "monitoring", "--name", "scraper")
    promoted = sovereign("registry", "promote", "axk1-tiny", "1", "--ticket", "SEC-1", key=approver.stdout.split()[-1])
    assert promoted.returncode == 0, promoted.stderr
    metrics = httpx.get(
        f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {monitor.stdout.split()[-1]}"}
    ).text
    samples = {
        (sample.labels["result"], sample.labels["gate"]): sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "sovereign_registry_promotions_total"
    }
    assert samples[("allowed", "none")] == 1
    assert samples[("refused", "four_eyes")] == 0


def test_ctrl_c_shuts_down_cleanly(running_up: tuple[subprocess.Popen[str], Output, int]) -> None:
    process, output, port = running_up
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0
    assert output.rest(timeout=10)[-1] == "Stopped."
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz")
    registry = re.search(r"Registry UI  (http://\S+)", "\n".join(output.lines))
    assert registry
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{registry.group(1)}/health")


def processes_with(marker: str) -> list[str]:
    """The command lines of live processes whose environment holds `marker`: everything a run started."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/environ", "rb") as environ:
                if marker.encode() not in environ.read():
                    continue
            with open(f"/proc/{entry}/status") as status:
                if "State:\tZ" in status.read():
                    continue  # exited, not yet reaped by its parent
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                found.append(cmdline.read().replace(b"\0", b" ").decode(errors="replace"))
    return found


def test_a_start_that_fails_halfway_names_the_step_and_the_log_and_leaves_nothing_running(
    tmp_path: Path, allocate_port: Callable[[], int]
) -> None:
    """OpenBao, MLflow and Ray are up when the audit log cannot be opened (its directory is a file)."""
    (tmp_path / "audit").write_text("not a directory")
    run = f"halfway-{os.getpid()}"
    environment = {**os.environ, "SOVEREIGN_STATE_DIR": str(tmp_path), "COLUMNS": "200", "SOVEREIGN_TEST_RUN": run}
    arguments = ["--port", str(allocate_port()), "--registry-port", str(allocate_port())]
    result = subprocess.run(
        [sys.executable, "-m", "sovereign", "up", *arguments],
        capture_output=True,
        text=True,
        env=environment,
        timeout=240,
        start_new_session=True,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    log = tmp_path / "sovereign.log"
    assert result.stderr.splitlines() == [
        f"error: Opening the audit log failed: FileExistsError: [Errno 17] File exists: '{tmp_path / 'audit'}'",
        f"hint: the full traceback is in {log}; fix what it names and run the command again",
    ]
    assert "Traceback" not in result.stdout + result.stderr
    assert "Traceback (most recent call last)" in log.read_text()
    assert "✓ Starting Ray" in result.stdout, "the failure came after OpenBao, the registry and Ray had started"
    deadline = time.monotonic() + 30  # Ray's workers exit on their own once the raylet is gone
    while left := processes_with(f"SOVEREIGN_TEST_RUN={run}"):
        assert time.monotonic() < deadline, f"left running: {left}"
        time.sleep(0.2)
