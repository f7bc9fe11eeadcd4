"""The ``calico-ebpf demo``: a lab cluster with our dataplane on every node, real traffic, checked.

:func:`run_demo` builds a :class:`~calico_ebpf.lab.cluster.LabCluster` (two
nodes with three pods each, plus an external client), applies the lab's own
Nodes/Pods/IPPool together with ``examples/demo/*.yaml`` on every node, then
drives real TCP and UDP through the kernel and checks what happened:

1. a ClusterIP service with backends on both nodes, reached from a pod: every
   backend answers, and every backend saw the client pod's own IP;
2. a service without endpoints refuses a connect at once (ICMP port
   unreachable from the datapath, not a timeout);
3. a NetworkPolicy guarding a pod: an allowed pod gets through, another pod's
   connection is dropped, and the datapath's DROP_POLICY counter shows it;
4. a NodePort reached by the external client through a node without a backend:
   that node forwards the flow in VXLAN to the backend's node, the backend sees
   the client's own IP, and the reply finds its way back;
5. connect latencies (p50, p90) through a ClusterIP and straight to a pod.

A check runs when the manifests define the Service it exercises (:data:`CHECKS`).
Every check states its expectation before its result, and prints PASS only
for what it observed; ``DemoResult.passed`` is True only if every check
passed. The lab is torn down afterwards unless ``keep=True``.

>>> result = run_demo(prefix="cebpf-demo")          # doctest: +SKIP
>>> result.passed, [c.passed for c in result.checks]  # doctest: +SKIP
(True, [True, True, True, True, True])
"""

from __future__ import annotations

import glob
import ipaddress
import os
import socket
import statistics
import time
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from calico_ebpf.errors import CalicoEBPFError
from calico_ebpf.lab.cluster import LabCluster, NodeDataplane
from calico_ebpf.lab.topology import LabPod
from calico_ebpf.lab.workload import WorkloadError
from calico_ebpf.maps.enums import Counter, CounterHook, CtFlags
from calico_ebpf.model.state import ClusterState

__all__ = ["DEFAULT_PREFIX", "DEMO_POD_LABELS", "Check", "DemoResult", "default_manifests_dir", "run_demo"]

DEFAULT_PREFIX = "cebpf-demo"

#: Labels the demo adds to lab pods so that examples/demo/policy.yaml can select them
#: (the lab labels pods only with app=echo and their node).
DEMO_POD_LABELS = {"node-1-pod-0": {"role": "frontend"}, "node-2-pod-2": {"role": "db"}}

CLIENT = "node-1-pod-0"  # role=frontend: the client of every check
OTHER_CLIENT = "node-1-pod-1"  # no role: what the policy keeps out
ECHO, EMPTY, DB, NODEPORT = "default/echo", "default/empty", "default/db", "default/echo-nodeport"

REQUESTS_PER_PROTO = 30
LATENCY_SAMPLES = 50
REFUSE_WITHIN = 0.5  # s: "at once" -- a silent drop would take the whole connect timeout
CONNECT_TIMEOUT = 3.0
DENIED_WAIT = 1.5  # s a denied connect is given before we call it dropped
LATENCY_P50_LIMIT_MS = 10.0  # generous: a netns hop costs tens of microseconds on an idle machine
# Connects are paced: the echo servers listen with Python's default backlog of 5,
# and back-to-back connects overflow it (a dropped SYN costs a 1 s retransmit),
# which would measure the server's accept loop, not the path.
LATENCY_PACING = 0.01


def default_manifests_dir() -> str:
    """``examples/demo`` of the source tree this package runs from."""
    return str(Path(__file__).resolve().parents[2] / "examples" / "demo")


@dataclass
class Check:
    """One demo check: what we expected, what we saw, and whether they agree."""

    key: str  # short, stable id: the PASS/FAIL line names it
    name: str
    expect: str
    passed: bool = False
    observed: str = ""
    table: list[tuple[Any, ...]] = field(default_factory=list)  # first row: column names
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "name": self.name,
            "expect": self.expect,
            "passed": self.passed,
            "observed": self.observed,
            "data": self.data,
        }


