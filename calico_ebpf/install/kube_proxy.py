"""Step 4 of the guide: stop kube-proxy once the eBPF dataplane serves Services (and undo it).

How depends on the distribution, as in Calico's guide:

- kubeadm, EKS and other clusters running kube-proxy as the ``kube-system/kube-proxy``
  DaemonSet: a nodeSelector no node has (``non-calico: "true"``) so its pods go away.
  The selector is reversible: ``plan_enable`` removes it again.
- OpenShift: the cluster network operator owns kube-proxy; ``deployKubeProxy: false``
  on ``networks.operator.openshift.io/cluster``.
- kOps: kube-proxy is part of the cluster spec; we print the change to make with ``kops``.
- AKS: kube-proxy cannot be turned off, so the dataplane must leave its iptables
  rules alone instead (FelixConfiguration ``bpfKubeProxyIptablesCleanupEnabled: false``),
  otherwise the two would fight over them.

kube-proxy in IPVS mode is refused: switch it to iptables mode first. Example::

    plan = plan_disable(api_client, distro="kubeadm")
    execute(api_client, plan)
"""

from __future__ import annotations

from typing import Any

import yaml
from kubernetes import client

from calico_ebpf.errors import UnsupportedError
from calico_ebpf.install import distro as d
from calico_ebpf.install.plan import MERGE_PATCH, STRATEGIC_MERGE_PATCH, Cluster, Plan, Write, kubectl_patch

__all__ = [
    "DISABLE_DS_PATCH",
    "ENABLE_DS_PATCH",
    "KUBE_PROXY_DS",
    "kube_proxy_mode",
    "plan_disable",
    "plan_enable",
    "refuse_ipvs",
]

KUBE_PROXY_DS = "/apis/apps/v1/namespaces/kube-system/daemonsets/kube-proxy"
OPENSHIFT_NETWORK = "/apis/operator.openshift.io/v1/networks/cluster"
FELIX_DEFAULT = "/apis/projectcalico.org/v3/felixconfigurations/default"
FELIX_LIST = "/apis/projectcalico.org/v3/felixconfigurations"

# The selector matches no node, so the DaemonSet keeps existing (easy to undo) but runs nowhere.
DISABLE_DS_PATCH = {"spec": {"template": {"spec": {"nodeSelector": {"non-calico": "true"}}}}}
ENABLE_DS_PATCH = {"spec": {"template": {"spec": {"nodeSelector": {"non-calico": None}}}}}
OPENSHIFT_DISABLE_PATCH = {"spec": {"deployKubeProxy": False}}
OPENSHIFT_ENABLE_PATCH = {"spec": {"deployKubeProxy": True}}
AKS_KEEP_KUBE_PROXY_PATCH = {"spec": {"bpfKubeProxyIptablesCleanupEnabled": False}}
AKS_UNDO_PATCH = {"spec": {"bpfKubeProxyIptablesCleanupEnabled": None}}  # back to the default (true)

# Where kube-proxy's own configuration lives: (ConfigMap path, key holding the KubeProxyConfiguration).
_KUBE_PROXY_CONFIGS = (
    ("/api/v1/namespaces/kube-system/configmaps/kube-proxy", "config.conf"),  # kubeadm
    ("/api/v1/namespaces/kube-system/configmaps/kube-proxy-config", "config"),  # EKS
)

_KOPS_DISABLE = ("kOps runs kube-proxy from the cluster spec: `kops edit cluster` and set "
                 "spec.kubeProxy.enabled: false, then `kops update cluster --yes` and "
                 "`kops rolling-update cluster --yes`")
_KOPS_ENABLE = _KOPS_DISABLE.replace("enabled: false", "enabled: true")
_AKS_NOTE = ("AKS does not let kube-proxy be disabled; the dataplane runs alongside it and must not clean up "
             "its rules")
_NO_DAEMONSET = ("no kube-system/kube-proxy DaemonSet: kube-proxy is not running as a DaemonSet here; turn it "
                 "off the way this distribution runs it")


def _cluster(api: client.ApiClient | Cluster) -> Cluster:
    return api if isinstance(api, Cluster) else Cluster(api)


def kube_proxy_mode(api: client.ApiClient | Cluster) -> tuple[str | None, str]:
    """kube-proxy's proxy mode from its ConfigMap, and which ConfigMap said so (``(None, "")`` if unknown).

    An empty ``mode`` means the platform default, iptables on Linux.
    """
    cluster = _cluster(api)
    for path, key in _KUBE_PROXY_CONFIGS:
        cm = cluster.get(path)
        if not cm or key not in (cm.get("data") or {}):
            continue
        try:
            config = yaml.safe_load(cm["data"][key]) or {}
        except yaml.YAMLError:
            continue  # not ours to judge; the IPVS check just cannot tell
        mode = config.get("mode") if isinstance(config, dict) else None
        return (mode or "iptables"), f"ConfigMap kube-system/{path.rsplit('/', 1)[1]}"
    return None, ""


