"""Pinning: Map.pin/open_pinned, BPFObject(pin_dir) re-adoption across processes, bpffs helpers."""

from __future__ import annotations

import errno
import os
import struct

import pytest

from calico_ebpf.errors import BPFError
from calico_ebpf.kernel import BPFObject, Map, MapType, bpffs


def u32(i: int) -> bytes:
    return struct.pack("<I", i)


def u64(i: int) -> bytes:
    return struct.pack("<Q", i)


def test_pin_open_unpin_same_process(pin_dir):
    path = os.path.join(pin_dir, "m")
    with Map.create(MapType.HASH, 4, 4, 8, name="pinme") as m:
        m.pin(path)
        m.update(u32(1), u32(11))
        with Map.open_pinned(path) as again:
            assert again.info.id == m.info.id
            assert again.name == "pinme" and again.pin_path == path
            assert again.lookup(u32(1)) == u32(11)
        m.unpin()
        assert not os.path.exists(path)
        with pytest.raises(BPFError) as ei:
            m.unpin()
        assert ei.value.errno == errno.ENOENT


def test_open_pinned_missing_names_path(pin_dir):
    path = os.path.join(pin_dir, "absent")
    with pytest.raises(BPFError) as ei:
        Map.open_pinned(path)
    assert ei.value.errno == errno.ENOENT and path in str(ei.value)


def test_pin_opened_by_second_process(pin_dir, run_python):
    path = os.path.join(pin_dir, "shared")
    with Map.create(MapType.HASH, 4, 4, 8, name="shared") as m:
        m.pin(path)
        m.update(u32(1), u32(100))
        out = run_python(
            "import struct\n"
            "from calico_ebpf.kernel import Map\n"
            f"m = Map.open_pinned({path!r})\n"
            "print(struct.unpack('<I', m.lookup(struct.pack('<I', 1)))[0])\n"
            "m.update(struct.pack('<I', 2), struct.pack('<I', 200))\n"
        )
        assert out.strip() == "100"
        assert m.lookup(u32(2)) == u32(200)


def test_object_pins_maps_and_readopts(selftest_o, pin_dir):
    with BPFObject.open(selftest_o, pin_dir=pin_dir) as obj:
        obj.load()
        hits = obj.maps["selftest_hits"]
        assert hits.pin_path == os.path.join(pin_dir, "selftest_hits")
        first_id = hits.info.id
        obj.programs["selftest_count"].test_run(bytes(60))
    # Only the object's own maps are pinned, not libbpf's internal ones.
    assert sorted(os.listdir(pin_dir)) == ["selftest_hits", "selftest_kv"]
    with BPFObject.open(selftest_o, pin_dir=pin_dir) as obj:
        obj.load()
        hits = obj.maps["selftest_hits"]
        assert hits.info.id == first_id
        assert hits.lookup(u32(60)) == u64(1)
        obj.programs["selftest_count"].test_run(bytes(60))
        assert hits.lookup(u32(60)) == u64(2)


def test_object_readopted_by_second_process(selftest_o, pin_dir, run_python):
    with BPFObject.open(selftest_o, pin_dir=pin_dir) as obj:
        obj.load()
        hits = obj.maps["selftest_hits"]
        hits.update(u32(7), u64(70))
        # A second process loads the same object against the same pins (an
        # agent restart) and its program counts into the map we hold.
        out = run_python(
            "import struct\n"
            "from calico_ebpf.kernel import BPFObject\n"
            f"with BPFObject.open({selftest_o!r}, pin_dir={pin_dir!r}) as o:\n"
            "    o.load()\n"
            "    h = o.maps['selftest_hits']\n"
            "    print(h.info.id, struct.unpack('<Q', h.lookup(struct.pack('<I', 7)))[0])\n"
            "    o.programs['selftest_count'].test_run(bytes(33))\n"
        )
        child_id, child_value = map(int, out.split())
        assert child_id == hits.info.id and child_value == 70
        assert hits.lookup(u32(33)) == u64(1)


def test_incompatible_pin_refused(selftest_o, pin_dir):
    with Map.create(MapType.HASH, 4, 8, 999, name="selftest_hits") as wrong:
        wrong.pin(os.path.join(pin_dir, "selftest_hits"))
    with BPFObject.open(selftest_o, pin_dir=pin_dir) as obj:
        with pytest.raises(BPFError) as ei:
            obj.load()
    assert "selftest" in ei.value.op
    assert "selftest_hits" in str(ei.value)


def test_bpffs_helpers(tmp_path):
    root = bpffs.ensure_bpffs(mount=True)  # a fresh machine may not have mounted it yet
    assert bpffs.find_bpffs() is not None
    assert bpffs.ensure_bpffs() == root
    assert bpffs.is_bpffs(root)
    assert not bpffs.is_bpffs(tmp_path)
    keep = tmp_path / "keep.txt"
    keep.write_text("not a pin")
    with pytest.raises(BPFError) as ei:
        bpffs.remove_pin_dir(tmp_path)
    assert ei.value.errno == errno.EINVAL
    assert keep.exists()
    with pytest.raises(BPFError):
        bpffs.make_pin_dir(tmp_path / "sub")
    bpffs.remove_pin_dir(os.path.join(root, "cebpf_surely_absent_dir"))  # missing_ok


def test_remove_pin_dir_removes_nested_pins(pin_dir):
    nested = bpffs.make_pin_dir(os.path.join(pin_dir, "a", "b"))
    with Map.create(MapType.ARRAY, 4, 4, 1, name="nested") as m:
        m.pin(os.path.join(nested, "m"))
    bpffs.remove_pin_dir(os.path.join(pin_dir, "a"))
    assert os.listdir(pin_dir) == []


def test_ensure_bpffs_mounts_when_asked(tmp_path, run_python):
    # In a private mount namespace of a child process, so the host is untouched.
    target = str(tmp_path / "bpffs")
    out = run_python(
        "import ctypes, os\n"
        "libc = ctypes.CDLL('libc.so.6', use_errno=True)\n"
        "assert libc.unshare(0x00020000) == 0, os.strerror(ctypes.get_errno())  # CLONE_NEWNS\n"
        "MS_REC, MS_PRIVATE = 0x4000, 0x40000\n"
        "assert libc.mount(None, b'/', None, MS_REC | MS_PRIVATE, None) == 0\n"
        "from calico_ebpf.kernel import bpffs\n"
        f"print(bpffs.is_bpffs({target!r}))\n"
        f"print(bpffs.ensure_bpffs(mount=True, path={target!r}))\n"
        f"print(bpffs.is_bpffs({target!r}))\n"
    )
    assert out.split() == ["False", target, "True"]
    assert not bpffs.is_bpffs(target)  # the mount stayed in the child's namespace
