"""Access control at the gateway, against the live stack and a real OpenBao dev server."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest
from fastapi.routing import APIRoute

from policies.access import Tenant
from policies.openbao import AccessStore, BaoServer, OpenBaoRefused, TenantCipher, connect
from tests.conftest import all_records

MODEL = "axk1-tiny"
HELLO = [{"role": "user", "content": "안녕하세요"}]
CHAT = {"model": MODEL, "messages": HELLO, "max_tokens": 2}

# One example per route: (method, path, JSON body, role that may call it, tenant, success status).
# A route missing here fails `test_every_route_is_covered`; a route without `requires` fails the walk.
ROUTE_EXAMPLES: dict[tuple[str, str], tuple[str, dict | None, str, str, int]] = {
    ("GET", "/openapi.json"): ("/openapi.json", None, "model-user", "acme", 200),
    ("GET", "/v1/models"): ("/v1/models", None, "model-user", "acme", 200),
    ("GET", "/v1/models/{model_id:path}"): (f"/v1/models/{MODEL}", None, "model-user", "acme", 200),
    ("POST", "/v1/chat/completions"): ("/v1/chat/completions", CHAT, "model-user", "acme", 200),
    ("POST", "/v1/completions"): (
        "/v1/completions",
        {"model": MODEL, "prompt": "a", "max_tokens": 2},
        "model-user",
        "acme",
        200,
    ),
    ("GET", "/v1/usage"): ("/v1/usage", None, "auditor", "acme", 200),
    ("GET", "/v1/audit"): ("/v1/audit?limit=5", None, "auditor", "acme", 200),
    ("GET", "/v1/keys"): ("/v1/keys", None, "platform-admin", "acme", 200),
    ("POST", "/v1/keys"): ("/v1/keys", {"role": "model-user", "name": "walk"}, "platform-admin", "acme", 201),
    ("DELETE", "/v1/keys/{key_id}"): ("/v1/keys/{key_id}", None, "platform-admin", "acme", 200),
    ("GET", "/metrics"): ("/metrics", None, "monitoring", "platform", 200),
}
# For each permission, a role of the default policy that lacks it.
WRONG_ROLE = {"model-user": "auditor", "auditor": "model-user", "platform-admin": "model-user", "monitoring": "auditor"}


def key_id(key: str) -> str:
    return key.removeprefix("sk-sov-").split("_")[0]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def call(
    stack: object, method: str, path: str, key: str | None = None, body: dict | None = None, source: str = "127.0.0.1"
) -> httpx.Response:
    """One request from `source` (any 127.0.0.0/8 address: lockout tests need sources of their own)."""
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=stack.base_url, timeout=60, transport=transport) as session:
        return session.request(method, path, json=body, headers=bearer(key) if key else {})


def app_routes() -> list[APIRoute]:
    from serving.ingress import api
    from serving.metrics import api_routes

    return api_routes(api.routes)


def test_every_route_is_covered_and_declares_a_permission() -> None:
    declared = {}
    for route in app_routes():
        for method in route.methods:
            checks = [d.call for d in route.dependant.dependencies if hasattr(d.call, "required_permission")]
            declared[(method, route.path)] = [check.required_permission for check in checks]
    public = {("GET", "/healthz")}
    assert set(declared) - public == set(ROUTE_EXAMPLES), "add an example for each new route to ROUTE_EXAMPLES"
    assert all(len(permissions) == 1 for key, permissions in declared.items() if key not in public), declared


@pytest.mark.parametrize("route", list(ROUTE_EXAMPLES), ids=lambda route: " ".join(route))
def test_route_needs_a_key_and_the_right_role(
    route: tuple[str, str], stack: object, make_key: Callable[..., str]
) -> None:
    method = route[0]
    path, body, role, tenant, success = ROUTE_EXAMPLES[route]
    if "{key_id}" in path:
        path = path.format(key_id=key_id(make_key(tenant, "model-user")))
    anonymous = call(stack, method, path, body=body)
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert anonymous.json()["error"]["code"] == "invalid_api_key"
    wrong = call(stack, method, path, make_key(tenant, WRONG_ROLE[role]), body)
    assert wrong.status_code == 403, wrong.text
    assert wrong.json()["error"]["code"] == "permission_denied"
    right = call(stack, method, path, make_key(tenant, role), body)
    assert right.status_code == success, right.text


def test_health_is_open_and_unknown_paths_reveal_nothing(stack: object) -> None:
    assert call(stack, "GET", "/healthz").status_code == 200
    assert call(stack, "GET", "/v1/no-such-route").status_code == 401
    assert call(stack, "GET", "/docs").status_code == 401


def test_malformed_and_unknown_keys_are_refused(stack: object, make_key: Callable[..., str]) -> None:
    key = make_key("acme")
    for credential in ("not-a-key", key[:-1] + ("A" if key[-1] != "A" else "B"), "sk-sov-" + "0" * 16 + "_x"):
        response = call(stack, "GET", "/v1/models", credential, source="127.0.0.2")
        assert response.status_code == 401, credential
        assert "sk-sov-" not in response.text.replace("`sk-sov-...`", "")


# --- tenants: isolation, models, data classes, sites -----------------------------------------


@pytest.fixture(scope="module")
def two_tenants(make_key: Callable[..., str], stack: object) -> dict[str, dict[str, str]]:
    keys = {
        tenant: {role: make_key(tenant, role) for role in ("model-user", "auditor", "platform-admin")}
        for tenant in ("iso-a", "iso-b")
    }
    for tenant in keys:
        assert call(stack, "POST", "/v1/chat/completions", keys[tenant]["model-user"], CHAT).status_code == 200
    return keys


def test_a_tenant_sees_only_its_own_usage(stack: object, two_tenants: dict[str, dict[str, str]]) -> None:
    usage = call(stack, "GET", "/v1/usage", two_tenants["iso-a"]["auditor"]).json()["data"]
    assert {row["tenant"] for row in usage} == {"iso-a"}
    assert usage[0]["requests"] >= 1
    assert usage[0]["total_tokens"] == usage[0]["prompt_tokens"] + usage[0]["completion_tokens"] > 0
    other = call(stack, "GET", "/v1/usage?tenant=iso-b", two_tenants["iso-a"]["auditor"])
    assert other.status_code == 403
    assert other.json()["error"]["code"] == "tenant_not_visible"


def test_a_tenant_sees_only_its_own_audit_records(stack: object, two_tenants: dict[str, dict[str, str]]) -> None:
    records = call(stack, "GET", "/v1/audit?limit=1000", two_tenants["iso-a"]["auditor"]).json()["data"]
    assert records
    assert {record["tenant"] for record in records} == {"iso-a"}
    assert call(stack, "GET", "/v1/audit?tenant=iso-b", two_tenants["iso-a"]["auditor"]).status_code == 403


def test_a_tenant_sees_and_revokes_only_its_own_keys(stack: object, two_tenants: dict[str, dict[str, str]]) -> None:
    admin_a = two_tenants["iso-a"]["platform-admin"]
    listed = call(stack, "GET", "/v1/keys", admin_a).json()["data"]
    assert {key["tenant"] for key in listed} == {"iso-a"}
    assert all("secretHash" not in key and "key" not in key for key in listed)
    assert call(stack, "GET", "/v1/keys?tenant=iso-b", admin_a).status_code == 403
    victim = two_tenants["iso-b"]["model-user"]
    refused = call(stack, "DELETE", f"/v1/keys/{key_id(victim)}", admin_a)
    assert refused.status_code == 404
    assert call(stack, "GET", "/v1/models", victim).status_code == 200
    created = call(stack, "POST", "/v1/keys", admin_a, {"role": "model-user", "tenant": "iso-b"})
    assert created.status_code == 403


def test_the_operator_tenant_sees_every_tenant(
    stack: object, two_tenants: dict[str, dict[str, str]], make_key: Callable[..., str]
) -> None:
    operator = make_key("platform", "auditor")
    usage = call(stack, "GET", "/v1/usage", operator).json()["data"]
    assert {"iso-a", "iso-b"} <= {row["tenant"] for row in usage}
    assert call(stack, "GET", "/v1/usage?tenant=iso-b", operator).json()["data"][0]["tenant"] == "iso-b"


def test_models_data_classes_and_sites_of_a_tenant(stack: object, make_key: Callable[..., str]) -> None:
    other_model = make_key(Tenant(name="only-other-model", models=["another-model"]))
    assert call(stack, "GET", "/v1/models", other_model).json()["data"] == []
    refused = call(stack, "POST", "/v1/chat/completions", other_model, CHAT)
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "model_not_allowed")

    public_only = make_key(Tenant(name="public-only", data_classes=["public"]))
    phone = {**CHAT, "messages": [{"role": "user", "content": "연락처 010-1234-5678"}]}
    refused = call(stack, "POST", "/v1/chat/completions", public_only, phone)
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "data_class_not_allowed")
    assert "tenants.public-only.dataClasses" in refused.json()["error"]["message"]
    assert call(stack, "POST", "/v1/chat/completions", public_only, CHAT).status_code == 200

    public_sector = make_key(Tenant(name="public-sector", min_csap_tier="high"))
    refused = call(stack, "POST", "/v1/chat/completions", public_sector, CHAT)
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "site_not_allowed")
    assert "needs a CSAP-high site; `local` holds no CSAP certification" in refused.json()["error"]["message"]


# --- limits ------------------------------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after(stack: object, make_key: Callable[..., str]) -> None:
    key = make_key(Tenant(name="slow", requests_per_minute=2))
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0)
    for _ in range(2):
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=1)
    assert caught.value.code == "rate_limit_exceeded"
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 30
    assert "2 requests per minute" in caught.value.message


def test_daily_token_quota_answers_429_until_midnight_utc(stack: object, make_key: Callable[..., str]) -> None:
    key = make_key(Tenant(name="frugal", tokens_per_day=40))
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0)
    used = 0
    while used < 40:
        used += client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8).usage.total_tokens
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8)
    assert caught.value.code == "insufficient_quota"
    now = time.gmtime()
    to_midnight = 86400 - (now.tm_hour * 3600 + now.tm_min * 60 + now.tm_sec)
    assert abs(int(caught.value.response.headers["retry-after"]) - to_midnight) <= 5


# --- lockout and revocation ---------------------------------------------------------------------


def test_repeated_failures_from_one_source_lock_it_out(
    stack: object, api_key: str, make_key: Callable[..., str], state_dir: Path
) -> None:
    source = "127.0.0.9"
    bad = make_key("acme")[:-4] + "AAAA"
    for _ in range(10):
        assert call(stack, "GET", "/v1/models", bad, source=source).status_code == 401
    locked = call(stack, "GET", "/v1/models", api_key, source=source)
    assert locked.status_code == 429
    assert locked.json()["error"]["code"] == "locked_out"
    assert 290 <= int(locked.headers["retry-after"]) <= 300
    assert call(stack, "GET", "/v1/models", api_key).status_code == 200, "other sources are not affected"
    lockouts = [r for r in all_records(state_dir) if r.get("action") == "lockout"]
    assert any(record["subject"] == f"source:{source}" for record in lockouts)
    metrics = call(stack, "GET", "/metrics", make_key("platform", "monitoring")).text
    assert 'sovereign_auth_lockouts_total{scope="source"}' in metrics
    assert 'sovereign_auth_failures_total{reason="bad_key"}' in metrics


def test_repeated_failures_against_one_key_lock_the_key(stack: object, make_key: Callable[..., str]) -> None:
    key = make_key("acme")
    bad = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    for attempt in range(10):
        call(stack, "GET", "/v1/models", bad, source=f"127.0.1.{attempt + 1}")
    locked = call(stack, "GET", "/v1/models", key, source="127.0.2.1")
    assert (locked.status_code, locked.json()["error"]["code"]) == (429, "locked_out")
    assert "this API key" in locked.json()["error"]["message"]


def test_revocation_takes_effect_within_the_key_cache_time(
    stack: object, make_key: Callable[..., str], access_store: AccessStore, default_policy: object
) -> None:
    key = make_key("acme")
    assert call(stack, "GET", "/v1/models", key).status_code == 200
    access_store.revoke_key(key_id(key))
    revoked_at = time.monotonic()
    limit = default_policy.spec.access.key_cache_seconds + 1
    while call(stack, "GET", "/v1/models", key, source="127.0.3.1").status_code == 200:
        assert time.monotonic() - revoked_at < limit, f"revoked key still accepted after {limit} s"
        time.sleep(0.2)
    assert call(stack, "GET", "/v1/models", key, source="127.0.3.1").status_code == 401


def test_revoking_through_the_api_is_audited(stack: object, make_key: Callable[..., str], state_dir: Path) -> None:
    admin = make_key("acme", "platform-admin")
    created = call(stack, "POST", "/v1/keys", admin, {"role": "model-user", "name": "ci"}).json()
    assert created["key"].startswith("sk-sov-")
    assert call(stack, "GET", "/v1/models", created["key"]).status_code == 200
    revoked = call(stack, "DELETE", f"/v1/keys/{created['id']}", admin).json()
    assert revoked["revoked"]
    actions = [(r.get("action"), r.get("keyId")) for r in all_records(state_dir) if r["kind"] == "admin"]
    assert ("key.create", created["id"]) in actions
    assert ("key.revoke", created["id"]) in actions
    bad_role = call(stack, "POST", "/v1/keys", admin, {"role": "superuser"})
    assert bad_role.status_code == 400
    assert bad_role.json()["error"]["param"] == "role"


# --- encryption of what we keep --------------------------------------------------------------


def test_captured_prompts_are_stored_encrypted_per_tenant(
    stack: object, make_key: Callable[..., str], state_dir: Path, openbao: BaoServer
) -> None:
    key = make_key(Tenant(name="debugging", debug_capture=True))
    secret_text = "분기 매출 보고서 초안 검토"
    body = {**CHAT, "messages": [{"role": "user", "content": secret_text}]}
    assert call(stack, "POST", "/v1/chat/completions", key, body).status_code == 200
    stored = (state_dir / "captures" / "debugging.jsonl").read_text()
    assert secret_text not in stored
    ciphertext = json.loads(stored.splitlines()[-1])["ciphertext"]
    assert ciphertext.startswith("vault:v1:")
    operator = TenantCipher(openbao.client())
    assert json.loads(operator.decrypt("debugging", ciphertext)) == [secret_text]
    with pytest.raises(OpenBaoRefused):
        operator.decrypt("acme", ciphertext)  # another tenant's derived key cannot open it
    blocked = {**CHAT, "messages": [{"role": "user", "content": "주민번호 900101-1234568"}]}
    assert call(stack, "POST", "/v1/chat/completions", key, blocked).status_code == 403
    assert len((state_dir / "captures" / "debugging.jsonl").read_text().splitlines()) == 1, "refusals are not kept"
    gateway = TenantCipher(
        connect(stack.openbao.access.vault_addr, stack.openbao.access.vault_token.get_secret_value())
    )
    with pytest.raises(OpenBaoRefused, match="permission denied"):
        gateway.decrypt("debugging", ciphertext)


def test_audit_checkpoints_are_signed_by_openbao_transit(tmp_path: Path, openbao: BaoServer) -> None:
    from policies.audit import AuditLog, LocalKey, verify
    from policies.openbao import TransitSigner

    signer = TransitSigner(openbao.client())
    key = LocalKey.load_or_create(tmp_path / "audit.key")
    log = AuditLog(tmp_path / "audit", key, signer, checkpoint_every=3)
    for number in range(7):
        log.append("request", n=number)
    (segment,) = (tmp_path / "audit").glob("audit-*.jsonl")
    records = [json.loads(line) for line in segment.read_text().splitlines()]
    checkpoints = [record for record in records if record["kind"] == "checkpoint"]
    assert len(checkpoints) >= 2
    assert {c["signer"] for c in checkpoints} == {"openbao-transit:audit-checkpoints"}
    assert checkpoints[0]["signature"].startswith("vault:v1:")
    assert verify(tmp_path / "audit", key, signer).intact
    unchecked = verify(tmp_path / "audit", key)
    assert unchecked.intact
    assert unchecked.unverified_signers == ("openbao-transit:audit-checkpoints",)
    forged = [{**r, "signature": checkpoints[0]["signature"]} if r["kind"] == "checkpoint" else r for r in records]
    segment.write_text("".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in forged))
    assert "checkpoint signature is invalid" in verify(tmp_path / "audit", None, signer).problem
