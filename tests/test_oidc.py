"""OIDC bearer tokens from an in-country identity provider: a JWKS served on loopback, tokens signed here."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from policies import ResidencyPolicy
from policies.model import Oidc

ISSUER = "https://idp.sovereign.kr/realms/sovereign"
AUDIENCE = "sovereign-gateway"
SIGNING_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ROGUE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwks_url(allocate_port: Callable[[], int]) -> Iterator[str]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(SIGNING_KEY.public_key()))
    body = json.dumps({"keys": [{**jwk, "kid": "idp-1", "use": "sig", "alg": "RS256"}]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", allocate_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/realms/sovereign/protocol/openid-connect/certs"
    server.shutdown()


@pytest.fixture(scope="module")
def oidc_gateway(stack: object, jwks_url: str, default_policy: ResidencyPolicy) -> Iterator[str]:
    from ray import serve

    from serving.app import build_app
    from serving.config import ServingConfig

    oidc = Oidc(issuer=ISSUER, audience=AUDIENCE, jwks_url=jwks_url)
    access = default_policy.spec.access.model_copy(update={"oidc": oidc})
    policy = default_policy.model_copy(update={"spec": default_policy.spec.model_copy(update={"access": access})})
    serve.run(build_app(ServingConfig(), policy, stack.card, stack.openbao.access), name="oidc", route_prefix="/oidc")
    yield f"{stack.base_url}/oidc"
    serve.delete("oidc")


def token(key: object = SIGNING_KEY, kid: str = "idp-1", **claims: Any) -> str:
    now = int(time.time())
    payload = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "hong.gildong",
        "iat": now,
        "exp": now + 300,
        "tenant": "acme",
        "role": "model-user",
        **claims,
    }
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid})


def models(gateway: str, bearer: str, source: str = "127.0.4.1") -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=30) as session:
        return session.get(f"{gateway}/v1/models", headers={"Authorization": f"Bearer {bearer}"})


def test_a_valid_token_maps_its_claims_to_tenant_and_role(oidc_gateway: str, api_key: str) -> None:
    assert models(oidc_gateway, token()).status_code == 200
    refused = models(oidc_gateway, token(role="auditor"))
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "permission_denied")
    assert models(oidc_gateway, api_key).status_code == 200, "API keys still work beside OIDC"


@pytest.mark.parametrize(
    ("bearer", "reason"),
    [
        (lambda: token(exp=int(time.time()) - 60), "Signature has expired"),
        (lambda: token(aud="someone-else"), "Audience doesn't match"),
        (lambda: token(iss="https://idp.example.com"), "Invalid issuer"),
        (lambda: token(key=ROGUE_KEY), "Signature verification failed"),
        (lambda: token(kid="unknown-kid"), "Unable to find a signing key"),
    ],
    ids=["expired", "audience", "issuer", "forged", "unknown-kid"],
)
def test_bad_tokens_get_401_with_the_reason(oidc_gateway: str, bearer: Callable[[], str], reason: str) -> None:
    response = models(oidc_gateway, bearer(), source="127.0.4.2")
    assert response.status_code == 401
    assert reason in response.json()["error"]["message"]


def test_claims_must_name_a_known_tenant_and_role(oidc_gateway: str) -> None:
    unknown_role = models(oidc_gateway, token(role="root"))
    assert (unknown_role.status_code, unknown_role.json()["error"]["code"]) == (403, "invalid_claims")
    unknown_tenant = models(oidc_gateway, token(tenant="no-such-tenant"))
    assert (unknown_tenant.status_code, unknown_tenant.json()["error"]["code"]) == (403, "unknown_tenant")
