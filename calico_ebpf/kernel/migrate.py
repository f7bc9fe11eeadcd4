"""Pinned-map lifecycle: reuse, resize (migrate the entries) or recreate a pin.

Calico's ``PinnedMap.EnsureExists`` rules, for any pinned map:

* the pin matches the wanted definition -> reused as is (state survives restarts);
* same type and key/value sizes, different ``max_entries`` or flags -> the old
  map is renamed to ``<pin>_old``, a new map is created and pinned at
  ``<pin>``, every entry is copied (batch ops), and ``<pin>_old`` is removed;
* different type or key/value size -> the old pin is deleted and the map
  recreated empty (its entries cannot be read with the new layout);
* ``<pin>_old`` present on entry -> an earlier migration died half way; the
  complete old map is restored from ``<pin>_old`` (the half-filled new pin is
  dropped) and the migration runs again.

Standalone maps::

    >>> m, res = ensure_pinned_map("/sys/fs/bpf/x/cebpf_ct",
    ...                            MapDef(MapType.LRU_HASH, 16, 88, 1_024_000, name="cebpf_ct"))
    >>> res.action, res.copied                                  # doctest: +SKIP
    ('resized', 412000)

Maps of a BPF object (so the new map is created by libbpf, with its BTF)::

    obj = BPFObject.open(path, pin_dir=d, max_entries={"cebpf_ct": 1_024_000})
    mig = prepare_object_pins(obj)     # before load: move mismatching pins aside
    obj.load()                         # libbpf creates and pins the new maps
    mig.finish(obj)                    # copy the entries over, remove the *_old pins

Programs already attached keep the map they were loaded with (they hold it by
reference, not by pin) until they are replaced by programs of the new object;
entries they write meanwhile go to the old map. ``finish(keep_old=True)``
returns the old maps so the caller can copy that delta again
(:func:`copy_entries` with ``BPF_NOEXIST``) after switching programs, as Felix
does for maps the datapath writes.
"""

from __future__ import annotations

import errno as _errno
import logging
import os
from dataclasses import dataclass, field

from calico_ebpf.errors import BPFError
from calico_ebpf.kernel._lib import ffi, lib
from calico_ebpf.kernel.map import BPF_ANY, Map, MapType
from calico_ebpf.kernel.object import BPFObject

_log = logging.getLogger("calico_ebpf.kernel.migrate")

OLD_SUFFIX = "_old"

# What ensure_pinned_map / prepare_object_pins did with a pin.
CREATED, REUSED, RESIZED, RECREATED = "created", "reused", "resized", "recreated"


@dataclass(frozen=True)
class MapDef:
    """The definition a pinned map must have."""

    type: MapType | int
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0
    name: str = ""

    @classmethod
    def of(cls, m: Map) -> MapDef:
        """The definition of an existing map."""
        return cls(m.type, m.key_size, m.value_size, m.max_entries, m.flags, m.name)


@dataclass
class MigrationResult:
    """What happened to one pin. ``copied`` counts entries moved to the new
    map; ``dropped`` those lost (layout change, or a smaller LRU map evicting)."""

    path: str
    action: str
    recovered: bool = False   # an interrupted migration was rolled back first
    copied: int = 0
    dropped: int = 0
    old_max_entries: int | None = None


def old_path(path: str | os.PathLike) -> str:
    """Where a map being migrated is kept: ``<path>_old``."""
    return os.fspath(path) + OLD_SUFFIX


def _rename(src: str, dst: str) -> None:
    # rename(2) on bpffs is atomic, so a reader of the pin directory sees the
    # old map or the new one, never no map (unlink + pin would leave a gap).
    try:
        os.rename(src, dst)
    except OSError as exc:
        raise BPFError(f"rename pin {src} -> {dst}", exc.errno or _errno.EIO) from None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise BPFError(f"unlink pin {path}", exc.errno or _errno.EIO) from None


def recover_interrupted(path: str | os.PathLike) -> bool:
    """Roll back a migration that died half way: ``<path>_old`` becomes
    ``<path>`` again. Returns whether there was anything to recover.

    ``<path>_old`` always holds a complete map (it is removed only after the
    copy finished), while ``<path>`` may be a half-filled new one."""
    path = os.fspath(path)
    old = old_path(path)
    if not os.path.exists(old):
        return False
    _log.warning("map pin %s: an earlier migration was interrupted; restoring the map from %s", path, old)
    _rename(old, path)  # replaces the half-filled new pin atomically
    return True


def _decide(info, want: MapDef) -> str:
    if int(info.type) != int(want.type) or (info.key_size, info.value_size) != (want.key_size, want.value_size):
        return RECREATED
    if info.max_entries != want.max_entries or info.flags != want.flags:
        return RESIZED
    return REUSED


def copy_entries(src: Map, dst: Map, flags: int = BPF_ANY) -> int:
    """Copy every entry of ``src`` into ``dst`` with batch ops; returns how many.

    ``flags=BPF_NOEXIST`` copies only keys ``dst`` lacks (a delta copy after
    programs switched to ``dst``): the batch goes per element then, since
    one existing key would stop a batch update."""
    keys, values, n = src.lookup_batch_all()
    if not n:
        return 0
    if flags == BPF_ANY:
        dst.update_batch(keys, values, n, flags)
        return n
    ks, vs = src.key_size, src.value_stride
    copied = 0
    for i in range(n):
        try:
            dst.update(keys[i * ks:(i + 1) * ks], values[i * vs:(i + 1) * vs], flags)
            copied += 1
        except BPFError as exc:
            if exc.errno != _errno.EEXIST:
                raise
    return copied


