"""The trace contract's packet syntax, entry-point rule and first frames (no kernel)."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from calico_ebpf.dataplane.trace_packet import (
    Entry,
    PacketSyntaxError,
    TracePacket,
    infer_entry,
    parse_packet,
    split_packets,
)


@pytest.mark.parametrize("text, want", [
    ("tcp 10.0.0.2:40000 -> 172.30.0.41:80", ("tcp", "10.0.0.2", 40000, "172.30.0.41", 80)),
    ("UDP 10.0.0.2:53->10.96.0.10:53", ("udp", "10.0.0.2", 53, "10.96.0.10", 53)),
    ("  tcp   203.0.113.2:1   ->  1.2.3.4:3001 ", ("tcp", "203.0.113.2", 1, "1.2.3.4", 3001)),
    ("icmp 10.0.0.2 -> 10.0.0.3", ("icmp", "10.0.0.2", 0x1234, "10.0.0.3", 0)),
    ("icmp 10.0.0.2:7 -> 10.0.0.3", ("icmp", "10.0.0.2", 7, "10.0.0.3", 0)),
    ("sctp 10.0.0.2:5000 -> 172.30.0.41:80", ("sctp", "10.0.0.2", 5000, "172.30.0.41", 80)),
    ("tcp [fd00:10::2]:40000 -> [fd00:172:30::41]:80", ("tcp", "fd00:10::2", 40000, "fd00:172:30::41", 80)),
])
def test_parses(text, want):
    p = parse_packet(text)
    assert (p.proto, p.src, p.sport, p.dst, p.dport) == want


@pytest.mark.parametrize("text, why", [
    ("http 10.0.0.2:1 -> 10.0.0.3:80", "unknown protocol"),
    ("tcp 10.0.0.2:1 10.0.0.3:80", "no '->'"),
    ("tcp 10.0.0.2 -> 10.0.0.3:80", "has no port"),
    ("tcp 10.0.0.2:1 -> 10.0.0.3:0", "not 1..65535"),
    ("tcp 10.0.0.2:1 -> 10.0.0.3:70000", "not 1..65535"),
    ("tcp 10.0.0.256:1 -> 10.0.0.3:80", "not an IP address"),
    ("tcp fd00::1:80 -> [fd00::2]:80", "brackets"),
    ("tcp [10.0.0.2]:1 -> 10.0.0.3:80", "brackets are for IPv6"),
    ("tcp 10.0.0.2:1 -> [fd00::2]:80", "different IP families"),
    ("icmp 10.0.0.2 -> 10.0.0.3:5", "no destination port"),
    ("", "unknown protocol"),
])
def test_refuses_with_the_reason(text, why):
    with pytest.raises(PacketSyntaxError, match=why) as exc:
        parse_packet(text)
    assert "PROTO SRC:SPORT -> DST:DPORT" in str(exc.value)


def test_ipv6_and_sctp_parse_but_are_unsupported():
    assert "IPv6" in parse_packet("udp [fd00::1]:53 -> [fd00::2]:53").unsupported
    assert "SCTP" in parse_packet("sctp 10.0.0.2:1 -> 10.0.0.3:80").unsupported
    assert parse_packet("udp 10.0.0.2:1 -> 10.0.0.3:80").unsupported is None


def test_round_trips_through_str():
    for text in ("tcp 10.0.0.2:40000 -> 172.30.0.41:80", "udp [fd00::1]:53 -> [fd00::2]:53"):
        assert str(parse_packet(text)) == text


def test_split_packets_accepts_quoted_or_separate_words():
    assert split_packets(["tcp 1.2.3.4:1 -> 5.6.7.8:80", "udp", "1.1.1.1:2", "->", "2.2.2.2:3"]) == [
        "tcp 1.2.3.4:1 -> 5.6.7.8:80", "udp 1.1.1.1:2 -> 2.2.2.2:3"]


@pytest.mark.parametrize("src, local_pod, host_ip, want", [
    ("10.65.0.2", True, False, Entry.WORKLOAD),  # a pod on this node: its veth
    ("192.168.0.2", False, True, Entry.HOST),  # one of this node's IPs
    ("127.0.0.1", False, False, Entry.HOST),  # loopback is the host too
    ("127.1.2.3", False, False, Entry.HOST),
    ("203.0.113.2", False, False, Entry.DATA),  # anything else arrives on the data interface
    ("10.65.1.5", False, False, Entry.DATA),  # a pod on another node
    ("192.168.0.101", False, False, Entry.DATA),  # another node
])
def test_entry_point(src, local_pod, host_ip, want):
    assert infer_entry(src, local_pod=local_pod, host_ip=host_ip) is want


def _csums_ok(frame: bytes):
    pkt = Ether(frame)
    again = Ether(bytes(pkt.__class__(bytes(pkt))))
    for layer in (IP, TCP, UDP, ICMP):
        if layer in pkt:
            fresh = again[layer].copy()
            del fresh.chksum
            assert pkt[layer].chksum == layer(bytes(fresh)).chksum, f"{layer.__name__} checksum"
    return pkt


def test_frames_are_the_first_packet_with_right_checksums():
    syn = _csums_ok(TracePacket("tcp", "10.0.0.2", 40000, "172.30.0.41", 80).frame())
    assert (syn[IP].src, syn[IP].dst, syn[TCP].sport, syn[TCP].dport, str(syn[TCP].flags)) == (
        "10.0.0.2", "172.30.0.41", 40000, 80, "S")
    dgram = _csums_ok(TracePacket("udp", "10.0.0.2", 5353, "10.96.0.10", 53).frame())
    assert (dgram[UDP].sport, dgram[UDP].dport) == (5353, 53) and dgram[UDP].chksum != 0
    echo = _csums_ok(TracePacket("icmp", "10.0.0.2", 7, "10.0.0.3", 0).frame())
    assert (echo[ICMP].type, echo[ICMP].id) == (8, 7)
    assert syn[Ether].dst == "ee:ee:ee:ee:ee:ee"


def test_module_examples():
    import doctest

    from calico_ebpf.dataplane import trace_packet

    result = doctest.testmod(trace_packet)
    assert result.failed == 0 and result.attempted > 0
