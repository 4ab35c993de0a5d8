"""Answer policy questions with a decision and the rule of the document that made it.

Rules are named as paths into the document (`spec.dataClasses.personal`,
`spec.egress.allow[registry-mirror]`), so audit records and error messages point an auditor at the
exact line of the policy that decided.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address, ip_address
from urllib.parse import urlsplit

from policies.model import (
    DataClass,
    EgressRule,
    Permission,
    ResidencyPolicy,
    RuleAction,
    Site,
)
from policies.pii import PiiType

_DEFAULT_PORTS = {"http": 80, "https": 443, "grpc": 443, "grpcs": 443}
EGRESS_DEFAULT_RULE = "spec.egress.default"


def in_country_rule(data_class: DataClass) -> str:
    """The rule that keeps a data class inside the jurisdiction."""
    return f"spec.dataClasses.{data_class.value}.inCountryOnly"


class Effect(StrEnum):
    ALLOW = "allow"
    REDACT = "redact"
    DENY = "deny"


@dataclass(frozen=True)
class Decision:
    """The answer to a policy question."""

    effect: Effect
    rule: str
    reason: str

    @property
    def allowed(self) -> bool:
        """True when the action may go ahead (possibly after redaction)."""
        return self.effect is not Effect.DENY


@dataclass(frozen=True)
class Endpoint:
    """A destination as the policy sees it: a host name or an address, and a port if known."""

    host: str
    port: int | None

    @classmethod
    def parse(cls, endpoint: str) -> Endpoint:
        """Accept a URL (`https://host:8443/v1`), `host:port`, a bare host or an IP address."""
        text = endpoint.strip()
        if not text:
            raise ValueError("endpoint is empty: give a URL, host, host:port or IP address")
        try:
            ip_address(text)
            return cls(host=text, port=None)
        except ValueError:
            pass
        parts = urlsplit(text if "://" in text else f"//{text}")
        try:
            port = parts.port
        except ValueError as error:
            raise ValueError(f"endpoint `{endpoint}` has an invalid port: {error}") from None
        if not parts.hostname:
            raise ValueError(f"endpoint `{endpoint}` has no host")
        return cls(host=parts.hostname.lower(), port=port or _DEFAULT_PORTS.get(parts.scheme))

    @property
    def address(self) -> IPv4Address | IPv6Address | None:
        try:
            return ip_address(self.host)
        except ValueError:
            return None


@dataclass(frozen=True)
class Destination:
    """Where an endpoint resolves to under the policy: one of our sites, or an allowed egress rule."""

    country: str
    rule: str
    label: str


class PolicyEvaluator:
    """Evaluates questions against one policy document."""

    def __init__(self, policy: ResidencyPolicy) -> None:
        self.policy = policy
        self._spec = policy.spec
        self._sites = {site.name: site for site in self._spec.sites}

    @property
    def jurisdiction(self) -> str:
        return self._spec.jurisdiction.code

    def egress_rules(self) -> list[str]:
        """Every rule that can refuse egress: the default deny and each in-country-only data class."""
        classes = self._spec.data_classes
        return [EGRESS_DEFAULT_RULE, *(in_country_rule(c) for c in DataClass if classes.rule_for(c).in_country_only)]

    def in_country_sites(self) -> list[Site]:
        return [site for site in self._spec.sites if site.country == self.jurisdiction]

    def site_in_country(self, site_name: str) -> Decision:
        """Is this site one of the policy's sites, and inside the jurisdiction?"""
        site = self._sites.get(site_name)
        if site is None:
            known = ", ".join(self._sites)
            return Decision(Effect.DENY, "spec.sites", f"site `{site_name}` is not in the policy; known sites: {known}")
        rule = f"spec.sites[{site.name}]"
        if site.country != self.jurisdiction:
            return Decision(Effect.DENY, rule, f"site `{site.name}` is in {site.country}, outside {self.jurisdiction}")
        return Decision(Effect.ALLOW, rule, f"site `{site.name}` is in {self.jurisdiction}")

    def may_send(self, data_class: DataClass | str, endpoint: str) -> Decision:
        """May data of this class go to this endpoint (URL, host, host:port or IP)?"""
        data_class = DataClass(data_class)
        class_rule = self._spec.data_classes.rule_for(data_class)
        class_path = f"spec.dataClasses.{data_class.value}"
        if class_rule.action is RuleAction.BLOCK:
            return Decision(Effect.DENY, class_path, f"data class `{data_class.value}` is blocked everywhere")
        target = Endpoint.parse(endpoint)
        destination = self._destination(target)
        if destination is None:
            return Decision(
                Effect.DENY,
                EGRESS_DEFAULT_RULE,
                f"`{endpoint}` is neither a site nor on the egress allowlist; egress is denied by default",
            )
        if class_rule.in_country_only and destination.country != self.jurisdiction:
            return Decision(
                Effect.DENY,
                in_country_rule(data_class),
                f"data class `{data_class.value}` must stay in {self.jurisdiction}, "
                f"and {destination.label} is in {destination.country}",
            )
        if class_rule.action is RuleAction.REDACT:
            return Decision(
                Effect.REDACT,
                class_path,
                f"data class `{data_class.value}` may go to {destination.label} once redacted",
            )
        return Decision(
            Effect.ALLOW, destination.rule, f"data class `{data_class.value}` may go to {destination.label}"
        )

    def data_class_of(self, pii_type: PiiType | str) -> DataClass:
        """The data class the policy assigns to a detected identifier type."""
        return self._spec.identifiers[PiiType(pii_type)]

    def may_train_on(self, data_class: DataClass | str) -> Decision:
        """May data of this class enter training or distillation sets?"""
        data_class = DataClass(data_class)
        rule = f"spec.dataClasses.{data_class.value}.trainingAllowed"
        if self._spec.data_classes.rule_for(data_class).training_allowed:
            return Decision(Effect.ALLOW, rule, f"data class `{data_class.value}` may be used for training")
        return Decision(Effect.DENY, rule, f"data class `{data_class.value}` must not be used for training")

    def may(self, role: str, action: Permission | str) -> Decision:
        """May a holder of this role perform this action?"""
        try:
            permission = Permission(action)
        except ValueError:
            permission = Permission.ALL
        if permission is Permission.ALL:
            valid = ", ".join(p.value for p in Permission if p is not Permission.ALL)
            raise ValueError(f"unknown action `{action}`; expected one of: {valid}")
        granted = self._spec.roles.get(role)
        if granted is None:
            known = ", ".join(self._spec.roles)
            return Decision(Effect.DENY, "spec.roles", f"role `{role}` is not in the policy; known roles: {known}")
        rule = f"spec.roles.{role}"
        if Permission.ALL in granted.permissions or permission in granted.permissions:
            return Decision(Effect.ALLOW, rule, f"role `{role}` may {permission.value}")
        held = ", ".join(str(p) for p in granted.permissions)
        return Decision(Effect.DENY, rule, f"role `{role}` may not {permission.value}; it may: {held}")

    def image_allowed(self, image: str) -> Decision:
        """May a container image be pulled? Only from the policy's registries."""
        registry = image_registry(image)
        for pattern in self._spec.image_registries:
            if _host_matches(registry, pattern):
                return Decision(Effect.ALLOW, "spec.imageRegistries", f"registry `{registry}` is an allowed registry")
        allowed = ", ".join(self._spec.image_registries)
        return Decision(
            Effect.DENY,
            "spec.imageRegistries",
            f"image `{image}` comes from `{registry}`; allowed registries: {allowed}",
        )

    def _destination(self, target: Endpoint) -> Destination | None:
        address = target.address
        if address is not None:
            for site in self._spec.sites:
                if any(address in network for network in site.networks()):
                    return Destination(site.country, f"spec.sites[{site.name}]", f"site `{site.name}`")
        for rule in self._spec.egress.allow:
            if _egress_matches(rule, target):
                return Destination(rule.country, f"spec.egress.allow[{rule.name}]", f"egress rule `{rule.name}`")
        return None


def image_registry(image: str) -> str:
    """The registry host of an image reference, as Docker resolves it (`nginx` is on docker.io)."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return first.split(":", 1)[0].lower()
    return "docker.io"


def _egress_matches(rule: EgressRule, target: Endpoint) -> bool:
    if rule.ports and target.port not in rule.ports:
        return False
    address = target.address
    if address is not None:
        return any(address in network for network in rule.cidrs)
    return any(_host_matches(target.host, pattern) for pattern in rule.hosts)


def _host_matches(host: str, pattern: str) -> bool:
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern
