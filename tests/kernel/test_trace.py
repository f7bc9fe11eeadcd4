"""trace(dp, packet): packets followed hop by hop through the real datapath programs.

The node of datapath_env (pods A, B, C on wep_a/b/c, data interface "hep",
a remote node and its pod) plus the host NAT device ``bpfin.cali``; services
are written with the thin writers, as the datapath tests do.
"""

from __future__ import annotations

import pytest
from datapath_env import (
    EXTERNAL,
    HOST_IP,
    POD_A,
    POD_B,
    POD_C,
    REMOTE_POD,
    VIP,
    DpEnv,
    Netdevs,
)

from calico_ebpf.dataplane import NAT_FLG_SRC_RANGES
from calico_ebpf.dataplane.trace import NAT_DEVICE, trace
from calico_ebpf.dataplane.trace_packet import Entry, PacketSyntaxError
from calico_ebpf.kernel.netns import veth_pair
from calico_ebpf.maps.entries import NatFrontendValue

BACKENDS = [(POD_B, 8080), (POD_C, 8080)]
NODEPORT = 30080


@pytest.fixture(scope="module")
def devs():
    d = Netdevs()
    veth_pair(NAT_DEVICE, "bpfout.cali", netns=d.ns, peer_netns=d.ns)
    d.ifindex[NAT_DEVICE] = d.ns.ifindex(NAT_DEVICE)
    yield d
    d.delete()


@pytest.fixture(scope="module")
def dp_env(devs, bpf_objects):
    e = DpEnv(devs)
    yield e
    e.close()


@pytest.fixture
def env(dp_env, devs):
    dp_env.reset()
    dp_env.dp.set_interface(devs.ifindex[NAT_DEVICE], NAT_DEVICE, "hep")
    dp_env.service(7, VIP, 80, "tcp", BACKENDS)
    dp_env.service(8, "10.96.0.12", 80, "tcp", [])
    dp_env.service(9, "10.96.0.13", 53, "udp", [(REMOTE_POD, 5353)])
    dp_env.service(10, HOST_IP, NODEPORT, "tcp", [(POD_C, 8080)])
    return dp_env


def tr(env, text, **kw):
    return trace(env.dp, text, netns=env.devs.ns, data_interface="hep", **kw)


def test_pod_to_cluster_ip_is_dnated_and_delivered_to_the_backend(env):
    t = tr(env, f"tcp {POD_A}:40000 -> {VIP}:80")
    assert t.entry is Entry.WORKLOAD and t.verdict == "allow" and t.snat is None
    assert t.dnat in {f"{ip}:{port}" for ip, port in BACKENDS}
    be_if = "wep_b" if t.dnat.startswith(POD_B) else "wep_c"
    assert t.path == ["from-wep wep_a (tc ingress)", "conntrack: new",
                      f"nat: {VIP}:80 -> {t.dnat} (service id 7)", "policy: none (egress): no policy selects the endpoint: allow (profile)",
                      f"route: local workload {be_if} (redirect)", f"to-wep {be_if} (tc egress)",
                      "conntrack: established", "policy: none (ingress): no policy selects the endpoint: allow (profile)"]
    assert [h.program for h in t.hops] == ["from-wep wep_a (tc ingress)", f"to-wep {be_if} (tc egress)"]
    assert t.reason == f"DNAT to {t.dnat}; delivered to the workload behind {be_if}"
    assert env.ct_count() == 0  # the trace forgot its conntrack entries


def test_traces_are_independent_and_every_backend_shows_up(env):
    seen = {tr(env, f"tcp {POD_A}:40000 -> {VIP}:80").dnat for _ in range(40)}
    assert seen == {f"{ip}:{port}" for ip, port in BACKENDS}
    assert env.ct_count() == 0


def test_service_without_backend_rejects(env):
    t = tr(env, f"tcp {POD_A}:40000 -> 10.96.0.12:80")
    assert (t.verdict, t.dnat) == ("reject", None)
    assert t.path[-1] == "nat: service id 8 has no backend -> ICMP port unreachable"
    assert len(t.hops) == 1 and "ICMP port unreachable" in t.reason


def test_source_range_mismatch_drops(env):
    env.dp.set_frontend("1.2.3.4", 80, "tcp", NatFrontendValue(id=11, count=1, flags=NAT_FLG_SRC_RANGES))
    env.dp.set_source_range_frontend("1.2.3.4", 80, "tcp", "203.0.113.0/25", NatFrontendValue(id=11, count=1))
    env.dp.set_backends(11, [(POD_B, 8080)])
    allowed = tr(env, "tcp 203.0.113.2:1000 -> 1.2.3.4:80")
    assert (allowed.entry, allowed.verdict, allowed.dnat) == (Entry.DATA, "allow", f"{POD_B}:8080")
    assert allowed.path[0] == "from-hep hep (tc ingress)"
    t = tr(env, "tcp 203.0.113.130:1000 -> 1.2.3.4:80")
    assert (t.verdict, t.dnat) == ("drop", None)
    assert t.reason == ("dropped at from-hep hep (tc ingress): source not in the service's "
                        "loadBalancerSourceRanges (DROP_SRC_RANGE)")


