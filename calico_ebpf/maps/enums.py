"""Enumerations and flag sets stored in the dataplane maps.

Values mirror ``bpf/include/*.h``. Every enum prints by name so that
records read like ``calico-bpf`` output::

    >>> str(Proto.TCP), str(Proto(47))
    ('TCP', 'PROTO_47')
"""

from __future__ import annotations

import enum


class Proto(enum.IntEnum):
    """IP protocol number. Unknown numbers (0..255) become ``PROTO_<n>`` members
    so that any map entry can be decoded and written back unchanged."""

    ANY = 0
    ICMP = 1
    TCP = 6
    UDP = 17
    SCTP = 132

    @classmethod
    def _missing_(cls, value):
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255:
            member = int.__new__(cls, value)
            member._name_ = f"PROTO_{value}"
            member._value_ = value
            # Cache it so Proto(47) is Proto(47) and decoding stays cheap.
            return cls._value2member_map_.setdefault(value, member)
        return None

    @classmethod
    def parse(cls, text: str | int) -> Proto:
        """``Proto.parse("tcp")`` / ``Proto.parse(6)`` -> ``Proto.TCP``."""
        if isinstance(text, int):
            return cls(text)
        try:
            return cls[text.upper()]
        except KeyError:
            return cls(int(text))

    def __str__(self) -> str:
        return self.name


class _NamedFlag(enum.IntFlag):
    """IntFlag that keeps unknown bits and prints as ``A|B``."""

    def __str__(self) -> str:
        if not self:
            return "0"
        names = [m.name for m in type(self) if m in self and m.value]
        rest = int(self) & ~sum(int(m) for m in type(self) if m in self)
        if rest:
            names.append(hex(rest))
        return "|".join(names)


class NatFlags(_NamedFlag, boundary=enum.KEEP):
    """``nat_fe_value.flags``."""

    EXTERNAL_LOCAL = 0x1
    INTERNAL_LOCAL = 0x2
    NAT_EXCLUDE = 0x4
    MAGLEV = 0x8
    SRC_RANGES = 0x100  # ours: look the source up in the LPM frontends (nat_fe_hash.h)


class CtType(enum.IntEnum):
    """Kind of a conntrack entry (``ct_value.type``)."""

    NORMAL = 0
    NAT_FWD = 1
    NAT_REV = 2

    def __str__(self) -> str:
        return self.name


class CtFlags(_NamedFlag, boundary=enum.KEEP):
    """Logical 32-bit conntrack flags (stored split over four bytes)."""

    NAT_OUT = 0x1
    DSR_FWD = 0x2
    NP_FWD = 0x4
    SKIP_FIB = 0x8
    EXT_LOCAL = 0x40
    VIA_NAT_IF = 0x80
    BA = 0x100
    HOST_PSNAT = 0x200
    SVC_SELF = 0x400
    NP_LOOP = 0x800
    NP_REMOTE = 0x1000
    NP_NO_DSR = 0x2000
    SKIP_REDIR_PEER = 0x4000
    SET_DSCP = 0x8000
    MAGLEV = 0x10000
    SEND_RESET = 0x20000


class CtLegFlags(_NamedFlag, boundary=enum.KEEP):
    """Per-leg TCP and approval bits (``ct_leg.flags``)."""

    SYN_SEEN = 0x1
    ACK_SEEN = 0x2
    FIN_SEEN = 0x4
    RST_SEEN = 0x8
    APPROVED = 0x10
    OPENER = 0x20
    WORKLOAD = 0x40


class RouteFlags(_NamedFlag, boundary=enum.KEEP):
    """``route_value.flags``."""

    IN_POOL = 0x1
    NAT_OUT = 0x2
    WORKLOAD = 0x4
    LOCAL = 0x8
    HOST = 0x10
    SAME_SUBNET = 0x20
    TUNNELED = 0x40
    NO_DSR = 0x80
    BLACKHOLE_DROP = 0x100
    BLACKHOLE_REJECT = 0x200
    VXLAN = 0x400
    SKIP_INGRESS_REDIRECT = 0x800


class IfaceFlags(_NamedFlag, boundary=enum.KEEP):
    """``ifstate_value.flags``."""

    WEP = 0x1
    V4_READY = 0x2
    V6_READY = 0x4
    HEP = 0x8
    BOND = 0x10
    BOND_SLAVE = 0x20
    VXLAN = 0x40
    IPIP = 0x80
    WIREGUARD = 0x100
    L3 = 0x200
    NOT_MANAGED = 0x400


class FailsafeFlags(_NamedFlag, boundary=enum.KEEP):
    """``failsafe_key.flags``: inbound unless OUTBOUND."""

    OUTBOUND = 0x1


class CounterHook(enum.IntEnum):
    """``counters_key.hook``."""

    TC_INGRESS = 0
    TC_EGRESS = 1
    XDP = 2

    def __str__(self) -> str:
        return self.name


class Counter(enum.IntEnum):
    """Index into ``counters_value.counts`` (Calico's reasons 0..26, ours 27..31)."""

    TOTAL = 0
    ACCEPTED_FAILSAFE = 1
    ACCEPTED_POLICY = 2
    ACCEPTED_BYPASS = 3
    DROP_POLICY = 4
    DROP_SHORT = 5
    DROP_CSUM = 6
    DROP_IP_OPTIONS = 7
    DROP_MALFORMED_IP = 8
    DROP_ENCAP = 9
    DROP_DECAP = 10
    DROP_UNAUTH_SOURCE = 11
    DROP_UNKNOWN_ROUTE = 12
    DROP_BLACKHOLE = 13
    SRC_COLLISION = 14
    SRC_COLLISION_FAIL = 15
    DROP_CT_CREATE = 16
    REDIRECT = 17
    REDIRECT_NEIGH = 18
    REDIRECT_PEER = 19
    FRAG_WAIT = 20
    FRAG_REORDER = 21
    FRAG_UNSUPPORTED = 22
    DROP_QOS = 23
    RESERVED = 24
    MAGLEV_NO_BACKEND = 25
    NO_HOST_IP = 26
    NAT_NEW = 27
    NAT_NO_BACKEND = 28
    DROP_SRC_RANGE = 29
    CT_HIT = 30
    CT_NEW = 31

    def __str__(self) -> str:
        return self.name
