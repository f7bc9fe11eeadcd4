"""Conntrack timeouts, resolved to nanoseconds, and the rule that says when an entry expires.

Defaults and rule are Calico's (``felix/bpf/conntrack/timeouts``; see
docs/architecture.md). ``Auto`` reads the kernel's ``nf_conntrack_*``
sysctl; without the nf_conntrack module the documented Go default is used
and a log line says so.

    >>> t = ConntrackTimeouts.from_config({"UDPTimeout": "90s", "TCPFinsSeen": "30s"})
    >>> t.udp / 1e9, t.tcp_established / 1e9
    (90.0, 3600.0)

The rule is written once, vectorised (:func:`expiry_reasons`): the sweeper
runs it on a whole map read as numpy columns, and :meth:`ConntrackTimeouts.reason`
runs it on one entry. ``bpf/ct_cleaner.bpf.c`` holds the same rule for the
in-kernel sweep; tests check that the two agree.
"""

from __future__ import annotations

import enum
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np

from calico_ebpf.errors import ModelError
from calico_ebpf.maps.enums import CtFlags, CtLegFlags, CtType
from calico_ebpf.model.calico import AUTO, parse_duration

_log = logging.getLogger("calico_ebpf.dataplane.conntrack")

SECOND = 1_000_000_000
SYSCTL_DIR = "/proc/sys/net/netfilter"


class ExpiryReason(enum.IntEnum):
    """Why an entry expired (``enum ct_gc_reason`` in ``bpf/include/ct_cleaner.h``)."""

    ALIVE = 0
    TCP_SYN_SENT = 1
    TCP_ESTABLISHED = 2
    TCP_FINS_SEEN = 3
    TCP_RST_SEEN = 4
    TCP_RST_IDLE = 5
    UDP = 6
    ICMP = 7
    GENERIC = 8
    ORPHAN_FWD = 9

    @property
    def label(self) -> str:
        return self.name.lower()


# FelixConfiguration key -> (attribute, Calico default seconds, "Auto" sysctl or None).
# TCPFinsSeen defaults to Auto; 30 s is Calico's Go default when the sysctl is missing.
_FIELDS: dict[str, tuple[str, float, str | None]] = {
    "CreationGracePeriod": ("creation_grace", 10.0, None),
    "TCPSynSent": ("tcp_syn_sent", 20.0, "nf_conntrack_tcp_timeout_syn_sent"),
    "TCPEstablished": ("tcp_established", 3600.0, "nf_conntrack_tcp_timeout_established"),
    "TCPFinsSeen": ("tcp_fins_seen", 30.0, "nf_conntrack_tcp_timeout_time_wait"),
    "TCPResetSeen": ("tcp_reset_seen", 40.0, None),
    "UDPTimeout": ("udp", 60.0, None),
    "GenericTimeout": ("generic", 600.0, "nf_conntrack_generic_timeout"),
    "ICMPTimeout": ("icmp", 5.0, "nf_conntrack_icmp_timeout"),
}
_DEFAULT_AUTO = frozenset({"TCPFinsSeen"})
# The API spells keys tcpSynSent, the env var TCPSynSent: match either.
_BY_FOLDED = {k.lower(): k for k in _FIELDS}
_MODEL_ATTRS = {
    "CreationGracePeriod": "creation_grace_period", "TCPSynSent": "tcp_syn_sent",
    "TCPEstablished": "tcp_established", "TCPFinsSeen": "tcp_fins_seen", "TCPResetSeen": "tcp_reset_seen",
    "UDPTimeout": "udp_timeout", "GenericTimeout": "generic_timeout", "ICMPTimeout": "icmp_timeout",
}

# An established TCP flow that once saw a RST (rst_seen timestamp set) and
# has been idle this long is dropped: the datapath clears rst_seen only
# when traffic goes on for 2 minutes after a (spurious) RST.
RST_IDLE_NS = 120 * SECOND


def _ns(seconds: float) -> int:
    return round(seconds * SECOND)


