#!/usr/bin/env python3
"""Map ops through calico_ebpf.kernel: per element vs batched, and batched vs C.

Writes and reads N hash-map entries (8-byte keys, 16-byte values) one call
per entry and with BPF_MAP_*_BATCH, then runs the same batched update in a
small C program against libbpf (benchmarks/c/batch_update.c, compiled with
gcc at run time). Prints ratios; the last line is ``RESULT {json}``.

    .venv/bin/python benchmarks/bench_map_ops.py [--quick] [--n N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from calico_ebpf.kernel import Map, MapType  # noqa: E402
from calico_ebpf.kernel import map as kmap  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
KEY_SIZE, VALUE_SIZE = 8, 16
REPEATS = 3


def make_data(n: int) -> tuple[np.ndarray, np.ndarray]:
    keys = np.arange(n, dtype=np.uint64) * np.uint64(2654435761)  # same keys as the C program
    values = np.zeros((n, 2), dtype=np.uint64)
    values[:, 0] = np.arange(n, dtype=np.uint64)
    return keys, values


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_python(n: int) -> dict[str, float]:
    keys, values = make_data(n)
    key_list = [keys[i].tobytes() for i in range(n)]
    value_list = [values[i].tobytes() for i in range(n)]
    out = {}

    with Map.create(MapType.HASH, KEY_SIZE, VALUE_SIZE, n, name="bench_single") as m:
        update = m.update

        def single_update():
            for k, v in zip(key_list, value_list):
                update(k, v)

        out["single_update"] = timed(single_update)
        lookup = m.lookup
        out["single_lookup"] = timed(lambda: [lookup(k) for k in key_list])

    best_update, best_lookup = float("inf"), float("inf")
    for _ in range(REPEATS):
        with Map.create(MapType.HASH, KEY_SIZE, VALUE_SIZE, n, name="bench_batch") as m:
            best_update = min(best_update, timed(lambda: m.update_batch(keys, values)))
            result = []
            best_lookup = min(best_lookup, timed(lambda: result.append(m.lookup_batch_all())))
            assert result[0][2] == n, "batch lookup lost entries"
    out["batch_update"], out["batch_lookup"] = best_update, best_lookup
    return out


def bench_c(n: int) -> float | None:
    with tempfile.TemporaryDirectory(prefix="cebpf_bench_") as tmp:
        exe = os.path.join(tmp, "batch_update")
        cc = subprocess.run(["gcc", "-O2", os.path.join(HERE, "c", "batch_update.c"), "-o", exe, "-lbpf"],
                            capture_output=True, text=True)
        if cc.returncode != 0:
            print("could not compile the C baseline:\n" + cc.stderr, file=sys.stderr)
            return None
        argv = [exe, str(n), str(KEY_SIZE), str(VALUE_SIZE), str(kmap._BATCH_CHUNK), str(REPEATS)]
        run = subprocess.run(argv, capture_output=True, text=True)
        if run.returncode != 0:
            print("C baseline failed:\n" + run.stderr, file=sys.stderr)
            return None
        return int(run.stdout.split()[1]) / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100k entries instead of 1M")
    ap.add_argument("--n", type=int, help="number of entries")
    args = ap.parse_args()
    n = args.n or (100_000 if args.quick else 1_000_000)

    py = bench_python(n)
    c_update = bench_c(n)

    def rate(seconds: float) -> str:
        return f"{n / seconds / 1e6:7.2f} M entries/s ({seconds * 1e3:8.1f} ms)"

    print(f"hash map, {n} entries, key {KEY_SIZE} B, value {VALUE_SIZE} B")
    print(f"  update per element : {rate(py['single_update'])}")
    print(f"  update batched     : {rate(py['batch_update'])}")
    print(f"  lookup per element : {rate(py['single_lookup'])}")
    print(f"  lookup batched     : {rate(py['batch_lookup'])}")
    if c_update is not None:
        print(f"  update batched (C) : {rate(c_update)}")
    result = {
        "n": n,
        "batch_vs_single": round(py["single_update"] / py["batch_update"], 2),
        "lookup_batch_vs_single": round(py["single_lookup"] / py["batch_lookup"], 2),
        "python_vs_c": round(c_update / py["batch_update"], 3) if c_update else None,
        "batch_update_meps": round(n / py["batch_update"] / 1e6, 2),
        "c_batch_update_meps": round(n / c_update / 1e6, 2) if c_update else None,
    }
    print(f"batched update is {result['batch_vs_single']}x per-element; "
          f"ours reaches {result['python_vs_c']} of C's throughput")
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
