"""Policy for one endpoint and direction: the ordered rule list and its IP sets.

Evaluation order is Calico's (``felix/bpf/polprog``): tiers by order, inside
a tier the policies selecting the endpoint for the direction by order then
name, rules as listed; a tier that applies and reaches its end applies its
default action (Deny, or Pass to the next tier). After the tiers come the
profiles: Calico gives every Kubernetes pod the profile ``kns.<namespace>``
that allows everything, so a pod no policy selects (or one passed through
every tier) is allowed -- which is Kubernetes' "not isolated" too.

Rule selectors, namespace selectors and named ports become IP sets (set id ->
member /32s, or /32+protocol+port for named ports), written to the LPM map
``cebpf_ipsets`` and looked up by the program; membership can change without
recompiling the program.

>>> from calico_ebpf.model import ClusterState
>>> state = ClusterState.from_dicts([
...     {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "x", "labels": {"pod": "a"}},
...      "status": {"podIP": "10.0.0.2"}},
...     {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "x"},
...      "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}}])
>>> ep = endpoint_policy(state, state.pods["x/a"], "ingress")
>>> [str(s) for s in ep.steps]
['default/NetworkPolicy x/p spec.ingress[0]: Allow', 'default: end of tier: Deny', 'profile: Allow']
>>> [(s.description, [str(m.cidr) for m in s.members]) for s in ep.ipsets.values()]
[('selector all() in namespaces(kubernetes.io/metadata.name == "x")', ['10.0.0.2/32'])]
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from calico_ebpf.errors import ModelError, UnsupportedError
from calico_ebpf.maps.ipsets import IPSetKey
from calico_ebpf.model.core import Namespace, Pod
from calico_ebpf.model.policy import EntityRule, Rule, Tier, builtin_tiers
from calico_ebpf.model.selectors import Selector

__all__ = [
    "DIRECTIONS",
    "EndpointPolicy",
    "IPSet",
    "NamedPort",
    "Step",
    "calico_labels",
    "endpoint_policy",
    "policies_of",
]

DIRECTIONS = ("ingress", "egress")
POLICY_KINDS = ("NetworkPolicy", "CalicoNetworkPolicy", "GlobalNetworkPolicy")
SCTP = 132
# Longer CIDR lists become an IP set: one LPM lookup instead of a compare per CIDR.
INLINE_NETS_MAX = 8


@attrs.frozen
class NamedPort:
    """A container port a pod declares: ``name``, IP protocol number, port number."""

    name: str
    protocol: int
    port: int


@attrs.frozen
class IPSet:
    """An IP set: its 64-bit id, what it stands for, and its members (map keys)."""

    id: int
    description: str
    members: frozenset[IPSetKey]


@attrs.frozen
class Step:
    """One entry of an endpoint's ordered rule list.

    ``kind`` is ``"rule"`` (``rule`` set), ``"tier-end"`` (the tier's default
    action) or ``"profile"`` (the final allow). ``sets`` maps the rule's
    set-backed criteria (``"source.selector"``, ``"destination.ports[1]"``...)
    to IP set ids. ``matches_nothing`` says why a rule was compiled to never
    match (SCTP), instead of being widened.
    """

    kind: str
    tier: str
    action: str
    policy: str = ""
    rule: Rule | None = None
    sets: tuple[tuple[str, int], ...] = ()
    matches_nothing: str | None = None

    def set_id(self, criterion: str) -> int | None:
        return dict(self.sets).get(criterion)

    def __str__(self) -> str:
        if self.kind == "profile":
            return f"profile: {self.action}"
        if self.kind == "tier-end":
            return f"{self.tier}: end of tier: {self.action}"
        rule = self.rule
        assert rule is not None
        extra = f" (matches nothing: {self.matches_nothing})" if self.matches_nothing else ""
        return f"{self.tier}/{self.policy} {rule.where}: {self.action}{extra}"


@attrs.frozen
class EndpointPolicy:
    """What policy means for one pod in one direction: ``steps`` in order, the ``ipsets`` they use."""

    endpoint: str
    direction: str
    steps: tuple[Step, ...]
    ipsets: dict[int, IPSet]
    unsupported: tuple[UnsupportedError, ...] = ()

    @property
    def isolated(self) -> bool:
        """True when some policy applies (otherwise only the profile's allow is left)."""
        return any(s.kind != "profile" for s in self.steps)


def policies_of(state: Any) -> list[Any]:
    """Every policy object of the state (Kubernetes and Calico kinds)."""
    return [p for kind in POLICY_KINDS for p in state.of_kind(kind).values()]


def _sort_key(order: float | None, name: str) -> tuple[bool, float, str]:
    # Missing order sorts last; ties by name (Calico's rule).
    return (order is None, order if order is not None else 0.0, name)


def calico_labels(pod: Pod, namespace: Namespace | None) -> dict[str, str]:
    """The labels Calico gives a pod's workload endpoint: its own, plus namespace and orchestrator
    pseudo-labels and the namespace's labels with the profile prefix ``pcns.``."""
    labels = {f"pcns.{k}": v for k, v in (namespace.labels if namespace else {}).items()}
    labels.update(pod.labels)
    labels["projectcalico.org/namespace"] = pod.namespace
    labels["projectcalico.org/orchestrator"] = "k8s"
    return labels


class _Context:
    """Cluster facts the compiler evaluates selectors against; built once per call."""

    def __init__(self, state: Any, named_ports: Mapping[str, Iterable[NamedPort]] | None):
        self.namespaces: dict[str, Namespace] = dict(state.namespaces)
        self.pods = [p for p in state.pods.values() if not p.host_network and not p.finished]
        self.named_ports = {k: tuple(v) for k, v in (named_ports or {}).items()}
        self.ipsets: dict[int, IPSet] = {}
        self._selectors: dict[str, Selector] = {}

    def selector(self, text: str) -> Selector:
        sel = self._selectors.get(text)
        if sel is None:
            sel = self._selectors[text] = Selector.parse(text)
        return sel

    def ns_labels(self, name: str) -> dict[str, str]:
        ns = self.namespaces.get(name)
        # A namespace object may be missing from the input; it still has the API server's label.
        return dict(ns.labels) if ns else {"kubernetes.io/metadata.name": name}

    def labels(self, pod: Pod) -> dict[str, str]:
        return calico_labels(pod, self.namespaces.get(pod.namespace))

    def ports_of(self, pod: Pod) -> tuple[NamedPort, ...]:
        declared = getattr(pod, "container_ports", ())
        return tuple(declared) + self.named_ports.get(pod.key, ())

    def selected_pods(self, selector: str, ns_selector: str | None, namespace: str | None) -> list[Pod]:
        """Pods matching an entity's selector within its namespace scope."""
        if ns_selector == "global()":
            return []  # global() limits a rule to non-namespaced entities; pods never are
        sel = self.selector(selector)
        out = []
        for pod in self.pods:
            if ns_selector is not None:
                if not self.selector(ns_selector).matches(self.ns_labels(pod.namespace)):
                    continue
            elif namespace is not None and pod.namespace != namespace:
                continue
            if sel.matches(self.labels(pod)):
                out.append(pod)
        return out

    def add_set(self, description: str, members: Iterable[IPSetKey]) -> int:
        set_id = int.from_bytes(hashlib.sha256(description.encode()).digest()[:8], "big")
        members = frozenset(attrs.evolve(m, set_id=set_id) for m in members)
        self.ipsets[set_id] = IPSet(set_id, description, members)
        return set_id


def _v4(ips: Iterable[str]) -> list[str]:
    return [ip for ip in ips if ":" not in ip]


def _scope(namespace: str | None, ns_selector: str | None) -> str:
    if ns_selector is not None:
        return f"namespaces({ns_selector})"
    return f"namespace {namespace}" if namespace is not None else "all namespaces"


def _entity_sets(ctx: _Context, end: str, ent: EntityRule, protocol: int | None,
                 namespace: str | None) -> list[tuple[str, int]]:
    sets = []
    for field, nets in (("nets", ent.nets), ("notNets", ent.not_nets)):
        v4 = [n for n in nets if ":" not in n]
        if len(v4) > INLINE_NETS_MAX:
            sets.append((f"{end}.{field}", ctx.add_set(f"nets {', '.join(sorted(v4))}", (IPSetKey(0, n) for n in v4))))
    scoped = ent.selector is not None or ent.namespace_selector is not None
    selector = ent.selector if ent.selector is not None else "all()"
    if scoped:
        pods = ctx.selected_pods(selector, ent.namespace_selector, namespace)
        desc = f"selector {selector} in {_scope(namespace, ent.namespace_selector)}"
        sets.append((f"{end}.selector", ctx.add_set(desc, (IPSetKey(0, f"{ip}/32") for p in pods for ip in _v4(p.pod_ips)))))
    if ent.not_selector is not None:
        pods = ctx.selected_pods(ent.not_selector, ent.namespace_selector, namespace)
        desc = f"selector {ent.not_selector} in {_scope(namespace, ent.namespace_selector)}"
        sets.append((f"{end}.notSelector", ctx.add_set(desc, (IPSetKey(0, f"{ip}/32") for p in pods for ip in _v4(p.pod_ips)))))
    for field, ports in (("ports", ent.ports), ("notPorts", ent.not_ports)):
        for i, pm in enumerate(ports):
            if pm.name is None:
                continue
            # Named ports resolve on the pods this end can be: the end's selector when it has
            # one, otherwise every pod (for ingress that includes the protected pod itself).
            pods = ctx.selected_pods(selector, ent.namespace_selector, namespace) if scoped else ctx.pods
            members = [IPSetKey(0, f"{ip}/32", port=np.port, proto=np.protocol)
                       for p in pods for np in ctx.ports_of(p) if np.name == pm.name and np.protocol == protocol
                       for ip in _v4(p.pod_ips)]
            desc = f"named port {pm.name}/{protocol} of selector {selector if scoped else 'all()'} " \
                   f"in {_scope(namespace, ent.namespace_selector) if scoped else 'all namespaces'}"
            sets.append((f"{end}.{field}[{i}]", ctx.add_set(desc, members)))
    return sets


def _selects(ctx: _Context, policy: Any, pod: Pod) -> bool:
    kind = type(policy).__name__
    if kind in ("NetworkPolicy", "CalicoNetworkPolicy") and policy.namespace != pod.namespace:
        return False
    if (kind == "GlobalNetworkPolicy" and policy.namespace_selector is not None
            and not ctx.selector(policy.namespace_selector).matches(ctx.ns_labels(pod.namespace))):
        return False
    return ctx.selector(policy.selector).matches(ctx.labels(pod))


def _sctp_reason(rule: Rule) -> str | None:
    if rule.protocol == SCTP:
        return "SCTP is not supported by the eBPF dataplane"
    return None


def endpoint_policy(state: Any, pod: Pod, direction: str, *,
                    named_ports: Mapping[str, Iterable[NamedPort]] | None = None) -> EndpointPolicy:
    """The ordered rule list and IP sets of ``pod`` for ``direction`` ("ingress"/"egress").

    ``named_ports`` maps pod keys (``"ns/name"``) to the container ports they
    declare, for named-port rules (the Pod model does not carry container ports).
    """
    if direction not in DIRECTIONS:
        raise ModelError(f"Pod {pod.key}", "direction", f"{direction!r} is not ingress or egress")
    ctx = _Context(state, named_ports)
    ptype = direction.capitalize()
    tiers = builtin_tiers()
    tiers.update(state.of_kind("Tier"))
    by_tier: dict[str, list[Any]] = {}
    for policy in policies_of(state):
        if ptype in policy.types and _selects(ctx, policy, pod):
            by_tier.setdefault(policy.tier, []).append(policy)
    steps: list[Step] = []
    unsupported: list[UnsupportedError] = []
    ordered = sorted(by_tier, key=lambda t: _sort_key(tiers[t].order if t in tiers else None, t))
    for tier_name in ordered:
        tier = tiers.get(tier_name, Tier(tier_name))
        for policy in sorted(by_tier[tier_name], key=lambda p: _sort_key(p.order, p.name)):
            scope = getattr(policy, "namespace", None)
            for rule in getattr(policy, direction):
                if rule.ip_version == 6:
                    # These programs judge IPv4 packets; an IPv6-only rule never applies.
                    steps.append(Step("rule", tier_name, rule.action, policy.label, rule, (), "IPv6 only"))
                    continue
                reason = _sctp_reason(rule)
                if reason:
                    unsupported.append(UnsupportedError("SCTP policy rule", f"{rule.where} matches nothing: {reason}",
                                                        policy.label))
                    steps.append(Step("rule", tier_name, rule.action, policy.label, rule, (), reason))
                    continue
                sets = (_entity_sets(ctx, "source", rule.source, rule.protocol, scope)
                        + _entity_sets(ctx, "destination", rule.destination, rule.protocol, scope))
                steps.append(Step("rule", tier_name, rule.action, policy.label, rule, tuple(sets)))
        steps.append(Step("tier-end", tier_name, tier.default_action))
    steps.append(Step("profile", "", "Allow"))
    return EndpointPolicy(pod.key, direction, tuple(steps), ctx.ipsets, tuple(unsupported))

