"""kube-proxy's nftables mode: the transaction it runs, loaded with ``nft -f`` into a netns.

Layout (table ``ip kube-proxy``): base chains ``filter-*`` / ``nat-*``, the
``services`` chain dispatching through the verdict maps ``service-ips``
(ip . proto . port) and ``service-nodeports`` (proto . port), one
``service-<hash>-ns/name/proto/port`` chain per service port holding the
masquerade rule and ``numgen random mod N vmap { i : goto endpoint-... }``,
one ``endpoint-<hash>-ns/name/proto/port__ip/port`` chain per endpoint with
the hairpin mark and ``dnat to``, ``external-*`` chains for NodePort /
external IPs, ``no-endpoint-*`` maps to ``reject-chain``, ``masquerading``.

Every sync (full or partial) first lists the table's chains and sets
(``nft --json list chains|sets ip``: kube-proxy does that to find stale
chains), then runs one transaction. Full sync: the whole setup, the maps
flushed and refilled, every service chain added+flushed+filled. Partial sync
(kube-proxy >= 1.31): no setup, map elements diffed against the previous
sync (add / delete+add / delete), and only the chains of services whose
Service or EndpointSlices changed are flushed and refilled; chains that went
away are flushed now (kube-proxy deletes them in a later sync, after 1 s).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from benchmarks.baselines import (
    KPEndpoint,
    KPServicePort,
    LoadTiming,
    ProxyConfig,
    _Meter,
    changed_services,
    service_ports,
)
from calico_ebpf.model import ClusterState

if TYPE_CHECKING:
    from calico_ebpf.kernel.netns import Netns

__all__ = ["NftSync", "endpoint_chain", "load_nftables", "load_nftables_change", "render_nftables", "service_chain_base"]

T = "ip kube-proxy"
NFT = ["nft", "-f", "-"]
LIST = (["nft", "--json", "list", "chains", "ip"], ["nft", "--json", "list", "sets", "ip"])


def _hash_and_truncate(name: str) -> str:
    h = base64.b32encode(hashlib.sha256(name.encode()).digest()).decode()[:8]
    name = f"{h}-{name}"
    return name if len(name) <= 240 else name[:237] + "..."  # chainNameBaseLengthMax = 256 - 16


def service_chain_base(sp: KPServicePort) -> str:
    """``HASH-ns/name/proto/portname``, e.g. ``ULMVA6XW-ns1/svc1/tcp/p80``."""
    return _hash_and_truncate(f"{sp.namespace}/{sp.name}/{sp.protocol}/{sp.port_name}")


def endpoint_chain(sp: KPServicePort, ep: KPEndpoint) -> str:
    """``endpoint-HASH-ns/name/proto/portname__ip/port``."""
    return "endpoint-" + _hash_and_truncate(
        f"{sp.namespace}/{sp.name}/{sp.protocol}/{sp.port_name}__{ep.ip.replace(':', '.')}/{ep.port}")


class NftSync:
    """What one sync writes: chains with their rules, and the elements of each set/map."""

    def __init__(self) -> None:
        self.chains: dict[str, list[str]] = {}  # service/endpoint chain -> rules, in order
        self.chain_service: dict[str, str] = {}  # chain -> service key
        self.elements: dict[str, dict[str, str]] = {m: {} for m in (
            "cluster-ips", "service-ips", "service-nodeports", "no-endpoint-services", "no-endpoint-nodeports", "firewall-ips")}
        self.affinity_sets: dict[str, int] = {}

    def chain(self, name: str, key: str) -> list[str]:
        self.chain_service[name] = key
        return self.chains.setdefault(name, [])


def _setup(cfg: ProxyConfig, service_cidrs: Sequence[str]) -> list[str]:
    """setupNFTables(): table, base chains, jumps, helper chains, sets and maps."""
    mark = cfg.masquerade_mark
    out = [f'add table {T} {{ comment "rules for kube-proxy" ; }}']
    for name, typ, hook, prio in (
            ("filter-prerouting-pre-dnat", "filter", "prerouting", -110), ("filter-output-pre-dnat", "filter", "output", -110),
            ("filter-input", "filter", "input", 0), ("filter-forward", "filter", "forward", 0),
            ("filter-output", "filter", "output", 0), ("nat-prerouting", "nat", "prerouting", -100),
            ("nat-output", "nat", "output", -100), ("nat-postrouting", "nat", "postrouting", 100)):
        out += [f"add chain {T} {name} {{ type {typ} hook {hook} priority {prio} ; }}", f"flush chain {T} {name}"]
    for c in ("service-endpoints-check", "nodeport-endpoints-check", "firewall-check", "cluster-ips-check",
              "services", "masquerading", "mark-for-masquerade"):
        out += [f"add chain {T} {c}", f"flush chain {T} {c}"]
    out += [
        f"add rule {T} filter-prerouting-pre-dnat ct state new jump firewall-check",
        f"add rule {T} filter-output-pre-dnat ct state new jump firewall-check",
        f"add rule {T} filter-forward ct state new jump service-endpoints-check",
        f"add rule {T} filter-forward ct state new jump cluster-ips-check",
        f"add rule {T} filter-input ct state new jump nodeport-endpoints-check",
        f"add rule {T} filter-input ct state new jump service-endpoints-check",
        f"add rule {T} filter-output ct state new jump service-endpoints-check",
        f"add rule {T} filter-output ct state new jump cluster-ips-check",
        f"add rule {T} nat-output jump services",
        f"add rule {T} nat-prerouting jump services",
        f"add rule {T} nat-postrouting jump masquerading",
        f"add rule {T} mark-for-masquerade mark set mark or {mark}",
        f"add rule {T} masquerading mark and {mark} == 0 return",
        f"add rule {T} masquerading mark set mark xor {mark}",
        f"add rule {T} masquerading masquerade fully-random",
        f'add set {T} cluster-ips {{ type ipv4_addr ; comment "Active ClusterIPs" ; }}',
        f'add set {T} nodeport-ips {{ type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }}',
        f"flush set {T} nodeport-ips",
    ]
    np_ips = cfg.node_port_ips(nftables=True) or ()
    if np_ips:
        out.append(f"add element {T} nodeport-ips {{ {', '.join(np_ips)} }}")
    out += [
        f'add map {T} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }}',
        f'add map {T} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }}',
        f'add chain {T} reject-chain {{ comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }}',
        f"flush chain {T} reject-chain",
        f"add rule {T} reject-chain reject",
        f"add rule {T} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services",
        f"add rule {T} nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports",
        f'add map {T} firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }}',
        f"add rule {T} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips",
        f'add map {T} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }}',
        f'add map {T} service-nodeports {{ type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }}',
        f"add rule {T} services ip daddr . meta l4proto . th dport vmap @service-ips",
        f"add rule {T} services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports",
        f'add rule {T} cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"',
    ]
    if service_cidrs:
        out.append(f'add rule {T} cluster-ips-check ip daddr {{ {", ".join(service_cidrs)} }} drop comment "Drop traffic to unallocated ClusterIPs"')
    return out


def build_sync(ports: Sequence[KPServicePort], cfg: ProxyConfig) -> NftSync:
    """The chains, rules and map elements kube-proxy's syncProxyRules() produces."""
    s = NftSync()
    e = s.elements
    detect = cfg.cluster_cidrs[:1]
    for sp in ports:
        key, proto, name = sp.key, sp.protocol, sp.name_string
        base = service_chain_base(sp)
        cluster_chain, local_chain = f"service-{base}", f"local-{base}"
        ext_chain, fw_chain = f"external-{base}", f"firewall-{base}"
        cluster, local, reachable, has = sp.categorize()
        uses_cluster = bool(cluster) and sp.uses_cluster_endpoints
        uses_local = bool(local) and sp.uses_local_endpoints
        internal_chain, has_internal = cluster_chain, has
        if sp.internal_policy_local:
            internal_chain, has_internal = local_chain, has and bool(local)
        external_policy_chain, has_external = cluster_chain, has
        if sp.external_policy_local:
            external_policy_chain, has_external = local_chain, has and bool(local)
        uses_ext = has and sp.externally_accessible
        int_verdict = ext_verdict = "goto reject-chain" if not has else "drop"
        comment = f'comment "{name}"'

        e["cluster-ips"][sp.cluster_ip] = ""
        if has_internal:
            e["service-ips"][f"{sp.cluster_ip} . {proto} . {sp.port}"] = f"goto {internal_chain}"
        else:
            e["no-endpoint-services"][f"{sp.cluster_ip} . {proto} . {sp.port} {comment}"] = int_verdict
        for ip in sp.external_ips:
            if has:
                e["service-ips"][f"{ip} . {proto} . {sp.port}"] = f"goto {ext_chain}"
            if not has_external:
                e["no-endpoint-services"][f"{ip} . {proto} . {sp.port} {comment}"] = ext_verdict
        uses_fw = bool(sp.lb_ips) and bool(sp.lb_source_ranges)
        for ip in sp.lb_ips:
            if has:
                e["service-ips"][f"{ip} . {proto} . {sp.port}"] = f"goto {ext_chain}"
            if uses_fw:
                e["firewall-ips"][f"{ip} . {proto} . {sp.port}"] = f"goto {fw_chain}"
            if not has_external:
                e["no-endpoint-services"][f"{ip} . {proto} . {sp.port} {comment}"] = ext_verdict
        if sp.node_port:
            if has:
                e["service-nodeports"][f"{proto} . {sp.node_port}"] = f"goto {ext_chain}"
            if not has_external:
                e["no-endpoint-nodeports"][f"{proto} . {sp.node_port} {comment}"] = ext_verdict

        # Chains: the order of creation matches kube-proxy's loop.
        for ep in reachable:
            s.chain(endpoint_chain(sp, ep), key)
        if uses_cluster:
            s.chain(cluster_chain, key)
        if uses_local:
            s.chain(local_chain, key)
        if uses_ext:
            s.chain(ext_chain, key)
        if uses_fw:
            rules = s.chain(fw_chain, key)
            sources = list(sp.lb_source_ranges)
            if cfg.node_ip and any(ipaddress.ip_address(cfg.node_ip) in ipaddress.ip_network(c) for c in sp.lb_source_ranges):
                sources += list(sp.lb_ips)
            rules.append(f"ip saddr != {{ {', '.join(sources)} }} drop")
        if has_internal:
            match = f"ip daddr {sp.cluster_ip} {proto} dport {sp.port}"
            if cfg.masquerade_all:
                s.chain(internal_chain, key).append(f"{match} jump mark-for-masquerade")
            elif detect:
                s.chain(internal_chain, key).append(f"{match} ip saddr != {detect[0]} jump mark-for-masquerade")
        if uses_ext:
            rules = s.chain(ext_chain, key)
            if not sp.external_policy_local:
                rules.append("jump mark-for-masquerade")
            else:
                if detect:
                    rules.append(f'ip saddr {detect[0]} goto {cluster_chain} comment "short-circuit pod traffic"')
                rules.append('fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"')
                rules.append(f'fib saddr type local goto {cluster_chain} comment "short-circuit local traffic"')
            if has_external:
                rules.append(f"goto {external_policy_chain}")
        if sp.affinity_timeout:
            for ep in reachable:
                s.affinity_sets["affinity-" + endpoint_chain(sp, ep)[len("endpoint-"):]] = sp.affinity_timeout
        for chain, eps, used in ((cluster_chain, cluster, uses_cluster), (local_chain, local, uses_local)):
            if not used:
                continue
            rules = s.chain(chain, key)
            if sp.affinity_timeout:
                for ep in eps:
                    ec = endpoint_chain(sp, ep)
                    rules.append(f"ip saddr @affinity-{ec[len('endpoint-'):]} goto {ec}")
            vmap = " , ".join(f"{i} : goto {endpoint_chain(sp, ep)}" for i, ep in enumerate(eps))
            rules.append(f"numgen random mod {len(eps)} vmap {{ {vmap} }}")
        for ep in reachable:
            ec = endpoint_chain(sp, ep)
            rules = s.chain(ec, key)
            rules.append(f"ip saddr {ep.ip} jump mark-for-masquerade")
            if sp.affinity_timeout:
                rules.append(f"update @affinity-{ec[len('endpoint-'):]} {{ ip saddr }}")
            rules.append(f"meta l4proto {proto} dnat to {ep}")
    return s


