"""Columnar path for millions of entries: numpy structured arrays that share
the C layout, so encoding and decoding are plain numpy copies.

Columns are the raw C members (names from ``cls.__layout__.dtype``; nested
structs are ``outer.inner``): addresses are integers equal to
``int(IPv4Address)``, prefix lengths and split flag bytes are as stored.

    >>> import numpy as np
    >>> from calico_ebpf.maps.nat import NatBackendValue
    >>> buf = from_columns(NatBackendValue, {"addr": np.array([0x0a000001]), "port": np.array([80])})
    >>> NatBackendValue.from_bytes(buf.tobytes())
    NatBackendValue(addr=IPv4Address('10.0.0.1'), port=80)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from calico_ebpf.errors import ModelError


def to_array(cls: type, buffer, count: int | None = None) -> np.ndarray:
    """A zero-copy structured view of ``count`` packed ``cls`` structs."""
    dtype = cls.__layout__.dtype
    mv = memoryview(buffer).cast("B")
    if count is None:
        if len(mv) % dtype.itemsize:
            raise ModelError(cls.__name__, "bytes", f"{len(mv)} bytes is not a multiple of {dtype.itemsize}")
        count = len(mv) // dtype.itemsize
    return np.frombuffer(mv, dtype=dtype, count=count)


def from_columns(cls: type, columns: Mapping[str, object], count: int | None = None) -> np.ndarray:
    """Pack columns into C structs: a flat uint8 array (zero-copy; pass it to
    ``Map.update_batch`` or call ``.tobytes()``). Missing columns are zero; a
    value that does not fit its column raises ModelError naming it.

    (A structured array with the C's out-of-order or overlapping union
    members cannot export a buffer, hence the byte view.)"""
    dtype = cls.__layout__.dtype
    if count is None:
        count = len(next(iter(columns.values()))) if columns else 0
    out = np.zeros(count, dtype=dtype)
    for name, values in columns.items():
        if name not in dtype.fields:
            raise ModelError(cls.__name__, name, f"no such column (columns: {', '.join(dtype.names)})")
        col = np.asarray(values)
        target = dtype.fields[name][0]
        if col.ndim and col.shape[0] != count:
            raise ModelError(cls.__name__, name, f"has {col.shape[0]} rows, expected {count}")
        base = target.base if target.subdtype else target
        if base.kind in "ui" and col.dtype.kind in "uib" and col.size and not np.can_cast(col.dtype, base):
            info = np.iinfo(base)
            lo, hi = col.min(), col.max()
            if lo < info.min or hi > info.max:
                raise ModelError(cls.__name__, name, f"values {lo}..{hi} do not fit {target}")
        out[name] = col
    return out.view(np.uint8)


def frame(cols: list[tuple[str, np.ndarray]]):
    """A DataFrame from ``(name, column)`` pairs with one copy per column.

    Each strided field becomes a contiguous native-endian array (byte swap
    and gather in one pass) that pandas adopts without copying; pandas'
    default block consolidation would copy everything again, which
    dominated for millions of rows. Sub-array columns (counters) become
    lists."""
    import pandas as pd

    data = {}
    for name, col in cols:
        if col.ndim > 1:
            data[name] = list(col)
        else:
            data[name] = col.astype(col.dtype.newbyteorder("="), order="C", copy=True)
    return pd.DataFrame(data, copy=False)


def to_dataframe(cls: type, buffer, count: int | None = None, columns: list[str] | None = None):
    """A pandas DataFrame with one column per C member (needs pandas).

    Addresses are ``int(IPv4Address)`` in native-endian uint32 columns."""
    arr = to_array(cls, buffer, count)
    return frame([(name, arr[name]) for name in (columns or arr.dtype.names)])
