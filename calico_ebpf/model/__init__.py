"""L2 model: Kubernetes and Calico objects as validated, frozen attrs classes.

>>> from calico_ebpf.model import ClusterState
>>> state = ClusterState.from_dicts([{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
...     "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"}]}}])
>>> state.nodes["n1"].ips()
('192.168.0.2',)
"""

from calico_ebpf.model.calico import (
    ConntrackTimeouts,
    FailsafePort,
    FelixConfiguration,
    IPPool,
    parse_duration,
)
from calico_ebpf.model.core import (
    DEFAULT_AFFINITY_TIMEOUT,
    LoadBalancerIngress,
    Namespace,
    Node,
    NodeAddress,
    Pod,
    Service,
    ServicePort,
)
from calico_ebpf.model.discovery import Endpoint, EndpointConditions, EndpointPort, EndpointSlice
from calico_ebpf.model.kubeproxy import KubeProxyConfiguration
from calico_ebpf.model.registry import register
from calico_ebpf.model.state import ClusterState

__all__ = [
    "DEFAULT_AFFINITY_TIMEOUT",
    "ClusterState",
    "ConntrackTimeouts",
    "Endpoint",
    "EndpointConditions",
    "EndpointPort",
    "EndpointSlice",
    "FailsafePort",
    "FelixConfiguration",
    "IPPool",
    "KubeProxyConfiguration",
    "LoadBalancerIngress",
    "Namespace",
    "Node",
    "NodeAddress",
    "Pod",
    "Service",
    "ServicePort",
    "parse_duration",
    "register",
]
