"""The lab benchmark's building blocks at a tiny scale: each setup really carries the traffic it is timed on.

``benchmarks/bench_lab.py`` times iperf3 across the VXLAN overlay through our
datapath, kube-proxy's iptables rules and plain routing, and NodePort
connects via the remote node in Tunnel and DSR mode. This runs each of them
once (1 s of iperf3, a few connects) so a broken setup cannot be timed
silently: the backend must see the client's own IP, our conntrack and
kube-proxy's DNAT counter must show the flow, node-1 must have forwarded
the NodePort flows in the mode asked for; and a ClusterIP with no
dataplane behind it must make the run fail rather than time nothing.
"""

from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import bench_lab as bench

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def labs():
    sys.path.insert(0, str(ROOT / "tools"))
    import build_bpf

    build_bpf.build_all(str(files("calico_ebpf._bpf")))  # rebuild the datapath if a source is newer
    labs = bench.Labs(log=lambda s: None).up()
    try:
        yield labs
    finally:
        prefixes = [lab.prefix for lab in labs.labs.values()]
        labs.down()
        for prefix in prefixes:
            assert not bench.LabCluster.find_leftovers(prefix), prefix


@pytest.mark.parametrize("mode", bench.MODES)
def test_each_setup_carries_iperf3_across_the_overlay(labs, mode):
    seat = labs.seats[mode]
    run = bench.run_iperf(seat, 1)  # raises unless the backend saw the client's own IP
    assert run["gbps"] > 0.1 and run["gbit"] > 0.1, run
    assert run["cpu"]["involved_s"] > 0 and run["involved_cpu_per_gbit"] > 0, run
    if mode == "kernel":
        assert seat.dst == seat.backend.ip  # no service without a dataplane
    else:
        assert seat.dst == bench.VIP
        assert run["evidence"] >= 1, run  # our NAT_REV entries / kube-proxy's DNAT rule counted it


def test_a_cluster_ip_without_a_dataplane_fails_the_run(labs):
    seat = labs.seats["kernel"]
    broken = bench.Seat("none", seat.lab, seat.client, seat.backend, bench.VIP, None, server=seat.server)
    with pytest.raises(RuntimeError, match="iperf3"):
        bench.run_iperf(broken, 1)


def test_nodeport_latency_tunnel_dsr_and_iptables(labs):
    out = bench.nodeport_latency(labs, connects=6, rounds=1, spacing=0.001, log=lambda s: None)
    client = labs.labs["ours"].external.ip
    for key in ("tunnel", "dsr", "iptables_reference"):
        assert out[key]["ok"] == out[key]["connects"] == 6, (key, out[key])
        assert out[key]["distinct_source_ports"] == 6, (key, out[key])
        assert out[key]["p50_us"] > 0
    assert out["tunnel"]["backend_saw"] == out["dsr"]["backend_saw"] == client
    assert out["iptables_reference"]["backend_saw"] != labs.labs["iptables"].external.ip  # masqueraded
    assert out["node1_forwarded_flows"]["tunnel"] >= 6 and out["node1_forwarded_flows"]["dsr"] >= 6, out
    assert {nd.nodeport_tunnel for nd in labs.cluster.dataplanes.values()} == {"Tunnel"}  # put back