@dataclass
class DemoResult:
    """Everything the demo did: the lab, what each node applied, the checks and the cleanup."""

    prefix: str
    checks: list[Check] = field(default_factory=list)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    manifests: list[str] = field(default_factory=list)
    kept: bool = False
    leftovers: list[str] | None = None  # after teardown: what still exists with the prefix
    error: str | None = None

    @property
    def passed(self) -> bool:
        return (
            self.error is None
            and bool(self.checks)
            and all(c.passed for c in self.checks)
            and (self.kept or self.leftovers == [])
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "passed": self.passed,
            "kept": self.kept,
            "manifests": self.manifests,
            "nodes": self.nodes,
            "checks": [c.to_dict() for c in self.checks],
            "leftovers": self.leftovers,
            "error": self.error,
        }


# -- input --------------------------------------------------------------------------------------


def load_manifests(directory: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The YAML files of ``directory`` (sorted) and the API objects they hold."""
    files = sorted(glob.glob(os.path.join(directory, "*.yaml")))
    if not files:
        raise CalicoEBPFError(f"demo: no *.yaml manifests in {directory}")
    docs = []
    for path in files:
        with open(path, encoding="utf-8") as fh:
            docs += [d for d in yaml.safe_load_all(fh) if d]
    return files, docs


def demo_state(cluster: LabCluster, docs: list[dict[str, Any]]) -> ClusterState:
    """The lab's manifests, with :data:`DEMO_POD_LABELS` added to its pods, plus ``docs``."""
    lab_docs = cluster.lab.manifests()
    for doc in lab_docs:
        if doc["kind"] == "Pod":
            doc["metadata"]["labels"].update(DEMO_POD_LABELS.get(doc["metadata"]["name"], {}))
    state = ClusterState.from_dicts([*lab_docs, *docs], source=f"demo {cluster.prefix}")
    if state.rejected:
        raise CalicoEBPFError("demo manifests: " + "; ".join(str(e) for e in state.rejected))
    return state


# -- probes -------------------------------------------------------------------------------------


def timed_connect(pod: LabPod, dst: str, port: int, timeout: float) -> tuple[str, float]:
    """Open (and close) one TCP connection from ``pod``.

    Returns ("connected" | "refused" | "timeout" | the errno's text, seconds taken).
    """
    sock = pod.run(socket.socket, socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        t0 = time.perf_counter()
        try:
            sock.connect((dst, port))
            outcome = "connected"
        except ConnectionRefusedError:
            outcome = "refused"
        except TimeoutError:
            outcome = "timeout"
        except OSError as exc:
            outcome = os.strerror(exc.errno) if exc.errno else type(exc).__name__
        return outcome, time.perf_counter() - t0


def counter_sum(nd: NodeDataplane, ifname: str, counter: Counter) -> int:
    """``counter`` on interface ``ifname`` of a node, both tc hooks together."""
    ifindex = nd.node.netns.ifindex(ifname)
    return sum(
        nd.dp.counters(ifindex, hook)[counter] for hook in (CounterHook.TC_INGRESS, CounterHook.TC_EGRESS)
    )


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


class _Scenario:
    """What the checks need: the cluster, the applied state, and helpers to look things up."""

    def __init__(self, cluster: LabCluster, state: ClusterState):
        self.cluster = cluster
        self.state = state
        self.pods = {p.name: p for p in cluster.lab.pods}

    def service(self, key: str, protocol: str = "TCP") -> tuple[str, int]:
        svc = self.state.services.get(key)
        if svc is None or not svc.cluster_ips:
            raise CalicoEBPFError(f"demo manifests: no ClusterIP Service {key}")
        for p in svc.ports:
            if p.protocol == protocol:
                return svc.cluster_ips[0], p.port
        raise CalicoEBPFError(f"demo manifests: Service {key} has no {protocol} port")

    def backends(self, key: str) -> list[LabPod]:
        """The lab pods the service's EndpointSlices name (by targetRef, else by address)."""
        by_ip = {p.ip: p for p in self.pods.values()}
        out = []
        for sl in self.state.slices_for(key):
            for ep in sl.endpoints:
                if ep.target_pod:
                    out.append(self.pods[ep.target_pod.split("/", 1)[1]])
                else:
                    out += [by_ip[a] for a in ep.addresses if a in by_ip]
        return out

    def node_of(self, pod: LabPod) -> NodeDataplane:
        return self.cluster.dataplanes[pod.node.name]


# -- checks -------------------------------------------------------------------------------------


def check_cluster_ip(sc: _Scenario) -> Check:
    client = sc.pods[CLIENT]
    backends = sc.backends(ECHO)
    nodes = sorted({b.node.name for b in backends})
    vip, port = sc.service(ECHO, "TCP")
    _, uport = sc.service(ECHO, "UDP")
    check = Check(
        "cluster-ip",
        f"ClusterIP {ECHO} {vip}:{port} from {client.name} ({client.ip}), {REQUESTS_PER_PROTO} TCP + "
        f"{REQUESTS_PER_PROTO} UDP requests",
        f"all {len(backends)} backends (on {', '.join(nodes)}) answer over TCP and UDP, and each saw "
        f"the client's own IP {client.ip}",
    )
    hits: dict[str, Tally] = {b.name: Tally() for b in backends}
    seen: dict[str, set[str]] = {b.name: set() for b in backends}
    failures: list[str] = []
    for proto, p in (("tcp", port), ("udp", uport)):
        for _ in range(REQUESTS_PER_PROTO):
            try:
                reply = client.request(vip, p, proto=proto, timeout=CONNECT_TIMEOUT)
            except WorkloadError as exc:
                failures.append(str(exc))
                continue
            hits.setdefault(reply.server, Tally())[proto] += 1
            seen.setdefault(reply.server, set()).add(reply.peer_ip)
    check.table = [("BACKEND", "NODE", "POD IP", "TCP", "UDP", "SOURCE IP SEEN")]
    for b in backends:
        check.table.append(
            (
                b.name,
                b.node.name,
                b.ip,
                hits[b.name]["tcp"],
                hits[b.name]["udp"],
                ",".join(sorted(seen[b.name])) or "-",
            )
        )
    strangers = sorted(set(hits) - {b.name for b in backends})
    all_answered = all(hits[b.name]["tcp"] and hits[b.name]["udp"] for b in backends)
    preserved = all(s == {client.ip} for s in seen.values() if s)
    check.passed = not failures and not strangers and all_answered and preserved
    check.observed = (
        f"{sum(sum(t.values()) for t in hits.values())}/{2 * REQUESTS_PER_PROTO} answered"
        f"{'; failed: ' + failures[0] if failures else ''}"
        f"{'; unexpected servers: ' + ', '.join(strangers) if strangers else ''}; "
        f"source IPs seen: {', '.join(sorted(set().union(*seen.values()))) or 'none'}"
    )
    check.data = {
        "vip": vip,
        "port": port,
        "client": client.ip,
        "backends": {
            b.name: {
                "node": b.node.name,
                "ip": b.ip,
                "tcp": hits[b.name]["tcp"],
                "udp": hits[b.name]["udp"],
                "source_ips": sorted(seen[b.name]),
            }
            for b in backends
        },
        "failures": failures,
    }
    return check


def check_no_endpoints(sc: _Scenario) -> Check:
    client = sc.pods[CLIENT]
    vip, port = sc.service(EMPTY)
    nd = sc.node_of(client)
    attempts = 5
    check = Check(
        "no-endpoints",
        f"Service {EMPTY} {vip}:{port} without endpoints, {attempts} connects from {client.name}",
        f"every connect is refused (ECONNREFUSED) within {REFUSE_WITHIN * 1e3:.0f} ms, "
        f"and the datapath counts NAT_NO_BACKEND on {client.veth}",
    )
    before = counter_sum(nd, client.veth, Counter.NAT_NO_BACKEND)
    results = [timed_connect(client, vip, port, CONNECT_TIMEOUT) for _ in range(attempts)]
    counted = counter_sum(nd, client.veth, Counter.NAT_NO_BACKEND) - before
    outcomes = Tally(o for o, _ in results)
    slowest = max(t for _, t in results)
    check.passed = outcomes == {"refused": attempts} and slowest < REFUSE_WITHIN and counted >= attempts
    check.observed = (
        f"{', '.join(f'{n} {o}' for o, n in outcomes.items())}; slowest {slowest * 1e3:.2f} ms; "
        f"NAT_NO_BACKEND +{counted}"
    )
    check.data = {
        "vip": vip,
        "port": port,
        "outcomes": dict(outcomes),
        "slowest_s": slowest,
        "nat_no_backend": counted,
    }
    return check


def check_policy(sc: _Scenario) -> Check:
    allowed, denied = sc.pods[CLIENT], sc.pods[OTHER_CLIENT]
    vip, port = sc.service(DB)
    (db,) = sc.backends(DB)
    nd = sc.node_of(db)
    check = Check(
        "policy",
        f"NetworkPolicy default/db-allow-frontend guarding {db.name} ({db.ip}) behind {DB} {vip}:{port}",
        f"{allowed.name} (role=frontend) gets an answer showing its own IP; {denied.name} (no role) "
        f"gets nothing within {DENIED_WAIT} s, and {db.name}'s veth counts DROP_POLICY",
    )
    before = counter_sum(nd, db.veth, Counter.DROP_POLICY)
    try:
        reply = allowed.request(vip, port, timeout=CONNECT_TIMEOUT)
        allowed_seen = f"answered by {reply.server}, saw {reply.peer_ip}"
        allowed_ok = reply.server == db.name and reply.peer_ip == allowed.ip
    except WorkloadError as exc:
        allowed_seen, allowed_ok = f"failed: {exc}", False
    outcome, took = timed_connect(denied, vip, port, DENIED_WAIT)
    dropped = counter_sum(nd, db.veth, Counter.DROP_POLICY) - before
    check.table = [
        ("FROM", "ROLE", "TO", "RESULT"),
        (allowed.name, "frontend", f"{vip}:{port}", allowed_seen),
        (denied.name, "-", f"{vip}:{port}", f"{outcome} after {took:.2f} s"),
    ]
    check.passed = allowed_ok and outcome == "timeout" and dropped >= 1
    check.observed = f"allowed: {allowed_seen}; denied: {outcome} after {took:.2f} s; DROP_POLICY +{dropped}"
    check.data = {
        "allowed": {"from": allowed.ip, "result": allowed_seen, "ok": allowed_ok},
        "denied": {"from": denied.ip, "result": outcome, "seconds": took},
        "drop_policy": dropped,
    }
    return check


def check_nodeport(sc: _Scenario) -> Check:
    ext = sc.cluster.lab.external
    svc = sc.state.services[NODEPORT]
    node_port = next(p.node_port for p in svc.ports if p.node_port)
    backends = sc.backends(NODEPORT)
    backend_nodes = {b.node.name for b in backends}
    entry = next(n for n in sc.cluster.lab.nodes if n.name not in backend_nodes)
    attempts = 5
    check = Check(
        "nodeport-vxlan",
        f"NodePort {NODEPORT} {entry.underlay_ip}:{node_port} ({entry.name}, no local backend) from the "
        f"external client {ext.ip}, {attempts} TCP + {attempts} UDP requests",
        f"every request is answered by a backend on {', '.join(sorted(backend_nodes))} that saw the "
        f"client's own IP {ext.ip}, and {entry.name}'s conntrack marks each flow NP_FWD (sent on in VXLAN)",
    )
    answers: Tally = Tally()
    failures: list[str] = []
    for proto in ("tcp", "udp"):
        for _ in range(attempts):
            try:
                reply = ext.request(entry.underlay_ip, node_port, proto=proto, timeout=CONNECT_TIMEOUT)
            except WorkloadError as exc:
                failures.append(str(exc))
                continue
            answers[(proto, reply.server, reply.peer_ip)] += 1
    check.table = [("PROTO", "ANSWERED BY", "NODE", "SOURCE IP SEEN", "REQUESTS")]
    for (proto, server, peer), n in sorted(answers.items()):
        node = sc.pods[server].node.name if server in sc.pods else "?"
        check.table.append((proto, server, node, peer, n))
    good = sum(
        n
        for (_, server, peer), n in answers.items()
        if server in {b.name for b in backends} and peer == ext.ip
    )
    # The entry node's own record of what it did: flows from the client it forwarded to another node.
    ct = sc.cluster.dataplane(entry.name).maps.conntrack
    forwarded = Tally(
        str(r.proto)
        for r in ct.records()
        if r.src == ipaddress.IPv4Address(ext.ip) and CtFlags.NP_FWD in r.value.flags
    )
    check.passed = not failures and good == 2 * attempts and sum(forwarded.values()) >= 2 * attempts
    check.observed = (
        f"{good}/{2 * attempts} answered by a remote backend that saw {ext.ip}; {entry.name} "
        f"conntrack: {', '.join(f'{n} {p}' for p, n in sorted(forwarded.items())) or 'no'} "
        f"NP_FWD flows from {ext.ip}" + (f"; failed: {failures[0]}" if failures else "")
    )
    check.data = {
        "entry_node": entry.name,
        "node_port": node_port,
        "client": ext.ip,
        "answers": [{"proto": k[0], "server": k[1], "peer_ip": k[2], "count": n} for k, n in answers.items()],
        "np_fwd_flows": dict(forwarded),
        "failures": failures,
    }
    return check


def check_latency(sc: _Scenario) -> Check:
    client = sc.pods[CLIENT]
    vip, port = sc.service(ECHO)
    remote = next(b for b in sc.backends(ECHO) if b.node is not client.node)
    paths = [
        (f"ClusterIP {vip}:{port} (DNAT, any backend)", vip, port),
        (f"pod IP {remote.ip}:8080 ({remote.name}, no service)", remote.ip, 8080),
    ]
    check = Check(
        "latency",
        f"TCP connect latency from {client.name}, {LATENCY_SAMPLES} connects per path "
        f"({LATENCY_PACING * 1e3:.0f} ms apart)",
        f"every connect succeeds and each path's p50 is below {LATENCY_P50_LIMIT_MS:.0f} ms",
    )
    check.table = [("PATH", "OK", "P50 MS", "P90 MS", "MAX MS")]
    ok = True
    for label, dst, p in paths:
        results = []
        for _ in range(LATENCY_SAMPLES):
            results.append(timed_connect(client, dst, p, CONNECT_TIMEOUT))
            time.sleep(LATENCY_PACING)
        times = [t * 1e3 for o, t in results if o == "connected"]
        good = len(times) == LATENCY_SAMPLES
        p50 = statistics.median(times) if times else float("nan")
        p90 = _percentile(times, 90) if times else float("nan")
        ok = ok and good and p50 < LATENCY_P50_LIMIT_MS
        check.table.append(
            (
                label,
                f"{len(times)}/{LATENCY_SAMPLES}",
                f"{p50:.3f}",
                f"{p90:.3f}",
                f"{max(times, default=float('nan')):.3f}",
            )
        )
        check.data[dst] = {"ok": len(times), "p50_ms": p50, "p90_ms": p90}
    check.passed = ok
    check.observed = "; ".join(
        f"{row[0].split(' ')[0]} {row[0].split(' ')[1]} p50 {row[2]} ms ({row[1]} ok)"
        for row in check.table[1:]
    )
    return check


#: The checks in order, each with the Service it exercises: a check runs only when the
#: manifests define that Service (so a manifest directory without a NodePort skips check 4).
CHECKS: list[tuple[str, Callable[[_Scenario], Check]]] = [
    (ECHO, check_cluster_ip),
    (EMPTY, check_no_endpoints),
    (DB, check_policy),
    (NODEPORT, check_nodeport),
    (ECHO, check_latency),
]


# -- output -------------------------------------------------------------------------------------


def format_table(rows: list[tuple[Any, ...]], indent: str = "    ") -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(indent + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def format_check(i: int, check: Check) -> str:
    lines = [f"[{i}] {check.name}"]
    if check.table:
        lines.append(format_table(check.table))
    lines += [
        f"    expect:   {check.expect}",
        f"    observed: {check.observed}",
        f"    {'PASS' if check.passed else 'FAIL'} {check.key}",
    ]
    return "\n".join(lines)


def keep_instructions(cluster_prefix: str, nodes: dict[str, dict[str, Any]]) -> str:
    first = next(iter(nodes.values()), {}).get("pin_dir", "<pin dir>")
    return "\n".join(
        [
            f"lab {cluster_prefix} kept (namespaces {cluster_prefix}-*, programs attached, maps pinned):",
            *(f"  {name}: pins {n['pin_dir']}" for name, n in nodes.items()),
            "explore its maps from Python:",
            "  from calico_ebpf.maps.named import NodeMaps",
            f"  maps = NodeMaps({first!r})",
            "  maps.nat_frontends_hash.items(); maps.conntrack.to_pandas()",
            f"  (or: python examples/explore_maps.py --pin-dir {first})",
            f"  calico-ebpf dump nat --pin-dir {first}",
            "send traffic from a pod (echo servers answer on :8080 with the source IP they saw):",
            "  from calico_ebpf.lab import request; from calico_ebpf.kernel.netns import Netns",
            f"  request('10.96.0.10', 80, netns=Netns.open('{cluster_prefix}-node-1-pod-0'))",
            "trace a packet through a node's programs and live maps:",
            f"  python examples/trace_packet.py --prefix {cluster_prefix} --node node-1 \\",
            "      'tcp 10.244.0.1:40000 -> 10.96.0.10:80'",
            f"remove it:    calico-ebpf demo --down --prefix {cluster_prefix}",
        ]
    )


# -- the demo -----------------------------------------------------------------------------------


def run_demo(
    prefix: str = DEFAULT_PREFIX,
    *,
    manifests_dir: str | None = None,
    keep: bool = False,
    say: Callable[[str], None] = print,
) -> DemoResult:
    """Build the lab, apply the demo manifests on every node, run the checks, tear down (unless ``keep``).

    ``say`` receives the human-readable report line by line (pass ``lambda _: None`` for none).
    Setup errors propagate after teardown; a failed check does not raise, it sets
    ``passed`` False.
    """
    result = DemoResult(prefix=prefix, kept=keep)
    files, docs = load_manifests(manifests_dir or default_manifests_dir())
    result.manifests = [os.path.relpath(f) for f in files]
    cluster = LabCluster(nodes=2, pods_per_node=3, prefix=prefix)
    t0 = time.monotonic()
    say(
        f"calico-ebpf demo: lab {prefix}, 2 nodes x 3 pods and an external client, our datapath on every node"
    )
    cluster.up()
    try:
        lab = cluster.lab
        say(
            f"  lab up, datapath loaded on {len(cluster.dataplanes)} nodes in {time.monotonic() - t0:.1f} s"
        )
        state = demo_state(cluster, docs)
        reports = cluster.apply(state)
        say(f"  applied {', '.join(result.manifests)} with the lab's Nodes, Pods and IPPool on every node:")
        for name, nd in cluster.dataplanes.items():
            report = reports[name]
            isolated = sum(1 for slot in report.policy.slots.values() if slot >= 0)
            say(
                f"    {str(report).splitlines()[0]}; policy: {report.policy.programs_loaded} program(s) "
                f"loaded, {isolated} endpoint direction(s) isolated"
            )
            say(
                f"      attached to {', '.join(f'{i} ({k})' for i, k in nd.attached.items())} "
                f"in netns {nd.node.netns.name}; NodePort forwarding: {nd.nodeport_tunnel or 'off'}; "
                f"pins {nd.pin_dir}"
            )
            result.nodes[name] = {
                "pin_dir": nd.pin_dir,
                "netns": nd.node.netns.name,
                "attached": nd.attached,
                "nodeport_tunnel": nd.nodeport_tunnel,
                "underlay_ip": nd.node.underlay_ip,
                "apply": report.to_dict(),
            }
        say(
            "  pods: "
            + ", ".join(
                f"{p.name} {p.ip}"
                + (
                    f" ({','.join(f'{k}={v}' for k, v in DEMO_POD_LABELS[p.name].items())})"
                    if p.name in DEMO_POD_LABELS
                    else ""
                )
                for p in lab.pods
            )
        )
        say("")
        scenario = _Scenario(cluster, state)
        for service, run_check in CHECKS:
            if service not in state.services:
                continue
            check = run_check(scenario)
            result.checks.append(check)
            say(format_check(len(result.checks), check))
            say("")
    except BaseException as exc:
        if not isinstance(exc, Exception):
            keep = False  # Ctrl-C: never leave a half-shown lab behind
        result.error = f"{type(exc).__name__}: {exc}"
        result.kept = False
        _teardown(cluster, result, say)
        raise
    if keep:
        say(keep_instructions(prefix, result.nodes))
    else:
        _teardown(cluster, result, say)
    passed = sum(c.passed for c in result.checks)
    say(
        f"{'PASS' if result.passed else 'FAIL'}: {passed}/{len(result.checks)} checks passed "
        f"in {time.monotonic() - t0:.1f} s"
    )
    return result


def _teardown(cluster: LabCluster, result: DemoResult, say: Callable[[str], None]) -> None:
    removed = cluster.down()
    result.leftovers = LabCluster.find_leftovers(cluster.prefix)
    if result.leftovers:
        say(f"teardown: LEFT BEHIND {', '.join(result.leftovers)}")
    else:
        say(
            f"teardown: programs detached, pins under {cluster.pin_root} removed, {len(removed)} namespaces "
            f"deleted; nothing with prefix {cluster.prefix} is left"
        )
