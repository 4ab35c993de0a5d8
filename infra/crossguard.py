"""The CrossGuard policy pack, generated from the residency policy document.

`pulumi preview --policy-pack infra/policy-pack` runs these policies over every resource the stack would
create, before any exists: OpenStack machines and volumes only in in-country regions and zones, encrypted
disks, no public IPs, images and charts only from the policy's registries, Helm values that open no egress
beyond the allowlist, MLflow artifacts only in an in-country store, and every namespace labelled with the
jurisdiction. Every allowed region, zone, registry, network and store is read from the `ResidencyPolicy`, so a
new site or registry in the document reaches the pack with nothing else to edit.

Each rule is a pure function returning violation messages; `policy_pack_policies` wraps them for pulumi_policy
and `evaluate` runs them the way the engine does, for tests and mocked runs.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any
from urllib.parse import urlsplit

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    PolicyConfigSchema,
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UnknownValueError, unknown_checking_proxy

from operators.chart_values import ChartValues
from policies import PolicyEvaluator, ResidencyPolicy, Site
from policies.evaluation import image_registry
from policies.registry import artifact_destination_problems, s3_uri

PACK_NAME = "sovereign-residency"
RESIDENCY_LABEL = "sovereign-stack.io/residency"
SITES_ANNOTATION = "sovereign-stack.io/sites"

REGION_IN_COUNTRY = "sovereign-region-in-country"
NO_PUBLIC_IP = "sovereign-no-public-ip"
VOLUMES_ENCRYPTED = "sovereign-volumes-encrypted"
IMAGES_IN_COUNTRY = "sovereign-images-in-country"
RELEASE_EGRESS = "sovereign-release-egress"
IN_COUNTRY_SITE = "sovereign-in-country-site"
ARTIFACT_STORE_IN_COUNTRY = "sovereign-artifact-store-in-country"
NAMESPACES_LABELLED = "sovereign-namespaces-labelled"

ENCRYPTED_VOLUME_TYPES = "encryptedVolumeTypes"
DEFAULT_ENCRYPTED_VOLUME_TYPES = ("encrypted",)

INSTANCE = "openstack:compute/instance:Instance"
VOLUME = "openstack:blockstorage/volume:Volume"
OPENSTACK_PROVIDER = "pulumi:providers:openstack"
FLOATING_IPS = frozenset(
    {
        "openstack:networking/floatingIp:FloatingIp",
        "openstack:networking/floatingIpAssociate:FloatingIpAssociate",
        "openstack:compute/floatingIpAssociate:FloatingIpAssociate",
    }
)
NAMESPACE = "kubernetes:core/v1:Namespace"
SERVICE = "kubernetes:core/v1:Service"
RELEASE = "kubernetes:helm.sh/v3:Release"
PROJECT_CHART = "sovereign-stack"

# Where each workload kind keeps its pod spec.
_POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController", "Job"),
        ("spec", "template", "spec"),
    ),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
    "Pod": ("spec",),
}
_CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
_PUBLIC_SERVICE_TYPES = frozenset({"LoadBalancer", "NodePort"})
_REGISTRY_KEYS = ("imageRegistry", "registry")
# Helm applies the chart's own defaults to whatever the release leaves out; for our chart we know them.
_PROJECT_CHART_DEFAULTS: dict[str, Any] = ChartValues().model_dump(by_alias=True, mode="json")

KeyPath = tuple[str | int, ...]
Network = IPv4Network | IPv6Network
# Stands for a value known only once `pulumi up` has created what it depends on.
_UNKNOWN = object()


@dataclass(frozen=True)
class Violation:
    """One violation, as `pulumi preview` reports it."""

    policy: str
    message: str
    urn: str | None


# --- shared helpers ------------------------------------------------------------------------------


def _message(rule: str, resource_type: str, name: str, detail: str) -> str:
    return f'{resource_type} "{name}": {detail} [{rule}]'


def _text(value: Any) -> str | None:
    """A non-empty string, or None for anything else (missing, empty, not a string)."""
    return value if isinstance(value, str) and value else None


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _indexed(node: Any) -> list[tuple[int, Any]]:
    """The items of a list prop with their indexes; nothing for a missing prop or one that is not a list."""
    return list(enumerate(node)) if _is_list(node) else []


def _known(node: Any) -> Any:
    """A plain copy of a prop, each value unknown during preview replaced by `_UNKNOWN`, which no check matches."""
    if isinstance(node, Mapping):
        return {str(key): _known(_read(node, key)) for key in list(node)}
    if _is_list(node):
        return [_known(_read(node, index)) for index in range(len(node))]
    return node


def _read(node: Mapping[str, Any] | Sequence[Any], key: Any) -> Any:
    try:
        return node[key]
    except UnknownValueError:
        return _UNKNOWN


def _walk(node: Any, path: KeyPath = ()) -> Iterator[tuple[KeyPath, Any]]:
    """Every value under a plain copy of a prop, with its path, the node itself first."""
    yield path, node
    entries = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in entries:
        yield from _walk(child, (*path, key))


def _dotted(path: KeyPath) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path).lstrip(".")


def _at(node: Any, *path: str) -> Any:
    """The value at `path` under `node`: None where a step is missing or not a mapping, `_UNKNOWN` under one."""
    for key in path:
        if node is _UNKNOWN:
            return _UNKNOWN
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def _given(value: Any) -> bool:
    """Does the release set this value (to a non-empty string, or to one known only on `pulumi up`)?"""
    return value is _UNKNOWN or _text(value) is not None


def _network(text: str) -> Network | None:
    try:
        return ip_network(text, strict=False)
    except ValueError:
        return None


def _within(network: Network, networks: Collection[Network]) -> bool:
    return any(network.version == outer.version and network.subnet_of(outer) for outer in networks)  # type: ignore[arg-type]


def _in_country_networks(policy: ResidencyPolicy) -> list[Network]:
    return [network for site in PolicyEvaluator(policy).in_country_sites() for network in site.networks()]


def _is_openstack(resource_type: str) -> bool:
    return resource_type.startswith("openstack:") or resource_type == OPENSTACK_PROVIDER


def _regions(sites: Collection[Site]) -> str:
    return ", ".join(sorted({site.region for site in sites}))


def _registry_allowed(evaluator: PolicyEvaluator, registry: str) -> bool:
    return evaluator.image_allowed(f"{registry.rstrip('/')}/image").allowed


def _chart_name(props: Mapping[str, Any]) -> str:
    return (_text(props.get("chart")) or "").rstrip("/").rsplit("/", 1)[-1]


def _release_values(props: Mapping[str, Any]) -> dict[str, Any]:
    """The values a release installs with; for the project's chart, laid over the chart's defaults as Helm does."""
    values = _known(props.get("values"))
    values = values if isinstance(values, dict) else {}
    return _overlay(_PROJECT_CHART_DEFAULTS, values) if _chart_name(props) == PROJECT_CHART else values


def _overlay(defaults: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    merged = dict(defaults)
    for key, value in values.items():
        base = merged.get(key)
        merged[key] = _overlay(base, value) if isinstance(base, dict) and isinstance(value, dict) else value
    return merged


# --- resource policies ---------------------------------------------------------------------------


def check_region(
    policy: ResidencyPolicy,
    resource_type: str,
    name: str,
    props: Mapping[str, Any],
    provider_props: Mapping[str, Any] | None = None,
) -> list[str]:
    """OpenStack resources run in the region and availability zone of an in-country site."""
    if not _is_openstack(resource_type):
        return []
    sites = PolicyEvaluator(policy).in_country_sites()
    problems = []
    region = _text(props.get("region"))
    source = "region"
    if region is None and provider_props is not None:
        region, source = _text(provider_props.get("region")), "its provider's region"
    if region is None:
        if resource_type in (INSTANCE, VOLUME):
            problems.append(f"names no region, nor does its provider: set `region` to one of {_regions(sites)}")
    elif region not in {site.region for site in sites}:
        problems.append(f"{source} {region} is not the region of an in-country site; allowed: {_regions(sites)}")
    zone = _text(props.get("availabilityZone"))
    if zone is not None:
        zones = {z.name for site in sites if region in (None, site.region) for z in site.zones}
        if zone not in zones:
            where = f" in region {region}" if region else ""
            problems.append(
                f"availability zone {zone} is not a zone of an in-country site{where}; "
                f"allowed: {', '.join(sorted(zones)) or 'none'}"
            )
    return [_message(REGION_IN_COUNTRY, resource_type, name, problem) for problem in problems]


def check_no_public_ip(policy: ResidencyPolicy, resource_type: str, name: str, props: Mapping[str, Any]) -> list[str]:
    """Nothing is reachable from outside the sites' networks: no floating IPs, load balancers or node ports."""
    problems = []
    if resource_type in FLOATING_IPS:
        problems.append("floating IPs expose machines publicly; reach them through the site's private networks")
    elif resource_type == INSTANCE:
        access = _text(props.get("accessIpV4"))
        network = _network(access) if access is not None else None
        if access is not None and (network is None or not _within(network, _in_country_networks(policy))):
            problems.append(f"accessIpV4 {access} is outside the in-country sites' networks")
    elif resource_type == SERVICE:
        service_type = _text(_at(props, "spec", "type"))
        if service_type in _PUBLIC_SERVICE_TYPES:
            problems.append(f"Services of type {service_type} are reachable from outside the cluster; use ClusterIP")
        if _at(props, "spec", "externalIPs"):
            problems.append("externalIPs expose the Service outside the cluster; remove them")
    return [_message(NO_PUBLIC_IP, resource_type, name, problem) for problem in problems]


