"""kube-proxy's conformance vectors traced through the real datapath programs.

Every IPv4 TCP/UDP flow of tests/data/kube-proxy-flows.json is traced on a
scratch node built from its scenario's manifests (the same manifests as the
compiler conformance test), through the programs a real packet meets. A flow
agrees when the verdict and the translated destination are what Calico's
eBPF dataplane should give: kube-proxy's expected outcome turned by the
documented deviations (``calico_expectation``, docs/services.md):

* ``dnat``: allowed, translated to one of the expected endpoints, and
  masqueraded (to the service address) exactly when the chosen endpoint is the
  client itself (hairpin); nobody else is masqueraded (deviation D5);
* ``pass``: allowed, not translated; ``drop``/``reject``: that verdict.

IPv6 and SCTP flows are counted as unsupported. One datapath object serves
every scenario (loading costs ~1 s of verifier time): each scenario is
applied over the previous one, which also exercises the reconciler.
"""

from __future__ import annotations

from collections import Counter

import pytest

from calico_ebpf.dataplane.trace import TraceNode
from calico_ebpf.model import ClusterState
from tests.unit.conformance_manifests import calico_expectation, flow_family, scenario_manifests, scenarios

CLIENT_PORT = 40000


def _kind(flow) -> str:
    if flow_family(flow) == 6:
        return "ipv6"
    if flow["proto"] == "sctp":
        return "sctp"
    return "checked"


def _agrees(flow, want, t) -> str | None:
    """None when the trace ``t`` is what Calico should do, else what differs."""
    if want.action == "dnat":
        if t.verdict != "allow" or t.dnat not in want.endpoints:
            return f"want allow + DNAT to one of {sorted(want.endpoints)}"
        hairpin = t.dnat.rpartition(":")[0] == flow["src_ip"]
        if (t.snat is not None) != hairpin:
            return f"want {'hairpin masquerade' if hairpin else 'client IP kept (no SNAT)'}"
        return None
    if want.action == "pass":
        return None if (t.verdict, t.dnat, t.snat) == ("allow", None, None) else "want allow, untranslated"
    return None if t.verdict == want.action else f"want {want.action}"


@pytest.fixture(scope="module")
def outcomes(bpf_objects):
    """Every scenario's flows traced: scenario id -> [(flow, expectation, trace, problem)]."""
    out: dict[str, list] = {}
    node = None
    try:
        for scenario in scenarios():
            state = ClusterState.from_dicts(scenario_manifests(scenario))
            assert state.rejected == [], state.rejected
            if node is None:
                node = TraceNode(state, scenario["node"]["name"])
            else:
                node.load(state, scenario["node"]["name"])
            rows = out[scenario["id"]] = []
            for flow in scenario["flows"]:
                if _kind(flow) != "checked":
                    continue
                want = calico_expectation(scenario, flow)
                t = node.trace(f"{flow['proto']} {flow['src_ip']}:{CLIENT_PORT} -> {flow['dst_ip']}:{flow['dst_port']}")
                rows.append((flow, want, t, _agrees(flow, want, t)))
    finally:
        if node is not None:
            node.close()
    return out


@pytest.mark.parametrize("scenario", scenarios(), ids=lambda s: s["id"])
def test_scenario(outcomes, scenario):
    bad = [f"{flow['id']} {flow['name']} ({flow['src_kind']}): {problem}; traced {t.verdict} dnat={t.dnat} "
           f"snat={t.snat}\n    " + "\n    ".join(t.path)
           for flow, want, t, problem in outcomes[scenario["id"]] if problem]
    assert not bad, "\n".join(bad)


def test_pass_rate(outcomes, capsys):
    total = Counter(_kind(f) for s in scenarios() for f in s["flows"])
    agree = sum(problem is None for rows in outcomes.values() for *_, problem in rows)
    entries = Counter(t.entry.value for rows in outcomes.values() for _, _, t, _ in rows)
    with capsys.disabled():
        print(f"\ntrace conformance: {agree}/{total['checked']} IPv4 TCP/UDP flows as Calico should "
              f"({100.0 * agree / total['checked']:.1f} %) through the real programs; entered from "
              f"{dict(sorted(entries.items()))}; unsupported: {total['ipv6']} IPv6, {total['sctp']} SCTP")
    assert sum(len(rows) for rows in outcomes.values()) == total["checked"]
    assert agree == total["checked"]
