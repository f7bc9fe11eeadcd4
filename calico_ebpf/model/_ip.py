"""Lenient IP and CIDR parsing into canonical text.

Kubernetes keeps accepting legacy spellings that Python's ``ipaddress``
refuses: IPv4 octets with leading zeros (``172.30.0.041`` means 41, not
octal) and CIDRs with host bits set or stray spaces. kube-proxy parses them
as decimal and uses the canonical form, so we do the same and keep only
canonical strings inside the model.
"""

from __future__ import annotations

import ipaddress
import socket
from functools import lru_cache


def _v4_text(text: str) -> str | None:
    parts = text.split(".")
    if len(parts) != 4:
        return None
    octets = []
    for part in parts:
        # isdigit() also accepts non-ASCII digits: require plain ASCII.
        if not part or len(part) > 3 or not part.isascii() or not part.isdigit():
            return None
        value = int(part, 10)
        if value > 255:
            return None
        octets.append(str(value))
    return ".".join(octets)


def parse_ip(text: str) -> str | None:
    """Canonical text of an IPv4/IPv6 address, or None when it is not one.

    >>> parse_ip("172.30.0.041"), parse_ip("2001:DB8::1"), parse_ip("nope")
    ('172.30.0.41', '2001:db8::1', None)
    """
    text = text.strip()
    if ":" not in text:
        try:
            # Fast path: inet_pton takes strict dotted decimal only (no leading
            # zeros, four parts), which is already the canonical text.
            socket.inet_pton(socket.AF_INET, text)
            return text
        except OSError:
            return _v4_text(text)
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        return None


@lru_cache(maxsize=16384)
def parse_cidr(text: str) -> str | None:
    """Canonical ``addr/len`` of a CIDR (host bits cleared), or None.

    A bare address is taken as a host route (/32 or /128).

    >>> parse_cidr(" 203.0.113.000/025"), parse_cidr("10.0.0.0/33")
    ('203.0.113.0/25', None)
    """
    text = text.strip()
    addr_text, slash, len_text = text.partition("/")
    addr = parse_ip(addr_text)
    if addr is None:
        return None
    bits = 128 if ":" in addr else 32
    if slash:
        if not len_text.isascii() or not len_text.isdigit() or int(len_text) > bits:
            return None
        prefix = int(len_text)
    else:
        prefix = bits
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


def ip_family(addr: str) -> int:
    """4 or 6 for a canonical address or CIDR text."""
    return 6 if ":" in addr else 4
