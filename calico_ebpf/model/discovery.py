"""discovery.k8s.io/v1 EndpointSlice.

Conditions are stored with the API's nil defaults applied (ready and serving
unset mean true, terminating unset means false), so consumers never deal
with three-valued logic.

>>> s = EndpointSlice.from_dict({"kind": "EndpointSlice",
...     "metadata": {"name": "web-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
...     "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
...     "endpoints": [{"addresses": ["10.0.1.5"], "nodeName": "n1"}]})
>>> s.service_key, s.endpoints[0].conditions.ready, s.ports[0].protocol
('shop/web', True, 'TCP')
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from calico_ebpf.errors import ModelError
from calico_ebpf.model import _fields as f
from calico_ebpf.model._ip import parse_ip
from calico_ebpf.model.core import PROTOCOLS, meta

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")


@attrs.frozen
class EndpointConditions:
    ready: bool = True
    serving: bool = True
    terminating: bool = False


@attrs.frozen
class Endpoint:
    addresses: tuple[str, ...]
    conditions: EndpointConditions = EndpointConditions()
    node_name: str | None = None
    zone: str | None = None
    target_pod: str | None = None  # "ns/name" when targetRef is a Pod


@attrs.frozen
class EndpointPort:
    name: str = ""
    port: int | None = None  # None: "all ports" (unusable for a service port)
    protocol: str = "TCP"


@attrs.frozen(unsafe_hash=False)
class EndpointSlice:
    namespace: str
    name: str
    service_name: str | None
    address_type: str
    endpoints: tuple[Endpoint, ...] = ()
    ports: tuple[EndpointPort, ...] = ()
    labels: dict[str, str] = attrs.field(factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def service_key(self) -> str | None:
        """``ns/service`` this slice belongs to, or None without the service-name label."""
        return f"{self.namespace}/{self.service_name}" if self.service_name else None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EndpointSlice:
        ns, name, obj, md = meta("EndpointSlice", d, namespaced=True)
        labels = f.labels(obj, "metadata.labels", md.get("labels"))
        address_type = d.get("addressType")
        if address_type is None:
            raise ModelError(obj, "addressType", "is required")
        address_type = f.choice(obj, "addressType", address_type, ADDRESS_TYPES, "IPv4")

        want_v6 = address_type == "IPv6"
        endpoints = [_endpoint(obj, ns, f"endpoints[{i}]", e, address_type, want_v6)
                     for i, e in enumerate(f.seq(obj, "endpoints", d.get("endpoints")))]

        ports = []
        for i, p in enumerate(f.seq(obj, "ports", d.get("ports"))):
            field = f"ports[{i}]"
            p = f.mapping(obj, field, p)
            number = p.get("port")
            number = None if number is None else f.port(obj, f"{field}.port", number)
            ports.append(EndpointPort(
                f.string(obj, f"{field}.name", p.get("name")),
                number,
                f.choice(obj, f"{field}.protocol", p.get("protocol"), PROTOCOLS, "TCP"),
            ))
        return cls(ns, name, labels.get(SERVICE_NAME_LABEL) or None, address_type, tuple(endpoints), tuple(ports), labels)


_DEFAULT_CONDITIONS = EndpointConditions()
_SHARED_CONDITIONS: dict[tuple[bool, bool, bool], EndpointConditions] = {}


def _conditions(obj: str, field: str, value: Any) -> EndpointConditions:
    if value is None:
        return _DEFAULT_CONDITIONS
    c = f.mapping(obj, f"{field}.conditions", value)
    key = (f.boolean(obj, f"{field}.conditions.ready", c.get("ready"), True),
           f.boolean(obj, f"{field}.conditions.serving", c.get("serving"), True),
           f.boolean(obj, f"{field}.conditions.terminating", c.get("terminating"), False))
    # Only eight combinations exist: share them (large slices, many endpoints).
    shared = _SHARED_CONDITIONS.get(key)
    if shared is None:
        shared = _SHARED_CONDITIONS[key] = EndpointConditions(*key)
    return shared


def _endpoint(obj: str, ns: str, field: str, e: Any, address_type: str, want_v6: bool) -> Endpoint:
    # Hot path for big clusters: field paths are only spelled out on error.
    e = f.mapping(obj, field, e)
    raw = f.seq(obj, f"{field}.addresses", e.get("addresses"))
    if not raw:
        raise ModelError(obj, f"{field}.addresses", "must list at least one address")
    if address_type == "FQDN":
        addrs = tuple(f.string(obj, f"{field}.addresses[{j}]", a) for j, a in enumerate(raw))
    else:
        parsed = []
        for j, a in enumerate(raw):
            ip = parse_ip(a) if isinstance(a, str) else None
            if ip is None:
                raise ModelError(obj, f"{field}.addresses[{j}]", f"{a!r} is not a valid IP address")
            if (":" in ip) != want_v6:
                raise ModelError(obj, f"{field}.addresses[{j}]", f"{ip} is not an {address_type} address")
            parsed.append(ip)
        addrs = tuple(parsed)
    ref = e.get("targetRef")
    pod = None
    if ref is not None:
        ref = f.mapping(obj, f"{field}.targetRef", ref)
        if ref.get("kind") == "Pod" and ref.get("name"):
            pod = f"{ref.get('namespace') or ns}/{ref['name']}"
    node, zone = e.get("nodeName"), e.get("zone")
    if node is not None and not isinstance(node, str):
        f.string(obj, f"{field}.nodeName", node)
    if zone is not None and not isinstance(zone, str):
        f.string(obj, f"{field}.zone", zone)
    return Endpoint(addrs, _conditions(obj, field, e.get("conditions")), node or None, zone or None, pod)


__all__ = ["SERVICE_NAME_LABEL", "Endpoint", "EndpointConditions", "EndpointPort", "EndpointSlice"]
