"""The BPF filesystem: find it, mount it when asked, make and remove pin directories.

Pin directories are only ever created and removed on a bpffs, so a wrong
path cannot make :func:`remove_pin_dir` delete ordinary files.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as _errno
import os

from calico_ebpf.errors import BPFError

DEFAULT_BPFFS = "/sys/fs/bpf"
BPF_FS_MAGIC = 0xCAFE4A11


def _mounts() -> list[tuple[str, str]]:
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                # Mount points escape spaces etc. as octal (\040).
                point = parts[1].encode().decode("unicode_escape")
                out.append((point, parts[2]))
    return out


def find_bpffs() -> str | None:
    """The first bpffs mount point (preferring /sys/fs/bpf), or None."""
    points = [p for p, fstype in _mounts() if fstype == "bpf"]
    if DEFAULT_BPFFS in points:
        return DEFAULT_BPFFS
    return points[0] if points else None


def is_bpffs(path: str | os.PathLike) -> bool:
    """Whether ``path`` lies on a bpffs (checked by the filesystem magic, like libbpf)."""
    path = os.path.realpath(os.fspath(path))
    # Walk up to an existing ancestor: the directory may not exist yet.
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent
    return _statfs_type(path) == BPF_FS_MAGIC


class _Statfs(ctypes.Structure):
    # struct statfs on 64-bit Linux: f_type is the first field.
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 112)]


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _statfs_type(path: str) -> int:
    buf = _Statfs()
    if _libc().statfs(path.encode(), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise BPFError(f"statfs {path}", err)
    return buf.f_type & 0xFFFFFFFF


def ensure_bpffs(mount: bool = False, path: str = DEFAULT_BPFFS) -> str:
    """Return a bpffs mount point; with ``mount=True`` mount one at ``path`` when none exists.

    Mounting uses mount(2) directly (no shell) and needs CAP_SYS_ADMIN.
    """
    if os.path.isdir(path) and is_bpffs(path):
        return path
    found = find_bpffs()
    if found is not None and not mount:
        return found
    if not mount:
        raise BPFError("find bpffs", _errno.ENOENT,
                       f"no bpffs is mounted (expected at {path}); call ensure_bpffs(mount=True) as root")
    os.makedirs(path, exist_ok=True)
    if _libc().mount(b"bpf", path.encode(), b"bpf", 0, b"mode=0700") != 0:
        raise BPFError(f"mount bpffs at {path}", ctypes.get_errno())
    return path


def make_pin_dir(path: str | os.PathLike) -> str:
    """Create ``path`` (and parents) on a bpffs; fine if it exists. Returns the path."""
    path = os.fspath(path)
    if not is_bpffs(path):
        raise BPFError(f"make pin dir {path}", _errno.EINVAL,
                       f"{path} is not on a bpffs (mount one with ensure_bpffs(mount=True))")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise BPFError(f"make pin dir {path}", exc.errno or _errno.EIO) from None
    return path


def remove_pin_dir(path: str | os.PathLike, missing_ok: bool = True) -> None:
    """Unpin everything under ``path`` and remove the directory (bpffs only)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        if missing_ok:
            return
        raise BPFError(f"remove pin dir {path}", _errno.ENOENT)
    if not is_bpffs(path):
        raise BPFError(f"remove pin dir {path}", _errno.EINVAL,
                       f"{path} is not on a bpffs; refusing to delete")
    try:
        for root, dirs, files in os.walk(path, topdown=False):
            for name in files:
                os.unlink(os.path.join(root, name))
            for name in dirs:
                os.rmdir(os.path.join(root, name))
        os.rmdir(path)
    except OSError as exc:
        raise BPFError(f"remove pin dir {path}", exc.errno or _errno.EIO) from None
