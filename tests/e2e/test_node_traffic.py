"""Real traffic through the datapath on one node built from network namespaces.

    node netns (the test's own host namespace; 169.254.1.1 on lo answers the
    pods' gateway ARP)
      cali_a <-> pod A 10.65.0.2 (client)
      cali_b <-> pod B 10.65.0.3 (backend)
      cali_c <-> pod C 10.65.0.4 (backend, and the spoofer)

The tc programs are attached to the three host-side veths; a ClusterIP
service 10.96.0.10 (TCP 80 -> 8080, UDP 53 -> 5353) is programmed straight
into the maps. Plain sockets run inside the namespaces.
"""

from __future__ import annotations

import errno
import socket
import sys
import threading
import time
from importlib.resources import files
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP

from calico_ebpf.dataplane import Dataplane
from calico_ebpf.kernel.netns import Netns, unique_name, veth_pair
from calico_ebpf.maps.entries import Counter, CounterHook, NatFrontendValue, RouteFlags

GATEWAY = "169.254.1.1"
PODS = {"a": "10.65.0.2", "b": "10.65.0.3", "c": "10.65.0.4"}
VIP, EMPTY_VIP, SELF_VIP = "10.96.0.10", "10.96.0.20", "10.96.0.30"
SCOPE_LINK = 253


def _sysctl(ns: Netns, path: str, value: str) -> None:
    def write():
        with open(f"/proc/sys/{path}", "w") as f:
            f.write(value)

    ns.run(write)


class Node:
    def __init__(self):
        self.node = Netns(prefix="e2enode")
        self.pods: dict[str, Netns] = {}
        self.ifindex: dict[str, int] = {}
        self.dp = None
        try:
            self._build()
        except BaseException:
            self.delete()
            raise

    def _build(self):
        node_ipr = self.node.iproute()
        node_ipr.addr("add", index=self.node.ifindex("lo"), address=GATEWAY, prefixlen=32)
        _sysctl(self.node, "net/ipv4/ip_forward", "1")
        for name, ip in PODS.items():
            pod = Netns(prefix=f"e2epod{name}")
            self.pods[name] = pod
            host_if = unique_name(f"cali{name}")
            veth_pair(host_if, "eth0", netns=self.node, peer_netns=pod)
            self.ifindex[name] = self.node.ifindex(host_if)
            node_ipr.route("add", dst=f"{ip}/32", oif=self.ifindex[name], scope=SCOPE_LINK)
            pod.add_address("eth0", f"{ip}/32")
            pod_ipr = pod.iproute()
            eth0 = pod.ifindex("eth0")
            pod_ipr.route("add", dst=f"{GATEWAY}/32", oif=eth0, scope=SCOPE_LINK)
            pod_ipr.route("add", dst="0.0.0.0/0", gateway=GATEWAY, oif=eth0)

        self.dp = Dataplane(pin_dir=None)
        for name, ip in PODS.items():
            self.dp.set_route(f"{ip}/32", RouteFlags.LOCAL | RouteFlags.WORKLOAD, ifindex=self.ifindex[name])
            self.dp.attach(self.ifindex[name], f"cali{name}", "wep", netns=self.node)
        backends = [(PODS["b"], 8080), (PODS["c"], 8080)]
        self.dp.set_backends(1, backends)
        self.dp.set_frontend(VIP, 80, "tcp", NatFrontendValue(id=1, count=2))
        self.dp.set_backends(2, [(PODS["b"], 5353), (PODS["c"], 5353)])
        self.dp.set_frontend(VIP, 53, "udp", NatFrontendValue(id=2, count=2))
        self.dp.set_frontend(EMPTY_VIP, 80, "tcp", NatFrontendValue(id=3, count=0))
        self.dp.set_backends(4, [(PODS["a"], 8081)])
        self.dp.set_frontend(SELF_VIP, 80, "tcp", NatFrontendValue(id=4, count=1))

    def socket_in(self, pod: str, kind=socket.SOCK_STREAM, proto: int = 0) -> socket.socket:
        with self.pods[pod].enter():
            return socket.socket(socket.AF_INET, kind, proto)

    def delete(self):
        if self.dp is not None:
            self.dp.detach_all()
            self.dp.close()
        for pod in self.pods.values():
            pod.delete()
        self.node.delete()


@pytest.fixture(scope="module")
def node():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    import build_bpf

    build_bpf.build_all(str(files("calico_ebpf._bpf")))
    n = Node()
    yield n
    n.delete()


