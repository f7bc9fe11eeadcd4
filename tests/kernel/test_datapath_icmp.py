"""ICMP errors matched to their flow through the quoted header, with the
service shown to the client instead of the backend."""

from __future__ import annotations

import packets as P
from datapath_env import POD_A, POD_B, REMOTE_POD, TC_ACT_REDIRECT, make_fixtures
from scapy.layers.inet import ICMP, IP, UDP, IPerror, TCPerror, UDPerror

from calico_ebpf.dataplane import CtResult, StateFlags

devs, dp_env, env = make_fixtures()

SVC = "10.96.0.11"


def _udp_flow(env):
    env.service(9, SVC, 53, "udp", [(POD_B, 5353)])
    res = env.run("from", P.udp(POD_A, 5000, SVC, 53), env.A)
    return res.data  # the packet as the backend received it


def test_port_unreachable_from_backend_shows_the_service(env):
    delivered = _udp_flow(env)
    err = P.icmp_error(POD_B, POD_A, delivered, type_=3, code=3)
    res = env.run("from", err, env.B)
    out = P.check_checksums(res.data)
    assert res.state.ct_rc == CtResult.RELATED and res.state.flags & StateFlags.ICMP_INNER_NAT
    assert (out[IP].src, out[IP].dst) == (SVC, POD_A)
    assert (out[IPerror].src, out[IPerror].dst) == (POD_A, SVC)
    assert (out[UDPerror].sport, out[UDPerror].dport) == (5000, 53)
    # The quoted UDP checksum still matches the translated quoted packet.
    quoted = bytes(P.parse(P.udp(POD_A, 5000, SVC, 53))[UDP])[:8]
    assert bytes(out[UDPerror])[:8] == quoted
    assert res.retval == TC_ACT_REDIRECT and res.state.fwd_ifindex == env.A


def test_frag_needed_from_a_router_keeps_the_router_as_source(env):
    env.service(7, "10.96.0.10", 80, "tcp", [(REMOTE_POD, 8080)])
    res = env.run("from", P.tcp(POD_A, 40000, "10.96.0.10", 80, "S"), env.A)
    assert P.parse(res.data)[IP].dst == REMOTE_POD
    err = P.icmp_error("10.0.0.254", POD_A, res.data, type_=3, code=4, mtu=1300)
    out_res = env.run("from", err, env.HEP)
    out = P.check_checksums(out_res.data)
    assert out[IP].src == "10.0.0.254"
    assert (out[IPerror].dst, out[TCPerror].dport) == ("10.96.0.10", 80)
    assert out[ICMP].nexthopmtu == 1300
    assert out_res.state.ct_rc == CtResult.RELATED


def test_error_about_plain_flow_is_related_and_untouched(env):
    env.run("from", P.udp(POD_A, 7000, REMOTE_POD, 7001), env.A)
    sent = P.udp(POD_A, 7000, REMOTE_POD, 7001)
    err = P.icmp_error(REMOTE_POD, POD_A, sent, type_=3, code=3)
    res = env.run("from", err, env.HEP)
    assert res.state.ct_rc == CtResult.RELATED and not res.state.flags & StateFlags.ICMP_INNER_NAT
    assert res.data == err


def test_error_about_unknown_flow_is_not_related_and_not_tracked(env):
    before = env.ct_count()
    err = P.icmp_error(REMOTE_POD, POD_A, P.udp(POD_A, 1, REMOTE_POD, 2), type_=3, code=3)
    res = env.run("from", err, env.HEP)
    assert res.state.ct_rc == CtResult.NEW and res.state.flags & StateFlags.NO_CT
    assert env.ct_count() == before


def test_error_about_a_reply_goes_to_the_backend(env):
    _udp_flow(env)
    reply = env.run("from", P.udp(POD_B, 5353, POD_A, 5000), env.B)  # reaches A as SVC:53 -> A:5000
    assert P.parse(reply.data)[IP].src == SVC
    # A's stack refuses the reply: its port-unreachable quotes what A saw.
    err = P.icmp_error(POD_A, SVC, reply.data, type_=3, code=3)
    res = env.run("from", err, env.A)
    out = P.check_checksums(res.data)
    assert res.state.ct_rc == CtResult.RELATED and res.state.flags & StateFlags.ICMP_INNER_NAT
    assert (out[IP].src, out[IP].dst) == (POD_A, POD_B)
    assert (out[IPerror].src, out[UDPerror].sport, out[IPerror].dst, out[UDPerror].dport) == (POD_B, 5353, POD_A, 5000)
    quoted = bytes(P.parse(P.udp(POD_B, 5353, POD_A, 5000))[UDP])[:8]
    assert bytes(out[UDPerror])[:8] == quoted
    assert res.retval == TC_ACT_REDIRECT and res.state.fwd_ifindex == env.B
