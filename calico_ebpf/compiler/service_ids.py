"""Stable service ids: one per Service port, kept across compiles and restarts.

A service id indexes the backend map, so changing it rewrites a whole
backend block. Ids therefore survive re-applies (same key, same id), new keys
take fresh ids in sorted key order (the same input always yields the same
ids), and a restarted agent re-adopts the ids it finds in the kernel by
passing them as ``previous``. Two keys that claim one id (a corrupt map)
both get fresh ids, as Calico does.

>>> ids = ServiceIdAllocator()
>>> ids.assign(["ns/b/http/TCP", "ns/a/http/TCP"])
{'ns/a/http/TCP': 1, 'ns/b/http/TCP': 2}
>>> ids.assign(["ns/b/http/TCP", "ns/c/http/TCP"])
{'ns/b/http/TCP': 2, 'ns/c/http/TCP': 3}
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

MAX_ID = 0xFFFFFFFE  # ids are u32; keep the all-ones value out of use


class ServiceIdAllocator:
    """Keeps ``key -> id`` across compiles; ids are never 0 and are not reused until wrap-around."""

    def __init__(self, previous: Mapping[str, int] | None = None, first_id: int = 1):
        previous = dict(previous or {})
        dupes = {i for i, n in Counter(previous.values()).items() if n > 1}
        self._ids = {k: i for k, i in previous.items() if i not in dupes and first_id <= i <= MAX_ID}
        self._first = first_id
        self._next = max(self._ids.values(), default=first_id - 1) + 1

    @property
    def mapping(self) -> dict[str, int]:
        return dict(self._ids)

    def assign(self, keys: Iterable[str]) -> dict[str, int]:
        """Ids for exactly ``keys``: kept where known, fresh (in sorted key order) otherwise.

        Keys not listed are released.
        """
        wanted = set(keys)
        kept = {k: i for k, i in self._ids.items() if k in wanted}
        used = set(kept.values())
        for key in sorted(wanted - kept.keys()):
            kept[key] = self._take(used)
        self._ids = kept
        return dict(sorted(kept.items(), key=lambda kv: kv[1]))

    def _take(self, used: set[int]) -> int:
        for _ in range(MAX_ID):
            if self._next > MAX_ID:
                self._next = self._first
            candidate = self._next
            self._next += 1
            if candidate not in used:
                used.add(candidate)
                return candidate
        raise OverflowError("no free service id")