def check_volumes_encrypted(
    resource_type: str, name: str, props: Mapping[str, Any], encrypted_types: Collection[str]
) -> list[str]:
    """Volumes use an encrypted volume type; instances boot from such a volume, never from a local disk."""
    expected = ", ".join(encrypted_types)
    problems = []
    if resource_type == VOLUME:
        volume_type = _text(props.get("volumeType"))
        if volume_type not in encrypted_types:
            problems.append(f"volume type {volume_type or '(default)'} is not an encrypted type ({expected})")
    elif resource_type == INSTANCE:
        devices = _indexed(props.get("blockDevices"))
        if not any(_at(device, "bootIndex") == 0 for _, device in devices):
            problems.append("boots from an ephemeral local disk; give a boot volume (bootIndex 0) of an encrypted type")
        for index, device in devices:
            source = _text(_at(device, "sourceType"))
            # Nova puts a device on the hypervisor's local disk unless told otherwise (an existing volume aside).
            destination = _text(_at(device, "destinationType")) or ("volume" if source == "volume" else "local")
            volume_type = _text(_at(device, "volumeType"))
            if destination == "local":
                problems.append(f"blockDevices[{index}] is an ephemeral local disk, which is not encrypted")
            elif source in ("image", "blank") and volume_type not in encrypted_types:
                problems.append(
                    f"blockDevices[{index}] volume type {volume_type or '(default)'} is not an encrypted type "
                    f"({expected})"
                )
    return [_message(VOLUMES_ENCRYPTED, resource_type, name, problem) for problem in problems]


