"""Dataplane.start_conntrack_gc: the periodic sweep runs on the dataplane's own conntrack map with
the node's FelixConfiguration bpfConntrackTimeouts, and close() stops it."""

from __future__ import annotations

import time

from calico_ebpf import ClusterState, Dataplane, NodeConfig
from calico_ebpf.maps.conntrack import CtKey, CtLeg, CtValue
from calico_ebpf.maps.ct_records import monotonic_ns

MANIFESTS = """
apiVersion: v1
kind: Node
metadata: {name: node-1}
status: {addresses: [{type: InternalIP, address: 192.168.0.2}]}
---
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {name: default}
spec:
  bpfConntrackTimeouts: {udpTimeout: 2s}
"""


def test_sweeps_with_the_nodes_timeouts_and_stops_on_close():
    state = ClusterState.from_yaml_text(MANIFESTS)
    assert not state.rejected
    dp = Dataplane(NodeConfig.from_state(state, node="node-1"), pin_dir=None)
    try:
        dp.apply(state)
        now = monotonic_ns()
        idle = CtKey.for_flow("10.0.0.2", 5000, "10.0.0.3", 53, "udp")
        fresh = CtKey.for_flow("10.0.0.2", 5001, "10.0.0.3", 53, "udp")
        dp.conntrack[idle] = CtValue.normal(CtLeg(packets=1), last_seen=now - 5_000_000_000)   # 5 s > 2 s
        dp.conntrack[fresh] = CtValue.normal(CtLeg(packets=1), last_seen=now + 60_000_000_000)
        gc = dp.start_conntrack_gc(interval=0.05, jitter=0.0)
        assert dp.start_conntrack_gc() is gc  # one sweeper per dataplane
        deadline = time.monotonic() + 10
        while gc.metrics()["sweeps"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert gc.metrics()["sweeps"] >= 1
        assert idle not in dp.conntrack and fresh in dp.conntrack
    finally:
        dp.close()
    assert not gc.running
