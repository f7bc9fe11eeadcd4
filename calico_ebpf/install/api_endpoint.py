"""Step 2 of the guide: tell the dataplane where the API server really is.

Once kube-proxy is gone, the ``kubernetes`` Service ClusterIP only works when
our dataplane already runs, so the dataplane itself must reach the API server
directly. Calico reads the address from the ``kubernetes-services-endpoint``
ConfigMap in ``tigera-operator`` (``KUBERNETES_SERVICE_HOST`` /
``KUBERNETES_SERVICE_PORT``); our DaemonSet loads the same ConfigMap.

Where the address comes from, per distribution (Calico's guide):

- kOps: ``api.internal.<cluster name>`` on 443;
- OpenShift: ``api.<cluster>.<domain>`` on 6443;
- MKE: ``proxy.local`` on 6444;
- AKS and EKS: the ``server`` of the ``kube-public/cluster-info`` ConfigMap;
- kubeadm: ``controlPlaneEndpoint`` of ``kube-system/kubeadm-config``;
- otherwise (and as a fallback): the server this client talks to.

The address must be stable: a bare node IP, or one of several API servers
without a load balancer in front, stops working when that node goes away;
we warn about both. Example::

    ep, warnings = find_endpoint(Cluster(api_client), distro="eks")
    plan = plan_endpoint(api_client, distro="eks")    # create/update the ConfigMap
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import attrs
import yaml
from kubernetes import client

from calico_ebpf.errors import ModelError
from calico_ebpf.install import distro as d
from calico_ebpf.install.plan import MERGE_PATCH, STRATEGIC_MERGE_PATCH, Cluster, Plan, Write, kubectl_patch

__all__ = ["CONFIGMAP_NAME", "CONFIGMAP_NAMESPACE", "OPERATOR_DNS_PATCH", "Endpoint", "find_endpoint",
           "plan_endpoint"]

CONFIGMAP_NAME = "kubernetes-services-endpoint"
CONFIGMAP_NAMESPACE = "tigera-operator"
CONFIGMAP_PATH = f"/api/v1/namespaces/{CONFIGMAP_NAMESPACE}/configmaps/{CONFIGMAP_NAME}"
CLUSTER_INFO = "/api/v1/namespaces/kube-public/configmaps/cluster-info"
KUBEADM_CONFIG = "/api/v1/namespaces/kube-system/configmaps/kubeadm-config"
KUBERNETES_SLICES = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
OPERATOR_DEPLOYMENT = "/apis/apps/v1/namespaces/tigera-operator/deployments/tigera-operator"
# On kOps and EKS the API server name lives in the VPC's private DNS; the operator runs on the
# host network before cluster DNS works, so it asks the AWS VPC resolver directly.
AWS_VPC_RESOLVER = "169.254.169.253"
OPERATOR_DNS_PATCH = {"spec": {"template": {"spec": {"dnsConfig": {"nameservers": [AWS_VPC_RESOLVER]}}}}}


@attrs.frozen
class Endpoint:
    """The API server address to write, and where we found it."""

    host: str
    port: int
    source: str

    def data(self) -> dict[str, str]:
        """The ConfigMap's ``data`` (values are strings in a ConfigMap)."""
        return {"KUBERNETES_SERVICE_HOST": self.host, "KUBERNETES_SERVICE_PORT": str(self.port)}


def _split(url_or_hostport: str, default_port: int = 443) -> tuple[str, int]:
    text = url_or_hostport if "//" in url_or_hostport else f"//{url_or_hostport}"
    parts = urlsplit(text)
    if not parts.hostname:
        raise ModelError("API server address", "host", f"cannot parse {url_or_hostport!r}")
    # urlsplit lowercases the host; keep it as written (it ends up verbatim in the ConfigMap).
    start = parts.netloc.lower().find(parts.hostname)
    return parts.netloc[start:start + len(parts.hostname)], parts.port or default_port


