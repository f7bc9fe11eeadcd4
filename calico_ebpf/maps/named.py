"""The dataplane's maps by name: each knows its BPF name, map type, key and
value classes and default size, and opens from our pin directory or from a
Calico node's pins::

    >>> import tempfile
    >>> be = NatBackends.create()              # a fresh, unpinned map
    >>> be.update_many({NatBackendKey(1, 0): NatBackendValue("10.65.0.2", 8080)})
    1
    >>> NatFrontends.calico_pin_path()
    '/sys/fs/bpf/tc/globals/cali_v4_nat_fe3'

:class:`NodeMaps` opens (lazily) every map of one dataplane pin directory.
"""

from __future__ import annotations

import os
import socket
from typing import ClassVar

import attrs

from calico_ebpf.errors import UnsupportedError
from calico_ebpf.kernel import BPF_F_NO_PREALLOC, Map, MapType
from calico_ebpf.maps.conntrack import CtKey, CtValue
from calico_ebpf.maps.counters import CalicoCountersValue, CountersKey, CountersValue
from calico_ebpf.maps.failsafes import FailsafeKey
from calico_ebpf.maps.ifstate import IfStateKey, IfStateValue
from calico_ebpf.maps.ipsets import IPSetKey, U32Value
from calico_ebpf.maps.nat import (
    NatAffinityKey,
    NatAffinityValue,
    NatBackendKey,
    NatBackendValue,
    NatFrontendHashKey,
    NatFrontendKey,
    NatFrontendValue,
)
from calico_ebpf.maps.routes import RouteKey, RouteValue
from calico_ebpf.maps.typed import TypedMap

DEFAULT_PIN_ROOT = "/sys/fs/bpf/calico_ebpf"
CALICO_PIN_DIR = "/sys/fs/bpf/tc/globals"


def default_pin_dir(node: str | None = None) -> str:
    """``/sys/fs/bpf/calico_ebpf/<node>`` (node defaults to the hostname)."""
    return os.path.join(DEFAULT_PIN_ROOT, node or socket.gethostname())


@attrs.frozen
class MapSpec:
    """What defines one of the dataplane's maps."""

    name: str  # our BPF name and pin file name
    calico_name: str | None  # Calico's pinned name (v4); None: Calico has no such map
    type: MapType
    key: type
    value: type
    max_entries: int
    calico_value: type | None = None  # when Calico's value layout differs from ours
    flags: int = 0  # map_flags as in bpf/include/maps.h (LPM tries always get NO_PREALLOC)


class NamedMap(TypedMap):
    """A :class:`TypedMap` whose layout and name are fixed by ``spec``."""

    spec: ClassVar[MapSpec]

    def __init__(self, map: Map, value_type: type | None = None):
        super().__init__(map, self.spec.key, value_type or self.spec.value)

    @classmethod
    def pin_path(cls, pin_dir: str | os.PathLike) -> str:
        return os.path.join(os.fspath(pin_dir), cls.spec.name)

    @classmethod
    def calico_pin_path(cls, pin_dir: str | os.PathLike = CALICO_PIN_DIR) -> str:
        if cls.spec.calico_name is None:
            raise UnsupportedError(f"{cls.__name__} on a Calico node", "Calico has no such map")
        return os.path.join(os.fspath(pin_dir), cls.spec.calico_name)

    @classmethod
    def open(cls, pin_dir: str | os.PathLike):
        """Open ``<pin_dir>/<name>`` (our dataplane's pins)."""
        return cls(Map.open_pinned(cls.pin_path(pin_dir)))

    @classmethod
    def open_calico(cls, pin_dir: str | os.PathLike = CALICO_PIN_DIR):
        """Open a Calico node's pinned map (e.g. ``cali_v4_nat_fe3``)."""
        return cls(Map.open_pinned(cls.calico_pin_path(pin_dir)), cls.spec.calico_value)

    @classmethod
    def create(cls, max_entries: int | None = None, pin_dir: str | os.PathLike | None = None):
        """Create a new map with this spec (pinned at ``<pin_dir>/<name>`` if given)."""
        spec = cls.spec
        m = Map.create(
            spec.type,
            spec.key.size(),
            spec.value.size(),
            max_entries or spec.max_entries,
            name=spec.name,
            flags=spec.flags,
        )
        if pin_dir is not None:
            os.makedirs(pin_dir, exist_ok=True)
            m.pin(cls.pin_path(pin_dir))
        return cls(m)


class NatFrontends(NamedMap):
    spec = MapSpec(
        "cebpf_nat_fe", "cali_v4_nat_fe3", MapType.LPM_TRIE, NatFrontendKey, NatFrontendValue, 65536
    )


class NatFrontendsHash(NamedMap):
    """Exact-match frontends (ours; Calico has only the LPM map)."""

    spec = MapSpec(
        "cebpf_nat_feh",
        None,
        MapType.HASH,
        NatFrontendHashKey,
        NatFrontendValue,
        65536,
        flags=BPF_F_NO_PREALLOC,
    )


