"""The kopf handlers and the admission webhook, called directly as kopf would call them, with the
real MLflow registry and OpenBao behind the resolver. Only the API server is replaced: by an
in-memory `Cluster`, since no kube-apiserver runs here. Events are recorded where kopf would post them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import kopf
import pytest
import yaml

from monitoring import catalogue
from operators import handlers
from operators.cluster import OWNED_KINDS, object_key
from operators.reconcile import Settings
from policies import ResidencyPolicy, load_default_policy
from sovereign.operator_cli import RegistryResolver
from tests.kube import policy_with_a_foreign_site


class InMemoryCluster:
    """Holds applied objects by (namespace, kind, name); what a server-side apply would leave."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}

    def apply(self, obj: Mapping[str, Any]) -> None:
        kind, name = object_key(obj)
        self.objects[(obj["metadata"]["namespace"], kind, name)] = dict(obj)

    def delete_unwanted(self, namespace: str, labels: Mapping[str, str], wanted: set[tuple[str, str]]) -> list[str]:
        owned = {kind for _, kind in OWNED_KINDS}
        doomed = [
            key
            for key, obj in self.objects.items()
            if key[0] == namespace
            and key[1] in owned
            and labels.items() <= obj["metadata"]["labels"].items()
            and key[1:] not in wanted
        ]
        for key in doomed:
            del self.objects[key]
        return [f"{kind}/{name}" for _, kind, name in doomed]

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self.objects.get((namespace, kind, name))

    def kinds(self, namespace: str) -> list[tuple[str, str]]:
        return sorted(key[1:] for key in self.objects if key[0] == namespace)


Event = tuple[str, str, str]


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[Event]:
    """The events the handlers post through kopf's public `event`, `info` and `warn`, as (type, reason, message).

    kopf hands them to the API server, which does not run here; its own types are kept (`info` is Normal,
    `warn` is Warning).
    """
    recorded: list[Event] = []

    def event(body: Any, *, type: str, reason: str, message: str = "") -> None:
        recorded.append((type, reason, message))

    monkeypatch.setattr(kopf, "event", event)
    monkeypatch.setattr(
        kopf, "info", lambda body, *, reason, message="": event(body, type="Normal", reason=reason, message=message)
    )
    monkeypatch.setattr(
        kopf, "warn", lambda body, *, reason, message="": event(body, type="Warning", reason=reason, message=message)
    )
    return recorded


def posted(events: list[Event]) -> list[Event]:
    """The events posted since the last call."""
    drained = list(events)
    events.clear()
    return drained


@pytest.fixture
def memo(registry: Any, default_policy: ResidencyPolicy) -> kopf.Memo:
    return kopf.Memo(
        cluster=InMemoryCluster(),
        resolver=RegistryResolver(lambda: registry),
        settings=Settings(gpu_budget=4),
        policies={"kr-default": default_policy},
    )


def model_deployment(model: str, generation: int = 1, status: dict | None = None, **spec: Any) -> kopf.Body:
    return kopf.Body(
        {
            "apiVersion": "sovereign-stack.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "student", "namespace": "models", "uid": "uid-7", "generation": generation},
            "spec": {"model": model, "tenants": ["acme"], "gpu": {"type": "L4-24GB", "perNode": 1}, **spec},
            "status": status or {},
        }
    )


def test_create_applies_the_objects_and_writes_status_and_events(
    memo: kopf.Memo, events: list[Event], publish: Callable[[str], str]
) -> None:
    version = publish("k8s-create")
    patch = kopf.Patch()
    handlers.reconcile_model_deployment(body=model_deployment("models:/k8s-create@production"), patch=patch, memo=memo)

    assert memo.cluster.kinds("models") == [
        ("NetworkPolicy", "student-egress"),
        ("PodDisruptionBudget", "student"),
        ("RayService", "student"),
        ("ServiceMonitor", "student"),
    ]
    status = patch["status"]
    assert status["modelVersion"] == version
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "False",
        "PolicyCompliant": "True",
        "ModelResolved": "True",
    }
    assert posted(events) == [("Normal", "RollingOut", f"serving k8s-create version {version}")]
    assert condition_metric("Ready", "False") == 1
    assert condition_metric("Ready", "True") == 0
    assert condition_metric("ModelResolved", "True") == 1


def condition_metric(condition: str, status: str) -> float | None:
    labels = {"namespace": "models", "name": "student", "condition": condition, "status": status}
    return catalogue.REGISTRY.get_sample_value("sovereign_model_deployment_condition", labels)


def reviews(kind: str, result: str) -> float:
    labels = {"kind": kind, "result": result}
    return catalogue.REGISTRY.get_sample_value("sovereign_admission_reviews_total", labels) or 0.0


