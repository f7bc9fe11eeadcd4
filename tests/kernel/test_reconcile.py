"""The reconciler's pure parts: change detection, conflict notes, grouping compiled records into
map entries, and NAT plans (what gets written, deleted and counted). No kernel needed."""

from __future__ import annotations

import attrs
import pytest

from calico_ebpf.compiler import compile_services
from calico_ebpf.dataplane.changes import KindSnapshot
from calico_ebpf.dataplane.nat_sync import BE, FE_LPM, FEH, SRC_RANGES, NatView, group_services, ip_int, plan
from calico_ebpf.dataplane.reconcile import ApplyReport, MapChanges, conflict_services
from calico_ebpf.maps.nat import NAT_FE_DROP_COUNT
from calico_ebpf.model import ClusterState


@attrs.frozen
class Obj:
    key: str
    v: int


def test_snapshot_first_call_then_in_place_updates():
    snap = KindSnapshot()
    objs = {f"k{i}": Obj(f"k{i}", i) for i in range(1000)}
    assert snap.update(objs) is None
    assert snap.update(objs) == {}
    old = objs["k500"]
    objs["k500"] = Obj("k500", -1)
    objs["k999"] = Obj("k999", 999)  # new identity, equal value: not a change
    assert snap.update(objs) == {"k500": (old, Obj("k500", -1))}
    objs["new"] = Obj("new", 7)  # appended: still the fast path
    assert snap.update(objs) == {"new": (None, Obj("new", 7))}
    del objs["k3"]
    objs["k3"] = Obj("k3", 3)  # removed and re-added equal (moves to the end): nothing changed
    assert snap.update(objs) == {}
    gone = objs.pop("k10")
    assert snap.update(objs) == {"k10": (gone, None)}
    del objs["k20"]
    objs["k20"] = Obj("k20", 20)
    objs["k21"] = Obj("k21", -21)  # order moved and a replacement in the same update
    assert snap.update(objs) == {"k21": (Obj("k21", 21), Obj("k21", -21))}


def test_snapshot_sees_every_changed_chunk():
    snap = KindSnapshot()
    objs = {i: Obj(i, i) for i in range(2000)}
    snap.update(objs)
    for i in (0, 255, 256, 1999):
        objs[i] = Obj(i, -i - 1)
    assert sorted(snap.update(objs)) == [0, 255, 256, 1999]
    equal_copy = {k: Obj(v.key, v.v) for k, v in objs.items()}  # a re-list: equal, new identities
    assert snap.update(equal_copy) == {}


def test_conflict_notes_name_both_services():
    notes = ("clusterIP 10.96.1.4:81/6 of d/s4/http/TCP is already taken by d/n101//UDP; keeping d/n101//UDP",)
    assert conflict_services(notes) == {"d/s4", "d/n101"}
    assert conflict_services(["something else"]) is None
    assert conflict_services([]) == set()


STATE = """
{apiVersion: v1, kind: Node, metadata: {name: n1}, status: {addresses: [{type: InternalIP, address: 192.168.0.2}]}}
---
{apiVersion: v1, kind: Service, metadata: {name: lb, namespace: d},
 spec: {type: LoadBalancer, clusterIP: 10.96.0.12, loadBalancerSourceRanges: [198.51.100.0/24],
        ports: [{name: http, port: 80, nodePort: 30081}]},
 status: {loadBalancer: {ingress: [{ip: 192.0.2.50}]}}}
---
{apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, addressType: IPv4,
 metadata: {name: lb-1, namespace: d, labels: {kubernetes.io/service-name: lb}},
 ports: [{name: http, port: 8080}], endpoints: [{addresses: [10.65.0.4], nodeName: n1}]}
"""


def test_group_puts_source_ranges_in_the_lpm_map_and_flags_the_hash_entry():
    desired = compile_services(ClusterState.from_yaml_text(STATE), "n1")
    [(skey, s)] = group_services(desired).items()
    sid = desired.service_ids["d/lb/http/TCP"]
    assert skey == "d/lb" and s.ports == {"d/lb/http/TCP": sid} and s.blocks == {sid: (("10.65.0.4", 8080),)}
    loc = desired.backends[sid].local_count
    lb = (ip_int("192.0.2.50"), 80, 6)
    assert s.feh[lb] == (sid, 1, loc, 0, SRC_RANGES)
    assert s.lpm == {(*lb, ip_int("198.51.100.0"), 24): (sid, 1, loc, 0, 0),
                     (*lb, 0, 0): (sid, NAT_FE_DROP_COUNT, 0, 0, 0)}
    # cluster IP, node IP and wildcard NodePorts are plain hash entries
    plain = {k: v for k, v in s.feh.items() if k != lb}
    assert len(plain) == 3 and all(v == (sid, 1, loc, 0, 0) for v in plain.values())


def test_group_renumbers_service_ids():
    desired = compile_services(ClusterState.from_yaml_text(STATE), "n1")
    sid = desired.service_ids["d/lb/http/TCP"]
    [s] = group_services(desired, {sid: 42}).values()
    assert s.ports == {"d/lb/http/TCP": 42} and set(s.blocks) == {42}
    assert {v[0] for v in s.feh.values()} == {v[0] for v in s.lpm.values()} == {42}


