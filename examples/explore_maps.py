"""Open a lab node's pinned BPF maps and look at services and conntrack as pandas DataFrames.

Start a lab and keep it, then point this script at one of its nodes::

    sudo .venv/bin/python -m calico_ebpf.cli.main demo --keep
    sudo .venv/bin/python examples/explore_maps.py --node node-1
    sudo .venv/bin/python -m calico_ebpf.cli.main demo --down

The same few lines work in a notebook: ``NodeMaps(pin_dir)`` opens every map
of one dataplane lazily, each as typed records (``.items()``) or a raw
columnar DataFrame (``.to_pandas()``). Nothing here writes to the maps.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from calico_ebpf.lab.cluster import lab_pin_dir
from calico_ebpf.lab.demo import DEFAULT_PREFIX
from calico_ebpf.maps.named import NodeMaps


def nat_frame(maps: NodeMaps) -> pd.DataFrame:
    """One row per (frontend, backend): the service table as the datapath sees it."""
    backends = {(k.id, k.ordinal): v for k, v in maps.nat_backends.items()}
    rows = []
    for k, v in maps.nat_frontends_hash.items():
        for ordinal in range(v.count) or [None]:
            be = backends.get((v.id, ordinal)) if ordinal is not None else None
            rows.append(
                {
                    "frontend": f"{k.addr}:{k.port}",
                    "proto": str(k.proto),
                    "service_id": v.id,
                    "backends": v.count,
                    "local": v.local,
                    "ordinal": ordinal,
                    "backend": str(be) if be is not None else None,
                }
            )
    frame = pd.DataFrame(rows).astype({"ordinal": "Int64"})
    return frame.sort_values(["frontend", "proto", "ordinal"], ignore_index=True)


def conntrack_frame(maps: NodeMaps) -> pd.DataFrame:
    """Conntrack entries as ``calico-bpf conntrack dump`` shows them (NAT_FWD stubs left out)."""
    rows = []
    for r in maps.conntrack.records():
        d = r.to_dict()
        rows.append(
            {
                "type": d["type"],
                "proto": d["proto"],
                "src": f"{d['src']}:{d['sport']}",
                "dst": f"{d['dst']}:{d['dport']}",
                "service": d["service"],
                "state": d["state"],
                "packets_tx": d["tx"]["packets"],
                "packets_rx": d["rx"]["packets"],
                "age_s": d["age_s"],
            }
        )
    frame = pd.DataFrame(rows)
    if len(frame):
        # Service flows first: the node's data interface also tracks every VXLAN packet
        # between nodes (UDP 4789), which would otherwise bury them.
        frame = frame.sort_values(["service", "type", "src"], na_position="last", ignore_index=True)
    return frame


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help="lab prefix (default: the demo's)")
    p.add_argument("--node", default="node-1")
    p.add_argument("--pin-dir", help="open this pin directory instead of the lab node's")
    p.add_argument("--rows", type=int, default=25, help="conntrack rows to print (default 25)")
    args = p.parse_args(argv)
    pin_dir = args.pin_dir or lab_pin_dir(args.prefix, args.node)
    maps = NodeMaps(pin_dir)
    try:
        pd.set_option("display.width", 160)
        pd.set_option("display.max_columns", 20)
        print(f"# maps pinned at {pin_dir}\n")
        print("## services (cebpf_nat_feh joined with cebpf_nat_be)")
        print(nat_frame(maps).to_string(index=False), "\n")
        ct = conntrack_frame(maps)
        print(f"## conntrack (cebpf_ct): {len(ct)} entries")
        if len(ct):
            print(ct.groupby(["type", "proto"]).size().rename("entries").to_string(), "\n")
            print(ct.head(args.rows).to_string(index=False), "\n")
        raw = maps.conntrack.to_pandas()
        print(f"## the same map, raw columns for bulk analysis: {raw.shape[0]} rows x {raw.shape[1]} columns")
        print(", ".join(map(str, raw.columns)))
    finally:
        maps.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