def check_images(policy: ResidencyPolicy, resource_type: str, name: str, props: Mapping[str, Any]) -> list[str]:
    """Container images and Helm charts come only from the policy's registries."""
    evaluator = PolicyEvaluator(policy)
    if resource_type == RELEASE:
        problems = _chart_source_problems(evaluator, props) + _values_image_problems(evaluator, props)
    elif resource_type.startswith("kubernetes:"):
        problems = _container_image_problems(evaluator, resource_type, props)
    else:
        problems = []
    return [_message(IMAGES_IN_COUNTRY, resource_type, name, problem) for problem in problems]


def _container_image_problems(evaluator: PolicyEvaluator, resource_type: str, props: Mapping[str, Any]) -> list[str]:
    path = _POD_SPEC_PATHS.get(resource_type.rsplit(":", 1)[-1])
    if path is None:
        return []
    pod_spec = _at(props, *path)
    problems = []
    for list_name in _CONTAINER_LISTS:
        for index, container in _indexed(_at(pod_spec, list_name)):
            image = _text(_at(container, "image"))
            decision = evaluator.image_allowed(image) if image else None
            if decision is not None and not decision.allowed:
                problems.append(f"{_dotted((*path, list_name, index))}: {decision.reason}")
    return problems


def _chart_source_problems(evaluator: PolicyEvaluator, props: Mapping[str, Any]) -> list[str]:
    """The chart repository, and a chart given as a URL (`oci://host/charts/name`), are on an allowed registry."""
    allowed = ", ".join(evaluator.policy.spec.image_registries)
    sources = {"repositoryOpts.repo": _text(_at(props, "repositoryOpts", "repo")), "chart": _text(props.get("chart"))}
    problems = []
    for key, url in sources.items():
        host = urlsplit(url).hostname if url and "://" in url else None
        if host is not None and not _registry_allowed(evaluator, host):
            problems.append(f"{key} {url} is not on an allowed registry ({allowed})")
    return problems


