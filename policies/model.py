"""The residency and access policy document: the one source of truth every layer enforces.

The document is Kubernetes-shaped (`apiVersion`, `kind`, `metadata`, `spec`) so the same file can
later be applied as a `ResidencyPolicy` custom resource. Keys are camelCase, as Kubernetes and Helm
users expect; Python code uses the snake_case attribute names.
"""

from __future__ import annotations

import hashlib
import re
from enum import StrEnum
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from policies.pii import PiiType

API_VERSION = "sovereign-stack.io/v1alpha1"
KIND = "ResidencyPolicy"

# RFC 1123 label, as Kubernetes requires for object and label-value names.
Name = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63),
]
CountryCode = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Z]{2}$"),
    Field(description="ISO 3166-1 alpha-2 country code in upper case, e.g. `KR`."),
]


def _parse_network(value: Any) -> IPv4Network | IPv6Network:
    if isinstance(value, IPv4Network | IPv6Network):
        return value
    try:
        return ip_network(str(value))
    except ValueError:
        raise ValueError("expected a network in CIDR notation with zero host bits, such as 10.0.0.0/16") from None


Network = Annotated[
    IPv4Network | IPv6Network,
    PlainValidator(_parse_network),
    PlainSerializer(str),
    WithJsonSchema({"type": "string", "format": "cidr"}),
]
_HOST_PATTERN = re.compile(r"^(\*\.)?([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _check_host_pattern(value: str) -> str:
    if not _HOST_PATTERN.fullmatch(value):
        raise ValueError("expected a lower-case DNS name, optionally starting with `*.`, e.g. `*.mirror.kr`")
    return value


HostPattern = Annotated[str, AfterValidator(_check_host_pattern)]


class DataClass(StrEnum):
    """The sensitivity classes every piece of data is sorted into."""

    PUBLIC = "public"
    INTERNAL = "internal"
    PERSONAL = "personal"
    UNIQUE_IDENTIFIER = "unique-identifier"
    SENSITIVE = "sensitive"


class RuleAction(StrEnum):
    """What the gateway does with a request that carries a data class."""

    ALLOW = "allow"
    REDACT = "redact"
    BLOCK = "block"


class Permission(StrEnum):
    """Every action a role can be granted; `*` grants all of them."""

    ALL = "*"
    INFERENCE = "inference"
    DEPLOY = "deploy"
    REGISTRY_REGISTER = "registry.register"
    REGISTRY_PROMOTE = "registry.promote"
    AUDIT_READ = "audit.read"
    USAGE_READ = "usage.read"
    TENANTS_MANAGE = "tenants.manage"
    KEYS_MANAGE = "keys.manage"
    METRICS_READ = "metrics.read"


class _Model(BaseModel):
    """Strict base: unknown keys are errors, YAML keys are camelCase."""

    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
    )


class Metadata(_Model):
    name: Name = Field(description="Name of the policy, as a Kubernetes object name, e.g. `kr-default`.")
    description: str = Field("", description="What this policy is for, shown by `sovereign policy check`.")


class Jurisdiction(_Model):
    code: CountryCode = Field(description="The country whose territory data must stay in, e.g. `KR`.")
    name: str = Field(min_length=1, description="Human-readable name of the jurisdiction.")
    regulations: list[str] = Field(
        default_factory=list,
        description="Regulations this policy implements, cited in audit evidence (e.g. `PIPA Art. 28-8`).",
    )


class Zone(_Model):
    name: Name = Field(description="Availability zone name, unique within its site.")
    cidrs: list[Network] = Field(
        default_factory=list, description="Node and pod networks of this zone, in CIDR notation."
    )


class Site(_Model):
    name: Name = Field(description="Unique site name, referenced by deployments and the registry.")
    kind: Literal["datacenter", "cloud-region"] = Field(
        description="`datacenter` for an owned or colocated facility, `cloud-region` for a cloud provider region."
    )
    country: CountryCode = Field(description="Country where the site physically stands.")
    region: str = Field(min_length=1, description="Region name as the provider or Kubernetes labels call it.")
    zones: list[Zone] = Field(min_length=1, description="Availability zones of the site.")
    node_labels: dict[str, str] = Field(
        default_factory=dict,
        description="Labels every node of this site carries; admission pins pods to them.",
    )
    cidrs: list[Network] = Field(default_factory=list, description="Networks of the site as a whole, in CIDR notation.")
    csap_tier: Literal["high", "medium", "low"] | None = Field(
        None,
        description="Korean CSAP certification tier of the site, if certified. Public-sector tenants need it.",
    )

    @field_validator("zones")
    @classmethod
    def _zone_names_unique(cls, zones: list[Zone]) -> list[Zone]:
        _require_unique([zone.name for zone in zones], "zone name")
        return zones

    def networks(self) -> list[Network]:
        """All networks of the site, its own and its zones'."""
        return [*self.cidrs, *(cidr for zone in self.zones for cidr in zone.cidrs)]


