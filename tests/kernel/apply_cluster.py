"""A small cluster as API dicts, and a node to apply it to, for the Dataplane.apply tests.

node-1 (this node, 10.0.0.1) runs pods a, b, c; node-2 (10.0.0.2) runs pod r::

    d/web   ClusterIP 10.96.0.10:80            -> b:8080, c:8080
    d/np    NodePort :30080 (port 81), eTP Local -> b:8080 (node-1), r:8080 (node-2)
    d/lb    LoadBalancer 192.0.2.50:80 from 198.51.100.0/24 only -> c:8080
    d/itp   ClusterIP 10.96.0.13:80, iTP Local  -> b:8080 (node-1), r:8080 (node-2)

Packets are run in a private netns holding veths named as Calico names the
pods' host-side interfaces, plus ``hep`` (the data interface).
"""

from __future__ import annotations

import copy

from calico_ebpf.compiler import veth_name
from calico_ebpf.dataplane import Dataplane
from calico_ebpf.dataplane.config import NodeConfig
from calico_ebpf.kernel.netns import Netns, veth_pair
from calico_ebpf.model import ClusterState

NODE = "node-1"
HOST_IP, REMOTE_HOST = "10.0.0.1", "10.0.0.2"
POD_IPS = {"a": "10.65.0.2", "b": "10.65.0.3", "c": "10.65.0.4", "r": "10.65.1.5"}
LOCAL_PODS = ("a", "b", "c")
WEB_VIP, ITP_VIP, LB_IP = "10.96.0.10", "10.96.0.13", "192.0.2.50"
ALLOWED_SRC, EXTERNAL = "198.51.100.9", "203.0.113.7"
TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7


def _node(name: str, ip: str, cidr: str) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "spec": {"podCIDR": cidr}, "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}


def _pod(name: str) -> dict:
    node = NODE if name in LOCAL_PODS else "node-2"
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "d"},
            "spec": {"nodeName": node}, "status": {"podIP": POD_IPS[name], "phase": "Running"}}


def service(name: str, cluster_ip: str, port: int, *, type_: str = "ClusterIP", node_port: int | None = None,
            protocol: str = "TCP", **spec) -> dict:
    p = {"name": "http", "port": port, "protocol": protocol}
    if node_port is not None:
        p["nodePort"] = node_port
    status = spec.pop("status", None)
    d = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "d"},
         "spec": {"type": type_, "clusterIP": cluster_ip, "ports": [p], **spec}}
    if status:
        d["status"] = status
    return d


def endpoints(service_name: str, pods, port: int = 8080, protocol: str = "TCP") -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": f"{service_name}-1", "namespace": "d",
                         "labels": {"kubernetes.io/service-name": service_name}},
            "ports": [{"name": "http", "port": port, "protocol": protocol}],
            "endpoints": [{"addresses": [POD_IPS[p]], "nodeName": NODE if p in LOCAL_PODS else "node-2",
                           "conditions": {"ready": True}} for p in pods]}


def cluster_docs() -> list[dict]:
    return [
        _node(NODE, HOST_IP, "10.65.0.0/24"),
        _node("node-2", REMOTE_HOST, "10.65.1.0/24"),
        {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "default"},
         "spec": {"cidr": "10.65.0.0/16", "vxlanMode": "Always", "natOutgoing": True}},
        *(_pod(p) for p in POD_IPS),
        service("web", WEB_VIP, 80), endpoints("web", ["b", "c"]),
        service("np", "10.96.0.11", 81, type_="NodePort", node_port=30080, externalTrafficPolicy="Local"),
        endpoints("np", ["b", "r"]),
        service("lb", "10.96.0.12", 80, type_="LoadBalancer", node_port=30081,
                loadBalancerSourceRanges=["198.51.100.0/24"],
                status={"loadBalancer": {"ingress": [{"ip": LB_IP}]}}),
        endpoints("lb", ["c"]),
        service("itp", ITP_VIP, 80, internalTrafficPolicy="Local"), endpoints("itp", ["b", "r"]),
    ]


def state_of(docs) -> ClusterState:
    return ClusterState.from_dicts(copy.deepcopy(docs))


class NodeNetns:
    """The test netns: one veth per local pod (Calico's name) and ``hep``."""

    def __init__(self):
        self.ns = Netns(prefix="applytest")
        self.ifindex: dict[str, int] = {}
        try:
            for pod in LOCAL_PODS:
                name = veth_name("d", pod)
                veth_pair(name, f"peer{pod}", netns=self.ns, peer_netns=self.ns)
                self.ifindex[pod] = self.ns.ifindex(name)
            veth_pair("hep", "hep_p", netns=self.ns, peer_netns=self.ns)
            self.ifindex["hep"] = self.ns.ifindex("hep")
        except BaseException:
            self.ns.delete()
            raise

    def register(self, dp: Dataplane) -> None:
        """Tell ``dp`` what each interface is (as the agent does when a veth appears)."""
        for pod in LOCAL_PODS:
            dp.set_interface(self.ifindex[pod], veth_name("d", pod), "wep")
        dp.set_interface(self.ifindex["hep"], "hep", "hep")

    def run(self, dp: Dataplane, frame: bytes, where: str, hook: str = "from"):
        with self.ns.enter():
            return dp.run(hook, frame, self.ifindex[where])

    def delete(self):
        self.ns.delete()


SMALL_MAPS = {"cebpf_ct": 4096, "cebpf_counters": 256, "cebpf_nat_aff": 1024, "cebpf_jump": 64}


def new_dataplane(state: ClusterState, netns: NodeNetns, pin_dir: str | None = None, **sizes) -> Dataplane:
    dp = Dataplane(NodeConfig.from_state(state, NODE), pin_dir=pin_dir, max_entries={**SMALL_MAPS, **sizes})
    netns.register(dp)
    return dp