def _values_image_problems(evaluator: PolicyEvaluator, props: Mapping[str, Any]) -> list[str]:
    values = _release_values(props)
    allowed = ", ".join(evaluator.policy.spec.image_registries)
    global_registry = _at(values, "global", "imageRegistry")
    problems = []
    for path, node in _walk(values, ("values",)):
        if not isinstance(node, dict):
            continue
        for key in _REGISTRY_KEYS:
            registry = _text(node.get(key))
            if registry is not None and not _registry_allowed(evaluator, registry):
                problems.append(f"{_dotted((*path, key))}: {registry} is not an allowed registry ({allowed})")
        registry_in_scope = any(_given(registry) for registry in (global_registry, *map(node.get, _REGISTRY_KEYS)))
        for key in ("image", "repository"):
            reference = _text(node.get(key))
            if reference is None or _splits_reference(key, node, reference, registry_in_scope):
                continue
            decision = evaluator.image_allowed(reference)
            if not decision.allowed:
                problems.append(f"{_dotted((*path, key))}: {decision.reason}")
    return problems


def _splits_reference(key: str, node: dict[str, Any], reference: str, registry_in_scope: bool) -> bool:
    """Is this only part of an image reference, whose registry is given by another value (checked on its own)?"""
    if image_registry(reference) != "docker.io" or reference.startswith("docker.io/"):
        return False
    # GPU-operator style `{repository: nvcr.io/nvidia, image: driver}`: the image is a name under the repository.
    return registry_in_scope or (key == "image" and _given(node.get("repository")))


def check_release_egress(policy: ResidencyPolicy, resource_type: str, name: str, props: Mapping[str, Any]) -> list[str]:
    """Helm values open egress only to networks of the policy, and the project's chart keeps its NetworkPolicies."""
    if resource_type != RELEASE:
        return []
    values = _release_values(props)
    problems = []
    if _chart_name(props) == PROJECT_CHART and _at(values, "networkPolicies", "enabled") is False:
        problems.append("values.networkPolicies.enabled is false: egress would not be limited to the allowlist")
    allowed = [
        *(cidr for rule in policy.spec.egress.allow for cidr in rule.cidrs),
        *(network for site in policy.spec.sites for network in site.networks()),
    ]
    for path, value in _walk(values, ("values",)):
        # Some charts take several networks in one string: `10.0.0.0/8,192.168.0.0/16`.
        texts = value.replace(",", " ").split() if isinstance(value, str) and _opens_egress(path) else []
        for text in texts:
            network = _network(text)
            if network is None:
                continue
            if network.prefixlen == 0:
                problems.append(f"{_dotted(path)}: {text} opens egress to every address")
            elif not _within(network, allowed):
                problems.append(f"{_dotted(path)}: {text} is outside the policy's egress rules and site networks")
    return [_message(RELEASE_EGRESS, resource_type, name, problem) for problem in problems]


