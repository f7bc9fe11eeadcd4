#!/usr/bin/env python3
"""Cross-node dataplane cost in the lab: iperf3 throughput, CPU per Gbit, NodePort connect latency.

Three labs (``calico_ebpf.lab``) of two nodes with one pod each, built the
same way (fabric bridge, ``vxlan.calico`` overlay, ``cali…`` veths) and up at
the same time, differing only in the dataplane:

* **ours**: a :class:`~calico_ebpf.lab.cluster.LabCluster`: our datapath
  attached on both nodes (data interface and pod veths), no netfilter rules;
* **iptables**: kube-proxy's iptables ruleset for the same Services
  (``benchmarks/baselines``, ``iptables-restore`` with the nft backend) in
  both nodes' namespaces, no BPF;
* **kernel**: plain kernel routing, nothing attached and no rules; with no
  service load balancer the client targets the backend pod's IP directly,
  so this is the floor of the path (VXLAN + veths), not a dataplane.

**Throughput**: iperf3 (TCP, one stream, ``-t`` seconds) from the pod on
node-1 to the ClusterIP whose only endpoint is the pod on node-2, across
the VXLAN overlay. The three are run in alternating rounds (the order
rotates each round), so they share the machine's noise. Every run must show
the backend accepting the client's own IP (DNAT, no SNAT) in the iperf3
server's log, and the dataplane's own evidence: for ours a NAT_REV conntrack
entry for the ClusterIP on node-1, for iptables a growing packet count on
kube-proxy's DNAT rule.

**CPU per Gbit** (core-seconds per Gbit carried), two ways, measured over
each iperf3 client's lifetime:

* ``involved`` (the headline figure): CPU time of the iperf3 client (its
  ``RUSAGE_CHILDREN`` delta) + the iperf3 server (``/proc/PID/stat``) + the
  ``ksoftirqd/N`` threads. This kernel has no ``IRQ_TIME_ACCOUNTING``, so
  softirq work (veth and VXLAN receive, our tc programs, netfilter hooks) is
  charged to the task it interrupts: almost always one of these;
* ``machine``: the whole machine's busy time from ``/proc/stat`` (user, nice,
  system, irq, softirq; not idle, iowait or steal), which also counts
  whatever else the shared machine ran meanwhile.

**NodePort connect latency** via the remote node: the external client
connects to node-1's IP on the NodePort whose only backend is on node-2;
ours forwards the flow in VXLAN, the reply returning through node-1
(``Tunnel``) or straight from node-2 (``DSR``), switched with
``FelixConfiguration.bpfExternalServiceMode`` between alternating rounds.
kube-proxy's iptables path (DNAT + masquerade, so the backend sees node-1)
is timed in the same rounds as a reference. The backend's listener never
accepts while connects are timed (its backlog holds every handshake) and is
drained between rounds; connects are spaced by ``--spacing`` ms.

    .venv/bin/python benchmarks/bench_lab.py [--quick] [--seconds S] [--rounds R] [--connects N]

Last line: ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.baselines import iptables as kp_iptables
from benchmarks.bench_vs_kube_proxy import Latency, Listener, _nft_flush, machine
from calico_ebpf.errors import CalicoEBPFError
from calico_ebpf.lab import Lab, LabPod
from calico_ebpf.lab.cluster import LabCluster
from calico_ebpf.maps.enums import CtFlags
from calico_ebpf.model import ClusterState

MODES = ("ours", "iptables", "kernel")
VIP = "10.96.0.50"
IPERF_PORT = 5201  # service port = target port
HTTP_PORT, LISTEN_PORT, NODE_PORT = 80, 8080, 30080
CLUSTER_CIDR = "10.0.0.0/8"  # kube-proxy's local-traffic detector; holds the lab's pod pool
CONNECT_TIMEOUT = 2.0
IPERF = "/usr/bin/iperf3"
_ACCEPTED = re.compile(r"Accepted connection from ([0-9.]+), port (\d+)")


# ---- the cluster state ------------------------------------------------------------------------------

def service_docs(backend: LabPod) -> list[dict[str, Any]]:
    """One NodePort Service (iperf3 port + an http port) whose only endpoint is ``backend``."""
    svc = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "bench", "namespace": "default"},
        "spec": {"type": "NodePort", "clusterIP": VIP, "externalTrafficPolicy": "Cluster",
                 "ports": [{"name": "iperf", "port": IPERF_PORT, "targetPort": IPERF_PORT, "protocol": "TCP"},
                           {"name": "http", "port": HTTP_PORT, "targetPort": LISTEN_PORT, "nodePort": NODE_PORT,
                            "protocol": "TCP"}]},
    }
    eps = {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "bench-x1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "bench"}},
        "addressType": "IPv4",
        "ports": [{"name": "iperf", "port": IPERF_PORT, "protocol": "TCP"},
                  {"name": "http", "port": LISTEN_PORT, "protocol": "TCP"}],
        "endpoints": [{"addresses": [backend.ip], "nodeName": backend.node.name, "conditions": {"ready": True},
                       "targetRef": {"kind": "Pod", "namespace": "default", "name": backend.name}}],
    }
    return [svc, eps]


def lab_state(lab: Lab, backend: LabPod, external_mode: str | None = None) -> ClusterState:
    docs = [*lab.manifests(), *service_docs(backend)]
    if external_mode:
        docs.append({"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
                     "metadata": {"name": "default"}, "spec": {"bpfExternalServiceMode": external_mode}})
    state = ClusterState.from_dicts(docs, source=f"bench {lab.prefix}")
    if state.rejected:
        raise RuntimeError(f"bench manifests rejected: {state.rejected[:3]}")
    return state


# ---- CPU accounting ------------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> tuple[float, float]:
    """(busy, softirq) seconds of all CPUs since boot from /proc/stat (busy: not idle, iowait or steal)."""
    with open("/proc/stat") as fh:
        f = [int(x) for x in fh.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, _steal = f
    return (user + nice + system + irq + softirq) / _TICK, softirq / _TICK


def _task_cpu_s(pid: int) -> float:
    """utime + stime of a process (all threads), seconds; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15)


