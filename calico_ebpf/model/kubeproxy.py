"""kubeproxy.config.k8s.io/v1alpha1 KubeProxyConfiguration (the fields we honour).

>>> c = KubeProxyConfiguration.from_dict({"kind": "KubeProxyConfiguration",
...     "clusterCIDR": "10.0.0.0/8", "nodePortAddresses": ["192.168.0.0/24"]})
>>> c.cluster_cidrs, c.node_port_addresses
(('10.0.0.0/8',), ('192.168.0.0/24',))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from calico_ebpf.model import _fields as f

# nodePortAddresses may name this special value instead of CIDRs (kube-proxy >= 1.29).
PRIMARY = "primary"


@attrs.frozen
class KubeProxyConfiguration:
    """``node_port_addresses`` is None when unset: NodePorts on every node address.

    It holds canonical CIDRs and possibly ``"primary"`` (the node's primary IPs).
    ``localhost_node_ports`` is parsed for completeness; this dataplane never
    serves NodePorts on loopback (see docs/services.md).
    """

    name: str = ""
    cluster_cidrs: tuple[str, ...] = ()
    node_port_addresses: tuple[str, ...] | None = None
    masquerade_all: bool = False
    localhost_node_ports: bool = True

    @property
    def key(self) -> str:
        return self.name

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> KubeProxyConfiguration:
        md = f.mapping("KubeProxyConfiguration", "metadata", d.get("metadata"))
        name = f.string("KubeProxyConfiguration", "metadata.name", md.get("name"))
        obj = f"KubeProxyConfiguration {name}".rstrip()
        cidrs = f.string(obj, "clusterCIDR", d.get("clusterCIDR"))
        cluster = tuple(f.cidr(obj, "clusterCIDR", c) for c in cidrs.split(",") if c.strip())
        npa = None
        if d.get("nodePortAddresses") is not None:
            npa = tuple(
                PRIMARY if a == PRIMARY else f.cidr(obj, f"nodePortAddresses[{i}]", a)
                for i, a in enumerate(f.seq(obj, "nodePortAddresses", d.get("nodePortAddresses")))
            ) or None
        ipt = f.mapping(obj, "iptables", d.get("iptables"))
        nft = f.mapping(obj, "nftables", d.get("nftables"))
        masq = (
            f.boolean(obj, "masqueradeAll", d.get("masqueradeAll"), False)
            or f.boolean(obj, "iptables.masqueradeAll", ipt.get("masqueradeAll"), False)
            or f.boolean(obj, "nftables.masqueradeAll", nft.get("masqueradeAll"), False)
        )
        return cls(name, cluster, npa, masq,
                   f.boolean(obj, "iptables.localhostNodePorts", ipt.get("localhostNodePorts"), True))


__all__ = ["PRIMARY", "KubeProxyConfiguration"]
