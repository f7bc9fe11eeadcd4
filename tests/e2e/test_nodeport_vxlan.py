"""Real traffic: an external client reaches a NodePort on node-1 whose only
backend pod lives on node-2; node-1's datapath forwards the flow in VXLAN,
the pod sees the client's own address, and the reply returns through
node-1 (Tunnel mode) or straight from node-2 (DSR).

The lab (calico_ebpf.lab) gives two node namespaces on a fabric bridge and
an external client; each node gets its own scratch Dataplane attached to
its data interface (eth0, host endpoint) and its pods' cali veths, with
routes, the NodePort and the tunnel settings written straight into the
maps. The lab's vxlan.calico devices (VNI 4096) are left to the kernel: the
NodePort tunnel uses its own VNI and never touches them.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from calico_ebpf.dataplane import Dataplane
from calico_ebpf.dataplane.tunnel import set_tunnel, tunnel_config
from calico_ebpf.kernel.netns import unique_name
from calico_ebpf.lab import Lab, WorkloadError
from calico_ebpf.lab.plan import UNDERLAY_MTU
from calico_ebpf.maps.entries import (
    Counter,
    CounterHook,
    CtFlags,
    CtKey,
    CtLegFlags,
    CtType,
    CtValue,
    NatFlags,
    NatFrontendValue,
    Proto,
    RouteFlags,
)

pytestmark = pytest.mark.timeout(90)

NODE_PORT, LOCAL_ONLY_PORT, POD_PORT = 30080, 30081, 8080
BULK_NODE_PORT, BULK_POD_PORT = 30082, 8081
WILDCARD = "255.255.255.255"  # NodePort frontends: any host IP of the node
LOCAL_WEP = RouteFlags.LOCAL | RouteFlags.WORKLOAD | RouteFlags.IN_POOL
REMOTE_WEP = RouteFlags.WORKLOAD | RouteFlags.IN_POOL | RouteFlags.TUNNELED | RouteFlags.VXLAN


class Cluster:
    """The lab plus one datapath per node, programmed like an agent would."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.a, self.b = lab.node("node-1"), lab.node("node-2")
        self.backend = lab.pod("node-2", 0)
        self.dps: dict[str, Dataplane] = {}
        for node in (self.a, self.b):
            self.dps[node.name] = self._program(node)

    def _program(self, node) -> Dataplane:
        dp = Dataplane(pin_dir=None)
        self.dps[node.name] = dp
        dp.set_route(f"{node.underlay_ip}/32", RouteFlags.LOCAL | RouteFlags.HOST, ifindex=node.underlay_ifindex)
        for other in self.lab.nodes:
            if other is not node:
                dp.set_route(f"{other.underlay_ip}/32", RouteFlags.HOST, next_hop=other.underlay_ip)
                dp.set_route(other.block, REMOTE_WEP, next_hop=other.underlay_ip)
        dp.attach(node.underlay_ifindex, "eth0", "hep", netns=node.netns)
        for pod in node.pods:
            dp.set_route(f"{pod.ip}/32", LOCAL_WEP, ifindex=pod.veth_ifindex)
            dp.attach(pod.veth_ifindex, pod.veth, "wep", netns=node.netns)
        local = 1 if self.backend.node is node else 0
        dp.set_backends(1, [(self.backend.ip, POD_PORT)])
        # A NodePort as the service compiler writes it: this node's IP (what external clients
        # reach) plus the wildcard (what arrives through the NodePort tunnel).
        for addr in (node.underlay_ip, WILDCARD):
            for proto in ("tcp", "udp"):
                dp.set_frontend(addr, NODE_PORT, proto, NatFrontendValue(id=1, count=1, local=local))
            dp.set_frontend(addr, BULK_NODE_PORT, "tcp", NatFrontendValue(id=2, count=1, local=local))
            # externalTrafficPolicy: Local
            dp.set_frontend(addr, LOCAL_ONLY_PORT, "tcp",
                            NatFrontendValue(id=1, count=1, local=local, flags=NatFlags.EXTERNAL_LOCAL))
        dp.set_backends(2, [(self.backend.ip, BULK_POD_PORT)])
        return dp

    def mode(self, mode: str) -> None:
        for node in (self.a, self.b):
            set_tunnel(self.dps[node.name], node.underlay_ip, underlay_mtu=UNDERLAY_MTU, mode=mode)

    def counters(self, node, hook=CounterHook.TC_INGRESS):
        return self.dps[node.name].counters(node.underlay_ifindex, hook)

    def close(self) -> None:
        for dp in self.dps.values():
            dp.detach_all()
            dp.close()


