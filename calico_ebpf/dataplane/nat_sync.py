"""Service NAT maps: compiled service records -> kernel entries, diffed and written in a safe order.

Three maps hold a node's services (``docs/maps.md``):

* ``cebpf_nat_feh``: exact ``(addr, port, proto)`` frontends, the per-packet path;
* ``cebpf_nat_fe``: Calico's LPM layout, only for frontends with
  ``loadBalancerSourceRanges`` (one entry per allowed source CIDR plus a
  catch-all drop entry); their hash entry carries ``NatFlags.SRC_RANGES``;
* ``cebpf_nat_be``: backend blocks ``(service id, ordinal) -> addr:port``.

Entries are plain tuples here (addresses as ints) so that a full sync of
10k services moves through numpy columns and the batch calls instead of
hundreds of thousands of attrs objects; the typed entries stay the
reference (the column layouts are theirs: ``maps.columns``).

A :class:`NatPlan` is the difference between the desired entries and the
cached kernel view (:class:`NatView`). :func:`write_plan` checks capacity
first, then writes in the order that never lets a packet see half a change
(DESIGN §6): delete departing hash frontends -> write backends -> write LPM
frontends -> write hash frontends -> delete departing LPM frontends and
unused backends. A failed write puts back what it had changed and raises.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from calico_ebpf.compiler.services import DesiredServices
from calico_ebpf.errors import MapFullError
from calico_ebpf.maps.columns import from_columns, to_array
from calico_ebpf.maps.enums import NatFlags
from calico_ebpf.maps.nat import (
    NAT_FE_DROP_COUNT,
    NAT_FE_PREFIX_V4,
    NatBackendKey,
    NatBackendValue,
    NatFrontendHashKey,
    NatFrontendKey,
    NatFrontendValue,
)

log = logging.getLogger(__name__)

FEH, FE_LPM, BE = "cebpf_nat_feh", "cebpf_nat_fe", "cebpf_nat_be"
SRC_RANGES = int(NatFlags.SRC_RANGES)

FeKey = tuple[int, int, int]  # (addr as int, port, proto)
LpmKey = tuple[int, int, int, int, int]  # (addr, port, proto, source addr, source prefix length)
FeVal = tuple[int, int, int, int, int]  # (id, count, local, affinity_timeo, flags)
Backend = tuple[str, int]
Block = tuple  # tuple[Backend | None, ...]: ordinal -> backend (None: hole read from the kernel)


def ip_int(addr: str) -> int:
    return int.from_bytes(socket.inet_aton(addr), "big")


def int_ip(addr: int) -> str:
    return socket.inet_ntoa(addr.to_bytes(4, "big"))


def service_of(port_key: str) -> str:
    """``ns/name`` of a service-port key ``ns/name/port-name/PROTO``."""
    return port_key.rsplit("/", 2)[0]


@dataclass(slots=True)
class ServiceNat:
    """The NAT entries one Service (all of its ports) owns."""

    feh: dict = field(default_factory=dict)  # FeKey -> FeVal
    lpm: dict = field(default_factory=dict)  # LpmKey -> FeVal
    blocks: dict = field(default_factory=dict)  # service id -> tuple of Backend
    ports: dict = field(default_factory=dict)  # port key -> service id


def group_services(desired: DesiredServices, remap: Mapping[int, int] | None = None) -> dict[str, ServiceNat]:
    """The compiled records as entries, per Service (``ns/name``); ``remap`` renumbers service ids."""
    out: dict[str, ServiceNat] = {}
    by_port: dict[str, ServiceNat] = {}
    sid_of: dict[str, int] = {}
    for pk, sid in desired.service_ids.items():
        s = out.get(skey := service_of(pk))
        if s is None:
            s = out[skey] = ServiceNat()
        nsid = remap.get(sid, sid) if remap else sid
        s.ports[pk] = sid_of[pk] = nsid
        by_port[pk] = s
        s.blocks[nsid] = desired.backends[sid].backends
    ranged = {(fe.addr, fe.port, fe.proto) for fe in desired.frontends if fe.src_cidr is not None or fe.drop}
    addr_cache: dict[str, int] = {}
    for fe in desired.frontends:
        s = by_port[fe.service]
        sid = sid_of[fe.service]
        a = addr_cache.get(fe.addr)
        if a is None:
            a = addr_cache[fe.addr] = ip_int(fe.addr)
        fk = (a, fe.port, fe.proto)
        if ranged and (fe.addr, fe.port, fe.proto) in ranged:
            if fe.drop:
                s.lpm[(a, fe.port, fe.proto, 0, 0)] = (sid, NAT_FE_DROP_COUNT, 0, 0, fe.flags)
                s.feh.setdefault(fk, (sid, NAT_FE_DROP_COUNT, 0, 0, fe.flags | SRC_RANGES))
                continue
            net = ipaddress.IPv4Network(fe.src_cidr or "0.0.0.0/0", strict=False)
            value = (sid, fe.count, fe.local, fe.affinity_timeout, fe.flags)
            s.lpm[(a, fe.port, fe.proto, int(net.network_address), net.prefixlen)] = value
            s.feh[fk] = (sid, fe.count, fe.local, fe.affinity_timeout, fe.flags | SRC_RANGES)
        else:
            s.feh[fk] = (sid, fe.count, fe.local, fe.affinity_timeout, fe.flags)
    return out


# ---- the kernel side ----------------------------------------------------------------------------


def _cols(rows: list[tuple], names: tuple[str, ...], dtypes: tuple) -> dict[str, np.ndarray]:
    cols = list(zip(*rows)) if rows else [()] * len(names)
    return {n: np.array(c, dtype=t) for n, c, t in zip(names, cols, dtypes)}


_U32, _U16, _U8 = np.uint32, np.uint16, np.uint8
_FE_VALUE_COLS = (("id", "count", "local", "affinity_timeo", "flags"), (_U32,) * 5)


def fe_key_bytes(keys: list[FeKey]) -> np.ndarray:
    return from_columns(NatFrontendHashKey, _cols(keys, ("addr", "port", "protocol"), (_U32, _U16, _U8)), len(keys))


def lpm_key_bytes(keys: list[LpmKey]) -> np.ndarray:
    cols = _cols(keys, ("addr", "port", "protocol", "saddr", "prefixlen"), (_U32, _U16, _U8, _U32, _U32))
    cols["prefixlen"] = cols["prefixlen"] + NAT_FE_PREFIX_V4
    return from_columns(NatFrontendKey, cols, len(keys))


def fe_value_bytes(values: list[FeVal]) -> np.ndarray:
    return from_columns(NatFrontendValue, _cols(values, *_FE_VALUE_COLS), len(values))


def be_key_bytes(keys: list[tuple[int, int]]) -> np.ndarray:
    return from_columns(NatBackendKey, _cols(keys, ("id", "ordinal"), (_U32, _U32)), len(keys))


def be_value_bytes(values: list[Backend]) -> np.ndarray:
    if not values:
        return from_columns(NatBackendValue, {}, 0)
    addrs, ports = zip(*values)
    # inet_aton gives network-order bytes, which is how the addr column stores them:
    # one join instead of an int per backend (a third of a 100k-backend encode).
    packed = np.frombuffer(b"".join(map(socket.inet_aton, addrs)), dtype=">u4")
    return from_columns(NatBackendValue, {"addr": packed, "port": np.array(ports, dtype=_U16)}, len(values))


def _read(m, key_type, value_type):
    kbuf, vbuf, n = m.lookup_batch_all()
    return to_array(key_type, kbuf, n), to_array(value_type, vbuf, n), n


def _fe_values(varr) -> list[FeVal]:
    return list(zip(*(varr[c].tolist() for c in _FE_VALUE_COLS[0])))


@dataclass
class NatView:
    """What the three NAT maps hold, as last read or written by us."""

    feh: dict = field(default_factory=dict)
    lpm: dict = field(default_factory=dict)
    blocks: dict = field(default_factory=dict)  # service id -> Block
    backend_count: int = 0

    @classmethod
    def read(cls, maps) -> NatView:
        """Read the maps back through the codec's columns (once; then the view is kept up to date)."""
        view = cls()
        karr, varr, n = _read(maps[FEH], NatFrontendHashKey, NatFrontendValue)
        if n:
            keys = zip(karr["addr"].tolist(), karr["port"].tolist(), karr["protocol"].tolist())
            view.feh = dict(zip(keys, _fe_values(varr)))
        karr, varr, n = _read(maps[FE_LPM], NatFrontendKey, NatFrontendValue)
        if n:
            plen = (karr["prefixlen"].astype(np.int64) - NAT_FE_PREFIX_V4).tolist()
            keys = zip(karr["addr"].tolist(), karr["port"].tolist(), karr["protocol"].tolist(),
                       karr["saddr"].tolist(), plen)
            view.lpm = dict(zip(keys, _fe_values(varr)))
        karr, varr, n = _read(maps[BE], NatBackendKey, NatBackendValue)
        if n:
            grouped: dict[int, dict[int, Backend]] = {}
            for sid, ordinal, addr, port in zip(karr["id"].tolist(), karr["ordinal"].tolist(),
                                                varr["addr"].tolist(), varr["port"].tolist()):
                grouped.setdefault(sid, {})[ordinal] = (int_ip(addr), port)
            for sid, by_ord in grouped.items():
                view.blocks[sid] = tuple(by_ord.get(i) for i in range(max(by_ord) + 1))
            view.backend_count = n
        return view

    def service_ids(self) -> set[int]:
        return {v[0] for v in self.feh.values()} | {v[0] for v in self.lpm.values()} | set(self.blocks)