def _element(m: str, key: str, value: str) -> str:
    return f"{m} {{ {key} }}" if m == "cluster-ips" else f"{m} {{ {key} : {value} }}"


def _element_key_only(m: str, key: str) -> str:
    return f"{m} {{ {key.split(' comment ')[0]} }}"


def render_nftables(new: NftSync, cfg: ProxyConfig, *, old: NftSync | None = None, changed: set[str] | None = None,
                    service_cidrs: Sequence[str] = ()) -> str:
    """The ``nft -f`` transaction: full when ``old`` is None, else partial for the ``changed`` services."""
    full = old is None
    out: list[str] = _setup(cfg, service_cidrs) if full else []
    if full:
        out += [f"flush {'set' if m == 'cluster-ips' else 'map'} {T} {m}" for m in new.elements]
    for aset, timeout in new.affinity_sets.items():
        out.append(f"add set {T} {aset} {{ type ipv4_addr ; flags dynamic,timeout ; timeout {timeout}s ; }}")
    for chain, rules in new.chains.items():
        if not full and new.chain_service[chain] not in (changed or set()):
            continue
        out += [f"add chain {T} {chain}", f"flush chain {T} {chain}"]
        out += [f"add rule {T} {chain} {r}" for r in rules]
    for m, elems in new.elements.items():
        before = {} if full else old.elements[m]
        for k, v in elems.items():
            if k in before:
                if before[k] != v:
                    out += [f"delete element {T} {_element_key_only(m, k)}", f"add element {T} {_element(m, k, v)}"]
            else:
                out.append(f"add element {T} {_element(m, k, v)}")
        out += [f"delete element {T} {_element_key_only(m, k)}" for k in before if k not in elems]
    if not full:
        out += [f"flush chain {T} {c}" for c in old.chains if c not in new.chains]
        out += [f"delete set {T} {a}" for a in old.affinity_sets if a not in new.affinity_sets]
    return "\n".join(out) + "\n"