def _from_cluster_info(cluster: Cluster) -> tuple[str, int] | None:
    cm = cluster.get(CLUSTER_INFO)
    kubeconfig = ((cm or {}).get("data") or {}).get("kubeconfig")
    if not kubeconfig:
        return None
    doc = yaml.safe_load(kubeconfig) or {}
    for entry in doc.get("clusters") or []:
        server = (entry.get("cluster") or {}).get("server")
        if server:
            return _split(server)
    return None


def _from_kubeadm(cluster: Cluster) -> tuple[str, int] | None:
    cm = cluster.get(KUBEADM_CONFIG)
    text = ((cm or {}).get("data") or {}).get("ClusterConfiguration")
    endpoint = (yaml.safe_load(text) or {}).get("controlPlaneEndpoint") if text else None
    return _split(endpoint, 6443) if endpoint else None


def _kops_host(client_host: str, cluster_name: str | None) -> str:
    if cluster_name:
        return f"api.internal.{cluster_name}"
    # kOps writes kubeconfigs for https://api.<cluster name>; the internal name is beside it.
    if client_host.startswith("api.internal."):
        return client_host
    if client_host.startswith("api."):
        return "api.internal." + client_host[len("api."):]
    raise ModelError("kOps cluster", "name", f"cannot derive it from the server {client_host!r}; pass the "
                     "cluster name (the API server is api.internal.<cluster name>)")


def _find(cluster: Cluster, distro: str, cluster_name: str | None) -> Endpoint:
    client_host, client_port = _split(cluster.host)
    if distro == d.KOPS:
        return Endpoint(_kops_host(client_host, cluster_name), 443, "kOps: api.internal.<cluster name>")
    if distro == d.OPENSHIFT:
        if cluster_name:
            return Endpoint(f"api.{cluster_name}", 6443, "OpenShift: api.<cluster>.<domain>")
        if client_host.startswith("api."):
            return Endpoint(client_host, 6443, "OpenShift: api.<cluster>.<domain> from the kubeconfig")
        raise ModelError("OpenShift cluster", "name", f"the server {client_host!r} is not api.<cluster>.<domain>; "
                         "pass the cluster name and domain (<cluster>.<domain>) or the host")
    if distro == d.MKE:
        return Endpoint("proxy.local", 6444, "MKE: proxy.local")
    if distro in (d.AKS, d.EKS):
        found = _from_cluster_info(cluster)
        if found:
            return Endpoint(*found, "ConfigMap kube-public/cluster-info")
    if distro in (d.KUBEADM, d.GENERIC):
        found = _from_kubeadm(cluster)
        if found:
            return Endpoint(*found, "ConfigMap kube-system/kubeadm-config: controlPlaneEndpoint")
    return Endpoint(client_host, client_port, "the API server this client talks to")


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _stability_warnings(cluster: Cluster, ep: Endpoint) -> list[str]:
    ip = _ip(ep.host)
    if ip is None:
        return []  # a DNS name: whoever runs the cluster keeps it pointing at a live API server
    if ip.is_loopback:
        return [f"{ep.host} is a loopback address: pods on other nodes cannot reach the API server there"]
    warnings = []
    for node in cluster.list("/api/v1/nodes"):
        addresses = {a.get("address") for a in (node.get("status") or {}).get("addresses") or []}
        if ep.host in addresses:
            warnings.append(f"{ep.host} is the IP of Node {node['metadata']['name']}: if that node goes away "
                            "the dataplane loses the API server; prefer a load balancer or DNS name")
            break
    servers = set()
    for eps in cluster.list(KUBERNETES_SLICES):
        if (eps.get("metadata", {}).get("labels") or {}).get("kubernetes.io/service-name") == "kubernetes":
            servers |= {a for e in eps.get("endpoints") or [] for a in e.get("addresses") or []}
    if len(servers) > 1 and ep.host in servers:
        warnings.append(f"{ep.host} is one of {len(servers)} API servers and no load balancer fronts them: "
                        "the others are not used if it fails")
    return warnings