@dataclass
class NatPlan:
    """The writes that take the maps from the view to the desired entries, in write order."""

    feh_delete: list = field(default_factory=list)
    be_write: list = field(default_factory=list)  # ((sid, ordinal), Backend)
    lpm_write: list = field(default_factory=list)
    feh_write: list = field(default_factory=list)
    lpm_delete: list = field(default_factory=list)
    be_delete: list = field(default_factory=list)  # (sid, ordinal)
    block_updates: dict = field(default_factory=dict)  # sid -> new Block (None: gone)
    counts: dict = field(default_factory=dict)  # map name -> [added, changed, removed]
    # The frontend keys this plan compared (None: all), i.e. every frontend of the services it
    # touches: what looks for the frontends of a changed block need not scan the whole view.
    fe_keys: Collection | None = None
    lpm_keys: Collection | None = None

    def __bool__(self) -> bool:
        return bool(self.feh_delete or self.be_write or self.lpm_write or self.feh_write or self.lpm_delete
                    or self.be_delete)


def _diff_entries(want: dict, have: dict, keys: Iterable | None):
    """(writes, deletes, added) for ``keys`` (None: every key of both)."""
    writes, deletes = [], []
    added = 0
    if keys is None:
        get = have.get
        for k, v in want.items():
            old = get(k)
            if old != v:
                writes.append((k, v))
                added += old is None
        deletes = [k for k in have if k not in want]
    else:
        for k in keys:
            v, old = want.get(k), have.get(k)
            if v is None:
                if old is not None:
                    deletes.append(k)
            elif old != v:
                writes.append((k, v))
                added += old is None
    return writes, deletes, added


