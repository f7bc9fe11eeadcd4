"""Dataplane.apply through the real programs: services compiled from manifests, written with
ordered batch diffs, checked by running packets with BPF_PROG_TEST_RUN."""

from __future__ import annotations

import apply_cluster as C
import packets as P
import pytest
from apply_cluster import ALLOWED_SRC, EXTERNAL, HOST_IP, ITP_VIP, LB_IP, POD_IPS, WEB_VIP
from scapy.layers.inet import IP, TCP

from calico_ebpf import Dataplane, NodeConfig
from calico_ebpf.dataplane import StateFlags
from calico_ebpf.errors import ModelError, UnsupportedError
from calico_ebpf.maps.entries import Counter, NatFlags, Proto, RouteFlags
from calico_ebpf.maps.named import Failsafes, NatBackends, NatFrontends, NatFrontendsHash, Routes

_RESET = ("cebpf_ct", "cebpf_nat_feh", "cebpf_nat_fe", "cebpf_nat_be", "cebpf_nat_aff", "cebpf_routes",
          "cebpf_fsafes")


@pytest.fixture(scope="module")
def netns():
    n = C.NodeNetns()
    yield n
    n.delete()


@pytest.fixture(scope="module")
def built(netns, bpf_objects):
    """One Dataplane for the module (loading the object costs seconds of verifier time),
    made the way trace makes one: from the state, applied; and the report of that apply."""
    dp = Dataplane.from_state(C.state_of(C.cluster_docs()), node=C.NODE, max_entries=C.SMALL_MAPS)
    report = dp.last_report
    netns.register(dp)
    yield dp, report
    dp.close()


@pytest.fixture(scope="module")
def shared_dp(built):
    return built[0]


@pytest.fixture
def dp(shared_dp):
    """The module's Dataplane with empty maps and a reconciler that knows nothing yet."""
    for name in _RESET:
        shared_dp.maps[name].clear()
    shared_dp.reconciler.invalidate_all()
    return shared_dp


def backends_seen(netns, dp, dst, dport, *, src=POD_IPS["a"], where="a", tries=40, sport0=20000):
    """The (ip, port) each of ``tries`` new flows was DNATed to (None: not translated)."""
    seen = set()
    for i in range(tries):
        res = netns.run(dp, P.tcp(src, sport0 + i, dst, dport), where)
        if res.state.flags & StateFlags.DNAT:
            out = P.check_checksums(res.data)
            seen.add((out[IP].dst, out[TCP].dport))
        else:
            seen.add(None)
    return seen


def nat_content(dp):
    return (NatFrontendsHash(dp.maps["cebpf_nat_feh"]).to_dict(), NatFrontends(dp.maps["cebpf_nat_fe"]).to_dict(),
            NatBackends(dp.maps["cebpf_nat_be"]).to_dict(), Routes(dp.maps["cebpf_routes"]).to_dict())


B, Cc, R = (POD_IPS["b"], 8080), (POD_IPS["c"], 8080), (POD_IPS["r"], 8080)


def test_apply_programs_services_that_dnat_to_their_backends(netns, dp):
    report = dp.apply(C.state_of(C.cluster_docs()))
    assert report.full and report.services == 4 and not report.rejected and not report.conflicts
    # web, np (cluster IP + host IP + wildcard), lb (cluster IP, LB IP (ranged), host + wildcard
    # NodePort), itp: 1 + 3 + 4 + 1 hash frontends; lb's range and drop entry in the LPM map.
    assert vars(report.changes["cebpf_nat_feh"]) == {"added": 9, "changed": 0, "removed": 0}
    assert report.changes["cebpf_nat_fe"].added == 2 and report.changes["cebpf_nat_be"].added == 7
    assert backends_seen(netns, dp, WEB_VIP, 80) == {B, Cc}
    assert backends_seen(netns, dp, "10.96.0.12", 80, sport0=21000) == {Cc}
    # a packet to a port the service does not have is left alone
    assert backends_seen(netns, dp, WEB_VIP, 81, tries=3, sport0=22000) == {None}


