"""SEND_RESET in the datapath: the next TCP packet of a flow whose conntrack entries carry it
(its backend left the service) is answered with a RST in its place, and the entries go."""

from __future__ import annotations

import apply_cluster as C
import packets as P
import pytest
from apply_cluster import POD_IPS, TC_ACT_REDIRECT, WEB_VIP
from scapy.layers.inet import IP, TCP

from calico_ebpf.dataplane import CtResult, StateFlags, Verdict
from calico_ebpf.dataplane.conntrack import remove_stale_nat
from calico_ebpf.maps.entries import CtFlags, CtKey, CtValue, Proto

CLIENT = POD_IPS["a"]


@pytest.fixture(scope="module")
def netns():
    n = C.NodeNetns()
    yield n
    n.delete()


@pytest.fixture(scope="module")
def dp(netns, bpf_objects):
    state = C.state_of(C.cluster_docs())
    d = C.new_dataplane(state, netns)
    d.apply(state)
    yield d
    d.close()


def _frame(sport, flags, seq, ack=0, payload=b""):
    return bytes(P.eth() / IP(src=CLIENT, dst=WEB_VIP, ttl=64) /
                 TCP(sport=sport, dport=80, flags=flags, seq=seq, ack=ack, window=512) / payload)


def _ct(dp, a, ap, b, bp):
    raw = dp.maps["cebpf_ct"].lookup(CtKey.for_flow(a, ap, b, bp, Proto.TCP).to_bytes())
    return None if raw is None else CtValue.from_bytes(raw)


def _open_and_mark(netns, dp, sport):
    """A flow from pod a to web, then its backend marked stale (SEND_RESET): returns the backend."""
    res = netns.run(dp, _frame(sport, "S", 100), "a")
    assert res.state.flags & StateFlags.DNAT
    out = P.check_checksums(res.data)
    backend = (out[IP].dst, out[TCP].dport)
    res = remove_stale_nat(dp.maps["cebpf_ct"], {(*backend, "tcp")})
    assert res.reset >= 2
    assert _ct(dp, CLIENT, sport, WEB_VIP, 80).flags & CtFlags.SEND_RESET
    return backend


def _check_rst(res, netns, sport):
    assert res.retval == TC_ACT_REDIRECT and res.state.verdict == Verdict.REJECT
    assert res.state.flags & StateFlags.SENT_RESET and res.state.fwd_ifindex == netns.ifindex["a"]
    out = P.check_checksums(res.data)  # IP and TCP checksums
    assert len(res.data) == 14 + 40
    assert (out.src, out.dst) == (P.HOST_MAC, P.POD_MAC)
    assert (out[IP].src, out[IP].dst, out[IP].len, out[IP].ttl) == (WEB_VIP, CLIENT, 40, 64)
    assert (out[TCP].sport, out[TCP].dport, out[TCP].dataofs) == (80, sport, 5)
    return out[TCP]


def test_packet_with_ack_gets_rst_with_its_ack_as_sequence(netns, dp):
    backend = _open_and_mark(netns, dp, 41000)
    res = netns.run(dp, _frame(41000, "PA", 101, ack=5000, payload=b"x" * 10), "a")
    tcp = _check_rst(res, netns, 41000)
    assert (str(tcp.flags), tcp.seq, tcp.ack) == ("R", 5000, 0)
    assert _ct(dp, CLIENT, 41000, WEB_VIP, 80) is None and _ct(dp, CLIENT, 41000, *backend) is None


def test_packet_without_ack_gets_rst_ack_covering_the_segment(netns, dp):
    _open_and_mark(netns, dp, 41001)
    res = netns.run(dp, _frame(41001, "F", 2000, payload=b"y" * 5), "a")
    tcp = _check_rst(res, netns, 41001)
    assert (str(tcp.flags), tcp.seq, tcp.ack) == ("RA", 0, 2000 + 5 + 1)  # payload + FIN
    assert _ct(dp, CLIENT, 41001, WEB_VIP, 80) is None


def test_new_syn_on_a_reset_flow_opens_afresh_and_rst_is_not_answered(netns, dp):
    _open_and_mark(netns, dp, 41002)
    res = netns.run(dp, _frame(41002, "S", 7000), "a")
    assert res.state.flags & StateFlags.CT_RECYCLED and res.state.flags & StateFlags.DNAT
    assert res.state.flags & StateFlags.NEW_FLOW and not res.state.flags & StateFlags.SENT_RESET
    assert not _ct(dp, CLIENT, 41002, WEB_VIP, 80).flags & CtFlags.SEND_RESET
    res = netns.run(dp, _frame(41002, "A", 7001, ack=1), "a")
    assert res.state.ct_rc == CtResult.ESTABLISHED_DNAT

    # The client's own RST on a marked flow: entries go, nothing is sent back.
    _open_and_mark(netns, dp, 41003)
    res = netns.run(dp, _frame(41003, "R", 101), "a")
    assert res.state.verdict == Verdict.DROP and _ct(dp, CLIENT, 41003, WEB_VIP, 80) is None
