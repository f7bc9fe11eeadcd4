"""The netpol conformance vectors through ``trace`` on a :class:`TraceNode` (one load per case).

Where ``test_netpol_conformance.py`` drives the from-wep/to-wep programs
directly, this goes through what ``calico-ebpf trace`` does: the case's
manifests (plus a Node and an IP pool) become the scratch node's state, and
every probe of every ordered pod pair is traced. Allowed means the trace's
verdict is allow; a denied flow must be dropped by policy, and the trace must
name the rule that decided (a policy rule or a tier's end). SCTP packets
cannot be traced (no frame), so SCTP probes are left out and counted.
"""

from __future__ import annotations

import json
import time

import pytest
import test_policy_programs as netpol  # the cases file and its model builder, shared, not copied

from calico_ebpf.dataplane.trace import TraceNode
from calico_ebpf.model import ClusterState

NODE = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"}]}}
POOL = {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "pool"},
        "spec": {"cidr": "10.244.0.0/16"}}


def case_state(case: dict) -> tuple[ClusterState, dict, dict]:
    objects, named, ips = netpol._case_objects(case)
    state = ClusterState.from_dicts([NODE, POOL, *objects])
    assert not state.rejected, state.rejected
    return state, named, ips


@pytest.fixture(scope="module")
def node(bpf_objects):
    n = TraceNode(case_state(netpol.CASES["cases"][0])[0])
    yield n
    n.close()


def run_case(node: TraceNode, case: dict) -> tuple[int, int, list[str]]:
    """(pairs traced, SCTP pairs left out, mismatches)."""
    state, named, ips = case_state(case)
    node.load(state, named_ports=named)
    traced, skipped, mismatches = 0, 0, []
    for probe in case["probes"]:
        proto, port = probe["protocol"], probe["port"]
        name = f"{proto}/{port}"
        if proto == "SCTP":
            skipped += len(ips) ** 2
            continue
        denied = {tuple(pair) for pair in case["expected"].get(name, [])}
        for sport, (client, server) in enumerate(((c, s) for c in ips for s in ips), start=20000):
            t = node.trace(f"{proto.lower()} {ips[client]}:{sport} -> {ips[server]}:{port}")
            traced += 1
            want_deny = (client, server) in denied
            if t.verdict == "allow" and not want_deny:
                continue
            if t.verdict == "drop" and want_deny and "(DROP_POLICY)" in t.reason:
                decision = [s for s in t.path if s.startswith("policy: ") and " deny" in s]
                if decision and (" by " in decision[-1] or ": end of tier " in decision[-1]):
                    continue
                mismatches.append(f"{name} {client}->{server}: denied, but no rule named: {t.path}")
                continue
            mismatches.append(f"{name} {client}->{server}: expected {'deny' if want_deny else 'allow'}, "
                              f"got {t.verdict}: {t.reason}")
    return traced, skipped, mismatches


def test_netpol_cases_through_trace(node):
    start = time.monotonic()
    failed = {}
    traced = skipped = bad = 0
    for case in netpol.CASES["cases"]:
        n, s, mismatches = run_case(node, case)
        traced, skipped, bad = traced + n, skipped + s, bad + len(mismatches)
        if mismatches:
            failed[case["name"]] = mismatches
    total = len(netpol.CASES["cases"])
    print(f"\nnetpol conformance through trace: {total - len(failed)}/{total} cases, {traced - bad}/{traced} "
          f"traced pairs as expected, {skipped} SCTP pairs not traced; {time.monotonic() - start:.1f} s")
    assert not failed, json.dumps({k: v[:5] + [f"... {len(v)} mismatches"] for k, v in failed.items()}, indent=1)
