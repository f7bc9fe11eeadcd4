"""BPFObject: open (file/bytes), resize, load, maps/programs by name, close, no fd leaks."""

from __future__ import annotations

import errno
import logging

import pytest

from calico_ebpf.errors import BPFError
from calico_ebpf.kernel import BPFObject, MapType, ProgType


def test_load_exposes_maps_and_programs(selftest_o):
    with BPFObject.open(selftest_o) as obj:
        obj.load()
        assert {"selftest_hits", "selftest_kv"} <= set(obj.maps)
        assert set(obj.programs) == {"selftest_rewrite", "selftest_count", "selftest_xdp"}
        hits = obj.maps["selftest_hits"]
        assert (hits.type, hits.key_size, hits.value_size, hits.max_entries) == (MapType.HASH, 4, 8, 64)
        assert hits.info.id > 0 and hits.info.name == "selftest_hits"
        assert obj.programs["selftest_xdp"].type == ProgType.XDP
        assert obj.programs["selftest_rewrite"].type == ProgType.SCHED_CLS
        assert obj.programs["selftest_rewrite"].section == "tc"


def test_open_from_bytes_with_name(selftest_o):
    with open(selftest_o, "rb") as f:
        data = f.read()
    with BPFObject.open(data, name="fromMem") as obj:
        assert obj.name == "fromMem"
        obj.load()
        assert obj.programs["selftest_count"].info.name == "selftest_count"


def test_max_entries_applied_before_load(selftest_o):
    with BPFObject.open(selftest_o, max_entries={"selftest_kv": 77}) as obj:
        obj.load()
        assert obj.maps["selftest_kv"].max_entries == 77
        assert obj.maps["selftest_kv"].info.max_entries == 77


def test_max_entries_unknown_map_names_it(selftest_o, fd_count):
    before = fd_count()
    with pytest.raises(BPFError) as ei:
        BPFObject.open(selftest_o, max_entries={"no_such_map": 5})
    assert ei.value.errno == errno.ENOENT
    assert "no_such_map" in str(ei.value)
    assert fd_count() == before


def test_maps_before_load_and_after_close_raise(selftest_o):
    obj = BPFObject.open(selftest_o)
    with pytest.raises(BPFError, match="not loaded"):
        obj.maps
    obj.load()
    hits = obj.maps["selftest_hits"]
    prog = obj.programs["selftest_count"]
    with pytest.raises(BPFError) as ei:
        obj.load()
    assert ei.value.errno == errno.EBUSY
    obj.close()
    with pytest.raises(BPFError) as ei:
        hits.lookup(b"\0" * 4)
    assert ei.value.errno == errno.EBADF and "selftest_hits" in str(ei.value)
    with pytest.raises(BPFError) as ei:
        prog.test_run(bytes(64))
    assert ei.value.errno == errno.EBADF


def test_dup_outlives_object(selftest_o):
    with BPFObject.open(selftest_o) as obj:
        obj.load()
        kept = obj.maps["selftest_hits"].dup()
    with kept:
        kept.update(b"\1\0\0\0", b"\2" + b"\0" * 7)
        assert kept.lookup(b"\1\0\0\0") == b"\2" + b"\0" * 7


def test_unknown_names_list_what_exists(selftest_o):
    with BPFObject.open(selftest_o) as obj:
        obj.load()
        with pytest.raises(KeyError, match="selftest_hits"):
            obj.maps["nope"]


def test_open_missing_file_raises_bpferror(tmp_path):
    path = str(tmp_path / "missing.o")
    with pytest.raises(BPFError) as ei:
        BPFObject.open(path)
    assert ei.value.errno == errno.ENOENT
    assert path in ei.value.op


def test_open_garbage_raises_bpferror():
    with pytest.raises(BPFError) as ei:
        BPFObject.open(b"this is not an ELF file" * 10, name="garbage")
    assert "object_open garbage" in ei.value.op


def test_libbpf_messages_reach_logging(selftest_o, caplog):
    caplog.set_level(logging.DEBUG, logger="calico_ebpf.libbpf")
    with BPFObject.open(selftest_o) as obj:
        obj.load()
    assert any(r.name == "calico_ebpf.libbpf" for r in caplog.records)


def test_no_fd_leak_over_200_cycles(selftest_o, fd_count):
    # Warm up once: libbpf caches feature probes and the kernel BTF lazily.
    with BPFObject.open(selftest_o) as obj:
        obj.load()
    before = fd_count()
    for i in range(200):
        if i % 2:
            with BPFObject.open(selftest_o) as obj:
                obj.load()
                obj.maps["selftest_hits"].update(b"\0" * 4, b"\0" * 8)
        else:
            obj = BPFObject.open(selftest_o)
            obj.load()
            obj.close()
    assert fd_count() == before
