"""A kernel map seen through typed keys and values.

Single operations go through ``to_bytes``/``from_bytes``; bulk ones through
the codec and the kernel's batch calls (which fall back to per-element calls
where the map type refuses batches)::

    >>> from calico_ebpf.kernel import Map, MapType
    >>> from calico_ebpf.maps.nat import NatBackendKey, NatBackendValue
    >>> m = TypedMap(Map.create(MapType.HASH, 8, 8, 16), NatBackendKey, NatBackendValue)
    >>> m.update_many({NatBackendKey(1, 0): NatBackendValue("10.0.0.1", 80)})
    1
    >>> m[NatBackendKey(1, 0)]
    NatBackendValue(addr=IPv4Address('10.0.0.1'), port=80)

Per-CPU maps (counters) return a list with one value per possible CPU.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

import numpy as np

from calico_ebpf.errors import ModelError
from calico_ebpf.kernel import BPF_ANY, Map
from calico_ebpf.maps import codec, columns

K = TypeVar("K")
V = TypeVar("V")

_HTML_ROWS = 20


class TypedMap(Generic[K, V]):
    """``map`` (a :class:`calico_ebpf.kernel.Map`) with keys of ``key_type``
    and values of ``value_type``; their sizes must match the map's."""

    def __init__(self, map: Map, key_type: type[K], value_type: type[V]):
        if map.key_size != key_type.size() or map.value_size != value_type.size():
            raise ModelError(
                f"map {map.name!r}",
                "key/value size",
                f"map has {map.key_size}/{map.value_size} bytes, {key_type.__name__}/{value_type.__name__} "
                f"need {key_type.size()}/{value_type.size()}",
            )
        self.map = map
        self.key_type = key_type
        self.value_type = value_type

    # ---- per-CPU helpers ----------------------------------------------

    @property
    def is_percpu(self) -> bool:
        return self.map.is_percpu

    def _decode_values(self, vbuf, n: int) -> list:
        """Values of ``n`` entries; per-CPU maps give a list per entry."""
        vt = self.value_type
        if not self.map.is_percpu:
            return codec.decode_many(vt, vbuf, n)
        if n == 0:  # an empty per-CPU dump: numpy cannot reshape a zero-length view
            return []
        cpus, size = self.map.nr_cpus, vt.size()
        stride = (size + 7) & ~7
        flat = np.frombuffer(vbuf, dtype=np.uint8, count=n * cpus * stride).reshape(n * cpus, stride)
        vals = codec.decode_many(
            vt, np.ascontiguousarray(flat[:, :size]) if stride != size else flat, n * cpus
        )
        return [vals[i * cpus : (i + 1) * cpus] for i in range(n)]

    def _encode_values(self, values: list) -> bytes | bytearray:
        vt = self.value_type
        if not self.map.is_percpu:
            return codec.encode_many(values, vt)
        cpus, size = self.map.nr_cpus, vt.size()
        stride = (size + 7) & ~7
        per_cpu = []
        for v in values:
            row = list(v) if isinstance(v, (list, tuple)) else [v] * cpus
            if len(row) != cpus:
                raise ModelError(
                    f"map {self.map.name!r}", "value", f"needs one value per CPU ({cpus}), got {len(row)}"
                )
            per_cpu.extend(row)
        raw = np.frombuffer(bytes(codec.encode_many(per_cpu, vt)), dtype=np.uint8).reshape(len(per_cpu), size)
        out = np.zeros((len(per_cpu), stride), dtype=np.uint8)
        out[:, :size] = raw
        return out.tobytes()

    # ---- single entries -----------------------------------------------

    def get(self, key: K, default=None):
        """The value for ``key`` (per-CPU maps: a list of values), or ``default``."""
        raw = self.map.lookup(self._key_bytes(key))
        return default if raw is None else self._decode_values(raw, 1)[0]

    def __getitem__(self, key: K):
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: K) -> bool:
        return self.map.lookup(self._key_bytes(key)) is not None

    def set(self, key: K, value, flags: int = BPF_ANY) -> None:
        """Write one entry (``flags``: BPF_ANY / BPF_NOEXIST / BPF_EXIST)."""
        self.map.update(self._key_bytes(key), self._encode_values([value]), flags)

    __setitem__ = set

    def delete(self, key: K) -> bool:
        """Delete ``key``; False when it was not there."""
        return self.map.delete(self._key_bytes(key))

    def __delitem__(self, key: K) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def _key_bytes(self, key: K) -> bytes:
        if type(key) is not self.key_type:
            raise TypeError(
                f"map {self.map.name!r}: expected a {self.key_type.__name__} key, got {type(key).__name__}"
            )
        return key.to_bytes()

    # ---- bulk ---------------------------------------------------------

    def raw_items(self) -> tuple[bytes, bytes, int]:
        """``(keys, values, count)`` as packed bytes (one batch walk)."""
        return self.map.lookup_batch_all()

    def items(self) -> list[tuple[K, V]]:
        """Every entry, decoded in bulk."""
        kbuf, vbuf, n = self.map.lookup_batch_all()
        if not self.map.is_percpu:
            return codec.decode_items(self.key_type, self.value_type, kbuf, vbuf, n)
        return list(zip(codec.decode_many(self.key_type, kbuf, n), self._decode_values(vbuf, n)))

    def keys(self) -> list[K]:
        kbuf, _, n = self.map.lookup_batch_all()
        return codec.decode_many(self.key_type, kbuf, n)

    def values(self) -> list:
        _, vbuf, n = self.map.lookup_batch_all()
        return self._decode_values(vbuf, n)

    def to_dict(self) -> dict[K, V]:
        return dict(self.items())

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return self.map.lookup_batch_all()[2]

    def update_many(self, entries: Mapping[K, V] | Iterable[tuple[K, V]], flags: int = BPF_ANY) -> int:
        """Write many entries with batch updates; returns how many."""
        pairs = list(entries.items()) if isinstance(entries, Mapping) else list(entries)
        if not pairs:
            return 0
        keys = [k for k, _ in pairs]
        vals = [v for _, v in pairs]
        self.map.update_batch(
            codec.encode_many(keys, self.key_type), self._encode_values(vals), len(pairs), flags
        )
        return len(pairs)

    def update_columns(
        self, key_columns: Mapping[str, object], value_columns: Mapping[str, object], flags: int = BPF_ANY
    ) -> int:
        """Write entries given as raw columns (see :mod:`calico_ebpf.maps.columns`)."""
        if self.map.is_percpu:
            raise ModelError(
                f"map {self.map.name!r}", "columns", "per-CPU maps take values per CPU: use update_many"
            )
        kb = columns.from_columns(self.key_type, key_columns)
        n = len(kb) // self.key_type.size()
        vb = columns.from_columns(self.value_type, value_columns, n)
        self.map.update_batch(kb, vb, n, flags)
        return n

    def delete_many(self, keys: Iterable[K]) -> int:
        """Delete keys with batch deletes; returns how many existed."""
        keys = list(keys)
        if not keys:
            return 0
        return self.map.delete_batch(codec.encode_many(keys, self.key_type), len(keys))

    def clear(self) -> int:
        return self.map.clear()

    # ---- tables -------------------------------------------------------

    def to_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Keys and values as structured numpy arrays (per-CPU values summed)."""
        kbuf, vbuf, n = self.map.lookup_batch_all()
        return columns.to_array(self.key_type, kbuf, n), self._value_array(vbuf, n)

    def _value_array(self, vbuf, n: int) -> np.ndarray:
        vt = self.value_type
        if not self.map.is_percpu:
            return columns.to_array(vt, vbuf, n)
        cpus, size = self.map.nr_cpus, vt.size()
        stride = (size + 7) & ~7
        flat = np.frombuffer(vbuf, dtype=np.uint8, count=n * cpus * stride).reshape(n, cpus, stride)[
            :, :, :size
        ]
        per_cpu = np.ascontiguousarray(flat).view(vt.__layout__.dtype).reshape(n, cpus)
        summed = np.zeros(n, dtype=vt.__layout__.dtype)
        for name in vt.__layout__.dtype.names:
            summed[name] = per_cpu[name].sum(axis=1)
        return summed

    def to_pandas(self):
        """A DataFrame with the raw C columns of keys then values (per-CPU
        values summed; addresses as ``int(IPv4Address)``).
        Clashing names get ``key.``/``value.`` prefixes."""
        karr, varr = self.to_arrays()
        knames, vnames = set(karr.dtype.names), set(varr.dtype.names)
        cols = [("key." + n if n in vnames else n, karr[n]) for n in karr.dtype.names]
        cols += [("value." + n if n in knames else n, varr[n]) for n in varr.dtype.names]
        return columns.frame(cols)

    def __repr__(self) -> str:
        return f"<TypedMap {self.map.name!r} {self.key_type.__name__} -> {self.value_type.__name__}>"

    def _repr_html_(self) -> str:
        # Decode only the rows shown: a notebook may display a million-entry map.
        kbuf, vbuf, n = self.map.lookup_batch_all()
        shown = min(n, _HTML_ROWS)
        keys = codec.decode_many(self.key_type, kbuf, shown)
        vals = self._decode_values(vbuf, shown)
        rows = "".join(
            f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
            for k, v in zip(keys, vals)
        )
        more = f"<tr><td colspan=2>… {n - shown} more</td></tr>" if n > shown else ""
        return (
            f"<table><caption>{html.escape(self.map.name)}: {n} entries</caption>"
            f"<tr><th>{self.key_type.__name__}</th><th>{self.value_type.__name__}</th></tr>{rows}{more}</table>"
        )