def test_the_timer_follows_a_promotion_and_delete_cleans_up(
    memo: kopf.Memo, events: list[Event], publish: Callable[[str], str]
) -> None:
    first = publish("k8s-follow")
    patch = kopf.Patch()
    handlers.reconcile_model_deployment(body=model_deployment("models:/k8s-follow@production"), patch=patch, memo=memo)
    memo.cluster.objects[("models", "RayService", "student")]["status"] = {
        "conditions": [{"type": "Ready", "status": "True"}]
    }
    second = publish("k8s-follow")
    assert second != first
    posted(events)

    followed = kopf.Patch()
    handlers.follow_alias(
        body=model_deployment("models:/k8s-follow@production", status=dict(patch["status"])), patch=followed, memo=memo
    )
    assert followed["status"]["modelVersion"] == second
    ray_service = memo.cluster.objects[("models", "RayService", "student")]
    assert ray_service["metadata"]["labels"]["sovereign-stack.io/model-version"] == second
    assert posted(events) == [("Normal", "RollingOut", f"serving k8s-follow version {second} (was {first})")]

    assert condition_metric("Ready", "False") == 1  # the new version is rolling out
    handlers.clean_up(body=model_deployment("models:/k8s-follow@production"), memo=memo)
    assert memo.cluster.kinds("models") == []
    assert condition_metric("Ready", "False") is None
    ((kind, reason, message),) = posted(events)
    assert (kind, reason) == ("Normal", "CleanedUp")
    assert "RayService/student" in message
    assert "NetworkPolicy/student-egress" in message


def test_an_invalid_spec_is_a_permanent_error_naming_the_field(memo: kopf.Memo, events: list[Event]) -> None:
    with pytest.raises(kopf.PermanentError, match=r"spec.replicas: Input should be greater than or equal to 0"):
        handlers.reconcile_model_deployment(
            body=model_deployment("models:/x@production", replicas=-1), patch=kopf.Patch(), memo=memo
        )
    assert posted(events)[0][:2] == ("Warning", "InvalidSpec")


# -- the admission webhook --------------------------------------------------------------------------


def admit(memo: kopf.Memo, model: str, **spec: Any) -> list[str]:
    """Run the validating handler; the warnings it admits with, or AdmissionError."""
    warnings: list[str] = []
    body = model_deployment(model, **spec)
    handlers.admit_model_deployment(spec=body["spec"], memo=memo, warnings=warnings)
    return warnings


def test_the_webhook_admits_an_approved_alias(memo: kopf.Memo, publish: Callable[[str], str]) -> None:
    publish("k8s-admitted")
    admitted = reviews("ModelDeployment", "admitted")
    assert admit(memo, "models:/k8s-admitted@production") == []
    assert reviews("ModelDeployment", "admitted") == admitted + 1


def test_the_webhook_rejects_an_alias_that_was_never_approved(
    memo: kopf.Memo, registry: Any, person: Callable, tiny_checkpoint: Any
) -> None:
    version = registry.register(tiny_checkpoint, "k8s-unapproved", person()[0], [], license_name="apache-2.0")
    registry.client.set_registered_model_alias("k8s-unapproved", "production", version)
    with pytest.raises(kopf.AdmissionError, match=r"spec.model: .*never approved for `production`") as refused:
        admit(memo, "models:/k8s-unapproved@production")
    assert refused.value.code == 422
    with pytest.raises(kopf.AdmissionError, match="has no alias `canary`"):
        admit(memo, "models:/k8s-unapproved@canary")


def test_the_webhook_rejects_sites_outside_the_jurisdiction(memo: kopf.Memo, publish: Callable[[str], str]) -> None:
    publish("k8s-sites")
    memo.policies["kr-default"] = policy_with_a_foreign_site()
    with pytest.raises(kopf.AdmissionError, match=r"spec.sites: site `us-east-1`: .*US.* outside .*KR"):
        admit(memo, "models:/k8s-sites@production", sites=["kr-seoul-1", "us-east-1"])
    with pytest.raises(kopf.AdmissionError, match="ResidencyPolicy `eu-default` is not installed"):
        admit(memo, "models:/k8s-sites@production", policyRef="eu-default")


def test_the_webhook_rejects_more_gpus_than_the_plan_allows(memo: kopf.Memo, publish: Callable[[str], str]) -> None:
    publish("k8s-gpus")
    with pytest.raises(
        kopf.AdmissionError, match=r"spec.parallelism: TP4 PP1 DP1 EP4 asks for 4 GPUs per replica; .* allows 1"
    ):
        admit(memo, "models:/k8s-gpus@production", parallelism={"mode": "explicit", "tensor": 4, "expert": 4})
    with pytest.raises(kopf.AdmissionError, match=r"5 replica\(s\) × 1 GPUs = 5 GPUs, over the cluster's budget of 4"):
        admit(memo, "models:/k8s-gpus@production", autoscaling={"minReplicas": 1, "maxReplicas": 5})


def test_the_webhook_rejects_an_invalid_spec_naming_the_field(memo: kopf.Memo) -> None:
    rejected = reviews("ModelDeployment", "rejected")
    with pytest.raises(kopf.AdmissionError, match=r"spec.engine: Input should be 'vllm'"):
        admit(memo, "models:/x@production", engine="sglang")
    assert reviews("ModelDeployment", "rejected") == rejected + 1


