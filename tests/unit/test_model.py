"""Model parsing: defaults, errors that name object and field, partial loads, YAML shapes."""

from __future__ import annotations

import doctest
import ipaddress
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

import calico_ebpf.compiler.endpoints
import calico_ebpf.compiler.routes
import calico_ebpf.compiler.service_ids
import calico_ebpf.compiler.services
import calico_ebpf.model.calico
import calico_ebpf.model.core
import calico_ebpf.model.discovery
import calico_ebpf.model.kubeproxy
import calico_ebpf.model.state
from calico_ebpf.errors import ModelError, UnsupportedError
from calico_ebpf.model import (
    ClusterState,
    EndpointSlice,
    FelixConfiguration,
    IPPool,
    KubeProxyConfiguration,
    Namespace,
    Node,
    Pod,
    Service,
)
from calico_ebpf.model._ip import parse_cidr, parse_ip


def svc(spec=None, status=None, name="svc1", ns="ns1", **extra):
    d = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
         "spec": {"clusterIP": "172.30.0.41", "ports": [{"name": "p80", "port": 80}], **(spec or {})}}
    if status:
        d["status"] = status
    d.update(extra)
    return d


def error_text(fn, *args) -> str:
    with pytest.raises(ModelError) as info:
        fn(*args)
    return str(info.value)