class DataClassRule(_Model):
    action: RuleAction = Field(
        description="`allow` passes data through, `redact` masks it before the model sees it, `block` refuses it."
    )
    in_country_only: bool = Field(
        description="Data of this class may only be processed or sent inside the jurisdiction."
    )
    training_allowed: bool = Field(description="Data of this class may be used in training or distillation sets.")
    description: str = Field("", description="What belongs to this class, for people reading the policy.")


class DataClassRules(_Model):
    public: DataClassRule = Field(description="Published or non-confidential data.")
    internal: DataClassRule = Field(description="Business data not meant for the public.")
    personal: DataClassRule = Field(description="Personal information under PIPA: names, phones, e-mail.")
    unique_identifier: DataClassRule = Field(
        alias="unique-identifier",
        description="Unique identifiers (RRN class): resident, foreigner, passport, driver's licence numbers.",
    )
    sensitive: DataClassRule = Field(description="Sensitive information under PIPA Art. 23: health, beliefs, ...")

    def rule_for(self, data_class: DataClass) -> DataClassRule:
        return getattr(self, data_class.value.replace("-", "_"))


class EgressRule(_Model):
    name: Name = Field(description="Unique name, reported as the rule behind egress decisions.")
    country: CountryCode = Field(description="Country where the destination stands.")
    cidrs: list[Network] = Field(default_factory=list, description="Destination networks in CIDR notation.")
    hosts: list[HostPattern] = Field(
        default_factory=list, description="Destination DNS names; `*.example.kr` matches any subdomain."
    )
    ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(
        default_factory=list, description="Allowed destination ports; empty allows every port."
    )
    purpose: str = Field("", description="Why this destination is needed, for auditors.")

    @model_validator(mode="after")
    def _has_destination(self) -> EgressRule:
        if not self.cidrs and not self.hosts:
            raise ValueError("an egress rule needs at least one of `cidrs` or `hosts`")
        return self


class Egress(_Model):
    default: Literal["deny"] = Field(
        "deny", description="Egress not matched by a rule is denied; there is no other choice."
    )
    allow: list[EgressRule] = Field(default_factory=list, description="Destinations that may be reached.")

    @field_validator("allow")
    @classmethod
    def _rule_names_unique(cls, rules: list[EgressRule]) -> list[EgressRule]:
        _require_unique([rule.name for rule in rules], "egress rule name")
        return rules


class Role(_Model):
    description: str = Field("", description="Who holds this role.")
    permissions: list[Permission] = Field(
        min_length=1, description="Actions the role may perform; `*` grants every action."
    )


class Lockout(_Model):
    max_failures: int = Field(
        10, ge=1, description="Failed authentications from one source, or against one key, that trigger a lockout."
    )
    window_seconds: int = Field(60, ge=1, description="The window in which failures are counted.")
    duration_seconds: int = Field(300, ge=1, description="How long the source or key stays locked out.")


class Oidc(_Model):
    issuer: str = Field(description="The `iss` every accepted token carries: the in-country identity provider.")
    audience: str = Field(description="The `aud` every accepted token must name, e.g. `sovereign-gateway`.")
    jwks_url: str = Field(
        pattern=r"^https?://",
        description="Where the provider publishes its signing keys (JWKS); must be allowed by `egress`.",
    )
    algorithms: list[str] = Field(["RS256", "ES256"], min_length=1, description="Accepted signature algorithms.")
    tenant_claim: str = Field("tenant", description="Claim that names the caller's tenant.")
    role_claim: str = Field("role", description="Claim that names the caller's role, one of `roles`.")


class Access(_Model):
    operator_tenant: Name = Field(
        "platform",
        description="The tenant of the platform operator; only its principals see across tenants.",
    )
    key_cache_seconds: float = Field(
        5, gt=0, le=60, description="How long a verified API key is trusted before OpenBao is asked again."
    )
    outage_grace_seconds: float = Field(
        300,
        ge=0,
        description="While OpenBao is unreachable, keys verified within this time stay valid; then requests get 503.",
    )
    usage_sync_seconds: float = Field(
        10,
        gt=0,
        le=300,
        description="How often each gateway replica shares its usage counts through OpenBao, so daily quotas hold "
        "across replicas and restarts to within this time.",
    )
    lockout: Lockout = Field(default_factory=Lockout, description="The response to repeated failed authentications.")
    trusted_proxies: list[Network] = Field(
        default_factory=list,
        description="Load balancers and ingress proxies whose `X-Forwarded-For` names the real client; lockouts "
        "count per client, never per proxy. Empty: the peer address is the client.",
    )
    oidc: Oidc | None = Field(None, description="Accept OIDC bearer tokens from this identity provider too.")


