"""PolicyManager on a real datapath: slots, atomic switches, IP-set diffs, program cache, defaults.

Pods of the shared test node (datapath_env): x/a 10.65.0.2 on wep_a (app=web),
x/b 10.65.0.3 on wep_b (app=cli), y/c 10.65.0.4 on wep_c (app=db). Packets go
through the real from-wep/to-wep programs with BPF_PROG_TEST_RUN.
"""

from __future__ import annotations

import struct
import threading

import packets as P
import pytest
from datapath_env import POD_A, POD_B, POD_C, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, make_fixtures
from scapy.layers.inet import IP
from scapy.layers.sctp import SCTP

from calico_ebpf.dataplane import PolicyRc, StateFlags
from calico_ebpf.dataplane.policy import DENY_SLOT, NO_POLICY, PolicyManager
from calico_ebpf.errors import CalicoEBPFError
from calico_ebpf.maps.entries import Counter
from calico_ebpf.model import ClusterState

devs, dp_env, env = make_fixtures()


@pytest.fixture
def pm(env):
    env.dp.maps["cebpf_ipsets"].clear()  # not among the maps DpEnv.reset empties
    m = PolicyManager(env.dp)
    yield m
    m.close()


def endpoints(env, *keys):
    table = {"x/a": (env.A, "wep_a"), "x/b": (env.B, "wep_b"), "y/c": (env.C, "wep_c")}
    return {k: table[k] for k in keys or table}


def pod(ns, name, ip, **labels):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": "n1"}, "status": {"podIP": ip}}


def k8s_np(name, ns, spec):
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def model(*policies, c_labels=None):
    objs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in ("x", "y")]
    objs += [pod("x", "a", POD_A, app="web"), pod("x", "b", POD_B, app="cli"),
             pod("y", "c", POD_C, **(c_labels or {"app": "db"}))]
    state = ClusterState.from_dicts(objs + list(policies))
    assert not state.rejected
    return state


def web_from_cli(ports=(80,)):
    """x/a (web) accepts TCP on ``ports`` from pods labelled app=cli in any namespace."""
    return k8s_np("web", "x", {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                               "ingress": [{"from": [{"namespaceSelector": {},
                                                      "podSelector": {"matchLabels": {"app": "cli"}}}],
                                            "ports": [{"port": p, "protocol": "TCP"} for p in ports]}]})


def connect(env, src_if, src, dst_if, dst, dport=80, sport=40000, proto="tcp"):
    """Allowed?, and the state of the last program run, for a new flow through both workload programs."""
    pkt = P.tcp(src, sport, dst, dport) if proto == "tcp" else bytes(P.eth() / IP(src=src, dst=dst) / SCTP(
        sport=sport, dport=dport))
    out = env.run("from", pkt, src_if)
    if out.retval != TC_ACT_REDIRECT:
        return False, out.state
    at = env.run("to", out.data, dst_if, mark=out.mark)
    return at.retval == TC_ACT_OK, at.state


def jump_prog_id(env, slot):
    raw = env.dp.maps["cebpf_jump"].lookup(struct.pack("<I", slot))
    return None if raw is None else struct.unpack("<I", raw)[0]


def test_programs_go_to_slots_named_by_ifstate_and_unisolated_pods_get_none(env, pm):
    report = pm.sync(model(web_from_cli()), endpoints(env))
    slot = pm.slot_of("x/a", "ingress")
    assert slot > DENY_SLOT and report.programs_loaded == 1
    assert report.slots == {("x/a", "ingress"): slot, ("x/a", "egress"): NO_POLICY,
                            ("x/b", "ingress"): NO_POLICY, ("x/b", "egress"): NO_POLICY,
                            ("y/c", "ingress"): NO_POLICY, ("y/c", "egress"): NO_POLICY}
    ifs = env.dp.interface(env.A)
    assert (ifs.ingress_policy_v4, ifs.egress_policy_v4, ifs.name) == (slot, NO_POLICY, "wep_a")
    assert jump_prog_id(env, slot) is not None
    allowed, st = connect(env, env.B, POD_B, env.A, POD_A)
    assert allowed and st.pol_rc == PolicyRc.ALLOW and st.pol_slot == slot
    allowed, st = connect(env, env.C, POD_C, env.A, POD_A)
    assert not allowed and st.pol_rc == PolicyRc.DENY and st.reason == Counter.DROP_POLICY
    # Not isolated: no program runs at all (Calico's namespace profile allows).
    allowed, st = connect(env, env.A, POD_A, env.C, POD_C, sport=40001)
    assert allowed and not st.flags & StateFlags.POLICY_RAN


