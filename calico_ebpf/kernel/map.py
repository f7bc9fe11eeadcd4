"""A BPF map at the bytes level: element ops, batch ops, pinning.

Keys and values are ``bytes`` (or any buffer). Batch calls pass whole
buffers to the kernel with one cffi call per chunk and no per-entry Python
work; where the kernel refuses a batch op for a map type they fall back to
per-element calls transparently.

>>> m = Map.create(MapType.HASH, 4, 8, 1024, name="demo")
>>> m.update(b"\\x01\\0\\0\\0", b"\\0" * 8)
>>> m.lookup(b"\\x01\\0\\0\\0")
b'\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00'
"""

from __future__ import annotations

import enum
import errno as _errno
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

from calico_ebpf.errors import BPFError, MapFullError
from calico_ebpf.kernel._handle import FdHandle
from calico_ebpf.kernel._lib import ENOTSUPP, ffi, lib, raise_errno

_log = logging.getLogger("calico_ebpf.kernel.map")

BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2
BPF_F_NO_PREALLOC = 1

# Errnos meaning "this map type (or kernel) has no such batch op".
_BATCH_REFUSED = frozenset({_errno.EINVAL, _errno.EOPNOTSUPP, ENOTSUPP})
_BATCH_CHUNK = 1 << 16
_LOOKUP_CHUNK = 1 << 14


class MapType(enum.IntEnum):
    """Kernel map types (``enum bpf_map_type``)."""

    UNSPEC = 0
    HASH = 1
    ARRAY = 2
    PROG_ARRAY = 3
    PERF_EVENT_ARRAY = 4
    PERCPU_HASH = 5
    PERCPU_ARRAY = 6
    STACK_TRACE = 7
    CGROUP_ARRAY = 8
    LRU_HASH = 9
    LRU_PERCPU_HASH = 10
    LPM_TRIE = 11
    ARRAY_OF_MAPS = 12
    HASH_OF_MAPS = 13
    DEVMAP = 14
    SOCKMAP = 15
    CPUMAP = 16
    XSKMAP = 17
    SOCKHASH = 18
    CGROUP_STORAGE = 19
    REUSEPORT_SOCKARRAY = 20
    PERCPU_CGROUP_STORAGE = 21
    QUEUE = 22
    STACK = 23
    SK_STORAGE = 24
    DEVMAP_HASH = 25
    STRUCT_OPS = 26
    RINGBUF = 27
    INODE_STORAGE = 28
    TASK_STORAGE = 29
    BLOOM_FILTER = 30

    @classmethod
    def of(cls, value: int) -> "MapType | int":
        """The enum member for ``value``, or the plain int for types newer than this list."""
        try:
            return cls(value)
        except ValueError:
            return value


PERCPU_TYPES = frozenset(
    {MapType.PERCPU_HASH, MapType.PERCPU_ARRAY, MapType.LRU_PERCPU_HASH, MapType.PERCPU_CGROUP_STORAGE}
)
# Types where E2BIG/ENOSPC on an update means "no room left".
_FILLABLE_TYPES = frozenset(
    {MapType.HASH, MapType.PERCPU_HASH, MapType.LPM_TRIE, MapType.HASH_OF_MAPS, MapType.DEVMAP_HASH,
     MapType.SOCKHASH}
)

_NR_CPUS: int | None = None


def nr_possible_cpus() -> int:
    """Number of possible CPUs (the stride count of per-CPU values)."""
    global _NR_CPUS
    if _NR_CPUS is None:
        n = lib.libbpf_num_possible_cpus()
        if n < 0:
            raise_errno("libbpf_num_possible_cpus", -n)
        _NR_CPUS = n
    return _NR_CPUS


@dataclass(frozen=True)
class MapInfo:
    """What the kernel reports about a map (``BPF_OBJ_GET_INFO_BY_FD``)."""

    type: MapType | int
    key_size: int
    value_size: int
    max_entries: int
    name: str
    id: int
    flags: int


