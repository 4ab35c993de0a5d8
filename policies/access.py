"""Who may do what: tenants, principals, API keys, and the decisions about them.

Pure functions over the policy document and a tenant record; where tenants and keys are kept
(OpenBao) is `policies.openbao`, and where requests are checked is the gateway.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from typing import Literal

from pydantic import Field, field_validator

from policies.evaluation import Decision, Effect, PolicyEvaluator
from policies.model import DataClass, Name, Permission, ResidencyPolicy, _Model, _require_unique

ANY_MODEL = "*"
_CSAP_RANK = {"low": 1, "medium": 2, "high": 3}
# Permissions that reach across tenants; only the operator tenant's principals may exercise them.
PLATFORM_PERMISSIONS = frozenset({Permission.TENANTS_MANAGE, Permission.METRICS_READ})


class Tenant(_Model):
    """One organisation sharing the model, and its limits."""

    name: Name = Field(description="Tenant name, e.g. `mois` for a ministry; used in keys, usage and audit.")
    description: str = Field("", description="Who the tenant is, for auditors.")
    models: list[str] = Field(
        [ANY_MODEL], min_length=1, description="Model ids the tenant may call; `*` allows every served model."
    )
    data_classes: list[DataClass] = Field(
        [DataClass.PUBLIC, DataClass.INTERNAL, DataClass.PERSONAL],
        description="Data classes the tenant may send; a request carrying any other class is refused.",
    )
    sites: list[Name] | None = Field(
        None, description="Sites the tenant's requests may be served on; unset allows every in-country site."
    )
    min_csap_tier: Literal["high", "medium", "low"] | None = Field(
        None, description="Lowest CSAP tier a serving site must hold, e.g. `high` for public-sector tenants."
    )
    requests_per_minute: int = Field(60, ge=1, description="Request rate limit, with bursts up to the same number.")
    tokens_per_day: int = Field(1_000_000, ge=1, description="Prompt plus completion tokens per UTC day.")
    debug_capture: bool = Field(
        False, description="Keep the tenant's prompts for debugging, encrypted with its own derived transit key."
    )

    @field_validator("models", "sites")
    @classmethod
    def _unique(cls, values: list[str] | None) -> list[str] | None:
        _require_unique(values or [], "entry")
        return values


class TenantError(ValueError):
    """A tenant record that does not fit the policy; the message names the field."""


def check_tenant(policy: ResidencyPolicy, tenant: Tenant) -> None:
    """Refuse a tenant whose sites are unknown or could never be served under its CSAP tier."""
    evaluator = PolicyEvaluator(policy)
    known = {site.name: site for site in policy.spec.sites}
    for site in tenant.sites or []:
        if site not in known:
            raise TenantError(f"sites: `{site}` is not a site of policy `{policy.metadata.name}`: {', '.join(known)}")
        if not evaluator.site_in_country(site).allowed:
            raise TenantError(f"sites: `{site}` is not in {policy.spec.jurisdiction.code}")
    candidates = tenant.sites or [site.name for site in evaluator.in_country_sites()]
    if not any(tenant_may_use_site(policy, tenant, site).allowed for site in candidates):
        raise TenantError(f"minCsapTier: no allowed site holds CSAP tier `{tenant.min_csap_tier}` or higher")


def tenant_may_use_site(policy: ResidencyPolicy, tenant: Tenant, site_name: str) -> Decision:
    """May this tenant's requests be served on this site?"""
    rule = f"tenants.{tenant.name}"
    if tenant.sites is not None and site_name not in tenant.sites:
        return Decision(Effect.DENY, f"{rule}.sites", f"tenant `{tenant.name}` may not use site `{site_name}`")
    if tenant.min_csap_tier is not None:
        site = next((site for site in policy.spec.sites if site.name == site_name), None)
        held = site.csap_tier if site else None
        if _CSAP_RANK.get(held or "", 0) < _CSAP_RANK[tenant.min_csap_tier]:
            return Decision(
                Effect.DENY,
                f"{rule}.minCsapTier",
                f"tenant `{tenant.name}` needs a CSAP-{tenant.min_csap_tier} site; `{site_name}` holds "
                f"{f'CSAP-{held}' if held else 'no CSAP certification'}",
            )
    return Decision(Effect.ALLOW, f"{rule}.sites", f"tenant `{tenant.name}` may use site `{site_name}`")


