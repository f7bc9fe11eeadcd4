"""Every typed map entry in one namespace::

from calico_ebpf.maps.entries import NatFrontendKey, CtKey, Proto
"""

from calico_ebpf.maps.conntrack import ZERO_LEG, CtKey, CtLeg, CtValue, host_word
from calico_ebpf.maps.conntrack6 import CtKeyV6, CtValueV6
from calico_ebpf.maps.counters import CalicoCountersValue, CountersKey, CountersValue
from calico_ebpf.maps.enums import (
    Counter,
    CounterHook,
    CtFlags,
    CtLegFlags,
    CtType,
    FailsafeFlags,
    IfaceFlags,
    NatFlags,
    Proto,
    RouteFlags,
)
from calico_ebpf.maps.failsafes import FailsafeKey
from calico_ebpf.maps.ifstate import IfStateKey, IfStateValue
from calico_ebpf.maps.ipsets import IPSetKey, U32Value
from calico_ebpf.maps.nat import (
    NAT_FE_DROP_COUNT,
    NatAffinityKey,
    NatAffinityValue,
    NatBackendKey,
    NatBackendValue,
    NatFrontendHashKey,
    NatFrontendKey,
    NatFrontendValue,
)
from calico_ebpf.maps.nat6 import NatAffinityKeyV6, NatAffinityValueV6, NatBackendValueV6, NatFrontendKeyV6
from calico_ebpf.maps.routes import RouteKey, RouteValue

ALL_ENTRY_CLASSES = (
    NatFrontendKey,
    NatFrontendHashKey,
    NatFrontendValue,
    NatBackendKey,
    NatBackendValue,
    NatAffinityKey,
    NatAffinityValue,
    CtKey,
    CtLeg,
    CtValue,
    RouteKey,
    RouteValue,
    IPSetKey,
    U32Value,
    FailsafeKey,
    IfStateKey,
    IfStateValue,
    CountersKey,
    CountersValue,
    CalicoCountersValue,
    NatFrontendKeyV6,
    NatBackendValueV6,
    NatAffinityKeyV6,
    NatAffinityValueV6,
    CtKeyV6,
    CtValueV6,
)

__all__ = [
    "ALL_ENTRY_CLASSES",
    "NAT_FE_DROP_COUNT",
    "ZERO_LEG",
    "CalicoCountersValue",
    "Counter",
    "CounterHook",
    "CountersKey",
    "CountersValue",
    "CtFlags",
    "CtKey",
    "CtKeyV6",
    "CtLeg",
    "CtLegFlags",
    "CtType",
    "CtValue",
    "CtValueV6",
    "FailsafeFlags",
    "FailsafeKey",
    "IPSetKey",
    "IfStateKey",
    "IfStateValue",
    "IfaceFlags",
    "NatAffinityKey",
    "NatAffinityKeyV6",
    "NatAffinityValue",
    "NatAffinityValueV6",
    "NatBackendKey",
    "NatBackendValue",
    "NatBackendValueV6",
    "NatFlags",
    "NatFrontendHashKey",
    "NatFrontendKey",
    "NatFrontendKeyV6",
    "NatFrontendValue",
    "Proto",
    "RouteFlags",
    "RouteKey",
    "RouteValue",
    "U32Value",
    "host_word",
]
