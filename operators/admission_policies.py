"""ValidatingAdmissionPolicies (CEL) that make the API server enforce the residency policy document.

In namespaces labelled `sovereign-stack.io/governed=true` the API server refuses, at `kubectl apply`:
pods and pod templates that do not select in-country nodes, that share the node's network, PID or IPC
namespace, or that run images from registries the policy does not list; and Services reachable from
outside the cluster. Node labels and registries are literals taken from the policy document, so
regenerating after a policy change is all it takes. The CEL uses only standard functions (`has`, the
list macros, `size`, `matches`, `string`), which the API server and standard CEL evaluators both accept.
"""

from __future__ import annotations

import json
from typing import Any

from policies.model import ResidencyPolicy

GOVERNED_LABEL = "sovereign-stack.io/governed"
_API_VERSION = "admissionregistration.k8s.io/v1"
_DEFAULT_REGISTRY = "docker.io"
_OPERATIONS = ["CREATE", "UPDATE"]
# Where a matched kind keeps its pod spec; every other matched kind is a workload with `spec.template`.
_POD_SPEC_PATHS = {"Pod": "spec", "CronJob": "spec.jobTemplate.spec.template.spec"}
_TEMPLATE_POD_SPEC_PATH = "spec.template.spec"
_CONTAINER_FIELDS = ("containers", "initContainers", "ephemeralContainers")
_HOST_NAMESPACES = {"hostNetwork": "network", "hostPID": "process ID", "hostIPC": "IPC"}
_EXPOSING_SERVICE_TYPES = ["LoadBalancer", "NodePort"]
# Docker's rule, as in `policies.evaluation.image_registry`: the first path component names the
# registry when it has a dot or a port, or is `localhost`; any other image is on docker.io.
_NAMES_REGISTRY_PATTERN = "^([^/]*[.:][^/]*|localhost)/."


def residency_node_labels(policy: ResidencyPolicy) -> dict[str, str]:
    """The node labels every in-country site shares, less those a site abroad also carries."""
    code = policy.spec.jurisdiction.code
    in_country = [site for site in policy.spec.sites if site.country == code]
    abroad = [site for site in policy.spec.sites if site.country != code]
    shared = set(in_country[0].node_labels.items()).intersection(*(site.node_labels.items() for site in in_country))
    selective = shared.difference(*(site.node_labels.items() for site in abroad))
    if not selective:
        names = ", ".join(site.name for site in in_country)
        raise ValueError(
            f"the sites in {code} ({names}) share no node label that the sites abroad lack, so pods cannot be "
            f"pinned to in-country nodes: give each of them `nodeLabels` such as "
            f"`node-restriction.kubernetes.io/residency: {code}`"
        )
    return dict(sorted(selective))