def test_unknown_workload_is_denied_until_its_pod_is_known(env, pm):
    pm.sync(model(), {"y/ghost": (env.C, "wep_c")})
    ifs = env.dp.interface(env.C)
    assert (ifs.ingress_policy_v4, ifs.egress_policy_v4) == (DENY_SLOT, DENY_SLOT)
    assert connect(env, env.C, POD_C, env.A, POD_A)[0] is False


def test_resync_of_an_unchanged_state_costs_nothing(env, pm):
    state = model(web_from_cli())
    pm.sync(state, endpoints(env))
    loads = pm.loads
    report = pm.sync(model(web_from_cli()), endpoints(env))  # equal content, new objects
    assert pm.loads == loads and not report.changed
    assert report.unchanged == 6 and report.programs_loaded == report.slots_switched == 0


def test_label_change_updates_ip_sets_without_reloading(env, pm):
    pm.sync(model(web_from_cli()), endpoints(env))
    loads, slot = pm.loads, pm.slot_of("x/a", "ingress")
    assert connect(env, env.C, POD_C, env.A, POD_A)[0] is False

    report = pm.sync(model(web_from_cli(), c_labels={"app": "cli"}), endpoints(env))
    assert pm.loads == loads and report.programs_loaded == 0 and report.slots_switched == 0
    assert (report.ipset_members_added, report.ipset_members_removed) == (1, 0)
    assert pm.slot_of("x/a", "ingress") == slot
    assert connect(env, env.C, POD_C, env.A, POD_A, sport=40001)[0] is True

    report = pm.sync(model(web_from_cli()), endpoints(env))
    assert pm.loads == loads and (report.ipset_members_added, report.ipset_members_removed) == (0, 1)
    assert connect(env, env.C, POD_C, env.A, POD_A, sport=40002)[0] is False


def test_changed_policy_moves_to_a_fresh_slot_and_the_old_one_denies(env, pm):
    pm.sync(model(web_from_cli()), endpoints(env))
    old = pm.slot_of("x/a", "ingress")
    report = pm.sync(model(web_from_cli(ports=(81,))), endpoints(env))
    new = pm.slot_of("x/a", "ingress")
    assert new not in (old, DENY_SLOT) and report.programs_loaded == 1 and report.programs_unloaded == 1
    assert env.dp.interface(env.A).ingress_policy_v4 == new
    # The freed slot is not empty (empty = "no policy" = allow) but holds the deny program.
    assert jump_prog_id(env, old) == env.dp.programs["cebpf_policy_deny"].info.id
    assert connect(env, env.B, POD_B, env.A, POD_A, dport=80)[0] is False
    assert connect(env, env.B, POD_B, env.A, POD_A, dport=81)[0] is True


def test_endpoints_with_the_same_rules_share_one_program(env, pm):
    everyone = k8s_np("all", "x", {"podSelector": {}, "policyTypes": ["Ingress"],
                                   "ingress": [{"ports": [{"port": 80, "protocol": "TCP"}]}]})
    report = pm.sync(model(everyone), endpoints(env))
    a, b = pm.slot_of("x/a", "ingress"), pm.slot_of("x/b", "ingress")
    assert a != b and report.programs_loaded == 1 and report.programs_reused == 1
    assert jump_prog_id(env, a) == jump_prog_id(env, b)


