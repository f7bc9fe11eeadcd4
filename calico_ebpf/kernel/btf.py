"""BTF queries: struct layouts (offsets and sizes) as the compiler laid them out.

The maps layer checks its codecs against these, so a header change that
moves a field is caught at test time instead of corrupting map entries.

>>> lay = struct_layout("calico_ebpf/_bpf/layouts.o", "ct_value_v4")
>>> lay.size, lay.members["tun_ip"].offset
(88, 72)

Members of anonymous nested structs/unions are flattened into the parent,
as C code sees them (``value.tun_ip``); named nested structs appear once
under their own name (``a_to_b``) with their whole size.
"""

from __future__ import annotations

import errno as _errno
import os
from dataclasses import dataclass, field

from calico_ebpf.errors import BPFError
from calico_ebpf.kernel._lib import ffi, lib, raise_errno
from calico_ebpf.kernel.object import BPFObject

_MODIFIERS = frozenset(
    {lib.BTF_KIND_TYPEDEF, lib.BTF_KIND_VOLATILE, lib.BTF_KIND_CONST, lib.BTF_KIND_RESTRICT}
)
_COMPOSITE = frozenset({lib.BTF_KIND_STRUCT, lib.BTF_KIND_UNION})
_KIND_NAMES = {lib.BTF_KIND_STRUCT: "struct", lib.BTF_KIND_UNION: "union"}


@dataclass(frozen=True)
class Member:
    """One field: byte offset from the start of the outer struct, and size in bytes.

    ``bit_size`` is non-zero only for bit fields (then ``offset`` is the byte
    holding the first bit and ``bit_offset`` the exact bit position).
    """

    offset: int
    size: int
    type_name: str = ""
    bit_offset: int = 0
    bit_size: int = 0


@dataclass(frozen=True)
class StructLayout:
    """A struct or union: name, total size and members by name (anonymous ones flattened)."""

    name: str
    size: int
    members: dict[str, Member] = field(default_factory=dict)
    kind: str = "struct"


