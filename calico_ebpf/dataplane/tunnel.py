"""NodePort forwarding over VXLAN: the node's tunnel settings and what the datapath did with a packet.

A NodePort / LoadBalancer / externalIP flow that reaches this node but whose
backend lives on another node is sent there in VXLAN with the client's
address untouched; the backend's node does the NAT and answers back
through us (``Tunnel`` mode) or straight to the client (``DSR``), as
Calico's ``bpfExternalServiceMode`` says. The datapath reads its settings
from the one-entry map ``cebpf_tunnel`` (``struct tunnel_config`` in
``bpf/include/tunnel.h``); all zero means off.

>>> set_tunnel(dp, host_ip="10.0.0.1", underlay_mtu=1500, mode="DSR")
>>> tunnel_config(dp)
TunnelConfig(host_ip=IPv4Address('10.0.0.1'), vni=13242816, port=4789, mtu=1450, dsr=True)
>>> res = dp.run("from", frame, hep_ifindex)
>>> tunnel_trace(dp, res.state).encap, tunnel_trace(dp, res.state).tun_ip
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass

from calico_ebpf.dataplane.state import SIZE as STATE_SIZE

#: Calico's NodePort VNI (``CALI_VXLAN_VNI``); the overlay's is 4096, and the
#: two must differ so the kernel's vxlan device never takes these packets.
NODEPORT_VNI = 0xCA11C0
VXLAN_PORT = 4789
#: Outer IPv4 + UDP + VXLAN + inner Ethernet.
OVERHEAD = 50

_FMT = "<4sIHHI"  # struct tunnel_config: host_ip (network order), vni, port, mtu, flags
_STATE_TUN_IP_OFF = 100  # struct dp_state.tun_ip
_STATE_FLAGS_OFF = 52
_STATE_TOKEN_OFF = 96


class TunnelFlags(enum.IntFlag):
    DSR = 0x1


class TunnelStateFlags(enum.IntFlag):
    """The ``dp_state.flags`` bits of NodePort forwarding (bpf/include/dp_state.h)."""

    FROM_TUNNEL = 0x8000  # arrived in VXLAN from node tun_ip and was decapsulated
    NP_FWD = 0x10000      # new flow forwarded to the backend's node tun_ip
    ENCAP = 0x20000       # left encapsulated to node tun_ip
    DSR = 0x40000         # reply sent straight to the client
    TOO_BIG = 0x80000     # answered with ICMP fragmentation needed


def external_service_mode(mode: str) -> bool:
    """FelixConfiguration ``bpfExternalServiceMode`` ("Tunnel" or "DSR") -> DSR on?"""
    value = mode.strip().lower()
    if value not in ("tunnel", "dsr"):
        raise ValueError(f"bpfExternalServiceMode: {mode!r} is not Tunnel or DSR")
    return value == "dsr"


@dataclass(frozen=True)
class TunnelConfig:
    """One node's NodePort tunnel settings (``struct tunnel_config``)."""

    host_ip: ipaddress.IPv4Address
    vni: int = NODEPORT_VNI
    port: int = VXLAN_PORT
    mtu: int = 1500 - OVERHEAD
    dsr: bool = False

    def to_bytes(self) -> bytes:
        flags = TunnelFlags.DSR if self.dsr else TunnelFlags(0)
        return struct.pack(_FMT, ipaddress.IPv4Address(self.host_ip).packed, self.vni, self.port, self.mtu, flags)

    @classmethod
    def from_bytes(cls, data: bytes) -> TunnelConfig:
        ip, vni, port, mtu, flags = struct.unpack_from(_FMT, data)
        return cls(ipaddress.IPv4Address(ip), vni, port, mtu, bool(flags & TunnelFlags.DSR))


def set_tunnel(dp, host_ip, *, underlay_mtu: int = 1500, mode: str = "Tunnel", vni: int = NODEPORT_VNI,
               port: int = VXLAN_PORT) -> TunnelConfig:
    """Turn NodePort forwarding on for ``dp`` (a Dataplane): this node's underlay address, MTU and return mode."""
    if not 0 < vni < 1 << 24:
        raise ValueError(f"VXLAN VNI {vni} is not a 24-bit value")
    if underlay_mtu <= OVERHEAD + 68:
        raise ValueError(f"underlay MTU {underlay_mtu} leaves no room for VXLAN")
    cfg = TunnelConfig(ipaddress.IPv4Address(host_ip), vni, port, underlay_mtu - OVERHEAD,
                       external_service_mode(mode))
    dp.maps["cebpf_tunnel"].update(struct.pack("<I", 0), cfg.to_bytes())
    return cfg


def clear_tunnel(dp) -> None:
    """Turn NodePort forwarding off: remote backends are then reached through the host stack."""
    dp.maps["cebpf_tunnel"].update(struct.pack("<I", 0), bytes(struct.calcsize(_FMT)))


def tunnel_config(dp) -> TunnelConfig | None:
    raw = dp.maps["cebpf_tunnel"].lookup(struct.pack("<I", 0))
    cfg = TunnelConfig.from_bytes(raw)
    return None if int(cfg.host_ip) == 0 else cfg


@dataclass(frozen=True)
class TunnelTrace:
    """What NodePort forwarding did with one packet."""

    flags: TunnelStateFlags
    tun_ip: ipaddress.IPv4Address | None  # the other node, if any

    @property
    def from_tunnel(self) -> bool:
        return bool(self.flags & TunnelStateFlags.FROM_TUNNEL)

    @property
    def encap(self) -> bool:
        return bool(self.flags & TunnelStateFlags.ENCAP)

    @property
    def dsr(self) -> bool:
        return bool(self.flags & TunnelStateFlags.DSR)

    @property
    def too_big(self) -> bool:
        return bool(self.flags & TunnelStateFlags.TOO_BIG)


def tunnel_trace(dp, state) -> TunnelTrace:
    """The tunnel part of the state record of ``state`` (a DpState from ``dp.run``), read from ``cebpf_state``.

    DpState predates tunnels and does not decode ``tun_ip``; the record is
    found again by its trace token on whichever CPU ran the packet."""
    m = dp.maps["cebpf_state"]
    raw = m.lookup(struct.pack("<I", 0))
    stride = (STATE_SIZE + 7) & ~7
    for cpu in range(m.nr_cpus):
        rec = raw[cpu * stride:cpu * stride + STATE_SIZE]
        token, = struct.unpack_from("<I", rec, _STATE_TOKEN_OFF)
        if token == state.trace_token and struct.unpack_from("<Q", rec, 0)[0] == state.ts:
            flags, = struct.unpack_from("<I", rec, _STATE_FLAGS_OFF)
            tun = rec[_STATE_TUN_IP_OFF:_STATE_TUN_IP_OFF + 4]
            mask = 0
            for f in TunnelStateFlags:
                mask |= f
            return TunnelTrace(TunnelStateFlags(flags & mask),
                               ipaddress.IPv4Address(tun) if any(tun) else None)
    raise LookupError(f"no state record with trace token {state.trace_token}")