def _ksoftirqd_pids() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as fh:
                    if fh.read().startswith("ksoftirqd/"):
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class CpuMeter:
    """CPU used around one iperf3 run: the involved tasks, and the whole machine."""

    def __init__(self, server_pid: int):
        self.server_pid = server_pid
        self.ksoftirqd = _ksoftirqd_pids()

    def snapshot(self) -> dict[str, float]:
        busy, softirq = _machine_busy_s()
        return {"children": _children_cpu_s(), "server": _task_cpu_s(self.server_pid),
                "ksoftirqd": sum(_task_cpu_s(p) for p in self.ksoftirqd), "machine": busy,
                "machine_softirq": softirq}

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        d = {k: after[k] - before[k] for k in before}
        return {"client_s": round(d["children"], 3), "server_s": round(d["server"], 3),
                "ksoftirqd_s": round(d["ksoftirqd"], 3),
                "involved_s": round(d["children"] + d["server"] + d["ksoftirqd"], 3),
                "machine_s": round(d["machine"], 3), "machine_softirq_s": round(d["machine_softirq"], 3)}


# ---- iperf3 ------------------------------------------------------------------------------------------------

class IperfServer:
    """A persistent ``iperf3 -s`` in a pod; its log tells who connected (the source IP the backend saw)."""

    def __init__(self, pod: LabPod, logdir: str, port: int = IPERF_PORT):
        self.pod, self.port = pod, port
        self.log_path = os.path.join(logdir, f"iperf3-{pod.netns.name}.log")
        self._log = open(self.log_path, "w")  # noqa: SIM115 -- closed in stop()
        self.proc = pod.netns.popen([IPERF, "-s", "-p", str(port), "--forceflush"], stdout=self._log,
                                    stderr=subprocess.STDOUT)
        self._seen = 0
        deadline = time.monotonic() + 5
        while "Server listening" not in self._read_new(peek=True):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"iperf3 server in {pod.name} did not start: {self._read_new(peek=True)!r}")
            time.sleep(0.02)

    def _read_new(self, peek: bool = False) -> str:
        with open(self.log_path) as fh:
            fh.seek(self._seen)
            text = fh.read()
        if not peek:
            self._seen += len(text.encode())
        return text

    def accepted_since_last(self) -> list[str]:
        """Source IPs of the connections accepted since the previous call."""
        return [m.group(1) for m in _ACCEPTED.finditer(self._read_new())]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@dataclass
