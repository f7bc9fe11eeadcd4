"""``calico-ebpf dump policy`` run as a subprocess against a pinned dataplane whose policy a
PolicyManager synced: slots from ifstate, rules and instruction ranges from the rule table."""

from __future__ import annotations

import json
import os
import re

import pytest
from test_cli_dump import dump

from calico_ebpf.compiler.policy import endpoint_policy
from calico_ebpf.compiler.policy_program import compile_policy
from calico_ebpf.dataplane import Dataplane
from calico_ebpf.dataplane.policy import NO_POLICY, PolicyManager, policy_table_path, read_policy_table
from calico_ebpf.model import ClusterState

A_IF, B_IF = (901, "calia0000000001"), (902, "calib0000000002")


def _state():
    def pod(name, ip, app):
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "x", "labels": {"app": app}},
                "spec": {"nodeName": "n1"}, "status": {"podIP": ip}}

    web = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "web", "namespace": "x"},
           "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "cli"}}}],
                                 "ports": [{"port": 80, "protocol": "TCP"}]}]}}
    objs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}},
            pod("a", "10.65.0.2", "web"), pod("b", "10.65.0.3", "cli"), web]
    return ClusterState.from_dicts(objs)


@pytest.fixture
def synced(pin_dir, bpf_objects):
    state = _state()
    with Dataplane(pin_dir=pin_dir) as dp:
        pm = PolicyManager(dp)
        try:
            pm.sync(state, {"x/a": A_IF, "x/b": B_IF})
            yield state, pm
        finally:
            pm.close()


def test_the_rule_table_is_written_next_to_the_pins(pin_dir, synced):
    _, pm = synced
    assert os.path.exists(policy_table_path(pin_dir))
    table = read_policy_table(pin_dir)
    assert table == pm.table()
    slot = pm.slot_of("x/a", "ingress")
    assert table.endpoints["x/a"] == {"ifindex": 901, "ifname": A_IF[1], "ingress": slot, "egress": NO_POLICY}
    assert table.slots[slot]["endpoints"] == [["x/a", "ingress"]]


def test_dump_policy_json(pin_dir, synced):
    state, pm = synced
    rows = json.loads(dump("policy", "--pin-dir", pin_dir, "--json").stdout)
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == {A_IF[1], B_IF[1]}
    a, b = by_name[A_IF[1]], by_name[B_IF[1]]
    slot = pm.slot_of("x/a", "ingress")
    assert (a["pod"], a["ifindex"], a["ingress"]["slot"], a["egress"]["slot"]) == ("x/a", 901, slot, NO_POLICY)
    assert (b["ingress"]["slot"], b["egress"]["slot"]) == (NO_POLICY, NO_POLICY)
    compiled = compile_policy(endpoint_policy(state, state.pods["x/a"], "ingress"), pm.maps)
    assert a["ingress"]["rules"] == [r.to_dict() for r in compiled.rules]
    kinds = [(r["id"], r["kind"], r["action"], r["where"]) for r in a["ingress"]["rules"]]
    assert kinds == [(1, "rule", "Allow", "spec.ingress[0]"), (2, "tier-end", "Deny", ""), (3, "profile", "Allow", "")]
    # Each deciding rule's range holds the store of its id to dp_state.pol_rule (offset 104).
    listing = compiled.asm.listing()
    for rule in compiled.rules:
        if rule.end > rule.start:
            stores = [int(m[1]) for m in re.finditer(r"^\s*(\d+): \*\(u32 \*\)\(r6 \+ 104\) = (\d+)$", listing, re.MULTILINE)
                      if rule.start <= int(m[1]) < rule.end and int(m[2]) == rule.id]
            assert len(stores) == 1, (rule, listing)


def test_dump_policy_text_and_iface_filter(pin_dir, synced):
    _, pm = synced
    slot = pm.slot_of("x/a", "ingress")
    text = dump("policy", "--pin-dir", pin_dir, A_IF[1]).stdout
    lines = text.splitlines()
    assert lines[0] == f"{A_IF[1]} (ifindex 901) pod x/a"
    assert lines[1].startswith(f"  ingress: slot {slot} (program ")
    assert re.match(r"\s+1  \[\d+,\d+\)\s+Allow\s+default/NetworkPolicy x/web spec.ingress\[0\]$", lines[3]), text
    assert re.match(r"\s+2  \[\d+,\d+\)\s+Deny\s+end of tier default$", lines[4]), text
    assert lines[-1] == "  egress: no policy: allow (profile)"
    assert B_IF[1] not in text
    by_index = dump("policy", "--pin-dir", pin_dir, "902").stdout
    assert by_index.splitlines()[1:] == ["  ingress: no policy: allow (profile)", "  egress: no policy: allow (profile)"]
    missing = dump("policy", "--pin-dir", pin_dir, "nope0", check=False)
    assert missing.returncode == 1 and "no endpoint interface 'nope0'" in missing.stderr
    wrong = dump("nat", "--pin-dir", pin_dir, "calia", check=False)
    assert wrong.returncode == 2
