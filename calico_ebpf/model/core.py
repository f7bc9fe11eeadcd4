"""Core v1 objects: Node, Service, Pod, Namespace.

Each class has ``from_dict(d)`` that validates an API object (as parsed from
YAML or returned by the API server) and raises ModelError naming the object
and the field. Defaults are the API server's, so a manifest that was never
through an API server means the same as one read back from it.

>>> svc = Service.from_dict({"kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
...                          "spec": {"clusterIP": "172.30.0.10", "ports": [{"port": 80}]}})
>>> svc.key, svc.ports[0].protocol, svc.external_traffic_policy
('shop/web', 'TCP', 'Cluster')
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from calico_ebpf.errors import ModelError
from calico_ebpf.model import _fields as f
from calico_ebpf.model._ip import ip_family

PROTOCOLS = ("TCP", "UDP", "SCTP")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds, the API server's default for ClientIP affinity


def meta(kind: str, d: Mapping[str, Any], namespaced: bool) -> tuple[str, str, str, Mapping[str, Any]]:
    """(namespace, name, label, metadata) of an API object; label is ``"Kind ns/name"``."""
    md = f.mapping(f"{kind} <unnamed>", "metadata", d.get("metadata"))
    name = md.get("name")
    if not isinstance(name, str) or not name:
        raise ModelError(f"{kind} <unnamed>", "metadata.name", "is required")
    if namespaced:
        ns = f.string(f"{kind} {name}", "metadata.namespace", md.get("namespace")) or "default"
        return ns, name, f"{kind} {ns}/{name}", md
    return "", name, f"{kind} {name}", md


@attrs.frozen
class NodeAddress:
    type: str  # InternalIP, ExternalIP, Hostname, ...
    address: str  # canonical IP text for *IP types, raw text otherwise


@attrs.frozen(unsafe_hash=False)
class Node:
    """A v1 Node: its name, addresses, pod CIDRs and labels.

    >>> n = Node.from_dict({"kind": "Node", "metadata": {"name": "n1"},
    ...     "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"}]}})
    >>> n.ips()
    ('192.168.0.2',)
    """

    name: str
    addresses: tuple[NodeAddress, ...] = ()
    pod_cidrs: tuple[str, ...] = ()
    labels: dict[str, str] = attrs.field(factory=dict)

    @property
    def key(self) -> str:
        return self.name

    def ips(self, family: int | None = None) -> tuple[str, ...]:
        """The node's IP addresses (all types but Hostname/DNS), first seen first, no duplicates."""
        seen: dict[str, None] = {}
        for a in self.addresses:
            if a.type.endswith("IP") and (family is None or ip_family(a.address) == family):
                seen.setdefault(a.address)
        return tuple(seen)

    def primary_ip(self, family: int = 4) -> str | None:
        """The first InternalIP of the family (else any IP), as kube-proxy picks the node IP."""
        for a in self.addresses:
            if a.type == "InternalIP" and ip_family(a.address) == family:
                return a.address
        ips = self.ips(family)
        return ips[0] if ips else None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Node:
        _, name, obj, md = meta("Node", d, namespaced=False)
        spec = f.mapping(obj, "spec", d.get("spec"))
        status = f.mapping(obj, "status", d.get("status"))
        addresses = []
        for i, a in enumerate(f.seq(obj, "status.addresses", status.get("addresses"))):
            field = f"status.addresses[{i}]"
            a = f.mapping(obj, field, a)
            typ = f.string(obj, f"{field}.type", a.get("type"))
            raw = f.string(obj, f"{field}.address", a.get("address"))
            if typ.endswith("IP"):
                raw = f.ip(obj, f"{field}.address", raw)
            addresses.append(NodeAddress(typ, raw))
        cidrs = [f.cidr(obj, f"spec.podCIDRs[{i}]", c) for i, c in enumerate(f.seq(obj, "spec.podCIDRs", spec.get("podCIDRs")))]
        if not cidrs and spec.get("podCIDR"):
            cidrs = [f.cidr(obj, "spec.podCIDR", spec.get("podCIDR"))]
        return cls(name, tuple(addresses), tuple(cidrs), f.labels(obj, "metadata.labels", md.get("labels")))


@attrs.frozen
class ServicePort:
    """One port of a Service. ``node_port`` is None when unset (or 0)."""

    name: str
    protocol: str
    port: int
    target_port: int | str | None = None
    node_port: int | None = None