def test_same_state_again_writes_nothing_and_keeps_ids(dp):
    first = dp.apply(C.state_of(C.cluster_docs()))
    ids = dp.service_ids
    again = dp.apply(C.state_of(C.cluster_docs()))  # equal objects, new identities
    assert first.writes > 0 and again.writes == 0 and not again.full
    assert dp.service_ids == ids and set(ids) == {"d/web/http/TCP", "d/np/http/TCP", "d/lb/http/TCP",
                                                  "d/itp/http/TCP"}


def test_one_endpoint_change_writes_only_that_service(netns, dp):
    docs = C.cluster_docs()
    state = C.state_of(docs)
    dp.apply(state)
    ids = dp.service_ids
    before = nat_content(dp)
    state.add_dict(C.endpoints("web", ["b"]))  # c leaves web
    report = dp.apply(state)
    assert not report.full and report.services_compiled == 1
    assert vars(report.changes["cebpf_nat_be"]) == {"added": 0, "changed": 0, "removed": 1}
    assert vars(report.changes["cebpf_nat_feh"]) == {"added": 0, "changed": 1, "removed": 0}  # count 2 -> 1
    assert report.writes == 2 and dp.service_ids == ids
    after = nat_content(dp)
    web = ids["d/web/http/TCP"]
    assert {k: v for k, v in after[2].items() if k.id != web} == {k: v for k, v in before[2].items() if k.id != web}
    assert backends_seen(netns, dp, WEB_VIP, 80) == {B}


def test_removed_service_no_longer_translates_and_its_entries_go(netns, dp):
    docs = C.cluster_docs()
    dp.apply(C.state_of(docs))
    web = dp.service_ids["d/web/http/TCP"]
    remaining = [d for d in docs if d["metadata"]["name"] not in ("web", "web-1")]
    report = dp.apply(C.state_of(remaining))
    assert report.changes["cebpf_nat_feh"].removed == 1 and report.changes["cebpf_nat_be"].removed == 2
    assert backends_seen(netns, dp, WEB_VIP, 80, tries=3) == {None}
    assert all(k.id != web for k in NatBackends(dp.maps["cebpf_nat_be"]))
    assert "d/web/http/TCP" not in dp.service_ids
    # the others still translate
    assert backends_seen(netns, dp, "10.96.0.12", 80, tries=3) == {Cc}


def test_source_ranges_allow_inside_drop_outside_then_lift(netns, dp):
    docs = C.cluster_docs()
    dp.apply(C.state_of(docs))
    feh = NatFrontendsHash(dp.maps["cebpf_nat_feh"])
    lb_key = next(k for k in feh if str(k.addr) == LB_IP)
    assert feh[lb_key].flags & NatFlags.SRC_RANGES
    lpm = NatFrontends(dp.maps["cebpf_nat_fe"]).to_dict()
    assert {str(k.src_cidr): v.is_drop for k, v in lpm.items()} == {"198.51.100.0/24": False, "0.0.0.0/0": True}

    assert backends_seen(netns, dp, LB_IP, 80, src=ALLOWED_SRC, where="hep", tries=3) == {Cc}
    res = netns.run(dp, P.tcp(EXTERNAL, 30000, LB_IP, 80), "hep")
    assert res.retval == C.TC_ACT_SHOT and res.state.reason == Counter.DROP_SRC_RANGE

    # lift the ranges: one plain hash entry, the LPM entries go
    for d in docs:
        if d["kind"] == "Service" and d["metadata"]["name"] == "lb":
            del d["spec"]["loadBalancerSourceRanges"]
    report = dp.apply(C.state_of(docs))
    assert report.changes["cebpf_nat_fe"].removed == 2 and report.changes["cebpf_nat_feh"].changed == 1
    assert not feh[lb_key].flags & NatFlags.SRC_RANGES and len(NatFrontends(dp.maps["cebpf_nat_fe"])) == 0
    assert backends_seen(netns, dp, LB_IP, 80, src=EXTERNAL, where="hep", tries=3, sport0=31000) == {Cc}


