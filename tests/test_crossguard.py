"""The CrossGuard policy pack generated from the residency policy (infra/crossguard.py, infra/policy-pack)."""

from __future__ import annotations

import ast
import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import empty_pb2, struct_pb2
from pulumi_policy import (
    EnforcementLevel,
    PolicyProviderResource,
    PolicyResource,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE

from infra.crossguard import (
    ARTIFACT_STORE_IN_COUNTRY,
    IMAGES_IN_COUNTRY,
    IN_COUNTRY_SITE,
    INSTANCE,
    NAMESPACE,
    NAMESPACES_LABELLED,
    NO_PUBLIC_IP,
    PACK_NAME,
    REGION_IN_COUNTRY,
    RELEASE,
    RELEASE_EGRESS,
    RESIDENCY_LABEL,
    SERVICE,
    SITES_ANNOTATION,
    VOLUME,
    VOLUMES_ENCRYPTED,
    check_artifact_store,
    check_images,
    check_in_country_site,
    check_namespaces_labelled,
    check_no_public_ip,
    check_region,
    check_release_egress,
    check_volumes_encrypted,
    evaluate,
    policy_pack_policies,
    policy_resource,
)
from policies import ResidencyPolicy, default_policy_path, parse_policy

PACK_DIR = Path(__file__).resolve().parents[1] / "infra" / "policy-pack"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
FLOATING_IP = "openstack:networking/floatingIp:FloatingIp"
ENCRYPTED = ("encrypted",)
PROJECT_CHART = "../charts/sovereign-stack"


def boot_volume(**overrides: Any) -> dict[str, Any]:
    device = {
        "sourceType": "image",
        "destinationType": "volume",
        "volumeType": "encrypted",
        "uuid": "rke2-image",
        "bootIndex": 0.0,
        "volumeSize": 200.0,
    }
    return {**device, **overrides}


def instance(**overrides: Any) -> dict[str, Any]:
    props = {
        "region": "kr-seoul",
        "availabilityZone": "kr-seoul-1a",
        "blockDevices": [boot_volume()],
        "networks": [{"uuid": "net-0", "fixedIpV4": "10.10.1.10"}],
        "metadata": {"site": "kr-seoul-1"},
    }
    return {**props, **overrides}


def namespace(name: str, labels: dict[str, str] | None = None, sites: str = "kr-seoul-1") -> dict[str, Any]:
    labels = {RESIDENCY_LABEL: "KR"} if labels is None else labels
    return {"metadata": {"name": name, "labels": labels, "annotations": {SITES_ANNOTATION: sites}}}


def pod_template(image: str) -> dict[str, Any]:
    return {"template": {"spec": {"containers": [{"name": "main", "image": image}]}}}


def project_release(**values: Any) -> dict[str, Any]:
    return {
        "chart": PROJECT_CHART,
        "namespace": "sovereign-system",
        "values": {
            "mlflow": {
                "enabled": True,
                "artifacts": {
                    "bucket": "sovereign-models",
                    "prefix": "axk1",
                    "endpoint": "https://s3.kr-seoul.sovereign.kr",
                },
            },
            "networkPolicies": {"enabled": True, "apiServerCidrs": ["10.10.0.1/32"]},
            **values,
        },
    }


def gpu_operator(**values: Any) -> dict[str, Any]:
    return {
        "chart": "gpu-operator",
        "version": "v25.10.0",
        "namespace": "gpu-operator",
        "repositoryOpts": {"repo": "oci://registry.sovereign.kr/charts"},
        "values": {"driver": {"repository": "registry.sovereign.kr/nvidia", "image": "driver"}, **values},
    }


def compliant_stack() -> list[tuple[str, str, dict[str, Any]]]:
    """What the program creates for one site, as the engine sees its inputs."""
    return [
        ("pulumi:providers:openstack", "kr-seoul", {"region": "kr-seoul", "authUrl": "https://keystone.kr-seoul"}),
        ("openstack:networking/network:Network", "gpu-net", {"region": "kr-seoul"}),
        ("openstack:networking/subnet:Subnet", "gpu-subnet", {"region": "kr-seoul", "cidr": "10.10.1.0/24"}),
        ("openstack:networking/secGroup:SecGroup", "gpu-nodes", {"region": "kr-seoul"}),
        (
            "openstack:networking/secGroupRule:SecGroupRule",
            "rke2",
            {"region": "kr-seoul", "direction": "ingress", "remoteIpPrefix": "10.10.0.0/16", "portRangeMin": 9345.0},
        ),
        ("openstack:compute/serverGroup:ServerGroup", "gpu-spread", {"region": "kr-seoul"}),
        ("openstack:compute/flavor:Flavor", "gpu.h100x8", {"region": "kr-seoul"}),
        (INSTANCE, "gpu-0", instance()),
        (INSTANCE, "gpu-1", instance(availabilityZone="kr-seoul-1b")),
        (VOLUME, "scratch", {"region": "kr-seoul", "availabilityZone": "kr-seoul-1a", "volumeType": "encrypted"}),
        (NAMESPACE, "sovereign-system", namespace("sovereign-system", sites="kr-seoul-1,kr-daejeon-1")),
        (NAMESPACE, "gpu-operator", namespace("gpu-operator")),
        (SERVICE, "gateway", {"metadata": {"name": "gateway"}, "spec": {"type": "ClusterIP"}}),
        (RELEASE, "gpu-operator", gpu_operator()),
        (
            RELEASE,
            "kube-prometheus-stack",
            {
                "chart": "kube-prometheus-stack",
                "repositoryOpts": {"repo": "https://registry.sovereign.kr/charts"},
                "values": {
                    "global": {"imageRegistry": "registry.sovereign.kr"},
                    "alertmanager": {"image": {"repository": "prometheus/alertmanager", "tag": "v0.28.1"}},
                },
            },
        ),
        (RELEASE, "sovereign-stack-crds", {"chart": "../charts/sovereign-stack-crds"}),
        (RELEASE, "sovereign-stack", project_release()),
        (DEPLOYMENT, "tools", {"spec": pod_template("registry.sovereign.kr/tools/toolbox:1.0")}),
        (
            "kubernetes:batch/v1:CronJob",
            "backup",
            {"spec": {"jobTemplate": {"spec": pod_template("registry.sovereign.kr/tools/backup:1.0")}}},
        ),
    ]


def policy_with_site(name: str, country: str, region: str, zone: str) -> ResidencyPolicy:
    """The shipped kr-default with one more site, edited in the document alone."""
    text = default_policy_path().read_text()
    site = (
        f"  sites:\n    - name: {name}\n      kind: datacenter\n      country: {country}\n"
        f"      region: {region}\n      zones:\n        - name: {zone}\n"
    )
    assert text.count("  sites:\n") == 1
    return parse_policy(text.replace("  sites:\n", site))


def assert_names(messages: list[str], resource_type: str, name: str, rule: str) -> None:
    assert messages
    for message in messages:
        assert message.startswith(f'{resource_type} "{name}": ')
        assert message.endswith(f"[{rule}]")


def stack(*resources: tuple[str, str, dict[str, Any]]) -> list[PolicyResource]:
    return [policy_resource(*resource) for resource in resources]


def urn(resource_type: str, name: str) -> str:
    return f"urn:pulumi:stack::project::{resource_type}::{name}"


DOCTORED_MESSAGES = [
    f'{INSTANCE} "gpu-1": region us-east-1 is not the region of an in-country site; allowed: kr-daejeon, kr-seoul, '
    f"local [{REGION_IN_COUNTRY}]",
    f'{INSTANCE} "gpu-1": availability zone us-east-1a is not a zone of an in-country site in region us-east-1; '
    f"allowed: none [{REGION_IN_COUNTRY}]",
    f'{VOLUME} "scratch": volume type standard is not an encrypted type (encrypted) [{VOLUMES_ENCRYPTED}]',
    f'{SERVICE} "gateway": Services of type LoadBalancer are reachable from outside the cluster; use ClusterIP '
    f"[{NO_PUBLIC_IP}]",
    f'{RELEASE} "sovereign-stack": values.networkPolicies.enabled is false: egress would not be limited to the '
    f"allowlist [{RELEASE_EGRESS}]",
    f'{DEPLOYMENT} "tools": spec.template.spec.containers[0]: image `nginx` comes from `docker.io`; allowed '
    f"registries: registry.sovereign.kr [{IMAGES_IN_COUNTRY}]",
    f'{FLOATING_IP} "gpu-0-fip": floating IPs expose machines publicly; reach them through the site\'s private '
    f"networks [{NO_PUBLIC_IP}]",
    f'{RELEASE} "sovereign-stack": MLflow artifacts at s3://models-us/axk1/ lie in no artifact store of the policy '
    f"(mlflow-artifacts:/, s3://sovereign-models/) [{ARTIFACT_STORE_IN_COUNTRY}]",
    f'{NAMESPACE} "gpu-operator": label {RESIDENCY_LABEL} is missing; set it to KR [{NAMESPACES_LABELLED}]',
    f'{RELEASE} "gpu-operator": createNamespace: true makes a namespace without {RESIDENCY_LABEL}; create a '
    f"Namespace resource [{NAMESPACES_LABELLED}]",
]


# --- resource policies ---------------------------------------------------------------------------


def test_region_admits_in_country_regions_and_zones(default_policy: ResidencyPolicy) -> None:
    assert check_region(default_policy, INSTANCE, "gpu-0", instance()) == []
    assert check_region(default_policy, "openstack:compute/flavor:Flavor", "f", {"region": "kr-daejeon"}) == []
    assert check_region(default_policy, DEPLOYMENT, "web", {"region": "us-east-1"}) == []


def test_region_refuses_a_foreign_region_and_zone(default_policy: ResidencyPolicy) -> None:
    messages = check_region(
        default_policy, INSTANCE, "gpu-0", instance(region="us-east-1", availabilityZone="us-east-1a")
    )
    assert_names(messages, INSTANCE, "gpu-0", REGION_IN_COUNTRY)
    assert (
        "region us-east-1 is not the region of an in-country site; allowed: kr-daejeon, kr-seoul, local" in messages[0]
    )
    assert "availability zone us-east-1a is not a zone of an in-country site in region us-east-1" in messages[1]
    assert len(messages) == 2


def test_region_refuses_a_zone_of_another_site(default_policy: ResidencyPolicy) -> None:
    messages = check_region(default_policy, VOLUME, "v", {"region": "kr-seoul", "availabilityZone": "kr-daejeon-1a"})
    assert_names(messages, VOLUME, "v", REGION_IN_COUNTRY)
    allowed = "allowed: kr-seoul-1a, kr-seoul-1b"
    assert f"zone kr-daejeon-1a is not a zone of an in-country site in region kr-seoul; {allowed}" in messages[0]


def test_region_comes_from_the_provider_or_must_be_set(default_policy: ResidencyPolicy) -> None:
    props = instance(region=None)
    assert check_region(default_policy, INSTANCE, "gpu-0", props, {"region": "kr-seoul"}) == []
    abroad = check_region(default_policy, INSTANCE, "gpu-0", props, {"region": "eu-west-1"})
    assert_names(abroad, INSTANCE, "gpu-0", REGION_IN_COUNTRY)
    assert "its provider's region eu-west-1" in abroad[0]
    unset = check_region(default_policy, VOLUME, "v", {"volumeType": "encrypted"})
    assert_names(unset, VOLUME, "v", REGION_IN_COUNTRY)
    assert "names no region, nor does its provider: set `region`" in unset[0]
    assert check_region(default_policy, "openstack:networking/network:Network", "n", {}) == []


def test_region_policy_reads_the_provider_of_its_args(default_policy: ResidencyPolicy) -> None:
    region_policy = next(p for p in policy_pack_policies(default_policy) if p.name == REGION_IN_COUNTRY)
    assert isinstance(region_policy, ResourceValidationPolicy)
    resource = policy_resource(INSTANCE, "gpu-0", instance(region=None))
    reported: list[str] = []
    for provider_region in ("kr-seoul", "us-east-1"):
        provider = PolicyProviderResource("pulumi:providers:openstack", {"region": provider_region}, "urn:p", "p")
        args = ResourceValidationArgs(INSTANCE, resource.props, resource.urn, resource.name, resource.opts, provider)
        region_policy.validate(args, lambda message, _urn=None: reported.append(message))
    assert len(reported) == 2
    assert "its provider's region us-east-1 is not the region" in reported[0]
    assert "zone kr-seoul-1a is not a zone of an in-country site in region us-east-1" in reported[1]


def test_no_public_ip(default_policy: ResidencyPolicy) -> None:
    floating = check_no_public_ip(default_policy, FLOATING_IP, "gpu-0-fip", {"pool": "public"})
    assert_names(floating, FLOATING_IP, "gpu-0-fip", NO_PUBLIC_IP)
    load_balancer = {"spec": {"type": "LoadBalancer", "externalIPs": ["203.0.113.7"]}}
    exposed = check_no_public_ip(default_policy, SERVICE, "gateway", load_balancer)
    assert_names(exposed, SERVICE, "gateway", NO_PUBLIC_IP)
    assert "type LoadBalancer" in exposed[0]
    assert "externalIPs" in exposed[1]
    node_port = check_no_public_ip(default_policy, SERVICE, "gateway", {"spec": {"type": "NodePort"}})
    assert "type NodePort" in node_port[0]
    public = check_no_public_ip(default_policy, INSTANCE, "gpu-0", instance(accessIpV4="203.0.113.7"))
    assert_names(public, INSTANCE, "gpu-0", NO_PUBLIC_IP)
    assert check_no_public_ip(default_policy, INSTANCE, "gpu-0", instance(accessIpV4="10.10.1.10")) == []
    assert check_no_public_ip(default_policy, SERVICE, "gateway", {"spec": {"type": "ClusterIP"}}) == []
    assert check_no_public_ip(default_policy, SERVICE, "headless", {"metadata": {"name": "x"}}) == []


def test_volumes_must_use_an_encrypted_type() -> None:
    assert check_volumes_encrypted(VOLUME, "v", {"volumeType": "encrypted"}, ENCRYPTED) == []
    plain = check_volumes_encrypted(VOLUME, "v", {"volumeType": "standard"}, ENCRYPTED)
    assert_names(plain, VOLUME, "v", VOLUMES_ENCRYPTED)
    assert "volume type standard is not an encrypted type (encrypted)" in plain[0]
    assert "volume type (default)" in check_volumes_encrypted(VOLUME, "v", {"size": 10.0}, ENCRYPTED)[0]


def test_instances_boot_from_an_encrypted_volume() -> None:
    assert check_volumes_encrypted(INSTANCE, "gpu-0", instance(), ENCRYPTED) == []
    attached = instance(blockDevices=[boot_volume(), {"sourceType": "volume", "uuid": "vol-1", "bootIndex": 1.0}])
    assert check_volumes_encrypted(INSTANCE, "gpu-0", attached, ENCRYPTED) == []
    local = instance(blockDevices=[boot_volume(destinationType="local", volumeType=None)])
    messages = check_volumes_encrypted(INSTANCE, "gpu-0", local, ENCRYPTED)
    assert_names(messages, INSTANCE, "gpu-0", VOLUMES_ENCRYPTED)
    assert messages == [
        f'{INSTANCE} "gpu-0": blockDevices[0] is an ephemeral local disk, which is not encrypted [{VOLUMES_ENCRYPTED}]'
    ]
    image_only = check_volumes_encrypted(INSTANCE, "gpu-0", {"region": "kr-seoul", "imageId": "rke2"}, ENCRYPTED)
    assert "boots from an ephemeral local disk" in image_only[0]
    plain = check_volumes_encrypted(
        INSTANCE, "gpu-0", instance(blockDevices=[boot_volume(volumeType="ssd")]), ENCRYPTED
    )
    assert "blockDevices[0] volume type ssd is not an encrypted type" in plain[0]


def test_workload_images_come_from_the_mirror(default_policy: ResidencyPolicy) -> None:
    compliant = {"spec": pod_template("registry.sovereign.kr/sovereign-stack/sovereign:0.1.0")}
    assert check_images(default_policy, DEPLOYMENT, "web", compliant) == []
    messages = check_images(default_policy, DEPLOYMENT, "web", {"spec": pod_template("nginx")})
    assert messages == [
        f'{DEPLOYMENT} "web": spec.template.spec.containers[0]: image `nginx` comes from `docker.io`; '
        f"allowed registries: registry.sovereign.kr [{IMAGES_IN_COUNTRY}]"
    ]
    pod = {"spec": {"initContainers": [{"image": "ghcr.io/x/init:1"}], "containers": [{"image": "quay.io/y:2"}]}}
    assert len(check_images(default_policy, "kubernetes:core/v1:Pod", "p", pod)) == 2
    job = {"spec": {"jobTemplate": {"spec": pod_template("busybox")}}}
    assert (
        "spec.jobTemplate.spec.template.spec.containers[0]"
        in check_images(default_policy, "kubernetes:batch/v1:CronJob", "j", job)[0]
    )


def test_release_values_name_only_allowed_registries(default_policy: ResidencyPolicy) -> None:
    assert check_images(default_policy, RELEASE, "gpu-operator", gpu_operator()) == []
    docker_hub = check_images(
        default_policy, RELEASE, "gpu-operator", gpu_operator(driver={"repository": "nvidia/driver"})
    )
    assert_names(docker_hub, RELEASE, "gpu-operator", IMAGES_IN_COUNTRY)
    assert "values.driver.repository: image `nvidia/driver` comes from `docker.io`" in docker_hub[0]
    global_registry = check_images(
        default_policy, RELEASE, "gpu-operator", gpu_operator(**{"global": {"imageRegistry": "docker.io"}})
    )
    assert global_registry == [
        f'{RELEASE} "gpu-operator": values.global.imageRegistry: docker.io is not an allowed registry '
        f"(registry.sovereign.kr) [{IMAGES_IN_COUNTRY}]"
    ]
    sibling = gpu_operator(toolkit={"registry": "registry.sovereign.kr", "repository": "nvidia/toolkit"})
    assert check_images(default_policy, RELEASE, "gpu-operator", sibling) == []
    foreign = gpu_operator(validator={"image": "nvcr.io/nvidia/validator:v1"}, dcgm={"image": "docker.io/x/y"})
    assert [message.split(" comes from ")[0] for message in check_images(default_policy, RELEASE, "g", foreign)] == [
        f'{RELEASE} "g": values.validator.image: image `nvcr.io/nvidia/validator:v1`',
        f'{RELEASE} "g": values.dcgm.image: image `docker.io/x/y`',
    ]


def test_release_charts_come_from_the_mirror(default_policy: ResidencyPolicy) -> None:
    bitnami = {"chart": "postgresql", "repositoryOpts": {"repo": "https://charts.bitnami.com/bitnami"}}
    messages = check_images(default_policy, RELEASE, "postgresql", bitnami)
    assert messages == [
        f'{RELEASE} "postgresql": repositoryOpts.repo https://charts.bitnami.com/bitnami is not on an allowed '
        f"registry (registry.sovereign.kr) [{IMAGES_IN_COUNTRY}]"
    ]
    oci_chart = {"chart": "oci://ghcr.io/charts/postgresql"}
    assert "chart oci://ghcr.io/charts/postgresql" in check_images(default_policy, RELEASE, "pg", oci_chart)[0]
    assert check_images(default_policy, RELEASE, "stack", project_release()) == []


def test_project_release_keeps_its_network_policies(default_policy: ResidencyPolicy) -> None:
    assert check_release_egress(default_policy, RELEASE, "sovereign-stack", project_release()) == []
    disabled = project_release(networkPolicies={"enabled": False})
    assert check_release_egress(default_policy, RELEASE, "sovereign-stack", disabled) == [
        f'{RELEASE} "sovereign-stack": values.networkPolicies.enabled is false: egress would not be limited to '
        f"the allowlist [{RELEASE_EGRESS}]"
    ]


def test_release_values_open_no_egress_beyond_the_policy(default_policy: ResidencyPolicy) -> None:
    wide_open = project_release(egressCidrs=["0.0.0.0/0"])
    assert check_release_egress(default_policy, RELEASE, "stack", wide_open) == [
        f'{RELEASE} "stack": values.egressCidrs[0]: 0.0.0.0/0 opens egress to every address [{RELEASE_EGRESS}]'
    ]
    nested = {
        "chart": "cilium",
        "values": {
            "policy": {"egress": [{"to": [{"ipBlock": {"cidr": "8.8.8.0/24", "except": ["10.0.0.0/8"]}}]}]},
            "clusterCidr": "::/0",
            "dns": {"egressCidrs": ["10.96.0.10/32"]},
        },
    }
    messages = check_release_egress(default_policy, RELEASE, "cilium", nested)
    assert_names(messages, RELEASE, "cilium", RELEASE_EGRESS)
    assert "values.policy.egress[0].to[0].ipBlock.cidr: 8.8.8.0/24 is outside" in messages[0]
    assert "values.clusterCidr: ::/0 opens egress to every address" in messages[1]
    assert len(messages) == 2
    assert check_release_egress(default_policy, DEPLOYMENT, "web", {"egressCidrs": ["0.0.0.0/0"]}) == []
    several = {"chart": "cilium", "values": {"nonMasqueradeCIDRs": "10.10.0.0/16, 172.16.0.0/12"}}
    assert check_release_egress(default_policy, RELEASE, "cilium", several) == [
        f'{RELEASE} "cilium": values.nonMasqueradeCIDRs: 172.16.0.0/12 is outside the policy\'s egress rules and site '
        f"networks [{RELEASE_EGRESS}]"
    ]


# --- stack policies ------------------------------------------------------------------------------


def test_stack_must_name_an_in_country_site(default_policy: ResidencyPolicy) -> None:
    assert check_in_country_site(default_policy, stack((INSTANCE, "gpu-0", instance()))) == []
    assert check_in_country_site(default_policy, stack((NAMESPACE, "ns", namespace("ns", sites="local")))) == []
    nothing = check_in_country_site(default_policy, stack((DEPLOYMENT, "web", {"spec": {}})))
    assert [violation.urn for violation in nothing] == [None]
    assert nothing[0].message.startswith("stack: names no in-country site")
    assert nothing[0].message.endswith(f"[{IN_COUNTRY_SITE}]")
    foreign = check_in_country_site(
        default_policy, stack((NAMESPACE, "ns", namespace("ns", sites="kr-seoul-1,us-east-1")))
    )
    assert [violation.message for violation in foreign] == [
        f'{NAMESPACE} "ns": site `us-east-1` is not in the policy; known sites: kr-seoul-1, kr-daejeon-1, local '
        f"(spec.sites) [{IN_COUNTRY_SITE}]"
    ]
    assert foreign[0].urn == urn(NAMESPACE, "ns")


def test_stack_site_abroad_in_the_policy_is_refused(default_policy: ResidencyPolicy) -> None:
    with_tokyo = policy_with_site("jp-tokyo-1", "JP", "ap-northeast-1", "ap-northeast-1a")
    tokyo_instance = stack((INSTANCE, "gpu-0", instance(region="ap-northeast-1", availabilityZone=None)))
    messages = [violation.message for violation in check_in_country_site(with_tokyo, tokyo_instance)]
    assert messages[0] == (
        f'{INSTANCE} "gpu-0": site `jp-tokyo-1` is in JP, outside KR (spec.sites[jp-tokyo-1]) [{IN_COUNTRY_SITE}]'
    )
    assert messages[1].startswith("stack: names no in-country site")


def test_artifact_store_must_be_in_country(default_policy: ResidencyPolicy) -> None:
    assert check_artifact_store(default_policy, stack((RELEASE, "sovereign-stack", project_release()))) == []
    assert check_artifact_store(default_policy, stack((RELEASE, "gpu-operator", gpu_operator()))) == []
    disabled = project_release(mlflow={"enabled": False})
    assert check_artifact_store(default_policy, stack((RELEASE, "sovereign-stack", disabled))) == []
    foreign = project_release(mlflow={"artifacts": {"bucket": "models-us", "endpoint": "https://s3.amazonaws.com"}})
    messages = [v.message for v in check_artifact_store(default_policy, stack((RELEASE, "sovereign-stack", foreign)))]
    assert messages == [
        f'{RELEASE} "sovereign-stack": MLflow artifacts at s3://models-us/ lie in no artifact store of the policy '
        f"(mlflow-artifacts:/, s3://sovereign-models/) [{ARTIFACT_STORE_IN_COUNTRY}]"
    ]
    other_endpoint = project_release(
        mlflow={"artifacts": {"bucket": "sovereign-models", "endpoint": "https://s3.us-east-1.amazonaws.com"}}
    )
    violations = check_artifact_store(default_policy, stack((RELEASE, "sovereign-stack", other_endpoint)))
    assert [v.message for v in violations] == [
        f'{RELEASE} "sovereign-stack": mlflow.artifacts.endpoint https://s3.us-east-1.amazonaws.com is not '
        f"https://s3.kr-seoul.sovereign.kr, where store `seoul-object-store` is [{ARTIFACT_STORE_IN_COUNTRY}]"
    ]
    assert violations[0].urn == urn(RELEASE, "sovereign-stack")


def test_chart_defaults_apply_to_the_project_release(default_policy: ResidencyPolicy) -> None:
    """Left out of the values, MLflow runs with the chart's default bucket, which no store of kr-default holds."""
    bare = {"chart": "oci://registry.sovereign.kr/charts/sovereign-stack", "values": {}}
    messages = [v.message for v in check_artifact_store(default_policy, stack((RELEASE, "sovereign-stack", bare)))]
    assert "MLflow artifacts at s3://mlflow-artifacts/ lie in no artifact store" in messages[0]


def test_namespaces_carry_the_residency_label(default_policy: ResidencyPolicy) -> None:
    labelled = stack((NAMESPACE, "models", namespace("models")))
    assert check_namespaces_labelled(default_policy, labelled) == []
    unlabelled = stack((NAMESPACE, "models", namespace("models", labels={"team": "ml"})))
    assert [v.message for v in check_namespaces_labelled(default_policy, unlabelled)] == [
        f'{NAMESPACE} "models": label {RESIDENCY_LABEL} is missing; set it to KR [{NAMESPACES_LABELLED}]'
    ]
    wrong = stack((NAMESPACE, "models", namespace("models", labels={RESIDENCY_LABEL: "US"})))
    assert (
        "label sovereign-stack.io/residency is US; set it to KR"
        in check_namespaces_labelled(default_policy, wrong)[0].message
    )


def test_releases_do_not_create_namespaces(default_policy: ResidencyPolicy) -> None:
    creating = stack((RELEASE, "gpu-operator", {**gpu_operator(), "createNamespace": True}))
    violations = check_namespaces_labelled(default_policy, creating)
    assert [v.message for v in violations] == [
        f'{RELEASE} "gpu-operator": createNamespace: true makes a namespace without {RESIDENCY_LABEL}; '
        f"create a Namespace resource [{NAMESPACES_LABELLED}]"
    ]
    assert violations[0].policy == NAMESPACES_LABELLED


# --- the pack, run as the engine runs it ---------------------------------------------------------


def test_pack_is_mandatory_and_described(default_policy: ResidencyPolicy) -> None:
    pack = policy_pack_policies(default_policy)
    assert [p.name for p in pack] == [
        REGION_IN_COUNTRY,
        NO_PUBLIC_IP,
        VOLUMES_ENCRYPTED,
        "sovereign-images-in-country",
        RELEASE_EGRESS,
        IN_COUNTRY_SITE,
        ARTIFACT_STORE_IN_COUNTRY,
        NAMESPACES_LABELLED,
    ]
    assert all(p.enforcement_level is EnforcementLevel.MANDATORY for p in pack)
    assert all(len(p.description) > 60 for p in pack)
    assert [type(p) for p in pack] == [ResourceValidationPolicy] * 5 + [StackValidationPolicy] * 3
    encrypted = next(p for p in pack if p.name == VOLUMES_ENCRYPTED)
    assert encrypted.config_schema is not None
    assert encrypted.config_schema.properties["encryptedVolumeTypes"]["default"] == ["encrypted"]


def test_compliant_stack_has_no_violations(default_policy: ResidencyPolicy) -> None:
    assert evaluate(default_policy, compliant_stack()) == []


def test_doctored_stack_has_exactly_these_violations(default_policy: ResidencyPolicy) -> None:
    resources = compliant_stack()
    props = {(resource_type, name): props for resource_type, name, props in resources}
    props[INSTANCE, "gpu-1"].update(region="us-east-1", availabilityZone="us-east-1a")
    props[VOLUME, "scratch"]["volumeType"] = "standard"
    props[DEPLOYMENT, "tools"]["spec"] = pod_template("nginx")
    props[SERVICE, "gateway"]["spec"]["type"] = "LoadBalancer"
    props[RELEASE, "gpu-operator"]["createNamespace"] = True
    props[RELEASE, "sovereign-stack"]["values"]["networkPolicies"]["enabled"] = False
    props[RELEASE, "sovereign-stack"]["values"]["mlflow"]["artifacts"]["bucket"] = "models-us"
    del props[NAMESPACE, "gpu-operator"]["metadata"]["labels"][RESIDENCY_LABEL]
    resources.append((FLOATING_IP, "gpu-0-fip", {"pool": "public"}))

    violations = evaluate(default_policy, resources)

    assert [(v.policy, v.urn) for v in violations] == [
        (REGION_IN_COUNTRY, urn(INSTANCE, "gpu-1")),
        (REGION_IN_COUNTRY, urn(INSTANCE, "gpu-1")),
        (VOLUMES_ENCRYPTED, urn(VOLUME, "scratch")),
        (NO_PUBLIC_IP, urn(SERVICE, "gateway")),
        (RELEASE_EGRESS, urn(RELEASE, "sovereign-stack")),
        (IMAGES_IN_COUNTRY, urn(DEPLOYMENT, "tools")),
        (NO_PUBLIC_IP, urn(FLOATING_IP, "gpu-0-fip")),
        (ARTIFACT_STORE_IN_COUNTRY, urn(RELEASE, "sovereign-stack")),
        (NAMESPACES_LABELLED, urn(NAMESPACE, "gpu-operator")),
        (NAMESPACES_LABELLED, urn(RELEASE, "gpu-operator")),
    ]
    assert [v.message for v in violations] == DOCTORED_MESSAGES


def test_pack_config_sets_the_encrypted_volume_types(default_policy: ResidencyPolicy) -> None:
    volumes = [(VOLUME, "a", {"region": "kr-seoul", "volumeType": "luks"})]
    assert [v.policy for v in evaluate(default_policy, volumes)] == [VOLUMES_ENCRYPTED]
    config = {VOLUMES_ENCRYPTED: {"encryptedVolumeTypes": ["luks", "luks-ssd"]}}
    assert evaluate(default_policy, volumes, config) == []


def test_values_unknown_during_preview_do_not_crash(default_policy: ResidencyPolicy) -> None:
    unknown = UNKNOWN_STRING_VALUE
    resources = [
        (INSTANCE, "gpu-0", instance(region=unknown)),
        (RELEASE, "gpu-operator", gpu_operator(driver={"repository": unknown}, toolkit={"repository": "nvidia/tk"})),
        (RELEASE, "monitoring", {"chart": "x", "values": {"global": {"imageRegistry": unknown}, "repository": "a/b"}}),
        (RELEASE, "sovereign-stack", project_release(mlflow={"artifacts": {"endpoint": unknown}})),
    ]
    violations = evaluate(default_policy, resources)
    # What depends on an unknown value waits for `pulumi up`; the known values around it are still checked.
    assert [(v.policy, v.urn) for v in violations] == [(IMAGES_IN_COUNTRY, urn(RELEASE, "gpu-operator"))]
    assert "values.toolkit.repository: image `nvidia/tk` comes from `docker.io`" in violations[0].message


def test_a_new_site_in_the_policy_reaches_the_pack(default_policy: ResidencyPolicy) -> None:
    busan_instance = instance(region="kr-busan", availabilityZone="kr-busan-1a")
    resources = [(INSTANCE, "gpu-busan-0", busan_instance)]
    before = evaluate(default_policy, resources)
    assert {v.policy for v in before} == {REGION_IN_COUNTRY, IN_COUNTRY_SITE}
    with_new_site = policy_with_site("kr-busan-1", "KR", "kr-busan", "kr-busan-1a")
    assert evaluate(with_new_site, resources) == []


def test_policy_pack_program_builds_the_generated_pack() -> None:
    """Importing the program would serve the pack (PolicyPack listens at construction); read it instead."""
    tree = ast.parse((PACK_DIR / "__main__.py").read_text())
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)]
    pack = next(call for call in calls if call.func.id == "PolicyPack")  # type: ignore[union-attr]
    keywords = {keyword.arg: ast.unparse(keyword.value) for keyword in pack.keywords}
    assert keywords["name"] == "PACK_NAME"
    assert keywords["enforcement_level"] == "EnforcementLevel.MANDATORY"
    assert keywords["policies"] == "policy_pack_policies(residency_policy)"
    assert "SOVEREIGN_POLICY" in (PACK_DIR / "__main__.py").read_text()
    assert PACK_NAME == "sovereign-residency"
    runtime = yaml.safe_load((PACK_DIR / "PulumiPolicy.yaml").read_text())["runtime"]
    assert runtime["name"] == "python"
    assert (PACK_DIR / runtime["options"]["virtualenv"]).resolve() == PACK_DIR.parents[1] / ".venv"
    requirements = (PACK_DIR / "requirements.txt").read_text().splitlines()
    assert "pulumi-policy>=1.20" in requirements
    assert "-e ../.." in requirements


