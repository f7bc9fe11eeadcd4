"""Build a kubernetes ``ApiClient`` from in-cluster credentials or a kubeconfig file.

Example::

    api_client = load_api_client()                        # in a pod, else ~/.kube/config
    api_client = load_api_client("/etc/kubernetes/admin.conf", context="admin@cluster")

In a pod the API server address comes from ``KUBERNETES_SERVICE_HOST`` /
``KUBERNETES_SERVICE_PORT``. With our dataplane in place of kube-proxy those
must name the API server directly, not the ``kubernetes`` Service ClusterIP:
the agent is what makes ClusterIPs work, so it cannot depend on one. Calico's
install guide does this with the ``kubernetes-services-endpoint`` ConfigMap,
which the DaemonSet loads into the environment (``envFrom``); this loader then
picks the values up unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from kubernetes import client, config
from kubernetes.config.incluster_config import (
    SERVICE_CERT_FILENAME,
    SERVICE_HOST_ENV_NAME,
    SERVICE_TOKEN_FILENAME,
    InClusterConfigLoader,
)


def in_cluster(environ: Mapping[str, str] = os.environ) -> bool:
    """True when running in a pod (the kubelet set ``KUBERNETES_SERVICE_HOST``)."""
    return bool(environ.get(SERVICE_HOST_ENV_NAME))


def load_in_cluster_client(
    *,
    token_path: str = SERVICE_TOKEN_FILENAME,
    ca_path: str = SERVICE_CERT_FILENAME,
    environ: Mapping[str, str] = os.environ,
) -> client.ApiClient:
    """An ApiClient from the pod's service account token and CA (re-read as the token rotates)."""
    configuration = client.Configuration()
    InClusterConfigLoader(token_filename=token_path, cert_filename=ca_path, environ=environ).load_and_set(
        configuration
    )
    return client.ApiClient(configuration)


def load_api_client(kubeconfig: str | None = None, *, context: str | None = None) -> client.ApiClient:
    """An ApiClient for ``kubeconfig`` if given, else in-cluster config in a pod, else the default kubeconfig.

    The default kubeconfig is ``$KUBECONFIG`` or ``~/.kube/config``, as for kubectl.
    Raises ``kubernetes.config.ConfigException`` when nothing usable is found.
    """
    if kubeconfig is None and in_cluster():
        return load_in_cluster_client()
    if kubeconfig is None:
        # Read $KUBECONFIG now: the library samples it once, at import time.
        kubeconfig = os.environ.get("KUBECONFIG") or "~/.kube/config"
    # A fresh Configuration per client: the library's global default stays untouched.
    return config.new_client_from_config(
        config_file=kubeconfig, context=context, persist_config=False,
        client_configuration=client.Configuration(),
    )
