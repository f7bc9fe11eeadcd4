"""Desired routes-map records for one node (pure, IPv4).

What the datapath needs to know about addresses (``calico-ebpf.md`` §2.8):

* this node's IPs: LOCAL|HOST; other nodes' IPs: HOST;
* pods on this node: LOCAL|WORKLOAD with the veth name (``cali`` + 11 hex
  digits of sha1("namespace.pod"), Calico's naming);
* pods on other nodes and other nodes' podCIDRs: WORKLOAD with the node's IP
  as next hop (+TUNNELED|VXLAN when their IP pool uses VXLAN);
* IP pools: IN_POOL (+NAT_OUT with natOutgoing), also added to the records
  of workloads inside them.

Host-network pods and finished pods get no workload route.

>>> from calico_ebpf.model import ClusterState
>>> state = ClusterState.from_yaml_text('''
... {apiVersion: v1, kind: Node, metadata: {name: n1}, status: {addresses: [{type: InternalIP, address: 192.168.0.2}]}}
... ---
... {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: d}, spec: {nodeName: n1}, status: {podIP: 10.0.0.5}}
... ''')
>>> [(r.cidr, hex(r.flags), r.ifname) for r in compile_routes(state, "n1")]
[('10.0.0.5/32', '0xc', 'calif0286515482'), ('192.168.0.2/32', '0x18', None)]
"""

from __future__ import annotations

import hashlib
import ipaddress

import attrs

from calico_ebpf.errors import ModelError
from calico_ebpf.model.state import ClusterState

# Values of enum route_flags (bpf/include/routes.h).
RT_IN_POOL = 0x1
RT_NAT_OUT = 0x2
RT_WORKLOAD = 0x4
RT_LOCAL = 0x8
RT_HOST = 0x10
RT_TUNNELED = 0x40
RT_VXLAN = 0x400


@attrs.frozen
class Route:
    """One routes-map entry. ``next_hop`` for remote destinations, ``ifname`` for local pods."""

    cidr: str
    flags: int
    next_hop: str | None = None
    ifname: str | None = None
    pod: str | None = None  # "ns/name" of the workload
    node: str | None = None  # node that owns the address or block


def veth_name(namespace: str, pod: str) -> str:
    """Calico's host-side veth name for a pod.

    >>> veth_name("d", "a")
    'calif0286515482'
    """
    return "cali" + hashlib.sha1(f"{namespace}.{pod}".encode()).hexdigest()[:11]


class _Pools:
    def __init__(self, state: ClusterState):
        self.pools = [(ipaddress.ip_network(p.cidr), p) for p in state.ip_pools.values() if ":" not in p.cidr]

    def flags(self, cidr: str) -> int:
        """Pool flags of the pool containing ``cidr`` (tunnel flags apply to remote routes only)."""
        net = ipaddress.ip_network(cidr)
        for pool_net, pool in self.pools:
            if net.subnet_of(pool_net):
                flags = RT_IN_POOL | (RT_NAT_OUT if pool.nat_outgoing else 0)
                return flags | ((RT_TUNNELED | RT_VXLAN) << 16 if pool.vxlan else 0)
        return 0


def _split(flags: int, remote: bool) -> int:
    # Tunnel bits ride in the high half of _Pools.flags until we know the route is remote.
    return (flags & 0xFFFF) | ((flags >> 16) if remote else 0)


def compile_routes(state: ClusterState, node_name: str) -> tuple[Route, ...]:
    """Routes for ``node_name``, sorted by CIDR. Raises ModelError if the node is unknown."""
    if node_name not in state.nodes:
        raise ModelError(f"Node {node_name}", "", "is not in the cluster state")
    pools = _Pools(state)
    routes: dict[str, Route] = {}

    def put(route: Route) -> None:
        routes.setdefault(route.cidr, route)  # first writer wins: hosts, then pods, then blocks

    node_ip = {}
    for name, node in state.nodes.items():
        node_ip[name] = node.primary_ip(4)
        for ip in node.ips(4):
            if name == node_name:
                put(Route(f"{ip}/32", RT_LOCAL | RT_HOST, node=name))
            else:
                put(Route(f"{ip}/32", RT_HOST, node=name))

    for key in sorted(state.pods):
        pod = state.pods[key]
        if pod.host_network or pod.finished or not pod.node_name:
            continue
        for ip in pod.pod_ips:
            if ":" in ip:
                continue
            cidr = f"{ip}/32"
            if pod.node_name == node_name:
                put(Route(cidr, RT_LOCAL | RT_WORKLOAD | _split(pools.flags(cidr), False),
                          ifname=veth_name(pod.namespace, pod.name), pod=key, node=node_name))
            elif node_ip.get(pod.node_name):
                put(Route(cidr, RT_WORKLOAD | _split(pools.flags(cidr), True), next_hop=node_ip[pod.node_name],
                          pod=key, node=pod.node_name))

    for name, node in sorted(state.nodes.items()):
        if name == node_name or not node_ip[name]:
            continue
        for cidr in node.pod_cidrs:
            if ":" not in cidr:
                put(Route(cidr, RT_WORKLOAD | _split(pools.flags(cidr), True), next_hop=node_ip[name], node=name))

    for pool_net, pool in pools.pools:
        put(Route(str(pool_net), RT_IN_POOL | (RT_NAT_OUT if pool.nat_outgoing else 0)))

    return tuple(sorted(routes.values(), key=lambda r: ipaddress.ip_network(r.cidr)))