def test_nodeport_on_host_ip_with_external_policy_local(netns, dp):
    dp.apply(C.state_of(C.cluster_docs()))
    # external clients: only this node's endpoint (b), never r on node-2
    assert backends_seen(netns, dp, HOST_IP, 30080, src=EXTERNAL, where="hep") == {B}
    # pods use the whole block (kube-proxy's short-circuit for cluster-internal clients)
    assert backends_seen(netns, dp, HOST_IP, 30080, sport0=23000) == {B, R}
    feh = NatFrontendsHash(dp.maps["cebpf_nat_feh"]).to_dict()
    np_keys = {str(k.addr) for k in feh if k.port == 30080}
    assert np_keys == {HOST_IP, "255.255.255.255"}


def test_internal_traffic_policy_local_uses_local_backends_only(netns, dp):
    dp.apply(C.state_of(C.cluster_docs()))
    assert backends_seen(netns, dp, ITP_VIP, 80) == {B}


def test_bad_objects_are_reported_and_leave_the_kernel_untouched(dp):
    docs = C.cluster_docs()
    dp.apply(C.state_of(docs))
    before = nat_content(dp)
    bad = C.service("bad", "10.96.0.20", 80, type_="LoadBalancer", node_port=30090,
                    loadBalancerSourceRanges=["300.1.2.0/24"])
    sctp = C.service("sig", "10.96.0.21", 9, protocol="SCTP")
    report = dp.apply(C.state_of(docs + [bad, C.endpoints("bad", ["b"]), sctp, C.endpoints("sig", ["b"], 9, "SCTP")]))
    assert report.writes == 0 and nat_content(dp) == before
    [rejected] = report.rejected
    assert isinstance(rejected, ModelError)
    assert (rejected.object, rejected.field) == ("Service d/bad", "spec.loadBalancerSourceRanges[0]")
    [unsupported] = report.unsupported
    assert isinstance(unsupported, UnsupportedError) and unsupported.object == "Service d/sig"
    assert "spec.ports[0]" in str(unsupported) and "SCTP" in str(unsupported)
    assert all(k.proto != Proto.SCTP for k in NatFrontendsHash(dp.maps["cebpf_nat_feh"]))
    assert "d/bad" in str(report) and "d/sig" in str(report)


def test_sctp_port_skipped_tcp_port_of_same_service_applied(netns, dp):
    docs = C.cluster_docs()
    mixed = C.service("mixed", "10.96.0.22", 80)
    mixed["spec"]["ports"].insert(0, {"name": "sig", "port": 9, "protocol": "SCTP"})
    report = dp.apply(C.state_of(docs + [mixed, C.endpoints("mixed", ["c"])]))
    assert [e.object for e in report.unsupported] == ["Service d/mixed"]
    assert "d/mixed/http/TCP" in dp.service_ids and "d/mixed/sig/SCTP" not in dp.service_ids
    assert backends_seen(netns, dp, "10.96.0.22", 80, tries=3) == {Cc}


def test_routes_carry_pod_veth_ifindex_and_follow_pods(netns, dp):
    docs = C.cluster_docs()
    dp.apply(C.state_of(docs))
    routes = Routes(dp.maps["cebpf_routes"]).to_dict()
    by_cidr = {str(k.cidr): v for k, v in routes.items()}
    assert by_cidr["10.65.0.3/32"].ifindex == netns.ifindex["b"]
    assert by_cidr["10.65.0.3/32"].flags & (RouteFlags.LOCAL | RouteFlags.WORKLOAD) == RouteFlags.LOCAL | RouteFlags.WORKLOAD
    assert str(by_cidr["10.65.1.5/32"].next_hop) == C.REMOTE_HOST
    report = dp.apply(C.state_of([d for d in docs if d["metadata"]["name"] != "c"]))  # pod c goes
    assert vars(report.changes["cebpf_routes"]) == {"added": 0, "changed": 0, "removed": 1}
    assert "10.65.0.4/32" not in {str(k.cidr) for k in Routes(dp.maps["cebpf_routes"])}


