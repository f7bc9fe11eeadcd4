"""Service NAT: DNAT of new flows, NAT_FWD/NAT_REV entries, established and
reply translation, checksums, no-backend reject, source ranges, affinity,
local-only selection, hairpin, NodePort wildcard."""

from __future__ import annotations

import ipaddress

import packets as P
from datapath_env import (
    EXTERNAL,
    HOST_IP,
    POD_A,
    POD_B,
    POD_C,
    REMOTE_POD,
    TC_ACT_OK,
    TC_ACT_REDIRECT,
    TC_ACT_SHOT,
    VIP,
    make_fixtures,
)
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror

from calico_ebpf.dataplane import NAT_FLG_SRC_RANGES, CtResult, StateFlags, Verdict
from calico_ebpf.maps.entries import (
    Counter,
    CounterHook,
    CtFlags,
    CtKey,
    CtLegFlags,
    CtType,
    NatAffinityKey,
    NatAffinityValue,
    NatBackendValue,
    NatFlags,
    NatFrontendValue,
    Proto,
)

devs, dp_env, env = make_fixtures()

BACKENDS = [(POD_B, 8080), (POD_C, 8080)]


def test_new_flow_is_dnated_with_nat_fwd_and_nat_rev(env):
    env.service(7, VIP, 80, "tcp", BACKENDS)
    res = env.run("from", P.tcp(POD_A, 40000, VIP, 80), env.A)
    out = P.check_checksums(res.data)
    assert res.retval == TC_ACT_REDIRECT
    backend = (out[IP].dst, out[TCP].dport)
    assert backend in BACKENDS and out[IP].src == POD_A and out[TCP].sport == 40000
    st = res.state
    assert st.flags & StateFlags.DNAT and st.nat_svc_id == 7 and st.ct_rc == CtResult.NEW
    assert (str(st.ip_dst), st.dport) == (VIP, 80) and (str(st.post_nat_ip_dst), st.post_nat_dport) == backend
    assert st.fwd_ifindex == {POD_B: env.B, POD_C: env.C}[backend[0]]

    fwd = env.ct(POD_A, 40000, VIP, 80)
    rev_key = CtKey.for_flow(POD_A, 40000, backend[0], 8080, Proto.TCP)
    assert fwd.type == CtType.NAT_FWD and fwd.nat_rev_key == rev_key
    rev = env.ct(POD_A, 40000, *backend)
    assert rev.type == CtType.NAT_REV
    assert (str(rev.orig_ip), rev.orig_port, str(rev.orig_sip)) == (VIP, 80, POD_A)
    c = env.dp.counters(env.A, CounterHook.TC_INGRESS)
    assert c[Counter.NAT_NEW] == 1 and c[Counter.CT_NEW] == 1 and c[Counter.TOTAL] == 1


def _open(env, sport=40000, svc=BACKENDS):
    env.service(7, VIP, 80, "tcp", svc)
    res = env.run("from", P.tcp(POD_A, sport, VIP, 80), env.A)
    out = P.parse(res.data)
    return out[IP].dst, out[TCP].dport


def test_established_packets_follow_nat_fwd_to_same_backend(env):
    backend = _open(env)
    for flags in ("A", "PA", "A"):
        res = env.run("from", P.tcp(POD_A, 40000, VIP, 80, flags, payload=b"x" * 100), env.A)
        out = P.check_checksums(res.data)
        assert (out[IP].dst, out[TCP].dport) == backend
        assert res.state.ct_rc == CtResult.ESTABLISHED_DNAT
    rev = env.ct(POD_A, 40000, *backend)
    leg = rev.a_to_b if not rev.flags & CtFlags.BA else rev.b_to_a
    assert leg.packets == 4


