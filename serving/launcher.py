"""Start and stop the embedded stack: local Ray, Ray Serve on loopback, the OpenAI app.

Everything that can be checked cheaply (policy site, checkpoint, port) is checked before Ray
starts, so a mistake costs a second and a clear message rather than a half-started cluster.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import getpass
import logging
import os
import shutil
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hvac

from monitoring import prometheus as local_prometheus
from monitoring.prometheus import PrometheusServer
from policies import ResidencyPolicy
from policies.access import Roles, Tenant
from policies.audit import AuditLog, open_log
from policies.openbao import (
    APPROVAL_KEY,
    GATEWAY_POLICY,
    AccessStore,
    BaoServer,
    OpenBaoRefused,
    OpenBaoUnavailable,
    TransitSigner,
    bootstrap,
    connect,
    issue_token,
    save_tenant,
    start_embedded_server,
)
from policies.state import (
    METRICS_DIR_ENV,
    STARTED_MARKER,
    embedded_openbao_dir,
    embedded_registry_dir,
    metrics_dir,
)
from serving import registry_server
from serving.app import build_app, require_in_country_site, resolve_model
from serving.checkpoint import ModelCard, inspect_checkpoint
from serving.config import AccessConfig, ServingConfig
from serving.registry_server import RegistryServer
from serving.tiny_model import TINY_MODEL_ID, default_cache_dir

if TYPE_CHECKING:
    from serving.registry import Registry

APP_NAME = "sovereign"
# The embedded stack's own tenant, and the name of the key `sovereign up` prints (replaced at each start).
LOCAL_TENANT = "local"
DEV_KEY_NAME = "sovereign up"
PROMETHEUS_KEY_NAME = "sovereign up prometheus"

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
class AccessSetup:
    """OpenBao as the stack uses it: the server it started (if any), the gateway's settings, the dev key."""

    access: AccessConfig
    server: BaoServer | None
    dev_key: str | None

    def operator_client(self) -> hvac.Client:
        """The operator's client: the embedded server's root token, or $VAULT_TOKEN / AppRole for --vault-addr."""
        return self.server.client() if self.server is not None else connect(self.access.vault_addr)

    def stop(self) -> None:
        """Revoke the gateway's token (it is issued anew at each start), then stop the embedded server."""
        # Unreachable or already gone: the token then expires on its own.
        with contextlib.suppress(OpenBaoUnavailable, OpenBaoRefused):
            AccessStore(connect(self.access.vault_addr, self.access.vault_token.get_secret_value())).revoke_token()
        if self.server is not None:
            self.server.stop()


