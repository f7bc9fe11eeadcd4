"""Which endpoints of a Service port are usable, local ones first.

kube-proxy's rules (``kube-proxy-semantics.md`` §3): the *cluster set* is the
ready endpoints, else the serving-and-terminating ones; the *local set* is
this node's ready endpoints, else this node's serving-and-terminating ones.
Not-serving endpoints are never used. The backend map holds one block per
service id with the local endpoints at ordinals ``0..local-1`` (Calico's
layout), so we emit ``local set + (cluster set - local set)``.

The local fallback is only computed for services where a Local policy is in
force: otherwise a node-local terminating endpoint would join the cluster
view while ready endpoints exist elsewhere.

>>> from calico_ebpf.model import EndpointSlice
>>> s = EndpointSlice.from_dict({"kind": "EndpointSlice", "addressType": "IPv4",
...     "metadata": {"name": "w", "namespace": "d", "labels": {"kubernetes.io/service-name": "w"}},
...     "ports": [{"name": "http", "port": 8080}],
...     "endpoints": [{"addresses": ["10.0.0.9"], "nodeName": "other"},
...                   {"addresses": ["10.0.0.7"], "nodeName": "me"},
...                   {"addresses": ["10.0.0.8"], "conditions": {"ready": False, "serving": False}}]})
>>> select_backends([s], "http", "TCP", "me", local_policy=False)
((('10.0.0.7', 8080), ('10.0.0.9', 8080)), 1)
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

from calico_ebpf.model.discovery import EndpointSlice

Backend = tuple[str, int]  # (canonical IP, port)


def _order(backends: Iterable[Backend]) -> list[Backend]:
    # Numeric address order (inet_pton bytes sort like the numbers) keeps the
    # block stable and readable; port breaks ties.
    return sorted(backends, key=lambda b: (socket.inet_pton(socket.AF_INET6 if ":" in b[0] else socket.AF_INET, b[0]), b[1]))


def select_backends(slices: Iterable[EndpointSlice], port_name: str, protocol: str, node_name: str,
                    local_policy: bool, family: int = 4) -> tuple[tuple[Backend, ...], int]:
    """(backends local-first, local count) for one Service port.

    The backend port is the EndpointSlice port with the Service port's name
    and protocol (kube-proxy ignores the Service's targetPort). Endpoints
    listed twice (across slices) appear once; local wins over remote.
    """
    address_type = "IPv6" if family == 6 else "IPv4"
    ready_local: dict[Backend, None] = {}
    ready_remote: dict[Backend, None] = {}
    term_local: dict[Backend, None] = {}
    term_remote: dict[Backend, None] = {}
    for s in slices:
        if s.address_type != address_type:
            continue
        number = None
        for p in s.ports:
            if p.name == port_name and p.protocol == protocol:
                number = p.port
                break
        if number is None:
            continue
        for e in s.endpoints:
            c = e.conditions
            if c.ready:
                bucket = ready_local if e.node_name == node_name else ready_remote
            elif c.serving and c.terminating:
                bucket = term_local if e.node_name == node_name else term_remote
            else:
                continue
            bucket[(e.addresses[0], number)] = None  # kube-proxy uses an endpoint's first address only

    if ready_local or ready_remote:
        cluster_local, cluster_remote = ready_local, ready_remote
    else:
        cluster_local, cluster_remote = term_local, term_remote
    local = (ready_local or term_local) if local_policy else cluster_local
    remote = [b for b in cluster_remote if b not in local]
    ordered_local = _order(local)
    return tuple(ordered_local + _order(remote)), len(ordered_local)
