"""Map at the bytes level: element CRUD, batch ops on 100k entries, fallbacks, full maps."""

from __future__ import annotations

import errno
import logging
import socket
import struct

import numpy as np
import pytest

from calico_ebpf.errors import BPFError, MapFullError
from calico_ebpf.kernel import BPF_EXIST, BPF_NOEXIST, Map, MapType, nr_possible_cpus

N = 100_000


def u32(i: int) -> bytes:
    return struct.pack("<I", i)


def sorted_pairs(keys: bytes, values: bytes, ks: int, vs: int) -> list[tuple[bytes, bytes]]:
    n = len(keys) // ks
    return sorted((keys[i * ks:(i + 1) * ks], values[i * vs:(i + 1) * vs]) for i in range(n))


def test_element_crud():
    with Map.create(MapType.HASH, 4, 8, 16, name="crud") as m:
        assert m.lookup(u32(1)) is None
        m.update(u32(1), b"A" * 8)
        assert m.lookup(u32(1)) == b"A" * 8
        m.update(u32(1), b"B" * 8, BPF_EXIST)
        assert m.lookup(bytearray(u32(1))) == b"B" * 8  # any buffer works as a key
        with pytest.raises(BPFError) as ei:
            m.update(u32(1), b"C" * 8, BPF_NOEXIST)
        assert ei.value.errno == errno.EEXIST and "map_update_elem crud" in str(ei.value)
        with pytest.raises(BPFError) as ei:
            m.update(u32(2), b"C" * 8, BPF_EXIST)
        assert ei.value.errno == errno.ENOENT
        m.update(u32(2), b"C" * 8)
        assert sorted(m.keys()) == [u32(1), u32(2)]
        assert dict(m.items()) == {u32(1): b"B" * 8, u32(2): b"C" * 8}
        assert m.delete(u32(1)) is True
        assert m.delete(u32(1)) is False
        assert list(m.keys()) == [u32(2)]


def test_wrong_sizes_are_value_errors():
    with Map.create(MapType.HASH, 4, 8, 16, name="sizes") as m:
        with pytest.raises(ValueError, match="key is 3 bytes"):
            m.lookup(b"abc")
        with pytest.raises(ValueError, match="value is 4 bytes"):
            m.update(u32(1), b"abcd")
        with pytest.raises(ValueError):
            m.update_batch(b"\0" * 7, b"\0" * 8)


def test_info_matches_creation():
    with Map.create(MapType.LRU_HASH, 12, 20, 300, name="infomap") as m:
        info = m.info
        assert (info.type, info.key_size, info.value_size, info.max_entries, info.name) == (
            MapType.LRU_HASH, 12, 20, 300, "infomap")
        with Map.from_id(info.id) as again:
            assert again.info.id == info.id and again.name == "infomap"


def test_create_failure_names_map():
    with pytest.raises(BPFError) as ei:
        Map.create(MapType.HASH, 0, 8, 16, name="zerokey")
    assert ei.value.errno == errno.EINVAL and "map_create zerokey" in str(ei.value)


