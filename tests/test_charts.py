"""The Helm charts, linted and rendered with Helm's own Go SDK, and every rendered object validated."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from typer.testing import CliRunner

from operators.admission_policies import residency_node_labels
from operators.chart_values import ChartValues
from operators.charts import GENERATED_DIR, generate, stale_files
from operators.crds import custom_resource_definitions
from operators.resources import DESCRIPTION_ANNOTATION, ModelDeploymentSpec
from policies import ResidencyPolicy, load_default_policy
from sovereign.chart_cli import chart_app
from tests.kube import validate_builtin, validate_custom

REPO = Path(__file__).resolve().parents[1]
CHARTS = REPO / "charts"
STACK = CHARTS / "sovereign-stack"
CRDS_CHART = CHARTS / "sovereign-stack-crds"
VALUES_FILES = sorted((STACK / "ci").glob("*.yaml"))
NAMESPACE = "tenant-x"
RELEASE = "sovereign"
CUSTOM_GROUPS = {"sovereign-stack.io", "monitoring.coreos.com", "cert-manager.io"}
CLUSTER_SCOPED = {
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "ResidencyPolicy",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}
RECOMMENDED_LABELS = [
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
]

values_files = pytest.mark.parametrize("values_file", VALUES_FILES, ids=[path.stem for path in VALUES_FILES])


def _values(values_file: Path) -> dict[str, Any]:
    return yaml.safe_load(values_file.read_text()) or {}


def _render(chart_dir: Path, values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(chart_dir) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return [
        document
        for path, text in sorted(manifests.items())
        if path.endswith(".yaml")
        for document in yaml.safe_load_all(text)
        if document
    ]


@cache
def _rendered_stack(values_name: str) -> tuple[dict[str, Any], ...]:
    """The stack chart rendered with one ci values file (cached: rendering is the slow part)."""
    return tuple(_render(STACK, _values(STACK / "ci" / values_name)))


def _objects(values_file: Path) -> list[dict[str, Any]]:
    return list(_rendered_stack(values_file.name))


def _of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def _pod_specs(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [obj["spec"]["template"]["spec"] for obj in _of_kind(objects, "Deployment")]


def _containers(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for pod in _pod_specs(objects):
        yield from pod["containers"]
        yield from pod.get("initContainers", [])


def _helm_problems(chart_dir: Path, values: dict[str, Any] | None) -> list[str]:
    report = helm.lint(chart_dir, values, strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
    warnings = [f"{message['path']}: {message['error']}" for message in report["messages"] if message["severity"] >= 2]
    return warnings + report["errors"]


@values_files
def test_stack_chart_lints_strictly(values_file: Path) -> None:
    assert _helm_problems(STACK, _values(values_file)) == []


def test_crds_chart_lints_strictly() -> None:
    assert _helm_problems(CRDS_CHART, None) == []


@values_files
def test_built_in_objects_validate_against_kubernetes(values_file: Path) -> None:
    objects = _objects(values_file) + _render(CRDS_CHART, {})
    built_in = [obj for obj in objects if obj["apiVersion"].partition("/")[0] not in CUSTOM_GROUPS]
    assert {obj["kind"] for obj in built_in} >= {
        "Deployment",
        "Service",
        "ServiceAccount",
        "ClusterRole",
        "NetworkPolicy",
        "ValidatingAdmissionPolicy",
        "CustomResourceDefinition",
        "ConfigMap",
    }
    for obj in built_in:
        validate_builtin(obj)


@values_files
def test_monitoring_objects_validate_against_prometheus_operator_crds(values_file: Path) -> None:
    objects = _objects(values_file)
    monitoring = _of_kind(objects, "ServiceMonitor") + _of_kind(objects, "PrometheusRule")
    assert {obj["kind"] for obj in monitoring} == {"ServiceMonitor", "PrometheusRule"}
    for obj in monitoring:
        validate_custom(obj)


def test_residency_policy_resource_is_the_policy() -> None:
    (resource,) = _of_kind(_objects(STACK / "ci" / "minimal-values.yaml"), "ResidencyPolicy")
    crd = next(crd for crd in custom_resource_definitions() if crd["spec"]["names"]["kind"] == "ResidencyPolicy")
    validate_custom(resource, crd)
    metadata = {
        "name": resource["metadata"]["name"],
        "description": resource["metadata"]["annotations"][DESCRIPTION_ANNOTATION],
    }
    document = {
        "apiVersion": resource["apiVersion"],
        "kind": resource["kind"],
        "metadata": metadata,
        "spec": resource["spec"],
    }
    assert ResidencyPolicy.model_validate(document) == load_default_policy()


def test_monitoring_comes_from_the_monitoring_folder() -> None:
    objects = _objects(STACK / "ci" / "minimal-values.yaml")
    (rule,) = _of_kind(objects, "PrometheusRule")
    source = yaml.safe_load((REPO / "monitoring" / "rules" / "sovereign.rules.yaml").read_text())
    assert rule["spec"]["groups"] == source["groups"]
    dashboards = {
        name: text
        for config_map in _of_kind(objects, "ConfigMap")
        if config_map["metadata"]["labels"].get("grafana_dashboard") == "1"
        for name, text in config_map["data"].items()
    }
    sources = {path.name: path.read_text().strip() for path in (REPO / "monitoring" / "dashboards").glob("*.json")}
    assert dashboards == sources


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"gateway": {"replica": 3}}, "'replica' not allowed"),
        ({"gateway": {"replicas": "three"}}, "/gateway/replicas"),
        ({"mlflow": {"database": {"port": 70000}}}, "/mlflow/database/port"),
        ({"mlflow": {"artifacts": {"endpoint": "http://s3.kr-seoul.sovereign.kr"}}}, "/mlflow/artifacts/endpoint"),
        ({"gateway": {"service": {"type": "LoadBalancer"}}}, "/gateway/service/type"),
        ({"global": {"imageRegistry": "https://mirror.sovereign.kr"}}, "/global/imageRegistry"),
        ({"global": {"imageRegistry": "docker.io"}}, "/global/imageRegistry"),
    ],
    ids=["typo", "bad-type", "port-range", "plain-http-s3", "load-balancer", "registry-with-scheme", "docker-hub"],
)
def test_schema_refuses_bad_values(values: dict[str, Any], key: str) -> None:
    with helm.Chart.load(STACK) as chart, pytest.raises(helm.HelmValuesError, match=key):
        chart.validate_schema(values)


@values_files
def test_ci_values_pass_the_schema_and_the_model(values_file: Path) -> None:
    with helm.Chart.load(STACK) as chart:
        chart.validate_schema(_values(values_file))
    ChartValues.model_validate(_values(values_file))


def test_values_yaml_holds_the_model_defaults() -> None:
    assert yaml.safe_load((STACK / "values.yaml").read_text()) == ChartValues().model_dump(by_alias=True, mode="json")


def test_every_image_comes_from_the_configured_mirror() -> None:
    airgapped = STACK / "ci" / "airgapped-values.yaml"
    mirror = _values(airgapped)["global"]["imageRegistry"]
    images = [container["image"] for container in _containers(_objects(airgapped))]
    assert images
    assert all(image.startswith(f"{mirror}/") for image in images), images
    operator = next(pod for pod in _pod_specs(_objects(airgapped)) if pod["containers"][0]["name"] == "operator")
    environment = {variable["name"]: variable.get("value") for variable in operator["containers"][0]["env"]}
    assert environment["SOVEREIGN_IMAGE"].startswith(f"{mirror}/")
    assert all(pod["imagePullSecrets"] == [{"name": "mirror-internal-kr"}] for pod in _pod_specs(_objects(airgapped)))


@values_files
def test_namespaced_objects_take_the_release_namespace(values_file: Path) -> None:
    for obj in _objects(values_file):
        expected = None if obj["kind"] in CLUSTER_SCOPED else NAMESPACE
        assert obj["metadata"].get("namespace") == expected, f"{obj['kind']} {obj['metadata']['name']}"


@values_files
def test_every_object_carries_the_recommended_labels(values_file: Path) -> None:
    for obj in _objects(values_file) + _render(CRDS_CHART, {}):
        labels = obj["metadata"]["labels"]
        missing = [label for label in RECOMMENDED_LABELS if label not in labels]
        assert not missing, f"{obj['kind']} {obj['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/part-of"] == "sovereign-stack"
        assert labels["app.kubernetes.io/instance"] == RELEASE


@values_files
def test_every_pod_is_pinned_to_residency_nodes_and_hardened(values_file: Path) -> None:
    residency = residency_node_labels(load_default_policy())
    pods = _pod_specs(_objects(values_file))
    assert len(pods) == 3
    for pod in pods:
        assert pod["nodeSelector"].items() >= residency.items()
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert container["resources"]["requests"]
            # The gateway and the operator log in to OpenBao with their own role; MLflow never talks to it.
            talks_to_openbao = container["name"] != "mlflow"
            assert talks_to_openbao == ({"VAULT_ADDR", "VAULT_K8S_ROLE"} <= {env["name"] for env in container["env"]})


def test_values_cannot_unpin_residency_nodes() -> None:
    residency = residency_node_labels(load_default_policy())
    key = next(iter(residency))
    values = {**_values(STACK / "ci" / "minimal-values.yaml"), "nodeSelector": {key: "US"}}
    assert all(pod["nodeSelector"][key] == residency[key] for pod in _pod_specs(_render(STACK, values)))


@values_files
def test_no_service_is_reachable_from_outside_the_cluster(values_file: Path) -> None:
    services = _of_kind(_objects(values_file), "Service")
    assert services
    assert all(service["spec"]["type"] == "ClusterIP" for service in services)


def test_secrets_reach_pods_only_through_secret_references() -> None:
    objects = _objects(STACK / "ci" / "production-values.yaml")
    (mlflow,) = (container for container in _containers(objects) if container["name"] == "mlflow")
    by_name = {variable["name"]: variable for variable in mlflow["env"]}
    for secret in ("PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "value" not in by_name[secret]
        assert "secretKeyRef" in by_name[secret]["valueFrom"]
    assert by_name["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == "false"
    assert "--serve-artifacts" in mlflow["command"]
    assert "--workers=1" in mlflow["command"]


def test_gateway_serves_the_configured_model_and_upstreams() -> None:
    values = _values(STACK / "ci" / "production-values.yaml")
    objects = _objects(STACK / "ci" / "production-values.yaml")
    (gateway,) = (
        deployment
        for deployment in _of_kind(objects, "Deployment")
        if deployment["metadata"]["name"].endswith("-gateway")
    )
    assert gateway["spec"]["replicas"] == 3
    command = gateway["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["sovereign", "up"]
    assert "--model=models:/axk1-student@production" in command
    assert "--no-registry" in command
    assert "--upstream=kanana=https://llm.sovereign.kr/v1" in command
    assert values["gateway"]["site"] in " ".join(command)
    (monitor,) = [m for m in _of_kind(objects, "ServiceMonitor") if m["metadata"]["name"].endswith("-gateway")]
    assert monitor["spec"]["endpoints"][0]["authorization"]["credentials"] == {
        "name": "sovereign-metrics-key",
        "key": "apiKey",
    }
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_switches_leave_their_objects_out() -> None:
    off = {"enabled": False}
    values = {
        **_values(STACK / "ci" / "minimal-values.yaml"),
        "networkPolicies": off,
        "admissionPolicies": off,
        "residencyPolicy": off,
        "monitoring": {"prometheusRules": off, "serviceMonitor": off, "dashboards": off},
    }
    kinds = {obj["kind"] for obj in _render(STACK, values)}
    assert kinds.isdisjoint(
        {"NetworkPolicy", "ValidatingAdmissionPolicy", "ResidencyPolicy", "PrometheusRule", "ServiceMonitor"}
    )
    assert "Deployment" in kinds


def test_operator_cluster_role_is_least_privilege() -> None:
    (role,) = _of_kind(_objects(STACK / "ci" / "minimal-values.yaml"), "ClusterRole")
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
    granted = {
        (group, resource) for rule in role["rules"] for group in rule["apiGroups"] for resource in rule["resources"]
    }
    assert ("", "secrets") not in granted
    assert ("sovereign-stack.io", "modeldeployments/status") in granted


@pytest.mark.parametrize(("values_name", "issued"), [("minimal-values.yaml", True), ("airgapped-values.yaml", False)])
def test_operator_webhook_is_reachable_where_kopf_registers_it(values_name: str, issued: bool) -> None:
    objects = _objects(STACK / "ci" / values_name)
    (service,) = (
        service for service in _of_kind(objects, "Service") if service["metadata"]["name"].endswith("-webhook")
    )
    (operator,) = (container for container in _containers(objects) if container["name"] == "operator")
    environment = {variable["name"]: variable.get("value") for variable in operator["env"]}
    assert environment["SOVEREIGN_WEBHOOK_HOST"] == f"{service['metadata']['name']}.{NAMESPACE}.svc"
    (port,) = (port for port in operator["ports"] if port["name"] == "webhook")
    assert service["spec"]["ports"][0]["port"] == port["containerPort"]
    assert f"--webhook-port={port['containerPort']}" in operator["command"]
    certificates = _of_kind(objects, "Certificate")
    assert bool(certificates) is issued
    if issued:
        assert environment["SOVEREIGN_WEBHOOK_HOST"] in certificates[0]["spec"]["dnsNames"]


def test_example_model_deployment_is_valid() -> None:
    example = yaml.safe_load((STACK / "examples" / "modeldeployment.yaml").read_text())
    crd = next(crd for crd in custom_resource_definitions() if crd["spec"]["names"]["kind"] == "ModelDeployment")
    validate_custom(example, crd)
    ModelDeploymentSpec.model_validate(example["spec"])


def test_generated_files_are_current() -> None:
    assert stale_files(load_default_policy(), CHARTS) == []


@pytest.fixture
def charts_copy(tmp_path: Path) -> Path:
    """A copy of the charts whose relative symlinks into monitoring/ still resolve."""
    shutil.copytree(CHARTS, tmp_path / "charts", symlinks=True)
    (tmp_path / "monitoring").symlink_to(REPO / "monitoring", target_is_directory=True)
    return tmp_path / "charts"


def _with_extra_egress(cidr: str) -> ResidencyPolicy:
    document = load_default_policy().model_dump(mode="json", by_alias=True)
    document["spec"]["egress"]["allow"].append(
        {"name": "partner-api", "country": "KR", "cidrs": [cidr], "ports": [443]}
    )
    return ResidencyPolicy.model_validate(document)


def test_a_policy_change_reaches_the_network_policies(charts_copy: Path) -> None:
    changed = _with_extra_egress("203.0.113.0/24")
    generate(changed, charts_copy)
    assert charts_copy / GENERATED_DIR / "network-policies.yaml" in stale_files(load_default_policy(), charts_copy)
    assert stale_files(changed, charts_copy) == []
    objects = _render(charts_copy / "sovereign-stack", _values(STACK / "ci" / "minimal-values.yaml"))
    blocks = {
        peer["ipBlock"]["cidr"]
        for policy in _of_kind(objects, "NetworkPolicy")
        for rule in policy["spec"]["egress"]
        for peer in rule["to"]
        if "ipBlock" in peer
    }
    assert "203.0.113.0/24" in blocks


def test_check_command_fails_on_stale_files(charts_copy: Path) -> None:
    runner = CliRunner()
    current = runner.invoke(chart_app, ["generate", "--check", "--charts-dir", str(charts_copy)])
    assert current.exit_code == 0, current.output
    (charts_copy / "sovereign-stack" / "values.yaml").write_text("gateway: {}\n")
    stale = runner.invoke(chart_app, ["generate", "--check", "--charts-dir", str(charts_copy)])
    assert stale.exit_code == 1
    assert "values.yaml" in stale.output
    assert "make charts" in stale.output
    regenerated = runner.invoke(chart_app, ["generate", "--charts-dir", str(charts_copy)])
    assert regenerated.exit_code == 0, regenerated.output
    assert stale_files(load_default_policy(), charts_copy) == []


def test_notes_warn_that_host_only_egress_rules_stay_closed() -> None:
    with helm.Chart.load(STACK) as chart:
        manifests = chart.render(_values(STACK / "ci" / "minimal-values.yaml"), name=RELEASE, namespace=NAMESPACE)
    notes = next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))
    assert "egress rules registry-mirror,model-store,identity-provider name hosts only" in notes
    assert "bao write auth/kubernetes/role/sovereign-controller" in notes
    assert "token_policies=sovereign-controller" in notes


def test_the_operator_exposes_its_metrics_to_prometheus() -> None:
    objects = _objects(STACK / "ci" / "production-values.yaml")
    monitors = {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == "ServiceMonitor"}
    operator_monitor = next(m for name, m in monitors.items() if name.endswith("-operator"))
    assert operator_monitor["spec"]["endpoints"][0]["port"] == "metrics"
    services = [obj for obj in objects if obj["kind"] == "Service"]
    selected = [
        service
        for service in services
        if operator_monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        and any(port["name"] == "metrics" for port in service["spec"]["ports"])
    ]
    assert len(selected) == 1
    (deployment,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-operator")]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "--metrics-port=9090" in container["command"]
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
