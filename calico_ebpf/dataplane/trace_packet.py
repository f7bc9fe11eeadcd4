"""The packets ``trace`` takes: parse ``PROTO SRC:SPORT -> DST:DPORT``, infer where it enters, build its frame.

Pure Python, no kernel: the parser and the entry-point rule are what the
``calico-ebpf trace`` contract (DESIGN.md §5) fixes, so they live apart from
the code that runs the packet through the real programs.

>>> p = parse_packet("tcp 10.0.0.2:40000 -> 172.30.0.41:80")
>>> p.proto, p.src, p.sport, p.dst, p.dport, str(p)
('tcp', '10.0.0.2', 40000, '172.30.0.41', 80, 'tcp 10.0.0.2:40000 -> 172.30.0.41:80')
>>> parse_packet("udp [fd00::1]:53 -> [fd00::2]:53").unsupported
'IPv6 is not supported by the dataplane yet'
>>> infer_entry("192.168.0.2", local_pod=False, host_ip=True)
<Entry.HOST: 'host'>
"""

from __future__ import annotations

import enum
import ipaddress
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from calico_ebpf.errors import CalicoEBPFError

PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "sctp": 132}

#: What the frames look like on the wire: a pod's MAC towards Calico's
#: host-side MAC (every cali veth has ee:ee:ee:ee:ee:ee).
SRC_MAC = bytes.fromhex("020000000001")
DST_MAC = bytes.fromhex("eeeeeeeeeeee")

_ENDPOINT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.%]+)\]|(?P<v4>[0-9.]+)|(?P<bare6>[0-9A-Fa-f:]*:[0-9A-Fa-f:]*))"
                       r"(?::(?P<port>\d+))?$")


class PacketSyntaxError(CalicoEBPFError, ValueError):
    """A PACKET argument that does not read as ``PROTO SRC:SPORT -> DST:DPORT`` (a usage error)."""

    def __init__(self, text: str, why: str):
        self.text = text
        super().__init__(f"bad packet {text!r}: {why} (expected 'PROTO SRC:SPORT -> DST:DPORT', "
                         f"PROTO one of {'|'.join(PROTOCOLS)})")


class Entry(str, enum.Enum):
    """Where a traced packet enters this node."""

    WORKLOAD = "workload"  # from a local pod's veth
    HOST = "host"  # sent by the host itself (one of the node's IPs, or loopback)
    DATA = "data"  # arrives on the data interface from elsewhere


@dataclass(frozen=True)
class TracePacket:
    """One packet to trace. ``sport``/``dport`` are the ICMP echo identifier / 0 for ``icmp``."""

    proto: str
    src: str
    sport: int
    dst: str
    dport: int

    @property
    def family(self) -> int:
        return 6 if ":" in self.src or ":" in self.dst else 4

    @property
    def proto_number(self) -> int:
        return PROTOCOLS[self.proto]

    @property
    def unsupported(self) -> str | None:
        """Why the dataplane cannot take this packet (IPv6, SCTP), or None."""
        if self.family == 6:
            return "IPv6 is not supported by the dataplane yet"
        if self.proto == "sctp":
            return "SCTP is not supported by the dataplane (as in Calico's eBPF mode)"
        return None

    def __str__(self) -> str:
        return f"{self.proto} {_fmt(self.src, self.sport)} -> {_fmt(self.dst, self.dport)}"

    def frame(self, *, src_mac: bytes = SRC_MAC, dst_mac: bytes = DST_MAC) -> bytes:
        """The first packet of the flow as an Ethernet frame: TCP SYN, UDP datagram or ICMP echo request."""
        if self.family != 4:
            raise CalicoEBPFError(f"{self}: only IPv4 frames can be built")
        src = ipaddress.IPv4Address(self.src).packed
        dst = ipaddress.IPv4Address(self.dst).packed
        if self.proto == "tcp":
            # SYN, data offset 5 words, window 64240; checksum filled in below.
            l4 = struct.pack("!HHIIBBHHH", self.sport, self.dport, 1000, 0, 5 << 4, 0x02, 64240, 0, 0)
            l4 = _with_l4_csum(l4, 16, src, dst, 6)
        elif self.proto == "udp":
            payload = b"calico-ebpf trace"
            l4 = struct.pack("!HHHH", self.sport, self.dport, 8 + len(payload), 0) + payload
            l4 = _with_l4_csum(l4, 6, src, dst, 17, zero_as=0xFFFF)
        elif self.proto == "icmp":
            body = struct.pack("!BBHHH", 8, 0, 0, self.sport, 1) + b"calico-ebpf trace"
            l4 = body[:2] + struct.pack("!H", _csum(body)) + body[4:]
        else:
            raise CalicoEBPFError(f"{self}: {self.unsupported or 'no frame for this protocol'}")
        # IPv4 header: no options, DF, TTL 64.
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, self.proto_number, 0, src, dst)
        ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
        return dst_mac + src_mac + b"\x08\x00" + ip + l4


