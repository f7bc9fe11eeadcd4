"""Network policy objects: Kubernetes NetworkPolicy, Calico NetworkPolicy,
GlobalNetworkPolicy and Tier, parsed into one rule shape.

Both APIs are read into the same :class:`Rule` (Calico's shape: action,
protocol, source/destination :class:`EntityRule`), the way Felix converts a
Kubernetes policy into a Calico one (tier ``default``, order 1000, Allow
rules only; peers -> selectors / nets; ``endPort`` -> a port range). The
compiler then has one rule language to deal with.

>>> np = NetworkPolicy.from_dict({"kind": "NetworkPolicy",
...     "metadata": {"name": "web", "namespace": "x"},
...     "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
...              "ingress": [{"ports": [{"port": 80}]}]}})
>>> np.types, np.selector, str(np.ingress[0].destination.ports[0])
(('Ingress',), 'pod == "a"', '80')
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from calico_ebpf.errors import CalicoEBPFError, ModelError
from calico_ebpf.model import _fields as f
from calico_ebpf.model.core import meta
from calico_ebpf.model.selectors import Selector

ACTIONS = ("Allow", "Deny", "Pass", "Log")
PROTOCOL_NUMBERS = {"TCP": 6, "UDP": 17, "ICMP": 1, "SCTP": 132, "UDPLITE": 136, "ICMPV6": 58}
K8S_POLICY_ORDER = 1000.0  # where Calico puts converted Kubernetes policies in tier "default"
DEFAULT_TIER = "default"

__all__ = [
    "ACTIONS",
    "DEFAULT_TIER",
    "CalicoNetworkPolicy",
    "EntityRule",
    "GlobalNetworkPolicy",
    "NetworkPolicy",
    "PortMatch",
    "Rule",
    "Tier",
    "builtin_tiers",
]


@attrs.frozen
class PortMatch:
    """A port range ``first..last`` (inclusive), or a named port (``name`` set, range unused)."""

    first: int = 0
    last: int = 0
    name: str | None = None

    def __str__(self) -> str:
        if self.name is not None:
            return self.name
        return str(self.first) if self.first == self.last else f"{self.first}:{self.last}"


@attrs.frozen
class EntityRule:
    """One end (source or destination) of a rule; every present criterion must hold.

    ``selector`` / ``not_selector`` are canonical Calico selector text; they
    match pods only. ``namespace_selector`` None means "the policy's namespace"
    for a namespaced policy and "every namespace" for a global one.
    """

    nets: tuple[str, ...] = ()
    not_nets: tuple[str, ...] = ()
    selector: str | None = None
    not_selector: str | None = None
    namespace_selector: str | None = None
    ports: tuple[PortMatch, ...] = ()
    not_ports: tuple[PortMatch, ...] = ()


@attrs.frozen
class Rule:
    """A Calico rule. ``protocol``/``not_protocol`` are IP protocol numbers."""

    action: str
    protocol: int | None = None
    not_protocol: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    not_icmp_type: int | None = None
    not_icmp_code: int | None = None
    source: EntityRule = EntityRule()
    destination: EntityRule = EntityRule()
    ip_version: int | None = None
    where: str = ""  # "spec.ingress[0]" of the object it came from, for reports


@attrs.frozen
class Tier:
    """A policy tier: lower ``order`` first (None last); ``default_action`` Deny or Pass."""

    name: str
    order: float | None = None
    default_action: str = "Deny"

    @property
    def key(self) -> str:
        return self.name

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Tier:
        _, name, obj, _md = meta("Tier", d, namespaced=False)
        spec = f.mapping(obj, "spec", d.get("spec"))
        return cls(name, _order(obj, "spec.order", spec.get("order")),
                   f.choice(obj, "spec.defaultAction", spec.get("defaultAction"), ("Deny", "Pass"), "Deny"))


def builtin_tiers() -> dict[str, Tier]:
    """The tiers that exist without a Tier object (Calico's fixed tiers)."""
    return {"kube-admin": Tier("kube-admin", 1000.0, "Pass"),
            DEFAULT_TIER: Tier(DEFAULT_TIER, 1_000_000.0, "Deny"),
            "kube-baseline": Tier("kube-baseline", 10_000_000.0, "Pass")}


def _order(obj: str, field: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModelError(obj, field, f"expected a number, got {value!r}")
    return float(value)


def _selector(obj: str, field: str, value: Any) -> str:
    text = f.string(obj, field, value)
    try:
        return str(Selector.parse(text))
    except CalicoEBPFError as exc:
        raise ModelError(obj, field, f"bad selector {text!r}: {exc}") from None


# -- Kubernetes -------------------------------------------------------------------------------------

_K8S_OPS = ("In", "NotIn", "Exists", "DoesNotExist")


def label_selector(obj: str, field: str, value: Any) -> str:
    """A Kubernetes LabelSelector as canonical Calico selector text (``{}`` -> ``all()``)."""
    sel = f.mapping(obj, field, value)
    terms = []
    for key, val in sorted(f.labels(obj, f"{field}.matchLabels", sel.get("matchLabels")).items()):
        terms.append(f"{key} == '{val}'")
    for i, expr in enumerate(f.seq(obj, f"{field}.matchExpressions", sel.get("matchExpressions"))):
        here = f"{field}.matchExpressions[{i}]"
        expr = f.mapping(obj, here, expr)
        key = f.string(obj, f"{here}.key", expr.get("key"))
        if not key:
            raise ModelError(obj, f"{here}.key", "is required")
        op = expr.get("operator")
        if op not in _K8S_OPS:
            raise ModelError(obj, f"{here}.operator", f"{op!r} is not one of {', '.join(_K8S_OPS)}")
        values = [f.string(obj, f"{here}.values[{j}]", v) for j, v in enumerate(f.seq(obj, f"{here}.values", expr.get("values")))]
        if op in ("In", "NotIn"):
            if not values:
                raise ModelError(obj, f"{here}.values", f"must be non-empty for {op}")
            inner = ", ".join(f"'{v}'" for v in values)
            terms.append(f"{key} {'in' if op == 'In' else 'not in'} {{{inner}}}")
        else:
            if values:
                raise ModelError(obj, f"{here}.values", f"must be empty for {op}")
            terms.append(f"has({key})" if op == "Exists" else f"!has({key})")
    return _selector(obj, field, " && ".join(terms))


def _k8s_ports(obj: str, field: str, value: Any) -> list[tuple[int, PortMatch | None]]:
    """(protocol number, port or None for "every port") per entry of a rule's ``ports``."""
    out = []
    for i, p in enumerate(f.seq(obj, field, value)):
        here = f"{field}[{i}]"
        p = f.mapping(obj, here, p)
        proto = PROTOCOL_NUMBERS[f.choice(obj, f"{here}.protocol", p.get("protocol"), ("TCP", "UDP", "SCTP"), "TCP")]
        port, end = p.get("port"), p.get("endPort")
        if port is None:
            if end is not None:
                raise ModelError(obj, f"{here}.endPort", "requires a numeric port")
            out.append((proto, None))
        elif isinstance(port, str) and not port.isdigit():
            if end is not None:
                raise ModelError(obj, f"{here}.endPort", "requires a numeric port, not a named one")
            out.append((proto, PortMatch(name=_port_name(obj, f"{here}.port", port))))
        else:
            first = f.port(obj, f"{here}.port", int(port) if isinstance(port, str) else port)
            last = first if end is None else f.port(obj, f"{here}.endPort", end)
            if last < first:
                raise ModelError(obj, f"{here}.endPort", f"{last} is below port {first}")
            out.append((proto, PortMatch(first, last)))
    return out


def _port_name(obj: str, field: str, name: str) -> str:
    if not name or len(name) > 15 or not all(c.isalnum() or c == "-" for c in name):
        raise ModelError(obj, field, f"{name!r} is neither a port number nor a valid port name")
    return name


def _k8s_peer(obj: str, field: str, value: Any, namespace: str) -> EntityRule:
    peer = f.mapping(obj, field, value)
    block = peer.get("ipBlock")
    if block is not None:
        if peer.get("podSelector") is not None or peer.get("namespaceSelector") is not None:
            raise ModelError(obj, field, "ipBlock cannot be combined with a selector")
        block = f.mapping(obj, f"{field}.ipBlock", block)
        if block.get("cidr") is None:
            raise ModelError(obj, f"{field}.ipBlock.cidr", "is required")
        cidr = f.cidr(obj, f"{field}.ipBlock.cidr", block.get("cidr"))
        excepts = tuple(f.cidr(obj, f"{field}.ipBlock.except[{j}]", c)
                        for j, c in enumerate(f.seq(obj, f"{field}.ipBlock.except", block.get("except"))))
        return EntityRule(nets=(cidr,), not_nets=excepts)
    pod_sel, ns_sel = peer.get("podSelector"), peer.get("namespaceSelector")
    if pod_sel is None and ns_sel is None:
        raise ModelError(obj, field, "a peer needs podSelector, namespaceSelector or ipBlock")
    selector = label_selector(obj, f"{field}.podSelector", pod_sel) if pod_sel is not None else "all()"
    if ns_sel is None:
        # Absent namespaceSelector: the policy's own namespace, said explicitly so the
        # entity means the same wherever it is evaluated.
        return EntityRule(selector=selector, namespace_selector=_selector(
            obj, field, f"kubernetes.io/metadata.name == '{namespace}'"))
    return EntityRule(selector=selector, namespace_selector=label_selector(obj, f"{field}.namespaceSelector", ns_sel))


def _k8s_rules(obj: str, field: str, value: Any, namespace: str, ingress: bool) -> tuple[Rule, ...]:
    # One Calico rule per (peer, port entry): peers and ports are each ORed, and
    # splitting keeps an ipBlock's except local to its own peer.
    rules = []
    for i, r in enumerate(f.seq(obj, field, value)):
        here = f"{field}[{i}]"
        r = f.mapping(obj, here, r)
        peer_field = "from" if ingress else "to"
        peers = [_k8s_peer(obj, f"{here}.{peer_field}[{j}]", p, namespace)
                 for j, p in enumerate(f.seq(obj, f"{here}.{peer_field}", r.get(peer_field)))] or [EntityRule()]
        ports = _k8s_ports(obj, f"{here}.ports", r.get("ports")) or [(None, None)]
        for peer in peers:
            for proto, port in ports:
                dest_ports = (port,) if port is not None else ()
                if ingress:
                    src, dst = peer, EntityRule(ports=dest_ports)
                else:
                    src, dst = EntityRule(), attrs.evolve(peer, ports=dest_ports)
                rules.append(Rule("Allow", protocol=proto, source=src, destination=dst, where=here))
    return tuple(rules)


@attrs.frozen
class NetworkPolicy:
    """networking.k8s.io/v1 NetworkPolicy, converted to Calico rules (Allow only).

    ``types`` follows the API server's defaulting: Ingress always, Egress when
    there is an ``egress`` section.
    """

    namespace: str
    name: str
    selector: str
    types: tuple[str, ...]
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    order: float | None = K8S_POLICY_ORDER
    tier: str = DEFAULT_TIER

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def label(self) -> str:
        return f"NetworkPolicy {self.key}"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NetworkPolicy:
        ns, name, obj, _md = meta("NetworkPolicy", d, namespaced=True)
        spec = f.mapping(obj, "spec", d.get("spec"))
        if spec.get("podSelector") is None:
            raise ModelError(obj, "spec.podSelector", "is required (use {} to select every pod)")
        selector = label_selector(obj, "spec.podSelector", spec.get("podSelector"))
        types = tuple(f.choice(obj, f"spec.policyTypes[{i}]", t, ("Ingress", "Egress"), "")
                      for i, t in enumerate(f.seq(obj, "spec.policyTypes", spec.get("policyTypes"))))
        if "" in types:
            raise ModelError(obj, "spec.policyTypes", "entries must be Ingress or Egress")
        if not types:
            types = ("Ingress", "Egress") if spec.get("egress") is not None else ("Ingress",)
        return cls(ns, name, selector, types,
                   _k8s_rules(obj, "spec.ingress", spec.get("ingress"), ns, True),
                   _k8s_rules(obj, "spec.egress", spec.get("egress"), ns, False))


# -- Calico -----------------------------------------------------------------------------------------


def _protocol(obj: str, field: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= 255:
            raise ModelError(obj, field, f"{value} is not a protocol number 1..255")
        return value
    if isinstance(value, str):
        if value.isdigit():
            return _protocol(obj, field, int(value))
        number = PROTOCOL_NUMBERS.get(value.upper())
        if number is not None:
            return number
    raise ModelError(obj, field, f"{value!r} is not TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or 1..255")


def _calico_ports(obj: str, field: str, value: Any) -> tuple[PortMatch, ...]:
    out = []
    entries = f.seq(obj, field, value)
    if len(entries) > 50:
        raise ModelError(obj, field, f"at most 50 entries, got {len(entries)}")
    for i, p in enumerate(entries):
        here = f"{field}[{i}]"
        if isinstance(p, int) and not isinstance(p, bool):
            port = f.integer(obj, here, p, lo=0, hi=65535)
            out.append(PortMatch(port, port))
        elif isinstance(p, str) and ":" in p:
            lo, _, hi = p.partition(":")
            if not (lo.isdigit() and hi.isdigit()) or not 0 <= int(lo) <= int(hi) <= 65535:
                raise ModelError(obj, here, f"{p!r} is not a port range 'min:max' within 0..65535")
            out.append(PortMatch(int(lo), int(hi)))
        elif isinstance(p, str) and p.isdigit():
            out.append(PortMatch(*(2 * (f.integer(obj, here, int(p), lo=0, hi=65535),))))
        elif isinstance(p, str):
            out.append(PortMatch(name=_port_name(obj, here, p)))
        else:
            raise ModelError(obj, here, f"{p!r} is not a port, a range or a port name")
    return tuple(out)


def _entity(obj: str, field: str, value: Any) -> EntityRule:
    e = f.mapping(obj, field, value)
    opt_sel = {k: (_selector(obj, f"{field}.{k}", e.get(k)) if e.get(k) is not None else None)
               for k in ("selector", "notSelector", "namespaceSelector")}
    return EntityRule(
        nets=tuple(f.cidr(obj, f"{field}.nets[{i}]", c) for i, c in enumerate(f.seq(obj, f"{field}.nets", e.get("nets")))),
        not_nets=tuple(f.cidr(obj, f"{field}.notNets[{i}]", c)
                       for i, c in enumerate(f.seq(obj, f"{field}.notNets", e.get("notNets")))),
        selector=opt_sel["selector"],
        not_selector=opt_sel["notSelector"],
        namespace_selector=opt_sel["namespaceSelector"],
        ports=_calico_ports(obj, f"{field}.ports", e.get("ports")),
        not_ports=_calico_ports(obj, f"{field}.notPorts", e.get("notPorts")),
    )


def _icmp(obj: str, field: str, value: Any) -> tuple[int | None, int | None]:
    if value is None:
        return None, None
    m = f.mapping(obj, field, value)
    typ = f.integer(obj, f"{field}.type", m.get("type"), None, 0, 254)
    code = f.integer(obj, f"{field}.code", m.get("code"), None, 0, 255)
    if code is not None and typ is None:
        raise ModelError(obj, f"{field}.code", "requires a type")
    return typ, code


def _calico_rule(obj: str, field: str, value: Any) -> Rule:
    r = f.mapping(obj, field, value)
    action = f.choice(obj, f"{field}.action", r.get("action"), ACTIONS, "")
    if not action:
        raise ModelError(obj, f"{field}.action", f"is required (one of {', '.join(ACTIONS)})")
    ip_version = r.get("ipVersion")
    if ip_version not in (None, 4, 6):
        raise ModelError(obj, f"{field}.ipVersion", f"{ip_version!r} is neither 4 nor 6")
    proto = _protocol(obj, f"{field}.protocol", r.get("protocol"))
    rule = Rule(
        action,
        protocol=proto,
        not_protocol=_protocol(obj, f"{field}.notProtocol", r.get("notProtocol")),
        source=_entity(obj, f"{field}.source", r.get("source")),
        destination=_entity(obj, f"{field}.destination", r.get("destination")),
        ip_version=ip_version,
        where=field,
    )
    typ, code = _icmp(obj, f"{field}.icmp", r.get("icmp"))
    ntyp, ncode = _icmp(obj, f"{field}.notICMP", r.get("notICMP"))
    if (typ is not None or ntyp is not None) and proto not in (1, 58):
        raise ModelError(obj, f"{field}.icmp", "requires protocol ICMP or ICMPv6")
    for end in ("source", "destination"):
        ent = getattr(rule, end)
        if (ent.ports or ent.not_ports) and proto not in (6, 17, 132):
            raise ModelError(obj, f"{field}.{end}.ports", "require protocol TCP, UDP or SCTP")
    return attrs.evolve(rule, icmp_type=typ, icmp_code=code, not_icmp_type=ntyp, not_icmp_code=ncode)


def _calico_spec(kind: str, d: Mapping[str, Any], namespaced: bool) -> dict[str, Any]:
    ns, name, obj, _md = meta(kind, d, namespaced=namespaced)
    spec = f.mapping(obj, "spec", d.get("spec"))
    ingress = tuple(_calico_rule(obj, f"spec.ingress[{i}]", r) for i, r in enumerate(f.seq(obj, "spec.ingress", spec.get("ingress"))))
    egress = tuple(_calico_rule(obj, f"spec.egress[{i}]", r) for i, r in enumerate(f.seq(obj, "spec.egress", spec.get("egress"))))
    types = tuple(f.choice(obj, f"spec.types[{i}]", t, ("Ingress", "Egress"), "Ingress")
                  for i, t in enumerate(f.seq(obj, "spec.types", spec.get("types"))))
    if not types:
        # Calico's defaulting, unlike Kubernetes': egress-only rules mean an egress policy.
        types = ("Egress",) if egress and not ingress else ("Ingress", "Egress") if egress else ("Ingress",)
    out: dict[str, Any] = {
        "name": name, "selector": _selector(obj, "spec.selector", spec.get("selector")),
        "types": types, "ingress": ingress, "egress": egress,
        "order": _order(obj, "spec.order", spec.get("order")),
        "tier": f.string(obj, "spec.tier", spec.get("tier")) or DEFAULT_TIER}
    if namespaced:
        out["namespace"] = ns
    elif spec.get("namespaceSelector") is not None:
        out["namespace_selector"] = _selector(obj, "spec.namespaceSelector", spec.get("namespaceSelector"))
    return out


@attrs.frozen
class CalicoNetworkPolicy:
    """projectcalico.org/v3 NetworkPolicy: selects pods of its namespace with a Calico selector."""

    namespace: str
    name: str
    selector: str
    types: tuple[str, ...]
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    order: float | None = None
    tier: str = DEFAULT_TIER

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def label(self) -> str:
        return f"NetworkPolicy {self.key} (projectcalico.org/v3)"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CalicoNetworkPolicy:
        return cls(**_calico_spec("NetworkPolicy", d, namespaced=True))


@attrs.frozen
class GlobalNetworkPolicy:
    """projectcalico.org/v3 GlobalNetworkPolicy: pods of every namespace (narrowed by ``namespace_selector``)."""

    name: str
    selector: str
    types: tuple[str, ...]
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    order: float | None = None
    tier: str = DEFAULT_TIER
    namespace_selector: str | None = None
    namespace: str | None = None  # rules of a global policy are not namespace-scoped

    @property
    def key(self) -> str:
        return self.name

    @property
    def label(self) -> str:
        return f"GlobalNetworkPolicy {self.name}"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GlobalNetworkPolicy:
        return cls(**_calico_spec("GlobalNetworkPolicy", d, namespaced=False))
