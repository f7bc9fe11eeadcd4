"""Pinned-map lifecycle (kernel/migrate.py) on real pinned maps in a unique bpffs directory."""

from __future__ import annotations

import importlib.resources
import os

import pytest

from calico_ebpf.errors import BPFError, MapFullError
from calico_ebpf.kernel import BPFObject, Map, MapType
from calico_ebpf.kernel.migrate import (
    CREATED,
    RECREATED,
    RESIZED,
    REUSED,
    MapDef,
    ensure_pinned_map,
    old_path,
    prepare_object_pins,
)
from calico_ebpf.maps.conntrack import CtKey, CtLeg, CtValue
from calico_ebpf.maps.named import Conntrack

CT = "cebpf_ct"


def ct_def(n: int) -> MapDef:
    return MapDef(MapType.LRU_HASH, 16, 88, n, 0, CT)


def ct_entries(n: int) -> dict[bytes, bytes]:
    """``n`` entries: NORMAL flows and NAT_FWD/NAT_REV pairs, as raw bytes."""
    out = {}
    i = 0
    while len(out) < n:
        src = f"10.0.{i // 250}.{i % 250 + 1}"
        rev = CtKey.for_flow(src, 30000 + i % 30000, "10.65.0.7", 8080, "udp")
        if i % 2:
            fwd = CtKey.for_flow(src, 30000 + i % 30000, "10.96.0.10", 53, "udp")
            out[rev.to_bytes()] = CtValue.nat_rev("10.96.0.10", 53, CtLeg(packets=i), last_seen=i + 1).to_bytes()
            out[fwd.to_bytes()] = CtValue.nat_fwd(rev, last_seen=i + 1).to_bytes()
        else:
            out[rev.to_bytes()] = CtValue.normal(CtLeg(packets=i), last_seen=i + 1).to_bytes()
        i += 1
    return dict(list(out.items())[:n])


def fill(m: Map, entries: dict[bytes, bytes]) -> None:
    m.update_batch(b"".join(entries), b"".join(entries.values()), len(entries))


def contents(m: Map) -> dict[bytes, bytes]:
    return dict(m.items())


def test_missing_pin_is_created(pin_dir):
    path = os.path.join(pin_dir, CT)
    m, res = ensure_pinned_map(path, ct_def(256))
    with m:
        assert res.action == CREATED and not res.recovered
        assert Map.open_pinned(path).info.id == m.info.id


def test_matching_pin_is_reused(pin_dir):
    ct = Conntrack.create(512, pin_dir)
    fill(ct.map, ct_entries(100))
    m, res = ensure_pinned_map(Conntrack.pin_path(pin_dir), ct_def(512))
    with m:
        assert res.action == REUSED
        assert m.info.id == ct.map.info.id


def test_resize_copies_every_entry_and_programs_adopt_the_new_map(pin_dir):
    ct = Conntrack.create(1024, pin_dir)
    entries = ct_entries(1000)   # a nearly full map, NAT pairs included
    fill(ct.map, entries)
    old_id = ct.map.info.id
    ct.map.close()

    m, res = ensure_pinned_map(Conntrack.pin_path(pin_dir), ct_def(2048))
    with m:
        assert (res.action, res.copied, res.dropped, res.old_max_entries) == (RESIZED, 1000, 0, 1024)
        assert m.info.max_entries == 2048 and m.info.id != old_id
        assert contents(m) == entries
        assert not os.path.exists(old_path(Conntrack.pin_path(pin_dir)))
        # A program object opened on the pin directory with the new size re-adopts the new map.
        obj_path = str(importlib.resources.files("calico_ebpf._bpf") / "ct_cleaner.o")
        with BPFObject.open(obj_path, pin_dir=pin_dir, max_entries={CT: 2048}) as obj:
            obj.load()
            assert obj.maps[CT].info.id == m.info.id
            assert len(Conntrack(obj.maps[CT])) == 1000


def test_object_with_other_size_is_refused_without_migration_and_loads_with_it(pin_dir):
    obj_path = str(importlib.resources.files("calico_ebpf._bpf") / "ct_cleaner.o")
    entries = ct_entries(600)
    with BPFObject.open(obj_path, pin_dir=pin_dir, max_entries={CT: 1024}) as obj:
        obj.load()
        fill(obj.maps[CT], entries)
    # libbpf will not reuse a pin whose max_entries differs.
    with BPFObject.open(obj_path, pin_dir=pin_dir, max_entries={CT: 4096}) as obj, pytest.raises(BPFError):
        obj.load()
    with BPFObject.open(obj_path, pin_dir=pin_dir, max_entries={CT: 4096}) as obj:
        mig = prepare_object_pins(obj)
        assert mig.results[CT].action == RESIZED
        assert os.path.exists(old_path(os.path.join(pin_dir, CT)))
        obj.load()
        mig.finish(obj)
        assert mig.results[CT].copied == 600
        assert obj.maps[CT].max_entries == 4096
        assert contents(obj.maps[CT]) == entries
        assert Map.open_pinned(os.path.join(pin_dir, CT)).info.id == obj.maps[CT].info.id
    assert not [p for p in os.listdir(pin_dir) if p.endswith("_old")]