def find_endpoint(
    api: client.ApiClient | Cluster,
    distro: str,
    *,
    host: str | None = None,
    cluster_name: str | None = None,
) -> tuple[Endpoint, list[str]]:
    """The API server address for ``distro`` (``host`` — ``name`` or ``name:port`` — overrides),
    with warnings about its stability."""
    cluster = api if isinstance(api, Cluster) else Cluster(api)
    ep = Endpoint(*_split(host), "given on the command line") if host else _find(cluster, distro, cluster_name)
    return ep, _stability_warnings(cluster, ep)


def plan_endpoint(
    api: client.ApiClient | Cluster,
    distro: str,
    *,
    host: str | None = None,
    cluster_name: str | None = None,
    operator_dns: bool = False,
    namespace: str = CONFIGMAP_NAMESPACE,
) -> Plan:
    """Create or update the ``kubernetes-services-endpoint`` ConfigMap (only when it differs).

    ``namespace`` is ``tigera-operator`` for Calico's operator; our own agent DaemonSet
    (``deploy/``) reads the same ConfigMap from its namespace, ``calico-ebpf``.
    ``operator_dns`` (kOps/EKS) also patches the tigera-operator Deployment to resolve
    through the AWS VPC resolver; without it, that patch is printed as advice.
    """
    cluster = api if isinstance(api, Cluster) else Cluster(api)
    ep, warnings = find_endpoint(cluster, distro, host=host, cluster_name=cluster_name)
    notes = [f"API server {ep.host}:{ep.port} ({ep.source})"]
    writes = []
    collection = f"/api/v1/namespaces/{namespace}/configmaps"
    current = cluster.get(f"{collection}/{CONFIGMAP_NAME}")
    if current is None:
        body = {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": CONFIGMAP_NAME, "namespace": namespace}, "data": ep.data()}
        writes.append(Write("POST", collection, body, f"create ConfigMap {namespace}/{CONFIGMAP_NAME}",
                            kubectl=f"kubectl create configmap {CONFIGMAP_NAME} -n {namespace} " + " ".join(
                                f"--from-literal={k}={v}" for k, v in ep.data().items())))
    elif {k: (current.get("data") or {}).get(k) for k in ep.data()} != ep.data():
        body = {"data": ep.data()}
        writes.append(Write("PATCH", f"{collection}/{CONFIGMAP_NAME}", body,
                            f"point {CONFIGMAP_NAME} at {ep.host}:{ep.port}", MERGE_PATCH,
                            kubectl_patch("configmap", CONFIGMAP_NAME, body, MERGE_PATCH, namespace=namespace)))
    if writes and namespace == CONFIGMAP_NAMESPACE:
        notes.append("the operator and the nodes pick the ConfigMap up within about a minute; restart the "
                     "operator to apply it at once: kubectl delete pod -n tigera-operator -l k8s-app=tigera-operator")
    if distro in (d.KOPS, d.EKS):
        dns = kubectl_patch("deployment", "tigera-operator", OPERATOR_DNS_PATCH, STRATEGIC_MERGE_PATCH,
                            namespace=CONFIGMAP_NAMESPACE)
        if operator_dns:
            writes.append(Write("PATCH", OPERATOR_DEPLOYMENT, OPERATOR_DNS_PATCH,
                                f"resolve the API server name through the AWS VPC resolver {AWS_VPC_RESOLVER}",
                                STRATEGIC_MERGE_PATCH, dns))
        else:
            notes.append(f"{distro}: if the operator cannot resolve {ep.host} before cluster DNS runs, point its "
                         f"DNS at the VPC resolver (or rerun with --operator-dns): {dns}")
    return Plan("api-endpoint", tuple(writes), tuple(notes), tuple(warnings))
