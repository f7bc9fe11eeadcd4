"""One exception family for the whole SDK.

Every error says what it concerns: the BPF operation and errno, the
Kubernetes object and field, or the unsupported feature and why.
"""

from __future__ import annotations

import errno as _errno
import os


class CalicoEBPFError(Exception):
    """Base class of every error raised by calico_ebpf."""


class BPFError(CalicoEBPFError):
    """A BPF syscall or libbpf call failed.

    ``op`` names the operation (``"map_update_elem cali_v4_nat_be"``),
    ``errno`` is the positive errno, and ``verifier_log`` holds the tail of
    the verifier's log when a program load was refused.
    """

    def __init__(self, op: str, err: int, message: str | None = None, verifier_log: str = ""):
        self.op = op
        self.errno = abs(err)
        self.message = message or os.strerror(self.errno)
        self.verifier_log = verifier_log
        text = f"{op}: [{_errno.errorcode.get(self.errno, self.errno)}] {self.message}"
        if verifier_log:
            text += "\nverifier log (tail):\n" + verifier_log
        super().__init__(text)


class MapFullError(BPFError):
    """A write did not fit: the map has no room for the new entries."""


class ModelError(CalicoEBPFError, ValueError):
    """Bad input: names the object (``Service ns/name``), the field and why."""

    def __init__(self, obj: str, field: str, reason: str):
        self.object = obj
        self.field = field
        self.reason = reason
        super().__init__(f"{obj}: {field}: {reason}" if field else f"{obj}: {reason}")


class UnsupportedError(CalicoEBPFError):
    """A feature this dataplane does not support (SCTP, IPIP, ...), with the reason."""

    def __init__(self, feature: str, reason: str, obj: str = ""):
        self.feature = feature
        self.reason = reason
        self.object = obj
        prefix = f"{obj}: " if obj else ""
        super().__init__(f"{prefix}{feature} is not supported: {reason}")


class PreflightError(CalicoEBPFError):
    """The node cannot run the dataplane; ``reasons`` lists why."""

    def __init__(self, reasons: list[str]):
        self.reasons = list(reasons)
        super().__init__("node cannot run the eBPF dataplane:\n  - " + "\n  - ".join(self.reasons))
