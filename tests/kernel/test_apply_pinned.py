"""A Dataplane opened on an existing pin directory re-adopts what is there: the service ids it
finds in the maps, and an apply of the same state writes nothing."""

from __future__ import annotations

import apply_cluster as C
import pytest
from apply_cluster import POD_IPS, WEB_VIP
from test_apply import B, backends_seen, nat_content


@pytest.fixture(scope="module")
def netns():
    n = C.NodeNetns()
    yield n
    n.delete()


def test_reopen_adopts_ids_and_applies_only_differences(netns, pin_dir, bpf_objects):
    docs = C.cluster_docs()
    # Make the kernel's ids differ from what a fresh compile would pick (sorted key order):
    # "aaa" arrives after the others, so it holds the highest id although it sorts first.
    with_aaa = docs + [C.service("aaa", "10.96.0.50", 80), C.endpoints("aaa", ["a", "c"])]
    dp = C.new_dataplane(C.state_of(docs), netns, pin_dir=pin_dir)
    try:
        dp.apply(C.state_of(docs))
        dp.apply(C.state_of(with_aaa))
        ids = dp.service_ids
        content = nat_content(dp)
    finally:
        dp.close()
    assert ids["d/aaa/http/TCP"] == max(ids.values())

    dp = C.new_dataplane(C.state_of(with_aaa), netns, pin_dir=pin_dir)
    try:
        report = dp.apply(C.state_of(with_aaa))
        assert report.writes == 0, report
        assert dp.service_ids == ids and nat_content(dp) == content

        # one endpoint leaves web: only web's block and web's frontend count change
        changed = [d for d in with_aaa if d["metadata"]["name"] != "web-1"] + [C.endpoints("web", ["b"])]
        report = dp.apply(C.state_of(changed))
        assert vars(report.changes["cebpf_nat_be"]) == {"added": 0, "changed": 0, "removed": 1}
        assert vars(report.changes["cebpf_nat_feh"]) == {"added": 0, "changed": 1, "removed": 0}
        assert report.writes == 2 and dp.service_ids == ids
        assert backends_seen(netns, dp, WEB_VIP, 80, tries=20) == {B}
        assert backends_seen(netns, dp, "10.96.0.50", 80, sport0=25000) == {(POD_IPS["a"], 8080),
                                                                            (POD_IPS["c"], 8080)}
        ids = dp.service_ids
    finally:
        dp.close()

    # while the agent was down: web went away, a new service came
    later = [d for d in changed if d["metadata"]["name"] not in ("web", "web-1")]
    later += [C.service("new", "10.96.0.60", 80), C.endpoints("new", ["b"])]
    dp = C.new_dataplane(C.state_of(later), netns, pin_dir=pin_dir)
    try:
        report = dp.apply(C.state_of(later))
        assert report.changes["cebpf_nat_feh"].removed == 1 and report.changes["cebpf_nat_feh"].added == 1
        assert report.changes["cebpf_nat_be"].removed == 1 and report.changes["cebpf_nat_be"].added == 1
        kept = {k: v for k, v in ids.items() if k != "d/web/http/TCP"}
        assert {k: v for k, v in dp.service_ids.items() if k in kept} == kept
        assert dp.service_ids["d/new/http/TCP"] not in ids.values()
        # new flows (the pinned conntrack still follows the flows opened above, as it should)
        assert backends_seen(netns, dp, WEB_VIP, 80, tries=3, sport0=27000) == {None}
        assert backends_seen(netns, dp, "10.96.0.60", 80, tries=3, sport0=26000) == {B}
    finally:
        dp.close()