def test_the_pack_served_over_grpc_runs_the_generated_policies(default_policy: ResidencyPolicy) -> None:
    """The pack as the Pulumi engine runs it: a child process that serves the analyzer and prints its port."""
    import grpc
    from pulumi.runtime import proto

    def struct(value: dict[str, Any]) -> struct_pb2.Struct:
        message = struct_pb2.Struct()
        message.update(value)
        return message

    pack = subprocess.Popen(
        [sys.executable, str(PACK_DIR / "__main__.py")],
        cwd=PACK_DIR.parents[1],
        env={**os.environ, "PYTHONPATH": str(PACK_DIR.parents[1])},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert pack.stdout is not None
        port = int(pack.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            analyzer = proto.AnalyzerStub(channel)
            info = analyzer.GetAnalyzerInfo(empty_pb2.Empty(), timeout=30)
            assert info.name == PACK_NAME
            assert len(info.policies) == 8
            provider = proto.AnalyzerProviderResource(
                type="pulumi:providers:openstack", name="p", urn="urn:p", properties=struct({"region": "us-east-1"})
            )
            request = proto.AnalyzeRequest(
                type=INSTANCE,
                name="gpu-0",
                urn=urn(INSTANCE, "gpu-0"),
                properties=struct(instance(region=None)),
                provider=provider,
            )
            diagnostics = analyzer.Analyze(request, timeout=30).diagnostics
            assert [d.policyName for d in diagnostics] == [REGION_IN_COUNTRY] * 2
            assert "its provider's region us-east-1" in diagnostics[0].message
            namespace_resource = proto.AnalyzerResource(
                type=NAMESPACE,
                name="models",
                urn=urn(NAMESPACE, "models"),
                properties=struct(namespace("models", labels={})),
            )
            stack_diagnostics = analyzer.AnalyzeStack(
                proto.AnalyzeStackRequest(resources=[namespace_resource]), timeout=30
            ).diagnostics
            assert [(d.policyName, d.urn) for d in stack_diagnostics] == [
                (NAMESPACES_LABELLED, urn(NAMESPACE, "models"))
            ]
    finally:
        pack.kill()
        pack.wait()


def test_checks_do_not_change_their_input(default_policy: ResidencyPolicy) -> None:
    resources = compliant_stack()
    before = copy.deepcopy(resources)
    evaluate(default_policy, resources)
    assert resources == before


@pytest.mark.parametrize(
    "resource_type",
    [INSTANCE, VOLUME, FLOATING_IP, SERVICE, NAMESPACE, RELEASE, DEPLOYMENT, "kubernetes:core/v1:Pod"],
)
def test_missing_props_never_crash(default_policy: ResidencyPolicy, resource_type: str) -> None:
    weird = {"spec": None, "metadata": "x", "values": ["not", "a", "map"], "blockDevices": None, "chart": None}
    for props in ({}, weird):
        evaluate(default_policy, [(resource_type, "r", props)])
