"""Synthetic service workloads shared by the benchmarks.

``manifests(n, m)`` builds API dicts for one Node (``NODE``) and ``n``
NodePort Services with one TCP port each ("http", 80 -> endpoint port 8080)
and ``m`` endpoints, a third of them on ``NODE``; ClusterIPs are 172.16.0.0
onwards, endpoints 10.<i/256>.<i%256>.<j+1>.

>>> docs = manifests(2, 3)
>>> [d["kind"] for d in docs]
['Node', 'Service', 'EndpointSlice', 'Service', 'EndpointSlice']
"""

from __future__ import annotations

NODE = "node-1"


def manifests(n: int, m: int) -> list[dict]:
    docs = [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE},
             "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"}]}}]
    for i in range(n):
        name = f"svc{i}"
        docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "bench"},
                     "spec": {"type": "NodePort", "clusterIP": f"172.{16 + i // 65536}.{i // 256 % 256}.{i % 256}",
                              "ports": [{"name": "http", "port": 80, "nodePort": 20000 + i % 40000}]}})
        docs.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                     "metadata": {"name": f"{name}-1", "namespace": "bench",
                                  "labels": {"kubernetes.io/service-name": name}},
                     "ports": [{"name": "http", "port": 8080}],
                     "endpoints": [{"addresses": [f"10.{i // 256 % 256}.{i % 256}.{j + 1}"],
                                    "nodeName": NODE if j % 3 == 0 else "node-2"} for j in range(m)]})
    return docs


def drop_last_endpoint(docs: list[dict], service_index: int = 0) -> dict:
    """The EndpointSlice of service ``service_index`` with its last endpoint removed (a one-endpoint change)."""
    sl = docs[2 + 2 * service_index]
    return dict(sl, endpoints=sl["endpoints"][:-1])
