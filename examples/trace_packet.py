"""Trace a packet through a running lab node's datapath: the real programs, the node's live maps.

With a lab kept by the demo::

    sudo .venv/bin/python -m calico_ebpf.cli.main demo --keep
    sudo .venv/bin/python examples/trace_packet.py "tcp 10.244.0.1:40000 -> 10.96.0.10:80"
    sudo .venv/bin/python examples/trace_packet.py --node node-2 "tcp 10.244.0.2:40000 -> 10.244.0.67:8080"

The script loads its own copy of the datapath programs over the node's pinned
maps and runs the packet with BPF_PROG_TEST_RUN inside the node's network
namespace (where the packet's interfaces exist). Nothing is attached, and the
conntrack entries the trace creates are removed again. For a cluster described
only by manifests (no lab), ``calico-ebpf trace -f cluster.yaml PACKET`` does
the same on a scratch node.
"""

from __future__ import annotations

import argparse
import json
import sys

from calico_ebpf.kernel.netns import Netns
from calico_ebpf.lab.cluster import open_node_dataplane
from calico_ebpf.lab.demo import DEFAULT_PREFIX
from calico_ebpf.lab.plan import UNDERLAY_IFNAME


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "packets", nargs="+", metavar="PACKET", help='e.g. "tcp 10.244.0.1:40000 -> 10.96.0.10:80"'
    )
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help="lab prefix (default: the demo's)")
    p.add_argument("--node", default="node-1", help="the node the packet meets (default node-1)")
    p.add_argument("--json", action="store_true", help="one JSON object per packet")
    args = p.parse_args(argv)
    # The lab names a node's namespace <prefix>-<node> (calico_ebpf/lab/plan.py).
    with Netns.open(f"{args.prefix}-{args.node}") as netns, open_node_dataplane(args.prefix, args.node) as dp:
        for packet in args.packets:
            t = dp.trace(packet, netns=netns, data_interface=UNDERLAY_IFNAME)
            print(json.dumps(t.to_dict()) if args.json else t.format() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
