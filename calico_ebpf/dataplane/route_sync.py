"""Routes of one node, recompiled per changed pod when nothing else changed.

``compile_routes`` is a pure function of Nodes, IP pools and Pods; at 10k
pods it takes a few hundred ms, too much to pay for every pod that starts.
When only Pods changed, :class:`NodeRoutes` compiles just those pods (over a
small ClusterState with the Nodes and pools) and swaps their routes in. It
falls back to a full compile whenever a changed pod's address is contested
(another pod, a host or a block claims the same CIDR: then the winner
depends on everyone), so the result always equals a full compile.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from calico_ebpf.compiler.routes import Route, compile_routes
from calico_ebpf.model.state import ClusterState


def _cidrs(pod) -> list[str]:
    return [f"{ip}/32" for ip in pod.pod_ips if ":" not in ip] if pod is not None else []


class NodeRoutes:
    """The routes of ``node`` as last compiled, kept current across pod changes."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}  # cidr -> route
        self._by_pod: dict[str, list[str]] = {}  # pod key -> its cidrs in ``routes``
        self._ip_count: Counter = Counter()  # /32 of every pod's IPv4 address -> pods claiming it
        self._valid = False

    def invalidate(self) -> None:
        self._valid = False

    def full(self, state: ClusterState, node: str) -> tuple[Route, ...]:
        routes = compile_routes(state, node)
        self.routes = {r.cidr: r for r in routes}
        self._by_pod = {}
        for r in routes:
            if r.pod is not None:
                self._by_pod.setdefault(r.pod, []).append(r.cidr)
        self._ip_count = Counter(c for pod in state.pods.values() for c in _cidrs(pod))
        self._valid = True
        return routes

    def pods_changed(self, state: ClusterState, node: str, changes: Mapping[str, tuple]) -> tuple[Route, ...]:
        """Routes after ``changes`` (pod key -> (old, new) Pod); a full compile when it must be."""
        if not self._valid:
            return self.full(state, node)
        touched = set()
        for key, (old, new) in changes.items():
            touched.update(self._by_pod.get(key, ()), _cidrs(old), _cidrs(new))
        contested = any(self._ip_count[c] > 1 for c in touched)
        for old, new in changes.values():
            self._ip_count.subtract(_cidrs(old))
            self._ip_count.update(_cidrs(new))
        not_pod = {c for c in touched if c in self.routes and self.routes[c].pod is None}
        if contested or not_pod or any(self._ip_count[c] > 1 for c in touched):
            return self.full(state, node)

        sub = ClusterState()
        for obj in (*state.nodes.values(), *state.ip_pools.values()):
            sub.add(obj)
        for _old, new in changes.values():
            if new is not None:
                sub.add(new)
        fresh = [r for r in compile_routes(sub, node) if r.pod in changes]
        for key in changes:
            for cidr in self._by_pod.pop(key, ()):
                self.routes.pop(cidr, None)
        for r in fresh:
            if r.cidr in self.routes:  # a host or block took it meanwhile: let the full compile decide
                return self.full(state, node)
            self.routes[r.cidr] = r
            self._by_pod.setdefault(r.pod, []).append(r.cidr)
        return tuple(self.routes.values())
