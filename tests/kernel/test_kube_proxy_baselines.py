"""kube-proxy baselines (benchmarks/baselines): real tools, scratch namespaces, real traffic.

The generated iptables-restore input and nft transaction load into a fresh
network namespace; what the kernel holds afterwards (read back with
iptables-save / nft list ruleset inside the namespace) has the chains and
rule counts kube-proxy's layout implies; and a TCP connect from a client in
the "node" namespace to a ClusterIP reaches a backend in a second namespace
through the DNAT those rules install.
"""

from __future__ import annotations

import re
import socket
import threading

import pytest

from benchmarks._workload import NODE, drop_last_endpoint, manifests
from benchmarks.baselines import iptables as ipt
from benchmarks.baselines import nftables as nft
from benchmarks.baselines import proto_hash, service_ports
from calico_ebpf.kernel.netns import Netns, unique_name, veth_pair
from calico_ebpf.model import ClusterState

CIDR = "10.0.0.0/8"


def _states(n: int = 3, m: int = 3) -> tuple[ClusterState, ClusterState]:
    docs = manifests(n, m)
    old = ClusterState.from_dicts(docs)
    new = ClusterState.from_dicts(docs)
    new.add_dict(drop_last_endpoint(docs))
    return old, new


# -- names match kube-proxy's (vectors from kube-proxy's own unit tests) ---------------------------

def test_chain_names_match_kube_proxy_vectors():
    st = ClusterState.from_yaml_text("""
apiVersion: v1
kind: Service
metadata: {name: svc1, namespace: ns1}
spec: {clusterIP: 172.30.0.41, ports: [{name: p80, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: svc1-1, namespace: ns1, labels: {kubernetes.io/service-name: svc1}}
addressType: IPv4
ports: [{name: p80, port: 80}]
endpoints: [{addresses: [10.180.0.1]}]
""")
    (sp,) = service_ports(st, "node")
    assert ipt.chain_names(sp)["SVC"] == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert proto_hash("ns1/svc1:p80", "tcp") == "XPGD46QRK7WJZT7O"
    assert f"service-{nft.service_chain_base(sp)}" == "service-ULMVA6XW-ns1/svc1/tcp/p80"
    assert nft.endpoint_chain(sp, sp.endpoints[0]) == "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"


def test_probabilities_use_kube_proxy_formatting():
    old, _ = _states(1, 4)
    text = ipt.render_iptables(service_ports(old, NODE), ipt.ProxyConfig.from_state(old, NODE))
    probs = re.findall(r"--probability (\S+)", text)
    assert probs == ["0.2500000000", "0.3333333333", "0.5000000000"]


# -- load with the real tools, read back ----------------------------------------------------------

def test_iptables_full_and_partial_sync_load_and_read_back():
    old, new = _states()
    with Netns(prefix="kpipt") as ns:
        full = ipt.load_iptables(ns, old, NODE, cluster_cidr=CIDR)
        assert full.wall_s > 0 and full.cpu_s >= 0 and full.input_lines > 0
        saved = ns.run_cmd(["iptables-save"]).stdout
        nat = saved[saved.index("*nat"):]
        assert len(re.findall(r"^:KUBE-SVC-", nat, re.MULTILINE)) == 3
        assert len(re.findall(r"^:KUBE-EXT-", nat, re.MULTILINE)) == 3
        assert len(re.findall(r"^:KUBE-SEP-", nat, re.MULTILINE)) == 9
        assert len(re.findall(r"^-A KUBE-SERVICES .* -j KUBE-SVC-", nat, re.MULTILINE)) == 3
        assert len(re.findall(r"^-A KUBE-NODEPORTS .* -j KUBE-EXT-", nat, re.MULTILINE)) == 3
        assert len(re.findall(r"^-A KUBE-SEP-\S+ .*-j DNAT --to-destination 10\.", nat, re.MULTILINE)) == 9
        assert len(re.findall(r"-m statistic --mode random --probability", nat)) == 3 * 2
        for chain in ("PREROUTING", "OUTPUT"):
            assert re.search(rf"^-A {chain} .*-j KUBE-SERVICES$", nat, re.MULTILINE)
        assert re.search(r"^-A POSTROUTING .*-j KUBE-POSTROUTING$", nat, re.MULTILINE)
        assert "MASQUERADE --random-fully" in nat
        filt = saved[: saved.index("*nat")]
        for chain in ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL"):
            assert f":{chain} - " in filt

        svc0 = ipt.chain_names(service_ports(old, NODE)[0])["SVC"]
        change = ipt.load_iptables_change(ns, old, new, NODE, cluster_cidr=CIDR)
        assert change.tool_runs == 1
        nat2 = ns.run_cmd(["iptables-save", "-t", "nat"]).stdout
        # svc0 now balances over 2 endpoints; the other services are untouched
        assert len(re.findall(rf"^-A {svc0} .*-j KUBE-SEP-", nat2, re.MULTILINE)) == 2
        assert len(re.findall(r"^-A KUBE-SVC-.*-j KUBE-SEP-", nat2, re.MULTILINE)) == 8
        # the stale KUBE-SEP chain stays (flushed later by kube-proxy's cleanup), unreferenced
        assert len(re.findall(r"^-A KUBE-SERVICES .* -j KUBE-SVC-", nat2, re.MULTILINE)) == 3


