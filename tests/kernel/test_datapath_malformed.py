"""Malformed and truncated packets are dropped (and counted) without harm."""

from __future__ import annotations

import packets as P
from datapath_env import POD_A, REMOTE_POD, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, VIP, make_fixtures
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether

from calico_ebpf.maps.entries import Counter

devs, dp_env, env = make_fixtures()


def _drop(env, frame, reason):
    res = env.run("from", frame, env.A)
    assert res.retval == TC_ACT_SHOT, res.state
    assert res.state.reason == reason
    return res


def test_truncated_ip_total_length(env):
    frame = bytearray(P.tcp(POD_A, 1, REMOTE_POD, 2))
    _drop(env, bytes(frame[:-8]), Counter.DROP_MALFORMED_IP)  # IP says 40 bytes, 32 present


def test_short_l4_headers(env):
    # (BPF_PROG_TEST_RUN itself refuses IPv4 frames shorter than eth + IP header.)
    _drop(env, bytes(P.eth() / IP(src=POD_A, dst=REMOTE_POD, proto=17) / (b"\0" * 4)), Counter.DROP_SHORT)
    _drop(env, bytes(P.eth() / IP(src=POD_A, dst=REMOTE_POD, proto=1) / (b"\0" * 3)), Counter.DROP_SHORT)
    # IP header claims TCP but only 8 bytes of it follow.
    _drop(env, bytes(P.eth() / IP(src=POD_A, dst=REMOTE_POD, proto=6) / (b"\0" * 8)), Counter.DROP_SHORT)


def test_bad_ihl_and_version(env):
    frame = bytearray(P.udp(POD_A, 1, REMOTE_POD, 2))
    frame[14] = 0x44  # IHL 4
    _drop(env, bytes(frame), Counter.DROP_MALFORMED_IP)
    frame[14] = 0x65  # version 6 in an IPv4 ethertype
    _drop(env, bytes(frame), Counter.DROP_MALFORMED_IP)


def test_ip_options_and_fragments(env):
    opt = bytes(P.eth() / IP(src=POD_A, dst=REMOTE_POD, options=[b"\x01\x01\x01\x00"]) / UDP(sport=1, dport=2))
    _drop(env, opt, Counter.DROP_IP_OPTIONS)
    frag = bytes(P.eth() / IP(src=POD_A, dst=REMOTE_POD, flags="MF") / UDP(sport=1, dport=2))
    _drop(env, frag, Counter.FRAG_UNSUPPORTED)


def test_bad_tcp_data_offset(env):
    frame = bytearray(P.tcp(POD_A, 1, REMOTE_POD, 2))
    frame[14 + 20 + 12] = 0x30  # doff 3
    _drop(env, bytes(frame), Counter.DROP_MALFORMED_IP)
    frame[14 + 20 + 12] = 0xF0  # doff 15: 60 bytes, only 20 present
    _drop(env, bytes(frame), Counter.DROP_MALFORMED_IP)


def test_non_ip_passes_untouched(env):
    arp = bytes(Ether(src=P.POD_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=POD_A, pdst="169.254.1.1"))
    res = env.run("from", arp, env.A)
    assert res.retval == TC_ACT_OK and res.data == arp


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=14, max_size=120), cut=st.integers(min_value=0, max_value=80))
def test_garbage_never_harms(env, data, cut):
    """Random bytes after a valid prefix: the program returns a normal verdict and the node keeps working."""
    env.service(7, VIP, 80, "tcp", [("10.65.0.3", 8080)])
    base = P.tcp(POD_A, 40000, VIP, 80)
    frame = base[: 14 + cut] + data
    frame += bytes(max(0, 34 - len(frame)))  # test_run refuses IPv4 frames shorter than eth + IP header
    res = env.run("from", frame, env.A)
    assert res.retval in (TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT)
    good = env.run("from", P.tcp(POD_A, 40001, VIP, 80), env.A)
    assert good.retval == TC_ACT_REDIRECT
