"""Which (API group, kind) pairs the model understands, and their parsers.

Kinds not registered here are reported by ClusterState as not handled
instead of failing.

>>> parser_for("v1", "Service").__name__
'from_dict'
>>> parser_for("networking.k8s.io/v1", "NetworkPolicy").__qualname__
'NetworkPolicy.from_dict'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from calico_ebpf.model.calico import FelixConfiguration, IPPool
from calico_ebpf.model.core import Namespace, Node, Pod, Service
from calico_ebpf.model.discovery import EndpointSlice
from calico_ebpf.model.kubeproxy import KubeProxyConfiguration
from calico_ebpf.model.policy import CalicoNetworkPolicy, GlobalNetworkPolicy, NetworkPolicy, Tier

Parser = Callable[[Mapping[str, Any]], Any]

# Calico objects may come through the CRD group (crd.projectcalico.org) or the
# API server (projectcalico.org); both spellings mean the same object.
_KINDS: dict[tuple[str, str], Parser] = {}


def register(groups: tuple[str, ...], kind: str, parser: Parser) -> None:
    """Teach the model a kind; ``groups`` are API groups ("" for core v1)."""
    for group in groups:
        _KINDS[(group, kind)] = parser


def api_group(api_version: str) -> str:
    """``"discovery.k8s.io/v1"`` -> ``"discovery.k8s.io"``; ``"v1"`` -> ``""``."""
    return api_version.rpartition("/")[0] if "/" in api_version else ""


def parser_for(api_version: str, kind: str) -> Parser | None:
    return _KINDS.get((api_group(api_version), kind))


register(("",), "Node", Node.from_dict)
register(("",), "Service", Service.from_dict)
register(("",), "Pod", Pod.from_dict)
register(("",), "Namespace", Namespace.from_dict)
register(("discovery.k8s.io",), "EndpointSlice", EndpointSlice.from_dict)
register(("projectcalico.org", "crd.projectcalico.org"), "IPPool", IPPool.from_dict)
register(("projectcalico.org", "crd.projectcalico.org"), "FelixConfiguration", FelixConfiguration.from_dict)
register(("kubeproxy.config.k8s.io",), "KubeProxyConfiguration", KubeProxyConfiguration.from_dict)
register(("networking.k8s.io",), "NetworkPolicy", NetworkPolicy.from_dict)
register(("projectcalico.org", "crd.projectcalico.org"), "NetworkPolicy", CalicoNetworkPolicy.from_dict)
register(("projectcalico.org", "crd.projectcalico.org"), "GlobalNetworkPolicy", GlobalNetworkPolicy.from_dict)
register(("projectcalico.org", "crd.projectcalico.org"), "Tier", Tier.from_dict)
