"""BTF struct layouts, checked against known Calico sizes and against the C compiler itself."""

from __future__ import annotations

import errno
import subprocess

import pytest

from calico_ebpf.errors import BPFError
from calico_ebpf.kernel import BTF, BPFObject, map_kv_types, struct_layout

LAYOUT_STRUCTS = [
    "ct_key_v4", "ct_leg", "ct_value_v4", "ct_value_v6", "nat_fe_key_v4", "nat_fe_key_v6", "nat_fe_value",
    "nat_be_key", "nat_be_value_v4", "nat_aff_key_v4", "nat_aff_value_v4", "route_key_v4", "route_value_v4",
    "ipset_key_v4", "failsafe_key_v4", "ifstate_value", "counters_key", "counters_value",
]


@pytest.fixture(scope="module")
def layouts_o(bpf_objects) -> str:
    return str(bpf_objects / "layouts.o")


def test_ct_value_v4_layout(layouts_o):
    lay = struct_layout(layouts_o, "ct_value_v4")
    assert lay.size == 88 and lay.kind == "struct"
    m = lay.members
    assert m["tun_ip"].offset == 72 and m["tun_ip"].size == 4
    # Both arms of the anonymous union are flattened into the struct.
    assert (m["a_to_b"].offset, m["a_to_b"].size, m["a_to_b"].type_name) == (24, 24, "struct ct_leg")
    assert m["b_to_a"].offset == 48
    assert (m["nat_rev_key"].offset, m["nat_rev_key"].size) == (24, 16)
    assert m["nat_sport"].offset == 40
    assert (m["orig_ip"].offset, m["orig_port"].offset, m["orig_sport"].offset, m["orig_sip"].offset) == (
        76, 80, 82, 84)
    assert (m["type"].offset, m["flags2"].offset) == (16, 23)


def test_ct_value_v6_size(layouts_o):
    assert struct_layout(layouts_o, "ct_value_v6").size == 128


def test_layouts_match_the_c_compiler(layouts_o, tmp_path, bpf_objects):
    """Every member offset/size BTF reports equals gcc's offsetof/sizeof for the same headers."""
    from pathlib import Path

    include = Path(__file__).resolve().parents[2] / "bpf" / "include"
    lines = ["#include <stdio.h>", "#include <stddef.h>"]
    lines += [f'#include "{h.name}"' for h in sorted(include.glob("*.h")) if h.name != "maps.h"]
    lines.append("#define S(x) sizeof(((TYPE *)0)->x)")
    lines.append("int main(void) {")
    expected = []
    with BTF.from_elf(layouts_o) as btf:
        for name in LAYOUT_STRUCTS:
            lay = btf.struct_layout(name)
            lines.append(f'printf("{name} %zu\\n", sizeof(struct {name}));')
            expected.append(f"{name} {lay.size}")
            for member, info in lay.members.items():
                lines.append(f"#define TYPE struct {name}")
                lines.append(f'printf("{name}.{member} %zu %zu\\n", offsetof(TYPE, {member}), S({member}));')
                lines.append("#undef TYPE")
                expected.append(f"{name}.{member} {info.offset} {info.size}")
    lines.append("return 0; }")
    src = tmp_path / "offsets.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "offsets"
    subprocess.run(["gcc", "-I", str(include), str(src), "-o", str(exe)], check=True, capture_output=True)
    got = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split("\n")
    assert got[:-1] == expected
    assert len(expected) > 100


def test_struct_layout_from_btf_and_object(selftest_o):
    with BTF.from_elf(selftest_o) as btf:
        lay = btf.struct_layout("selftest_kv")
    assert lay.size == 8
    assert {n: (m.offset, m.size) for n, m in lay.members.items()} == {
        "id": (0, 4), "port": (4, 2), "proto": (6, 1), "pad": (7, 1)}
    with BPFObject.open(selftest_o) as obj:
        assert struct_layout(obj, "selftest_kv") == lay


def test_map_kv_types(selftest_o):
    with BPFObject.open(selftest_o) as obj:
        key, value = map_kv_types(obj, "selftest_kv")
        assert key.name == "selftest_kv" and key.size == 8 and "port" in key.members
        assert value.kind == "scalar" and value.size == 8 and value.members == {}
        with pytest.raises(BPFError):
            map_kv_types(obj, "no_such_map")


BITFIELDS = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct bits {
	__u8 tag;
	__u32 low : 4, high : 12;
	union { __u16 as_u16; struct { __u8 x, y; }; };
};
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __type(key, __u32); __type(value, struct bits);
	 __uint(max_entries, 1); } bits_map SEC(".maps");
char LICENSE[] SEC("license") = "GPL";
"""


def test_bitfields_and_nested_anonymous(compile_bpf):
    lay = struct_layout(compile_bpf(BITFIELDS, "bits"), "bits")
    # The bit fields share tag's 32-bit storage unit (bits 8-23), so the
    # 2-byte-aligned union lands at byte 4.
    assert lay.size == 8
    low, high = lay.members["low"], lay.members["high"]
    assert (low.bit_offset, low.bit_size, low.offset) == (8, 4, 1)
    assert (high.bit_offset, high.bit_size, high.offset) == (12, 12, 1)
    assert (lay.members["as_u16"].offset, lay.members["x"].offset, lay.members["y"].offset) == (4, 4, 5)


def test_missing_struct_and_file(layouts_o, tmp_path):
    with pytest.raises(BPFError) as ei:
        struct_layout(layouts_o, "no_such_struct")
    assert ei.value.errno == errno.ENOENT and "no_such_struct" in str(ei.value)
    with pytest.raises(BPFError) as ei:
        struct_layout(str(tmp_path / "absent.o"), "ct_value_v4")
    assert "btf_parse_elf" in ei.value.op