def _opens_egress(path: KeyPath) -> bool:
    keys = [part.lower() for part in path if isinstance(part, str)]
    # An `except` list narrows an ipBlock: it never opens anything.
    return "except" not in keys and any("egress" in key or "cidr" in key for key in keys)


# --- stack policies ------------------------------------------------------------------------------


def check_in_country_site(policy: ResidencyPolicy, resources: Sequence[PolicyResource]) -> list[Violation]:
    """The stack runs on at least one in-country site, and on no site abroad."""
    evaluator = PolicyEvaluator(policy)
    violations = []
    in_country_found = undetermined = False
    for resource in resources:
        try:
            site_names = _sites_named(policy.spec.sites, resource)
        except UnknownValueError:
            undetermined = True
            continue
        for site_name in site_names:
            decision = evaluator.site_in_country(site_name)
            in_country_found = in_country_found or decision.allowed
            if not decision.allowed:
                detail = f"{decision.reason} ({decision.rule})"
                violations.append(_stack_violation(IN_COUNTRY_SITE, resource, detail))
    # A site named only by a value unknown during preview may be the in-country one: `pulumi up` decides.
    if not in_country_found and not undetermined:
        in_country = ", ".join(site.name for site in evaluator.in_country_sites())
        message = (
            f"stack: names no in-country site, by OpenStack region or zone or by a Namespace's "
            f"`{SITES_ANNOTATION}` annotation; in-country sites: {in_country} [{IN_COUNTRY_SITE}]"
        )
        violations.append(Violation(IN_COUNTRY_SITE, message, None))
    return violations


def _sites_named(sites: Collection[Site], resource: PolicyResource) -> list[str]:
    """The policy's sites a resource says it runs on: by OpenStack region or zone, or by namespace annotation."""
    props = resource.props
    if _is_openstack(resource.resource_type):
        region, zone = _text(props.get("region")), _text(props.get("availabilityZone"))
        return [
            site.name for site in sites if site.region == region or zone in {candidate.name for candidate in site.zones}
        ]
    if resource.resource_type == NAMESPACE:
        annotation = _text(_at(props, "metadata", "annotations", SITES_ANNOTATION)) or ""
        return [name.strip() for name in annotation.split(",") if name.strip()]
    return []


def check_artifact_store(policy: ResidencyPolicy, resources: Sequence[PolicyResource]) -> list[Violation]:
    """The project's release keeps MLflow artifacts in an artifact store of the policy on an in-country site."""
    return _each_resource(ARTIFACT_STORE_IN_COUNTRY, resources, lambda resource: _artifact_problems(policy, resource))


def _artifact_problems(policy: ResidencyPolicy, resource: PolicyResource) -> list[str]:
    if resource.resource_type != RELEASE or _chart_name(resource.props) != PROJECT_CHART:
        return []
    values = _release_values(resource.props)
    enabled = _at(values, "mlflow", "enabled")
    bucket, prefix, endpoint = (_at(values, "mlflow", "artifacts", key) for key in ("bucket", "prefix", "endpoint"))
    if enabled is False or _UNKNOWN in (enabled, bucket, prefix, endpoint):
        return []
    uri = s3_uri(_text(bucket) or "", _text(prefix) or "")
    return artifact_destination_problems(policy, uri, _text(endpoint) or "(unset)", "mlflow.artifacts.endpoint")


def check_namespaces_labelled(policy: ResidencyPolicy, resources: Sequence[PolicyResource]) -> list[Violation]:
    """Every namespace is a Namespace resource labelled with the jurisdiction, which admission keys on."""
    code = policy.spec.jurisdiction.code
    return _each_resource(NAMESPACES_LABELLED, resources, lambda resource: _namespace_problems(code, resource))


