"""A Kubernetes API server double that speaks real HTTP on 127.0.0.1.

Tests point the real ``kubernetes`` client at it; nothing in the client is
patched. It serves list, watch, get, create, replace, patch and delete for the
resource types our informers and install helpers use, with the semantics the
informer depends on:

- one global, increasing resourceVersion (like etcd's revision);
- ``watch=true`` streams JSON lines of ADDED / MODIFIED / DELETED events, and
  BOOKMARK events when the client asked for ``allowWatchBookmarks``;
- a watch from a compacted resourceVersion gets an ERROR event with a
  ``410 Expired`` Status, as the real API server sends it;
- ``resourceVersion`` + ``resourceVersionMatch`` (Exact / NotOlderThan) on
  lists, with 410 for an Exact read of compacted history.

Knobs for tests: :meth:`create` / :meth:`update` / :meth:`delete`,
:meth:`compact`, :meth:`drop_watches`, :meth:`send_bookmarks`,
:meth:`fail_next` (inject error responses), :attr:`requests` (what the
client asked for, with the content type and decoded JSON body of writes)
and :attr:`writes` (only the requests that asked to change state). The server runs in a background thread on its own event
loop; every knob is safe to call from the test thread.

Example::

    with ApiServerDouble() as api:
        api.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
        client = kubernetes.client.ApiClient(kubernetes.client.Configuration(host=api.url))
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from typing_extensions import Self

WATCH_TIMEOUT_CAP = 60.0
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})  # seconds; keeps a forgotten watch from outliving a test


@dataclass(frozen=True)
class ResourceType:
    """One served resource: where it lives in the URL space and what it is called."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def builtin(self) -> bool:
        # Built-in types' list items come without kind/apiVersion; custom resources keep them.
        return self.group in ("", "apps", "discovery.k8s.io", "networking.k8s.io")


