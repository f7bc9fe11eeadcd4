"""Conntrack entries read the way ``calico-bpf conntrack dump`` shows them:
who opened the flow, the service it went to (NAT), per-leg counters, how
long ago it was last seen and a TCP state derived from the leg flags.

    >>> from calico_ebpf.maps.conntrack import CtKey, CtValue, CtLeg
    >>> from calico_ebpf.maps.enums import CtLegFlags as F
    >>> k = CtKey.for_flow("10.0.0.2", 40000, "10.65.0.7", 8080, "tcp")
    >>> est = CtLeg(flags=F.SYN_SEEN | F.ACK_SEEN)
    >>> v = CtValue.nat_rev("10.96.0.10", 80, est, est)
    >>> str(CtRecord.of(k, v, now_ns=0))
    'TCP 10.0.0.2:40000 -> 10.96.0.10:80 -> 10.65.0.7:8080 ESTABLISHED age 0.0s'

The key orders its endpoints by address, not by who spoke first: the
opener is side A unless the entry carries the BA flag.
"""

from __future__ import annotations

import ipaddress
import time

import attrs
import numpy as np

from calico_ebpf.maps import columns
from calico_ebpf.maps.conntrack import CtKey, CtLeg, CtValue
from calico_ebpf.maps.enums import CtFlags, CtLegFlags, CtType, Proto

SYN, ACK, FIN, RST = CtLegFlags.SYN_SEEN, CtLegFlags.ACK_SEEN, CtLegFlags.FIN_SEEN, CtLegFlags.RST_SEEN