def _namespace_problems(code: str, resource: PolicyResource) -> list[str]:
    if resource.resource_type == NAMESPACE:
        label = _at(resource.props, "metadata", "labels", RESIDENCY_LABEL)
        return [] if label == code else [f"label {RESIDENCY_LABEL} is {label or 'missing'}; set it to {code}"]
    if resource.resource_type == RELEASE and resource.props.get("createNamespace") is True:
        return [f"createNamespace: true makes a namespace without {RESIDENCY_LABEL}; create a Namespace resource"]
    return []


def _each_resource(
    rule: str, resources: Sequence[PolicyResource], problems: Callable[[PolicyResource], list[str]]
) -> list[Violation]:
    """The violations of each resource; one with a value unknown during preview waits for `pulumi up`."""
    violations = []
    for resource in resources:
        with suppress(UnknownValueError):
            violations += [_stack_violation(rule, resource, problem) for problem in problems(resource)]
    return violations


def _stack_violation(rule: str, resource: PolicyResource, detail: str) -> Violation:
    return Violation(rule, _message(rule, resource.resource_type, resource.name, detail), resource.urn)


# --- the pack ------------------------------------------------------------------------------------


def policy_pack_policies(policy: ResidencyPolicy) -> list[Policy]:
    """Every policy of the pack, generated from the residency policy, all mandatory."""
    code = policy.spec.jurisdiction.code

    def encrypted_types(args: ResourceValidationArgs) -> list[str]:
        return list(args.get_config().get(ENCRYPTED_VOLUME_TYPES) or DEFAULT_ENCRYPTED_VOLUME_TYPES)

    return [
        _resource_policy(
            REGION_IN_COUNTRY,
            f"OpenStack resources use only regions and availability zones of sites in {code} (spec.sites); "
            "instances and volumes must name their region, or inherit it from their provider.",
            lambda args: check_region(policy, args.resource_type, args.name, args.props, _provider_props(args)),
        ),
        _resource_policy(
            NO_PUBLIC_IP,
            "No floating IPs, LoadBalancer or NodePort Services, or external IPs: "
            "nothing is reachable from outside the in-country sites' networks.",
            lambda args: check_no_public_ip(policy, args.resource_type, args.name, args.props),
        ),
        _resource_policy(
            VOLUMES_ENCRYPTED,
            "Volumes and instance boot disks use an encrypted volume type (config `encryptedVolumeTypes`); "
            "no ephemeral local disks.",
            lambda args: check_volumes_encrypted(args.resource_type, args.name, args.props, encrypted_types(args)),
            PolicyConfigSchema(
                properties={
                    ENCRYPTED_VOLUME_TYPES: {
                        "type": "array",
                        "items": {"type": "string"},
                        "default": list(DEFAULT_ENCRYPTED_VOLUME_TYPES),
                        "description": "Cinder volume types that encrypt their data (LUKS).",
                    }
                }
            ),
        ),
        _resource_policy(
            IMAGES_IN_COUNTRY,
            "Container images, Helm chart repositories and image registries in Helm values come only from "
            "the policy's registries (spec.imageRegistries).",
            lambda args: check_images(policy, args.resource_type, args.name, args.props),
        ),
        _resource_policy(
            RELEASE_EGRESS,
            "Helm values open egress only to networks of the policy (spec.egress.allow, spec.sites), never to "
            "0.0.0.0/0; the sovereign-stack release keeps its NetworkPolicies on.",
            lambda args: check_release_egress(policy, args.resource_type, args.name, args.props),
        ),
        _stack_policy(
            IN_COUNTRY_SITE,
            f"The stack runs on at least one site in {code}, and on no other site (by OpenStack region or zone, "
            f"and the `{SITES_ANNOTATION}` annotation of Namespaces).",
            lambda resources: check_in_country_site(policy, resources),
        ),
        _stack_policy(
            ARTIFACT_STORE_IN_COUNTRY,
            "The sovereign-stack release keeps MLflow artifacts in an artifact store of the policy on an "
            "in-country site, reached at that store's endpoint (spec.registry.artifactStores).",
            lambda resources: check_artifact_store(policy, resources),
        ),
        _stack_policy(
            NAMESPACES_LABELLED,
            f"Every Namespace carries `{RESIDENCY_LABEL}: {code}`; Helm releases do not create namespaces "
            "(`createNamespace`), which would lack it.",
            lambda resources: check_namespaces_labelled(policy, resources),
        ),
    ]


