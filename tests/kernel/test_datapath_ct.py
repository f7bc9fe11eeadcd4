"""Conntrack in the datapath: NORMAL entries, key order, legs, TCP state, UDP, ICMP."""

from __future__ import annotations

import ipaddress

import packets as P
from datapath_env import POD_A, POD_B, REMOTE_POD, TC_ACT_OK, TC_ACT_REDIRECT, make_fixtures

from calico_ebpf.dataplane import CtResult, StateFlags, Verdict
from calico_ebpf.maps.entries import CtFlags, CtKey, CtLegFlags, CtType, Proto

devs, dp_env, env = make_fixtures()


def test_new_tcp_flow_creates_normal_entry_with_opener_leg(env):
    res = env.run("from", P.tcp(POD_A, 40000, REMOTE_POD, 80), env.A)
    assert res.retval == TC_ACT_OK  # remote workload: host routing
    assert res.state.ct_rc == CtResult.NEW and res.state.flags & StateFlags.NEW_FLOW
    v = env.ct(POD_A, 40000, REMOTE_POD, 80)
    assert v is not None and v.type == CtType.NORMAL
    key = CtKey.for_flow(POD_A, 40000, REMOTE_POD, 80, Proto.TCP)
    opener_is_a = key.addr_a == ipaddress.IPv4Address(POD_A)
    opener = v.a_to_b if opener_is_a else v.b_to_a
    assert bool(v.flags & CtFlags.BA) == (not opener_is_a)
    assert opener.flags & (CtLegFlags.SYN_SEEN | CtLegFlags.APPROVED | CtLegFlags.OPENER | CtLegFlags.WORKLOAD) == (
        CtLegFlags.SYN_SEEN | CtLegFlags.APPROVED | CtLegFlags.OPENER | CtLegFlags.WORKLOAD)
    assert opener.packets == 1 and opener.ifindex == env.A


def test_key_order_puts_lower_address_first(env):
    # 10.65.1.5 > 10.65.0.2 as raw words too on little-endian? Compare as the C code does.
    env.run("from", P.udp(REMOTE_POD, 5000, POD_A, 6000), env.HEP)
    key = CtKey.for_flow(REMOTE_POD, 5000, POD_A, 6000, Proto.UDP)
    raw_a = int.from_bytes(key.addr_a.packed, "little")
    raw_b = int.from_bytes(key.addr_b.packed, "little")
    assert raw_a < raw_b
    assert env.dp.maps["cebpf_ct"].lookup(key.to_bytes()) is not None


def test_udp_reply_is_established_and_counts_both_legs(env):
    env.run("from", P.udp(POD_A, 5000, REMOTE_POD, 53), env.A)
    res = env.run("from", P.udp(REMOTE_POD, 53, POD_A, 5000), env.HEP)
    assert res.state.ct_rc == CtResult.ESTABLISHED
    assert res.retval == TC_ACT_REDIRECT and res.state.fwd_ifindex == env.A
    v = env.ct(POD_A, 5000, REMOTE_POD, 53, Proto.UDP)
    assert v.a_to_b.packets == 1 and v.b_to_a.packets == 1


def test_icmp_echo_tracked_by_identifier(env):
    env.run("from", P.icmp_echo(POD_A, REMOTE_POD, ident=0x4242), env.A)
    assert env.ct(POD_A, 0x4242, REMOTE_POD, 0, Proto.ICMP) is not None
    res = env.run("from", P.icmp_echo(REMOTE_POD, POD_A, ident=0x4242, reply=True), env.HEP)
    assert res.state.ct_rc == CtResult.ESTABLISHED
    other = env.run("from", P.icmp_echo(REMOTE_POD, POD_A, ident=0x4343, reply=True), env.HEP)
    assert other.state.ct_rc == CtResult.NEW


def _handshake(env, sport):
    env.run("from", P.tcp(POD_A, sport, REMOTE_POD, 80, "S"), env.A)
    env.run("from", P.tcp(REMOTE_POD, 80, POD_A, sport, "SA"), env.HEP)
    env.run("from", P.tcp(POD_A, sport, REMOTE_POD, 80, "A"), env.A)


def test_tcp_leg_flags_and_rst_then_syn_recycles(env):
    _handshake(env, 41000)
    v = env.ct(POD_A, 41000, REMOTE_POD, 80)
    assert v.a_to_b.flags & CtLegFlags.ACK_SEEN and v.b_to_a.flags & CtLegFlags.ACK_SEEN
    assert v.rst_seen == 0
    res = env.run("from", P.tcp(REMOTE_POD, 80, POD_A, 41000, "R"), env.HEP)
    assert res.state.ct_rc == CtResult.ESTABLISHED
    v = env.ct(POD_A, 41000, REMOTE_POD, 80)
    assert v.rst_seen != 0
    assert (v.a_to_b.flags | v.b_to_a.flags) & CtLegFlags.RST_SEEN
    # A new SYN on the reset tuple starts a fresh flow.
    res = env.run("from", P.tcp(POD_A, 41000, REMOTE_POD, 80, "S"), env.A)
    assert res.state.flags & StateFlags.CT_RECYCLED and res.state.ct_rc == CtResult.NEW
    v = env.ct(POD_A, 41000, REMOTE_POD, 80)
    assert v.rst_seen == 0 and not ((v.a_to_b.flags | v.b_to_a.flags) & CtLegFlags.RST_SEEN)


def test_tcp_fin_both_ways_closes_then_syn_recycles(env):
    _handshake(env, 42000)
    env.run("from", P.tcp(POD_A, 42000, REMOTE_POD, 80, "FA"), env.A)
    res = env.run("from", P.tcp(POD_A, 42000, REMOTE_POD, 80, "S"), env.A)
    assert res.state.ct_rc == CtResult.ESTABLISHED  # only one side closed: still the old flow
    env.run("from", P.tcp(REMOTE_POD, 80, POD_A, 42000, "FA"), env.HEP)
    v = env.ct(POD_A, 42000, REMOTE_POD, 80)
    assert v.a_to_b.flags & CtLegFlags.FIN_SEEN and v.b_to_a.flags & CtLegFlags.FIN_SEEN
    res = env.run("from", P.tcp(POD_A, 42000, REMOTE_POD, 80, "S"), env.A)
    assert res.state.flags & StateFlags.CT_RECYCLED


def test_mid_flow_tcp_miss_is_not_tracked(env):
    res = env.run("from", P.tcp(POD_A, 43000, REMOTE_POD, 80, "A"), env.A)
    assert res.retval == TC_ACT_OK and res.state.verdict == Verdict.ALLOW
    assert res.state.ct_rc == CtResult.INVALID
    assert env.ct(POD_A, 43000, REMOTE_POD, 80) is None


def test_local_workload_destination_is_redirected(env):
    res = env.run("from", P.tcp(POD_A, 44000, POD_B, 80), env.A)
    assert res.retval == TC_ACT_REDIRECT
    assert res.state.fwd_ifindex == env.B and res.state.verdict == Verdict.REDIRECT
