"""Routes and failsafe ports: desired typed entries and their diff-and-write.

These maps hold at most a few entries per pod or port, so they go through
the typed entries (``maps.routes``, ``maps.failsafes``) and ``TypedMap``'s
batch calls. New and changed entries are written before departing ones are
deleted, so an address that moves (a pod rescheduled, a block re-homed) is
always routable.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from collections.abc import Callable, Iterable, Mapping

from calico_ebpf.compiler.routes import Route
from calico_ebpf.errors import MapFullError
from calico_ebpf.maps.enums import FailsafeFlags, RouteFlags
from calico_ebpf.maps.failsafes import FailsafeKey
from calico_ebpf.maps.ipsets import U32Value
from calico_ebpf.maps.routes import RouteKey, RouteValue
from calico_ebpf.maps.typed import TypedMap

log = logging.getLogger(__name__)


def desired_routes(routes: Iterable[Route], ifindex_of: Callable[[str], int]) -> dict[RouteKey, RouteValue]:
    """Routes-map entries; a local workload's route carries its veth's ifindex
    (``ifindex_of(name)``, 0 while the interface is unknown)."""
    out: dict[RouteKey, RouteValue] = {}
    for r in routes:
        flags = RouteFlags(r.flags)
        if r.ifname is not None:
            value = RouteValue.for_ifindex(flags, ifindex_of(r.ifname))
        else:
            value = RouteValue(flags=flags, next_hop=r.next_hop or "0.0.0.0")
        out[RouteKey(r.cidr)] = value
    return out


class RouteEntries:
    """:func:`desired_routes` with memory: a Route seen in the previous call (same record, same
    veth ifindex) reuses its typed entries, so re-deriving 10k routes after one pod changed
    costs a dict lookup per route instead of building two validated entries each."""

    def __init__(self) -> None:
        self._memo: dict[Route, tuple[int, RouteKey, RouteValue]] = {}

    def __call__(self, routes: Iterable[Route], ifindex_of: Callable[[str], int]) -> dict[RouteKey, RouteValue]:
        memo, out, fresh = self._memo, {}, {}
        for r in routes:
            ifindex = ifindex_of(r.ifname) if r.ifname is not None else 0
            hit = memo.get(r)
            if hit is None or hit[0] != ifindex:
                [(key, value)] = desired_routes((r,), lambda _name, i=ifindex: i).items()
                hit = (ifindex, key, value)
            fresh[r] = hit
            out[hit[1]] = hit[2]
        self._memo = fresh
        return out


def desired_failsafes(inbound, outbound) -> dict[FailsafeKey, U32Value]:
    """Failsafe entries from ``(protocol, port, cidr-or-None)`` lists (IPv6 CIDRs are skipped)."""
    out: dict[FailsafeKey, U32Value] = {}
    one = U32Value(1)
    for ports, flags in ((inbound, FailsafeFlags(0)), (outbound, FailsafeFlags.OUTBOUND)):
        for proto, port, net in ports:
            if net is not None and ":" in net:
                continue
            cidr = ipaddress.IPv4Network(net or "0.0.0.0/0", strict=False)
            out[FailsafeKey(port=port, proto=proto, cidr=cidr, flags=flags)] = one
    return out


class TypedMapSync:
    """Keeps one typed map equal to a desired dict, through a cached view of the map."""

    def __init__(self, typed: TypedMap):
        self.typed = typed
        self.view: dict | None = None

    @property
    def name(self) -> str:
        return self.typed.map.name

    def invalidate(self) -> None:
        """Forget the cached view (someone else wrote the map); the next sync reads it back."""
        self.view = None

    def plan(self, want: Mapping) -> SmallPlan:
        """The writes and deletes from the (cached) map content to ``want``."""
        if self.view is None:
            self.view = dict(self.typed.items())
        have = self.view
        writes = [(k, v) for k, v in want.items() if have.get(k) != v]
        added = sum(1 for k, _ in writes if k not in have)
        return SmallPlan(writes, [k for k in have if k not in want], added)

    def check(self, p: SmallPlan) -> None:
        """MapFullError (nothing written) if the writes of ``p`` do not fit."""
        peak = len(self.view or ()) + p.added
        if peak > self.typed.map.max_entries:
            raise MapFullError(f"apply {self.name}", errno.ENOSPC,
                               f"map {self.name!r} would need {peak} entries but holds "
                               f"{self.typed.map.max_entries}; nothing was written")

    def write(self, p: SmallPlan) -> None:
        """The new and changed entries of ``p`` (a failure puts the old ones back and raises)."""
        have = self.view
        try:
            self.typed.update_many(p.writes)
        except BaseException:
            try:
                self.typed.delete_many([k for k, _ in p.writes if k not in have])
                self.typed.update_many([(k, have[k]) for k, _ in p.writes if k in have])
            except Exception:
                log.exception("rollback of %s failed; the next apply re-reads it", self.name)
            self.view = None
            raise
        have.update(p.writes)

    def delete(self, p: SmallPlan) -> None:
        """The departing entries of ``p`` (after everything that used them is gone)."""
        try:
            self.typed.delete_many(p.deletes)
        except BaseException:
            self.view = None
            raise
        for k in p.deletes:
            self.view.pop(k, None)

    def sync(self, want: Mapping) -> list[int]:
        """Make the map hold exactly ``want`` now; returns [added, changed, removed]."""
        p = self.plan(want)
        self.check(p)
        self.write(p)
        self.delete(p)
        return p.counts


class SmallPlan:
    """Writes (new and changed entries) and deletes for one small map."""

    __slots__ = ("added", "deletes", "writes")

    def __init__(self, writes: list, deletes: list, added: int):
        self.writes, self.deletes, self.added = writes, deletes, added

    @property
    def counts(self) -> list[int]:
        return [self.added, len(self.writes) - self.added, len(self.deletes)]
