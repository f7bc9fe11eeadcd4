"""Every Python codec layout against the C structs, via the BTF that clang
left in calico_ebpf/_bpf/layouts.o.

The Python side is derived from the numpy dtypes the codec tables generate
(``cls.__layout__.dtype``), not from a copied table: a wrong offset, size or
missing member in the tables fails here."""

from __future__ import annotations

import pytest

from calico_ebpf.kernel import btf
from calico_ebpf.maps import layout as L
from calico_ebpf.maps.entries import ALL_ENTRY_CLASSES

WITH_C_STRUCT = [c for c in ALL_ENTRY_CLASSES if c.__layout__.c_name]
# C union members the Python classes expose through another member of the union.
ALIASES = {("route_value_v4", "ifindex")}


@pytest.fixture(scope="module")
def layouts_o(bpf_objects):
    return str(bpf_objects / "layouts.o")


def _struct(obj, name):
    return btf.struct_layout(obj, name.removeprefix("struct "))


def _resolve(obj, top, path):
    """(offset, size) of a dotted C member path inside struct ``top``."""
    lay = _struct(obj, top)
    offset = 0
    parts = path.split(".")
    for i, part in enumerate(parts):
        assert part in lay.members, f"struct {lay.name} has no member {part!r} (python column {path!r})"
        m = lay.members[part]
        offset += m.offset
        if i < len(parts) - 1:
            lay = _struct(obj, m.type_name)
    return offset, m.size


def test_every_layout_with_a_c_struct_is_checked():
    names = {c.__layout__.c_name for c in WITH_C_STRUCT}
    assert {
        "nat_fe_key_v4",
        "nat_fe_value",
        "nat_be_key",
        "nat_be_value_v4",
        "nat_aff_key_v4",
        "nat_aff_value_v4",
        "ct_key_v4",
        "ct_leg",
        "ct_value_v4",
        "route_key_v4",
        "route_value_v4",
        "ipset_key_v4",
        "failsafe_key_v4",
        "ifstate_value",
        "counters_key",
        "counters_value",
        "nat_fe_key_v6",
        "nat_be_value_v6",
        "nat_aff_key_v6",
        "nat_aff_value_v6",
        "ct_key_v6",
        "ct_value_v6",
    } <= names


@pytest.mark.parametrize("cls", WITH_C_STRUCT, ids=lambda c: c.__name__)
def test_layout_matches_btf(layouts_o, cls):
    layout = cls.__layout__
    c = _struct(layouts_o, layout.c_name)
    dtype = layout.dtype
    assert dtype.itemsize == c.size == layout.size
    covered = set()
    for name, (field_dtype, offset, *_) in dtype.fields.items():
        c_off, c_size = _resolve(layouts_o, layout.c_name, name)
        assert (offset, field_dtype.itemsize) == (c_off, c_size), f"{cls.__name__} column {name}"
        covered.update(range(offset, offset + field_dtype.itemsize))
    # Every non-padding byte of the C struct (nested structs included) is represented in Python.
    for member, (lo, hi) in _required(layouts_o, layout.c_name, 0).items():
        missing = set(range(lo, hi)) - covered
        assert not missing, f"{cls.__name__}: C member {member} (bytes {sorted(missing)}) has no Python field"


def _required(obj, struct_name, base, prefix=""):
    """{member path: (start, end)} of every non-padding leaf member."""
    out = {}
    for member, m in _struct(obj, struct_name).members.items():
        if member.startswith("pad") or (struct_name, member) in ALIASES:
            continue
        if m.type_name.startswith("struct "):
            out.update(_required(obj, m.type_name, base + m.offset, f"{prefix}{member}."))
        else:
            out[prefix + member] = (base + m.offset, base + m.offset + m.size)
    return out


@pytest.mark.parametrize("cls", WITH_C_STRUCT, ids=lambda c: c.__name__)
def test_nested_struct_fields_match_their_c_type(layouts_o, cls):
    layout = cls.__layout__
    c = _struct(layouts_o, layout.c_name)
    for f in layout.fields:
        if f.vtype != L.V_STRUCT:
            continue
        m = c.members[f.name]
        assert (
            m.type_name == f"struct {f.sub.c_name}" and m.size == f.sub.size and m.offset == f.parts[0].offset
        )


def test_map_declarations_use_these_layouts(bpf_objects):
    # The datapath object declares its maps with the same structs (BTF key/value types).
    from calico_ebpf.kernel import BPFObject
    from calico_ebpf.maps import named

    obj = BPFObject.open(str(bpf_objects / "layouts.o"))
    for attr, nm in named.ALL_MAPS.items():
        k, v = btf.map_kv_types(obj, nm.spec.name)
        assert k.size == nm.spec.key.size(), attr
        assert v.size == nm.spec.value.size(), attr
        if nm.spec.key.__layout__.c_name:
            assert k.name == nm.spec.key.__layout__.c_name, attr
        if nm.spec.value.__layout__.c_name:
            assert v.name == nm.spec.value.__layout__.c_name, attr
