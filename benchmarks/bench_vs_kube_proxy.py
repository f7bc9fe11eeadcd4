#!/usr/bin/env python3
"""Head to head with kube-proxy: sync cost and first-packet latency, ours vs iptables vs nftables.

A lab (``calico_ebpf.lab.Lab``) of three nodes, one per dataplane, each a
node namespace with a client pod and a backend pod on ``cali…`` veths. For
each size N, every node is given N NodePort services x 10 endpoints
(``benchmarks/_workload.py``) with the service in the middle of the list
pointed at that node's backend pod, and in the same run:

* **sync**: the full sync of the N services, and a one-endpoint change with
  the N services present. Wall time and CPU time (user+sys): for ours
  ``Dataplane.apply`` into a fresh scratch Dataplane, CPU from this process's
  ``RUSAGE_SELF`` delta (compile + diff + map writes, syscalls included);
  for kube-proxy's rulesets the real tools (``benchmarks/baselines``:
  ``iptables-restore`` with the nft backend, ``nft -f``), CPU from the
  ``RUSAGE_CHILDREN`` delta (the tools' user+sys, the kernel's commit
  included; our Python rule generator is not counted for them). A load is
  capped (``--cap``): a capped figure is a lower bound and so is its ratio.
* **latency**: each client opens many fresh TCP connections to its node's
  target ClusterIP (a new socket each, so a new source port and a new flow
  whose first packet goes through the service lookup); p50/p99 of
  ``connect()``. Ours: the datapath attached to its node's interfaces, no
  netfilter rules there. iptables/nftables: kube-proxy's rules in their
  node's namespace, no BPF. The three are timed in alternating rounds, so
  they share the machine's noise. Each must first deliver one probe
  connection to the backend from the client's own IP (DNAT, no SNAT), or
  the run stops. The backend's listener never accepts while connects are
  timed (its backlog holds them all), so the server's speed is not timed.
* **flatness**: ours at 10 and at the largest size, two Dataplanes swapped
  on the same node's interfaces between rounds.

When a baseline's full load is capped, the latency and the one-endpoint
change are measured on a **path-equivalent** ruleset loaded with the same
tool: every top-level rule, set and map element of the full sync (iptables:
all of KUBE-SERVICES and KUBE-NODEPORTS, in kube-proxy's order; nftables:
all map elements), the complete chains of the target and of the changed
service, and the other services' chains present but empty (iptables:
KUBE-SVC/KUBE-EXT without rules, no KUBE-SEP; nftables: service/external
chains without rules, no endpoint chains). The first packet of a flow to
the target walks exactly the rules it walks in the full ruleset; the change
then runs against a smaller table than kube-proxy's, so its cost is a lower
bound.

Last line ``RESULT {json}``: every figure, the ratios baseline/ours, and
the targets (true / false / null when not measured).

    .venv/bin/python benchmarks/bench_vs_kube_proxy.py [--quick] [--cap SECONDS] [--connects N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._workload import drop_last_endpoint, manifests
from benchmarks.baselines import (
    LoadTiming,
    ProxyConfig,
    _Meter,  # the baselines' own wall/child-CPU meter
    service_ports,
)
from benchmarks.baselines import iptables as kp_iptables
from benchmarks.baselines import nftables as kp_nftables
from calico_ebpf.dataplane import Dataplane
from calico_ebpf.dataplane.config import NodeConfig
from calico_ebpf.lab import Lab, LabNode, LabPod
from calico_ebpf.lab.cluster import NodeDataplane
from calico_ebpf.model import ClusterState

ENDPOINTS = 10
CLUSTER_CIDR = "10.0.0.0/8"  # kube-proxy's local-traffic detector; holds the lab's pod pool 10.244.0.0/16
SERVICE_PORT, BACKEND_PORT = 80, 8080  # the workload's "http" port -> its endpoints' port
MAP_SIZES = {"cebpf_nat_feh": 65536, "cebpf_nat_be": 262144}  # 10k services: 30k frontends, 100k backends
CONNECT_TIMEOUT = 2.0
WARMUP_CONNECTS = 20
MODES = ("iptables", "nftables", "ours")


# ---- measuring -----------------------------------------------------------------------------------

def _cpu(ru: resource.struct_rusage) -> float:
    return ru.ru_utime + ru.ru_stime


def measure_self(fn: Callable[[], Any]) -> tuple[dict, Any]:
    """Wall and this process's CPU (user+sys, all threads) around ``fn()``."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    result = fn()
    wall = time.perf_counter() - t0
    cpu = _cpu(resource.getrusage(resource.RUSAGE_SELF)) - _cpu(before)
    return {"wall_s": round(wall, 5), "cpu_s": round(cpu, 5), "capped": False}, result