def tenant_may_use_model(tenant: Tenant, model: str, deployment_tenants: frozenset[str] | None = None) -> Decision:
    """The tenant record's `models`, and where the model's deployment names its tenants, that list too."""
    if deployment_tenants is not None and tenant.name not in deployment_tenants:
        return Decision(
            Effect.DENY,
            "modelDeployment.tenants",
            f"the deployment of `{model}` serves tenants {', '.join(sorted(deployment_tenants))}, not `{tenant.name}`",
        )
    rule = f"tenants.{tenant.name}.models"
    if ANY_MODEL in tenant.models or model in tenant.models:
        return Decision(Effect.ALLOW, rule, f"tenant `{tenant.name}` may use `{model}`")
    return Decision(Effect.DENY, rule, f"tenant `{tenant.name}` may not use model `{model}`")


def tenant_may_send(tenant: Tenant, data_classes: frozenset[str] | set[str]) -> Decision:
    rule = f"tenants.{tenant.name}.dataClasses"
    refused = sorted(data_classes - {data_class.value for data_class in tenant.data_classes})
    if refused:
        return Decision(Effect.DENY, rule, f"tenant `{tenant.name}` may not send {', '.join(refused)} data")
    return Decision(Effect.ALLOW, rule, f"tenant `{tenant.name}` may send this data")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: an API key or an OIDC subject, acting for one tenant in one role."""

    tenant: str
    subject: str
    role: str
    method: Literal["api-key", "oidc"]
    permissions: frozenset[Permission]

    def may(self, permission: Permission) -> bool:
        return Permission.ALL in self.permissions or permission in self.permissions


class Roles:
    """The policy's roles, resolved once: the gateway checks permissions on every request."""

    def __init__(self, policy: ResidencyPolicy) -> None:
        self.operator_tenant = policy.spec.access.operator_tenant
        self._permissions = {name: frozenset(role.permissions) for name, role in policy.spec.roles.items()}

    def __contains__(self, role: str) -> bool:
        return role in self._permissions

    @property
    def names(self) -> list[str]:
        return list(self._permissions)

    def principal(self, tenant: str, subject: str, role: str, method: Literal["api-key", "oidc"]) -> Principal:
        return Principal(tenant, subject, role, method, self._permissions.get(role, frozenset()))

    def authorize(self, principal: Principal, permission: Permission) -> Decision | None:
        """None when allowed; the refusal otherwise. Allowing costs a set lookup, no string building."""
        if not principal.may(permission):
            return Decision(
                Effect.DENY, f"spec.roles.{principal.role}", f"role `{principal.role}` may not {permission.value}"
            )
        if permission in PLATFORM_PERMISSIONS and principal.tenant != self.operator_tenant:
            return Decision(
                Effect.DENY,
                "spec.access.operatorTenant",
                f"{permission.value} spans tenants; only the operator tenant `{self.operator_tenant}` may use it",
            )
        return None

    def sees_tenant(self, principal: Principal, tenant: str) -> bool:
        """A principal sees its own tenant's usage, audit records and keys; the operator sees all."""
        return principal.tenant in (tenant, self.operator_tenant)


def client_address(peer: str, forwarded_for: str | None, trusted_proxies: list[str]) -> str:
    """The calling client's address: the peer, unless it is a trusted proxy that forwarded the request.

    `X-Forwarded-For` is read from the right, skipping trusted proxies; the first other address is
    the client. Anything an untrusted peer sends in the header is ignored, so it cannot be spoofed.
    """
    networks = [ip_network(cidr, strict=False) for cidr in trusted_proxies]

    def trusted(address: str) -> bool:
        try:
            parsed = ip_address(address)
        except ValueError:
            return False
        return any(parsed in network for network in networks)

    if not forwarded_for or not trusted(peer):
        return peer
    for hop in reversed([hop.strip() for hop in forwarded_for.split(",")]):
        if not trusted(hop):
            try:
                return str(ip_address(hop))
            except ValueError:
                return peer  # a malformed hop: fall back to the proxy rather than trust the text
    return peer


# --- API keys ----------------------------------------------------------------------------------

KEY_PREFIX = "sk-sov-"
_KEY_PATTERN = re.compile(rf"^{KEY_PREFIX}([0-9a-f]{{16}})_([A-Za-z0-9_-]{{43}})$")


@dataclass(frozen=True)
class NewKey:
    key_id: str
    secret_hash: str
    token: str


def new_api_key() -> NewKey:
    """A random key: a public id to look it up by, and a 256-bit secret of which only a hash is kept."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return NewKey(key_id, hash_secret(secret), f"{KEY_PREFIX}{key_id}_{secret}")


def parse_api_key(token: str) -> tuple[str, str] | None:
    """The key id and secret of a well-formed key, or None."""
    match = _KEY_PATTERN.fullmatch(token)
    return (match.group(1), match.group(2)) if match else None


def hash_secret(secret: str) -> str:
    # The secret is 256 random bits: a plain SHA-256 cannot be brute-forced, so no slow KDF is needed.
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, secret_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), secret_hash)
