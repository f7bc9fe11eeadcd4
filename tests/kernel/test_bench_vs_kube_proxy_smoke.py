"""The head-to-head benchmark's building blocks at 5 services: every dataplane really serves the ClusterIP.

``benchmarks/bench_vs_kube_proxy.py`` times connects through kube-proxy's
iptables and nftables rules and through our datapath; this runs one size of
it (a three-node lab, one node per dataplane, 5 services, a few connects) so
a broken setup cannot be timed silently, checks that the probe it relies on
fails when nothing serves the service, and loads the path-equivalent
rulesets the benchmark falls back to when a full load is capped.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import bench_vs_kube_proxy as bench
from calico_ebpf.lab import Lab

N = 5


@pytest.fixture(scope="module")
def lab(bpf_objects):
    with Lab(nodes=len(bench.MODES), pods_per_node=2, workloads=False) as lab:
        yield lab


@pytest.fixture(scope="module")
def run(lab):
    return bench.Run(lab, connects=8, cap=20, log=lambda s: None, rounds=2)


def test_each_dataplane_serves_the_cluster_ip_and_is_timed(run):
    size = run.measure_size(N)
    for mode in bench.MODES:
        res = size[mode]
        assert res["ruleset"] == "full", mode
        assert not res["full"]["capped"] and res["full"]["wall_s"] > 0, (mode, res["full"])
        assert res["one_endpoint"]["wall_s"] > 0, (mode, res["one_endpoint"])
        lat = res["latency"]
        assert lat["ok"] == lat["connects"] == 8, (mode, lat)
        assert lat["distinct_source_ports"] == 8, (mode, lat)  # a new flow each time
        assert 0 < lat["p50_us"] <= lat["p99_us"], (mode, lat)
    ratios = bench.sync_ratios(size)
    assert ratios["full_iptables_per_ours"]["wall"]["lower_bound"] is False


def test_ours_interleaved_rounds_serve_both_sizes(run):
    out = run.ours_interleaved(N, 2 * N)
    for n in (N, 2 * N):
        assert out[str(n)]["ok"] == out[str(n)]["connects"] == 8, out
    assert out["p50_large_per_small"] > 0


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_path_equivalent_ruleset_serves_the_target(run, lab, mode):
    """The fallback ruleset (other services' chains empty) loads and still DNATs the target service."""
    seat = run.seats[mode]
    wl = bench.Workload.build(lab, seat.backend, N)
    listener = bench.Listener(seat.backend)
    try:
        load = bench.load_path_equivalent(seat.ns, mode, wl.state(), wl.node, {wl.target_key, wl.changed_key})
        assert load["wall_s"] > 0
        listener.check_served(seat.client, wl.vip, mode)
    finally:
        listener.close()
        bench._nft_flush(seat.ns)


def test_without_a_dataplane_the_check_fails(run, lab):
    """Nothing loaded: the probe is not served, so the benchmark would stop instead of timing it."""
    seat = run.seats["iptables"]
    wl = bench.Workload.build(lab, seat.backend, N)
    listener = bench.Listener(seat.backend)
    try:
        with pytest.raises(RuntimeError, match="not served"):
            listener.check_served(seat.client, wl.vip, "none")
    finally:
        listener.close()
