"""Conntrack entries (IPv4), byte for byte ``bpf/include/conntrack.h``
(= Calico's ``cali_v4_ct4``).

One key covers both directions of a flow: the endpoint that compares lower
is "A". The comparison is the datapath's: each address is the 4 network-order
bytes read as a **little-endian** (host) 32-bit word, so 10.0.0.2 (word
0x0200000a) sorts *after* 192.168.0.1 (word 0x0100a8c0); equal addresses are
ordered by port. :meth:`CtKey.for_flow` applies that rule::

    >>> k = CtKey.for_flow("10.0.0.2", 40000, "192.168.0.1", 80, "tcp")
    >>> str(k.addr_a), k.port_a, str(k.addr_b), k.port_b
    ('192.168.0.1', 80, '10.0.0.2', 40000)
"""

from __future__ import annotations

import ipaddress

import attrs

from calico_ebpf.maps import _entry as E
from calico_ebpf.maps import layout as L
from calico_ebpf.maps.enums import CtFlags, CtLegFlags, CtType, Proto

_ZERO = ipaddress.IPv4Address(0)


def _addr_field(default=None):
    kw = {} if default is None else {"default": default}
    return attrs.field(converter=E.to_ipv4, validator=E.of_type(ipaddress.IPv4Address), **kw)


def host_word(addr: ipaddress.IPv4Address) -> int:
    """The address's network-order bytes read as a little-endian u32: the
    value the datapath compares when it orders a conntrack key."""
    return int.from_bytes(addr.packed, "little")


class FlowOrder:
    """The datapath's rule for which endpoint of a flow is "A" in its conntrack key, shared by
    the IPv4 and IPv6 keys: the lower address (compared as the host-endian words the program
    loads) goes first, ties broken by port. Subclasses say how to read an address."""

    __slots__ = ()

    @staticmethod
    def _order_words(addr):
        raise NotImplementedError

    @classmethod
    def src_is_a(cls, src, sport: int, dst, dport: int) -> bool:
        """True when the source endpoint is "A" of the flow's key."""
        ws, wd = cls._order_words(src), cls._order_words(dst)
        if ws != wd:
            return ws < wd
        return sport < dport

    @classmethod
    def for_flow(cls, src, sport: int, dst, dport: int, proto):
        """The key the datapath uses for a packet ``src:sport -> dst:dport``."""
        if cls.src_is_a(src, sport, dst, dport):
            return cls(proto, src, dst, sport, dport)
        return cls(proto, dst, src, dport, sport)


@attrs.frozen(slots=True)
class CtKey(FlowOrder, E.Entry):
    """A flow ``proto addr_a:port_a <-> addr_b:port_b`` (A compares lower).

    Ports are 0 for ICMP. Build keys from a packet's tuple with
    :meth:`for_flow`, which orders the endpoints like the datapath."""

    proto: Proto = attrs.field(converter=E.enum_converter(Proto), validator=E.of_type(Proto))
    addr_a: ipaddress.IPv4Address = _addr_field()
    addr_b: ipaddress.IPv4Address = _addr_field()
    port_a: int = attrs.field(default=0, validator=E.port)
    port_b: int = attrs.field(default=0, validator=E.port)

    @staticmethod
    def _order_words(addr) -> int:
        return host_word(E.to_ipv4(addr))

    def __str__(self) -> str:
        return f"{self.proto} {self.addr_a}:{self.port_a} <-> {self.addr_b}:{self.port_b}"


E.set_layout(
    CtKey,
    "ct_key_v4",
    16,
    [
        L.enum_field("proto", Proto, L.U32, 0, c_name="protocol"),
        L.addr4_field("addr_a", 4),
        L.addr4_field("addr_b", 8),
        L.int_field("port_a", L.U16, 12),
        L.int_field("port_b", L.U16, 14),
    ],
)


@attrs.frozen(slots=True)
class CtLeg(E.Entry):
    """One direction of a flow: counters, last TCP sequence (network order),
    TCP/approval flags and the ingress ifindex (0 = from the host)."""

    bytes: int = attrs.field(default=0, validator=E.uint(64))
    packets: int = attrs.field(default=0, validator=E.uint(32))
    seqno: int = attrs.field(default=0, validator=E.uint(32))
    flags: CtLegFlags = attrs.field(
        default=CtLegFlags(0), converter=E.enum_converter(CtLegFlags), validator=E.of_type(CtLegFlags)
    )
    ifindex: int = attrs.field(default=0, validator=E.uint(32))


E.set_layout(
    CtLeg,
    "ct_leg",
    24,
    [
        L.int_field("bytes", L.U64, 0),
        L.int_field("packets", L.U32, 8),
        L.int_field("seqno", L.U32, 12),
        L.enum_field("flags", CtLegFlags, L.U32, 16),
        L.int_field("ifindex", L.U32, 20),
    ],
)

ZERO_LEG = CtLeg()


