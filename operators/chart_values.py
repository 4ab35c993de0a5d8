"""The values of the `sovereign-stack` Helm chart, as pydantic models: the one source of its `values.yaml` and
`values.schema.json`.

What the residency policy decides (node labels, allowed networks, admission rules) is not a value: it is
generated into the chart from the policy (`sovereign chart generate`). Values only say how this installation
reaches its in-country services. Unknown keys are errors, so a typo fails `helm install` instead of being
ignored.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from operators.resources import MODEL_REFERENCE_PATTERN
from policies.model import Name

# Registries abroad that images must never come from, whatever the mirror's policy says.
PUBLIC_REGISTRIES = ("docker.io", "index.docker.io", "registry-1.docker.io", "ghcr.io", "quay.io", "gcr.io")
_PUBLIC_REGISTRY_PATTERN = "^(" + "|".join(host.replace(".", r"\.") for host in PUBLIC_REGISTRIES) + ")(:[0-9]+)?$"


def _not_public(host: str) -> str:
    if host.partition(":")[0] in PUBLIC_REGISTRIES:
        raise ValueError(f"{host} is a public registry abroad: give the in-country mirror")
    return host


# A registry host with an optional port, and no scheme or path: `registry.sovereign.kr`, `mirror.internal.kr:5000`.
RegistryHost = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]{1,5})?$"),
    AfterValidator(_not_public),
    Field(json_schema_extra={"not": {"pattern": _PUBLIC_REGISTRY_PATTERN}}),
]
# Kubernetes resource quantities as strings (`500m`, `2Gi`), so YAML never turns `1.0` into a float.
Quantity = Annotated[str, StringConstraints(pattern=r"^[0-9]+(\.[0-9]+)?(m|[KMGTPE]i?)?$")]
HttpsUrl = Annotated[str, StringConstraints(pattern=r"^https://[^\s/]+(/\S*)?$")]
Port = Annotated[int, Field(ge=1, le=65535)]
Cidr = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F:.]+/[0-9]{1,3}$")]


class _Values(BaseModel):
    """Strict base: unknown keys are errors, keys are camelCase."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class GlobalValues(_Values):
    image_registry: RegistryHost = Field(
        "registry.sovereign.kr",
        description="The in-country image mirror every image is pulled from; list it in the policy's "
        "`imageRegistries` too, or governed namespaces refuse the pods.",
    )


class Image(_Values):
    repository: str = Field(
        "sovereign-stack/sovereign",
        min_length=1,
        description="Repository of the sovereign-stack image under `global.imageRegistry`; every pod runs it.",
    )
    tag: str = Field("0.1.0", min_length=1, description="Image tag.")
    pull_policy: Literal["IfNotPresent", "Always", "Never"] = Field("IfNotPresent", description="Image pull policy.")
    pull_secrets: list[Name] = Field(
        default_factory=list, description="Names of Secrets holding the mirror's credentials, in the release namespace."
    )


class Resources(_Values):
    requests: dict[str, Quantity] = Field(default_factory=dict, description="Resources the scheduler reserves.")
    limits: dict[str, Quantity] = Field(default_factory=dict, description="Resources the container may not exceed.")


class SecretKey(_Values):
    name: Name = Field(description="Name of the Secret, in the release namespace.")
    key: str = Field(min_length=1, description="Key in the Secret.")


class Operator(_Values):
    enabled: bool = Field(True, description="Run the operator that turns ModelDeployments into RayServices.")
    replicas: int = Field(
        1, ge=1, le=1, description="Always 1: kopf handles each object in one process (it runs without peering)."
    )
    max_gpus: int = Field(64, ge=1, description="The most GPUs one ModelDeployment may ask for, at its most replicas.")
    ray_version: str = Field("2.60.0", min_length=1, description="Ray version of the RayServices the operator writes.")
    webhook_port: Port = Field(9443, description="Port of the admission webhook kopf serves for ModelDeployments.")
    webhook_tls_secret: str = Field(
        "",
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$",
        description="Secret with the webhook's `tls.crt`, `tls.key` and `ca.crt`; empty: cert-manager issues one "
        "from a self-signed Issuer in the release namespace.",
    )
    health_port: Port = Field(8080, description="Port of the liveness endpoint `/healthz`.")
    metrics_port: Port = Field(
        9090, description="Port of the operator's `/metrics` (reconciliations, conditions, admission reviews)."
    )
    metrics_secret: SecretKey = Field(
        default_factory=lambda: SecretKey(name="sovereign-metrics-key", key="apiKey"),
        description="Secret holding an API key with `metrics.read` (platform tenant): Prometheus sends it to "
        "scrape the gateway and the model servers.",
    )
    resources: Resources = Field(
        default_factory=lambda: Resources(
            requests={"cpu": "100m", "memory": "256Mi"}, limits={"cpu": "1", "memory": "512Mi"}
        ),
        description="Resources of the operator container.",
    )


