#!/usr/bin/env python3
"""Cost of policy in the dataplane: compile+load per endpoint, per-packet rule walk, label changes.

Run as root: ``.venv/bin/python benchmarks/bench_policy.py [--quick]``.

1. ``compile_load_ms[N]``: one endpoint whose ingress has N Kubernetes rules
   (each: a pod selector -> an IP set, a TCP port; every other one a port range), from the
   model to a program in its jump slot: ``endpoint_policy`` + ``emit_policy``
   + ``Program.load`` (the parts are reported too). Median of several runs,
   each a cache miss (the rules differ per run).
2. ``per_packet_ns[N]``: a new TCP flow to that endpoint that no rule admits,
   so it walks all N rules (the worst case) and is denied, which creates no
   conntrack entry: BPF_PROG_TEST_RUN with a large repeat keeps measuring new
   flows. The same packet against the datapath's one-instruction deny policy
   is subtracted: what is left is the generated program's cost.
3. ``per_packet_pods_ns[P]``: one rule "from pods labelled app=client" with
   P = 10 or 10,000 such pods (the rule's IP set size); the packet comes from
   a member on a port the rule does not allow (set hit, then denied), and
   from a non-member (set miss).
4. ``label_change_ms``: 10 local endpoints among 1,000 pods; one remote pod's
   label changes so it joins a rule's IP set: time of the re-sync (and the
   number of programs it reloaded, which must be 0).

Last line: ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

import build_bpf
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from calico_ebpf.compiler.policy import endpoint_policy
from calico_ebpf.compiler.policy_program import emit_policy
from calico_ebpf.dataplane import Dataplane
from calico_ebpf.dataplane.policy import DENY_SLOT, PolicyManager
from calico_ebpf.kernel import Program
from calico_ebpf.kernel.netns import Netns, veth_pair
from calico_ebpf.kernel.program import ProgType
from calico_ebpf.maps.entries import RouteFlags
from calico_ebpf.model import ClusterState

SERVER, CLIENT, OUTSIDER = "10.65.0.2", "10.65.0.3", "10.99.0.1"
RULES = (10, 100, 1000)
PODS = (10, 10_000)
LOCAL_WEP = RouteFlags.LOCAL | RouteFlags.WORKLOAD | RouteFlags.IN_POOL


def pod(ns, name, ip, **labels):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": "n1"}, "status": {"podIP": ip}}


def policy(rules):
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "bench", "namespace": "x"},
            "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"],
                     "ingress": rules}}


def rules_state(n, variant=0):
    # Every rule a selector (an IP set lookup) and a port; every other one a port range too.
    rules = [{"from": [{"podSelector": {"matchLabels": {"role": f"r{i}-{variant}"}}}],
              "ports": [{"port": 1000 + i, "protocol": "TCP"}]
              + ([{"port": 20000 + i, "endPort": 20100 + i, "protocol": "TCP"}] if i % 2 else [])}
             for i in range(n)]
    objs = [pod("x", "server", SERVER, app="server"), pod("x", "client", CLIENT, app="client"), policy(rules)]
    return ClusterState.from_dicts(objs)


def pods_state(p, rules=1):
    objs = [pod("x", "server", SERVER, app="server"), pod("x", "client", CLIENT, app="client"),
            policy([{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                     "ports": [{"port": 80 if i == 0 else 1000 + i, "protocol": "TCP"}]} for i in range(rules)])]
    for i in range(p - 1):
        objs.append(pod("x", f"c{i}", f"10.{100 + i // 65536}.{(i // 256) % 256}.{i % 256}", app="client"))
    return ClusterState.from_dicts(objs)


def frame(src, dport):
    return bytes(Ether(src="02:00:00:00:00:01", dst="ee:ee:ee:ee:ee:ee") / IP(src=src, dst=SERVER)
                 / TCP(sport=40000, dport=dport, flags="S"))


def per_packet(dp, pm, ifindex, name, src, dport, repeat, runs):
    """(ns of the endpoint's policy program, ns of the whole packet) for a new flow through the "to"
    program of ``ifindex``: medians over ``runs`` pairs of runs, each policy run next to a run with
    the deny-only program in the slot (the baseline subtracted), so drifts cancel."""
    pkt = frame(src, dport)
    slot = pm.slot_of("x/server", "ingress")
    diffs, totals = [], []
    for _ in range(runs):
        dp.set_interface(ifindex, name, "wep", ingress_policy=DENY_SLOT)
        base = dp.run("to", pkt, ifindex, repeat=repeat).duration_ns
        dp.set_interface(ifindex, name, "wep", ingress_policy=slot)
        res = dp.run("to", pkt, ifindex, repeat=repeat)
        assert res.state.pol_rc == 2, "the probe must be denied (no conntrack entry, every repeat a new flow)"
        diffs.append(res.duration_ns - base)
        totals.append(res.duration_ns)
    return statistics.median(diffs), statistics.median(totals)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer runs and repeats")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_policy.py needs root (BPF and network namespaces)")
    build_bpf.build_all(os.path.join(ROOT, "calico_ebpf", "_bpf"))
    reps = 3 if args.quick else 7
    repeat = 20_000 if args.quick else 100_000
    runs = 7 if args.quick else 11
    # A shared machine's load shows in the compile and load times (not much in test_run's).
    result: dict = {"quick": args.quick, "loadavg_1m_start": round(os.getloadavg()[0], 2)}

    ns = Netns(prefix="benchpol")
    try:
        locals_ = {}
        for i in range(10):
            name = f"wep{i}"
            veth_pair(name, name + "p", netns=ns, peer_netns=ns)
            locals_[i] = (ns.ifindex(name), name)
        server_if = locals_[0][0]
        with ns.enter(), Dataplane(pin_dir=None, max_entries={"cebpf_ipsets": 65536, "cebpf_jump": 512}) as dp:
            dp.set_route(f"{SERVER}/32", LOCAL_WEP, ifindex=server_if)
            dp.set_route(f"{CLIENT}/32", LOCAL_WEP, ifindex=locals_[1][0])
            endpoints = {"x/server": locals_[0]}

            # 1. compile + load per endpoint
            compile_load, parts = {}, {}
            for n in RULES:
                total, compile_t, emit_t, load_t = [], [], [], []
                for rep in range(reps):
                    state = rules_state(n, variant=rep)
                    pm = PolicyManager(dp)
                    t0 = time.perf_counter()
                    report = pm.sync(state, endpoints)
                    total.append(time.perf_counter() - t0)
                    assert report.programs_loaded == 1
                    pm.close()
                    # The parts, measured alone on the same input.
                    t0 = time.perf_counter()
                    ep = endpoint_policy(state, state.pods["x/server"], "ingress")
                    t1 = time.perf_counter()
                    code = emit_policy(ep, pm.maps).assemble()
                    t2 = time.perf_counter()
                    Program.load(ProgType.SCHED_CLS, code, name="bench_pol").close()
                    t3 = time.perf_counter()
                    compile_t.append(t1 - t0)
                    emit_t.append(t2 - t1)
                    load_t.append(t3 - t2)
                compile_load[n] = round(statistics.median(total) * 1e3, 3)
                parts[n] = {"model_ms": round(statistics.median(compile_t) * 1e3, 3),
                            "emit_ms": round(statistics.median(emit_t) * 1e3, 3),
                            "load_ms": round(statistics.median(load_t) * 1e3, 3),
                            "insns": len(code) // 8}
                print(f"compile+load, {n:5d} rules: {compile_load[n]:8.2f} ms per endpoint  {parts[n]}")
            result["compile_load_ms"] = compile_load
            result["compile_load_parts"] = parts

            # 2. per-packet cost of a new flow walking N rules
            pm = PolicyManager(dp)
            per_rules, per_rules_total = {}, {}
            for n in RULES:
                pm.sync(rules_state(n), endpoints)
                # Fewer repeats for longer programs keep each run near the same wall time.
                n_repeat = max(1000, repeat * 10 // n)
                per_rules[n], per_rules_total[n] = per_packet(dp, pm, server_if, "wep0", CLIENT, 9, n_repeat, runs)
                print(f"new flow through {n:5d} rules (all walked): policy {per_rules[n]:9.1f} ns, "
                      f"whole packet {per_rules_total[n]:9.1f} ns")
            result["per_packet_ns"] = per_rules
            result["per_packet_total_ns"] = per_rules_total

            # 3. per-packet cost vs the size of the rule's IP set. One rule's lookup is close to the
            # timer's noise, so the same set is also looked up by 100 rules (amplified).
            pods, pods_total, amplified = {}, {}, {}
            for p in PODS:
                pm.sync(pods_state(p), endpoints)
                members = len(pm.ipsets.keys())
                pods[p], pods_total[p] = per_packet(dp, pm, server_if, "wep0", CLIENT, 81, repeat, runs)
                pm.sync(pods_state(p, rules=100), endpoints)
                amplified[p], _ = per_packet(dp, pm, server_if, "wep0", CLIENT, 81, repeat // 4, runs)
                print(f"{p:6d} pods selected ({members} set members): one rule {pods[p]:6.1f} ns "
                      f"(whole packet {pods_total[p]:6.1f} ns); 100 rules on that set {amplified[p]:7.1f} ns")
            lo, hi = PODS[0], PODS[-1]
            result["per_packet_pods_ns"] = pods
            result["per_packet_pods_total_ns"] = pods_total
            result["per_packet_pods_100_lookups_ns"] = amplified
            result["pods_ratio_10k_10"] = round(pods_total[hi] / pods_total[lo], 3)
            result["pods_ratio_10k_10_policy_only_100_lookups"] = round(amplified[hi] / amplified[lo], 3)
            pm.close()

            # 4. a pod label change
            def ip(i):
                return f"10.66.{i // 250}.{i % 250 + 1}"

            objs = [pod("x", f"l{i}", ip(i), app="server" if i < 10 else "other") for i in range(1000)]
            pol = policy([{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}],
                           "ports": [{"port": 80, "protocol": "TCP"}]}])
            local_eps = {f"x/l{i}": locals_[i] for i in range(10)}
            pm = PolicyManager(dp)
            pm.sync(ClusterState.from_dicts([*objs, pol]), local_eps)
            times, loads = [], []
            for rep in range(reps):
                changed = list(objs)
                changed[500 + rep] = pod("x", f"l{500 + rep}", ip(500 + rep), app="client")
                state = ClusterState.from_dicts([*changed, pol])
                before = pm.loads
                t0 = time.perf_counter()
                report = pm.sync(state, local_eps)
                times.append(time.perf_counter() - t0)
                loads.append(pm.loads - before)
                assert report.ipset_members_added >= 1
                pm.sync(ClusterState.from_dicts([*objs, pol]), local_eps)  # and back
            pm.close()
            result["label_change_ms"] = round(statistics.median(times) * 1e3, 3)
            result["label_change_program_loads"] = max(loads)
            print(f"label change (10 local endpoints, 1000 pods): re-sync {result['label_change_ms']:.2f} ms, "
                  f"{max(loads)} programs reloaded")
    finally:
        ns.delete()

    result["targets"] = {
        "compile_load_100_rules_le_10ms": compile_load[100] <= 10.0,
        "pods_ratio_le_1_3": result["pods_ratio_10k_10"] <= 1.3,
        "label_change_no_reload": result["label_change_program_loads"] == 0,
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
