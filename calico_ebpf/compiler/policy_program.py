r"""BPF bytecode for an endpoint's policy, per the ``bpf/include/dp_state.h`` convention.

The program reads the packet's fields from the per-CPU state map (key 0),
walks the rules of an :class:`~calico_ebpf.compiler.policy.EndpointPolicy` in
order -- each rule a block that jumps to the next rule on the first criterion
that fails -- and on a verdict writes ``pol_rule`` (1 + the deciding step's
index, see :func:`compile_policy`), ``pol_rc`` and tail-calls
``cebpf_progs[DP_PROG_ALLOWED]`` or ``[DP_PROG_DENIED]``, returning
``TC_ACT_SHOT`` if that tail call fails.

Matching: source = ``ip_src``/``sport``; destination = ``post_nat_ip_dst``/
``post_nat_dport`` (after DNAT, so a service's backend is what egress rules
see). Short CIDR lists compare inline; long ones, selectors and named ports
look up the IP set LPM map with a full-length ``ipset_key_v4`` built on the
stack.

>>> from calico_ebpf.model.policy import Rule
>>> from calico_ebpf.compiler.policy import EndpointPolicy, Step
>>> ep = EndpointPolicy("x/a", "ingress", (Step("rule", "default", "Deny", "p", Rule("Deny", protocol=6)),
...                                        Step("profile", "", "Allow")), {})
>>> prog = emit_policy(ep, PolicyMaps(state_fd=3, progs_fd=4, ipsets_fd=5))
>>> for line in prog.listing().splitlines()[11:16]: print(line)
  11: r2 = *(u8 *)(r6 + 30)
  12: if r2 != 6 goto rule_1
  13: *(u32 *)(r6 + 104) = 1
  14: goto deny
rule_1:
"""

from __future__ import annotations

import attrs

from calico_ebpf.compiler.asm import FP, R0, R1, R2, R3, R6, R9, Assembler, Cls, Helper, JOp
from calico_ebpf.compiler.policy import EndpointPolicy, Step
from calico_ebpf.model.policy import EntityRule, PortMatch, Rule

__all__ = ["OFF", "TC_ACT_SHOT", "CompiledPolicy", "PolicyMaps", "RuleRange", "compile_policy", "emit_policy"]

TC_ACT_SHOT = 2
DP_POL_ALLOW, DP_POL_DENY = 1, 2
DP_PROG_ALLOWED, DP_PROG_DENIED = 0, 1
IPSET_FULL_V4 = 64 + 32 + 16 + 8

# Field offsets in struct dp_state (asserted in dp_state.h: they are a contract).
OFF = {
    "ip_src": 8,
    "post_nat_ip_dst": 16,
    "sport": 24,
    "post_nat_dport": 28,
    "ip_proto": 30,
    "icmp_type": 31,
    "icmp_code": 32,
    "pol_rc": 40,
    "pol_rule": 104,
}
_ADDR = {"source": OFF["ip_src"], "destination": OFF["post_nat_ip_dst"]}
_PORT = {"source": OFF["sport"], "destination": OFF["post_nat_dport"]}

# Stack layout: the state map key (u32) and one ipset_key_v4 (20 bytes, packed).
# Stack accesses must be aligned, so the unaligned 8-byte set_id is written as two words.
_STATE_KEY = -4
_KEY = -24  # mask @-24, set_id @-20, addr @-12, port @-8, protocol @-6, pad @-5


@attrs.frozen
class PolicyMaps:
    """File descriptors of the maps the program references."""

    state_fd: int
    progs_fd: int
    ipsets_fd: int


def _le32(value: int) -> int:
    # A network-order u32 loaded by ldxw reads as the little-endian value of its bytes.
    return int.from_bytes(value.to_bytes(4, "big"), "little")


def _cidr_parts(cidr: str) -> tuple[int, int, int]:
    addr, _, bits = cidr.partition("/")
    prefix = int(bits)
    net = int.from_bytes(bytes(int(o) for o in addr.split(".")), "big")
    mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
    return prefix, _le32(net & mask), _le32(mask)


