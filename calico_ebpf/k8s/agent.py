"""The node agent: follow the API server, keep this node's eBPF dataplane equal to it.

``calico-ebpf agent`` runs this in place of kube-proxy (one per node, a
DaemonSet). What it does, in order:

1. Starts an :class:`~calico_ebpf.k8s.informer.Informer` per kind the
   dataplane needs (:data:`AGENT_RESOURCES`). Every event goes to a pending
   table keyed by object, so a burst touching one object many times costs
   one parse.
2. Waits until **every** informer has listed once. Applying a half-listed
   cluster would delete the services of the kinds not listed yet.
3. Opens the :class:`~calico_ebpf.dataplane.Dataplane` on the pin directory
   (map sizes come from the FelixConfiguration, so the dataplane can only be
   loaded once it is known), which re-adopts a previous run's maps: the
   first apply of an unchanged cluster writes nothing and keeps service ids.
4. Applies: drains the pending events into one :class:`ClusterState`
   (objects the model rejects are reported, not fatal: the last good
   version of that object stays) and lets the reconciler write the minimal
   diff. Applies are debounced and at least ``min_sync_period`` apart
   (FelixConfiguration ``bpfKubeProxyMinSyncPeriod``, default 1 s). A
   failed apply (a map too small) writes nothing and is retried with
   backoff; ``/healthz`` turns 503 once a change has waited longer than
   ``health_timeout``.
   Before each apply, the interface step (:class:`~calico_ebpf.k8s.endpoints.Endpoints`,
   one netlink dump in ``netns``) attaches the datapath to new host data
   interfaces (``bpfDataIfacePattern``) and ``cali*`` workload veths (new
   ones start denied, Calico's default before policy) and forgets vanished
   ones; a :class:`~calico_ebpf.k8s.endpoints.LinkWatcher` asks for an apply
   whenever the link set changes. The apply ends with the
   :class:`~calico_ebpf.dataplane.policy.PolicyManager` syncing every local
   pod's policy programs and IP sets.
5. After the first apply, removes kube-proxy's iptables/nftables rules
   (``bpfKubeProxyIptablesCleanupEnabled``, default true) in
   ``cleanup_netns`` (default ``netns``; None: the agent's own namespace,
   the host's in a DaemonSet).

Stopping closes only the agent's file descriptors: the maps stay pinned and
attached programs stay attached, so service traffic keeps flowing (and
policy stays enforced) while the agent restarts; the next agent swaps its
programs into the same tc slots and keeps each endpoint's policy slots until
its first policy sync.

Example::

    agent = Agent(load_api_client(), "node-1", pin_dir="/sys/fs/bpf/calico_ebpf/node-1")
    agent.start()
    agent.wait_for_apply(1, timeout=60)
    print(agent.last_report)
    agent.stop()                 # the dataplane stays programmed
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from kubernetes.client import ApiClient, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from calico_ebpf.errors import CalicoEBPFError
from calico_ebpf.k8s.backoff import Backoff
from calico_ebpf.k8s.debounce import Debouncer
from calico_ebpf.k8s.endpoints import Endpoints, EndpointsReport, LinkWatcher
from calico_ebpf.k8s.health import (
    DEFAULT_HEALTH_TIMEOUT,
    DEFAULT_HEALTHZ_PORT,
    DEFAULT_METRICS_PORT,
    HttpServers,
    ProxierHealth,
    ServiceHealthServers,
)
from calico_ebpf.k8s.informer import DELETED, Informer, object_key
from calico_ebpf.k8s.metrics import CONTENT_TYPE, Family, Registry
from calico_ebpf.k8s.resources import CUSTOM, RESOURCES, Resource
from calico_ebpf.model.state import ClusterState

if TYPE_CHECKING:
    from typing_extensions import Self

    from calico_ebpf.dataplane import Dataplane
    from calico_ebpf.dataplane.reconcile import ApplyReport

log = logging.getLogger(__name__)

#: The kinds the dataplane is computed from (keys of ``resources.RESOURCES``).
AGENT_RESOURCES = ("nodes", "services", "endpointslices", "pods", "namespaces", "networkpolicies",
                   "felixconfigurations", "ippools", "calico-networkpolicies", "globalnetworkpolicies", "tiers")

#: Where Calico's v3 kinds may be served: the Calico API server, else the CRDs behind it.
CALICO_API_VERSIONS = ("projectcalico.org/v3", "crd.projectcalico.org/v1")

# Map types whose fill level is worth a gauge (prog arrays and scratch arrays are not).
_USAGE_MAP_TYPES = {"HASH", "LRU_HASH", "LPM_TRIE", "PERCPU_HASH", "LRU_PERCPU_HASH"}


def local_ready_endpoints(state: ClusterState, service_key: str, node: str) -> int:
    """Ready endpoints of ``ns/name`` on ``node``, counted once per address (kube-proxy's
    health-check count: terminating endpoints do not count, so load balancers drain the node)."""
    addresses = set()
    for s in state.slices_for(service_key):
        for e in s.endpoints:
            if e.node_name == node and e.conditions.ready and e.addresses:
                addresses.add(e.addresses[0])
    return len(addresses)


def health_check_services(state: ClusterState, node: str) -> dict[tuple[str, str], tuple[int, int]]:
    """``{(namespace, name): (healthCheckNodePort, local endpoints)}`` for every LoadBalancer
    Service with ``externalTrafficPolicy: Local``, as kube-proxy serves them."""
    out = {}
    for svc in state.services.values():
        if svc.type == "LoadBalancer" and svc.external_policy_local and svc.health_check_node_port:
            out[(svc.namespace, svc.name)] = (svc.health_check_node_port,
                                              local_ready_endpoints(state, svc.key, node))
    return out


class Agent:
    """One node's agent: informers -> ClusterState -> debounced ``Dataplane.apply``.

    ``pin_dir`` None uses ``/sys/fs/bpf/calico_ebpf/<node>``. ``min_sync_period``
    None follows the FelixConfiguration (``bpfKubeProxyMinSyncPeriod``).
    Ports: ``healthz_port``/``metrics_port`` 0 bind an ephemeral port (see
    :attr:`healthz_port`), None serves nothing. ``kube_proxy_cleanup``
    False never touches iptables; ``cleanup_netns`` (a
    :class:`~calico_ebpf.kernel.netns.Netns`) points the cleanup at another
    namespace. ``calico_api_version`` "auto" probes where Calico's kinds are
    served (:data:`CALICO_API_VERSIONS`) and skips them when neither is;
    None skips them. ``max_entries`` overrides map sizes by BPF map name.

    Interfaces: ``netns`` is the namespace whose interfaces the agent attaches
    (a :class:`~calico_ebpf.kernel.netns.Netns` or a name; None: the agent's
    own, the host's in a DaemonSet). ``data_iface_pattern`` overrides the
    FelixConfiguration's ``bpfDataIfacePattern``. ``attach_interfaces`` False
    attaches nothing and syncs no policy (NAT, routes and failsafes only).
    ``watch_links`` False applies only on API events, not on link changes.
    """

    def __init__(
        self,
        api_client: ApiClient,
        node_name: str,
        *,
        pin_dir: str | None = None,
        min_sync_period: float | None = 1.0,
        resources: Iterable[str] = AGENT_RESOURCES,
        calico_api_version: str | None = "auto",
        healthz_host: str = "0.0.0.0",
        healthz_port: int | None = DEFAULT_HEALTHZ_PORT,
        metrics_host: str = "127.0.0.1",
        metrics_port: int | None = DEFAULT_METRICS_PORT,
        health_check_host: str = "0.0.0.0",
        health_timeout: float = DEFAULT_HEALTH_TIMEOUT,
        kube_proxy_cleanup: bool = True,
        cleanup_netns: Any = None,
        max_entries: dict[str, int] | None = None,
        quiet: float = 0.05,
        watch_timeout: int = 300,
        netns: Any = None,
        data_iface_pattern: str | None = None,
        attach_interfaces: bool = True,
        watch_links: bool = True,
    ):
        if not node_name:
            raise ValueError("the agent needs this node's name (--node or $NODE_NAME)")
        from calico_ebpf.maps.named import default_pin_dir

        self.api_client = api_client
        self.node_name = node_name
        self.pin_dir = pin_dir or default_pin_dir(node_name)
        self._min_sync_period = min_sync_period
        self._resource_names = tuple(resources)
        self._calico_api_version = calico_api_version
        self._healthz = (healthz_host, healthz_port)
        self._metrics = (metrics_host, metrics_port)
        self._kube_proxy_cleanup = kube_proxy_cleanup
        self._cleanup_netns = cleanup_netns if cleanup_netns is not None else netns
        self.netns = netns
        self._data_iface_pattern = data_iface_pattern
        self._attach_interfaces = attach_interfaces
        self._watch_links = watch_links and attach_interfaces
        self._max_entries = max_entries
        self._quiet = quiet
        self._watch_timeout = watch_timeout

        self.state = ClusterState()
        self.dataplane: Dataplane | None = None
        self.conntrack_gc = None  # the dataplane's ConntrackManager once it is loaded
        #: The interface step (set with the dataplane when ``attach_interfaces``).
        self.endpoints: Endpoints | None = None
        #: What the interface step did in the last apply.
        self.last_endpoints: EndpointsReport | None = None
        self.last_report: ApplyReport | None = None
        self.cleanup_report: Any = None
        #: Why the last apply failed (None after a successful one).
        self.last_error: Exception | None = None
        self.informers: dict[str, Informer] = {}

        self._lock = threading.Lock()  # guards _pending
        self._pending: dict[tuple[str, str], tuple[str, dict]] = {}
        # Owned by the apply thread: which model object each API object became, and refusals.
        self._added: dict[tuple[str, str], tuple[str, str]] = {}
        self._rejected: dict[tuple[str, str], CalicoEBPFError] = {}

        self._applied = threading.Condition()
        self.apply_count = 0
        self._last_start = -float("inf")
        self._not_before = 0.0
        self._backoff = Backoff(initial=0.5, maximum=30.0)
        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._debouncer: Debouncer | None = None
        self._sync_waiter: threading.Thread | None = None
        self._applying = False  # an apply (or its min-sync-period wait) is in progress
        self._link_watcher: LinkWatcher | None = None

        self.health = ProxierHealth(timeout=health_timeout)
        self._servers = HttpServers()
        self.service_health = ServiceHealthServers(self._servers, health_check_host, self.health)
        self.metrics = Registry()
        self._init_metrics()

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> Agent:
        """Open the HTTP endpoints, start the informers; the dataplane comes up once they synced."""
        from calico_ebpf.kernel import bpffs

        bpffs.ensure_bpffs(mount=True)
        bpffs.make_pin_dir(self.pin_dir)
        # A burst never holds an apply back longer than one sync period.
        max_delay = max(self._quiet, self._min_sync_period or 1.0)
        self._debouncer = Debouncer(self._sync, quiet=self._quiet, max_delay=max_delay, name="agent-apply")
        if self._watch_links:
            # A link appearing or going asks for an apply, whose interface step attaches/forgets it.
            # First, so a namespace that cannot be watched fails start() before anything else runs.
            try:
                self._link_watcher = LinkWatcher(self._kick, self.netns).start()
            except BaseException:
                self._debouncer.close(flush=False)
                raise
        self._servers.start()
        self._serve_endpoints()
        resources = self._resources()
        self._size_connection_pool(len(resources))
        for name, resource in resources:
            self.informers[name] = Informer(
                self.api_client, resource, self._handler(name), watch_timeout=self._watch_timeout).start()
        self._sync_waiter = threading.Thread(target=self._await_sync, name="agent-sync-wait", daemon=True)
        self._sync_waiter.start()
        return self

    def _serve_endpoints(self) -> None:
        """Open /healthz and /metrics where not open yet. A port in use (kube-proxy still running on
        the node during the switch-over) is logged, not fatal: the next apply tries again."""
        routes = {"healthz": (self._healthz, {"/healthz": self.health.handle}),
                  "metrics": (self._metrics, {"/metrics": self._serve_metrics})}
        for name, ((host, port), handlers) in routes.items():
            if port is None or name in self._servers.ports:
                continue
            try:
                self._servers.serve(name, host, port, handlers)
            except OSError as exc:
                log.warning("agent: cannot serve %s on %s:%s yet: %s", name, host, port, exc)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop following the API server and close the dataplane's fds; the kernel keeps its state."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._link_watcher is not None:
            self._link_watcher.stop(timeout)
        for informer in self.informers.values():
            informer.stop()
        # An apply (or a first load of the datapath) in flight finishes; nothing new starts.
        if self._debouncer is not None and not self._debouncer.close(flush=False, timeout=timeout):
            log.warning("agent: the apply in flight did not finish within %.0f s", timeout)
        if self._sync_waiter is not None:
            self._sync_waiter.join(timeout)
        self._servers.close()
        if self.dataplane is not None:
            policy = self.dataplane.policy_sync
            if policy is not None:
                policy.close()  # the programs live on in the pinned jump map
            self.dataplane.close()
        self._stopped.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until :meth:`stop` has finished; False on timeout."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- what tests and tools read ---------------------------------------------------------

    @property
    def synced(self) -> bool:
        """True once every informer has listed."""
        return self._synced.is_set()

    @property
    def healthz_port(self) -> int | None:
        return self._servers.ports.get("healthz")

    @property
    def metrics_port(self) -> int | None:
        return self._servers.ports.get("metrics")

    @property
    def rejected(self) -> list[CalicoEBPFError]:
        """Objects the model refused and that are still in the cluster in that form."""
        return list(self.state.rejected)  # replaced whole by each drain: safe to read from any thread

    @property
    def failed_applies(self) -> int:
        """Applies that raised (each was retried)."""
        return int(self._syncs.get(result="failure"))

    @property
    def idle(self) -> bool:
        """No event waits for an apply, no apply is due and none is running."""
        with self._lock:
            pending = bool(self._pending)
        return not pending and not self._applying and \
            not (self._debouncer is not None and self._debouncer.pending)

    def wait_for_apply(self, count: int, timeout: float) -> ApplyReport:
        """Block until ``count`` applies have completed in total; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._applied:
            while self.apply_count < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    why = f"; last error: {self.last_error}" if self.last_error is not None else ""
                    raise TimeoutError(f"agent: {self.apply_count} applies after {timeout} s, "
                                       f"expected {count}{why}")
                self._applied.wait(remaining)
            return self.last_report

    # ---- informers -------------------------------------------------------------------------

    def _resources(self) -> list[tuple[str, Resource]]:
        calico = self._calico_version() if any(RESOURCES[n].api == CUSTOM for n in self._resource_names) else None
        out = []
        for name in self._resource_names:
            resource = RESOURCES[name]
            if resource.api == CUSTOM:
                if calico is None:
                    continue
                if calico != resource.api_version:
                    resource = resource.with_api_version(calico)
            out.append((name, resource))
        return out

    def _size_connection_pool(self, watches: int) -> None:
        # Each informer holds one connection open for its watch; with the client's default pool
        # (5 per CPU) a small node would drop and reopen connections on every list or reconnect.
        pool_kw = getattr(getattr(self.api_client.rest_client, "pool_manager", None), "connection_pool_kw", None)
        if pool_kw is not None and pool_kw.get("maxsize", 0) < watches + 4:
            pool_kw["maxsize"] = watches + 4
            self.api_client.rest_client.pool_manager.clear()  # pools made before take the new size

    def _calico_version(self) -> str | None:
        """Where Calico's kinds live (a one-item list of FelixConfigurations probes each place)."""
        if self._calico_api_version != "auto":
            return self._calico_api_version
        api = CustomObjectsApi(self.api_client)
        for api_version in CALICO_API_VERSIONS:
            group, _, version = api_version.rpartition("/")
            try:
                api.list_cluster_custom_object(group, version, "felixconfigurations", limit=1,
                                               _request_timeout=(10, 30))
                return api_version
            except ApiException as exc:
                if exc.status in (403, 404):
                    # Not served, or our RBAC does not cover it: an informer there would never
                    # sync, and nothing would ever be applied. Try the next place.
                    log.warning("agent: Calico kinds under %s: HTTP %s", api_version, exc.status)
                    continue
                # Served but failing now: the informers retry; do not guess another group.
                log.warning("agent: probing %s: HTTP %s; following it anyway", api_version, exc.status)
                return api_version
        log.warning("agent: no readable Calico API (%s): following Kubernetes kinds only",
                    " or ".join(CALICO_API_VERSIONS))
        return None

    def _handler(self, resource: str):
        def on_event(event_type: str, obj: dict) -> None:
            with self._lock:
                self._pending[(resource, object_key(obj))] = (event_type, obj)
            self._events.inc(resource=resource, type=event_type)
            self.health.queued()
            if self._synced.is_set():
                self._kick()

        return on_event

    def _await_sync(self) -> None:
        for informer in self.informers.values():
            while not informer.wait_for_sync(0.2):
                if self._stopping.is_set():
                    return
        log.info("agent: all %d informers synced", len(self.informers))
        self._synced.set()
        self._kick()

    def _kick(self) -> None:
        """Ask for an apply (after the debounce and the min sync period); a no-op once stopping."""
        if self._stopping.is_set():
            return
        try:
            self._debouncer.trigger()
        except RuntimeError:
            pass  # closed by stop() between the check and the trigger

    # ---- applying --------------------------------------------------------------------------

    def _drain(self) -> None:
        """Move pending events into the ClusterState (apply thread only)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        state = self.state
        for ident, (event_type, obj) in pending.items():
            if event_type == DELETED:
                self._rejected.pop(ident, None)
                model_id = self._added.pop(ident, None)
                if model_id is not None:
                    state.remove(*model_id)
                continue
            try:
                model_obj = state.add_dict(obj)
            except CalicoEBPFError as exc:
                # The last good version (if any) stays programmed; the refusal is reported.
                if ident not in self._rejected:
                    log.warning("agent: rejected %s", exc)
                self._rejected[ident] = exc
                continue
            self._rejected.pop(ident, None)
            if model_obj is None:
                state.ignored.clear()  # a kind the model does not handle: not worth keeping per event
                state.unhandled.clear()
                continue
            model_id = (type(model_obj).__name__, model_obj.key)
            old = self._added.get(ident)
            if old is not None and old != model_id:
                state.remove(*old)
            self._added[ident] = model_id
        state.rejected = list(self._rejected.values())

    def _sync(self) -> None:
        """One apply (runs on the debouncer's thread)."""
        if not self._synced.is_set() or self._stopping.is_set():
            return
        self._applying = True
        try:
            self._sync_once()
        finally:
            self._applying = False

    def _sync_once(self) -> None:
        period = self._min_sync_period
        if period is None:
            period = self.state.felix_config(self.node_name).bpf_kube_proxy_min_sync_period
        wait = max(self._last_start + period, self._not_before) - time.monotonic()
        if wait > 0 and self._stopping.wait(wait):
            return
        self._last_start = time.monotonic()
        since = self.health.take_pending()
        try:
            self._drain()
            if self.dataplane is None and not self._open_dataplane():
                self.health.restore_pending(since)
                return
            if self.endpoints is not None:
                # Before the apply: its policy sync covers the pods whose veths are registered.
                self.last_endpoints = self.endpoints.sync(self.state)
            report = self.dataplane.apply(self.state)
        except Exception as exc:  # a failed apply is retried, never fatal
            self.last_error = exc
            self.health.restore_pending(since)
            self._syncs.inc(result="failure")
            delay = self._backoff.next()
            log.error("agent: apply failed (retrying in %.1f s): %s", delay, exc,
                      exc_info=not isinstance(exc, CalicoEBPFError))
            self._not_before = time.monotonic() + delay
            self._kick()
            return
        self._backoff.reset()
        self.last_error = None
        self._record(report)
        if self.apply_count == 1:
            self._cleanup_kube_proxy()

    def _open_dataplane(self) -> bool:
        from calico_ebpf.dataplane import Dataplane
        from calico_ebpf.dataplane.config import NodeConfig
        from calico_ebpf.dataplane.policy import PolicyManager

        if self.node_name not in self.state.nodes:
            log.warning("agent: Node %s is not in the cluster (yet); waiting for it", self.node_name)
            return False
        t0 = time.monotonic()
        dp = Dataplane(NodeConfig.from_state(self.state, self.node_name), pin_dir=self.pin_dir,
                       max_entries=self._max_entries)
        if self._stopping.is_set():
            dp.close()
            return False
        if self._attach_interfaces:
            try:
                dp.policy_sync = PolicyManager(dp)
            except BaseException:
                dp.close()
                raise
            self.endpoints = Endpoints(dp, self.node_name, netns=self.netns,
                                       data_iface_pattern=self._data_iface_pattern)
        self.dataplane = dp
        # Expire conntrack entries with the node's bpfConntrackTimeouts (every 10 s, jittered);
        # dp.close() stops the sweeper.
        self.conntrack_gc = dp.start_conntrack_gc()
        log.info("agent: dataplane loaded on %s in %.1f s", self.pin_dir, time.monotonic() - t0)
        return True

    def _record(self, report: ApplyReport) -> None:
        self._sync_seconds.observe(report.seconds)
        self._syncs.inc(result="success")
        self._last_sync.set(time.time())
        self._services.set(report.services)
        for name, changes in report.changes.items():
            if changes.total:
                self._writes.inc(changes.total, map=name)
        counts: dict = {}
        for ident in self._rejected:
            kind = RESOURCES[ident[0]].kind
            counts[(("kind", kind),)] = counts.get((("kind", kind),), 0) + 1
        self._rejected_gauge.replace(counts)
        self.health.updated()
        self._serve_endpoints()
        self.service_health.sync(health_check_services(self.state, self.node_name))
        if report.writes or report.rejected:
            log.info("agent: %s", report)
        with self._applied:
            self.last_report = report
            self.apply_count += 1
            self._applied.notify_all()

    def _cleanup_kube_proxy(self) -> None:
        from calico_ebpf.install.kube_proxy_cleanup import cleanup_kube_proxy

        enabled = self._kube_proxy_cleanup and \
            self.state.felix_config(self.node_name).bpf_kube_proxy_iptables_cleanup_enabled
        try:
            self.cleanup_report = cleanup_kube_proxy(self._cleanup_netns, enabled=enabled)
        except CalicoEBPFError as exc:
            log.error("agent: kube-proxy cleanup failed: %s", exc)
            return
        if self.cleanup_report.changed:
            log.info("agent: removed kube-proxy's rules: %s %s", self.cleanup_report.removed_chains,
                     self.cleanup_report.removed_nft_tables)

    # ---- metrics ---------------------------------------------------------------------------

    def _init_metrics(self) -> None:
        m = self.metrics
        self._sync_seconds = m.histogram("calico_ebpf_sync_duration_seconds",
                                         "Time one dataplane apply took (compile, diff and map writes).")
        self._syncs = m.counter("calico_ebpf_syncs_total", "Dataplane applies, by result.", ["result"])
        self._last_sync = m.gauge("calico_ebpf_last_sync_timestamp_seconds",
                                  "Unix time of the last successful apply.")
        self._services = m.gauge("calico_ebpf_services_programmed", "Services (ports) in the dataplane.")
        self._writes = m.counter("calico_ebpf_map_writes_total", "Entries written or deleted, by map.", ["map"])
        self._rejected_gauge = m.gauge("calico_ebpf_rejected_objects",
                                       "API objects the model refused, by kind.", ["kind"])
        self._events = m.counter("calico_ebpf_informer_events_total", "Events from the API server.",
                                 ["resource", "type"])
        m.collector(self._dataplane_families)

    def _dataplane_families(self) -> list[Family]:
        """Map fill levels, conntrack size, programmed endpoints and drops, read from the kernel now."""
        dp = self.dataplane
        if dp is None:
            return []
        from calico_ebpf.maps.enums import Counter
        from calico_ebpf.maps.named import Counters

        entries, limits, counts = [], [], {}
        for name, m in dp.maps.items():
            if m.type.name not in _USAGE_MAP_TYPES:
                continue
            n = m.lookup_batch_all()[2]
            counts[name] = n
            entries.append(({"map": name}, n))
            limits.append(({"map": name}, m.max_entries))
        reasons = [c for c in Counter if c.name.startswith("DROP_") or c is Counter.NAT_NO_BACKEND]
        drops = {c.name.lower(): 0 for c in reasons}
        # Only read values when there are some (typed per-CPU decoding of an empty batch fails).
        if counts.get("cebpf_counters"):
            for value in Counters(dp.maps["cebpf_counters"]).totals().values():
                for c in reasons:
                    drops[c.name.lower()] += value[c]
        return [
            ("calico_ebpf_map_entries", "gauge", "Entries in a BPF map.", entries),
            ("calico_ebpf_map_max_entries", "gauge", "Capacity of a BPF map.", limits),
            ("calico_ebpf_conntrack_entries", "gauge", "Conntrack entries (all legs).",
             [({}, counts.get("cebpf_ct", 0))]),
            ("calico_ebpf_endpoints_programmed", "gauge", "Backend entries (service port x endpoint).",
             [({}, counts.get("cebpf_nat_be", 0))]),
            ("calico_ebpf_dropped_packets_total", "counter", "Packets the datapath dropped, by reason.",
             [({"reason": r}, n) for r, n in sorted(drops.items())]),
        ]

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        # Reading the maps can take a while on a big node: keep the event loop (health checks) free.
        loop = asyncio.get_running_loop()
        text = await loop.run_in_executor(None, self.metrics.render)
        return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})
