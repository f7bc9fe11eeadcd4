"""Strict RPF on workload interfaces, routing decisions and counters."""

from __future__ import annotations

import packets as P
from datapath_env import (
    EXTERNAL,
    HOST_IP,
    POD_A,
    POD_B,
    REMOTE_POD,
    TC_ACT_OK,
    TC_ACT_REDIRECT,
    TC_ACT_SHOT,
    make_fixtures,
)

from calico_ebpf.dataplane import StateFlags, Verdict
from calico_ebpf.maps.entries import Counter, CounterHook, RouteFlags

devs, dp_env, env = make_fixtures()


def test_spoofed_source_from_a_pod_is_dropped(env):
    res = env.run("from", P.tcp(POD_B, 40000, REMOTE_POD, 80), env.A)  # B's address on A's veth
    assert res.retval == TC_ACT_SHOT and res.state.reason == Counter.DROP_UNAUTH_SOURCE
    res = env.run("from", P.udp("1.2.3.4", 40000, REMOTE_POD, 80), env.A)  # not a workload at all
    assert res.retval == TC_ACT_SHOT and res.state.reason == Counter.DROP_UNAUTH_SOURCE
    assert env.ct_count() == 0
    assert env.dp.counters(env.A, CounterHook.TC_INGRESS)[Counter.DROP_UNAUTH_SOURCE] == 2


def test_workload_route_must_be_local(env):
    env.dp.set_route(f"{POD_A}/32", RouteFlags.WORKLOAD, next_hop="10.0.0.2")
    res = env.run("from", P.tcp(POD_A, 40000, REMOTE_POD, 80), env.A)
    assert res.retval == TC_ACT_SHOT


def test_established_flow_from_another_interface_is_checked_again(env):
    env.run("from", P.tcp(POD_A, 40000, POD_B, 80), env.A)
    # The same tuple appearing on B's veth (B spoofing A mid-flow).
    res = env.run("from", P.tcp(POD_A, 40000, POD_B, 80, "A"), env.B)
    assert res.retval == TC_ACT_SHOT and res.state.reason == Counter.DROP_UNAUTH_SOURCE
    ok = env.run("from", P.tcp(POD_A, 40000, POD_B, 80, "A"), env.A)
    assert ok.retval == TC_ACT_REDIRECT


def test_host_interfaces_are_not_strict(env):
    res = env.run("from", P.tcp(EXTERNAL, 40000, HOST_IP, 80), env.HEP)
    assert res.retval == TC_ACT_OK and res.state.flags & StateFlags.DEST_IS_HOST
    assert res.state.flags & StateFlags.EXTERNAL


def test_routing_decisions(env):
    local = env.run("from", P.udp(POD_A, 1, POD_B, 2), env.A)
    assert (local.retval, local.state.verdict, local.state.fwd_ifindex) == (TC_ACT_REDIRECT, Verdict.REDIRECT, env.B)
    remote = env.run("from", P.udp(POD_A, 1, REMOTE_POD, 2), env.A)
    assert remote.retval == TC_ACT_OK and remote.state.route_flags_dst & RouteFlags.WORKLOAD
    unknown = env.run("from", P.udp(POD_A, 1, "8.8.8.8", 2), env.A)
    assert unknown.retval == TC_ACT_OK and unknown.state.route_flags_dst == 0


def test_unmanaged_interface_is_left_alone(env):
    env.dp.remove_interface(env.C)
    res = env.run("from", P.tcp("1.2.3.4", 1, "5.6.7.8", 2), env.C)
    assert res.retval == TC_ACT_OK
    assert env.dp.counters(env.C, CounterHook.TC_INGRESS)[Counter.TOTAL] == 0


def test_counters_per_interface_and_hook(env):
    for i in range(3):
        env.run("from", P.udp(POD_A, 1000 + i, REMOTE_POD, 53), env.A)
    env.run("to", P.udp(REMOTE_POD, 53, POD_A, 1000), env.A)
    ing = env.dp.counters(env.A, CounterHook.TC_INGRESS)
    egr = env.dp.counters(env.A, CounterHook.TC_EGRESS)
    assert ing[Counter.TOTAL] == 3 and ing[Counter.CT_NEW] == 3
    assert egr[Counter.TOTAL] == 1 and egr[Counter.CT_HIT] == 1
    assert env.dp.counters(env.B, CounterHook.TC_INGRESS)[Counter.TOTAL] == 0
