"""A change that does not fit fails whole: nothing is written, the previous services keep
translating, and the error names the map. A write the kernel refuses half-way is undone."""

from __future__ import annotations

import apply_cluster as C
import pytest
from apply_cluster import POD_IPS, WEB_VIP
from test_apply import B, Cc, backends_seen, nat_content

from calico_ebpf import Dataplane, NodeConfig
from calico_ebpf.errors import MapFullError
from calico_ebpf.maps.entries import NatBackendKey, NatBackendValue

# The cluster needs 7 backends and 9 hash frontends: maps sized by FelixConfiguration to hold
# exactly 8 and 9 (one Dataplane for the module: loading the object costs seconds).
SIZED = {"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration", "metadata": {"name": "default"},
         "spec": {"bpfMapSizeNATBackend": 8, "bpfMapSizeNATFrontend": 9}}


def docs_():
    return C.cluster_docs() + [SIZED]


@pytest.fixture(scope="module")
def netns():
    n = C.NodeNetns()
    yield n
    n.delete()


@pytest.fixture(scope="module")
def shared_dp(netns, bpf_objects):
    dp = Dataplane(NodeConfig.from_state(C.state_of(docs_()), C.NODE), max_entries=C.SMALL_MAPS)
    netns.register(dp)
    yield dp
    dp.close()


@pytest.fixture
def dp(shared_dp):
    for name in ("cebpf_ct", "cebpf_nat_feh", "cebpf_nat_fe", "cebpf_nat_be", "cebpf_routes", "cebpf_fsafes"):
        shared_dp.maps[name].clear()
    shared_dp.reconciler.invalidate_all()
    return shared_dp


def test_felix_configuration_sizes_the_maps(dp):
    assert NodeConfig.from_state(C.state_of(docs_()), C.NODE).map_sizes == {
        "cebpf_nat_be": 8, "cebpf_nat_fe": 9, "cebpf_nat_feh": 9}
    assert (dp.maps["cebpf_nat_be"].max_entries, dp.maps["cebpf_nat_feh"].max_entries) == (8, 9)


def test_capacity_checked_before_any_write(netns, dp):
    docs = docs_()
    state = C.state_of(docs)
    dp.apply(state)
    before = nat_content(dp)
    # two more backends (web and np grow) and a new pod (a route): the backends do not fit
    bigger = [d for d in docs if d["metadata"]["name"] not in ("web-1", "np-1")]
    bigger += [C.endpoints("web", ["a", "b", "c"]), C.endpoints("np", ["a", "b", "r"]),
               {**docs[3], "metadata": {"name": "a2", "namespace": "d"},
                "status": {"podIP": "10.65.0.9", "phase": "Running"}}]
    with pytest.raises(MapFullError) as err:
        dp.apply(C.state_of(bigger))
    assert "cebpf_nat_be" in str(err.value) and "nothing was written" in str(err.value)
    assert nat_content(dp) == before  # routes included: no map was touched
    assert backends_seen(netns, dp, WEB_VIP, 80) == {B, Cc}

    # the same state applies cleanly again, and so does a change that fits
    assert dp.apply(state).writes == 0
    moved = [d for d in docs if d["metadata"]["name"] not in ("itp", "itp-1")]
    moved += [C.service("more", "10.96.0.40", 80), C.endpoints("more", ["a"])]
    report = dp.apply(C.state_of(moved))
    assert report.changes["cebpf_nat_be"].added == 1 and report.changes["cebpf_nat_be"].removed == 2
    assert backends_seen(netns, dp, "10.96.0.40", 80, tries=3) == {(POD_IPS["a"], 8080)}


def test_frontend_map_full_names_that_map(netns, dp):
    dp.apply(C.state_of(docs_()))
    with pytest.raises(MapFullError, match="cebpf_nat_feh"):
        dp.apply(C.state_of(docs_() + [C.service("more", "10.96.0.40", 80)]))
    assert backends_seen(netns, dp, WEB_VIP, 80) == {B, Cc}


def test_write_refused_by_the_kernel_is_rolled_back(netns, dp):
    docs = docs_()
    dp.apply(C.state_of(docs))
    web = dp.service_ids["d/web/http/TCP"]
    before = nat_content(dp)
    # Another writer takes the last free slot behind the reconciler's back (raw map: no cache
    # invalidation), so the capacity check passes and the kernel refuses the write half-way.
    be = dp.maps["cebpf_nat_be"]
    stray = NatBackendKey(7777, 0)
    be.update(stray.to_bytes(), NatBackendValue("10.65.9.9", 1).to_bytes())

    # web: [b, c] -> [a, b, c]: ordinals 0 and 1 are rewritten, then ordinal 2 does not fit
    grown = [d for d in docs if d["metadata"]["name"] != "web-1"] + [C.endpoints("web", ["a", "b", "c"])]
    with pytest.raises(MapFullError, match="cebpf_nat_be"):
        dp.apply(C.state_of(grown))
    be.delete(stray.to_bytes())
    assert nat_content(dp) == before  # ordinals 0 and 1 of web were put back
    assert backends_seen(netns, dp, WEB_VIP, 80) == {B, Cc}

    report = dp.apply(C.state_of(grown))  # re-reads the maps, then converges
    assert report.full and dp.service_ids["d/web/http/TCP"] == web
    assert backends_seen(netns, dp, WEB_VIP, 80, sport0=30000, tries=60) == {B, Cc, (POD_IPS["a"], 8080)}
