"""The lab cluster's topology carries real traffic with plain kernel routing (no BPF).

One lab of 2 nodes x 2 pods serves the traffic and wiring tests; the
lifecycle tests build their own small labs (each with a unique prefix) to
prove that teardown, crash leftovers and prefix matching leave nothing
behind and touch nothing else.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
from pyroute2.netlink.rtnl.ndmsg import NUD_PERMANENT

from calico_ebpf.cli.main import main as cli_main
from calico_ebpf.compiler.routes import compile_routes
from calico_ebpf.errors import ModelError
from calico_ebpf.kernel.netns import Netns, iproute, unique_name
from calico_ebpf.lab import Lab, LabPlan, WorkloadError, lab_status
from calico_ebpf.lab.cleanup import pids_in_netns
from calico_ebpf.model import ClusterState

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def lab():
    with Lab(nodes=2, pods_per_node=2, prefix=unique_name("lt", maxlen=12)) as lab:
        yield lab


def _host_links() -> set[str]:
    """Interface names in the test process's own namespace (read only)."""
    with iproute() as ipr:
        return {link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}


def _vxlan_stats(node) -> dict:
    link = node.netns.iproute().link("get", index=node.vxlan_ifindex)[0]
    return link.get_attr("IFLA_STATS64")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False


# -- traffic -------------------------------------------------------------------------------------


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_pod_to_pod_on_the_same_node(lab, proto):
    client, server = lab.pod("node-1", 0), lab.pod("node-1", 1)
    reply = client.request(server.ip, 8080, proto=proto, payload=b"same-node")
    assert reply.server == server.name
    assert reply.peer_ip == client.ip
    assert reply.payload == b"same-node"


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_pod_to_pod_across_nodes_goes_through_vxlan(lab, proto):
    client, server = lab.pod("node-1", 0), lab.pod("node-2", 1)
    route = client.node.netns.iproute().route("get", dst=server.ip)[0]
    assert route.get_attr("RTA_OIF") == client.node.vxlan_ifindex
    before = _vxlan_stats(server.node)["rx_packets"]
    reply = client.request(server.ip, 8080, proto=proto, payload=b"across")
    assert (reply.server, reply.peer_ip, reply.payload) == (server.name, client.ip, b"across")
    # Node-2's VXLAN device decapsulated the request: the only way in for node-1's pods.
    assert _vxlan_stats(server.node)["rx_packets"] > before


def test_every_pod_reaches_every_other_pod(lab):
    for client in lab.pods:
        for server in lab.pods:
            if server is not client:
                reply = client.request(server.ip, proto="udp", timeout=1.0)
                assert (reply.server, reply.peer_ip) == (server.name, client.ip)


def test_external_client_reaches_a_node_underlay_ip(lab):
    node = lab.node("node-2")
    node.start_echo("node-2-host", port=9090)
    reply = lab.external.request(node.underlay_ip, 9090)
    assert (reply.server, reply.peer_ip) == ("node-2-host", lab.external.ip)


def test_a_port_nobody_listens_on_fails_fast_with_a_typed_error(lab):
    with pytest.raises(WorkloadError, match="ConnectionRefused"):
        lab.pod("node-1", 0).request(lab.pod("node-2", 0).ip, 9999, timeout=1.0)


# -- wiring --------------------------------------------------------------------------------------