class Seat:
    """One dataplane's lab: who sends, who receives, where the client aims, and how to prove it was served."""

    mode: str
    lab: Lab
    client: LabPod
    backend: LabPod
    dst: str
    evidence: Callable[[], int] | None  # a count that must grow with every served run (None: nothing to count)
    server: IperfServer | None = None
    runs: list[dict] = field(default_factory=list)


def run_iperf(seat: Seat, seconds: float) -> dict:
    """One iperf3 run from the seat's client; throughput, CPU, and checks that it went the intended way."""
    assert seat.server is not None
    meter = CpuMeter(seat.server.proc.pid)
    seat.server.accepted_since_last()
    evidence_before = seat.evidence() if seat.evidence else 0
    before = meter.snapshot()
    t0 = time.perf_counter()
    proc = seat.client.netns.popen([IPERF, "-c", seat.dst, "-p", str(IPERF_PORT), "-t", str(seconds), "-J",
                                    "--connect-timeout", str(int(CONNECT_TIMEOUT * 1000))],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=seconds + 30)
    wall = time.perf_counter() - t0
    cpu = CpuMeter.delta(before, meter.snapshot())
    try:
        report = json.loads(out)
    except json.JSONDecodeError:
        raise RuntimeError(f"{seat.mode}: iperf3 gave no JSON (rc {proc.returncode}): {err.strip()[:300]}") from None
    if "error" in report or proc.returncode != 0:
        raise RuntimeError(f"{seat.mode}: iperf3 to {seat.dst}:{IPERF_PORT} failed: {report.get('error', err)}")
    received = report["end"]["sum_received"]
    accepted = seat.server.accepted_since_last()
    if seat.client.ip not in accepted:
        raise RuntimeError(f"{seat.mode}: the backend accepted {accepted}, not the client {seat.client.ip} "
                           "(the flow did not reach it, or was masqueraded)")
    grew = seat.evidence() - evidence_before if seat.evidence else None
    if grew is not None and grew <= 0:
        raise RuntimeError(f"{seat.mode}: the dataplane shows no trace of the run (evidence +{grew})")
    gbit = received["bytes"] * 8 / 1e9
    gbps = received["bits_per_second"] / 1e9
    run = {"gbps": round(gbps, 3), "gbit": round(gbit, 3), "seconds": round(received["seconds"], 3),
           "wall_s": round(wall, 3), "retransmits": report["end"]["sum_sent"].get("retransmits"),
           "cpu": cpu,
           "involved_cpu_per_gbit": round(cpu["involved_s"] / gbit, 4) if gbit else None,
           "machine_cpu_per_gbit": round(cpu["machine_s"] / gbit, 4) if gbit else None,
           "evidence": grew}
    seat.runs.append(run)
    return run


# ---- building the three labs ------------------------------------------------------------------------------

def _nat_rev_count(cluster: LabCluster, node: str, client_ip: str) -> int:
    """NAT_REV conntrack entries of ``client_ip`` -> VIP:iperf on ``node`` (our datapath DNATed them)."""
    return sum(1 for r in cluster.dataplane(node).maps.conntrack.records()
               if str(r.src) == client_ip and r.service is not None and str(r.service[0]) == VIP
               and r.service[1] == IPERF_PORT)


def _dnat_packets(seat_lab: Lab, node: str, backend_ip: str) -> int:
    """Packets counted on kube-proxy's DNAT rule to ``backend_ip:iperf`` in ``node``'s nat table."""
    out = seat_lab.node(node).netns.run_cmd(["iptables-save", "-c", "-t", "nat"]).stdout
    total = 0
    for line in out.splitlines():
        if f"--to-destination {backend_ip}:{IPERF_PORT}" in line and line.startswith("["):
            total += int(line[1:].split(":", 1)[0])
    return total


