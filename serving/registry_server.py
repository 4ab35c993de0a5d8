"""The embedded model registry: an MLflow server on loopback with SQLite and a local artifact store.

It proxies artifacts (`--serve-artifacts`), so clients upload and download through the server and
never hold storage credentials; in production the same server runs against PostgreSQL and an
S3-compatible in-country store (`backend_store_uri`, `artifacts_destination`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import requests

from policies.processes import spawn, stop_process, stop_stale, wait_until_ready
from policies.registry import REGISTRY_SERVER_ENVIRONMENT

STARTUP_SECONDS = 90.0


class RegistryServerFailed(RuntimeError):
    """The registry server did not start; the message names its log."""


@dataclass
class RegistryServer:
    process: subprocess.Popen[bytes]
    address: str
    directory: Path

    @property
    def log_path(self) -> Path:
        return self.directory / "mlflow.log"

    def wait_ready(self, timeout: float = STARTUP_SECONDS) -> None:
        """Block until the server answers /health; on failure it is stopped and the error names its log."""
        problem = wait_until_ready(self.process, lambda: _healthy(self.address), "mlflow", self.log_path, timeout)
        if problem is not None:
            _forget(self.directory)
            raise RegistryServerFailed(problem)

    def stop(self) -> None:
        # Stopped while it still creates or migrates its SQLite tables, MLflow leaves them half made and every
        # later start fails ("table ... already exists"): let it finish first (a stack that fails early does this).
        if self.process.poll() is None:
            wait_until_ready(self.process, lambda: _healthy(self.address), "mlflow", self.log_path, STARTUP_SECONDS)
        stop_process(self.process, timeout=15)
        _forget(self.directory)


def start(
    directory: Path,
    port: int,
    host: str = "127.0.0.1",
    backend_store_uri: str | None = None,
    artifacts_destination: str | None = None,
) -> RegistryServer:
    """Start the server without waiting for it (it takes seconds): call `wait_ready` before using it.

    Defaults keep everything under `directory`: `mlflow.db` (SQLite) and `artifacts/`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    pid_file = directory / "mlflow.pid"
    stop_stale(pid_file, Path(sys.executable).resolve().name)
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_store_uri or f"sqlite:///{(directory / 'mlflow.db').resolve()}",
        "--artifacts-destination",
        artifacts_destination or str((directory / "artifacts").resolve()),
        "--serve-artifacts",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    process = spawn(command, directory / "mlflow.log", REGISTRY_SERVER_ENVIRONMENT)
    pid_file.write_text(str(process.pid))
    display_host = f"[{host}]" if ":" in host else host
    server = RegistryServer(process, f"http://{display_host}:{port}", directory)
    (directory / "server.json").write_text(json.dumps({"address": server.address, "pid": process.pid}))
    return server


def running_address(directory: Path) -> str | None:
    """The address of the embedded registry a running `sovereign up` started, if one is running."""
    try:
        recorded = json.loads((directory / "server.json").read_text())
        os.kill(int(recorded["pid"]), 0)
        return str(recorded["address"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _forget(directory: Path) -> None:
    (directory / "server.json").unlink(missing_ok=True)


def _healthy(address: str) -> bool:
    try:
        return requests.get(f"{address}/health", timeout=1).ok
    except requests.RequestException:
        return False