class NatBackends(NamedMap):
    spec = MapSpec(
        "cebpf_nat_be",
        "cali_v4_nat_be",
        MapType.HASH,
        NatBackendKey,
        NatBackendValue,
        262144,
        flags=BPF_F_NO_PREALLOC,
    )


class NatAffinity(NamedMap):
    spec = MapSpec(
        "cebpf_nat_aff", "cali_v4_nat_aff", MapType.LRU_HASH, NatAffinityKey, NatAffinityValue, 65536
    )


class Conntrack(NamedMap):
    spec = MapSpec("cebpf_ct", "cali_v4_ct4", MapType.LRU_HASH, CtKey, CtValue, 512000)

    def records(self, include_fwd: bool = False, now_ns: int | None = None) -> list:
        """Entries as :class:`~calico_ebpf.maps.ct_records.CtRecord` (what
        ``calico-bpf conntrack dump`` shows); NAT_FWD stubs only if asked."""
        from calico_ebpf.maps.ct_records import records

        return records(self.items(), include_fwd=include_fwd, now_ns=now_ns)

    def to_pandas(self):
        """Raw columns plus readable ones (see :func:`ct_records.dataframe`)."""
        from calico_ebpf.maps.ct_records import dataframe

        kbuf, vbuf, n = self.map.lookup_batch_all()
        return dataframe(kbuf, vbuf, n)


class Routes(NamedMap):
    spec = MapSpec("cebpf_routes", "cali_v4_routes", MapType.LPM_TRIE, RouteKey, RouteValue, 262144)


class IPSets(NamedMap):
    spec = MapSpec("cebpf_ipsets", "cali_v4_ip_sets", MapType.LPM_TRIE, IPSetKey, U32Value, 1048576)


class Failsafes(NamedMap):
    spec = MapSpec("cebpf_fsafes", "cali_v4_fsafes2", MapType.LPM_TRIE, FailsafeKey, U32Value, 65536)


class IfState(NamedMap):
    spec = MapSpec(
        "cebpf_ifstate", "cali_iface4", MapType.HASH, IfStateKey, IfStateValue, 1000, flags=BPF_F_NO_PREALLOC
    )


class Counters(NamedMap):
    spec = MapSpec(
        "cebpf_counters",
        "cali_counters6",
        MapType.PERCPU_HASH,
        CountersKey,
        CountersValue,
        20000,
        calico_value=CalicoCountersValue,
    )

    def totals(self) -> dict:
        """``{CountersKey: value summed over CPUs}``."""
        return {k: self.value_type.total(per_cpu) for k, per_cpu in self.items()}


ALL_MAPS: dict[str, type[NamedMap]] = {
    "nat_frontends": NatFrontends,
    "nat_frontends_hash": NatFrontendsHash,
    "nat_backends": NatBackends,
    "nat_affinity": NatAffinity,
    "conntrack": Conntrack,
    "routes": Routes,
    "ipsets": IPSets,
    "failsafes": Failsafes,
    "ifstate": IfState,
    "counters": Counters,
}


class NodeMaps:
    """Every map of one dataplane instance, opened on first use from
    ``pin_dir`` (ours) or, with ``calico=True``, from a Calico node's pins.

    >>> maps = NodeMaps("/sys/fs/bpf/calico_ebpf/node-1")   # doctest: +SKIP
    >>> maps.nat_frontends.items()                            # doctest: +SKIP
    """

    def __init__(self, pin_dir: str | os.PathLike | None = None, calico: bool = False):
        self.calico = calico
        self.pin_dir = (
            os.fspath(pin_dir) if pin_dir is not None else (CALICO_PIN_DIR if calico else default_pin_dir())
        )
        self._open: dict[str, NamedMap] = {}

    @classmethod
    def create(cls, pin_dir: str | os.PathLike, sizes: dict[str, int] | None = None) -> NodeMaps:
        """Create and pin every map under ``pin_dir`` (``sizes`` overrides
        max_entries by attribute name)."""
        sizes = sizes or {}
        maps = cls(pin_dir)
        for attr, named in ALL_MAPS.items():
            maps._open[attr] = named.create(sizes.get(attr), pin_dir=pin_dir)
        return maps

    def get(self, attr: str) -> NamedMap:
        m = self._open.get(attr)
        if m is None:
            named = ALL_MAPS[attr]
            m = named.open_calico(self.pin_dir) if self.calico else named.open(self.pin_dir)
            self._open[attr] = m
        return m

    def __getattr__(self, attr: str) -> NamedMap:
        if attr in ALL_MAPS:
            return self.get(attr)
        raise AttributeError(attr)

    def close(self) -> None:
        for m in self._open.values():
            m.map.close()
        self._open.clear()

    def __enter__(self) -> NodeMaps:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<NodeMaps {self.pin_dir}{' (calico)' if self.calico else ''}>"