def test_reply_is_reverse_translated_to_the_service(env):
    be_ip, be_port = _open(env)
    be_if = {POD_B: env.B, POD_C: env.C}[be_ip]
    res = env.run("from", P.tcp(be_ip, be_port, POD_A, 40000, "SA", src_mac=P.POD_MAC), be_if)
    out = P.check_checksums(res.data)
    assert (out[IP].src, out[TCP].sport, out[IP].dst, out[TCP].dport) == (VIP, 80, POD_A, 40000)
    assert res.state.ct_rc == CtResult.ESTABLISHED_SNAT and res.state.flags & StateFlags.REV_NAT
    assert res.retval == TC_ACT_REDIRECT and res.state.fwd_ifindex == env.A


def test_flow_followed_across_hops_until_bypass(env):
    env.service(7, VIP, 80, "tcp", [(POD_B, 8080)])
    syn = env.run("from", P.tcp(POD_A, 40001, VIP, 80), env.A)
    # The redirected SYN reaches B's veth egress: B's ingress policy (none) approves its leg.
    at_b = env.run("to", syn.data, env.B, mark=syn.mark)
    assert at_b.retval == TC_ACT_OK and at_b.state.flags & StateFlags.APPROVE_LEG
    rev = env.ct(POD_A, 40001, POD_B, 8080)
    assert rev.a_to_b.flags & CtLegFlags.APPROVED and rev.b_to_a.flags & CtLegFlags.APPROVED
    synack = env.run("from", P.tcp(POD_B, 8080, POD_A, 40001, "SA"), env.B)
    assert synack.mark == 0x03000000  # both legs approved: the egress side may skip
    at_a = env.run("to", synack.data, env.A, mark=synack.mark)
    assert at_a.retval == TC_ACT_OK and at_a.state.reason == Counter.ACCEPTED_BYPASS and at_a.mark == 0
    # Without the mark the to-program still recognises the translated reply.
    at_a2 = env.run("to", synack.data, env.A)
    assert at_a2.retval == TC_ACT_OK and at_a2.state.ct_rc == CtResult.ESTABLISHED


def test_udp_dnat_checksums_including_zero_checksum(env):
    env.service(9, "10.96.0.11", 53, "udp", [(POD_B, 5353)])
    res = env.run("from", P.udp(POD_A, 5000, "10.96.0.11", 53, payload=b"q" * 33), env.A)
    out = P.check_checksums(res.data)
    assert (out[IP].dst, out[UDP].dport) == (POD_B, 5353) and out[UDP].chksum != 0
    res = env.run("from", P.udp_nocsum(POD_A, 5001, "10.96.0.11", 53), env.A)
    out = P.check_checksums(res.data)
    assert (out[IP].dst, out[UDP].dport) == (POD_B, 5353) and out[UDP].chksum == 0
    reply = env.run("from", P.udp(POD_B, 5353, POD_A, 5000), env.B)
    out = P.check_checksums(reply.data)
    assert (out[IP].src, out[UDP].sport) == ("10.96.0.11", 53)


def test_service_without_backend_answers_icmp_port_unreachable(env):
    env.service(3, VIP, 80, "tcp", [])
    frame = P.tcp(POD_A, 40000, VIP, 80)
    res = env.run("from", frame, env.A)
    assert res.retval == TC_ACT_REDIRECT and res.state.verdict == Verdict.REJECT
    assert res.state.fwd_ifindex == env.A  # back out of the interface it came from
    out = P.check_checksums(res.data)
    assert (out.src, out.dst) == (P.HOST_MAC, P.POD_MAC)
    assert (out[IP].src, out[IP].dst, out[IP].proto) == (VIP, POD_A, 1)
    assert (out[ICMP].type, out[ICMP].code) == (3, 3)
    assert bytes(out[IPerror])[:20] == bytes(P.parse(frame)[IP])[:20]
    assert (out[TCPerror].sport, out[TCPerror].dport) == (40000, 80)
    assert len(res.data) == 14 + 20 + 8 + 28
    assert env.ct(POD_A, 40000, VIP, 80) is None
    assert env.dp.counters(env.A, CounterHook.TC_INGRESS)[Counter.NAT_NO_BACKEND] == 1