def test_iptables_no_endpoint_service_rejects_in_filter_table():
    st = ClusterState.from_yaml_text("""
apiVersion: v1
kind: Service
metadata: {name: lonely, namespace: d}
spec: {type: NodePort, clusterIP: 172.30.0.9, ports: [{name: p, port: 80, nodePort: 30009}]}
""")
    with Netns(prefix="kpipt") as ns:
        ipt.load_iptables(ns, st, "n1")
        filt = ns.run_cmd(["iptables-save", "-t", "filter"]).stdout
        assert re.search(r"^-A KUBE-SERVICES -d 172\.30\.0\.9/32 .*--dport 80 .*-j REJECT", filt, re.MULTILINE)
        assert re.search(r"^-A KUBE-EXTERNAL-SERVICES .*--dport 30009 .*-j REJECT", filt, re.MULTILINE)


def test_nftables_full_and_partial_sync_load_and_read_back():
    old, new = _states()
    with Netns(prefix="kpnft") as ns:
        full = nft.load_nftables(ns, old, NODE, cluster_cidr=CIDR)
        assert full.wall_s > 0 and full.input_lines > 0
        rs = ns.run_cmd(["nft", "list", "table", "ip", "kube-proxy"]).stdout
        assert len(re.findall(r"^\tchain service-[A-Z2-7]{8}-", rs, re.MULTILINE)) == 3
        assert len(re.findall(r"^\tchain external-", rs, re.MULTILINE)) == 3
        assert len(re.findall(r"^\tchain endpoint-", rs, re.MULTILINE)) == 9
        assert len(re.findall(r"numgen random mod 3 vmap", rs)) == 3
        assert len(re.findall(r"dnat to 10\.", rs)) == 9
        for m in ("map service-ips", "map service-nodeports", "chain masquerading", "chain nat-output", "chain nat-prerouting"):
            assert m in rs
        assert "masquerade fully-random" in rs
        elements = ns.run_cmd(["nft", "list", "map", "ip", "kube-proxy", "service-ips"]).stdout
        assert elements.count(": goto service-") == 3

        change = nft.load_nftables_change(ns, old, new, NODE, cluster_cidr=CIDR)
        assert change.input_lines < full.input_lines / 5
        rs2 = ns.run_cmd(["nft", "list", "table", "ip", "kube-proxy"]).stdout
        assert len(re.findall(r"numgen random mod 2 vmap", rs2)) == 1
        assert len(re.findall(r"numgen random mod 3 vmap", rs2)) == 2
        assert len(re.findall(r"dnat to 10\.", rs2)) == 8  # the dropped endpoint's chain was flushed


# -- real traffic: a client on the node reaches the backend through the ClusterIP ---------------

def _traffic_state(backend_ip: str) -> ClusterState:
    return ClusterState.from_yaml_text(f"""
apiVersion: v1
kind: Node
metadata: {{name: n1}}
status: {{addresses: [{{type: InternalIP, address: 10.99.0.1}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec: {{clusterIP: 172.30.0.10, ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints: [{{addresses: [{backend_ip}], nodeName: n2}}]
""")


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_clusterip_connect_reaches_backend(mode):
    state = _traffic_state("10.99.0.2")
    with Netns(prefix="kpnode") as node, Netns(prefix="kpback") as back:
        node_if = unique_name("kpn")
        veth_pair(node_if, "eth0", netns=node, peer_netns=back)
        node.add_address(node_if, "10.99.0.1/24")
        back.add_address("eth0", "10.99.0.2/24")
        node.add_route("172.30.0.0/16", dev=node_if)  # a route to the service range (as a default route would)

        server = back.run(socket.create_server, ("0.0.0.0", 8080))
        server.settimeout(5)
        seen: list[tuple[str, bytes]] = []

        def serve():
            conn, peer = server.accept()
            with conn:
                seen.append((peer[0], conn.recv(64)))
                conn.sendall(b"pong")

        t = threading.Thread(target=serve)
        t.start()
        try:
            if mode == "iptables":
                ipt.load_iptables(node, state, "n1", cluster_cidr=CIDR)
            else:
                nft.load_nftables(node, state, "n1", cluster_cidr=CIDR)
            client = node.run(socket.create_connection, ("172.30.0.10", 80), 5)
            with client:
                client.sendall(b"ping")
                assert client.recv(64) == b"pong"
        finally:
            t.join(10)
            server.close()
        assert seen and seen[0][1] == b"ping"
        # The client's source (10.99.0.1) lies inside the cluster CIDR, so no masquerade:
        # the backend sees the client's own address.
        assert seen[0][0] == "10.99.0.1"
