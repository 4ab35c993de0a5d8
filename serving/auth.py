"""Authentication, authorisation and limits at the gateway: who is calling, may they, and how much.

`AccessGate` holds everything per gateway replica: verified keys and tenants cached for a few
seconds (revocation takes effect within `keyCacheSeconds`), the outage grace period (keys verified
before OpenBao went away stay valid for `outageGraceSeconds`, then 503: never open), lockouts after
repeated failures, per-tenant token buckets and daily token quotas, and per-tenant usage.

`AccessMiddleware` authenticates every request but `/healthz` before routing, so nothing reaches a
handler (or body parsing) unauthenticated; each route then declares its permission with `requires`.

No `from __future__ import annotations`: Ray pickles the route dependencies by value, and FastAPI
must still see their real parameter types in the replica.
"""

import asyncio
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Literal, TypeVar

from fastapi import Depends, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from monitoring import catalogue
from policies import Permission, ResidencyPolicy
from policies.access import (
    Principal,
    Roles,
    Tenant,
    client_address,
    parse_api_key,
    secret_matches,
    tenant_may_use_site,
)
from policies.model import Oidc
from policies.openbao import AccessStore, KeyRecord, OpenBaoRefused, OpenBaoUnavailable
from serving.errors import APIError

logger = logging.getLogger("ray.serve")
OPEN_PATHS = frozenset({"/healthz"})
# After OpenBao failed to answer, wait this long before asking again, so an outage costs one timeout, not one each.
_RETRY_OPENBAO_SECONDS = 1.0
# Bounds on per-replica memory: random key ids or spoofed sources must not grow the caches without end.
MAX_TRACKED = 100_000


class AccessDenied(APIError):
    """An APIError that may carry `Retry-After` and `WWW-Authenticate` headers."""

    def __init__(
        self, status: int, message: str, code: str, retry_after: float | None = None, param: str | None = None
    ) -> None:
        super().__init__(status, message, param, code)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="sovereign-stack"'
        return headers


def unauthenticated(message: str) -> AccessDenied:
    return AccessDenied(401, message, "invalid_api_key")


def unavailable(what: str) -> AccessDenied:
    return AccessDenied(
        503,
        f"Access control is unavailable ({what}); the gateway refuses requests it cannot verify. Retry shortly.",
        "access_control_unavailable",
        retry_after=5,
    )


T = TypeVar("T")


@dataclass
class _Verified(Generic[T]):
    value: T
    verified_at: float


class CachedLookup(Generic[T]):
    """Values read from OpenBao, trusted for `fresh` seconds and, while OpenBao is unreachable, for `grace`."""

    def __init__(self, fresh: float, grace: float, clock: Callable[[], float]) -> None:
        self._fresh, self._grace, self._clock = fresh, grace, clock
        self._entries: dict[str, _Verified[T | None]] = {}
        self._down_until = 0.0

    async def get(self, name: str, load: Callable[[str], T | None], what: str) -> T | None:
        now = self._clock()
        entry = self._entries.get(name)
        if entry is not None and now - entry.verified_at < self._fresh:
            return entry.value
        if now >= self._down_until:
            try:
                value = await asyncio.to_thread(load, name)
            except (OpenBaoUnavailable, OpenBaoRefused) as error:
                # Refused too (an expired gateway token, a policy change): fail closed, never open.
                logger.error("OpenBao lookup of the %s failed: %s", what, error)
                self._down_until = self._clock() + _RETRY_OPENBAO_SECONDS
            else:
                self._entries.pop(name, None)  # re-insert, so the oldest verification is evicted first
                self._entries[name] = _Verified(value, self._clock())
                if len(self._entries) > MAX_TRACKED:
                    del self._entries[next(iter(self._entries))]
                return value
        # OpenBao is down. A negative answer (revoked, unknown) stays negative; a positive one ages out.
        if entry is not None and (entry.value is None or now - entry.verified_at < self._grace):
            return entry.value
        raise unavailable(f"OpenBao cannot be reached to verify the {what}")


@dataclass
class _Failures:
    times: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0


