"""`sovereign operator`: run the Kubernetes operator, print its CRDs.

The operator wires the registry client (`serving.registry`) into the operator's `ModelResolver`
seam here, so `operators` itself never imports the registry client (of `serving` it uses only the pure
`serving.vllm` config builder).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import yaml

from operators.planning import ModelSize
from operators.reconcile import Resolution, ResolutionState, Settings
from policies import ResidencyPolicy
from sovereign.access_cli import VaultAddr
from sovereign.output import console, fail

if TYPE_CHECKING:
    from serving.registry import Registry

operator_app = typer.Typer(
    help="The Kubernetes operator: serves ModelDeployments on KubeRay under the cluster's ResidencyPolicy.",
    epilog=(
        "Installed by the Helm chart (charts/sovereign-stack); see docs/kubernetes.md.\n\n"
        "  [bold]sovereign operator crds | kubectl apply -f -[/bold]\n\n"
        "  [bold]sovereign operator run --namespace models[/bold]  (outside the cluster, with your kubeconfig)"
    ),
    rich_markup_mode="rich",
    no_args_is_help=True,
)


class RegistryResolver:
    """`ModelResolver` over the MLflow registry: the alias's version, if its signed approval verifies.

    The registry is opened on first use, so an operator that starts before MLflow does is not stuck.
    """

    def __init__(self, open_registry: Callable[[], Registry]) -> None:
        self.open_registry = open_registry
        self._registry: Registry | None = None

    def resolve(self, reference: str) -> Resolution:
        from policies.openbao import OpenBaoUnavailable
        from policies.registry import RegistryError
        from serving.registry import ModelReference, RegistryUnavailable, ServingRefused

        try:
            self._registry = self._registry or self.open_registry()
            approved = self._registry.resolve(ModelReference.parse(reference))
        except (RegistryUnavailable, OpenBaoUnavailable) as error:
            return Resolution(ResolutionState.REGISTRY_UNAVAILABLE, message=str(error))
        except (ServingRefused, RegistryError) as error:
            return Resolution(ResolutionState.NOT_APPROVED, message=str(error))
        size = ModelSize(approved.parameters_total, approved.parameters_active) if approved.parameters_total else None
        return Resolution(ResolutionState.RESOLVED, approved.version, size)


@operator_app.command()
def crds(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
) -> None:
    """Print the ModelDeployment and ResidencyPolicy CustomResourceDefinitions, generated from their models."""
    from operators.crds import custom_resource_definitions

    text = yaml.safe_dump_all(custom_resource_definitions(), sort_keys=False)
    if output is None:
        sys.stdout.write(text)
    else:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as error:
            fail(f"--output: cannot write {output}: {error.strerror}", "name a file in a folder that exists")
        console.print(f"Wrote the CRDs to {output}")


@operator_app.command()
def run(
    namespace: Annotated[
        list[str] | None,
        typer.Option("--namespace", "-n", help="Watch these namespaces only; repeat it. Unset: the whole cluster."),
    ] = None,
    registry_uri: Annotated[
        str, typer.Option(envvar="MLFLOW_TRACKING_URI", help="The MLflow registry the aliases are resolved in.")
    ] = Settings.registry_uri,
    vault_addr: VaultAddr = None,
    webhook_host: Annotated[
        str | None,
        typer.Option(
            envvar="SOVEREIGN_WEBHOOK_HOST",
            help="DNS name the API server calls the admission webhook at (the operator's Service). Unset: no webhook.",
        ),
    ] = None,
    webhook_port: Annotated[int, typer.Option(help="Port of the admission webhook (TLS).")] = 9443,
    webhook_cert_dir: Annotated[
        Path,
        typer.Option(
            envvar="SOVEREIGN_WEBHOOK_CERT_DIR",
            help="The webhook's TLS certificate: tls.crt, tls.key and ca.crt (a cert-manager Secret, mounted).",
        ),
    ] = Path("/etc/sovereign/webhook-tls"),
    health_port: Annotated[int, typer.Option(help="Port of the liveness endpoint /healthz.")] = 8080,
    metrics_port: Annotated[
        int, typer.Option(help="Port of /metrics: reconciliations, ModelDeployment conditions, admission reviews.")
    ] = 9090,
) -> None:
    """Run the operator: reconcile ModelDeployments and ResidencyPolicies, and answer admission reviews.

    Needs a kubeconfig or an in-cluster service account, the registry, and OpenBao (Kubernetes auth
    with $VAULT_K8S_ROLE) to verify approval signatures.
    """
    try:
        import kopf

        from operators import handlers  # noqa: F401  (importing registers the handlers)
        from operators.cluster import KubernetesCluster
        from policies import load_default_policy
        from policies.openbao import APPROVAL_KEY, TransitSigner, connect
        from serving.registry import Registry
    except ImportError as error:
        fail(f"the operator is not installed ({error.name} is missing)", "pip install 'sovereign-stack[operator]'")
    settings = Settings.from_environment()
    signer = TransitSigner(connect(vault_addr or settings.vault_addr), key=APPROVAL_KEY)
    # The registry client judges artifact stores by a policy; the cluster's own ResidencyPolicy replaces it
    # in the handlers as soon as it is loaded.
    registry_policy: ResidencyPolicy = load_default_policy()
    webhook = None
    if webhook_host is not None:
        missing = [name for name in ("tls.crt", "tls.key", "ca.crt") if not (webhook_cert_dir / name).is_file()]
        if missing:
            fail(
                f"--webhook-cert-dir {webhook_cert_dir}: {', '.join(missing)} missing",
                "mount the webhook's TLS Secret there (the Helm chart does, with cert-manager)",
            )
        webhook = kopf.WebhookServer(
            addr="0.0.0.0",  # the API server calls in through the Service
            port=webhook_port,
            host=webhook_host,
            certfile=str(webhook_cert_dir / "tls.crt"),
            pkeyfile=str(webhook_cert_dir / "tls.key"),
            cafile=str(webhook_cert_dir / "ca.crt"),
        )
    from kubernetes.config import ConfigException

    try:
        cluster = KubernetesCluster()
    except ConfigException as error:
        fail(f"no Kubernetes cluster to talk to: {error}", "run it in the cluster, or set KUBECONFIG")
    memo = kopf.Memo(
        cluster=cluster,
        resolver=RegistryResolver(lambda: Registry(registry_uri, registry_policy, signer)),
        settings=settings,
        policies={},
        webhook=webhook,
    )
    from prometheus_client import start_http_server

    from monitoring import catalogue

    catalogue.initialise_series()
    start_http_server(metrics_port, registry=catalogue.REGISTRY)
    kopf.run(
        clusterwide=not namespace,
        namespaces=namespace or [],
        standalone=True,
        liveness_endpoint=f"http://0.0.0.0:{health_port}/healthz",
        memo=memo,
    )
