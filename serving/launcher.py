"""Start and stop the embedded stack: local Ray, Ray Serve on loopback, the OpenAI app.

Everything that can be checked cheaply (policy site, checkpoint, port) is checked before Ray
starts, so a mistake costs a second and a clear message rather than a half-started cluster.
"""

from __future__ import annotations

import errno
import getpass
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from policies import ResidencyPolicy
from policies.audit import AuditLog, open_log
from serving.app import build_app, require_in_country_site, resolve_model
from serving.checkpoint import ModelCard
from serving.config import ServingConfig

APP_NAME = "sovereign"

# Set before Ray starts so every Ray process inherits them.
EMBEDDED_ENVIRONMENT = {
    # The embedded cluster listens on loopback only; Ray 2.60 would otherwise demand a token.
    "RAY_AUTH_MODE": "disabled",
    # Nothing may phone home from a sovereign installation.
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


class PortInUse(RuntimeError):
    """The API port is already taken."""


class DeploymentFailed(RuntimeError):
    """A deployment of the app could not start; the message carries its replica's error."""


@dataclass
class RunningStack:
    config: ServingConfig
    card: ModelCard
    started_ray: bool
    audit: AuditLog

    @property
    def base_url(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{self.config.port}"

    def stop(self) -> None:
        """Stop the stack and record that in the audit log."""
        self.shut_down()
        self.audit.append("admin", action="stack.stop", principal=_operator(), model=self.card.id)

    def shut_down(self) -> None:
        """Stop Serve, or the whole local Ray cluster (Serve included) when this stack started it."""
        import ray
        from ray import serve

        if self.started_ray:
            ray.shutdown()
        else:
            serve.shutdown()


def check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise PortInUse(
                    f"port {port} on {host} is already in use; stop what holds it or choose another with --port"
                ) from None
            raise PortInUse(f"cannot listen on {host}:{port}: {error.strerror}") from None


def start_stack(
    config: ServingConfig, policy: ResidencyPolicy, step: Callable[[str], None] = lambda _: None
) -> RunningStack:
    """Check, start Ray if needed, deploy the app and wait until it serves."""
    require_in_country_site(policy, config.site)
    check_port_free(config.host, config.port)
    step("Preparing the model checkpoint")
    card = resolve_model(config)
    app = build_app(config, policy, card)

    step("Starting Ray")
    os.environ.update(EMBEDDED_ENVIRONMENT)
    import ray
    from ray import serve

    # Serve's INFO lines would interleave with the command's own progress output.
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    audit = open_log(config.resolved_state_dir())
    stack = RunningStack(config, card, started_ray, audit)
    step("Deploying the model server and the OpenAI API on Ray Serve")
    try:
        serve.start(http_options={"host": config.host, "port": config.port})
        serve.run(app, name=APP_NAME, route_prefix="/")
    except RuntimeError as error:
        cause = _deployment_failure(serve) or str(error)
        stack.shut_down()
        raise DeploymentFailed(cause) from None
    except BaseException:
        stack.shut_down()
        raise
    audit.append(
        "admin",
        action="stack.start",
        principal=_operator(),
        site=config.site,
        model=card.id,
        policy=policy.metadata.name,
        policySha256=policy.digest(),
    )
    return stack


def _operator() -> str:
    """Who ran the command, for admin audit records."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return f"uid:{os.getuid()}"


def _deployment_failure(serve: Any) -> str | None:
    """The last line of the first failed deployment's error, e.g. the exception its constructor raised."""
    application = serve.status().applications.get(APP_NAME)
    if application is None:
        return None
    for name, deployment in application.deployments.items():
        if deployment.status == "DEPLOY_FAILED" and deployment.message:
            lines = [line for line in deployment.message.strip().splitlines() if line.strip()]
            return f"deployment {name} failed to start: {lines[-1].strip()}"
    return None