def timing_dict(t: LoadTiming) -> dict:
    return {"wall_s": round(t.wall_s, 5), "cpu_s": round(t.cpu_s, 5), "capped": False,
            "input_lines": t.input_lines, "tool_runs": t.tool_runs}


def measure_capped(load: Callable[[float], LoadTiming], cap: float) -> dict:
    """Run a baseline load with a timeout; on timeout the figures are lower bounds.

    A capped tool is killed and reaped, so its CPU so far is in RUSAGE_CHILDREN;
    its wall time is at least the cap.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        return timing_dict(load(cap))
    except subprocess.TimeoutExpired:
        cpu = _cpu(resource.getrusage(resource.RUSAGE_CHILDREN)) - _cpu(before)
        return {"wall_s": round(cap, 3), "cpu_s": round(cpu, 3), "capped": True}


@dataclass
class Latency:
    times: list[float] = field(default_factory=list)
    ports: set[int] = field(default_factory=set)
    failures: Counter = field(default_factory=Counter)

    def summary(self, attempts: int) -> dict:
        out: dict[str, Any] = {"connects": attempts, "ok": len(self.times), "distinct_source_ports": len(self.ports),
                               "failures": dict(self.failures)}
        if self.times:
            us = sorted(t * 1e6 for t in self.times)
            out["p50_us"] = round(statistics.median(us), 1)
            out["p99_us"] = round(us[min(len(us) - 1, int(0.99 * len(us)))], 1)
            out["mean_us"] = round(statistics.fmean(us), 1)
        return out


def connect_into(lat: Latency, pod: LabPod, vip: str, port: int, count: int, warmup: int = WARMUP_CONNECTS) -> None:
    """``count`` fresh TCP connects from ``pod`` to ``vip:port`` (each a new socket, hence a new source port),
    after ``warmup`` untimed ones; times go into ``lat``."""
    for i in range(warmup + count):
        sock = pod.run(socket.socket, socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            sock.settimeout(CONNECT_TIMEOUT)
            t0 = time.perf_counter()
            try:
                sock.connect((vip, port))
            except OSError as exc:
                if i >= warmup:
                    lat.failures[type(exc).__name__] += 1
                continue
            took = time.perf_counter() - t0
            if i >= warmup:
                lat.times.append(took)
                lat.ports.add(sock.getsockname()[1])


class Listener:
    """A TCP listener in the backend pod that never accepts while connects are timed.

    The handshake completes in the kernel; a backlog larger than one round
    of connects keeps every SYN answered (a full accept queue would drop
    SYNs and time the client's 1 s retransmit instead of the dataplane);
    :meth:`drain` empties it between rounds.
    """

    def __init__(self, pod: LabPod, port: int = BACKEND_PORT, backlog: int = 4096):
        self.pod = pod
        self.sock = pod.run(socket.socket, socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((pod.ip, port))
        self.sock.listen(backlog)

    def check_served(self, client: LabPod, vip: str, mode: str) -> None:
        """One connection through the ClusterIP must arrive here from the client's own IP (DNAT, no SNAT),
        or we would time a broken setup."""
        sock = client.run(socket.socket, socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            sock.settimeout(CONNECT_TIMEOUT)
            try:
                sock.connect((vip, SERVICE_PORT))
                sock.sendall(b"probe")
            except OSError as exc:
                raise RuntimeError(f"{mode}: {vip}:{SERVICE_PORT} not served from {client.name}: {exc}") from exc
            self.sock.settimeout(CONNECT_TIMEOUT)
            conn, peer = self.sock.accept()
            with conn:
                data = conn.recv(16)
        if peer[0] != client.ip or data != b"probe":
            raise RuntimeError(f"{mode}: {self.pod.name} got {data!r} from {peer[0]}, expected b'probe' from {client.ip}")

    def drain(self) -> int:
        """Accept and close what is queued (between rounds, never while timing); returns how many."""
        self.sock.setblocking(False)
        n = 0
        try:
            while True:
                conn, _ = self.sock.accept()
                conn.close()
                n += 1
        except BlockingIOError:
            return n
        finally:
            self.sock.setblocking(True)

    def close(self) -> None:
        self.sock.close()


# ---- the cluster state ------------------------------------------------------------------------------

@dataclass
class Workload:
    """N services x 10 endpoints, the middle one served by ``backend`` alone, for ``backend``'s node."""

    n: int
    node: str
    docs: list[dict]
    change: dict  # service 0's EndpointSlice minus one endpoint
    target_key: str
    changed_key: str
    vip: str

    @classmethod
    def build(cls, lab: Lab, backend: LabPod, n: int) -> Workload:
        wl = manifests(n, ENDPOINTS)
        target = n // 2
        svc, sl = wl[1 + 2 * target], wl[2 + 2 * target]
        wl[2 + 2 * target] = dict(sl, endpoints=[{"addresses": [backend.ip], "nodeName": backend.node.name,
                                                  "conditions": {"ready": True}}],
                                  ports=[{"name": "http", "port": BACKEND_PORT}])
        change = drop_last_endpoint(wl, 0)
        # The lab's Nodes (node-1 is also the workload's), Pods and IPPool replace the workload's Node.
        docs = [*lab.manifests(), *wl[1:]]
        return cls(n, backend.node.name, docs, change, f"bench/{svc['metadata']['name']}", "bench/svc0",
                   svc["spec"]["clusterIP"])

    def state(self) -> ClusterState:
        state = ClusterState.from_dicts(self.docs)
        assert not state.rejected, state.rejected[:3]
        return state

    def states(self) -> tuple[ClusterState, ClusterState]:
        after = self.state()
        after.add_dict(self.change)
        return self.state(), after


def _nft_flush(ns) -> None:
    """Remove every nftables table (kube-proxy's and iptables-nft's) from ``ns``; synchronous."""
    ns.run_cmd(["nft", "flush", "ruleset"], timeout=600)


def _kube_services_position(ports, key: str) -> int:
    return next(i for i, sp in enumerate(ports) if sp.key == key)


# ---- path-equivalent rulesets (used when the full load was capped) ---------------------------------

def iptables_path_equivalent(state: ClusterState, node: str, keep: set[str]) -> str:
    """kube-proxy's restore input with only ``keep``'s service chains filled; the others exist, empty."""
    cfg = ProxyConfig.from_state(state, node, cluster_cidr=CLUSTER_CIDR)
    lines = kp_iptables.render_iptables(service_ports(state, node), cfg, only=keep).splitlines()
    declared = {ln[1:].split()[0] for ln in lines if ln.startswith(":")}
    nat = lines.index("*nat")
    missing = []
    for ln in lines[nat:]:
        if " -j KUBE-" in ln:
            chain = ln.split(" -j ")[-1].split()[0]
            if chain not in declared:
                declared.add(chain)
                missing.append(f":{chain} - [0:0]")
    return "\n".join([*lines[:nat + 1], *missing, *lines[nat + 1:]]) + "\n"


def nftables_path_equivalent(state: ClusterState, node: str, keep: set[str]) -> str:
    """kube-proxy's full nft transaction with only ``keep``'s chains filled: all map elements, the other
    services' service/external chains empty, their endpoint chains absent."""
    cfg = ProxyConfig.from_state(state, node, cluster_cidr=CLUSTER_CIDR)
    sync = kp_nftables.build_sync(service_ports(state, node), cfg)
    for chain, key in list(sync.chain_service.items()):
        if key in keep:
            continue
        if chain.startswith("endpoint-"):
            del sync.chains[chain]
        else:
            sync.chains[chain] = []
    return kp_nftables.render_nftables(sync, cfg)


def load_path_equivalent(ns, mode: str, state: ClusterState, node: str, keep: set[str]) -> dict:
    meter = _Meter()
    if mode == "iptables":
        kp_iptables._ensure_jumps(meter, ns)  # kube-proxy's jump rules from the built-in chains
        text = iptables_path_equivalent(state, node, keep)
        meter.run(ns, kp_iptables.RESTORE, text.encode())
    else:
        text = nftables_path_equivalent(state, node, keep)
        meter.run(ns, kp_nftables.NFT, text.encode())
    return timing_dict(meter.timing(f"{mode}-path-equivalent", 0.0, text))


# ---- one size ------------------------------------------------------------------------------------------

@dataclass
class Seat:
    """Where one dataplane runs: a lab node with a client pod and a backend pod."""

    mode: str
    node: LabNode
    client: LabPod
    backend: LabPod

    @property
    def ns(self):
        return self.node.netns


class Run:
    """The benchmark on a lab of three nodes, one per dataplane (iptables, nftables, ours).

    Each dataplane serves its own node, so all three can hold a size's services at
    once and their connects are timed in alternating rounds: all three see the same
    machine noise. Per node only one dataplane is ever loaded.
    """

    def __init__(self, lab: Lab, connects: int, cap: float, log: Callable[[str], None] = print,
                 rounds: int = 10):
        if len(lab.nodes) < len(MODES) or any(len(n.pods) < 2 for n in lab.nodes):
            raise ValueError("the benchmark needs a lab of 3 nodes with 2 pods each")
        self.lab, self.connects, self.cap, self.log, self.rounds = lab, connects, cap, log, rounds
        self.seats = {mode: Seat(mode, node, node.pods[0], node.pods[1]) for mode, node in zip(MODES, lab.nodes)}

    def measure_size(self, n: int, *, latency: bool = True) -> dict:
        """Every dataplane at ``n`` services: full sync, interleaved latency, one-endpoint change."""
        out: dict[str, Any] = {"services": n}
        jobs: dict[str, tuple[Workload, Any]] = {}
        ours: NodeDataplane | None = None
        try:
            for mode in ("iptables", "nftables"):
                seat = self.seats[mode]
                wl = Workload.build(self.lab, seat.backend, n)
                before, after = wl.states()
                out[mode] = self._baseline_full(seat, wl, before)
                jobs[mode] = (wl, (before, after))
            out["vip"] = jobs["iptables"][0].vip
            out["kube_services_position"] = _kube_services_position(
                service_ports(jobs["iptables"][1][0], jobs["iptables"][0].node), jobs["iptables"][0].target_key)
            wl = Workload.build(self.lab, self.seats["ours"].backend, n)
            state = wl.state()
            out["ours"], ours = self._ours_full(wl, state)
            jobs["ours"] = (wl, state)
            if latency:
                lat = self.latency({mode: job[0] for mode, job in jobs.items()})
                for mode, summary in lat.items():
                    out[mode]["latency"] = summary
                    self.log(f"  {mode:8} connect {_fmt_lat(summary)}")
            for mode in ("iptables", "nftables"):
                wl, (before, after) = jobs[mode]
                out[mode]["one_endpoint"] = self._baseline_change(self.seats[mode], wl, before, after,
                                                                  out[mode]["ruleset"])
            state.add_dict(jobs["ours"][0].change)
            out["ours"]["one_endpoint"], report = measure_self(lambda: ours.dp.apply(state))
            if report.changes["cebpf_nat_be"].removed != 1:
                raise RuntimeError(f"ours: the one-endpoint change did not remove one backend: {report}")
            self.log(f"  ours     one-endpoint change {_fmt(out['ours']['one_endpoint'])}")
        finally:
            for mode in ("iptables", "nftables"):
                t0 = time.perf_counter()
                _nft_flush(self.seats[mode].ns)
                if mode in out:
                    out[mode]["teardown_s"] = round(time.perf_counter() - t0, 3)
            if ours is not None:
                ours.close()  # detach from the node's interfaces, close the maps
        return out

    def _baseline_full(self, seat: Seat, wl: Workload, before: ClusterState) -> dict:
        mode, ns = seat.mode, seat.ns
        full_load = kp_iptables.load_iptables if mode == "iptables" else kp_nftables.load_nftables
        _nft_flush(ns)
        res: dict[str, Any] = {}
        res["full"] = measure_capped(lambda t: full_load(ns, before, wl.node, cluster_cidr=CLUSTER_CIDR, timeout=t),
                                     self.cap)
        self.log(f"  {mode:8} full sync {_fmt(res['full'])}")
        if res["full"]["capped"]:
            _nft_flush(ns)  # a killed restore commits nothing, but its jump rules and a finished nft commit may be there
            res["ruleset"] = "path-equivalent"
            res["path_equivalent_load"] = load_path_equivalent(ns, mode, before, wl.node,
                                                               {wl.target_key, wl.changed_key})
            self.log(f"  {mode:8} path-equivalent ruleset loaded in {res['path_equivalent_load']['wall_s']:.2f} s")
        else:
            res["ruleset"] = "full"
        return res

    def _baseline_change(self, seat: Seat, wl: Workload, before: ClusterState, after: ClusterState,
                         ruleset: str) -> dict:
        change_load = kp_iptables.load_iptables_change if seat.mode == "iptables" else kp_nftables.load_nftables_change
        res = measure_capped(
            lambda t: change_load(seat.ns, before, after, wl.node, cluster_cidr=CLUSTER_CIDR, timeout=t), self.cap)
        res["on_ruleset"] = ruleset
        self.log(f"  {seat.mode:8} one-endpoint change {_fmt(res)} (on the {ruleset} ruleset)")
        return res

    def _ours_full(self, wl: Workload, state: ClusterState) -> tuple[dict, NodeDataplane]:
        seat = self.seats["ours"]
        dp = Dataplane(NodeConfig.from_state(state, wl.node), pin_dir=None, max_entries=MAP_SIZES)
        nd = NodeDataplane(seat.node, dp, pin_dir="")
        try:
            res: dict[str, Any] = {"ruleset": "full"}
            res["full"], report = measure_self(lambda: dp.apply(state))
            if report.changes["cebpf_nat_be"].added < wl.n * ENDPOINTS - ENDPOINTS:
                raise RuntimeError(f"ours: full apply wrote too few backends: {report}")
            self.log(f"  ours     full sync {_fmt(res['full'])}")
            nd.attach()
        except BaseException:
            nd.close()
            raise
        return res, nd

    def latency(self, targets: dict[str, Workload], attach: dict[str, NodeDataplane] | None = None) -> dict:
        """Connect latency to each target's ClusterIP from its seat's client, in alternating rounds.

        ``targets`` maps a key to a Workload (served by that key's seat, or by
        the ours seat with ``attach[key]`` attached before each of its rounds).
        """
        listeners: dict[str, Listener] = {}
        lats = {key: Latency() for key in targets}
        seat_of = {key: self.seats[key if attach is None else "ours"] for key in targets}
        try:
            for key, wl in targets.items():  # probe first: it must be the first connection in the queue
                seat = seat_of[key]
                if seat.mode not in listeners:
                    listeners[seat.mode] = Listener(seat.backend)
                if attach:
                    attach[key].attach()  # replaces another plane's programs in the same tc slots
                listeners[seat.mode].check_served(seat.client, wl.vip, f"{key} ({wl.n} services)")
            per_round = max(1, self.connects // self.rounds)
            for _ in range(self.rounds):
                for key, wl in targets.items():
                    if attach:
                        attach[key].attach()
                    connect_into(lats[key], seat_of[key].client, wl.vip, SERVICE_PORT, per_round,
                                 warmup=max(1, WARMUP_CONNECTS // self.rounds))
                    listeners[seat_of[key].mode].drain()  # keep the backlog far from full
        finally:
            for listener in listeners.values():
                listener.close()
        return {key: lat.summary(per_round * self.rounds) for key, lat in lats.items()}

    def ours_interleaved(self, small_n: int, large_n: int) -> dict:
        """Our connect latency at two sizes, alternating rounds so both see the same machine noise.

        Two scratch Dataplanes hold the two service sets on the ours node; each
        round attaches one (a tc filter replace) and times its connects.
        """
        seat = self.seats["ours"]
        planes: dict[str, NodeDataplane] = {}
        targets: dict[str, Workload] = {}
        try:
            for n in (small_n, large_n):
                wl = Workload.build(self.lab, seat.backend, n)
                state = wl.state()
                dp = Dataplane(NodeConfig.from_state(state, wl.node), pin_dir=None, max_entries=MAP_SIZES)
                planes[str(n)] = NodeDataplane(seat.node, dp, pin_dir="")
                targets[str(n)] = wl
                dp.apply(state)
            out: dict[str, Any] = {"rounds": self.rounds, **self.latency(targets, attach=planes)}
        finally:
            for nd in planes.values():
                nd.close()
        a, b = out[str(small_n)], out[str(large_n)]
        if "p50_us" in a and "p50_us" in b:
            out["p50_large_per_small"] = round(b["p50_us"] / a["p50_us"], 3)
            out["p99_large_per_small"] = round(b["p99_us"] / a["p99_us"], 3)
        return out


def _fmt(m: dict) -> str:
    bound = ">= " if m.get("capped") else ""
    return f"wall {bound}{m['wall_s'] * 1e3:.1f} ms, cpu {bound}{m['cpu_s'] * 1e3:.1f} ms"


def _fmt_lat(lat: dict) -> str:
    if "p50_us" not in lat:
        return f"no connection succeeded: {lat['failures']}"
    return (f"p50 {lat['p50_us']:.0f} us, p99 {lat['p99_us']:.0f} us "
            f"({lat['ok']}/{lat['connects']} ok, {lat['distinct_source_ports']} source ports)")


# ---- ratios and targets --------------------------------------------------------------------------------

def _ratio(base: dict, ours: dict, key: str) -> dict:
    r = base[key] / ours[key] if ours[key] > 0 else float("inf")
    return {"value": round(r, 1), "lower_bound": bool(base.get("capped"))}


def sync_ratios(size: dict) -> dict:
    out = {}
    for what in ("full", "one_endpoint"):
        for mode in ("iptables", "nftables"):
            b, o = size[mode][what], size["ours"][what]
            ratio = {"wall": _ratio(b, o, "wall_s"), "cpu": _ratio(b, o, "cpu_s")}
            if what == "one_endpoint" and size[mode]["ruleset"] != "full":
                ratio["wall"]["lower_bound"] = ratio["cpu"]["lower_bound"] = True
            out[f"{what}_{mode}_per_ours"] = ratio
    return out


def latency_ratios(small: dict, large: dict) -> dict:
    out: dict[str, Any] = {}
    for mode in MODES:
        a, b = small[mode].get("latency", {}), large[mode].get("latency", {})
        if "p50_us" in a and "p50_us" in b:
            out[f"{mode}_p50_large_per_small"] = round(b["p50_us"] / a["p50_us"], 3)
            out[f"{mode}_p99_large_per_small"] = round(b["p99_us"] / a["p99_us"], 3)
    ours = large["ours"].get("latency", {})
    for mode in ("iptables", "nftables"):
        base = large[mode].get("latency", {})
        if "p50_us" in base and "p50_us" in ours:
            out[f"{mode}_p50_per_ours_at_large"] = round(base["p50_us"] / ours["p50_us"], 2)
            out[f"{mode}_p99_per_ours_at_large"] = round(base["p99_us"] / ours["p99_us"], 2)
    return out


def targets(sync: dict[int, dict], lat: dict, large_n: int) -> dict:
    t: dict[str, Any] = {}
    big = sync.get(10000)
    if big:
        ipt, nft = big["full_iptables_per_ours"]["wall"], big["full_nftables_per_ours"]["wall"]
        t["full_sync_10k_ge_20x_iptables"] = ipt["value"] >= 20  # a lower bound that clears it, clears it
        t["full_sync_10k_ge_5x_nftables"] = nft["value"] >= 5
    else:
        t["full_sync_10k_ge_20x_iptables"] = t["full_sync_10k_ge_5x_nftables"] = None  # not run (--quick)
    flat = lat.get("ours_p50_large_per_small")
    t[f"ours_p50_flat_{large_n}_per_10_le_1_1"] = None if flat is None else flat <= 1.1
    flat = lat.get("ours_interleaved_p50_large_per_small")
    t[f"ours_p50_flat_{large_n}_per_10_le_1_1_interleaved"] = None if flat is None else flat <= 1.1
    nft = lat.get("nftables_p50_per_ours_at_large")
    t[f"ours_p50_not_worse_than_nftables_at_{large_n}"] = None if nft is None else nft >= 1.0
    ipt = lat.get("iptables_p50_per_ours_at_large")
    t[f"ours_p50_ge_3x_better_than_iptables_at_{large_n}"] = None if ipt is None else ipt >= 3.0
    return t


def machine() -> dict:
    uname = os.uname()
    def version(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "?"
    return {"kernel": uname.release, "arch": uname.machine, "cpus": os.cpu_count(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
            "iptables": version(["iptables", "--version"]), "nft": version(["nft", "--version"])}


# ---- main ------------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 and 1k services only (about a minute)")
    ap.add_argument("--cap", type=float, default=None, help="cap of each baseline load in seconds "
                    "(default 60, --quick 25)")
    ap.add_argument("--connects", type=int, default=None, help="timed connects per dataplane and size "
                    "(default 2000, --quick 200)")
    args = ap.parse_args()
    cap = args.cap or (25.0 if args.quick else 60.0)
    connects = args.connects or (200 if args.quick else 2000)
    sizes = [10, 1000] if args.quick else [10, 1000, 10000]
    large_n = sizes[-1]

    started = time.perf_counter()
    info = machine()
    results: dict[int, dict] = {}
    with Lab(nodes=len(MODES), pods_per_node=2, workloads=False) as lab:
        run = Run(lab, connects, cap, log=lambda s: print(s, flush=True), rounds=10 if args.quick else 20)
        try:
            for n in sizes:
                print(f"{n} services x {ENDPOINTS} endpoints", flush=True)
                results[n] = run.measure_size(n)
            print(f"ours at 10 and {large_n} services, interleaved rounds", flush=True)
            interleaved = run.ours_interleaved(10, large_n)
            print(f"  ours     {_fmt_lat(interleaved['10'])} / {_fmt_lat(interleaved[str(large_n)])}", flush=True)
        finally:
            for node in lab.nodes:  # removing a namespace with a big ruleset keeps the kernel busy for minutes
                _nft_flush(node.netns)

    sync = {n: sync_ratios(results[n]) for n in sizes if n >= 1000}
    lat = latency_ratios(results[10], results[large_n])
    if "p50_large_per_small" in interleaved:
        lat["ours_interleaved_p50_large_per_small"] = interleaved["p50_large_per_small"]
        lat["ours_interleaved_p99_large_per_small"] = interleaved["p99_large_per_small"]
    print()
    for n, r in sync.items():
        print(f"sync at {n}: " + ", ".join(
            f"{k.replace('_per_ours', '')} {'>=' if v['wall']['lower_bound'] else ''}{v['wall']['value']}x wall "
            f"{'>=' if v['cpu']['lower_bound'] else ''}{v['cpu']['value']}x cpu" for k, v in r.items()))
    print("latency: " + ", ".join(f"{k} {v}" for k, v in lat.items()))
    result = {
        "quick": args.quick,
        "cap_s": cap,
        "connects": connects,
        "rounds": run.rounds,
        "machine": info,
        "sizes": results,
        "ours_interleaved": interleaved,
        "sync_ratios": sync,
        "latency_ratios": lat,
        "targets_met": targets(sync, lat, large_n),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
