"""The resource table: which client call lists and watches each kind we follow.

Example::

    from calico_ebpf.k8s.resources import RESOURCES
    list_services = RESOURCES["services"].lister(api_client)          # all namespaces
    raw = list_services(_preload_content=False)                        # urllib3 response, raw JSON

Calico's v3 kinds are served by the Calico API server under
``projectcalico.org/v3``. A cluster without it stores them as CRDs under
``crd.projectcalico.org/v1``; use ``RESOURCES["ippools"].with_api_version(
"crd.projectcalico.org/v1")`` there.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes import client

CUSTOM = "CustomObjectsApi"


@dataclass(frozen=True)
class Resource:
    """One kind we can list and watch.

    ``api`` names the kubernetes client API class; for built-in kinds,
    ``list_all`` / ``list_namespaced`` name its list methods (``list_all`` is
    the cluster-wide call: ``list_node`` or ``list_service_for_all_namespaces``).
    Custom resources (``api == "CustomObjectsApi"``) need only the plural.
    """

    plural: str
    api_version: str
    kind: str
    namespaced: bool
    api: str = CUSTOM
    list_all: str = ""
    list_namespaced: str = ""

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    def with_api_version(self, api_version: str) -> Resource:
        """The same custom resource served under another group/version."""
        if self.api != CUSTOM:
            raise ValueError(f"{self.kind} is a built-in kind; its apiVersion is fixed")
        return dataclasses.replace(self, api_version=api_version)

    def lister(self, api_client: client.ApiClient, namespace: str | None = None) -> Callable[..., Any]:
        """The client call that lists (or, with ``watch=True``, watches) this kind.

        The returned callable takes the usual list keyword arguments
        (``resource_version``, ``watch``, ``allow_watch_bookmarks``, ``_preload_content``...).
        """
        if namespace is not None and not self.namespaced:
            raise ValueError(f"{self.kind} is cluster-scoped; it cannot be listed in namespace {namespace!r}")
        api = getattr(client, self.api)(api_client)
        if self.api == CUSTOM:
            if namespace is not None:
                return functools.partial(api.list_namespaced_custom_object, self.group, self.version, namespace,
                                         self.plural)
            if self.namespaced:
                return functools.partial(api.list_custom_object_for_all_namespaces, self.group, self.version,
                                         self.plural)
            return functools.partial(api.list_cluster_custom_object, self.group, self.version, self.plural)
        if namespace is not None:
            return functools.partial(getattr(api, self.list_namespaced), namespace)
        return getattr(api, self.list_all)


def _core(plural: str, kind: str, method: str, namespaced: bool) -> Resource:
    if namespaced:
        return Resource(plural, "v1", kind, True, "CoreV1Api",
                        f"list_{method}_for_all_namespaces", f"list_namespaced_{method}")
    return Resource(plural, "v1", kind, False, "CoreV1Api", f"list_{method}")


_CALICO = "projectcalico.org/v3"

RESOURCES: dict[str, Resource] = {
    "services": _core("services", "Service", "service", True),
    "nodes": _core("nodes", "Node", "node", False),
    "pods": _core("pods", "Pod", "pod", True),
    "namespaces": _core("namespaces", "Namespace", "namespace", False),
    "configmaps": _core("configmaps", "ConfigMap", "config_map", True),
    "endpointslices": Resource("endpointslices", "discovery.k8s.io/v1", "EndpointSlice", True, "DiscoveryV1Api",
                               "list_endpoint_slice_for_all_namespaces", "list_namespaced_endpoint_slice"),
    "networkpolicies": Resource("networkpolicies", "networking.k8s.io/v1", "NetworkPolicy", True,
                                "NetworkingV1Api", "list_network_policy_for_all_namespaces",
                                "list_namespaced_network_policy"),
    "felixconfigurations": Resource("felixconfigurations", _CALICO, "FelixConfiguration", False),
    "ippools": Resource("ippools", _CALICO, "IPPool", False),
    "calico-networkpolicies": Resource("networkpolicies", _CALICO, "NetworkPolicy", True),
    "globalnetworkpolicies": Resource("globalnetworkpolicies", _CALICO, "GlobalNetworkPolicy", False),
    "tiers": Resource("tiers", _CALICO, "Tier", False),
}
"""Every kind the agent follows, by name. Calico's namespaced NetworkPolicy is
``"calico-networkpolicies"`` so that ``"networkpolicies"`` stays the Kubernetes one."""
