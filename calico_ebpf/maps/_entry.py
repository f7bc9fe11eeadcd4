"""Base class, converters and validators shared by the typed map entries.

Entries are frozen, slotted attrs classes. Construction validates (a bad
port or address raises :class:`~calico_ebpf.errors.ModelError` naming the
class and field); decoding from bytes goes through the codec, which builds
the objects directly and trusts the kernel's bytes.
"""

from __future__ import annotations

import ipaddress
from typing import Any, ClassVar

from calico_ebpf.errors import ModelError
from calico_ebpf.maps import layout as L


class Entry:
    """Common behaviour of every map key/value class.

    >>> from calico_ebpf.maps.nat import NatBackendKey
    >>> NatBackendKey.from_bytes(NatBackendKey(7, 1).to_bytes())
    NatBackendKey(id=7, ordinal=1)
    """

    __slots__ = ()
    __layout__: ClassVar[L.Layout]

    def to_bytes(self) -> bytes:
        """The C struct's bytes (padding zero)."""
        from calico_ebpf.maps import codec

        return bytes(codec.encode_many([self], type(self)))

    @classmethod
    def from_bytes(cls, data) -> Any:
        """Decode exactly one struct; a wrong length raises ModelError."""
        from calico_ebpf.maps import codec

        size = cls.__layout__.size
        if len(data) != size:
            raise ModelError(cls.__name__, "bytes", f"expected {size} bytes, got {len(data)}")
        return codec.decode_many(cls, data)[0]

    @classmethod
    def size(cls) -> int:
        """Size of the C struct in bytes."""
        return cls.__layout__.size


def set_layout(
    cls: type,
    c_name: str | None,
    size: int,
    fields: list[L.Field],
    guard: str | None = None,
) -> None:
    """Attach the layout. Part names are the C member names; a dotted name
    (``nat_key.addr``) is a member of a nested struct the class flattens."""
    cls.__layout__ = L.Layout(cls, c_name, size, fields, guard)


# ---------------------------------------------------------------------------
# attrs converters: accept the convenient spellings, store one exact type
# (the codec relies on exact IPv4Address/enum types).


def to_ipv4(value: Any) -> Any:
    if type(value) is ipaddress.IPv4Address:
        return value
    if isinstance(value, (str, int, bytes, ipaddress.IPv4Address)) and not isinstance(value, bool):
        try:
            return ipaddress.IPv4Address(
                value if not isinstance(value, ipaddress.IPv4Address) else int(value)
            )
        except ValueError:
            pass
    return _Invalid(value, "is not an IPv4 address")


def to_ipv6(value: Any) -> Any:
    if type(value) is ipaddress.IPv6Address:
        return value
    if isinstance(value, (str, int, bytes)) and not isinstance(value, bool):
        try:
            return ipaddress.IPv6Address(value)
        except ValueError:
            pass
    return _Invalid(value, "is not an IPv6 address")


def to_ipv6_network(value: Any) -> Any:
    if isinstance(value, ipaddress.IPv6Network):
        return value
    try:
        return ipaddress.IPv6Network(value)
    except (ValueError, TypeError) as exc:
        return _Invalid(value, f"is not an IPv6 CIDR with host bits clear ({exc})")


def to_ipv4_network(value: Any) -> Any:
    if isinstance(value, ipaddress.IPv4Network):
        return value
    if isinstance(value, ipaddress.IPv4Address):
        return ipaddress.IPv4Network(value)
    try:
        return ipaddress.IPv4Network(value)
    except (ValueError, TypeError) as exc:
        return _Invalid(value, f"is not an IPv4 CIDR with host bits clear ({exc})")


def enum_converter(enum_cls: type):
    def convert(value: Any) -> Any:
        if type(value) is enum_cls:
            return value
        try:
            if isinstance(value, str) and hasattr(enum_cls, "parse"):
                return enum_cls.parse(value)
            if isinstance(value, int) and not isinstance(value, bool):
                return enum_cls(value)
        except (ValueError, KeyError):
            pass
        return _Invalid(value, f"is not a valid {enum_cls.__name__}")

    convert.__name__ = f"to_{enum_cls.__name__}"
    return convert


class _Invalid:
    """Marks a value a converter refused, so the validator can report it with
    the class and field name (converters do not know them)."""

    __slots__ = ("value", "reason")

    def __init__(self, value: Any, reason: str):
        self.value = value
        self.reason = reason


# ---------------------------------------------------------------------------
# attrs validators


def _fail(instance: Any, attribute: Any, reason: str) -> None:
    raise ModelError(type(instance).__name__, attribute.name, reason)


def valid(instance: Any, attribute: Any, value: Any) -> None:
    """Reject values a converter marked invalid."""
    if type(value) is _Invalid:
        _fail(instance, attribute, f"{value.value!r} {value.reason}")


def uint(bits: int):
    """Validator: an int in [0, 2**bits)."""
    top = (1 << bits) - 1

    def check(instance: Any, attribute: Any, value: Any) -> None:
        valid(instance, attribute, value)
        if not isinstance(value, int) or isinstance(value, bool):
            _fail(instance, attribute, f"{value!r} is not an integer")
        if not 0 <= value <= top:
            _fail(instance, attribute, f"{value} is out of range 0..{top}")

    return check


def sint32(instance: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        _fail(instance, attribute, f"{value!r} is not an integer")
    if not -(1 << 31) <= value < (1 << 31):
        _fail(instance, attribute, f"{value} is out of range for a signed 32-bit integer")


def port(instance: Any, attribute: Any, value: Any) -> None:
    uint(16)(instance, attribute, value)


def of_type(tp: type):
    def check(instance: Any, attribute: Any, value: Any) -> None:
        valid(instance, attribute, value)
        if type(value) is not tp:
            _fail(instance, attribute, f"{value!r} is not a {tp.__name__}")

    return check
