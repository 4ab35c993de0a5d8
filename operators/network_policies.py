"""NetworkPolicies generated from the policy's egress section: deny by default, allow what the policy lists.

A NetworkPolicy matches addresses, not DNS names, so only rules with `cidrs` become peers here. Rules
that name hosts only are listed in an annotation: they need an egress proxy or an FQDN-aware CNI
(Cilium, Calico Enterprise) to be enforced, and the pods reach the registry's artifacts through
MLflow's proxy, inside the cluster, anyway.
"""

from __future__ import annotations

from typing import Any

from policies.model import ResidencyPolicy

DNS_PORT = 53
HOST_RULES_ANNOTATION = "sovereign-stack.io/egress-host-rules-not-enforced"
CLUSTER_DNS_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
}


def _ports(ports: list[int]) -> list[dict[str, Any]]:
    protocols = ("UDP", "TCP")
    return [
        {"protocol": protocol, "port": port}
        for port in ports
        for protocol in protocols
        if protocol == "TCP" or port == DNS_PORT
    ]


def _dns_rule() -> dict[str, Any]:
    return {"to": [CLUSTER_DNS_PEER], "ports": _ports([DNS_PORT])}


def policy_egress_rules(policy: ResidencyPolicy) -> list[dict[str, Any]]:
    """One NetworkPolicy egress rule per policy rule that has networks, with its ports (none: every port)."""
    rules = []
    for rule in policy.spec.egress.allow:
        if not rule.cidrs:
            continue
        egress: dict[str, Any] = {"to": [{"ipBlock": {"cidr": str(cidr)}} for cidr in rule.cidrs]}
        if rule.ports:
            egress["ports"] = _ports(rule.ports)
        rules.append(egress)
    return rules


def host_only_rules(policy: ResidencyPolicy) -> list[str]:
    return [rule.name for rule in policy.spec.egress.allow if not rule.cidrs]


def egress_network_policy(
    policy: ResidencyPolicy,
    name: str,
    pod_selector: dict[str, Any],
    labels: dict[str, str],
    peers: list[dict[str, Any]],
) -> dict[str, Any]:
    """Default-deny egress for the selected pods, except DNS, `peers` (inside the cluster) and the policy's networks."""
    metadata: dict[str, Any] = {"name": name, "labels": labels}
    if skipped := host_only_rules(policy):
        metadata["annotations"] = {HOST_RULES_ANNOTATION: ",".join(skipped)}
    egress = [_dns_rule(), *policy_egress_rules(policy)]
    if peers:
        egress.insert(1, {"to": peers})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {"podSelector": pod_selector, "policyTypes": ["Egress"], "egress": egress},
    }


def namespace_network_policies(policy: ResidencyPolicy, labels: dict[str, str]) -> list[dict[str, Any]]:
    """For the stack's own namespace: every pod may reach the others in it, DNS and the policy's networks."""
    return [
        egress_network_policy(
            policy,
            f"sovereign-{policy.metadata.name}-egress",
            {},
            {**labels, "app.kubernetes.io/component": "network-policy"},
            [{"podSelector": {}}],
        )
    ]
