"""Scapy packet builders and checkers for the datapath tests.

Frames are full Ethernet frames (BPF_PROG_TEST_RUN for tc needs L2).
``check_checksums`` re-parses a frame and compares every IPv4/TCP/UDP/ICMP
checksum (including those of an ICMP error's quoted header where complete)
with what scapy recomputes.
"""

from __future__ import annotations

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
from scapy.layers.l2 import Ether

POD_MAC = "02:00:00:00:00:01"
HOST_MAC = "ee:ee:ee:ee:ee:ee"


def eth(src_mac: str = POD_MAC, dst_mac: str = HOST_MAC) -> Ether:
    return Ether(src=src_mac, dst=dst_mac)


def tcp(src: str, sport: int, dst: str, dport: int, flags: str = "S", payload: bytes = b"", **kw) -> bytes:
    return bytes(eth(**kw) / IP(src=src, dst=dst, ttl=64) / TCP(sport=sport, dport=dport, flags=flags, seq=1000) / payload)


def udp(src: str, sport: int, dst: str, dport: int, payload: bytes = b"hello", **kw) -> bytes:
    return bytes(eth(**kw) / IP(src=src, dst=dst, ttl=64) / UDP(sport=sport, dport=dport) / payload)


def udp_nocsum(src: str, sport: int, dst: str, dport: int, payload: bytes = b"hello") -> bytes:
    """UDP with checksum 0 ("none"), which a rewrite must leave at 0."""
    return bytes(eth() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport, chksum=0) / payload)


def icmp_echo(src: str, dst: str, ident: int = 0x1234, reply: bool = False, **kw) -> bytes:
    return bytes(eth(**kw) / IP(src=src, dst=dst) / ICMP(type=0 if reply else 8, id=ident, seq=1) / b"ping")


def icmp_error(src: str, dst: str, inner: bytes, type_: int = 3, code: int = 4, mtu: int = 1400, **kw) -> bytes:
    """An ICMP error from src to dst quoting the IP packet of the frame ``inner``."""
    quoted = bytes(Ether(inner)[IP])[:28]
    icmp = ICMP(type=type_, code=code, nexthopmtu=mtu) if (type_, code) == (3, 4) else ICMP(type=type_, code=code)
    return bytes(eth(**kw) / IP(src=src, dst=dst) / icmp / quoted)


def parse(frame: bytes) -> Ether:
    return Ether(frame)


def check_checksums(frame: bytes) -> Ether:
    """Assert every checksum in the frame is right; returns the parsed frame."""
    pkt = Ether(frame)
    ip = pkt[IP]
    assert _inet_csum(bytes(ip)[: ip.ihl * 4]) == 0, "IPv4 header checksum is wrong"
    if TCP in pkt and not isinstance(pkt[TCP], TCPerror):
        assert pkt[TCP].chksum == _l4_csum(ip), "TCP checksum is wrong"
    if UDP in pkt and not isinstance(pkt[UDP], UDPerror) and pkt[UDP].chksum != 0:
        assert pkt[UDP].chksum == _l4_csum(ip), "UDP checksum is wrong"
    if ICMP in pkt:
        icmp = pkt[ICMP]
        raw = bytes(icmp)
        assert _inet_csum(raw) == 0, "ICMP checksum is wrong"
        if IPerror in pkt:
            inner = pkt[IPerror]
            assert _inet_csum(bytes(inner)[:20]) == 0, "quoted IPv4 header checksum is wrong"
    return pkt


def _inet_csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def _l4_csum(ip) -> int:
    """Checksum the L4 segment of ``ip`` should carry (pseudo header included)."""
    seg = bytearray(bytes(ip.payload)[: ip.len - ip.ihl * 4])
    off = 16 if ip.proto == 6 else 6
    seg[off:off + 2] = b"\0\0"
    pseudo = (bytes(map(int, ip.src.split("."))) + bytes(map(int, ip.dst.split("."))) + bytes([0, ip.proto])
              + len(seg).to_bytes(2, "big"))
    c = _inet_csum(pseudo + bytes(seg))
    if ip.proto == 17 and c == 0:
        c = 0xFFFF
    return c
