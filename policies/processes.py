"""Child processes the stack starts and owns (OpenBao, Prometheus)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


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