def test_node_wiring_is_calico_shaped(lab):
    node, remote = lab.node("node-1"), lab.node("node-2")
    ipr = node.netns.iproute()
    vx = ipr.link("get", index=node.vxlan_ifindex)[0]
    info = vx.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
    assert vx.get_attr("IFLA_IFNAME") == "vxlan.calico"
    assert info.get_attr("IFLA_VXLAN_ID") == 4096
    assert info.get_attr("IFLA_VXLAN_PORT") == 4789
    assert info.get_attr("IFLA_VXLAN_LEARNING") == 0
    assert info.get_attr("IFLA_VXLAN_LOCAL") == node.underlay_ip
    assert vx.get_attr("IFLA_ADDRESS") == node.vtep_mac

    net, plen = remote.block.split("/")
    [block_route] = [r for r in ipr.get_routes(family=2)
                     if r.get_attr("RTA_DST") == net and r["dst_len"] == int(plen)]
    assert block_route.get_attr("RTA_GATEWAY") == remote.vtep_ip
    assert block_route.get_attr("RTA_OIF") == node.vxlan_ifindex
    assert block_route["flags"] & 4  # RTNH_F_ONLINK
    fdb = [(e.get_attr("NDA_LLADDR"), e.get_attr("NDA_DST")) for e in ipr.fdb("dump", ifindex=node.vxlan_ifindex)
           if e["state"] & NUD_PERMANENT]
    assert (remote.vtep_mac, remote.underlay_ip) in fdb
    neigh = ipr.neigh("get", dst=remote.vtep_ip, ifindex=node.vxlan_ifindex)[0]
    assert neigh.get_attr("NDA_LLADDR") == remote.vtep_mac and neigh["state"] == NUD_PERMANENT

    for pod in node.pods:
        route = ipr.route("get", dst=pod.ip)[0]
        assert route.get_attr("RTA_OIF") == pod.veth_ifindex
        veth = ipr.link("get", index=pod.veth_ifindex)[0]
        assert veth.get_attr("IFLA_ADDRESS") == "ee:ee:ee:ee:ee:ee"
        default = pod.netns.iproute().route("get", dst="1.1.1.1")[0]
        assert default.get_attr("RTA_GATEWAY") == "169.254.1.1"
    assert set(node.interfaces()) == {"eth0", "vxlan.calico", *(p.veth for p in node.pods)}


def test_manifests_describe_the_running_lab(lab):
    state = lab.cluster_state()
    assert not state.rejected and not state.unhandled
    assert {n: s.primary_ip() for n, s in state.nodes.items()} == {n.name: n.underlay_ip for n in lab.nodes}
    assert {k: (p.node_name, p.pod_ips) for k, p in state.pods.items()} == {
        p.key: (p.node.name, (p.ip,)) for p in lab.pods}
    assert ClusterState.from_yaml_text(lab.manifests_yaml()).pods.keys() == state.pods.keys()
    # Route compilation names the very veths the lab created.
    for node in lab.nodes:
        local = {r.cidr: r.ifname for r in compile_routes(state, node.name) if r.ifname}
        assert local == {f"{p.ip}/32": p.veth for p in node.pods}
        for ifname in local.values():
            node.netns.ifindex(ifname)  # raises if the lab has no such interface


def test_status_reads_the_lab_back_from_the_kernel(lab):
    status = lab_status(lab.prefix)
    assert status["up"] and status["external"]["ip"] == lab.external.ip
    assert [(n["name"], n["underlay_ip"], n["vtep_ip"], n["vxlan_ifindex"]) for n in status["nodes"]] == [
        (n.name, n.underlay_ip, n.vtep_ip, n.vxlan_ifindex) for n in lab.nodes]
    pods = [(p["name"], p["ip"], p["veth"], p["processes"]) for n in status["nodes"] for p in n["pods"]]
    assert pods == [(p.name, p.ip, p.veth, [p.server.pid]) for p in lab.pods]


# -- lifecycle -----------------------------------------------------------------------------------


def test_down_removes_every_namespace_link_and_process():
    links_before = _host_links()
    lab = Lab(nodes=2, pods_per_node=1, prefix=unique_name("ld", maxlen=12)).up()
    extra = lab.node("node-1").start_echo(port=9091)
    pids = [p.server.pid for p in lab.pods] + [extra.pid]
    names = Lab.find_leftovers(lab.prefix)
    assert len(names) == 2 + 2 + 2  # fabric, external, nodes, pods
    assert _host_links() == links_before  # nothing was ever created in the host namespace

    removed = lab.down()

    assert sorted(removed) == sorted(names)
    assert Lab.find_leftovers(lab.prefix) == []
    assert not any(Netns.exists(n) for n in names)
    assert not any(_alive(pid) for pid in pids)
    assert _host_links() == links_before
    assert lab.down() == []  # idempotent


