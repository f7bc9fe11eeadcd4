"""Interface state entries, byte for byte ``bpf/include/ifstate.h``
(= Calico's ``cali_iface4``)::

    >>> v = IfStateValue(IfaceFlags.WEP | IfaceFlags.V4_READY, "cali1234")
    >>> IfStateValue.from_bytes(v.to_bytes()).name
    'cali1234'
"""

from __future__ import annotations

import attrs

from calico_ebpf.maps import _entry as E
from calico_ebpf.maps import layout as L
from calico_ebpf.maps.enums import IfaceFlags

NO_PROGRAM = -1
_POLICY_SLOTS = (
    "xdp_policy_v4",
    "ingress_policy_v4",
    "egress_policy_v4",
    "xdp_policy_v6",
    "ingress_policy_v6",
    "egress_policy_v6",
    "tc_filter_ingress",
    "tc_filter_egress",
)


@attrs.frozen(slots=True)
class IfStateKey(E.Entry):
    """The interface's ifindex."""

    ifindex: int = attrs.field(validator=E.uint(32))


E.set_layout(IfStateKey, None, 4, [L.int_field("ifindex", L.U32, 0)])


def _name(instance, attribute, value) -> None:
    if not isinstance(value, str):
        E._fail(instance, attribute, f"{value!r} is not a string")
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        E._fail(instance, attribute, f"{value!r} is not latin-1")
    if len(raw) > 16 or raw.endswith(b"\0"):
        E._fail(instance, attribute, f"{value!r} does not fit 16 bytes (or ends with NUL)")


def _slot():
    return attrs.field(default=NO_PROGRAM, validator=E.sint32)


@attrs.frozen(slots=True)
class IfStateValue(E.Entry):
    """Kind of interface, its name and the jump-map slots of its policy
    programs (-1 = none)."""

    flags: IfaceFlags = attrs.field(converter=E.enum_converter(IfaceFlags), validator=E.of_type(IfaceFlags))
    name: str = attrs.field(validator=_name)
    xdp_policy_v4: int = _slot()
    ingress_policy_v4: int = _slot()
    egress_policy_v4: int = _slot()
    xdp_policy_v6: int = _slot()
    ingress_policy_v6: int = _slot()
    egress_policy_v6: int = _slot()
    tc_filter_ingress: int = _slot()
    tc_filter_egress: int = _slot()


E.set_layout(
    IfStateValue,
    "ifstate_value",
    52,
    [
        L.enum_field("flags", IfaceFlags, L.U32, 0),
        L.custom_field(
            "name",
            [L.Part("name", L.BYTES, 4, 16)],
            lambda e: (e.name.encode("latin-1"),),
            lambda raw: raw.rstrip(b"\0").decode("latin-1"),
        ),
    ]
    + [L.int_field(slot, L.S32, 20 + 4 * i) for i, slot in enumerate(_POLICY_SLOTS)],
)
