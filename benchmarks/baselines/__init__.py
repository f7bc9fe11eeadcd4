"""kube-proxy baselines: the rulesets kube-proxy would write, loaded with the real tools.

The two proxiers (``iptables.py``, ``nftables.py``) render the same input the
way kube-proxy structures it: one unit per *service port* with that port's
endpoints (kube-proxy's ServicePortName + EndpointsMap), built here from a
:class:`~calico_ebpf.model.ClusterState` without going through our compiler.
Sources for every structural detail are listed in ``README.md``.

    from benchmarks.baselines import iptables, nftables
    with Netns(prefix="kp") as ns:
        t = iptables.load_iptables(ns, state, "node-1")        # full sync
        c = iptables.load_iptables_change(ns, state, state2, "node-1")   # partial sync
        print(t.wall_s, t.cpu_s, c.wall_s)

Timings (:class:`LoadTiming`) are the tools' wall time and the CPU time of
the child processes (user+sys from ``RUSAGE_CHILDREN`` deltas), plus the time
our Python generator took (``gen_s``, reported apart: kube-proxy's Go code
would take a different time to produce the same text).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import resource
import subprocess
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import attrs

from calico_ebpf.model import ClusterState
from calico_ebpf.model.kubeproxy import PRIMARY

if TYPE_CHECKING:
    from calico_ebpf.kernel.netns import Netns

__all__ = [
    "BaselineError",
    "KPEndpoint",
    "KPServicePort",
    "LoadTiming",
    "ProxyConfig",
    "changed_services",
    "proto_hash",
    "run_measured",
    "service_ports",
]


class BaselineError(RuntimeError):
    """A tool refused the generated rules (carries the tool's stderr)."""


def proto_hash(*parts: str, length: int = 16) -> str:
    """kube-proxy's chain-name hash: base32 (RFC 4648, uppercase) of sha256(concat(parts)), truncated.

    >>> proto_hash("ns1/svc1:p80", "tcp")
    'XPGD46QRK7WJZT7O'
    """
    return base64.b32encode(hashlib.sha256("".join(parts).encode()).digest()).decode()[:length]


@attrs.frozen
class KPEndpoint:
    ip: str
    port: int
    local: bool
    ready: bool
    serving: bool
    terminating: bool

    def __str__(self) -> str:  # kube-proxy's BaseEndpointInfo.String(): "ip:port"
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


@attrs.frozen
class KPServicePort:
    """One kube-proxy service port with its endpoint sets (proxy.CategorizeEndpoints)."""

    namespace: str
    name: str
    port_name: str
    protocol: str  # lower case, as kube-proxy hashes and writes it
    cluster_ip: str
    port: int
    node_port: int | None
    external_ips: tuple[str, ...]
    lb_ips: tuple[str, ...]
    lb_source_ranges: tuple[str, ...]
    external_policy_local: bool
    internal_policy_local: bool
    externally_accessible: bool
    affinity_timeout: int  # 0: no ClientIP affinity
    health_check_node_port: int | None
    endpoints: tuple[KPEndpoint, ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def name_string(self) -> str:
        """ServicePortName.String(): ``ns/name`` plus ``:port`` when the port is named."""
        return f"{self.key}:{self.port_name}" if self.port_name else self.key

    # -- proxy.CategorizeEndpoints ---------------------------------------------------------------
    @property
    def uses_cluster_endpoints(self) -> bool:
        return not self.internal_policy_local or (self.externally_accessible and not self.external_policy_local)

    @property
    def uses_local_endpoints(self) -> bool:
        return self.internal_policy_local or self.external_policy_local

    def categorize(self) -> tuple[list[KPEndpoint], list[KPEndpoint], list[KPEndpoint], bool]:
        """(cluster endpoints, local endpoints, all locally reachable, has endpoints anywhere)."""
        eps = self.endpoints
        ready = [e for e in eps if e.ready]
        fallback = [e for e in eps if e.serving and e.terminating]
        has = bool(ready or fallback)
        cluster: list[KPEndpoint] = []
        local: list[KPEndpoint] = []
        if self.uses_cluster_endpoints:
            cluster = ready or fallback
        if self.uses_local_endpoints:
            local = [e for e in ready if e.local] or [e for e in fallback if e.local]
        reachable = list(dict.fromkeys(cluster + local)) if cluster and local else (cluster or local)
        return cluster, local, reachable, has


@attrs.frozen
class ProxyConfig:
    """The kube-proxy settings the rules depend on (defaults as in a kubeadm-style cluster)."""

    node_name: str
    node_ip: str | None
    node_ips: tuple[str, ...]
    cluster_cidrs: tuple[str, ...]  # local traffic detector (detect-local-mode ClusterCIDR); empty: none
    node_port_addresses: tuple[str, ...] | None  # None: all local addresses (iptables default)
    masquerade_all: bool = False
    localhost_node_ports: bool = True
    masquerade_mark: str = "0x004000"  # fmt.Sprintf("%#08x", 1<<14)

    @classmethod
    def from_state(cls, state: ClusterState, node: str, *, cluster_cidr: str | None = None) -> ProxyConfig:
        n = state.nodes.get(node)
        kp = state.kube_proxy_config
        cidrs = (cluster_cidr,) if cluster_cidr else (kp.cluster_cidrs if kp else ())
        return cls(
            node_name=node,
            node_ip=n.primary_ip(4) if n else None,
            node_ips=n.ips(4) if n else (),
            cluster_cidrs=tuple(c for c in cidrs if ":" not in c),
            node_port_addresses=kp.node_port_addresses if kp else None,
            masquerade_all=kp.masquerade_all if kp else False,
            localhost_node_ports=kp.localhost_node_ports if kp else True,
        )

    def node_port_ips(self, *, nftables: bool) -> tuple[str, ...] | None:
        """Node IPs taking NodePorts; None means "every local address" (iptables' MatchAll)."""
        npa = self.node_port_addresses
        if npa is None:
            if not nftables:
                return None
            npa = (PRIMARY,)  # the nftables proxier's default
        out: list[str] = []
        for ip in self.node_ips:
            addr = ipaddress.ip_address(ip)
            if (PRIMARY in npa and ip == self.node_ip) or any(
                    c != PRIMARY and addr in ipaddress.ip_network(c) for c in npa):
                out.append(ip)
        return tuple(out)


def service_ports(state: ClusterState, node: str) -> list[KPServicePort]:
    """kube-proxy's ServicePortMap + EndpointsMap for IPv4, one entry per service port.

    Headless and ExternalName services are skipped; LoadBalancer ingress with
    ipMode Proxy is not programmed; the backend port is the EndpointSlice port
    with the service port's name and protocol (targetPort is not used).
    """
    out: list[KPServicePort] = []
    for key in sorted(state.services):
        svc = state.services[key]
        if svc.ignored:
            continue
        v4 = [ip for ip in svc.cluster_ips if ":" not in ip]
        if not v4:
            continue
        slices = [s for s in state.slices_for(key) if s.address_type == "IPv4"]
        for p in svc.ports:
            eps: list[KPEndpoint] = []
            for s in slices:
                number = next((sp.port for sp in s.ports if sp.name == p.name and sp.protocol == p.protocol), None)
                if number is None:
                    continue
                for e in s.endpoints:
                    c = e.conditions
                    eps.append(KPEndpoint(e.addresses[0], number, e.node_name == node, c.ready, c.serving, c.terminating))
            # The endpoint slice cache hands endpoints over sorted by their "ip:port" string.
            eps.sort(key=str)
            out.append(KPServicePort(
                namespace=svc.namespace, name=svc.name, port_name=p.name, protocol=p.protocol.lower(),
                cluster_ip=v4[0], port=p.port, node_port=p.node_port,
                external_ips=tuple(ip for ip in svc.external_ips if ":" not in ip),
                lb_ips=tuple(i.ip for i in svc.lb_ingress if i.ip_mode != "Proxy" and ":" not in i.ip),
                lb_source_ranges=tuple(r for r in svc.lb_source_ranges if ":" not in r),
                external_policy_local=svc.external_policy_local,
                internal_policy_local=svc.internal_policy_local,
                externally_accessible=svc.externally_accessible,
                affinity_timeout=svc.affinity_timeout,
                health_check_node_port=svc.health_check_node_port if svc.type == "LoadBalancer" and svc.external_policy_local else None,
                endpoints=tuple(eps),
            ))
    return out


def changed_services(old: Sequence[KPServicePort], new: Sequence[KPServicePort]) -> set[str]:
    """Keys (``ns/name``) of services whose ports or endpoints differ: kube-proxy's UpdatedServices."""
    a = {(p.key, p.port_name, p.protocol): p for p in old}
    b = {(p.key, p.port_name, p.protocol): p for p in new}
    return {k[0] for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


@attrs.frozen
class LoadTiming:
    """What one load cost: tool wall time, child CPU (user+sys), and the size of the input."""

    mode: str
    wall_s: float
    user_s: float
    sys_s: float
    gen_s: float
    input_bytes: int
    input_lines: int
    tool_runs: int
    steps: tuple[tuple[str, float], ...] = ()  # (command, wall seconds) of the slowest runs, slowest first

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    def as_dict(self) -> dict[str, float | int | str]:
        d = attrs.asdict(self)
        d["cpu_s"] = self.cpu_s
        d["steps"] = [[c, round(w, 4)] for c, w in self.steps]
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


class _Meter:
    """Accumulates wall and child CPU time over several tool runs."""

    def __init__(self) -> None:
        self.wall = self.user = self.sys = 0.0
        self.runs = 0
        self.steps: list[tuple[str, float]] = []

    def run(self, netns: Netns, argv: list[str], data: bytes | None = None, *, check: bool = True,
            timeout: float | None = None) -> subprocess.CompletedProcess:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        with netns.enter():
            proc = subprocess.run(argv, input=data, capture_output=True, timeout=timeout, check=False)
        took = time.perf_counter() - t0
        self.wall += took
        self.steps.append((" ".join(a for a in argv if not a.isdigit() and a not in ("-w", "-W"))[:60], took))
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.user += after.ru_utime - before.ru_utime
        self.sys += after.ru_stime - before.ru_stime
        self.runs += 1
        if check and proc.returncode != 0:
            raise BaselineError(f"{' '.join(argv)} failed (exit {proc.returncode}) in netns {netns.name}: "
                                f"{proc.stderr.decode(errors='replace')[-2000:]}")
        return proc

    def timing(self, mode: str, gen_s: float, text: str) -> LoadTiming:
        slowest = tuple(sorted(self.steps, key=lambda s: -s[1])[:3])
        return LoadTiming(mode, self.wall, self.user, self.sys, gen_s, len(text.encode()), text.count("\n"), self.runs, slowest)


def run_measured(netns: Netns, argv: list[str], data: bytes | None = None) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``argv`` inside ``netns``; returns (result, wall seconds, child CPU seconds)."""
    m = _Meter()
    proc = m.run(netns, argv, data)
    return proc, m.wall, m.user + m.sys


def _lines(parts: Iterable[str]) -> str:
    return "".join(f"{p}\n" for p in parts)
