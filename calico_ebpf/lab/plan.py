"""The lab's names and addresses, as a pure function of (prefix, nodes, pods per node).

Nothing here touches the kernel: the same plan builds the lab
(:mod:`calico_ebpf.lab.topology`), describes it as Kubernetes/Calico
manifests for a per-node Dataplane, and recognises a lab's namespaces by
name when a crashed run left them behind.

>>> plan = LabPlan("demo", nodes=2, pods_per_node=2)
>>> [(n.name, n.underlay_ip, n.block, n.vtep_ip) for n in plan.nodes]
[('node-1', '10.250.0.11', '10.244.0.0/26', '10.244.0.0'), ('node-2', '10.250.0.12', '10.244.0.64/26', '10.244.0.64')]
>>> [(p.name, p.ip, p.veth) for p in plan.nodes[1].pods]
[('node-2-pod-0', '10.244.0.65', 'calie0646911124'), ('node-2-pod-1', '10.244.0.66', 'calicb098f3323e')]
>>> plan.nodes[0].netns, plan.nodes[0].pods[0].netns, plan.fabric_netns
('demo-node-1', 'demo-node-1-pod-0', 'demo-fabric')
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import attrs
import yaml

from calico_ebpf.compiler.routes import veth_name
from calico_ebpf.errors import ModelError

__all__ = [
    "GATEWAY",
    "VNI",
    "VXLAN_IFNAME",
    "VXLAN_PORT",
    "LabPlan",
    "NodePlan",
    "PodPlan",
    "lab_netns_re",
]

VXLAN_IFNAME = "vxlan.calico"  # Calico's name for the VXLAN device
VNI = 4096  # Calico's default VXLANVNI
VXLAN_PORT = 4789
GATEWAY = "169.254.1.1"  # the pods' default gateway; answered by proxy ARP on the cali veth
CALI_MAC = "ee:ee:ee:ee:ee:ee"  # Calico CNI gives every host-side veth this MAC
UNDERLAY_IFNAME = "eth0"  # the node's data interface (host endpoint)
UNDERLAY_MTU = 1500
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
POD_NAMESPACE = "default"
_PREFIX_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")


def lab_netns_re(prefix: str) -> re.Pattern[str]:
    """Names of every namespace a lab with ``prefix`` creates, and no other.

    Exact shapes, not ``startswith``: cleaning up lab "a" must not take
    lab "a-b"'s namespaces (``a-b-fabric`` is not ``a-`` + a lab role).
    """
    return re.compile(rf"{re.escape(prefix)}-(?:fabric|ext|node-(?P<node>\d+)(?:-pod-(?P<pod>\d+))?)")


@attrs.frozen
class PodPlan:
    """One pod: Kubernetes name, /32 IP from its node's block, netns, Calico veth name."""

    name: str
    namespace: str
    node: str
    index: int
    ip: str
    netns: str
    veth: str  # host side, in the node's netns (the pod side is eth0)


@attrs.frozen
class NodePlan:
    """One node: underlay address on the fabric, IPAM block, VTEP address and MAC."""

    name: str
    index: int
    netns: str
    underlay_ip: str
    fabric_port: str  # the node's veth end on the fabric bridge
    block: str
    vtep_ip: str
    vtep_mac: str
    pods: tuple[PodPlan, ...]