def plan(view: NatView, feh: dict, lpm: dict, blocks: dict, *, fe_keys=None, lpm_keys=None,
         sids=None) -> NatPlan:
    """The plan from ``view`` to the desired ``feh``/``lpm``/``blocks``.

    With ``fe_keys``/``lpm_keys``/``sids`` only those keys and blocks are
    compared (an incremental apply); None compares everything.
    """
    p = NatPlan(fe_keys=fe_keys, lpm_keys=lpm_keys)
    p.feh_write, p.feh_delete, added = _diff_entries(feh, view.feh, fe_keys)
    p.counts[FEH] = [added, len(p.feh_write) - added, len(p.feh_delete)]
    p.lpm_write, p.lpm_delete, added = _diff_entries(lpm, view.lpm, lpm_keys)
    p.counts[FE_LPM] = [added, len(p.lpm_write) - added, len(p.lpm_delete)]
    be_added = be_changed = 0
    empty: tuple = ()
    for sid in (blocks.keys() | view.blocks.keys()) if sids is None else sids:
        new = blocks.get(sid, empty)
        old = view.blocks.get(sid, empty)
        if new == old:
            continue
        nn, no = len(new), len(old)
        if not no:  # a new block (the whole of a first sync)
            p.be_write += [((sid, i), b) for i, b in enumerate(new)]
            be_added += nn
            p.block_updates[sid] = tuple(new)
            continue
        for i in range(nn):
            o = old[i] if i < no else None
            if o != new[i]:
                p.be_write.append(((sid, i), new[i]))
                if o is None:
                    be_added += 1
                else:
                    be_changed += 1
        for i in range(nn, no):
            if old[i] is not None:
                p.be_delete.append((sid, i))
        # a hole read back from the kernel inside the new length is filled above
        p.block_updates[sid] = tuple(new) if nn else None
    p.counts[BE] = [be_added, be_changed, len(p.be_delete)]
    return p