@pytest.fixture(scope="module")
def cluster(bpf_objects):
    with Lab(nodes=2, pods_per_node=1, prefix=unique_name("np", maxlen=12)) as lab:
        c = Cluster(lab)
        try:
            yield c
        finally:
            c.close()


@pytest.fixture(scope="module")
def bpf_objects():
    import sys
    from importlib.resources import files
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    import build_bpf

    build_bpf.build_all(str(files("calico_ebpf._bpf")))


@pytest.mark.parametrize("mode", ["Tunnel", "DSR"])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_nodeport_via_other_node_preserves_client_ip(cluster, mode, proto):
    cluster.mode(mode)
    client = cluster.lab.external
    encap_before = cluster.counters(cluster.a)[Counter.REDIRECT_NEIGH]
    decap_b_before = cluster.counters(cluster.b)[Counter.TOTAL]
    reply = client.request(cluster.a.underlay_ip, NODE_PORT, proto=proto, payload=f"{mode}-{proto}".encode())
    assert reply.server == cluster.backend.name
    assert reply.peer_ip == client.ip  # the pod saw the client, not node-1
    assert reply.payload == f"{mode}-{proto}".encode()
    # Node-1 redirected the request into the tunnel itself; node-2's data
    # interface got it (and the pod answered through our programs).
    assert cluster.counters(cluster.a)[Counter.REDIRECT_NEIGH] > encap_before
    assert cluster.counters(cluster.b)[Counter.TOTAL] > decap_b_before
    assert tunnel_config(cluster.dps["node-1"]).dsr == (mode == "DSR")


@pytest.mark.parametrize("mode", ["Tunnel", "DSR"])
def test_reply_path_follows_the_mode(cluster, mode):
    """Node-1's conntrack says who carried the replies: node-1 itself (Tunnel) or nobody it saw (DSR)."""
    cluster.mode(mode)
    client = cluster.lab.external
    reply = client.request(cluster.a.underlay_ip, NODE_PORT, payload=b"which way")
    assert reply.peer_ip == client.ip
    # The client's port survives too: the pod saw exactly the client's tuple.
    key = CtKey.for_flow(client.ip, reply.peer_port, cluster.backend.ip, POD_PORT, Proto.TCP)
    raw = cluster.dps["node-1"].maps["cebpf_ct"].lookup(key.to_bytes())
    assert raw is not None, "node-1 tracks the forwarded flow by client and backend"
    rev = CtValue.from_bytes(raw)
    assert rev.type == CtType.NAT_REV and str(rev.tun_ip) == cluster.b.underlay_ip
    assert rev.flags & CtFlags.NP_FWD and bool(rev.flags & CtFlags.DSR_FWD) == (mode == "DSR")
    opener, responder = (rev.a_to_b, rev.b_to_a) if rev.a_to_b.flags & CtLegFlags.OPENER else (rev.b_to_a, rev.a_to_b)
    assert opener.packets >= 3  # SYN, ACK, data (+FIN...)
    if mode == "DSR":
        assert responder.packets == 0
    else:
        assert responder.packets >= 2  # SYN-ACK, data (+FIN...)


