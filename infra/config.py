"""A site's stack configuration (`Pulumi.<stack>.yaml`, namespace `sovereign`), checked before any resource.

Keys are camelCase, as `pulumi config set sovereign:registryMirror ...` writes them. A wrong key or
value stops `pulumi preview` at once, naming the key and what was expected; so does a value the
residency policy forbids (a site abroad, a mirror not in `imageRegistries`, an artifact bucket on no
in-country store), judged by the same `policies` functions the gateway and the registry use.
"""

from __future__ import annotations

from ipaddress import ip_network
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

import pulumi
from pulumi.runtime.config import CONFIG
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from policies import PolicyEvaluator, ResidencyPolicy, load_default_policy, load_policy
from policies.model import CountryCode, HostPattern, Name, Network
from policies.registry import artifact_destination_problems, s3_uri

NAMESPACE = "sovereign"
INFRA_DIR = Path(__file__).resolve().parent
SECRET_KEYS = ("kubeconfig", "postgresPassword", "rke2Token")
ChartVersion = Annotated[str, Field(pattern=r"^v?[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]+)?$")]
HttpsUrl = Annotated[str, Field(pattern=r"^https://[^/\s]+")]


class ConfigError(pulumi.RunError):
    """Stack configuration that cannot be used; Pulumi prints the message without a traceback."""


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)


class ChartVersions(_Config):
    gpu_operator: ChartVersion = Field(description="NVIDIA GPU Operator chart version, e.g. `v25.10.0`.")
    kuberay_operator: ChartVersion = Field(description="KubeRay operator chart version, e.g. `1.4.2`.")
    kube_prometheus_stack: ChartVersion = Field(description="kube-prometheus-stack chart version, e.g. `79.5.0`.")
    postgresql: ChartVersion = Field(description="PostgreSQL chart version for MLflow's in-cluster database.")


class PostgreSQL(_Config):
    mode: Literal["in-cluster", "external"] = Field(
        "in-cluster", description="`in-cluster` installs PostgreSQL for MLflow; `external` uses `host`."
    )
    host: str | None = Field(None, description="The external server's DNS name (with `mode: external`).")
    port: int = Field(5432, ge=1, le=65535, description="PostgreSQL port.")
    database: Name = Field("mlflow", description="Database MLflow keeps its registry in.")
    user: Name = Field("mlflow", description="Role MLflow connects as; the password is `sovereign:postgresPassword`.")

    @model_validator(mode="after")
    def _host_when_external(self) -> PostgreSQL:
        if self.mode == "external" and not self.host:
            raise ValueError("`host` is required with `mode: external`")
        return self


class OpenBao(_Config):
    address: HttpsUrl = Field(description="The in-country OpenBao, e.g. `https://openbao.sovereign.kr:8200`.")
    kubernetes_auth_mount: str = Field("kubernetes", min_length=1, description="Mount of its Kubernetes auth method.")


class Artifacts(_Config):
    bucket: Name = Field(description="S3 bucket of MLflow's artifact store.")
    prefix: str = Field("", description="Key prefix inside the bucket.")
    endpoint: HttpsUrl = Field(description="S3-compatible endpoint, in-country.")

    def uri(self) -> str:
        return s3_uri(self.bucket, self.prefix)


class GpuFlavor(_Config):
    name: str = Field(min_length=1, description="Flavor name to create, e.g. `gpu.h100x8`.")
    vcpus: int = Field(ge=1, description="vCPUs per GPU node.")
    ram_mb: int = Field(ge=1024, description="Memory per GPU node, in MiB.")
    gpus: int = Field(ge=1, le=16, description="GPUs passed through per node.")
    pci_alias: str = Field(min_length=1, description="Nova PCI passthrough alias of the GPU, e.g. `h100`.")


class OpenStackPool(_Config):
    region: str = Field(min_length=1, description="OpenStack region; must be the region of one of `sites`.")
    availability_zones: list[str] = Field(
        min_length=1, description="Zones the nodes are spread over, round-robin; each a zone of that site."
    )
    nodes: int = Field(ge=1, le=256, description="GPU nodes to create.")
    flavor: GpuFlavor = Field(description="The GPU flavor to create.")
    image_name: str = Field(min_length=1, description="Glance image with RKE2 preinstalled (no download at boot).")
    volume_type: str = Field(min_length=1, description="Cinder volume type with encryption (LUKS) for boot disks.")
    volume_size_gb: int = Field(200, ge=20, description="Boot volume size, in GiB.")
    subnet_cidr: Network = Field(description="Private subnet of the GPU nodes; inside the site's networks.")
    dns_nameservers: list[str] = Field(default_factory=list, description="In-country DNS resolvers for the subnet.")
    rke2_server: HttpsUrl = Field(description="The RKE2 server the agents join, e.g. `https://10.10.0.5:9345`.")