@attrs.frozen
class LoadBalancerIngress:
    ip: str
    ip_mode: str = "VIP"  # VIP or Proxy (LoadBalancerIPMode); Proxy IPs are not programmed


@attrs.frozen(unsafe_hash=False)
class Service:
    """A v1 Service, with API server defaults applied.

    ``cluster_ips`` is empty for headless services (clusterIP ``None``).
    ``affinity_timeout`` is 0 unless sessionAffinity is ClientIP.
    """

    namespace: str
    name: str
    type: str = "ClusterIP"
    cluster_ips: tuple[str, ...] = ()
    ports: tuple[ServicePort, ...] = ()
    external_ips: tuple[str, ...] = ()
    lb_ingress: tuple[LoadBalancerIngress, ...] = ()
    lb_source_ranges: tuple[str, ...] = ()
    external_traffic_policy: str = "Cluster"
    internal_traffic_policy: str = "Cluster"
    session_affinity: str = "None"
    affinity_timeout: int = 0
    health_check_node_port: int | None = None
    selector: dict[str, str] = attrs.field(factory=dict)
    labels: dict[str, str] = attrs.field(factory=dict)
    annotations: dict[str, str] = attrs.field(factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def headless(self) -> bool:
        return not self.cluster_ips

    @property
    def ignored(self) -> bool:
        """Headless and ExternalName services get no dataplane state, as in kube-proxy."""
        return self.type == "ExternalName" or self.headless

    @property
    def externally_accessible(self) -> bool:
        """Whether externalTrafficPolicy applies (kube-proxy's ExternalPolicyLocal rule)."""
        return self.type in ("NodePort", "LoadBalancer") or bool(self.external_ips)

    @property
    def external_policy_local(self) -> bool:
        return self.externally_accessible and self.external_traffic_policy == "Local"

    @property
    def internal_policy_local(self) -> bool:
        return self.internal_traffic_policy == "Local"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Service:
        ns, name, obj, md = meta("Service", d, namespaced=True)
        spec = f.mapping(obj, "spec", d.get("spec"))
        status = f.mapping(obj, "status", d.get("status"))
        typ = f.choice(obj, "spec.type", spec.get("type"), SERVICE_TYPES, "ClusterIP")

        cluster_ips: list[str] = []
        raw_ips = f.seq(obj, "spec.clusterIPs", spec.get("clusterIPs"))
        field = "spec.clusterIPs"
        if not raw_ips and spec.get("clusterIP") not in (None, ""):
            raw_ips, field = [spec.get("clusterIP")], "spec.clusterIP"
        for i, raw in enumerate(raw_ips):
            if raw == "None":  # headless
                cluster_ips = []
                break
            where = field if field == "spec.clusterIP" else f"{field}[{i}]"
            cluster_ips.append(f.ip(obj, where, raw))
        if typ == "ExternalName":
            cluster_ips = []

        ports = []
        seen: set[tuple[int, str]] = set()
        for i, p in enumerate(f.seq(obj, "spec.ports", spec.get("ports"))):
            field = f"spec.ports[{i}]"
            p = f.mapping(obj, field, p)
            number = f.port(obj, f"{field}.port", p.get("port"))
            proto = f.choice(obj, f"{field}.protocol", p.get("protocol"), PROTOCOLS, "TCP")
            if (number, proto) in seen:
                raise ModelError(obj, f"{field}.port", f"{number}/{proto} is listed twice")
            seen.add((number, proto))
            target = p.get("targetPort")
            if target is not None and not isinstance(target, str):
                target = f.port(obj, f"{field}.targetPort", target)
            node_port = p.get("nodePort")
            node_port = None if node_port in (None, 0) else f.port(obj, f"{field}.nodePort", node_port)
            ports.append(ServicePort(f.string(obj, f"{field}.name", p.get("name")), proto, number, target, node_port))

        external_ips = tuple(
            f.ip(obj, f"spec.externalIPs[{i}]", x) for i, x in enumerate(f.seq(obj, "spec.externalIPs", spec.get("externalIPs")))
        )
        lb = f.mapping(obj, "status.loadBalancer", status.get("loadBalancer"))
        ingress = []
        for i, item in enumerate(f.seq(obj, "status.loadBalancer.ingress", lb.get("ingress"))):
            field = f"status.loadBalancer.ingress[{i}]"
            item = f.mapping(obj, field, item)
            if item.get("ip") in (None, ""):
                continue  # hostname-only ingress: nothing to program
            mode = f.choice(obj, f"{field}.ipMode", item.get("ipMode"), ("VIP", "Proxy"), "VIP")
            ingress.append(LoadBalancerIngress(f.ip(obj, f"{field}.ip", item.get("ip")), mode))
        ranges = tuple(
            f.cidr(obj, f"spec.loadBalancerSourceRanges[{i}]", r)
            for i, r in enumerate(f.seq(obj, "spec.loadBalancerSourceRanges", spec.get("loadBalancerSourceRanges")))
        )

        affinity = f.choice(obj, "spec.sessionAffinity", spec.get("sessionAffinity"), ("None", "ClientIP"), "None")
        timeout = 0
        if affinity == "ClientIP":
            cfg = f.mapping(obj, "spec.sessionAffinityConfig", spec.get("sessionAffinityConfig"))
            client = f.mapping(obj, "spec.sessionAffinityConfig.clientIP", cfg.get("clientIP"))
            timeout = f.integer(obj, "spec.sessionAffinityConfig.clientIP.timeoutSeconds", client.get("timeoutSeconds"),
                                DEFAULT_AFFINITY_TIMEOUT, 1, 86400)
        hc = spec.get("healthCheckNodePort")
        hc = None if hc in (None, 0) else f.port(obj, "spec.healthCheckNodePort", hc)
        return cls(
            namespace=ns,
            name=name,
            type=typ,
            cluster_ips=tuple(cluster_ips),
            ports=tuple(ports),
            external_ips=external_ips,
            lb_ingress=tuple(ingress),
            lb_source_ranges=ranges,
            external_traffic_policy=f.choice(obj, "spec.externalTrafficPolicy", spec.get("externalTrafficPolicy"),
                                             ("Cluster", "Local"), "Cluster"),
            internal_traffic_policy=f.choice(obj, "spec.internalTrafficPolicy", spec.get("internalTrafficPolicy"),
                                             ("Cluster", "Local"), "Cluster"),
            session_affinity=affinity,
            affinity_timeout=timeout,
            health_check_node_port=hc,
            selector=f.labels(obj, "spec.selector", spec.get("selector")),
            labels=f.labels(obj, "metadata.labels", md.get("labels")),
            annotations=f.labels(obj, "metadata.annotations", md.get("annotations")),
        )


@attrs.frozen(unsafe_hash=False)
class Pod:
    """A v1 Pod: where it runs and its IPs. Host-network pods own no IP of their own."""

    namespace: str
    name: str
    node_name: str | None = None
    pod_ips: tuple[str, ...] = ()
    labels: dict[str, str] = attrs.field(factory=dict)
    host_network: bool = False
    phase: str = "Running"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Pod:
        ns, name, obj, md = meta("Pod", d, namespaced=True)
        spec = f.mapping(obj, "spec", d.get("spec"))
        status = f.mapping(obj, "status", d.get("status"))
        ips: dict[str, None] = {}
        for i, item in enumerate(f.seq(obj, "status.podIPs", status.get("podIPs"))):
            item = f.mapping(obj, f"status.podIPs[{i}]", item)
            ips.setdefault(f.ip(obj, f"status.podIPs[{i}].ip", item.get("ip")))
        if status.get("podIP") not in (None, ""):
            ips = {f.ip(obj, "status.podIP", status.get("podIP")): None, **ips}
        node = f.string(obj, "spec.nodeName", spec.get("nodeName")) or None
        return cls(
            namespace=ns,
            name=name,
            node_name=node,
            pod_ips=tuple(ips),
            labels=f.labels(obj, "metadata.labels", md.get("labels")),
            host_network=f.boolean(obj, "spec.hostNetwork", spec.get("hostNetwork"), False),
            phase=f.string(obj, "status.phase", status.get("phase"), "Running"),
        )


@attrs.frozen(unsafe_hash=False)
class Namespace:
    name: str
    labels: dict[str, str] = attrs.field(factory=dict)

    @property
    def key(self) -> str:
        return self.name

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Namespace:
        _, name, obj, md = meta("Namespace", d, namespaced=False)
        labels = f.labels(obj, "metadata.labels", md.get("labels"))
        # The API server always sets this label; selectors rely on it.
        labels.setdefault("kubernetes.io/metadata.name", name)
        return cls(name, labels)


__all__ = [
    "DEFAULT_AFFINITY_TIMEOUT",
    "PROTOCOLS",
    "LoadBalancerIngress",
    "Namespace",
    "Node",
    "NodeAddress",
    "Pod",
    "Service",
    "ServicePort",
]
