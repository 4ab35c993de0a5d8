"""The generated ValidatingAdmissionPolicies refuse what the residency policy forbids, as a real CEL engine shows."""

from __future__ import annotations

from typing import Any

import cel
import kubernetes_validate
import pytest
import yaml

from operators.admission_policies import GOVERNED_LABEL, admission_policies, residency_node_labels
from policies import PolicyEvaluator, ResidencyPolicy, load_default_policy, parse_policy
from policies.loader import default_policy_path

DEFAULT_TEXT = default_policy_path().read_text(encoding="utf-8")
RESIDENCY_KEY = "node-restriction.kubernetes.io/residency"
STACK_IMAGE = "registry.sovereign.kr/sovereign/stack:1.0"
DIGEST = "sha256:" + "0123456789abcdef" * 4
MANAGED_BY = {"app.kubernetes.io/managed-by": "pytest"}
# The request resource Kubernetes matches `resourceRules` against, by kind.
RESOURCES = {
    "Pod": "pods",
    "Service": "services",
    "ConfigMap": "configmaps",
    "Deployment": "deployments",
    "StatefulSet": "statefulsets",
    "DaemonSet": "daemonsets",
    "ReplicaSet": "replicasets",
    "Job": "jobs",
    "CronJob": "cronjobs",
}
WORKLOAD_API_VERSIONS = {
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "DaemonSet": "apps/v1",
    "ReplicaSet": "apps/v1",
    "Job": "batch/v1",
    "CronJob": "batch/v1",
}
# Functions of standard CEL; the macros (`has`, `all`, `exists`, `filter`, `map`) expand before this check.
STANDARD_FUNCTIONS = {"matches", "size", "string"}


def matches(vap: dict[str, Any], obj: dict[str, Any], operation: str, subresource: str) -> bool:
    """Whether the policy's `matchConstraints.resourceRules` select this request."""
    group, _, version = obj["apiVersion"].rpartition("/")
    resource = RESOURCES[obj["kind"]] + (f"/{subresource}" if subresource else "")
    return any(
        group in rule["apiGroups"]
        and version in rule["apiVersions"]
        and operation in rule["operations"]
        and resource in rule["resources"]
        for rule in vap["spec"]["matchConstraints"]["resourceRules"]
    )


def violations(
    vap: dict[str, Any], obj: dict[str, Any], operation: str = "CREATE", subresource: str = ""
) -> list[str] | None:
    """The messages of the failing validations, evaluated as the API server does; None if the policy does not apply."""
    if not matches(vap, obj, operation, subresource):
        return None
    activation: dict[str, Any] = {"object": obj, "variables": {}}
    for variable in vap["spec"].get("variables", []):
        activation["variables"][variable["name"]] = cel.evaluate(variable["expression"], activation)
    return [
        cel.evaluate(validation["messageExpression"], activation)
        for validation in vap["spec"]["validations"]
        if cel.evaluate(validation["expression"], activation) is not True
    ]


def review(
    objects: list[dict[str, Any]], obj: dict[str, Any], operation: str = "CREATE", subresource: str = ""
) -> list[str]:
    """Every message the generated policies deny the request with; empty when it is admitted."""
    results = [violations(vap, obj, operation, subresource) for vap in policies_of(objects)]
    assert any(result is not None for result in results), f"no policy applies to {obj['kind']}"
    return [message for result in results if result for message in result]


def policies_of(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == "ValidatingAdmissionPolicy"]


def bindings_of(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == "ValidatingAdmissionPolicyBinding"]


def pod_spec(**changes: Any) -> dict[str, Any]:
    """A compliant pod spec, with `changes` applied (a value of None removes the field)."""
    spec: dict[str, Any] = {
        "nodeSelector": {RESIDENCY_KEY: "KR", "topology.kubernetes.io/region": "kr-seoul"},
        "containers": [{"name": "app", "image": STACK_IMAGE}],
    }
    spec.update(changes)
    return {key: value for key, value in spec.items() if value is not None}


def pod(**changes: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "app", "namespace": "tenant-a"},
        "spec": pod_spec(**changes),
    }