def map_info_from_fd(fd: int, what: str = "map") -> MapInfo:
    info = ffi.new("struct bpf_map_info *")
    size = ffi.new("uint32_t *", ffi.sizeof("struct bpf_map_info"))
    ret = lib.bpf_obj_get_info_by_fd(fd, info, size)
    if ret < 0:
        raise_errno(f"obj_get_info_by_fd {what}", -ret)
    return MapInfo(
        type=MapType.of(info.type),
        key_size=info.key_size,
        value_size=info.value_size,
        max_entries=info.max_entries,
        name=ffi.string(info.name).decode("utf-8", "replace"),
        id=info.id,
        flags=info.map_flags,
    )


def _cbuf(data):
    # bytes go straight to cffi; anything else with the buffer protocol is
    # wrapped without copying.
    return data if type(data) is bytes else ffi.from_buffer(data)


def _nbytes(data) -> int:
    return len(data) if type(data) is bytes else memoryview(data).nbytes


class Map(FdHandle):
    """A BPF map, addressed by bytes. Owns its fd unless it belongs to a :class:`BPFObject`.

    Construct with :meth:`create`, :meth:`open_pinned`, :meth:`from_id` or
    :meth:`from_fd`; maps of a loaded object come from ``obj.maps[name]``.
    """

    _kind = "map"

    def __init__(self, fd: int, name: str, type: int, key_size: int, value_size: int, max_entries: int,
                 flags: int = 0, *, owned: bool = True, owner: object | None = None):
        self._init_handle(fd, name, owned, owner)
        self.type = MapType.of(type)
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self.flags = flags
        self.is_percpu = self.type in PERCPU_TYPES
        self.nr_cpus = nr_possible_cpus() if self.is_percpu else 1
        # Size of the value buffer the kernel reads/writes per key.
        self.value_stride = self.nr_cpus * ((value_size + 7) & ~7) if self.is_percpu else value_size
        # Batch ops this map refused once: later calls go per element at once.
        self._batch_refused: set[str] = set()

    # ---- construction -------------------------------------------------

    @classmethod
    def create(cls, type: MapType | int, key_size: int, value_size: int, max_entries: int,
               name: str = "", flags: int = 0) -> "Map":
        """Create a new map (``BPF_MAP_CREATE``). LPM tries get ``BPF_F_NO_PREALLOC``, which they require."""
        type = MapType.of(int(type))
        if type == MapType.LPM_TRIE:
            flags |= BPF_F_NO_PREALLOC
        opts = ffi.new("struct bpf_map_create_opts *")
        opts.sz = ffi.sizeof("struct bpf_map_create_opts")
        opts.map_flags = flags
        cname = name.encode()[:15] if name else ffi.NULL
        fd = lib.bpf_map_create(int(type), cname, key_size, value_size, max_entries, opts)
        if fd < 0:
            what = name or (type.name if isinstance(type, MapType) else str(type))
            raise_errno(f"map_create {what}", -fd)
        return cls(fd, name, type, key_size, value_size, max_entries, flags)

    @classmethod
    def from_fd(cls, fd: int, name: str | None = None) -> "Map":
        """Wrap an fd; the Map takes ownership and closes it."""
        info = map_info_from_fd(fd)
        return cls(fd, name or info.name, info.type, info.key_size, info.value_size, info.max_entries,
                   info.flags)

    @classmethod
    def open_pinned(cls, path: str | os.PathLike) -> "Map":
        """Open a map pinned in bpffs (``BPF_OBJ_GET``)."""
        path = os.fspath(path)
        fd = lib.bpf_obj_get(path.encode())
        if fd < 0:
            raise_errno(f"obj_get {path}", -fd)
        try:
            m = cls.from_fd(fd)
        except BPFError:
            os.close(fd)
            raise
        m._pin_path = path
        return m

    @classmethod
    def from_id(cls, map_id: int) -> "Map":
        """Open a map by its kernel id."""
        fd = lib.bpf_map_get_fd_by_id(map_id)
        if fd < 0:
            raise_errno(f"map_get_fd_by_id {map_id}", -fd)
        return cls.from_fd(fd)

    def dup(self) -> "Map":
        """An independent Map on a duplicate fd; it outlives the object this map came from."""
        try:
            fd = os.dup(self.fd)
        except OSError as exc:
            raise BPFError(f"dup map {self.name}", exc.errno or _errno.EIO) from None
        m = Map(fd, self.name, self.type, self.key_size, self.value_size, self.max_entries,
                self.flags)
        m._pin_path = self._pin_path
        return m

    # ---- properties ---------------------------------------------------

    @property
    def info(self) -> MapInfo:
        return map_info_from_fd(self.fd, self.name)

    @property
    def refused_batch_ops(self) -> frozenset[str]:
        """Batch ops (``lookup``/``update``/``delete``) the kernel refused here; they now go per element."""
        return frozenset(self._batch_refused)

    def __repr__(self) -> str:
        t = self.type.name if isinstance(self.type, MapType) else self.type
        return (f"<Map {self.name!r} {t} key={self.key_size} value={self.value_size} "
                f"max={self.max_entries}{' closed' if self.closed else ''}>")

    # ---- errors -------------------------------------------------------

    def _fail(self, op: str, err: int, message: str | None = None) -> None:
        err = abs(err)
        full = err in (_errno.E2BIG, _errno.ENOSPC) and self.type in _FILLABLE_TYPES
        if full and op.startswith("map_update"):
            raise MapFullError(f"{op} {self.name}", err,
                               message or f"map {self.name!r} is full ({self.max_entries} entries)")
        raise_errno(f"{op} {self.name}", err, message)

    def _check_key(self, key) -> None:
        if _nbytes(key) != self.key_size:
            raise ValueError(f"map {self.name!r}: key is {_nbytes(key)} bytes, expected {self.key_size}")

    # ---- element ops --------------------------------------------------

    def lookup(self, key) -> bytes | None:
        """The value stored under ``key``, or None. Per-CPU maps return all CPUs' values concatenated."""
        self._check_key(key)
        value = ffi.new("char[]", self.value_stride)
        ret = lib.bpf_map_lookup_elem(self.fd, _cbuf(key), value)
        if ret < 0:
            if ret == -_errno.ENOENT:
                return None
            self._fail("map_lookup_elem", ret)
        return ffi.buffer(value)[:]

    def update(self, key, value, flags: int = BPF_ANY) -> None:
        """Store ``value`` under ``key``. ``flags``: _log = logging.getLogger("calico_ebpf.kernel.map")

BPF_ANY, BPF_NOEXIST or BPF_EXIST."""
        self._check_key(key)
        if _nbytes(value) != self.value_stride:
            raise ValueError(
                f"map {self.name!r}: value is {_nbytes(value)} bytes, expected {self.value_stride}")
        ret = lib.bpf_map_update_elem(self.fd, _cbuf(key), _cbuf(value), flags)
        if ret < 0:
            self._fail("map_update_elem", ret)

    def delete(self, key) -> bool:
        """Delete ``key``; False when it was absent."""
        self._check_key(key)
        ret = lib.bpf_map_delete_elem(self.fd, _cbuf(key))
        if ret < 0:
            if ret == -_errno.ENOENT:
                return False
            self._fail("map_delete_elem", ret)
        return True

    def keys(self) -> Iterator[bytes]:
        """Iterate keys with ``BPF_MAP_GET_NEXT_KEY`` (a snapshot is not guaranteed)."""
        fd = self.fd
        cur = ffi.NULL
        nxt = ffi.new("char[]", self.key_size)
        while True:
            ret = lib.bpf_map_get_next_key(fd, cur, nxt)
            if ret < 0:
                if ret == -_errno.ENOENT:
                    return
                self._fail("map_get_next_key", ret)
            key = ffi.buffer(nxt)[:]
            yield key
            cur = ffi.new("char[]", key)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Iterate ``(key, value)`` pairs, skipping keys deleted while iterating."""
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                yield key, value

    def __iter__(self) -> Iterator[bytes]:
        return self.keys()

    # ---- batch ops ----------------------------------------------------

    def _batch_opts(self, flags: int):
        opts = ffi.new("struct bpf_map_batch_opts *")
        opts.sz = ffi.sizeof("struct bpf_map_batch_opts")
        opts.elem_flags = flags
        return opts

    def lookup_batch_all(self, batch_size: int | None = None) -> tuple[bytes, bytes, int]:
        """Every entry: ``(keys concatenated, values concatenated, count)``.

        Uses ``BPF_MAP_LOOKUP_BATCH`` with ``batch_size`` entries per call
        (default: up to 16384), growing the batch when a hash bucket does not
        fit (ENOSPC), and falls back to next_key + lookup where the map type
        has no batch lookup.
        """
        if "lookup" not in self._batch_refused:
            result = self._lookup_batch_all(batch_size or min(self.max_entries, _LOOKUP_CHUNK))
            if result is not None:
                return result
        keys, values, n = [], [], 0
        for k, v in self.items():
            keys.append(k)
            values.append(v)
            n += 1
        return b"".join(keys), b"".join(values), n

    def _lookup_batch_all(self, chunk: int) -> tuple[bytes, bytes, int] | None:
        fd, ks, vs = self.fd, self.key_size, self.value_stride
        chunk = max(1, chunk)
        kbuf = ffi.new("char[]", chunk * ks)
        vbuf = ffi.new("char[]", chunk * vs)
        # The batch cursor is a bucket index for hashes, a key for arrays.
        token_size = max(ks, 8)
        tokens = [ffi.new("char[]", token_size), ffi.new("char[]", token_size)]
        in_batch = ffi.NULL
        count = ffi.new("uint32_t *")
        opts = self._batch_opts(0)
        keys, values, total = [], [], 0
        while True:
            out_batch = tokens[0]
            count[0] = chunk
            ret = lib.bpf_map_lookup_batch(fd, in_batch, out_batch, kbuf, vbuf, count, opts)
            err = -ret if ret < 0 else 0
            n = count[0]
            if err == _errno.ENOSPC and n == 0:
                # One bucket holds more entries than the batch: grow and retry.
                chunk *= 2
                _log.debug("map %s: hash bucket larger than the batch, growing it to %d", self.name, chunk)
                kbuf = ffi.new("char[]", chunk * ks)
                vbuf = ffi.new("char[]", chunk * vs)
                continue
            if err in _BATCH_REFUSED and total == 0 and in_batch == ffi.NULL:
                self._batch_refused.add("lookup")
                return None
            if err not in (0, _errno.ENOENT):
                self._fail("map_lookup_batch", err)
            if n:
                keys.append(ffi.buffer(kbuf, n * ks)[:])
                values.append(ffi.buffer(vbuf, n * vs)[:])
                total += n
            if err == _errno.ENOENT:
                break
            in_batch = out_batch
            tokens.reverse()
        return b"".join(keys), b"".join(values), total

    def _batch_count(self, what: str, data, size: int, count: int | None) -> int:
        nbytes = _nbytes(data)
        if count is None:
            if nbytes % size:
                raise ValueError(
                    f"map {self.name!r}: {what} buffer of {nbytes} bytes is not a multiple of {size}")
            return nbytes // size
        if count < 0 or count * size > nbytes:
            raise ValueError(
                f"map {self.name!r}: {what} buffer of {nbytes} bytes holds fewer than {count} entries")
        return count

    def update_batch(self, keys, values, count: int | None = None, flags: int = BPF_ANY) -> None:
        """Write ``count`` entries from two packed buffers (``BPF_MAP_UPDATE_BATCH``).

        ``keys``/``values`` are any contiguous buffers (bytes, bytearray,
        memoryview, numpy arrays). Raises MapFullError when the map runs out
        of room; entries before the failing one are written.
        """
        ks, vs = self.key_size, self.value_stride
        n = self._batch_count("keys", keys, ks, count)
        if self._batch_count("values", values, vs, n) != n:  # pragma: no cover - checked above
            raise ValueError("values")
        if n == 0:
            return
        fd = self.fd
        kp = ffi.cast("char *", ffi.from_buffer(keys))
        vp = ffi.cast("char *", ffi.from_buffer(values))
        done = 0
        if "update" not in self._batch_refused:
            cnt = ffi.new("uint32_t *")
            opts = self._batch_opts(flags)
            while done < n:
                step = min(_BATCH_CHUNK, n - done)
                cnt[0] = step
                ret = lib.bpf_map_update_batch(fd, kp + done * ks, vp + done * vs, cnt, opts)
                if ret >= 0:
                    done += step
                    continue
                # A refused call leaves count untouched; a failing one sets it
                # to the number of entries written before the failure.
                processed = cnt[0] if cnt[0] < step else 0
                done += processed
                if -ret in _BATCH_REFUSED and processed == 0 and done == 0:
                    self._batch_refused.add("update")
                    break
                self._fail("map_update_batch", ret, self._partial_message(-ret, done, n))
            else:
                return
        for i in range(done, n):
            ret = lib.bpf_map_update_elem(fd, kp + i * ks, vp + i * vs, flags)
            if ret < 0:
                self._fail("map_update_elem", ret, self._partial_message(-ret, i, n))

    def _partial_message(self, err: int, done: int, total: int) -> str:
        base = os.strerror(err) if err != ENOTSUPP else "not supported"
        if err in (_errno.E2BIG, _errno.ENOSPC) and self.type in _FILLABLE_TYPES:
            base = f"map {self.name!r} is full ({self.max_entries} entries)"
        return f"{base}; {done} of {total} entries written before the failure"

    def delete_batch(self, keys, count: int | None = None) -> int:
        """Delete the keys in a packed buffer; returns how many were present and deleted."""
        ks = self.key_size
        n = self._batch_count("keys", keys, ks, count)
        if n == 0:
            return 0
        fd = self.fd
        kp = ffi.cast("char *", ffi.from_buffer(keys))
        pos = deleted = 0
        if "delete" not in self._batch_refused:
            cnt = ffi.new("uint32_t *")
            opts = self._batch_opts(0)
            while pos < n:
                step = min(_BATCH_CHUNK, n - pos)
                cnt[0] = step
                ret = lib.bpf_map_delete_batch(fd, kp + pos * ks, cnt, opts)
                if ret >= 0:
                    pos += step
                    deleted += step
                    continue
                ok = cnt[0] if cnt[0] < step else 0  # untouched count: nothing done
                pos += ok
                deleted += ok
                if ret == -_errno.ENOENT:
                    pos += 1  # the key at `pos` was absent: skip it and carry on batching
                    continue
                if -ret in _BATCH_REFUSED and ok == 0 and pos == 0:
                    self._batch_refused.add("delete")
                    break
                self._fail("map_delete_batch", ret)
            else:
                return deleted
        for i in range(pos, n):
            ret = lib.bpf_map_delete_elem(fd, kp + i * ks)
            if ret == 0:
                deleted += 1
            elif ret != -_errno.ENOENT:
                self._fail("map_delete_elem", ret)
        return deleted

    def clear(self) -> int:
        """Delete every entry; returns how many were deleted. (Array maps cannot be cleared.)"""
        keys, _, n = self.lookup_batch_all()
        return self.delete_batch(keys, n) if n else 0

    # ---- pinning and lifetime ----------------------------------------