def _provider_props(args: ResourceValidationArgs) -> Mapping[str, Any] | None:
    return args.provider.props if args.provider is not None else None


def _resource_policy(
    name: str,
    description: str,
    check: Callable[[ResourceValidationArgs], list[str]],
    config_schema: PolicyConfigSchema | None = None,
) -> ResourceValidationPolicy:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        for message in check(args):
            report_violation(message, None)

    return ResourceValidationPolicy(
        name=name,
        description=description,
        validate=validate,
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=config_schema,
    )


def _stack_policy(
    name: str, description: str, check: Callable[[Sequence[PolicyResource]], list[Violation]]
) -> StackValidationPolicy:
    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        for violation in check(args.resources):
            report_violation(violation.message, violation.urn)

    return StackValidationPolicy(
        name=name, description=description, validate=validate, enforcement_level=EnforcementLevel.MANDATORY
    )


# --- running the pack without the engine ---------------------------------------------------------


def evaluate(
    policy: ResidencyPolicy,
    resources: Sequence[tuple[str, str, Mapping[str, Any]]],
    config: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Violation]:
    """Run every policy of the pack over (resource_type, name, props) triples, as `pulumi preview --policy-pack`
    does: each resource policy on each resource, then each stack policy once. `config` is keyed by policy name and
    laid over each policy's schema defaults. A policy that meets a value unknown during preview is skipped for
    that resource, as the engine does (it reports an advisory, and checks again on `pulumi up`)."""
    pack = policy_pack_policies(policy)
    stack = [policy_resource(resource_type, name, props) for resource_type, name, props in resources]
    violations: list[Violation] = []
    for resource in stack:
        for pack_policy in pack:
            if isinstance(pack_policy, ResourceValidationPolicy):
                args = ResourceValidationArgs(
                    resource.resource_type,
                    resource.props,
                    resource.urn,
                    resource.name,
                    resource.opts,
                    None,
                    _config_for(pack_policy, config),
                )
                with suppress(UnknownValueError):
                    pack_policy.validate(args, _collector(pack_policy.name, violations, resource.urn))
    for pack_policy in pack:
        if isinstance(pack_policy, StackValidationPolicy):
            args = StackValidationArgs(stack, _config_for(pack_policy, config))
            with suppress(UnknownValueError):
                pack_policy.validate(args, _collector(pack_policy.name, violations))
    return violations


def _collector(policy_name: str, violations: list[Violation], resource_urn: str | None = None) -> ReportViolation:
    # The engine ignores the urn a resource policy reports and uses the resource's own.
    def report(message: str, urn: str | None = None) -> None:
        violations.append(Violation(policy_name, message, resource_urn or urn))

    return report


def _config_for(pack_policy: Policy, config: Mapping[str, Mapping[str, Any]] | None) -> dict[str, Any]:
    properties = pack_policy.config_schema.properties if pack_policy.config_schema else {}
    defaults = {key: schema["default"] for key, schema in properties.items() if "default" in schema}
    return {**defaults, **(config or {}).get(pack_policy.name, {})}


def policy_resource(resource_type: str, name: str, props: Mapping[str, Any]) -> PolicyResource:
    """A resource as the engine hands it to policies, with a urn like `urn:pulumi:stack::project::{type}::{name}`."""
    options = PolicyResourceOptions(
        protect=False,
        ignore_changes=[],
        delete_before_replace=None,
        aliases=[],
        custom_timeouts=PolicyCustomTimeouts(0, 0, 0),
        additional_secret_outputs=[],
    )
    urn = f"urn:pulumi:stack::project::{resource_type}::{name}"
    # The engine hands policies read-only proxies that raise on values unknown during preview; so do we.
    return PolicyResource(resource_type, unknown_checking_proxy(dict(props)), urn, name, options, None, None, [], {})