def workload(kind: str, **changes: Any) -> dict[str, Any]:
    """A workload of `kind` whose pod template has the spec `pod_spec(**changes)`."""
    template = {"metadata": {"labels": {"app": "app"}}, "spec": pod_spec(**changes)}
    spec: dict[str, Any] = {"selector": {"matchLabels": {"app": "app"}}, "template": template}
    if kind == "CronJob":
        spec = {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": template}}}
    return {"apiVersion": WORKLOAD_API_VERSIONS[kind], "kind": kind, "metadata": {"name": "app"}, "spec": spec}


def service(**spec: Any) -> dict[str, Any]:
    ports = [{"port": 80, "targetPort": 8000}]
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app"}, "spec": {"ports": ports, **spec}}


def node_affinity(*terms: list[dict[str, Any]]) -> dict[str, Any]:
    """Required node affinity with one term per argument, each a list of match expressions."""
    selector = {"nodeSelectorTerms": [{"matchExpressions": expressions} for expressions in terms]}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": selector}}


def residency_in(*values: str) -> dict[str, Any]:
    return {"key": RESIDENCY_KEY, "operator": "In", "values": list(values)}


def with_registries(*registries: str) -> ResidencyPolicy:
    """The default policy document with its `imageRegistries` replaced."""
    listed = "".join(f"    - '{registry}'\n" for registry in registries)
    text = DEFAULT_TEXT.replace("  imageRegistries:\n    - registry.sovereign.kr\n", f"  imageRegistries:\n{listed}")
    policy = parse_policy(text)
    assert policy.spec.image_registries == list(registries)
    return policy


@pytest.fixture(scope="module")
def policy() -> ResidencyPolicy:
    return load_default_policy()


@pytest.fixture(scope="module")
def objects(policy: ResidencyPolicy) -> list[dict[str, Any]]:
    return admission_policies(policy, MANAGED_BY)


def test_residency_labels_are_those_every_in_country_site_shares(policy: ResidencyPolicy) -> None:
    assert residency_node_labels(policy) == {RESIDENCY_KEY: "KR"}


def test_sites_without_a_shared_label_cannot_be_pinned() -> None:
    text = DEFAULT_TEXT.replace(
        "      region: local\n      nodeLabels:\n        node-restriction.kubernetes.io/residency: KR\n",
        "      region: local\n",
    )
    policy = parse_policy(text)
    with pytest.raises(ValueError, match=r"the sites in KR \(kr-seoul-1, kr-daejeon-1, local\) share no node label"):
        residency_node_labels(policy)
    with pytest.raises(ValueError, match="share no node label"):
        admission_policies(policy)


def test_a_label_a_site_abroad_carries_too_does_not_pin_pods_in_country() -> None:
    site_abroad = """    - name: us-east-1
      kind: cloud-region
      country: US
      region: us-east-1
      nodeLabels:
        node-restriction.kubernetes.io/residency: KR
      zones:
        - name: us-east-1a
"""
    policy = parse_policy(DEFAULT_TEXT.replace("\n  dataClasses:\n", f"{site_abroad}\n  dataClasses:\n"))
    with pytest.raises(ValueError, match="that the sites abroad lack"):
        residency_node_labels(policy)


def test_compliant_pod_is_admitted_by_every_pod_rule(objects: list[dict[str, Any]]) -> None:
    applied = [vap["metadata"]["name"] for vap in policies_of(objects) if violations(vap, pod()) == []]
    assert applied == [
        "sovereign-kr-default-residency",
        "sovereign-kr-default-host-namespaces",
        "sovereign-kr-default-images",
    ]


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"nodeSelector": None}, id="no-selection"),
        pytest.param({"nodeSelector": {"topology.kubernetes.io/region": "kr-seoul"}}, id="region-only"),
        pytest.param({"nodeSelector": {RESIDENCY_KEY: "US"}}, id="node-selector-abroad"),
        pytest.param({"nodeSelector": None, "affinity": node_affinity([residency_in("KR", "US")])}, id="in-kr-or-us"),
        pytest.param({"nodeSelector": None, "affinity": node_affinity([residency_in("US")])}, id="in-us"),
        pytest.param({"nodeSelector": None, "affinity": node_affinity([residency_in()])}, id="in-nothing"),
        pytest.param(
            {
                "nodeSelector": None,
                "affinity": node_affinity([{"key": RESIDENCY_KEY, "operator": "NotIn", "values": ["US"]}]),
            },
            id="not-in-us",
        ),
        pytest.param(
            {"nodeSelector": None, "affinity": node_affinity([{"key": RESIDENCY_KEY, "operator": "Exists"}])},
            id="exists",
        ),
        pytest.param(
            {
                "nodeSelector": None,
                "affinity": node_affinity(
                    [residency_in("KR")],
                    [{"key": "topology.kubernetes.io/region", "operator": "In", "values": ["us-east-1"]}],
                ),
            },
            id="second-term-abroad",
        ),
        pytest.param({"nodeSelector": None, "affinity": node_affinity()}, id="no-terms"),
        pytest.param(
            {
                "nodeSelector": None,
                "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
            },
            id="preferred-only",
        ),
    ],
)
def test_pod_not_pinned_to_in_country_nodes_is_rejected(objects: list[dict[str, Any]], changes: dict[str, Any]) -> None:
    assert review(objects, pod(**changes)) == [
        "spec does not select in-country (KR) nodes: set nodeSelector {node-restriction.kubernetes.io/residency: KR}, "
        "or require these labels with operator In and no other value in every required nodeAffinity term"
    ]


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"nodeSelector": {RESIDENCY_KEY: "KR"}}, id="node-selector"),
        pytest.param({"nodeSelector": None, "affinity": node_affinity([residency_in("KR")])}, id="affinity"),
        pytest.param(
            {
                "nodeSelector": None,
                "affinity": node_affinity(
                    [
                        residency_in("KR"),
                        {"key": "topology.kubernetes.io/region", "operator": "In", "values": ["kr-seoul"]},
                    ],
                    [{"key": "gpu", "operator": "Exists"}, residency_in("KR", "KR")],
                ),
            },
            id="every-term-pinned",
        ),
        pytest.param(
            {"nodeSelector": {RESIDENCY_KEY: "KR"}, "affinity": node_affinity([residency_in("KR", "US")])},
            id="node-selector-narrows-affinity",
        ),
    ],
)
def test_pod_pinned_to_in_country_nodes_is_admitted(objects: list[dict[str, Any]], changes: dict[str, Any]) -> None:
    assert review(objects, pod(**changes)) == []