def test_failsafes_come_from_felix_configuration(dp):
    docs = C.cluster_docs() + [{"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
                                "metadata": {"name": "default"},
                                "spec": {"failsafeInboundHostPorts": [{"protocol": "tcp", "port": 22}],
                                         "failsafeOutboundHostPorts": [{"protocol": "udp", "port": 53,
                                                                        "net": "10.0.0.0/8"}]}}]
    report = dp.apply(C.state_of(docs))
    assert report.changes["cebpf_fsafes"].added == 2
    keys = Failsafes(dp.maps["cebpf_fsafes"]).keys()
    assert sorted((k.port, k.proto.name, str(k.cidr), k.outbound) for k in keys) == [
        (22, "TCP", "0.0.0.0/0", False), (53, "UDP", "10.0.0.0/8", True)]


def test_ids_are_not_reused_after_a_service_goes(dp):
    docs = C.cluster_docs()
    dp.apply(C.state_of(docs))
    old = dp.service_ids
    no_web = [d for d in docs if d["metadata"]["name"] not in ("web", "web-1")]
    dp.apply(C.state_of(no_web + [C.service("new", "10.96.0.30", 80), C.endpoints("new", ["a"])]))
    new_id = dp.service_ids["d/new/http/TCP"]
    assert new_id not in old.values()
    assert {k: v for k, v in dp.service_ids.items() if k != "d/new/http/TCP"} == {
        k: v for k, v in old.items() if k != "d/web/http/TCP"}


def test_hand_written_entries_are_reconciled_away(netns, dp):
    state = C.state_of(C.cluster_docs())
    dp.apply(state)
    dp.set_backends(9999, [("10.65.0.99", 1)])  # a stray block, as a crashed writer could leave
    report = dp.apply(state)
    assert report.changes["cebpf_nat_be"].removed == 1
    assert all(k.id != 9999 for k in NatBackends(dp.maps["cebpf_nat_be"]))


def test_from_state_builds_and_applies(built):
    dp, report = built
    assert dp.node == "node-1" and report.services == 4 and report.full
    assert report.changes["cebpf_nat_be"].added == 7 and report.changes["cebpf_routes"].added == 8


def test_node_config_needs_a_node_name_when_several(bpf_objects):
    state = C.state_of(C.cluster_docs())
    with pytest.raises(ModelError, match="2 Nodes"):
        NodeConfig.from_state(state)
    cfg = NodeConfig.from_state(state, "node-1")
    assert cfg.host_ips == (HOST_IP,) and cfg.map_sizes == {}


def _id_free(dp) -> tuple:
    """Map content with service ids replaced by service-port keys (ids depend on history)."""
    key_of = {sid: pk for pk, sid in dp.service_ids.items()}
    feh, lpm, be, routes = nat_content(dp)
    return ({k: (key_of[v.id], v.count, v.local, v.affinity_timeo, v.flags) for k, v in feh.items()},
            {k: (key_of[v.id], v.count, v.local, v.flags) for k, v in lpm.items()},
            {(key_of[k.id], k.ordinal): v for k, v in be.items()}, routes)


