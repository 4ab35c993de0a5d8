"""The Pulumi program under `pulumi.runtime.set_mocks` (no CLI, no cloud), for each stack config, and
the same check `pulumi preview --policy-pack infra/policy-pack` makes: the recorded resources run
through the pack's validators.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pulumi
import pytest
import yaml

from infra.config import INFRA_DIR, ConfigError, load_site_config
from infra.crossguard import RESIDENCY_LABEL, SITES_ANNOTATION, evaluate
from infra.program import run
from policies import load_default_policy, parse_policy
from policies.loader import default_policy_path

SECRETS = {
    "sovereign:postgresPassword": "pg-secret-value",
    "sovereign:rke2Token": "rke2-secret-value",
}
STACKS = ("dev", "prod-kr-seoul")
MIRROR = "registry.sovereign.kr"
Resource = tuple[str, str, dict[str, Any]]


class RecordingMocks(pulumi.runtime.Mocks):
    """Every resource the program registers, with its inputs; outputs echo the inputs."""

    def __init__(self) -> None:
        self.resources: list[Resource] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append((args.typ, args.name, dict(args.inputs)))
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        if args.token == "openstack:images/getImage:getImage":
            return {"id": f"image-{args.args['name']}", "name": args.args["name"]}
        return {}


def stack_config(stack: str) -> dict[str, Any]:
    return yaml.safe_load((INFRA_DIR / f"Pulumi.{stack}.yaml").read_text())["config"]


def configure(values: dict[str, Any], secrets: dict[str, str] | None = None) -> None:
    secrets = SECRETS if secrets is None else secrets
    config = {key: value if isinstance(value, str) else json.dumps(value) for key, value in values.items()}
    pulumi.runtime.set_all_config({**config, **secrets}, secret_keys=list(secrets))


@pytest.fixture(autouse=True, scope="module")
def event_loop_for_pulumi() -> Iterator[None]:
    """Pulumi's test runner awaits on the thread's current event loop; earlier tests may have closed theirs."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield
    loop.close()
    asyncio.set_event_loop(None)


def run_program(values: dict[str, Any], stack: str = "test") -> list[Resource]:
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project="sovereign-site", stack=stack, preview=False)
    configure(values)
    pulumi.runtime.test(run)()
    return mocks.resources


@pytest.fixture(scope="module", params=STACKS)
def stack(request: pytest.FixtureRequest) -> tuple[str, list[Resource]]:
    return request.param, run_program(stack_config(request.param), request.param)


def of_type(resources: list[Resource], token: str) -> list[Resource]:
    return [resource for resource in resources if resource[0] == token]


def releases(resources: list[Resource]) -> dict[str, dict[str, Any]]:
    return {Path(props["chart"]).name: props for _, _, props in of_type(resources, "kubernetes:helm.sh/v3:Release")}


# The engine's wire format for a secret value (Pulumi's property-value spec, "Secrets"): a map whose signature key
# holds this constant. Fixed by the protocol, so stated here rather than read from the SDK's private names.
SIGNATURE_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIGNATURE = "1b47061264138c4ac30d75fd1eb44270"


def revealed(value: Any) -> Any:
    """A secret as the engine receives it (marked with Pulumi's secret signature), unwrapped; else None."""
    if isinstance(value, dict) and value.get(SIGNATURE_KEY) == SECRET_SIGNATURE:
        return value["value"]
    return None


def strings_under(node: Any, keys: set[str]) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in keys and isinstance(value, str):
                yield value
            yield from strings_under(value, keys)
    elif isinstance(node, list):
        for item in node:
            yield from strings_under(item, keys)


