"""Informer: list then watch one kind, keep a local cache, deliver changes to a callback.

Example::

    from calico_ebpf.k8s import Informer, load_api_client

    def on_event(event_type, obj):          # "ADDED" | "MODIFIED" | "DELETED", plain API dict
        print(event_type, obj["metadata"]["name"])

    services = Informer(load_api_client(), "services", on_event).start()
    services.wait_for_sync(timeout=30)
    ...
    services.stop()

What it guarantees, in the spirit of client-go's reflector:

- The first list delivers every object as ADDED; then a watch from the list's
  resourceVersion delivers changes in the order the API server made them.
- BOOKMARK events only move the resourceVersion forward, so a reconnect after
  a quiet period resumes from a recent revision instead of a compacted one.
- A dropped watch resumes from the last resourceVersion seen. When that
  revision has been compacted (410 Gone / "Expired") the informer lists again
  and delivers the difference against its cache: objects that went away while
  it was not watching arrive as DELETED (with their last known state).
- Errors are retried with jittered exponential backoff (:class:`Backoff`).
- The callback runs on the informer's thread, one event at a time; keep it
  short (hand off to a :class:`~calico_ebpf.k8s.debounce.Debouncer`). An
  exception from it is logged and does not stop the informer.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from calico_ebpf.k8s.backoff import Backoff
from calico_ebpf.k8s.resources import RESOURCES, Resource

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

EventHandler = Callable[[str, dict], Any]

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"
_READ_SLACK = 15.0  # seconds a watch read may stay idle beyond the server-side timeout
_MIN_HEALTHY_WATCH = 1.0  # a watch that ends cleanly and silently sooner than this counts as a failure


class WatchExpired(Exception):
    """The resourceVersion we resume from has been compacted away (HTTP 410 / "Expired")."""


class WatchError(Exception):
    """The API server ended a watch with an ERROR event other than 410."""


def object_key(obj: dict) -> str:
    """The cache key of an object: ``namespace/name``, or ``name`` for cluster-scoped kinds."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    return f"{namespace}/{meta.get('name')}" if namespace else str(meta.get("name"))