def _assert_no_netfilter(lab: Lab) -> None:
    for node in lab.nodes:
        rules = node.netns.run_cmd(["nft", "list", "ruleset"]).stdout.strip()
        if rules:
            raise RuntimeError(f"{node.netns.name} has netfilter rules: {rules[:200]}")


def _assert_no_bpf(lab: Lab) -> None:
    for node in lab.nodes:
        for ifname in node.interfaces():
            for hook in ("ingress", "egress"):
                out = node.netns.run_cmd(["tc", "filter", "show", "dev", ifname, hook], check=False).stdout
                if out.strip():
                    raise RuntimeError(f"{node.netns.name} {ifname} {hook} has tc filters: {out[:200]}")


class Labs:
    """The three labs, up at once; ``down()`` removes everything they made."""

    def __init__(self, log: Callable[[str], None] = print):
        self.log = log
        self.cluster: LabCluster | None = None
        self.labs: dict[str, Lab] = {}
        self.seats: dict[str, Seat] = {}
        self.states: dict[str, ClusterState] = {}
        self.logdir = tempfile.mkdtemp(prefix="bench-lab-")

    def up(self) -> Labs:
        try:
            self._up()
        except BaseException:
            self.down()
            raise
        return self

    def _up(self) -> None:
        t0 = time.perf_counter()
        self.cluster = LabCluster(nodes=2, pods_per_node=1, workloads=False).up()
        lab = self.labs["ours"] = self.cluster.lab
        client, backend = lab.pod("node-1", 0), lab.pod("node-2", 0)
        for mode in ("Tunnel", "DSR"):
            self.states[mode] = lab_state(lab, backend, mode)
        self.cluster.apply(self.states["Tunnel"])
        _assert_no_netfilter(lab)
        cluster = self.cluster
        self.seats["ours"] = Seat("ours", lab, client, backend, VIP,
                                  lambda: _nat_rev_count(cluster, "node-1", client.ip))

        lab = self.labs["iptables"] = Lab(nodes=2, pods_per_node=1, workloads=False).up()
        client, backend = lab.pod("node-1", 0), lab.pod("node-2", 0)
        state = lab_state(lab, backend)
        for node in lab.nodes:  # kube-proxy runs on every node
            kp_iptables.load_iptables(node.netns, state, node.name, cluster_cidr=CLUSTER_CIDR)
        _assert_no_bpf(lab)
        ipt_lab, backend_ip = lab, backend.ip
        self.seats["iptables"] = Seat("iptables", lab, client, backend, VIP,
                                      lambda: _dnat_packets(ipt_lab, "node-1", backend_ip))

        lab = self.labs["kernel"] = Lab(nodes=2, pods_per_node=1, workloads=False).up()
        client, backend = lab.pod("node-1", 0), lab.pod("node-2", 0)
        _assert_no_bpf(lab)
        _assert_no_netfilter(lab)
        # Nothing to count without a dataplane: the backend's log (the client's own IP) is the proof.
        self.seats["kernel"] = Seat("kernel", lab, client, backend, backend.ip, None)

        for seat in self.seats.values():
            seat.server = IperfServer(seat.backend, self.logdir)
        self.log(f"3 labs up in {time.perf_counter() - t0:.1f} s: "
                 + ", ".join(f"{m} {s.lab.prefix}" for m, s in self.seats.items()))

    def set_external_mode(self, mode: str) -> None:
        """Tunnel or DSR on every node of ours, the way an agent gets it: a FelixConfiguration apply."""
        assert self.cluster is not None
        self.cluster.apply(self.states[mode])
        got = {nd.nodeport_tunnel for nd in self.cluster.dataplanes.values()}
        if got != {mode}:
            raise RuntimeError(f"NodePort forwarding is {got} after applying bpfExternalServiceMode={mode}")

    def down(self) -> None:
        errors: list[BaseException] = []
        for seat in self.seats.values():
            if seat.server is not None:
                seat.server.stop()
        for mode, lab in self.labs.items():
            try:
                if mode == "ours":
                    continue
                if mode == "iptables":
                    for node in lab.nodes:
                        _nft_flush(node.netns)
                lab.down()
            except (CalicoEBPFError, OSError, subprocess.SubprocessError) as exc:  # keep tearing down the others
                errors.append(exc)
        if self.cluster is not None:
            try:
                self.cluster.down()
            except (CalicoEBPFError, OSError) as exc:
                errors.append(exc)
        for name in os.listdir(self.logdir):
            os.unlink(os.path.join(self.logdir, name))
        os.rmdir(self.logdir)
        if errors:
            raise errors[0]


