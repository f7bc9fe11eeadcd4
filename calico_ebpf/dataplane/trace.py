"""Trace a packet through the real datapath programs, hop by hop (BPF_PROG_TEST_RUN).

``trace(dp, "tcp 10.65.0.2:40000 -> 172.30.0.41:80")`` builds the first
packet of the flow, runs it through the program that meets it where it
enters the node, then through every program the datapath sends it on to,
reading the datapath's own state record (``struct dp_state``) after each
run. Nothing here decides a verdict: the programs do; this module only picks
the next hook, the way the kernel would, and words what the state says.

Where a packet enters (DESIGN.md §5) is read from the dataplane's routes map:
a local workload route for SRC -> the ``from`` program on that pod's veth;
a local host route or a loopback SRC -> the host; anything else -> the
``from`` program on the data interface.

Host-sent packets: our tc programs only translate services at ingress hooks,
so, like Calico without connect-time load balancing, the host's packets to
services cross a NAT device (Calico's ``bpfin.cali``/``bpfout.cali`` veth pair,
which also stands for Calico's ``lo`` hook for NodePorts on the node's own
IPs). When the dataplane has an interface named :data:`NAT_DEVICE`, a
host-sent packet is offered to it first; when no service takes it there, it
leaves by the host's routes like any host packet (to a local pod's ``to``
program, out of the data interface, or delivered locally).

Traces leave no state behind: conntrack and affinity entries the trace made
are deleted afterwards, entries that were there before are kept (counters do
count trace packets). :class:`TraceNode` is the scratch node the
``calico-ebpf trace`` command uses: a dataplane built from manifests, with
stand-in interfaces in a private network namespace::

    >>> with TraceNode(ClusterState.from_manifests("cluster.yaml")) as node:      # doctest: +SKIP
    ...     t = node.trace("tcp 10.65.0.2:40000 -> 172.30.0.41:80")
    >>> t.verdict, t.dnat, t.path[:2]                                               # doctest: +SKIP
    ('allow', '10.65.0.3:8080', ['from-wep cali8bd27c6ff66 (tc ingress)', 'conntrack: new'])
    >>> trace(dp, "udp 10.65.0.2:5353 -> 10.96.0.10:53")   # a live node's dataplane  # doctest: +SKIP
"""

from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from calico_ebpf.compiler.policy_program import RuleRange
from calico_ebpf.dataplane.state import CtResult, DpState, PolicyDir, PolicyRc, StateFlags, Verdict
from calico_ebpf.dataplane.trace_packet import Entry, TracePacket, infer_entry, parse_packet
from calico_ebpf.errors import BPFError, CalicoEBPFError
from calico_ebpf.maps.entries import (
    CtKey,
    IfaceFlags,
    IfStateKey,
    IfStateValue,
    NatAffinityKey,
    Proto,
    RouteFlags,
    RouteKey,
    RouteValue,
)
from calico_ebpf.maps.enums import Counter

if TYPE_CHECKING:
    from typing_extensions import Self

    from calico_ebpf.dataplane.datapath import Dataplane, RunResult
    from calico_ebpf.kernel.netns import Netns

#: Name of the host NAT device (Calico's): host-sent packets to services are routed through it.
NAT_DEVICE = "bpfin.cali"

#: NodePort wildcard frontend address (affinity entries of wildcard NodePorts use it).
_WILDCARD = "255.255.255.255"

# A packet crosses at most: entry program, (to-wep | to-hep); host packets add
# the NAT device. More hops than this means a forwarding loop.
_MAX_HOPS = 4

_LOCAL_WEP = RouteFlags.LOCAL | RouteFlags.WORKLOAD
_LOCAL_HOST = RouteFlags.LOCAL | RouteFlags.HOST