def admission_policies(policy: ResidencyPolicy, labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The ValidatingAdmissionPolicy and ValidatingAdmissionPolicyBinding objects, a pair for each rule.

    `labels` (such as `app.kubernetes.io/managed-by`) are added to every object's `metadata.labels`.
    """
    prefix = f"sovereign-{policy.metadata.name}"
    rules = [
        (f"{prefix}-residency", _pod_resource_rules(), _residency_variables(policy), _residency_validations(policy)),
        (f"{prefix}-host-namespaces", _pod_resource_rules(), _pod_spec_variables(), _host_namespace_validations()),
        (f"{prefix}-services", _service_resource_rules(), [], _service_validations()),
        (f"{prefix}-images", _pod_resource_rules(ephemeral=True), _image_variables(policy), _image_validations(policy)),
    ]
    objects = []
    for name, resource_rules, variables, validations in rules:
        objects.append(_validating_admission_policy(name, resource_rules, variables, validations, labels))
        objects.append(_binding(name, labels))
    return objects


def _metadata(name: str, labels: dict[str, str] | None) -> dict[str, Any]:
    return {
        "name": name,
        "labels": {"app.kubernetes.io/part-of": "sovereign-stack", "app.kubernetes.io/component": "admission"}
        | (labels or {}),
    }


def _validating_admission_policy(
    name: str,
    resource_rules: list[dict[str, Any]],
    variables: list[dict[str, str]],
    validations: list[dict[str, str]],
    labels: dict[str, str] | None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"failurePolicy": "Fail", "matchConstraints": {"resourceRules": resource_rules}}
    if variables:
        spec["variables"] = variables
    spec["validations"] = validations
    return {
        "apiVersion": _API_VERSION,
        "kind": "ValidatingAdmissionPolicy",
        "metadata": _metadata(name, labels),
        "spec": spec,
    }


def _binding(policy_name: str, labels: dict[str, str] | None) -> dict[str, Any]:
    return {
        "apiVersion": _API_VERSION,
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": _metadata(policy_name, labels),
        "spec": {
            "policyName": policy_name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {GOVERNED_LABEL: "true"}}},
        },
    }


def _resource_rule(group: str, resources: list[str]) -> dict[str, Any]:
    # A fresh list each time: yaml.safe_dump writes a shared object as an anchor and aliases.
    return {"apiGroups": [group], "apiVersions": ["v1"], "operations": list(_OPERATIONS), "resources": resources}


def _pod_resource_rules(ephemeral: bool = False) -> list[dict[str, Any]]:
    """Pods and every workload with a pod template; `ephemeral` adds the subresource `kubectl debug` writes."""
    pods = ["pods", "pods/ephemeralcontainers"] if ephemeral else ["pods"]
    return [
        _resource_rule("", pods),
        _resource_rule("apps", ["deployments", "statefulsets", "daemonsets", "replicasets"]),
        _resource_rule("batch", ["jobs", "cronjobs"]),
    ]


def _service_resource_rules() -> list[dict[str, Any]]:
    return [_resource_rule("", ["services"])]


def _cel(value: str | list[str] | dict[str, str]) -> str:
    """A CEL literal: JSON strings, lists and maps of strings are valid CEL as they are."""
    return json.dumps(value)


def _by_kind(choices: dict[str, str], otherwise: str) -> str:
    expression = otherwise
    for kind, choice in reversed(choices.items()):
        expression = f"object.kind == {_cel(kind)} ? {choice} : {expression}"
    return expression


def _pod_spec_variables() -> list[dict[str, str]]:
    """`podSpec`, the pod spec of a pod or workload, and `podSpecPath`, where it is, for messages."""
    return [
        {
            "name": "podSpec",
            "expression": _by_kind(
                {kind: f"object.{path}" for kind, path in _POD_SPEC_PATHS.items()}, f"object.{_TEMPLATE_POD_SPEC_PATH}"
            ),
        },
        {
            "name": "podSpecPath",
            "expression": _by_kind(
                {kind: _cel(path) for kind, path in _POD_SPEC_PATHS.items()}, _cel(_TEMPLATE_POD_SPEC_PATH)
            ),
        },
    ]


def _residency_variables(policy: ResidencyPolicy) -> list[dict[str, str]]:
    required_affinity = "variables.podSpec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
    return [
        *_pod_spec_variables(),
        {"name": "residencyLabels", "expression": _cel(residency_node_labels(policy))},
        {
            "name": "selectsByNodeSelector",
            "expression": "has(variables.podSpec.nodeSelector) && variables.residencyLabels.all(key, "
            "key in variables.podSpec.nodeSelector && "
            "variables.podSpec.nodeSelector[key] == variables.residencyLabels[key])",
        },
        {
            "name": "requiredNodeTerms",
            "expression": "has(variables.podSpec.affinity) && has(variables.podSpec.affinity.nodeAffinity) && "
            f"has({required_affinity}) ? {required_affinity}.nodeSelectorTerms : []",
        },
        {
            # The scheduler ORs the terms, so each must pin every residency label to its value alone. DaemonSet
            # pods get their affinity replaced by a node-name term, so DaemonSets must use nodeSelector.
            "name": "selectsByNodeAffinity",
            "expression": "size(variables.requiredNodeTerms) > 0 && variables.requiredNodeTerms.all(term, "
            "has(term.matchExpressions) && variables.residencyLabels.all(key, "
            'term.matchExpressions.exists(requirement, requirement.key == key && requirement.operator == "In" && '
            "has(requirement.values) && size(requirement.values) > 0 && "
            "requirement.values.all(value, value == variables.residencyLabels[key]))))",
        },
    ]


def _validation(expression: str, message: str, message_expression: str) -> dict[str, str]:
    return {
        "expression": expression,
        "message": message,
        "messageExpression": message_expression,
        "reason": "Forbidden",
    }


def _residency_validations(policy: ResidencyPolicy) -> list[dict[str, str]]:
    code = policy.spec.jurisdiction.code
    required = ", ".join(f"{key}: {value}" for key, value in residency_node_labels(policy).items())
    remedy = (
        f"set nodeSelector {{{required}}}, or require these labels with operator In and no other value "
        "in every required nodeAffinity term"
    )
    return [
        _validation(
            "variables.selectsByNodeSelector || variables.selectsByNodeAffinity",
            f"pods in governed namespaces must run on in-country ({code}) nodes: {remedy}",
            f"variables.podSpecPath + {_cel(f' does not select in-country ({code}) nodes: {remedy}')}",
        )
    ]


def _host_namespace_validations() -> list[dict[str, str]]:
    validations = []
    for field, shared in _HOST_NAMESPACES.items():
        problem = f"{field} is true: pods in governed namespaces must not share the {shared} namespace of the node"
        remedy = f"remove {field} or set it to false"
        validations.append(
            _validation(
                f"!has(variables.podSpec.{field}) || !variables.podSpec.{field}",
                f"{problem}; {remedy}",
                f"variables.podSpecPath + {_cel(f'.{problem}; {remedy}')}",
            )
        )
    return validations


def _service_validations() -> list[dict[str, str]]:
    remedy = "use type ClusterIP and reach the service from inside the cluster or through an Ingress"
    exposed = _cel(f", which exposes the service outside the cluster: {remedy}")
    routed = _cel(f" into the service from outside the cluster: remove spec.externalIPs and {remedy}")
    return [
        _validation(
            f"!has(object.spec.type) || !(object.spec.type in {_cel(_EXPOSING_SERVICE_TYPES)})",
            f"services in governed namespaces must not be of type LoadBalancer or NodePort: {remedy}",
            f'"spec.type is " + object.spec.type + {exposed}',
        ),
        _validation(
            "!has(object.spec.externalIPs) || size(object.spec.externalIPs) == 0",
            f"services in governed namespaces must not have spec.externalIPs: remove them and {remedy}",
            f'"spec.externalIPs routes " + object.spec.externalIPs[0] + {routed}',
        ),
    ]


def _allowed_registry_pattern(policy: ResidencyPolicy) -> str:
    """Matches an image reference whose registry host is one of the policy's, in any case, with any port."""
    hosts = [
        f"[^/:]*{pattern[1:]}" if pattern.startswith("*.") else pattern for pattern in policy.spec.image_registries
    ]
    return "(?i)^(" + "|".join(host.replace(".", r"\.") for host in hosts) + ")[:/]"


def _image_variables(policy: ResidencyPolicy) -> list[dict[str, str]]:
    images = " + ".join(
        f"(has(variables.podSpec.{field}) ? variables.podSpec.{field}.filter(container, has(container.image))"
        ".map(container, container.image) : [])"
        for field in _CONTAINER_FIELDS
    )
    # An image that names no registry is read as docker.io/<image>, so one pattern decides every image.
    qualified = f"(image.matches({_cel(_NAMES_REGISTRY_PATTERN)}) ? image : {_cel(_DEFAULT_REGISTRY + '/')} + image)"
    allowed = _cel(_allowed_registry_pattern(policy))
    return [
        *_pod_spec_variables(),
        {"name": "images", "expression": images},
        {"name": "foreignImages", "expression": f"variables.images.filter(image, !{qualified}.matches({allowed}))"},
    ]


def _image_validations(policy: ResidencyPolicy) -> list[dict[str, str]]:
    allowed = ", ".join(policy.spec.image_registries)
    problem = _cel(f" is not from an allowed registry: mirror it to one ({allowed}) and reference it there")
    more = '" (and " + string(size(variables.foreignImages) - 1) + " more image(s) like it)"'
    return [
        _validation(
            "size(variables.foreignImages) == 0",
            f"every container image in governed namespaces must come from an allowed registry ({allowed}): "
            "mirror the images there and reference them by that registry",
            f'"image " + variables.foreignImages[0] + {problem} + (size(variables.foreignImages) > 1 ? {more} : "")',
        )
    ]
