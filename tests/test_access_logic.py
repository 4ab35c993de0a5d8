"""The access decisions as pure functions, on a clock the test moves."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from policies import Permission, ResidencyPolicy
from policies.access import (
    Roles,
    Tenant,
    client_address,
    new_api_key,
    parse_api_key,
    secret_matches,
    tenant_may_use_model,
    tenant_may_use_site,
)
from policies.openbao import OpenBaoRefused, OpenBaoUnavailable
from serving import auth
from serving.auth import AccessDenied, CachedLookup, Lockout, TokenBucket, seconds_to_utc_midnight


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lockout_counts_failures_in_the_window_and_expires() -> None:
    clock = Clock()
    lockout = Lockout(max_failures=3, window=60, duration=300, clock=clock)
    assert not lockout.fail("source:a")
    clock.now += 61  # the first failure leaves the window
    assert not lockout.fail("source:a")
    assert not lockout.fail("source:a")
    assert lockout.remaining("source:a") == 0
    assert lockout.fail("source:a"), "the third failure within 60 s starts a lockout"
    assert lockout.remaining("source:a") == 300
    assert lockout.remaining("source:b") == 0
    clock.now += 300
    assert lockout.remaining("source:a") == 0


def test_token_bucket_allows_bursts_then_refills() -> None:
    clock = Clock()
    bucket = TokenBucket(per_minute=6, clock=clock)
    assert [bucket.take() for _ in range(6)] == [0.0] * 6
    assert bucket.take() == pytest.approx(10.0)
    clock.now += 10
    assert bucket.take() == 0.0


def run(cache: CachedLookup, name: str, load: object) -> object:
    return asyncio.run(cache.get(name, load, "API key"))


def down(_: str) -> object:
    raise OpenBaoUnavailable("down")


def test_cached_values_are_reverified_after_the_fresh_time() -> None:
    clock = Clock()
    cache = CachedLookup(fresh=5, grace=300, clock=clock)
    assert run(cache, "k", lambda _: "v1") == "v1"
    assert run(cache, "k", lambda _: "v2") == "v1", "fresh: OpenBao is not asked"
    clock.now += 5
    assert run(cache, "k", lambda _: None) is None, "revoked: seen after 5 s"


def test_outage_keeps_verified_values_for_the_grace_period_only() -> None:
    clock = Clock()
    cache = CachedLookup(fresh=5, grace=300, clock=clock)
    run(cache, "good", lambda _: "record")
    run(cache, "revoked", lambda _: None)
    clock.now += 299
    assert run(cache, "good", down) == "record"
    assert run(cache, "revoked", down) is None
    with pytest.raises(AccessDenied) as unknown:
        run(cache, "unknown", down)
    assert unknown.value.status == 503
    clock.now += 1
    with pytest.raises(AccessDenied):
        run(cache, "good", down)
    clock.now += 1  # past the retry pause: OpenBao is asked again and answers
    assert run(cache, "good", lambda _: "record") == "record"


def test_platform_permissions_belong_to_the_operator_tenant(default_policy: ResidencyPolicy) -> None:
    roles = Roles(default_policy)
    monitor = roles.principal("acme", "key:1", "monitoring", "api-key")
    refusal = roles.authorize(monitor, Permission.METRICS_READ)
    assert refusal is not None
    assert refusal.rule == "spec.access.operatorTenant"
    assert (
        roles.authorize(roles.principal("platform", "key:2", "monitoring", "api-key"), Permission.METRICS_READ) is None
    )
    user = roles.principal("acme", "key:3", "model-user", "api-key")
    assert roles.authorize(user, Permission.AUDIT_READ).rule == "spec.roles.model-user"
    assert roles.authorize(roles.principal("acme", "key:4", "no-such-role", "api-key"), Permission.INFERENCE)


@pytest.mark.parametrize(
    ("tenant", "site", "allowed", "rule"),
    [
        (Tenant(name="t"), "local", True, "tenants.t.sites"),
        (Tenant(name="t", sites=["kr-seoul-1"]), "local", False, "tenants.t.sites"),
        (Tenant(name="t", min_csap_tier="high"), "kr-seoul-1", True, "tenants.t.sites"),
        (Tenant(name="t", min_csap_tier="high"), "kr-daejeon-1", False, "tenants.t.minCsapTier"),
        (Tenant(name="t", min_csap_tier="medium"), "kr-daejeon-1", True, "tenants.t.sites"),
    ],
)
def test_tenant_sites_and_csap_tiers(
    tenant: Tenant, site: str, allowed: bool, rule: str, default_policy: ResidencyPolicy
) -> None:
    decision = tenant_may_use_site(default_policy, tenant, site)
    assert (decision.allowed, decision.rule) == (allowed, rule)


@pytest.mark.parametrize(
    ("tenant", "deployment_tenants", "allowed", "rule"),
    [
        (Tenant(name="acme"), None, True, "tenants.acme.models"),
        (Tenant(name="acme"), frozenset({"acme", "kbank"}), True, "tenants.acme.models"),
        (Tenant(name="acme"), frozenset({"kbank"}), False, "modelDeployment.tenants"),
        (Tenant(name="acme", models=["other"]), frozenset({"acme"}), False, "tenants.acme.models"),
    ],
)
def test_a_deployment_narrows_the_tenants_a_model_serves(
    tenant: Tenant, deployment_tenants: frozenset[str] | None, allowed: bool, rule: str
) -> None:
    decision = tenant_may_use_model(tenant, "axk1", deployment_tenants)
    assert (decision.allowed, decision.rule) == (allowed, rule)
    if rule == "modelDeployment.tenants":
        assert decision.reason == "the deployment of `axk1` serves tenants kbank, not `acme`"


def test_api_keys_parse_and_match_only_their_hash() -> None:
    key = new_api_key()
    key_id, secret = parse_api_key(key.token)
    assert key_id == key.key_id
    assert secret_matches(secret, key.secret_hash)
    assert not secret_matches(secret[:-1] + "x", key.secret_hash)
    assert secret not in key.secret_hash
    assert parse_api_key("sk-sov-short_x") is None
    assert parse_api_key(key.token + "x") is None


def test_quota_resets_at_midnight_utc() -> None:
    assert seconds_to_utc_midnight(datetime(2026, 11, 23, 23, 59, 30, tzinfo=UTC)) == 30


def test_a_refusing_openbao_fails_closed_too() -> None:
    def refused(_: str) -> object:
        raise OpenBaoRefused("permission denied")

    cache = CachedLookup(fresh=5, grace=300, clock=Clock())
    with pytest.raises(AccessDenied) as caught:
        run(cache, "key", refused)
    assert caught.value.status == 503


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "client"),
    [
        ("10.0.0.5", None, "10.0.0.5"),
        ("10.0.0.5", "203.0.113.7", "203.0.113.7"),
        ("10.0.0.5", "198.51.100.1, 203.0.113.7, 10.0.0.9", "203.0.113.7"),  # the leftmost hop: only a claim
        ("192.0.2.44", "203.0.113.7", "192.0.2.44"),  # an untrusted peer cannot choose its address
        ("10.0.0.5", "not-an-address", "10.0.0.5"),
        ("10.0.0.5", "10.0.0.7, 10.0.0.8", "10.0.0.5"),
    ],
)
def test_the_client_behind_trusted_proxies(peer: str, forwarded_for: str | None, client: str) -> None:
    assert client_address(peer, forwarded_for, ["10.0.0.0/24"]) == client


def test_lockout_and_key_cache_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "MAX_TRACKED", 3)
    clock = Clock()
    lockout = Lockout(max_failures=2, window=60, duration=300, clock=clock)
    lockout.fail("source:a")
    lockout.fail("source:a")  # locked out: kept
    lockout.fail("source:b")
    clock.now += 61
    lockout.fail("source:c")
    lockout.fail("source:d")  # over the bound: b, quiet for a minute, is forgotten
    assert lockout.remaining("source:a") > 0
    assert set(lockout._subjects) == {"source:a", "source:c", "source:d"}

    cache = CachedLookup(fresh=5, grace=300, clock=clock)
    for name in "wxyz":
        run(cache, name, lambda _: None)
    assert list(cache._entries) == ["x", "y", "z"]