def _fmt(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _with_l4_csum(seg: bytes, off: int, src: bytes, dst: bytes, proto: int, zero_as: int = 0) -> bytes:
    c = _csum(src + dst + struct.pack("!BBH", 0, proto, len(seg)) + seg)
    if c == 0 and zero_as:
        c = zero_as  # UDP: 0 means "no checksum", so a computed 0 is sent as 0xffff
    return seg[:off] + struct.pack("!H", c) + seg[off + 2:]


def _endpoint(text: str, whole: str, side: str, proto: str) -> tuple[str, int]:
    m = _ENDPOINT.match(text)
    if not m:
        raise PacketSyntaxError(whole, f"{side} {text!r} is not ADDRESS:PORT (IPv6 in brackets)")
    if m.group("bare6"):
        # "fd00::1:80" is ambiguous: is 80 the port or the last group?
        raise PacketSyntaxError(whole, f"{side} {text!r}: write IPv6 addresses in brackets, [addr]:port")
    raw = m.group("v6") or m.group("v4")
    try:
        addr = ipaddress.ip_address(raw)
    except ValueError:
        raise PacketSyntaxError(whole, f"{side} address {raw!r} is not an IP address") from None
    if isinstance(addr, ipaddress.IPv4Address) and m.group("v6"):
        raise PacketSyntaxError(whole, f"{side} {text!r}: brackets are for IPv6 addresses")
    port_text = m.group("port")
    if port_text is None:
        if proto != "icmp":
            raise PacketSyntaxError(whole, f"{side} {text!r} has no port")
        port = 0
    else:
        port = int(port_text)
        if not 0 <= port <= 65535 or (port == 0 and proto in ("tcp", "udp", "sctp")):
            raise PacketSyntaxError(whole, f"{side} port {port} is not 1..65535")
    return str(addr), port


def parse_packet(text: str) -> TracePacket:
    """Parse ``PROTO SRC:SPORT -> DST:DPORT``; ICMP ports are optional (SRC's is the echo identifier).

    Raises :class:`PacketSyntaxError`. IPv6 and SCTP parse (the contract
    accepts them) and say why they cannot be traced in ``.unsupported``.
    """
    whole = " ".join(text.split())
    proto, _, rest = whole.partition(" ")
    proto = proto.lower()
    if proto not in PROTOCOLS:
        raise PacketSyntaxError(whole, f"unknown protocol {proto!r}")
    src_text, arrow, dst_text = rest.partition("->")
    if not arrow:
        raise PacketSyntaxError(whole, "no '->' between source and destination")
    src, sport = _endpoint(src_text.strip(), whole, "source", proto)
    dst, dport = _endpoint(dst_text.strip(), whole, "destination", proto)
    if (":" in src) != (":" in dst):
        raise PacketSyntaxError(whole, "source and destination are of different IP families")
    if proto == "icmp":
        if dport:
            raise PacketSyntaxError(whole, "ICMP has no destination port (the source port is the echo identifier)")
        sport = sport or 0x1234
    return TracePacket(proto, src, sport, dst, dport)


def split_packets(args: Iterable[str]) -> list[str]:
    """Group command-line words into packets: each packet starts at a protocol word.

    ``["tcp 1.2.3.4:1 -> 5.6.7.8:80"]`` and ``["tcp", "1.2.3.4:1", "->", "5.6.7.8:80"]``
    both give one packet, so quoting each packet is optional.
    """
    packets: list[list[str]] = []
    for arg in args:
        for word in arg.split():
            if word.lower() in PROTOCOLS or not packets:
                packets.append([word])
            else:
                packets[-1].append(word)
    return [" ".join(p) for p in packets]


def infer_entry(src: str, *, local_pod: bool, host_ip: bool) -> Entry:
    """Where a packet from ``src`` enters (DESIGN.md §5): a local pod's veth if ``src`` is a pod on
    this node; the host if it is one of this node's IPs or a loopback address; else the data interface."""
    if local_pod:
        return Entry.WORKLOAD
    if host_ip or ipaddress.ip_address(src).is_loopback:
        return Entry.HOST
    return Entry.DATA
