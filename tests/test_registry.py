"""The model registry against a real MLflow server: register, every promotion gate, checkout for serving."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from typer.testing import CliRunner

from monitoring import catalogue
from policies import PolicyEvaluator, ResidencyPolicy, parse_policy
from policies.audit import AuditLog
from policies.openbao import TransitSigner
from policies.registry import Gate, RegistryError, dataset_from_report
from policies.scan import scan
from serving.checkpoint import CheckpointError
from serving.registry import (
    ModelReference,
    PromotionRefused,
    Registrant,
    Registry,
    RegistryUnavailable,
    ServingRefused,
    Tag,
)
from serving.registry_server import RegistryServer
from tests.conftest import all_records, manifest_of
from tests.pii_samples import registration_number

runner = CliRunner()


@pytest.fixture(scope="module")
def alice(person: Callable[[str], tuple[Registrant, str]]) -> Registrant:
    return person("model-admin")[0]


@pytest.fixture(scope="module")
def bob(person: Callable[[str], tuple[Registrant, str]]) -> Registrant:
    return person("model-admin")[0]


def _report(directory: Path, name: str, text: str, policy: ResidencyPolicy) -> Path:
    data = directory / f"{name}.txt"
    data.write_text(text, encoding="utf-8")
    report = directory / f"{name}.scan.json"
    report.write_text(json.dumps(scan([data], PolicyEvaluator(policy)).as_json()))
    return report


@pytest.fixture(scope="module")
def clean_report(tmp_path_factory: pytest.TempPathFactory, default_policy: ResidencyPolicy) -> Path:
    return _report(
        tmp_path_factory.mktemp("scans"), "news", "서울의 날씨는 맑습니다.\nThe weather is fine.\n", default_policy
    )


@pytest.fixture(scope="module")
def dirty_report(tmp_path_factory: pytest.TempPathFactory, default_policy: ResidencyPolicy) -> Path:
    text = f"고객 주민등록번호 {registration_number('900101123456')}\n"
    return _report(tmp_path_factory.mktemp("scans"), "crm", text, default_policy)


@pytest.fixture
def register(
    registry: Registry, tiny_checkpoint: Path, alice: Registrant, clean_report: Path
) -> Callable[..., tuple[str, str]]:
    """Register the tiny checkpoint as a fresh model (by alice, trained on a clean dataset unless told)."""

    def make(datasets: list[Any] | str | None = "clean", **options: Any) -> tuple[str, str]:
        name = f"student-{uuid.uuid4().hex[:8]}"
        declared = [dataset_from_report("news", clean_report)] if datasets == "clean" else datasets
        version = registry.register(tiny_checkpoint, name, alice, declared, **options)
        return name, version

    return make


def _audit(state_dir: Path, model: str) -> list[dict[str, Any]]:
    return [r for r in all_records(state_dir) if r.get("action") == "registry.promote" and r.get("model") == model]


def _promotions(result: str, gate: str) -> float:
    value = catalogue.REGISTRY.get_sample_value("sovereign_registry_promotions_total", {"result": result, "gate": gate})
    return value or 0.0


def _runs(registry: Registry) -> int:
    """Registration runs in the registry's experiment, finished or not."""
    experiment = registry.client.get_experiment_by_name("sovereign-registry")
    return len(registry.client.search_runs([experiment.experiment_id])) if experiment else 0


def _stored(server: RegistryServer, source: str, relative: str) -> Path:
    """Where the server's proxied store keeps a version's file on disk."""
    return server.directory / "artifacts" / source.removeprefix("mlflow-artifacts:/") / relative


def _refused_gates(error: PromotionRefused) -> set[str]:
    return {result.gate.value for result in error.results if not result.passed}


# --- register --------------------------------------------------------------------------------------


