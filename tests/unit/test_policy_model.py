"""Parsing NetworkPolicy (k8s and Calico), GlobalNetworkPolicy and Tier into the rule model."""

from __future__ import annotations

import doctest

import pytest

import calico_ebpf.model.policy
import calico_ebpf.model.registry
from calico_ebpf.errors import ModelError
from calico_ebpf.model import ClusterState
from calico_ebpf.model.policy import (
    CalicoNetworkPolicy,
    EntityRule,
    GlobalNetworkPolicy,
    NetworkPolicy,
    PortMatch,
    Tier,
    label_selector,
)


def k8s(spec: dict, name: str = "p", ns: str = "x") -> NetworkPolicy:
    return NetworkPolicy.from_dict({"kind": "NetworkPolicy", "metadata": {"name": name, "namespace": ns}, "spec": spec})


def calico(spec: dict, name: str = "p", ns: str = "x") -> CalicoNetworkPolicy:
    return CalicoNetworkPolicy.from_dict({"kind": "NetworkPolicy", "metadata": {"name": name, "namespace": ns},
                                         "spec": spec})


def test_k8s_policy_types_default_like_the_api_server():
    assert k8s({"podSelector": {}}).types == ("Ingress",)
    assert k8s({"podSelector": {}, "egress": []}).types == ("Ingress", "Egress")
    assert k8s({"podSelector": {}, "policyTypes": ["Egress"]}).types == ("Egress",)


def test_k8s_rule_becomes_one_allow_rule_per_peer_and_port():
    p = k8s({"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{
        "from": [{"podSelector": {"matchLabels": {"role": "cli"}}},
                 {"namespaceSelector": {}, "podSelector": {"matchExpressions": [{"key": "t", "operator": "Exists"}]}},
                 {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
        "ports": [{"port": 80}, {"port": "http", "protocol": "UDP"}, {"port": 1000, "endPort": 2000}]}]})
    assert p.selector == 'app == "web"'
    assert len(p.ingress) == 9 and {r.action for r in p.ingress} == {"Allow"}
    first = p.ingress[0]
    assert first.protocol == 6 and first.where == "spec.ingress[0]"
    # podSelector alone: the policy's namespace, explicitly
    assert first.source == EntityRule(selector='role == "cli"', namespace_selector='kubernetes.io/metadata.name == "x"')
    assert first.destination.ports == (PortMatch(80, 80),)
    assert p.ingress[1].protocol == 17 and p.ingress[1].destination.ports == (PortMatch(name="http"),)
    assert p.ingress[2].destination.ports == (PortMatch(1000, 2000),)
    # both selectors in one peer are ANDed; {} namespaceSelector is every namespace
    assert p.ingress[3].source == EntityRule(selector="has(t)", namespace_selector="all()")
    assert p.ingress[6].source == EntityRule(nets=("10.0.0.0/8",), not_nets=("10.1.0.0/16",))


def test_k8s_empty_rule_and_empty_rule_list():
    assert k8s({"podSelector": {}, "ingress": []}).ingress == ()
    [rule] = k8s({"podSelector": {}, "ingress": [{}]}).ingress
    assert rule.protocol is None and rule.source == EntityRule() and rule.destination == EntityRule()


def test_k8s_egress_peers_are_destinations():
    [rule] = k8s({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "1.2.3.4/32"}}],
                                                  "ports": [{"protocol": "UDP"}]}]}).egress
    assert rule.source == EntityRule() and rule.destination == EntityRule(nets=("1.2.3.4/32",))
    assert rule.protocol == 17


def test_label_selector_conversion():
    sel = {"matchLabels": {"a": "1"}, "matchExpressions": [
        {"key": "b", "operator": "In", "values": ["x", "y"]}, {"key": "c", "operator": "NotIn", "values": ["z"]},
        {"key": "d", "operator": "DoesNotExist"}]}
    assert label_selector("o", "f", sel) == '(a == "1" && b in {"x", "y"} && c not in {"z"} && !has(d))'
    assert label_selector("o", "f", {}) == "all()"


@pytest.mark.parametrize(("spec", "message"), [
    ({"podSelector": {}, "ingress": [{"ports": [{"port": 80}, {"port": 0}]}]},
     "NetworkPolicy x/p: spec.ingress[0].ports[1].port: 0 is not a valid port"),
    ({"podSelector": {}, "ingress": [{"ports": [{"port": 90, "endPort": 80}]}]},
     "NetworkPolicy x/p: spec.ingress[0].ports[0].endPort: 80 is below port 90"),
    ({"podSelector": {}, "egress": [{"ports": [{"port": "http", "endPort": 80}]}]},
     "NetworkPolicy x/p: spec.egress[0].ports[0].endPort: requires a numeric port, not a named one"),
    ({"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP"}]}]},
     "NetworkPolicy x/p: spec.ingress[0].ports[0].protocol: 'ICMP' is not one of TCP, UDP, SCTP"),
    ({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]},
     "NetworkPolicy x/p: spec.ingress[0].from[0].ipBlock.cidr: '10.0.0.0/33' is not a valid CIDR"),
    ({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]},
     "NetworkPolicy x/p: spec.ingress[0].from[0]: ipBlock cannot be combined with a selector"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Is"}]}},
     ("NetworkPolicy x/p: spec.podSelector.matchExpressions[0].operator: 'Is' is not one of In, NotIn, Exists, "
      "DoesNotExist")),
    ({}, "NetworkPolicy x/p: spec.podSelector: is required (use {} to select every pod)"),
])
def test_k8s_errors_name_object_and_field(spec, message):
    with pytest.raises(ModelError) as exc:
        k8s(spec)
    assert str(exc.value) == message