def test_no_packet_sees_an_endpoint_without_policy_while_it_changes(env, pm):
    """Packets run on other threads while the policy flips between two programs that both allow."""
    states = [model(web_from_cli(ports=(80,))), model(web_from_cli(ports=(80, 81)))]
    pm.sync(states[0], endpoints(env))
    stop = threading.Event()
    seen = {PolicyRc.ALLOW: 0, PolicyRc.DENY: 0, PolicyRc.NONE: 0}
    lock = threading.Lock()

    def traffic(offset):
        sport = 1024 + offset
        while not stop.is_set():
            sport = 1024 + (sport - 1024 + 4) % 60000
            res = env.run("to", P.tcp(POD_B, sport, POD_A, 80), env.A)
            with lock:
                seen[PolicyRc(res.state.pol_rc)] += 1

    threads = [threading.Thread(target=traffic, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(200):
            pm.sync(states[(i + 1) % 2], endpoints(env))
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    print(f"\npackets during 200 policy switches: {seen}")
    assert seen[PolicyRc.NONE] == 0, "a packet found no policy program"
    assert seen[PolicyRc.ALLOW] > 100
    # A deny would only come from the fail-closed freed slot, and only in a nanosecond-wide race.
    assert seen[PolicyRc.DENY] <= seen[PolicyRc.ALLOW] // 100


def test_sctp_rules_match_nothing_and_are_reported(env, pm):
    sctp = k8s_np("sctp", "x", {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                                "ingress": [{"ports": [{"port": 80, "protocol": "SCTP"}]}]})
    report = pm.sync(model(sctp), endpoints(env))
    assert len(report.unsupported) == 1 and report.unsupported[0].startswith("x/a ingress: ")
    assert "SCTP" in report.unsupported[0]
    assert connect(env, env.B, POD_B, env.A, POD_A, proto="sctp")[0] is False  # isolated, never widened
    assert connect(env, env.B, POD_B, env.A, POD_A)[0] is False


def test_removed_endpoint_frees_its_slots_and_is_denied_while_registered(env, pm):
    pm.sync(model(web_from_cli()), endpoints(env))
    slot = pm.slot_of("x/a", "ingress")
    report = pm.sync(model(web_from_cli()), endpoints(env, "x/b", "y/c"))
    assert report.endpoints_removed == 1 and report.programs_unloaded == 1 and pm.slot_of("x/a", "ingress") is None
    ifs = env.dp.interface(env.A)
    assert (ifs.ingress_policy_v4, ifs.egress_policy_v4) == (DENY_SLOT, DENY_SLOT)
    assert jump_prog_id(env, slot) == env.dp.programs["cebpf_policy_deny"].info.id
    assert report.ipset_members_removed == 1  # the app=cli set is used by nobody now
    assert len(pm.ipsets.keys()) == 0


def test_a_restarted_manager_adopts_ip_sets_and_replaces_programs(env, pm):
    pm.sync(model(web_from_cli()), endpoints(env))
    old = pm.slot_of("x/a", "ingress")
    pm.close()
    again = PolicyManager(env.dp)
    try:
        report = again.sync(model(web_from_cli()), endpoints(env))
        new = again.slot_of("x/a", "ingress")
        # Members are read from the kernel: nothing to write. The program is reloaded once
        # (its content is unknown to the new manager) into a fresh slot, as any change.
        assert (report.ipset_members_added, report.ipset_members_removed) == (0, 0)
        assert new != old and report.programs_loaded == 1
        assert env.dp.interface(env.A).ingress_policy_v4 == new
        assert connect(env, env.B, POD_B, env.A, POD_A)[0] is True
        assert connect(env, env.C, POD_C, env.A, POD_A)[0] is False
    finally:
        again.close()


def test_sctp_flow_in_the_other_direction_is_policed(env, pm):
    deny_egress_b = k8s_np("b-out", "x", {"podSelector": {"matchLabels": {"app": "cli"}}, "policyTypes": ["Egress"],
                                          "egress": []})
    pm.sync(model(deny_egress_b), endpoints(env))
    assert connect(env, env.A, POD_A, env.B, POD_B, sport=5000, dport=80, proto="sctp")[0] is True
    # x/b opens its own association to x/a: its egress policy denies it.
    assert connect(env, env.B, POD_B, env.A, POD_A, sport=6000, dport=9, proto="sctp")[0] is False


def test_tcp_with_the_same_policy_is_policed_in_the_other_direction(env, pm):
    """The control for the SCTP case above: TCP has always had ports in the conntrack key."""
    deny_egress_b = k8s_np("b-out", "x", {"podSelector": {"matchLabels": {"app": "cli"}}, "policyTypes": ["Egress"],
                                          "egress": []})
    pm.sync(model(deny_egress_b), endpoints(env))
    assert connect(env, env.A, POD_A, env.B, POD_B, sport=5000, dport=80)[0] is True
    out = env.run("from", P.tcp(POD_B, 6000, POD_A, 9), env.B)
    assert out.retval == TC_ACT_SHOT and out.state.pol_rc == PolicyRc.DENY


def test_a_program_that_cannot_be_built_leaves_the_previous_one_in_force(env, pm):
    pm.sync(model(web_from_cli()), endpoints(env))
    slot, members = pm.slot_of("x/a", "ingress"), set(pm.ipsets.keys())
    # 1,000 rules with a selector, a port and a range: too far for a 16-bit jump to the verdict.
    huge = k8s_np("web", "x", {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                               "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": f"r{i}"}}}],
                                            "ports": [{"port": 1000 + i, "protocol": "TCP"},
                                                      {"port": 20000 + i, "endPort": 20100 + i, "protocol": "TCP"}]}
                                           for i in range(1000)]})
    with pytest.raises(CalicoEBPFError) as exc:
        pm.sync(model(huge), endpoints(env))
    report = exc.value.report
    assert [f.split(":")[0] for f in report.failed] == ["x/a ingress"]
    assert pm.slot_of("x/a", "ingress") == slot == env.dp.interface(env.A).ingress_policy_v4
    assert set(pm.ipsets.keys()) >= members  # the sets the kept program looks up are still there
    assert connect(env, env.B, POD_B, env.A, POD_A)[0] is True
    assert connect(env, env.C, POD_C, env.A, POD_A)[0] is False


