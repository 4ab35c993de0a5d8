"""The Pulumi program of a site: read and check the stack configuration, then build the components."""

from __future__ import annotations

import pulumi

from infra.components import OpenStackGpuPool, OpenStackGpuPoolArgs, SovereignCluster, SovereignClusterArgs
from infra.config import NAMESPACE, load_site_config


def run() -> None:
    config = pulumi.Config(NAMESPACE)
    site = load_site_config(config)
    policy = site.load_residency_policy()
    cluster = SovereignCluster(
        "site",
        SovereignClusterArgs(
            site=site,
            policy=policy,
            kubeconfig=config.get_secret("kubeconfig"),
            postgres_password=config.require_secret("postgresPassword"),
        ),
    )
    pulumi.export("policy", policy.metadata.name)
    pulumi.export("policyDigest", policy.digest())
    pulumi.export("namespaces", cluster.namespaces)
    if site.openstack is not None:
        pool = OpenStackGpuPool(
            "gpu-pool",
            OpenStackGpuPoolArgs(
                site=site,
                pool=site.openstack,
                policy=policy,
                rke2_token=config.require_secret("rke2Token"),
                kubernetes=cluster.provider,
            ),
        )
        pulumi.export("gpuNodes", pool.node_names)