def test_an_unreachable_registry_is_admitted_with_a_warning(registry: Any, default_policy: ResidencyPolicy) -> None:
    from serving.registry import Registry

    resolver = RegistryResolver(lambda: Registry("http://127.0.0.1:9", default_policy, registry.signer))
    memo = kopf.Memo(resolver=resolver, settings=Settings(), policies={"kr-default": default_policy})
    (warning,) = admit(memo, "models:/anything@production")
    assert warning.startswith("spec.model: not checked, the model registry at http://127.0.0.1:9 is not reachable")


# -- ResidencyPolicy ----------------------------------------------------------------------------------


def residency_policy(spec: dict[str, Any]) -> kopf.Body:
    return kopf.Body(
        {
            "apiVersion": "sovereign-stack.io/v1alpha1",
            "kind": "ResidencyPolicy",
            "metadata": {"name": "kr-default", "generation": 3},
            "spec": spec,
        }
    )


def test_a_residency_policy_is_validated_by_the_policies_model(events: list[Event]) -> None:
    policy = load_default_policy()
    spec = policy.model_dump(mode="json", by_alias=True, exclude_none=True)["spec"]
    memo = kopf.Memo(policies={})
    patch = kopf.Patch()
    handlers.load_residency_policy(body=residency_policy(spec), name="kr-default", patch=patch, memo=memo)
    assert memo.policies["kr-default"].spec == policy.spec
    assert patch["status"]["digest"] == memo.policies["kr-default"].digest()
    assert patch["status"]["conditions"][0]["status"] == "True"
    handlers.admit_residency_policy(body=residency_policy(spec))

    broken = {**spec, "sites": [{**spec["sites"][0], "country": "Korea"}]}
    with pytest.raises(kopf.AdmissionError, match=r"spec.sites\[0\].country: String should match pattern"):
        handlers.admit_residency_policy(body=residency_policy(broken))
    rejected = kopf.Patch()
    handlers.load_residency_policy(body=residency_policy(broken), name="kr-default", patch=rejected, memo=memo)
    assert "kr-default" not in memo.policies
    assert rejected["status"]["conditions"][0]["reason"] == "Invalid"
    assert posted(events)[-1][:2] == ("Warning", "InvalidPolicy")


def test_operator_run_says_what_is_missing(tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from sovereign.cli import app

    runner = CliRunner()
    environment = {"VAULT_ADDR": "http://127.0.0.1:9", "VAULT_TOKEN": "t", "KUBECONFIG": str(tmp_path / "none")}
    no_certificate = runner.invoke(
        app,
        ["operator", "run", "--webhook-host", "op.svc", "--webhook-cert-dir", str(tmp_path)],
        env=environment,
    )
    assert no_certificate.exit_code == 1
    assert "tls.crt, tls.key, ca.crt missing" in no_certificate.stderr
    no_cluster = runner.invoke(app, ["operator", "run"], env=environment)
    assert no_cluster.exit_code == 1
    assert "no Kubernetes cluster to talk to" in no_cluster.stderr
    assert "Traceback" not in no_cluster.output


def test_the_cluster_builder_serves_the_checkout_to_the_deployments_tenants(
    openbao: Any, tiny_checkpoint: Any, default_policy: ResidencyPolicy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serving.cluster:build`, as the RayService of every ModelDeployment imports it."""
    from ray.serve import Application

    from serving import vllm
    from serving.app import ResidencyViolation
    from serving.cluster import build, cluster_serving

    monkeypatch.setenv("VAULT_ADDR", openbao.address)
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    arguments = {
        "model_path": str(tiny_checkpoint),
        "served_model_name": "student",
        "revision": "student/2",
        "site": "kr-seoul-1",
        "policy": default_policy.model_dump(mode="json", by_alias=True),
        "tenants": ["acme"],
        "llm_config": vllm.llm_config(
            "student", str(tiny_checkpoint), "L4", vllm.engine_kwargs(1, 1, 1, 1, 2048, None), None
        ),
    }
    assert isinstance(build(arguments), Application)
    config, policy, card, _ = cluster_serving(arguments)
    assert (card.id, card.revision, config.site) == ("student", "student/2", "kr-seoul-1")
    assert policy.digest() == default_policy.digest()
    assert config.tenants == ["acme"]
    assert config.engine_kwargs == vllm.engine_kwargs(1, 1, 1, 1, 2048, None) | {"dtype": "bfloat16"}
    with pytest.raises(ResidencyViolation, match="refusing to serve on site `us-east-1`"):
        build({**arguments, "site": "us-east-1"})


def test_operator_crds_writes_the_generated_definitions_or_says_why_not(tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from operators.crds import custom_resource_definitions
    from sovereign.cli import app

    runner = CliRunner()
    written = runner.invoke(app, ["operator", "crds", "--output", str(tmp_path / "crds.yaml")])
    assert written.exit_code == 0, written.output
    assert list(yaml.safe_load_all((tmp_path / "crds.yaml").read_text())) == custom_resource_definitions()
    refused = runner.invoke(app, ["operator", "crds", "--output", str(tmp_path / "missing" / "crds.yaml")])
    assert refused.exit_code == 1
    assert "--output: cannot write" in refused.stderr
    assert "Traceback" not in refused.output