def test_source_ranges_drop_outside_and_allow_inside(env):
    lb = "192.0.2.50"
    env.dp.set_backends(4, [(POD_B, 8080)])
    env.dp.set_frontend(lb, 80, "tcp", NatFrontendValue(id=4, count=1, flags=NAT_FLG_SRC_RANGES))
    env.dp.set_source_range_frontend(lb, 80, "tcp", "198.51.100.0/24", NatFrontendValue(id=4, count=1))
    env.dp.set_source_range_frontend(lb, 80, "tcp", "0.0.0.0/0", NatFrontendValue.drop(4))
    bad = env.run("from", P.tcp(EXTERNAL, 50000, lb, 80), env.HEP)
    assert bad.retval == TC_ACT_SHOT and bad.state.reason == Counter.DROP_SRC_RANGE
    good = env.run("from", P.tcp("198.51.100.9", 50000, lb, 80), env.HEP)
    out = P.check_checksums(good.data)
    assert good.retval == TC_ACT_REDIRECT and (out[IP].dst, out[TCP].dport) == (POD_B, 8080)
    assert out[IP].src == "198.51.100.9"  # client IP preserved


def _backend_of(env, sport, client=POD_A, ifindex=None, vip=VIP):
    res = env.run("from", P.tcp(client, sport, vip, 80), ifindex or env.A)
    out = P.parse(res.data)
    return out[IP].dst, res.state


def test_affinity_sticks_and_expires(env):
    env.service(5, VIP, 80, "tcp", BACKENDS, affinity=100)
    first, st = _backend_of(env, 30000)
    assert not st.flags & StateFlags.AFFINITY_HIT
    chosen = {_backend_of(env, 30001 + i)[0] for i in range(20)}
    assert chosen == {first}
    now = st.ts
    aff = env.dp.maps["cebpf_nat_aff"]
    key = NatAffinityKey(addr=VIP, port=80, proto=Proto.TCP, client_ip=POD_A).to_bytes()
    assert NatAffinityValue.from_bytes(aff.lookup(key)).backend.addr == ipaddress.IPv4Address(first)
    # A recent entry for another backend is honoured ...
    fake = NatBackendValue(addr="10.65.0.99", port=9999)
    aff.update(key, NatAffinityValue(backend=fake, ts=now).to_bytes())
    ip, st = _backend_of(env, 31000)
    assert ip == "10.65.0.99" and st.flags & StateFlags.AFFINITY_HIT
    # ... an expired one (older than 100 s) is replaced by a fresh choice.
    aff.update(key, NatAffinityValue(backend=fake, ts=now - 101 * 10**9).to_bytes())
    ip, st = _backend_of(env, 31001)
    assert ip in {POD_B, POD_C} and not st.flags & StateFlags.AFFINITY_HIT
    renewed = NatAffinityValue.from_bytes(aff.lookup(key))
    assert str(renewed.backend.addr) == ip and renewed.ts >= now


def test_other_clients_are_not_sticky_to_each_other(env):
    env.service(5, VIP, 80, "tcp", BACKENDS, affinity=100)
    seen = {_backend_of(env, 1000 + i, client=f"10.65.1.{i + 10}", ifindex=env.HEP)[0] for i in range(30)}
    assert seen == {POD_B, POD_C}


def test_internal_local_uses_only_local_backends(env):
    backends = [(POD_B, 8080), (REMOTE_POD, 8080), ("10.65.1.6", 8080)]
    env.service(6, VIP, 80, "tcp", backends, local=1, flags=NatFlags.INTERNAL_LOCAL)
    assert {_backend_of(env, 2000 + i)[0] for i in range(30)} == {POD_B}


