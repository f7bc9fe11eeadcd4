"""IPv6 service NAT entries, byte for byte ``nat_fe_key_v6``,
``nat_be_value_v6``, ``nat_aff_key_v6`` and ``nat_aff_value_v6`` in
``bpf/include/nat.h`` (= Calico's ``cali_v6_nat_*``). The frontend value and
backend key are shared with IPv4 (:mod:`calico_ebpf.maps.nat`)::

    >>> NatFrontendKeyV6("fd00:96::a", 53, "udp").prefixlen
    152
"""

from __future__ import annotations

import ipaddress

import attrs

from calico_ebpf.errors import ModelError
from calico_ebpf.maps import _entry as E
from calico_ebpf.maps import layout as L
from calico_ebpf.maps.enums import Proto

NAT_FE_PREFIX_V6 = 152
ANY_SOURCE_V6 = ipaddress.IPv6Network("::/0")
_proto = E.enum_converter(Proto)


def _addr():
    return attrs.field(converter=E.to_ipv6, validator=E.of_type(ipaddress.IPv6Address))


def _src_cidr_from_raw(prefixlen: int, saddr: bytes) -> ipaddress.IPv6Network:
    bits = prefixlen - NAT_FE_PREFIX_V6
    if not 0 <= bits <= 128:
        raise ModelError(
            "NatFrontendKeyV6",
            "prefixlen",
            f"{prefixlen} is not {NAT_FE_PREFIX_V6}..{NAT_FE_PREFIX_V6 + 128}",
        )
    try:
        return ipaddress.IPv6Network((saddr, bits))
    except ValueError as exc:
        raise ModelError("NatFrontendKeyV6", "src_cidr", str(exc)) from None


@attrs.frozen(slots=True)
class NatFrontendKeyV6(E.Entry):
    """IPv6 service frontend ``[addr]:port/proto`` seen from ``src_cidr``."""

    addr: ipaddress.IPv6Address = _addr()
    port: int = attrs.field(validator=E.port)
    proto: Proto = attrs.field(converter=_proto, validator=E.of_type(Proto))
    src_cidr: ipaddress.IPv6Network = attrs.field(
        default=ANY_SOURCE_V6, converter=E.to_ipv6_network, validator=E.of_type(ipaddress.IPv6Network)
    )

    @property
    def prefixlen(self) -> int:
        return NAT_FE_PREFIX_V6 + self.src_cidr.prefixlen


E.set_layout(
    NatFrontendKeyV6,
    "nat_fe_key_v6",
    40,
    [
        L.custom_field(
            "src_cidr",
            [L.Part("prefixlen", L.U32, 0), L.Part("saddr", L.BYTES, 23, 16)],
            lambda e: (NAT_FE_PREFIX_V6 + e.src_cidr.prefixlen, e.src_cidr.network_address.packed),
            _src_cidr_from_raw,
        ),
        L.addr6_field("addr", 4),
        L.int_field("port", L.U16, 20),
        L.enum_field("proto", Proto, L.U8, 22, c_name="protocol"),
    ],
)


@attrs.frozen(slots=True)
class NatBackendValueV6(E.Entry):
    """An IPv6 backend ``[addr]:port``."""

    addr: ipaddress.IPv6Address = _addr()
    port: int = attrs.field(validator=E.port)

    def __str__(self) -> str:
        return f"[{self.addr}]:{self.port}"


E.set_layout(
    NatBackendValueV6, "nat_be_value_v6", 20, [L.addr6_field("addr", 0), L.int_field("port", L.U16, 16)]
)


@attrs.frozen(slots=True)
class NatAffinityKeyV6(E.Entry):
    """IPv6 session affinity: frontend tuple + client IP."""

    addr: ipaddress.IPv6Address = _addr()
    port: int = attrs.field(validator=E.port)
    proto: Proto = attrs.field(converter=_proto, validator=E.of_type(Proto))
    client_ip: ipaddress.IPv6Address = _addr()


E.set_layout(
    NatAffinityKeyV6,
    "nat_aff_key_v6",
    40,
    [
        L.addr6_field("addr", 0, c_name="nat_key.addr"),
        L.int_field("port", L.U16, 16, c_name="nat_key.port"),
        L.enum_field("proto", Proto, L.U8, 18, c_name="nat_key.protocol"),
        L.addr6_field("client_ip", 20),
    ],
)


@attrs.frozen(slots=True)
class NatAffinityValueV6(E.Entry):
    """The IPv6 backend a client sticks to and when it was last used (ktime ns)."""

    backend: NatBackendValueV6 = attrs.field(validator=E.of_type(NatBackendValueV6))
    ts: int = attrs.field(default=0, validator=E.uint(64))


E.set_layout(
    NatAffinityValueV6,
    "nat_aff_value_v6",
    32,
    [L.struct_field("backend", NatBackendValueV6.__layout__, 0), L.int_field("ts", L.U64, 24)],
)
