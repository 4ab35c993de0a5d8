"""`SovereignCluster`: an existing in-country Kubernetes cluster, made ready for the stack and given it.

Namespaces carry the residency label and a Pod Security level; every chart is pinned and pulled from
the in-country mirror, with its images rewritten to the mirror; then the project's own charts go in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.config import SiteConfig
from infra.crossguard import RESIDENCY_LABEL, SITES_ANNOTATION
from operators.admission_policies import GOVERNED_LABEL, residency_node_labels
from policies import ResidencyPolicy

PASSWORD_KEY = "password"
GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


@dataclass(frozen=True)
class NamespacePlan:
    name: str
    pod_security: str
    governed: bool


@dataclass
class SovereignClusterArgs:
    site: SiteConfig
    policy: ResidencyPolicy
    kubeconfig: pulumi.Input[str] | None
    postgres_password: pulumi.Input[str]


def namespace_plans(site: SiteConfig) -> list[NamespacePlan]:
    """GPU Operator and node exporters need host access, so their namespaces are privileged and not governed
    by the admission policies; the stack's own namespaces are."""
    return [
        NamespacePlan("gpu-operator", "privileged", governed=False),
        NamespacePlan("monitoring", "privileged", governed=False),
        NamespacePlan("kuberay-system", "baseline", governed=True),
        NamespacePlan(site.namespace, "restricted", governed=True),
        *(NamespacePlan(name, "baseline", governed=True) for name in site.model_namespaces),
    ]


def namespace_metadata(plan: NamespacePlan, site: SiteConfig, policy: ResidencyPolicy) -> dict[str, Any]:
    labels = {
        RESIDENCY_LABEL: policy.spec.jurisdiction.code,
        "pod-security.kubernetes.io/enforce": plan.pod_security,
        "pod-security.kubernetes.io/warn": plan.pod_security,
        "app.kubernetes.io/part-of": "sovereign-stack",
        "app.kubernetes.io/managed-by": "pulumi",
    }
    if plan.governed:
        labels[GOVERNED_LABEL] = "true"
    return {"name": plan.name, "labels": labels, "annotations": {SITES_ANNOTATION: ",".join(site.sites)}}


def gpu_operator_values(site: SiteConfig) -> dict[str, Any]:
    nvidia = f"{site.registry_mirror}/nvidia"
    return {
        "operator": {"repository": nvidia},
        "driver": {"repository": nvidia},
        "toolkit": {"repository": f"{nvidia}/k8s"},
        "devicePlugin": {"repository": nvidia},
        "dcgmExporter": {"repository": f"{nvidia}/k8s", "serviceMonitor": {"enabled": True}},
        "gfd": {"repository": nvidia},
        "migManager": {"repository": f"{nvidia}/cloud-native"},
        "validator": {"repository": f"{nvidia}/cloud-native"},
        "node-feature-discovery": {"image": {"repository": f"{site.registry_mirror}/nfd/node-feature-discovery"}},
        "daemonsets": {"tolerations": [GPU_TAINT]},
    }


def kuberay_values(site: SiteConfig, policy: ResidencyPolicy) -> dict[str, Any]:
    return {
        "image": {"repository": f"{site.registry_mirror}/kuberay/operator"},
        "nodeSelector": residency_node_labels(policy),
    }


def monitoring_values(site: SiteConfig, policy: ResidencyPolicy) -> dict[str, Any]:
    """kube-prometheus-stack: Grafana's sidecar loads the stack's dashboard ConfigMaps from every namespace."""
    return {
        "global": {"imageRegistry": site.registry_mirror},
        "grafana": {
            "image": {"registry": site.registry_mirror},
            "sidecar": {
                "dashboards": {
                    "enabled": True,
                    "label": "grafana_dashboard",
                    "labelValue": "1",
                    "searchNamespace": "ALL",
                }
            },
        },
        "prometheus": {
            "prometheusSpec": {
                # Pick up the ServiceMonitors and PrometheusRules of every release, not only this chart's.
                "serviceMonitorSelectorNilUsesHelmValues": False,
                "ruleSelectorNilUsesHelmValues": False,
                "nodeSelector": residency_node_labels(policy),
            }
        },
    }


