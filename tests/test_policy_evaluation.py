"""Every decision carries its effect and the rule of the document that made it."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from policies import DataClass, Decision, Effect, Permission, PiiType, PolicyEvaluator, ResidencyPolicy, parse_policy
from policies.evaluation import Endpoint, image_registry
from policies.loader import default_policy_path

DEFAULT_TEXT = default_policy_path().read_text(encoding="utf-8")
FOREIGN_EGRESS = """      - name: translation-api
        country: US
        hosts: [translate.example.com]
        ports: [443]
        purpose: Public-data translation service abroad.
"""
FOREIGN_SITE = """    - name: us-east-1
      kind: cloud-region
      country: US
      region: us-east-1
      cidrs: [172.16.0.0/16]
      zones:
        - name: us-east-1a
"""


@pytest.fixture(scope="module")
def evaluator() -> PolicyEvaluator:
    text = DEFAULT_TEXT.replace("  imageRegistries:\n", FOREIGN_EGRESS + "\n  imageRegistries:\n")
    text = text.replace("  dataClasses:\n", FOREIGN_SITE + "\n  dataClasses:\n")
    return PolicyEvaluator(parse_policy(text))


def test_blocked_class_is_denied_everywhere_by_its_class_rule(evaluator: PolicyEvaluator) -> None:
    decision = evaluator.may_send(DataClass.UNIQUE_IDENTIFIER, "https://registry.sovereign.kr")
    assert decision == Decision(
        Effect.DENY, "spec.dataClasses.unique-identifier", "data class `unique-identifier` is blocked everywhere"
    )


def test_unknown_endpoint_is_denied_by_default_egress(evaluator: PolicyEvaluator) -> None:
    decision = evaluator.may_send("public", "https://api.openai.com/v1/chat/completions")
    assert decision.effect is Effect.DENY
    assert decision.rule == "spec.egress.default"


@pytest.mark.parametrize(
    ("data_class", "expected"),
    [
        (
            "internal",
            Decision(
                Effect.DENY,
                "spec.dataClasses.internal.inCountryOnly",
                "data class `internal` must stay in KR, and egress rule `translation-api` is in US",
            ),
        ),
        (
            "public",
            Decision(
                Effect.ALLOW,
                "spec.egress.allow[translation-api]",
                "data class `public` may go to egress rule `translation-api`",
            ),
        ),
    ],
)
def test_only_classes_free_to_leave_may_go_to_a_foreign_allowed_endpoint(
    evaluator: PolicyEvaluator, data_class: str, expected: Decision
) -> None:
    assert evaluator.may_send(data_class, "https://translate.example.com/v2") == expected


def test_personal_data_in_country_is_allowed_after_redaction(evaluator: PolicyEvaluator) -> None:
    decision = evaluator.may_send(DataClass.PERSONAL, "registry.sovereign.kr:443")
    assert decision.effect is Effect.REDACT
    assert decision.allowed
    assert decision.rule == "spec.dataClasses.personal"


def test_port_outside_the_rule_is_denied(evaluator: PolicyEvaluator) -> None:
    assert evaluator.may_send("public", "http://registry.sovereign.kr").rule == "spec.egress.default"
    assert evaluator.may_send("public", "registry.sovereign.kr:8443").effect is Effect.DENY


def test_addresses_resolve_to_sites_by_their_networks(evaluator: PolicyEvaluator) -> None:
    assert evaluator.may_send("internal", "10.10.70.4").rule == "spec.sites[kr-seoul-1]"
    decision = evaluator.may_send("internal", "http://172.16.3.4:8000")
    assert decision.rule == "spec.dataClasses.internal.inCountryOnly"
    assert decision.reason.endswith("site `us-east-1` is in US")
    assert evaluator.may_send("public", "10.96.0.10:53").rule == "spec.egress.allow[cluster-dns]"


def test_wildcard_hosts_match_subdomains_only() -> None:
    text = DEFAULT_TEXT.replace("hosts: [registry.sovereign.kr]", "hosts: ['*.sovereign.kr']")
    evaluator = PolicyEvaluator(parse_policy(text))
    assert evaluator.may_send("public", "https://mirror.sovereign.kr").allowed
    assert not evaluator.may_send("public", "https://sovereign.kr").allowed
    assert not evaluator.may_send("public", "https://evilsovereign.kr").allowed


def test_site_residency(evaluator: PolicyEvaluator) -> None:
    assert evaluator.site_in_country("kr-seoul-1") == Decision(
        Effect.ALLOW, "spec.sites[kr-seoul-1]", "site `kr-seoul-1` is in KR"
    )
    assert evaluator.site_in_country("us-east-1") == Decision(
        Effect.DENY, "spec.sites[us-east-1]", "site `us-east-1` is in US, outside KR"
    )
    unknown = evaluator.site_in_country("mars-1")
    assert unknown.effect is Effect.DENY
    assert unknown.rule == "spec.sites"
    assert "known sites: kr-seoul-1, kr-daejeon-1, local, us-east-1" in unknown.reason
    assert [site.name for site in evaluator.in_country_sites()] == ["kr-seoul-1", "kr-daejeon-1", "local"]


def test_roles(evaluator: PolicyEvaluator) -> None:
    assert evaluator.may("model-admin", "registry.promote") == Decision(
        Effect.ALLOW, "spec.roles.model-admin", "role `model-admin` may registry.promote"
    )
    assert evaluator.may("auditor", Permission.DEPLOY) == Decision(
        Effect.DENY, "spec.roles.auditor", "role `auditor` may not deploy; it may: audit.read, usage.read"
    )
    assert evaluator.may("intern", "inference").rule == "spec.roles"


def test_wildcard_role_grants_every_action() -> None:
    text = DEFAULT_TEXT.replace("permissions: [tenants.manage, keys.manage]", "permissions: ['*']")
    evaluator = PolicyEvaluator(parse_policy(text))
    assert all(evaluator.may("platform-admin", p).allowed for p in Permission if p is not Permission.ALL)


@pytest.mark.parametrize("action", ["fly", "*"])
def test_unknown_action_is_an_error_not_a_denial(evaluator: PolicyEvaluator, action: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"unknown action `{action}`; expected one of: inference, deploy")):
        evaluator.may("model-user", action)


def test_training_rules(evaluator: PolicyEvaluator) -> None:
    assert evaluator.may_train_on("public").allowed
    decision = evaluator.may_train_on("unique-identifier")
    assert decision.effect is Effect.DENY
    assert decision.rule == "spec.dataClasses.unique-identifier.trainingAllowed"


def test_images_only_from_allowed_registries(evaluator: PolicyEvaluator) -> None:
    assert evaluator.image_allowed("registry.sovereign.kr/sovereign/gateway:0.1.0").allowed
    denied = evaluator.image_allowed("nginx:1.27")
    assert denied.effect is Effect.DENY
    assert denied.reason == "image `nginx:1.27` comes from `docker.io`; allowed registries: registry.sovereign.kr"


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("nginx", "docker.io"),
        ("library/nginx:1", "docker.io"),
        ("registry.sovereign.kr:5000/a/b:c", "registry.sovereign.kr"),
        ("localhost/x", "localhost"),
    ],
)
def test_image_registry_parsing(image: str, registry: str) -> None:
    assert image_registry(image) == registry


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("https://Registry.Sovereign.kr/v2/", "registry.sovereign.kr", 443),
        ("http://10.0.0.1:8080", "10.0.0.1", 8080),
        ("idp.sovereign.kr:8443", "idp.sovereign.kr", 8443),
        ("idp.sovereign.kr", "idp.sovereign.kr", None),
        ("::1", "::1", None),
        ("http://[::1]:80/x", "::1", 80),
    ],
)
def test_endpoint_parsing(text: str, host: str, port: int | None) -> None:
    assert Endpoint.parse(text) == Endpoint(host, port)


@pytest.mark.parametrize(("text", "message"), [("", "endpoint is empty"), ("http://h:99999", "invalid port")])
def test_bad_endpoints_are_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Endpoint.parse(text)


def test_policy_needs_a_site_in_its_jurisdiction() -> None:
    text = DEFAULT_TEXT.replace("country: KR\n      region", "country: JP\n      region")
    with pytest.raises(ValueError, match="no site is in the jurisdiction KR: add a site with `country: KR`"):
        parse_policy(text)


def test_egress_rule_needs_a_destination() -> None:
    data = parse_policy(DEFAULT_TEXT).model_dump(by_alias=True)
    data["spec"]["egress"]["allow"][0]["cidrs"] = []
    with pytest.raises(ValidationError, match="an egress rule needs at least one of `cidrs` or `hosts`"):
        ResidencyPolicy.model_validate(data)


def test_digest_is_stable_and_changes_with_content(default_policy: ResidencyPolicy) -> None:
    again = parse_policy(DEFAULT_TEXT)
    assert default_policy.digest() == again.digest()
    changed = parse_policy(DEFAULT_TEXT.replace("retentionDays: 730", "retentionDays: 731"))
    assert changed.digest() != default_policy.digest()


def test_round_trip_through_camel_case_dump(default_policy: ResidencyPolicy) -> None:
    dumped = default_policy.model_dump(mode="json", by_alias=True)
    assert dumped["spec"]["dataClasses"]["unique-identifier"]["inCountryOnly"] is True
    assert dumped["spec"]["sites"][0]["cidrs"] == ["10.10.0.0/16"]
    assert ResidencyPolicy.model_validate(dumped) == default_policy


def test_identifier_types_map_to_policy_data_classes(evaluator: PolicyEvaluator) -> None:
    assert evaluator.data_class_of("KR_RRN") is DataClass.UNIQUE_IDENTIFIER
    assert evaluator.data_class_of(PiiType.EMAIL) is DataClass.PERSONAL


def test_identifier_mapping_follows_the_document() -> None:
    text = DEFAULT_TEXT.replace("    EMAIL: personal", "    EMAIL: internal")
    assert PolicyEvaluator(parse_policy(text)).data_class_of("EMAIL") is DataClass.INTERNAL


def test_egress_rules_name_every_rule_that_can_refuse_egress(evaluator: PolicyEvaluator) -> None:
    assert evaluator.egress_rules() == [
        "spec.egress.default",
        "spec.dataClasses.internal.inCountryOnly",
        "spec.dataClasses.personal.inCountryOnly",
        "spec.dataClasses.unique-identifier.inCountryOnly",
        "spec.dataClasses.sensitive.inCountryOnly",
    ]
    abroad = evaluator.may_send("personal", "https://llm.example.com/v1")
    assert abroad.rule in evaluator.egress_rules()
