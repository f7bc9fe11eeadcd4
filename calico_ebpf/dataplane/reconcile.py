"""Reconcile desired state (a ClusterState) into one node's maps with minimal, ordered writes.

The :class:`Reconciler` behind ``Dataplane.apply``:

1. **What changed.** It keeps a snapshot of the objects it last applied
   (by identity, then by value) and finds the Services touched since:
   changed Services and the Services of changed EndpointSlices. Only those
   are compiled again (``compile_services`` over a small ClusterState
   holding just them), so a one-endpoint change costs O(change) however
   many services exist. A change to this Node, the KubeProxyConfiguration,
   or a frontend claimed by two services falls back to a full compile.
2. **Diff.** The result is diffed against a cached view of the kernel maps,
   read back through the codec once (also how a restarted agent re-adopts
   a pinned dataplane) and then kept up to date by our own writes.
3. **Write** in the order of DESIGN §6 (``nat_sync.write_plan``), after a
   capacity check of every map; routes are written before and deleted
   after the NAT change, so a new backend is routable before it is used.

Service ids are stable across applies and restarts: on first use the ids
found in the kernel's frontends are re-adopted for the same service ports.
"""

from __future__ import annotations

import gc
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from calico_ebpf.compiler.service_ids import ServiceIdAllocator
from calico_ebpf.compiler.services import compile_services
from calico_ebpf.dataplane import nat_sync
from calico_ebpf.dataplane.changes import KindSnapshot
from calico_ebpf.dataplane.config import NodeConfig
from calico_ebpf.dataplane.nat_sync import BE, FE_LPM, FEH, NatView, ServiceNat, group_services, service_of
from calico_ebpf.dataplane.route_sync import NodeRoutes
from calico_ebpf.dataplane.small_maps import RouteEntries, TypedMapSync, desired_failsafes
from calico_ebpf.errors import CalicoEBPFError, UnsupportedError
from calico_ebpf.maps.enums import Proto
from calico_ebpf.maps.named import Failsafes, Routes
from calico_ebpf.model.state import ClusterState

ROUTES, FSAFES = "cebpf_routes", "cebpf_fsafes"

# Never a real service-port key (those are ns/name/port/PROTO): only raises the allocator's next id.
_ID_FLOOR_KEY = "\0next-id"


@dataclass
class MapChanges:
    """Entries one apply added, changed (same key, new value) and removed in one map."""

    added: int = 0
    changed: int = 0
    removed: int = 0

    @property
    def total(self) -> int:
        return self.added + self.changed + self.removed


@dataclass
class ApplyReport:
    """What one ``Dataplane.apply`` did.

    ``changes`` by map name; ``rejected``/``unsupported`` are the state's
    objects (or parts) that were not programmed, each naming the object and
    field; ``conflicts`` are frontends two services claim (the first, in key
    order, keeps it); ``full`` is False when only changed services were
    recompiled.
    """

    node: str
    changes: dict[str, MapChanges] = field(default_factory=dict)
    rejected: list[CalicoEBPFError] = field(default_factory=list)
    unsupported: list[UnsupportedError] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    services: int = 0
    services_compiled: int = 0
    full: bool = True
    seconds: float = 0.0
    #: seconds spent finding changes + compiling + diffing ("compile") and writing ("write")
    timings: dict[str, float] = field(default_factory=dict)
    policy: Any = None
    #: Backends this apply took away, by service frontend: ``{(ip, port, "tcp"): ((ip, port), ...)}``
    #: (a frontend that went away lists all of its backends). Their conntrack is cleaned after the
    #: writes (``Dataplane.clean_stale_nat``); the result of that is ``stale_nat``.
    removed_backends: dict[tuple[str, int, str], tuple[tuple[str, int], ...]] = field(default_factory=dict)
    stale_nat: Any = None  # conntrack.StaleNatResult, or None when not cleaned

    @property
    def writes(self) -> int:
        """Entries written or deleted, all maps together (0: the kernel already matched)."""
        return sum(c.total for c in self.changes.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "changes": {k: vars(v) for k, v in self.changes.items()},
            "rejected": [str(e) for e in self.rejected],
            "unsupported": [str(e) for e in self.unsupported],
            "conflicts": list(self.conflicts),
            "services": self.services,
            "services_compiled": self.services_compiled,
            "full": self.full,
            "seconds": self.seconds,
            "timings": dict(self.timings),
            "removed_backends": {f"{ip}:{port}/{proto}": [f"{b}:{bp}" for b, bp in bes]
                                 for (ip, port, proto), bes in self.removed_backends.items()},
            "stale_nat": None if self.stale_nat is None else {
                k: getattr(self.stale_nat, k) for k in ("deleted", "reset", "flows", "tcp_flows")},
        }

    def __str__(self) -> str:
        parts = [f"{name} +{c.added} ~{c.changed} -{c.removed}" for name, c in self.changes.items() if c.total]
        text = (f"node {self.node}: {self.services} services, {'full' if self.full else 'incremental'} "
                f"apply in {self.seconds * 1e3:.1f} ms: {', '.join(parts) or 'no changes'}")
        if self.removed_backends:
            text += f"; {sum(map(len, self.removed_backends.values()))} backends removed"
        for label, items in (("rejected", self.rejected), ("unsupported", self.unsupported),
                             ("conflict", self.conflicts)):
            text += "".join(f"\n  {label}: {e}" for e in items)
        return text


