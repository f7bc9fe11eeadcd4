"""The conntrack lifecycle around the sweeper: a periodic GC thread with
metrics and auto-sizing, and stale-NAT cleanup when backends leave.

>>> mgr = ConntrackManager(dp.maps["cebpf_ct"], ConntrackTimeouts.from_config(fc_timeouts))
>>> mgr.start()                      # sweeps every 10 s (+ up to 0.1 s jitter) in a thread
>>> mgr.metrics()["cleaned_total"]
>>> mgr.needs_resize, mgr.recommended_size
>>> remove_stale_nat(dp.maps["cebpf_ct"], {("10.65.0.7", 8080, "udp")})
>>> mgr.stop()

This is Felix's pipeline (reference §4.5) with the in-kernel sweep of
:mod:`conntrack_gc` as its liveness scanner:

* **Sweeps** run every ``interval`` seconds plus a random ``[0, jitter)``
  (Felix: 10 s, 100 ms), so the agents of many nodes do not sweep in step.
* **Stale NAT** (Felix's StaleNATScanner + WorkloadRemoveScannerTCP): when a
  backend leaves a service, UDP and other non-TCP NAT_FWD/NAT_REV pairs to
  it are deleted at once, so the flow's next packet is NAT-ed afresh to a
  live backend instead of being sent to a gone one until the UDP timeout.
  TCP flows are not deleted (a mid-flow TCP packet without conntrack would
  be dropped or sent through policy as new); their entries get
  ``CtFlags.SEND_RESET`` so the datapath can answer the next packet with a
  RST and the client reconnects at once.
* **Auto-sizing** (``BPFMapSizeConntrackScaling=DoubleIfFull``): above 90 %
  after a sweep, or above 85 % and growing for 3 sweeps in a row, the
  manager recommends twice the size (``recommended_size``, written to
  ``size_file`` if given). A map cannot grow in place; the next start
  creates it at that size and migrates the entries
  (:mod:`calico_ebpf.kernel.migrate`).
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import os
import random
import threading
from collections.abc import Callable, Iterable, Mapping

import attrs
import numpy as np

from calico_ebpf.dataplane.conntrack_gc import ConntrackSweeper, SweepStats
from calico_ebpf.dataplane.conntrack_timeouts import ConntrackTimeouts
from calico_ebpf.errors import BPFError, CalicoEBPFError
from calico_ebpf.kernel.map import BPF_EXIST, Map
from calico_ebpf.maps import columns
from calico_ebpf.maps.conntrack import CtKey, CtValue
from calico_ebpf.maps.ct_records import monotonic_ns
from calico_ebpf.maps.enums import CtFlags, CtType, Proto

_log = logging.getLogger("calico_ebpf.dataplane.conntrack")

RESIZE_FULL = 0.90        # DoubleIfFull: above this after a sweep, double
RESIZE_GROWING = 0.85     # ... or above this and growing for GROWING_SWEEPS sweeps
GROWING_SWEEPS = 3

# SEND_RESET is bit 17 of the logical flags: bit 1 of the flags3 byte (offset 18).
_FLAGS3_OFFSET = 18
_SEND_RESET_BIT = int(CtFlags.SEND_RESET) >> 16
assert _SEND_RESET_BIT == 0x02


# ---- stale NAT ----------------------------------------------------------------

Backend = tuple  # (ip, port, proto): ip as str/IPv4Address, proto as name/number/Proto


@attrs.frozen
class StaleNatResult:
    """What :func:`remove_stale_nat` did: ``deleted`` entries (a UDP NAT pair
    counts 2), TCP entries that got SEND_RESET, and the flows concerned."""

    deleted: int = 0
    reset: int = 0
    flows: int = 0          # NAT_REV entries found stale (one per flow)
    tcp_flows: int = 0      # of which TCP (flagged, not deleted)


def _proto_num(proto) -> int:
    if isinstance(proto, str):
        return int(Proto[proto.upper()])
    return int(proto)


def _backend_code(ip, port: int, proto: int) -> int:
    # ip (32 bits) | port (16) | proto (8) in one u64, for np.isin.
    return (int(ipaddress.IPv4Address(ip)) << 24) | (int(port) << 8) | proto


def remove_stale_nat(ct_map: Map, removed_backends: Iterable[Backend],
                     live: Mapping[tuple, Iterable[tuple]] | None = None, *,
                     reset_tcp: bool = True) -> StaleNatResult:
    """Clean conntrack after ``removed_backends`` left their services.

    A NAT flow is *stale* when its NAT_REV entry's backend (the post-DNAT
    destination) is one of ``removed_backends`` — ``(ip, port, proto)``
    tuples, e.g. ``("10.65.0.7", 8080, "udp")``. With ``live`` —
    ``{(service ip, port, proto): {(backend ip, port), ...}}`` as the
    services are now — a flow whose service (its pre-DNAT destination)
    still has that backend is kept: the backend left some other service.

    Stale non-TCP flows lose their NAT_REV and NAT_FWD entries (so the next
    packet picks a live backend); stale TCP flows get ``SEND_RESET`` on both
    (unless ``reset_tcp=False``). Returns a :class:`StaleNatResult`.

    Reads the map once (batch) and touches only the stale entries; cheap to
    call after every apply that removed a backend.
    """
    want = {_backend_code(ip, port, _proto_num(proto)) for ip, port, proto in removed_backends}
    if not want:
        return StaleNatResult()
    kbuf, vbuf, n = ct_map.lookup_batch_all()
    if n == 0:
        return StaleNatResult()
    k = columns.to_array(CtKey, kbuf, n)
    v = columns.to_array(CtValue, vbuf, n)
    rev = np.flatnonzero(v["type"] == CtType.NAT_REV)
    if rev.size == 0:
        return StaleNatResult()
    # The backend is the responder: B, unless the B side opened the flow.
    b_opened = (v["flags2"][rev] & (int(CtFlags.BA) >> 8)) != 0
    be_ip = np.where(b_opened, k["addr_a"][rev], k["addr_b"][rev]).astype(np.uint64)
    be_port = np.where(b_opened, k["port_a"][rev], k["port_b"][rev]).astype(np.uint64)
    proto = k["protocol"][rev].astype(np.uint64)
    codes = (be_ip << np.uint64(24)) | (be_port << np.uint64(8)) | proto
    stale = rev[np.isin(codes, np.fromiter(want, np.uint64, len(want)))]
    if live is not None and stale.size:
        stale = _drop_still_live(stale, k, v, b_opened[np.isin(rev, stale)], live)
    if stale.size == 0:
        return StaleNatResult()
    fwd_of = _nat_fwd_partners(kbuf, vbuf, n, v, stale)
    is_tcp = k["protocol"][stale] == int(Proto.TCP)
    keys16 = np.frombuffer(kbuf, "V16", n)
    drop_rows = [stale[~is_tcp], fwd_of[~is_tcp][fwd_of[~is_tcp] >= 0]]
    drop = keys16[np.concatenate(drop_rows)] if any(r.size for r in drop_rows) else keys16[:0]
    deleted = ct_map.delete_batch(drop.tobytes(), drop.size) if drop.size else 0
    reset = 0
    if reset_tcp and is_tcp.any():
        tcp_rows = np.concatenate([stale[is_tcp], fwd_of[is_tcp][fwd_of[is_tcp] >= 0]])
        reset = _set_send_reset(ct_map, [kbuf[i * 16:(i + 1) * 16] for i in tcp_rows.tolist()])
    result = StaleNatResult(deleted, reset, int(stale.size), int(is_tcp.sum()))
    _log.info("stale NAT after backends left: %s", result)
    return result


def _drop_still_live(stale: np.ndarray, k: np.ndarray, v: np.ndarray, b_opened: np.ndarray,
                     live: Mapping[tuple, Iterable[tuple]]) -> np.ndarray:
    """Keep only flows whose service no longer lists their backend."""
    norm = {(int(ipaddress.IPv4Address(ip)), int(port), _proto_num(p)):
            {(int(ipaddress.IPv4Address(bip)), int(bport)) for bip, bport in bes}
            for (ip, port, p), bes in live.items()}
    keep = []
    for row, ba in zip(stale.tolist(), b_opened.tolist()):
        side = "a" if ba else "b"
        backend = (int(k[f"addr_{side}"][row]), int(k[f"port_{side}"][row]))
        service = (int(v["orig_ip"][row]), int(v["orig_port"][row]), int(k["protocol"][row]))
        if backend not in norm.get(service, ()):
            keep.append(row)
    return np.asarray(keep, np.intp)


def _nat_fwd_partners(kbuf: bytes, vbuf: bytes, n: int, v: np.ndarray, rev_rows: np.ndarray) -> np.ndarray:
    """For each NAT_REV row, the row of the NAT_FWD entry pointing at it (-1: none)."""
    out = np.full(rev_rows.size, -1, np.intp)
    fwd = np.flatnonzero(v["type"] == CtType.NAT_FWD)
    if fwd.size == 0:
        return out
    kw = np.frombuffer(kbuf, "<u8", 2 * n).reshape(n, 2)
    vw = np.frombuffer(vbuf, "<u8", 11 * n).reshape(n, 11)
    # nat_rev_key sits at value bytes 24..40 (words 3 and 4): find which FWD
    # points at one of our REVs, then map back to the REV's position.
    hit = ConntrackSweeper._find_keys(kbuf, kw, rev_rows, vw[fwd, 3], vw[fwd, 4])
    pos = {row: i for i, row in enumerate(rev_rows.tolist())}
    for f, r in zip(fwd.tolist(), hit.tolist()):
        if r >= 0:
            out[pos[r]] = f
    return out


def _set_send_reset(ct_map: Map, keys: list[bytes]) -> int:
    """OR SEND_RESET into each entry's flags; returns how many were updated.

    Read-modify-write from userspace: a packet counted by the datapath
    between our read and write is lost from the leg counters, which is
    acceptable for a flow that is about to be reset."""
    done = 0
    for key in keys:
        raw = ct_map.lookup(key)
        if raw is None:
            continue
        val = bytearray(raw)
        val[_FLAGS3_OFFSET] |= _SEND_RESET_BIT
        try:
            ct_map.update(key, bytes(val), BPF_EXIST)
            done += 1
        except BPFError:
            continue  # deleted meanwhile (expired or recycled): nothing to reset
    return done


# ---- sizing -----------------------------------------------------------------------


def read_size_file(path: str | os.PathLike, default: int) -> int:
    """The conntrack size a previous run recommended (Felix's
    ``/var/lib/calico/bpf_ct_map_size``), or ``default`` if there is none
    or it is smaller."""
    try:
        with open(path) as f:
            return max(default, int(f.read().strip()))
    except (FileNotFoundError, ValueError):
        return default


def _write_size_file(path: str, size: int) -> None:
    tmp = f"{path}.tmp"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(tmp, "w") as f:
        f.write(f"{size}\n")
    os.replace(tmp, path)  # a reader never sees a half-written number


# ---- the manager -----------------------------------------------------------------


class ConntrackManager:
    """Sweeps ``ct_map`` periodically in a background thread and keeps metrics.

    ``mode`` is the sweeper's (``"kernel"`` default, ``"bpf"``,
    ``"userspace"``); ``history`` is how many :class:`SweepStats` are kept;
    ``size_file`` persists the recommended size for the next start; ``clock``
    is the sweeper's "now" (tests pass a fake one). :meth:`sweep_now` runs a
    sweep in the caller's thread (also while the thread runs: sweeps are
    serialised).
    """

    def __init__(self, ct_map: Map, timeouts: ConntrackTimeouts | None = None, *,
                 interval: float = 10.0, jitter: float = 0.1, mode: str = "kernel", history: int = 60,
                 size_file: str | os.PathLike | None = None, clock: Callable[[], int] = monotonic_ns,
                 on_sweep: Callable[[SweepStats], None] | None = None):
        if interval <= 0 or jitter < 0:
            raise ValueError(f"interval must be > 0 and jitter >= 0 (got {interval}, {jitter})")
        self.ct_map = ct_map
        self.interval = interval
        self.jitter = jitter
        self.size_file = os.fspath(size_file) if size_file is not None else None
        self.on_sweep = on_sweep
        # The manager owns the size warning (with its recommendation).
        self._sweeper = ConntrackSweeper(ct_map, timeouts, clock=clock, mode=mode, usage_warning=None)
        self.history: collections.deque[SweepStats] = collections.deque(maxlen=history)
        self._lock = threading.Lock()        # one sweep or stale-NAT pass at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._growing = 0
        self.needs_resize = False
        self.recommended_size: int | None = None
        self.last_error: CalicoEBPFError | None = None
        # Counters, Felix's felix_bpf_conntrack_* names without the prefix.
        self.sweeps = 0
        self.errors = 0
        self.cleaned_total = 0
        self.expired_total: collections.Counter[str] = collections.Counter()
        self.stale_nat_total = 0
        self.stale_nat_reset_total = 0

    # ---- sweeping ---------------------------------------------------

    def sweep_now(self) -> SweepStats:
        """One sweep, now, in this thread; updates metrics and sizing."""
        with self._lock:
            stats = self._sweeper.sweep()
            self._account(stats)
        if self.on_sweep is not None:
            self.on_sweep(stats)
        return stats

    def _account(self, stats: SweepStats) -> None:
        prev = self.history[-1] if self.history else None
        self.history.append(stats)
        self.sweeps += 1
        self.cleaned_total += stats.deleted
        self.expired_total.update(stats.expired)
        self._growing = self._growing + 1 if prev is not None and stats.used > prev.used else 0
        full = stats.usage > RESIZE_FULL
        growing = stats.usage > RESIZE_GROWING and self._growing >= GROWING_SWEEPS
        if full:
            self.needs_resize = True
        if full or growing:
            size = 2 * stats.max_entries
            if self.recommended_size != size:
                self.recommended_size = size
                if self.size_file:
                    _write_size_file(self.size_file, size)
            why = "full" if full else f"growing for {self._growing} sweeps"
            _log.warning("CONNTRACK MAP %s IS %.0f%% FULL (%d of %d entries, %s): new flows will evict "
                         "live ones. Recommended size %d: restart with it (bpfMapSizeConntrack) to "
                         "migrate the entries into a map twice as big",
                         self.ct_map.name, 100 * stats.usage, stats.used, stats.max_entries, why, size)

    def _run(self) -> None:
        while not self._stop.wait(self.interval + random.uniform(0, self.jitter)):
            try:
                self.sweep_now()
            except CalicoEBPFError as exc:
                # Keep sweeping: one failed pass (e.g. a map closed under us
                # during shutdown) must not stop GC for good.
                self.errors += 1
                self.last_error = exc
                _log.error("conntrack sweep failed: %s", exc)

    def start(self) -> ConntrackManager:
        """Start the sweeper thread (first sweep after one interval)."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"ct-gc-{self.ct_map.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread, waiting for a sweep in progress to finish."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Stop and release the cleaner program (the CT map stays)."""
        self.stop()
        self._sweeper.close()

    def __enter__(self) -> ConntrackManager:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- stale NAT ------------------------------------------------------

    def remove_stale_nat(self, removed_backends: Iterable[Backend],
                         live: Mapping[tuple, Iterable[tuple]] | None = None) -> StaleNatResult:
        """:func:`remove_stale_nat` on this map, serialised with sweeps and counted."""
        with self._lock:
            result = remove_stale_nat(self.ct_map, removed_backends, live)
        self.stale_nat_total += result.deleted
        self.stale_nat_reset_total += result.reset
        return result

    # ---- metrics ----------------------------------------------------------

    def metrics(self) -> dict:
        """A snapshot of the counters (Felix's ``felix_bpf_conntrack_*`` without the prefix)."""
        last = self.history[-1] if self.history else None
        return {
            "sweeps": self.sweeps,
            "errors": self.errors,
            "used": last.used if last else None,
            "max_entries": self.ct_map.max_entries,
            "usage": round(last.usage, 4) if last else None,
            "cleaned": last.deleted if last else 0,
            "cleaned_total": self.cleaned_total,
            "expired_total": dict(self.expired_total),
            "stale_nat_total": self.stale_nat_total,
            "stale_nat_reset_total": self.stale_nat_reset_total,
            "sweep_duration_seconds": last.duration_s if last else None,
            "needs_resize": self.needs_resize,
            "recommended_size": self.recommended_size,
        }

    def prometheus_text(self, prefix: str = "calico_ebpf_conntrack") -> str:
        """The metrics in Prometheus' text format."""
        m = self.metrics()
        lines = [f"{prefix}_sweeps {m['sweeps']}", f"{prefix}_sweep_errors {m['errors']}",
                 f"{prefix}_cleaned_total {m['cleaned_total']}",
                 f"{prefix}_stale_nat_total {m['stale_nat_total']}",
                 f"{prefix}_max_entries {m['max_entries']}"]
        if m["used"] is not None:
            lines += [f"{prefix}_used {m['used']}",
                      f"{prefix}_sweep_duration_seconds {m['sweep_duration_seconds']:.6f}"]
        lines += [f'{prefix}_expired_total{{reason="{r}"}} {c}' for r, c in sorted(m["expired_total"].items())]
        return "\n".join(lines) + "\n"



# ---- operator tools (``calico-ebpf conntrack``) -----------------------------------


def remove_flows(ct_map: Map, proto, ip1, ip2) -> int:
    """Delete every entry between ``ip1`` and ``ip2`` (either direction, any
    ports) for ``proto``, with the NAT partner of each NAT entry matched
    (client <-> service matches the NAT_FWD, client <-> backend the NAT_REV:
    either removes the whole flow). Returns how many entries were deleted."""
    want_proto = _proto_num(proto)
    pair = {int(ipaddress.IPv4Address(ip1)), int(ipaddress.IPv4Address(ip2))}
    kbuf, vbuf, n = ct_map.lookup_batch_all()
    if n == 0:
        return 0
    k = columns.to_array(CtKey, kbuf, n)
    v = columns.to_array(CtValue, vbuf, n)
    a, b = k["addr_a"].astype(np.int64), k["addr_b"].astype(np.int64)
    lo, hi = min(pair), max(pair)
    same = (np.minimum(a, b) == lo) & (np.maximum(a, b) == hi)
    hit = np.flatnonzero(same & (k["protocol"] == want_proto))
    if hit.size == 0:
        return 0
    rows = set(hit.tolist())
    types = v["type"]
    kw = np.frombuffer(kbuf, "<u8", 2 * n).reshape(n, 2)
    vw = np.frombuffer(vbuf, "<u8", 11 * n).reshape(n, 11)
    # Matched NAT_FWD -> its NAT_REV.
    fwd_hit = hit[types[hit] == CtType.NAT_FWD]
    if fwd_hit.size:
        revs = np.flatnonzero(types == CtType.NAT_REV)
        found = ConntrackSweeper._find_keys(kbuf, kw, revs, vw[fwd_hit, 3], vw[fwd_hit, 4])
        rows.update(int(r) for r in found if r >= 0)
    # Matched NAT_REV -> the NAT_FWD pointing at it.
    rev_hit = hit[types[hit] == CtType.NAT_REV]
    if rev_hit.size:
        rows.update(int(r) for r in _nat_fwd_partners(kbuf, vbuf, n, v, rev_hit) if r >= 0)
    keys = np.frombuffer(kbuf, "V16", n)[np.fromiter(sorted(rows), np.intp, len(rows))]
    return ct_map.delete_batch(keys.tobytes(), keys.size)


def ct_stats(ct_map: Map, now_ns: int | None = None) -> dict:
    """What ``calico-bpf conntrack stats`` reports: size, entries, usage,
    entries by type and protocol, and TCP flows by state."""
    from calico_ebpf.maps.ct_records import records
    from calico_ebpf.maps.typed import TypedMap

    items = TypedMap(ct_map, CtKey, CtValue).items()
    by_type = collections.Counter(v.type.name for _, v in items)
    by_proto = collections.Counter(str(k.proto) for k, v in items if v.type != CtType.NAT_FWD)
    tcp_states = collections.Counter(r.state for r in records(items, now_ns=now_ns) if r.state)
    n = len(items)
    return {
        "map": ct_map.name,
        "max_entries": ct_map.max_entries,
        "entries": n,
        "usage": round(n / ct_map.max_entries, 4) if ct_map.max_entries else 0.0,
        "flows": n - by_type.get("NAT_FWD", 0),
        "nat_flows": by_type.get("NAT_REV", 0),
        "by_type": dict(by_type),
        "by_proto": dict(by_proto),
        "tcp_states": dict(tcp_states),
    }