def test_every_namespace_is_labelled_with_residency_and_pod_security(stack: tuple[str, list[Resource]]) -> None:
    name, resources = stack
    namespaces = {
        props["metadata"]["name"]: props["metadata"]
        for _, _, props in of_type(resources, "kubernetes:core/v1:Namespace")
    }
    expected = {"gpu-operator", "monitoring", "kuberay-system", "sovereign-system", "models"}
    assert expected <= namespaces.keys()
    for metadata in namespaces.values():
        assert metadata["labels"][RESIDENCY_LABEL] == "KR"
        assert metadata["annotations"][SITES_ANNOTATION] == "kr-seoul-1"
    assert namespaces["gpu-operator"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert "sovereign-stack.io/governed" not in namespaces["gpu-operator"]["labels"]
    assert namespaces["sovereign-system"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert namespaces["models"]["labels"]["sovereign-stack.io/governed"] == "true"
    if name == "prod-kr-seoul":
        assert "models-public-sector" in namespaces


def test_charts_are_pinned_and_every_image_comes_from_the_mirror(stack: tuple[str, list[Resource]]) -> None:
    name, resources = stack
    pins = stack_config(name)["sovereign:charts"]
    charts = releases(resources)
    expected = {"gpu-operator": "gpuOperator", "kuberay-operator": "kuberayOperator"}
    expected |= {"kube-prometheus-stack": "kubePrometheusStack"}
    for chart, key in expected.items():
        assert charts[chart]["version"] == pins[key]
        assert charts[chart]["repositoryOpts"] == {"repo": f"oci://{MIRROR}/charts"}
        assert charts[chart].get("createNamespace") is not True
    assert charts["gpu-operator"]["values"]["dcgmExporter"]["serviceMonitor"] == {"enabled": True}
    grafana_sidecar = charts["kube-prometheus-stack"]["values"]["grafana"]["sidecar"]["dashboards"]
    assert (grafana_sidecar["label"], grafana_sidecar["labelValue"]) == ("grafana_dashboard", "1")
    for chart, props in charts.items():
        references = list(strings_under(props.get("values", {}), {"repository", "imageRegistry", "registry"}))
        assert all(reference.startswith(MIRROR) for reference in references), (chart, references)
    assert Path(charts["sovereign-stack"]["chart"]) == (INFRA_DIR.parent / "charts" / "sovereign-stack")
    assert charts["sovereign-stack"]["values"]["global"]["imageRegistry"] == MIRROR


def test_the_stack_chart_gets_values_its_schema_accepts(stack: tuple[str, list[Resource]]) -> None:
    name, resources = stack
    values = releases(resources)["sovereign-stack"]["values"]
    with helm.Chart.load(INFRA_DIR.parent / "charts" / "sovereign-stack") as chart:
        chart.validate_schema(values)
    database = values["mlflow"]["database"]
    if name == "dev":
        assert "postgresql" in releases(resources)
        assert database["host"] == "postgresql.sovereign-system.svc"
    else:
        assert "postgresql" not in releases(resources)
        assert database["host"] == "pg.kr-seoul-1.sovereign.kr"
        assert values["openbao"]["kubernetesAuth"]["mountPath"] == "kubernetes-kr-seoul"
    assert values["mlflow"]["artifacts"]["endpoint"] == "https://s3.kr-seoul.sovereign.kr"


def test_secrets_stay_in_secrets(stack: tuple[str, list[Resource]]) -> None:
    _, resources = stack
    (secret,) = of_type(resources, "kubernetes:core/v1:Secret")
    assert revealed(secret[2]["stringData"]) == {"password": "pg-secret-value"}
    elsewhere = json.dumps([props for token, _, props in resources if token != "kubernetes:core/v1:Secret"])
    assert "pg-secret-value" not in elsewhere


def test_no_public_ip_and_no_public_service(stack: tuple[str, list[Resource]]) -> None:
    _, resources = stack
    tokens = {token for token, _, _ in resources}
    assert not any("floatingIp" in token for token in tokens)
    for _, _, props in of_type(resources, "kubernetes:core/v1:Service"):
        assert props.get("spec", {}).get("type") not in ("LoadBalancer", "NodePort")
    for _, _, props in of_type(resources, "openstack:compute/instance:Instance"):
        assert "accessIpV4" not in props


def test_the_gpu_pool_is_private_encrypted_spread_and_labelled_by_pulumi() -> None:
    resources = run_program(stack_config("prod-kr-seoul"), "prod-kr-seoul")
    # Registration order is not defined: compare in name order.
    instances = sorted(of_type(resources, "openstack:compute/instance:Instance"), key=lambda resource: resource[1])
    assert [props["availabilityZone"] for _, _, props in instances] == ["kr-seoul-1a", "kr-seoul-1b"] * 2
    for _, _, props in instances:
        assert props["region"] == "kr-seoul"
        (boot,) = props["blockDevices"]
        assert (boot["sourceType"], boot["destinationType"], boot["bootIndex"]) == ("volume", "volume", 0)
        assert props["schedulerHints"] == [{"group": "gpu-pool-spread-id"}]
        cloud_init = yaml.safe_load(revealed(props["userData"]))  # it holds the join token
        agent = yaml.safe_load(cloud_init["write_files"][0]["content"])
        assert agent["token"] == "rke2-secret-value"
        assert agent["system-default-registry"] == MIRROR
        # NodeRestriction forbids a kubelet to set node-restriction.kubernetes.io labels on its own node.
        assert not any(label.startswith("node-restriction.kubernetes.io/") for label in agent["node-label"])
    volumes = of_type(resources, "openstack:blockstorage/volume:Volume")
    assert {props["volumeType"] for _, _, props in volumes} == {"encrypted"}
    assert {props["imageId"] for _, _, props in volumes} == {"image-rke2-agent-ubuntu-24.04"}
    (group,) = of_type(resources, "openstack:compute/serverGroup:ServerGroup")
    assert group[2]["policies"] == "anti-affinity"
    (flavor,) = of_type(resources, "openstack:compute/flavor:Flavor")
    assert flavor[2]["extraSpecs"] == {"pci_passthrough:alias": "h100:8"}
    assert flavor[2]["disk"] == 0
    rules = of_type(resources, "openstack:networking/secGroupRule:SecGroupRule")
    assert {props["remoteIpPrefix"] for _, _, props in rules} == {"10.10.0.0/16", "10.10.0.0/18", "10.10.64.0/18"}
    patches = of_type(resources, "kubernetes:core/v1:NodePatch")
    assert sorted((props["metadata"] for _, _, props in patches), key=lambda metadata: metadata["name"]) == [
        {"name": f"gpu-h100x8-{index}", "labels": {"node-restriction.kubernetes.io/residency": "KR"}}
        for index in range(4)
    ]


def test_each_stack_passes_the_policy_pack(stack: tuple[str, list[Resource]]) -> None:
    _, resources = stack
    assert evaluate(load_default_policy(), resources) == []


def test_a_doctored_stack_fails_the_policy_pack() -> None:
    resources = run_program(stack_config("prod-kr-seoul"), "prod-kr-seoul")
    doctored: list[Resource] = []
    for token, name, props in resources:
        if token == "openstack:compute/instance:Instance" and name == "gpu-pool-0":
            props = {**props, "region": "ap-northeast-1", "availabilityZone": "ap-northeast-1a"}
        doctored.append((token, name, props))
    doctored.append(("openstack:networking/floatingIp:FloatingIp", "debug-ip", {"pool": "public"}))
    doctored.append(
        ("kubernetes:core/v1:Service", "debug", {"metadata": {"name": "debug"}, "spec": {"type": "LoadBalancer"}})
    )
    found = {
        (violation.policy, violation.urn.rsplit("::", 1)[-1] if violation.urn else None)
        for violation in evaluate(load_default_policy(), doctored)
    }
    assert found == {
        ("sovereign-region-in-country", "gpu-pool-0"),
        ("sovereign-no-public-ip", "debug-ip"),
        ("sovereign-no-public-ip", "debug"),
    }


# -- configuration fails early, naming the key -------------------------------------------------------


def config_error(values: dict[str, Any], secrets: dict[str, str] | None = None) -> str:
    configure(values, secrets)
    with pytest.raises(ConfigError) as raised:
        load_site_config()
    return str(raised.value)


def test_a_missing_or_malformed_key_is_named() -> None:
    values = stack_config("dev")
    charts = {key: value for key, value in values["sovereign:charts"].items() if key != "gpuOperator"}
    message = config_error({**values, "sovereign:charts": {**charts, "kuberayOperator": "latest"}})
    assert "sovereign:charts.gpuOperator: Field required" in message
    assert "sovereign:charts.kuberayOperator: String should match pattern" in message
    typo = config_error({**values, "sovereign:artifact": {"bucket": "x"}})
    assert "unknown configuration key(s) sovereign:artifact; expected " in typo
    missing = config_error({key: value for key, value in values.items() if key != "sovereign:artifacts"})
    assert "sovereign:artifacts: Field required" in missing


def test_what_the_policy_forbids_is_refused_before_any_resource() -> None:
    values = stack_config("prod-kr-seoul")
    pool = values["sovereign:openstack"]
    message = config_error(
        {
            **values,
            "sovereign:sites": ["kr-seoul-1", "us-east-1"],
            "sovereign:registryMirror": "docker.io",
            "sovereign:artifacts": {"bucket": "models-abroad", "endpoint": "https://s3.amazonaws.com"},
            "sovereign:openstack": {
                **pool,
                "availabilityZones": ["kr-seoul-1a", "kr-daejeon-1a"],
                "subnetCidr": "192.168.0.0/24",
            },
        },
        secrets={"sovereign:postgresPassword": "x"},
    )
    for expected in (
        "sovereign:sites[1]: site `us-east-1` is not in the policy",
        "sovereign:registryMirror: docker.io is not in the policy's imageRegistries",
        "sovereign:artifacts: ",
        "sovereign:openstack.availabilityZones[1]: kr-daejeon-1a is not a zone of kr-seoul-1",
        "sovereign:openstack.subnetCidr: 192.168.0.0/24 is outside the site's networks",
        "sovereign:rke2Token: required with `openstack`",
    ):
        assert expected in message, message


def test_a_site_added_to_the_policy_document_is_usable_with_nothing_else_to_edit(tmp_path: Path) -> None:
    busan = (
        "    - name: kr-busan-1\n      kind: datacenter\n      country: KR\n      region: kr-busan\n"
        "      nodeLabels:\n        node-restriction.kubernetes.io/residency: KR\n"
        "      cidrs: [10.30.0.0/16]\n      zones:\n        - name: kr-busan-1a\n          cidrs: [10.30.0.0/18]\n\n"
        "  dataClasses:"
    )
    text = default_policy_path().read_text(encoding="utf-8").replace("  dataClasses:", busan, 1)
    (tmp_path / "with-busan.yaml").write_text(text)
    values = stack_config("prod-kr-seoul")
    pool = values["sovereign:openstack"]
    busan_stack = {
        **values,
        "sovereign:sites": ["kr-busan-1"],
        "sovereign:openstack": {
            **pool,
            "region": "kr-busan",
            "availabilityZones": ["kr-busan-1a"],
            "subnetCidr": "10.30.4.0/22",
        },
    }
    assert "sovereign:sites[0]: site `kr-busan-1` is not in the policy" in config_error(busan_stack)

    resources = run_program({**busan_stack, "sovereign:policy": str(tmp_path / "with-busan.yaml")})
    zones = {props["availabilityZone"] for _, _, props in of_type(resources, "openstack:compute/instance:Instance")}
    assert zones == {"kr-busan-1a"}
    assert evaluate(parse_policy(text), resources) == []
    assert {violation.policy for violation in evaluate(load_default_policy(), resources)} >= {
        "sovereign-region-in-country"
    }