class BTF:
    """Parsed BTF of an ELF object; close it (or use ``with``) to free libbpf's copy."""

    def __init__(self, handle, source: str, owned: bool = True, owner: object | None = None):
        self._handle = handle
        self.source = source
        self._owned = owned
        self._owner = owner  # a BPFObject whose BTF this is

    @classmethod
    def from_elf(cls, path: str | os.PathLike) -> "BTF":
        """Parse the ``.BTF`` section of an ELF object file."""
        path = os.fspath(path)
        handle = lib.btf__parse_elf(path.encode(), ffi.NULL)
        if handle == ffi.NULL:
            raise_errno(f"btf_parse_elf {path}", ffi.errno or _errno.ENOENT)
        err = lib.libbpf_get_error(handle)
        if err:
            raise_errno(f"btf_parse_elf {path}", -err)
        return cls(handle, path)

    @classmethod
    def of_object(cls, obj) -> "BTF":
        """The BTF of an opened :class:`BPFObject` (valid while the object is open)."""
        handle = lib.bpf_object__btf(obj.handle)
        if handle == ffi.NULL:
            raise BPFError(f"btf of {obj.name}", _errno.ENOENT, "object has no BTF (compile with -g)")
        return cls(handle, obj.name, owned=False, owner=obj)

    @property
    def handle(self):
        if self._handle is None:
            raise BPFError(f"btf {self.source}", _errno.EBADF, "BTF is closed")
        return self._handle

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None and self._owned:
            lib.btf__free(handle)

    def __enter__(self) -> "BTF":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    # ---- queries --------------------------------------------------------

    def _type(self, type_id: int):
        t = lib.btf__type_by_id(self.handle, type_id)
        if t == ffi.NULL:
            raise BPFError(f"btf_type_by_id {type_id} in {self.source}", _errno.ENOENT)
        return t

    def _name(self, t) -> str:
        return ffi.string(lib.btf__name_by_offset(self.handle, t.name_off)).decode()

    def _strip(self, type_id: int) -> int:
        # Skip typedef/const/volatile to the type that has the layout.
        while True:
            t = self._type(type_id)
            if lib.btf_kind(t) not in _MODIFIERS:
                return type_id
            type_id = t.type

    def _size(self, type_id: int) -> int:
        n = lib.btf__resolve_size(self.handle, type_id)
        if n < 0:
            raise_errno(f"btf_resolve_size {type_id} in {self.source}", -n)
        return n

    def type_name(self, type_id: int) -> str:
        """The C spelling of a type's name (``struct ct_leg``, ``__u32``, ``anon``)."""
        t = self._type(type_id)
        kind = lib.btf_kind(t)
        name = self._name(t) or "anon"
        if kind == lib.BTF_KIND_STRUCT:
            return f"struct {name}"
        if kind == lib.BTF_KIND_UNION:
            return f"union {name}"
        return name

    def find_struct(self, name: str) -> int:
        """Type id of ``struct name`` (or ``union name``, or a typedef of one)."""
        for kind in (lib.BTF_KIND_STRUCT, lib.BTF_KIND_UNION, lib.BTF_KIND_TYPEDEF):
            type_id = lib.btf__find_by_name_kind(self.handle, name.encode(), kind)
            if type_id > 0:
                return type_id
        raise BPFError(f"btf_find {name} in {self.source}", _errno.ENOENT, f"no struct/union named {name!r}")

    def layout_of(self, type_id: int) -> StructLayout:
        """Layout of the type with this id (structs/unions; scalars give an empty member dict)."""
        real = self._strip(type_id)
        t = self._type(real)
        kind = lib.btf_kind(t)
        members: dict[str, Member] = {}
        if kind in _COMPOSITE:
            self._flatten(t, 0, members)
        return StructLayout(
            name=self._name(self._type(type_id)) or self._name(t),
            size=self._size(real),
            members=members,
            kind=_KIND_NAMES.get(kind, "scalar"),
        )

    def _flatten(self, t, base_bits: int, out: dict[str, Member]) -> None:
        vlen = lib.btf_vlen(t)
        kflag = lib.btf_kflag(t)
        members = lib.btf_members(t)
        for i in range(vlen):
            m = members[i]
            bit_off = base_bits + lib.btf_member_bit_offset(t, i)
            bit_size = (m.offset >> 24) if kflag else 0
            name = ffi.string(lib.btf__name_by_offset(self.handle, m.name_off)).decode()
            real = self._strip(m.type)
            mt = self._type(real)
            if not name and lib.btf_kind(mt) in _COMPOSITE:
                self._flatten(mt, bit_off, out)  # anonymous struct/union: its fields are ours
                continue
            size = (bit_size + 7) // 8 if bit_size else self._size(m.type)
            out[name] = Member(offset=bit_off // 8, size=size, type_name=self.type_name(m.type),
                               bit_offset=bit_off, bit_size=bit_size)

    def struct_layout(self, name: str) -> StructLayout:
        return self.layout_of(self.find_struct(name))


def struct_layout(source, struct_name: str) -> StructLayout:
    """Layout of ``struct struct_name`` from an ELF object path, a :class:`BTF`, or a BPFObject."""
    if isinstance(source, BTF):
        return source.struct_layout(struct_name)
    if isinstance(source, BPFObject):
        return BTF.of_object(source).struct_layout(struct_name)
    with BTF.from_elf(source) as btf:
        return btf.struct_layout(struct_name)


def map_kv_types(obj, map_name: str) -> tuple[StructLayout, StructLayout]:
    """Key and value types of a map as declared with ``__type(key, …)`` in an opened BPFObject."""
    btf = BTF.of_object(obj)
    m = obj._map_handle(map_name)
    key_id = lib.bpf_map__btf_key_type_id(m)
    value_id = lib.bpf_map__btf_value_type_id(m)
    if not key_id or not value_id:
        raise BPFError(f"map_kv_types {map_name}", _errno.ENOENT,
                       f"map {map_name!r} has no BTF key/value types")
    return btf.layout_of(key_id), btf.layout_of(value_id)
