"""`OpenStackGpuPool`: GPU machines on an in-country OpenStack cloud, joined to the cluster with RKE2.

Private network only: no floating IP, security-group rules open only to the site's own networks.
Boot volumes use an encrypted volume type; a server group keeps the nodes on different hypervisors.
The residency label is set by Pulumi on the Node objects, not by the node itself: Kubernetes'
NodeRestriction admission forbids a kubelet to set `node-restriction.kubernetes.io/*` labels on
its own node, which is what makes the label trustworthy.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
import pulumi_openstack as openstack
import yaml

from infra.config import OpenStackPool, SiteConfig
from operators.admission_policies import residency_node_labels
from policies import ResidencyPolicy

# RKE2 agent ports the cluster reaches the nodes on: kubelet, and Canal's VXLAN and health check.
NODE_PORTS = (("tcp", 10250), ("udp", 8472), ("tcp", 9099))
GPU_TAINT = "nvidia.com/gpu=present:NoSchedule"


@dataclass
class OpenStackGpuPoolArgs:
    site: SiteConfig
    pool: OpenStackPool
    policy: ResidencyPolicy
    rke2_token: pulumi.Input[str]
    kubernetes: k8s.Provider | None = None


def node_name(pool: OpenStackPool, index: int) -> str:
    return f"{pool.flavor.name.replace('.', '-')}-{index}"


def rke2_agent_config(server: str, token: str, zone: str, region: str, mirror: str) -> str:
    """cloud-init for an RKE2 agent whose image has RKE2 installed: nothing is downloaded at boot.

    The kubelet may label its own node only with the topology labels; the residency label comes
    from Pulumi (NodePatch), see the module docstring.
    """
    agent = {
        "server": server,
        "token": token,
        "node-label": [f"topology.kubernetes.io/region={region}", f"topology.kubernetes.io/zone={zone}"],
        "node-taint": [GPU_TAINT],
        "system-default-registry": mirror,
    }
    registries = {"mirrors": {"docker.io": {"endpoint": [f"https://{mirror}"]}}}
    document = {
        "write_files": [
            {"path": "/etc/rancher/rke2/config.yaml", "permissions": "0600", "content": yaml.safe_dump(agent)},
            {"path": "/etc/rancher/rke2/registries.yaml", "permissions": "0600", "content": yaml.safe_dump(registries)},
        ],
        "runcmd": [["systemctl", "enable", "--now", "rke2-agent.service"]],
    }
    return "#cloud-config\n" + yaml.safe_dump(document, sort_keys=False)


class OpenStackGpuPool(pulumi.ComponentResource):
    """Flavor, private network and subnet, security group, anti-affinity server group, encrypted boot volumes,
    the GPU instances, and the residency label on their Node objects."""

    node_names: pulumi.Output[list[str]]

    def __init__(self, name: str, args: OpenStackGpuPoolArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("sovereign:index:OpenStackGpuPool", name, None, opts)
        pool, site, policy = args.pool, args.site, args.policy
        child = pulumi.ResourceOptions(parent=self)
        region = pool.region

        flavor = openstack.compute.Flavor(
            f"{name}-flavor",
            name=pool.flavor.name,
            vcpus=pool.flavor.vcpus,
            ram=pool.flavor.ram_mb,
            disk=0,  # boots from an encrypted volume, never from an ephemeral disk
            is_public=False,
            extra_specs={"pci_passthrough:alias": f"{pool.flavor.pci_alias}:{pool.flavor.gpus}"},
            region=region,
            opts=child,
        )
        network = openstack.networking.Network(
            f"{name}-network", name=f"{name}-private", admin_state_up=True, region=region, opts=child
        )
        subnet = openstack.networking.Subnet(
            f"{name}-subnet",
            network_id=network.id,
            cidr=str(pool.subnet_cidr),
            ip_version=pool.subnet_cidr.version,
            dns_nameservers=pool.dns_nameservers,
            region=region,
            opts=child,
        )
        group = openstack.networking.SecGroup(
            f"{name}-nodes",
            name=f"{name}-nodes",
            description="GPU nodes: the site's own networks only",
            region=region,
            opts=child,
        )
        site_networks = [str(net) for s in policy.spec.sites if s.name in site.sites for net in s.networks()]
        for protocol, port in NODE_PORTS:
            for index, network_cidr in enumerate(site_networks):
                openstack.networking.SecGroupRule(
                    f"{name}-{protocol}-{port}-{index}",
                    security_group_id=group.id,
                    direction="ingress",
                    ethertype="IPv6" if ":" in network_cidr else "IPv4",
                    protocol=protocol,
                    port_range_min=port,
                    port_range_max=port,
                    remote_ip_prefix=network_cidr,
                    region=region,
                    opts=child,
                )
        spread = openstack.compute.ServerGroup(
            f"{name}-spread", name=f"{name}-spread", policies="anti-affinity", region=region, opts=child
        )

        residency = residency_node_labels(policy)
        names = []
        for index in range(pool.nodes):
            zone = pool.availability_zones[index % len(pool.availability_zones)]
            host = node_name(pool, index)
            boot = openstack.blockstorage.Volume(
                f"{name}-boot-{index}",
                name=f"{host}-boot",
                size=pool.volume_size_gb,
                volume_type=pool.volume_type,
                image_id=openstack.images.get_image_output(name=pool.image_name, region=region).id,
                availability_zone=zone,
                region=region,
                opts=child,
            )
            user_data = pulumi.Output.secret(args.rke2_token).apply(
                lambda token, zone=zone: rke2_agent_config(pool.rke2_server, token, zone, region, site.registry_mirror)
            )
            instance = openstack.compute.Instance(
                f"{name}-{index}",
                name=host,
                flavor_id=flavor.id,
                availability_zone=zone,
                region=region,
                networks=[openstack.compute.InstanceNetworkArgs(uuid=network.id)],
                security_groups=[group.name],
                block_devices=[
                    openstack.compute.InstanceBlockDeviceArgs(
                        uuid=boot.id,
                        source_type="volume",
                        destination_type="volume",
                        boot_index=0,
                        delete_on_termination=False,
                    )
                ],
                scheduler_hints=[openstack.compute.InstanceSchedulerHintArgs(group=spread.id)],
                metadata={"sovereign-stack.io/site": ",".join(site.sites), "sovereign-stack.io/zone": zone},
                user_data=user_data,
                opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[subnet])),
            )
            if args.kubernetes is not None:
                k8s.core.v1.NodePatch(
                    f"{name}-{index}-residency",
                    metadata={"name": host, "labels": residency},
                    opts=pulumi.ResourceOptions(parent=self, provider=args.kubernetes, depends_on=[instance]),
                )
            names.append(instance.name)

        self.node_names = pulumi.Output.all(*names)
        self.register_outputs({"nodeNames": self.node_names})