def test_incremental_applies_match_a_full_apply(dp):
    """Random changes applied one by one (in place and as new states) leave the same maps as a
    full apply of the final state into empty maps."""
    import random

    rnd = random.Random(7)
    docs = C.cluster_docs()
    names = []
    for i in range(20):
        names.append(f"s{i}")
        docs += [C.service(f"s{i}", f"10.96.1.{i}", 80 + i % 3), C.endpoints(f"s{i}", ["a", "b", "r"][: 1 + i % 3])]
    state = C.state_of(docs)
    dp.apply(state)
    counter = 100
    incremental_applies = 0
    for step in range(48):
        ops = ["endpoints", "endpoints", "remove", "add", "port", "ranges", "pod", "pod", "pod_gone"]
        op = rnd.choice(ops + (["conflict"] if step >= 24 else []))  # conflicts only in the second half
        name = rnd.choice(names) if names else None
        if op == "endpoints" and name:
            state.add_dict(C.endpoints(name, rnd.sample(["a", "b", "c", "r"], rnd.randint(0, 4))))
        elif op == "remove" and name:
            state.remove("Service", f"d/{name}")
            if rnd.random() < 0.5:
                state.remove("EndpointSlice", f"d/{name}-1")
            names.remove(name)
        elif op in ("add", "conflict"):
            counter += 1
            new = f"n{counter}"
            # a conflict reuses another service's cluster IP and port
            ip, port = (f"10.96.1.{names.index(name)}", 80 + names.index(name) % 3) if op == "conflict" and name \
                else (f"10.96.2.{counter % 250}", 80)
            kind = rnd.choice(["ClusterIP", "NodePort"])
            state.add_dict(C.service(new, ip, port, type_=kind, node_port=30100 + counter % 500 if kind == "NodePort"
                                     else None))
            state.add_dict(C.endpoints(new, rnd.sample(["a", "b", "c", "r"], 2)))
            names.append(new)
        elif op == "port" and name:
            svc = state.services[f"d/{name}"]
            d = C.service(name, svc.cluster_ips[0], 90 + step)
            state.add_dict(d)
        elif op == "ranges" and name:
            svc = state.services[f"d/{name}"]
            state.add_dict(C.service(name, svc.cluster_ips[0], svc.ports[0].port, type_="LoadBalancer",
                                     node_port=31000 + step, loadBalancerSourceRanges=["198.51.100.0/24"],
                                     status={"loadBalancer": {"ingress": [{"ip": f"192.0.2.{100 + step}"}]}}))
        elif op == "pod":
            # few addresses for many pods: collisions (and the full route compiles they force) happen
            state.add_dict({"apiVersion": "v1", "kind": "Pod",
                            "metadata": {"name": f"p{rnd.randint(0, 12)}", "namespace": "d"},
                            "spec": {"nodeName": rnd.choice([C.NODE, "node-2"])},
                            "status": {"podIP": f"10.65.0.{50 + rnd.randint(0, 8)}",
                                       "phase": rnd.choice(["Running", "Running", "Succeeded"])}})
        elif op == "pod_gone":
            pods = sorted(k for k in state.pods if k.startswith("d/p"))
            if pods:
                state.remove("Pod", rnd.choice(pods))
        report = dp.apply(state if rnd.random() < 0.7 else _equal_copy(state))
        incremental_applies += not report.full
        if step % 8 == 7:
            incremental = _id_free(dp)
            for m in _RESET:
                dp.maps[m].clear()
            dp.reconciler.invalidate_all()
            assert dp.apply(state).full
            assert _id_free(dp) == incremental, f"step {step}"
    assert incremental_applies >= 24  # the comparison is about the incremental path


def _equal_copy(state):
    """A new ClusterState holding equal objects with new identities (a re-list)."""
    import attrs

    fresh = type(state)()
    for objs in state.objects.values():
        for obj in objs.values():
            fresh.add(attrs.evolve(obj))
    return fresh