def postgresql_values(site: SiteConfig, policy: ResidencyPolicy, secret_name: str) -> dict[str, Any]:
    return {
        "global": {"imageRegistry": site.registry_mirror},
        "auth": {
            "database": site.postgresql.database,
            "username": site.postgresql.user,
            "existingSecret": secret_name,
            "secretKeys": {"userPasswordKey": PASSWORD_KEY, "adminPasswordKey": PASSWORD_KEY},
        },
        "primary": {"nodeSelector": residency_node_labels(policy)},
    }


def stack_values(site: SiteConfig, database_host: str, secret_name: str) -> dict[str, Any]:
    """Values of charts/sovereign-stack (checked against its values.schema.json in the tests)."""
    return {
        "global": {"imageRegistry": site.registry_mirror},
        "gateway": {"site": site.sites[0]},
        "mlflow": {
            "database": {
                "host": database_host,
                "port": site.postgresql.port,
                "name": site.postgresql.database,
                "user": site.postgresql.user,
                # The in-cluster server speaks plain TCP inside the namespace's NetworkPolicy.
                "sslMode": "disable" if site.postgresql.mode == "in-cluster" else "require",
                "passwordSecret": {"name": secret_name, "key": PASSWORD_KEY},
            },
            "artifacts": {
                "bucket": site.artifacts.bucket,
                "prefix": site.artifacts.prefix,
                "endpoint": site.artifacts.endpoint,
            },
        },
        "openbao": {
            "address": site.openbao.address,
            "kubernetesAuth": {"mountPath": site.openbao.kubernetes_auth_mount},
        },
    }


class SovereignCluster(pulumi.ComponentResource):
    """Namespaces, GPU Operator, KubeRay, kube-prometheus-stack, MLflow's PostgreSQL and the stack's charts."""

    namespaces: pulumi.Output[list[str]]
    provider: k8s.Provider

    def __init__(self, name: str, args: SovereignClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("sovereign:index:SovereignCluster", name, None, opts)
        site, policy = args.site, args.policy
        self.provider = k8s.Provider(
            f"{name}-k8s", kubeconfig=args.kubeconfig, opts=pulumi.ResourceOptions(parent=self)
        )
        child = pulumi.ResourceOptions(parent=self, provider=self.provider)

        namespaces = {
            plan.name: k8s.core.v1.Namespace(
                f"{name}-{plan.name}", metadata=namespace_metadata(plan, site, policy), opts=child
            )
            for plan in namespace_plans(site)
        }

        def release(chart: str, namespace: str, values: dict[str, Any], version: str | None, *after: Any) -> Any:
            in_namespace = pulumi.ResourceOptions.merge(
                child, pulumi.ResourceOptions(depends_on=[namespaces[namespace], *after])
            )
            mirrored = version is not None  # third-party charts come from the mirror; ours from this checkout
            release_name = chart.rsplit("/", 1)[-1]
            return k8s.helm.v3.Release(
                f"{name}-{release_name}",
                name=release_name,
                chart=chart,
                version=version,
                repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=site.chart_repository) if mirrored else None,
                namespace=namespace,
                create_namespace=False,
                values=values,
                opts=in_namespace,
            )

        release("gpu-operator", "gpu-operator", gpu_operator_values(site), site.charts.gpu_operator)
        release("kuberay-operator", "kuberay-system", kuberay_values(site, policy), site.charts.kuberay_operator)
        monitoring = release(
            "kube-prometheus-stack", "monitoring", monitoring_values(site, policy), site.charts.kube_prometheus_stack
        )

        secret_name = "mlflow-postgresql"
        password = k8s.core.v1.Secret(
            f"{name}-mlflow-postgresql",
            metadata={"name": secret_name, "namespace": site.namespace},
            string_data={PASSWORD_KEY: args.postgres_password},
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[namespaces[site.namespace]])),
        )
        database_host = site.postgresql.host or ""
        database: list[Any] = []
        if site.postgresql.mode == "in-cluster":
            database = [
                release(
                    "postgresql",
                    site.namespace,
                    postgresql_values(site, policy, secret_name),
                    site.charts.postgresql,
                    password,
                )
            ]
            database_host = f"postgresql.{site.namespace}.svc"

        charts = site.charts_dir()
        crds = release(str(charts / "sovereign-stack-crds"), site.namespace, {}, None)
        release(
            str(charts / "sovereign-stack"),
            site.namespace,
            stack_values(site, database_host, secret_name),
            None,
            crds,
            monitoring,
            password,
            *database,
        )

        self.namespaces = pulumi.Output.all(*(ns.metadata["name"] for ns in namespaces.values()))
        self.register_outputs({"namespaces": self.namespaces})
