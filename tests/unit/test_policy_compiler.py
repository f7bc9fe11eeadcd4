"""Ordered rule lists, IP sets and the emitted program (no kernel)."""

from __future__ import annotations

import doctest

import pytest

import calico_ebpf.compiler.policy
import calico_ebpf.compiler.policy_program
from calico_ebpf.compiler.policy import NamedPort, endpoint_policy
from calico_ebpf.compiler.policy_program import PolicyMaps, emit_policy
from calico_ebpf.errors import ModelError
from calico_ebpf.model import ClusterState


def pod(ns, name, ip, **labels):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "status": {"podIP": ip}}


def np(name, ns, spec):
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": ns},
            "spec": spec}


def cnp(name, ns, spec):
    return {"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": ns},
            "spec": spec}


def gnp(name, spec):
    return {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": {"name": name},
            "spec": spec}


BASE = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"env": "prod"}}},
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "y"}},
        pod("x", "a", "10.0.0.2", app="web"), pod("x", "b", "10.0.0.3", app="db"), pod("y", "c", "10.0.1.2", app="web")]


def steps(objects, key="x/a", direction="ingress", **kw):
    state = ClusterState.from_dicts(BASE + objects)
    assert not state.rejected
    return [str(s) for s in endpoint_policy(state, state.pods[key], direction, **kw).steps]


def test_no_policy_leaves_the_profile_allow():
    assert steps([]) == ["profile: Allow"]


