"""Failsafe port LPM entries (IPv4), byte for byte ``bpf/include/failsafes.h``
(= Calico's ``cali_v4_fsafes2``)::

    >>> FailsafeKey(22, "tcp").prefixlen
    32
"""

from __future__ import annotations

import ipaddress

import attrs

from calico_ebpf.maps import _entry as E
from calico_ebpf.maps import layout as L
from calico_ebpf.maps.enums import FailsafeFlags, Proto
from calico_ebpf.maps.routes import cidr_from_raw

FSAFE_PREFIX_BASE = 32
ANY = ipaddress.IPv4Network("0.0.0.0/0")


@attrs.frozen(slots=True)
class FailsafeKey(E.Entry):
    """``proto:port`` always allowed from (inbound) or to (OUTBOUND) ``cidr``."""

    port: int = attrs.field(validator=E.port)
    proto: Proto = attrs.field(converter=E.enum_converter(Proto), validator=E.of_type(Proto))
    cidr: ipaddress.IPv4Network = attrs.field(
        default=ANY, converter=E.to_ipv4_network, validator=E.of_type(ipaddress.IPv4Network)
    )
    flags: FailsafeFlags = attrs.field(
        default=FailsafeFlags(0),
        converter=E.enum_converter(FailsafeFlags),
        validator=E.of_type(FailsafeFlags),
    )

    @property
    def prefixlen(self) -> int:
        return FSAFE_PREFIX_BASE + self.cidr.prefixlen

    @property
    def outbound(self) -> bool:
        return FailsafeFlags.OUTBOUND in self.flags


E.set_layout(
    FailsafeKey,
    "failsafe_key_v4",
    12,
    [
        L.custom_field(
            "cidr",
            [L.Part("prefixlen", L.U32, 0), L.Part("addr", L.IPV4, 8)],
            lambda e: (FSAFE_PREFIX_BASE + e.cidr.prefixlen, int(e.cidr.network_address)),
            lambda p, a: cidr_from_raw("FailsafeKey", FSAFE_PREFIX_BASE, p, a),
        ),
        L.int_field("port", L.U16, 4),
        L.enum_field("proto", Proto, L.U8, 6, c_name="ip_proto"),
        L.enum_field("flags", FailsafeFlags, L.U8, 7),
    ],
)