#: Why a packet was dropped, in words (by counter reason).
DROP_REASONS = {
    Counter.DROP_POLICY: "denied by policy",
    Counter.DROP_SHORT: "packet too short",
    Counter.DROP_CSUM: "bad checksum",
    Counter.DROP_IP_OPTIONS: "IP options are not supported",
    Counter.DROP_MALFORMED_IP: "malformed IP packet",
    Counter.DROP_UNAUTH_SOURCE: "source address does not belong to this workload interface (strict RPF)",
    Counter.DROP_UNKNOWN_ROUTE: "no route",
    Counter.DROP_BLACKHOLE: "blackhole route",
    Counter.DROP_CT_CREATE: "conntrack entry could not be created (table full?)",
    Counter.FRAG_UNSUPPORTED: "IP fragments are not supported",
    Counter.DROP_SRC_RANGE: "source not in the service's loadBalancerSourceRanges",
}

_CT_WORDS = {
    CtResult.NEW: "new",
    CtResult.ESTABLISHED: "established",
    CtResult.ESTABLISHED_DNAT: "established (DNAT)",
    CtResult.ESTABLISHED_SNAT: "established reply (reverse NAT)",
    CtResult.RELATED: "related ICMP error",
    CtResult.INVALID: "untracked (TCP without SYN and no entry)",
}


_FROM_TUNNEL = StateFlags.FROM_TUNNEL
_NP_FWD = StateFlags.NP_FWD
_ENCAP = StateFlags.ENCAP
_DSR = StateFlags.DSR
_TOO_BIG = StateFlags.TOO_BIG


def _tun_ip(st: DpState) -> str:
    return str(st.tun_ip) if st.tun_ip else "?"


class TraceError(CalicoEBPFError):
    """The trace could not be run (no interface to enter by, a forwarding loop...)."""


@dataclass(frozen=True)
class Hop:
    """One program run: where, what it returned, and the datapath's state record after it."""

    program: str  # "from-wep cali1234 (tc ingress)"
    hook: str  # "from" | "to"
    ifindex: int
    ifname: str
    retval: int
    state: DpState
    #: The policy rule that decided at this hop, when the loader's rule table is known.
    policy_rule: RuleRange | None = None

    def to_dict(self) -> dict[str, Any]:
        st = self.state
        return {
            "program": self.program,
            "ifindex": self.ifindex,
            "retval": self.retval,
            "verdict": st.verdict.name.lower(),
            "reason": st.reason_name,
            "conntrack": st.ct_rc.name.lower(),
            "flags": [f.name.lower() for f in StateFlags if f in st.flags],
            "service_id": st.nat_svc_id or None,
            "policy": st.pol_rc.name.lower(),
            "policy_slot": st.pol_slot,
            "policy_rule": self.policy_rule.to_dict() if self.policy_rule else None,
            "fwd_ifindex": st.fwd_ifindex or None,
        }


