"""deploy/: every manifest parses into the kubernetes client's models without losing a field,
and the agent's RBAC is read-only on exactly the kinds its informers follow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from calico_ebpf.k8s.resources import RESOURCES

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MODELS = {
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "V1ClusterRole",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "V1ClusterRoleBinding",
    ("apps/v1", "DaemonSet"): "V1DaemonSet",
}


def _documents() -> list[dict]:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]
    return docs


def _by_kind(kind: str) -> dict:
    [doc] = [d for d in _documents() if d["kind"] == kind]
    return doc


def test_kustomization_lists_every_manifest():
    listed = set(yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}


@pytest.mark.parametrize("doc", _documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_round_trips_through_the_client_models(doc):
    api = client.ApiClient()
    model = api.deserialize(json.dumps(doc), MODELS[(doc["apiVersion"], doc["kind"])], "application/json")
    # A misspelt field would be dropped by the model: the round trip must give back every key.
    assert api.sanitize_for_serialization(model) == doc


def test_cluster_role_is_get_list_watch_on_the_informer_kinds_only():
    role = _by_kind("ClusterRole")
    granted = set()
    for rule in role["rules"]:
        assert sorted(rule["verbs"]) == ["get", "list", "watch"], rule
        assert set(rule) == {"apiGroups", "resources", "verbs"}, "no resourceNames/nonResourceURLs"
        granted |= {(group, res) for group in rule["apiGroups"] for res in rule["resources"]}
    assert granted == {(r.group, r.plural) for r in RESOURCES.values()}


def test_binding_ties_the_role_to_the_daemonset_service_account():
    binding, ds, sa = _by_kind("ClusterRoleBinding"), _by_kind("DaemonSet"), _by_kind("ServiceAccount")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": _by_kind("ClusterRole")["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": sa["metadata"]["namespace"]}]
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    assert ds["metadata"]["namespace"] == sa["metadata"]["namespace"] == _by_kind("Namespace")["metadata"]["name"]


def test_daemonset_runs_privileged_on_the_host_network_with_bpffs_and_the_endpoint_configmap():
    pod = _by_kind("DaemonSet")["spec"]["template"]["spec"]
    [agent] = pod["containers"]
    assert pod["hostNetwork"] is True and agent["securityContext"] == {"privileged": True}
    assert agent["command"] == ["calico-ebpf", "agent"]
    assert agent["envFrom"] == [{"configMapRef": {"name": "kubernetes-services-endpoint", "optional": True}}]
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    assert (mounts["bpffs"]["mountPath"], volumes["bpffs"]) == ("/sys/fs/bpf", "/sys/fs/bpf")
    assert mounts["bpffs"]["mountPropagation"] == "Bidirectional"
    assert (mounts["sys"]["mountPath"], volumes["sys"]) == ("/sys", "/sys")
    assert set(mounts) == set(volumes)
