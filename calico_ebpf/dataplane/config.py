"""What one node's dataplane is: its name, host IPs, map sizes and failsafe ports.

A :class:`NodeConfig` is fixed when the datapath is loaded (map sizes cannot
change without reloading); the desired *contents* of the maps come from the
:class:`~calico_ebpf.model.ClusterState` given to ``Dataplane.apply``.

>>> from calico_ebpf.model import ClusterState
>>> state = ClusterState.from_yaml_text('''
... {apiVersion: v1, kind: Node, metadata: {name: node-1},
...  status: {addresses: [{type: InternalIP, address: 192.168.0.2}]}}
... ---
... {apiVersion: projectcalico.org/v3, kind: FelixConfiguration, metadata: {name: default},
...  spec: {bpfMapSizeNATBackend: 500000, failsafeInboundHostPorts: [{protocol: tcp, port: 22}]}}
... ''')
>>> cfg = NodeConfig.from_state(state)
>>> cfg.node, cfg.host_ips, cfg.map_sizes["cebpf_nat_be"], cfg.failsafes_inbound
('node-1', ('192.168.0.2',), 500000, (('tcp', 22, None),))
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from calico_ebpf.compiler.services import ServicesConfig
from calico_ebpf.errors import ModelError
from calico_ebpf.model.state import ClusterState

#: FelixConfiguration size knobs -> the datapath maps they size.
FELIX_MAP_SIZES = {
    "bpf_map_size_nat_frontend": ("cebpf_nat_fe", "cebpf_nat_feh"),
    "bpf_map_size_nat_backend": ("cebpf_nat_be",),
    "bpf_map_size_nat_affinity": ("cebpf_nat_aff",),
    "bpf_map_size_route": ("cebpf_routes",),
    "bpf_map_size_conntrack": ("cebpf_ct",),
    "bpf_map_size_ipsets": ("cebpf_ipsets",),
    "bpf_map_size_ifstate": ("cebpf_ifstate",),
}

Failsafe = tuple[str, int, "str | None"]  # (protocol "tcp"/"udp", port, CIDR or None = any)


def _failsafes(ports) -> tuple[Failsafe, ...]:
    return tuple((p.protocol.lower(), p.port, p.net) for p in ports)


def only_node(state: ClusterState) -> str:
    """The name of the only Node in ``state`` (the default "this node"); ModelError otherwise."""
    names = sorted(state.nodes)
    if len(names) != 1:
        raise ModelError("NodeConfig", "node", f"name this node: the state has {len(names)} Nodes "
                         f"({', '.join(names) or 'none'})")
    return names[0]


@attrs.frozen
class NodeConfig:
    """One node's dataplane settings.

    ``map_sizes`` (BPF map name -> max_entries) holds only the sizes the
    FelixConfiguration sets explicitly: the rest keep the object's defaults
    (Felix's) when pinned, or the small scratch sizes when unpinned.
    ``failsafes_*`` are ``(protocol, port, cidr-or-None)``.
    """

    node: str
    host_ips: tuple[str, ...] = ()
    map_sizes: Mapping[str, int] = attrs.field(factory=dict)
    failsafes_inbound: tuple[Failsafe, ...] = ()
    failsafes_outbound: tuple[Failsafe, ...] = ()
    services: ServicesConfig = attrs.Factory(ServicesConfig)
    #: This node's underlay address (its first InternalIP): the source of NodePort VXLAN packets
    #: it forwards and the address it decapsulates them on. None: NodePort forwarding stays off.
    underlay_ip: str | None = None
    #: FelixConfiguration ``bpfExternalServiceMode``: "Tunnel" (replies return through the
    #: forwarding node) or "DSR" (the backend's node answers the client directly).
    external_service_mode: str = "Tunnel"
    #: FelixConfiguration ``bpfConntrackTimeouts`` (the model's value; None = Calico's defaults),
    #: what :meth:`Dataplane.start_conntrack_gc` expires entries by.
    conntrack_timeouts: object | None = None
    #: FelixConfiguration ``vxlanPort``: the UDP port of NodePort VXLAN.
    vxlan_port: int = 4789
    #: MTU of the underlay (data interface); None: read from the registered data interface
    #: when the tunnel is configured (1500 if there is none).
    underlay_mtu: int | None = None
    #: False: ``apply`` never configures NodePort forwarding (remote backends via the host stack).
    nodeport_tunnel: bool = True

    @classmethod
    def from_state(cls, state: ClusterState, node: str | None = None) -> NodeConfig:
        """Settings of ``node`` (default: the only Node) from its Node, FelixConfiguration
        (``default`` then ``node.<name>``) and KubeProxyConfiguration."""
        node = node or only_node(state)
        obj = state.nodes.get(node)
        if obj is None:
            raise ModelError(f"Node {node}", "", "is not in the cluster state")
        felix = state.felix_config(node)
        sizes: dict[str, int] = {}
        for attr, maps in FELIX_MAP_SIZES.items():
            if attr in felix.explicit:
                for name in maps:
                    sizes[name] = getattr(felix, attr)
        return cls(node=node, host_ips=obj.ips(4), map_sizes=sizes,
                   failsafes_inbound=_failsafes(felix.failsafe_inbound_host_ports),
                   failsafes_outbound=_failsafes(felix.failsafe_outbound_host_ports),
                   services=ServicesConfig.from_state(state), underlay_ip=obj.primary_ip(4),
                   external_service_mode=felix.bpf_external_service_mode, vxlan_port=felix.vxlan_port,
                   conntrack_timeouts=felix.bpf_conntrack_timeouts)

    def updated_from(self, state: ClusterState) -> NodeConfig:
        """This config with what may change at run time (host IPs, failsafes, service knobs, the
        NodePort tunnel's address and mode) taken from ``state``; the node, map sizes and what the
        caller set by hand (``underlay_mtu``, ``nodeport_tunnel``) stay."""
        fresh = NodeConfig.from_state(state, self.node)
        # nodePortAddresses follows the KubeProxyConfiguration; other service knobs stay as given
        services = attrs.evolve(self.services, node_port_addresses=fresh.services.node_port_addresses)
        return attrs.evolve(self, host_ips=fresh.host_ips, failsafes_inbound=fresh.failsafes_inbound,
                            failsafes_outbound=fresh.failsafes_outbound, services=services,
                            underlay_ip=fresh.underlay_ip, external_service_mode=fresh.external_service_mode,
                            vxlan_port=fresh.vxlan_port)
