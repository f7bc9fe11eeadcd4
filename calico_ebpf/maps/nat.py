"""Service NAT entries: frontends, backends and session affinity (IPv4).

Byte for byte ``bpf/include/nat.h`` (= Calico's ``cali_v4_nat_fe3``,
``cali_v4_nat_be``, ``cali_v4_nat_aff``)::

    >>> key = NatFrontendKey("10.96.0.10", 53, "udp")
    >>> key.prefixlen, key.to_bytes().hex()
    (56, '380000000a60000a3500110000000000')
    >>> NatFrontendValue(id=3, count=2).to_bytes()[:8].hex()
    '0300000002000000'
"""

from __future__ import annotations

import ipaddress

import attrs

from calico_ebpf.errors import ModelError
from calico_ebpf.maps import _entry as E
from calico_ebpf.maps import layout as L
from calico_ebpf.maps.enums import NatFlags, Proto

NAT_FE_PREFIX_V4 = 56  # bits of addr + port + proto after the prefixlen word
NAT_FE_DROP_COUNT = 0xFFFFFFFF
ANY_SOURCE = ipaddress.IPv4Network("0.0.0.0/0")

_proto = E.enum_converter(Proto)
_nat_flags = E.enum_converter(NatFlags)


def _src_cidr_from_raw(prefixlen: int, saddr: int) -> ipaddress.IPv4Network:
    bits = prefixlen - NAT_FE_PREFIX_V4
    if not 0 <= bits <= 32:
        raise ModelError(
            "NatFrontendKey", "prefixlen", f"{prefixlen} is not {NAT_FE_PREFIX_V4}..{NAT_FE_PREFIX_V4 + 32}"
        )
    try:
        return L.ipv4_network(saddr, bits)
    except ValueError as exc:
        raise ModelError("NatFrontendKey", "src_cidr", str(exc)) from None


@attrs.frozen(slots=True)
class NatFrontendKey(E.Entry):
    """A service frontend: destination ``addr:port/proto`` seen from ``src_cidr``.

    The LPM prefix length is ``56 + src_cidr.prefixlen``; a service with
    ``loadBalancerSourceRanges`` gets one key per range (plus a drop entry
    for any source)."""

    addr: ipaddress.IPv4Address = attrs.field(converter=E.to_ipv4, validator=E.of_type(ipaddress.IPv4Address))
    port: int = attrs.field(validator=E.port)
    proto: Proto = attrs.field(converter=_proto, validator=E.of_type(Proto))
    src_cidr: ipaddress.IPv4Network = attrs.field(
        default=ANY_SOURCE, converter=E.to_ipv4_network, validator=E.of_type(ipaddress.IPv4Network)
    )

    @property
    def prefixlen(self) -> int:
        return NAT_FE_PREFIX_V4 + self.src_cidr.prefixlen


E.set_layout(
    NatFrontendKey,
    "nat_fe_key_v4",
    16,
    [
        L.custom_field(
            "src_cidr",
            [L.Part("prefixlen", L.U32, 0), L.Part("saddr", L.IPV4, 11)],
            lambda e: (NAT_FE_PREFIX_V4 + e.src_cidr.prefixlen, int(e.src_cidr.network_address)),
            _src_cidr_from_raw,
        ),
        L.addr4_field("addr", 4),
        L.int_field("port", L.U16, 8),
        L.enum_field("proto", Proto, L.U8, 10, c_name="protocol"),
    ],
)


@attrs.frozen(slots=True)
class NatFrontendHashKey(E.Entry):
    """Exact-match frontend ``addr:port/proto`` (ours, ``bpf/include/nat_fe_hash.h``):
    the datapath looks here first; only values flagged ``NatFlags.SRC_RANGES``
    send it on to the LPM map of :class:`NatFrontendKey` entries."""

    addr: ipaddress.IPv4Address = attrs.field(converter=E.to_ipv4, validator=E.of_type(ipaddress.IPv4Address))
    port: int = attrs.field(validator=E.port)
    proto: Proto = attrs.field(converter=_proto, validator=E.of_type(Proto))


