"""Policy hook (tail call into the endpoint's slot, pre/post-NAT state,
continuation programs) and failsafes on host interfaces."""

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
    VIP,
    make_fixtures,
)
from scapy.layers.inet import IP, TCP

from calico_ebpf.dataplane import CtResult, PolicyDir, PolicyRc, StateFlags, Verdict
from calico_ebpf.maps.entries import Counter, CounterHook, CtLegFlags

devs, dp_env, env = make_fixtures()

DENY_SLOT, ALLOW_SLOT, EMPTY_SLOT = 5, 6, 7


def _policies(env):
    env.dp.set_policy(DENY_SLOT, "cebpf_policy_deny")
    env.dp.set_policy(ALLOW_SLOT, "cebpf_policy_allow")


def test_egress_deny_drops_and_creates_nothing(env):
    _policies(env)
    env.dp.set_interface(env.A, "wep_a", "wep", egress_policy=DENY_SLOT)
    res = env.run("from", P.tcp(POD_A, 40000, REMOTE_POD, 80), env.A)
    assert res.retval == TC_ACT_SHOT
    st = res.state
    assert (st.verdict, st.reason, st.pol_rc, st.pol_slot) == (Verdict.DROP, Counter.DROP_POLICY, PolicyRc.DENY,
                                                                  DENY_SLOT)
    assert st.pol_dir == PolicyDir.EGRESS
    assert env.ct_count() == 0
    assert env.dp.counters(env.A, CounterHook.TC_INGRESS)[Counter.DROP_POLICY] == 1


def test_allow_continues_with_nat_and_policy_sees_pre_and_post_dnat(env):
    _policies(env)
    env.dp.set_interface(env.A, "wep_a", "wep", egress_policy=ALLOW_SLOT)
    env.service(7, VIP, 80, "tcp", [(POD_B, 8080)])
    res = env.run("from", P.tcp(POD_A, 40000, VIP, 80), env.A)
    out = P.check_checksums(res.data)
    assert res.retval == TC_ACT_REDIRECT and (out[IP].dst, out[TCP].dport) == (POD_B, 8080)
    st = res.state
    assert st.pol_rc == PolicyRc.ALLOW and st.flags & StateFlags.POLICY_RAN
    assert (str(st.ip_dst), st.dport, str(st.post_nat_ip_dst), st.post_nat_dport) == (VIP, 80, POD_B, 8080)
    assert env.ct(POD_A, 40000, VIP, 80) is not None and env.ct(POD_A, 40000, POD_B, 8080) is not None
    assert env.dp.counters(env.A, CounterHook.TC_INGRESS)[Counter.ACCEPTED_POLICY] == 1
    # Established packets do not run policy again.
    again = env.run("from", P.tcp(POD_A, 40000, VIP, 80, "A"), env.A)
    assert again.state.pol_rc == PolicyRc.NONE and again.state.ct_rc == CtResult.ESTABLISHED_DNAT


def test_empty_slot_means_no_policy(env):
    env.dp.set_interface(env.A, "wep_a", "wep", egress_policy=EMPTY_SLOT)
    res = env.run("from", P.tcp(POD_A, 40000, REMOTE_POD, 80), env.A)
    assert res.retval == TC_ACT_OK and res.state.pol_slot == EMPTY_SLOT and res.state.pol_rc == PolicyRc.NONE
    assert not res.state.flags & StateFlags.POLICY_RAN
    assert env.ct(POD_A, 40000, REMOTE_POD, 80) is not None


def test_ingress_policy_of_destination_runs_on_first_packet(env):
    _policies(env)
    env.dp.set_interface(env.B, "wep_b", "wep", ingress_policy=DENY_SLOT)
    syn = env.run("from", P.tcp(POD_A, 40000, POD_B, 80), env.A)
    assert syn.retval == TC_ACT_REDIRECT
    at_b = env.run("to", syn.data, env.B, mark=syn.mark)
    assert at_b.retval == TC_ACT_SHOT and at_b.state.pol_dir == PolicyDir.INGRESS
    v = env.ct(POD_A, 40000, POD_B, 80)
    assert not (v.a_to_b.flags & CtLegFlags.APPROVED and v.b_to_a.flags & CtLegFlags.APPROVED)
    # Allowing it approves the responder leg once; the next packet skips policy.
    env.dp.set_interface(env.B, "wep_b", "wep", ingress_policy=ALLOW_SLOT)
    at_b = env.run("to", syn.data, env.B)
    assert at_b.retval == TC_ACT_OK and at_b.state.pol_rc == PolicyRc.ALLOW
    v = env.ct(POD_A, 40000, POD_B, 80)
    assert v.a_to_b.flags & CtLegFlags.APPROVED and v.b_to_a.flags & CtLegFlags.APPROVED
    at_b = env.run("to", P.tcp(POD_A, 40000, POD_B, 80, "A"), env.B)
    assert at_b.retval == TC_ACT_OK and at_b.state.pol_rc == PolicyRc.NONE