def _count(m: Map) -> int:
    return m.lookup_batch_all()[2]


def _move_entries(old: Map, new: Map, result: MigrationResult) -> None:
    n = copy_entries(old, new)
    # An LRU map smaller than its contents evicts silently; say how many went.
    result.copied = _count(new) if new.max_entries < n else n
    result.dropped = n - result.copied
    if result.dropped:
        _log.warning("map %s: %d of %d entries did not fit the new size %d and were dropped",
                     result.path, result.dropped, n, new.max_entries)


def ensure_pinned_map(path: str | os.PathLike, want: MapDef) -> tuple[Map, MigrationResult]:
    """Open the map pinned at ``path`` if it matches ``want``; otherwise
    migrate or recreate it (rules in the module docstring). Returns the open
    map (the caller closes it) and what was done.

    If the new map cannot take the entries (a plain hash made smaller than
    its contents), the old map is put back at ``path`` and MapFullError is raised.
    """
    path = os.fspath(path)
    recovered = recover_interrupted(path)
    if not os.path.exists(path):
        m = Map.create(want.type, want.key_size, want.value_size, want.max_entries, want.name, want.flags)
        m.pin(path)
        return m, MigrationResult(path, CREATED, recovered)
    old = Map.open_pinned(path)
    action = _decide(old.info, want)
    result = MigrationResult(path, action, recovered, old_max_entries=old.max_entries)
    if action == REUSED:
        return old, result
    if action == RECREATED:
        result.dropped = _count(old)
        _log.warning("map pin %s: layout changed (%s key %d value %d -> %s key %d value %d); "
                     "recreating it, %d entries dropped", path, old.type, old.key_size, old.value_size,
                     want.type, want.key_size, want.value_size, result.dropped)
        old.close()
        _unlink(path)
        m = Map.create(want.type, want.key_size, want.value_size, want.max_entries, want.name, want.flags)
        m.pin(path)
        return m, result
    _log.info("map pin %s: resizing %d -> %d entries", path, old.max_entries, want.max_entries)
    _rename(path, old_path(path))
    new = Map.create(want.type, want.key_size, want.value_size, want.max_entries, want.name, want.flags)
    try:
        new.pin(path)
        _move_entries(old, new, result)
    except BaseException:
        new.close()
        recover_interrupted(path)
        old.close()
        raise
    _unlink(old_path(path))
    old.close()
    return new, result


# ---- maps of a BPF object ------------------------------------------------


def _object_map_defs(obj: BPFObject) -> dict[str, tuple[str, MapDef]]:
    """``{name: (pin path, definition)}`` of the object's pinned maps (before load)."""
    out = {}
    m = lib.bpf_object__next_map(obj.handle, ffi.NULL)
    while m != ffi.NULL:
        pin = lib.bpf_map__pin_path(m)
        if pin != ffi.NULL and not lib.bpf_map__is_internal(m):
            name = ffi.string(lib.bpf_map__name(m)).decode()
            out[name] = (ffi.string(pin).decode(),
                         MapDef(MapType.of(lib.bpf_map__type(m)), lib.bpf_map__key_size(m),
                                lib.bpf_map__value_size(m), lib.bpf_map__max_entries(m),
                                lib.bpf_map__map_flags(m), name))
        m = lib.bpf_object__next_map(obj.handle, m)
    return out


@dataclass
class ObjectMigration:
    """Pins :func:`prepare_object_pins` moved aside; :meth:`finish` after load."""

    results: dict[str, MigrationResult] = field(default_factory=dict)
    _pending: dict[str, Map] = field(default_factory=dict)  # map name -> old map (pinned at *_old)

    def finish(self, obj: BPFObject, keep_old: bool = False) -> dict[str, Map]:
        """Copy each moved map's entries into the object's new map and remove
        its ``_old`` pin. With ``keep_old`` the old maps are returned open
        (unpinned) for a delta copy after programs switch; otherwise closed."""
        kept = {}
        for name, old in list(self._pending.items()):
            result = self.results[name]
            _move_entries(old, obj.maps[name], result)
            _unlink(old_path(result.path))
            del self._pending[name]
            if keep_old:
                kept[name] = old
            else:
                old.close()
        return kept

    def abort(self) -> None:
        """The load failed: put the old maps back at their pins."""
        for name, old in list(self._pending.items()):
            recover_interrupted(self.results[name].path)
            old.close()
            del self._pending[name]


def prepare_object_pins(obj: BPFObject) -> ObjectMigration:
    """Before ``obj.load()``: for each of the object's pinned maps whose pin
    no longer matches its definition, move the pin to ``<pin>_old`` (size or
    flags changed) or delete it (layout changed), so libbpf creates the map
    afresh instead of refusing the load. Then call ``finish(obj)``."""
    mig = ObjectMigration()
    for name, (path, want) in _object_map_defs(obj).items():
        recovered = recover_interrupted(path)
        if not os.path.exists(path):
            mig.results[name] = MigrationResult(path, CREATED, recovered)
            continue
        old = Map.open_pinned(path)
        action = _decide(old.info, want)
        result = MigrationResult(path, action, recovered, old_max_entries=old.max_entries)
        mig.results[name] = result
        if action == REUSED:
            old.close()
        elif action == RECREATED:
            result.dropped = _count(old)
            _log.warning("map pin %s: layout changed; recreating it, %d entries dropped", path, result.dropped)
            old.close()
            _unlink(path)
        else:
            _log.info("map pin %s: resizing %d -> %d entries", path, old.max_entries, want.max_entries)
            _rename(path, old_path(path))
            mig._pending[name] = old
    return mig