@pytest.mark.parametrize("module", [
    calico_ebpf.model.core, calico_ebpf.model.discovery, calico_ebpf.model.calico, calico_ebpf.model.kubeproxy,
    calico_ebpf.model.state, calico_ebpf.compiler.endpoints, calico_ebpf.compiler.service_ids,
    calico_ebpf.compiler.services, calico_ebpf.compiler.routes,
], ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


# -- Service ----------------------------------------------------------------------------------


def test_service_defaults():
    s = Service.from_dict(svc())
    assert (s.type, s.external_traffic_policy, s.internal_traffic_policy) == ("ClusterIP", "Cluster", "Cluster")
    assert s.ports[0].protocol == "TCP" and s.ports[0].node_port is None and s.ports[0].target_port is None
    assert (s.session_affinity, s.affinity_timeout) == ("None", 0)
    assert s.cluster_ips == ("172.30.0.41",) and not s.ignored


def test_service_client_ip_affinity_defaults_to_10800_and_reads_timeout():
    assert Service.from_dict(svc({"sessionAffinity": "ClientIP"})).affinity_timeout == 10800
    s = Service.from_dict(svc({"sessionAffinity": "ClientIP",
                               "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}))
    assert s.affinity_timeout == 60


def test_service_full_load_balancer():
    s = Service.from_dict(svc(
        {"type": "LoadBalancer", "externalIPs": ["192.168.099.022"], "externalTrafficPolicy": "Local",
         "internalTrafficPolicy": "Local", "loadBalancerSourceRanges": [" 203.0.113.000/025"],
         "ports": [{"name": "p80", "port": 80, "nodePort": 3001, "targetPort": "http", "protocol": "UDP"}],
         "healthCheckNodePort": 30000},
        {"loadBalancer": {"ingress": [{"ip": "1.2.3.004"}, {"ip": "5.6.7.8", "ipMode": "Proxy"},
                                      {"hostname": "lb.example.com"}]}}))
    assert s.external_ips == ("192.168.99.22",)
    assert [(i.ip, i.ip_mode) for i in s.lb_ingress] == [("1.2.3.4", "VIP"), ("5.6.7.8", "Proxy")]
    assert s.lb_source_ranges == ("203.0.113.0/25",)
    assert s.ports[0].node_port == 3001 and s.ports[0].target_port == "http" and s.ports[0].protocol == "UDP"
    assert s.external_policy_local and s.internal_policy_local and s.health_check_node_port == 30000


def test_external_policy_local_needs_an_externally_accessible_service():
    # kube-proxy treats eTP Local on a plain ClusterIP service as Cluster.
    assert not Service.from_dict(svc({"externalTrafficPolicy": "Local"})).external_policy_local
    assert Service.from_dict(svc({"externalTrafficPolicy": "Local", "externalIPs": ["1.1.1.1"]})).external_policy_local


def test_headless_and_external_name_are_ignored():
    assert Service.from_dict(svc({"clusterIP": "None"})).ignored
    assert Service.from_dict(svc({"clusterIP": None, "clusterIPs": ["None"]})).ignored
    assert Service.from_dict(svc({"type": "ExternalName", "externalName": "x.example.com"})).ignored


def test_node_port_zero_means_none():
    s = Service.from_dict(svc({"type": "NodePort", "ports": [{"port": 80, "nodePort": 0}]}))
    assert s.ports[0].node_port is None


@pytest.mark.parametrize("spec, message", [
    ({"ports": [{"port": 0}]}, "Service ns1/svc1: spec.ports[0].port: 0 is not a valid port"),
    ({"ports": [{"port": 80}, {"port": 70000}]}, "Service ns1/svc1: spec.ports[1].port: 70000 is not a valid port"),
    ({"ports": [{"port": 80, "protocol": "ICMP"}]},
     "Service ns1/svc1: spec.ports[0].protocol: 'ICMP' is not one of TCP, UDP, SCTP"),
    ({"clusterIP": "172.30.0.300"}, "Service ns1/svc1: spec.clusterIP: '172.30.0.300' is not a valid IP address"),
    ({"externalIPs": ["1.2.3.4", "nope"]}, "Service ns1/svc1: spec.externalIPs[1]: 'nope' is not a valid IP address"),
    ({"loadBalancerSourceRanges": ["10.0.0.0/40"]},
     "Service ns1/svc1: spec.loadBalancerSourceRanges[0]: '10.0.0.0/40' is not a valid CIDR"),
    ({"type": "Magic"}, "Service ns1/svc1: spec.type: 'Magic' is not one of ClusterIP, NodePort, LoadBalancer, ExternalName"),
    ({"externalTrafficPolicy": "Nearby"},
     "Service ns1/svc1: spec.externalTrafficPolicy: 'Nearby' is not one of Cluster, Local"),
    ({"ports": [{"port": 80}, {"port": 80}]}, "Service ns1/svc1: spec.ports[1].port: 80/TCP is listed twice"),
    ({"ports": [{"port": 80, "nodePort": -1}]}, "Service ns1/svc1: spec.ports[0].nodePort: -1 is not a valid port"),
    ({"ports": [{"port": True}]}, "Service ns1/svc1: spec.ports[0].port: True is not a valid port"),
    ({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}},
     "Service ns1/svc1: spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 is out of range [1, 86400]"),
    ({"ports": "80"}, "Service ns1/svc1: spec.ports: expected a list, got str"),
])
def test_service_errors_name_object_and_field(spec, message):
    assert error_text(Service.from_dict, svc(spec)) == message


def test_service_without_name_is_named_as_unnamed():
    assert error_text(Service.from_dict, {"kind": "Service", "metadata": {}}) == \
        "Service <unnamed>: metadata.name: is required"


def test_service_namespace_defaults_to_default():
    d = svc()
    del d["metadata"]["namespace"]
    assert Service.from_dict(d).key == "default/svc1"


# -- addresses --------------------------------------------------------------------------------


@given(st.integers(0, 2**32 - 1), st.lists(st.integers(0, 2), min_size=4, max_size=4))
def test_ipv4_with_leading_zeros_reads_as_decimal(value, pads):
    canonical = str(ipaddress.IPv4Address(value))
    padded = ".".join(o.zfill(min(3, len(o) + pad)) for o, pad in zip(canonical.split("."), pads))
    assert parse_ip(padded) == canonical


@pytest.mark.parametrize("text", ["1.2.3", "1.2.3.4.5", "256.1.1.1", "1.2.3.0004", "a.b.c.d", "", "1.2.3.-1", "١.2.3.4"])
def test_invalid_ipv4_is_refused(text):
    assert parse_ip(text) is None


def test_cidr_parsing():
    assert parse_cidr(" 203.0.113.000/025") == "203.0.113.0/25"
    assert parse_cidr("10.1.2.3/8") == "10.0.0.0/8"  # host bits cleared, as kube-proxy does
    assert parse_cidr("10.0.0.1") == "10.0.0.1/32"
    assert parse_cidr("2001:DB8::/64") == "2001:db8::/64"
    assert parse_cidr("10.0.0.0/33") is None and parse_cidr("10.0.0.0/") is None


# -- EndpointSlice ----------------------------------------------------------------------------


def slice_dict(endpoints, ports=None, labels=True, address_type="IPv4"):
    md = {"name": "svc1-abc", "namespace": "ns1"}
    if labels:
        md["labels"] = {"kubernetes.io/service-name": "svc1"}
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": md,
            "addressType": address_type, "ports": ports or [{"name": "p80", "port": 8080}], "endpoints": endpoints}


def test_endpoint_conditions_nil_defaults():
    s = EndpointSlice.from_dict(slice_dict([
        {"addresses": ["10.0.0.1"]},
        {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
        {"addresses": ["10.0.0.3"], "conditions": {"ready": False, "serving": True, "terminating": True},
         "nodeName": "n1", "targetRef": {"kind": "Pod", "name": "web-1"}},
    ]))
    c = [e.conditions for e in s.endpoints]
    assert (c[0].ready, c[0].serving, c[0].terminating) == (True, True, False)
    assert (c[1].ready, c[1].serving, c[1].terminating) == (False, True, False)
    assert (c[2].ready, c[2].serving, c[2].terminating) == (False, True, True)
    assert s.endpoints[2].node_name == "n1" and s.endpoints[0].node_name is None
    assert s.endpoints[2].target_pod == "ns1/web-1"
    assert s.service_key == "ns1/svc1" and s.ports[0] == type(s.ports[0])("p80", 8080, "TCP")


def test_endpoint_slice_errors_name_the_field():
    assert error_text(EndpointSlice.from_dict, slice_dict([{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.x"]}])) \
        == "EndpointSlice ns1/svc1-abc: endpoints[1].addresses[0]: '10.0.0.x' is not a valid IP address"
    assert error_text(EndpointSlice.from_dict, slice_dict([{"addresses": ["fd00::1"]}])) \
        == "EndpointSlice ns1/svc1-abc: endpoints[0].addresses[0]: fd00::1 is not an IPv4 address"
    assert error_text(EndpointSlice.from_dict, slice_dict([{"addresses": []}])) \
        == "EndpointSlice ns1/svc1-abc: endpoints[0].addresses: must list at least one address"
    assert error_text(EndpointSlice.from_dict, slice_dict([], ports=[{"port": 0}])) \
        == "EndpointSlice ns1/svc1-abc: ports[0].port: 0 is not a valid port"
    assert error_text(EndpointSlice.from_dict, slice_dict([{"addresses": ["10.0.0.1"], "conditions": {"ready": "yes"}}])) \
        == "EndpointSlice ns1/svc1-abc: endpoints[0].conditions.ready: expected true or false, got 'yes'"


def test_endpoint_slice_without_service_label_belongs_to_no_service():
    assert EndpointSlice.from_dict(slice_dict([], labels=False)).service_key is None


# -- Node, Pod, Namespace ---------------------------------------------------------------------


def test_node_addresses_and_pod_cidr():
    n = Node.from_dict({"kind": "Node", "metadata": {"name": "n1", "labels": {"zone": "a"}},
                        "spec": {"podCIDR": "10.244.1.0/24"},
                        "status": {"addresses": [{"type": "Hostname", "address": "n1"},
                                                 {"type": "ExternalIP", "address": "203.0.113.9"},
                                                 {"type": "InternalIP", "address": "192.168.0.2"},
                                                 {"type": "InternalIP", "address": "2001:db8::1"}]}})
    assert n.ips() == ("203.0.113.9", "192.168.0.2", "2001:db8::1")
    assert n.ips(4) == ("203.0.113.9", "192.168.0.2")
    assert n.primary_ip(4) == "192.168.0.2" and n.primary_ip(6) == "2001:db8::1"
    assert n.pod_cidrs == ("10.244.1.0/24",) and n.labels == {"zone": "a"}
    assert error_text(Node.from_dict, {"kind": "Node", "metadata": {"name": "n1"},
                                       "status": {"addresses": [{"type": "InternalIP", "address": "x"}]}}) \
        == "Node n1: status.addresses[0].address: 'x' is not a valid IP address"


def test_pod_ips_and_host_network():
    p = Pod.from_dict({"kind": "Pod", "metadata": {"name": "a", "namespace": "d", "labels": {"app": "web"}},
                       "spec": {"nodeName": "n1"},
                       "status": {"podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}]}})
    assert p.pod_ips == ("10.0.0.5", "fd00::5") and p.node_name == "n1" and p.labels == {"app": "web"}
    assert not p.host_network and not p.finished
    h = Pod.from_dict({"kind": "Pod", "metadata": {"name": "h"}, "spec": {"hostNetwork": True},
                       "status": {"phase": "Succeeded"}})
    assert h.host_network and h.finished and h.node_name is None and h.namespace == "default"


def test_namespace_gets_its_name_label():
    ns = Namespace.from_dict({"kind": "Namespace", "metadata": {"name": "shop", "labels": {"team": "x"}}})
    assert ns.labels == {"team": "x", "kubernetes.io/metadata.name": "shop"}


# -- Calico and kube-proxy configuration ------------------------------------------------------


def test_ip_pool():
    p = IPPool.from_dict({"kind": "IPPool", "metadata": {"name": "pool1"},
                          "spec": {"cidr": "10.0.0.0/8", "vxlanMode": "CrossSubnet", "natOutgoing": True}})
    assert (p.cidr, p.vxlan, p.nat_outgoing, p.block_size, p.ipip_mode) == ("10.0.0.0/8", True, True, 26, "Never")
    assert error_text(IPPool.from_dict, {"kind": "IPPool", "metadata": {"name": "pool1"},
                                         "spec": {"cidr": "10.0.0.0/33"}}) \
        == "IPPool pool1: spec.cidr: '10.0.0.0/33' is not a valid CIDR"
    assert error_text(IPPool.from_dict, {"kind": "IPPool", "metadata": {"name": "pool1"}, "spec": {}}) \
        == "IPPool pool1: spec.cidr: is required"


def test_ipip_pool_is_unsupported():
    with pytest.raises(UnsupportedError) as info:
        IPPool.from_dict({"kind": "IPPool", "metadata": {"name": "pool1"},
                          "spec": {"cidr": "10.0.0.0/8", "ipipMode": "Always"}})
    assert info.value.feature == "IPIP encapsulation" and info.value.object == "IPPool pool1"
    assert "VXLAN" in info.value.reason


def test_felix_configuration_defaults_are_calicos():
    fc = FelixConfiguration.from_dict({"kind": "FelixConfiguration", "metadata": {"name": "default"}})
    assert fc.bpf_external_service_mode == "Tunnel" and fc.bpf_kube_proxy_iptables_cleanup_enabled
    assert (fc.bpf_map_size_nat_frontend, fc.bpf_map_size_nat_backend, fc.bpf_map_size_conntrack,
            fc.bpf_map_size_route) == (65536, 262144, 512000, 262144)
    ct = fc.bpf_conntrack_timeouts
    assert (ct.tcp_syn_sent, ct.tcp_established, ct.tcp_fins_seen, ct.udp_timeout, ct.generic_timeout,
            ct.icmp_timeout) == (20.0, 3600.0, "Auto", 60.0, 600.0, 5.0)
    assert ("tcp", 22) in [(p.protocol, p.port) for p in fc.failsafe_inbound_host_ports]
    assert ("udp", 53) in [(p.protocol, p.port) for p in fc.failsafe_outbound_host_ports]
    assert fc.explicit == frozenset()


def test_felix_configuration_fields_and_merge():
    default = FelixConfiguration.from_dict({"kind": "FelixConfiguration", "metadata": {"name": "default"}, "spec": {
        "bpfEnabled": True, "bpfExternalServiceMode": "DSR", "bpfMapSizeNATFrontend": 1024,
        "bpfConntrackTimeouts": {"tcpEstablished": "2h30m", "udpTimeout": "90s", "tcpFinsSeen": "Auto"},
        "failsafeInboundHostPorts": [{"protocol": "TCP", "port": 22}, "udp:10.0.0.0/8:53"],
        "bpfKubeProxyIptablesCleanupEnabled": False, "bpfPSNATPorts": "30000:30100",
        "bpfKubeProxyMinSyncPeriod": "500ms"}})
    assert default.bpf_enabled and default.bpf_external_service_mode == "DSR"
    assert default.bpf_map_size_nat_frontend == 1024 and not default.bpf_kube_proxy_iptables_cleanup_enabled
    assert default.bpf_conntrack_timeouts.tcp_established == 9000.0
    assert default.bpf_conntrack_timeouts.udp_timeout == 90.0
    assert [(p.protocol, p.port, p.net) for p in default.failsafe_inbound_host_ports] == \
        [("tcp", 22, None), ("udp", 53, "10.0.0.0/8")]
    assert default.bpf_psnat_ports == (30000, 30100) and default.bpf_kube_proxy_min_sync_period == 0.5
    node = FelixConfiguration.from_dict({"kind": "FelixConfiguration", "metadata": {"name": "node.n1"},
                                         "spec": {"bpfExternalServiceMode": "Tunnel"}})
    state = ClusterState()
    state.add(default)
    state.add(node)
    merged = state.felix_config("n1")
    assert merged.bpf_external_service_mode == "Tunnel" and merged.bpf_map_size_nat_frontend == 1024
    assert state.felix_config("n2").bpf_external_service_mode == "DSR"


@pytest.mark.parametrize("spec, message", [
    ({"bpfExternalServiceMode": "Direct"}, "spec.bpfExternalServiceMode: 'Direct' is not one of Tunnel, DSR"),
    ({"bpfConntrackTimeouts": {"udpTimeout": "60"}},
     "spec.bpfConntrackTimeouts.udpTimeout: '60' is not a duration (like 30s, 1h) or Auto"),
    ({"bpfConntrackTimeouts": {"tcpEstablishd": "1h"}}, "spec.bpfConntrackTimeouts.tcpEstablishd: is not a known timeout"),
    ({"bpfMapSizeNATBackend": 0}, "spec.bpfMapSizeNATBackend: 0 is out of range [1, 2147483648]"),
    ({"failsafeInboundHostPorts": [{"protocol": "SCTP", "port": 1}]},
     "spec.failsafeInboundHostPorts[0].protocol: 'sctp' is not TCP or UDP"),
    ({"failsafeOutboundHostPorts": ["tcp:x"]}, "spec.failsafeOutboundHostPorts[0]: 'tcp:x' has no valid port"),
])
def test_felix_configuration_errors(spec, message):
    d = {"kind": "FelixConfiguration", "metadata": {"name": "default"}, "spec": spec}
    assert error_text(FelixConfiguration.from_dict, d) == f"FelixConfiguration default: {message}"


def test_kube_proxy_configuration():
    kp = KubeProxyConfiguration.from_dict({
        "kind": "KubeProxyConfiguration", "clusterCIDR": "10.0.0.0/8,fd00:10::/64",
        "nodePortAddresses": ["192.168.0.0/24", "primary"], "iptables": {"masqueradeAll": True,
                                                                          "localhostNodePorts": False}})
    assert kp.cluster_cidrs == ("10.0.0.0/8", "fd00:10::/64")
    assert kp.node_port_addresses == ("192.168.0.0/24", "primary") and kp.masquerade_all
    assert not kp.localhost_node_ports
    plain = KubeProxyConfiguration.from_dict({"kind": "KubeProxyConfiguration"})
    assert plain.node_port_addresses is None and not plain.masquerade_all and plain.cluster_cidrs == ()
    assert error_text(KubeProxyConfiguration.from_dict, {"kind": "KubeProxyConfiguration",
                                                         "nodePortAddresses": ["bogus"]}) \
        == "KubeProxyConfiguration: nodePortAddresses[0]: 'bogus' is not a valid CIDR"


# -- ClusterState -----------------------------------------------------------------------------

MULTI_DOC = textwrap.dedent("""\
    apiVersion: v1
    kind: Service
    metadata: {name: svc1, namespace: ns1}
    spec: {clusterIP: 172.30.0.41, ports: [{port: 0}]}
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: svc2, namespace: ns1}
    spec: {clusterIP: 172.30.0.42, ports: [{name: p80, port: 80}, {name: s, port: 9, protocol: SCTP}]}
    ---
    apiVersion: projectcalico.org/v3
    kind: IPPool
    metadata: {name: pool1}
    spec: {cidr: 10.0.0.0/33}
    ---
    apiVersion: projectcalico.org/v3
    kind: IPPool
    metadata: {name: pool2}
    spec: {cidr: 10.0.0.0/8, ipipMode: Always}
    ---
    apiVersion: networking.k8s.io/v1
    kind: Ingress
    metadata: {name: deny, namespace: ns1}
    spec: {}
    ---
    ---
    - not an object
    ---
    apiVersion: v1
    kind: List
    items:
    - {apiVersion: v1, kind: Namespace, metadata: {name: ns1}}
    - {apiVersion: v1, kind: Node, metadata: {name: n1},
       status: {addresses: [{type: InternalIP, address: 192.168.0.2}]}}
    - {kind: Pod, metadata: {name: nokind}}
    - {apiVersion: crd.projectcalico.org/v1, kind: IPPool, metadata: {name: pool3}, spec: {cidr: 10.1.0.0/16}}
    """)


def test_bad_objects_are_rejected_alone_and_the_rest_loads():
    state = ClusterState.from_yaml_text(MULTI_DOC, "cluster.yaml")
    assert sorted(state.services) == ["ns1/svc2"]
    assert sorted(state.namespaces) == ["ns1"] and sorted(state.nodes) == ["n1"]
    assert sorted(state.ip_pools) == ["pool3"]
    messages = [str(e) for e in state.rejected]
    assert messages[0] == "Service ns1/svc1: spec.ports[0].port: 0 is not a valid port"
    assert messages[1] == "IPPool pool1: spec.cidr: '10.0.0.0/33' is not a valid CIDR"
    assert isinstance(state.rejected[2], UnsupportedError) and state.rejected[2].object == "IPPool pool2"
    assert messages[3] == "cluster.yaml: document 6: expected an object, got list"
    assert messages[4] == "cluster.yaml: document 7 items[2]: apiVersion: is required"
    assert len(messages) == 5
    assert [(e.feature, e.object) for e in state.unsupported] == [("SCTP service port", "Service ns1/svc2")]
    assert state.ignored == ["networking.k8s.io/v1 Ingress ns1/deny: kind not handled (yet); ignored"]
    assert state.unhandled[0]["kind"] == "Ingress"


def test_from_manifests_reads_files_in_order(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text(MULTI_DOC)
    # A later file replaces an object with the same kind and key.
    b.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: svc2, namespace: ns1}\n"
                 "spec: {clusterIP: 172.30.0.99, ports: [{port: 81}]}\n")
    state = ClusterState.from_manifests(a, b)
    assert state.services["ns1/svc2"].cluster_ips == ("172.30.0.99",)
    assert len(state.rejected) == 5


def test_invalid_yaml_is_rejected_not_raised():
    state = ClusterState.from_yaml_text("kind: [unclosed", "bad.yaml")
    assert len(state.rejected) == 1 and str(state.rejected[0]).startswith("bad.yaml: is not valid YAML")


def test_from_dicts_with_typed_list_and_add_dict_raises():
    state = ClusterState.from_dicts([{"apiVersion": "v1", "kind": "ServiceList", "items": [svc(), svc(name="svc2")]}])
    assert sorted(state.services) == ["ns1/svc1", "ns1/svc2"]
    with pytest.raises(ModelError, match=r"Service ns1/bad: spec.ports\[0\].port: 0 is not a valid port"):
        state.add_dict(svc({"ports": [{"port": 0}]}, name="bad"))
    assert "ns1/bad" not in state.services


def test_slices_by_service_and_remove():
    state = ClusterState.from_dicts([svc(), slice_dict([{"addresses": ["10.0.0.1"]}]),
                                     slice_dict([], labels=False) | {"metadata": {"name": "stray", "namespace": "ns1"}}])
    assert [s.name for s in state.slices_for("ns1/svc1")] == ["svc1-abc"]
    assert state.remove("EndpointSlice", "ns1/svc1-abc").name == "svc1-abc"
    assert state.slices_for("ns1/svc1") == []
    assert state.remove("Service", "ns1/missing") is None


def test_unsupported_notes_follow_the_object():
    sctp = svc({"ports": [{"port": 9, "protocol": "SCTP"}]})
    state = ClusterState.from_dicts([sctp, sctp])
    assert len(state.unsupported) == 1  # re-adding replaces, not piles up
    state.add_dict(svc())
    assert state.unsupported == []
    state.add_dict(sctp)
    state.remove("Service", "ns1/svc1")
    assert state.unsupported == []