def monotonic_ns() -> int:
    """The clock of ``bpf_ktime_get_ns()`` (CLOCK_MONOTONIC)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def tcp_state(value: CtValue, opener: CtLeg, replier: CtLeg) -> str:
    """SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSED or RESET."""
    if value.rst_seen or RST in opener.flags or RST in replier.flags:
        return "RESET"
    fins = (FIN in opener.flags) + (FIN in replier.flags)
    if fins == 2:
        return "CLOSED"
    if fins == 1:
        return "FIN_WAIT"
    if SYN in replier.flags and (ACK in opener.flags or ACK in replier.flags):
        return "ESTABLISHED"
    if SYN in replier.flags:
        return "SYN_RECV"
    if SYN in opener.flags:
        return "SYN_SENT"
    # Picked up mid-flow (e.g. after a restart): traffic both ways counts as established.
    return "ESTABLISHED" if opener.packets and replier.packets else "UNKNOWN"


def _ep(addr: ipaddress.IPv4Address, port: int) -> str:
    return f"{addr}:{port}"


@attrs.frozen
class CtRecord:
    """One flow. ``service`` is the pre-DNAT destination of NAT flows."""

    key: CtKey
    value: CtValue
    proto: Proto
    src: ipaddress.IPv4Address
    sport: int
    dst: ipaddress.IPv4Address
    dport: int
    service: tuple[ipaddress.IPv4Address, int] | None
    tx: CtLeg  # opener -> responder leg
    rx: CtLeg
    age_s: float
    state: str | None

    @classmethod
    def of(cls, key: CtKey, value: CtValue, now_ns: int | None = None) -> CtRecord:
        now = monotonic_ns() if now_ns is None else now_ns
        b_opened = CtFlags.BA in value.flags
        if b_opened:
            src, sport, dst, dport = key.addr_b, key.port_b, key.addr_a, key.port_a
            tx, rx = value.b_to_a, value.a_to_b
        else:
            src, sport, dst, dport = key.addr_a, key.port_a, key.addr_b, key.port_b
            tx, rx = value.a_to_b, value.b_to_a
        service = (value.orig_ip, value.orig_port) if value.type == CtType.NAT_REV else None
        state = tcp_state(value, tx, rx) if key.proto == Proto.TCP and value.type != CtType.NAT_FWD else None
        age = max(0, now - value.last_seen) / 1e9 if value.last_seen else 0.0
        return cls(key, value, key.proto, src, sport, dst, dport, service, tx, rx, age, state)

    def __str__(self) -> str:
        if self.value.type == CtType.NAT_FWD:
            rk = self.value.nat_rev_key
            text = f"{self.proto} {_ep(self.src, self.sport)} -> {_ep(self.dst, self.dport)} NAT_FWD -> {rk}"
            if self.value.nat_sport:
                text += f" source port changed to {self.value.nat_sport}"
            return f"{text} age {self.age_s:.1f}s"
        if self.service is not None:
            text = f"{self.proto} {_ep(self.src, self.sport)} -> {_ep(*self.service)}"
            text += f" -> {_ep(self.dst, self.dport)}"
            if int(self.value.tun_ip):
                text += f" via tunnel {self.value.tun_ip}"
            if self.value.orig_sport:
                text += f" source port changed from {self.value.orig_sport}"
        else:
            text = f"{self.proto} {_ep(self.src, self.sport)} -> {_ep(self.dst, self.dport)}"
        if self.state:
            text += f" {self.state}"
        return f"{text} age {self.age_s:.1f}s"

    def to_dict(self) -> dict:
        """JSON-ready form (``calico-ebpf dump conntrack --json``)."""

        def leg(x: CtLeg) -> dict:
            return {"bytes": x.bytes, "packets": x.packets, "flags": str(x.flags), "ifindex": x.ifindex}

        return {
            "type": self.value.type.name,
            "proto": str(self.proto),
            "src": str(self.src),
            "sport": self.sport,
            "dst": str(self.dst),
            "dport": self.dport,
            "service": None if self.service is None else f"{self.service[0]}:{self.service[1]}",
            "tx": leg(self.tx),
            "rx": leg(self.rx),
            "flags": str(self.value.flags),
            "age_s": round(self.age_s, 3),
            "state": self.state,
            "nat_rev_key": str(self.value.nat_rev_key) if self.value.nat_rev_key else None,
        }


def records(items, include_fwd: bool = False, now_ns: int | None = None) -> list[CtRecord]:
    now = monotonic_ns() if now_ns is None else now_ns
    return [CtRecord.of(k, v, now) for k, v in items if include_fwd or v.type != CtType.NAT_FWD]


def dataframe(kbuf, vbuf, n: int, now_ns: int | None = None):
    """A DataFrame of ``n`` conntrack entries built with numpy only (a million
    rows in well under a second): raw key/value columns plus ``age_s``.
    Addresses stay integers (``int(IPv4Address)``); use
    ``ipaddress.IPv4Address(x)`` on the rows you look at."""
    now = monotonic_ns() if now_ns is None else now_ns
    k = columns.to_array(CtKey, kbuf, n)
    v = columns.to_array(CtValue, vbuf, n)
    cols = [(name, k[name]) for name in k.dtype.names]
    cols.append(("type", v["type"]))
    cols.append(
        (
            "ct_flags",
            v["flags"].astype(np.uint32)
            | (v["flags2"].astype(np.uint32) << 8)
            | (v["flags3"].astype(np.uint32) << 16)
            | (v["flags4"].astype(np.uint32) << 24),
        )
    )
    # The NAT_FWD union members and per-leg seqno are left out: they are
    # rarely what a table is wanted for, and every column costs a pass.
    for leg in ("a_to_b", "b_to_a"):
        cols += [(f"{leg}.{f}", v[f"{leg}.{f}"]) for f in ("bytes", "packets", "flags", "ifindex")]
    cols += [
        (name, v[name]) for name in ("tun_ip", "orig_ip", "orig_port", "orig_sport", "orig_sip", "last_seen")
    ]
    last = v["last_seen"].astype(np.int64)
    cols.append(("age_s", np.where(last > 0, np.maximum(now - last, 0) / 1e9, 0.0)))
    return columns.frame(cols)