@pytest.mark.parametrize(
    ("field", "shared"), [("hostNetwork", "network"), ("hostPID", "process ID"), ("hostIPC", "IPC")]
)
def test_host_namespaces_are_rejected(objects: list[dict[str, Any]], field: str, shared: str) -> None:
    assert review(objects, pod(**{field: True})) == [
        f"spec.{field} is true: pods in governed namespaces must not share the {shared} namespace of the node; "
        f"remove {field} or set it to false"
    ]
    assert review(objects, pod(**{field: False})) == []


def test_every_host_namespace_is_named(objects: list[dict[str, Any]]) -> None:
    messages = review(objects, workload("Deployment", hostNetwork=True, hostPID=True, hostIPC=True))
    assert [message.split(" is true")[0] for message in messages] == [
        "spec.template.spec.hostNetwork",
        "spec.template.spec.hostPID",
        "spec.template.spec.hostIPC",
    ]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"type": "LoadBalancer"}, "spec.type is LoadBalancer, which exposes the service outside the cluster"),
        ({"type": "NodePort"}, "spec.type is NodePort, which exposes the service outside the cluster"),
        ({"externalIPs": ["203.0.113.10"]}, "spec.externalIPs routes 203.0.113.10 into the service from outside"),
        ({"type": "ClusterIP", "externalIPs": ["203.0.113.10"]}, "spec.externalIPs routes 203.0.113.10"),
    ],
)
def test_services_reachable_from_outside_are_rejected(
    objects: list[dict[str, Any]], spec: dict[str, Any], expected: str
) -> None:
    messages = review(objects, service(**spec))
    assert len(messages) == 1
    assert messages[0].startswith(expected)
    assert messages[0].endswith(
        "use type ClusterIP and reach the service from inside the cluster or through an Ingress"
    )


@pytest.mark.parametrize(
    "spec",
    [{}, {"type": "ClusterIP"}, {"type": "ClusterIP", "clusterIP": "None"}, {"type": "ClusterIP", "externalIPs": []}],
)
def test_cluster_internal_services_are_admitted(objects: list[dict[str, Any]], spec: dict[str, Any]) -> None:
    assert review(objects, service(**spec)) == []


