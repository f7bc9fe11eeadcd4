"""Conntrack lifecycle (dataplane/conntrack.py): stale NAT after backends
leave, the sweeper thread, metrics and auto-sizing, on real maps with the
real cleaner program. "Now" is a fake clock except where the thread runs."""

from __future__ import annotations

import logging
import time

import pytest

from calico_ebpf.dataplane.conntrack import ConntrackManager, StaleNatResult, read_size_file, remove_stale_nat
from calico_ebpf.dataplane.conntrack_gc import new_ct_map
from calico_ebpf.kernel import Map, MapType
from calico_ebpf.maps.conntrack import CtKey, CtLeg, CtValue
from calico_ebpf.maps.enums import CtFlags
from calico_ebpf.maps.enums import CtLegFlags as F
from calico_ebpf.maps.named import Conntrack

S = 1_000_000_000
NOW = 50_000 * S
EST = F.SYN_SEEN | F.ACK_SEEN

B1 = ("10.65.0.7", 8080)
B2 = ("10.65.0.8", 8080)
SVC1 = ("10.96.0.10", 53)
SVC2 = ("10.96.0.20", 53)


@pytest.fixture
def ct():
    m = new_ct_map(4096, name="t_ct_life")
    yield Conntrack(m)
    m.close()


def nat_flow(ct: Conntrack, client: str, cport: int, svc, backend, proto: str,
             last_seen: int = NOW) -> tuple[CtKey, CtKey]:
    """Write a NAT_FWD/NAT_REV pair the way the datapath does; returns (fwd key, rev key)."""
    rev = CtKey.for_flow(client, cport, backend[0], backend[1], proto)
    fwd = CtKey.for_flow(client, cport, svc[0], svc[1], proto)
    ba = CtFlags(0) if CtKey.src_is_a(client, cport, *backend) else CtFlags.BA
    legs = (CtLeg(flags=EST), CtLeg(flags=EST)) if proto == "tcp" else (CtLeg(packets=1), CtLeg(packets=1))
    ct[rev] = CtValue.nat_rev(svc[0], svc[1], *legs, last_seen=last_seen, flags=ba)
    ct[fwd] = CtValue.nat_fwd(rev, last_seen=last_seen, flags=ba)
    return fwd, rev


def test_stale_udp_nat_pairs_go_tcp_gets_send_reset(ct):
    gone_udp = nat_flow(ct, "10.0.0.2", 40000, SVC1, B1, "udp")
    gone_udp_ba = nat_flow(ct, "10.0.0.200", 40001, SVC1, B1, "udp")   # client sorts as B: BA flag
    assert CtFlags.BA in ct[gone_udp_ba[1]].flags
    kept_other_backend = nat_flow(ct, "10.0.0.3", 40002, SVC1, B2, "udp")
    kept_other_port = nat_flow(ct, "10.0.0.4", 40003, ("10.96.0.11", 90), ("10.65.0.7", 9090), "udp")
    tcp = nat_flow(ct, "10.0.0.5", 40004, ("10.96.0.10", 8080), B1, "tcp")
    plain = CtKey.for_flow("10.0.0.6", 40005, *B1, "udp")   # direct to the pod, no NAT
    ct[plain] = CtValue.normal(CtLeg(packets=1), last_seen=NOW)
    before = ct.to_dict()

    res = remove_stale_nat(ct.map, {(B1[0], B1[1], "udp"), (B1[0], B1[1], "tcp")})

    assert res == StaleNatResult(deleted=4, reset=2, flows=3, tcp_flows=1)
    after = ct.to_dict()
    for k in (*gone_udp, *gone_udp_ba):
        assert k not in after
    for k in (*kept_other_backend, *kept_other_port, plain):
        assert after[k] == before[k]
    for k in tcp:
        assert CtFlags.SEND_RESET in after[k].flags
        # Only the flag changed.
        assert after[k] == before[k].__class__(**{**_fields(before[k]),
                                                  "flags": before[k].flags | CtFlags.SEND_RESET})
    assert len(after) == len(before) - 4


