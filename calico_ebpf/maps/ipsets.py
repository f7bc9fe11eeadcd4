"""IP set membership LPM entries (IPv4), byte for byte ``bpf/include/ipsets.h``
(= Calico's ``cali_v4_ip_sets``). One map holds every set: CIDR members use
prefix length 64 + CIDR bits, named-port members the full key length::

    >>> IPSetKey(0x42, "10.0.0.0/8").prefixlen
    72
    >>> IPSetKey(0x42, "10.0.0.5/32", port=8080, proto="tcp").prefixlen
    120
"""

from __future__ import annotations

import ipaddress

import attrs

from calico_ebpf.errors import ModelError
from calico_ebpf.maps import _entry as E
from calico_ebpf.maps import layout as L
from calico_ebpf.maps.enums import Proto

IPSET_PREFIX_ID = 64
IPSET_FULL_V4 = 64 + 32 + 16 + 8


def _member_from_raw(mask: int, addr: int) -> ipaddress.IPv4Network:
    if mask == IPSET_FULL_V4:
        return L.ipv4_network(addr, 32)
    bits = mask - IPSET_PREFIX_ID
    if not 0 <= bits <= 32:
        raise ModelError(
            "IPSetKey", "prefixlen", f"{mask} is neither 64..96 (CIDR) nor {IPSET_FULL_V4} (named port)"
        )
    try:
        return L.ipv4_network(addr, bits)
    except ValueError as exc:
        raise ModelError("IPSetKey", "cidr", str(exc)) from None


def _check_named_port(instance, attribute, value) -> None:
    E.valid(instance, attribute, value)
    if instance.is_named_port and instance.cidr.prefixlen != 32:
        E._fail(instance, attribute, "a named-port member is a single address (/32)")


@attrs.frozen(slots=True)
class IPSetKey(E.Entry):
    """Member ``cidr`` (or ``addr/32,proto:port`` for named ports) of set ``set_id``."""

    set_id: int = attrs.field(validator=E.uint(64))
    cidr: ipaddress.IPv4Network = attrs.field(
        converter=E.to_ipv4_network, validator=E.of_type(ipaddress.IPv4Network)
    )
    port: int = attrs.field(default=0, validator=E.port)
    proto: Proto = attrs.field(
        default=Proto.ANY, converter=E.enum_converter(Proto), validator=_check_named_port
    )

    @property
    def is_named_port(self) -> bool:
        return bool(self.port or self.proto)

    @property
    def prefixlen(self) -> int:
        return IPSET_FULL_V4 if self.is_named_port else IPSET_PREFIX_ID + self.cidr.prefixlen

    def __str__(self) -> str:
        if self.is_named_port:
            return f"0x{self.set_id:x} {self.cidr.network_address},{str(self.proto).lower()}:{self.port}"
        return f"0x{self.set_id:x} {self.cidr}"


E.set_layout(
    IPSetKey,
    "ipset_key_v4",
    20,
    [
        L.custom_field(
            "cidr",
            [L.Part("mask", L.U32, 0), L.Part("addr", L.IPV4, 12)],
            lambda e: (e.prefixlen, int(e.cidr.network_address)),
            _member_from_raw,
        ),
        L.int_field("set_id", L.BE64, 4),
        L.int_field("port", L.U16, 16),
        L.enum_field("proto", Proto, L.U8, 18, c_name="protocol"),
    ],
)


@attrs.frozen(slots=True)
class U32Value(E.Entry):
    """A bare u32 map value (IP sets and failsafes store 1; ifstate keys are ifindexes)."""

    value: int = attrs.field(default=1, validator=E.uint(32))


E.set_layout(U32Value, None, 4, [L.int_field("value", L.U32, 0)])
