"""The registry's rules as pure functions: gates, manifests, lineage, artifact stores, parameter counts."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from policies import PolicyError, ResidencyPolicy, default_policy_path, parse_policy
from policies.access import Principal, Roles
from policies.registry import (
    Approval,
    Dataset,
    FileEntry,
    Gate,
    Manifest,
    RegistryError,
    VersionFacts,
    artifact_store_for,
    check_store,
    dataset_from_report,
    evaluate_gates,
    parse_dataset_option,
    verify_directory,
)
from serving.registry import alias_problem, model_name_problem
from tests.conftest import manifest_of

DEFAULT_TEXT = default_policy_path().read_text(encoding="utf-8")


@pytest.fixture
def approver(default_policy: ResidencyPolicy) -> Principal:
    return Roles(default_policy).principal("acme", "key:bbbb", "model-admin", "api-key")


@pytest.fixture
def facts() -> VersionFacts:
    """A version every gate passes: in the embedded store, intact, trained on clean data, registered by another."""
    return VersionFacts(
        source="mlflow-artifacts:/1/abc/artifacts/checkpoint",
        storage_site="local",
        checksum_problems=[],
        datasets=[Dataset("news", "f" * 64, True, "kr-default@abc")],
        registered_by="acme/key:aaaa",
    )


def failed(policy: ResidencyPolicy, facts: VersionFacts, approver: Principal) -> dict[str, str]:
    return {r.gate.value: r.reason for r in evaluate_gates(policy, facts, approver) if not r.passed}


def test_every_gate_passes_for_a_clean_version(
    default_policy: ResidencyPolicy, facts: VersionFacts, approver: Principal
) -> None:
    results = evaluate_gates(default_policy, facts, approver)
    assert [(result.gate, result.passed) for result in results] == [(gate, True) for gate in Gate]


@pytest.mark.parametrize(
    ("change", "gate", "reason"),
    [
        ({"source": "s3://models-us-east-1/axk1"}, "in_country", "in no artifact store of policy `kr-default`"),
        ({"storage_site": "kr-seoul-1"}, "in_country", "says its artifacts are on site `kr-seoul-1`"),
        ({"checksum_problems": ["`a`: missing"]}, "checksums", "`a`: missing"),
        ({"datasets": None}, "datasets_scanned", "no training data declared"),
        ({"datasets": [Dataset("crm")]}, "datasets_scanned", "dataset `crm` has no scan report"),
        (
            {"datasets": [Dataset("crm", "f" * 64, False, "kr-default@abc", {"KR_RRN": 3})]},
            "datasets_scanned",
            "dataset `crm`'s scan forbids training on it (KR_RRN 3)",
        ),
        ({"registered_by": "acme/key:bbbb"}, "four_eyes", "registered this version; a second person must approve"),
        ({"registered_by": None}, "four_eyes", "no valid signed registration"),
    ],
)
def test_each_gate_refuses_on_its_own(
    default_policy: ResidencyPolicy,
    facts: VersionFacts,
    approver: Principal,
    change: dict[str, object],
    gate: str,
    reason: str,
) -> None:
    refused = failed(default_policy, replace(facts, **change), approver)
    assert list(refused) == [gate]
    assert reason in refused[gate]


def test_an_approver_needs_the_promote_permission(default_policy: ResidencyPolicy, facts: VersionFacts) -> None:
    auditor = Roles(default_policy).principal("acme", "key:cccc", "auditor", "api-key")
    assert failed(default_policy, facts, auditor) == {
        "four_eyes": "approver `acme/key:cccc` has role `auditor`, which may not registry.promote "
        "(spec.roles; e.g. model-admin may)"
    }


def test_an_exception_clears_a_dataset_and_is_named(
    default_policy: ResidencyPolicy, facts: VersionFacts, approver: Principal
) -> None:
    datasets = [Dataset("news", "f" * 64, True), Dataset("crm")]
    dirty = replace(facts, datasets=datasets, exceptions={"crm": "SEC-1 by acme/key:b"})
    (result,) = [r for r in evaluate_gates(default_policy, dirty, approver) if r.gate is Gate.DATASETS_SCANNED]
    assert result.passed
    assert result.reason == "2 dataset(s) scanned clean (exceptions: crm)"
    declared_none = replace(facts, datasets=[])
    assert failed(default_policy, declared_none, approver) == {}


def test_many_checksum_problems_are_shown_with_a_count(
    default_policy: ResidencyPolicy, facts: VersionFacts, approver: Principal
) -> None:
    problems = [f"`shard-{n}`: missing" for n in range(14)]
    reason = failed(default_policy, replace(facts, checksum_problems=problems), approver)["checksums"]
    assert reason.endswith("`shard-9`: missing; and 4 more")


def test_longest_store_prefix_wins_and_stores_must_stay_in_country(default_policy: ResidencyPolicy) -> None:
    assert artifact_store_for(default_policy, "s3://sovereign-models/axk1/1").name == "seoul-object-store"
    assert artifact_store_for(default_policy, "s3://sovereign-models-eu/x") is None, "another bucket"
    unslashed = parse_policy(DEFAULT_TEXT.replace('"s3://sovereign-models/"', '"s3://sovereign-models"'))
    assert artifact_store_for(unslashed, "s3://sovereign-models/axk1").name == "seoul-object-store"
    assert artifact_store_for(unslashed, "s3://sovereign-models-eu/axk1") is None
    assert artifact_store_for(default_policy, "gs://elsewhere/x") is None
    for store in default_policy.spec.registry.artifact_stores:
        assert check_store(default_policy, store) is None
    document = DEFAULT_TEXT.replace("https://s3.kr-seoul.sovereign.kr", "https://s3.us-east-1.amazonaws.com")
    moved = parse_policy(document)
    problem = check_store(moved, moved.spec.registry.artifact_stores[1])
    assert problem is not None
    assert problem.startswith("artifact store `seoul-object-store` endpoint https://s3.us-east-1.amazonaws.com:")
    assert "spec.egress.default" in problem


def test_a_store_on_an_unknown_site_is_a_policy_error() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(DEFAULT_TEXT.replace("site: kr-seoul-1\n        uri:", "site: kr-busan-9\n        uri:"))
    assert "registry.artifactStores[1] (`seoul-object-store`) names site `kr-busan-9`" in str(caught.value)


def test_manifest_names_each_difference(tiny_checkpoint: Path, tmp_path: Path) -> None:
    manifest = manifest_of(tiny_checkpoint)
    assert set(manifest.files) == {p.name for p in tiny_checkpoint.iterdir()}
    assert Manifest.from_json(manifest.to_json(), "m") == manifest
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in tiny_checkpoint.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    assert verify_directory(copy, manifest) == []
    (copy / "config.json").write_text("{}")
    (copy / "tokenizer.json").unlink()
    (copy / "extra.bin").write_bytes(b"x")
    problems = verify_directory(copy, manifest)
    assert problems[0].startswith("`config.json`: expected sha256 ")
    assert problems[1:] == ["`tokenizer.json`: missing", "`extra.bin`: not in the manifest"]


def test_manifest_digest_changes_with_any_entry() -> None:
    manifest = Manifest({"a": FileEntry("0" * 64, 1)})
    assert manifest.digest() != Manifest({"a": FileEntry("0" * 64, 2)}).digest()
    with pytest.raises(RegistryError, match=r"`v1 manifest` is not a checksum manifest"):
        Manifest.from_json(b'{"files": 3}', "v1 manifest")
    escaping = Manifest({"../../etc/cron.d/x": FileEntry("0" * 64, 1)}).to_json()
    with pytest.raises(RegistryError, match=r"lists paths outside the checkpoint: ../../etc/cron.d/x"):
        Manifest.from_json(escaping, "v2 manifest")


def test_signed_documents_cover_every_field() -> None:
    approval = Approval("axk1", "3", "production", "a" * 64, "acme/key:b", "2026-11-23T00:00:00+00:00", "SEC-1", "p")
    body = json.loads(approval.document())
    assert body["kind"] == "approval"
    assert approval.document() != replace(approval, alias="staging").document()
    assert approval.document() != replace(approval, manifest_sha256="b" * 64).document()


def test_dataset_options_and_reports(tmp_path: Path) -> None:
    assert parse_dataset_option("news=scan.json") == ("news", Path("scan.json"))
    assert parse_dataset_option("news") == ("news", None)
    with pytest.raises(RegistryError, match=r"--dataset `=x` is not NAME"):
        parse_dataset_option("=x")
    with pytest.raises(RegistryError, match=r"--dataset news: cannot read scan report"):
        dataset_from_report("news", tmp_path / "missing.json")
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"trainingAllowed": "yes", "policy": {}}))
    with pytest.raises(RegistryError, match=r"is not a scan report; make one with `sovereign scan"):
        dataset_from_report("news", report)
    report.write_text(
        json.dumps(
            {"trainingAllowed": False, "policy": {"name": "kr", "sha256": "ab" * 32}, "countsByType": {"EMAIL": 2}}
        )
    )
    dataset = dataset_from_report("news", report)
    assert (dataset.training_allowed, dataset.scanned_under) == (False, "kr@abababababab")
    assert dataset.identifiers == {"EMAIL": 2}
    assert Dataset.from_json(dataset.as_json()) == dataset


def test_parameter_counts_of_the_full_model(tmp_path: Path) -> None:
    """A.X K1's published size, from its config alone: 519B parameters, about 33B active per token."""
    from transformers import AXK1Config

    from serving.model_size import human_count, parameter_counts

    AXK1Config(
        hidden_size=7168,
        intermediate_size=18432,
        moe_intermediate_size=2048,
        num_hidden_layers=61,
        num_attention_heads=64,
        num_key_value_heads=64,
        n_shared_experts=1,
        n_routed_experts=192,
        num_experts_per_tok=8,
        n_group=8,
        topk_group=4,
        routed_scaling_factor=2.5,
        kv_lora_rank=512,
        q_lora_rank=1536,
        qk_rope_head_dim=64,
        qk_nope_head_dim=128,
        v_head_dim=128,
        vocab_size=163840,
        first_k_dense_replace=1,
        max_position_embeddings=131072,
    ).save_pretrained(tmp_path)
    counts = parameter_counts(tmp_path)
    assert human_count(counts.total) == "519.0B"
    assert human_count(counts.active) == "32.8B"


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("axk1-student", None),
        ("학생 모델 v2", None),
        ("..axk1", None),
        ("", "cannot be empty"),
        ("   ", "cannot be empty"),
        ("a/b", "cannot contain '/' or ':'"),
        ("a:b", "cannot contain '/' or ':'"),
        (".", "would resolve to '.'"),
        ("..", "would resolve to '..'"),
    ],
)
def test_model_names_follow_mlflows_documented_rules(name: str, problem: str | None) -> None:
    found = model_name_problem(name)
    assert found is None if problem is None else problem in found


@pytest.mark.parametrize(
    ("alias", "problem"),
    [
        ("production", None),
        ("canary_2026-12", None),
        ("v2-candidate", None),
        ("", "cannot be empty"),
        ("prod uction", "may only contain alphanumerics"),
        ("prod@1", "may only contain alphanumerics"),
        ("x" * 256, "at most 255 characters"),
        ("Latest", "'latest' alias name (case insensitive) is reserved"),
        ("v3", "Version alias name 'v3' is reserved"),
        ("V12", "Version alias name 'V12' is reserved"),
    ],
)
def test_aliases_follow_mlflows_documented_rules(alias: str, problem: str | None) -> None:
    found = alias_problem(alias)
    assert found is None if problem is None else problem in found
