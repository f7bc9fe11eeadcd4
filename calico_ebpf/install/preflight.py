"""Step 1 of the guide: is this *cluster* fit for the eBPF dataplane? Read through the API server.

The per-node checks of :mod:`calico_ebpf.preflight` run on a node; this one
reads every Node's ``status.nodeInfo`` (kernel, architecture, OS) and the
cluster's configuration, and applies the support matrix of Calico's guide:

- distributions: kubeadm/generic, kOps, OpenShift, EKS, AKS, MKE, RKE2; RKE only
  by enabling eBPF on a running cluster (not a fresh install in eBPF mode); GKE
  is not supported;
- every node: x86-64 or arm64, Linux >= 5.3 (Red Hat >= 4.18.0-193); 5.8+ advised;
- no Windows nodes (a mixed cluster cannot run the eBPF dataplane);
- the Kubernetes API datastore, not etcd;
- no IP pool with IPIP encapsulation;
- kube-proxy not in IPVS mode.

Example::

    report = check_cluster(api_client)
    for problem in report.problems:      # UnsupportedError instances
        print(problem)
    report.require()                     # raises ClusterNotSupported listing them
"""

from __future__ import annotations

import attrs
from kubernetes import client

from calico_ebpf import preflight as node_preflight
from calico_ebpf.errors import PreflightError, UnsupportedError
from calico_ebpf.install import distro as d
from calico_ebpf.install.kube_proxy import refuse_ipvs
from calico_ebpf.install.plan import Cluster

__all__ = ["ClusterNotSupported", "ClusterReport", "NodeFacts", "check_cluster"]

RECOMMENDED_KERNEL = (5, 8, 0)
CALICO_CONFIG = "/api/v1/namespaces/kube-system/configmaps/calico-config"
INSTALLATION = "/apis/operator.tigera.io/v1/installations/default"
# Calico's IPPools are served by its API server (projectcalico.org/v3) or stored as CRDs.
IPPOOL_LISTS = ("/apis/projectcalico.org/v3/ippools", "/apis/crd.projectcalico.org/v1/ippools")
DATASTORES = ("kubernetes", "etcd")


class ClusterNotSupported(PreflightError):
    """The cluster cannot switch to the eBPF dataplane; ``problems`` are the UnsupportedErrors."""

    def __init__(self, problems: list[UnsupportedError]):
        self.problems = list(problems)
        self.reasons = [str(p) for p in problems]
        Exception.__init__(self, "the cluster cannot run the eBPF dataplane:\n  - " + "\n  - ".join(self.reasons))


@attrs.frozen
class NodeFacts:
    """What a Node reports about itself (``status.nodeInfo`` and the OS label)."""

    name: str
    kernel: str
    arch: str
    os: str
    os_image: str

    @classmethod
    def from_node(cls, node: dict) -> NodeFacts:
        info = (node.get("status") or {}).get("nodeInfo") or {}
        labels = node.get("metadata", {}).get("labels") or {}
        return cls(
            name=node["metadata"]["name"],
            kernel=info.get("kernelVersion", ""),
            arch=info.get("architecture", ""),
            os=info.get("operatingSystem") or labels.get("kubernetes.io/os", "linux"),
            os_image=info.get("osImage", ""),
        )


@attrs.frozen
class ClusterReport:
    """The verdict: ``problems`` refuse the switch, ``warnings`` are advice."""

    distro: d.Detection
    nodes: tuple[NodeFacts, ...]
    problems: tuple[UnsupportedError, ...]
    warnings: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def require(self) -> None:
        """Raise :class:`ClusterNotSupported` when there is any problem."""
        if self.problems:
            raise ClusterNotSupported(list(self.problems))

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "distro": self.distro.name,
            "evidence": self.distro.evidence,
            "nodes": [attrs.asdict(n) for n in self.nodes],
            "problems": [str(p) for p in self.problems],
            "warnings": list(self.warnings),
        }


def _check_distro(det: d.Detection, fresh_install: bool) -> tuple[list[UnsupportedError], list[str]]:
    problems, warnings = [], []
    if det.name == d.GKE:
        problems.append(UnsupportedError("GKE", "the eBPF dataplane is not supported on GKE", obj=det.evidence))
    elif det.name == d.RKE and fresh_install:
        problems.append(UnsupportedError(
            "installing in eBPF mode on RKE",
            "on RKE install Calico with the standard dataplane, then enable eBPF on the running cluster "
            "(RKE2 is recommended: it can turn kube-proxy off)", obj=det.evidence))
    elif det.name == d.RKE:
        warnings.append("RKE cannot turn kube-proxy off; RKE2 is the recommended Rancher distribution")
    elif det.name == d.AKS:
        warnings.append("AKS: kube-proxy stays; with Azure CNI the performance benefits of eBPF are lost")
    return problems, warnings


