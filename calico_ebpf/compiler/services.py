"""Services -> desired NAT frontends and backend blocks for one node (pure, IPv4).

For every TCP/UDP port of every Service (headless and ExternalName ones are
ignored, as kube-proxy does) this writes the frontends Calico writes
(``calico-ebpf.md`` §3.1, §3.6) and one backend block, local endpoints
first:

=============  ======================================  ==========================================
kind           address                                 flags
=============  ======================================  ==========================================
clusterIP      the IPv4 cluster IP                     INTERNAL_LOCAL|EXTERNAL_LOCAL if iTP Local
externalIP     each IPv4 externalIP                    EXTERNAL_LOCAL if eTP Local
loadBalancer   each IPv4 LB ingress IP (not ipMode     EXTERNAL_LOCAL if eTP Local; with source
               Proxy), per allowed source range        ranges also a catch-all ``drop`` entry
nodePort       this node's IPv4 addresses (all, or     EXTERNAL_LOCAL if eTP Local
               those in nodePortAddresses) plus the
               wildcard 255.255.255.255
=============  ======================================  ==========================================

Where we follow kube-proxy rather than Calico's own syncer (iTP Local also
for external clients of a ClusterIP; iTP not applied to NodePorts/LB IPs) is
listed in docs/services.md.

The records are plain data: the reconciler maps them to map entries.

>>> from calico_ebpf.model import ClusterState
>>> state = ClusterState.from_yaml_text('''
... {apiVersion: v1, kind: Node, metadata: {name: n1},
...  status: {addresses: [{type: InternalIP, address: 192.168.0.2}]}}
... ---
... {apiVersion: v1, kind: Service, metadata: {name: web, namespace: d},
...  spec: {clusterIP: 172.30.0.10, ports: [{name: http, port: 80}]}}
... ---
... {apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, addressType: IPv4,
...  metadata: {name: web-1, namespace: d, labels: {kubernetes.io/service-name: web}},
...  ports: [{name: http, port: 8080}], endpoints: [{addresses: [10.0.0.7], nodeName: n1}]}
... ''')
>>> desired = compile_services(state, "n1")
>>> fe = desired.frontends[0]
>>> (fe.kind, fe.addr, fe.port, fe.service, fe.count, fe.local)
('clusterIP', '172.30.0.10', 80, 'd/web/http/TCP', 1, 1)
>>> desired.backends[fe.service_id].backends
(('10.0.0.7', 8080),)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

import attrs

from calico_ebpf.compiler.endpoints import Backend, select_backends
from calico_ebpf.compiler.service_ids import ServiceIdAllocator
from calico_ebpf.errors import ModelError, UnsupportedError
from calico_ebpf.model.kubeproxy import PRIMARY
from calico_ebpf.model.state import ClusterState

# Values of enum nat_fe_flags (bpf/include/nat.h).
EXTERNAL_LOCAL = 0x1
INTERNAL_LOCAL = 0x2

PROTO_NUMBERS = {"TCP": 6, "UDP": 17}
NODEPORT_WILDCARD_V4 = "255.255.255.255"

CLUSTER_IP = "clusterIP"
NODE_PORT = "nodePort"
EXTERNAL_IP = "externalIP"
LOAD_BALANCER = "loadBalancer"


@attrs.frozen
class Frontend:
    """One NAT frontend key and the value it will carry.

    ``src_cidr`` None is the "any source" key (prefix 56). ``drop`` marks the
    catch-all entry of a service with loadBalancerSourceRanges (count
    0xffffffff in the map). ``count``/``local`` mirror the backend block.
    """

    addr: str
    port: int
    proto: int
    src_cidr: str | None
    service: str
    service_id: int
    kind: str
    flags: int = 0
    affinity_timeout: int = 0
    count: int = 0
    local: int = 0
    drop: bool = False

    @property
    def match(self) -> tuple[str, int, int, str | None]:
        """The LPM key as a tuple: (addr, port, proto, src_cidr)."""
        return (self.addr, self.port, self.proto, self.src_cidr)


@attrs.frozen
class BackendSet:
    """The backend block of one service id: ``backends[i]`` is ordinal i; 0..local_count-1 are local."""

    service: str
    service_id: int
    backends: tuple[Backend, ...]
    local_count: int

    @property
    def count(self) -> int:
        return len(self.backends)


@attrs.frozen
class ServicesConfig:
    """Knobs of the service compiler.

    ``node_port_addresses``: None = NodePorts on every address of this node;
    else CIDRs (and/or ``"primary"``) selecting the addresses (kube-proxy's
    nodePortAddresses). ``honour_lb_ip_mode``: LB ingress IPs with ipMode
    Proxy are not programmed (LoadBalancerIPMode, on by default since 1.30).
    """

    node_port_addresses: tuple[str, ...] | None = None
    honour_lb_ip_mode: bool = True

    @classmethod
    def from_state(cls, state: ClusterState) -> ServicesConfig:
        kp = state.kube_proxy_config
        return cls(node_port_addresses=kp.node_port_addresses if kp else None)


@attrs.frozen
class DesiredServices:
    """Everything the NAT maps of one node should hold."""

    frontends: tuple[Frontend, ...]
    backends: Mapping[int, BackendSet]
    service_ids: Mapping[str, int]
    unsupported: tuple[UnsupportedError, ...] = ()
    conflicts: tuple[str, ...] = ()

    def frontends_by_match(self) -> dict[tuple[str, int, int, str | None], Frontend]:
        return {fe.match: fe for fe in self.frontends}


def _v4(addrs) -> list[str]:
    return [a for a in addrs if ":" not in a]


def _nodeport_ips(node_ips: list[str], primary: str | None, selection: tuple[str, ...] | None) -> list[str]:
    if selection is None:
        return node_ips
    nets = [ipaddress.ip_network(c) for c in selection if c != PRIMARY and ":" not in c]
    chosen = []
    for ip in node_ips:
        addr = ipaddress.ip_address(ip)
        if (PRIMARY in selection and ip == primary) or any(addr in n for n in nets):
            chosen.append(ip)
    return chosen


def _lb_sources(ranges: tuple[str, ...], lb_ips: list[str], primary: str | None) -> list[str | None]:
    """Allowed source keys for LB frontends; [] means "no filtering"."""
    nets = [r for r in ranges if ":" not in r]
    if not nets:
        return []
    allowed: dict[str, None] = {}
    if "0.0.0.0/0" in nets:
        return [None]  # every source allowed: one plain entry, no drop entry
    for r in nets:
        allowed[r] = None
    # kube-proxy parity: if a range covers the node's primary IP, node-originated
    # traffic that something SNATed to the LB IP is allowed too.
    if primary and any(ipaddress.ip_address(primary) in ipaddress.ip_network(r) for r in nets):
        for ip in lb_ips:
            allowed.setdefault(f"{ip}/32")
    return list(allowed)


def compile_services(state: ClusterState, node_name: str, config: ServicesConfig | None = None,
                     ids: ServiceIdAllocator | Mapping[str, int] | None = None) -> DesiredServices:
    """Desired NAT state of ``node_name`` for the services in ``state``.

    ``ids`` carries service ids across compiles: an allocator (updated in
    place) or the previous ``service_ids`` mapping. Raises ModelError if the
    node is not in ``state``.
    """
    node = state.nodes.get(node_name)
    if node is None:
        raise ModelError(f"Node {node_name}", "", "is not in the cluster state")
    config = config or ServicesConfig.from_state(state)
    allocator = ids if isinstance(ids, ServiceIdAllocator) else ServiceIdAllocator(ids)
    node_ips = list(node.ips(4))
    primary = node.primary_ip(4)
    np_ips = _nodeport_ips(node_ips, primary, config.node_port_addresses) + [NODEPORT_WILDCARD_V4]

    # Pass 1: the service ports to program, so that ids are assigned in one go.
    work = []
    unsupported: list[UnsupportedError] = []
    for skey in sorted(state.services):
        svc = state.services[skey]
        if svc.ignored:
            continue
        cluster_ips = _v4(svc.cluster_ips)
        if not cluster_ips:
            continue  # IPv6-only service: this compiler programs IPv4
        for sp in svc.ports:
            proto = PROTO_NUMBERS.get(sp.protocol)
            if proto is None:
                unsupported.append(UnsupportedError("SCTP service port", f"{sp.port}/{sp.protocol} is not "
                                                    "programmed: TCP and UDP only", f"Service {skey}"))
                continue
            work.append((f"{skey}/{sp.name}/{sp.protocol}", svc, sp, proto, cluster_ips[0]))
    id_of = allocator.assign(k for k, *_ in work)

    frontends: dict[tuple[str, int, int, str | None], Frontend] = {}
    conflicts: list[str] = []
    backends: dict[int, BackendSet] = {}

    def put(fe: Frontend) -> None:
        other = frontends.setdefault(fe.match, fe)
        if other is not fe:
            conflicts.append(f"{fe.kind} {fe.addr}:{fe.port}/{fe.proto} of {fe.service} is already "
                             f"taken by {other.service}; keeping {other.service}")

    for key, svc, sp, proto, cluster_ip in work:
        sid = id_of[key]
        ext_local = svc.external_policy_local
        int_local = svc.internal_policy_local
        block, local = select_backends(state.slices_for(svc.key), sp.name, sp.protocol, node_name,
                                       local_policy=ext_local or int_local)
        backends[sid] = BackendSet(key, sid, block, local)
        count = len(block)
        aff = svc.affinity_timeout
        ext_flags = EXTERNAL_LOCAL if ext_local else 0
        # kube-proxy applies iTP Local to every client of the ClusterIP, external
        # ones included; Calico's EXTERNAL_LOCAL bit covers the latter.
        cip_flags = (INTERNAL_LOCAL | EXTERNAL_LOCAL) if int_local else 0

        put(Frontend(cluster_ip, sp.port, proto, None, key, sid, CLUSTER_IP, cip_flags, aff, count, local))
        for ip in _v4(svc.external_ips):
            put(Frontend(ip, sp.port, proto, None, key, sid, EXTERNAL_IP, ext_flags, aff, count, local))
        lb_ips = [i.ip for i in svc.lb_ingress
                  if ":" not in i.ip and not (config.honour_lb_ip_mode and i.ip_mode == "Proxy")]
        if lb_ips:
            sources = _lb_sources(svc.lb_source_ranges, lb_ips, primary) or [None]
            for ip in lb_ips:
                for src in sources:
                    put(Frontend(ip, sp.port, proto, src, key, sid, LOAD_BALANCER, ext_flags, aff, count, local))
                if None not in sources:
                    put(Frontend(ip, sp.port, proto, None, key, sid, LOAD_BALANCER, ext_flags, aff, 0, 0, drop=True))
        if sp.node_port is not None and svc.type in ("NodePort", "LoadBalancer"):
            for ip in np_ips:
                put(Frontend(ip, sp.node_port, proto, None, key, sid, NODE_PORT, ext_flags, aff, count, local))

    return DesiredServices(tuple(frontends.values()), backends, id_of, tuple(unsupported), tuple(conflicts))
