"""``calico-ebpf demo [--keep] [--json] [--prefix P] [--manifests DIR] | --down``: the dataplane at work.

Builds a two-node lab cluster in network namespaces with our datapath
attached on every node, applies ``examples/demo/*.yaml``, drives real
traffic (ClusterIP across nodes, a service without endpoints, a denied
policy flow, NodePort via another node over VXLAN, connect latencies),
prints PASS/FAIL per check and cleans up.
``--keep`` leaves the lab and its pinned maps for exploring; ``--down``
removes a kept (or crashed) demo. Exit codes: 0 every check passed (and,
without ``--keep``, nothing was left behind), 1 otherwise, 130 interrupted
(Ctrl-C or SIGTERM; the lab is torn down first).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

from calico_ebpf.lab.cluster import LabCluster
from calico_ebpf.lab.demo import DEFAULT_PREFIX, default_manifests_dir, run_demo

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # as a shell reports SIGINT


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the lab demo: services, policy and NAT with real traffic",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--keep", action="store_true", help="leave the lab and its pinned maps up afterwards")
    p.add_argument(
        "--json", action="store_true", help="print one JSON object (checks, nodes) instead of text"
    )
    p.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help=f"name prefix of the lab (default {DEFAULT_PREFIX})"
    )
    p.add_argument(
        "--manifests",
        default=None,
        metavar="DIR",
        help=f"directory of *.yaml to apply (default {default_manifests_dir()})",
    )
    p.add_argument(
        "--down", action="store_true", help="remove a kept or crashed demo lab (namespaces and pins)"
    )
    p.set_defaults(func=run)


_MAIN_PID = os.getpid()


def _interrupt(signum, frame):
    # SIGTERM takes the same path as Ctrl-C, so teardown runs. Children forked
    # by libraries (pyroute2 forks to open netlink sockets in a namespace and
    # terminates them) inherit this handler: they must just die, as by default.
    if os.getpid() != _MAIN_PID:
        os._exit(128 + signum)
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> int:
    if args.down:
        removed, pins = LabCluster.cleanup_leftovers(args.prefix)
        print(f"demo {args.prefix}: removed {len(removed)} namespaces" + (" and its pins" if pins else ""))
        return EXIT_OK
    if not args.verbose:
        # Attaching probes each tc hook first (is a clsact qdisc / a filter there?) and libbpf
        # logs the kernel's expected "not found" answers as warnings; they are not problems.
        logging.getLogger("calico_ebpf.libbpf").setLevel(logging.ERROR)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run_demo(
            args.prefix,
            manifests_dir=args.manifests,
            keep=args.keep,
            say=(lambda _line: None) if args.json else _say,
        )
    except KeyboardInterrupt:
        print(f"calico-ebpf demo: interrupted; lab {args.prefix} torn down", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    return EXIT_OK if result.passed else EXIT_FAILED


def _say(line: str) -> None:
    print(line, flush=True)