def test_hash_batch_100k_roundtrip():
    with Map.create(MapType.HASH, 8, 16, N, name="big") as m:
        keys = np.arange(N, dtype=np.uint64) * 7919
        values = np.stack([keys, keys ^ 0xFFFF], axis=1).astype(np.uint64)
        m.update_batch(keys, values)
        assert m.refused_batch_ops == frozenset()
        assert m.lookup(struct.pack("<Q", 5 * 7919)) == struct.pack("<QQ", 5 * 7919, (5 * 7919) ^ 0xFFFF)
        k, v, n = m.lookup_batch_all()
        assert n == N and len(k) == N * 8 and len(v) == N * 16
        got_keys = np.frombuffer(k, dtype=np.uint64)
        got_values = np.frombuffer(v, dtype=np.uint64).reshape(N, 2)
        order = np.argsort(got_keys)
        assert np.array_equal(got_keys[order], keys)
        assert np.array_equal(got_values[order], values)
        assert m.delete_batch(keys[: N // 2]) == N // 2
        assert m.lookup_batch_all()[2] == N - N // 2
        assert m.clear() == N - N // 2
        assert list(m.keys()) == []


def test_batch_accepts_any_buffer():
    with Map.create(MapType.HASH, 4, 4, 64, name="bufs") as m:
        m.update_batch(b"".join(u32(i) for i in range(4)), bytes(16))
        m.update_batch(bytearray(b"".join(u32(i) for i in range(4, 8))), bytearray(16))
        m.update_batch(memoryview(b"".join(u32(i) for i in range(8, 12))), memoryview(bytes(16)))
        m.update_batch(b"".join(u32(i) for i in range(12, 20)), bytes(40), count=5)  # count limits it
        assert sorted(m.keys()) == [u32(i) for i in range(17)]


def lpm_key(prefix_len: int, ip: str) -> bytes:
    return struct.pack("<I", prefix_len) + socket.inet_aton(ip)


def test_lpm_trie_batch_and_fallback_agree():
    keys = np.zeros((N, 2), dtype=np.uint32)
    keys[:, 0] = 32
    keys[:, 1] = np.arange(N, dtype=np.uint32).byteswap() | 0x0A  # 10.x.y.z, network order
    values = np.arange(N, dtype=np.uint32)
    results = []
    for force_fallback in (False, True):
        with Map.create(MapType.LPM_TRIE, 8, 4, N + 1, name="lpm") as m:
            if force_fallback:
                # Exercise the per-element path that kernels without LPM batch ops take.
                m._batch_refused.update({"lookup", "update", "delete"})
            m.update_batch(keys, values)
            k, v, n = m.lookup_batch_all()
            assert n == N
            results.append(sorted_pairs(k, v, 8, 4))
            # Longest-prefix semantics hold for entries written in batch.
            m.update(lpm_key(8, "10.0.0.0"), u32(0xDEAD))
            assert m.lookup(lpm_key(32, "10.255.255.255")) == u32(0xDEAD)
            assert m.delete_batch(keys) == N
            assert list(m.keys()) == [lpm_key(8, "10.0.0.0")]
    assert results[0] == results[1]


def test_percpu_hash_values_span_all_cpus():
    ncpu = nr_possible_cpus()
    with Map.create(MapType.PERCPU_HASH, 4, 4, N, name="pcpu") as m:
        assert m.is_percpu and m.nr_cpus == ncpu and m.value_stride == ncpu * 8
        keys = np.arange(N, dtype=np.uint32)
        # Per CPU slot: a 4-byte value padded to 8; put (key, cpu) in it.
        values = np.zeros((N, ncpu, 2), dtype=np.uint32)
        values[:, :, 0] = keys[:, None]
        values[:, :, 1] = np.arange(ncpu)[None, :]
        m.update_batch(keys, values)
        assert m.lookup(u32(77)) == b"".join(struct.pack("<II", 77, c) for c in range(ncpu))
        batched = m.lookup_batch_all()
        m._batch_refused.add("lookup")
        walked = m.lookup_batch_all()
        assert batched[2] == walked[2] == N
        stride = ncpu * 8
        assert sorted_pairs(*batched[:2], 4, stride) == sorted_pairs(*walked[:2], 4, stride)
        assert m.delete_batch(keys) == N


def test_refused_batch_ops_fall_back_per_element():
    # DEVMAP_HASH has no batch ops on any kernel: every call must still work.
    with Map.create(MapType.DEVMAP_HASH, 4, 4, 1024, name="devh") as m:
        keys = np.arange(1000, dtype=np.uint32)
        values = np.ones(1000, dtype=np.uint32)  # ifindex 1 (lo) is valid in every netns
        m.update_batch(keys, values)
        k, v, n = m.lookup_batch_all()
        assert n == 1000 and sorted(np.frombuffer(k, dtype=np.uint32)) == list(range(1000))
        assert set(np.frombuffer(v, dtype=np.uint32)) == {1}
        assert m.delete_batch(np.arange(500, 1500, dtype=np.uint32)) == 500
        assert m.refused_batch_ops == {"lookup", "update", "delete"}
        assert sorted(struct.unpack("<I", k)[0] for k in m.keys()) == list(range(500))


def test_lookup_batch_grows_on_full_bucket(caplog):
    caplog.set_level(logging.DEBUG, logger="calico_ebpf.kernel.map")
    with Map.create(MapType.HASH, 4, 4, 4096, name="buckets") as m:
        keys = np.arange(4096, dtype=np.uint32)
        m.update_batch(keys, keys)
        # A batch of one cannot hold a bucket of two: the kernel says ENOSPC.
        k, v, n = m.lookup_batch_all(batch_size=1)
        assert n == 4096
        assert np.array_equal(np.sort(np.frombuffer(k, dtype=np.uint32)), keys)
        assert sorted_pairs(k, v, 4, 4) == sorted((u32(i), u32(i)) for i in range(4096))
    assert any("growing it" in r.getMessage() for r in caplog.records)


def test_delete_batch_with_absent_keys_counts_present():
    with Map.create(MapType.HASH, 4, 4, 4096, name="delabs") as m:
        present = np.arange(0, 2000, 2, dtype=np.uint32)
        m.update_batch(present, present)
        assert m.delete_batch(np.arange(2000, dtype=np.uint32)) == 1000
        assert list(m.keys()) == []
        assert m.delete_batch(present) == 0


def test_full_hash_raises_map_full_naming_it():
    with Map.create(MapType.HASH, 4, 4, 10, name="tiny_be") as m:
        for i in range(10):
            m.update(u32(i), u32(i))
        with pytest.raises(MapFullError) as ei:
            m.update(u32(10), u32(10))
        assert "tiny_be" in str(ei.value) and ei.value.errno == errno.E2BIG
        m.update(u32(3), u32(33))  # replacing an existing key still works


def test_full_hash_batch_writes_prefix_then_raises():
    with Map.create(MapType.HASH, 4, 4, 10, name="tiny_batch", flags=0) as m:
        keys = np.arange(25, dtype=np.uint32)
        with pytest.raises(MapFullError) as ei:
            m.update_batch(keys, keys)
        assert "tiny_batch" in str(ei.value) and "10 of 25" in str(ei.value)
        assert sorted(struct.unpack("<I", k)[0] for k in m.keys()) == list(range(10))


def test_full_lpm_raises_map_full():
    with Map.create(MapType.LPM_TRIE, 8, 4, 4, name="tiny_lpm") as m:
        for i in range(4):
            m.update(lpm_key(32, f"10.0.0.{i}"), u32(i))
        with pytest.raises(MapFullError) as ei:
            m.update(lpm_key(32, "10.0.0.9"), u32(9))
        assert ei.value.errno == errno.ENOSPC and "tiny_lpm" in str(ei.value)


def test_closed_map_raises_ebadf(fd_count):
    before = fd_count()
    m = Map.create(MapType.ARRAY, 4, 4, 4, name="closeme")
    m.close()
    m.close()  # idempotent
    assert fd_count() == before
    with pytest.raises(BPFError) as ei:
        m.update(u32(0), u32(0))
    assert ei.value.errno == errno.EBADF