def read_sysctl_seconds(name: str, sysctl_dir: str = SYSCTL_DIR) -> int | None:
    """An nf_conntrack timeout sysctl in seconds, or None if it is not there."""
    try:
        with open(os.path.join(sysctl_dir, name)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


@attrs.frozen(slots=True)
class ConntrackTimeouts:
    """Resolved conntrack timeouts in nanoseconds (Calico's defaults).

    Build from FelixConfiguration with :meth:`from_config`; the plain
    constructor takes nanoseconds and does no I/O (``tcp_fins_seen`` is
    then Calico's 30 s Go default rather than the sysctl).
    """

    creation_grace: int = _ns(10)
    tcp_syn_sent: int = _ns(20)
    tcp_established: int = _ns(3600)
    tcp_fins_seen: int = _ns(30)
    tcp_reset_seen: int = _ns(40)
    udp: int = _ns(60)
    generic: int = _ns(600)
    icmp: int = _ns(5)
    tcp_rst_idle: int = RST_IDLE_NS

    @classmethod
    def from_config(cls, value: Mapping[str, Any] | Any | None = None, *,
                    obj: str = "FelixConfiguration default", sysctl_dir: str = SYSCTL_DIR) -> ConntrackTimeouts:
        """From ``spec.bpfConntrackTimeouts``: a dict of Go durations / ``"Auto"``
        (keys ``TCPEstablished`` or ``tcpEstablished``), the model's
        ``calico_ebpf.model.ConntrackTimeouts``, or None for all defaults.

        Unset keys take Calico's defaults (``TCPFinsSeen`` is ``Auto``).
        Bad values raise ModelError naming ``obj`` and the field.
        """
        raw: dict[str, Any] = {}
        if value is None:
            pass
        elif isinstance(value, Mapping):
            for key, v in value.items():
                canon = _BY_FOLDED.get(str(key).lower())
                if canon is None:
                    raise ModelError(obj, f"spec.bpfConntrackTimeouts.{key}",
                                     f"is not a known timeout (known: {', '.join(_FIELDS)})")
                raw[canon] = v
        else:  # the model's parsed class: seconds or "Auto"
            for key, attr in _MODEL_ATTRS.items():
                raw[key] = getattr(value, attr)
        kwargs: dict[str, int] = {}
        for key, (attr, default_s, sysctl) in _FIELDS.items():
            field = f"spec.bpfConntrackTimeouts.{key}"
            v = raw.get(key, AUTO if key in _DEFAULT_AUTO else None)
            if v is None:
                kwargs[attr] = _ns(default_s)
            elif isinstance(v, str) and v.strip().lower() == AUTO.lower():
                kwargs[attr] = _ns(_auto(key, default_s, sysctl, sysctl_dir))
            else:
                kwargs[attr] = _ns(_seconds(obj, field, v))
        return cls(**kwargs)

    def as_seconds(self) -> dict[str, float]:
        """Every timeout in seconds, by attribute name (for logs and reports)."""
        return {a.name: getattr(self, a.name) / SECOND for a in attrs.fields(type(self))}

    def reason(self, key, value, now_ns: int, rev_value=None) -> ExpiryReason:
        """Why one entry (typed ``CtKey``/``CtValue``) has expired at ``now_ns``, or ALIVE.

        A NAT_FWD entry is decided by its NAT_REV entry ``rev_value``
        (None, or not a NAT_REV: an orphan, removed after the creation grace).
        """
        if value.type == CtType.NAT_FWD:
            if rev_value is None or rev_value.type != CtType.NAT_REV:
                age = now_ns - value.last_seen
                return ExpiryReason.ORPHAN_FWD if age > self.creation_grace else ExpiryReason.ALIVE
            return self.reason(value.nat_rev_key, rev_value, now_ns)
        r = expiry_reasons(
            self, now_ns, np.array([int(key.proto)]), np.array([value.last_seen], np.uint64),
            np.array([value.rst_seen], np.uint64), np.array([int(value.a_to_b.flags)]),
            np.array([int(value.b_to_a.flags)]), np.array([int(value.flags)]),
        )
        return ExpiryReason(int(r[0]))


def _auto(key: str, default_s: float, sysctl: str | None, sysctl_dir: str) -> float:
    if sysctl is None:
        return default_s  # no kernel counterpart: Auto means Calico's default
    seconds = read_sysctl_seconds(sysctl, sysctl_dir)
    if seconds is None:
        _log.info("conntrack timeout %s=Auto: %s/%s is missing (nf_conntrack not loaded?); using %gs",
                  key, sysctl_dir, sysctl, default_s)
        return default_s
    return float(seconds)


def _seconds(obj: str, field: str, v: Any) -> float:
    if isinstance(v, bool):
        raise ModelError(obj, field, f"{v!r} is not a duration (like 30s, 1h30m, 500ms) or Auto")
    if isinstance(v, (int, float)):
        seconds = float(v)  # the model's parsed form
    elif isinstance(v, str):
        parsed = parse_duration(v)
        if parsed is None:
            raise ModelError(obj, field, f"{v!r} is not a duration (like 30s, 1h30m, 500ms) or Auto")
        seconds = parsed
    else:
        raise ModelError(obj, field, f"{v!r} is not a duration (like 30s, 1h30m, 500ms) or Auto")
    if seconds < 0 or math.isnan(seconds):
        raise ModelError(obj, field, f"{v!r} is negative")
    return seconds


_SYN_ACK = int(CtLegFlags.SYN_SEEN | CtLegFlags.ACK_SEEN)
_FIN = int(CtLegFlags.FIN_SEEN)
_RST = int(CtLegFlags.RST_SEEN)
_DSR = int(CtFlags.DSR_FWD)


def expiry_reasons(t: ConntrackTimeouts, now_ns: int, proto, last_seen, rst_seen, a_flags, b_flags,
                   ct_flags) -> np.ndarray:
    """Vectorised expiry of NORMAL / NAT_REV entries: an ``ExpiryReason`` code (uint8) per row.

    Columns are equal-length arrays: protocol, last_seen, rst_seen (ns),
    both legs' flags and the entry's 32-bit flags (only bits 0-7 matter
    here: DSR_FWD is 0x2). Rules, first match wins, for TCP:
    a leg saw RST and idle > TCPResetSeen; FINs seen both ways (one way on
    a DSR flow) and idle > TCPFinsSeen; rst_seen timestamp set and idle >
    2 min; established (both legs SYN+ACK, or DSR) and idle >
    TCPEstablished; otherwise idle > TCPSynSent. UDP, ICMP (1, 58) and
    other protocols: idle > their timeout.
    """
    last = np.asarray(last_seen, dtype=np.uint64)
    now = np.uint64(max(0, now_ns))
    # Entries stamped "in the future" (clock skew in tests) are age 0, as in the C.
    age = np.where(last < now, now - last, np.uint64(0))
    proto = np.asarray(proto)
    a = np.asarray(a_flags, dtype=np.uint32)
    b = np.asarray(b_flags, dtype=np.uint32)
    either, both = a | b, a & b
    dsr = (np.asarray(ct_flags, dtype=np.uint32) & _DSR) != 0
    fins = np.where(dsr, (either & _FIN) != 0, (both & _FIN) != 0)
    established = dsr | ((both & _SYN_ACK) == _SYN_ACK)
    rst_ts = np.asarray(rst_seen, dtype=np.uint64) != 0

    u = np.uint64
    tcp = np.select(
        [((either & _RST) != 0) & (age > u(t.tcp_reset_seen)),
         fins & (age > u(t.tcp_fins_seen)),
         rst_ts & (age > u(t.tcp_rst_idle)),
         established & (age > u(t.tcp_established)),
         ~established & (age > u(t.tcp_syn_sent))],
        [ExpiryReason.TCP_RST_SEEN, ExpiryReason.TCP_FINS_SEEN, ExpiryReason.TCP_RST_IDLE,
         ExpiryReason.TCP_ESTABLISHED, ExpiryReason.TCP_SYN_SENT],
        ExpiryReason.ALIVE,
    )
    out = np.where(age > u(t.generic), np.uint8(ExpiryReason.GENERIC), np.uint8(0)).astype(np.uint8)
    is_tcp = proto == 6
    out[is_tcp] = tcp[is_tcp]
    is_udp = proto == 17
    out[is_udp] = np.where(age[is_udp] > u(t.udp), ExpiryReason.UDP, 0)
    is_icmp = (proto == 1) | (proto == 58)
    out[is_icmp] = np.where(age[is_icmp] > u(t.icmp), ExpiryReason.ICMP, 0)
    return out