class Informer:
    """List-then-watch one kind into a local cache, calling ``on_event(type, obj)`` per change.

    ``resource`` is a :class:`Resource` or a key of :data:`RESOURCES`. With
    ``namespace`` it follows one namespace only. ``resync`` (seconds) makes it
    list again that often and deliver any difference, a guard against events
    lost by a misbehaving server; None (default) never does. ``watch_timeout``
    is how long one watch request lasts on the server side before it is
    renewed.
    """

    def __init__(
        self,
        api_client: ApiClient,
        resource: Resource | str,
        on_event: EventHandler,
        *,
        namespace: str | None = None,
        resync: float | None = None,
        watch_timeout: int = 300,
        backoff: Backoff | None = None,
        connect_timeout: float = 10.0,
        list_timeout: float = 60.0,
    ):
        self.resource = RESOURCES[resource] if isinstance(resource, str) else resource
        self.namespace = namespace
        self._lister = self.resource.lister(api_client, namespace)
        self._on_event = on_event
        self._resync = resync
        self._watch_timeout = max(1, int(watch_timeout))
        self._backoff = backoff or Backoff()
        self._connect_timeout = connect_timeout
        self._list_timeout = list_timeout
        self.name = f"{self.resource.plural}" + (f"@{namespace}" if namespace else "")

        self._lock = threading.Lock()  # guards _store, _rv and _response
        self._store: dict[str, dict] = {}
        self._rv: str | None = None
        self._response: Any = None  # the open watch, so stop() can cut it
        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_resync = math.inf

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> Informer:
        """Start the background thread (list, then watch); returns self."""
        if self._thread is not None:
            raise RuntimeError(f"informer {self.name} already started")
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop watching and join the thread; True when it ended within ``timeout`` seconds.

        An open watch is cut at once; a list in flight finishes first (it is
        bounded by ``list_timeout``).
        """
        self._stopping.set()
        with self._lock:
            response = self._response
        if response is not None:
            _interrupt(response)
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- reading the cache -------------------------------------------------------------------

    def has_synced(self) -> bool:
        """True once the first list has been delivered."""
        return self._synced.is_set()

    def wait_for_sync(self, timeout: float | None = None) -> bool:
        """Block until the first list has been delivered; False on timeout."""
        return self._synced.wait(timeout)

    @property
    def resource_version(self) -> str | None:
        """The resourceVersion the next watch resumes from."""
        with self._lock:
            return self._rv

    def list(self) -> list[dict]:
        """The cached objects (the dicts are shared with the cache: do not mutate them)."""
        with self._lock:
            return list(self._store.values())

    def get(self, name: str, namespace: str | None = None) -> dict | None:
        """The cached object, or None."""
        with self._lock:
            return self._store.get(f"{namespace}/{name}" if namespace else name)

    # ---- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        need_list, consistent = True, False
        while not self._stopping.is_set():
            try:
                if need_list or time.monotonic() >= self._next_resync:
                    # The first list may come from the server's cache (rv=0, cheap for a big
                    # cluster); after a 410 or for a resync it must be a consistent read, or
                    # the cache could step back in time.
                    self._list(consistent or not need_list)
                    need_list, consistent = False, False
                if self._watch():
                    continue
                log.warning("informer %s: watch ended at once without events", self.name)
            except WatchExpired as exc:
                log.info("informer %s: %s; listing again", self.name, exc)
                need_list, consistent = True, True
            except Exception as exc:  # noqa: BLE001 - network, HTTP and protocol errors alike: retry
                if self._stopping.is_set():
                    break
                if isinstance(exc, ApiException):
                    if exc.status == 410:
                        need_list, consistent = True, True
                    # str(ApiException) carries headers and body over several lines: too noisy per retry.
                    log.warning("informer %s: HTTP %s %s", self.name, exc.status, exc.reason)
                else:
                    log.warning("informer %s: %s: %s", self.name, type(exc).__name__, exc)
            self._stopping.wait(self._backoff.next())

    def _list(self, consistent: bool) -> None:
        response = self._lister(
            resource_version=None if consistent else "0",
            _preload_content=False,
            _request_timeout=(self._connect_timeout, self._list_timeout),
        )
        try:
            body = json.loads(response.data)
        finally:
            response.release_conn()
        fresh: dict[str, dict] = {}
        for item in body.get("items") or []:
            self._complete(item)
            fresh[object_key(item)] = item
        events: list[tuple[str, dict]] = []
        with self._lock:
            for key, obj in self._store.items():
                if key not in fresh:
                    events.append((DELETED, obj))
            for key, obj in fresh.items():
                old = self._store.get(key)
                if old is None:
                    events.append((ADDED, obj))
                elif _rv_of(old) != _rv_of(obj):
                    events.append((MODIFIED, obj))
            self._store = fresh
            self._rv = (body.get("metadata") or {}).get("resourceVersion")
        if self._resync:
            self._next_resync = time.monotonic() + self._resync
        for event_type, obj in events:
            self._deliver(event_type, obj)
        self._synced.set()

    def _watch(self) -> bool:
        """One watch request; False when it ended cleanly at once with nothing received."""
        timeout = self._watch_timeout
        if self._resync:
            timeout = min(timeout, max(1, math.ceil(self._next_resync - time.monotonic())))
        started = time.monotonic()
        response = self._lister(
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            _preload_content=False,
            _request_timeout=(self._connect_timeout, timeout + _READ_SLACK),
        )
        with self._lock:
            self._response = response
        received = 0
        try:
            if self._stopping.is_set():  # stop() ran before we published the response
                return True
            for line in _lines(response):
                if self._stopping.is_set():
                    return True
                self._apply(json.loads(line))
                received += 1
                self._backoff.reset()
        finally:
            with self._lock:
                self._response = None
            response.close()
            response.release_conn()
        if received == 0 and time.monotonic() - started < _MIN_HEALTHY_WATCH:
            return self._stopping.is_set()
        self._backoff.reset()
        return True

    def _apply(self, event: dict) -> None:
        event_type = event.get("type")
        obj = event.get("object") or {}
        if event_type == "ERROR":
            if obj.get("code") == 410:
                raise WatchExpired(obj.get("message") or "resource version expired")
            raise WatchError(f"{obj.get('code')} {obj.get('reason')}: {obj.get('message')}")
        rv = _rv_of(obj)
        if event_type == "BOOKMARK":
            if rv:
                with self._lock:
                    self._rv = rv
            return
        if event_type not in (ADDED, MODIFIED, DELETED):
            log.warning("informer %s: ignoring watch event of type %r", self.name, event_type)
            return
        self._complete(obj)
        key = object_key(obj)
        with self._lock:
            if event_type == DELETED:
                self._store.pop(key, None)
            else:
                self._store[key] = obj
            if rv:
                self._rv = rv
        self._deliver(event_type, obj)

    def _complete(self, obj: dict) -> None:
        # List items of built-in kinds come without kind/apiVersion; the model layer needs them.
        obj.setdefault("apiVersion", self.resource.api_version)
        obj.setdefault("kind", self.resource.kind)

    def _deliver(self, event_type: str, obj: dict) -> None:
        try:
            self._on_event(event_type, obj)
        except Exception:
            log.exception("informer %s: event handler failed on %s %s", self.name, event_type, object_key(obj))


def _rv_of(obj: dict) -> str | None:
    return (obj.get("metadata") or {}).get("resourceVersion")


def _lines(response: Any) -> Iterator[bytes]:
    """Complete JSON lines from a streaming watch response, as the chunks arrive."""
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=True):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield line


def _interrupt(response: Any) -> None:
    """Wake a thread blocked reading ``response`` (urllib3 >= 2.3 can shut the socket down)."""
    try:
        shutdown = getattr(response, "shutdown", None)
        (shutdown or response.close)()
    except OSError:
        pass  # already closed: the reader is waking up anyway
