"""load_api_client: kubeconfig and in-cluster configuration, checked against the double."""

from __future__ import annotations

import pytest
import yaml
from kubernetes import client
from kubernetes.config import ConfigException

from calico_ebpf.k8s import load_api_client, load_in_cluster_client

pytestmark = pytest.mark.timeout(20)


def write_kubeconfig(path, server: str, context: str = "double") -> str:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}},
                     {"name": "elsewhere", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "u", "user": {"token": "secret-token"}}],
        "contexts": [{"name": context, "context": {"cluster": "c", "user": "u"}},
                     {"name": "other", "context": {"cluster": "elsewhere", "user": "u"}}],
        "current-context": context,
    }))
    return str(path)


def test_kubeconfig_client_talks_to_the_server_with_its_token(apiserver, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")  # an explicit kubeconfig wins over in-cluster
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    apiserver.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}})
    with load_api_client(write_kubeconfig(tmp_path / "config", apiserver.url)) as api_client:
        nodes = client.CoreV1Api(api_client).list_node(_request_timeout=5)
    assert [n.metadata.name for n in nodes.items] == ["node-1"]
    assert apiserver.requests[-1].path == "/api/v1/nodes"


def test_kubeconfig_context_selects_the_cluster(apiserver, tmp_path):
    path = write_kubeconfig(tmp_path / "config", apiserver.url)
    with load_api_client(path, context="other") as api_client:
        assert api_client.configuration.host == "http://127.0.0.1:9"


def test_default_kubeconfig_comes_from_the_environment(apiserver, tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", write_kubeconfig(tmp_path / "config", apiserver.url))
    with load_api_client() as api_client:
        assert client.CoreV1Api(api_client).list_namespace(_request_timeout=5).items == []


def test_in_cluster_uses_service_env_token_and_ca(tmp_path):
    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("sa-token")  # kubelet writes the token without a newline
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    # What the kubernetes-services-endpoint ConfigMap puts in the agent's environment.
    environ = {"KUBERNETES_SERVICE_HOST": "192.168.1.10", "KUBERNETES_SERVICE_PORT": "6443"}
    with load_in_cluster_client(token_path=str(token), ca_path=str(ca), environ=environ) as api_client:
        conf = api_client.configuration
        assert conf.host == "https://192.168.1.10:6443"
        assert conf.ssl_ca_cert == str(ca)
        assert conf.get_api_key_with_prefix("BearerToken").lower() == "bearer sa-token"  # scheme case varies


def test_in_cluster_without_service_env_fails(tmp_path):
    with pytest.raises(ConfigException):
        load_in_cluster_client(token_path=str(tmp_path / "t"), ca_path=str(tmp_path / "c"), environ={})