A, B_, C_ = ("10.0.0.1", 80), ("10.0.0.2", 80), ("10.0.0.3", 80)


def test_plan_block_shrink_rewrites_in_place_and_deletes_the_tail_last():
    view = NatView(feh={(1, 80, 6): (5, 3, 0, 0, 0)}, blocks={5: (A, B_, C_)}, backend_count=3)
    p = plan(view, {(1, 80, 6): (5, 2, 0, 0, 0)}, {}, {5: (A, C_)})
    assert p.be_write == [((5, 1), C_)] and p.be_delete == [(5, 2)]
    assert p.feh_write == [((1, 80, 6), (5, 2, 0, 0, 0))] and not p.feh_delete
    assert p.counts == {FEH: [0, 1, 0], FE_LPM: [0, 0, 0], BE: [0, 1, 1]}


def test_plan_fills_holes_and_drops_stray_blocks():
    view = NatView(blocks={5: (A, None, C_), 9: (A,)}, backend_count=3)
    p = plan(view, {}, {}, {5: (A, B_, C_)})
    assert p.be_write == [((5, 1), B_)] and p.be_delete == [(9, 0)]
    assert p.counts[BE] == [1, 0, 1] and p.block_updates == {5: (A, B_, C_), 9: None}


def test_plan_restricted_to_changed_keys_ignores_the_rest():
    view = NatView(feh={(1, 80, 6): (5, 1, 0, 0, 0), (2, 80, 6): (6, 1, 0, 0, 0)})
    p = plan(view, {(3, 80, 6): (7, 1, 0, 0, 0)}, {}, {}, fe_keys={(2, 80, 6), (3, 80, 6)}, lpm_keys=set(),
             sids=set())
    assert p.feh_delete == [(2, 80, 6)] and p.feh_write == [((3, 80, 6), (7, 1, 0, 0, 0))]
    assert p.counts[FEH] == [1, 0, 1]


def test_report_text_and_dict():
    r = ApplyReport(node="n1", changes={FEH: MapChanges(1, 2, 3), BE: MapChanges()}, services=4, full=False,
                    seconds=0.0012)
    assert r.writes == 6
    assert str(r).startswith("node n1: 4 services, incremental apply in 1.2 ms: cebpf_nat_feh +1 ~2 -3")
    assert r.to_dict()["changes"][FEH] == {"added": 1, "changed": 2, "removed": 3}


@pytest.mark.parametrize("n", [1, 3])
def test_plan_of_equal_state_is_empty(n):
    blocks = {i: (A, B_)[:n % 3] for i in range(5)}
    feh = {(i, 80, 6): (i, len(blocks[i]), 0, 0, 0) for i in range(5)}
    view = NatView(feh=dict(feh), blocks=dict(blocks), backend_count=sum(map(len, blocks.values())))
    p = plan(view, feh, {}, blocks)
    assert not p and all(c == [0, 0, 0] for c in p.counts.values())


def test_node_routes_per_pod_equal_a_full_compile():
    """Pods come, go, finish and share addresses (with each other and with a host): the routes
    kept per changed pod always equal compile_routes of the whole state."""
    import random

    from calico_ebpf.compiler import compile_routes
    from calico_ebpf.dataplane.changes import KindSnapshot
    from calico_ebpf.dataplane.route_sync import NodeRoutes

    rnd = random.Random(3)
    state = ClusterState.from_yaml_text("""
{apiVersion: v1, kind: Node, metadata: {name: n1}, spec: {podCIDR: 10.0.1.0/24},
 status: {addresses: [{type: InternalIP, address: 10.0.0.1}]}}
---
{apiVersion: v1, kind: Node, metadata: {name: n2}, spec: {podCIDR: 10.0.2.0/24},
 status: {addresses: [{type: InternalIP, address: 10.0.0.2}]}}
---
{apiVersion: projectcalico.org/v3, kind: IPPool, metadata: {name: p}, spec: {cidr: 10.0.0.0/16, vxlanMode: Always}}
""")
    routes, snap = NodeRoutes(), KindSnapshot()
    snap.update(state.pods)
    routes.full(state, "n1")
    fulls = []
    real_full = routes.full
    routes.full = lambda *a: fulls.append(1) or real_full(*a)  # count the fallbacks
    for step in range(300):
        name = f"p{rnd.randint(0, 15)}"
        if rnd.random() < 0.25:
            state.remove("Pod", f"d/{name}")
        else:
            ip = rnd.choice(["10.0.1.5", "10.0.2.7", "10.0.0.2"] + [f"10.0.{rnd.choice((1, 2))}.{i}" for i in range(20)])
            state.add_dict({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "d"},
                            "spec": {"nodeName": rnd.choice(["n1", "n2"]), "hostNetwork": rnd.random() < 0.05},
                            "status": {"podIP": ip, "phase": rnd.choice(["Running"] * 4 + ["Failed"])}})
        got = routes.pods_changed(state, "n1", snap.update(state.pods))
        assert {r.cidr: r for r in got} == {r.cidr: r for r in compile_routes(state, "n1")}, step
    assert 30 < len(fulls) < 270, len(fulls)  # both paths ran many times