def test_host_to_workload_is_always_allowed(env):
    _policies(env)
    env.dp.set_interface(env.B, "wep_b", "wep", ingress_policy=DENY_SLOT)
    res = env.run("to", P.tcp(HOST_IP, 50000, POD_B, 80), env.B)
    assert res.retval == TC_ACT_OK and res.state.flags & StateFlags.SKIP_POLICY


def test_inbound_failsafe_bypasses_host_policy(env):
    _policies(env)
    env.dp.set_interface(env.HEP, "hep", "hep", ingress_policy=DENY_SLOT, egress_policy=DENY_SLOT)
    env.dp.set_failsafe("tcp", 22)
    ok = env.run("from", P.tcp(EXTERNAL, 50000, HOST_IP, 22), env.HEP)
    assert ok.retval == TC_ACT_OK and ok.state.flags & StateFlags.FAILSAFE
    assert ok.state.pol_rc == PolicyRc.NONE
    denied = env.run("from", P.tcp(EXTERNAL, 50001, HOST_IP, 23), env.HEP)
    assert denied.retval == TC_ACT_SHOT and denied.state.reason == Counter.DROP_POLICY
    # Failsafe ports are about the host: the same port to a pod is policed.
    to_pod = env.run("from", P.tcp(EXTERNAL, 50002, POD_B, 22), env.HEP)
    assert to_pod.retval == TC_ACT_SHOT
    c = env.dp.counters(env.HEP, CounterHook.TC_INGRESS)
    assert c[Counter.ACCEPTED_FAILSAFE] == 1 and c[Counter.DROP_POLICY] == 2


def test_failsafe_cidr_limits_the_sources(env):
    _policies(env)
    env.dp.set_interface(env.HEP, "hep", "hep", ingress_policy=DENY_SLOT)
    env.dp.set_failsafe("tcp", 6443, "198.51.100.0/24")
    assert env.run("from", P.tcp("198.51.100.4", 50000, HOST_IP, 6443), env.HEP).retval == TC_ACT_OK
    assert env.run("from", P.tcp(EXTERNAL, 50000, HOST_IP, 6443), env.HEP).retval == TC_ACT_SHOT


def test_outbound_failsafe_bypasses_host_egress_policy(env):
    _policies(env)
    env.dp.set_interface(env.HEP, "hep", "hep", egress_policy=DENY_SLOT)
    env.dp.set_failsafe("udp", 53, outbound=True)
    ok = env.run("to", P.udp(HOST_IP, 40000, "8.8.8.8", 53), env.HEP)
    assert ok.retval == TC_ACT_OK and ok.state.flags & StateFlags.FAILSAFE
    no = env.run("to", P.udp(HOST_IP, 40000, "8.8.8.8", 54), env.HEP)
    assert no.retval == TC_ACT_SHOT and no.state.pol_dir == PolicyDir.EGRESS


def test_default_failsafes(env):
    _policies(env)
    env.dp.set_interface(env.HEP, "hep", "hep", ingress_policy=DENY_SLOT, egress_policy=DENY_SLOT)
    env.dp.set_default_failsafes()
    for proto, port in (("tcp", 22), ("udp", 68), ("tcp", 6443)):
        pkt = P.tcp(EXTERNAL, 50000, HOST_IP, port) if proto == "tcp" else P.udp(EXTERNAL, 50000, HOST_IP, port)
        assert env.run("from", pkt, env.HEP).retval == TC_ACT_OK, (proto, port)
    assert env.run("from", P.udp(EXTERNAL, 50000, HOST_IP, 22), env.HEP).retval == TC_ACT_SHOT  # udp:22 is not one
    assert env.run("to", P.udp(HOST_IP, 50000, "8.8.8.8", 53), env.HEP).retval == TC_ACT_OK
    assert env.run("to", P.tcp(HOST_IP, 50000, "8.8.8.8", 53), env.HEP).retval == TC_ACT_SHOT