class PolicySync(Protocol):
    """The hook for per-endpoint policy programs and IP sets (``dataplane.policy.PolicyManager``).

    When ``Dataplane.policy_sync`` is set, every apply ends with ``sync(state, endpoints)``,
    ``endpoints`` being this node's pods whose veth is registered (``set_interface``):
    ``{"ns/pod": (ifindex, ifname)}``; the result lands in ``ApplyReport.policy``.
    """

    def sync(self, state: ClusterState, endpoints: Mapping[str, tuple[int, str]]) -> Any: ...


_CONFLICT = re.compile(r" of (\S+) is already taken by (\S+);")


def conflict_services(conflicts) -> set[str] | None:
    """The Services (ns/name) named in ``compile_services`` conflict notes; None if one cannot be read."""
    out: set[str] = set()
    for text in conflicts:
        m = _CONFLICT.search(text)
        if m is None:
            return None
        out.update(service_of(pk) for pk in m.groups())
    return out


class Reconciler:
    """Keeps one Dataplane's NAT, route and failsafe maps equal to a ClusterState."""

    def __init__(self, dataplane, config: NodeConfig | None = None):
        self.dp = dataplane
        self.config = config
        maps = dataplane.maps
        self.routes = TypedMapSync(Routes(maps[ROUTES]))
        self.fsafes = TypedMapSync(Failsafes(maps[FSAFES]))
        self.nat_view: NatView | None = None
        self._reset_desired()

    # ---- cache control ------------------------------------------------------------------------

    def _reset_desired(self) -> None:
        self._desired_ok = False  # False: the next apply compiles everything
        self._svc: dict[str, ServiceNat] = {}
        self._want_feh: dict = {}
        self._want_lpm: dict = {}
        self._want_blocks: dict = {}
        self._ids: dict[str, int] = {}
        self._next_id = 1
        self._adopt = True  # take service ids from the kernel on the next full compile
        self._snaps: dict[str, KindSnapshot] = {}
        self._slices_by_svc: dict[str, dict] = {}
        self._scalars: tuple = ()
        # Services (ns/name) on either side of a frontend conflict; a change to one of them
        # recompiles everything (who wins depends on all of them). None: unknown, always full.
        self._conflicted: set[str] | None = set()
        self._routes_compiled: tuple = ()
        self._route_entries = RouteEntries()
        self._node_routes = NodeRoutes()

    def invalidate_nat(self) -> None:
        """Someone wrote the NAT maps behind our back: read them again and diff everything next time."""
        self.nat_view = None

    def invalidate_all(self) -> None:
        self.nat_view = None
        self.routes.invalidate()
        self.fsafes.invalidate()
        self._reset_desired()

    @property
    def service_ids(self) -> dict[str, int]:
        """``ns/name/port/PROTO -> service id`` as last applied."""
        return dict(self._ids)

    # ---- apply --------------------------------------------------------------------------------

    def apply(self, state: ClusterState, node: str | None = None) -> ApplyReport:
        """Bring the maps to ``state`` (see the module docstring); returns what changed."""
        t0 = time.perf_counter()
        # A full sync allocates a few hundred thousand short-lived tuples and none of them
        # form cycles; letting the cyclic GC rescan the (large) ClusterState on the way
        # tripled the time of a 10k-service sync. Collection resumes when we return.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            report = self._apply(state, node)
        finally:
            if was_enabled:
                gc.enable()
        report.seconds = time.perf_counter() - t0
        return report

    def _apply(self, state: ClusterState, node: str | None) -> ApplyReport:
        t0 = time.perf_counter()
        node = node or (self.config.node if self.config else None)
        if self.config is None or node != self.config.node:
            self.config = NodeConfig.from_state(state, node)
            self._desired_ok = False
        node = self.config.node
        report = ApplyReport(node=node, rejected=list(state.rejected), unsupported=list(state.unsupported))

        # Things every service depends on: any change recompiles everything.
        felix = state.of_kind("FelixConfiguration")
        scalars = (state.nodes.get(node), state.kube_proxy_config, felix.get("default"), felix.get(f"node.{node}"))
        scalars_changed = len(scalars) != len(self._scalars) or any(
            a is not b and a != b for a, b in zip(scalars, self._scalars))
        if scalars_changed:
            self.config = self.config.updated_from(state)

        def changes(kind: str) -> dict | None:
            snap = self._snaps.get(kind)
            if snap is None:
                snap = self._snaps[kind] = KindSnapshot()
            return snap.update(state.of_kind(kind))

        svc_changes = changes("Service")
        slice_changes = changes("EndpointSlice")
        route_inputs = [changes(k) for k in ("Node", "Pod", "IPPool")]
        full = (not self._desired_ok or scalars_changed or self._conflicted is None or svc_changes is None
                or slice_changes is None)
        try:
            if full:
                nat = self._compile_all(state, report)
            else:
                nat = self._compile_changed(state, svc_changes, slice_changes, report)
                if nat is None:
                    full = True
                    nat = self._compile_all(state, report)
            report.full = full

            want_routes = None
            nodes_or_pools = route_inputs[0], route_inputs[2]
            if full or any(c is None or c for c in nodes_or_pools) or route_inputs[1] is None:
                self._routes_compiled = self._node_routes.full(state, node)
            elif route_inputs[1]:
                self._routes_compiled = self._node_routes.pods_changed(state, node, route_inputs[1])
            if full or any(c is None or c for c in route_inputs):
                want_routes = self._route_entries(self._routes_compiled, self.dp.ifindex_of)
            want_fsafes = desired_failsafes(self.config.failsafes_inbound, self.config.failsafes_outbound) \
                if full or scalars_changed or self.fsafes.view is None else None
            t_write = time.perf_counter()
            report.timings["compile"] = t_write - t0
            self._write(nat, want_routes, want_fsafes, report)
            report.timings["write"] = time.perf_counter() - t_write
        except BaseException:
            self._desired_ok = False  # the kernel is the truth again: re-read and recompile next time
            self._node_routes.invalidate()
            raise
        self._scalars = scalars
        self._desired_ok = True
        report.services = len(self._svc)

        policy = getattr(self.dp, "policy_sync", None)
        if policy is not None:
            report.policy = policy.sync(state, self.local_endpoints())
        return report

    def local_endpoints(self) -> dict[str, tuple[int, str]]:
        """``{"ns/pod": (ifindex, ifname)}`` for this node's pods whose veth is registered."""
        out = {}
        for r in self._routes_compiled:
            if r.ifname and r.pod:
                ifindex = self.dp.ifindex_of(r.ifname)
                if ifindex:
                    out[r.pod] = (ifindex, r.ifname)
        return out

    def resync_routes(self) -> list[int] | None:
        """Write the routes again with the current interface ifindexes (after ``set_interface``)."""
        if not self._desired_ok or not self._routes_compiled:
            return None
        return self.routes.sync(self._route_entries(self._routes_compiled, self.dp.ifindex_of))

    # ---- compile ------------------------------------------------------------------------------

    def _allocator(self, previous: Mapping[str, int]) -> ServiceIdAllocator:
        prev = dict(previous)
        # New keys must never take an id another (unchanged) service holds, nor reuse a
        # released one: seed the allocator's "next id" with a key no Service can have.
        if self._next_id > 1 and (self._next_id - 1) not in prev.values():
            prev[_ID_FLOOR_KEY] = self._next_id - 1
        return ServiceIdAllocator(prev)

    def _compile_all(self, state: ClusterState, report: ApplyReport) -> _NatWork:
        if self.nat_view is None:
            self.nat_view = NatView.read(self.dp.maps)
        node = self.config.node
        adopting = self._adopt and bool(self.nat_view.feh or self.nat_view.lpm)
        ids = ServiceIdAllocator() if adopting else self._allocator(self._ids)
        desired = compile_services(state, node, self.config.services, ids=ids)
        svcs = group_services(desired)
        if adopting:
            remap = self._adopted_ids(svcs, desired.service_ids)
            if any(a != b for a, b in remap.items()):
                svcs = group_services(desired, remap)
        # The state already notes most of these (SCTP ports); add only what it does not.
        noted = {(u.object, u.feature) for u in report.unsupported}
        report.unsupported += [e for e in desired.unsupported if (e.object, e.feature) not in noted]
        report.conflicts += desired.conflicts
        report.services_compiled = len(svcs)

        feh, lpm, blocks = {}, {}, {}
        conflicts = conflict_services(desired.conflicts)
        for skey in sorted(svcs):
            s = svcs[skey]
            for table, entries in ((feh, s.feh), (lpm, s.lpm)):
                for k, v in entries.items():
                    if table.setdefault(k, v) is not v:
                        conflicts = None
                        report.conflicts.append(f"frontend {nat_sync.int_ip(k[0])}:{k[1]}/{k[2]} of {skey} "
                                                "is already taken by another service")
            blocks.update(s.blocks)
        ids_map = {pk: sid for s in svcs.values() for pk, sid in s.ports.items()}
        slices: dict[str, dict] = {}
        for key, sl in state.endpoint_slices.items():
            if sl.service_key:
                slices.setdefault(sl.service_key, {})[key] = sl
        plan = nat_sync.plan(self.nat_view, feh, lpm, blocks)

        def commit() -> None:
            self._svc, self._want_feh, self._want_lpm, self._want_blocks = svcs, feh, lpm, blocks
            self._ids = ids_map
            self._next_id = max(self._next_id, max(ids_map.values(), default=0) + 1,
                                max(self.nat_view.service_ids(), default=0) + 1)
            self._slices_by_svc = slices
            self._conflicted = conflicts
            self._adopt = False

        return _NatWork(plan, commit)

    def _adopted_ids(self, svcs: dict[str, ServiceNat], compiled_ids: Mapping[str, int]) -> dict[int, int]:
        """compile id -> id to use: the kernel's where every frontend of the service port agrees on
        one id no other port claims, else a fresh id above every id in the kernel."""
        view = self.nat_view
        votes: dict[int, set[int]] = {}
        for s in svcs.values():
            for k, v in s.feh.items():
                old = view.feh.get(k)
                if old is not None:
                    votes.setdefault(v[0], set()).add(old[0])
        claimed: dict[int, int] = {}
        for sid, kids in votes.items():
            if len(kids) == 1:
                kid = next(iter(kids))
                claimed[kid] = -1 if kid in claimed else sid
        remap = {sid: kid for kid, sid in claimed.items() if sid != -1}
        nxt = max(view.service_ids() | {self._next_id - 1}, default=0) + 1
        for pk in sorted(compiled_ids):
            sid = compiled_ids[pk]
            if sid not in remap:
                remap[sid] = nxt
                nxt += 1
        return remap

    def _compile_changed(self, state: ClusterState, svc_changes: dict, slice_changes: dict,
                         report: ApplyReport) -> _NatWork | None:
        """Compile only the Services touched since the last apply; None when that cannot be exact
        (a frontend conflict), then the caller compiles everything."""
        changed = set(svc_changes)
        slice_index = self._slices_by_svc
        index_updates: list[tuple[str, str, Any]] = []
        for key, (old, new) in slice_changes.items():
            if old is not None and old.service_key:
                changed.add(old.service_key)
                index_updates.append((old.service_key, key, None))
            if new is not None and new.service_key:
                changed.add(new.service_key)
                index_updates.append((new.service_key, key, new))
        if changed & self._conflicted:
            return None
        if self.nat_view is None:
            self.nat_view = NatView.read(self.dp.maps)
            full_diff = True
        else:
            full_diff = False
        if not changed and not full_diff:
            return _NatWork(nat_sync.NatPlan(counts={FEH: [0, 0, 0], FE_LPM: [0, 0, 0], BE: [0, 0, 0]}), None)

        def slices_of(skey: str) -> dict:
            cur = dict(slice_index.get(skey, {}))
            for svc, key, sl in index_updates:
                if svc == skey:
                    if sl is None:
                        cur.pop(key, None)
                    else:
                        cur[key] = sl
            return cur

        node = self.config.node
        sub = ClusterState()
        sub.add(state.nodes[node])
        new_slices: dict[str, dict] = {}
        for skey in changed:
            svc = state.services.get(skey)
            new_slices[skey] = slices_of(skey)
            if svc is not None:
                sub.add(svc)
                for sl in new_slices[skey].values():
                    sub.add(sl)
        old = {skey: self._svc[skey] for skey in changed if skey in self._svc}
        prev_ids = {pk: sid for s in old.values() for pk, sid in s.ports.items()}
        desired = compile_services(sub, node, self.config.services, ids=self._allocator(prev_ids))
        if desired.conflicts:
            return None
        new = group_services(desired)
        report.services_compiled = len(new)

        old_feh = set().union(*(s.feh for s in old.values()))
        old_lpm = set().union(*(s.lpm for s in old.values()))
        feh, lpm, blocks = {}, {}, {}
        for s in new.values():
            for k in s.feh:
                if k in self._want_feh and k not in old_feh:
                    return None  # claimed by a service that did not change: let a full compile order it
            for k in s.lpm:
                if k in self._want_lpm and k not in old_lpm:
                    return None
            feh.update(s.feh)
            lpm.update(s.lpm)
            blocks.update(s.blocks)
        sids = set(blocks).union(*(s.blocks for s in old.values()))
        if full_diff:
            want_feh = {k: v for k, v in self._want_feh.items() if k not in old_feh}
            want_feh.update(feh)
            want_lpm = {k: v for k, v in self._want_lpm.items() if k not in old_lpm}
            want_lpm.update(lpm)
            want_blocks = {k: v for k, v in self._want_blocks.items() if k not in sids}
            want_blocks.update(blocks)
            plan = nat_sync.plan(self.nat_view, want_feh, want_lpm, want_blocks)
        else:
            plan = nat_sync.plan(self.nat_view, feh, lpm, blocks, fe_keys=old_feh | feh.keys(),
                                 lpm_keys=old_lpm | lpm.keys(), sids=sids)

        def commit() -> None:
            for k in old_feh:
                del self._want_feh[k]
            for k in old_lpm:
                del self._want_lpm[k]
            for s in old.values():
                for sid in s.blocks:
                    self._want_blocks.pop(sid, None)
                for pk in s.ports:
                    self._ids.pop(pk, None)
            for skey in changed:
                self._svc.pop(skey, None)
                if new_slices.get(skey):
                    slice_index[skey] = new_slices[skey]
                else:
                    slice_index.pop(skey, None)
            self._want_feh.update(feh)
            self._want_lpm.update(lpm)
            self._want_blocks.update(blocks)
            for skey, s in new.items():
                self._svc[skey] = s
                self._ids.update(s.ports)
                self._next_id = max(self._next_id, max(s.ports.values(), default=0) + 1)

        return _NatWork(plan, commit)

    # ---- write --------------------------------------------------------------------------------

    def _write(self, nat: _NatWork, want_routes, want_fsafes, report: ApplyReport) -> None:
        # Every plan and every capacity check before the first write: a map that
        # cannot take the change fails the apply with nothing written anywhere.
        route_plan = self.routes.plan(want_routes) if want_routes is not None else None
        fsafe_plan = self.fsafes.plan(want_fsafes) if want_fsafes is not None else None
        for sync, p in ((self.routes, route_plan), (self.fsafes, fsafe_plan)):
            if p is not None:
                sync.check(p)
        nat_sync.check_capacity(self.dp.maps, self.nat_view, nat.plan)
        removed = removed_backends(self.nat_view, nat.plan)

        if route_plan is not None:
            self.routes.write(route_plan)  # new routes before anything can send to them
        if fsafe_plan is not None:
            self.fsafes.write(fsafe_plan)
            self.fsafes.delete(fsafe_plan)
        try:
            nat_sync.write_plan(self.dp.maps, self.nat_view, nat.plan)
        except BaseException:
            self.nat_view = None
            self._adopt = True
            raise
        if nat.commit is not None:
            nat.commit()
        if route_plan is not None:
            self.routes.delete(route_plan)  # routes nothing translates to any more

        for name, counts in nat.plan.counts.items():
            report.changes[name] = MapChanges(*counts)
        report.changes[ROUTES] = MapChanges(*(route_plan.counts if route_plan else (0, 0, 0)))
        report.changes[FSAFES] = MapChanges(*(fsafe_plan.counts if fsafe_plan else (0, 0, 0)))
        report.removed_backends = removed

    def live_backends(self, backends) -> dict[tuple[str, int, int], set[tuple[str, int]]]:
        """``{(frontend ip, port, proto number): {(ip, port), ...}}`` as the maps hold them now,
        for the frontends that still have one of ``backends`` ((ip, port) pairs): a flow to such a
        frontend keeps its backend (``remove_stale_nat``'s ``live``)."""
        wanted = set(backends)
        view = self.nat_view
        if not wanted or view is None:
            return {}
        live = {}
        for table in (view.feh, view.lpm):
            for k, v in table.items():
                block = view.blocks.get(v[0], ())
                if any(b in wanted for b in block):
                    live.setdefault((nat_sync.int_ip(k[0]), k[1], k[2]), set()).update(b for b in block if b)
        return live


