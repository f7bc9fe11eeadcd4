#!/usr/bin/env python3
"""Map entry codec: Cython vs the pure-Python fallback, the columnar path,
and bulk reads/writes of real kernel maps.

Cases (N = 1M, --quick 100k; the fallback runs on N/10 entries because it is
slow, and rates are compared per entry):

* encode_many / decode_many of NAT backends (key + value) and conntrack
  entries (key + NAT_REV value), Cython vs fallback;
* encode from columns (numpy) for the same entries;
* update_many and items() of N backends against a real hash map;
* a conntrack dump of N entries into a pandas DataFrame (batch lookup +
  columns), the ``calico-ebpf dump``/notebook path.

An "entry" is one key + value pair. Last line: ``RESULT {json}``.

    .venv/bin/python benchmarks/bench_codec.py [--quick]
"""

from __future__ import annotations

import os

# OpenBLAS worker threads spin after numpy calls and steal one of the two
# CPUs from the single-threaded codec; nothing here uses BLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from calico_ebpf.maps import _codec_py, columns, named  # noqa: E402
from calico_ebpf.maps.ct_records import monotonic_ns  # noqa: E402
from calico_ebpf.maps.entries import CtKey, CtValue, NatBackendKey, NatBackendValue  # noqa: E402

try:
    from calico_ebpf.maps import _codec_c
except ImportError:
    sys.exit("the Cython codec is not built: run `.venv/bin/python setup.py build_ext --inplace` first")

REPEATS = 3