def refuse_ipvs(api: client.ApiClient | Cluster) -> None:
    """Raise UnsupportedError when kube-proxy runs in IPVS mode (the guide requires iptables mode first)."""
    mode, where = kube_proxy_mode(api)
    if mode == "ipvs":
        raise UnsupportedError(
            "kube-proxy IPVS mode",
            "the eBPF dataplane cannot take over from kube-proxy in IPVS mode; switch kube-proxy to "
            "iptables mode first (set mode: iptables in its configuration and restart its pods), "
            "then enable eBPF",
            obj=where,
        )


def _ds_write(body: dict, summary: str, content_type: str) -> Write:
    return Write("PATCH", KUBE_PROXY_DS, body, summary, content_type,
                 kubectl_patch("ds", "kube-proxy", body, content_type, namespace="kube-system"))


def _felix_write(cluster: Cluster, body: dict, summary: str) -> Write:
    if cluster.get(FELIX_DEFAULT) is None:
        spec = {k: v for k, v in body["spec"].items() if v is not None}
        full = {"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
                "metadata": {"name": "default"}, "spec": spec}
        return Write("POST", FELIX_LIST, full, summary + " (creating FelixConfiguration default)",
                     kubectl="kubectl create -f -   # the body above, as YAML or JSON")
    return Write("PATCH", FELIX_DEFAULT, body, summary, MERGE_PATCH,
                 kubectl_patch("felixconfiguration", "default", body, MERGE_PATCH))


def _node_selector(ds: dict) -> dict[str, Any]:
    return ((ds.get("spec") or {}).get("template", {}).get("spec") or {}).get("nodeSelector") or {}


def plan_disable(api: client.ApiClient | Cluster, distro: str) -> Plan:
    """The requests that stop kube-proxy on ``distro`` (see the module text); refuses IPVS mode."""
    cluster = _cluster(api)
    refuse_ipvs(cluster)
    step = "kube-proxy disable"
    if distro == d.OPENSHIFT:
        return Plan(step, (Write("PATCH", OPENSHIFT_NETWORK, OPENSHIFT_DISABLE_PATCH,
                                 "stop the cluster network operator deploying kube-proxy", MERGE_PATCH,
                                 kubectl_patch("networks.operator.openshift.io", "cluster",
                                               OPENSHIFT_DISABLE_PATCH, MERGE_PATCH)),))
    if distro == d.KOPS:
        return Plan(step, notes=(_KOPS_DISABLE,))
    if distro == d.AKS:
        return Plan(step, (_felix_write(cluster, AKS_KEEP_KUBE_PROXY_PATCH,
                                        "AKS keeps kube-proxy: leave its iptables rules in place"),),
                    notes=(_AKS_NOTE,))
    ds = cluster.get(KUBE_PROXY_DS)
    if ds is None:
        return Plan(step, notes=(_NO_DAEMONSET,))
    if _node_selector(ds).get("non-calico") == "true":
        return Plan(step, notes=("the kube-proxy DaemonSet already selects non-calico nodes only",))
    return Plan(step, (_ds_write(DISABLE_DS_PATCH, "schedule kube-proxy only on nodes labelled "
                                 "non-calico=true (none are)", STRATEGIC_MERGE_PATCH),))


def plan_enable(api: client.ApiClient | Cluster, distro: str) -> Plan:
    """The requests that bring kube-proxy back (reverses :func:`plan_disable`)."""
    cluster = _cluster(api)
    step = "kube-proxy enable"
    if distro == d.OPENSHIFT:
        return Plan(step, (Write("PATCH", OPENSHIFT_NETWORK, OPENSHIFT_ENABLE_PATCH,
                                 "let the cluster network operator deploy kube-proxy again", MERGE_PATCH,
                                 kubectl_patch("networks.operator.openshift.io", "cluster",
                                               OPENSHIFT_ENABLE_PATCH, MERGE_PATCH)),))
    if distro == d.KOPS:
        return Plan(step, notes=(_KOPS_ENABLE,))
    if distro == d.AKS:
        if cluster.get(FELIX_DEFAULT) is None:
            return Plan(step, notes=("no FelixConfiguration default: nothing to undo",))
        return Plan(step, (_felix_write(cluster, AKS_UNDO_PATCH,
                                        "back to the default: clean up kube-proxy's rules"),))
    ds = cluster.get(KUBE_PROXY_DS)
    if ds is None:
        return Plan(step, notes=("no kube-system/kube-proxy DaemonSet to re-enable",))
    if "non-calico" not in _node_selector(ds):
        return Plan(step, notes=("the kube-proxy DaemonSet has no non-calico selector: already enabled",))
    # A merge patch with null deletes just that key and keeps any other selector the DaemonSet had.
    return Plan(step, (_ds_write(ENABLE_DS_PATCH, "drop the non-calico nodeSelector so kube-proxy runs again",
                                 MERGE_PATCH),))
