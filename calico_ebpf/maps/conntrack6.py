"""IPv6 conntrack entries, byte for byte ``ct_key_v6`` / ``ct_value_v6`` in
``bpf/include/conntrack.h`` (= Calico's ``cali_v6_ct4``). Legs and flags are
shared with IPv4 (:mod:`calico_ebpf.maps.conntrack`).

Endpoint order: the addresses' four 32-bit words are compared in order, each
read as a little-endian (host) word of its network-order bytes; equal
addresses are ordered by port::

    >>> k = CtKeyV6.for_flow("fd00::2", 40000, "fd00::1", 80, "tcp")
    >>> str(k.addr_a), k.port_a
    ('fd00::1', 80)
"""

from __future__ import annotations

import ipaddress

import attrs

from calico_ebpf.maps import _entry as E
from calico_ebpf.maps import layout as L
from calico_ebpf.maps.conntrack import ZERO_LEG, CtLeg, FlowOrder, union_validator
from calico_ebpf.maps.enums import CtFlags, CtType, Proto

_ZERO6 = ipaddress.IPv6Address(0)


def _addr(default=None):
    kw = {} if default is None else {"default": default}
    return attrs.field(converter=E.to_ipv6, validator=E.of_type(ipaddress.IPv6Address), **kw)


def host_words(addr: ipaddress.IPv6Address) -> tuple[int, int, int, int]:
    """The four words the datapath compares, in order."""
    b = addr.packed
    return tuple(int.from_bytes(b[i : i + 4], "little") for i in range(0, 16, 4))


@attrs.frozen(slots=True)
class CtKeyV6(FlowOrder, E.Entry):
    """An IPv6 flow ``proto [addr_a]:port_a <-> [addr_b]:port_b``."""

    proto: Proto = attrs.field(converter=E.enum_converter(Proto), validator=E.of_type(Proto))
    addr_a: ipaddress.IPv6Address = _addr()
    addr_b: ipaddress.IPv6Address = _addr()
    port_a: int = attrs.field(default=0, validator=E.port)
    port_b: int = attrs.field(default=0, validator=E.port)

    @staticmethod
    def _order_words(addr) -> tuple[int, int, int, int]:
        return host_words(E.to_ipv6(addr))

    def __str__(self) -> str:
        return f"{self.proto} [{self.addr_a}]:{self.port_a} <-> [{self.addr_b}]:{self.port_b}"


E.set_layout(
    CtKeyV6,
    "ct_key_v6",
    40,
    [
        L.enum_field("proto", Proto, L.U32, 0, c_name="protocol"),
        L.addr6_field("addr_a", 4),
        L.addr6_field("addr_b", 20),
        L.int_field("port_a", L.U16, 36),
        L.int_field("port_b", L.U16, 38),
    ],
)


@attrs.frozen(slots=True)
class CtValueV6(E.Entry):
    """An IPv6 conntrack entry; same fields and union rules as
    :class:`~calico_ebpf.maps.conntrack.CtValue`."""

    rst_seen: int = attrs.field(default=0, validator=E.uint(64))
    last_seen: int = attrs.field(default=0, validator=E.uint(64))
    type: CtType = attrs.field(
        default=CtType.NORMAL, converter=E.enum_converter(CtType), validator=E.of_type(CtType)
    )
    flags: CtFlags = attrs.field(
        default=CtFlags(0), converter=E.enum_converter(CtFlags), validator=E.of_type(CtFlags)
    )
    a_to_b: CtLeg = attrs.field(default=ZERO_LEG, validator=E.of_type(CtLeg))
    b_to_a: CtLeg = attrs.field(default=ZERO_LEG, validator=E.of_type(CtLeg))
    tun_ip: ipaddress.IPv6Address = _addr(_ZERO6)
    orig_ip: ipaddress.IPv6Address = _addr(_ZERO6)
    orig_port: int = attrs.field(default=0, validator=E.port)
    orig_sport: int = attrs.field(default=0, validator=E.port)
    orig_sip: ipaddress.IPv6Address = _addr(_ZERO6)
    nat_sport: int = attrs.field(default=0, validator=E.port)
    nat_rev_key: CtKeyV6 | None = attrs.field(default=None, validator=union_validator(CtKeyV6, _ZERO6))


_LEGS = frozenset({CtType.NORMAL, CtType.NAT_REV})
_FWD = frozenset({CtType.NAT_FWD})

E.set_layout(
    CtValueV6,
    "ct_value_v6",
    128,
    [
        L.int_field("rst_seen", L.U64, 0),
        L.int_field("last_seen", L.U64, 8),
        L.enum_field("type", CtType, L.U8, 16),
        L.Field(
            "flags",
            L.V_ENUM,
            [
                L.Part("flags", L.U8, 17),
                L.Part("flags2", L.U8, 23),
                L.Part("flags3", L.U8, 18),
                L.Part("flags4", L.U8, 19),
            ],
            enum=CtFlags,
        ),
        L.struct_field("a_to_b", CtLeg.__layout__, 24, when=_LEGS, default=ZERO_LEG),
        L.struct_field("b_to_a", CtLeg.__layout__, 48, when=_LEGS, default=ZERO_LEG),
        L.addr6_field("tun_ip", 72, when=_LEGS, default=_ZERO6),
        L.addr6_field("orig_ip", 88, when=_LEGS, default=_ZERO6),
        L.int_field("orig_port", L.U16, 104, when=_LEGS, default=0),
        L.int_field("orig_sport", L.U16, 106, when=_LEGS, default=0),
        L.addr6_field("orig_sip", 108, when=_LEGS, default=_ZERO6),
        L.struct_field("nat_rev_key", CtKeyV6.__layout__, 24, when=_FWD, default=None),
        L.int_field("nat_sport", L.U16, 64, when=_FWD, default=0),
    ],
    guard="type",
)
