"""The agent's HTTP endpoints: kube-proxy's healthz, per-service health checks, metrics.

Load balancers and kubelet probe a node's service proxy the way they probe
kube-proxy, so the agent answers the same way:

- ``/healthz`` on the proxy healthz port (kube-proxy's 10256):
  :class:`ProxierHealth` answers 200 while the dataplane keeps up with the
  API server, 503 before the first sync or when a change has waited longer
  than ``timeout`` (kube-proxy: 2 x syncPeriod = 60 s) without being applied.
  The body is kube-proxy's: ``{"lastUpdated": ..., "currentTime": ...,
  "nodeEligible": true}``.
- One listener per ``healthCheckNodePort`` of a LoadBalancer Service with
  ``externalTrafficPolicy: Local`` (:class:`ServiceHealthServers`): 200 with
  ``{"service": {"namespace", "name"}, "localEndpoints": N, "serviceProxyHealthy": true}``
  when N > 0 ready endpoints run on this node, else 503, so a cloud load
  balancer only sends to nodes that have a local backend.
- ``/metrics`` in the Prometheus text format (``metrics.Registry``).

All listeners share one aiohttp event loop on one thread (:class:`HttpServers`),
so hundreds of health-check ports cost sockets, not threads.

Example::

    servers = HttpServers().start()
    health = ProxierHealth(timeout=60)
    port = servers.serve("healthz", "0.0.0.0", 10256, {"/healthz": health.handle})
    ...
    servers.close()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as _dt
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DEFAULT_HEALTHZ_PORT = 10256  # kube-proxy's --healthz-bind-address port
DEFAULT_METRICS_PORT = 10249  # kube-proxy's --metrics-bind-address port
DEFAULT_HEALTH_TIMEOUT = 60.0  # kube-proxy: 2 x the default 30 s syncPeriod


def _rfc3339(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).isoformat().replace("+00:00", "Z")


def json_response(status: int, body: dict, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json",
                        headers={"X-Content-Type-Options": "nosniff", **(headers or {})})


class HttpServers:
    """Named HTTP listeners on one background event loop; add and remove them from any thread."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runners: dict[str, web.AppRunner] = {}  # touched on the loop only
        self.ports: dict[str, int] = {}

    def start(self) -> HttpServers:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="agent-http", daemon=True)
        self._thread.start()
        return self

    def _call(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def serve(self, name: str, host: str, port: int, routes: Mapping[str, Handler]) -> int:
        """Listen on ``host:port`` (0 = ephemeral) with GET ``routes``; returns the bound port.

        Raises OSError when the port is taken; a listener of the same name is replaced.
        """
        async def add() -> int:
            await self._remove(name)
            app = web.Application()
            for path, handler in routes.items():
                app.router.add_get(path, handler)
            runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
            await runner.setup()
            site = web.TCPSite(runner, host, port, reuse_address=True)
            try:
                await site.start()
            except BaseException:
                await runner.cleanup()
                raise
            self._runners[name] = runner
            return site._server.sockets[0].getsockname()[1]  # aiohttp has no public accessor

        bound = self._call(add())
        self.ports[name] = bound
        return bound

    async def _remove(self, name: str) -> None:
        runner = self._runners.pop(name, None)
        if runner is not None:
            await runner.cleanup()

    def remove(self, name: str) -> None:
        """Stop the listener ``name`` (no-op if absent)."""
        self.ports.pop(name, None)
        if self._loop is not None:
            self._call(self._remove(name))

    def names(self) -> list[str]:
        return list(self.ports)

    def close(self) -> None:
        """Stop every listener and the loop's thread."""
        if self._loop is None:
            return

        async def shutdown() -> None:
            for name in list(self._runners):
                await self._remove(name)

        try:
            self._call(shutdown())
        except (concurrent.futures.TimeoutError, RuntimeError) as exc:
            log.warning("http servers: shutdown incomplete: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
        self._loop = None
        self.ports.clear()


class ProxierHealth:
    """kube-proxy's proxier health: is the dataplane keeping up with the API server?

    The agent calls :meth:`queued` when a change arrives and :meth:`updated`
    after every successful apply. Healthy means: synced at least once, and no
    change has been waiting longer than ``timeout`` seconds. A node with
    nothing to do stays healthy however long ago its last apply was, as in
    kube-proxy (an idle proxy is not a stuck one).
    """

    def __init__(self, timeout: float = DEFAULT_HEALTH_TIMEOUT, clock: Callable[[], float] = time.time):
        self.timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._last_updated: float | None = None
        self._oldest_pending: float | None = None

    def queued(self) -> None:
        """A change is waiting for the dataplane (the first one since the last apply counts)."""
        with self._lock:
            if self._oldest_pending is None:
                self._oldest_pending = self._clock()

    def updated(self) -> None:
        """An apply finished (changes queued while it ran stay pending)."""
        with self._lock:
            self._last_updated = self._clock()

    def take_pending(self) -> float | None:
        """Clear and return the oldest pending time (the apply about to run covers it)."""
        with self._lock:
            pending, self._oldest_pending = self._oldest_pending, None
            return pending

    def restore_pending(self, since: float | None) -> None:
        """An apply failed: its changes are still pending since ``since``."""
        if since is None:
            return
        with self._lock:
            if self._oldest_pending is None or since < self._oldest_pending:
                self._oldest_pending = since

    @property
    def last_updated(self) -> float | None:
        with self._lock:
            return self._last_updated

    def status(self) -> tuple[bool, dict]:
        """(healthy, kube-proxy's JSON body)."""
        now = self._clock()
        with self._lock:
            last, pending = self._last_updated, self._oldest_pending
        healthy = last is not None and (pending is None or now - pending < self.timeout)
        return healthy, {"lastUpdated": _rfc3339(last), "currentTime": _rfc3339(now), "nodeEligible": True}

    async def handle(self, request: web.Request) -> web.Response:
        healthy, body = self.status()
        return json_response(200 if healthy else 503, body)


class ServiceHealthServers:
    """One ``healthCheckNodePort`` listener per Local-policy LoadBalancer Service.

    :meth:`sync` takes ``{(namespace, name): (port, local endpoint count)}``
    and opens, closes or updates listeners to match. Counts change without
    touching the sockets. A port that cannot be bound is logged and retried
    on the next sync, like kube-proxy does.
    """

    def __init__(self, servers: HttpServers, host: str = "0.0.0.0", proxier: ProxierHealth | None = None):
        self._servers = servers
        self._host = host
        self._proxier = proxier
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}
        self._ports: dict[tuple[str, str], int] = {}
        self.failed: dict[tuple[str, str], str] = {}  # services whose port could not be bound, and why

    @staticmethod
    def _name(svc: tuple[str, str]) -> str:
        return f"hc:{svc[0]}/{svc[1]}"

    def ports(self) -> dict[tuple[str, str], int]:
        """The listeners open now, by service."""
        with self._lock:
            return dict(self._ports)

    def sync(self, desired: Mapping[tuple[str, str], tuple[int, int]]) -> None:
        with self._lock:
            self._counts = {svc: count for svc, (_, count) in desired.items()}
            current = dict(self._ports)
        for svc, port in current.items():
            if svc not in desired or desired[svc][0] != port:
                self._servers.remove(self._name(svc))
                with self._lock:
                    self._ports.pop(svc, None)
        self.failed = {}
        for svc, (port, _) in desired.items():
            if svc in current and current[svc] == port:
                continue
            try:
                self._servers.serve(self._name(svc), self._host, port, {"/{tail:.*}": self._handler(svc)})
            except OSError as exc:
                self.failed[svc] = str(exc)
                log.warning("health check port %d of Service %s/%s: %s", port, svc[0], svc[1], exc)
                continue
            with self._lock:
                self._ports[svc] = port

    def _handler(self, svc: tuple[str, str]) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            with self._lock:
                count = self._counts.get(svc, 0)
            proxy_ok = self._proxier.status()[0] if self._proxier is not None else True
            body = {"service": {"namespace": svc[0], "name": svc[1]}, "localEndpoints": count,
                    "serviceProxyHealthy": proxy_ok}
            ok = count > 0 and proxy_ok
            return json_response(200 if ok else 503, body, {"X-Load-Balancing-Endpoint-Weight": str(count)})

        return handle