# ---- throughput rounds -------------------------------------------------------------------------------------

def throughput(labs: Labs, seconds: float, rounds: int, log: Callable[[str], None]) -> dict:
    for r in range(rounds):
        order = MODES[r % len(MODES):] + MODES[:r % len(MODES)]  # rotate who goes first
        for mode in order:
            run = run_iperf(labs.seats[mode], seconds)
            log(f"  round {r + 1} {mode:8} {run['gbps']:6.2f} Gbit/s  involved CPU {run['cpu']['involved_s']:5.2f} s "
                f"({run['involved_cpu_per_gbit']:.4f} s/Gbit)  machine {run['cpu']['machine_s']:5.2f} s "
                f"({run['machine_cpu_per_gbit']:.4f} s/Gbit)  retransmits {run['retransmits']}")
    out: dict[str, Any] = {}
    for mode, seat in labs.seats.items():
        runs = seat.runs
        gbit = sum(r["gbit"] for r in runs)
        out[mode] = {
            "dst": f"{seat.dst}:{IPERF_PORT}",
            "gbps_median": round(statistics.median(r["gbps"] for r in runs), 3),
            "gbps_runs": [r["gbps"] for r in runs],
            "involved_cpu_per_gbit_median": round(statistics.median(r["involved_cpu_per_gbit"] for r in runs), 4),
            "machine_cpu_per_gbit_median": round(statistics.median(r["machine_cpu_per_gbit"] for r in runs), 4),
            "involved_cpu_per_gbit_total": round(sum(r["cpu"]["involved_s"] for r in runs) / gbit, 4),
            "machine_cpu_per_gbit_total": round(sum(r["cpu"]["machine_s"] for r in runs) / gbit, 4),
            "retransmits": sum(r["retransmits"] or 0 for r in runs),
            "runs": runs,
        }
    return out


# ---- NodePort connect latency ------------------------------------------------------------------------------

