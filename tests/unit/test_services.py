"""Service compiler: each feature, service id stability, minimal change; route records."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calico_ebpf.compiler import (
    ServiceIdAllocator,
    ServicesConfig,
    compile_routes,
    compile_services,
    veth_name,
)
from calico_ebpf.compiler.routes import (
    RT_HOST,
    RT_IN_POOL,
    RT_LOCAL,
    RT_NAT_OUT,
    RT_TUNNELED,
    RT_VXLAN,
    RT_WORKLOAD,
)
from calico_ebpf.compiler.services import EXTERNAL_LOCAL, INTERNAL_LOCAL
from calico_ebpf.errors import ModelError
from calico_ebpf.model import ClusterState

NODE = "n1"


def node(name=NODE, ips=("192.168.0.2", "192.168.1.2"), pod_cidr=None):
    d = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
         "status": {"addresses": [{"type": "InternalIP", "address": ip} for ip in ips]}}
    if pod_cidr:
        d["spec"] = {"podCIDR": pod_cidr}
    return d


def service(name="web", ns="d", cluster_ip="172.30.0.10", ports=None, status=None, **spec):
    d = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
         "spec": {"clusterIP": cluster_ip, "ports": ports or [{"name": "http", "port": 80}], **spec}}
    if status:
        d["status"] = status
    return d


def ep(ip, node_name=None, **conditions):
    d = {"addresses": [ip]}
    if node_name:
        d["nodeName"] = node_name
    if conditions:
        d["conditions"] = conditions
    return d


def slice_(endpoints, svc="web", ns="d", name=None, ports=None):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": name or f"{svc}-1", "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
            "ports": ports or [{"name": "http", "port": 8080}], "endpoints": endpoints}


def state_of(*objs) -> ClusterState:
    state = ClusterState.from_dicts([node(), *objs])
    assert state.rejected == []
    return state


def fes(desired, kind=None):
    return sorted((f for f in desired.frontends if kind is None or f.kind == kind),
                  key=lambda f: (f.addr, f.port, f.proto, f.src_cidr or ""))


def backends_of(desired, fe):
    return desired.backends[fe.service_id].backends


# -- frontends --------------------------------------------------------------------------------


def test_cluster_ip_frontend_resolves_target_port_by_endpoint_slice_port_name():
    desired = compile_services(state_of(
        service(ports=[{"name": "http", "port": 80, "targetPort": 9999}, {"name": "dns", "port": 53, "protocol": "UDP"}]),
        slice_([ep("10.0.0.7", NODE), ep("10.0.0.9", "n2")],
               ports=[{"name": "http", "port": 8080}, {"name": "dns", "port": 5353, "protocol": "UDP"}]),
    ), NODE)
    http, dns = sorted(fes(desired, "clusterIP"), key=lambda f: f.port, reverse=True)
    assert (http.addr, http.port, http.proto, http.src_cidr, http.service) == ("172.30.0.10", 80, 6, None, "d/web/http/TCP")
    assert (dns.port, dns.proto, dns.service) == (53, 17, "d/web/dns/UDP")
    assert http.service_id != dns.service_id
    assert backends_of(desired, http) == (("10.0.0.7", 8080), ("10.0.0.9", 8080))
    assert backends_of(desired, dns) == (("10.0.0.7", 5353), ("10.0.0.9", 5353))
    assert (http.count, http.local, http.flags, http.affinity_timeout, http.drop) == (2, 1, 0, 0, False)


def test_endpoint_slice_port_must_match_name_and_protocol():
    desired = compile_services(state_of(
        service(), slice_([ep("10.0.0.7")], ports=[{"name": "other", "port": 8080},
                                                   {"name": "http", "port": 8081, "protocol": "UDP"}])), NODE)
    (fe,) = fes(desired)
    assert fe.count == 0 and backends_of(desired, fe) == ()


def test_node_port_on_every_node_address_plus_wildcard():
    desired = compile_services(state_of(service(type="NodePort", ports=[{"name": "http", "port": 80, "nodePort": 30080}]),
                                        slice_([ep("10.0.0.7")])), NODE)
    nps = fes(desired, "nodePort")
    assert [(f.addr, f.port) for f in nps] == [("192.168.0.2", 30080), ("192.168.1.2", 30080), ("255.255.255.255", 30080)]
    cip = fes(desired, "clusterIP")[0]
    assert {f.service_id for f in nps} == {cip.service_id} and all(f.count == 1 for f in nps)


@pytest.mark.parametrize("selection, expected", [
    (("192.168.1.0/24",), ["192.168.1.2"]),
    (("primary",), ["192.168.0.2"]),
    (("10.0.0.0/8",), []),
])
def test_node_port_addresses_select_exact_entries_wildcard_stays(selection, expected):
    state = state_of(service(type="NodePort", ports=[{"name": "http", "port": 80, "nodePort": 30080}]))
    desired = compile_services(state, NODE, ServicesConfig(node_port_addresses=selection))
    assert [f.addr for f in fes(desired, "nodePort")] == expected + ["255.255.255.255"]


def test_node_port_addresses_come_from_kube_proxy_configuration():
    state = state_of(service(type="NodePort", ports=[{"name": "http", "port": 80, "nodePort": 30080}]),
                     {"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
                      "nodePortAddresses": ["192.168.0.2/32"]})
    assert [f.addr for f in fes(compile_services(state, NODE), "nodePort")] == ["192.168.0.2", "255.255.255.255"]


def test_no_node_port_without_a_node_port_number():
    desired = compile_services(state_of(service(type="NodePort")), NODE)
    assert [f.kind for f in desired.frontends] == ["clusterIP"]


def test_external_ips_and_load_balancer_ingress():
    desired = compile_services(state_of(service(
        type="LoadBalancer", externalIPs=["192.168.99.22", "2001:db8::22"],
        ports=[{"name": "http", "port": 80, "nodePort": 30080}],
        status={"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}, {"ip": "5.6.7.8", "ipMode": "Proxy"}]}})), NODE)
    assert [f.addr for f in fes(desired, "externalIP")] == ["192.168.99.22"]  # IPv6 is not programmed
    assert [(f.addr, f.src_cidr, f.drop) for f in fes(desired, "loadBalancer")] == [("1.2.3.4", None, False)]
    kinds = sorted({f.kind for f in desired.frontends})
    assert kinds == ["clusterIP", "externalIP", "loadBalancer", "nodePort"]
    assert len({f.service_id for f in desired.frontends}) == 1


def test_proxy_mode_lb_ips_programmed_when_ip_mode_is_not_honoured():
    state = state_of(service(type="LoadBalancer", status={"loadBalancer": {"ingress": [{"ip": "5.6.7.8", "ipMode": "Proxy"}]}}))
    desired = compile_services(state, NODE, ServicesConfig(honour_lb_ip_mode=False))
    assert [f.addr for f in fes(desired, "loadBalancer")] == ["5.6.7.8"]


def test_load_balancer_source_ranges():
    desired = compile_services(state_of(service(
        type="LoadBalancer", externalIPs=["192.168.99.22"], ports=[{"name": "http", "port": 80, "nodePort": 30080}],
        loadBalancerSourceRanges=["203.0.113.0/25", "198.51.100.0/24"],
        status={"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}), slice_([ep("10.0.0.7")])), NODE)
    lbs = fes(desired, "loadBalancer")
    assert [(f.src_cidr, f.drop, f.count) for f in lbs] == [
        (None, True, 0), ("198.51.100.0/24", False, 1), ("203.0.113.0/25", False, 1)]
    # Source ranges filter LB IPs only.
    assert all(f.src_cidr is None and not f.drop for f in desired.frontends if f.kind != "loadBalancer")


def test_source_range_any_needs_no_drop_entry():
    desired = compile_services(state_of(service(
        type="LoadBalancer", loadBalancerSourceRanges=["0.0.0.0/0"],
        status={"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}})), NODE)
    assert [(f.src_cidr, f.drop) for f in fes(desired, "loadBalancer")] == [(None, False)]


def test_source_range_covering_the_node_allows_the_lb_ips_as_sources():
    desired = compile_services(state_of(service(
        type="LoadBalancer", loadBalancerSourceRanges=["192.168.0.0/24"],
        status={"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}, {"ip": "5.6.7.8"}]}})), NODE)
    got = [(f.addr, f.src_cidr, f.drop) for f in fes(desired, "loadBalancer")]
    assert got == [
        ("1.2.3.4", None, True), ("1.2.3.4", "1.2.3.4/32", False), ("1.2.3.4", "192.168.0.0/24", False),
        ("1.2.3.4", "5.6.7.8/32", False),
        ("5.6.7.8", None, True), ("5.6.7.8", "1.2.3.4/32", False), ("5.6.7.8", "192.168.0.0/24", False),
        ("5.6.7.8", "5.6.7.8/32", False),
    ]


# -- traffic policies and endpoint conditions -------------------------------------------------


def test_external_traffic_policy_local_flags_external_frontends_only():
    desired = compile_services(state_of(service(
        type="LoadBalancer", externalTrafficPolicy="Local", externalIPs=["192.168.99.22"],
        ports=[{"name": "http", "port": 80, "nodePort": 30080}], status={"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}),
        slice_([ep("10.0.0.9", "n2"), ep("10.0.0.7", NODE)])), NODE)
    for fe in desired.frontends:
        assert fe.flags == (0 if fe.kind == "clusterIP" else EXTERNAL_LOCAL)
        assert (fe.count, fe.local) == (2, 1)
    assert backends_of(desired, desired.frontends[0])[0] == ("10.0.0.7", 8080)


def test_external_traffic_policy_local_ignored_for_cluster_ip_services():
    desired = compile_services(state_of(service(externalTrafficPolicy="Local")), NODE)
    assert desired.frontends[0].flags == 0


def test_internal_traffic_policy_local_flags_the_cluster_ip_for_every_client():
    desired = compile_services(state_of(service(
        type="NodePort", internalTrafficPolicy="Local", ports=[{"name": "http", "port": 80, "nodePort": 30080}]),
        slice_([ep("10.0.0.9", "n2")])), NODE)
    (cip,) = fes(desired, "clusterIP")
    assert cip.flags == INTERNAL_LOCAL | EXTERNAL_LOCAL
    # Zero local endpoints: the frontend keeps the remote ones for the count, local is 0.
    assert (cip.count, cip.local) == (1, 0)
    assert all(f.flags == 0 for f in fes(desired, "nodePort"))


def test_ready_endpoints_first_then_serving_terminating_never_not_serving():
    def backends(endpoints):
        desired = compile_services(state_of(service(), slice_(endpoints)), NODE)
        return backends_of(desired, desired.frontends[0])

    ready = ep("10.0.0.1")
    terminating = ep("10.0.0.2", ready=False, serving=True, terminating=True)
    not_serving = ep("10.0.0.3", ready=False, serving=False, terminating=True)
    not_ready = ep("10.0.0.4", ready=False)
    assert backends([ready, terminating, not_serving, not_ready]) == (("10.0.0.1", 8080),)
    assert backends([terminating, not_serving, not_ready]) == (("10.0.0.2", 8080),)
    assert backends([not_serving, not_ready]) == ()


def test_local_policy_falls_back_to_local_terminating_endpoints():
    # kube-proxy TERM-ETPL-2a: a ready remote endpoint does not stop the local fallback.
    endpoints = [ep("10.0.0.9", "n2"), ep("10.0.0.2", NODE, ready=False, serving=True, terminating=True)]
    local = compile_services(state_of(service(type="NodePort", externalTrafficPolicy="Local"), slice_(endpoints)), NODE)
    fe = local.frontends[0]
    assert (fe.local, backends_of(local, fe)) == (1, (("10.0.0.2", 8080), ("10.0.0.9", 8080)))
    # Without a Local policy the local terminating endpoint is not used at all.
    cluster = compile_services(state_of(service(type="NodePort"), slice_(endpoints)), NODE)
    fe = cluster.frontends[0]
    assert (fe.local, backends_of(cluster, fe)) == (0, (("10.0.0.9", 8080),))


def test_backend_order_local_first_numeric_and_deduplicated_across_slices():
    desired = compile_services(state_of(
        service(),
        slice_([ep("10.0.0.10", "n2"), ep("10.0.0.9", NODE), ep("10.0.0.2", "n2")], name="web-a"),
        slice_([ep("10.0.0.2", "n2"), ep("10.0.0.100", NODE), ep("10.0.0.9", "n3")], name="web-b"),
    ), NODE)
    fe = desired.frontends[0]
    assert backends_of(desired, fe) == (("10.0.0.9", 8080), ("10.0.0.100", 8080), ("10.0.0.2", 8080),
                                        ("10.0.0.10", 8080))
    assert fe.local == 2


def test_session_affinity_timeout_on_every_frontend():
    desired = compile_services(state_of(service(
        type="NodePort", sessionAffinity="ClientIP", ports=[{"name": "http", "port": 80, "nodePort": 30080}])), NODE)
    assert {f.affinity_timeout for f in desired.frontends} == {10800}
    desired = compile_services(state_of(service(
        sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 30}})), NODE)
    assert desired.frontends[0].affinity_timeout == 30


def test_headless_external_name_and_sctp_are_not_programmed():
    desired = compile_services(state_of(
        service("headless", cluster_ip="None"),
        service("ext", cluster_ip=None, type="ExternalName", externalName="db.example.com"),
        service("mixed", ports=[{"name": "a", "port": 80}, {"name": "b", "port": 80, "protocol": "SCTP"}]),
    ), NODE)
    assert [(f.service, f.proto) for f in desired.frontends] == [("d/mixed/a/TCP", 6)]
    assert [(e.feature, e.object) for e in desired.unsupported] == [("SCTP service port", "Service d/mixed")]


def test_frontend_conflicts_keep_the_first_service():
    desired = compile_services(state_of(service("a", externalIPs=["192.168.99.22"]),
                                        service("b", cluster_ip="172.30.0.11", externalIPs=["192.168.99.22"])), NODE)
    owners = {f.service for f in desired.frontends if f.addr == "192.168.99.22"}
    assert owners == {"d/a/http/TCP"} and len(desired.conflicts) == 1 and "d/b/http/TCP" in desired.conflicts[0]


def test_unknown_node_is_an_error():
    with pytest.raises(ModelError, match="Node nope: is not in the cluster state"):
        compile_services(state_of(), "nope")


# -- service ids and minimal change -----------------------------------------------------------


def many_services(n=5, extra=()):
    objs = []
    for i in range(n):
        objs.append(service(f"s{i}", cluster_ip=f"172.30.0.{i + 1}"))
        objs.append(slice_([ep(f"10.0.{i}.1", NODE), ep(f"10.0.{i}.2", "n2")], svc=f"s{i}"))
    return state_of(*objs, *extra)


def test_same_state_compiles_to_the_same_records_and_ids():
    a = compile_services(many_services(), NODE)
    ids = ServiceIdAllocator()
    b = compile_services(many_services(), NODE, ids=ids)
    c = compile_services(many_services(), NODE, ids=ids)
    assert a == b == c
    assert dict(a.service_ids) == {f"d/s{i}/http/TCP": i + 1 for i in range(5)}


def test_ids_survive_additions_removals_and_restarts():
    ids = ServiceIdAllocator()
    first = compile_services(many_services(), NODE, ids=ids)
    state = many_services()
    state.remove("Service", "d/s2")
    state.add_dict(service("aaa", cluster_ip="172.30.1.1"))
    second = compile_services(state, NODE, ids=ids)
    for key, sid in first.service_ids.items():
        if key != "d/s2/http/TCP":
            assert second.service_ids[key] == sid
    assert "d/s2/http/TCP" not in second.service_ids
    assert second.service_ids["d/aaa/http/TCP"] == 6  # fresh, not the released 3
    # A restarted agent passes what it read back from the kernel.
    restarted = compile_services(state, NODE, ids=dict(second.service_ids))
    assert restarted == second


def test_allocator_refreshes_ids_shared_by_two_keys():
    ids = ServiceIdAllocator({"a": 5, "b": 5, "c": 7})
    assert ids.assign(["a", "b", "c"]) == {"c": 7, "a": 8, "b": 9}


def test_one_endpoint_change_rewrites_only_its_service():
    before = compile_services(many_services(), NODE)
    state = many_services()
    state.add_dict(slice_([ep("10.0.3.1", NODE), ep("10.0.3.2", "n2"), ep("10.0.3.3", "n2")], svc="s3"))
    after = compile_services(state, NODE, ids=before.service_ids)
    changed_blocks = [sid for sid in before.backends if before.backends[sid] != after.backends[sid]]
    assert changed_blocks == [before.service_ids["d/s3/http/TCP"]]
    old, new = before.backends[changed_blocks[0]].backends, after.backends[changed_blocks[0]].backends
    assert new[: len(old)] == old  # existing ordinals keep their backend
    changed_fes = set(before.frontends) ^ set(after.frontends)
    assert {f.service for f in changed_fes} == {"d/s3/http/TCP"}


# -- routes -----------------------------------------------------------------------------------


def pod(name, ip, node_name, ns="d", host_network=False):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": {"nodeName": node_name, "hostNetwork": host_network}, "status": {"podIP": ip}}


def test_routes_for_hosts_pods_blocks_and_pools():
    state = ClusterState.from_dicts([
        node(), node("n2", ips=("192.168.0.3",), pod_cidr="10.244.2.0/24"),
        {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "p"},
         "spec": {"cidr": "10.244.0.0/16", "vxlanMode": "Always", "natOutgoing": True}},
        pod("a", "10.244.1.5", NODE), pod("b", "10.244.2.7", "n2"), pod("outside", "172.16.0.4", "n2"),
        pod("hostnet", "192.168.0.3", "n2", host_network=True),
    ])
    routes = {r.cidr: r for r in compile_routes(state, NODE)}
    pool = RT_IN_POOL | RT_NAT_OUT
    assert routes["192.168.0.2/32"].flags == RT_LOCAL | RT_HOST
    assert routes["192.168.1.2/32"].flags == RT_LOCAL | RT_HOST
    assert (routes["192.168.0.3/32"].flags, routes["192.168.0.3/32"].node) == (RT_HOST, "n2")
    a = routes["10.244.1.5/32"]
    assert (a.flags, a.ifname, a.pod, a.next_hop) == (RT_LOCAL | RT_WORKLOAD | pool, veth_name("d", "a"), "d/a", None)
    b = routes["10.244.2.7/32"]
    assert (b.flags, b.next_hop) == (RT_WORKLOAD | pool | RT_TUNNELED | RT_VXLAN, "192.168.0.3")
    assert (routes["172.16.0.4/32"].flags, routes["172.16.0.4/32"].next_hop) == (RT_WORKLOAD, "192.168.0.3")
    block = routes["10.244.2.0/24"]
    assert (block.flags, block.next_hop) == (RT_WORKLOAD | pool | RT_TUNNELED | RT_VXLAN, "192.168.0.3")
    assert routes["10.244.0.0/16"].flags == pool
    assert len(routes) == 8  # nothing for the host-network pod beyond its node's host route
    assert veth_name("d", "a").startswith("cali") and len(veth_name("d", "a")) == 15


# -- properties -------------------------------------------------------------------------------

endpoint_st = st.tuples(
    st.integers(1, 12),  # last octet: small range so duplicates across slices happen
    st.sampled_from([NODE, "n2", None]),
    st.booleans(), st.booleans(), st.booleans(),  # ready, serving, terminating
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(endpoint_st, max_size=6), min_size=1, max_size=3), st.booleans(), st.randoms())
def test_backend_block_invariants(slices, local_policy, rnd):
    def objs(order):
        out = [service(type="NodePort", externalTrafficPolicy="Local" if local_policy else "Cluster")]
        for k in order:
            eps = [ep(f"10.0.0.{o}", n, ready=r, serving=s, terminating=t) for o, n, r, s, t in slices[k]]
            out.append(slice_(eps, name=f"web-{k}"))
        return out

    order = list(range(len(slices)))
    first = compile_services(state_of(*objs(order)), NODE)
    rnd.shuffle(order)
    assert compile_services(state_of(*objs(order)), NODE) == first  # input order does not matter

    fe = first.frontends[0]
    block = first.backends[fe.service_id]
    assert (fe.count, fe.local) == (block.count, block.local_count)
    assert len(set(block.backends)) == block.count  # no duplicates
    every = [(f"10.0.0.{o}", n, r, s, t) for sl in slices for o, n, r, s, t in sl]
    usable = {ip for ip, _, r, s, t in every if r or (s and t)}
    assert {ip for ip, _ in block.backends} <= usable  # never not-serving, never plain not-ready
    local_ips = {ip for ip, n, *_ in every if n == NODE}
    assert all(ip in local_ips for ip, _ in block.backends[: block.local_count])
    if any(r for *_, r, _, _ in every):
        remote = block.backends[block.local_count:]
        assert all(any(ip == e[0] and e[2] for e in every) for ip, _ in remote)  # ready ones only
