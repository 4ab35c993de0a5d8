"""The metric catalogue: the one place metric names, types, labels and buckets are defined.

Every metric lives in `REGISTRY`, not prometheus-client's global one, so a process exposes exactly
the catalogue. Labels never carry prompt text, keys or personal data; `tenant` is the only identity.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

PREFIX = "sovereign"
REGISTRY = CollectorRegistry(auto_describe=True)

AUTH_FAILURES = Counter(
    f"{PREFIX}_auth_failures",
    "Failed authentications at the gateway, by reason (malformed_credential, bad_key, revoked_key, bad_oidc_token).",
    ["reason"],
    registry=REGISTRY,
)
AUTH_LOCKOUTS = Counter(
    f"{PREFIX}_auth_lockouts",
    "Lockouts started after repeated failed authentications, by what was locked out (source or key).",
    ["scope"],
    registry=REGISTRY,
)
ACCESS_REFUSALS = Counter(
    f"{PREFIX}_access_refusals",
    "Authenticated requests refused, by tenant and reason (permission, site, model, data class, rate, quota).",
    ["tenant", "reason"],
    registry=REGISTRY,
)
TENANT_REQUESTS = Counter(
    f"{PREFIX}_tenant_requests",
    "Model requests admitted, by tenant.",
    ["tenant"],
    registry=REGISTRY,
)
TENANT_TOKENS = Counter(
    f"{PREFIX}_tenant_tokens",
    "Tokens metered against tenants' daily quotas, by tenant and direction (prompt or completion).",
    ["tenant", "direction"],
    registry=REGISTRY,
)
