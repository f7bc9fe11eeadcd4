"""The compiled libbpf binding, plus the helpers every kernel module shares.

Importing this module installs libbpf's print callback, which sends each
libbpf message to the ``calico_ebpf.libbpf`` logger. While a
:func:`capture_libbpf` block is active the messages are also collected, so
a failed load can put libbpf's explanation into the exception.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import logging
import threading
from collections.abc import Iterator

from calico_ebpf.errors import BPFError

try:
    from calico_ebpf.kernel._libbpf import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        "calico_ebpf.kernel._libbpf is not built; run `python setup.py build_ext --inplace` "
        "(needs libbpf-dev and a C compiler)"
    ) from exc

__all__ = ["ffi", "lib", "check", "raise_errno", "capture_libbpf", "LIBBPF_VERSION", "ENOTSUPP"]

LIBBPF_VERSION = (lib.LIBBPF_MAJOR, lib.LIBBPF_MINOR)
# Kernel-internal "not supported" errno that leaks out of some BPF syscalls
# (e.g. batch ops on map types without them); errno.errorcode has no name for it.
ENOTSUPP = 524

_log = logging.getLogger("calico_ebpf.libbpf")
# A library does not print by default: failures reach the caller as
# BPFError; applications that want libbpf's chatter configure logging.
_log.addHandler(logging.NullHandler())
_LEVELS = {lib.LIBBPF_WARN: logging.WARNING, lib.LIBBPF_INFO: logging.INFO, lib.LIBBPF_DEBUG: logging.DEBUG}
_capture = threading.local()


@ffi.def_extern()
def cebpf_py_print(level, msg):
    # Runs inside a C callback: it must never raise.
    try:
        text = ffi.string(msg).decode("utf-8", "replace").rstrip("\n")
        sink = getattr(_capture, "lines", None)
        if sink is not None and level <= lib.LIBBPF_INFO:
            sink.append(text)
        _log.log(_LEVELS.get(level, logging.DEBUG), "%s", text)
    except Exception:  # noqa: BLE001
        pass


lib.cebpf_install_print()


@contextlib.contextmanager
def capture_libbpf() -> Iterator[list[str]]:
    """Collect libbpf's warning/info messages of this thread while the block runs."""
    previous = getattr(_capture, "lines", None)
    lines: list[str] = []
    _capture.lines = lines
    try:
        yield lines
    finally:
        _capture.lines = previous


def raise_errno(op: str, err: int, message: str | None = None, verifier_log: str = "") -> None:
    """Raise BPFError for a (positive or negative) errno."""
    err = abs(err)
    if message is None and err == ENOTSUPP:
        message = "operation not supported by this kernel or map type"
    raise BPFError(op, err or _errno.EIO, message, verifier_log)


def check(ret: int, op: str) -> int:
    """Return ``ret`` when >= 0; otherwise raise BPFError for ``-ret``.

    libbpf 1.x returns ``-errno`` from its low-level calls and also sets errno;
    the return value is authoritative.
    """
    if ret < 0:
        raise_errno(op, -ret)
    return ret


def ptr_error(ptr, op: str) -> None:
    """Raise BPFError when a libbpf constructor returned NULL / an error pointer."""
    if ptr == ffi.NULL:
        raise_errno(op, ffi.errno or _errno.EINVAL)
    err = lib.libbpf_get_error(ptr)
    if err:
        raise_errno(op, -err)
