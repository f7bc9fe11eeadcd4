"""A BPF ELF object: open, adjust maps (size, pins), load, then use its maps and programs.

>>> with BPFObject.open(path, pin_dir="/sys/fs/bpf/calico_ebpf/node1",
...                     max_entries={"cebpf_ct": 100_000}) as obj:
...     obj.load()
...     be = obj.maps["cebpf_nat_be"]
...     prog = obj.programs["calico_tc_main"]

With ``pin_dir`` every (non-internal) map is pinned at ``pin_dir/<name>``;
when a pin already exists there, libbpf reuses that map instead of creating
a new one, so a second process (or a restarted agent) re-adopts the same
maps and their contents.
"""

from __future__ import annotations

import errno as _errno
import os
from collections.abc import Iterator, Mapping

from calico_ebpf.errors import BPFError
from calico_ebpf.kernel import bpffs
from calico_ebpf.kernel._lib import capture_libbpf, ffi, lib, ptr_error, raise_errno
from calico_ebpf.kernel.map import Map
from calico_ebpf.kernel.program import Program

# Per-program verifier log buffer. Kernels >= 6.4 keep the *tail* of the
# log when it overflows, which is the part that explains a refusal.
_LOG_BUF_SIZE = 1 << 20
_LOG_TAIL_CHARS = 6000


class _Named(Mapping):
    """Read-only dict of maps or programs, with an error that lists what exists."""

    def __init__(self, kind: str, owner: str, items: dict):
        self._kind, self._owner, self._items = kind, owner, items

    def __getitem__(self, name: str):
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"object {self._owner!r} has no {self._kind} {name!r} "
                           f"(has: {', '.join(sorted(self._items)) or 'none'})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


