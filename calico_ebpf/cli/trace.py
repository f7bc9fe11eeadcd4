"""``calico-ebpf trace -f FILE [-f FILE...] [--node NAME] [--json] PACKET...``

What this node's dataplane would do to each PACKET ('PROTO SRC:SPORT ->
DST:DPORT', quoted), given the Kubernetes/Calico objects in the files: a
scratch, unpinned dataplane is loaded and filled from them, and each packet
runs through the real BPF programs (BPF_PROG_TEST_RUN) inside a scratch
network namespace. Needs root. Nothing on the host is touched.

Exit codes: 0 traced; 1 some objects were rejected or a packet could not be
traced (IPv6, SCTP), the traces are still printed; 2 usage (bad packet,
unknown node, unreadable file).

Example::

    calico-ebpf trace -f cluster.yaml --json 'tcp 10.65.0.2:40000 -> 172.30.0.41:80'
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from calico_ebpf.dataplane.trace_packet import PacketSyntaxError, parse_packet, split_packets
from calico_ebpf.errors import ModelError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def register(subparsers) -> None:
    paragraphs = __doc__.split("\n\n")
    p = subparsers.add_parser("trace", help="trace packets through the real datapath programs",
                              description=paragraphs[1], epilog=paragraphs[2],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-f", "--filename", dest="files", action="append", required=True, metavar="FILE",
                   help="YAML manifests (multi-document or a List); repeatable")
    p.add_argument("--node", help="which Node is this node (default: the only Node in the input)")
    p.add_argument("--json", action="store_true", help="one JSON object per packet, one per line")
    p.add_argument("packets", nargs="+", metavar="PACKET", help="'PROTO SRC:SPORT -> DST:DPORT', PROTO tcp|udp|icmp|sctp")
    p.set_defaults(func=run)


def _usage(msg: str) -> int:
    print(f"calico-ebpf trace: {msg}", file=sys.stderr)
    return EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    # Everything the user typed is checked before the (root-only) kernel work starts.
    try:
        packets = [parse_packet(text) for text in split_packets(args.packets)]
    except PacketSyntaxError as exc:
        return _usage(str(exc))
    from calico_ebpf.model import ClusterState

    try:
        state = ClusterState.from_manifests(*args.files)
    except OSError as exc:
        return _usage(f"cannot read {exc.filename}: {exc.strerror}")
    for err in state.rejected:
        print(f"calico-ebpf trace: rejected: {err}", file=sys.stderr)
    for err in state.unsupported:
        print(f"calico-ebpf trace: unsupported: {err}", file=sys.stderr)
    node = args.node
    if node is None:
        if len(state.nodes) != 1:
            return _usage(f"name this node with --node: the input has {len(state.nodes)} Nodes "
                          f"({', '.join(sorted(state.nodes)) or 'none'})")
        node = next(iter(state.nodes))
    elif node not in state.nodes:
        return _usage(f"--node {node}: no such Node in the input ({', '.join(sorted(state.nodes)) or 'none'})")
    if os.geteuid() != 0:
        print("calico-ebpf trace: needs root (BPF programs and a scratch network namespace)", file=sys.stderr)
        return EXIT_FAILED

    from calico_ebpf.dataplane.trace import TraceNode

    try:
        scratch = TraceNode(state, node)
    except ModelError as exc:
        return _usage(str(exc))
    traces = []
    try:
        for pkt in packets:
            traces.append(scratch.trace(pkt))
            t = traces[-1]
            if args.json:
                print(json.dumps(t.to_dict()), flush=True)
            else:
                print(t.format() + "\n", flush=True)
    finally:
        scratch.close()
    failed = bool(state.rejected) or any(t.unsupported for t in traces)
    return EXIT_FAILED if failed else EXIT_OK