def _fields(v: CtValue) -> dict:
    import attrs

    return attrs.asdict(v, recurse=False)


def test_live_backends_keep_flows_of_services_that_still_have_them(ct):
    via_svc1 = nat_flow(ct, "10.0.0.2", 40000, SVC1, B1, "udp")
    via_svc2 = nat_flow(ct, "10.0.0.3", 40000, SVC2, B1, "udp")
    # B1 left SVC1 but is still a backend of SVC2.
    live = {(*SVC1, "udp"): {B2}, (*SVC2, "udp"): {B1}}
    res = remove_stale_nat(ct.map, {(*B1, "udp")}, live)
    assert (res.deleted, res.flows) == (2, 1)
    for k in via_svc1:
        assert k not in ct
    for k in via_svc2:
        assert k in ct


def test_stale_nat_nothing_to_do(ct):
    assert remove_stale_nat(ct.map, set()) == StaleNatResult()
    assert remove_stale_nat(ct.map, {(*B1, "udp")}) == StaleNatResult()
    nat_flow(ct, "10.0.0.2", 40000, SVC1, B2, "udp")
    assert remove_stale_nat(ct.map, {(*B1, "udp")}) == StaleNatResult()
    # reset_tcp=False leaves TCP untouched.
    tcp = nat_flow(ct, "10.0.0.5", 40004, ("10.96.0.10", 8080), B1, "tcp")
    res = remove_stale_nat(ct.map, {(*B1, "tcp")}, reset_tcp=False)
    assert (res.reset, res.tcp_flows) == (0, 1)
    assert CtFlags.SEND_RESET not in ct[tcp[1]].flags


def test_manager_sweeps_counts_and_stale_nat(ct):
    clock = [NOW]
    live = nat_flow(ct, "10.0.0.2", 40000, SVC1, B1, "udp")
    old = nat_flow(ct, "10.0.0.3", 40000, SVC1, B1, "udp", last_seen=NOW - 120 * S)
    ct[CtKey.for_flow("10.0.0.9", 1, "10.1.0.1", 80, "tcp")] = CtValue.normal(
        CtLeg(flags=F.SYN_SEEN), last_seen=NOW - 30 * S)
    with ConntrackManager(ct.map, clock=lambda: clock[0]) as mgr:
        st = mgr.sweep_now()
        assert st.deleted == 3 and old[0] not in ct and live[0] in ct
        m = mgr.metrics()
        assert (m["sweeps"], m["cleaned_total"], m["used"], m["max_entries"]) == (1, 3, 2, 4096)
        assert m["expired_total"] == {"udp": 2, "tcp_syn_sent": 1}
        assert m["sweep_duration_seconds"] > 0 and not m["needs_resize"]
        res = mgr.remove_stale_nat({(*B1, "udp")})
        assert res.deleted == 2 and mgr.metrics()["stale_nat_total"] == 2
        text = mgr.prometheus_text()
        assert 'calico_ebpf_conntrack_expired_total{reason="udp"} 2' in text
        assert "calico_ebpf_conntrack_cleaned_total 3" in text


def test_manager_thread_sweeps_periodically_and_stops(ct):
    done = []
    mgr = ConntrackManager(ct.map, interval=0.05, jitter=0.02, on_sweep=done.append)
    try:
        mgr.start()
        assert mgr.running
        deadline = time.monotonic() + 5
        while len(done) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(done) >= 3
        mgr.stop(timeout=5)
        assert not mgr.running
        n = mgr.sweeps
        time.sleep(0.15)
        assert mgr.sweeps == n   # really stopped
        assert len(mgr.history) == n and mgr.errors == 0
    finally:
        mgr.close()


def usage_map(name: str) -> Map:
    """A plain hash with the conntrack layout: near capacity an LRU map evicts
    early (per-CPU free lists), which would make exact usage counts flaky; the
    manager's usage rules do not depend on the map being an LRU."""
    return Map.create(MapType.HASH, 16, 88, 1000, name=name)