@dataclass
class Trace:
    """What the dataplane did to one packet. ``verdict`` is None only when the packet is unsupported."""

    packet: TracePacket
    entry: Entry | None = None
    verdict: str | None = None  # "allow" | "drop" | "reject"
    dnat: str | None = None  # "ip:port" the destination was translated to
    snat: str | None = None  # source address it was masqueraded to
    path: list[str] = field(default_factory=list)
    reason: str = ""
    hops: list[Hop] = field(default_factory=list)
    unsupported: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` object: keys verdict, dnat, snat, path, reason (DESIGN.md §5) and details."""
        return {
            "packet": str(self.packet),
            "entry": self.entry.value if self.entry else None,
            "verdict": self.verdict,
            "dnat": self.dnat,
            "snat": self.snat,
            "path": list(self.path),
            "reason": self.reason,
            "unsupported": self.unsupported,
            "hops": [h.to_dict() for h in self.hops],
        }

    def format(self) -> str:
        """Human text: the packet and verdict, then one indented line per step."""
        head = f"{self.packet}: {self.verdict.upper() if self.verdict else 'UNSUPPORTED'}"
        nat = "".join(f"  {k} {v}" for k, v in (("dnat", self.dnat), ("snat", self.snat)) if v)
        lines = [head + nat, *(f"  {step}" for step in self.path), f"  => {self.reason}"]
        return "\n".join(lines)


# ---- reading the dataplane ------------------------------------------------------------------


class _NodeView:
    """What the dataplane's maps say about this node's interfaces and addresses."""

    def __init__(self, dp: Dataplane, data_interface: str | None):
        self.dp = dp
        self.ifaces: dict[int, IfStateValue] = {}
        for k, v in dp.maps["cebpf_ifstate"].items():
            self.ifaces[IfStateKey.from_bytes(k).ifindex] = IfStateValue.from_bytes(v)
        self.nat_ifindex = next((i for i, v in sorted(self.ifaces.items()) if v.name == NAT_DEVICE), None)
        heps = [(i, v) for i, v in sorted(self.ifaces.items())
                if IfaceFlags.HEP in v.flags and i != self.nat_ifindex
                and (data_interface is None or v.name == data_interface)]
        if data_interface is not None and not heps:
            raise TraceError(f"no host interface named {data_interface!r} in the dataplane")
        self.data_ifindex = heps[0][0] if heps else None

    def name(self, ifindex: int) -> str:
        v = self.ifaces.get(ifindex)
        return v.name if v else f"if{ifindex}"

    def kind(self, ifindex: int) -> str:
        if ifindex == self.nat_ifindex:
            return "nat"
        v = self.ifaces.get(ifindex)
        return "wep" if v and IfaceFlags.WEP in v.flags else "hep"

    def route(self, ip) -> RouteValue | None:
        # The kernel's longest-prefix match, on the dataplane's own routes map.
        raw = self.dp.maps["cebpf_routes"].lookup(RouteKey(f"{ip}/32").to_bytes())
        return None if raw is None else RouteValue.from_bytes(raw)


def _is(flags, want) -> bool:
    return (int(flags) & int(want)) == int(want)


# ---- the trace ------------------------------------------------------------------------------


def trace(dp: Dataplane, packet: str | TracePacket, *, netns: Netns | None = None,
          data_interface: str | None = None, policy: PolicyRules | None = None) -> Trace:
    """Run ``packet`` (``"PROTO SRC:SPORT -> DST:DPORT"``) through ``dp``'s programs and say what happened.

    ``netns``: the namespace where the dataplane's ifindexes exist (the
    kernel resolves ``__sk_buff.ifindex`` in the caller's namespace); None =
    the calling thread's. ``data_interface``: which host interface external
    packets arrive on (default: the first registered host interface).
    ``policy``: what maps a policy program's ``(slot, pol_rule)`` to the rule
    that decided (a :class:`~calico_ebpf.dataplane.policy.PolicyManager` or
    :class:`~calico_ebpf.dataplane.policy.PolicyTable`); default: the
    dataplane's ``policy_sync``, else the table written next to its pins.
    Raises :class:`~calico_ebpf.dataplane.trace_packet.PacketSyntaxError` on a malformed packet.
    """
    pkt = parse_packet(packet) if isinstance(packet, str) else packet
    if pkt.unsupported:
        return Trace(pkt, verdict=None, unsupported=pkt.unsupported, reason=f"not traced: {pkt.unsupported}")
    view = _NodeView(dp, data_interface)
    undo = _Undo(dp, pkt)
    try:
        return _Tracer(dp, view, pkt, netns, undo, policy if policy is not None else _policy_rules(dp)).run()
    finally:
        undo.restore()


class PolicyRules(Protocol):
    """Anything that names the rule a policy program reported (PolicyManager, PolicyTable)."""

    def rule(self, slot: int, rule_id: int) -> RuleRange | None: ...


def _policy_rules(dp: Dataplane) -> PolicyRules | None:
    sync = getattr(dp, "policy_sync", None)
    if sync is not None and hasattr(sync, "rule"):
        return sync
    if getattr(dp, "pin_dir", None):
        from calico_ebpf.dataplane.policy import read_policy_table

        return read_policy_table(dp.pin_dir)
    return None


class _Undo:
    """Forget the conntrack and affinity entries a trace creates, keeping any that were there before."""

    def __init__(self, dp: Dataplane, pkt: TracePacket):
        self.dp = dp
        self.ct = dp.maps["cebpf_ct"]
        self.aff = dp.maps["cebpf_nat_aff"]
        proto = Proto(pkt.proto_number)
        self.pre_ct = CtKey.for_flow(pkt.src, pkt.sport, pkt.dst, pkt.dport, proto).to_bytes()
        self.had_pre_ct = self.ct.lookup(self.pre_ct) is not None
        self.aff_keys = []
        if pkt.proto in ("tcp", "udp"):
            for addr in (pkt.dst, _WILDCARD):
                k = NatAffinityKey(addr=addr, port=pkt.dport, proto=proto, client_ip=pkt.src).to_bytes()
                if self.aff.lookup(k) is None:
                    self.aff_keys.append(k)
        self.created: list[bytes] = []

    def note(self, st: DpState) -> None:
        if StateFlags.NEW_FLOW in st.flags:
            proto = Proto(st.ip_proto)
            # dp_ct_create: NAT_FWD under the packet's tuple, NAT_REV/NORMAL under the post-NAT one.
            self.created.append(CtKey.for_flow(st.ip_src, st.sport, st.ip_dst, st.dport, proto).to_bytes())
            self.created.append(CtKey.for_flow(st.post_nat_ip_src, st.sport, st.post_nat_ip_dst,
                                               st.post_nat_dport, proto).to_bytes())

    def restore(self) -> None:
        for k in self.created:
            if k != self.pre_ct or not self.had_pre_ct:
                self.ct.delete(k)
        self.created.clear()
        for k in self.aff_keys:
            self.aff.delete(k)


class _Tracer:
    def __init__(self, dp: Dataplane, view: _NodeView, pkt: TracePacket, netns: Netns | None, undo: _Undo,
                 policy: PolicyRules | None):
        self.dp, self.view, self.pkt, self.netns, self._undo = dp, view, pkt, netns, undo
        self.policy = policy
        self.t = Trace(pkt)
        self._end: str | None = None  # how the packet left the last hop, when no program says it

    # -- running programs --

    def _run(self, hook: str, frame: bytes, ifindex: int, mark: int = 0) -> RunResult:
        if not ifindex:
            raise TraceError(f"{self.pkt}: no interface to run the {hook} program on (is the interface "
                             "registered with Dataplane.set_interface?)")
        try:
            if self.netns is not None:
                return self.netns.run(self.dp.run, hook, frame, ifindex, mark=mark)
            return self.dp.run(hook, frame, ifindex, mark=mark)
        except BPFError as exc:
            if exc.errno != errno.ENODEV:
                raise
            where = f"network namespace {self.netns.name}" if self.netns else "the caller's network namespace"
            raise TraceError(f"interface {self.view.name(ifindex)} (ifindex {ifindex}) does not exist in {where}: "
                             "trace where the dataplane's interfaces are (netns=...)") from None

    def _hop(self, hook: str, frame: bytes, ifindex: int, mark: int = 0) -> Hop:
        if len(self.t.hops) >= _MAX_HOPS:
            raise TraceError(f"{self.pkt}: more than {_MAX_HOPS} hops, the datapath is forwarding in a loop")
        res = self._run(hook, frame, ifindex, mark)
        name = self.view.name(ifindex)
        where = "tc ingress" if hook == "from" else "tc egress"
        rule = None
        if res.state.pol_rc != PolicyRc.NONE and self.policy is not None:
            rule = self.policy.rule(res.state.pol_slot, res.state.pol_rule)
        hop = Hop(f"{hook}-{self.view.kind(ifindex)} {name} ({where})", hook, ifindex, name, res.retval, res.state,
                  rule)
        self._undo.note(res.state)
        self.t.hops.append(hop)
        self.t.path.append(hop.program)
        self.t.path.extend(_describe(hop, self.view))
        self._frame, self._mark = res.data, res.mark
        return hop

    # -- following the packet --

    def run(self) -> Trace:
        pkt, view = self.pkt, self.view
        src_route = view.route(pkt.src)
        entry = infer_entry(pkt.src, local_pod=bool(src_route and src_route.is_local_workload),
                            host_ip=bool(src_route and _is(src_route.flags, _LOCAL_HOST)))
        self.t.entry = entry
        frame = pkt.frame()
        if entry is Entry.WORKLOAD:
            hop = self._hop("from", frame, src_route.ifindex)
        elif entry is Entry.DATA:
            if view.data_ifindex is None:
                raise TraceError("the dataplane has no data (host) interface for packets from elsewhere")
            hop = self._hop("from", frame, view.data_ifindex)
        else:
            hop = self._from_host(frame)
            if hop is None:
                return self._finish()
        self._after(hop)
        return self._finish()

    def _from_host(self, frame: bytes) -> Hop | None:
        """The host's own packet: through the NAT device when a service takes it, else by the host's routes."""
        view = self.view
        if view.nat_ifindex is not None:
            self.t.path.append(f"host stack: sent by this host, routed to {NAT_DEVICE}")
            hop = self._hop("from", frame, view.nat_ifindex)
            st = hop.state
            if StateFlags.DNAT in st.flags or st.verdict in (Verdict.REJECT, Verdict.DROP):
                return hop
            # Not a service: the host would not have routed it into the NAT
            # device. Forget that probe (and what it created) and route normally.
            self.t.hops.pop()
            self.t.path.clear()
            self._undo.restore()
        self.t.path.append("host stack: sent by this host")
        self._route(frame, self.pkt.dst)
        return None

    def _after(self, hop: Hop) -> None:
        st = hop.state
        if st.verdict in (Verdict.DROP, Verdict.REJECT):
            return
        if st.verdict == Verdict.REDIRECT:
            self._hop("to", self._frame, st.fwd_ifindex, self._mark)
            return
        if hop.hook == "from":
            # TC_ACT_OK at ingress: the host stack routes the (translated) packet.
            self._route(self._frame, str(st.post_nat_ip_dst))

    def _route(self, frame: bytes, dst: str) -> None:
        view = self.view
        rt = view.route(dst)
        flags = rt.flags if rt else RouteFlags(0)
        if ipaddress.ip_address(dst).is_loopback or _is(flags, _LOCAL_HOST):
            self.t.path.append(f"route: {dst} is this host: delivered locally")
            self._end = f"delivered to this host ({dst})"
            return
        if rt is not None and rt.is_local_workload:
            self.t.path.append(f"route: local workload {view.name(rt.ifindex)}")
            self._hop("to", frame, rt.ifindex)
            return
        if RouteFlags.TUNNELED in flags and rt is not None:
            self.t.path.append(f"route: remote workload via node {rt.next_hop} (VXLAN)")
            self._end = f"forwarded to {dst} on node {rt.next_hop} through the VXLAN tunnel"
            return
        if view.data_ifindex is None:
            self.t.path.append("route: leaves the node (no data interface in the dataplane)")
            self._end = f"sent towards {dst}"
            return
        if RouteFlags.HOST in flags:
            what = "another node"
        elif RouteFlags.WORKLOAD in flags and rt is not None:
            what = f"remote workload on node {rt.next_hop}"
        elif RouteFlags.IN_POOL in flags:
            what = "IP pool address of no known node"
        else:
            what = "outside the cluster"
        self.t.path.append(f"route: {what}, out of {view.name(view.data_ifindex)}")
        # A "to" program ends the trace on this node: it delivers or drops.
        self._hop("to", frame, view.data_ifindex)

    # -- the verdict --

    def _finish(self) -> Trace:
        t = self.t
        last = t.hops[-1] if t.hops else None
        for hop in t.hops:
            st = hop.state
            if t.dnat is None and StateFlags.DNAT in st.flags and st.ct_rc in (CtResult.NEW,
                                                                               CtResult.ESTABLISHED_DNAT):
                t.dnat = f"{st.post_nat_ip_dst}:{st.post_nat_dport}"
            if t.snat is None and StateFlags.HAIRPIN in st.flags:
                t.snat = str(st.post_nat_ip_src)
        stopped = next((h for h in t.hops if h.state.verdict in (Verdict.DROP, Verdict.REJECT)), None)
        if stopped is not None:
            st = stopped.state
            if st.verdict == Verdict.REJECT:
                t.verdict = "reject"
                if _TOO_BIG in st.flags:
                    t.reason = (f"rejected at {stopped.program}: too big for the VXLAN tunnel; answered with "
                                "ICMP fragmentation needed")
                else:
                    t.reason = (f"rejected at {stopped.program}: service (id {st.nat_svc_id}) has no backend "
                                f"for this client; answered with ICMP port unreachable")
            else:
                t.verdict = "drop"
                t.reason = f"dropped at {stopped.program}: {_drop_reason(st)}"
                if st.pol_rc == PolicyRc.DENY and stopped.policy_rule is not None:
                    t.reason += f": {_policy_decision(stopped)}"
            return t
        t.verdict = "allow"
        end = self._end
        if end is None and last is not None:
            if last.hook == "to" and self.view.kind(last.ifindex) == "wep":
                end = f"delivered to the workload behind {last.ifname}"
            elif last.hook == "to":
                end = f"sent out of {last.ifname} towards {last.state.post_nat_ip_dst}"
            else:
                end = "passed to the host stack"
        nat = f"DNAT to {t.dnat}; " if t.dnat else ""
        snat = f"masqueraded as {t.snat}; " if t.snat else ""
        t.reason = nat + snat + (end or "allowed")
        return t


def _drop_reason(st: DpState) -> str:
    try:
        reason = Counter(st.reason)
    except ValueError:
        return f"reason {st.reason}"
    return f"{DROP_REASONS.get(reason, reason.name.lower().replace('_', ' '))} ({reason.name})"


def _describe(hop: Hop, view: _NodeView) -> list[str]:
    """The steps one program run took, from its state record."""
    st = hop.state
    steps: list[str] = []
    if st.reason == Counter.ACCEPTED_BYPASS and st.ct_rc == CtResult.NONE:
        return ["bypass: already approved and forwarded by the ingress program"]
    if st.ct_rc == CtResult.NONE:
        if st.verdict == Verdict.DROP:
            steps.append(f"drop: {_drop_reason(st)}")
        else:
            steps.append("not IPv4: passed")
        return steps
    if _FROM_TUNNEL in st.flags:
        steps.append(f"vxlan: decapsulated, forwarded by node {_tun_ip(st)}")
    ct = _CT_WORDS.get(st.ct_rc, st.ct_rc.name.lower())
    if StateFlags.CT_RECYCLED in st.flags:
        ct += " (replaced a closed flow)"
    steps.append(f"conntrack: {ct}")
    if StateFlags.DNAT in st.flags:
        aff = " (session affinity)" if StateFlags.AFFINITY_HIT in st.flags else ""
        svc = f" (service id {st.nat_svc_id})" if st.nat_svc_id else ""
        steps.append(f"nat: {st.ip_dst}:{st.dport} -> {st.post_nat_ip_dst}:{st.post_nat_dport}{svc}{aff}")
    if StateFlags.HAIRPIN in st.flags:
        steps.append(f"nat: source {st.ip_src} -> {st.post_nat_ip_src} (hairpin masquerade)")
    if StateFlags.REV_NAT in st.flags:
        steps.append("nat: reply source translated back to the service")
    if st.verdict == Verdict.REJECT:
        if _TOO_BIG in st.flags:
            steps.append("vxlan: too big for the tunnel -> ICMP fragmentation needed")
        else:
            steps.append(f"nat: service id {st.nat_svc_id} has no backend -> ICMP port unreachable")
        return steps
    if st.reason == Counter.DROP_SRC_RANGE:
        steps.append("nat: source outside loadBalancerSourceRanges")
    elif st.ct_rc == CtResult.NEW and hop.hook == "from" and not st.flags & StateFlags.DNAT and \
            st.ip_proto in (6, 17) and st.verdict != Verdict.DROP:
        steps.append("nat: not a service")
    steps.extend(_policy_steps(hop))
    if _NP_FWD in st.flags:
        steps.append(f"nodeport: the backend is on node {_tun_ip(st)}: forwarded there, client IP kept")
    if _DSR in st.flags:
        steps.append("dsr: reply sent straight to the client")
    if st.verdict == Verdict.DROP:
        steps.append(f"drop: {_drop_reason(st)}")
    elif st.verdict == Verdict.REDIRECT:
        if _ENCAP in st.flags:
            steps.append(f"vxlan: encapsulated to node {_tun_ip(st)}, out of {view.name(st.fwd_ifindex)} (redirect)")
        elif view.kind(st.fwd_ifindex) == "wep":
            steps.append(f"route: local workload {view.name(st.fwd_ifindex)} (redirect)")
        else:
            steps.append(f"route: out of {view.name(st.fwd_ifindex)} (redirect)")
    return steps


def _policy_steps(hop: Hop) -> list[str]:
    st = hop.state
    whose = "ingress" if st.pol_dir == PolicyDir.INGRESS else "egress"
    if StateFlags.FAILSAFE in st.flags:
        return ["policy: skipped (failsafe port)"]
    if st.pol_rc in (PolicyRc.ALLOW, PolicyRc.DENY):
        return [f"policy: {_policy_decision(hop)} (slot {st.pol_slot})"]
    if st.ct_rc != CtResult.NEW and StateFlags.APPROVE_LEG not in st.flags:
        return []  # established flows are not re-checked
    if StateFlags.SKIP_POLICY in st.flags:
        return ["policy: skipped (host to local workload)"]
    return [f"policy: none ({whose}): no policy selects the endpoint: allow (profile)"]


def _policy_decision(hop: Hop) -> str:
    """``"ingress deny by default/NetworkPolicy x/p spec.ingress[0]"``, ``"egress deny: end of tier default"``..."""
    st = hop.state
    whose = "ingress" if st.pol_dir == PolicyDir.INGRESS else "egress"
    verb = "allow" if st.pol_rc == PolicyRc.ALLOW else "deny"
    rule = hop.policy_rule
    if rule is not None:
        if rule.kind == "rule":
            return f"{whose} {verb} by {rule.describe()}"
        if rule.kind == "tier-end":
            return f"{whose} {verb}: {rule.describe()}"
        if rule.kind == "profile":
            return f"{whose} {verb}: passed every tier (profile)"
        return f"{whose} {verb}: {rule.describe()}"
    return f"{whose} {verb}"


# ---- a scratch node to trace on -------------------------------------------------------------

#: Stand-in for this node's data interface inside the scratch namespace.
DATA_INTERFACE = "eth0"


class TraceNode:
    """A scratch node for tracing: an unpinned :class:`Dataplane` filled from a ClusterState, and a
    private network namespace holding stand-ins for the node's interfaces.

    Each local pod gets a veth named as Calico names it (``cali…``), the data
    interface is ``eth0`` and the host NAT device ``bpfin.cali``; the kernel
    needs them because BPF_PROG_TEST_RUN resolves a packet's ifindex in the
    caller's namespace. Nothing outside the namespace is touched, and
    :meth:`close` removes it.

    >>> with TraceNode(ClusterState.from_manifests("cluster.yaml")) as node:   # doctest: +SKIP
    ...     print(node.trace("tcp 10.65.0.2:40000 -> 172.30.0.41:80").format())

    :meth:`load` swaps in another state (another scenario) on the same loaded
    object: loading costs about a second of verifier time, re-applying far less.
    """

    def __init__(self, state: Any, node: str | None = None):
        from calico_ebpf.kernel.netns import Netns

        self.netns = Netns(prefix="cetrace")
        self._links: dict[str, int] = {}  # our interface name -> ifindex, in self.netns
        self._peer_seq = 0
        self.dp: Dataplane | None = None
        self.report = None  # the ApplyReport of the last load
        self.policy_report = None
        self._registered: set[int] = set()
        self._policy = None
        try:
            self._link(DATA_INTERFACE)
            self._link(NAT_DEVICE, "bpfout.cali")
            self.load(state, node)
        except BaseException:
            self.close()
            raise

    def _link(self, name: str, peer: str | None = None) -> int:
        from calico_ebpf.kernel.netns import veth_pair

        if name not in self._links:
            # veths: the peers are never used (this kernel may lack the dummy driver).
            self._peer_seq += 1
            veth_pair(name, peer or f"trp{self._peer_seq}", netns=self.netns, peer_netns=self.netns)
            self._links[name] = self.netns.ifindex(name)
        return self._links[name]

    def _unlink(self, name: str) -> None:
        from calico_ebpf.kernel.netns import delete_link

        delete_link(name, self.netns)
        del self._links[name]

    def load(self, state: Any, node: str | None = None, *, named_ports: Any = None) -> None:
        """Make the dataplane (and the stand-in interfaces) what ``state`` says for ``node``.

        ``named_ports``: pod key -> container ports (:class:`~calico_ebpf.compiler.policy.NamedPort`),
        for named-port policy rules (the Pod model does not carry them)."""
        from calico_ebpf.compiler.routes import compile_routes
        from calico_ebpf.dataplane.config import NodeConfig

        config = NodeConfig.from_state(state, node)
        wanted = {r.ifname: r.pod for r in compile_routes(state, config.node) if r.ifname}
        for name in [n for n in self._links if n.startswith("cali") and n not in wanted and n != NAT_DEVICE]:
            self._unlink(name)
        for name in sorted(wanted):
            self._link(name)
        self.state, self.config = state, config
        self.workloads = {pod: (self._links[name], name) for name, pod in wanted.items()}
        self._apply(state, config, named_ports)

    def _apply(self, state: Any, config: Any, named_ports: Any = None) -> None:
        from calico_ebpf.dataplane.datapath import Dataplane
        from calico_ebpf.dataplane.policy import PolicyManager

        if self.dp is None:
            self.dp = Dataplane(config, pin_dir=None)
            self._policy = PolicyManager(self.dp)
        dp = self.dp
        # Interfaces first: a local pod's route carries its veth's ifindex.
        keep = {self._links[DATA_INTERFACE], self._links[NAT_DEVICE]} | {i for i, _ in self.workloads.values()}
        for ifindex in [i for i in self._registered if i not in keep]:
            dp.remove_interface(ifindex)
        dp.set_interface(self._links[DATA_INTERFACE], DATA_INTERFACE, "hep")
        dp.set_interface(self._links[NAT_DEVICE], NAT_DEVICE, "hep")
        for ifindex, name in self.workloads.values():
            dp.set_interface(ifindex, name, "wep")
        self._registered = keep
        self.report = dp.apply(state, config.node)
        # Policy programs per workload (an unisolated pod gets none: allowed, as in Calico).
        self.policy_report = self._policy.sync(state, self.workloads, named_ports=named_ports)

    def trace(self, packet: str | TracePacket) -> Trace:
        """Trace one packet on this node (see :func:`trace`)."""
        return trace(self.dp, packet, netns=self.netns, data_interface=DATA_INTERFACE, policy=self._policy)

    def close(self) -> None:
        """Unload the scratch dataplane and delete the namespace (and its interfaces)."""
        if self._policy is not None:
            self._policy.close()
            self._policy = None
        if self.dp is not None:
            self.dp.close()
            self.dp = None
        self.netns.delete()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
