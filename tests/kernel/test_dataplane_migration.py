"""Reopening a pinned Dataplane with other map sizes migrates the entries (kernel.migrate)
instead of failing: a bigger conntrack, from the size file ConntrackManager writes or from
max_entries, keeps live flows and service translation."""

from __future__ import annotations

import os

import apply_cluster as C
import packets as P
import pytest
from apply_cluster import POD_IPS, WEB_VIP
from scapy.layers.inet import IP, TCP

from calico_ebpf.dataplane import CtResult, Dataplane, NodeConfig, StateFlags
from calico_ebpf.kernel.migrate import RESIZED, REUSED


@pytest.fixture(scope="module")
def netns():
    n = C.NodeNetns()
    yield n
    n.delete()


def _ct(dp) -> dict[bytes, bytes]:
    m = dp.maps["cebpf_ct"]
    keys, values, n = m.lookup_batch_all()
    ks, vs = m.key_size, m.value_stride
    return {bytes(keys[i * ks:(i + 1) * ks]): bytes(values[i * vs:(i + 1) * vs]) for i in range(n)}


def _open_flows(netns, dp, n: int) -> dict[int, tuple[str, int]]:
    """n TCP flows from pod a to the web service: sport -> the backend chosen."""
    chosen = {}
    for i in range(n):
        res = netns.run(dp, P.tcp(POD_IPS["a"], 30000 + i, WEB_VIP, 80), "a")
        assert res.state.flags & StateFlags.DNAT, res.state
        out = P.check_checksums(res.data)
        chosen[30000 + i] = (out[IP].dst, out[TCP].dport)
    return chosen


def test_reopen_with_bigger_conntrack_migrates_live_entries(netns, pin_dir, tmp_path, bpf_objects):
    state = C.state_of(C.cluster_docs())
    dp = C.new_dataplane(state, netns, pin_dir=pin_dir, cebpf_ct=512)
    try:
        assert dp.maps["cebpf_ct"].max_entries == 512
        assert all(r.action == "created" for r in dp.migrations.values())
        dp.apply(state)
        ids = dp.service_ids
        chosen = _open_flows(netns, dp, 20)
        ct_before = _ct(dp)
        assert len(ct_before) == 40  # NAT_FWD + NAT_REV per flow
    finally:
        dp.close()

    # ConntrackManager recommended twice the size (DoubleIfFull) and wrote it down.
    size_file = tmp_path / "bpf_ct_map_size"
    size_file.write_text("1024\n")
    dp = Dataplane(NodeConfig.from_state(state, C.NODE), pin_dir=pin_dir,
                   max_entries={**C.SMALL_MAPS, "cebpf_ct": 512}, ct_size_file=size_file)
    try:
        netns.register(dp)
        ct = dp.migrations["cebpf_ct"]
        assert (ct.action, ct.old_max_entries, ct.copied, ct.dropped) == (RESIZED, 512, 40, 0)
        assert dp.migrations["cebpf_nat_feh"].action == REUSED
        assert dp.maps["cebpf_ct"].max_entries == 1024
        assert _ct(dp) == ct_before
        assert not any(p.endswith("_old") for p in os.listdir(pin_dir))

        report = dp.apply(state)
        assert report.writes == 0 and dp.service_ids == ids
        # Established packets of the old flows still go to the backend they had.
        for sport, backend in chosen.items():
            res = netns.run(dp, P.tcp(POD_IPS["a"], sport, WEB_VIP, 80, "A"), "a")
            assert res.state.ct_rc == CtResult.ESTABLISHED_DNAT, res.state
            out = P.check_checksums(res.data)
            assert (out[IP].dst, out[TCP].dport) == backend
        # and new flows are translated as before
        assert set(_open_flows(netns, dp, 10).values()) <= {(POD_IPS["b"], 8080), (POD_IPS["c"], 8080)}
    finally:
        dp.close()