def test_register_records_residency_checksums_lineage_and_who(
    registry: Registry, register: Callable[..., tuple[str, str]], tiny_checkpoint: Path, alice: Registrant
) -> None:
    from transformers import AutoModelForCausalLM

    base_name, base_version = register(datasets=[])
    name, version = register(base=f"{base_name}/{base_version}", license_name="apache-2.0")
    tags = registry.client.get_model_version(name, version).tags
    manifest = manifest_of(tiny_checkpoint)
    assert tags[Tag.MANIFEST] == manifest.digest()
    assert tags[Tag.FILES] == str(len(manifest.files))
    assert tags[Tag.BYTES] == str(manifest.total_bytes)
    assert (tags[Tag.SITE], tags[Tag.STORE], tags[Tag.JURISDICTION]) == ("local", "embedded", "KR")
    assert tags[Tag.ARCHITECTURE] == "axk1"
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    total = sum(parameter.numel() for parameter in model.parameters())
    assert tags[Tag.PARAMETERS_TOTAL].endswith(f"({total:,})")
    active = int(tags[Tag.PARAMETERS_ACTIVE].split("(")[1].rstrip(")").replace(",", ""))
    assert 0 < active < total, "a mixture of experts runs fewer parameters per token than it holds"
    assert tags[Tag.LICENSE] == "apache-2.0"
    assert tags[Tag.BASE] == f"{base_name}/{base_version}"
    datasets = json.loads(tags[Tag.DATASETS])
    assert [(d["name"], d["training_allowed"]) for d in datasets] == [("news", True)]
    assert tags[Tag.REGISTERED_BY] == f"{alice.id} (test)"
    assert tags[Tag.REGISTRATION_SIGNATURE].startswith("vault:v1:")
    description = registry.client.get_model_version(name, version).description
    assert "**Residency:** artifacts on site `local`" in description


def test_neither_the_registry_nor_its_client_phones_home(registry_server: RegistryServer, registry: Registry) -> None:
    """MLflow's AI Gateway (a route to foreign model APIs) is off on the server; client telemetry is off."""
    from mlflow.telemetry.utils import is_telemetry_disabled

    info = requests.get(f"{registry_server.address}/api/3.0/mlflow/server-info", timeout=10).json()
    assert info["features_enabled"]["gateway"] is False
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert is_telemetry_disabled()


def test_register_refuses_a_store_outside_the_jurisdiction(
    registry_server: RegistryServer,
    signer: TransitSigner,
    default_policy: ResidencyPolicy,
    tiny_checkpoint: Path,
    alice: Registrant,
) -> None:
    document = default_policy.model_dump(mode="json", by_alias=True)
    document["spec"]["sites"].append(
        {
            "name": "tokyo-1",
            "kind": "cloud-region",
            "country": "JP",
            "region": "ap-northeast-1",
            "zones": [{"name": "a"}],
        }
    )
    document["spec"]["registry"]["artifactStores"][0]["site"] = "tokyo-1"
    foreign = Registry(registry_server.address, parse_policy(yaml.safe_dump(document)), signer)
    runs = _runs(foreign)
    with pytest.raises(
        RegistryError, match=r"outside the jurisdiction: artifact store `embedded` is on site `tokyo-1`"
    ):
        foreign.register(tiny_checkpoint, "never-stored", alice, [])
    assert not foreign.has_model("never-stored")
    assert _runs(foreign) == runs, "not even a run was started"


