"""``calico-ebpf agent``: run this node's dataplane from the API server, in place of kube-proxy.

Runs until SIGTERM or SIGINT, then stops cleanly (exit 0) and leaves the
dataplane in the kernel (maps pinned, programs attached) for the next start
to re-adopt. In a pod (the DaemonSet in ``deploy/``) it uses the service
account and ``$NODE_NAME``; elsewhere ``--kubeconfig`` and ``--node``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from calico_ebpf.k8s.health import DEFAULT_HEALTHZ_PORT, DEFAULT_METRICS_PORT

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

log = logging.getLogger("calico_ebpf.agent")


def register(subparsers) -> None:
    p = subparsers.add_parser("agent", help="run the node agent (informers -> eBPF dataplane), like kube-proxy",
                              description=__doc__.splitlines()[0])
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster config, else $KUBECONFIG or ~/.kube/config)")
    p.add_argument("--node", default=os.environ.get("NODE_NAME"),
                   help="this node's name (default $NODE_NAME)")
    p.add_argument("--pin-dir", help="bpffs directory of this dataplane (default /sys/fs/bpf/calico_ebpf/<node>)")
    p.add_argument("--healthz-port", type=int, default=DEFAULT_HEALTHZ_PORT,
                   help=f"port of /healthz, as kube-proxy's (default {DEFAULT_HEALTHZ_PORT}; 0 = any free port)")
    p.add_argument("--healthz-address", default="0.0.0.0", help="address /healthz listens on (default 0.0.0.0)")
    p.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT,
                   help=f"port of /metrics (default {DEFAULT_METRICS_PORT}; 0 = any free port)")
    p.add_argument("--metrics-address", default="127.0.0.1", help="address /metrics listens on (default 127.0.0.1)")
    p.add_argument("--min-sync-period", type=float, default=None, metavar="S",
                   help="minimum seconds between dataplane applies (default: FelixConfiguration "
                        "bpfKubeProxyMinSyncPeriod, 1 s)")
    p.add_argument("--no-kube-proxy-cleanup", action="store_true",
                   help="never remove kube-proxy's iptables/nftables rules (for tests and development)")
    p.add_argument("--netns", metavar="NAME",
                   help="attach to the interfaces of this named network namespace, and clean kube-proxy's rules "
                        "there (default: the agent's own namespace)")
    p.add_argument("--data-iface-pattern", metavar="REGEX",
                   help="host data interfaces to attach (default: FelixConfiguration bpfDataIfacePattern, "
                        "Felix's default '^((en|wl|ww|sl|ib)[Popsx].*|(eth|wlan|wwan|bond).*)')")
    p.add_argument("--no-attach", action="store_true",
                   help="attach no interfaces and sync no policy (NAT, routes and failsafes only)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from calico_ebpf.k8s.agent import Agent
    from calico_ebpf.k8s.config import load_api_client

    if not args.node:
        print("calico-ebpf agent: name this node with --node or $NODE_NAME", file=sys.stderr)
        return EXIT_USAGE
    if args.netns:
        from calico_ebpf.kernel.netns import Netns

        if not Netns.exists(args.netns):
            print(f"calico-ebpf agent: no network namespace {args.netns!r}", file=sys.stderr)
            return EXIT_USAGE
    # The agent logs what it does (applies, rejections): show INFO unless -v asked for more.
    logging.getLogger("calico_ebpf").setLevel(min(logging.getLogger().getEffectiveLevel(), logging.INFO))

    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        log.info("agent: %s received, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    agent = Agent(load_api_client(args.kubeconfig), args.node, pin_dir=args.pin_dir,
                  min_sync_period=args.min_sync_period,
                  healthz_host=args.healthz_address, healthz_port=args.healthz_port,
                  metrics_host=args.metrics_address, metrics_port=args.metrics_port,
                  kube_proxy_cleanup=not args.no_kube_proxy_cleanup,
                  netns=args.netns, data_iface_pattern=args.data_iface_pattern,
                  attach_interfaces=not args.no_attach)
    agent.start()
    log.info("agent: node %s, pin dir %s, healthz port %s, metrics port %s, interfaces %s", args.node,
             agent.pin_dir, agent.healthz_port, agent.metrics_port,
             "not attached" if args.no_attach else f"in netns {args.netns}" if args.netns else "of this netns")
    try:
        # A timed wait lets the main thread run the signal handler promptly.
        while not stop.wait(1.0):
            pass
    finally:
        agent.stop()
    log.info("agent: stopped; the dataplane stays in the kernel (%s)", agent.pin_dir)
    return EXIT_OK