@pytest.mark.parametrize(
    "image",
    [
        "nginx",
        "nginx:1.27",
        "library/nginx",
        "docker.io/library/nginx",
        "ghcr.io/x/y",
        "registry.sovereign.kr.evil.com/x",
        "evil.com/registry.sovereign.kr/x",
        "registry.sovereign.kr",
        "localhost:5000/x",
        f"quay.io/x/y@{DIGEST}",
    ],
)
def test_images_from_other_registries_are_rejected(objects: list[dict[str, Any]], image: str) -> None:
    assert review(objects, pod(containers=[{"name": "app", "image": image}])) == [
        f"image {image} is not from an allowed registry: "
        "mirror it to one (registry.sovereign.kr) and reference it there"
    ]


@pytest.mark.parametrize(
    "image",
    [
        STACK_IMAGE,
        f"registry.sovereign.kr/sovereign/stack@{DIGEST}",
        f"registry.sovereign.kr/sovereign/stack:1.0@{DIGEST}",
        "registry.sovereign.kr:443/sovereign/stack:1.0",
        "Registry.Sovereign.KR/sovereign/stack:1.0",
    ],
)
def test_images_from_the_policy_registries_are_admitted(objects: list[dict[str, Any]], image: str) -> None:
    assert review(objects, pod(containers=[{"name": "app", "image": image}])) == []


def test_init_and_ephemeral_containers_are_checked_too(objects: list[dict[str, Any]]) -> None:
    init = pod(initContainers=[{"name": "fetch", "image": "ghcr.io/x/fetch:1"}])
    assert review(objects, init)[0].startswith("image ghcr.io/x/fetch:1 is not from an allowed registry")

    debugged = pod(ephemeralContainers=[{"name": "debug", "image": "busybox"}])
    messages = review(objects, debugged, operation="UPDATE", subresource="ephemeralcontainers")
    assert messages[0].startswith("image busybox is not from an allowed registry")


def test_every_foreign_image_is_counted(objects: list[dict[str, Any]]) -> None:
    containers = [{"name": "a", "image": "nginx"}, {"name": "b", "image": STACK_IMAGE}, {"name": "c", "image": "redis"}]
    [message] = review(objects, pod(containers=containers, initContainers=[{"name": "d", "image": "ghcr.io/x/y"}]))
    assert message.startswith("image nginx is not from an allowed registry")
    assert message.endswith("(and 2 more image(s) like it)")


@pytest.mark.parametrize("kind", list(WORKLOAD_API_VERSIONS))
def test_workload_templates_are_checked_at_apply(objects: list[dict[str, Any]], kind: str) -> None:
    assert review(objects, workload(kind)) == []
    path = "spec.jobTemplate.spec.template.spec" if kind == "CronJob" else "spec.template.spec"
    messages = review(
        objects, workload(kind, nodeSelector=None, hostPID=True, containers=[{"name": "a", "image": "nginx"}])
    )
    assert [message.split(":")[0] for message in messages] == [
        f"{path} does not select in-country (KR) nodes",
        f"{path}.hostPID is true",
        "image nginx is not from an allowed registry",
    ]


def test_updates_are_checked_and_deletes_are_not(objects: list[dict[str, Any]]) -> None:
    bad = pod(hostNetwork=True)
    assert review(objects, bad, operation="UPDATE") == review(objects, bad)
    assert all(violations(vap, bad, operation="DELETE") is None for vap in policies_of(objects))
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {}}
    assert all(violations(vap, config_map) is None for vap in policies_of(objects))


def test_adding_registries_to_the_policy_document_admits_their_images(objects: list[dict[str, Any]]) -> None:
    images = ["harbor.mirror.kr/team/app:2", "a.b.mirror.kr:5000/team/app", "registry.example.kr/app:1"]
    for image in images:
        assert review(objects, pod(containers=[{"name": "app", "image": image}])) != []

    extended = admission_policies(with_registries("registry.sovereign.kr", "*.mirror.kr", "registry.example.kr"))
    for image in [*images, STACK_IMAGE]:
        assert review(extended, pod(containers=[{"name": "app", "image": image}])) == []
    # `*.mirror.kr` means subdomains, as in the policy's own evaluation, not the bare suffix.
    assert review(extended, pod(containers=[{"name": "app", "image": "mirror.kr/x"}])) != []
    assert review(extended, pod(containers=[{"name": "app", "image": "evilmirror.kr/x"}])) != []
    [message] = review(extended, pod(containers=[{"name": "app", "image": "nginx"}]))
    assert message.endswith("(registry.sovereign.kr, *.mirror.kr, registry.example.kr) and reference it there")


