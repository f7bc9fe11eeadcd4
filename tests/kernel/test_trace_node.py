"""TraceNode: a scratch node built from manifests, re-loaded with other states, policy included."""

from __future__ import annotations

import pytest
from test_trace_cli import BACKEND, CLIENT, CLUSTER, NODE_IP, VIP

from calico_ebpf.compiler import veth_name
from calico_ebpf.dataplane.trace import DATA_INTERFACE, NAT_DEVICE, TraceError, TraceNode, trace
from calico_ebpf.kernel.netns import Netns
from calico_ebpf.model import ClusterState

POD_TO_SVC = f"tcp {CLIENT}:40000 -> {VIP}:80"
DENY_WEB = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "deny-web", "namespace": "shop"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}
THIRD_POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "other", "namespace": "shop"},
             "spec": {"nodeName": "node-1"}, "status": {"podIP": "10.65.0.9"}}


@pytest.fixture(scope="module")
def node(bpf_objects):
    n = TraceNode(ClusterState.from_dicts(CLUSTER))
    yield n
    n.close()


def test_interfaces_stand_in_for_the_node(node):
    names = {veth_name("shop", "client"), veth_name("shop", "web-0"), DATA_INTERFACE, NAT_DEVICE}
    for name in names:
        idx = node.netns.ifindex(name)
        assert node.dp.interface(idx).name == name
    assert node.workloads == {"shop/client": (node.netns.ifindex(veth_name("shop", "client")), veth_name("shop", "client")),
                              "shop/web-0": (node.netns.ifindex(veth_name("shop", "web-0")), veth_name("shop", "web-0"))}
    assert node.report.node == "node-1" and node.report.services == 2


def test_reload_with_policy_then_without(node):
    assert node.trace(POD_TO_SVC).verdict == "allow"
    node.load(ClusterState.from_dicts([*CLUSTER, DENY_WEB, THIRD_POD]))
    t = node.trace(POD_TO_SVC)
    assert (t.verdict, t.dnat) == ("drop", f"{BACKEND}:8080")
    assert t.hops[-1].program == f"to-wep {veth_name('shop', 'web-0')} (tc egress)"
    slot = node._policy.slot_of("shop/web-0", "ingress")
    assert f"policy: ingress deny: end of tier default (slot {slot})" in t.path
    assert t.reason.endswith("denied by policy (DROP_POLICY): ingress deny: end of tier default")
    rule = t.hops[-1].policy_rule
    assert (rule.kind, rule.tier, rule.action, rule.id) == ("tier-end", "default", "Deny", 1)
    assert t.to_dict()["hops"][-1]["policy_rule"]["kind"] == "tier-end"
    other = node.trace(f"tcp 10.65.0.9:1234 -> {NODE_IP}:10250")
    assert (other.entry.value, other.verdict) == ("workload", "allow")
    # Back to the first state: the policy and the third pod's interface go away.
    node.load(ClusterState.from_dicts(CLUSTER))
    assert node.trace(POD_TO_SVC).verdict == "allow"
    assert veth_name("shop", "other") not in node._links
    assert node.trace("tcp 10.65.0.9:1234 -> 10.96.0.10:80").entry.value == "data"


def test_no_state_is_left_behind(node):
    for _ in range(3):
        node.trace(POD_TO_SVC)
    assert sum(1 for _ in node.dp.maps["cebpf_ct"]) == 0


def test_trace_needs_the_interfaces_in_the_callers_namespace(node):
    # The pod's veth exists only inside node.netns: elsewhere the kernel refuses its ifindex.
    with Netns(prefix="cetrace-empty") as empty, pytest.raises(TraceError, match="does not exist in network"):
        trace(node.dp, POD_TO_SVC, netns=empty)


def test_unknown_data_interface_is_an_error(node):
    with pytest.raises(TraceError, match="no host interface named 'wlan9'"):
        trace(node.dp, f"tcp 203.0.113.1:1 -> {VIP}:80", netns=node.netns, data_interface="wlan9")


def _rules_gnp():
    """A tier ``sec`` policy on every pod's ingress: Pass 8080, Deny 9000, Allow UDP; the tier's end denies."""
    return [{"apiVersion": "projectcalico.org/v3", "kind": "Tier", "metadata": {"name": "sec"},
             "spec": {"order": 10}},
            {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": {"name": "sec.p"},
             "spec": {"tier": "sec", "selector": "all()", "types": ["Ingress"], "ingress": [
                 {"action": "Pass", "protocol": "TCP", "destination": {"ports": [8080]}},
                 {"action": "Deny", "protocol": "TCP", "destination": {"ports": [9000]}},
                 {"action": "Allow", "protocol": "UDP"}]}}]


def test_trace_names_the_deciding_rule(node):
    node.load(ClusterState.from_dicts([*CLUSTER, *_rules_gnp()]))
    try:
        slot = node._policy.slot_of("shop/web-0", "ingress")
        gnp = "sec/GlobalNetworkPolicy sec.p"
        cases = {
            8080: ("allow", f"policy: ingress allow: passed every tier (profile) (slot {slot})"),
            9000: ("drop", f"policy: ingress deny by {gnp} spec.ingress[1] (slot {slot})"),
            22: ("drop", f"policy: ingress deny: end of tier sec (slot {slot})"),
        }
        for port, (verdict, step) in cases.items():
            t = node.trace(f"tcp {CLIENT}:40000 -> {BACKEND}:{port}")
            assert t.verdict == verdict and step in t.path, (port, t.path)
            # The client's egress: nothing selects it for egress.
            assert "policy: none (egress): no policy selects the endpoint: allow (profile)" in t.path
        t = node.trace(f"tcp {CLIENT}:40000 -> {BACKEND}:9000")
        assert t.reason == (f"dropped at to-wep {veth_name('shop', 'web-0')} (tc egress): denied by policy "
                            f"(DROP_POLICY): ingress deny by {gnp} spec.ingress[1]")
        rule = t.hops[-1].policy_rule
        assert (rule.kind, rule.tier, rule.policy, rule.where, rule.action) == (
            "rule", "sec", "GlobalNetworkPolicy sec.p", "spec.ingress[1]", "Deny")
        assert rule.start < rule.end  # its code is in the program
        udp = node.trace(f"udp {CLIENT}:5000 -> {BACKEND}:53")
        assert f"policy: ingress allow by {gnp} spec.ingress[2] (slot {slot})" in udp.path
        # The JSON form carries the rule too.
        assert udp.to_dict()["hops"][-1]["policy_rule"]["where"] == "spec.ingress[2]"
    finally:
        node.load(ClusterState.from_dicts(CLUSTER))