def union_validator(key_cls: type, zero_addr):
    """Validator for ``nat_rev_key``: NAT_FWD entries hold only the reverse
    key (+ nat_sport); the others only legs and NAT fields (a C union)."""

    def check(instance, attribute, value) -> None:
        if instance.type == CtType.NAT_FWD:
            if type(value) is not key_cls:
                E._fail(instance, attribute, f"a NAT_FWD entry needs nat_rev_key (a {key_cls.__name__})")
            rest = (
                instance.a_to_b,
                instance.b_to_a,
                instance.tun_ip,
                instance.orig_ip,
                instance.orig_port,
                instance.orig_sport,
                instance.orig_sip,
            )
            if rest != (ZERO_LEG, ZERO_LEG, zero_addr, zero_addr, 0, 0, zero_addr):
                E._fail(
                    instance, attribute, "a NAT_FWD entry has no legs or NAT fields (they share its bytes)"
                )
        elif value is not None or instance.nat_sport:
            E._fail(
                instance, attribute, f"only NAT_FWD entries have nat_rev_key/nat_sport, not {instance.type}"
            )

    return check


@attrs.frozen(slots=True)
class CtValue(E.Entry):
    """A conntrack entry. ``type`` selects the C union member:

    * NORMAL / NAT_REV: ``a_to_b``, ``b_to_a`` legs; NAT_REV also
      ``orig_ip:orig_port`` (pre-DNAT destination), ``orig_sip``,
      ``orig_sport`` and ``tun_ip``;
    * NAT_FWD: ``nat_rev_key`` (the NAT_REV entry's key) and ``nat_sport``.

    Use :meth:`normal`, :meth:`nat_fwd` and :meth:`nat_rev` to build them."""

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
    tun_ip: ipaddress.IPv4Address = _addr_field(_ZERO)
    orig_ip: ipaddress.IPv4Address = _addr_field(_ZERO)
    orig_port: int = attrs.field(default=0, validator=E.port)
    orig_sport: int = attrs.field(default=0, validator=E.port)
    orig_sip: ipaddress.IPv4Address = _addr_field(_ZERO)
    nat_sport: int = attrs.field(default=0, validator=E.port)
    nat_rev_key: CtKey | None = attrs.field(default=None, validator=union_validator(CtKey, _ZERO))

    @classmethod
    def normal(
        cls,
        a_to_b: CtLeg = ZERO_LEG,
        b_to_a: CtLeg = ZERO_LEG,
        *,
        last_seen: int = 0,
        flags=CtFlags(0),
        rst_seen: int = 0,
    ) -> CtValue:
        return cls(
            rst_seen=rst_seen,
            last_seen=last_seen,
            type=CtType.NORMAL,
            flags=flags,
            a_to_b=a_to_b,
            b_to_a=b_to_a,
        )

    @classmethod
    def nat_fwd(
        cls, nat_rev_key: CtKey, *, nat_sport: int = 0, last_seen: int = 0, flags=CtFlags(0)
    ) -> CtValue:
        return cls(
            last_seen=last_seen,
            type=CtType.NAT_FWD,
            flags=flags,
            nat_rev_key=nat_rev_key,
            nat_sport=nat_sport,
        )

    @classmethod
    def nat_rev(
        cls,
        orig_ip,
        orig_port: int,
        a_to_b: CtLeg = ZERO_LEG,
        b_to_a: CtLeg = ZERO_LEG,
        *,
        last_seen: int = 0,
        flags=CtFlags(0),
        tun_ip=_ZERO,
        orig_sip=_ZERO,
        orig_sport: int = 0,
        rst_seen: int = 0,
    ) -> CtValue:
        return cls(
            rst_seen=rst_seen,
            last_seen=last_seen,
            type=CtType.NAT_REV,
            flags=flags,
            a_to_b=a_to_b,
            b_to_a=b_to_a,
            tun_ip=tun_ip,
            orig_ip=orig_ip,
            orig_port=orig_port,
            orig_sport=orig_sport,
            orig_sip=orig_sip,
        )


_LEGS = frozenset({CtType.NORMAL, CtType.NAT_REV})
_FWD = frozenset({CtType.NAT_FWD})

E.set_layout(
    CtValue,
    "ct_value_v4",
    88,
    [
        L.int_field("rst_seen", L.U64, 0),
        L.int_field("last_seen", L.U64, 8),
        L.enum_field("type", CtType, L.U8, 16),
        # One logical 32-bit word split over four bytes (bits 0-7, 8-15, 16-23, 24-31).
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
        L.addr4_field("tun_ip", 72, when=_LEGS, default=_ZERO),
        L.addr4_field("orig_ip", 76, when=_LEGS, default=_ZERO),
        L.int_field("orig_port", L.U16, 80, when=_LEGS, default=0),
        L.int_field("orig_sport", L.U16, 82, when=_LEGS, default=0),
        L.addr4_field("orig_sip", 84, when=_LEGS, default=_ZERO),
        L.struct_field("nat_rev_key", CtKey.__layout__, 24, when=_FWD, default=None),
        L.int_field("nat_sport", L.U16, 40, when=_FWD, default=0),
    ],
    guard="type",
)
