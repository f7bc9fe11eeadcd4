"""An apply that removes backends cleans their conntrack (remove_stale_nat), checked through the
real datapath: a UDP flow's next packet goes to a live backend, TCP flows are marked SEND_RESET."""

from __future__ import annotations

import apply_cluster as C
import packets as P
import pytest
from apply_cluster import POD_IPS, WEB_VIP
from scapy.layers.inet import IP, TCP, UDP

from calico_ebpf.dataplane import CtResult, StateFlags
from calico_ebpf.maps.entries import CtFlags, CtKey, CtType, CtValue, Proto

DNS_VIP = "10.96.0.30"
B, Cc = (POD_IPS["b"], 5353), (POD_IPS["c"], 5353)


def _docs(dns_pods=("b", "c"), web_pods=("b", "c"), extra=()) -> list[dict]:
    docs = [d for d in C.cluster_docs() if d["metadata"]["name"] not in ("web", "web-1")]
    return docs + [C.service("dns", DNS_VIP, 53, protocol="UDP"),
                   C.endpoints("dns", list(dns_pods), port=5353, protocol="UDP"),
                   C.service("web", WEB_VIP, 80), C.endpoints("web", list(web_pods)), *extra]


@pytest.fixture(scope="module")
def netns():
    n = C.NodeNetns()
    yield n
    n.delete()


@pytest.fixture(scope="module")
def shared(netns, bpf_objects):
    dp = C.new_dataplane(C.state_of(_docs()), netns)
    yield dp
    dp.close()


@pytest.fixture
def dp(shared):
    shared.clean_stale_nat = True
    shared.apply(C.state_of(_docs()))
    shared.maps["cebpf_ct"].clear()
    return shared


def _udp(netns, dp, sport):
    res = netns.run(dp, P.udp(POD_IPS["a"], sport, DNS_VIP, 53), "a")
    assert res.state.flags & StateFlags.DNAT, res.state
    out = P.check_checksums(res.data)
    return res, (out[IP].dst, out[UDP].dport)


def _ct(dp, src, sport, dst, dport, proto):
    raw = dp.maps["cebpf_ct"].lookup(CtKey.for_flow(src, sport, dst, dport, proto).to_bytes())
    return None if raw is None else CtValue.from_bytes(raw)


def test_udp_flow_moves_to_a_live_backend_after_its_backend_is_removed(netns, dp):
    _, chosen = _udp(netns, dp, 40000)
    other = Cc if chosen == B else B
    pod = "b" if chosen == B else "c"
    remaining = [p for p in ("b", "c") if p != pod]

    report = dp.apply(C.state_of(_docs(dns_pods=remaining)))
    assert report.removed_backends == {(DNS_VIP, 53, "udp"): (chosen,)}
    assert report.stale_nat.deleted == 2 and report.stale_nat.flows == 1
    assert report.to_dict()["removed_backends"] == {f"{DNS_VIP}:53/udp": [f"{chosen[0]}:{chosen[1]}"]}

    res, now = _udp(netns, dp, 40000)
    assert now == other and res.state.ct_rc == CtResult.NEW


def test_tcp_flow_to_a_removed_backend_is_marked_send_reset(netns, dp):
    res = netns.run(dp, P.tcp(POD_IPS["a"], 41000, WEB_VIP, 80), "a")
    out = P.check_checksums(res.data)
    backend = (out[IP].dst, out[TCP].dport)
    pod = "b" if backend[0] == POD_IPS["b"] else "c"
    report = dp.apply(C.state_of(_docs(web_pods=[p for p in ("b", "c") if p != pod])))
    assert report.removed_backends == {(WEB_VIP, 80, "tcp"): (backend,)}
    assert report.stale_nat.reset == 2 and report.stale_nat.tcp_flows == 1
    fwd = _ct(dp, POD_IPS["a"], 41000, WEB_VIP, 80, Proto.TCP)
    rev = _ct(dp, POD_IPS["a"], 41000, *backend, Proto.TCP)
    assert fwd.type == CtType.NAT_FWD and rev.type == CtType.NAT_REV
    assert fwd.flags & CtFlags.SEND_RESET and rev.flags & CtFlags.SEND_RESET


def test_backend_still_serving_the_flows_service_is_kept_and_cleaning_can_be_off(netns, dp):
    # The backend leaves web only: a dns flow to it is not stale.
    _, dns_backend = _udp(netns, dp, 42000)
    pod = "b" if dns_backend == B else "c"
    report = dp.apply(C.state_of(_docs(web_pods=[p for p in ("b", "c") if p != pod])))
    assert list(report.removed_backends) == [(WEB_VIP, 80, "tcp")]
    assert _udp(netns, dp, 42000)[0].state.ct_rc == CtResult.ESTABLISHED_DNAT

    # Off (benchmarks): the apply reports what it removed and leaves conntrack alone.
    dp.clean_stale_nat = False
    report = dp.apply(C.state_of(_docs(dns_pods=[p for p in ("b", "c") if p != pod])))
    assert report.removed_backends == {(DNS_VIP, 53, "udp"): (dns_backend,)} and report.stale_nat is None
    assert _udp(netns, dp, 42000)[1] == dns_backend
