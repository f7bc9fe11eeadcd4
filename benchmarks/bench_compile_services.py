#!/usr/bin/env python3
"""Service compiler at scale: parse and compile N Services x M endpoints.

Builds API dicts for N LoadBalancer-free NodePort Services (one TCP port
each, M endpoints, a third of them on this node), loads them into a
ClusterState and compiles them for one node, then recompiles with the
previous ids after changing one endpoint. Prints timings; the last line is
``RESULT {json}``.

    .venv/bin/python benchmarks/bench_compile_services.py [--quick] [--services N] [--endpoints M]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._workload import NODE, manifests
from calico_ebpf.compiler import ServiceIdAllocator, compile_services
from calico_ebpf.model import ClusterState


def best_of(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1,000 services, one repeat")
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--endpoints", type=int, default=10)
    args = ap.parse_args()
    n = 1000 if args.quick else args.services
    repeats = 1 if args.quick else 3
    docs = manifests(n, args.endpoints)

    parse_s, state = best_of(lambda: ClusterState.from_dicts(docs), repeats)
    assert not state.rejected
    compile_s, desired = best_of(lambda: compile_services(state, NODE), repeats)

    ids = ServiceIdAllocator(desired.service_ids)
    state.add_dict(dict(docs[2], endpoints=docs[2]["endpoints"][:-1]))  # one endpoint fewer in svc0
    recompile_s, again = best_of(lambda: compile_services(state, NODE, ids=ids), repeats)
    changed = sum(1 for sid, b in desired.backends.items() if again.backends[sid] != b)

    backends = sum(b.count for b in desired.backends.values())
    print(f"{n} services x {args.endpoints} endpoints: {len(desired.frontends)} frontends, {backends} backends")
    print(f"  load into ClusterState  {parse_s * 1e3:8.1f} ms")
    print(f"  compile_services        {compile_s * 1e3:8.1f} ms")
    print(f"  recompile, 1 ep changed {recompile_s * 1e3:8.1f} ms  ({changed} backend block changed)")
    print("RESULT " + json.dumps({"services": n, "endpoints_per_service": args.endpoints,
                                  "frontends": len(desired.frontends), "backends": backends,
                                  "load_s": round(parse_s, 4), "compile_s": round(compile_s, 4),
                                  "recompile_s": round(recompile_s, 4), "changed_blocks": changed}))


if __name__ == "__main__":
    main()
