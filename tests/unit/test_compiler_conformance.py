"""The compiled NAT state predicts kube-proxy's conformance vectors (IPv4 TCP/UDP).

For every flow we look the packet up in the compiled frontends the way the
datapath will (calico-ebpf.md §3.2): exact (dst, port, proto) with the
longest matching source prefix; on a miss, the NodePort wildcard, but only
for packets that start on this node and go to a host address; a ``drop``
entry drops; the frontend's Local flags choose between the local prefix of
the backend block and the whole block; no backend rejects. The prediction
must equal what Calico should do: kube-proxy's outcome, turned by the
documented deviations of docs/services.md (whose counts are checked here).
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from pathlib import Path

import pytest

from calico_ebpf.compiler import compile_routes, compile_services
from calico_ebpf.compiler.routes import RT_HOST, RT_LOCAL, RT_WORKLOAD
from calico_ebpf.compiler.services import EXTERNAL_LOCAL, INTERNAL_LOCAL, NODEPORT_WILDCARD_V4, PROTO_NUMBERS
from calico_ebpf.model import ClusterState
from tests.unit.conformance_manifests import (
    calico_expectation,
    flow_family,
    scenario_manifests,
    scenarios,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "services.md"


class NatLookupModel:
    """The datapath's service lookup, over compiled records (test oracle for the compiler)."""

    def __init__(self, state: ClusterState, node: str):
        self.desired = compile_services(state, node)
        self.by_dst: dict[tuple, list] = {}
        for fe in self.desired.frontends:
            self.by_dst.setdefault((fe.addr, fe.port, fe.proto), []).append(fe)
        self.routes = [(ipaddress.ip_network(r.cidr), r) for r in compile_routes(state, node)]

    def route(self, ip: str):
        addr = ipaddress.ip_address(ip)
        best = None
        for net, r in self.routes:
            if addr.version == net.version and addr in net and (best is None or net.prefixlen > best[0].prefixlen):
                best = (net, r)
        return best[1] if best else None

    def frontend(self, dst: str, port: int, proto: int, src: str):
        best, best_len = None, -1
        addr = ipaddress.ip_address(src)
        for fe in self.by_dst.get((dst, port, proto), ()):
            plen = 0 if fe.src_cidr is None else ipaddress.ip_network(fe.src_cidr).prefixlen
            if (fe.src_cidr is None or addr in ipaddress.ip_network(fe.src_cidr)) and plen > best_len:
                best, best_len = fe, plen
        return best

    def predict(self, src: str, dst: str, port: int, proto_name: str) -> tuple[str, frozenset[str]]:
        proto = PROTO_NUMBERS[proto_name.upper()]
        src_route, dst_route = self.route(src), self.route(dst)
        known_src = src_route is not None and src_route.flags & (RT_WORKLOAD | RT_HOST)
        from_this_node = src_route is not None and src_route.flags & RT_LOCAL
        fe = self.frontend(dst, port, proto, src)
        if fe is None and from_this_node and dst_route is not None and dst_route.flags & RT_HOST:
            fe = self.frontend(NODEPORT_WILDCARD_V4, port, proto, src)
        if fe is None:
            return "pass", frozenset()
        if fe.drop:
            return "drop", frozenset()
        block = self.desired.backends[fe.service_id]
        assert (fe.count, fe.local) == (block.count, block.local_count), "frontend value out of step with its block"
        use_local = (known_src and fe.flags & INTERNAL_LOCAL) or (not known_src and fe.flags & EXTERNAL_LOCAL)
        n = fe.local if use_local else fe.count
        if n == 0:
            return "reject", frozenset()
        return "dnat", frozenset(f"{ip}:{p}" for ip, p in block.backends[:n])


def _checked(flow) -> bool:
    return flow_family(flow) == 4 and flow["proto"] in ("tcp", "udp")


def _run(scenario):
    state = ClusterState.from_dicts(scenario_manifests(scenario))
    assert state.rejected == [], state.rejected
    model = NatLookupModel(state, scenario["node"]["name"])
    results = []
    for flow in scenario["flows"]:
        if not _checked(flow):
            continue
        want = calico_expectation(scenario, flow)
        got = model.predict(flow["src_ip"], flow["dst_ip"], flow["dst_port"], flow["proto"])
        results.append((flow, want, got))
    return results


@pytest.mark.parametrize("scenario", scenarios(), ids=lambda s: s["id"])
def test_scenario_flows(scenario):
    bad = [f"{flow['id']} {flow['name']}: want {want.action} {sorted(want.endpoints)}, got {got[0]} {sorted(got[1])}"
           for flow, want, got in _run(scenario) if (want.action, want.endpoints) != got]
    assert not bad, "\n".join(bad)


def _documented_counts() -> dict[str, int]:
    """Counts in the deviation table of docs/services.md: rows ``| D1 | ... | 8 |``."""
    counts = {}
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\|\s*(D\d+)\s*\|.*\|\s*(\d+)\s*\|\s*$", line)
        if m:
            counts[m.group(1)] = int(m.group(2))
    return counts


def _documented_totals() -> dict[str, int]:
    counts = {}
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\|\s*(checked|agree|ipv6|sctp)\b[^|]*\|\s*(\d+)\s*\|\s*$", line)
        if m:
            counts[m.group(1)] = int(m.group(2))
    return counts


def test_pass_rate_and_documented_deviations(capsys):
    total = Counter()
    deviations = Counter()
    for scenario in scenarios():
        for flow in scenario["flows"]:
            if flow_family(flow) == 6:
                total["ipv6"] += 1
            elif flow["proto"] == "sctp":
                total["sctp"] += 1
        for flow, want, got in _run(scenario):
            total["checked"] += 1
            total["agree"] += (want.action, want.endpoints) == got
            if want.deviation:
                deviations[want.deviation] += 1
    with capsys.disabled():
        print(f"\nconformance: {total['agree']}/{total['checked']} IPv4 TCP/UDP flows as Calico should "
              f"({100.0 * total['agree'] / total['checked']:.1f} %); unsupported: {total['ipv6']} IPv6, "
              f"{total['sctp']} SCTP; deviations from kube-proxy: {dict(sorted(deviations.items()))}")
    assert total["agree"] == total["checked"]
    assert dict(deviations) == _documented_counts()
    assert dict(total) == _documented_totals()