class ArtifactStore(_Model):
    name: Name = Field(description="Unique store name, shown in registry tags and gate results.")
    site: Name = Field(description="The site (from `sites`) where the store keeps its bytes.")
    uri: str = Field(
        min_length=1,
        description="Artifact URI prefix the store answers for: `mlflow-artifacts:/` for the registry server's own "
        "store, `s3://bucket/` for an S3-compatible one, `file:///path/` for a local directory.",
    )
    endpoint: str | None = Field(
        None,
        pattern=r"^https?://",
        description="S3-compatible endpoint URL (`MLFLOW_S3_ENDPOINT_URL`); must be allowed by `egress`.",
    )
    description: str = Field("", description="What the store is, for people reading the policy.")


class Registry(_Model):
    artifact_stores: list[ArtifactStore] = Field(
        default_factory=list,
        description="Where model artifacts may be stored. A model version may only be promoted when its artifacts "
        "lie in one of these stores on an in-country site.",
    )

    @field_validator("artifact_stores")
    @classmethod
    def _store_names_unique(cls, stores: list[ArtifactStore]) -> list[ArtifactStore]:
        _require_unique([store.name for store in stores], "artifact store name")
        return stores


class Audit(_Model):
    retention_days: int = Field(
        ge=1, description="Days audit records are kept; the Korean security-measures standard wants 730."
    )


class PolicySpec(_Model):
    jurisdiction: Jurisdiction = Field(description="The country data must stay in.")
    sites: list[Site] = Field(min_length=1, description="Sites the stack may run on.")
    data_classes: DataClassRules = Field(description="The rule for each data class.")
    identifiers: dict[PiiType, DataClass] = Field(
        description="The data class of each identifier type the detectors find; every type must be listed."
    )
    egress: Egress = Field(description="Where workloads may connect to; everything else is denied.")
    image_registries: list[HostPattern] = Field(
        min_length=1, description="Registries container images may be pulled from (the in-country mirror)."
    )
    roles: dict[Name, Role] = Field(min_length=1, description="Roles by name, and what each may do.")
    audit: Audit = Field(description="How long audit evidence is kept.")
    access: Access = Field(
        default_factory=Access, description="How callers are authenticated, and the response to failures."
    )
    registry: Registry = Field(
        default_factory=Registry, description="Where model artifacts may live, checked by the promotion gates."
    )

    @field_validator("identifiers")
    @classmethod
    def _every_identifier_classified(cls, identifiers: dict[PiiType, DataClass]) -> dict[PiiType, DataClass]:
        missing = [pii_type.value for pii_type in PiiType if pii_type not in identifiers]
        if missing:
            raise ValueError(f"no data class for {', '.join(missing)}: every detected identifier type needs one")
        return identifiers

    @field_validator("sites")
    @classmethod
    def _site_names_unique(cls, sites: list[Site]) -> list[Site]:
        _require_unique([site.name for site in sites], "site name")
        return sites

    @model_validator(mode="after")
    def _stores_on_known_sites(self) -> PolicySpec:
        known = {site.name for site in self.sites}
        for index, store in enumerate(self.registry.artifact_stores):
            if store.site not in known:
                raise ValueError(
                    f"registry.artifactStores[{index}] (`{store.name}`) names site `{store.site}`, which is not "
                    f"one of `sites`: {', '.join(sorted(known))}"
                )
        return self

    @model_validator(mode="after")
    def _one_site_in_country(self) -> PolicySpec:
        if not any(site.country == self.jurisdiction.code for site in self.sites):
            raise ValueError(
                f"no site is in the jurisdiction {self.jurisdiction.code}: "
                f"add a site with `country: {self.jurisdiction.code}`"
            )
        return self


class ResidencyPolicy(_Model):
    api_version: Literal["sovereign-stack.io/v1alpha1"] = Field(
        description=f"Schema version of the document; must be `{API_VERSION}`."
    )
    kind: Literal["ResidencyPolicy"] = Field(description=f"Always `{KIND}`.")
    metadata: Metadata = Field(description="Name and description of the policy.")
    spec: PolicySpec = Field(description="The policy itself.")

    def digest(self) -> str:
        """SHA-256 of the canonical JSON form: names the exact policy in force in evidence and logs."""
        canonical = self.model_dump_json(by_alias=True, exclude_defaults=False)
        return hashlib.sha256(canonical.encode()).hexdigest()


def _require_unique(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"duplicate {what} `{name}`: each must be unique")
        seen.add(name)
