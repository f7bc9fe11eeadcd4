"""Per-interface packet counters (a per-CPU map), ``bpf/include/counters.h``.

Ours holds 32 u64 per CPU; Calico's ``cali_counters6`` holds 27, read with
:class:`CalicoCountersValue`. Sum the per-CPU copies with
:meth:`CountersValue.total`::

    >>> a = CountersValue.of({Counter.TOTAL: 3})
    >>> CountersValue.total([a, a])[Counter.TOTAL]
    6
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

import attrs

from calico_ebpf.maps import _entry as E
from calico_ebpf.maps import layout as L
from calico_ebpf.maps.enums import Counter, CounterHook

N_COUNTERS = 32
N_CALICO_COUNTERS = 27


@attrs.frozen(slots=True)
class CountersKey(E.Entry):
    """Counters of one interface and hook."""

    ifindex: int = attrs.field(validator=E.uint(32))
    hook: CounterHook = attrs.field(converter=E.enum_converter(CounterHook), validator=E.of_type(CounterHook))


E.set_layout(
    CountersKey,
    "counters_key",
    8,
    [L.int_field("ifindex", L.U32, 0), L.enum_field("hook", CounterHook, L.U32, 4)],
)


def _counts(n: int):
    def check(instance, attribute, value) -> None:
        if type(value) is not tuple or len(value) != n:
            E._fail(instance, attribute, f"needs a tuple of {n} counts")
        for v in value:
            if not isinstance(v, int) or not 0 <= v < 1 << 64:
                E._fail(instance, attribute, f"{v!r} is not a u64 count")

    return check


class _CountsMixin:
    __slots__ = ()
    N = N_COUNTERS

    def __getitem__(self, index: int | Counter) -> int:
        return self.counts[int(index)]

    def as_dict(self) -> dict[str, int]:
        """``{"TOTAL": n, ...}`` by counter name."""
        return {Counter(i).name: c for i, c in enumerate(self.counts)}

    @classmethod
    def of(cls, values: Mapping[int, int]):
        counts = [0] * cls.N
        for i, v in values.items():
            counts[int(i)] = v
        return cls(tuple(counts))

    @classmethod
    def total(cls, per_cpu: Iterable):
        """Sum per-CPU values into one."""
        sums = [0] * cls.N
        for value in per_cpu:
            sums = [a + b for a, b in zip(sums, value.counts)]
        return cls(tuple(sums))


def _counts_layout(cls, c_name, n):
    fmt = struct.Struct(f"<{n}Q")
    E.set_layout(
        cls,
        c_name,
        8 * n,
        [
            L.custom_field(
                "counts",
                [L.Part("counts", L.BYTES, 0, 8 * n, np_format=f"({n},)<u8")],
                lambda e: (fmt.pack(*e.counts),),
                lambda raw: fmt.unpack(raw),
            )
        ],
    )


@attrs.frozen(slots=True)
class CountersValue(_CountsMixin, E.Entry):
    """32 counters indexed by :class:`Counter` (one CPU's copy)."""

    counts: tuple = attrs.field(default=(0,) * N_COUNTERS, converter=tuple, validator=_counts(N_COUNTERS))


_counts_layout(CountersValue, "counters_value", N_COUNTERS)


@attrs.frozen(slots=True)
class CalicoCountersValue(_CountsMixin, E.Entry):
    """Calico's 27-counter value (``cali_counters6``), same indices 0..26."""

    N = N_CALICO_COUNTERS
    counts: tuple = attrs.field(
        default=(0,) * N_CALICO_COUNTERS, converter=tuple, validator=_counts(N_CALICO_COUNTERS)
    )


_counts_layout(CalicoCountersValue, None, N_CALICO_COUNTERS)