def test_calico_rules_and_types_defaulting():
    p = calico({"selector": "app == 'web'", "order": 10, "egress": [
        {"action": "Deny", "protocol": "TCP", "destination": {"ports": [80, "1000:2000", "http"],
                                                              "notPorts": ["1500"], "nets": ["10.0.0.0/8"],
                                                              "notSelector": "a == 'b'"}},
        {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8, "code": 0}, "notProtocol": 17}]})
    assert p.types == ("Egress",) and p.order == 10.0 and p.tier == "default"
    deny, icmp = p.egress
    assert deny.destination.ports == (PortMatch(80, 80), PortMatch(1000, 2000), PortMatch(name="http"))
    assert deny.destination.not_ports == (PortMatch(1500, 1500),)
    assert deny.destination.not_selector == 'a == "b"'
    assert (icmp.protocol, icmp.icmp_type, icmp.icmp_code, icmp.not_protocol) == (1, 8, 0, 17)
    assert calico({"ingress": [{"action": "Allow"}]}).types == ("Ingress",)
    assert calico({"ingress": [{"action": "Allow"}], "egress": [{"action": "Allow"}]}).types == ("Ingress", "Egress")
    assert calico({}).selector == "all()"


@pytest.mark.parametrize(("rule", "message"), [
    ({}, "spec.ingress[0].action: is required (one of Allow, Deny, Pass, Log)"),
    ({"action": "Drop"}, "spec.ingress[0].action: 'Drop' is not one of Allow, Deny, Pass, Log"),
    ({"action": "Allow", "protocol": "TCP", "destination": {"ports": ["2000:1000"]}},
     "spec.ingress[0].destination.ports[0]: '2000:1000' is not a port range 'min:max' within 0..65535"),
    ({"action": "Allow", "destination": {"ports": [80]}},
     "spec.ingress[0].destination.ports: require protocol TCP, UDP or SCTP"),
    ({"action": "Allow", "protocol": "TCP", "icmp": {"type": 8}}, "spec.ingress[0].icmp: requires protocol ICMP or ICMPv6"),
    ({"action": "Allow", "protocol": "ICMP", "icmp": {"code": 1}}, "spec.ingress[0].icmp.code: requires a type"),
    ({"action": "Allow", "protocol": "GRE"},
     "spec.ingress[0].protocol: 'GRE' is not TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or 1..255"),
    ({"action": "Allow", "source": {"selector": "a =="}}, "spec.ingress[0].source.selector: bad selector 'a =='"),
])
def test_calico_errors_name_object_and_rule(rule, message):
    with pytest.raises(ModelError) as exc:
        calico({"ingress": [rule]}, name="deny-all")
    assert str(exc.value).startswith("NetworkPolicy x/deny-all: " + message)


def test_global_policy_and_tier():
    g = GlobalNetworkPolicy.from_dict({"kind": "GlobalNetworkPolicy", "metadata": {"name": "sec.g"},
                                       "spec": {"tier": "sec", "namespaceSelector": "ns == 'x'",
                                                "ingress": [{"action": "Pass"}]}})
    assert (g.key, g.tier, g.namespace_selector, g.namespace, g.order) == ("sec.g", "sec", 'ns == "x"', None, None)
    t = Tier.from_dict({"kind": "Tier", "metadata": {"name": "sec"}, "spec": {"order": 100, "defaultAction": "Pass"}})
    assert (t.order, t.default_action) == (100.0, "Pass")
    assert Tier.from_dict({"kind": "Tier", "metadata": {"name": "t"}}).default_action == "Deny"
    with pytest.raises(ModelError, match="Tier t: spec.defaultAction: 'Allow' is not one of Deny, Pass"):
        Tier.from_dict({"kind": "Tier", "metadata": {"name": "t"}, "spec": {"defaultAction": "Allow"}})


def test_cluster_state_registers_policy_kinds():
    state = ClusterState.from_dicts([
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "a", "namespace": "x"},
         "spec": {"podSelector": {}}},
        {"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy", "metadata": {"name": "a", "namespace": "x"},
         "spec": {}},
        {"apiVersion": "crd.projectcalico.org/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": "g"}, "spec": {}},
        {"apiVersion": "projectcalico.org/v3", "kind": "Tier", "metadata": {"name": "t"}, "spec": {"order": 1}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "bad", "namespace": "x"},
         "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 70000}]}]}},
    ])
    assert list(state.of_kind("NetworkPolicy")) == ["x/a"]
    assert list(state.of_kind("CalicoNetworkPolicy")) == ["x/a"]
    assert list(state.of_kind("GlobalNetworkPolicy")) == ["g"] and list(state.of_kind("Tier")) == ["t"]
    assert [str(e) for e in state.rejected] == [
        "NetworkPolicy x/bad: spec.ingress[0].ports[0].port: 70000 is not a valid port"]


@pytest.mark.parametrize("module", [calico_ebpf.model.policy, calico_ebpf.model.registry], ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
