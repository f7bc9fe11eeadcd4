"""What changed in one kind of object between two applies, in time close to O(change).

A :class:`KindSnapshot` keeps the objects of one kind (``Service``,
``EndpointSlice``, ...) as a list in dict order. Updating a ClusterState in
place keeps that order, so the next apply compares two lists in C (identity
first, ``==`` only for replaced objects) and scans in Python only the chunks
that differ. Each object carries its key (``obj.key``, the dict key in a
ClusterState), so no key list is kept or compared. Objects appended at the
end (the usual "new object" case) keep that fast path; anything else falls
back to set arithmetic over dicts.

>>> import collections
>>> O = collections.namedtuple("O", "key v")
>>> snap = KindSnapshot()
>>> snap.update({"a": O("a", 1), "b": O("b", 2)})          # first call: no snapshot yet
>>> snap.update({"a": O("a", 1), "b": O("b", 3), "c": O("c", 4)})
{'b': (O(key='b', v=2), O(key='b', v=3)), 'c': (None, O(key='c', v=4))}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_CHUNK = 256


class KindSnapshot:
    """The objects of one kind as last applied; ``current`` maps ``obj.key`` to ``obj``."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: list | None = None

    def update(self, current: Mapping) -> dict[Any, tuple[Any, Any]] | None:
        """Take ``current`` as the new snapshot; return ``{key: (old, new)}`` for every key
        whose object was added (old None), removed (new None) or replaced by an unequal one.
        None on the first call (no snapshot to compare with)."""
        values = list(current.values())
        prev, self.values = self.values, values
        if prev is None:
            return None
        n = len(prev)
        if len(values) >= n:
            out = {}
            for i in _differing(values, prev, n):
                old, new = prev[i], values[i]
                if old.key != new.key:  # not an in-place update: the order moved
                    break
                out[new.key] = (old, new)
            else:
                for new in values[n:]:
                    out[new.key] = (None, new)
                return out
        before = {v.key: v for v in prev}
        out = {}
        for k in current.keys() ^ before.keys():
            out[k] = (before.get(k), current.get(k))
        for k in current.keys() & before.keys():
            old, new = before[k], current[k]
            if old is not new and old != new:
                out[k] = (old, new)
        return out


def _differing(a: list, b: list, n: int) -> list[int]:
    """Indices i < n where a[i] != b[i]; list comparison (C, identity shortcut) skips equal chunks."""
    if a[:n] == b if len(a) != n else a == b:
        return []
    out = []
    for lo in range(0, n, _CHUNK):
        hi = min(lo + _CHUNK, n)
        if a[lo:hi] != b[lo:hi]:
            out.extend(i for i in range(lo, hi) if a[i] is not b[i] and a[i] != b[i])
    return out
