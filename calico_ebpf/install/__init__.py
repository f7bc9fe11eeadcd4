"""Calico's "install in eBPF mode" workflow as a library (the ``calico-ebpf install`` commands).

One module per step of the guide; every cluster step *plans* first (a
:class:`~calico_ebpf.install.plan.Plan` of exact requests) and sends only when
asked, so ``--dry-run`` shows precisely what a real run would send:

1. :mod:`~calico_ebpf.install.preflight` — ``check_cluster``: distribution, node kernels and
   architectures, datastore, IPIP pools, Windows nodes, kube-proxy mode;
2. :mod:`~calico_ebpf.install.api_endpoint` — ``plan_endpoint``: the
   ``kubernetes-services-endpoint`` ConfigMap with the API server's real address;
3. :mod:`~calico_ebpf.install.enable` — ``plan_enable`` / ``edit_manifest``: ``linuxDataplane: BPF``;
4. :mod:`~calico_ebpf.install.kube_proxy` — ``plan_disable`` / ``plan_enable``: stop (or restore) kube-proxy;
5. :mod:`~calico_ebpf.install.status` — ``wait_available``: TigeraStatus until Available;

and on each node :mod:`~calico_ebpf.install.kube_proxy_cleanup` removes kube-proxy's
iptables chains and nftables table. Example::

    from calico_ebpf.install import check_cluster, plan_endpoint, execute
    report = check_cluster(api_client); report.require()
    execute(api_client, plan_endpoint(api_client, report.distro.name))
"""

from calico_ebpf.install.api_endpoint import Endpoint, find_endpoint, plan_endpoint
from calico_ebpf.install.distro import DISTROS, Detection, detect
from calico_ebpf.install.enable import edit_manifest
from calico_ebpf.install.enable import plan_enable as plan_enable_bpf
from calico_ebpf.install.kube_proxy import kube_proxy_mode
from calico_ebpf.install.kube_proxy import plan_disable as plan_kube_proxy_disable
from calico_ebpf.install.kube_proxy import plan_enable as plan_kube_proxy_enable
from calico_ebpf.install.kube_proxy_cleanup import CleanupReport, cleanup_enabled, cleanup_kube_proxy
from calico_ebpf.install.plan import Cluster, Plan, Write, execute
from calico_ebpf.install.preflight import ClusterNotSupported, ClusterReport, check_cluster
from calico_ebpf.install.status import NotAvailableError, wait_available

__all__ = [
    "DISTROS",
    "CleanupReport",
    "Cluster",
    "ClusterNotSupported",
    "ClusterReport",
    "Detection",
    "Endpoint",
    "NotAvailableError",
    "Plan",
    "Write",
    "check_cluster",
    "cleanup_enabled",
    "cleanup_kube_proxy",
    "detect",
    "edit_manifest",
    "execute",
    "find_endpoint",
    "kube_proxy_mode",
    "plan_enable_bpf",
    "plan_endpoint",
    "plan_kube_proxy_disable",
    "plan_kube_proxy_enable",
    "wait_available",
]