def test_policy_hook_syncs_registered_local_pods(netns, dp):
    """With ``policy_sync`` set (the policy manager), apply also enforces NetworkPolicy on this
    node's registered pods: here ingress to pod b is denied, pod c stays open."""
    from calico_ebpf.dataplane.policy import PolicyManager

    docs = C.cluster_docs()
    for d in docs:
        if d["kind"] == "Pod":
            d["metadata"]["labels"] = {"app": d["metadata"]["name"]}
    docs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                 "metadata": {"name": "deny-b", "namespace": "d"},
                 "spec": {"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Ingress"]}})
    dp.policy_sync = PolicyManager(dp)
    try:
        report = dp.apply(C.state_of(docs))
        assert set(dp.reconciler.local_endpoints()) == {"d/a", "d/b", "d/c"}
        assert report.policy.slots[("d/b", "ingress")] >= 0 and report.policy.slots[("d/c", "ingress")] == -1
        verdicts = {}
        for i, dst in enumerate(("b", "c")):
            out = netns.run(dp, P.tcp(POD_IPS["a"], 41000 + i, POD_IPS[dst], 8080), "a")
            assert out.retval == C.TC_ACT_REDIRECT
            verdicts[dst] = netns.run(dp, out.data, dst, "to").retval  # b's ingress policy runs here
        assert verdicts == {"b": C.TC_ACT_SHOT, "c": C.TC_ACT_OK}
    finally:
        dp.policy_sync.close()
        dp.policy_sync = None
        netns.register(dp)  # ifstate without policy slots for the next tests


def test_state_without_this_node_is_refused_before_any_write(dp):
    docs = C.cluster_docs()
    dp.apply(C.state_of(docs))
    before = nat_content(dp)
    with pytest.raises(ModelError, match="Node node-1"):
        dp.apply(C.state_of([d for d in docs if d["metadata"]["name"] != C.NODE]))
    assert nat_content(dp) == before
    assert dp.apply(C.state_of(docs)).writes == 0  # and the next apply picks up where it was


class _Recording:
    """A real map that also notes which batch calls reached it (to check the write order)."""

    def __init__(self, m, log):
        self._m, self._log = m, log

    def update_batch(self, *a, **kw):
        self._log.append((self._m.name, "write"))
        return self._m.update_batch(*a, **kw)

    def delete_batch(self, *a, **kw):
        self._log.append((self._m.name, "delete"))
        return self._m.delete_batch(*a, **kw)

    def __getattr__(self, name):
        return getattr(self._m, name)


def test_writes_go_in_the_order_that_never_shows_half_a_change(dp):
    from calico_ebpf.dataplane import nat_sync

    docs = C.cluster_docs()
    dp.apply(C.state_of(docs))
    # web goes, np loses r (shrinks), lb loses its source ranges, a new service comes
    changed = [d for d in docs if d["metadata"]["name"] not in ("web", "web-1", "np-1")]
    changed.append(C.endpoints("np", ["b"]))
    for d in changed:
        if d["kind"] == "Service" and d["metadata"]["name"] == "lb":
            d["spec"] = {k: v for k, v in d["spec"].items() if k != "loadBalancerSourceRanges"}
    changed += [C.service("new", "10.96.0.70", 80), C.endpoints("new", ["a", "b", "c"])]
    log = []
    real = nat_sync.write_plan
    nat_sync.write_plan = lambda maps, view, p: real({n: _Recording(maps[n], log) for n in
                                                      (nat_sync.FEH, nat_sync.FE_LPM, nat_sync.BE)}, view, p)
    try:
        report = dp.apply(C.state_of(changed))
    finally:
        nat_sync.write_plan = real
    assert log == [("cebpf_nat_feh", "delete"),   # web's frontend: nothing reaches its backends now
                   ("cebpf_nat_be", "write"),     # new's backends before any frontend points at them
                   ("cebpf_nat_feh", "write"),    # new and changed frontends (counts, flags)
                   ("cebpf_nat_fe", "delete"),    # lb's ranges, after its hash entry stopped using them
                   ("cebpf_nat_be", "delete")]    # web's block and np's old last ordinal
    assert report.changes["cebpf_nat_be"].removed == 3
