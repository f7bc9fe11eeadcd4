"""Which Kubernetes distribution is this cluster? Read from the Nodes, as the install guide branches on it.

Calico's eBPF guide has distribution-specific steps (where the API server
lives, how kube-proxy is turned off). We recognise the distribution from
what each one stamps on its Nodes: labels, annotations and ``spec.providerID``
(``gce://``, ``azure://``, ``aws://``)::

    det = detect(cluster.list("/api/v1/nodes"))
    det.name, det.evidence          # ("eks", "Node ip-10-0-1-5: label eks.amazonaws.com/nodegroup")

``--distro`` on the command line overrides detection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import attrs

__all__ = ["DISTROS", "Detection", "detect"]

KUBEADM = "kubeadm"
KOPS = "kops"
OPENSHIFT = "openshift"
AKS = "aks"
EKS = "eks"
MKE = "mke"
GKE = "gke"
RKE = "rke"
RKE2 = "rke2"
GENERIC = "generic"

DISTROS = (KUBEADM, KOPS, OPENSHIFT, AKS, EKS, MKE, GKE, RKE, RKE2, GENERIC)


@attrs.frozen
class Detection:
    """The distribution and the first piece of evidence that decided it."""

    name: str
    evidence: str


def _has_key(mapping: dict, *prefixes: str) -> str | None:
    return next((k for k in mapping if k.startswith(prefixes)), None)


def _label(*prefixes: str) -> Callable[[dict], str | None]:
    def match(node: dict) -> str | None:
        key = _has_key(node.get("metadata", {}).get("labels") or {}, *prefixes)
        return f"label {key}" if key else None
    return match


def _annotation(*prefixes: str) -> Callable[[dict], str | None]:
    def match(node: dict) -> str | None:
        key = _has_key(node.get("metadata", {}).get("annotations") or {}, *prefixes)
        return f"annotation {key}" if key else None
    return match


def _provider_and_label(scheme: str, *prefixes: str) -> Callable[[dict], str | None]:
    # A cloud's providerID alone says "runs on that cloud", not "is its managed service":
    # kOps on AWS has aws:// too. The managed service's own label decides.
    label = _label(*prefixes)

    def match(node: dict) -> str | None:
        provider = (node.get("spec") or {}).get("providerID") or ""
        found = label(node)
        return f"providerID {scheme}… and {found}" if provider.startswith(scheme) and found else None
    return match


def _os_image(text: str) -> Callable[[dict], str | None]:
    def match(node: dict) -> str | None:
        image = ((node.get("status") or {}).get("nodeInfo") or {}).get("osImage") or ""
        return f"osImage {image!r}" if text in image else None
    return match


# Most specific first: OpenShift nodes may also look like kubeadm-ish RHEL nodes, and so on.
_RULES: tuple[tuple[str, tuple[Callable[[dict], str | None], ...]], ...] = (
    (OPENSHIFT, (_label("node.openshift.io/"), _annotation("machineconfiguration.openshift.io/"),
                 _os_image("Red Hat Enterprise Linux CoreOS"))),
    (GKE, (_provider_and_label("gce://", "cloud.google.com/gke-"),)),
    (AKS, (_provider_and_label("azure://", "kubernetes.azure.com/"),)),
    (KOPS, (_label("kops.k8s.io/"),)),
    (EKS, (_provider_and_label("aws://", "eks.amazonaws.com/", "alpha.eksctl.io/"),)),
    (MKE, (_label("com.docker.ucp"),)),
    (RKE2, (_annotation("rke2.io/"),)),
    (RKE, (_annotation("rke.cattle.io/"),)),
    (KUBEADM, (_annotation("kubeadm.alpha.kubernetes.io/"),)),
)


def detect(nodes: Iterable[dict]) -> Detection:
    """The distribution the Nodes say this is (``generic`` when nothing matches)."""
    nodes = list(nodes)
    for name, matchers in _RULES:
        for node in nodes:
            for match in matchers:
                found = match(node)
                if found:
                    return Detection(name, f"Node {node['metadata']['name']}: {found}")
    return Detection(GENERIC, "no distribution-specific labels or annotations on the Nodes")