class Lockout:
    """Counts failed authentications per source and per key; too many in the window lock that subject out."""

    def __init__(self, max_failures: int, window: float, duration: float, clock: Callable[[], float]) -> None:
        self._max, self._window, self._duration, self._clock = max_failures, window, duration, clock
        self._subjects: dict[str, _Failures] = {}

    def remaining(self, subject: str) -> float:
        """Seconds until `subject` may try again; 0 when it is not locked out."""
        failures = self._subjects.get(subject)
        return max(0.0, failures.locked_until - self._clock()) if failures else 0.0

    def fail(self, subject: str) -> bool:
        """Record a failure; True when it starts a lockout."""
        now = self._clock()
        if subject not in self._subjects and len(self._subjects) >= MAX_TRACKED:
            self._forget_quiet_subjects(now)
        failures = self._subjects.setdefault(subject, _Failures())
        failures.times.append(now)
        while failures.times and failures.times[0] <= now - self._window:
            failures.times.popleft()
        if len(failures.times) >= self._max and failures.locked_until <= now:
            failures.locked_until = now + self._duration
            failures.times.clear()
            return True
        return False

    def _forget_quiet_subjects(self, now: float) -> None:
        """Drop subjects neither locked out nor failing within the window; if all are active, the oldest."""
        quiet = [
            subject
            for subject, failures in self._subjects.items()
            if failures.locked_until <= now and (not failures.times or failures.times[-1] <= now - self._window)
        ]
        for subject in quiet or [next(iter(self._subjects))]:
            del self._subjects[subject]


class TokenBucket:
    """`rate` requests per minute with bursts up to `rate`; refills continuously."""

    def __init__(self, per_minute: int, clock: Callable[[], float]) -> None:
        self.per_minute = per_minute
        self._tokens = float(per_minute)
        self._clock = clock
        self._updated = clock()

    def take(self) -> float:
        """0 when a request may pass, else the seconds until one may."""
        now = self._clock()
        refill_per_second = self.per_minute / 60
        self._tokens = min(self.per_minute, self._tokens + (now - self._updated) * refill_per_second)
        self._updated = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / refill_per_second


@dataclass
class Usage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


def _utc_day(now: datetime) -> str:
    return now.date().isoformat()


class UsageMeter:
    """Usage per tenant and UTC day: this replica's own counts plus the other replicas' last shared ones.

    `sync` writes this replica's counts to OpenBao (`usage/<tenant>/<day>/<replica>`) and reads the
    others', so quotas hold across replicas and restarts to within one sync interval.
    """

    def __init__(self, store: AccessStore) -> None:
        self._store = store
        self.replica = uuid.uuid4().hex[:12]
        self._own: dict[tuple[str, str], Usage] = {}
        self._others: dict[tuple[str, str], Usage] = {}
        self._shared: dict[tuple[str, str], dict[str, int]] = {}

    def own(self, tenant: str, day: str) -> Usage:
        return self._own.setdefault((tenant, day), Usage())

    def total(self, tenant: str, day: str) -> Usage:
        own, others = self.own(tenant, day), self._others.get((tenant, day), Usage())
        return Usage(
            own.requests + others.requests,
            own.prompt_tokens + others.prompt_tokens,
            own.completion_tokens + others.completion_tokens,
        )

    def report(self, tenants: list[str] | None) -> list[dict[str, Any]]:
        return [
            {"tenant": tenant, "date": day, **self.total(tenant, day).as_dict()}
            for tenant, day in sorted(self._own.keys() | self._others.keys())
            if tenants is None or tenant in tenants
        ]

    def sync(self, day: str) -> None:
        """Share this replica's changed counts and take in the others' for `day` (blocking: run it in a thread)."""
        for (tenant, counted_day), usage in list(self._own.items()):
            counts = usage.as_dict()
            if self._shared.get((tenant, counted_day)) != counts:
                self._store.put_usage(tenant, counted_day, self.replica, counts)
                self._shared[(tenant, counted_day)] = counts
        others: dict[tuple[str, str], Usage] = {}
        for (tenant, replica), counts in self._store.usage_of_day(day).items():
            if replica != self.replica:
                total = others.setdefault((tenant, day), Usage())
                total.requests += counts.get("requests", 0)
                total.prompt_tokens += counts.get("prompt_tokens", 0)
                total.completion_tokens += counts.get("completion_tokens", 0)
        self._others = {key: usage for key, usage in self._others.items() if key[1] != day} | others


