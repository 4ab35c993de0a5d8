"""Where an installation keeps its state: the audit log, its key, and the embedded OpenBao."""

from __future__ import annotations

import os
from pathlib import Path


def default_state_dir() -> Path:
    """$SOVEREIGN_STATE_DIR, else $XDG_STATE_HOME/sovereign-stack (~/.local/state/sovereign-stack)."""
    configured = os.environ.get("SOVEREIGN_STATE_DIR")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "sovereign-stack"


def embedded_openbao_dir(state_dir: Path | None = None) -> Path:
    return (state_dir or default_state_dir()) / "openbao"


# The stack's shared metrics directory, inherited by every process that counts into its /metrics.
METRICS_DIR_ENV = "SOVEREIGN_METRICS_DIR"
# Written once when a stack creates its metrics directory: when it started, which file times do not
# tell (the directory changes whenever a process of the stack creates its file).
STARTED_MARKER = ".started"


def embedded_registry_dir(state_dir: Path | None = None) -> Path:
    return (state_dir or default_state_dir()) / "registry"


def metrics_dir(state_dir: Path, pid: int) -> Path:
    """The multiprocess metrics directory of the stack launched by process `pid`."""
    return state_dir / "metrics" / str(pid)


def running_stack_metrics_dir(state_dir: Path | None = None) -> Path | None:
    """The metrics directory of the last `sovereign up` started and still running, so commands count into it."""
    root = (state_dir or default_state_dir()) / "metrics"
    running = [
        directory
        for directory in root.glob("[0-9]*")
        if (directory / STARTED_MARKER).exists() and _alive(int(directory.name))
    ]
    return max(running, key=lambda directory: (directory / STARTED_MARKER).stat().st_mtime, default=None)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