def test_trace_names_the_rule_or_the_unknown_workload(env, pm):
    from calico_ebpf.dataplane.trace import trace

    def tr(text):
        return trace(env.dp, text, netns=env.devs.ns, data_interface="hep", policy=pm)

    pm.sync(model(web_from_cli()), endpoints(env))
    slot = pm.slot_of("x/a", "ingress")
    ok = tr(f"tcp {POD_B}:40000 -> {POD_A}:80")
    assert ok.verdict == "allow"
    assert f"policy: ingress allow by default/NetworkPolicy x/web spec.ingress[0] (slot {slot})" in ok.path
    denied = tr(f"tcp {POD_C}:40000 -> {POD_A}:80")
    assert f"policy: ingress deny: end of tier default (slot {slot})" in denied.path
    assert denied.reason.endswith("denied by policy (DROP_POLICY): ingress deny: end of tier default")
    # An endpoint whose pod is unknown is in the deny slot, which the trace names as such.
    pm.sync(model(), {"x/a": (env.A, "wep_a"), "q/ghost": (env.B, "wep_b")})
    ghost = tr(f"tcp {POD_A}:40000 -> {POD_B}:80")
    assert ghost.verdict == "drop"
    assert f"policy: ingress deny: unknown workload (deny slot) (slot {DENY_SLOT})" in ghost.path