@attrs.frozen
class RuleRange:
    """One step of the compiled rule list and where its code is in the program.

    ``id`` is what the program writes to ``dp_state.pol_rule`` when this step
    decides (1 + ``index``); ``start``/``end`` are instruction slots (as in
    :meth:`Assembler.listing` and ``bpftool prog dump xlated``), ``end``
    exclusive; ``start == end`` when the step emitted no code (a rule that
    matches nothing, or one after an unconditional verdict).
    """

    index: int
    kind: str  # "rule" | "tier-end" | "profile" | "unknown-workload" (the loader's deny slot)
    tier: str
    policy: str
    where: str  # "spec.ingress[0]" for rules, "" otherwise
    action: str
    start: int
    end: int
    matches_nothing: str | None = None

    @property
    def id(self) -> int:
        return self.index + 1

    def describe(self) -> str:
        """Human words: ``"default/NetworkPolicy x/p spec.ingress[0]"``, ``"end of tier default"``..."""
        if self.kind == "profile":
            return "profile"
        if self.kind == "tier-end":
            return f"end of tier {self.tier}"
        if self.kind == "unknown-workload":
            return "unknown workload (deny slot)"
        return f"{self.tier}/{self.policy} {self.where}".rstrip()

    def to_dict(self) -> dict:
        return attrs.asdict(self) | {"id": self.id}

    @classmethod
    def from_dict(cls, d: dict) -> RuleRange:
        return cls(**{k: v for k, v in d.items() if k != "id"})


@attrs.frozen
class CompiledPolicy:
    """An endpoint's policy program and its rule table (``rules[id - 1]`` decided when
    ``dp_state.pol_rule == id``)."""

    asm: Assembler
    rules: tuple[RuleRange, ...]

    def rule(self, rule_id: int) -> RuleRange | None:
        """The step that wrote ``rule_id`` (None for 0 or an unknown id)."""
        return self.rules[rule_id - 1] if 0 < rule_id <= len(self.rules) else None


