"""Kubernetes side (L5): informers that follow the API server, and helpers for the agent.

- :class:`Informer` lists then watches one kind into a local cache and calls
  back with plain API dicts (``resources.RESOURCES`` names the kinds);
- :class:`Debouncer` turns bursts of events into one dataplane apply;
- :func:`load_api_client` builds an ApiClient in a pod or from a kubeconfig.
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
    "Backoff",
    "Debouncer",
    "Informer",
    "Resource",
    "WatchError",
    "WatchExpired",
    "load_api_client",
    "load_in_cluster_client",
    "object_key",
]