def test_leftovers_of_a_crashed_lab_are_found_and_removed():
    prefix = unique_name("lc", maxlen=12)
    crash = textwrap.dedent(f"""
        import os
        from calico_ebpf.lab import Lab
        Lab(nodes=2, pods_per_node=1, prefix={prefix!r}).up()
        os._exit(3)  # dies without down(), like a crash
    """)
    try:
        proc = subprocess.run([sys.executable, "-c", crash], check=False, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 3, proc.stderr
        leftovers = Lab.find_leftovers(prefix)
        assert len(leftovers) == 6
        orphans = [pid for pids in pids_in_netns(*leftovers).values() for pid in pids]
        assert len(orphans) == 2 and all(_alive(p) for p in orphans)  # the pods' echo servers outlived it
        with pytest.raises(Exception, match="already exist"):
            Lab(nodes=1, pods_per_node=0, prefix=prefix, workloads=False).up()
        assert Lab.find_leftovers(prefix) == leftovers  # the refused up() removed nothing

        assert sorted(Lab.cleanup_leftovers(prefix)) == sorted(leftovers)

        assert Lab.find_leftovers(prefix) == []
        deadline = time.monotonic() + 2
        while any(_alive(p) for p in orphans) and time.monotonic() < deadline:
            time.sleep(0.02)  # reaped by whoever inherited them
        assert not any(_alive(p) for p in orphans)
    finally:
        Lab.cleanup_leftovers(prefix)


def test_cleanup_leaves_labs_with_a_longer_prefix_alone():
    outer = unique_name("lp", maxlen=10)
    with Lab(nodes=1, pods_per_node=1, prefix=f"{outer}-x", workloads=False) as other:
        assert Lab.cleanup_leftovers(outer) == []
        assert Lab.find_leftovers(other.prefix)
        assert len(Lab.find_leftovers(other.prefix)) == 4


def test_cli_up_status_down(capsys):
    prefix = unique_name("lcli", maxlen=12)
    try:
        assert cli_main(["lab", "up", "--nodes", "2", "--pods", "1", "--prefix", prefix]) == 0
        out = capsys.readouterr().out
        assert "node-2-pod-0" in out and "10.244.0.65" in out
        assert cli_main(["lab", "status", "--prefix", prefix]) == 0
        out = capsys.readouterr().out
        assert "10.250.0.12" in out and "10.244.0.1 " in out
        assert cli_main(["lab", "up", "--prefix", prefix]) == 1  # refuses an existing lab
        assert cli_main(["lab", "down", "--prefix", prefix]) == 0
        assert "removed 6 namespaces" in capsys.readouterr().out
        assert cli_main(["lab", "status", "--prefix", prefix]) == 1
        assert Lab.find_leftovers(prefix) == []
    finally:
        Lab.cleanup_leftovers(prefix)


def test_a_failed_up_removes_what_it_built(monkeypatch):
    prefix = unique_name("lf", maxlen=12)
    built = []
    original = Lab._build_pod

    def fail_on_second_pod(self, pod):
        original(self, pod)
        built.append(pod.name)
        if len(built) == 2:
            raise WorkloadError("injected failure")

    monkeypatch.setattr(Lab, "_build_pod", fail_on_second_pod)
    try:
        with pytest.raises(WorkloadError, match="injected"):
            Lab(nodes=2, pods_per_node=1, prefix=prefix).up()
        assert built == ["node-1-pod-0", "node-2-pod-0"]
        assert Lab.find_leftovers(prefix) == []
    finally:
        Lab.cleanup_leftovers(prefix)


# -- the plan (pure; here because the lab's tests live here) ---------------------------------------


def test_plan_doctests_and_name_matching():
    import doctest

    from calico_ebpf.lab import plan

    assert doctest.testmod(plan).failed == 0
    pattern = plan.lab_netns_re("a")
    assert all(pattern.fullmatch(n) for n in ("a-fabric", "a-ext", "a-node-3", "a-node-3-pod-12"))
    assert not any(pattern.fullmatch(n) for n in ("a-b-fabric", "ab-fabric", "a-node-x", "a-fabric2", "a-"))


@pytest.mark.parametrize("kwargs, field", [
    ({"prefix": "Bad_Prefix"}, "prefix"),
    ({"prefix": "ok", "nodes": 0}, "nodes"),
    ({"prefix": "ok", "pods_per_node": 63}, "pods_per_node"),
    ({"prefix": "ok", "nodes": 3, "pool_cidr": "10.244.0.0/25"}, "nodes"),
])
def test_plan_refuses_what_it_cannot_build(kwargs, field):
    with pytest.raises(ModelError) as info:
        LabPlan(**kwargs)
    assert info.value.field == field