def _run_sync(netns: Netns, text: str, mode: str, gen: float, timeout: float | None) -> LoadTiming:
    meter = _Meter()
    for argv in LIST:
        meter.run(netns, argv, check=False)
    meter.run(netns, NFT, text.encode(), timeout=timeout)
    return meter.timing(mode, gen, text)


def load_nftables(netns: Netns, state: ClusterState, node: str, *, cluster_cidr: str | None = None,
                  service_cidrs: Sequence[str] = (), timeout: float | None = None) -> LoadTiming:
    """Full sync into ``netns`` (list chains and sets, then one ``nft -f -`` transaction)."""
    t0 = time.perf_counter()
    cfg = ProxyConfig.from_state(state, node, cluster_cidr=cluster_cidr)
    text = render_nftables(build_sync(service_ports(state, node), cfg), cfg, service_cidrs=service_cidrs)
    return _run_sync(netns, text, "nftables-full", time.perf_counter() - t0, timeout)


def load_nftables_change(netns: Netns, old: ClusterState, new: ClusterState, node: str, *,
                         cluster_cidr: str | None = None, timeout: float | None = None) -> LoadTiming:
    """Partial sync from ``old`` (already loaded) to ``new``: only changed services' chains, element diffs."""
    t0 = time.perf_counter()
    cfg = ProxyConfig.from_state(new, node, cluster_cidr=cluster_cidr)
    old_ports, new_ports = service_ports(old, node), service_ports(new, node)
    old_sync, new_sync = build_sync(old_ports, cfg), build_sync(new_ports, cfg)
    text = render_nftables(new_sync, cfg, old=old_sync, changed=changed_services(old_ports, new_ports))
    return _run_sync(netns, text, "nftables-partial", time.perf_counter() - t0, timeout)
