"""Kubernetes side (L5): informers that follow the API server, and helpers for the agent.

- :class:`Informer` lists then watches one kind into a local cache and calls
  back with plain API dicts (``resources.RESOURCES`` names the kinds);
- :class:`Debouncer` turns bursts of events into one dataplane apply;
- :func:`load_api_client` builds an ApiClient in a pod or from a kubeconfig;
- :class:`Agent` is the node agent (``calico-ebpf agent``): informers -> Dataplane, the node's
  interfaces attached (:class:`Endpoints`), policy synced. Both load on first use (they pull in
  the dataplane and the HTTP servers).
"""

from calico_ebpf.k8s.backoff import Backoff
from calico_ebpf.k8s.config import load_api_client, load_in_cluster_client
from calico_ebpf.k8s.debounce import Debouncer
from calico_ebpf.k8s.informer import ADDED, DELETED, MODIFIED, Informer, WatchError, WatchExpired, object_key
from calico_ebpf.k8s.resources import RESOURCES, Resource

__all__ = [
    "ADDED",
    "DELETED",
    "MODIFIED",
    "RESOURCES",
    "Agent",
    "Backoff",
    "Debouncer",
    "Endpoints",
    "Informer",
    "Resource",
    "WatchError",
    "WatchExpired",
    "load_api_client",
    "load_in_cluster_client",
    "object_key",
]


_LAZY = {"Agent": "calico_ebpf.k8s.agent", "Endpoints": "calico_ebpf.k8s.endpoints"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
