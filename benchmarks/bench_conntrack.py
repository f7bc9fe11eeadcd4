#!/usr/bin/env python3
"""Conntrack sweep time for 100k and 1M entries (10 % expired), per cleanup mode,
the time to dump the map into a pandas DataFrame through the columnar codec,
the fixed cost of a stale-NAT check (one batch read + numpy match; what an
apply that removed a backend pays) and of migrating the entries into a map
twice as big (batch read + batch update; what a resize restart pays).

    .venv/bin/python benchmarks/bench_conntrack.py [--quick]

Modes (see calico_ebpf/dataplane/conntrack_gc.py): ``kernel`` (the default)
= in-kernel walk; ``bpf`` = batch read + numpy expiry + BPF compare-and-delete queue;
``userspace`` = batch read + numpy + delete_batch (racy). The map holds 40 %
TCP established, 40 % UDP and 20 % NAT pairs (REV + FWD); every tenth flow is
idle past its timeout. Each mode must delete exactly the expired entries.
The last line is ``RESULT {json}``; target: a 1M-entry sweep in <= 0.5 s.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from calico_ebpf.dataplane.conntrack import remove_stale_nat
from calico_ebpf.dataplane.conntrack_gc import ConntrackSweeper, new_ct_map
from calico_ebpf.kernel.migrate import copy_entries
from calico_ebpf.dataplane.conntrack_timeouts import ConntrackTimeouts
from calico_ebpf.maps import columns, ct_records
from calico_ebpf.maps.conntrack import CtKey, CtValue

DEFAULT_MODE = inspect.signature(ConntrackSweeper).parameters["mode"].default
S = 1_000_000_000
NOW = 100_000 * S
SYN_ACK = 0x3
TARGET_1M_S = 0.5


def make_entries(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Packed keys and values for ``n`` entries (n divisible by 10) and the mask of expired rows."""
    n_pair_rows = n // 5
    n_normal = n - n_pair_rows
    rows = np.arange(n, dtype=np.uint64)
    kcols = {
        "protocol": np.where(rows < n_normal // 2, 6, 17).astype(np.uint32),
        "addr_a": (0x0A000000 + rows).astype(np.uint32),   # unique per row
        "addr_b": np.full(n, 0xAC100001, np.uint32),
        "port_a": np.full(n, 40000, np.uint16),
        "port_b": np.full(n, 80, np.uint16),
    }
    kcols["protocol"][n_normal:] = 6
    # Flow id: a row for NORMAL entries, the pair for NAT rows; every tenth flow is idle.
    flow = np.where(rows < n_normal, rows, n_normal + (rows - n_normal) // 2)
    idle = flow % 10 == 0
    tcp = kcols["protocol"] == 6
    last = np.where(idle, np.where(tcp, NOW - 2 * 3600 * S, NOW - 120 * S), NOW - S).astype(np.uint64)
    is_rev = (rows >= n_normal) & ((rows - n_normal) % 2 == 0)
    is_fwd = (rows >= n_normal) & ~is_rev
    vtype = np.where(is_rev, 2, np.where(is_fwd, 1, 0)).astype(np.uint8)
    legs = np.where(tcp & ~is_fwd, SYN_ACK, 0).astype(np.uint32)
    keys = columns.from_columns(CtKey, kcols, n)
    vcols = {"last_seen": last, "type": vtype, "a_to_b.flags": legs, "b_to_a.flags": legs}
    values = columns.from_columns(CtValue, vcols, n).reshape(n, 88).copy()
    # NAT_FWD: the union's nat_rev_key (offset 24) is the REV row just before it.
    fwd_rows = np.flatnonzero(is_fwd)
    kview = keys.reshape(n, 16)
    values[fwd_rows, 24:40] = kview[fwd_rows - 1]
    values[fwd_rows, 40:88] = 0
    return keys, values.reshape(-1), idle


def bench_size(n: int, modes: list[str], repeat: int) -> dict:
    keys, values, idle = make_entries(n)
    n_expired = int(idle.sum())
    # After a sweep the map holds exactly the live rows: putting the expired
    # ones back restores the starting state without rewriting the whole map.
    exp_keys = np.ascontiguousarray(keys.reshape(n, 16)[idle])
    exp_values = np.ascontiguousarray(values.reshape(n, 88)[idle])
    ct = new_ct_map(int(n * 1.25), name="bench_ct")
    out: dict = {"entries": n, "expired": n_expired}
    try:
        ct.update_batch(keys, values, n)
        for mode in modes:
            runs = []
            with ConntrackSweeper(ct, ConntrackTimeouts(), clock=lambda: NOW, mode=mode,
                                  queue_size=max(65536, n // 8)) as sw:
                for _ in range(repeat):
                    stats = sw.sweep()
                    if stats.deleted != n_expired or stats.n_expired != n_expired or stats.scanned != n:
                        raise SystemExit(f"{mode} at {n}: deleted {stats.deleted}, expired {stats.expired}, "
                                         f"scanned {stats.scanned}; want {n_expired} of {n}")
                    runs.append(stats)
                    ct.update_batch(exp_keys, exp_values, n_expired)
            best = min(runs, key=lambda st: st.duration_s)
            out[mode] = {"sweep_s": round(best.duration_s, 4), "scan_s": round(best.scan_s, 4),
                         "clean_s": round(best.clean_s, 4),
                         "median_s": round(float(np.median([st.duration_s for st in runs])), 4)}
            print(f"{n:>9} entries  {mode:<9}  sweep {best.duration_s * 1e3:8.1f} ms best of {repeat} "
                  f"(scan {best.scan_s * 1e3:.1f} ms, clean {best.clean_s * 1e3:.1f} ms)", flush=True)
        t0 = time.perf_counter()
        kbuf, vbuf, got = ct.lookup_batch_all()
        df = ct_records.dataframe(kbuf, vbuf, got, now_ns=NOW)
        dump_s = time.perf_counter() - t0
        assert len(df) == n
        out["dataframe_s"] = round(dump_s, 4)
        print(f"{n:>9} entries  dump to DataFrame {dump_s * 1e3:8.1f} ms", flush=True)
        t0 = time.perf_counter()
        stale = remove_stale_nat(ct, {("192.0.2.1", 80, "udp")})   # a backend no flow uses
        out["stale_nat_check_s"] = round(time.perf_counter() - t0, 4)
        assert stale.flows == 0
        print(f"{n:>9} entries  stale-NAT check {out['stale_nat_check_s'] * 1e3:8.1f} ms", flush=True)
        with new_ct_map(2 * n, name="bench_ct2") as bigger:
            t0 = time.perf_counter()
            copied = copy_entries(ct, bigger)
            out["migrate_2x_s"] = round(time.perf_counter() - t0, 4)
        assert copied == n
        print(f"{n:>9} entries  migrate to 2x map {out['migrate_2x_s'] * 1e3:8.1f} ms", flush=True)
    finally:
        ct.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100k entries only, two runs per mode")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_conntrack needs root (BPF maps and BPF_PROG_TEST_RUN)")
    modes = ["kernel", "bpf", "userspace"]
    sizes = [100_000] if args.quick else [100_000, 1_000_000]
    repeat = 2 if args.quick else 5
    result: dict = {"bench": "conntrack_sweep", "quick": args.quick}
    for n in sizes:
        result[f"n{n}"] = bench_size(n, modes, repeat)
    if not args.quick:
        big = result["n1000000"]
        best = min(modes, key=lambda m: big[m]["sweep_s"])
        result["fastest_1m"] = best
        result["target_1m_s"] = TARGET_1M_S
        result["default_mode"] = DEFAULT_MODE
        result["default_mode_1m_s"] = big[DEFAULT_MODE]["sweep_s"]
        result["meets_target"] = big[DEFAULT_MODE]["sweep_s"] <= TARGET_1M_S
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
