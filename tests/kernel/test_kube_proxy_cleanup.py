"""Removing kube-proxy's rules (calico_ebpf.install.kube_proxy_cleanup) with the real tools.

Each test loads a kube-proxy-style ruleset into a scratch network namespace
with iptables-restore / nft, adds rules that are not kube-proxy's, runs the
cleanup there and reads the namespace back: kube-proxy's chains and its
nftables table are gone; the user's rules and kubelet's chains are exactly as
they were. The host's own rules are never touched.
"""

from __future__ import annotations

import pytest

from benchmarks._workload import NODE, manifests
from benchmarks.baselines import iptables as baseline_iptables
from benchmarks.baselines import nftables as baseline_nftables
from calico_ebpf.install.kube_proxy_cleanup import cleanup_kube_proxy, plan_iptables_cleanup
from calico_ebpf.kernel.netns import Netns
from calico_ebpf.model import ClusterState

pytestmark = pytest.mark.timeout(60)

# What kube-proxy (iptables mode) programs for one ClusterIP Service with one endpoint,
# plus kubelet's chains, in the shape iptables-save prints it.
KUBE_PROXY_IPTABLES = """\
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-NPX46M4PTMTKRN6Y - [0:0]
:KUBE-SEP-IT2ZTR26TO4XFPTO - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -m comment --comment "default/kubernetes:https cluster IP" -m tcp --dport 443 -j KUBE-SVC-NPX46M4PTMTKRN6Y
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SVC-NPX46M4PTMTKRN6Y ! -s 10.244.0.0/16 -d 10.96.0.1/32 -p tcp -m comment --comment "default/kubernetes:https cluster IP" -m tcp --dport 443 -j KUBE-MARK-MASQ
-A KUBE-SVC-NPX46M4PTMTKRN6Y -m comment --comment "default/kubernetes:https -> 192.0.2.10:6443" -j KUBE-SEP-IT2ZTR26TO4XFPTO
-A KUBE-SEP-IT2ZTR26TO4XFPTO -s 192.0.2.10/32 -m comment --comment "default/kubernetes:https" -j KUBE-MARK-MASQ
-A KUBE-SEP-IT2ZTR26TO4XFPTO -p tcp -m comment --comment "default/kubernetes:https" -m tcp -j DNAT --to-destination 192.0.2.10:6443
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A INPUT -j KUBE-FIREWALL
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -j KUBE-FIREWALL
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -m comment --comment "kubernetes forwarding rules" -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-IPTABLES-HINT - [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
"""

# Someone else's rules, loaded after kube-proxy's: they must survive unchanged.
USER_IPTABLES = """\
*filter
:USER-ALLOW-SSH - [0:0]
-A INPUT -p tcp -m tcp --dport 22 -m comment --comment "user: ssh" -j USER-ALLOW-SSH
-A USER-ALLOW-SSH -s 198.51.100.0/24 -j ACCEPT
-A FORWARD -s 203.0.113.0/24 -m comment --comment "user: lab" -j ACCEPT
COMMIT
*nat
-A POSTROUTING -s 172.31.0.0/16 -o lo -m comment --comment "user: masq" -j MASQUERADE
COMMIT
"""

KUBE_PROXY_NFT = """\
table ip kube-proxy {
    chain services { }
    chain nat-prerouting { type nat hook prerouting priority dstnat; policy accept; jump services; }
    chain filter-forward { type filter hook forward priority -110; policy accept; }
}
table ip6 kube-proxy {
    chain services { }
}
"""
USER_NFT = """\
table inet user {
    chain input { type filter hook input priority 0; policy accept; tcp dport 2222 accept; }
}
"""

KUBELET_KEPT = {"KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT"}


def _save(ns: Netns) -> str:
    # Without the "# Generated ... <time>" comment lines, so two dumps compare by content.
    out = ns.run_cmd(["iptables-save"]).stdout
    return "".join(line for line in out.splitlines(keepends=True) if not line.startswith("#"))


def _chains(save: str) -> set[str]:
    return {line[1:].split()[0] for line in save.splitlines() if line.startswith(":")}


def _rules(save: str) -> list[str]:
    return [line for line in save.splitlines() if line.startswith("-A ")]


def _user_rules(save: str) -> list[str]:
    return [r for r in _rules(save) if "user:" in r or "USER-" in r]