def _probe(ext, dst: str, port: int, listener: Listener, label: str) -> str:
    """One connection through the NodePort must arrive at the backend; returns the source IP it saw."""
    sock = ext.run(socket.socket, socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect((dst, port))
            sock.sendall(b"probe")
        except OSError as exc:
            raise RuntimeError(f"{label}: NodePort {dst}:{port} not served from {ext.ip}: {exc}") from exc
        listener.sock.settimeout(CONNECT_TIMEOUT)
        conn, peer = listener.sock.accept()
        with conn:
            data = conn.recv(16)
    if data != b"probe":
        raise RuntimeError(f"{label}: backend got {data!r}")
    return peer[0]


def _timed_connects(lat: Latency, ext, dst: str, port: int, count: int, spacing: float) -> None:
    for _ in range(count):
        sock = ext.run(socket.socket, socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            sock.settimeout(CONNECT_TIMEOUT)
            t0 = time.perf_counter()
            try:
                sock.connect((dst, port))
            except OSError as exc:
                lat.failures[type(exc).__name__] += 1
                continue
            lat.times.append(time.perf_counter() - t0)
            lat.ports.add(sock.getsockname()[1])
        time.sleep(spacing)


def _np_fwd_flows(labs: Labs, client_ip: str) -> dict[str, int]:
    """node-1's forwarded NodePort flows from the client, by how the reply returns."""
    assert labs.cluster is not None
    out = {"tunnel": 0, "dsr": 0}
    for r in labs.cluster.dataplane("node-1").maps.conntrack.records():
        if str(r.src) == client_ip and CtFlags.NP_FWD in r.value.flags:
            out["dsr" if CtFlags.DSR_FWD in r.value.flags else "tunnel"] += 1
    return out


def nodeport_latency(labs: Labs, connects: int, rounds: int, spacing: float, log: Callable[[str], None]) -> dict:
    """p50 of fresh TCP connects external client -> node-1:NodePort -> backend on node-2, alternating rounds."""
    ours, ipt = labs.labs["ours"], labs.labs["iptables"]
    targets = {"tunnel": ours, "dsr": ours, "iptables_reference": ipt}
    listeners = {"ours": Listener(labs.seats["ours"].backend, LISTEN_PORT),
                 "iptables": Listener(labs.seats["iptables"].backend, LISTEN_PORT)}
    lats = {key: Latency() for key in targets}
    peers: dict[str, str] = {}
    try:
        flows_before = _np_fwd_flows(labs, ours.external.ip)
        for key, lab in targets.items():
            if key != "iptables_reference":
                labs.set_external_mode("DSR" if key == "dsr" else "Tunnel")
            listener = listeners["ours" if lab is ours else "iptables"]
            peers[key] = _probe(lab.external, lab.node("node-1").underlay_ip, NODE_PORT, listener, key)
        per_round = max(1, connects // rounds)
        for r in range(rounds):
            keys = list(targets)
            keys = keys[r % len(keys):] + keys[:r % len(keys)]
            for key in keys:
                lab = targets[key]
                if key != "iptables_reference":
                    labs.set_external_mode("DSR" if key == "dsr" else "Tunnel")
                _timed_connects(lats[key], lab.external, lab.node("node-1").underlay_ip, NODE_PORT, per_round,
                                spacing)
                listeners["ours" if lab is ours else "iptables"].drain()
        flows_after = _np_fwd_flows(labs, ours.external.ip)
    finally:
        for listener in listeners.values():
            listener.close()
        labs.set_external_mode("Tunnel")
    out: dict[str, Any] = {"connects_per_path": per_round * rounds, "rounds": rounds, "spacing_ms": spacing * 1e3}
    for key, lat in lats.items():
        out[key] = lat.summary(per_round * rounds)
        out[key]["backend_saw"] = peers[key]
        out[key]["client_ip_preserved"] = peers[key] == targets[key].external.ip
    out["node1_forwarded_flows"] = {k: flows_after[k] - flows_before[k] for k in flows_after}
    for key in ("tunnel", "dsr"):
        if not out[key]["client_ip_preserved"]:
            raise RuntimeError(f"{key}: the backend saw {peers[key]}, not the client {ours.external.ip}")
        if out["node1_forwarded_flows"][key] < out[key]["ok"]:
            raise RuntimeError(f"{key}: node-1 forwarded only {out['node1_forwarded_flows'][key]} flows in "
                               f"{key} mode for {out[key]['ok']} connects")
    for key in targets:
        s = out[key]
        log(f"  {key:18} p50 {s.get('p50_us', float('nan')):7.1f} us  p99 {s.get('p99_us', float('nan')):8.1f} us  "
            f"({s['ok']}/{s['connects']} ok, backend saw {s['backend_saw']})")
    return out


# ---- main ------------------------------------------------------------------------------------------------

def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def summarize(tp: dict, np: dict) -> dict:
    ours, ipt, ker = tp["ours"], tp["iptables"], tp["kernel"]
    ratios = {
        "throughput_ours_per_iptables": _ratio(ours["gbps_median"], ipt["gbps_median"]),
        "throughput_ours_per_kernel": _ratio(ours["gbps_median"], ker["gbps_median"]),
        "throughput_iptables_per_kernel": _ratio(ipt["gbps_median"], ker["gbps_median"]),
        "cpu_per_gbit_ours_per_iptables": _ratio(ours["involved_cpu_per_gbit_median"],
                                                 ipt["involved_cpu_per_gbit_median"]),
        "cpu_per_gbit_ours_per_kernel": _ratio(ours["involved_cpu_per_gbit_median"],
                                               ker["involved_cpu_per_gbit_median"]),
        # The floor: what a dataplane adding no cost at all to the kernel's forwarding would score.
        "cpu_per_gbit_kernel_per_iptables": _ratio(ker["involved_cpu_per_gbit_median"],
                                                   ipt["involved_cpu_per_gbit_median"]),
        "machine_cpu_per_gbit_ours_per_iptables": _ratio(ours["machine_cpu_per_gbit_median"],
                                                         ipt["machine_cpu_per_gbit_median"]),
        "nodeport_p50_tunnel_per_dsr": _ratio(np["tunnel"].get("p50_us"), np["dsr"].get("p50_us")),
        "nodeport_p50_iptables_per_tunnel": _ratio(np["iptables_reference"].get("p50_us"), np["tunnel"].get("p50_us")),
        "nodeport_p50_iptables_per_dsr": _ratio(np["iptables_reference"].get("p50_us"), np["dsr"].get("p50_us")),
    }
    t1, t2 = ratios["throughput_ours_per_iptables"], ratios["cpu_per_gbit_ours_per_iptables"]
    targets = {"throughput_ge_1_0x_iptables": None if t1 is None else t1 >= 1.0,
               "cpu_per_gbit_le_0_8x_iptables": None if t2 is None else t2 <= 0.8}
    return {"ratios": ratios, "targets": targets}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 round of 5 s runs (under a minute)")
    ap.add_argument("--seconds", type=float, default=None, help="iperf3 -t per run (default 10, quick 5)")
    ap.add_argument("--rounds", type=int, default=None, help="throughput rounds (default 4, quick 1)")
    ap.add_argument("--connects", type=int, default=200, help="timed NodePort connects per path (default 200)")
    ap.add_argument("--spacing", type=float, default=1.0, help="ms between NodePort connects (default 1)")
    args = ap.parse_args()
    seconds = args.seconds or (5.0 if args.quick else 10.0)
    rounds = args.rounds or (1 if args.quick else 4)

    def log(line: str) -> None:
        print(line, flush=True)

    started = time.perf_counter()
    info = machine()
    labs = Labs(log=log).up()
    try:
        log(f"throughput: iperf3 TCP, 1 stream, {seconds:g} s, {rounds} round(s): pod node-1 -> "
            f"{VIP}:{IPERF_PORT} -> pod node-2 (kernel: straight to the pod IP)")
        tp = throughput(labs, seconds, rounds, log)
        log(f"NodePort connect latency: external client -> node-1:{NODE_PORT} -> pod on node-2, "
            f"{args.connects} connects per path")
        np = nodeport_latency(labs, args.connects, 4 if args.connects >= 40 else 1, args.spacing / 1e3, log)
    finally:
        labs.down()
    info["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    summary = summarize(tp, np)
    log("")
    for mode in MODES:
        t = tp[mode]
        log(f"{mode:8} {t['gbps_median']:6.2f} Gbit/s (median of {len(t['runs'])})  involved CPU "
            f"{t['involved_cpu_per_gbit_median']:.4f} s/Gbit  machine {t['machine_cpu_per_gbit_median']:.4f} s/Gbit")
    for k, v in summary["ratios"].items():
        log(f"  {k}: {v}")
    for k, v in summary["targets"].items():
        log(f"  target {k}: {'met' if v else 'MISSED' if v is not None else 'not measured'}")
    result = {
        "bench": "lab",
        "quick": args.quick,
        "seconds_per_run": seconds,
        "rounds": rounds,
        "machine": info,
        "cpu_method": {"involved": "iperf3 client (RUSAGE_CHILDREN) + iperf3 server (/proc/PID/stat) + ksoftirqd "
                                   "threads, user+sys; no IRQ_TIME_ACCOUNTING, so softirq work is in these",
                       "machine": "/proc/stat user+nice+system+irq+softirq of all CPUs (shared machine: includes "
                                  "other jobs)",
                       "unit": "core-seconds per Gbit received"},
        "throughput_gbps": {m: tp[m]["gbps_median"] for m in MODES},
        "cpu_per_gbit": {m: tp[m]["involved_cpu_per_gbit_median"] for m in MODES},
        "machine_cpu_per_gbit": {m: tp[m]["machine_cpu_per_gbit_median"] for m in MODES},
        "nodeport_connect_p50_us": {k: np[k].get("p50_us") for k in ("tunnel", "dsr", "iptables_reference")},
        **summary,
        "throughput": tp,
        "nodeport": np,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