@dataclass
class RunningStack:
    config: ServingConfig
    card: ModelCard
    started_ray: bool
    audit: AuditLog
    openbao: AccessSetup
    prometheus: PrometheusServer | None = None
    registry: RegistryServer | None = None
    registry_uri: str | None = None
    follower: AliasFollower | None = None

    @property
    def base_url(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{self.config.port}"

    def stop(self) -> None:
        """Stop the stack: Prometheus, Ray (or Serve) and the registry, record the stop, then OpenBao (the log
        signs with it)."""
        if self.follower is not None:
            self.follower.stop()
        if self.prometheus is not None:
            self.prometheus.stop()
        stop_ray(self.started_ray, self.config.resolved_state_dir())
        if self.registry is not None:
            self.registry.stop()
        self.record_stop()
        self.openbao.stop()

    def record_stop(self) -> None:
        self.audit.append("admin", action="stack.stop", principal=_operator(), model=self.card.id)


def stop_ray(started_ray: bool, state_dir: Path) -> None:
    """Stop Serve, or the whole local Ray cluster (Serve included) when this stack started it."""
    import ray
    from ray import serve

    if started_ray:
        ray.shutdown()
        shutil.rmtree(metrics_dir(state_dir, os.getpid()), ignore_errors=True)
    else:
        serve.shutdown()


def check_port_free(host: str, port: int, option: str = "--port") -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise PortInUse(
                    f"port {port} on {host} is already in use; stop what holds it or choose another with {option}"
                ) from None
            raise PortInUse(f"cannot listen on {host}:{port}: {error.strerror}") from None


def start_stack(
    config: ServingConfig,
    policy: ResidencyPolicy,
    step: Callable[[str], None] = lambda _: None,
    announce: Callable[[str], None] = lambda _: None,
) -> RunningStack:
    """Check, start Ray if needed, deploy the app and wait until it serves.

    `step` names each start-up step as it begins; `announce` receives what happens later (rollouts).
    """
    require_in_country_site(policy, config.site)
    check_port_free(config.host, config.port)
    if config.prometheus_port is not None:
        require_prometheus()
        check_port_free(config.host, config.prometheus_port, "--prometheus-port")
    if config.registry_port is not None:
        check_port_free(config.host, config.registry_port, "--registry-port")
    if config.model_uri is None:
        step("Preparing the model checkpoint")
        card = resolve_model(config)
    # Each part started is stopped again, newest first, if a later step fails; on success the stack owns them.
    with contextlib.ExitStack() as undo:
        # The registry takes seconds to start: it warms up while OpenBao and Ray do.
        registry = _start_registry(config)
        if registry is not None:
            undo.callback(registry.stop)
        step("Starting OpenBao" if config.vault_addr is None else f"Connecting to OpenBao at {config.vault_addr}")
        openbao = prepare_openbao(config, policy)
        undo.callback(openbao.stop)
        if config.model_uri is not None:
            step(f"Fetching {config.model_uri} and verifying its checksums")
            if registry is not None:
                registry.wait_ready()
            address = config.registry_uri or _address(registry)
            card = checkout_from_registry(config, _registry_for(policy, openbao, address))
        app = build_app(config, policy, card, openbao.access)

        step("Starting Ray")
        os.environ.update(EMBEDDED_ENVIRONMENT)
        import ray
        from ray import serve

        # Serve's INFO lines would interleave with the command's own progress output.
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        started_ray = not ray.is_initialized()
        if started_ray:
            # Every Ray process of this stack inherits it: the gateway's /metrics then merges all replicas.
            os.environ[METRICS_DIR_ENV] = str(fresh_metrics_dir(config.resolved_state_dir()))
            ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        undo.callback(stop_ray, started_ray, config.resolved_state_dir())
        step("Opening the audit log")
        gateway = connect(openbao.access.vault_addr, openbao.access.vault_token.get_secret_value())
        audit = open_log(config.resolved_state_dir(), TransitSigner(gateway))
        registry_uri = config.registry_uri or (registry.address if registry else None)
        stack = RunningStack(config, card, started_ray, audit, openbao, registry=registry, registry_uri=registry_uri)
        step("Deploying the model server and the OpenAI API on Ray Serve")
        try:
            serve.start(http_options={"host": config.host, "port": config.port})
            serve.run(app, name=APP_NAME, route_prefix="/")
        except RuntimeError as error:
            raise DeploymentFailed(_deployment_failure(serve) or str(error)) from None
        audit.append(
            "admin",
            action="stack.start",
            principal=_operator(),
            site=config.site,
            model=card.id,
            policy=policy.metadata.name,
            policySha256=policy.digest(),
        )
        undo.callback(stack.record_stop)
        if config.prometheus_port is not None:
            step("Starting Prometheus")
            stack.prometheus = start_local_prometheus(stack, policy)
            undo.callback(stack.prometheus.stop)
        if registry is not None:
            step("Starting the model registry (MLflow)")
            registry.wait_ready()
            if config.model_uri is None and config.model_path is None:
                register_tiny_model(registry.address, policy, openbao, card)
        if config.follow_seconds is not None:
            stack.follower = AliasFollower(stack, policy, announce)
            stack.follower.start()
        undo.pop_all()
    return stack


def _start_registry(config: ServingConfig) -> RegistryServer | None:
    if config.registry_port is None:
        return None
    directory = embedded_registry_dir(config.resolved_state_dir())
    return registry_server.start(directory, config.registry_port, config.host)


def _address(registry: RegistryServer | None) -> str:
    return registry.address if registry is not None else ""


def _registry_for(policy: ResidencyPolicy, openbao: AccessSetup, address: str) -> Registry:
    from serving.registry import Registry

    return Registry(address, policy, TransitSigner(openbao.operator_client(), key=APPROVAL_KEY))


def checkout_from_registry(config: ServingConfig, registry: Registry) -> ModelCard:
    """Resolve `models:/NAME@ALIAS`, check its approval, download it and verify every file before it loads."""
    from serving.registry import ModelReference

    assert config.model_uri is not None
    reference = ModelReference.parse(config.model_uri)
    checkout = registry.checkout(reference, config.cache_dir or default_cache_dir())
    card = inspect_checkpoint(checkout.path, config.served_model_name or reference.name)
    return dataclasses.replace(card, revision=checkout.revision)


class AliasFollower:
    """Rolls out the version an alias points at once it is promoted and verified; the running one serves meanwhile.

    Ray Serve updates the deployments in place: new replicas load the new version, and old ones serve until
    they are ready. A version that cannot be verified is never rolled out; the reason is announced once.
    """

    def __init__(self, stack: RunningStack, policy: ResidencyPolicy, announce: Callable[[str], None]) -> None:
        self.stack, self.policy, self.announce = stack, policy, announce
        self._stopped = threading.Event()
        self._last_problem = ""
        self._thread = threading.Thread(target=self._follow, name="alias-follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=60)

    def check_once(self) -> bool:
        """Roll out the alias's version if it changed; True when it did."""
        from ray import serve

        from serving.registry import ModelReference, revision_of

        config = self.stack.config
        assert config.model_uri is not None
        reference = ModelReference.parse(config.model_uri)
        registry = _registry_for(self.policy, self.stack.openbao, self.stack.registry_uri or "")
        if revision_of(reference.name, registry.version_of(reference)) == self.stack.card.revision:
            return False
        card = checkout_from_registry(config, registry)
        serve.run(build_app(config, self.policy, card, self.stack.openbao.access), name=APP_NAME, route_prefix="/")
        previous, self.stack.card = self.stack.card.revision, card
        self.stack.audit.append(
            "admin",
            action="model.rollout",
            principal=_operator(),
            model=card.id,
            revision=card.revision,
            previous=previous,
        )
        self.announce(f"{config.model_uri} moved: now serving {card.revision} (was {previous})")
        return True

    def _follow(self) -> None:
        assert self.stack.config.follow_seconds is not None
        while not self._stopped.wait(self.stack.config.follow_seconds):
            try:
                self.check_once()
                self._last_problem = ""
            except Exception as error:  # one failed check (registry, OpenBao, Serve) must not end the following
                if str(error) != self._last_problem:
                    self._last_problem = str(error)
                    self.announce(f"still serving {self.stack.card.revision}: {error}")


def register_tiny_model(address: str, policy: ResidencyPolicy, openbao: AccessSetup, card: ModelCard) -> None:
    """On the first start, register the tiny model so the registry UI is never empty (never promoted)."""
    from serving.registry import Registrant

    registry = _registry_for(policy, openbao, address)
    if registry.has_model(TINY_MODEL_ID):
        return
    roles = Roles(policy)
    principal = roles.principal(policy.spec.access.operator_tenant, "sovereign-up", "model-admin", "api-key")
    registry.register(
        card.path,
        TINY_MODEL_ID,
        Registrant(principal, f"sovereign up, {_operator()}"),
        datasets=[],
        license_name="none: random weights from a fixed seed, for trying the stack",
        description="The tiny A.X K1-architecture model `sovereign up` builds locally (random weights).",
    )


def start_local_prometheus(stack: RunningStack, policy: ResidencyPolicy) -> PrometheusServer:
    """Prometheus scraping this stack with a `monitoring` key of the operator tenant (replaced at each start)."""
    assert stack.config.prometheus_port is not None
    store = AccessStore(stack.openbao.operator_client())
    operator_tenant = _ensure_operator_tenant(store, policy)
    key = _replace_key(store, operator_tenant, "monitoring", PROMETHEUS_KEY_NAME)
    directory = stack.config.resolved_state_dir() / "prometheus"
    target = stack.base_url.removeprefix("http://")
    config = local_prometheus.write_config(directory, target, key)
    return local_prometheus.start(config, stack.config.prometheus_port, directory, stack.config.host)


def fresh_metrics_dir(state_dir: Path) -> Path:
    """This stack's multiprocess metrics directory: one per launcher process, so stacks never share one."""
    directory = metrics_dir(state_dir, os.getpid())
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    (directory / STARTED_MARKER).touch()
    return directory


def prepare_openbao(config: ServingConfig, policy: ResidencyPolicy) -> AccessSetup:
    """Start the embedded OpenBao (or reach the one given), bootstrap it and issue the gateway's token.

    On the embedded stack it also creates the local tenant and a fresh `model-user` key for it.
    """
    server = None
    if config.vault_addr is None:
        server = start_embedded_server(
            embedded_openbao_dir(config.resolved_state_dir()), free_port(config.host), free_port(config.host)
        )
        client = server.client()
    else:
        client = connect(config.vault_addr)
    try:
        bootstrap(client)
        access = AccessConfig(
            vault_addr=server.address if server else str(config.vault_addr),
            vault_token=issue_token(client, GATEWAY_POLICY, display_name="sovereign-gateway"),
        )
        dev_key = _local_dev_key(AccessStore(client), policy) if server else None
    except BaseException:
        if server is not None:
            server.stop()
        raise
    return AccessSetup(access, server, dev_key)


def _local_dev_key(store: AccessStore, policy: ResidencyPolicy) -> str:
    """The embedded stack's tenants and a new model-user key; the previous start's key is revoked."""
    _ensure_tenant(store, policy, Tenant(name=LOCAL_TENANT, description="The embedded stack's own tenant."))
    _ensure_operator_tenant(store, policy)
    return _replace_key(store, LOCAL_TENANT, "model-user", DEV_KEY_NAME)


def _ensure_tenant(store: AccessStore, policy: ResidencyPolicy, tenant: Tenant) -> None:
    """Create the tenant unless it exists; an operator's changes to an existing one are kept."""
    if store.tenant(tenant.name) is None:
        save_tenant(store, policy, tenant)


def _ensure_operator_tenant(store: AccessStore, policy: ResidencyPolicy) -> str:
    name = policy.spec.access.operator_tenant
    _ensure_tenant(store, policy, Tenant(name=name, description="The platform operator."))
    return name


def _replace_key(store: AccessStore, tenant: str, role: str, name: str) -> str:
    """A new key named `name`, revoking the one the previous start made."""
    for key in store.keys(tenant):
        if key.name == name and key.revoked is None:
            store.revoke_key(key.key_id)
    return store.create_key(tenant, role, name, created_by=f"sovereign-up:{_operator()}")[1]


def require_prometheus() -> None:
    if shutil.which("prometheus") is None:
        raise local_prometheus.PrometheusUnavailable(
            "--prometheus needs the `prometheus` binary; install it (Debian: apt-get install prometheus)"
        )


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, chosen by the kernel."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


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