def test_register_refuses_a_directory_that_is_not_a_checkpoint(
    registry: Registry, tiny_checkpoint: Path, tmp_path: Path, alice: Registrant
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config.json` is missing"):
        registry.register(broken, "never-registered", alice, [])
    assert not registry.has_model("never-registered")


def test_a_failed_upload_leaves_no_version_and_no_run(
    registry: Registry, tiny_checkpoint: Path, alice: Registrant, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs, uploads = _runs(registry), []
    upload = Registry._upload

    def connection_lost_on_the_third_file(self: Registry, *arguments: Any) -> str:
        uploads.append(arguments[1])
        if len(uploads) == 3:
            raise RegistryUnavailable("uploading failed: ConnectionError")
        return upload(self, *arguments)

    monkeypatch.setattr(Registry, "_upload", connection_lost_on_the_third_file)
    with pytest.raises(RegistryUnavailable):
        registry.register(tiny_checkpoint, "half-written", alice, [])
    assert len(uploads) == 3
    assert not registry.has_model("half-written")
    assert _runs(registry) == runs, "the run with the first two files was deleted"


# --- promote: each gate refuses on its own -------------------------------------------------------


def test_promotion_refused_when_artifacts_are_not_in_country(
    registry_server: RegistryServer,
    signer: TransitSigner,
    default_policy: ResidencyPolicy,
    register: Callable[..., tuple[str, str]],
    bob: Registrant,
    audit: AuditLog,
) -> None:
    """The policy moved the `local` site abroad after registration: the version may no longer be promoted."""
    name, version = register()
    document = default_policy.model_dump(mode="json", by_alias=True)
    local = next(site for site in document["spec"]["sites"] if site["name"] == "local")
    local["country"] = "JP"
    moved = Registry(registry_server.address, parse_policy(yaml.safe_dump(document)), signer)
    before = _promotions("refused", "in_country")
    with pytest.raises(PromotionRefused) as refused:
        moved.promote(name, version, "production", bob, "SEC-1", audit)
    assert _refused_gates(refused.value) == {Gate.IN_COUNTRY.value}
    assert "artifact store `embedded` is on site `local`" in str(refused.value)
    assert _promotions("refused", "in_country") == before + 1


def test_promotion_refused_when_a_stored_file_was_altered(
    registry: Registry,
    registry_server: RegistryServer,
    register: Callable[..., tuple[str, str]],
    bob: Registrant,
    audit: AuditLog,
    state_dir: Path,
) -> None:
    name, version = register()
    source = registry.client.get_model_version(name, version).source
    stored = _stored(registry_server, source, "config.json")
    stored.write_text(stored.read_text().replace('"hidden_size": 128', '"hidden_size": 129'))
    with pytest.raises(PromotionRefused) as refused:
        registry.promote(name, version, "production", bob, "SEC-2", audit)
    assert _refused_gates(refused.value) == {Gate.CHECKSUMS.value}
    assert "`config.json`: expected sha256" in str(refused.value)
    assert registry.client.get_registered_model(name).aliases == {}, "the alias did not move"
    (record,) = _audit(state_dir, name)
    assert (record["result"], record["failedGates"], record["principal"]) == ("refused", ["checksums"], bob.id)


def test_promotion_refused_when_a_dataset_was_not_scanned_clean(
    registry: Registry,
    register: Callable[..., tuple[str, str]],
    dirty_report: Path,
    bob: Registrant,
    audit: AuditLog,
) -> None:
    name, version = register(datasets=[dataset_from_report("crm", dirty_report)])
    with pytest.raises(PromotionRefused) as refused:
        registry.promote(name, version, "production", bob, "SEC-3", audit)
    assert _refused_gates(refused.value) == {Gate.DATASETS_SCANNED.value}
    assert "dataset `crm`'s scan forbids training on it (KR_RRN 1)" in str(refused.value)
    # The approver may record an exception, with the ticket: then it passes, and the exception is on record.
    results = registry.promote(name, version, "production", bob, "SEC-3", audit, exceptions=["crm"])
    assert all(result.passed for result in results)
    tags = registry.client.get_model_version(name, version).tags
    assert json.loads(tags[Tag.EXCEPTIONS]) == {"crm": f"SEC-3 by {bob.id}"}


def test_promotion_refused_when_training_data_is_undeclared(
    registry: Registry,
    register: Callable[..., tuple[str, str]],
    bob: Registrant,
    audit: AuditLog,
) -> None:
    name, version = register(datasets=None)
    with pytest.raises(PromotionRefused) as refused:
        registry.promote(name, version, "production", bob, "SEC-4", audit)
    assert _refused_gates(refused.value) == {Gate.DATASETS_SCANNED.value}
    assert "no training data declared" in str(refused.value)


def test_promotion_refused_without_a_second_person(
    registry: Registry,
    register: Callable[..., tuple[str, str]],
    alice: Registrant,
    person: Callable[[str], tuple[Registrant, str]],
    audit: AuditLog,
) -> None:
    name, version = register()
    with pytest.raises(PromotionRefused) as own:
        registry.promote(name, version, "production", alice, "SEC-5", audit)
    assert _refused_gates(own.value) == {Gate.FOUR_EYES.value}
    assert "registered this version; a second person must approve it" in str(own.value)
    user = person("model-user")[0]
    with pytest.raises(PromotionRefused) as unprivileged:
        registry.promote(name, version, "production", user, "SEC-5", audit)
    assert _refused_gates(unprivileged.value) == {Gate.FOUR_EYES.value}
    assert "has role `model-user`, which may not registry.promote" in str(unprivileged.value)


def test_forged_registrant_tag_fails_four_eyes(
    registry: Registry,
    register: Callable[..., tuple[str, str]],
    bob: Registrant,
    audit: AuditLog,
) -> None:
    """Editing `registered_by` in the MLflow UI breaks the signed registration: nobody can pose as the other eye."""
    name, version = register()
    registry.client.set_model_version_tag(name, version, Tag.REGISTERED_BY, "acme/key:someone-else")
    with pytest.raises(PromotionRefused) as refused:
        registry.promote(name, version, "production", bob, "SEC-6", audit)
    assert _refused_gates(refused.value) == {Gate.FOUR_EYES.value}
    assert "no valid signed registration" in str(refused.value)


# --- promote: allowed ------------------------------------------------------------------------------


def test_promotion_allowed_records_the_approval(
    registry: Registry,
    register: Callable[..., tuple[str, str]],
    bob: Registrant,
    audit: AuditLog,
    state_dir: Path,
) -> None:
    name, version = register()
    before = _promotions("allowed", "none")
    results = registry.promote(name, version, "production", bob, "SEC-7", audit)
    assert [(r.gate.value, r.passed) for r in results] == [(gate.value, True) for gate in Gate]
    assert registry.client.get_registered_model(name).aliases == {"production": version}
    tags = registry.client.get_model_version(name, version).tags
    assert tags[Tag.APPROVED_BY] == f"{bob.id} (test)"
    assert tags[Tag.TICKET] == "SEC-7"
    assert tags[Tag.APPROVED_AT].endswith("+00:00")
    assert [gate["passed"] for gate in json.loads(tags[Tag.GATES])] == [True] * 4
    (record,) = _audit(state_dir, name)
    assert (record["result"], record["alias"], record["ticket"]) == ("allowed", "production", "SEC-7")
    assert _promotions("allowed", "none") == before + 1
    status = registry.status(name)
    assert (status[0].version, status[0].aliases) == (version, ["production"])


# --- checkout for serving --------------------------------------------------------------------------


@pytest.fixture
def promoted(
    registry: Registry,
    register: Callable[..., tuple[str, str]],
    bob: Registrant,
    audit: AuditLog,
) -> tuple[str, str]:
    name, version = register()
    registry.promote(name, version, "production", bob, "SEC-8", audit)
    return name, version


def test_checkout_verifies_every_file(
    registry: Registry, promoted: tuple[str, str], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    name, version = promoted
    checkout = registry.checkout(ModelReference.parse(f"models:/{name}@production"), tmp_path)
    assert checkout.version == version
    for original in tiny_checkpoint.iterdir():
        assert (checkout.path / original.name).read_bytes() == original.read_bytes()
    # A local copy that changed afterwards is refused too, naming the file.
    (checkout.path / "tokenizer.json").write_text("{}")
    with pytest.raises(ServingRefused, match=r"`tokenizer.json`: expected sha256"):
        registry.checkout(ModelReference.parse(f"models:/{name}@production"), tmp_path)


def test_checkout_refuses_a_stored_file_that_does_not_match(
    registry: Registry, registry_server: RegistryServer, promoted: tuple[str, str], tmp_path: Path
) -> None:
    name, _ = promoted
    source = registry.client.get_model_version(name, registry.status(name)[0].version).source
    with _stored(registry_server, source, "model.safetensors").open("r+b") as weights:
        weights.seek(-4, 2)
        weights.write(b"\x00\x01\x02\x03")
    with pytest.raises(ServingRefused, match=r"refusing to load.*`model.safetensors`: expected sha256"):
        registry.checkout(ModelReference.parse(f"models:/{name}@production"), tmp_path)
    assert not (tmp_path / "registry" / name).exists() or not any((tmp_path / "registry" / name).iterdir())


def test_an_alias_set_outside_promotion_is_not_served(
    registry: Registry, register: Callable[..., tuple[str, str]], tmp_path: Path
) -> None:
    name, version = register()
    registry.client.set_registered_model_alias(name, "production", version)
    with pytest.raises(ServingRefused, match=r"never approved for `production`"):
        registry.checkout(ModelReference.parse(f"models:/{name}@production"), tmp_path)


def test_altered_approval_tags_are_not_served(registry: Registry, promoted: tuple[str, str], tmp_path: Path) -> None:
    name, version = promoted
    registry.client.set_model_version_tag(name, version, Tag.TICKET, "SEC-FORGED")
    with pytest.raises(ServingRefused, match=r"approval signature does not verify"):
        registry.checkout(ModelReference.parse(f"models:/{name}@production"), tmp_path)


def test_unknown_alias_and_bad_reference(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match=r"has no alias `production`"):
        registry.checkout(ModelReference.parse("models:/no-such-model@production"), tmp_path)
    with pytest.raises(RegistryError, match=r"write models:/NAME@ALIAS"):
        ModelReference.parse("models:/axk1/3")
