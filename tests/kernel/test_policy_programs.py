"""Generated policy programs on the real kernel (BPF_PROG_TEST_RUN).

The harness stands in for the datapath: a per-CPU state map holding the
packet's dp_state on every CPU, a prog array whose ALLOWED/DENIED slots hold
two tiny programs returning distinct codes, and an LPM IP-set map. The
policy program reads the state, so the frame passed to test_run is only
there because SCHED_CLS needs one.
"""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from calico_ebpf.compiler.asm import Assembler
from calico_ebpf.compiler.policy import NamedPort, endpoint_policy
from calico_ebpf.compiler.policy_program import PolicyMaps, emit_policy
from calico_ebpf.kernel import Map, MapType, Program
from calico_ebpf.kernel.program import ProgType
from calico_ebpf.model import ClusterState

ALLOWED_RC, DENIED_RC = 71, 72
PROTO = {"TCP": 6, "UDP": 17, "SCTP": 132, "ICMP": 1}
FRAME = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1234, dport=80))
CASES = json.loads((Path(__file__).resolve().parents[1] / "data" / "netpol-cases.json").read_text())


def dp_state(src: str, dst: str, proto: int, dport: int = 0, sport: int = 40000,
             icmp_type: int = 0, icmp_code: int = 0, *, pre_nat: tuple[str, int] | None = None) -> bytes:
    """A struct dp_state (112 bytes) for a flow to ``dst:dport`` (post-DNAT); ``pre_nat`` is
    what the client sent when a service translated it (default: no DNAT)."""
    buf = bytearray(112)
    orig_dst, orig_port = pre_nat or (dst, dport)
    buf[8:12] = socket.inet_aton(src)
    buf[12:16] = socket.inet_aton(orig_dst)
    buf[16:20] = socket.inet_aton(dst)
    buf[20:24] = socket.inet_aton(src)
    struct.pack_into("<HHHBBB", buf, 24, sport, orig_port, dport, proto, icmp_type, icmp_code)
    struct.pack_into("<i", buf, 36, -1)
    return bytes(buf)


class PolicyHarness:
    """The maps and continuation programs a policy program expects; runs programs on flows."""

    def __init__(self) -> None:
        self.state = Map.create(MapType.PERCPU_ARRAY, 4, 112, 1, name="t_pol_state")
        self.progs = Map.create(MapType.PROG_ARRAY, 4, 4, 2, name="t_pol_progs")
        self.ipsets = Map.create(MapType.LPM_TRIE, 20, 4, 1 << 16, name="t_pol_ipsets")
        self.continuations = [
            Program.load(ProgType.SCHED_CLS, Assembler().ret(rc).assemble(), name=name)
            for rc, name in ((ALLOWED_RC, "t_allowed"), (DENIED_RC, "t_denied"))
        ]
        for slot, prog in enumerate(self.continuations):
            self.progs.update(struct.pack("<I", slot), struct.pack("<I", prog.fd))
        self.maps = PolicyMaps(self.state.fd, self.progs.fd, self.ipsets.fd)
        self.loaded: list[Program] = []
        self.set_keys: set[bytes] = set()

    def load(self, ep) -> Program:
        """Write ``ep``'s IP sets and load its program."""
        for ipset in ep.ipsets.values():
            for member in ipset.members:
                key = member.to_bytes()
                self.ipsets.update(key, struct.pack("<I", 1))
                self.set_keys.add(key)
        prog = Program.load(ProgType.SCHED_CLS, emit_policy(ep, self.maps).assemble(), name="t_policy")
        self.loaded.append(prog)
        return prog

    def clear_sets(self) -> None:
        for key in self.set_keys:
            self.ipsets.delete(key)
        self.set_keys.clear()

    def run(self, prog: Program, state: bytes) -> str:
        """"allow" or "deny" (asserting pol_rc agrees with the continuation reached)."""
        stride = self.state.value_stride // self.state.nr_cpus
        self.state.update(struct.pack("<I", 0), (state + bytes(stride - len(state))) * self.state.nr_cpus)
        rc = prog.test_run(FRAME).retval
        assert rc in (ALLOWED_RC, DENIED_RC), f"policy program returned {rc}"
        values = self.state.lookup(struct.pack("<I", 0))
        pol_rcs = {struct.unpack_from("<i", values, cpu * stride + 40)[0] for cpu in range(self.state.nr_cpus)}
        verdict = "allow" if rc == ALLOWED_RC else "deny"
        assert (1 if verdict == "allow" else 2) in pol_rcs
        return verdict

    def close(self) -> None:
        for prog in self.loaded + self.continuations:
            prog.close()
        for m in (self.state, self.progs, self.ipsets):
            m.close()


