"""``calico-ebpf install {preflight,api-endpoint,enable,kube-proxy,status}``: Calico's eBPF install guide.

Each subcommand is one step of the guide. ``--dry-run`` prints the exact
requests (method, path, content type, JSON body, and the kubectl equivalent)
that a real run sends, and sends none. Exit codes: 0 done (or nothing to do),
1 refused or failed (the reasons on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import json
import sys

from kubernetes.client.exceptions import ApiException

from calico_ebpf.errors import UnsupportedError
from calico_ebpf.install import api_endpoint, enable, kube_proxy, preflight, status
from calico_ebpf.install.distro import DISTROS, detect
from calico_ebpf.install.plan import Cluster, Plan, execute
from calico_ebpf.k8s import load_api_client

EXIT_OK = 0
EXIT_FAILED = 1


def register(subparsers) -> None:
    p = subparsers.add_parser("install", help="switch a cluster to the eBPF dataplane, step by step",
                              description=__doc__.splitlines()[0])
    steps = p.add_subparsers(dest="step", metavar="STEP", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, $KUBECONFIG, ~/.kube/config)")
    common.add_argument("--context", help="kubeconfig context")
    common.add_argument("--dry-run", action="store_true", help="print the requests it would send; change nothing")
    common.add_argument("--json", action="store_true", help="print one JSON object")
    common.add_argument("--distro", choices=DISTROS, help="the Kubernetes distribution (default: detect from Nodes)")

    s = steps.add_parser("preflight", parents=[common], help="check the cluster against the support matrix")
    s.add_argument("--fresh-install", action="store_true", help="rules for installing Calico in eBPF mode from scratch")
    s.add_argument("--datastore", choices=preflight.DATASTORES, help="Calico's datastore (default: detect)")
    s.set_defaults(func=run_preflight)

    s = steps.add_parser("api-endpoint", parents=[common],
                         help="write the kubernetes-services-endpoint ConfigMap (API server address)")
    s.add_argument("--host", help="API server HOST or HOST:PORT (default: per distribution)")
    s.add_argument("--cluster-name", help="kOps cluster name, or <cluster>.<domain> on OpenShift")
    s.add_argument("--namespace", default=api_endpoint.CONFIGMAP_NAMESPACE,
                   help="where to write the ConfigMap (default tigera-operator; calico-ebpf for deploy/)")
    s.add_argument("--operator-dns", action="store_true",
                   help="kOps/EKS: make the tigera-operator resolve through the AWS VPC resolver")
    s.set_defaults(func=run_api_endpoint)

    s = steps.add_parser("enable", parents=[common], help="switch the Installation to linuxDataplane: BPF")
    s.add_argument("--manifest", metavar="FILE", help="edit this custom-resources.yaml instead (fresh install)")
    s.add_argument("-o", "--output", metavar="FILE", help="with --manifest: write here (default: stdout)")
    s.set_defaults(func=run_enable)

    s = steps.add_parser("kube-proxy", parents=[common], help="disable kube-proxy (or enable it again)")
    s.add_argument("action", choices=("disable", "enable"))
    s.set_defaults(func=run_kube_proxy)

    s = steps.add_parser("status", parents=[common], help="wait until every TigeraStatus is Available")
    s.add_argument("--timeout", type=float, default=600.0, help="seconds to wait (default 600)")
    s.add_argument("--interval", type=float, default=2.0, help="seconds between polls (default 2)")
    s.add_argument("--component", action="append", help="wait for this component only (repeatable)")
    s.set_defaults(func=run_status)


def _cluster(args: argparse.Namespace) -> Cluster:
    return Cluster(load_api_client(args.kubeconfig, context=args.context))


def _distro(args: argparse.Namespace, cluster: Cluster) -> str:
    if args.distro:
        return args.distro
    det = detect(cluster.list("/api/v1/nodes"))
    if not args.json:
        print(f"distribution: {det.name} ({det.evidence})")
    return det.name


def _fail(message: str) -> int:
    print(f"calico-ebpf install: {message}", file=sys.stderr)
    return EXIT_FAILED


def _api_error(exc: ApiException) -> int:
    return _fail(f"API server answered {exc.status} {exc.reason}: {(exc.body or '').strip()[:500]}")


def _carry_out(cluster: Cluster, plan: Plan, args: argparse.Namespace) -> int:
    """Print ``plan``; unless dry-run, send it. The one path every writing step takes."""
    if args.json:
        out = plan.to_dict() | {"dryRun": args.dry_run}
        if not args.dry_run:
            execute(cluster, plan)
            out["sent"] = len(plan.writes)
        print(json.dumps(out, indent=2))
        return EXIT_OK
    print(plan.render(dry_run=args.dry_run))
    if not args.dry_run:
        execute(cluster, plan)
        if plan.writes:
            print(f"{plan.step}: done")
    return EXIT_OK


def run_preflight(args: argparse.Namespace) -> int:
    try:
        cluster = _cluster(args)
        report = preflight.check_cluster(cluster, distro=args.distro, fresh_install=args.fresh_install,
                                         datastore=args.datastore)
    except ApiException as exc:
        return _api_error(exc)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(f"distribution: {report.distro.name} ({report.distro.evidence})")
        for n in report.nodes:
            print(f"node {n.name}: {n.os}/{n.arch} kernel {n.kernel} ({n.os_image})")
        for w in report.warnings:
            print(f"warning: {w}")
        if report.ok:
            print("the cluster can switch to the eBPF dataplane")
        else:
            print("the cluster cannot switch to the eBPF dataplane:", file=sys.stderr)
            for p in report.problems:
                print(f"  - {p}", file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_FAILED


def run_api_endpoint(args: argparse.Namespace) -> int:
    try:
        cluster = _cluster(args)
        plan = api_endpoint.plan_endpoint(cluster, _distro(args, cluster), host=args.host,
                                          cluster_name=args.cluster_name, operator_dns=args.operator_dns,
                                          namespace=args.namespace)
        return _carry_out(cluster, plan, args)
    except ApiException as exc:
        return _api_error(exc)


def run_enable(args: argparse.Namespace) -> int:
    if args.manifest:
        with open(args.manifest) as f:
            edited = enable.edit_manifest(f.read())
        if args.output and not args.dry_run:
            with open(args.output, "w") as f:
                f.write(edited)
            print(f"wrote {args.output}")
        else:
            sys.stdout.write(edited)
        return EXIT_OK
    try:
        cluster = _cluster(args)
        return _carry_out(cluster, enable.plan_enable(cluster), args)
    except ApiException as exc:
        return _api_error(exc)


def run_kube_proxy(args: argparse.Namespace) -> int:
    try:
        cluster = _cluster(args)
        distro = _distro(args, cluster)
        planner = kube_proxy.plan_disable if args.action == "disable" else kube_proxy.plan_enable
        return _carry_out(cluster, planner(cluster, distro), args)
    except UnsupportedError as exc:
        return _fail(str(exc))
    except ApiException as exc:
        return _api_error(exc)


def run_status(args: argparse.Namespace) -> int:
    try:
        cluster = _cluster(args)
        if args.dry_run:
            # Status only reads; a dry run shows the current state once instead of waiting.
            summary = status.summarize(cluster.list(status.TIGERASTATUSES))
            print(json.dumps(summary, indent=2) if args.json else
                  "\n".join(f"{k}: {v}" for k, v in sorted(summary.items())) or "no TigeraStatus objects yet")
            return EXIT_OK
        progress = None if args.json else (lambda line: print(line, flush=True))
        summary = status.wait_available(cluster, timeout=args.timeout, interval=args.interval,
                                        components=args.component, on_progress=progress)
    except status.NotAvailableError as exc:
        return _fail(str(exc))
    except ApiException as exc:
        return _api_error(exc)
    print(json.dumps(summary, indent=2) if args.json else "all components Available")
    return EXIT_OK