class _Emitter:
    def __init__(self, ep: EndpointPolicy, maps: PolicyMaps):
        self.ep = ep
        self.maps = maps
        self.a = Assembler()
        self.bounds: list[tuple[int, int]] = []  # per step: (start, end) instruction indexes

    # -- criteria: each jumps to ``nxt`` when the packet fails it ------------------------------
    def cidrs_jump(self, off: int, cidrs: tuple[str, ...], target: str) -> None:
        """Jump to ``target`` when the address at ``off`` is in any of ``cidrs``."""
        a = self.a
        for cidr in cidrs:
            if ":" in cidr:
                continue  # IPv6 CIDRs never match an IPv4 packet
            prefix, net, mask = _cidr_parts(cidr)
            if prefix == 0:
                a.jump_to(target)
                return
            a.ldxw(R2, R6, off)
            if prefix < 32:
                a.and32(R2, mask)
            a.jeq32(R2, net, target)

    def ipset_lookup(self, set_id: int, end: str, with_port: bool) -> None:
        """``r0 = lookup(cebpf_ipsets, {set_id, addr[, port, proto]})`` for ``end``'s address."""
        a = self.a
        sid = set_id.to_bytes(8, "big")
        a.stw(FP, _KEY, IPSET_FULL_V4)
        a.stw(FP, _KEY + 4, int.from_bytes(sid[:4], "little"))
        a.stw(FP, _KEY + 8, int.from_bytes(sid[4:], "little"))
        a.ldxw(R2, R6, _ADDR[end]).stxw(FP, _KEY + 12, R2)
        if with_port:
            a.ldxh(R2, R6, _PORT[end]).stxh(FP, _KEY + 16, R2)
            a.ldxb(R2, R6, OFF["ip_proto"]).stxb(FP, _KEY + 18, R2)
        else:
            a.sth(FP, _KEY + 16, 0).stb(FP, _KEY + 18, 0)  # CIDR members: port/proto are past their prefix
        a.stb(FP, _KEY + 19, 0)
        a.ld_map_fd(R1, self.maps.ipsets_fd)
        a.mov64(R2, FP).add64(R2, _KEY)
        a.call(Helper.map_lookup_elem)

    def ports_jump(self, step: Step, end: str, field: str, ports: tuple[PortMatch, ...], target: str) -> None:
        """Jump to ``target`` when ``end``'s port is in any of ``ports`` (numbers, ranges, named)."""
        a = self.a
        for i, pm in enumerate(ports):
            if pm.name is not None:
                self.ipset_lookup(step.set_id(f"{end}.{field}[{i}]"), end, with_port=True)
                a.jne(R0, 0, target)
                continue
            a.ldxh(R2, R6, _PORT[end])
            if pm.first == pm.last:
                a.jeq(R2, pm.first, target)
            else:
                with a.block("below") as below:
                    a.jlt(R2, pm.first, below)
                    a.jle(R2, pm.last, target)

    def entity(self, step: Step, end: str, ent: EntityRule, nxt: str) -> None:
        a = self.a
        nets_set, not_nets_set = step.set_id(f"{end}.nets"), step.set_id(f"{end}.notNets")
        if nets_set is not None:
            self.ipset_lookup(nets_set, end, with_port=False)
            a.jeq(R0, 0, nxt)
        elif ent.nets:
            with a.block("in_nets") as matched:
                self.cidrs_jump(_ADDR[end], ent.nets, matched)
                a.jump_to(nxt)
        if not_nets_set is not None:
            self.ipset_lookup(not_nets_set, end, with_port=False)
            a.jne(R0, 0, nxt)
        elif ent.not_nets:
            self.cidrs_jump(_ADDR[end], ent.not_nets, nxt)
        sel = step.set_id(f"{end}.selector")
        if sel is not None:
            self.ipset_lookup(sel, end, with_port=False)
            a.jeq(R0, 0, nxt)
        not_sel = step.set_id(f"{end}.notSelector")
        if not_sel is not None:
            self.ipset_lookup(not_sel, end, with_port=False)
            a.jne(R0, 0, nxt)
        if ent.ports:
            with a.block("port_ok") as matched:
                self.ports_jump(step, end, "ports", ent.ports, matched)
                a.jump_to(nxt)
        if ent.not_ports:
            self.ports_jump(step, end, "notPorts", ent.not_ports, nxt)

    def rule(self, step: Step, rule: Rule, nxt: str) -> None:
        a = self.a
        if rule.protocol is not None or rule.not_protocol is not None:
            a.ldxb(R2, R6, OFF["ip_proto"])
            if rule.protocol is not None:
                a.jne(R2, rule.protocol, nxt)
            if rule.not_protocol is not None:
                a.jeq(R2, rule.not_protocol, nxt)
        if rule.icmp_type is not None:
            a.ldxb(R2, R6, OFF["icmp_type"]).jne(R2, rule.icmp_type, nxt)
            if rule.icmp_code is not None:
                a.ldxb(R2, R6, OFF["icmp_code"]).jne(R2, rule.icmp_code, nxt)
        if rule.not_icmp_type is not None:
            with a.block("icmp_ok") as ok:
                a.ldxb(R2, R6, OFF["icmp_type"]).jne(R2, rule.not_icmp_type, ok)
                if rule.not_icmp_code is not None:
                    a.ldxb(R2, R6, OFF["icmp_code"]).jne(R2, rule.not_icmp_code, ok)
                a.jump_to(nxt)
        self.entity(step, "source", rule.source, nxt)
        self.entity(step, "destination", rule.destination, nxt)

    # -- program ------------------------------------------------------------------------------
    def verdict(self, label: str, rc: int, slot: int) -> None:
        a = self.a
        a.label(label)
        a.stw(R6, OFF["pol_rc"], rc)
        a.mov64(R1, R9).ld_map_fd(R2, self.maps.progs_fd).mov64(R3, slot)
        a.call(Helper.tail_call)
        a.ret(TC_ACT_SHOT)  # only reached when the tail call failed

    def emit(self) -> Assembler:
        a = self.a
        a.mov64(R9, R1)  # ctx, kept for the tail call
        a.stw(FP, _STATE_KEY, 0)
        a.ld_map_fd(R1, self.maps.state_fd)
        a.mov64(R2, FP).add64(R2, _STATE_KEY)
        a.call(Helper.map_lookup_elem)
        with a.block("have_state") as have_state:
            a.jne(R0, 0, have_state)
            a.ret(TC_ACT_SHOT)
        a.mov64(R6, R0)
        steps = self.ep.steps
        tier_ends = {}
        for index, step in enumerate(steps):
            if step.kind == "tier-end":
                tier_ends.setdefault(step.tier, f"after_tier_{index}")
        for index, step in enumerate(steps):
            start = len(a.insns)
            rule_id = index + 1  # written to pol_rule by a deciding step: trace names the rule
            if step.kind == "rule" and step.matches_nothing:
                pass  # never matches: nothing to emit
            elif step.kind == "rule":
                assert step.rule is not None
                with a.block("rule") as nxt:
                    self.rule(step, step.rule, nxt)
                    if step.action == "Allow":
                        a.stw(R6, OFF["pol_rule"], rule_id).jump_to("allow")
                    elif step.action == "Deny":
                        a.stw(R6, OFF["pol_rule"], rule_id).jump_to("deny")
                    elif step.action == "Pass":
                        a.jump_to(tier_ends[step.tier])
                    # Log: no verdict, fall through to the next rule
            elif step.kind == "tier-end":
                if step.action == "Deny":
                    a.stw(R6, OFF["pol_rule"], rule_id).jump_to("deny")
                a.label(tier_ends[step.tier])
            else:
                a.stw(R6, OFF["pol_rule"], rule_id).jump_to("allow" if step.action == "Allow" else "deny")
            self.bounds.append((start, len(a.insns)))
        self.verdict("allow", DP_POL_ALLOW, DP_PROG_ALLOWED)
        self.verdict("deny", DP_POL_DENY, DP_PROG_DENIED)
        return a