def test_k8s_isolation_is_per_direction_and_namespace():
    deny_in = np("deny", "x", {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": []})
    assert steps([deny_in]) == ["default: end of tier: Deny", "profile: Allow"]
    assert steps([deny_in], direction="egress") == ["profile: Allow"]
    assert steps([deny_in], key="y/c") == ["profile: Allow"]
    two = np("allow", "x", {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress", "Egress"],
                            "ingress": [{}], "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]})
    assert steps([deny_in, two]) == ["default/NetworkPolicy x/allow spec.ingress[0]: Allow",
                                     "default: end of tier: Deny", "profile: Allow"]
    assert steps([deny_in, two], key="x/b") == ["default: end of tier: Deny", "profile: Allow"]
    assert steps([deny_in, two], direction="egress") == ["default/NetworkPolicy x/allow spec.egress[0]: Allow",
                                                         "default: end of tier: Deny", "profile: Allow"]


def test_calico_order_tiers_and_k8s_at_order_1000():
    objects = [
        {"apiVersion": "projectcalico.org/v3", "kind": "Tier", "metadata": {"name": "sec"},
         "spec": {"order": 100, "defaultAction": "Pass"}},
        {"apiVersion": "projectcalico.org/v3", "kind": "Tier", "metadata": {"name": "late"}, "spec": {}},
        gnp("late.g", {"tier": "late", "ingress": [{"action": "Allow"}]}),
        gnp("sec.b", {"tier": "sec", "order": 5, "ingress": [{"action": "Log"}, {"action": "Pass"}]}),
        gnp("sec.a", {"tier": "sec", "order": 5, "ingress": [{"action": "Deny", "protocol": "UDP"}]}),
        cnp("first", "x", {"order": 999, "ingress": [{"action": "Deny", "source": {"nets": ["1.0.0.0/8"]}}]}),
        cnp("unordered", "x", {"ingress": [{"action": "Allow"}]}),
        np("k8s", "x", {"podSelector": {}, "ingress": [{}]}),
        cnp("other-ns", "y", {"ingress": [{"action": "Allow"}]}),
        gnp("not-me", {"selector": "app == 'db'", "ingress": [{"action": "Allow"}]}),
        gnp("egress-only", {"egress": [{"action": "Allow"}]}),
    ]
    assert steps(objects) == [
        "sec/GlobalNetworkPolicy sec.a spec.ingress[0]: Deny",
        "sec/GlobalNetworkPolicy sec.b spec.ingress[0]: Log",
        "sec/GlobalNetworkPolicy sec.b spec.ingress[1]: Pass",
        "sec: end of tier: Pass",
        "default/NetworkPolicy x/first (projectcalico.org/v3) spec.ingress[0]: Deny",
        "default/NetworkPolicy x/k8s spec.ingress[0]: Allow",
        "default/NetworkPolicy x/unordered (projectcalico.org/v3) spec.ingress[0]: Allow",
        "default: end of tier: Deny",
        "late/GlobalNetworkPolicy late.g spec.ingress[0]: Allow",  # a tier without order sorts last
        "late: end of tier: Deny",
        "profile: Allow",
    ]


def test_global_policy_namespace_selector():
    g = gnp("g", {"namespaceSelector": "env == 'prod'", "ingress": [{"action": "Deny"}]})
    assert steps([g])[0] == "default/GlobalNetworkPolicy g spec.ingress[0]: Deny"
    assert steps([g], key="y/c") == ["profile: Allow"]


def test_selector_ip_sets_follow_namespace_scope():
    policy = cnp("p", "x", {"ingress": [
        {"action": "Allow", "source": {"selector": "app == 'web'"}},
        {"action": "Allow", "source": {"selector": "app == 'web'", "namespaceSelector": "all()"}},
        {"action": "Allow", "source": {"namespaceSelector": "!has(env)"}},
        {"action": "Allow", "source": {"namespaceSelector": "global()"}}]})
    glob = gnp("g", {"ingress": [{"action": "Allow", "source": {"notSelector": "app == 'web'"}}]})
    state = ClusterState.from_dicts(BASE + [policy, glob])
    ep = endpoint_policy(state, state.pods["x/a"], "ingress")
    members = {s.description: sorted(str(m.cidr) for m in s.members) for s in ep.ipsets.values()}
    assert members == {
        'selector app == "web" in namespace x': ["10.0.0.2/32"],
        'selector app == "web" in namespaces(all())': ["10.0.0.2/32", "10.0.1.2/32"],
        "selector all() in namespaces(!has(env))": ["10.0.1.2/32"],
        "selector all() in namespaces(global())": [],
        'selector app == "web" in all namespaces': ["10.0.0.2/32", "10.0.1.2/32"],
    }
    [glob_step] = [s for s in ep.steps if s.policy == "GlobalNetworkPolicy g"]
    assert ep.ipsets[glob_step.set_id("source.notSelector")].description == 'selector app == "web" in all namespaces'
    assert all(m.set_id == s.id for s in ep.ipsets.values() for m in s.members)


def test_named_port_set_members_carry_port_and_protocol():
    policy = np("p", "x", {"podSelector": {}, "egress": [
        {"to": [{"podSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"port": "pg", "protocol": "TCP"}]}],
        "policyTypes": ["Egress"]})
    state = ClusterState.from_dicts(BASE + [policy])
    ports = {"x/b": [NamedPort("pg", 6, 5432), NamedPort("pg", 17, 5433)], "x/a": [NamedPort("pg", 6, 1)]}
    ep = endpoint_policy(state, state.pods["x/a"], "egress", named_ports=ports)
    rule = next(s for s in ep.steps if s.kind == "rule")
    named = ep.ipsets[rule.set_id("destination.ports[0]")]
    assert [str(m).split(" ", 1)[1] for m in named.members] == ["10.0.0.3,tcp:5432"]


def test_sctp_rules_match_nothing_and_are_reported():
    policy = np("p", "x", {"podSelector": {}, "ingress": [{"ports": [{"port": 80, "protocol": "SCTP"}, {"port": 80}]}]})
    state = ClusterState.from_dicts(BASE + [policy])
    ep = endpoint_policy(state, state.pods["x/a"], "ingress")
    assert [str(s) for s in ep.steps][:2] == [
        "default/NetworkPolicy x/p spec.ingress[0]: Allow (matches nothing: SCTP is not supported by the eBPF dataplane)",
        "default/NetworkPolicy x/p spec.ingress[0]: Allow"]
    assert [str(e) for e in ep.unsupported] == [
        ("NetworkPolicy x/p: SCTP policy rule is not supported: spec.ingress[0] matches nothing: "
         "SCTP is not supported by the eBPF dataplane")]


def test_bad_direction():
    state = ClusterState.from_dicts(BASE)
    with pytest.raises(ModelError, match="direction"):
        endpoint_policy(state, state.pods["x/a"], "both")


LISTING = """\
   0: r9 = r1
   1: *(u32 *)(r10 - 4) = 0
   2: r1 = map[fd:3]
   4: r2 = r10
   5: r2 += -4
   6: call map_lookup_elem#1
   7: if r0 != 0 goto have_state_0
   8: r0 = 2
   9: exit
have_state_0:
  10: r6 = r0
  11: r2 = *(u8 *)(r6 + 30)
  12: if r2 != 6 goto rule_1
  13: r2 = *(u32 *)(r6 + 8)
  14: w2 &= 16777215
  15: if w2 == 10 goto in_nets_2
  16: goto rule_1
in_nets_2:
  17: r2 = *(u16 *)(r6 + 28)
  18: if r2 < 1000 goto below_4
  19: if r2 <= 2000 goto port_ok_3
below_4:
  20: goto rule_1
port_ok_3:
  21: *(u32 *)(r6 + 104) = 1
  22: goto allow
rule_1:
  23: *(u32 *)(r6 + 104) = 2
  24: goto deny
allow:
  25: *(u32 *)(r6 + 40) = 1
  26: r1 = r9
  27: r2 = map[fd:4]
  29: r3 = 0
  30: call tail_call#12
  31: r0 = 2
  32: exit
deny:
  33: *(u32 *)(r6 + 40) = 2
  34: r1 = r9
  35: r2 = map[fd:4]
  37: r3 = 1
  38: call tail_call#12
  39: r0 = 2
  40: exit"""


def test_listing_of_a_small_program():
    policy = np("p", "x", {"podSelector": {}, "ingress": [
        {"from": [{"ipBlock": {"cidr": "10.0.0.0/24"}}], "ports": [{"port": 1000, "endPort": 2000}]}]})
    state = ClusterState.from_dicts(BASE + [policy])
    ep = endpoint_policy(state, state.pods["x/a"], "ingress")
    # The profile's allow after the Deny tier end is unreachable and pruned (the verifier refuses dead code).
    assert emit_policy(ep, PolicyMaps(state_fd=3, progs_fd=4, ipsets_fd=5)).listing() == LISTING


@pytest.mark.parametrize("module", [calico_ebpf.compiler.policy, calico_ebpf.compiler.policy_program],
                         ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_ipv6_only_rules_never_match_ipv4():
    g = gnp("g", {"ingress": [{"action": "Deny", "ipVersion": 6}, {"action": "Allow", "ipVersion": 4}]})
    assert steps([g])[:2] == ["default/GlobalNetworkPolicy g spec.ingress[0]: Deny (matches nothing: IPv6 only)",
                              "default/GlobalNetworkPolicy g spec.ingress[1]: Allow"]