def test_changing_the_residency_label_in_the_policy_document_changes_the_rule(objects: list[dict[str, Any]]) -> None:
    relabelled = admission_policies(parse_policy(DEFAULT_TEXT.replace(RESIDENCY_KEY, "example.kr/residency")))
    assert review(objects, pod()) == []
    assert review(relabelled, pod())[0].startswith("spec does not select in-country (KR) nodes")
    assert review(relabelled, pod(nodeSelector={"example.kr/residency": "KR"})) == []


@pytest.mark.parametrize(
    "registries",
    [
        ("registry.sovereign.kr",),
        ("registry.sovereign.kr", "*.mirror.kr", "localhost"),
        ("docker.io",),
        ("*.io", "myregistry"),
    ],
)
def test_image_rule_agrees_with_the_policy_evaluator(registries: tuple[str, ...]) -> None:
    policy = with_registries(*registries)
    evaluator = PolicyEvaluator(policy)
    objects = admission_policies(policy)
    images = [
        "nginx",
        "library/nginx",
        "docker.io/library/nginx",
        "ghcr.io/x/y",
        "localhost/x",
        "localhost:5000/x",
        "LOCALHOST/x",
        "myregistry/x",
        "myregistry:5000/x",
        "registry.sovereign.kr",
        "registry.sovereign.kr/",
        STACK_IMAGE,
        "REGISTRY.SOVEREIGN.KR:443/x",
        "registry.sovereign.kr.evil.com/x",
        "harbor.mirror.kr/x",
        "mirror.kr/x",
        "a.b.mirror.kr:5000/x@" + DIGEST,
    ]
    for image in images:
        admitted = review(objects, pod(containers=[{"name": "app", "image": image}])) == []
        assert admitted == evaluator.image_allowed(image).allowed, image


@pytest.mark.parametrize("version", ["1.30.0", kubernetes_validate.latest_version()])
def test_every_object_is_valid_kubernetes(objects: list[dict[str, Any]], version: str) -> None:
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_every_binding_enforces_an_existing_policy_in_governed_namespaces(objects: list[dict[str, Any]]) -> None:
    policy_names = [vap["metadata"]["name"] for vap in policies_of(objects)]
    assert policy_names == [
        "sovereign-kr-default-residency",
        "sovereign-kr-default-host-namespaces",
        "sovereign-kr-default-services",
        "sovereign-kr-default-images",
    ]
    bindings = bindings_of(objects)
    assert [binding["spec"]["policyName"] for binding in bindings] == policy_names
    for binding in bindings:
        assert binding["spec"]["validationActions"] == ["Deny"]
        assert binding["spec"]["matchResources"] == {"namespaceSelector": {"matchLabels": {GOVERNED_LABEL: "true"}}}


def test_objects_are_cluster_scoped_and_labelled(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        assert "namespace" not in obj["metadata"]
        assert obj["metadata"]["labels"] == {
            "app.kubernetes.io/part-of": "sovereign-stack",
            "app.kubernetes.io/component": "admission",
            **MANAGED_BY,
        }


def test_every_validation_fails_closed_and_explains_itself(objects: list[dict[str, Any]]) -> None:
    for vap in policies_of(objects):
        assert vap["spec"]["failurePolicy"] == "Fail"
        for validation in vap["spec"]["validations"]:
            assert validation["reason"] == "Forbidden"
            assert ": " in validation["message"]
            assert validation["messageExpression"]


def test_cel_uses_only_standard_functions(objects: list[dict[str, Any]]) -> None:
    expressions = [
        item[key]
        for vap in policies_of(objects)
        for item in [*vap["spec"].get("variables", []), *vap["spec"]["validations"]]
        for key in ("expression", "messageExpression")
        if key in item
    ]
    for expression in expressions:
        functions = set(cel.compile(expression).functions())
        operators = {name for name in functions if not name.isidentifier()}
        assert functions - operators <= STANDARD_FUNCTIONS, expression


def test_objects_dump_to_plain_yaml(objects: list[dict[str, Any]]) -> None:
    text = yaml.safe_dump_all(objects, sort_keys=False)
    assert "&id" not in text
    assert list(yaml.safe_load_all(text)) == objects
