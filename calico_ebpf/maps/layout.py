"""Byte layouts of map keys and values, described once as data.

A :class:`Layout` lists, for one entry class, where each attribute lives in
the C struct and how it is stored. Everything else is derived from it: the
Cython codec and the pure-Python codec both interpret these tables (so they
cannot disagree about offsets), the numpy dtypes for the columnar path come
from them, and the BTF test checks them against the compiled C structs.

Storage kinds (``Part.kind``) are the primitive encodings; value kinds
(``Field.vtype``) say what Python object an attribute holds::

    >>> from calico_ebpf.maps.nat import NatBackendValue
    >>> NatBackendValue.__layout__.dtype.names
    ('addr', 'port')
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable

import numpy as np

from calico_ebpf.errors import ModelError

# Storage kinds. Integers are host order (little-endian) unless named BE;
# IPV4 is an address in network order, read as a big-endian u32.
U8, U16, U32, U64, S32, BE64, IPV4, BYTES = range(8)
KIND_SIZE = {U8: 1, U16: 2, U32: 4, U64: 8, S32: 4, BE64: 8, IPV4: 4}
KIND_DTYPE = {U8: "u1", U16: "<u2", U32: "<u4", U64: "<u8", S32: "<i4", BE64: ">u8", IPV4: ">u4"}
KIND_RANGE = {
    U8: (0, 0xFF),
    U16: (0, 0xFFFF),
    U32: (0, 0xFFFFFFFF),
    U64: (0, 0xFFFFFFFFFFFFFFFF),
    S32: (-0x80000000, 0x7FFFFFFF),
    BE64: (0, 0xFFFFFFFFFFFFFFFF),
    IPV4: (0, 0xFFFFFFFF),
}

# Value kinds: what the attribute holds.
V_INT = 0  # a Python int, stored in one part
V_ENUM = 1  # an IntEnum/IntFlag, stored in one part
V_ADDR4 = 2  # an ipaddress.IPv4Address, stored in one IPV4 part
V_STRUCT = 3  # a nested entry object, stored by its own layout
V_CUSTOM = 4  # anything else: to_raw/from_raw convert to/from the parts' raw values

# Enum decode caches stop growing here (random flag words would fill them).
_ENUM_CACHE_MAX = 4096


class Part:
    """One primitive slot of a C struct: ``name`` (the C member), storage
    ``kind``, byte ``offset`` and ``size`` (only BYTES needs it given)."""

    __slots__ = ("name", "kind", "offset", "size", "np_format")

    def __init__(
        self, name: str, kind: int, offset: int, size: int | None = None, np_format: str | None = None
    ):
        self.name = name
        self.kind = kind
        self.offset = offset
        self.size = KIND_SIZE[kind] if size is None else size
        # Columnar view of a BYTES part (e.g. an array of u64); default raw bytes.
        self.np_format = np_format or (f"V{self.size}" if kind == BYTES else KIND_DTYPE[kind])

    def __repr__(self) -> str:
        return f"Part({self.name!r}, kind={self.kind}, offset={self.offset}, size={self.size})"


class Field:
    """One attribute of an entry class and the part(s) it is stored in.

    ``when`` restricts the field to entries whose layout guard (an integer
    attribute, e.g. the conntrack ``type``) has one of the given values: it
    models a C union. A field outside its guard is not written (its bytes
    stay zero) and decodes to ``default``.

    An int/enum field may span several parts: they hold consecutive
    little-endian pieces of the value (part 0 the lowest bits), which is
    how the conntrack flags are split over four bytes.  A custom field's
    ``to_raw(entry)`` gets the whole entry (a key's prefix length can depend
    on other attributes) and returns one raw value per part;
    ``from_raw(*raws)`` rebuilds the attribute.
    """

    __slots__ = (
        "name",
        "vtype",
        "parts",
        "enum",
        "sub",
        "to_raw",
        "from_raw",
        "when",
        "default",
        "cache",
        "owner",
    )

    def __init__(
        self,
        name: str,
        vtype: int,
        parts: list[Part],
        *,
        enum: type | None = None,
        sub: Layout | None = None,
        to_raw: Callable[[Any], tuple] | None = None,
        from_raw: Callable[..., Any] | None = None,
        when: frozenset[int] | None = None,
        default: Any = None,
    ):
        self.name = name
        self.vtype = vtype
        self.parts = parts
        self.enum = enum
        self.sub = sub
        self.to_raw = to_raw
        self.from_raw = from_raw
        self.when = when
        self.default = default
        self.cache: dict[int, Any] = {}
        self.owner = "?"

    def enum_value(self, raw: int) -> Any:
        """Decode ``raw`` to the field's enum, caching the member objects."""
        member = self.cache.get(raw)
        if member is None:
            try:
                member = self.enum(raw)
            except ValueError:
                raise ModelError(
                    self.owner, self.name, f"{raw} is not a valid {self.enum.__name__}"
                ) from None
            if len(self.cache) < _ENUM_CACHE_MAX:
                self.cache[raw] = member
        return member


