"""Typed field readers that turn bad input into ModelError naming the field.

Parsers call these with the object label (``"Service ns1/svc1"``) and the
field path (``"spec.ports[0].port"``) so every error says exactly where the
input is wrong, whatever the depth.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from calico_ebpf.errors import ModelError
from calico_ebpf.model._ip import parse_cidr, parse_ip

_MISSING: Any = object()


def mapping(obj: str, field: str, value: Any) -> Mapping[str, Any]:
    """A mapping; None (an absent section) reads as empty."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ModelError(obj, field, f"expected a mapping, got {type(value).__name__}")
    return value


def seq(obj: str, field: str, value: Any) -> list[Any]:
    """A list; None reads as empty."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise ModelError(obj, field, f"expected a list, got {type(value).__name__}")
    return list(value)


def string(obj: str, field: str, value: Any, default: str = "") -> str:
    if value is None:
        return default
    if not isinstance(value, str):
        raise ModelError(obj, field, f"expected a string, got {value!r}")
    return value


def boolean(obj: str, field: str, value: Any, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ModelError(obj, field, f"expected true or false, got {value!r}")
    return value


def integer(obj: str, field: str, value: Any, default: Any = _MISSING, lo: int | None = None,
            hi: int | None = None) -> int:
    if value is None:
        if default is _MISSING:
            raise ModelError(obj, field, "is required")
        return default
    # bool is an int subclass; `true` is never a valid number here.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelError(obj, field, f"expected an integer, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ModelError(obj, field, f"{value} is out of range [{lo}, {hi}]")
    return value


def port(obj: str, field: str, value: Any) -> int:
    """A required TCP/UDP port number, 1..65535."""
    if value is None:
        raise ModelError(obj, field, "is required")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ModelError(obj, field, f"{value!r} is not a valid port")
    return value


def choice(obj: str, field: str, value: Any, choices: Iterable[str], default: str) -> str:
    """One of ``choices``; None and "" read as ``default`` (API server defaulting)."""
    if value is None or value == "":
        return default
    if value not in choices:
        raise ModelError(obj, field, f"{value!r} is not one of {', '.join(choices)}")
    return value


def ip(obj: str, field: str, value: Any) -> str:
    """Canonical IP text; leading zeros in IPv4 octets are decimal, as in kube-proxy."""
    canonical = parse_ip(value) if isinstance(value, str) else None
    if canonical is None:
        raise ModelError(obj, field, f"{value!r} is not a valid IP address")
    return canonical


def cidr(obj: str, field: str, value: Any) -> str:
    """Canonical CIDR text; surrounding spaces trimmed, host bits cleared."""
    canonical = parse_cidr(value) if isinstance(value, str) else None
    if canonical is None:
        raise ModelError(obj, field, f"{value!r} is not a valid CIDR")
    return canonical


def labels(obj: str, field: str, value: Any) -> dict[str, str]:
    result = {}
    for key, val in mapping(obj, field, value).items():
        result[str(key)] = string(obj, f"{field}[{key!r}]", val)
    return result
