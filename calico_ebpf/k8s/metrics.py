"""Prometheus text-format metrics for the agent, without a client library.

The agent needs a handful of counters, gauges and one histogram; a few dozen
lines render them in the text exposition format (version 0.0.4) that every
Prometheus scraper reads, so no dependency is added to the node image.

Example::

    registry = Registry()
    syncs = registry.counter("calico_ebpf_syncs_total", "Dataplane applies.", ["result"])
    syncs.inc(result="success")
    latency = registry.histogram("calico_ebpf_sync_duration_seconds", "Apply latency.")
    latency.observe(0.012)
    print(registry.render())

Values that live in the kernel (map usage, drop counters) are read at scrape
time by *collectors*: callables registered with :meth:`Registry.collector`
that return ``(name, type, help, [(labels, value), ...])`` families.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# kube-proxy's sync-latency buckets (exponential from 1 ms), the range an apply actually spans.
DEFAULT_BUCKETS = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
                   8.192, 16.384)

Labels = tuple[tuple[str, str], ...]
Sample = tuple[dict[str, str], float]
Family = tuple[str, str, str, list[Sample]]  # (name, type, help, samples)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _labels_text(labels: Iterable[tuple[str, str]]) -> str:
    parts = [f'{k}="{_escape(str(v))}"' for k, v in labels]
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()):
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()
        self._values: dict[Labels, float] = {}

    def _key(self, labels: dict[str, str]) -> Labels:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {sorted(labels)}")
        return tuple((n, str(labels[n])) for n in self.labelnames)

    def get(self, **labels: str) -> float:
        """The current value for ``labels`` (0 when never set)."""
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def samples(self) -> list[tuple[str, Labels, float]]:
        with self._lock:
            return [(self.name, key, value) for key, value in sorted(self._values.items())]


class Counter(_Metric):
    """A monotonically increasing count."""

    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount


class Gauge(_Metric):
    """A value that goes up and down."""

    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def replace(self, values: dict[Labels, float]) -> None:
        """Set every label combination at once; combinations not given disappear (a rejected
        object that was fixed must stop being reported)."""
        with self._lock:
            self._values = dict(values)


class Histogram(_Metric):
    """Observations in cumulative buckets, with ``_sum`` and ``_count`` (no labels)."""

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Sequence[float] = DEFAULT_BUCKETS):
        super().__init__(name, help)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._counts = [0] * len(self.buckets)
        self._sum = 0.0
        self._count = 0

    def observe(self, value: float) -> None:
        with self._lock:
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    self._counts[i] += 1
                    break
            self._sum += value
            self._count += 1

    @property
    def count(self) -> int:
        with self._lock:
            return self._count

    def samples(self) -> list[tuple[str, Labels, float]]:
        with self._lock:
            out, cumulative = [], 0
            for bound, n in zip(self.buckets, self._counts):
                cumulative += n
                out.append((f"{self.name}_bucket", (("le", _format_value(bound)),), cumulative))
            out.append((f"{self.name}_sum", (), self._sum))
            out.append((f"{self.name}_count", (), self._count))
            return out


class Registry:
    """Metrics and scrape-time collectors, rendered together by :meth:`render`."""

    def __init__(self) -> None:
        self._metrics: list[_Metric] = []
        self._collectors: list[Callable[[], Iterable[Family]]] = []

    def _add(self, metric: _Metric) -> _Metric:
        if any(m.name == metric.name for m in self._metrics):
            raise ValueError(f"metric {metric.name} is registered twice")
        self._metrics.append(metric)
        return metric

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        return self._add(Counter(name, help, labelnames))

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        return self._add(Gauge(name, help, labelnames))

    def histogram(self, name: str, help: str, buckets: Sequence[float] = DEFAULT_BUCKETS) -> Histogram:
        return self._add(Histogram(name, help, buckets))

    def collector(self, fn: Callable[[], Iterable[Family]]) -> None:
        """Call ``fn`` at every scrape; it returns families of samples read at that moment."""
        self._collectors.append(fn)

    def render(self) -> str:
        """Everything in the Prometheus text format; a failing collector is skipped, noted in a comment."""
        lines: list[str] = []
        for m in self._metrics:
            lines.append(f"# HELP {m.name} {_escape(m.help)}")
            lines.append(f"# TYPE {m.name} {m.kind}")
            for name, labels, value in m.samples():
                lines.append(f"{name}{_labels_text(labels)} {_format_value(value)}")
        for fn in self._collectors:
            try:
                families = list(fn())
            except Exception as exc:  # noqa: BLE001 - one unreadable map must not hide the other metrics
                lines.append(f"# collector {getattr(fn, '__name__', fn)} failed: {type(exc).__name__}: "
                             f"{_escape(str(exc))}")
                continue
            for name, kind, help, samples in families:
                lines.append(f"# HELP {name} {_escape(help)}")
                lines.append(f"# TYPE {name} {kind}")
                for labels, value in samples:
                    lines.append(f"{name}{_labels_text(sorted(labels.items()))} {_format_value(value)}")
        return "\n".join(lines) + "\n"