def removed_backends(view: NatView, plan: nat_sync.NatPlan) -> dict[tuple[str, int, str], tuple[tuple[str, int], ...]]:
    """The backends ``plan`` takes away from each frontend of ``view`` (before it is written)."""
    gone: dict[int, tuple] = {}
    for sid, new in plan.block_updates.items():
        old = view.blocks.get(sid, ())
        left = set(old) - set(new or ()) - {None}
        if left:
            gone[sid] = tuple(sorted(left))
    out: dict[tuple[str, int, str], tuple[tuple[str, int], ...]] = {}
    if not gone:
        return out
    # A block changes only for a service the plan touched, and the plan compared every frontend
    # of those services: look only at those keys (all of them on a full apply).
    for table, keys in ((view.feh, plan.fe_keys), (view.lpm, plan.lpm_keys)):
        for k in table if keys is None else keys:
            v = table.get(k)
            bes = gone.get(v[0]) if v is not None else None
            if bes:
                out.setdefault((nat_sync.int_ip(k[0]), k[1], _proto_name(k[2])), bes)
    return out


def _proto_name(proto: int) -> str:
    try:
        return Proto(proto).name.lower()
    except ValueError:
        return str(proto)


@dataclass
class _NatWork:
    plan: nat_sync.NatPlan
    commit: Any  # callable run after the plan is written (updates the desired-state cache)
