"""Network policy with real traffic: nine pods on one node, the datapath attached, netpol vectors.

    node netns (gateway 169.254.1.1 on lo answers the pods' ARP)
      cali<x><a> <-> pod x/a 10.244.1.2  ...  cali<z><c> <-> pod z/c 10.244.1.36

Every pod serves TCP and UDP on ports 80 and 81. For each chosen case of
``tests/data/netpol-cases.json`` the case's model and policies are synced
with :class:`PolicyManager`, then every ordered pair of distinct pods runs
each TCP/UDP probe as a real TCP connect or UDP request/response, all
concurrently, with short timeouts; the results must equal the expected matrix.

Not probed here, by necessity: a pod's traffic to its own IP never leaves its
namespace (no dataplane sees it; upstream ignores these pairs too), and SCTP
(the conformance test runs both through the programs).
"""

from __future__ import annotations

import selectors
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path

import pytest

from calico_ebpf.dataplane import Dataplane
from calico_ebpf.dataplane.policy import PolicyManager
from calico_ebpf.kernel.netns import Netns, unique_name, veth_pair
from calico_ebpf.maps.entries import RouteFlags

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernel"))
import test_policy_programs as netpol  # the cases file and its model builder, shared

GATEWAY = "169.254.1.1"
SCOPE_LINK = 253
PORTS = (80, 81)
TIMEOUT = 1.2  # a denied probe costs this; allowed ones answer in well under a millisecond

CASES = [
    "k8s/tcp/should-support-a-default-deny-ingress-policy",                     # ingress
    "k8s/tcp/should-enforce-policy-based-on-podselector-and-namespaceselector",  # namespace selector
    "k8s/tcp/should-allow-ingress-access-from-namespace-on-one-named-port",     # named port
    "k8s/tcp/should-deny-egress-from-pods-based-on-podselector",                # egress
    "k8s/tcp/should-enforce-except-clause-while-egress-access-to-server-in-cidr-block",  # ipBlock except
    ("k8s/udp/should-enforce-policy-to-allow-traffic-only-from-a-pod-in-a-different-namespace-based-on-"
     "podselector-and-namespaceselector"),                                       # UDP
    "k8s/tcp/should-allow-ingress-access-from-updated-pod#step2-pod-x-b-labelled",  # label update
    "cyclonus/ingress-port-range-udp-53-84",                                    # endPort, ingress
    "cyclonus/egress-port-range-tcp-53-84",                                     # endPort, egress
    "cyclonus/ingress-named-port-serve-80-udp",                                 # named UDP port
    "cyclonus/target-namespace-y",                                              # ingress + egress
    "cyclonus/conflict-ingress-deny-all-by-pod-plus-allow-all-by-ip",           # ipBlock ingress, union
]


def _sysctl(ns: Netns, path: str, value: str) -> None:
    def write():
        with open(f"/proc/sys/{path}", "w") as f:
            f.write(value)

    ns.run(write)


class NineNode:
    """The node netns, nine pod namespaces on veths, the datapath attached, a PolicyManager."""

    def __init__(self):
        self.node = Netns(prefix="npnode")
        self.pods: dict[str, Netns] = {}
        self.ips = {p["id"]: p["ip"] for p in netpol.CASES["model"]["pods"]}
        self.endpoints: dict[str, tuple[int, str]] = {}
        self.dp = None
        self.pm = None
        try:
            self._build()
        except BaseException:
            self.delete()
            raise

    def _build(self):
        node_ipr = self.node.iproute()
        node_ipr.addr("add", index=self.node.ifindex("lo"), address=GATEWAY, prefixlen=32)
        _sysctl(self.node, "net/ipv4/ip_forward", "1")
        for key, ip in self.ips.items():
            pod = Netns(prefix="nppod")
            self.pods[key] = pod
            host_if = unique_name("cali" + key.replace("/", ""))
            veth_pair(host_if, "eth0", netns=self.node, peer_netns=pod)
            ifindex = self.node.ifindex(host_if)
            self.endpoints[key] = (ifindex, host_if)
            node_ipr.route("add", dst=f"{ip}/32", oif=ifindex, scope=SCOPE_LINK)
            pod.add_address("eth0", f"{ip}/32")
            pod_ipr = pod.iproute()
            eth0 = pod.ifindex("eth0")
            pod_ipr.route("add", dst=f"{GATEWAY}/32", oif=eth0, scope=SCOPE_LINK)
            pod_ipr.route("add", dst="0.0.0.0/0", gateway=GATEWAY, oif=eth0)
        self.dp = Dataplane(pin_dir=None, max_entries={"cebpf_jump": 256})
        for key, ip in self.ips.items():
            ifindex, name = self.endpoints[key]
            self.dp.set_route(f"{ip}/32", RouteFlags.LOCAL | RouteFlags.WORKLOAD | RouteFlags.IN_POOL,
                              ifindex=ifindex)
            self.dp.attach(ifindex, name, "wep", netns=self.node)
        self.pm = PolicyManager(self.dp)

    def socket_in(self, pod: str, kind=socket.SOCK_STREAM) -> socket.socket:
        with self.pods[pod].enter():
            return socket.socket(socket.AF_INET, kind)

    def delete(self):
        if self.pm is not None:
            self.pm.close()
        if self.dp is not None:
            self.dp.detach_all()
            self.dp.close()
        for pod in self.pods.values():
            pod.delete()
        self.node.delete()


