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


def embedded_registry_dir(state_dir: Path | None = None) -> Path:
    return (state_dir or default_state_dir()) / "registry"


def metrics_dir(state_dir: Path, pid: int) -> Path:
    """The multiprocess metrics directory of the stack launched by process `pid`."""
    return state_dir / "metrics" / str(pid)


def running_stack_metrics_dir(state_dir: Path | None = None) -> Path | None:
    """The metrics directory of a `sovereign up` still running, so commands can count into its /metrics."""
    root = (state_dir or default_state_dir()) / "metrics"
    for directory in sorted(root.glob("[0-9]*")):
        try:
            os.kill(int(directory.name), 0)
        except (OSError, ValueError):
            continue
        return directory
    return None
