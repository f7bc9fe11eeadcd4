"""Routes LPM entries (IPv4), byte for byte ``bpf/include/routes.h``
(= Calico's ``cali_v4_routes``)::

    >>> RouteKey("10.65.1.0/26").to_bytes().hex()
    '1a0000000a410100'
    >>> RouteValue.for_ifindex(RouteFlags.LOCAL | RouteFlags.WORKLOAD, 7).ifindex
    7
"""

from __future__ import annotations

import ipaddress

import attrs

from calico_ebpf.errors import ModelError
from calico_ebpf.maps import _entry as E
from calico_ebpf.maps import layout as L
from calico_ebpf.maps.enums import RouteFlags


def cidr_from_raw(owner: str, base: int, prefixlen: int, addr: int) -> ipaddress.IPv4Network:
    """Rebuild the CIDR of an LPM key whose prefix length counts ``base`` bits
    of other fields first; ModelError when the key is not a canonical CIDR."""
    bits = prefixlen - base
    if not 0 <= bits <= 32:
        raise ModelError(owner, "prefixlen", f"{prefixlen} is not {base}..{base + 32}")
    try:
        return L.ipv4_network(addr, bits)
    except ValueError as exc:
        raise ModelError(owner, "cidr", str(exc)) from None


@attrs.frozen(slots=True)
class RouteKey(E.Entry):
    """A destination CIDR."""

    cidr: ipaddress.IPv4Network = attrs.field(
        converter=E.to_ipv4_network, validator=E.of_type(ipaddress.IPv4Network)
    )


E.set_layout(
    RouteKey,
    "route_key_v4",
    8,
    [
        L.custom_field(
            "cidr",
            [L.Part("prefixlen", L.U32, 0), L.Part("addr", L.IPV4, 4)],
            lambda e: (e.cidr.prefixlen, int(e.cidr.network_address)),
            lambda p, a: cidr_from_raw("RouteKey", 0, p, a),
        )
    ],
)


@attrs.frozen(slots=True)
class RouteValue(E.Entry):
    """Route flags and next hop. For local workloads (LOCAL|WORKLOAD) the
    same 4 bytes hold the veth's ifindex instead (a C union): build those
    with :meth:`for_ifindex` and read :attr:`ifindex`."""

    flags: RouteFlags = attrs.field(converter=E.enum_converter(RouteFlags), validator=E.of_type(RouteFlags))
    next_hop: ipaddress.IPv4Address = attrs.field(
        default=ipaddress.IPv4Address(0), converter=E.to_ipv4, validator=E.of_type(ipaddress.IPv4Address)
    )

    @classmethod
    def for_ifindex(cls, flags, ifindex: int) -> RouteValue:
        if not 0 <= ifindex <= 0xFFFFFFFF:
            raise ModelError("RouteValue", "ifindex", f"{ifindex} is out of range")
        return cls(flags, ipaddress.IPv4Address(ifindex.to_bytes(4, "little")))

    @property
    def ifindex(self) -> int:
        return int.from_bytes(self.next_hop.packed, "little")

    @property
    def is_local_workload(self) -> bool:
        return RouteFlags.LOCAL in self.flags and RouteFlags.WORKLOAD in self.flags

    def __str__(self) -> str:
        target = f"idx {self.ifindex}" if self.is_local_workload else f"nh {self.next_hop}"
        return f"{self.flags} {target}"


E.set_layout(
    RouteValue,
    "route_value_v4",
    8,
    [L.enum_field("flags", RouteFlags, L.U32, 0), L.addr4_field("next_hop", 4)],
)