class Servers:
    """TCP and UDP echo-who servers in the backend pods: they answer "<pod> <client ip>"."""

    def __init__(self, node: Node):
        self.socks = []
        self.stop = threading.Event()
        for pod in ("b", "c"):
            tcp = node.socket_in(pod)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((PODS[pod], 8080))
            tcp.listen(64)
            tcp.settimeout(0.2)
            udp = node.socket_in(pod, socket.SOCK_DGRAM)
            udp.bind((PODS[pod], 5353))
            udp.settimeout(0.2)
            self.socks += [tcp, udp]
            threading.Thread(target=self._tcp, args=(pod, tcp), daemon=True).start()
            threading.Thread(target=self._udp, args=(pod, udp), daemon=True).start()

    def _tcp(self, pod, srv):
        while not self.stop.is_set():
            try:
                conn, peer = srv.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.recv(100)
                conn.sendall(f"{pod} {peer[0]}".encode())

    def _udp(self, pod, srv):
        while not self.stop.is_set():
            try:
                _data, peer = srv.recvfrom(100)
            except (TimeoutError, OSError):
                continue
            srv.sendto(f"{pod} {peer[0]}".encode(), peer)

    def close(self):
        self.stop.set()
        time.sleep(0.3)
        for s in self.socks:
            s.close()


@pytest.fixture(scope="module")
def servers(node):
    s = Servers(node)
    yield s
    s.close()


def test_tcp_clients_reach_backends_through_cluster_ip(node, servers):
    seen = set()
    for _ in range(20):
        s = node.socket_in("a")
        s.settimeout(3)
        s.connect((VIP, 80))
        assert s.getpeername() == (VIP, 80)
        s.sendall(b"hi")
        pod, client_ip = s.recv(100).decode().split()
        s.close()
        assert client_ip == PODS["a"]  # the backend saw the client's real IP
        seen.add(pod)
    assert seen == {"b", "c"}
    c = node.dp.counters(node.ifindex["a"], CounterHook.TC_INGRESS)
    assert c[Counter.NAT_NEW] >= 20


def test_udp_clients_reach_backends_and_replies_come_from_the_service(node, servers):
    seen = set()
    for i in range(20):
        s = node.socket_in("a", socket.SOCK_DGRAM)
        s.settimeout(3)
        s.sendto(b"q%d" % i, (VIP, 53))
        data, src = s.recvfrom(100)
        s.close()
        assert src == (VIP, 53)
        pod, client_ip = data.decode().split()
        assert client_ip == PODS["a"]
        seen.add(pod)
    assert seen == {"b", "c"}


def test_service_without_endpoints_refuses_at_once(node):
    s = node.socket_in("a")
    s.settimeout(5)
    t0 = time.monotonic()
    with pytest.raises(ConnectionRefusedError) as exc:
        s.connect((EMPTY_VIP, 80))
    elapsed = time.monotonic() - t0
    s.close()
    assert exc.value.errno == errno.ECONNREFUSED
    assert elapsed < 1.0, f"refusal took {elapsed:.2f}s"
    assert node.dp.counters(node.ifindex["a"], CounterHook.TC_INGRESS)[Counter.NAT_NO_BACKEND] >= 1


def _udp_listener(node, pod, port):
    s = node.socket_in(pod, socket.SOCK_DGRAM)
    s.bind((PODS[pod], port))
    s.settimeout(1.0)
    return s


def _raw_send(node, pod, src, dst, dport, payload):
    raw = node.socket_in(pod, socket.SOCK_RAW, socket.IPPROTO_RAW)
    raw.sendto(bytes(IP(src=src, dst=dst) / UDP(sport=7777, dport=dport) / payload), (dst, 0))
    raw.close()


def test_spoofing_pod_is_dropped(node):
    listener = _udp_listener(node, "a", 9999)
    try:
        before = node.dp.counters(node.ifindex["c"], CounterHook.TC_INGRESS)[Counter.DROP_UNAUTH_SOURCE]
        # Control: C with its own address gets through.
        _raw_send(node, "c", PODS["c"], PODS["a"], 9999, b"honest")
        data, src = listener.recvfrom(100)
        assert (data, src[0]) == (b"honest", PODS["c"])
        # C pretending to be B is dropped at C's veth.
        _raw_send(node, "c", PODS["b"], PODS["a"], 9999, b"spoofed")
        with pytest.raises(TimeoutError):
            listener.recvfrom(100)
        after = node.dp.counters(node.ifindex["c"], CounterHook.TC_INGRESS)[Counter.DROP_UNAUTH_SOURCE]
        assert after == before + 1
    finally:
        listener.close()


def test_pod_reaches_itself_through_a_service(node):
    """Hairpin: the pod's own connection comes back masqueraded as the service IP."""
    srv = node.socket_in("a")
    srv.bind((PODS["a"], 8081))
    srv.listen(4)
    srv.settimeout(3)
    try:
        cli = node.socket_in("a")
        cli.settimeout(3)
        cli.connect((SELF_VIP, 80))
        conn, peer = srv.accept()
        with conn:
            assert peer[0] == SELF_VIP and peer[1] == cli.getsockname()[1]
            conn.sendall(b"self")
            assert cli.recv(10) == b"self"
        cli.close()
    finally:
        srv.close()
