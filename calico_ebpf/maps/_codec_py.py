"""Pure-Python codec: interprets the :mod:`~calico_ebpf.maps.layout` tables
with :mod:`struct`. It is the reference the Cython codec (``_codec_c.pyx``)
must match byte for byte and object for object; both expose::

    encode_many(entries, cls=None) -> bytearray
    encode_into(entries, cls, buf, offset=0) -> int
    decode_many(cls, buffer, count=None) -> list
    decode_items(kcls, vcls, kbuf, vbuf, count=None) -> list of (key, value)
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

from calico_ebpf.maps import layout as L

IMPLEMENTATION = "python"

_IPv4Address = ipaddress.IPv4Address
_FORMATS = {L.U16: "<H", L.U32: "<I", L.U64: "<Q", L.S32: "<i", L.BE64: ">Q", L.IPV4: ">I"}
_STRUCTS = {k: struct.Struct(f) for k, f in _FORMATS.items()}
_pack_into = {k: s.pack_into for k, s in _STRUCTS.items()}
_unpack_from = {k: s.unpack_from for k, s in _STRUCTS.items()}
_new = object.__new__
_set = object.__setattr__


def _put(f: L.Field, part: L.Part, buf, off: int, raw: Any) -> None:
    kind = part.kind
    if kind == L.BYTES:
        if len(raw) > part.size:
            raise L.range_error(f.owner, f.name, raw, kind)
        buf[off : off + len(raw)] = raw
        return
    lo, hi = L.KIND_RANGE[kind]
    if not lo <= raw <= hi:
        raise L.range_error(f.owner, f.name, raw, kind)
    if kind == L.U8:
        buf[off] = raw
    else:
        _pack_into[kind](buf, off, raw)


def _get(part: L.Part, buf, off: int) -> Any:
    kind = part.kind
    if kind == L.U8:
        return buf[off]
    if kind == L.BYTES:
        return bytes(buf[off : off + part.size])
    return _unpack_from[kind](buf, off)[0]


def _encode(layout: L.Layout, e: Any, buf, base: int) -> None:
    if type(e) is not layout.cls:
        raise TypeError(f"expected {layout.cls.__name__}, got {type(e).__name__}")
    guard = int(getattr(e, layout.guard)) if layout.guard is not None else None
    for f in layout.fields:
        if f.when is not None and guard not in f.when:
            continue
        vt = f.vtype
        if vt == L.V_CUSTOM:
            for part, raw in zip(f.parts, f.to_raw(e)):
                _put(f, part, buf, base + part.offset, raw)
            continue
        value = getattr(e, f.name)
        if vt == L.V_STRUCT:
            _encode(f.sub, value, buf, base + f.parts[0].offset)
        elif vt == L.V_ADDR4:
            if type(value) is not _IPv4Address:
                raise TypeError(f"{f.owner}.{f.name}: expected IPv4Address, got {type(value).__name__}")
            _put(f, f.parts[0], buf, base + f.parts[0].offset, int(value))
        elif len(f.parts) == 1:
            _put(f, f.parts[0], buf, base + f.parts[0].offset, int(value))
        else:
            # A value split into consecutive little-endian pieces (conntrack flags).
            raw = int(value)
            if raw < 0 or raw >> (8 * sum(p.size for p in f.parts)):
                raise L.range_error(f.owner, f.name, raw, L.U32)
            for part in f.parts:
                _put(f, part, buf, base + part.offset, raw & ((1 << (8 * part.size)) - 1))
                raw >>= 8 * part.size


def _decode(layout: L.Layout, buf, base: int) -> Any:
    obj = _new(layout.cls)
    guard = None
    for f in layout.fields:
        if f.when is not None and guard not in f.when:
            _set(obj, f.name, f.default)
            continue
        vt = f.vtype
        if vt == L.V_STRUCT:
            value = _decode(f.sub, buf, base + f.parts[0].offset)
        elif vt == L.V_CUSTOM:
            value = f.from_raw(*[_get(p, buf, base + p.offset) for p in f.parts])
        else:
            raw = 0
            shift = 0
            for part in f.parts:
                raw |= _get(part, buf, base + part.offset) << shift
                shift += 8 * part.size
            if f.name == layout.guard:
                guard = raw
            if vt == L.V_INT:
                value = raw
            elif vt == L.V_ENUM:
                value = f.enum_value(raw)
            else:  # V_ADDR4
                value = _IPv4Address(raw)
        _set(obj, f.name, value)
    return obj


def encode_into(entries, cls: type, buf, offset: int = 0) -> int:
    """Encode ``entries`` (all exactly ``cls``) into ``buf`` at ``offset``;
    the bytes must be zero beforehand (padding is not written). Returns the
    number of bytes written."""
    layout = cls.__layout__
    size = layout.size
    pos = offset
    for e in entries:
        _encode(layout, e, buf, pos)
        pos += size
    return pos - offset


def encode_many(entries, cls: type | None = None) -> bytearray:
    """Concatenated C structs of ``entries`` (one class, given or taken from
    the first entry)."""
    entries = entries if isinstance(entries, (list, tuple)) else list(entries)
    if not entries:
        return bytearray()
    if cls is None:
        cls = type(entries[0])
    buf = bytearray(len(entries) * cls.__layout__.size)
    encode_into(entries, cls, buf, 0)
    return buf


def decode_many(cls: type, buffer, count: int | None = None) -> list:
    """Entries of class ``cls`` from concatenated structs in ``buffer``."""
    layout = cls.__layout__
    size = layout.size
    mv = memoryview(buffer).cast("B")
    if count is None:
        if len(mv) % size:
            raise L.ModelError(cls.__name__, "bytes", f"{len(mv)} bytes is not a multiple of {size}")
        count = len(mv) // size
    elif count * size > len(mv):
        raise L.ModelError(cls.__name__, "bytes", f"{count} entries need {count * size} bytes, got {len(mv)}")
    return [_decode(layout, mv, i * size) for i in range(count)]


def decode_items(kcls: type, vcls: type, kbuf, vbuf, count: int | None = None) -> list:
    """``[(key, value), ...]`` from packed keys and values."""
    keys = decode_many(kcls, kbuf, count)
    return list(zip(keys, decode_many(vcls, vbuf, len(keys))))