def fill_live(ct: Conntrack, start: int, count: int) -> None:
    ct.update_many((CtKey.for_flow(f"10.1.{i // 250}.{i % 250 + 1}", 1000, "10.2.0.1", 80, "udp"),
                    CtValue.normal(CtLeg(packets=1), last_seen=NOW)) for i in range(start, start + count))


def test_full_map_warns_and_recommends_double(tmp_path, caplog):
    m = usage_map("t_ct_full")
    ct = Conntrack(m)
    size_file = tmp_path / "ct_map_size"
    try:
        fill_live(ct, 0, 950)
        with ConntrackManager(m, clock=lambda: NOW, size_file=size_file) as mgr:
            with caplog.at_level(logging.WARNING, logger="calico_ebpf.dataplane.conntrack"):
                st = mgr.sweep_now()
            assert st.used == len(ct) > 900
            assert mgr.needs_resize and mgr.recommended_size == 2000
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1 and "FULL" in warnings[0].getMessage()  # once, from the manager
            assert read_size_file(size_file, 1000) == 2000
            assert read_size_file(tmp_path / "absent", 1000) == 1000
    finally:
        m.close()


def test_growing_above_85_percent_for_three_sweeps_recommends_double():
    m = usage_map("t_ct_grow")
    ct = Conntrack(m)
    try:
        fill_live(ct, 0, 860)
        with ConntrackManager(m, clock=lambda: NOW) as mgr:
            mgr.sweep_now()
            for step in range(3):
                assert mgr.recommended_size is None, step
                fill_live(ct, 860 + 5 * step, 5)
                mgr.sweep_now()
            assert mgr.recommended_size == 2000
            assert not mgr.needs_resize   # under 90 %: a recommendation, not an emergency
    finally:
        m.close()


# ---- end to end through the real datapath and Dataplane.apply --------------------

DNS_VIP = "10.96.0.53"


def test_udp_flow_moves_to_a_live_backend_when_its_backend_leaves(bpf_objects):
    import apply_cluster as C
    import packets as P
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    from calico_ebpf.dataplane import StateFlags

    docs = C.cluster_docs() + [C.service("dns", DNS_VIP, 53, protocol="UDP"),
                               C.endpoints("dns", ["b", "c"], port=5353, protocol="UDP")]
    netns = C.NodeNetns()
    try:
        dp = C.new_dataplane(C.state_of(docs), netns)
        dp.clean_stale_nat = False  # apply would clean up itself; this test drives remove_stale_nat
        try:
            dp.apply(C.state_of(docs))

            def send() -> tuple[str, int]:
                res = netns.run(dp, P.udp(C.POD_IPS["a"], 40000, DNS_VIP, 53), "a")
                assert res.state.flags & StateFlags.DNAT
                out = Ether(res.data)
                return out[IP].dst, out[UDP].dport

            chosen = send()
            assert chosen in {(C.POD_IPS["b"], 5353), (C.POD_IPS["c"], 5353)}
            assert send() == chosen   # conntrack keeps the flow on its backend
            gone = next(p for p in ("b", "c") if C.POD_IPS[p] == chosen[0])
            other = next(p for p in ("b", "c") if p != gone)
            docs2 = [d for d in docs if d["metadata"]["name"] != "dns-1"] + [
                C.endpoints("dns", [other], port=5353, protocol="UDP")]
            dp.apply(C.state_of(docs2))
            # Without cleanup the flow's NAT entries still send it to the gone backend.
            assert send() == chosen
            ct = dp.maps["cebpf_ct"]
            res = remove_stale_nat(ct, {(chosen[0], 5353, "udp")})
            assert (res.deleted, res.flows) == (2, 1)
            # The next packet is a new flow and goes to the backend that is left.
            assert send() == (C.POD_IPS[other], 5353)
            assert send() == (C.POD_IPS[other], 5353)
        finally:
            dp.close()
    finally:
        netns.delete()
