"""A local Prometheus for the embedded stack: scraping the gateway's /metrics, with the alert rules loaded.

Used by `sovereign up --prometheus` and by the end-to-end monitoring test, so both run the same
configuration. Needs the `prometheus` binary (Debian: `apt-get install prometheus`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from monitoring.alerts import RULES_FILE
from policies.processes import spawn, stop_process, stop_stale, wait_until_ready


class PrometheusUnavailable(RuntimeError):
    """The binary is missing, or the server did not start."""


@dataclass
class PrometheusServer:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def stop(self) -> None:
        stop_process(self.process, timeout=15)


def write_config(directory: Path, target: str, api_key: str, scrape_interval: str = "15s") -> Path:
    """A config scraping `target` (host:port) with a bearer key kept in a 0600 file beside it."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_file = directory / "gateway.key"
    descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(api_key)
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [str(RULES_FILE)],
        "scrape_configs": [
            {
                "job_name": "sovereign-gateway",
                "metrics_path": "/metrics",
                "authorization": {"type": "Bearer", "credentials_file": str(key_file)},
                "static_configs": [{"targets": [target]}],
            }
        ],
    }
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start(config: Path, port: int, data_dir: Path, host: str = "127.0.0.1") -> PrometheusServer:
    binary = shutil.which("prometheus")
    if binary is None:
        raise PrometheusUnavailable("the `prometheus` binary is not installed; on Debian: apt-get install prometheus")
    log_path = data_dir / "prometheus.log"
    command = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={data_dir / 'tsdb'}",
        f"--web.listen-address={host}:{port}",
        "--web.enable-lifecycle",
    ]
    pid_file = data_dir / "prometheus.pid"
    stop_stale(pid_file, "prometheus")
    process = spawn(command, log_path)
    pid_file.write_text(str(process.pid))
    server = PrometheusServer(process, f"http://{host}:{port}", log_path)

    def ready() -> bool:
        try:
            return httpx.get(f"{server.url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    if (problem := wait_until_ready(process, ready, "prometheus", log_path)) is not None:
        raise PrometheusUnavailable(problem)
    return server
