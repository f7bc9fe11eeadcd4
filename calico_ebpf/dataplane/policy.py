"""Policy in the dataplane: per-endpoint programs in jump slots, IP sets in the kernel.

For every local endpoint and direction, :class:`PolicyManager` compiles the
endpoint's policy (:func:`~calico_ebpf.compiler.policy.endpoint_policy`, then
:func:`~calico_ebpf.compiler.policy_program.emit_policy` with this
dataplane's map fds), loads it and places it in a ``cebpf_jump`` slot that the
interface's ifstate entry names (``ingress_policy_v4`` / ``egress_policy_v4``).

Rules it keeps:

- **No window without policy.** A changed program goes into a *fresh* slot,
  then the ifstate entry is switched to it (one map update), then the old
  slot is freed. A freed slot is not emptied but given the datapath's deny
  program: a packet that read the old slot index just before the switch is
  denied, never let through as "no policy" (an empty slot means allow).
- **Programs are cached by content.** The cache key is a hash of the
  endpoint's compiled rule list (rules, tiers, IP set ids -- not the set
  members), so an unchanged endpoint costs no load and no map write, and
  endpoints with the same rules share one loaded program.
- **IP sets are diffed.** Set ids are stable (a hash of what the set stands
  for), so a label change that only moves pods in or out of sets is a few
  IP-set writes, with no program reloaded. The wanted members are diffed
  against the kernel's (read once, then a cached copy) and only the
  difference is written: members leaving a set that stays in use go first,
  then every missing member, then the program switches, then the members of
  sets nothing uses any more.
- **Calico's defaults.** A pod that no policy isolates in a direction gets no
  program (slot -1: the datapath allows, as Calico's ``kns.<namespace>``
  profile does). An endpoint whose pod is unknown gets the deny slot
  (Calico denies a workload until its policy is known).
- **Unsupported matches never widen access.** An SCTP rule is compiled to
  match nothing and named in :attr:`PolicyReport.unsupported`.
- **A failure keeps the last good state.** A program the verifier refuses (or
  too large to assemble) leaves that endpoint on its previous program, whose
  IP sets stay; the other endpoints are synced, then the error is raised.
- **Programs say which rule decided.** Each program writes ``dp_state.pol_rule``
  (1 + the deciding step's index); :meth:`PolicyManager.table` maps
  ``(slot, pol_rule)`` back to tier, policy, rule and action, with each rule's
  instruction slots. For a pinned dataplane the table is also written to
  :func:`policy_table_path` (bpffs holds no plain files, so it lives under
  ``/run/calico_ebpf/pins/<pin_dir>/policy.json``), where another process
  (``calico-ebpf dump policy``, ``calico-ebpf trace`` on a live node) reads it.

>>> pm = PolicyManager(dp)                                     # doctest: +SKIP
>>> report = pm.sync(state, {"x/a": (ifindex, "calia1b2")})    # doctest: +SKIP
>>> report.programs_loaded, report.ipset_members_added         # doctest: +SKIP
(1, 3)
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import attrs

from calico_ebpf.compiler.policy import DIRECTIONS, EndpointPolicy, NamedPort, endpoint_policy
from calico_ebpf.compiler.policy_program import PolicyMaps, RuleRange, compile_policy
from calico_ebpf.errors import BPFError, CalicoEBPFError
from calico_ebpf.kernel import Program
from calico_ebpf.kernel.program import ProgType
from calico_ebpf.maps.entries import IfaceFlags, IfStateKey, IfStateValue
from calico_ebpf.maps.ipsets import IPSetKey, U32Value
from calico_ebpf.maps.named import IPSets

__all__ = ["DENY_SLOT", "NO_POLICY", "PolicyManager", "PolicyReport", "PolicyTable", "policy_table_path",
           "read_policy_table", "remove_policy_tables"]

#: Slot holding the datapath's deny program: unknown endpoints, and every freed slot's content.
DENY_SLOT = 0
#: ifstate value for "no policy program" (the datapath allows).
NO_POLICY = -1
_DENY_PROGRAM = "cebpf_policy_deny"
_IFSTATE_FIELD = {"ingress": "ingress_policy_v4", "egress": "egress_policy_v4"}
_ONE = U32Value(1)
#: What the deny slot's program "decided by": it is the datapath's, with no rule table.
_UNKNOWN_WORKLOAD = RuleRange(-1, "unknown-workload", "", "", "", "Deny", 0, 0)


@dataclass
class PolicyReport:
    """What one :meth:`PolicyManager.sync` did.

    ``slots`` maps ``(pod key, direction)`` to the jump slot in force
    afterwards (-1: not isolated, no program). ``unsupported`` names the
    rules compiled to match nothing (e.g. ``"x/a ingress: SCTP policy rule
    ..."``). ``failed`` names endpoints whose new program the kernel refused;
    they keep their previous program.
    """

    programs_loaded: int = 0
    programs_reused: int = 0
    programs_unloaded: int = 0
    slots_switched: int = 0
    unchanged: int = 0
    ipset_members_added: int = 0
    ipset_members_removed: int = 0
    endpoints_removed: int = 0
    slots: dict[tuple[str, str], int] = field(default_factory=dict)
    unsupported: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.slots_switched or self.ipset_members_added or self.ipset_members_removed
                    or self.endpoints_removed)


#: Root of the policy rule tables of pinned dataplanes (mirrors the pin directory's path).
POLICY_TABLE_ROOT = "/run/calico_ebpf/pins"
_TABLE_VERSION = 1


def policy_table_path(pin_dir: str) -> str:
    """Where the rule table of the dataplane pinned at ``pin_dir`` is kept.

    >>> policy_table_path("/sys/fs/bpf/calico_ebpf/node-1")
    '/run/calico_ebpf/pins/sys/fs/bpf/calico_ebpf/node-1/policy.json'
    """
    return os.path.join(POLICY_TABLE_ROOT, os.path.abspath(pin_dir).lstrip("/"), "policy.json")


@dataclass
class PolicyTable:
    """Which program each policy slot holds and what its rules are.

    ``endpoints``: pod key -> ``{"ifindex", "ifname", "ingress", "egress"}``
    (slots; -1 = no policy, 0 = the deny slot). ``slots``: slot ->
    ``{"program": content hash, "endpoints": [[pod, direction], ...],
    "rules": [RuleRange, ...]}``. The JSON form (``to_dict``) is the
    ``policy.json`` file format, ``{"version": 1, "endpoints": ..., "slots": ...}``
    with slot numbers as strings and rules as :meth:`RuleRange.to_dict`.
    """

    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    slots: dict[int, dict[str, Any]] = field(default_factory=dict)

    def rule(self, slot: int, rule_id: int) -> RuleRange | None:
        """The rule that wrote ``rule_id`` in the program in ``slot`` (None: unknown)."""
        if slot == DENY_SLOT:
            return _UNKNOWN_WORKLOAD
        entry = self.slots.get(slot)
        rules = entry["rules"] if entry else ()
        return rules[rule_id - 1] if 0 < rule_id <= len(rules) else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": _TABLE_VERSION,
            "endpoints": self.endpoints,
            "slots": {str(slot): {**entry, "rules": [r.to_dict() for r in entry["rules"]]}
                      for slot, entry in sorted(self.slots.items())},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PolicyTable:
        if d.get("version") != _TABLE_VERSION:
            raise ValueError(f"policy table version {d.get('version')!r} is not {_TABLE_VERSION}")
        slots = {int(slot): {**entry, "rules": tuple(RuleRange.from_dict(r) for r in entry["rules"])}
                 for slot, entry in d.get("slots", {}).items()}
        return cls(dict(d.get("endpoints", {})), slots)


def read_policy_table(pin_dir: str) -> PolicyTable | None:
    """The rule table a :class:`PolicyManager` wrote for the dataplane pinned at ``pin_dir``
    (None when there is none)."""
    try:
        with open(policy_table_path(pin_dir)) as f:
            return PolicyTable.from_dict(json.load(f))
    except FileNotFoundError:
        return None


def remove_policy_tables(pin_dir: str) -> None:
    """Delete the rule tables of ``pin_dir`` and of every pin directory under it (with the pins)."""
    shutil.rmtree(os.path.dirname(policy_table_path(pin_dir)), ignore_errors=True)


def _write_policy_table(pin_dir: str, table: PolicyTable) -> None:
    path = policy_table_path(pin_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(table.to_dict(), f, indent=1)
    os.replace(tmp, path)  # readers see the old table or the new one, never half


@dataclass
class _Loaded:
    program: Program
    rules: tuple[RuleRange, ...] = ()
    users: int = 0  # placements (endpoint directions) using it


@dataclass
class _Placed:
    """What one endpoint direction has in the kernel."""

    slot: int  # NO_POLICY or a jump slot
    digest: str | None  # content hash of its program (None: no program)
    set_ids: frozenset[int] = frozenset()


def _digest(ep: EndpointPolicy) -> str:
    # The rule list with set ids (not members) is exactly what the bytecode depends on;
    # map fds are fixed per dataplane, so they need not be part of the key.
    return hashlib.sha256(repr(ep.steps).encode()).hexdigest()


class _SlotAllocator:
    """Lowest-free-first slot numbers in ``[first, size)``."""

    def __init__(self, first: int, size: int, taken: Iterable[int] = ()):
        taken = set(taken)
        self._free = [s for s in range(first, size) if s not in taken]
        heapq.heapify(self._free)

    def take(self) -> int:
        if not self._free:
            raise BPFError("policy slot allocation", 28, "cebpf_jump is full: no free policy slot")
        return heapq.heappop(self._free)

    def give_back(self, slot: int) -> None:
        heapq.heappush(self._free, slot)


class PolicyManager:
    """Keeps a :class:`~calico_ebpf.dataplane.Dataplane`'s policy programs and IP sets in sync.

    One manager per dataplane; :meth:`sync` is called with the whole desired
    state each time and changes only what differs.

    >>> pm = PolicyManager(dp)                                                 # doctest: +SKIP
    >>> pm.sync(state, {"x/a": (7, "calia"), "x/b": (8, "calib")}).slots     # doctest: +SKIP
    {('x/a', 'ingress'): 1, ('x/a', 'egress'): -1, ...}
    """

    def __init__(self, dp: Any):
        self.dp = dp
        self.maps = PolicyMaps(dp.maps["cebpf_state"].fd, dp.maps["cebpf_progs"].fd, dp.maps["cebpf_ipsets"].fd)
        self.ipsets = IPSets(dp.maps["cebpf_ipsets"])
        self._jump = dp.maps["cebpf_jump"]
        dp.set_policy(DENY_SLOT, _DENY_PROGRAM)
        # Slots named by existing ifstate entries (a restarted agent) stay taken until
        # the first sync has switched those endpoints to programs of ours.
        inherited = set()
        for raw_value in (v for _, v in dp.maps["cebpf_ifstate"].items()):
            value = IfStateValue.from_bytes(raw_value)
            inherited.update(s for s in (value.ingress_policy_v4, value.egress_policy_v4) if s > DENY_SLOT)
        self._slots = _SlotAllocator(DENY_SLOT + 1, self._jump.max_entries, inherited)
        self._programs: dict[str, _Loaded] = {}
        self._placed: dict[tuple[str, str], _Placed] = {}
        self._ifindex: dict[str, tuple[int, str]] = {}
        self._kernel_members: set[IPSetKey] | None = None  # cached copy of cebpf_ipsets
        self._set_members: dict[int, frozenset[IPSetKey]] = {}  # members wanted per set id
        self._written: PolicyTable | None = None  # the rule table last written next to the pins
        #: Total Program.load calls over the manager's life (tests count reloads with it).
        self.loads = 0

    # ---- the one verb ------------------------------------------------------------------------

    def sync(self, state: Any, endpoints: Mapping[str, tuple[int, str]], *,
             named_ports: Mapping[str, Iterable[NamedPort]] | None = None) -> PolicyReport:
        """Make the kernel enforce ``state``'s policy for ``endpoints`` (pod key -> (ifindex, ifname)).

        ``named_ports`` maps pod keys to the container ports they declare (the
        Pod model does not carry them). Endpoints managed before but absent
        now lose their programs. A refused program load leaves that endpoint
        on its previous program and raises the error (:class:`BPFError`,
        or :class:`~calico_ebpf.compiler.asm.AsmError` for a program too large) at the end
        (with the report as ``err.report``), after every other endpoint is done.
        """
        report = PolicyReport()
        pods = state.pods
        wanted: dict[tuple[str, str], EndpointPolicy | None] = {}
        for key in endpoints:
            pod = pods.get(key)
            for direction in DIRECTIONS:
                if pod is None or pod.host_network or pod.finished:
                    wanted[(key, direction)] = None  # unknown workload: deny (below)
                    continue
                ep = endpoint_policy(state, pod, direction, named_ports=named_ports)
                wanted[(key, direction)] = ep
                report.unsupported += [f"{key} {direction}: {e}" for e in ep.unsupported]

        # 1. IP sets: members a program is about to look up must be there before it runs.
        desired_sets: dict[int, frozenset[IPSetKey]] = {}
        for ep in wanted.values():
            if ep is not None and ep.isolated:
                for set_id, ipset in ep.ipsets.items():
                    desired_sets[set_id] = ipset.members
        kernel = self._kernel()
        desired = set().union(*desired_sets.values()) if desired_sets else set()
        # Members leaving a set that stays in use go first (narrowing, never widening), then
        # every missing member; members of sets no program will use go after the switch.
        leaving = {m for m in kernel - desired if m.set_id in desired_sets}
        report.ipset_members_removed += self._delete_members(leaving)
        report.ipset_members_added += self._add_members(desired - kernel)

        # 2. Programs, endpoint by endpoint: fresh slot, one ifstate write, free the old slot.
        failures: list[CalicoEBPFError] = []
        for key, (ifindex, ifname) in endpoints.items():
            self._ifindex[key] = (ifindex, ifname)
            new: dict[str, _Placed] = {}
            for direction in DIRECTIONS:
                old = self._placed.get((key, direction))
                try:
                    new[direction] = self._place(wanted[(key, direction)], old, report)
                except CalicoEBPFError as err:  # verifier refusal, map full, program too large
                    err.add_note(f"policy of {key} {direction}: kept its previous program")
                    failures.append(err)
                    report.failed.append(f"{key} {direction}: {err}")
                    new[direction] = old if old is not None else _Placed(DENY_SLOT, None)
            self._switch(key, ifindex, ifname, new, report)

        # 3. Endpoints that went away, then members of sets nothing uses any more.
        for key in [k for k in self._ifindex if k not in endpoints]:
            self._forget_endpoint(key, report)
        self._set_members = desired_sets
        # A set stays while a program in a slot looks it up: one that failed to be replaced keeps
        # its sets, as emptying them could widen it (a notSelector set matches more when empty).
        in_use = set().union(*(p.set_ids for p in self._placed.values()))
        report.ipset_members_removed += self._delete_members(
            {m for m in self._kernel() - desired if m.set_id not in in_use})
        report.slots = {k: p.slot for k, p in self._placed.items()}
        if getattr(self.dp, "pin_dir", None):
            table = self.table()
            if table != self._written:  # an unchanged sync costs no write
                _write_policy_table(self.dp.pin_dir, table)
                self._written = table
        if failures:
            failures[0].report = report  # type: ignore[attr-defined]
            raise failures[0]
        return report

    # ---- programs and slots ------------------------------------------------------------------

    def _place(self, ep: EndpointPolicy | None, old: _Placed | None, report: PolicyReport) -> _Placed:
        """The placement ``ep`` needs; loads and fills a fresh slot when the program changes."""
        if ep is None or not ep.isolated:
            fixed = DENY_SLOT if ep is None else NO_POLICY
            if old is not None and old.digest is None and old.slot == fixed:
                report.unchanged += 1
                return old
            return _Placed(fixed, None)
        digest = _digest(ep)
        if old is not None and old.digest == digest:
            report.unchanged += 1
            return old
        loaded = self._programs.get(digest)
        if loaded is None:
            compiled = compile_policy(ep, self.maps)
            program = Program.load(ProgType.SCHED_CLS, compiled.asm.assemble(), name="cebpf_pol")
            self.loads += 1
            report.programs_loaded += 1
            loaded = self._programs[digest] = _Loaded(program, compiled.rules)
        else:
            report.programs_reused += 1
        slot = self._slots.take()
        try:
            self.dp.set_policy(slot, loaded.program)
        except BaseException:
            self._slots.give_back(slot)
            if loaded.users == 0:
                self._drop_program(digest, report)
            raise
        loaded.users += 1
        return _Placed(slot, digest, frozenset(ep.ipsets))

    def _switch(self, key: str, ifindex: int, ifname: str, new: dict[str, _Placed], report: PolicyReport) -> None:
        """Point the interface at ``new`` (one ifstate write), then free what it replaced."""
        olds = {d: self._placed.get((key, d)) for d in DIRECTIONS}
        current = self.dp.interface(ifindex)
        slots = {_IFSTATE_FIELD[d]: new[d].slot for d in DIRECTIONS}
        in_kernel = current is not None and all(getattr(current, f) == s for f, s in slots.items())
        if in_kernel and all(olds[d] is new[d] for d in DIRECTIONS):
            return  # nothing changed (an entry rewritten by someone else is put right below)
        if current is None:
            value = IfStateValue(flags=IfaceFlags.WEP | IfaceFlags.V4_READY, name=ifname[:15], **slots)
        else:
            value = attrs.evolve(current, **slots)  # keeps the kind, name and other slots
        self.dp.maps["cebpf_ifstate"].update(IfStateKey(ifindex).to_bytes(), value.to_bytes())
        for d in DIRECTIONS:
            if olds[d] is not new[d]:
                report.slots_switched += 1
                if olds[d] is not None:
                    self._release(olds[d], report)
            self._placed[(key, d)] = new[d]

    def _release(self, placed: _Placed, report: PolicyReport) -> None:
        if placed.slot > DENY_SLOT:
            # Deny, not empty: a packet that read the old index just before the switch must
            # not find "no policy" (allow) there.
            self.dp.set_policy(placed.slot, _DENY_PROGRAM)
            self._slots.give_back(placed.slot)
        if placed.digest is not None:
            loaded = self._programs[placed.digest]
            loaded.users -= 1
            if loaded.users == 0:
                self._drop_program(placed.digest, report)

    def _drop_program(self, digest: str, report: PolicyReport) -> None:
        # Unused programs are closed: the cache is for endpoints that share or keep rules.
        loaded = self._programs.pop(digest)
        loaded.program.close()
        report.programs_unloaded += 1

    def _forget_endpoint(self, key: str, report: PolicyReport) -> None:
        ifindex, _ = self._ifindex.pop(key)
        current = self.dp.interface(ifindex)
        if current is not None:
            # The interface is still registered (e.g. the pod is going away): deny, as an unknown
            # workload, rather than leave it without policy.
            value = attrs.evolve(current, **{f: DENY_SLOT for f in _IFSTATE_FIELD.values()})
            self.dp.maps["cebpf_ifstate"].update(IfStateKey(ifindex).to_bytes(), value.to_bytes())
        for d in DIRECTIONS:
            placed = self._placed.pop((key, d), None)
            if placed is not None:
                self._release(placed, report)
        report.endpoints_removed += 1

    # ---- IP sets -----------------------------------------------------------------------------

    def _kernel(self) -> set[IPSetKey]:
        if self._kernel_members is None:
            self._kernel_members = set(self.ipsets.keys())
        return self._kernel_members

    def _add_members(self, members: set[IPSetKey]) -> int:
        if not members:
            return 0
        batch = sorted(members, key=IPSetKey.to_bytes)
        self.ipsets.update_many([(m, _ONE) for m in batch])
        self._kernel().update(batch)
        return len(batch)

    def _delete_members(self, members: set[IPSetKey]) -> int:
        if not members:
            return 0
        self.ipsets.delete_many(sorted(members, key=IPSetKey.to_bytes))
        self._kernel().difference_update(members)
        return len(members)

    # ---- reading -----------------------------------------------------------------------------

    def slot_of(self, pod_key: str, direction: str) -> int | None:
        """The jump slot serving ``pod_key``'s ``direction`` (-1: no policy), None if not managed."""
        placed = self._placed.get((pod_key, direction))
        return None if placed is None else placed.slot

    def table(self) -> PolicyTable:
        """Slots in use, their programs' rule tables, and each endpoint's slots."""
        table = PolicyTable()
        for key, (ifindex, ifname) in sorted(self._ifindex.items()):
            table.endpoints[key] = {"ifindex": ifindex, "ifname": ifname,
                                    **{d: self._placed[(key, d)].slot for d in DIRECTIONS
                                       if (key, d) in self._placed}}
        for (key, direction), placed in sorted(self._placed.items()):
            if placed.digest is None or placed.slot <= DENY_SLOT:
                continue
            entry = table.slots.setdefault(placed.slot, {"program": placed.digest, "endpoints": [],
                                                         "rules": self._programs[placed.digest].rules})
            entry["endpoints"].append([key, direction])
        return table

    def rule(self, slot: int, rule_id: int) -> RuleRange | None:
        """The rule of the program in ``slot`` that writes ``rule_id`` to ``dp_state.pol_rule``."""
        if slot == DENY_SLOT:
            return _UNKNOWN_WORKLOAD
        for placed in self._placed.values():
            if placed.slot == slot and placed.digest is not None and slot > DENY_SLOT:
                rules = self._programs[placed.digest].rules
                return rules[rule_id - 1] if 0 < rule_id <= len(rules) else None
        return None

    def ipset_members(self) -> dict[int, frozenset[IPSetKey]]:
        """Members wanted per IP set id after the last sync (what the kernel holds)."""
        return dict(self._set_members)

    def resync_ipsets(self) -> None:
        """Forget the cached copy of ``cebpf_ipsets``: the next sync re-reads the kernel."""
        self._kernel_members = None

    def close(self) -> None:
        """Close the manager's program fds. Slots and ifstate entries stay (programs live on in
        ``cebpf_jump``), like :meth:`Dataplane.close` leaves attachments."""
        for loaded in self._programs.values():
            loaded.program.close()
        self._programs.clear()