class Layout:
    """The byte layout of one entry class (set as ``cls.__layout__``).

    ``c_name`` is the C struct in ``bpf/include`` it must match; ``guard``
    names the integer attribute that selects union members (see
    :class:`Field`), and must be a field stored before any guarded one.
    """

    def __init__(self, cls: type, c_name: str, size: int, fields: list[Field], guard: str | None = None):
        self.cls = cls
        self.c_name = c_name
        self.size = size
        self.fields = fields
        self.guard = guard
        self._dtype = None
        for f in fields:
            f.owner = cls.__name__
        if guard is not None:
            names = [f.name for f in fields]
            assert names.index(guard) < min(i for i, f in enumerate(fields) if f.when is not None)
        for f in fields:
            for p in f.parts:
                assert 0 <= p.offset and p.offset + p.size <= size, (c_name, f.name, p)

    def __repr__(self) -> str:
        return f"<Layout {self.cls.__name__} = struct {self.c_name} ({self.size} bytes)>"

    def leaves(self, prefix: str = "", base: int = 0):
        """Yield ``(column_name, Part-at-absolute-offset)`` for every primitive,
        flattening nested structs as ``outer.inner``."""
        for f in self.fields:
            if f.vtype == V_STRUCT:
                p = f.parts[0]
                yield from f.sub.leaves(f"{prefix}{f.name}.", base + p.offset)
            else:
                for p in f.parts:
                    yield f"{prefix}{p.name}", Part(p.name, p.kind, base + p.offset, p.size, p.np_format)

    @property
    def dtype(self) -> np.dtype:
        """numpy structured dtype with the C offsets (union members overlap).

        IPv4 addresses are big-endian u32 columns, so a column value equals
        ``int(IPv4Address)``."""
        if self._dtype is None:
            names, formats, offsets = [], [], []
            for name, p in self.leaves():
                names.append(name)
                formats.append(p.np_format)
                offsets.append(p.offset)
            self._dtype = np.dtype(
                {"names": names, "formats": formats, "offsets": offsets, "itemsize": self.size}
            )
        return self._dtype


# ---------------------------------------------------------------------------
# Small constructors used by the entry modules to declare layouts tersely.


def int_field(name: str, kind: int, offset: int, c_name: str | None = None, **kw) -> Field:
    return Field(name, V_INT, [Part(c_name or name, kind, offset)], **kw)


def enum_field(name: str, enum: type, kind: int, offset: int, c_name: str | None = None, **kw) -> Field:
    return Field(name, V_ENUM, [Part(c_name or name, kind, offset)], enum=enum, **kw)


def addr4_field(name: str, offset: int, c_name: str | None = None, **kw) -> Field:
    return Field(name, V_ADDR4, [Part(c_name or name, IPV4, offset)], **kw)


def struct_field(name: str, sub: Layout, offset: int, **kw) -> Field:
    return Field(name, V_STRUCT, [Part(name, BYTES, offset, sub.size)], sub=sub, **kw)


def custom_field(name: str, parts: list[Part], to_raw, from_raw, **kw) -> Field:
    return Field(name, V_CUSTOM, parts, to_raw=to_raw, from_raw=from_raw, **kw)


def addr6_field(name: str, offset: int, c_name: str | None = None, **kw) -> Field:
    """An ipaddress.IPv6Address stored as 16 network-order bytes. A custom
    field: IPv6 is not on the hot path, so both codecs share the conversion."""
    return Field(
        name,
        V_CUSTOM,
        [Part(c_name or name, BYTES, offset, 16)],
        to_raw=lambda e: (getattr(e, name).packed,),
        from_raw=ipaddress.IPv6Address,
        **kw,
    )


# ---------------------------------------------------------------------------
# Shared converters (used by both codecs through Field.to_raw/from_raw).

_ZERO4 = ipaddress.IPv4Address(0)
_net_cache: dict[tuple[int, int], ipaddress.IPv4Network] = {}


def ipv4_network(addr: int, prefixlen: int) -> ipaddress.IPv4Network:
    """Cached ``IPv4Network((addr, prefixlen))``; most keys share a few CIDRs
    (0.0.0.0/0, /32 hosts), and building networks is slow."""
    key = (addr, prefixlen)
    net = _net_cache.get(key)
    if net is None:
        net = ipaddress.IPv4Network(key)
        if len(_net_cache) < 65536:
            _net_cache[key] = net
    return net


def zero_v4() -> ipaddress.IPv4Address:
    return _ZERO4


def range_error(owner: str, field: str, value: Any, kind: int) -> ModelError:
    """The error both codecs raise for a value that does not fit its C type."""
    lo, hi = KIND_RANGE.get(kind, (0, 0))
    return ModelError(owner, field, f"{value!r} does not fit its C type ({lo}..{hi})")