class Servers:
    """In every pod, one thread serving TCP (accept, close) and UDP (echo) on ports 80 and 81."""

    def __init__(self, node: NineNode):
        self.stop = threading.Event()
        self.threads = []
        self.socks = []
        for key, ip in node.ips.items():
            sel = selectors.DefaultSelector()
            for port in PORTS:
                tcp = node.socket_in(key)
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((ip, port))
                tcp.listen(256)
                udp = node.socket_in(key, socket.SOCK_DGRAM)
                udp.bind((ip, port))
                for s in (tcp, udp):
                    s.setblocking(False)
                    sel.register(s, selectors.EVENT_READ)
                    self.socks.append(s)
            t = threading.Thread(target=self._serve, args=(sel,), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, sel):
        while not self.stop.is_set():
            for key, _ in sel.select(timeout=0.1):
                s = key.fileobj
                try:
                    if s.type == socket.SOCK_STREAM:
                        conn, _ = s.accept()
                        conn.close()
                    else:
                        data, peer = s.recvfrom(100)
                        s.sendto(data, peer)
                except (BlockingIOError, OSError):
                    continue

    def close(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=2)
        for s in self.socks:
            s.close()


@pytest.fixture(scope="module")
def node():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    import build_bpf

    build_bpf.build_all(str(files("calico_ebpf._bpf")))
    n = NineNode()
    servers = Servers(n)
    yield n
    servers.close()
    n.delete()


def probe(node: NineNode, proto: str, client: str, server: str, port: int) -> bool:
    """True when a TCP connect / UDP request-response from ``client`` to ``server:port`` succeeds."""
    kind = socket.SOCK_STREAM if proto == "TCP" else socket.SOCK_DGRAM
    s = node.socket_in(client, kind)
    try:
        if proto == "TCP":
            s.settimeout(TIMEOUT)  # covers the SYN retransmission at 1 s
            s.connect((node.ips[server], port))
            return True
        # UDP has no retransmission: the request goes twice (same socket, so the same flow).
        s.settimeout(TIMEOUT / 2)
        for _ in range(2):
            s.sendto(b"probe", (node.ips[server], port))
            try:
                data, peer = s.recvfrom(100)
            except TimeoutError:
                continue
            return data == b"probe" and peer == (node.ips[server], port)
        return False
    except (TimeoutError, ConnectionRefusedError):
        return False
    finally:
        s.close()


def test_cases_with_real_traffic(node):
    by_name = {c["name"]: c for c in netpol.CASES["cases"]}
    results = {}
    with ThreadPoolExecutor(max_workers=160) as pool:
        for name in CASES:
            case = by_name[name]
            state, named, ips = netpol._case_state(case)
            node.dp.maps["cebpf_ct"].clear()  # each case judges new flows
            node.pm.sync(state, node.endpoints, named_ports=named)
            jobs = {}
            for p in case["probes"]:
                if p["protocol"] not in ("TCP", "UDP"):
                    continue
                for client in ips:
                    for server in ips:
                        if client != server:
                            key = (f"{p['protocol']}/{p['port']}", client, server)
                            jobs[key] = pool.submit(probe, node, p["protocol"], client, server, p["port"])
            wrong = []
            for (probe_name, client, server), job in jobs.items():
                expected = [client, server] not in case["expected"].get(probe_name, [])
                if job.result() != expected:
                    wrong.append(f"{probe_name} {client}->{server}: expected {'allow' if expected else 'deny'}")
            results[name] = (len(jobs), wrong)
    total = sum(n for n, _ in results.values())
    bad = {k: w for k, (_, w) in results.items() if w}
    print(f"\nreal traffic: {len(CASES) - len(bad)}/{len(CASES)} cases, "
          f"{total - sum(len(w) for w in bad.values())}/{total} probes as expected")
    assert not bad, {k: w[:6] + [f"... {len(w)} wrong"] for k, w in bad.items()}