def best(fn, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def backend_columns(n: int):
    i = np.arange(n, dtype=np.uint32)
    keys = {"id": i // 16, "ordinal": i % 16}
    vals = {"addr": 0x0A000000 + i, "port": 8000 + (i % 1000)}
    return keys, vals


def ct_columns(n: int, now: int):
    i = np.arange(n, dtype=np.uint32)
    keys = {
        "protocol": np.full(n, 6),
        "addr_a": 0x0A000000 + i,
        "addr_b": np.full(n, 0x0A410007),
        "port_a": 1024 + i % 60000,
        "port_b": np.full(n, 8080),
    }
    vals = {
        "last_seen": np.full(n, now, dtype=np.uint64) - (i.astype(np.uint64) * 1000),
        "type": np.full(n, 2),
        "flags2": np.full(n, 1),
        "a_to_b.bytes": i.astype(np.uint64) * 10,
        "a_to_b.packets": i % 100,
        "a_to_b.flags": np.full(n, 0x13),
        "b_to_a.bytes": i.astype(np.uint64) * 7,
        "b_to_a.packets": i % 90,
        "b_to_a.flags": np.full(n, 0x13),
        "orig_ip": np.full(n, 0x0A60000A),
        "orig_port": np.full(n, 80),
    }
    return keys, vals


def codec_case(label, kcls, vcls, kbytes, vbytes, n_fallback, results):
    """encode/decode of pairs, both implementations; returns nothing, fills results."""
    n = len(kbytes) // kcls.size()
    # Objects for the encode runs come from the (fast) Cython decoder.
    keys = _codec_c.decode_many(kcls, kbytes)
    vals = _codec_c.decode_many(vcls, vbytes)
    fk, fv = keys[:n_fallback], vals[:n_fallback]

    def enc(mod, ks, vs):
        return lambda: (mod.encode_many(ks, kcls), mod.encode_many(vs, vcls))

    def dec(mod, m):
        kb, vb = kbytes[: m * kcls.size()], vbytes[: m * vcls.size()]
        return lambda: (mod.decode_many(kcls, kb), mod.decode_many(vcls, vb))

    # Identical bytes before timing anything.
    assert (
        bytes(_codec_c.encode_many(fk, kcls))
        == bytes(_codec_py.encode_many(fk, kcls))
        == kbytes[: len(fk) * kcls.size()]
    )
    assert (
        bytes(_codec_c.encode_many(fv, vcls))
        == bytes(_codec_py.encode_many(fv, vcls))
        == vbytes[: len(fv) * vcls.size()]
    )
    t_enc_c = best(enc(_codec_c, keys, vals))
    t_enc_py = best(enc(_codec_py, fk, fv), 1)
    t_dec_c = best(dec(_codec_c, n))
    t_dec_py = best(dec(_codec_py, n_fallback), 1)
    del keys, vals, fk, fv
    gc.collect()
    for name, t, m in (
        ("encode_cython", t_enc_c, n),
        ("encode_fallback", t_enc_py, n_fallback),
        ("decode_cython", t_dec_c, n),
        ("decode_fallback", t_dec_py, n_fallback),
    ):
        results[f"{label}_{name}"] = {
            "entries": m,
            "entries_per_s": round(m / t),
            "ns_per_entry": round(t / m * 1e9, 1),
        }
        print(f"{label:7} {name:16} {m:>9} entries  {t / m * 1e9:9.1f} ns/entry  {m / t:14,.0f} entries/s")


def columns_case(label, kcls, vcls, kcols, vcols, results):
    n = len(next(iter(kcols.values())))
    t = best(lambda: (columns.from_columns(kcls, kcols, n), columns.from_columns(vcls, vcols, n)))
    results[f"{label}_encode_columns"] = {
        "entries": n,
        "entries_per_s": round(n / t),
        "ns_per_entry": round(t / n * 1e9, 2),
    }
    print(
        f"{label:7} {'encode_columns':16} {n:>9} entries  {t / n * 1e9:9.2f} ns/entry"
        f"  {n / t:14,.0f} entries/s"
    )
    kb = columns.from_columns(kcls, kcols, n)
    vb = columns.from_columns(vcls, vcols, n)
    t = best(lambda: (columns.to_array(kcls, kb), columns.to_array(vcls, vb)))
    results[f"{label}_decode_columns"] = {"entries": n, "ns_per_entry": round(t / n * 1e9, 3)}
    return kb.tobytes(), vb.tobytes()


def kernel_cases(n, kb_be, vb_be, kb_ct, vb_ct, results):
    be = named.NatBackends.create(max_entries=n)
    pairs = _codec_c.decode_items(NatBackendKey, NatBackendValue, kb_be, vb_be)
    t_up = best(lambda: be.update_many(pairs), 1)
    t_items = best(lambda: be.items(), 2)
    assert len(be) == n
    t_raw = best(lambda: be.map.lookup_batch_all(), 2)
    be.map.close()
    pairs.clear()
    gc.collect()
    for name, t in (("update_many", t_up), ("items", t_items), ("lookup_batch_all_raw", t_raw)):
        results[f"map_{name}"] = {"entries": n, "entries_per_s": round(n / t), "seconds": round(t, 3)}
        print(f"map     {name:16} {n:>9} entries  {t:7.3f} s  {n / t:14,.0f} entries/s")

    ct = named.Conntrack.create(max_entries=n + n // 8)
    ct.map.update_batch(kb_ct, vb_ct, n)
    frames = []
    t_df = best(lambda: frames.append(ct.to_pandas()), 2)
    df = frames[-1]
    assert len(df) == n and int(df["orig_port"].iloc[0]) == 80
    ct.map.close()
    results["conntrack_dump_dataframe"] = {"entries": n, "seconds": round(t_df, 3)}
    print(f"ct      {'dump->DataFrame':16} {n:>9} entries  {t_df:7.3f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100k entries instead of 1M")
    args = ap.parse_args()
    n = 100_000 if args.quick else 1_000_000
    n_fallback = n // 10
    results: dict[str, dict] = {}

    kcols, vcols = backend_columns(n)
    kb, vb = columns_case("nat_be", NatBackendKey, NatBackendValue, kcols, vcols, results)
    codec_case("nat_be", NatBackendKey, NatBackendValue, kb, vb, n_fallback, results)

    ck, cv = ct_columns(n, monotonic_ns())
    ckb, cvb = columns_case("ct", CtKey, CtValue, ck, cv, results)
    codec_case("ct", CtKey, CtValue, ckb, cvb, n_fallback, results)

    kernel_cases(n, kb, vb, ckb, cvb, results)

    def rate(name):
        return results[name]["entries_per_s"]

    ratios = {
        f"{label}_{op}_cython_vs_fallback": round(
            rate(f"{label}_{op}_cython") / rate(f"{label}_{op}_fallback"), 1
        )
        for label in ("nat_be", "ct")
        for op in ("encode", "decode")
    }
    targets = {
        "cython_vs_fallback_ge_10x": all(r >= 10 for r in ratios.values()),
        "encode_objects_le_50ns_nat_be": results["nat_be_encode_cython"]["ns_per_entry"] <= 50,
        "encode_columns_le_5ns_nat_be": results["nat_be_encode_columns"]["ns_per_entry"] <= 5,
        "ct_dump_dataframe_le_1s": results["conntrack_dump_dataframe"]["seconds"] <= 1.0,
    }
    for k, v in ratios.items():
        print(f"ratio   {k:40} {v:6.1f}x")
    for k, v in targets.items():
        print(f"target  {k:40} {'met' if v else 'MISSED'}")
    print(
        "RESULT "
        + json.dumps(
            {"n": n, "n_fallback": n_fallback, "cases": results, "ratios": ratios, "targets": targets},
            sort_keys=True,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
