"""kube-proxy's iptables mode: the iptables-restore input it writes, loaded into a netns.

Full sync (``load_iptables``): kube-proxy first ensures its jump rules from
the built-in chains with one ``iptables`` call per check/insert
(``EnsureChain`` / ``EnsureRule``), then writes one ``iptables-restore
--noflush --counters`` input holding the whole ``filter`` and ``nat`` content
of its chains.

Partial sync (``load_iptables_change``), as kube-proxy >= 1.26 does it: one
``iptables-restore --noflush`` whose input still holds the whole ``filter``
table part and the top-level ``nat`` chains (KUBE-SERVICES has one rule per
service IP:port, so this stays O(services)), but only the KUBE-SVC/SVL/EXT/
FW/SEP chains of services whose Service or EndpointSlices changed. Chains
that went away are not deleted in that restore when the cluster is "large"
(> 1000 endpoints): kube-proxy leaves them, unreferenced, for a later
cleanup (``iptables-save`` + ``-X``), which we do not time.

    >>> from calico_ebpf.model import ClusterState
    >>> st = ClusterState.from_yaml_text('''
    ... apiVersion: v1
    ... kind: Service
    ... metadata: {name: svc1, namespace: ns1}
    ... spec: {clusterIP: 172.30.0.41, ports: [{name: p80, port: 80}]}
    ... ''')
    >>> text = render_iptables(service_ports(st, "n1"), ProxyConfig.from_state(st, "n1"))
    >>> [l for l in text.splitlines() if "172.30.0.41" in l][0].split(" -j ")[-1]
    'REJECT'
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from benchmarks.baselines import (
    KPServicePort,
    LoadTiming,
    ProxyConfig,
    _Meter,
    changed_services,
    proto_hash,
    service_ports,
)
from calico_ebpf.model import ClusterState

if TYPE_CHECKING:
    from calico_ebpf.kernel.netns import Netns

__all__ = ["chain_names", "load_iptables", "load_iptables_change", "render_iptables", "sep_chain"]

LARGE_CLUSTER_ENDPOINTS = 1000  # largeClusterEndpointsThreshold: above it, no per-endpoint comments
RESTORE = ["iptables-restore", "-w", "5", "-W", "100000", "--noflush", "--counters"]
IPTABLES = ["iptables", "-w", "5", "-W", "100000"]

# (table, chain created, built-in chain jumping to it, comment, extra match) - iptablesJumpChains
JUMPS = [
    ("filter", "KUBE-EXTERNAL-SERVICES", "INPUT", "kubernetes externally-visible service portals", ["-m", "conntrack", "--ctstate", "NEW"]),
    ("filter", "KUBE-EXTERNAL-SERVICES", "FORWARD", "kubernetes externally-visible service portals", ["-m", "conntrack", "--ctstate", "NEW"]),
    ("filter", "KUBE-NODEPORTS", "INPUT", "kubernetes health check service ports", []),
    ("filter", "KUBE-SERVICES", "FORWARD", "kubernetes service portals", ["-m", "conntrack", "--ctstate", "NEW"]),
    ("filter", "KUBE-SERVICES", "OUTPUT", "kubernetes service portals", ["-m", "conntrack", "--ctstate", "NEW"]),
    ("filter", "KUBE-FORWARD", "FORWARD", "kubernetes forwarding rules", []),
    ("filter", "KUBE-PROXY-FIREWALL", "INPUT", "kubernetes load balancer firewall", ["-m", "conntrack", "--ctstate", "NEW"]),
    ("filter", "KUBE-PROXY-FIREWALL", "OUTPUT", "kubernetes load balancer firewall", ["-m", "conntrack", "--ctstate", "NEW"]),
    ("filter", "KUBE-PROXY-FIREWALL", "FORWARD", "kubernetes load balancer firewall", ["-m", "conntrack", "--ctstate", "NEW"]),
    ("nat", "KUBE-SERVICES", "OUTPUT", "kubernetes service portals", []),
    ("nat", "KUBE-SERVICES", "PREROUTING", "kubernetes service portals", []),
    ("nat", "KUBE-POSTROUTING", "POSTROUTING", "kubernetes postrouting rules", []),
    # kubelet's duplicates (iptablesKubeletJumpChains), ensured by kube-proxy too
    ("filter", "KUBE-FIREWALL", "INPUT", "", []),
    ("filter", "KUBE-FIREWALL", "OUTPUT", "", []),
]


def chain_names(sp: KPServicePort) -> dict[str, str]:
    """KUBE-SVC/SVL/EXT/FW chain names of a service port (same hash, different prefixes)."""
    h = proto_hash(sp.name_string, sp.protocol)
    return {k: f"KUBE-{k}-{h}" for k in ("SVC", "SVL", "EXT", "FW")}


def sep_chain(sp: KPServicePort, endpoint: str) -> str:
    """KUBE-SEP-<hash of servicePortName + protocol + "ip:port">."""
    return "KUBE-SEP-" + proto_hash(sp.name_string, sp.protocol, endpoint)


def _prob(n: int) -> str:
    return f"{1.0 / n:0.10f}"  # computeProbability: fmt.Sprintf("%0.10f", 1.0/float64(n))


def render_iptables(ports: Sequence[KPServicePort], cfg: ProxyConfig, *, only: set[str] | None = None) -> str:
    """The iptables-restore input of one sync; ``only`` = keys of changed services (partial sync)."""
    large = sum(len(sp.endpoints) for sp in ports) > LARGE_CLUSTER_ENDPOINTS
    mark = cfg.masquerade_mark
    detect = list(cfg.cluster_cidrs[:1])
    f_chains = [f":{c} - [0:0]" for c in ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL")]
    f_rules: list[str] = []
    n_chains = [f":{c} - [0:0]" for c in ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ")]
    n_rules = [
        f"-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --xor-mark {mark}",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully',
        f"-A KUBE-MARK-MASQ -j MARK --or-mark {mark}",
    ]
    if cfg.localhost_node_ports:
        f_chains.append(":KUBE-FIREWALL - [0:0]")
        f_rules.append('-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 '
                       "! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP")

    svc_chains: list[str] = []
    svc_rules: list[str] = []
    for sp in ports:
        name = sp.name_string
        proto = sp.protocol
        names = chain_names(sp)
        cluster, local, reachable, has = sp.categorize()
        cluster_chain, local_chain, ext_chain, fw_chain = names["SVC"], names["SVL"], names["EXT"], names["FW"]
        uses_cluster = bool(cluster) and sp.uses_cluster_endpoints
        uses_local = bool(local) and sp.uses_local_endpoints
        internal_chain, has_internal = cluster_chain, has
        if sp.internal_policy_local:
            internal_chain, has_internal = local_chain, has and bool(local)
        external_policy_chain, has_external = cluster_chain, has
        if sp.external_policy_local:
            external_policy_chain, has_external = local_chain, has and bool(local)
        uses_ext = has and sp.externally_accessible
        lb_chain = ext_chain
        uses_fw = has and bool(sp.lb_ips) and bool(sp.lb_source_ranges)
        if uses_fw:
            lb_chain = fw_chain
        if not has:
            int_target = ext_target = "REJECT"
            int_comment = ext_comment = f'"{name} has no endpoints"'
        else:
            int_target = ext_target = "DROP"
            int_comment = ext_comment = f'"{name} has no local endpoints"'
        dport = f"-m {proto} -p {proto}"

        if has_internal:
            n_rules.append(f'-A KUBE-SERVICES -m comment --comment "{name} cluster IP" {dport} -d {sp.cluster_ip} --dport {sp.port} -j {internal_chain}')
        else:
            f_rules.append(f"-A KUBE-SERVICES -m comment --comment {int_comment} {dport} -d {sp.cluster_ip} --dport {sp.port} -j {int_target}")
        for ip in sp.external_ips:
            if has:
                n_rules.append(f'-A KUBE-SERVICES -m comment --comment "{name} external IP" {dport} -d {ip} --dport {sp.port} -j {ext_chain}')
            if not has_external:
                f_rules.append(f"-A KUBE-EXTERNAL-SERVICES -m comment --comment {ext_comment} {dport} -d {ip} --dport {sp.port} -j {ext_target}")
        for ip in sp.lb_ips:
            if has:
                n_rules.append(f'-A KUBE-SERVICES -m comment --comment "{name} loadbalancer IP" {dport} -d {ip} --dport {sp.port} -j {lb_chain}')
            if uses_fw:
                f_rules.append(f'-A KUBE-PROXY-FIREWALL -m comment --comment "{name} traffic not accepted by {fw_chain}" {dport} -d {ip} --dport {sp.port} -j DROP')
        if not has_external:
            for ip in sp.lb_ips:
                f_rules.append(f"-A KUBE-EXTERNAL-SERVICES -m comment --comment {ext_comment} {dport} -d {ip} --dport {sp.port} -j {ext_target}")
        if sp.node_port:
            if has:
                n_rules.append(f"-A KUBE-NODEPORTS -m comment --comment {name} {dport} --dport {sp.node_port} -j {ext_chain}")
            if not has_external:
                f_rules.append(f"-A KUBE-EXTERNAL-SERVICES -m comment --comment {ext_comment} -m addrtype --dst-type LOCAL {dport} --dport {sp.node_port} -j {ext_target}")
        if sp.health_check_node_port:
            f_rules.append(f'-A KUBE-NODEPORTS -m comment --comment "{name} health check node port" -m tcp -p tcp --dport {sp.health_check_node_port} -j ACCEPT')

        # Service and endpoint chains: skipped in a partial sync unless this service changed.
        if only is not None and sp.key not in only:
            continue
        chains, rules = svc_chains, svc_rules
        if has_internal:
            match = f'-m comment --comment "{name} cluster IP" {dport} -d {sp.cluster_ip} --dport {sp.port}'
            if cfg.masquerade_all:
                rules.append(f"-A {internal_chain} {match} -j KUBE-MARK-MASQ")
            elif detect:
                rules.append(f"-A {internal_chain} {match} ! -s {detect[0]} -j KUBE-MARK-MASQ")
        if uses_ext:
            chains.append(f":{ext_chain} - [0:0]")
            if not sp.external_policy_local:
                rules.append(f'-A {ext_chain} -m comment --comment "masquerade traffic for {name} external destinations" -j KUBE-MARK-MASQ')
            else:
                if detect:
                    rules.append(f'-A {ext_chain} -m comment --comment "pod traffic for {name} external destinations" -s {detect[0]} -j {cluster_chain}')
                rules.append(f'-A {ext_chain} -m comment --comment "masquerade LOCAL traffic for {name} external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ')
                rules.append(f'-A {ext_chain} -m comment --comment "route LOCAL traffic for {name} external destinations" -m addrtype --src-type LOCAL -j {cluster_chain}')
            if has_external:
                rules.append(f"-A {ext_chain} -j {external_policy_chain}")
        if uses_fw:
            chains.append(f":{fw_chain} - [0:0]")
            fw = f'-A {fw_chain} -m comment --comment "{name} loadbalancer IP"'
            allow_node = False
            for cidr in sp.lb_source_ranges:
                rules.append(f"{fw} -s {cidr} -j {ext_chain}")
                if cfg.node_ip and ipaddress.ip_address(cfg.node_ip) in ipaddress.ip_network(cidr):
                    allow_node = True
            if allow_node:
                rules.extend(f"{fw} -s {ip} -j {ext_chain}" for ip in sp.lb_ips)
            rules.append(f'-A {fw_chain} -m comment --comment "other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL"')
        for chain, eps, used in ((cluster_chain, cluster, uses_cluster), (local_chain, local, uses_local)):
            if not used:
                continue
            chains.append(f":{chain} - [0:0]")
            if sp.affinity_timeout:
                for ep in eps:
                    c = "" if large else f' -m comment --comment "{name} -> {ep}"'
                    rules.append(f"-A {chain}{c} -m recent --name {sep_chain(sp, str(ep))} --rcheck --seconds {sp.affinity_timeout} --reap -j {sep_chain(sp, str(ep))}")
            n = len(eps)
            for i, ep in enumerate(eps):
                c = "" if large else f' -m comment --comment "{name} -> {ep}"'
                stat = f" -m statistic --mode random --probability {_prob(n - i)}" if i < n - 1 else ""
                rules.append(f"-A {chain}{c}{stat} -j {sep_chain(sp, str(ep))}")
        for ep in reachable:
            sep = sep_chain(sp, str(ep))
            chains.append(f":{sep} - [0:0]")
            c = "" if large else f" -m comment --comment {name}"
            rules.append(f"-A {sep}{c} -s {ep.ip} -j KUBE-MARK-MASQ")
            aff = f" -m recent --name {sep} --set" if sp.affinity_timeout else ""
            rules.append(f"-A {sep}{c}{aff} -m {proto} -p {proto} -j DNAT --to-destination {ep}")

    np_ips = cfg.node_port_ips(nftables=False)
    np_comment = '"kubernetes service nodeports; NOTE: this must be the last rule in this chain"'
    if np_ips is None:
        extra = "" if cfg.localhost_node_ports else " ! -d 127.0.0.0/8"
        n_rules.append(f"-A KUBE-SERVICES -m comment --comment {np_comment} -m addrtype --dst-type LOCAL{extra} -j KUBE-NODEPORTS")
    else:
        n_rules.extend(f"-A KUBE-SERVICES -m comment --comment {np_comment} -d {ip} -j KUBE-NODEPORTS" for ip in np_ips)
    f_rules += [
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
        f'-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark {mark}/{mark} -j ACCEPT',
        '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
    ]
    out = ["*filter", *f_chains, *f_rules, "COMMIT", "*nat", *n_chains, *svc_chains, *n_rules, *svc_rules, "COMMIT"]
    return "\n".join(out) + "\n"


def _ensure_jumps(meter: _Meter, netns: Netns) -> None:
    """EnsureChain + EnsureRule(Prepend) for every jump, one iptables process per step, as kube-proxy does."""
    for table, chain, src, comment, extra in JUMPS:
        meter.run(netns, [*IPTABLES, "-t", table, "-N", chain], check=False)  # exists: fine
        spec = [*extra, *(["-m", "comment", "--comment", comment] if comment else []), "-j", chain]
        if meter.run(netns, [*IPTABLES, "-t", table, "-C", src, *spec], check=False).returncode != 0:
            meter.run(netns, [*IPTABLES, "-t", table, "-I", src, *spec])


def load_iptables(netns: Netns, state: ClusterState, node: str, *, cluster_cidr: str | None = None,
                  timeout: float | None = None) -> LoadTiming:
    """Full sync into ``netns``: jump rules, then one iptables-restore. Returns its cost."""
    t0 = time.perf_counter()
    cfg = ProxyConfig.from_state(state, node, cluster_cidr=cluster_cidr)
    text = render_iptables(service_ports(state, node), cfg)
    gen = time.perf_counter() - t0
    meter = _Meter()
    _ensure_jumps(meter, netns)
    meter.run(netns, RESTORE, text.encode(), timeout=timeout)
    return meter.timing("iptables-full", gen, text)


def load_iptables_change(netns: Netns, old: ClusterState, new: ClusterState, node: str, *,
                         cluster_cidr: str | None = None, timeout: float | None = None) -> LoadTiming:
    """Partial sync from ``old`` (already loaded) to ``new``: one iptables-restore --noflush."""
    t0 = time.perf_counter()
    cfg = ProxyConfig.from_state(new, node, cluster_cidr=cluster_cidr)
    new_ports = service_ports(new, node)
    only = changed_services(service_ports(old, node), new_ports)
    text = render_iptables(new_ports, cfg, only=only)
    gen = time.perf_counter() - t0
    meter = _Meter()
    meter.run(netns, RESTORE, text.encode(), timeout=timeout)
    return meter.timing("iptables-partial", gen, text)