def test_crash_after_the_new_map_was_half_filled_recovers_from_old(pin_dir):
    path = os.path.join(pin_dir, CT)
    entries = ct_entries(800)
    # The state a crash mid-copy leaves: the complete old map at <pin>_old,
    # a new, bigger, half-filled map at <pin>.
    old = Map.create(MapType.LRU_HASH, 16, 88, 1024, CT)
    fill(old, entries)
    old.pin(old_path(path))
    half = Map.create(MapType.LRU_HASH, 16, 88, 2048, CT)
    fill(half, dict(list(entries.items())[:300]))
    half.pin(path)
    old.close()
    half.close()

    m, res = ensure_pinned_map(path, ct_def(2048))
    with m:
        assert res.recovered and res.action == RESIZED and res.copied == 800
        assert contents(m) == entries
    assert os.listdir(pin_dir) == [CT]


def test_crash_between_rename_and_new_pin_recovers(pin_dir):
    path = os.path.join(pin_dir, CT)
    entries = ct_entries(50)
    old = Map.create(MapType.LRU_HASH, 16, 88, 128, CT)
    fill(old, entries)
    old.pin(old_path(path))   # renamed aside, new map never pinned
    old.close()
    m, res = ensure_pinned_map(path, ct_def(128))
    with m:
        # The recovered map already has the wanted size: nothing else to do.
        assert res.recovered and res.action == REUSED
        assert contents(m) == entries


def test_layout_change_recreates_the_map_empty(pin_dir):
    path = os.path.join(pin_dir, CT)
    old = Map.create(MapType.LRU_HASH, 16, 80, 256, CT)   # an older, shorter value layout
    old.update(bytes(16), bytes(80))
    old.pin(path)
    old.close()
    m, res = ensure_pinned_map(path, ct_def(256))
    with m:
        assert (res.action, res.dropped) == (RECREATED, 1)
        assert m.value_size == 88 and contents(m) == {}


def test_shrinking_a_full_hash_fails_and_leaves_the_old_map(pin_dir):
    path = os.path.join(pin_dir, "h")
    old = Map.create(MapType.HASH, 4, 4, 100, "h")
    fill(old, {i.to_bytes(4, "little"): bytes(4) for i in range(100)})
    old.pin(path)
    old_id = old.info.id
    old.close()
    with pytest.raises(MapFullError):
        ensure_pinned_map(path, MapDef(MapType.HASH, 4, 4, 50, 0, "h"))
    with Map.open_pinned(path) as back:
        assert back.info.id == old_id and len(contents(back)) == 100
    assert os.listdir(pin_dir) == ["h"]


def test_generic_over_map_types_lpm(pin_dir):
    path = os.path.join(pin_dir, "lpm")
    old = Map.create(MapType.LPM_TRIE, 8, 4, 16, "lpm")
    entries = {(24).to_bytes(4, "little") + bytes([10, 0, i, 0]): i.to_bytes(4, "little") for i in range(10)}
    for k, v in entries.items():
        old.update(k, v)
    old.pin(path)
    old.close()
    m, res = ensure_pinned_map(path, MapDef(MapType.LPM_TRIE, 8, 4, 64, 1, "lpm"))
    with m:
        assert res.action == RESIZED and contents(m) == entries


def test_keep_old_allows_a_delta_copy_after_programs_switch(pin_dir):
    from calico_ebpf.kernel import BPF_NOEXIST
    from calico_ebpf.kernel.migrate import copy_entries

    obj_path = str(importlib.resources.files("calico_ebpf._bpf") / "ct_cleaner.o")
    entries = ct_entries(100)
    with BPFObject.open(obj_path, pin_dir=pin_dir, max_entries={CT: 256}) as obj:
        obj.load()
        fill(obj.maps[CT], entries)
    with BPFObject.open(obj_path, pin_dir=pin_dir, max_entries={CT: 512}) as obj:
        mig = prepare_object_pins(obj)
        obj.load()
        kept = mig.finish(obj, keep_old=True)
        with kept[CT] as old:
            assert not os.path.exists(old_path(os.path.join(pin_dir, CT)))
            # Programs still on the old map wrote a new flow and refreshed an old one meanwhile.
            later = ct_entries(101)
            new_key = next(k for k in later if k not in entries)
            old.update(new_key, later[new_key])
            some_key = next(iter(entries))
            obj.maps[CT].update(some_key, bytes(88))   # the new map's own, newer write wins
            assert copy_entries(old, obj.maps[CT], BPF_NOEXIST) == 1
        got = contents(obj.maps[CT])
        assert len(got) == 101 and got[new_key] == later[new_key] and got[some_key] == bytes(88)