def _check_node(n: NodeFacts) -> tuple[list[UnsupportedError], list[str]]:
    obj = f"Node {n.name}"
    if n.os.lower() == "windows":
        return [UnsupportedError("Windows nodes", "eBPF is a Linux dataplane; clusters with Windows nodes "
                                 "cannot run it", obj=obj)], []
    problems, warnings = [], []
    arch = node_preflight.check_arch(n.arch or "unknown")
    if not arch.ok:
        problems.append(UnsupportedError(f"architecture {n.arch or 'unknown'}", arch.detail, obj=obj))
    ok, detail = node_preflight.kernel_supported(n.kernel)
    if not ok:
        problems.append(UnsupportedError(f"kernel {n.kernel or 'unknown'}", f"{detail} ({n.os_image})", obj=obj))
    elif node_preflight.parse_kernel_release(n.kernel).version < RECOMMENDED_KERNEL and \
            not node_preflight.parse_kernel_release(n.kernel).redhat:
        warnings.append(f"{obj}: kernel {n.kernel} works; 5.8 or later with CO-RE performs better")
    return problems, warnings


def _check_datastore(cluster: Cluster, datastore: str | None) -> list[UnsupportedError]:
    evidence = "--datastore etcd"
    if datastore is None:
        # Manifest installs on etcd carry the etcd endpoints in the calico-config ConfigMap.
        data = (cluster.get(CALICO_CONFIG) or {}).get("data") or {}
        datastore = "etcd" if data.get("etcd_endpoints") else "kubernetes"
        evidence = "ConfigMap kube-system/calico-config: etcd_endpoints"
    if datastore == "etcd":
        return [UnsupportedError("etcd datastore", "the eBPF dataplane needs Calico's Kubernetes API "
                                 "datastore; a cluster on the etcd datastore cannot switch", obj=evidence)]
    return []


def _check_ipip(cluster: Cluster) -> list[UnsupportedError]:
    problems = []
    for path in IPPOOL_LISTS:
        for pool in cluster.list(path):
            mode = (pool.get("spec") or {}).get("ipipMode") or "Never"
            if mode != "Never":
                problems.append(UnsupportedError(
                    "IPIP", f"ipipMode is {mode}; the eBPF dataplane does not support IPIP: move the pool "
                    "to VXLAN (or no encapsulation) first", obj=f"IPPool {pool['metadata']['name']}"))
        if problems:
            break  # the same pools under both groups: report them once
    spec = ((cluster.get(INSTALLATION) or {}).get("spec") or {}).get("calicoNetwork") or {}
    for pool in spec.get("ipPools") or []:
        if str(pool.get("encapsulation", "")).startswith("IPIP"):
            problems.append(UnsupportedError(
                "IPIP", f"encapsulation {pool['encapsulation']} for {pool.get('cidr')}; use VXLAN",
                obj="Installation default: spec.calicoNetwork.ipPools"))
    return problems


def check_cluster(
    api: client.ApiClient | Cluster,
    *,
    distro: str | None = None,
    fresh_install: bool = False,
    datastore: str | None = None,
) -> ClusterReport:
    """Check the cluster against the support matrix (see the module text); never writes.

    ``distro`` overrides detection; ``fresh_install`` applies the rules for installing
    Calico in eBPF mode from scratch; ``datastore`` ("kubernetes"/"etcd") overrides detection.
    """
    cluster = api if isinstance(api, Cluster) else Cluster(api)
    nodes = cluster.list("/api/v1/nodes")
    det = d.Detection(distro, "--distro") if distro else d.detect(nodes)
    problems, warnings = _check_distro(det, fresh_install)
    facts = tuple(NodeFacts.from_node(n) for n in nodes)
    if not facts:
        warnings.append("no Nodes: nothing to check kernels against")
    for n in facts:
        p, w = _check_node(n)
        problems += p
        warnings += w
    problems += _check_datastore(cluster, datastore)
    problems += _check_ipip(cluster)
    try:
        refuse_ipvs(cluster)
    except UnsupportedError as exc:
        problems.append(exc)
    return ClusterReport(det, facts, tuple(problems), tuple(warnings))