SERVED_TYPES = (
    ResourceType("", "v1", "services", "Service", True),
    ResourceType("", "v1", "nodes", "Node", False),
    ResourceType("", "v1", "pods", "Pod", True),
    ResourceType("", "v1", "namespaces", "Namespace", False),
    ResourceType("", "v1", "configmaps", "ConfigMap", True),
    ResourceType("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True),
    ResourceType("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True),
    ResourceType("projectcalico.org", "v3", "felixconfigurations", "FelixConfiguration", False),
    ResourceType("projectcalico.org", "v3", "ippools", "IPPool", False),
    ResourceType("projectcalico.org", "v3", "networkpolicies", "NetworkPolicy", True),
    ResourceType("projectcalico.org", "v3", "globalnetworkpolicies", "GlobalNetworkPolicy", False),
    ResourceType("projectcalico.org", "v3", "tiers", "Tier", False),
    # Install workflow: the kube-proxy DaemonSet, the operator Deployment, the operator's and
    # OpenShift's cluster-scoped configuration objects.
    ResourceType("apps", "v1", "daemonsets", "DaemonSet", True),
    ResourceType("apps", "v1", "deployments", "Deployment", True),
    ResourceType("operator.tigera.io", "v1", "installations", "Installation", False),
    ResourceType("operator.tigera.io", "v1", "tigerastatuses", "TigeraStatus", False),
    ResourceType("operator.openshift.io", "v1", "networks", "Network", False),
    ResourceType("config.openshift.io", "v1", "networks", "Network", False),
)


class ApiError(Exception):
    """An API failure, turned into a ``Status`` response by the HTTP layer."""

    def __init__(self, code: int, reason: str, message: str):
        self.code = code
        self.reason = reason
        self.message = message
        super().__init__(f"{code} {reason}: {message}")

    def status(self) -> dict:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


@dataclass(frozen=True)
class RecordedRequest:
    """One request the double received (query values are the raw strings)."""

    method: str
    path: str
    query: dict[str, str]
    resource: str | None  # plural, when the path named a served type
    watch: bool
    time: float
    content_type: str = ""
    body: Any = None  # the decoded JSON body of a write, None for reads

    @property
    def is_write(self) -> bool:
        return self.method in WRITE_METHODS


@dataclass
class _Fault:
    remaining: int
    status: int
    match: Callable[[RecordedRequest], bool]


@dataclass
class _Watcher:
    rtype: ResourceType
    namespace: str | None
    bookmarks: bool
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)


_DROP = object()  # queue sentinel: cut the connection without ending the chunked stream
_END = object()  # queue sentinel: end the stream cleanly


class ApiServerDouble:
    """The double. Use as a context manager, or call :meth:`start` / :meth:`stop`."""

    def __init__(self, *, bookmark_interval: float | None = None):
        self._types = {(t.group, t.version, t.plural): t for t in SERVED_TYPES}
        self._bookmark_interval = bookmark_interval
        # State below is touched only on the server loop's thread.
        self._rv = 1
        self._objects: dict[ResourceType, dict[tuple[str, str], dict]] = {t: {} for t in SERVED_TYPES}
        self._history: list[tuple[int, ResourceType, str, dict]] = []
        self._compacted_rv = 1
        self._compacted_snapshot: dict[ResourceType, dict[tuple[str, str], dict]] = {t: {} for t in SERVED_TYPES}
        self._watchers: list[_Watcher] = []
        self._faults: list[_Fault] = []
        # Requests are appended on the loop and read from tests: guard with a lock.
        self._requests: list[RecordedRequest] = []
        self._requests_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> ApiServerDouble:
        """Start serving on an ephemeral port of 127.0.0.1; sets :attr:`url`."""
        ready: concurrent.futures.Future = concurrent.futures.Future()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._serve(ready))
            except BaseException as exc:  # noqa: BLE001 - surface startup failures to start()
                if not ready.done():
                    ready.set_exception(exc)
                return
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="apiserver-double", daemon=True)
        self._thread.start()
        port = ready.result(timeout=10)
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def _serve(self, ready: concurrent.futures.Future) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a watch whose client went away ends at once, as on the real server.
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # aiohttp exposes no public accessor
        if self._bookmark_interval:
            self._loop.create_task(self._periodic_bookmarks())
        ready.set_result(port)

    def stop(self) -> None:
        """End every watch, shut the server down and join its thread."""
        if self._loop is None:
            return

        async def shutdown() -> None:
            for w in self._watchers:
                w.queue.put_nowait(_END)
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _on_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on the server loop (where all state lives) and return its result."""
        fut: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
                fut.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return fut.result(timeout=10)

    # ---- test knobs ----------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        """The newest resourceVersion handed out."""
        return self._on_loop(lambda: self._rv)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of every request received so far, oldest first."""
        with self._requests_lock:
            return list(self._requests)

    @property
    def writes(self) -> list[RecordedRequest]:
        """The requests that asked to change state (POST/PUT/PATCH/DELETE), oldest first."""
        return [r for r in self.requests if r.is_write]

    def create(self, obj: dict) -> dict:
        """Store a new object (emits ADDED); returns it as stored, with its resourceVersion."""
        return self._on_loop(self._create, self._type_of(obj), copy.deepcopy(obj))

    def update(self, obj: dict) -> dict:
        """Replace an existing object (emits MODIFIED); returns it as stored."""
        return self._on_loop(self._replace, self._type_of(obj), copy.deepcopy(obj))

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict:
        """Delete an object (emits DELETED); returns its last state."""
        rtype = self._type_of({"apiVersion": api_version, "kind": kind})
        return self._on_loop(self._delete, rtype, namespace or "", name)

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict | None:
        """The stored object, or None."""
        rtype = self._type_of({"apiVersion": api_version, "kind": kind})
        return self._on_loop(lambda: copy.deepcopy(self._objects[rtype].get((namespace or "", name))))

    def compact(self) -> int:
        """Forget all history up to now, like etcd compaction; returns the compacted revision.

        A watch or Exact list from an older resourceVersion then gets 410 Gone.
        """

        def run() -> int:
            self._compacted_rv = self._rv
            self._compacted_snapshot = copy.deepcopy(self._objects)
            self._history.clear()
            return self._rv

        return self._on_loop(run)

    def drop_watches(self) -> int:
        """Cut every open watch connection mid-stream; returns how many were cut."""

        def run() -> int:
            for w in self._watchers:
                w.queue.put_nowait(_DROP)
            return len(self._watchers)

        return self._on_loop(run)

    def send_bookmarks(self) -> int:
        """Send a BOOKMARK at the current resourceVersion on every watch that allows them."""
        return self._on_loop(self._enqueue_bookmarks)

    def watch_count(self, plural: str | None = None) -> int:
        """How many watches are open (for ``plural`` only, when given)."""
        return self._on_loop(lambda: sum(1 for w in self._watchers if plural in (None, w.rtype.plural)))

    def wait_for_watches(self, count: int, plural: str | None = None, timeout: float = 5.0) -> None:
        """Block until at least ``count`` watches are open; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while self.watch_count(plural) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} open watch(es) on {plural or 'any resource'}")
            time.sleep(0.01)

    def fail_next(
        self,
        count: int,
        status: int = 500,
        *,
        resource: str | None = None,
        watch: bool | None = None,
    ) -> None:
        """Answer the next ``count`` matching requests with ``status`` (a Status body).

        ``resource`` (a plural) and ``watch`` narrow which requests match.
        """

        def match(req: RecordedRequest) -> bool:
            return resource in (None, req.resource) and watch in (None, req.watch)

        self._on_loop(self._faults.append, _Fault(count, status, match))

    def clear_faults(self) -> None:
        """Forget every pending :meth:`fail_next`."""
        self._on_loop(self._faults.clear)

    # ---- storage (loop thread only) ------------------------------------------------------

    def _type_of(self, obj: dict) -> ResourceType:
        group, _, version = obj.get("apiVersion", "").rpartition("/")
        for t in SERVED_TYPES:
            if (t.group, t.version, t.kind) == (group, version, obj.get("kind")):
                return t
        raise ApiError(404, "NotFound", f"the server doesn't serve {obj.get('apiVersion')} {obj.get('kind')}")

    def _key(self, rtype: ResourceType, obj: dict) -> tuple[str, str]:
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            raise ApiError(422, "Invalid", f"{rtype.kind}: metadata.name: Required value")
        if rtype.namespaced:
            meta.setdefault("namespace", "default")
        else:
            meta.pop("namespace", None)
        return (meta.get("namespace", ""), meta["name"])

    def _record(self, rtype: ResourceType, event_type: str, obj: dict) -> dict:
        """Bump the revision, stamp it on ``obj``, log the event and fan it out."""
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._history.append((self._rv, rtype, event_type, copy.deepcopy(obj)))
        for w in self._watchers:
            if w.rtype == rtype and w.namespace in (None, obj["metadata"].get("namespace")):
                w.queue.put_nowait({"type": event_type, "object": copy.deepcopy(obj)})
        return copy.deepcopy(obj)

    def _create(self, rtype: ResourceType, obj: dict, namespace: str | None = None) -> dict:
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        if namespace:
            obj.setdefault("metadata", {})["namespace"] = namespace
        key = self._key(rtype, obj)
        if key in self._objects[rtype]:
            raise ApiError(409, "AlreadyExists", f'{rtype.plural} "{key[1]}" already exists')
        meta = obj["metadata"]
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        meta["generation"] = 1
        self._objects[rtype][key] = obj
        return self._record(rtype, "ADDED", obj)

    def _replace(self, rtype: ResourceType, obj: dict) -> dict:
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        key = self._key(rtype, obj)
        old = self._objects[rtype].get(key)
        if old is None:
            raise ApiError(404, "NotFound", f'{rtype.plural} "{key[1]}" not found')
        meta, old_meta = obj["metadata"], old["metadata"]
        if meta.get("resourceVersion") not in (None, "", old_meta["resourceVersion"]):
            raise ApiError(
                409, "Conflict", f'Operation cannot be fulfilled on {rtype.plural} "{key[1]}": '
                "the object has been modified; please apply your changes to the latest version and try again"
            )
        for immutable in ("uid", "creationTimestamp"):
            meta[immutable] = old_meta[immutable]
        meta["generation"] = old_meta.get("generation", 1) + (obj.get("spec") != old.get("spec"))
        self._objects[rtype][key] = obj
        return self._record(rtype, "MODIFIED", obj)

    def _delete(self, rtype: ResourceType, namespace: str, name: str) -> dict:
        obj = self._objects[rtype].pop((namespace, name), None)
        if obj is None:
            raise ApiError(404, "NotFound", f'{rtype.plural} "{name}" not found')
        return self._record(rtype, "DELETED", obj)

    def _state_at(self, rtype: ResourceType, rv: int) -> dict[tuple[str, str], dict]:
        """The objects of ``rtype`` as they were at revision ``rv`` (rebuilt from history)."""
        if rv < self._compacted_rv:
            raise ApiError(410, "Expired", f"too old resource version: {rv} ({self._compacted_rv})")
        state = copy.deepcopy(self._compacted_snapshot[rtype])
        for ev_rv, ev_rtype, ev_kind, obj in self._history:
            if ev_rv > rv:
                break
            if ev_rtype != rtype:
                continue
            key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
            if ev_kind == "DELETED":
                state.pop(key, None)
            else:
                state[key] = copy.deepcopy(obj)
        return state

    def _enqueue_bookmarks(self) -> int:
        sent = 0
        for w in self._watchers:
            if w.bookmarks:
                bookmark = {
                    "apiVersion": w.rtype.api_version,
                    "kind": w.rtype.kind,
                    "metadata": {"resourceVersion": str(self._rv)},
                }
                w.queue.put_nowait({"type": "BOOKMARK", "object": bookmark})
                sent += 1
        return sent

    async def _periodic_bookmarks(self) -> None:
        while True:
            await asyncio.sleep(self._bookmark_interval)
            self._enqueue_bookmarks()

    # ---- HTTP ----------------------------------------------------------------------------

    def _parse_path(self, path: str) -> tuple[ResourceType, str | None, str | None]:
        """``/api/v1/...`` or ``/apis/g/v/...`` -> (type, namespace, name)."""
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not 1 <= len(rest) <= 2 or (group, version, rest[0]) not in self._types:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        rtype = self._types[(group, version, rest[0])]
        if namespace is not None and not rtype.namespaced:
            raise ApiError(404, "NotFound", f"{rtype.plural} is not namespaced")
        return rtype, namespace, rest[1] if len(rest) == 2 else None

    def _take_fault(self, req: RecordedRequest) -> int | None:
        for fault in self._faults:
            if fault.remaining > 0 and fault.match(req):
                fault.remaining -= 1
                return fault.status
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        is_watch = query.get("watch") in ("true", "1", "True")
        try:
            resource = self._parse_path(request.path)[0].plural
        except ApiError:
            resource = None
        body = None
        if request.method in WRITE_METHODS and request.can_read_body:
            try:
                body = json.loads(await request.read())  # aiohttp caches it for the handler below
            except ValueError:
                body = None  # the handler answers 400 for it
        req = RecordedRequest(request.method, request.path, query, resource, is_watch, time.monotonic(),
                              request.content_type, body)
        with self._requests_lock:
            self._requests.append(req)
        try:
            status = self._take_fault(req)
            if status is not None:
                raise ApiError(status, "InternalError" if status >= 500 else "Injected", "injected fault")
            rtype, namespace, name = self._parse_path(request.path)
            if request.method == "GET" and name is None and is_watch:
                return await self._watch(request, rtype, namespace, query)
            if request.method == "GET" and name is None:
                return web.json_response(self._list(rtype, namespace, query))
            if request.method == "GET":
                return web.json_response(self._get(rtype, namespace, name))
            if request.method == "POST" and name is None:
                return web.json_response(self._create(rtype, await request.json(), namespace), status=201)
            if request.method == "PUT" and name is not None:
                body = await request.json()
                body.setdefault("metadata", {}).update(name=name, **({"namespace": namespace} if namespace else {}))
                return web.json_response(self._replace(rtype, body))
            if request.method == "PATCH" and name is not None:
                patched = self._patch(rtype, namespace, name, request.content_type, await request.json())
                return web.json_response(patched)
            if request.method == "DELETE" and name is not None:
                return web.json_response(self._delete(rtype, namespace or "", name))
            raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported on {request.path}")
        except ApiError as err:
            return web.json_response(err.status(), status=err.code)
        except json.JSONDecodeError as err:
            return web.json_response(ApiError(400, "BadRequest", f"invalid JSON: {err}").status(), status=400)

    def _get(self, rtype: ResourceType, namespace: str | None, name: str) -> dict:
        obj = self._objects[rtype].get((namespace or "", name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{rtype.plural} "{name}" not found')
        return obj

    def _list(self, rtype: ResourceType, namespace: str | None, query: dict[str, str]) -> dict:
        rv_param = query.get("resourceVersion", "")
        match = query.get("resourceVersionMatch", "")
        if match and not rv_param:
            raise ApiError(400, "BadRequest", "resourceVersionMatch is forbidden unless resourceVersion is provided")
        if match not in ("", "Exact", "NotOlderThan"):
            raise ApiError(400, "BadRequest", f"unknown resourceVersionMatch {match!r}")
        if match == "Exact" and rv_param == "0":
            raise ApiError(400, "BadRequest", "resourceVersionMatch Exact is forbidden for resourceVersion 0")
        list_rv = self._rv
        objects = self._objects[rtype]
        if match == "Exact":
            list_rv = int(rv_param)
            objects = self._state_at(rtype, list_rv)
        elif rv_param not in ("", "0") and int(rv_param) > self._rv:
            raise ApiError(504, "Timeout", f"Too large resource version: {rv_param}, current: {self._rv}")
        items = []
        for (ns, _), obj in sorted(objects.items()):
            if namespace in (None, ns):
                item = copy.deepcopy(obj)
                if rtype.builtin:
                    item.pop("kind", None)
                    item.pop("apiVersion", None)
                items.append(item)
        return {
            "kind": f"{rtype.kind}List",
            "apiVersion": rtype.api_version,
            "metadata": {"resourceVersion": str(list_rv)},
            "items": items,
        }

    def _patch(self, rtype: ResourceType, namespace: str | None, name: str, content_type: str, patch: Any) -> dict:
        obj = copy.deepcopy(self._get(rtype, namespace, name))
        if content_type == "application/json-patch+json":
            if not isinstance(patch, list):
                raise ApiError(400, "BadRequest", "json patch must be a list of operations")
            obj = _json_patch(obj, patch)
        elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            if not isinstance(patch, dict):
                raise ApiError(400, "BadRequest", "merge patch must be an object")
            obj = _merge_patch(obj, patch)
        else:
            raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {content_type}")
        obj.setdefault("metadata", {}).update(name=name)
        obj["metadata"].pop("resourceVersion", None)  # a patch applies to the latest version
        return self._replace(rtype, obj)

    async def _watch(
        self, request: web.Request, rtype: ResourceType, namespace: str | None, query: dict[str, str]
    ) -> web.StreamResponse:
        rv_param = query.get("resourceVersion", "")
        timeout = min(float(query.get("timeoutSeconds", WATCH_TIMEOUT_CAP)), WATCH_TIMEOUT_CAP)
        watcher = _Watcher(rtype, namespace, query.get("allowWatchBookmarks") in ("true", "1", "True"))
        # Errors about the starting point come as an ERROR event on a 200 stream, as from the real server.
        start_events: list[Any] = []
        if rv_param in ("", "0"):
            # "Start at most recent": synthetic ADDED events for the current state.
            for (ns, _), obj in sorted(self._objects[rtype].items()):
                if namespace in (None, ns):
                    start_events.append({"type": "ADDED", "object": copy.deepcopy(obj)})
        elif int(rv_param) < self._compacted_rv:
            error = ApiError(410, "Expired", f"too old resource version: {rv_param} ({self._compacted_rv})")
            start_events.extend([{"type": "ERROR", "object": error.status()}, _END])
        else:
            for ev_rv, ev_rtype, ev_kind, obj in self._history:
                in_scope = ev_rtype == rtype and namespace in (None, obj["metadata"].get("namespace"))
                if ev_rv > int(rv_param) and in_scope:
                    start_events.append({"type": ev_kind, "object": copy.deepcopy(obj)})
        for ev in start_events:
            watcher.queue.put_nowait(ev)
        self._watchers.append(watcher)  # same loop turn as the backlog: no event can slip between

        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            deadline = time.monotonic() + timeout
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
                if event is _END:
                    break
                if event is _DROP:
                    # Abort the socket: the client sees a broken chunked stream, not a clean end.
                    request.transport.abort()
                    return response
                await response.write(json.dumps(event).encode() + b"\n")
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away mid-write
        finally:
            self._watchers.remove(watcher)
        return response


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also used for strategic merge, close enough for maps)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _json_patch(obj: dict, ops: list[dict]) -> dict:
    """RFC 6902 add / replace / remove / test on object paths (enough for our helpers)."""
    obj = copy.deepcopy(obj)
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node = obj
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if op["op"] in ("add", "replace"):
            if isinstance(node, list) and op["op"] == "replace":
                node[int(last)] = op["value"]
            elif isinstance(node, list):
                node.insert(len(node) if last == "-" else int(last), op["value"])
            else:
                node[last] = op["value"]
        elif op["op"] == "remove":
            try:
                del node[int(last) if isinstance(node, list) else last]
            except (KeyError, IndexError):
                raise ApiError(422, "Invalid", f"remove: path {op['path']} does not exist") from None
        elif op["op"] == "test":
            if node.get(last) != op["value"]:
                raise ApiError(422, "Invalid", f"test failed at {op['path']}")
        else:
            raise ApiError(400, "BadRequest", f"unsupported json patch op {op['op']}")
    return obj