def seconds_to_utc_midnight(now: datetime) -> float:
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (tomorrow - now).total_seconds()


EventSink = Callable[[str, dict[str, Any]], Awaitable[None]]


class AccessGate:
    """The gateway's access decisions; one per replica. `clock` is monotonic seconds, `now` UTC time."""

    def __init__(
        self,
        policy: ResidencyPolicy,
        store: AccessStore,
        site: str,
        on_event: EventSink,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        settings = policy.spec.access
        self.policy = policy
        self.roles = Roles(policy)
        self.site = site
        self.store = store
        self.trusted_proxies = [str(network) for network in settings.trusted_proxies]
        self._on_event = on_event
        self._now = now
        self._keys: CachedLookup[KeyRecord] = CachedLookup(
            settings.key_cache_seconds, settings.outage_grace_seconds, clock
        )
        self._tenants: CachedLookup[Tenant] = CachedLookup(
            settings.key_cache_seconds, settings.outage_grace_seconds, clock
        )
        lockout = settings.lockout
        self.lockout = Lockout(lockout.max_failures, lockout.window_seconds, lockout.duration_seconds, clock)
        self._oidc = OidcVerifier(settings.oidc) if settings.oidc else None
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self.meter = UsageMeter(store)
        self._sync_seconds = settings.usage_sync_seconds
        self._sharing: asyncio.Task[None] | None = None

    # -- authentication ---------------------------------------------------------------------------

    async def authenticate(self, authorization: str | None, source: str) -> tuple[Principal, Tenant]:
        """The caller and its tenant, or AccessDenied: 401, 403 (unknown tenant), 429 (locked out) or 503."""
        if locked := self.lockout.remaining(f"source:{source}"):
            raise _locked_out("this address", locked)
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthenticated(
                "You didn't provide an API key. Send it as `Authorization: Bearer sk-sov-...`; "
                "`sovereign keys create` makes one."
            )
        token = token.strip()
        if (parsed := parse_api_key(token)) is not None:
            principal = await self._api_key_principal(*parsed, source)
        elif self._oidc is not None and token.count(".") == 2:
            principal = await self._oidc_principal(token, source)
        else:
            await self._failed(source, None, "malformed_credential")
            raise unauthenticated("Incorrect API key provided: it is not a sovereign-stack key (`sk-sov-...`).")
        tenant = await self._tenants.get(principal.tenant, self.store.tenant, "tenant")
        if tenant is None:
            raise AccessDenied(403, f"Tenant `{principal.tenant}` does not exist.", "unknown_tenant")
        return principal, tenant

    async def _api_key_principal(self, key_id: str, secret: str, source: str) -> Principal:
        if locked := self.lockout.remaining(f"key:{key_id}"):
            raise _locked_out("this API key", locked)
        record = await self._keys.get(key_id, self.store.key, "API key")
        if record is None or record.revoked is not None or not secret_matches(secret, record.secret_hash):
            await self._failed(source, key_id, "revoked_key" if record is not None and record.revoked else "bad_key")
            raise unauthenticated("Incorrect API key provided, or the key was revoked.")
        return self.roles.principal(record.tenant, f"key:{key_id}", record.role, "api-key")

    async def _oidc_principal(self, token: str, source: str) -> Principal:
        assert self._oidc is not None
        try:
            claims = await asyncio.to_thread(self._oidc.verify, token)
        except OidcUnavailable as error:
            raise unavailable(str(error)) from None
        except OidcInvalid as error:
            await self._failed(source, None, "bad_oidc_token")
            raise unauthenticated(f"The bearer token was refused: {error}.") from None
        tenant, role = claims.get(self._oidc.settings.tenant_claim), claims.get(self._oidc.settings.role_claim)
        if not isinstance(tenant, str) or not isinstance(role, str) or role not in self.roles:
            raise AccessDenied(
                403,
                f"The token's `{self._oidc.settings.tenant_claim}` and `{self._oidc.settings.role_claim}` claims "
                f"must name a tenant and one of the roles {', '.join(self.roles.names)}.",
                "invalid_claims",
            )
        return self.roles.principal(tenant, f"oidc:{claims.get('sub', '?')}", role, "oidc")

    async def _failed(self, source: str, key_id: str | None, reason: catalogue.AuthFailureReason) -> None:
        subjects = [f"source:{source}", *([f"key:{key_id}"] if key_id else [])]
        for subject in subjects:
            if self.lockout.fail(subject):
                await self._on_event(
                    "lockout",
                    {"subject": subject, "reason": reason, "seconds": self.policy.spec.access.lockout.duration_seconds},
                )
        await self._on_event("auth_failure", {"source": source, "reason": reason})

    # -- authorisation and limits ----------------------------------------------------------------

    def authorize(self, principal: Principal, permission: Permission) -> None:
        if (refusal := self.roles.authorize(principal, permission)) is not None:
            catalogue.ACCESS_REFUSALS.labels(principal.tenant, "permission").inc()
            raise AccessDenied(403, f"{refusal.reason} (rule {refusal.rule}).", "permission_denied")

    def admit(self, tenant: Tenant) -> None:
        """Site, rate and quota checks for a model request."""
        site = tenant_may_use_site(self.policy, tenant, self.site)
        if not site.allowed:
            catalogue.ACCESS_REFUSALS.labels(tenant.name, "site").inc()
            raise AccessDenied(403, f"{site.reason} (rule {site.rule}).", "site_not_allowed")
        bucket = self._buckets.get(tenant.name)
        if bucket is None or bucket.per_minute != tenant.requests_per_minute:
            bucket = self._buckets[tenant.name] = TokenBucket(tenant.requests_per_minute, self._clock)
        if wait := bucket.take():
            catalogue.ACCESS_REFUSALS.labels(tenant.name, "rate").inc()
            raise AccessDenied(
                429,
                f"Rate limit reached for tenant `{tenant.name}`: {tenant.requests_per_minute} requests per minute. "
                f"Retry after {math.ceil(wait)} s.",
                "rate_limit_exceeded",
                retry_after=wait,
            )
        now = self._now()
        if self.meter.total(tenant.name, _utc_day(now)).total_tokens >= tenant.tokens_per_day:
            catalogue.ACCESS_REFUSALS.labels(tenant.name, "quota").inc()
            raise AccessDenied(
                429,
                f"Tenant `{tenant.name}` used its quota of {tenant.tokens_per_day} tokens for {_utc_day(now)} "
                "(UTC). It resets at midnight UTC.",
                "insufficient_quota",
                retry_after=seconds_to_utc_midnight(now),
            )
        self.meter.own(tenant.name, _utc_day(now)).requests += 1
        catalogue.TENANT_REQUESTS.labels(tenant.name).inc()

    def record_tokens(self, tenant: str, prompt_tokens: int, completion_tokens: int) -> None:
        usage = self.meter.own(tenant, _utc_day(self._now()))
        usage.prompt_tokens += prompt_tokens
        usage.completion_tokens += completion_tokens
        catalogue.TENANT_TOKENS.labels(tenant, "prompt").inc(prompt_tokens)
        catalogue.TENANT_TOKENS.labels(tenant, "completion").inc(completion_tokens)

    def usage_report(self, tenants: list[str] | None) -> list[dict[str, Any]]:
        """Usage per tenant and UTC day, for the tenants given (None: all), summed over replicas."""
        return self.meter.report(tenants)

    async def share_usage(self) -> None:
        """Before the first request: take in what other replicas (and earlier runs) counted today; then keep
        sharing every `usageSyncSeconds` and renew the OpenBao token about hourly, in the background."""
        if self._sharing is not None:
            return
        self._sharing = asyncio.create_task(self._share_forever())
        await self._sync_once()

    async def _share_forever(self) -> None:
        renewed = self._clock()
        while True:
            await asyncio.sleep(self._sync_seconds)
            await self._sync_once()
            if self._clock() - renewed >= 3600:
                try:
                    await asyncio.to_thread(self.store.renew_token)
                    renewed = self._clock()
                except (OpenBaoUnavailable, OpenBaoRefused) as error:
                    logger.error("could not renew the gateway's OpenBao token: %s", error)

    async def _sync_once(self) -> None:
        try:
            await asyncio.to_thread(self.meter.sync, _utc_day(self._now()))
        except (OpenBaoUnavailable, OpenBaoRefused) as error:
            # Counting goes on locally; the next sync shares it.
            logger.error("could not share usage through OpenBao: %s", error)


def _locked_out(what: str, seconds: float) -> AccessDenied:
    return AccessDenied(
        429,
        f"Too many failed authentications from {what}; it is locked out for {math.ceil(seconds)} s more.",
        "locked_out",
        retry_after=seconds,
    )


# --- OIDC ----------------------------------------------------------------------------------------


class OidcInvalid(ValueError):
    """The token is not one we accept: bad signature, expired, wrong issuer or audience."""


class OidcUnavailable(RuntimeError):
    """The identity provider's keys could not be fetched."""


class OidcVerifier:
    """Verifies bearer JWTs against the in-country provider's JWKS with PyJWT (keys cached, refetched on rotation)."""

    def __init__(self, settings: Oidc) -> None:
        import jwt

        self.settings = settings
        self._jwks = jwt.PyJWKClient(settings.jwks_url, cache_keys=True, lifespan=300, timeout=5)

    def verify(self, token: str) -> dict[str, Any]:
        import jwt

        try:
            signing_key = self._jwks.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as error:
            where = self.settings.jwks_url
            raise OidcUnavailable(f"the identity provider's keys at {where} cannot be fetched") from error
        except jwt.PyJWKClientError as error:
            raise OidcInvalid(str(error)) from None
        except jwt.DecodeError as error:
            raise OidcInvalid(f"malformed token: {error}") from None
        try:
            return jwt.decode(
                token,
                signing_key.key,
                algorithms=self.settings.algorithms,
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.InvalidTokenError as error:
            raise OidcInvalid(str(error) or type(error).__name__) from None


# --- FastAPI wiring ------------------------------------------------------------------------------


class AccessMiddleware:
    """Authenticate every HTTP request except `OPEN_PATHS`, before routing and before the body is read."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        gate: AccessGate | None = getattr(scope["app"].state, "access", None)
        try:
            if gate is None:
                raise unavailable("the gateway has not finished starting")
            headers = dict(scope["headers"])
            authorization = headers.get(b"authorization", b"").decode("latin-1") or None
            peer = scope["client"][0] if scope.get("client") else "unknown"
            forwarded = headers.get(b"x-forwarded-for", b"").decode("latin-1") or None
            source = client_address(peer, forwarded, gate.trusted_proxies) if forwarded else peer
            principal, tenant = await gate.authenticate(authorization, source)
            await gate.share_usage()
        except AccessDenied as denial:
            await _send_error(denial, send)
            return
        scope.setdefault("state", {}).update(principal=principal, tenant=tenant)
        await self.app(scope, receive, send)


async def _send_error(denial: AccessDenied, send: Send) -> None:
    from fastapi.responses import JSONResponse

    response = JSONResponse(denial.body(), status_code=denial.status, headers=denial.headers())
    await response({"type": "http"}, _no_body, send)


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


@dataclass(frozen=True)
class Caller:
    principal: Principal
    tenant: Tenant


def requires(permission: Permission, admission: Literal["model", "none"] = "none") -> Any:
    """A route dependency: the caller must hold `permission`; for model routes, also pass site, rate and quota."""

    async def check(request: Request) -> Caller:  # async: a sync dependency would cost a thread hop
        gate: AccessGate = request.app.state.access
        principal: Principal = request.state.principal
        tenant: Tenant = request.state.tenant
        gate.authorize(principal, permission)
        if admission == "model":
            gate.admit(tenant)
        return Caller(principal, tenant)

    check.required_permission = permission  # read by the endpoint-coverage test
    return Depends(check)
