"""Step 3 of the guide: switch the operator's Installation to the BPF dataplane.

On a running cluster the guide patches the ``default`` Installation with a
JSON merge patch; ``hostPorts: null`` drops the host-port setting, which the
eBPF dataplane does not use. For a fresh install, the same change goes into
``custom-resources.yaml`` before it is applied::

    plan = plan_enable(api_client)                    # PATCH installations/default
    text = edit_manifest(open("custom-resources.yaml").read())
"""

from __future__ import annotations

import yaml
from kubernetes import client

from calico_ebpf.errors import CalicoEBPFError, ModelError
from calico_ebpf.install.api_endpoint import CONFIGMAP_NAME, CONFIGMAP_NAMESPACE, CONFIGMAP_PATH
from calico_ebpf.install.plan import MERGE_PATCH, Cluster, Plan, Write, kubectl_patch

__all__ = ["ENABLE_PATCH", "INSTALLATION_PATH", "edit_manifest", "plan_enable"]

INSTALLATION_PATH = "/apis/operator.tigera.io/v1/installations/default"
ENABLE_PATCH = {"spec": {"calicoNetwork": {"linuxDataplane": "BPF", "hostPorts": None}}}


class NotInstalledError(CalicoEBPFError):
    """There is no operator Installation to patch."""


def plan_enable(api: client.ApiClient | Cluster) -> Plan:
    """The patch that turns the ``default`` Installation to ``linuxDataplane: BPF``.

    Nothing is sent when it already is. Raises :class:`NotInstalledError` when Calico
    was not installed by the operator (use :func:`edit_manifest` for a fresh install).
    """
    cluster = api if isinstance(api, Cluster) else Cluster(api)
    inst = cluster.get(INSTALLATION_PATH)
    if inst is None:
        raise NotInstalledError("no operator.tigera.io Installation 'default': install Calico with the Tigera "
                                "operator first, or edit custom-resources.yaml for a fresh install (--manifest)")
    warnings = []
    if cluster.get(CONFIGMAP_PATH) is None:
        warnings.append(f"no ConfigMap {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}: run `calico-ebpf install "
                        "api-endpoint` first, or the nodes lose the API server when kube-proxy stops")
    network = (inst.get("spec") or {}).get("calicoNetwork") or {}
    if network.get("linuxDataplane") == "BPF" and "hostPorts" not in network:
        return Plan("enable", notes=("the Installation already uses the BPF dataplane",), warnings=tuple(warnings))
    write = Write("PATCH", INSTALLATION_PATH, ENABLE_PATCH, "linuxDataplane: BPF, hostPorts removed", MERGE_PATCH,
                  kubectl_patch("installation.operator.tigera.io", "default", ENABLE_PATCH, MERGE_PATCH))
    return Plan("enable", (write,), notes=("follow progress with `calico-ebpf install status`",),
                warnings=tuple(warnings))


def edit_manifest(text: str) -> str:
    """``custom-resources.yaml`` with the Installation set to the BPF dataplane (other documents unchanged).

    Raises ModelError when the text holds no ``operator.tigera.io/v1`` Installation.
    """
    docs = list(yaml.safe_load_all(text))
    found = False
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "Installation" and \
                str(doc.get("apiVersion", "")).startswith("operator.tigera.io/"):
            network = doc.setdefault("spec", {}).setdefault("calicoNetwork", {}) or {}
            doc["spec"]["calicoNetwork"] = network
            network["linuxDataplane"] = "BPF"
            network.pop("hostPorts", None)
            found = True
    if not found:
        raise ModelError("custom-resources.yaml", "Installation", "no operator.tigera.io Installation in the file")
    return yaml.safe_dump_all([doc for doc in docs if doc is not None], sort_keys=False)