def _prune(a: Assembler) -> tuple[Assembler, list[int]]:
    """A copy of ``a`` without unreachable instructions, and each old index's new slot number.

    The verifier refuses unreachable code, and rule-by-rule emission makes some
    (the deny tail when nothing denies, a tier after an unconditional verdict).
    """
    insns = a.insns
    at = {name: index for name, index in a.labels.items()}
    live = [False] * len(insns)
    todo = [0]
    while todo:
        i = todo.pop()
        if i >= len(insns) or live[i]:
            continue
        live[i] = True
        insn = insns[i]
        if insn.cls in (Cls.JMP, Cls.JMP32):
            op = insn.opcode & 0xF0
            if op == JOp.EXIT:
                continue
            if insn.target is not None:
                todo.append(at[insn.target])
            if op == JOp.JA and insn.cls == Cls.JMP:
                continue
        todo.append(i + 1)
    out = Assembler()
    by_index: dict[int, list[str]] = {}
    for name, index in at.items():
        by_index.setdefault(index, []).append(name)
    new_slot = []  # old index -> slot of the first live instruction at or after it
    slot = 0
    for i, insn in enumerate(insns):
        new_slot.append(slot)
        if live[i]:
            for name in by_index.get(i, ()):
                out.label(name)
            out.emit(insn)
            slot += insn.slots
    new_slot.append(slot)
    return out, new_slot


def compile_policy(ep: EndpointPolicy, maps: PolicyMaps) -> CompiledPolicy:
    """The policy program of ``ep`` and its rule table: which id each step writes to
    ``dp_state.pol_rule`` and which instruction slots hold its code.

    >>> from calico_ebpf.compiler.policy import EndpointPolicy, Step
    >>> ep = EndpointPolicy("x/a", "ingress", (Step("tier-end", "default", "Deny"), Step("profile", "", "Allow")), {})
    >>> [(r.id, r.describe(), r.action, r.start < r.end) for r in compile_policy(ep, PolicyMaps(3, 4, 5)).rules]
    [(1, 'end of tier default', 'Deny', True), (2, 'profile', 'Allow', False)]
    """
    emitter = _Emitter(ep, maps)
    asm, new_slot = _prune(emitter.emit())
    rules = []
    for index, (step, (start, end)) in enumerate(zip(ep.steps, emitter.bounds)):
        rules.append(RuleRange(index, step.kind, step.tier, step.policy, step.rule.where if step.rule else "",
                               step.action, new_slot[start], new_slot[end], step.matches_nothing))
    return CompiledPolicy(asm, tuple(rules))


def emit_policy(ep: EndpointPolicy, maps: PolicyMaps) -> Assembler:
    """The policy program of ``ep`` as an :class:`Assembler` (``.assemble()`` for the bytes,
    ``.listing()`` to read it)."""
    return compile_policy(ep, maps).asm