@pytest.fixture
def node_ns():
    with Netns(prefix="kpclean") as ns:
        ns.run_cmd(["ip", "link", "set", "lo", "up"])
        yield ns


def _load(ns: Netns, iptables: str, nft: str = "") -> None:
    ns.run_cmd(["iptables-restore", "--noflush"], input=iptables)
    ns.run_cmd(["iptables-restore", "--noflush"], input=USER_IPTABLES)
    ns.run_cmd(["nft", "-f", "-"], input=nft + USER_NFT)


def test_cleanup_removes_kube_proxy_chains_and_table_and_keeps_the_rest(node_ns):
    _load(node_ns, KUBE_PROXY_IPTABLES, KUBE_PROXY_NFT)
    before = _save(node_ns)
    assert "KUBE-SERVICES" in _chains(before) and len(_user_rules(before)) == 4

    report = cleanup_kube_proxy(node_ns)

    after = _save(node_ns)
    assert {c for c in _chains(after) if c.startswith("KUBE-")} == KUBELET_KEPT
    # The only KUBE rules left are kubelet's firewall chain and the jumps to it, as they were.
    kube_rules = [r for r in _rules(after) if "KUBE-" in r]
    assert kube_rules and all("KUBE-FIREWALL" in r for r in kube_rules)
    assert kube_rules == [r for r in _rules(before) if "KUBE-FIREWALL" in r]
    assert _user_rules(after) == _user_rules(before)
    tables = node_ns.run_cmd(["nft", "list", "tables"]).stdout.split("\n")
    assert "table ip kube-proxy" not in tables and "table ip6 kube-proxy" not in tables
    assert "table inet user" in tables
    assert sorted(report.removed_nft_tables) == ["ip kube-proxy", "ip6 kube-proxy"]
    assert "KUBE-SVC-NPX46M4PTMTKRN6Y" in report.removed_chains["iptables nat"]
    assert len(report.deleted_rules["iptables filter"]) == 7  # 3 from INPUT, 3 from FORWARD, 1 from OUTPUT

    # Idempotent: nothing of kube-proxy's is left to remove.
    again = cleanup_kube_proxy(node_ns)
    assert not again.changed and _save(node_ns) == after


def test_dry_run_and_disabled_change_nothing(node_ns):
    _load(node_ns, KUBE_PROXY_IPTABLES, KUBE_PROXY_NFT)
    before, tables = _save(node_ns), node_ns.run_cmd(["nft", "list", "ruleset"]).stdout
    planned = cleanup_kube_proxy(node_ns, dry_run=True)
    assert planned.changed and "-X KUBE-SERVICES" in planned.scripts["iptables nat"]
    off = cleanup_kube_proxy(node_ns, enabled=False)
    assert not off.changed and "bpfKubeProxyIptablesCleanupEnabled" in off.skipped[0]
    assert _save(node_ns) == before
    assert node_ns.run_cmd(["nft", "list", "ruleset"]).stdout == tables


def test_cleanup_of_a_generated_kube_proxy_ruleset(node_ns):
    """Our kube-proxy baseline generator's rules for 20 Services, iptables and nftables mode."""
    state = ClusterState.from_dicts(manifests(20, 3))
    baseline_iptables.load_iptables(node_ns, state, NODE, cluster_cidr="10.0.0.0/8")
    baseline_nftables.load_nftables(node_ns, state, NODE, cluster_cidr="10.0.0.0/8")
    node_ns.run_cmd(["iptables-restore", "--noflush"], input=USER_IPTABLES)
    before = _save(node_ns)
    assert sum(c.startswith("KUBE-SEP-") for c in _chains(before)) >= 20

    cleanup_kube_proxy(node_ns)

    after = _save(node_ns)
    assert not any(c.startswith("KUBE-") and c not in KUBELET_KEPT for c in _chains(after))
    assert _user_rules(after) == _user_rules(before)
    assert "kube-proxy" not in node_ns.run_cmd(["nft", "list", "tables"]).stdout


def test_plan_ignores_tables_without_kube_proxy_chains():
    assert plan_iptables_cleanup(USER_IPTABLES) == {}
    plans = plan_iptables_cleanup(KUBE_PROXY_IPTABLES)
    chains, deletes, script = plans["nat"]
    assert deletes == [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
    ]
    assert "KUBE-KUBELET-CANARY" not in chains and script.endswith("COMMIT\n")
    assert plans["mangle"][0] == ["KUBE-PROXY-CANARY"]