class BPFObject:
    """An opened (and later loaded) BPF ELF object. Closing it closes its maps and programs."""

    def __init__(self, handle, name: str, pin_dir: str | None, keepalive=None):
        self._handle = handle
        self.name = name
        self.pin_dir = pin_dir
        self._keepalive = keepalive  # the ELF bytes for open_mem objects
        self._loaded = False
        self._maps: dict[str, Map] = {}
        self._programs: dict[str, Program] = {}
        self._reused_names: dict[int, str] = {}  # map handle -> ELF name, see reuse_map

    @classmethod
    def open(cls, path_or_bytes, name: str | None = None, pin_dir: str | os.PathLike | None = None,
             max_entries: dict[str, int] | None = None) -> BPFObject:
        """Open an ELF object from a path or from its bytes. Nothing is loaded yet.

        ``max_entries`` resizes maps by name before load; ``pin_dir`` pins
        (or re-adopts) maps under that bpffs directory, creating it if needed.
        """
        opts = ffi.new("struct bpf_object_open_opts *")
        opts.sz = ffi.sizeof("struct bpf_object_open_opts")
        cname = name.encode() if name else None
        if cname:
            opts.object_name = cname_buf = ffi.new("char[]", cname)
        else:
            cname_buf = None
        keepalive = None
        if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
            keepalive = bytes(path_or_bytes)
            what = name or "<memory>"
            with capture_libbpf() as lines:
                handle = lib.bpf_object__open_mem(keepalive, len(keepalive), opts)
        else:
            path = os.fspath(path_or_bytes)
            what = path
            with capture_libbpf() as lines:
                handle = lib.bpf_object__open_file(path.encode(), opts)
        try:
            ptr_error(handle, f"object_open {what}")
        except BPFError as exc:
            if lines:
                exc.args = (exc.args[0] + "\n" + "\n".join(lines[-5:]),)
            raise
        del cname_buf  # libbpf copied the name
        obj = cls(handle, ffi.string(lib.bpf_object__name(handle)).decode(), None, keepalive)
        try:
            if max_entries:
                for map_name, n in max_entries.items():
                    obj.set_max_entries(map_name, n)
            if pin_dir is not None:
                obj.set_pin_dir(pin_dir)
        except BaseException:
            obj.close()
            raise
        return obj

    # ---- before load --------------------------------------------------

    @property
    def handle(self):
        """libbpf's ``struct bpf_object *`` (for the attach layer)."""
        if self._handle is None:
            raise BPFError(f"object {self.name}", _errno.EBADF, "object is closed")
        return self._handle

    def _map_handles(self) -> Iterator:
        m = lib.bpf_object__next_map(self.handle, ffi.NULL)
        while m != ffi.NULL:
            yield m
            m = lib.bpf_object__next_map(self._handle, m)

    def _prog_handles(self) -> Iterator:
        p = lib.bpf_object__next_program(self.handle, ffi.NULL)
        while p != ffi.NULL:
            yield p
            p = lib.bpf_object__next_program(self._handle, p)

    def _map_name(self, m) -> str:
        reused = self._reused_names.get(int(ffi.cast("uintptr_t", m)))
        return reused if reused is not None else ffi.string(lib.bpf_map__name(m)).decode()

    def _map_handle(self, name: str):
        for m in self._map_handles():
            if self._map_name(m) == name:
                return m
        raise BPFError(f"find map {name} in {self.name}", _errno.ENOENT,
                       f"object {self.name!r} has no map {name!r}")

    def map_names(self) -> list[str]:
        """Names of the object's maps (internal .data/.rodata/.bss maps included)."""
        return [self._map_name(m) for m in self._map_handles()]

    def program_names(self) -> list[str]:
        return [ffi.string(lib.bpf_program__name(p)).decode() for p in self._prog_handles()]

    def set_max_entries(self, map_name: str, n: int) -> None:
        """Resize a map before load."""
        self._require_unloaded("set_max_entries")
        ret = lib.bpf_map__set_max_entries(self._map_handle(map_name), n)
        if ret < 0:
            raise_errno(f"map_set_max_entries {map_name}", -ret)

    def set_autoload(self, prog_name: str, autoload: bool) -> None:
        """Choose whether a program is loaded (skipping ones the kernel cannot take)."""
        self._require_unloaded("set_autoload")
        for p in self._prog_handles():
            if ffi.string(lib.bpf_program__name(p)).decode() == prog_name:
                ret = lib.bpf_program__set_autoload(p, autoload)
                if ret < 0:
                    raise_errno(f"program_set_autoload {prog_name}", -ret)
                return
        raise BPFError(f"find program {prog_name} in {self.name}", _errno.ENOENT)

    def reuse_map(self, map_name: str, existing: Map) -> None:
        """Make the object's ``map_name`` *be* ``existing`` (``bpf_map__reuse_fd``) before load.

        A helper object (e.g. the conntrack cleaner) then works on another
        object's map without pinning it anywhere. libbpf dups the fd, and
        the kernel refuses the load if key/value sizes or types differ.
        """
        self._require_unloaded("reuse_map")
        handle = self._map_handle(map_name)
        ret = lib.bpf_map__reuse_fd(handle, existing.fd)
        if ret < 0:
            raise_errno(f"map_reuse_fd {map_name} <- {existing.name}", -ret)
        # libbpf renames the map after the kernel's (truncated) name of the
        # reused one; keep addressing it by the name the ELF gave it.
        self._reused_names[int(ffi.cast("uintptr_t", handle))] = map_name

    def set_pin_dir(self, pin_dir: str | os.PathLike) -> None:
        """Pin (or re-adopt) every non-internal map at ``pin_dir/<map name>`` on load."""
        self._require_unloaded("set_pin_dir")
        pin_dir = bpffs.make_pin_dir(pin_dir)
        for m in self._map_handles():
            if lib.bpf_map__is_internal(m):
                continue  # .rodata & co. are per object instance; sharing them is wrong
            path = os.path.join(pin_dir, ffi.string(lib.bpf_map__name(m)).decode())
            ret = lib.bpf_map__set_pin_path(m, path.encode())
            if ret < 0:
                raise_errno(f"map_set_pin_path {path}", -ret)
        self.pin_dir = pin_dir

    def _require_unloaded(self, op: str) -> None:
        if self._loaded:
            raise BPFError(f"{op} {self.name}", _errno.EBUSY, "object is already loaded")

    # ---- load ---------------------------------------------------------

    def load(self) -> BPFObject:
        """Create maps (or reuse pins) and load every program into the kernel.

        On refusal raises BPFError whose ``verifier_log`` holds the tail of
        the verifier's log for the program that failed.
        """
        self._require_unloaded("load")
        handle = self.handle
        log_bufs = {}
        for p in self._prog_handles():
            buf = ffi.new("char[]", _LOG_BUF_SIZE)
            # Log level stays 0: libbpf loads without a log and, only on
            # failure, retries with level 1 into this buffer.
            ret = lib.bpf_program__set_log_buf(p, buf, _LOG_BUF_SIZE)
            if ret < 0:
                raise_errno(f"program_set_log_buf {self.name}", -ret)
            log_bufs[ffi.string(lib.bpf_program__name(p)).decode()] = buf
        try:
            with capture_libbpf() as lines:
                ret = lib.bpf_object__load(handle)
            if ret < 0:
                self._raise_load_error(-ret, log_bufs, lines)
        finally:
            for p in self._prog_handles():
                lib.bpf_program__set_log_buf(p, ffi.NULL, 0)
        self._loaded = True
        self._collect()
        return self

    def _raise_load_error(self, err: int, log_bufs: dict, lines: list[str]) -> None:
        failed = [name for name, buf in log_bufs.items() if buf[0] != b"\0"]
        verifier_log = ""
        op = f"object_load {self.name}"
        if failed:
            name = failed[-1]
            op = f"prog_load {name} ({self.name})"
            text = ffi.string(log_bufs[name]).decode("utf-8", "replace")
            verifier_log = text[-_LOG_TAIL_CHARS:]
        message = os.strerror(err)
        notes = [ln for ln in lines if "BEGIN PROG LOAD LOG" not in ln][-6:]
        if notes:
            message += "\n" + "\n".join(n[:500] for n in notes)
        raise BPFError(op, err, message, verifier_log)

    def _collect(self) -> None:
        for m in self._map_handles():
            name = self._map_name(m)
            pin = lib.bpf_map__pin_path(m)
            bm = Map(lib.bpf_map__fd(m), name, lib.bpf_map__type(m), lib.bpf_map__key_size(m),
                     lib.bpf_map__value_size(m), lib.bpf_map__max_entries(m), lib.bpf_map__map_flags(m),
                     owned=False, owner=self)
            bm._pin_path = ffi.string(pin).decode() if pin != ffi.NULL else None
            self._maps[name] = bm
        for p in self._prog_handles():
            fd = lib.bpf_program__fd(p)
            if fd < 0:
                continue  # autoload disabled
            name = ffi.string(lib.bpf_program__name(p)).decode()
            self._programs[name] = Program(fd, name, lib.bpf_program__type(p),
                                           section=ffi.string(lib.bpf_program__section_name(p)).decode(),
                                           handle=p, owned=False, owner=self)

    @property
    def loaded(self) -> bool:
        return self._loaded

    @property
    def maps(self) -> Mapping[str, Map]:
        """Maps by name (after :meth:`load`)."""
        self._require_loaded("maps")
        return _Named("map", self.name, self._maps)

    @property
    def programs(self) -> Mapping[str, Program]:
        """Programs by function name (after :meth:`load`)."""
        self._require_loaded("programs")
        return _Named("program", self.name, self._programs)

    def _require_loaded(self, what: str) -> None:
        if not self._loaded:
            raise BPFError(f"{what} of {self.name}", _errno.EINVAL, "object is not loaded; call load() first")

    # ---- lifetime -----------------------------------------------------

    def close(self) -> None:
        """Close every map and program fd of the object (pins stay)."""
        for m in self._maps.values():
            m._invalidate()
        for p in self._programs.values():
            p._invalidate()
        self._maps.clear()
        self._programs.clear()
        handle, self._handle = self._handle, None
        if handle is not None:
            lib.bpf_object__close(handle)
        self._keepalive = None

    def __enter__(self) -> BPFObject:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    def __repr__(self) -> str:
        state = "closed" if self._handle is None else ("loaded" if self._loaded else "opened")
        return f"<BPFObject {self.name!r} {state}>"
