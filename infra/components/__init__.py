"""Pulumi ComponentResources of a site: the Kubernetes side (`SovereignCluster`) and GPU machines on an
in-country OpenStack cloud (`OpenStackGpuPool`)."""

from infra.components.cluster import SovereignCluster, SovereignClusterArgs
from infra.components.gpu_pool import OpenStackGpuPool, OpenStackGpuPoolArgs

__all__ = ["OpenStackGpuPool", "OpenStackGpuPoolArgs", "SovereignCluster", "SovereignClusterArgs"]
