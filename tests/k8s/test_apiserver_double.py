"""The API server double behaves like the real one where the informers depend on it."""

from __future__ import annotations

import json

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

pytestmark = pytest.mark.timeout(20)


def svc(name: str, port: int = 80) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"ports": [{"port": port}]}}


def watch_lines(api_client, **kwargs) -> list[dict]:
    """Every event of one watch on services that ends after ``timeout_seconds``."""
    response = client.CoreV1Api(api_client).list_service_for_all_namespaces(
        watch=True, _preload_content=False, _request_timeout=10, timeout_seconds=1, **kwargs)
    try:
        return [json.loads(line) for line in response.data.splitlines() if line.strip()]
    finally:
        response.release_conn()


def test_watch_replays_history_after_the_given_revision(apiserver, api_client):
    first = apiserver.create(svc("a"))
    apiserver.update(svc("a", port=81))
    apiserver.delete("v1", "Service", "a", "default")
    events = watch_lines(api_client, resource_version=first["metadata"]["resourceVersion"])
    assert [e["type"] for e in events] == ["MODIFIED", "DELETED"]
    assert [int(e["object"]["metadata"]["resourceVersion"]) for e in events] == [3, 4]


def test_watch_from_a_compacted_revision_gets_410_expired(apiserver, api_client):
    apiserver.create(svc("a"))
    apiserver.create(svc("b"))
    apiserver.compact()
    [event] = watch_lines(api_client, resource_version="2")
    assert event["type"] == "ERROR"
    assert (event["object"]["code"], event["object"]["reason"]) == (410, "Expired")


def test_bookmarks_only_when_asked_for(apiserver, api_client):
    apiserver.create(svc("a"))
    assert watch_lines(api_client, resource_version="2") == []

    # Watch in the background so a bookmark can be sent while it is open.
    response = client.CoreV1Api(api_client).list_service_for_all_namespaces(
        watch=True, resource_version="2", allow_watch_bookmarks=True, timeout_seconds=1,
        _preload_content=False, _request_timeout=10)
    apiserver.wait_for_watches(1, "services")
    apiserver.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}})
    assert apiserver.send_bookmarks() == 1
    events = [json.loads(line) for line in response.data.splitlines() if line.strip()]
    response.release_conn()
    assert events == [{"type": "BOOKMARK", "object": {"apiVersion": "v1", "kind": "Service",
                                                      "metadata": {"resourceVersion": "3"}}}]


def test_exact_list_reads_history_until_compacted(apiserver, api_client):
    core = client.CoreV1Api(api_client)
    apiserver.create(svc("a"))
    apiserver.create(svc("b"))
    apiserver.delete("v1", "Service", "a", "default")
    old = core.list_service_for_all_namespaces(resource_version="2", resource_version_match="Exact")
    assert [s.metadata.name for s in old.items] == ["a"]
    assert old.metadata.resource_version == "2"
    now = core.list_service_for_all_namespaces()
    assert [s.metadata.name for s in now.items] == ["b"]
    apiserver.compact()
    with pytest.raises(ApiException) as gone:
        core.list_service_for_all_namespaces(resource_version="2", resource_version_match="Exact")
    assert gone.value.status == 410
    with pytest.raises(ApiException) as bad:
        core.list_service_for_all_namespaces(resource_version_match="NotOlderThan")
    assert bad.value.status == 400


def test_configmap_create_get_patch_and_conflicts(apiserver, api_client):
    core = client.CoreV1Api(api_client)
    body = {"metadata": {"name": "kubernetes-services-endpoint"},
            "data": {"KUBERNETES_SERVICE_HOST": "192.168.1.10"}}
    created = core.create_namespaced_config_map("kube-system", body)
    assert created.metadata.namespace == "kube-system"
    with pytest.raises(ApiException) as exists:
        core.create_namespaced_config_map("kube-system", body)
    assert exists.value.status == 409

    core.patch_namespaced_config_map("kubernetes-services-endpoint", "kube-system",
                                     {"data": {"KUBERNETES_SERVICE_PORT": "6443"}},
                                     _content_type="application/merge-patch+json")
    read = core.read_namespaced_config_map("kubernetes-services-endpoint", "kube-system")
    assert read.data == {"KUBERNETES_SERVICE_HOST": "192.168.1.10", "KUBERNETES_SERVICE_PORT": "6443"}

    stale = dict(body, metadata={"name": "kubernetes-services-endpoint", "resourceVersion": "2"})
    with pytest.raises(ApiException) as conflict:
        core.replace_namespaced_config_map("kubernetes-services-endpoint", "kube-system", stale)
    assert conflict.value.status == 409
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_config_map("nope", "kube-system")
    assert missing.value.status == 404


def test_injected_faults_hit_only_matching_requests(apiserver, api_client):
    core = client.CoreV1Api(api_client)
    apiserver.fail_next(1, 503, resource="nodes")
    assert core.list_service_for_all_namespaces().items == []
    with pytest.raises(ApiException) as failed:
        core.list_node()
    assert failed.value.status == 503
    assert core.list_node().items == []
