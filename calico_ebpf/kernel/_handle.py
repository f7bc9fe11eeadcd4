"""What maps and programs share: an fd, its ownership, pinning and lifetime.

A handle either owns its fd (closed with it) or borrows it from a
:class:`~calico_ebpf.kernel.object.BPFObject`, which closes it and then
calls :meth:`FdHandle._invalidate` so a stale handle raises instead of
touching a recycled fd.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import ClassVar

from calico_ebpf.errors import BPFError
from calico_ebpf.kernel._lib import lib, raise_errno


class FdHandle:
    """Base of :class:`Map` and :class:`Program`: fd, pin/unpin, close, context manager."""

    #: What the handle is called in error messages ("map", "program").
    _kind: ClassVar[str] = "object"
    #: Extra text for the EBADF of a closed handle.
    _closed_reason: ClassVar[str] = "closed"

    name: str

    def _init_handle(self, fd: int, name: str, owned: bool, owner: object | None) -> None:
        self._fd = fd
        self.name = name
        self._owned = owned
        self._owner = owner  # keeps a BPFObject alive while its maps/programs are in use
        self._pin_path: str | None = None

    @property
    def fd(self) -> int:
        if self._fd < 0:
            raise BPFError(f"{self._kind} {self.name}", _errno.EBADF, f"{self._kind} is {self._closed_reason}")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    @property
    def pin_path(self) -> str | None:
        return self._pin_path

    def pin(self, path: str | os.PathLike) -> None:
        """Pin at ``path`` (on a bpffs)."""
        path = os.fspath(path)
        ret = lib.bpf_obj_pin(self.fd, path.encode())
        if ret < 0:
            raise_errno(f"obj_pin {self.name} at {path}", -ret)
        self._pin_path = path

    def unpin(self) -> None:
        """Remove the pin this handle was pinned at or opened from."""
        if self._pin_path is None:
            raise BPFError(f"unpin {self.name}", _errno.ENOENT, f"{self._kind} is not pinned by this handle")
        try:
            os.unlink(self._pin_path)
        except OSError as exc:
            raise BPFError(f"unpin {self.name} at {self._pin_path}", exc.errno or _errno.EIO) from None
        self._pin_path = None

    def close(self) -> None:
        """Close the fd (owned handles only; an object's maps and programs close with the object)."""
        fd, self._fd = self._fd, -1
        if fd >= 0 and self._owned:
            os.close(fd)
        self._owner = None

    def _invalidate(self) -> None:
        # Called by the owning object when it closes the fd underneath us.
        self._fd = -1
        self._owner = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if getattr(self, "_owned", False) and getattr(self, "_fd", -1) >= 0:
                os.close(self._fd)
                self._fd = -1
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