def check_capacity(maps, view: NatView, p: NatPlan) -> None:
    """Raise MapFullError (naming the map) if a step of ``p`` would overflow a map; nothing is written."""
    peaks = {
        # hash frontends are deleted before any write; the rest only after all writes
        FEH: len(view.feh) - len(p.feh_delete) + p.counts[FEH][0],
        FE_LPM: len(view.lpm) + p.counts[FE_LPM][0],
        BE: view.backend_count + p.counts[BE][0],
    }
    for name, peak in peaks.items():
        m = maps[name]
        if peak > m.max_entries:
            raise MapFullError(f"apply {name}", errno.ENOSPC,
                               f"map {name!r} would need {peak} entries but holds {m.max_entries} "
                               f"(raise its size, e.g. FelixConfiguration bpfMapSize*); nothing was written")


def _write(m, key_bytes, value_bytes, pairs) -> None:
    if pairs:
        m.update_batch(key_bytes([k for k, _ in pairs]), value_bytes([v for _, v in pairs]), len(pairs))


def _delete(m, key_bytes, keys) -> None:
    if keys:
        m.delete_batch(key_bytes(keys), len(keys))


def _restore(m, key_bytes, value_bytes, keys, old: Mapping) -> None:
    """Put back the old entry of every key (delete the ones that did not exist)."""
    back = [(k, old[k]) for k in keys if old.get(k) is not None]
    gone = [k for k in keys if old.get(k) is None]
    _delete(m, key_bytes, gone)
    _write(m, key_bytes, value_bytes, back)


def write_plan(maps, view: NatView, p: NatPlan) -> None:
    """Write ``p`` in the safe order and update ``view``.

    On a failed write, what this call changed is put back (best effort) and
    the error is raised; the caller must re-read the view afterwards.
    """
    check_capacity(maps, view, p)
    feh, lpm, be = maps[FEH], maps[FE_LPM], maps[BE]
    def old_be() -> dict:
        old = {}
        for sid, i in [k for k, _ in p.be_write] + p.be_delete:
            blk = view.blocks.get(sid, ())
            if i < len(blk) and blk[i] is not None:
                old[(sid, i)] = blk[i]
        return old

    steps = [
        (lambda: _delete(feh, fe_key_bytes, p.feh_delete),
         lambda: _restore(feh, fe_key_bytes, fe_value_bytes, p.feh_delete, view.feh)),
        (lambda: _write(be, be_key_bytes, be_value_bytes, p.be_write),
         lambda: _restore(be, be_key_bytes, be_value_bytes, [k for k, _ in p.be_write], old_be())),
        (lambda: _write(lpm, lpm_key_bytes, fe_value_bytes, p.lpm_write),
         lambda: _restore(lpm, lpm_key_bytes, fe_value_bytes, [k for k, _ in p.lpm_write], view.lpm)),
        (lambda: _write(feh, fe_key_bytes, fe_value_bytes, p.feh_write),
         lambda: _restore(feh, fe_key_bytes, fe_value_bytes, [k for k, _ in p.feh_write], view.feh)),
        (lambda: _delete(lpm, lpm_key_bytes, p.lpm_delete),
         lambda: _restore(lpm, lpm_key_bytes, fe_value_bytes, p.lpm_delete, view.lpm)),
        (lambda: _delete(be, be_key_bytes, p.be_delete),
         lambda: _restore(be, be_key_bytes, be_value_bytes, p.be_delete, old_be())),
    ]
    done = []
    try:
        for step, undo in steps:
            done.append(undo)  # a step that fails half-way is undone too
            step()
    except BaseException:
        for undo in reversed(done):
            try:
                undo()
            except Exception:  # keep undoing the rest; the original error is what the caller sees
                log.exception("NAT rollback step failed; the next apply re-reads the maps")
        raise
    _commit(view, p)


def _commit(view: NatView, p: NatPlan) -> None:
    for k in p.feh_delete:
        view.feh.pop(k, None)
    view.feh.update(p.feh_write)
    for k in p.lpm_delete:
        view.lpm.pop(k, None)
    view.lpm.update(p.lpm_write)
    view.backend_count += p.counts[BE][0] - p.counts[BE][2]
    for sid, block in p.block_updates.items():
        if block is None:
            view.blocks.pop(sid, None)
        else:
            view.blocks[sid] = block
