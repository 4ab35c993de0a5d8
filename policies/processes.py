"""Child processes the stack starts and owns (OpenBao, Prometheus)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def spawn(command: list[str], log_path: Path, environment: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a server with its output appended to `log_path`, which error messages then name.

    `environment` adds to this process's environment for the server only.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(environment or {})},
        )


def wait_until_ready(
    process: subprocess.Popen[bytes], ready: Callable[[], bool], name: str, log_path: Path, timeout: float = 30.0
) -> str | None:
    """Poll `ready` until it is true: None. Otherwise what went wrong, naming the log; a hung server is stopped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"{name} exited with code {process.returncode}; see {log_path}"
        if ready():
            return None
        time.sleep(0.05)
    stop_process(process, timeout=10)
    return f"{name} did not become ready within {timeout:g} s; see {log_path}"


def stop_process(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, so the server shuts down cleanly; SIGKILL if it has not within `timeout` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stop_stale(pid_file: Path, executable: str) -> None:
    """Stop a server a killed stack left running (it holds its port and storage), if the pid is still it."""
    try:
        pid = int(pid_file.read_text())
        if Path(f"/proc/{pid}/exe").resolve().name != executable:
            return
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + 10
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _running(pid: int) -> bool:
    """Alive and not a zombie (an exited child not yet reaped by its parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