def test_policy_deny_at_the_backend_drops(env, devs):
    env.dp.set_policy(3, "cebpf_policy_deny")
    env.dp.set_interface(env.B, "wep_b", "wep", ingress_policy=3)
    t = tr(env, f"tcp {POD_A}:40000 -> {POD_B}:8080")
    assert t.verdict == "drop" and "policy: ingress deny (slot 3)" in t.path
    assert t.reason == "dropped at to-wep wep_b (tc egress): denied by policy (DROP_POLICY)"
    assert env.ct_count() == 0


def test_hairpin_is_masqueraded_to_the_service(env):
    env.service(7, VIP, 80, "tcp", [(POD_B, 8080)])
    t = tr(env, f"tcp {POD_B}:40000 -> {VIP}:80")
    assert (t.verdict, t.dnat, t.snat) == ("allow", f"{POD_B}:8080", VIP)
    assert f"nat: source {POD_B} -> {VIP} (hairpin masquerade)" in t.path
    assert t.hops[-1].program == "to-wep wep_b (tc egress)"


def test_host_to_service_goes_through_the_nat_device(env):
    t = tr(env, f"tcp {HOST_IP}:40000 -> {VIP}:80")
    assert t.entry is Entry.HOST and t.verdict == "allow" and t.dnat is not None and t.snat is None
    assert t.path[:2] == [f"host stack: sent by this host, routed to {NAT_DEVICE}",
                          f"from-nat {NAT_DEVICE} (tc ingress)"]
    np = tr(env, f"tcp {HOST_IP}:40000 -> {HOST_IP}:{NODEPORT}")
    assert (np.verdict, np.dnat, np.hops[-1].program) == ("allow", f"{POD_C}:8080", "to-wep wep_c (tc egress)")
    assert env.ct_count() == 0


def test_host_to_non_service_leaves_by_the_host_routes(env):
    out = tr(env, f"udp {HOST_IP}:5000 -> 8.8.8.8:53")
    assert (out.verdict, out.dnat) == ("allow", None)
    assert out.path[:3] == ["host stack: sent by this host", "route: outside the cluster, out of hep",
                            "to-hep hep (tc egress)"]
    to_pod = tr(env, f"tcp {HOST_IP}:5000 -> {POD_A}:80")
    assert [h.program for h in to_pod.hops] == ["to-wep wep_a (tc egress)"]
    assert "policy: skipped (host to local workload)" in to_pod.path
    local = tr(env, "tcp 127.0.0.1:5000 -> 127.0.0.1:8080")
    assert (local.entry, local.verdict, local.hops) == (Entry.HOST, "allow", [])
    assert local.reason == "delivered to this host (127.0.0.1)"
    assert env.ct_count() == 0


def test_external_to_remote_backend_and_nodeport(env):
    t = tr(env, f"udp {EXTERNAL}:5000 -> 10.96.0.13:53")
    assert (t.entry, t.verdict, t.dnat) == (Entry.DATA, "allow", f"{REMOTE_POD}:5353")
    assert [h.program for h in t.hops] == ["from-hep hep (tc ingress)", "to-hep hep (tc egress)"]
    np = tr(env, f"tcp {EXTERNAL}:5000 -> {HOST_IP}:{NODEPORT}")
    assert (np.verdict, np.dnat) == ("allow", f"{POD_C}:8080")


def test_existing_flows_are_kept(env):
    """On a live dataplane a trace must not remove entries it did not create."""
    import packets as P

    env.run("from", P.tcp(POD_A, 40000, VIP, 80), env.A)
    before = env.ct_count()
    t = tr(env, f"tcp {POD_A}:40000 -> {VIP}:80")
    assert t.path[1] == "conntrack: established (DNAT)" and t.dnat is not None
    assert env.ct_count() == before == 2


def test_unsupported_and_malformed_packets(env):
    v6 = tr(env, "tcp [fd00::1]:1 -> [fd00::2]:80")
    assert (v6.verdict, v6.hops) == (None, []) and "IPv6" in v6.unsupported
    assert "SCTP" in tr(env, f"sctp {POD_A}:1 -> {VIP}:80").unsupported
    with pytest.raises(PacketSyntaxError):
        tr(env, "tcp nowhere")


def test_json_shape(env):
    d = tr(env, f"tcp {POD_A}:40000 -> {VIP}:80").to_dict()
    assert {"verdict", "dnat", "snat", "path", "reason"} <= set(d)
    assert d["verdict"] == "allow" and d["snat"] is None and isinstance(d["path"], list)
    assert d["hops"][0]["conntrack"] == "new" and "dnat" in d["hops"][0]["flags"]