def test_external_local_applies_to_external_clients_only(env):
    backends = [(POD_B, 8080), (REMOTE_POD, 8080), ("10.65.1.6", 8080)]
    env.service(6, VIP, 80, "tcp", backends, local=1, flags=NatFlags.EXTERNAL_LOCAL)
    ext = {_backend_of(env, 2000 + i, client=EXTERNAL, ifindex=env.HEP)[0] for i in range(30)}
    assert ext == {POD_B}
    internal = {_backend_of(env, 3000 + i)[0] for i in range(40)}
    assert len(internal) > 1
    # External traffic to a node without local backends is rejected.
    env.service(8, "192.0.2.60", 80, "tcp", [(REMOTE_POD, 8080)], local=0, flags=NatFlags.EXTERNAL_LOCAL)
    res = env.run("from", P.tcp(EXTERNAL, 4000, "192.0.2.60", 80), env.HEP)
    assert res.state.verdict == Verdict.REJECT and res.state.fwd_ifindex == env.HEP


def test_hairpin_is_masqueraded_as_the_service(env):
    env.service(2, VIP, 80, "tcp", [(POD_A, 8080)])
    res = env.run("from", P.tcp(POD_A, 45000, VIP, 80), env.A)
    out = P.check_checksums(res.data)
    assert (out[IP].src, out[TCP].sport, out[IP].dst, out[TCP].dport) == (VIP, 45000, POD_A, 8080)
    assert res.state.flags & StateFlags.HAIRPIN and res.state.fwd_ifindex == env.A
    rev = env.ct(VIP, 45000, POD_A, 8080)
    assert rev.type == CtType.NAT_REV and rev.flags & CtFlags.SVC_SELF and str(rev.orig_sip) == POD_A
    # The pod answers the masquerade address; the reply goes back as the service.
    reply = env.run("from", P.tcp(POD_A, 8080, VIP, 45000, "SA"), env.A)
    out = P.check_checksums(reply.data)
    assert (out[IP].src, out[TCP].sport, out[IP].dst, out[TCP].dport) == (VIP, 80, POD_A, 45000)
    # Later client packets keep both translations.
    again = env.run("from", P.tcp(POD_A, 45000, VIP, 80, "A"), env.A)
    out = P.check_checksums(again.data)
    assert (out[IP].src, out[IP].dst, out[TCP].dport) == (VIP, POD_A, 8080)


def test_nodeport_wildcard_matches_host_ips_only(env):
    """The wildcard frontend (NodePort on any host IP) serves traffic that starts on this node
    (a pod here); an external client reaches a NodePort only on a host IP that has its own
    frontend (Calico's lookup, reference §3.2: nodePortAddresses decides which)."""
    env.dp.set_backends(11, [(POD_B, 8080)])
    env.dp.set_frontend("255.255.255.255", 30080, "tcp", NatFrontendValue(id=11, count=1))
    res = env.run("from", P.tcp(POD_A, 5555, HOST_IP, 30080), env.A)
    out = P.check_checksums(res.data)
    assert (out[IP].dst, out[TCP].dport, out[IP].src) == (POD_B, 8080, POD_A)
    res = env.run("from", P.tcp(POD_A, 5556, "10.0.0.99", 30080), env.A)
    assert not res.state.flags & StateFlags.DNAT and P.parse(res.data)[IP].dst == "10.0.0.99"
    res = env.run("from", P.tcp(EXTERNAL, 5557, HOST_IP, 30080), env.HEP)
    assert not res.state.flags & StateFlags.DNAT and P.parse(res.data)[IP].dst == HOST_IP
    env.dp.set_frontend(HOST_IP, 30080, "tcp", NatFrontendValue(id=11, count=1))
    res = env.run("from", P.tcp(EXTERNAL, 5558, HOST_IP, 30080), env.HEP)
    out = P.check_checksums(res.data)
    assert (out[IP].dst, out[TCP].dport, out[IP].src) == (POD_B, 8080, EXTERNAL)


def test_nat_exclude_leaves_packet_alone(env):
    env.service(12, VIP, 80, "tcp", BACKENDS, flags=NatFlags.NAT_EXCLUDE)
    res = env.run("from", P.tcp(POD_A, 40000, VIP, 80), env.A)
    assert not res.state.flags & StateFlags.DNAT and P.parse(res.data)[IP].dst == VIP