class Upstream(_Values):
    name: Name = Field(description="Model id clients send to reach this upstream.")
    url: str = Field(
        pattern=r"^https?://", description="OpenAI-compatible base URL; the policy's egress must allow it."
    )


class GatewayService(_Values):
    type: Literal["ClusterIP"] = Field(
        "ClusterIP",
        description="Only ClusterIP: the residency policy forbids exposing the gateway through a load balancer or "
        "node port; put an in-country ingress in front of it.",
    )
    port: Port = Field(8000, description="Port of the OpenAI-compatible API.")


class Gateway(_Values):
    enabled: bool = Field(True, description="Run the OpenAI-compatible gateway (`sovereign up`).")
    replicas: int = Field(1, ge=1, description="Gateway pods.")
    model: str = Field(
        "models:/axk1-student@production",
        pattern=MODEL_REFERENCE_PATTERN,
        description="The registered model the gateway pod serves itself, as `models:/NAME@ALIAS`.",
    )
    site: Name = Field("kr-seoul-1", description="The policy site the gateway runs on; it must be in-country.")
    upstreams: list[Upstream] = Field(
        default_factory=list, description="OpenAI-compatible models the gateway also relays to."
    )
    service: GatewayService = Field(default_factory=GatewayService, description="The gateway's Service.")
    resources: Resources = Field(
        default_factory=lambda: Resources(
            requests={"cpu": "2", "memory": "8Gi"}, limits={"cpu": "4", "memory": "16Gi"}
        ),
        description="Resources of the gateway container (Ray, the ingress and the model it serves).",
    )


class Database(_Values):
    host: str = Field(
        "", description="Host of the external PostgreSQL server; required when `mlflow.enabled`.", max_length=253
    )
    port: Port = Field(5432, description="Port of the PostgreSQL server.")
    name: str = Field("mlflow", min_length=1, description="Database name.")
    user: str = Field("mlflow", min_length=1, description="Database user.")
    ssl_mode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = Field(
        "require", description="libpq `sslmode` of the connection."
    )
    password_secret: SecretKey = Field(
        default_factory=lambda: SecretKey(name="mlflow-postgresql", key="password"),
        description="Secret holding the user's password (passed as `PGPASSWORD`).",
    )


class ArtifactCredentials(_Values):
    name: Name = Field("mlflow-s3", description="Name of the Secret, in the release namespace.")
    access_key_id_key: str = Field("accessKeyId", min_length=1, description="Key holding the access key id.")
    secret_access_key_key: str = Field(
        "secretAccessKey", min_length=1, description="Key holding the secret access key."
    )


class Artifacts(_Values):
    bucket: str = Field("mlflow-artifacts", min_length=3, max_length=63, description="Bucket of the model artifacts.")
    prefix: str = Field("", description="Key prefix inside the bucket; empty: the bucket's root.")
    endpoint: HttpsUrl = Field(
        "https://s3.kr-seoul.sovereign.kr",
        description="The in-country S3-compatible endpoint (`MLFLOW_S3_ENDPOINT_URL`); https only.",
    )
    credentials_secret: ArtifactCredentials = Field(
        default_factory=ArtifactCredentials, description="Secret holding the S3 credentials."
    )


class Mlflow(_Values):
    enabled: bool = Field(True, description="Run the model registry (MLflow) against PostgreSQL and S3.")
    database: Database = Field(default_factory=Database, description="The external PostgreSQL backend store.")
    artifacts: Artifacts = Field(default_factory=Artifacts, description="The S3-compatible artifact store.")
    port: Port = Field(5000, description="Port of the registry server and its UI.")
    resources: Resources = Field(
        default_factory=lambda: Resources(
            requests={"cpu": "250m", "memory": "512Mi"}, limits={"cpu": "1", "memory": "1Gi"}
        ),
        description="Resources of the MLflow container.",
    )


class OpenBaoRoles(_Values):
    gateway: str = Field("sovereign-gateway", min_length=1, description="Role of the gateway's ServiceAccount.")
    operator: str = Field(
        "sovereign-controller", min_length=1, description="Role of the operator's ServiceAccount (verifies approvals)."
    )
    serving: str = Field(
        "sovereign-serving", min_length=1, description="Role the model servers the operator creates log in with."
    )