class SiteConfig(_Config):
    policy: str | None = Field(None, description="Residency policy YAML, relative to infra/; unset: kr-default.")
    jurisdiction: CountryCode = Field(description="Must equal the policy's jurisdiction, as a guard against mix-ups.")
    sites: list[Name] = Field(min_length=1, description="The policy's sites this stack runs on; all in-country.")
    registry_mirror: HostPattern = Field(description="In-country image mirror every image is pulled from.")
    chart_repository: str = Field(
        pattern=r"^(oci|https)://", description="In-country chart repository (OCI or HTTPS) on the mirror."
    )
    charts: ChartVersions = Field(description="Pinned chart versions.")
    stack_charts_dir: str = Field("../charts", description="This project's charts, relative to infra/.")
    namespace: Name = Field("sovereign-system", description="Namespace of the stack's own services.")
    model_namespaces: list[Name] = Field(["models"], description="Governed namespaces for ModelDeployments.")
    postgresql: PostgreSQL = Field(default_factory=PostgreSQL, description="MLflow's database.")
    openbao: OpenBao = Field(description="The OpenBao connection (Kubernetes auth).")
    artifacts: Artifacts = Field(description="MLflow's artifact store.")
    openstack: OpenStackPool | None = Field(None, description="GPU machines on an in-country OpenStack cloud.")

    def charts_dir(self) -> Path:
        return (INFRA_DIR / self.stack_charts_dir).resolve()

    def load_residency_policy(self) -> ResidencyPolicy:
        return load_default_policy() if self.policy is None else load_policy(INFRA_DIR / self.policy)


def policy_problems(site: SiteConfig, policy: ResidencyPolicy) -> list[str]:
    """What in the configuration the residency policy forbids, each naming its key."""
    evaluator = PolicyEvaluator(policy)
    key = f"{NAMESPACE}:"
    problems = []
    if site.jurisdiction != policy.spec.jurisdiction.code:
        problems.append(
            f"{key}jurisdiction: {site.jurisdiction} is not the policy's jurisdiction "
            f"{policy.spec.jurisdiction.code} (policy `{policy.metadata.name}`)"
        )
    for index, name in enumerate(site.sites):
        decision = evaluator.site_in_country(name)
        if not decision.allowed:
            problems.append(f"{key}sites[{index}]: {decision.reason}")
    if not evaluator.image_allowed(f"{site.registry_mirror}/probe").allowed:
        problems.append(
            f"{key}registryMirror: {site.registry_mirror} is not in the policy's imageRegistries "
            f"({', '.join(policy.spec.image_registries)})"
        )
    repository_host = urlparse(site.chart_repository).hostname or ""
    if not evaluator.image_allowed(f"{repository_host}/probe").allowed:
        problems.append(f"{key}chartRepository: {repository_host} is not in the policy's imageRegistries")
    artifacts = site.artifacts
    problems += [
        f"{key}artifacts: {problem}"
        for problem in artifact_destination_problems(policy, artifacts.uri(), artifacts.endpoint, "endpoint")
    ]
    if site.openstack is not None:
        problems += _openstack_problems(site, site.openstack, policy)
    return problems


def _openstack_problems(site: SiteConfig, pool: OpenStackPool, policy: ResidencyPolicy) -> list[str]:
    key = f"{NAMESPACE}:openstack"
    chosen = [s for s in policy.spec.sites if s.name in site.sites]
    in_region = [s for s in chosen if s.region == pool.region]
    if not in_region:
        regions = ", ".join(sorted({s.region for s in chosen}))
        return [f"{key}.region: {pool.region} is not the region of any of sites ({regions})"]
    zones = {zone.name for s in in_region for zone in s.zones}
    problems = [
        f"{key}.availabilityZones[{index}]: {zone} is not a zone of {', '.join(s.name for s in in_region)} "
        f"({', '.join(sorted(zones))})"
        for index, zone in enumerate(pool.availability_zones)
        if zone not in zones
    ]
    networks = [network for s in in_region for network in s.networks()]
    subnet = ip_network(str(pool.subnet_cidr))
    if not any(subnet.version == net.version and subnet.subnet_of(net) for net in networks):  # type: ignore[arg-type]
        problems.append(f"{key}.subnetCidr: {subnet} is outside the site's networks ({', '.join(map(str, networks))})")
    return problems


def load_site_config(config: pulumi.Config | None = None) -> SiteConfig:
    """The validated configuration, or ConfigError naming every bad key."""
    config = config or pulumi.Config(NAMESPACE)
    known = {field.alias or name for name, field in SiteConfig.model_fields.items()} | set(SECRET_KEYS)
    unknown = sorted(
        key for key in CONFIG.get() if key.startswith(f"{NAMESPACE}:") and key.split(":", 1)[1] not in known
    )
    if unknown:
        raise ConfigError(
            f"unknown configuration key(s) {', '.join(unknown)}; "
            f"expected {', '.join(sorted(known))} under `{NAMESPACE}:`"
        )
    raw: dict[str, Any] = {}
    for field_name, field in SiteConfig.model_fields.items():
        key = field.alias or field_name
        value = config.get_object(key) if _structured(field.annotation) else config.get(key)
        if value is not None:
            raw[key] = value
    try:
        site = SiteConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(
            "invalid stack configuration:\n"
            + "\n".join(
                f"  {NAMESPACE}:{'.'.join(str(part) for part in detail['loc'])}: {detail['msg']}"
                for detail in error.errors(include_url=False)
            )
        ) from None
    problems = policy_problems(site, site.load_residency_policy())
    if site.openstack is not None and config.get_secret("rke2Token") is None:
        problems.append(f"{NAMESPACE}:rke2Token: required with `openstack`; set it with --secret")
    if config.get_secret("postgresPassword") is None:
        problems.append(f"{NAMESPACE}:postgresPassword: required; set it with `pulumi config set --secret`")
    if problems:
        raise ConfigError("the stack configuration breaks the residency policy:\n  " + "\n  ".join(problems))
    return site


def _structured(annotation: Any) -> bool:
    """Lists and objects are YAML structures in the stack file; plain strings are read as they are."""
    return annotation not in (str, str | None, int)