@pytest.fixture
def harness():
    h = PolicyHarness()
    yield h
    h.close()


def pod(ns: str, name: str, ip: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": "n1"}, "status": {"podIP": ip}}


def ns(name: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


BASE = [ns("x", team="a"), ns("y", team="b"),
        pod("x", "web", "10.1.0.2", app="web"), pod("x", "cli", "10.1.0.3", app="cli"),
        pod("y", "db", "10.1.1.2", app="db")]


def k8s_np(name: str, namespace: str, spec: dict) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def gnp(name: str, spec: dict) -> dict:
    return {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": {"name": name}, "spec": spec}


def verdicts(harness, objects, pod_key, direction, flows, named_ports=None):
    state = ClusterState.from_dicts(BASE + objects)
    assert not state.rejected
    ep = endpoint_policy(state, state.pods[pod_key], direction, named_ports=named_ports)
    prog = harness.load(ep)
    return [harness.run(prog, dp_state(*flow)) for flow in flows]


WEB_INGRESS = "x/web"


def test_no_policy_allows(harness):
    assert verdicts(harness, [], WEB_INGRESS, "ingress", [("10.9.9.9", "10.1.0.2", 6, 80)]) == ["allow"]


def test_cidr_allow_with_except(harness):
    policy = k8s_np("p", "x", {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                               "ingress": [{"from": [{"ipBlock": {"cidr": "10.1.0.0/16", "except": ["10.1.1.0/24"]}}]}]})
    flows = [("10.1.0.3", "10.1.0.2", 6, 80), ("10.1.1.2", "10.1.0.2", 6, 80), ("10.2.0.1", "10.1.0.2", 6, 80)]
    assert verdicts(harness, [policy], WEB_INGRESS, "ingress", flows) == ["allow", "deny", "deny"]


def test_selector_via_ip_set_and_namespace_selector(harness):
    policy = k8s_np("p", "x", {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [
        {"from": [{"podSelector": {"matchLabels": {"app": "cli"}}}]},
        {"from": [{"namespaceSelector": {"matchLabels": {"team": "b"}}}]}]})
    flows = [("10.1.0.3", "10.1.0.2", 6, 80),   # x/cli: pod selector
             ("10.1.1.2", "10.1.0.2", 17, 53),  # y/db: namespace selector, any port
             ("10.1.0.2", "10.1.0.2", 6, 80),   # x/web itself: not selected
             ("10.9.0.1", "10.1.0.2", 6, 80)]   # outside the cluster
    assert verdicts(harness, [policy], WEB_INGRESS, "ingress", flows) == ["allow", "allow", "deny", "deny"]


def test_named_port_resolves_on_the_server_pod(harness):
    policy = k8s_np("p", "x", {"podSelector": {}, "policyTypes": ["Ingress"],
                               "ingress": [{"ports": [{"port": "http", "protocol": "TCP"}]}]})
    ports = {"x/web": [NamedPort("http", 6, 8080)], "x/cli": [NamedPort("http", 6, 9090)]}
    flows = [("10.1.0.3", "10.1.0.2", 6, 8080), ("10.1.0.3", "10.1.0.2", 6, 9090), ("10.1.0.3", "10.1.0.2", 17, 8080)]
    assert verdicts(harness, [policy], WEB_INGRESS, "ingress", flows, ports) == ["allow", "deny", "deny"]


def test_port_range_and_protocol(harness):
    policy = k8s_np("p", "x", {"podSelector": {}, "policyTypes": ["Ingress"],
                               "ingress": [{"ports": [{"port": 1000, "endPort": 2000, "protocol": "UDP"}]}]})
    flows = [("10.1.0.3", "10.1.0.2", 17, 999), ("10.1.0.3", "10.1.0.2", 17, 1000), ("10.1.0.3", "10.1.0.2", 17, 2000),
             ("10.1.0.3", "10.1.0.2", 17, 2001), ("10.1.0.3", "10.1.0.2", 6, 1500)]
    assert verdicts(harness, [policy], WEB_INGRESS, "ingress", flows) == ["deny", "allow", "allow", "deny", "deny"]


def test_pass_skips_to_next_tier_and_end_of_tier_denies(harness):
    tier = {"apiVersion": "projectcalico.org/v3", "kind": "Tier", "metadata": {"name": "sec"}, "spec": {"order": 10}}
    sec = gnp("sec.p", {"tier": "sec", "selector": "app == 'web'", "ingress": [
        {"action": "Pass", "protocol": "TCP", "destination": {"ports": [80]}},
        {"action": "Deny", "protocol": "TCP", "destination": {"ports": ["443:450"]}},
        {"action": "Log"},
        {"action": "Allow", "protocol": "UDP"}]})
    allow_80 = k8s_np("p", "x", {"podSelector": {}, "policyTypes": ["Ingress"],
                                 "ingress": [{"ports": [{"port": 80}]}]})
    flows = [("10.1.0.3", "10.1.0.2", 6, 80),    # Pass -> default tier allows 80
             ("10.1.0.3", "10.1.0.2", 6, 443),   # Deny in tier sec
             ("10.1.0.3", "10.1.0.2", 17, 9),    # Log continues, then Allow
             ("10.1.0.3", "10.1.0.2", 6, 22)]    # end of tier sec: Deny
    assert verdicts(harness, [tier, sec, allow_80], WEB_INGRESS, "ingress", flows) == ["allow", "deny", "allow", "deny"]


def test_pass_then_default_tier_end_denies(harness):
    sec = gnp("p0", {"order": 1, "selector": "all()", "ingress": [{"action": "Pass", "protocol": "TCP"}]})
    deny_all = k8s_np("p", "x", {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": []})
    # Pass leaves the default tier, so its end-of-tier deny (and the k8s policy) are skipped.
    flows = [("10.1.0.3", "10.1.0.2", 6, 80), ("10.1.0.3", "10.1.0.2", 17, 80)]
    assert verdicts(harness, [sec, deny_all], WEB_INGRESS, "ingress", flows) == ["allow", "deny"]


def test_calico_negations_and_icmp(harness):
    policy = gnp("g", {"selector": "all()", "types": ["Egress"], "egress": [
        {"action": "Deny", "protocol": "ICMP", "icmp": {"type": 8, "code": 0}},
        {"action": "Allow", "protocol": "ICMP"},
        {"action": "Allow", "notProtocol": "UDP", "destination": {"notNets": ["10.1.1.0/24"],
                                                                  "notSelector": "app == 'cli'"}},
        {"action": "Allow", "protocol": "UDP", "destination": {"nets": ["10.1.1.2/32"], "notPorts": [53]}}]})
    flows = [("10.1.0.2", "10.9.0.1", 1, 0, 0, 8, 0),   # echo request: denied
             ("10.1.0.2", "10.9.0.1", 1, 0, 0, 0, 0),   # echo reply: allowed
             ("10.1.0.2", "10.9.0.1", 6, 443),          # outside notNets, not cli
             ("10.1.0.2", "10.1.0.3", 6, 443),          # cli: notSelector excludes
             ("10.1.0.2", "10.1.1.2", 6, 443),          # in notNets
             ("10.1.0.2", "10.1.1.2", 17, 5353),        # udp to db, not 53
             ("10.1.0.2", "10.1.1.2", 17, 53)]          # notPorts
    assert verdicts(harness, [policy], WEB_INGRESS, "egress", flows) == [
        "deny", "allow", "allow", "deny", "deny", "allow", "deny"]


def test_sctp_rule_matches_nothing_and_still_isolates(harness):
    policy = k8s_np("p", "x", {"podSelector": {}, "policyTypes": ["Ingress"],
                               "ingress": [{"ports": [{"port": 80, "protocol": "SCTP"}]}]})
    state = ClusterState.from_dicts(BASE + [policy])
    ep = endpoint_policy(state, state.pods[WEB_INGRESS], "ingress")
    assert [e.feature for e in ep.unsupported] == ["SCTP policy rule"]
    prog = harness.load(ep)
    assert [harness.run(prog, dp_state("10.1.0.3", "10.1.0.2", p, 80)) for p in (132, 6)] == ["deny", "deny"]


# -- the netpol conformance vectors at program level -----------------------------------------------


def _case_state(case: dict) -> tuple[ClusterState, dict, dict]:
    objects, named, ips = _case_objects(case)
    state = ClusterState.from_dicts(objects)
    assert not state.rejected, state.rejected
    return state, named, ips


def _case_objects(case: dict) -> tuple[list[dict], dict, dict]:
    """The case's manifests (model namespaces and pods, then its policies), named ports, pod IPs."""
    model = CASES["model"]
    extra = case.get("state") or {}
    ns_labels, pod_labels = extra.get("namespace_labels", {}), extra.get("pod_labels", {})
    objects = [ns(name, **{**spec["labels"], **ns_labels.get(name, {})}) for name, spec in model["namespaces"].items()]
    named, ips = {}, {}
    for p in model["pods"]:
        objects.append(pod(p["namespace"], p["name"], p["ip"], **{**p["labels"], **pod_labels.get(p["id"], {})}))
        named[p["id"]] = [NamedPort(c["name"], PROTO[c["protocol"]], c["containerPort"]) for c in p["containerPorts"]]
        ips[p["id"]] = p["ip"]
    return objects + case["policies"], named, ips


def _run_case(harness, case: dict) -> tuple[list[str], list[str]]:
    """(unexplained mismatches, mismatches explained by an unsupported SCTP rule)."""
    state, named, ips = _case_state(case)
    harness.clear_sets()
    eps = {(key, d): endpoint_policy(state, state.pods[key], d, named_ports=named)
           for key in ips for d in ("ingress", "egress")}
    progs = {k: harness.load(ep) for k, ep in eps.items()}
    mismatches, sctp = [], []
    for probe in case["probes"]:
        name = f"{probe['protocol']}/{probe['port']}"
        denied = {tuple(pair) for pair in case["expected"].get(name, [])}
        for client in ips:
            for server in ips:
                flow = dp_state(ips[client], ips[server], PROTO[probe["protocol"]], probe["port"])
                ok = (harness.run(progs[(client, "egress")], flow) == "allow"
                      and harness.run(progs[(server, "ingress")], flow) == "allow")
                if ok == ((client, server) in denied):
                    text = f"{name} {client}->{server}: expected {'deny' if ok else 'allow'}"
                    # SCTP rules match nothing (unsupported, reported, never widened): an SCTP flow
                    # only such a rule would admit is denied. Anything else is a real failure.
                    reported = eps[(client, "egress")].unsupported + eps[(server, "ingress")].unsupported
                    if not ok and probe["protocol"] == "SCTP" and reported:
                        sctp.append(text)
                    else:
                        mismatches.append(text)
    return mismatches, sctp


def test_netpol_conformance_cases(harness):
    failed, sctp_only = {}, {}
    for case in CASES["cases"]:
        mismatches, sctp = _run_case(harness, case)
        if mismatches:
            failed[case["name"]] = mismatches
        elif sctp:
            sctp_only[case["name"]] = sctp
    total = len(CASES["cases"])
    print(f"\nnetpol conformance at program level: {total - len(failed) - len(sctp_only)}/{total} cases pass; "
          f"{len(sctp_only)} differ only on flows an (unsupported) SCTP rule would allow: {sorted(sctp_only)}")
    assert not failed, json.dumps({k: v[:5] + [f"... {len(v)} mismatches"] for k, v in failed.items()}, indent=1)


def test_a_thousand_rules_fit_one_program(harness):
    # Each rule: a /24, an IP-set selector on every other rule, a port and a port range.
    rules = []
    for i in range(1000):
        source = {"nets": [f"10.{i // 250}.{i % 250}.0/24"]}
        if i % 2:
            source["selector"] = "app == 'cli'"
        rules.append({"action": "Allow", "protocol": "TCP", "source": source,
                      "destination": {"ports": [1000 + i, f"{2000 + i}:{2100 + i}"]}})
    state = ClusterState.from_dicts(BASE + [gnp("g", {"selector": "all()", "ingress": rules})])
    ep = endpoint_policy(state, state.pods[WEB_INGRESS], "ingress")
    assert len(emit_policy(ep, harness.maps)) > 20_000
    prog = harness.load(ep)
    flows = [("10.3.230.1", "10.1.0.2", 6, 1980),   # rule 980: port
             ("10.3.230.1", "10.1.0.2", 6, 3080),   # rule 980: end of its range
             ("10.3.230.1", "10.1.0.2", 6, 3081),   # past every range of a matching source
             ("10.3.231.1", "10.1.0.2", 6, 1981)]   # rule 981 also needs the selector: not a pod
    assert [harness.run(prog, dp_state(*f)) for f in flows] == ["allow", "allow", "deny", "deny"]


def test_destinations_are_matched_after_dnat(harness):
    policy = k8s_np("p", "x", {"podSelector": {"matchLabels": {"app": "cli"}}, "policyTypes": ["Egress"],
                               "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "web"}}}],
                                           "ports": [{"port": 8080}]}]})
    state = ClusterState.from_dicts(BASE + [policy])
    prog = harness.load(endpoint_policy(state, state.pods["x/cli"], "egress"))
    via_service = dp_state("10.1.0.3", "10.1.0.2", 6, 8080, pre_nat=("172.30.0.10", 80))
    to_vip_unnatted = dp_state("10.1.0.3", "172.30.0.10", 6, 80, pre_nat=("10.1.0.2", 8080))
    assert [harness.run(prog, s) for s in (via_service, to_vip_unnatted)] == ["allow", "deny"]


def test_long_cidr_lists_go_through_an_ip_set(harness):
    nets = [f"192.168.{i}.0/24" for i in range(20)] + ["10.1.0.0/16"]
    policy = gnp("g", {"selector": "all()", "ingress": [
        {"action": "Allow", "source": {"nets": nets, "notNets": [f"10.1.{i}.0/24" for i in range(1, 12)]}}]})
    state = ClusterState.from_dicts(BASE + [policy])
    ep = endpoint_policy(state, state.pods[WEB_INGRESS], "ingress")
    [rule] = [s for s in ep.steps if s.kind == "rule"]
    assert rule.set_id("source.nets") is not None and rule.set_id("source.notNets") is not None
    prog = harness.load(ep)
    flows = [("192.168.19.7", "10.1.0.2", 6, 80), ("10.1.0.3", "10.1.0.2", 6, 80), ("10.1.11.9", "10.1.0.2", 6, 80),
             ("10.1.12.9", "10.1.0.2", 6, 80), ("192.168.20.1", "10.1.0.2", 6, 80)]
    assert [harness.run(prog, dp_state(*f)) for f in flows] == ["allow", "allow", "deny", "allow", "deny"]
