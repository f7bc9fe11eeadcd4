"""Conntrack GC on real maps with the real cleaner programs (BPF_PROG_TEST_RUN).

Entries are written from Python; "now" is a fake clock, so nothing sleeps.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from calico_ebpf.dataplane.conntrack_gc import ConntrackSweeper, new_ct_map
from calico_ebpf.dataplane.conntrack_timeouts import ConntrackTimeouts, ExpiryReason, expiry_reasons
from calico_ebpf.maps import columns
from calico_ebpf.maps.conntrack import CtKey, CtLeg, CtValue
from calico_ebpf.maps.enums import CtLegFlags as F

S = 1_000_000_000
NOW = 50_000 * S
EST = F.SYN_SEEN | F.ACK_SEEN
ALL_MODES = ["bpf", "kernel", "userspace"]


@pytest.fixture
def ct():
    m = new_ct_map(4096, name="t_ct_gc")
    yield m
    m.close()


def put(ct, key: CtKey, value: CtValue) -> None:
    ct.update(key.to_bytes(), value.to_bytes())


def present(ct, key: CtKey) -> bool:
    return ct.lookup(key.to_bytes()) is not None


def flow(n: int, proto: str = "tcp", dst: str = "10.1.0.5", dport: int = 8080) -> CtKey:
    return CtKey.for_flow(f"10.0.{n // 250}.{n % 250 + 1}", 30000 + n, dst, dport, proto)


def nat_pair(ct, n: int, idle_s: float, legs=EST, fwd_idle_s: float | None = None) -> tuple[CtKey, CtKey]:
    rev_key = flow(n)
    fwd_key = flow(n, dst="10.96.0.10", dport=80)
    put(ct, rev_key, CtValue.nat_rev("10.96.0.10", 80, CtLeg(flags=legs), CtLeg(flags=legs),
                                     last_seen=NOW - int(idle_s * S)))
    fidle = idle_s if fwd_idle_s is None else fwd_idle_s
    put(ct, fwd_key, CtValue.nat_fwd(rev_key, last_seen=NOW - int(fidle * S)))
    return fwd_key, rev_key


# (proto, idle seconds, a_to_b flags, b_to_a flags, rst_seen timestamp) -> expected reason
CASES = [
    ("tcp", 19, F.SYN_SEEN, F(0), 0, ExpiryReason.ALIVE),
    ("tcp", 21, F.SYN_SEEN, F(0), 0, ExpiryReason.TCP_SYN_SENT),
    ("tcp", 3500, EST, EST, 0, ExpiryReason.ALIVE),
    ("tcp", 3700, EST, EST, 0, ExpiryReason.TCP_ESTABLISHED),
    ("tcp", 25, EST | F.FIN_SEEN, EST | F.FIN_SEEN, 0, ExpiryReason.ALIVE),
    ("tcp", 35, EST | F.FIN_SEEN, EST | F.FIN_SEEN, 0, ExpiryReason.TCP_FINS_SEEN),
    ("tcp", 45, EST | F.RST_SEEN, EST, 0, ExpiryReason.TCP_RST_SEEN),
    ("tcp", 100, EST, EST, NOW - 200 * S, ExpiryReason.ALIVE),
    ("tcp", 130, EST, EST, NOW - 200 * S, ExpiryReason.TCP_RST_IDLE),
    ("udp", 55, F(0), F(0), 0, ExpiryReason.ALIVE),
    ("udp", 65, F(0), F(0), 0, ExpiryReason.UDP),
    ("icmp", 4, F(0), F(0), 0, ExpiryReason.ALIVE),
    ("icmp", 6, F(0), F(0), 0, ExpiryReason.ICMP),
    (47, 500, F(0), F(0), 0, ExpiryReason.ALIVE),
    (47, 700, F(0), F(0), 0, ExpiryReason.GENERIC),
]


@pytest.mark.parametrize("mode", ALL_MODES)
def test_expiry_per_protocol_and_state(ct, mode):
    keys = []
    for i, (proto, idle, a, b, rst, _) in enumerate(CASES):
        key = CtKey(proto, f"10.0.0.{i + 1}", "10.1.0.5", 0 if proto in ("icmp", 47) else 1000 + i,
                    0 if proto in ("icmp", 47) else 80)
        put(ct, key, CtValue.normal(CtLeg(flags=a), CtLeg(flags=b), last_seen=NOW - idle * S, rst_seen=rst))
        keys.append(key)
    with ConntrackSweeper(ct, ConntrackTimeouts(), clock=lambda: NOW, mode=mode) as sw:
        stats = sw.sweep()
    want = {}
    for key, case in zip(keys, CASES):
        reason = case[-1]
        assert present(ct, key) == (reason == ExpiryReason.ALIVE), (case, mode)
        if reason:
            want[reason.label] = want.get(reason.label, 0) + 1
    assert stats.expired == want
    assert stats.deleted == sum(want.values()) and stats.scanned == len(CASES)
    assert stats.used == len(CASES) - stats.deleted


def test_short_timeouts_from_config(ct):
    # Real configuration path: a FelixConfiguration dict with sub-second timeouts.
    t = ConntrackTimeouts.from_config({"UDPTimeout": "500ms", "TCPFinsSeen": "30s"})
    put(ct, flow(1, "udp"), CtValue.normal(last_seen=NOW - 600_000_000))
    put(ct, flow(2, "udp"), CtValue.normal(last_seen=NOW - 400_000_000))
    with ConntrackSweeper(ct, t, clock=lambda: NOW) as sw:
        assert sw.sweep().expired == {"udp": 1}
    assert not present(ct, flow(1, "udp")) and present(ct, flow(2, "udp"))


def test_refreshed_between_scan_and_clean_survives(ct):
    put(ct, flow(1, "udp"), CtValue.normal(last_seen=NOW - 100 * S))
    put(ct, flow(2, "udp"), CtValue.normal(last_seen=NOW - 100 * S))
    fwd, rev = nat_pair(ct, 3, idle_s=4000)
    with ConntrackSweeper(ct, clock=lambda: NOW, mode="bpf") as sw:
        scan = sw.scan()
        assert scan.expired == {"udp": 2, "tcp_established": 2}
        # Traffic arrives after the read: the datapath bumps last_seen.
        put(ct, flow(1, "udp"), CtValue.normal(last_seen=NOW))
        rv = CtValue.from_bytes(ct.lookup(rev.to_bytes()))
        put(ct, rev, CtValue.nat_rev(rv.orig_ip, rv.orig_port, rv.a_to_b, rv.b_to_a, last_seen=NOW))
        stats = sw.clean(scan)
    assert present(ct, flow(1, "udp")) and not present(ct, flow(2, "udp"))
    assert present(ct, fwd) and present(ct, rev)  # a refreshed REV keeps its FWD too
    assert (stats.deleted, stats.refreshed, stats.gone) == (1, 2, 0)


def test_userspace_mode_is_racy(ct):
    # Documented: without compare-and-delete the refreshed flow is lost.
    put(ct, flow(1, "udp"), CtValue.normal(last_seen=NOW - 100 * S))
    with ConntrackSweeper(ct, clock=lambda: NOW, mode="userspace") as sw:
        scan = sw.scan()
        put(ct, flow(1, "udp"), CtValue.normal(last_seen=NOW))
        assert sw.clean(scan).deleted == 1
    assert not present(ct, flow(1, "udp"))


def test_entry_deleted_by_someone_else_meanwhile(ct):
    put(ct, flow(1, "udp"), CtValue.normal(last_seen=NOW - 100 * S))
    with ConntrackSweeper(ct, clock=lambda: NOW, mode="bpf") as sw:
        scan = sw.scan()
        ct.delete(flow(1, "udp").to_bytes())
        stats = sw.clean(scan)
    assert (stats.deleted, stats.gone, stats.refreshed) == (0, 1, 0)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_nat_pairs_go_together(ct, mode):
    dead_fwd, dead_rev = nat_pair(ct, 1, idle_s=4000, fwd_idle_s=1)  # FWD recently hit, REV idle: REV decides
    live_fwd, live_rev = nat_pair(ct, 2, idle_s=10, fwd_idle_s=5000)  # FWD idle but REV alive: kept
    lone_rev = flow(3)  # a REV whose FWD the LRU evicted: expires on its own
    put(ct, lone_rev, CtValue.nat_rev("10.96.0.10", 80, CtLeg(flags=EST), CtLeg(flags=EST), last_seen=NOW - 4000 * S))
    with ConntrackSweeper(ct, clock=lambda: NOW, mode=mode) as sw:
        stats = sw.sweep()
    assert not present(ct, dead_fwd) and not present(ct, dead_rev)
    assert present(ct, live_fwd) and present(ct, live_rev) and not present(ct, lone_rev)
    assert stats.deleted == 3 and stats.expired == {"tcp_established": 3}


@pytest.mark.parametrize("mode", ALL_MODES)
def test_orphan_fwd_removed_after_grace(ct, mode):
    old = flow(1, dst="10.96.0.10", dport=80)
    young = flow(2, dst="10.96.0.10", dport=80)
    put(ct, old, CtValue.nat_fwd(flow(1), last_seen=NOW - 11 * S))
    put(ct, young, CtValue.nat_fwd(flow(2), last_seen=NOW - 5 * S))  # its REV may be being written
    with ConntrackSweeper(ct, clock=lambda: NOW, mode=mode) as sw:
        stats = sw.sweep()
    assert not present(ct, old) and present(ct, young)
    assert stats.expired == {"orphan_fwd": 1}


def test_usage_warning(caplog):
    ct = new_ct_map(100, name="t_ct_full")
    try:
        for i in range(95):
            put(ct, flow(i, "udp"), CtValue.normal(last_seen=NOW))
        with ConntrackSweeper(ct, clock=lambda: NOW, mode="kernel") as sw, \
                caplog.at_level(logging.WARNING, logger="calico_ebpf.dataplane.conntrack"):
            stats = sw.sweep()
        assert stats.usage == pytest.approx(0.95)
        assert any(r.levelno == logging.WARNING and "95% full" in r.getMessage() for r in caplog.records)
    finally:
        ct.close()


def test_kernel_rule_matches_python_rule(ct):
    # The C rule (ct_gc_sweep) and the numpy rule must agree on every entry.
    rng = np.random.default_rng(7)
    n = 3000
    protos = rng.choice([6, 6, 6, 17, 1, 47], n).astype(np.uint32)
    flags = rng.integers(0, 16, (2, n)).astype(np.uint32)  # SYN/ACK/FIN/RST combinations
    idle = rng.choice([1, 10, 25, 35, 50, 70, 130, 700, 4000], n) * S
    rst = np.where(rng.random(n) < 0.2, NOW - 300 * S, 0).astype(np.uint64)
    dsr = np.where(rng.random(n) < 0.1, 0x2, 0).astype(np.uint8)
    kc = {"protocol": protos, "addr_a": np.arange(n, dtype=np.uint32) + 0x0A000000,
          "addr_b": np.full(n, 0x0A010005, np.uint32), "port_a": np.full(n, 1000, np.uint16),
          "port_b": np.full(n, 80, np.uint16)}
    vc = {"last_seen": (NOW - idle).astype(np.uint64), "rst_seen": rst, "flags": dsr,
          "a_to_b.flags": flags[0], "b_to_a.flags": flags[1]}
    ct.update_batch(columns.from_columns(CtKey, kc, n), columns.from_columns(CtValue, vc, n), n)
    t = ConntrackTimeouts()
    expected = expiry_reasons(t, NOW, protos, vc["last_seen"], rst, flags[0], flags[1], dsr)
    with ConntrackSweeper(ct, t, clock=lambda: NOW, mode="kernel") as sw:
        stats = sw.sweep()
    kbuf, _, left = ct.lookup_batch_all()
    survivors = set((columns.to_array(CtKey, kbuf, left)["addr_a"].astype(np.int64) - 0x0A000000).tolist())
    assert survivors == set(np.flatnonzero(expected == 0).tolist())
    counts = np.bincount(expected, minlength=len(ExpiryReason))
    assert stats.expired == {ExpiryReason(i).label: int(c) for i, c in enumerate(counts) if i and c}


def _bulk(n: int):
    """n entries: 40 % TCP established, 40 % UDP, 20 % NAT pairs; every tenth flow idle."""
    n_norm = n - n // 5
    rows = np.arange(n)
    proto = np.where(rows < n_norm // 2, 6, 17).astype(np.uint32)
    proto[n_norm:] = 6
    flow_id = np.where(rows < n_norm, rows, n_norm + (rows - n_norm) // 2)
    idle = flow_id % 10 == 0
    last = np.where(idle, np.where(proto == 6, NOW - 7200 * S, NOW - 120 * S), NOW - S).astype(np.uint64)
    is_rev = (rows >= n_norm) & ((rows - n_norm) % 2 == 0)
    is_fwd = (rows >= n_norm) & ~is_rev
    legs = np.where((proto == 6) & ~is_fwd, int(EST), 0).astype(np.uint32)
    keys = columns.from_columns(CtKey, {"protocol": proto, "addr_a": (0x0A000000 + rows).astype(np.uint32),
                                        "addr_b": np.full(n, 0xAC100001, np.uint32),
                                        "port_a": np.full(n, 40000, np.uint16), "port_b": np.full(n, 80, np.uint16)}, n)
    values = columns.from_columns(CtValue, {"last_seen": last, "type": np.where(is_rev, 2, np.where(is_fwd, 1, 0)),
                                            "a_to_b.flags": legs, "b_to_a.flags": legs}, n).reshape(n, 88).copy()
    fwd_rows = np.flatnonzero(is_fwd)
    values[fwd_rows, 24:40] = keys.reshape(n, 16)[fwd_rows - 1]
    values[fwd_rows, 40:] = 0
    return keys, values.reshape(-1), idle, proto


@pytest.mark.parametrize("mode", ALL_MODES)
def test_100k_entries_exact(mode):
    n = 100_000
    keys, values, idle, proto = _bulk(n)
    ct = new_ct_map(125_000, name="t_ct_100k")
    try:
        ct.update_batch(keys, values, n)
        assert ct.lookup_batch_all()[2] == n
        # A small queue: the "bpf" mode must run the cleaner several times.
        with ConntrackSweeper(ct, clock=lambda: NOW, mode=mode, queue_size=4096) as sw:
            stats = sw.sweep()
            if mode == "kernel":  # its side map of deleted REVs is emptied after each walk
                assert sw._obj.maps["cebpf_ct_gcrev"].lookup_batch_all()[2] == 0
        n_exp = int(idle.sum())
        assert stats.scanned == n and stats.deleted == n_exp == 10_000
        assert stats.expired == {"tcp_established": int((idle & (proto == 6)).sum()),
                                 "udp": int((idle & (proto == 17)).sum())}
        kbuf, _, left = ct.lookup_batch_all()
        assert left == n - n_exp
        survivors = np.sort(columns.to_array(CtKey, kbuf, left)["addr_a"].astype(np.int64) - 0x0A000000)
        assert np.array_equal(survivors, np.flatnonzero(~idle))
    finally:
        ct.close()


def test_cleaner_works_on_the_callers_map(ct):
    # BPFObject.reuse_map: the cleaner's cebpf_ct *is* the sweeper's map (same kernel id),
    # still addressed by its ELF name although libbpf renames it after the reused map.
    with ConntrackSweeper(ct, clock=lambda: NOW) as sw:
        assert sw._obj.maps["cebpf_ct"].info.id == ct.info.id
        assert sw._obj.maps["cebpf_ct_gcq"].max_entries == sw.queue_size


def test_pairs_found_even_when_key_hashes_collide(ct, monkeypatch):
    # The scan pairs FWD -> REV by a 64-bit hash of the key; equal hashes must
    # fall back to exact comparison, never pair the wrong entries.
    from calico_ebpf.dataplane import conntrack_gc

    monkeypatch.setattr(conntrack_gc, "_key_hash", lambda w0, w1: np.zeros(len(w0), np.uint64))
    dead = nat_pair(ct, 1, idle_s=4000)
    live = nat_pair(ct, 2, idle_s=10)
    orphan = flow(3, dst="10.96.0.10", dport=80)
    put(ct, orphan, CtValue.nat_fwd(flow(3), last_seen=NOW - 20 * S))
    with ConntrackSweeper(ct, clock=lambda: NOW, mode="bpf") as sw:
        stats = sw.sweep()
    assert stats.expired == {"tcp_established": 2, "orphan_fwd": 1}
    assert not any(present(ct, k) for k in (*dead, orphan)) and all(present(ct, k) for k in live)


def test_kernel_walk_does_not_count_a_deleted_rev_twice():
    # In a 2-bucket map, a REV inserted before its FWD often sits right behind
    # it in one chain: deleting both from the FWD's callback leaves the walk
    # able to step onto the deleted REV. It must be neither counted nor re-deleted.
    for _ in range(30):
        ct = new_ct_map(2, name="t_ct_tiny")
        try:
            nat_pair(ct, 1, idle_s=4000)
            with ConntrackSweeper(ct, clock=lambda: NOW, mode="kernel") as sw:
                stats = sw.sweep()
            assert (stats.scanned, stats.deleted, stats.expired) == (2, 2, {"tcp_established": 2})
        finally:
            ct.close()
