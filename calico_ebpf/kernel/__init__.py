"""L1: libbpf through cffi — objects, programs, maps (bytes), BTF, bpffs.

Everything here raises :class:`calico_ebpf.errors.BPFError` (naming the
operation, the map or program, and the errno) rather than OSError.

>>> from calico_ebpf.kernel import BPFObject, Map, MapType
>>> m = Map.create(MapType.HASH, 4, 4, 16, name="demo")
"""

from calico_ebpf.kernel._lib import LIBBPF_VERSION
from calico_ebpf.kernel.btf import BTF, Member, StructLayout, map_kv_types, struct_layout
from calico_ebpf.kernel.map import (
    BPF_ANY,
    BPF_EXIST,
    BPF_F_NO_PREALLOC,
    BPF_NOEXIST,
    Map,
    MapInfo,
    MapType,
    nr_possible_cpus,
)
from calico_ebpf.kernel.object import BPFObject
from calico_ebpf.kernel.program import ProgInfo, Program, ProgType, TestRunResult

__all__ = [
    "BPFObject", "Map", "MapInfo", "MapType", "Program", "ProgInfo", "ProgType", "TestRunResult",
    "BTF", "StructLayout", "Member", "struct_layout", "map_kv_types", "nr_possible_cpus",
    "BPF_ANY", "BPF_NOEXIST", "BPF_EXIST", "BPF_F_NO_PREALLOC", "LIBBPF_VERSION",
]
