"""``calico-ebpf lab up|status|down [--nodes N] [--pods N] [--prefix P] [--json]``: a netns cluster.

``up`` builds the lab and leaves it running (echo servers on port 8080 in
every pod), ``status`` prints its nodes, pods and addresses as the kernel
holds them, ``down`` removes every namespace and process of the prefix
(also what a crashed run left). Exit codes: 0 ok, 1 failed (``status``:
no lab with that prefix).
"""

from __future__ import annotations

import argparse
import json

from calico_ebpf.lab import Lab, lab_status

EXIT_OK = 0
EXIT_FAILED = 1
DEFAULT_PREFIX = "cebpf-lab"


def register(subparsers) -> None:
    p = subparsers.add_parser("lab", help="build, inspect or remove a netns lab cluster on this machine",
                              description=__doc__.splitlines()[0])
    p.add_argument("action", choices=("up", "status", "down"))
    p.add_argument("--nodes", type=int, default=2, help="number of nodes (up; default 2)")
    p.add_argument("--pods", type=int, default=3, help="pods per node (up; default 3)")
    p.add_argument("--prefix", default=DEFAULT_PREFIX,
                   help=f"name prefix of the lab's namespaces (default {DEFAULT_PREFIX})")
    p.add_argument("--no-workloads", action="store_true", help="up: do not start echo servers in the pods")
    p.add_argument("--json", action="store_true", help="status/up: print one JSON object")
    p.set_defaults(func=run)


def format_status(status: dict) -> str:
    """Human table: one line per node, pod, external client and fabric."""
    if not status["up"]:
        return f"lab {status['prefix']}: not up"
    rows = [("NAME", "KIND", "IP", "NETNS", "DETAIL")]
    for n in status["nodes"]:
        rows.append((n["name"], "node", n["underlay_ip"] or "-", n["netns"],
                     f"vxlan.calico {n['vtep_ip']} {n['vtep_mac']} ifindex {n['vxlan_ifindex']}"))
        for p in n["pods"]:
            server = f"pids {','.join(map(str, p['processes']))}" if p["processes"] else "no processes"
            rows.append((p["name"], "pod", p["ip"] or "-", p["netns"], f"veth {p['veth']}, {server}"))
    for kind in ("external", "fabric"):
        e = status[kind]
        if e:
            rows.append((kind, kind, e["ip"] or "-", e["netns"], ""))
    widths = [max(len(str(r[i])) for r in rows) for i in range(4)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)) + "  " + r[4] for r in rows).rstrip()


def run(args: argparse.Namespace) -> int:
    if args.action == "up":
        lab = Lab(nodes=args.nodes, pods_per_node=args.pods, prefix=args.prefix, workloads=not args.no_workloads)
        lab.up()
        status = lab.status()
        print(json.dumps(status, indent=2) if args.json else format_status(status))
        if not args.json:
            print(f"\nlab {args.prefix} is up; remove it with `calico-ebpf lab down --prefix {args.prefix}`")
        return EXIT_OK
    if args.action == "status":
        status = lab_status(args.prefix)
        print(json.dumps(status, indent=2) if args.json else format_status(status))
        return EXIT_OK if status["up"] else EXIT_FAILED
    removed = Lab.cleanup_leftovers(args.prefix)
    print(f"lab {args.prefix}: removed {len(removed)} namespaces" + (f" ({', '.join(removed)})" if removed else ""))
    return EXIT_OK
