"""Conntrack garbage collection: find expired entries and delete them without losing live flows.

>>> sweeper = ConntrackSweeper(dp_ct_map, ConntrackTimeouts.from_config(fc_timeouts))
>>> stats = sweeper.sweep()
>>> stats.deleted, stats.expired, stats.usage

Three modes (``mode=``):

* ``"kernel"`` (default): ``bpf/ct_cleaner.bpf.c:ct_gc_sweep``, run with
  BPF_PROG_TEST_RUN, walks the CT map once in the kernel
  (``bpf_for_each_map_elem``) with the timeouts passed in and deletes what
  expired; a NAT_FWD goes with its NAT_REV (a small side map remembers REVs
  deleted before their FWD was reached, so the FWD is not taken for an orphan). Nothing is copied to userspace: ~0.2-0.4 s for 1M
  entries where the batch read alone of the other modes takes ~0.7-1.5 s
  (BPF_MAP_LOOKUP_BATCH visits every hash bucket under its lock and copies
  88+16 bytes per entry). Read and delete happen in one callback, so a
  refresh by traffic can only be lost in a window of nanoseconds, the same
  window the queue cleaner has between its check and its delete.
  The walk is not preemptible; at 1M entries it holds a CPU ~0.3 s.
* ``"bpf"`` (Calico's design): ``scan()`` reads the whole map with one
  batch read and computes expiry with numpy on the raw columns; ``clean()``
  writes the expired keys and the ``last_seen`` values seen into a queue
  (an array map) and runs ``ct_gc_clean_queue``, which deletes an entry
  (with its NAT partner) only if ``last_seen`` is unchanged, so a flow
  refreshed after the scan survives. Use it when Python needs to see the
  entries anyway (dumps, stale-NAT checks) or to run code between phases.
* ``"userspace"``: scan as in ``"bpf"`` then ``delete_batch``. Racy: a
  flow refreshed between scan and delete is deleted anyway (its next
  packet is then handled as new / mid-flow). For when no cleaner loads.

The cleaner object reuses the sweeper's CT map by fd (``BPFObject.reuse_map``),
so it works on unpinned maps too.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from importlib.resources import files

import attrs
import numpy as np

from calico_ebpf.dataplane.conntrack_timeouts import ConntrackTimeouts, ExpiryReason, expiry_reasons
from calico_ebpf.errors import BPFError
from calico_ebpf.kernel.map import Map, MapType
from calico_ebpf.kernel.object import BPFObject
from calico_ebpf.maps import columns
from calico_ebpf.maps.conntrack import CtKey, CtValue
from calico_ebpf.maps.ct_records import monotonic_ns
from calico_ebpf.maps.enums import CtType

_log = logging.getLogger("calico_ebpf.dataplane.conntrack")

OBJECT_NAME = "ct_cleaner.o"
CT_MAP = "cebpf_ct"
QUEUE_MAP = "cebpf_ct_gcq"
MODES = ("bpf", "kernel", "userspace")
USAGE_WARNING = 0.90  # Calico doubles the map above this; we say so loudly

# Mirrors of bpf/include/ct_cleaner.h (sizes are _Static_assert-ed there).
ITEM_DTYPE = np.dtype([("key", "V16"), ("partner", "V16"), ("last_seen", "<u8"),
                       ("partner_last_seen", "<u8"), ("has_partner", "<u4"), ("pad", "<u4")])
_TIMEOUT_ORDER = ("creation_grace", "tcp_syn_sent", "tcp_established", "tcp_fins_seen", "tcp_reset_seen",
                  "tcp_rst_idle", "udp", "generic", "icmp")
_ARGS_DTYPE = np.dtype([("now", "<u8"), ("count", "<u8")] + [(n, "<u8") for n in _TIMEOUT_ORDER])
_STATS_DTYPE = np.dtype([("scanned", "<u8"), ("deleted", "<u8"), ("refreshed", "<u8"), ("gone", "<u8"),
                         ("expired", "<u8", (len(ExpiryReason),))])
assert ITEM_DTYPE.itemsize == 56 and _ARGS_DTYPE.itemsize == 88 and _STATS_DTYPE.itemsize == 112

_HASH_MUL = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F))


@attrs.frozen
class ScanResult:
    """What :meth:`ConntrackSweeper.scan` found: the cleanup queue to hand to :meth:`~ConntrackSweeper.clean`."""

    now: int                  # the "now" the expiry was computed at (CLOCK_MONOTONIC ns)
    scanned: int              # entries in the map when it was read
    expired: dict[str, int]   # CT entries found expired, by reason (a NAT pair counts 2)
    items: np.ndarray         # ITEM_DTYPE rows: key (+ NAT partner) and the last_seen values seen
    duration_s: float

    @property
    def n_expired(self) -> int:
        return sum(self.expired.values())


@attrs.frozen
class SweepStats:
    """One sweep. ``usage`` = entries left / max_entries."""

    mode: str
    scanned: int
    expired: dict[str, int]
    deleted: int
    refreshed: int    # skipped: last_seen changed between scan and delete (bpf mode)
    gone: int         # queued entries someone else deleted meanwhile (bpf mode)
    used: int
    max_entries: int
    duration_s: float
    scan_s: float = 0.0
    clean_s: float = 0.0

    @property
    def usage(self) -> float:
        return self.used / self.max_entries if self.max_entries else 0.0

    @property
    def n_expired(self) -> int:
        return sum(self.expired.values())

    def to_dict(self) -> dict:
        d = attrs.asdict(self)
        d["usage"] = round(self.usage, 4)
        return d


def _reason_counts(codes: np.ndarray) -> dict[str, int]:
    counts = np.bincount(codes, minlength=len(ExpiryReason))
    return {ExpiryReason(i).label: int(c) for i, c in enumerate(counts) if i and c}


def _key_hash(w0: np.ndarray, w1: np.ndarray) -> np.ndarray:
    # Multiply-xor mix of the key's two 64-bit words (wrapping); collisions are checked.
    with np.errstate(over="ignore"):
        h = w0 * _HASH_MUL[0]
        h ^= (w1 * _HASH_MUL[1]) ^ (h >> np.uint64(29))
    return h


class ConntrackSweeper:
    """Finds and deletes expired conntrack entries in ``ct_map`` (an LRU hash of CtKey -> CtValue).

    ``clock`` returns "now" in CLOCK_MONOTONIC ns (the clock of
    ``bpf_ktime_get_ns``); tests pass a fake one instead of sleeping.
    ``queue_size`` bounds the cleanup queue; a sweep with more expired
    entries runs the cleaner once per full queue. Close the sweeper (or use
    it as a context manager) to release the cleaner program.
    """

    def __init__(self, ct_map: Map, timeouts: ConntrackTimeouts | None = None, *,
                 clock: Callable[[], int] = monotonic_ns, mode: str = "kernel", queue_size: int = 65536,
                 object_path: str | None = None, usage_warning: float | None = USAGE_WARNING):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if (ct_map.key_size, ct_map.value_size) != (16, 88):
            raise ValueError(f"map {ct_map.name!r} is not an IPv4 conntrack map "
                             f"(key/value {ct_map.key_size}/{ct_map.value_size} bytes, want 16/88)")
        self.ct_map = ct_map
        self.timeouts = timeouts if timeouts is not None else ConntrackTimeouts()
        self.clock = clock
        self.mode = mode
        self.queue_size = queue_size
        self.usage_warning = usage_warning
        self._obj: BPFObject | None = None
        if mode != "userspace":
            self._obj = self._load_cleaner(object_path or str(files("calico_ebpf._bpf") / OBJECT_NAME))

    def _load_cleaner(self, path: str) -> BPFObject:
        obj = BPFObject.open(path, max_entries={QUEUE_MAP: self.queue_size})
        try:
            obj.reuse_map(CT_MAP, self.ct_map)
            obj.load()
        except BaseException:
            obj.close()
            raise
        return obj

    # ---- phases -------------------------------------------------------

    def scan(self) -> ScanResult:
        """Read the whole map once and compute which entries have expired (no deletion)."""
        t0 = time.perf_counter()
        kbuf, vbuf, n = self.ct_map.lookup_batch_all()
        now = int(self.clock())
        items, expired = self._expired_items(kbuf, vbuf, n, now)
        return ScanResult(now, n, expired, items, time.perf_counter() - t0)

    def _expired_items(self, kbuf: bytes, vbuf: bytes, n: int, now: int) -> tuple[np.ndarray, dict[str, int]]:
        if n == 0:
            return np.zeros(0, ITEM_DTYPE), {}
        k = columns.to_array(CtKey, kbuf, n)
        v = columns.to_array(CtValue, vbuf, n)
        last = v["last_seen"]
        codes = expiry_reasons(self.timeouts, now, k["protocol"], last, v["rst_seen"],
                               v["a_to_b.flags"], v["b_to_a.flags"], v["flags"])
        is_fwd = v["type"] == CtType.NAT_FWD
        fwd = np.flatnonzero(is_fwd)
        covered = np.zeros(n, bool)   # a REV that goes with its FWD's queue item
        pair_fwd = np.zeros(0, np.intp)
        pair_rev = np.zeros(0, np.intp)
        if fwd.size:
            kw = np.frombuffer(kbuf, "<u8", 2 * n).reshape(n, 2)
            vw = np.frombuffer(vbuf, "<u8", 11 * n).reshape(n, 11)
            # Only NAT_REV entries can be a FWD's partner (as in ct_gc_sweep).
            rev_idx = self._find_keys(kbuf, kw, np.flatnonzero(v["type"] == CtType.NAT_REV),
                                      vw[fwd, 3], vw[fwd, 4])
            found = rev_idx >= 0
            fwd_codes = np.zeros(fwd.size, np.uint8)
            fwd_codes[found] = codes[rev_idx[found]]
            age = np.where(last[fwd] < np.uint64(now), np.uint64(now) - last[fwd], np.uint64(0))
            orphan = ~found & (age > np.uint64(self.timeouts.creation_grace))
            fwd_codes[orphan] = ExpiryReason.ORPHAN_FWD
            codes[fwd] = fwd_codes
            pair = found & (fwd_codes != 0)
            pair_fwd, pair_rev = fwd[pair], rev_idx[pair]
            covered[pair_rev] = True
            covered[pair_fwd] = True
        expired_mask = codes != 0
        expired = _reason_counts(codes[expired_mask])
        single = np.flatnonzero(expired_mask & ~covered)
        keys16 = np.frombuffer(kbuf, "V16", n)
        items = np.zeros(single.size + pair_fwd.size, ITEM_DTYPE)
        s = single.size
        items["key"][:s] = keys16[single]
        items["last_seen"][:s] = last[single]
        items["key"][s:] = keys16[pair_fwd]
        items["last_seen"][s:] = last[pair_fwd]
        items["partner"][s:] = keys16[pair_rev]
        items["partner_last_seen"][s:] = last[pair_rev]
        items["has_partner"][s:] = 1
        return items, expired

    @staticmethod
    def _find_keys(kbuf: bytes, kw: np.ndarray, candidates: np.ndarray, q0: np.ndarray, q1: np.ndarray) -> np.ndarray:
        """Row index (among ``candidates``) of each query key (q0, q1 words), -1 if absent."""
        if candidates.size == 0:
            return np.full(q0.size, -1, np.intp)
        h = _key_hash(kw[candidates, 0], kw[candidates, 1])
        order = np.argsort(h)
        hs = h[order]
        qh = _key_hash(q0, q1)
        pos = np.minimum(np.searchsorted(hs, qh), hs.size - 1)
        rows = candidates[order[pos]]
        ok = (hs[pos] == qh) & (kw[rows, 0] == q0) & (kw[rows, 1] == q1)
        result = np.where(ok, rows, -1)
        # Two keys with one hash: searchsorted found the first; settle those exactly.
        suspect = np.flatnonzero(~ok & (hs[pos] == qh))
        if suspect.size:
            exact = {kbuf[i * 16:(i + 1) * 16]: i for i in candidates.tolist()}
            for j in suspect.tolist():
                want = np.array([q0[j], q1[j]], "<u8").tobytes()
                result[j] = exact.get(want, -1)
        return result

    def clean(self, scan: ScanResult) -> SweepStats:
        """Delete what ``scan`` found expired (compare-and-delete in "bpf" mode)."""
        if self.mode == "kernel":
            raise ValueError("mode 'kernel' has no separate scan/clean phases: call sweep()")
        t0 = time.perf_counter()
        items = scan.items
        deleted = refreshed = gone = 0
        if self.mode == "userspace":
            keys = np.concatenate([items["key"], items["partner"][items["has_partner"] != 0]])
            deleted = self.ct_map.delete_batch(keys.tobytes(), keys.size) if keys.size else 0
            gone = int(keys.size) - deleted
        else:
            for start in range(0, items.size, self.queue_size):
                chunk = items[start:start + self.queue_size]
                st = self._run_queue(chunk, scan.now)
                deleted += int(st["deleted"])
                refreshed += int(st["refreshed"])
                gone += int(st["gone"])
        clean_s = time.perf_counter() - t0
        return self._finish(SweepStats(self.mode, scan.scanned, scan.expired, deleted, refreshed, gone,
                                       scan.scanned - deleted, self.ct_map.max_entries,
                                       scan.duration_s + clean_s, scan.duration_s, clean_s))

    def _run_queue(self, chunk: np.ndarray, now: int) -> np.void:
        queue = self._obj.maps[QUEUE_MAP]
        queue.update_batch(np.arange(chunk.size, dtype="<u4"), chunk, chunk.size)
        args = np.zeros(1, _ARGS_DTYPE)
        args["now"], args["count"] = now, chunk.size
        return self._run("ct_gc_clean_queue", args)

    def _run(self, prog: str, args: np.ndarray) -> np.void:
        data = args.tobytes() + bytes(_STATS_DTYPE.itemsize)
        res = self._obj.programs[prog].test_run(data, data_size_out=len(data))
        if res.retval != 0:  # TC_ACT_SHOT: the program could not read or write its arguments
            raise BPFError(f"prog_test_run {prog}", errno.EINVAL, f"cleaner returned {res.retval}")
        return np.frombuffer(res.data_out, _STATS_DTYPE, 1, offset=_ARGS_DTYPE.itemsize)[0]

    def sweep(self) -> SweepStats:
        """One full sweep: scan + clean, or the in-kernel walk in "kernel" mode."""
        if self.mode != "kernel":
            return self.clean(self.scan())
        t0 = time.perf_counter()
        args = np.zeros(1, _ARGS_DTYPE)
        args["now"] = int(self.clock())
        for name in _TIMEOUT_ORDER:
            args[name] = getattr(self.timeouts, name)
        st = self._run("ct_gc_sweep", args)
        codes = st["expired"]
        expired = {ExpiryReason(i).label: int(c) for i, c in enumerate(codes) if i and c}
        scanned, deleted = int(st["scanned"]), int(st["deleted"])
        took = time.perf_counter() - t0
        return self._finish(SweepStats("kernel", scanned, expired, deleted, 0, 0, scanned - deleted,
                                       self.ct_map.max_entries, took, 0.0, took))

    def _finish(self, stats: SweepStats) -> SweepStats:
        if self.usage_warning is not None and stats.usage > self.usage_warning:
            _log.warning("conntrack map %s is %.0f%% full (%d of %d entries) after a sweep: "
                         "new flows will evict live ones; enlarge it (bpfMapSizeConntrack)",
                         self.ct_map.name, 100 * stats.usage, stats.used, stats.max_entries)
        _log.debug("conntrack sweep: %s", stats)
        return stats

    # ---- lifetime -----------------------------------------------------

    def close(self) -> None:
        """Release the cleaner program and queue (the CT map stays)."""
        if self._obj is not None:
            self._obj.close()
            self._obj = None

    def __enter__(self) -> ConntrackSweeper:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def new_ct_map(max_entries: int, name: str = "cebpf_ct") -> Map:
    """A fresh, unpinned IPv4 conntrack map (the layout of maps.h's ``cebpf_ct``), for tests and tools."""
    return Map.create(MapType.LRU_HASH, 16, 88, max_entries, name=name)