@pytest.mark.parametrize("mode", ["Tunnel", "DSR"])
def test_bulk_tcp_both_ways(cluster, mode):
    """Megabytes each way: GSO super-packets are encapsulated and decapsulated whole."""
    cluster.mode(mode)
    size = 2_000_000
    srv = cluster.backend.run(socket.socket)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", BULK_POD_PORT))
    srv.listen(1)
    srv.settimeout(10)
    seen = {}

    def serve():
        conn, peer = srv.accept()
        with conn:
            conn.settimeout(10)
            while data := conn.recv(1 << 16):
                seen["bytes"] = seen.get("bytes", 0) + len(data)
            seen["peer"] = peer[0]
            conn.sendall(b"r" * size)

    def fetch() -> int:
        with socket.socket() as s:
            s.settimeout(10)
            s.connect((cluster.a.underlay_ip, BULK_NODE_PORT))
            s.sendall(b"q" * size)
            s.shutdown(socket.SHUT_WR)
            got = 0
            while data := s.recv(1 << 16):
                got += len(data)
            return got

    server = threading.Thread(target=serve)
    server.start()
    try:
        assert cluster.lab.external.run(fetch) == size
    finally:
        server.join(10)
        srv.close()
    assert seen == {"bytes": size, "peer": cluster.lab.external.ip}


IP_MTU_DISCOVER, IP_PMTUDISC_DO, IP_MTU = 10, 2, 14  # <linux/in.h>


def test_too_big_datagram_teaches_the_client_the_tunnel_mtu(cluster):
    """A full-size DF datagram cannot be forwarded in VXLAN: node-1 answers
    fragmentation needed with the tunnel MTU, the client's kernel lowers its
    path MTU to it, and a datagram of that size then goes through."""
    cluster.mode("Tunnel")
    client = cluster.lab.external
    mtu = tunnel_config(cluster.dps["node-1"]).mtu
    assert mtu == UNDERLAY_MTU - 50

    def learn_path_mtu() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
            s.connect((cluster.a.underlay_ip, NODE_PORT))
            s.send(b"x" * (UNDERLAY_MTU - 28))  # a 1500-byte IP packet: fits the link, not the tunnel
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                path_mtu = s.getsockopt(socket.IPPROTO_IP, IP_MTU)
                if path_mtu < UNDERLAY_MTU:
                    return path_mtu
                time.sleep(0.05)
            return path_mtu

    def send_exactly_mtu() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
            s.sendto(b"y" * (mtu - 28), (cluster.a.underlay_ip, NODE_PORT))

    a_before = cluster.counters(cluster.a)
    assert client.run(learn_path_mtu) == mtu
    a_after = cluster.counters(cluster.a)
    assert a_after[Counter.DROP_ENCAP] == a_before[Counter.DROP_ENCAP] + 1

    # A datagram of exactly the tunnel MTU fits: it reaches the pod. (The
    # pod's answer to it cannot be sent: pod veths have the tunnel MTU, as
    # Calico sizes them; the backend side's frag-needed is a test_run test.)
    pod_if = cluster.backend.veth_ifindex
    to_pod = cluster.dps["node-2"].counters(pod_if, CounterHook.TC_EGRESS)[Counter.TOTAL]
    client.run(send_exactly_mtu)
    deadline = time.monotonic() + 3
    while (cluster.dps["node-2"].counters(pod_if, CounterHook.TC_EGRESS)[Counter.TOTAL] == to_pod
           and time.monotonic() < deadline):
        time.sleep(0.05)
    assert cluster.dps["node-2"].counters(pod_if, CounterHook.TC_EGRESS)[Counter.TOTAL] == to_pod + 1
    assert cluster.counters(cluster.a)[Counter.DROP_ENCAP] == a_after[Counter.DROP_ENCAP]

    reply = client.request(cluster.a.underlay_ip, NODE_PORT, proto="udp", payload=b"z" * 1000)
    assert (reply.peer_ip, reply.payload) == (client.ip, b"z" * 1000)


def test_external_traffic_policy_local_only_on_nodes_with_endpoints(cluster):
    cluster.mode("Tunnel")
    client = cluster.lab.external
    with pytest.raises(WorkloadError):
        client.request(cluster.a.underlay_ip, LOCAL_ONLY_PORT, timeout=1.0)
    reply = client.request(cluster.b.underlay_ip, LOCAL_ONLY_PORT)
    assert (reply.server, reply.peer_ip) == (cluster.backend.name, client.ip)
