"""Step 5 of the guide: wait until the operator reports every component Available.

The operator publishes one ``TigeraStatus`` per component (``calico``,
``apiserver``, ...) with ``Available`` / ``Progressing`` / ``Degraded``
conditions, which is what ``kubectl get tigerastatus`` shows. We poll it the
way ``watch kubectl get tigerastatus`` does, report each change, and stop when
all components are Available (and none Degraded) or the timeout passes::

    statuses = wait_available(api_client, timeout=600, on_progress=print)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from kubernetes import client

from calico_ebpf.errors import CalicoEBPFError
from calico_ebpf.install.plan import Cluster

__all__ = ["NotAvailableError", "summarize", "wait_available"]

TIGERASTATUSES = "/apis/operator.tigera.io/v1/tigerastatuses"


class NotAvailableError(CalicoEBPFError):
    """The timeout passed before every component was Available; ``last`` is the final summary."""

    def __init__(self, timeout: float, last: dict[str, str]):
        self.last = dict(last)
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(last.items())) or "no TigeraStatus objects"
        super().__init__(f"not Available after {timeout:g}s ({detail})")


def _conditions(status: dict) -> dict[str, str]:
    return {c.get("type"): c.get("status") for c in (status.get("status") or {}).get("conditions") or []}


def summarize(statuses: Iterable[dict]) -> dict[str, str]:
    """component -> ``Available`` / ``Degraded: <message>`` / ``Progressing`` / ``Unknown``."""
    out = {}
    for s in statuses:
        cond = _conditions(s)
        if cond.get("Degraded") == "True":
            msg = next((c.get("message", "") for c in s["status"]["conditions"] if c.get("type") == "Degraded"), "")
            out[s["metadata"]["name"]] = f"Degraded: {msg}".rstrip(": ")
        elif cond.get("Available") == "True" and cond.get("Progressing") != "True":
            out[s["metadata"]["name"]] = "Available"
        elif cond.get("Progressing") == "True":
            out[s["metadata"]["name"]] = "Progressing"
        else:
            out[s["metadata"]["name"]] = "Unknown"
    return out


def wait_available(
    api: client.ApiClient | Cluster,
    *,
    timeout: float = 600.0,
    interval: float = 2.0,
    components: Iterable[str] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """Poll TigeraStatus until ``components`` (default: all that exist) are Available.

    Returns the final summary; raises :class:`NotAvailableError` after ``timeout`` seconds.
    ``on_progress`` gets one line per component whose state changed.
    """
    cluster = api if isinstance(api, Cluster) else Cluster(api)
    wanted = set(components or ())
    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    while True:
        summary = summarize(cluster.list(TIGERASTATUSES))
        for name, state in sorted(summary.items()):
            if seen.get(name) != state and on_progress:
                on_progress(f"{name}: {state}")
        seen = summary
        relevant = {k: v for k, v in summary.items() if not wanted or k in wanted}
        if relevant and (wanted <= relevant.keys()) and all(v == "Available" for v in relevant.values()):
            return summary
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise NotAvailableError(timeout, relevant)
        time.sleep(min(interval, remaining))