@attrs.frozen
class LabPlan:
    """Addresses and names of a lab.

    Underlay ``10.250.0.0/24`` (fabric bridge .1, node *i* at .10+i, the
    external client at .100) and the IP pool ``10.244.0.0/16`` carved into
    /26 blocks, one per node in order. As in Calico, a node's VXLAN tunnel
    address is the first address of its block and pods take the next ones.
    The ranges only need to be free *inside* the lab's own namespaces.
    """

    prefix: str
    nodes: tuple[NodePlan, ...]
    underlay_cidr: str
    pool_cidr: str
    block_size: int

    def __init__(self, prefix: str, nodes: int = 2, pods_per_node: int = 3, *,
                 underlay_cidr: str = "10.250.0.0/24", pool_cidr: str = "10.244.0.0/16", block_size: int = 26):
        where = f"Lab {prefix}"
        if not _PREFIX_RE.fullmatch(prefix):
            raise ModelError(where, "prefix", "use 1-32 of [a-z0-9-], starting and ending with a letter or digit")
        underlay = ipaddress.ip_network(underlay_cidr)
        pool = ipaddress.ip_network(pool_cidr)
        if underlay.version != 4 or pool.version != 4:
            raise ModelError(where, "underlay_cidr/pool_cidr", "the lab is IPv4 only")
        if not 1 <= nodes <= min(80, underlay.num_addresses - 12):
            raise ModelError(where, "nodes", f"{nodes} is not in 1..{min(80, underlay.num_addresses - 12)}")
        blocks = list(pool.subnets(new_prefix=block_size))
        if nodes > len(blocks):
            raise ModelError(where, "nodes", f"{nodes} nodes need more /{block_size} blocks than {pool} has")
        if not 0 <= pods_per_node <= blocks[0].num_addresses - 2:
            raise ModelError(where, "pods_per_node", f"{pods_per_node} does not fit a /{block_size} block")
        node_plans = []
        for i in range(1, nodes + 1):
            name = f"node-{i}"
            block = blocks[i - 1]
            pods = tuple(
                PodPlan(name=f"{name}-pod-{j}", namespace=POD_NAMESPACE, node=name, index=j,
                        ip=str(block[1 + j]), netns=f"{prefix}-{name}-pod-{j}",
                        veth=veth_name(POD_NAMESPACE, f"{name}-pod-{j}"))
                for j in range(pods_per_node)
            )
            node_plans.append(NodePlan(
                name=name, index=i, netns=f"{prefix}-{name}", underlay_ip=str(underlay[10 + i]),
                fabric_port=f"veth-{name}", block=str(block), vtep_ip=str(block[0]),
                # Locally administered unicast (0x66), unique per node index.
                vtep_mac=f"66:ca:11:00:{i >> 8:02x}:{i & 0xFF:02x}", pods=pods,
            ))
        self.__attrs_init__(prefix, tuple(node_plans), underlay_cidr, pool_cidr, block_size)

    # -- derived names and addresses ----------------------------------------------------------

    @property
    def pods_per_node(self) -> int:
        return len(self.nodes[0].pods)

    @property
    def underlay_prefixlen(self) -> int:
        return ipaddress.ip_network(self.underlay_cidr).prefixlen

    @property
    def fabric_ip(self) -> str:
        """The fabric bridge's own address: the nodes' default gateway."""
        return str(ipaddress.ip_network(self.underlay_cidr)[1])

    @property
    def external_ip(self) -> str:
        return str(ipaddress.ip_network(self.underlay_cidr)[100])

    @property
    def fabric_netns(self) -> str:
        return f"{self.prefix}-fabric"

    @property
    def external_netns(self) -> str:
        return f"{self.prefix}-ext"

    @property
    def vxlan_mtu(self) -> int:
        return UNDERLAY_MTU - VXLAN_OVERHEAD

    def netns_names(self) -> list[str]:
        """Every namespace of the lab, in teardown order (pods, nodes, client, fabric)."""
        pods = [p.netns for n in self.nodes for p in n.pods]
        return [*pods, *(n.netns for n in self.nodes), self.external_netns, self.fabric_netns]

    def node(self, name: str) -> NodePlan:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"lab {self.prefix} has no node {name!r} (nodes: {', '.join(n.name for n in self.nodes)})")

    # -- manifests ----------------------------------------------------------------------------

    def manifests(self) -> list[dict[str, Any]]:
        """The IPPool, Nodes and Pods of the lab as API dicts (``ClusterState.from_dicts``).

        Nodes carry the annotations Calico's node agent writes (node IP,
        VXLAN tunnel address and MAC) and their block as ``podCIDR`` so
        route compilation knows which node owns which block.
        """
        docs: list[dict[str, Any]] = [{
            "apiVersion": "projectcalico.org/v3", "kind": "IPPool",
            "metadata": {"name": "lab-pool"},
            "spec": {"cidr": self.pool_cidr, "blockSize": self.block_size, "vxlanMode": "Always",
                     "ipipMode": "Never", "natOutgoing": False},
        }]
        for n in self.nodes:
            docs.append({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {
                    "name": n.name,
                    "labels": {"kubernetes.io/hostname": n.name},
                    "annotations": {
                        "projectcalico.org/IPv4Address": f"{n.underlay_ip}/{self.underlay_prefixlen}",
                        "projectcalico.org/IPv4VXLANTunnelAddr": n.vtep_ip,
                        "projectcalico.org/VXLANTunnelMACAddr": n.vtep_mac,
                    },
                },
                "spec": {"podCIDR": n.block, "podCIDRs": [n.block]},
                "status": {"addresses": [{"type": "InternalIP", "address": n.underlay_ip},
                                         {"type": "Hostname", "address": n.name}]},
            })
        for n in self.nodes:
            for p in n.pods:
                docs.append({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": p.name, "namespace": p.namespace,
                                 "labels": {"app": "echo", "lab.calico-ebpf/node": n.name}},
                    "spec": {"nodeName": n.name,
                             "containers": [{"name": "echo", "ports": [
                                 {"containerPort": 8080, "protocol": "TCP"},
                                 {"containerPort": 8080, "protocol": "UDP"}]}]},
                    "status": {"phase": "Running", "podIP": p.ip, "podIPs": [{"ip": p.ip}]},
                })
        return docs

    def manifests_yaml(self) -> str:
        """:meth:`manifests` as one multi-document YAML text."""
        return yaml.safe_dump_all(self.manifests(), sort_keys=False)