class KubernetesAuth(_Values):
    mount_path: str = Field("kubernetes", min_length=1, description="Mount path of OpenBao's Kubernetes auth method.")
    roles: OpenBaoRoles = Field(default_factory=OpenBaoRoles, description="OpenBao role of each component.")


class OpenBao(_Values):
    address: HttpsUrl = Field(
        "https://openbao.sovereign.kr:8200", description="Address of the in-country OpenBao (`VAULT_ADDR`)."
    )
    kubernetes_auth: KubernetesAuth = Field(
        default_factory=KubernetesAuth,
        description="Pods log in with their ServiceAccount token through OpenBao's Kubernetes auth method.",
    )


class Switch(_Values):
    enabled: bool = Field(True, description="Render these objects.")


class NetworkPolicies(_Values):
    enabled: bool = Field(True, description="Deny egress in the release namespace except what the policy allows.")
    api_server_cidrs: list[Cidr] = Field(
        default_factory=list,
        description="Networks of the Kubernetes API server (`kubectl get endpoints kubernetes`), which the operator "
        "must reach; egress to them on 443 and 6443 is allowed for the operator alone. Empty: the operator cannot "
        "reach the API while network policies are on.",
    )


class ServiceMonitor(_Values):
    enabled: bool = Field(True, description="Render a ServiceMonitor (prometheus-operator) for the gateway.")
    interval: str = Field("30s", pattern=r"^[0-9]+(ms|s|m|h)$", description="Scrape interval.")


class Dashboards(_Values):
    enabled: bool = Field(True, description="Render one ConfigMap per Grafana dashboard.")
    label: str = Field("grafana_dashboard", min_length=1, description="Label the Grafana sidecar looks for.")
    label_value: str = Field("1", description="Value of that label.")
    folder_annotation: str = Field(
        "grafana_folder", min_length=1, description="Annotation the sidecar reads the dashboard folder from."
    )
    folder: str = Field("Sovereign", description="Grafana folder of the dashboards.")


class Monitoring(_Values):
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Extra labels on the PrometheusRule and ServiceMonitor, for Prometheus' selectors "
        "(kube-prometheus-stack: `release: <its release>`).",
    )
    prometheus_rules: Switch = Field(default_factory=Switch, description="The PrometheusRule with the alert rules.")
    service_monitor: ServiceMonitor = Field(default_factory=ServiceMonitor, description="Scraping the gateway.")
    dashboards: Dashboards = Field(default_factory=Dashboards, description="The Grafana dashboards.")


class PodSecurityContext(_Values):
    run_as_user: int = Field(10001, ge=1, description="User id of every container (never root).")
    run_as_group: int = Field(10001, ge=1, description="Group id of every container.")
    fs_group: int = Field(10001, ge=1, description="Group owning the pods' volumes.")


class Toleration(_Values):
    key: str = Field("", description="Taint key; empty with `Exists` tolerates every taint.")
    operator: Literal["Equal", "Exists"] = Field("Equal", description="How the value is compared.")
    value: str = Field("", description="Taint value, with `Equal`.")
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = Field(
        "", description="Taint effect; empty: every effect."
    )


class ChartValues(_Values):
    global_: GlobalValues = Field(default_factory=GlobalValues, alias="global", description="Shared by every image.")
    image: Image = Field(default_factory=Image, description="The sovereign-stack image every pod runs.")
    operator: Operator = Field(default_factory=Operator, description="The ModelDeployment operator (kopf).")
    gateway: Gateway = Field(default_factory=Gateway, description="The OpenAI-compatible gateway.")
    mlflow: Mlflow = Field(default_factory=Mlflow, description="The model registry.")
    openbao: OpenBao = Field(default_factory=OpenBao, description="How pods reach and log in to OpenBao.")
    monitoring: Monitoring = Field(default_factory=Monitoring, description="Alert rules, scraping, dashboards.")
    network_policies: NetworkPolicies = Field(
        default_factory=NetworkPolicies, description="NetworkPolicies from the policy's egress rules."
    )
    admission_policies: Switch = Field(
        default_factory=Switch,
        description="ValidatingAdmissionPolicies enforcing the policy in namespaces labelled "
        "`sovereign-stack.io/governed=true` (cluster-scoped: one release per cluster).",
    )
    residency_policy: Switch = Field(
        default_factory=Switch, description="The ResidencyPolicy custom resource the operator reads."
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Extra node labels every pod requires; the policy's residency node labels always apply.",
    )
    tolerations: list[Toleration] = Field(default_factory=list, description="Tolerations of every pod.")
    pod_security_context: PodSecurityContext = Field(
        default_factory=PodSecurityContext, description="User and group of every pod; pods never run as root."
    )