E.set_layout(
    NatFrontendHashKey,
    "nat_feh_key_v4",
    8,
    [
        L.addr4_field("addr", 0),
        L.int_field("port", L.U16, 4),
        L.enum_field("proto", Proto, L.U8, 6, c_name="protocol"),
    ],
)


@attrs.frozen(slots=True)
class NatFrontendValue(E.Entry):
    """Service id, backend counts and flags of a frontend.

    ``count == NAT_FE_DROP_COUNT`` marks a drop entry (see :meth:`drop`)."""

    id: int = attrs.field(validator=E.uint(32))
    count: int = attrs.field(validator=E.uint(32))
    local: int = attrs.field(default=0, validator=E.uint(32))
    affinity_timeo: int = attrs.field(default=0, validator=E.uint(32))
    flags: NatFlags = attrs.field(default=NatFlags(0), converter=_nat_flags, validator=E.of_type(NatFlags))

    @classmethod
    def drop(cls, id: int, flags: NatFlags = NatFlags(0)) -> NatFrontendValue:
        """A frontend that drops (source outside ``loadBalancerSourceRanges``)."""
        return cls(id=id, count=NAT_FE_DROP_COUNT, flags=flags)

    @property
    def is_drop(self) -> bool:
        return self.count == NAT_FE_DROP_COUNT


E.set_layout(
    NatFrontendValue,
    "nat_fe_value",
    20,
    [
        L.int_field("id", L.U32, 0),
        L.int_field("count", L.U32, 4),
        L.int_field("local", L.U32, 8),
        L.int_field("affinity_timeo", L.U32, 12),
        L.enum_field("flags", NatFlags, L.U32, 16),
    ],
)


@attrs.frozen(slots=True)
class NatBackendKey(E.Entry):
    """Backend ``ordinal`` (0..count-1) of service ``id``."""

    id: int = attrs.field(validator=E.uint(32))
    ordinal: int = attrs.field(validator=E.uint(32))


E.set_layout(NatBackendKey, "nat_be_key", 8, [L.int_field("id", L.U32, 0), L.int_field("ordinal", L.U32, 4)])


@attrs.frozen(slots=True)
class NatBackendValue(E.Entry):
    """A backend endpoint ``addr:port``."""

    addr: ipaddress.IPv4Address = attrs.field(converter=E.to_ipv4, validator=E.of_type(ipaddress.IPv4Address))
    port: int = attrs.field(validator=E.port)

    def __str__(self) -> str:
        return f"{self.addr}:{self.port}"


E.set_layout(NatBackendValue, "nat_be_value_v4", 8, [L.addr4_field("addr", 0), L.int_field("port", L.U16, 4)])


@attrs.frozen(slots=True)
class NatAffinityKey(E.Entry):
    """Session affinity: the frontend tuple (not the service id) + client IP."""

    addr: ipaddress.IPv4Address = attrs.field(converter=E.to_ipv4, validator=E.of_type(ipaddress.IPv4Address))
    port: int = attrs.field(validator=E.port)
    proto: Proto = attrs.field(converter=_proto, validator=E.of_type(Proto))
    client_ip: ipaddress.IPv4Address = attrs.field(
        converter=E.to_ipv4, validator=E.of_type(ipaddress.IPv4Address)
    )


E.set_layout(
    NatAffinityKey,
    "nat_aff_key_v4",
    16,
    [
        L.addr4_field("addr", 0, c_name="nat_key.addr"),
        L.int_field("port", L.U16, 4, c_name="nat_key.port"),
        L.enum_field("proto", Proto, L.U8, 6, c_name="nat_key.protocol"),
        L.addr4_field("client_ip", 8),
    ],
)


@attrs.frozen(slots=True)
class NatAffinityValue(E.Entry):
    """The backend a client sticks to and when it was last used (ktime ns)."""

    backend: NatBackendValue = attrs.field(validator=E.of_type(NatBackendValue))
    ts: int = attrs.field(default=0, validator=E.uint(64))


E.set_layout(
    NatAffinityValue,
    "nat_aff_value_v4",
    16,
    [L.struct_field("backend", NatBackendValue.__layout__, 0), L.int_field("ts", L.U64, 8)],
)
