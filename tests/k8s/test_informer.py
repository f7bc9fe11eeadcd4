"""Informer against the API server double, through the real kubernetes client."""

from __future__ import annotations

import itertools
import time

import pytest
from k8s_helpers import Recorder, wait_until

from calico_ebpf.k8s import Backoff, Informer

pytestmark = pytest.mark.timeout(30)


def svc(name: str, namespace: str = "default", port: int = 80) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": [{"port": port, "protocol": "TCP"}]},
    }


def fast_backoff() -> Backoff:
    return Backoff(initial=0.02, maximum=0.2, jitter=0.5)


@pytest.fixture
def informers():
    """Start informers through this fixture so each one is stopped even when a test fails."""
    started: list[Informer] = []

    def start(*args, **kwargs) -> Informer:
        kwargs.setdefault("backoff", fast_backoff())
        informer = Informer(*args, **kwargs).start()
        started.append(informer)
        return informer

    yield start
    for informer in started:
        assert informer.stop(timeout=5), f"informer {informer.name} did not stop"


def watch_requests(apiserver, resource: str) -> list:
    return [r for r in apiserver.requests if r.resource == resource and r.watch]


def list_requests(apiserver, resource: str) -> list:
    return [r for r in apiserver.requests if r.resource == resource and not r.watch and r.method == "GET"]


def test_list_then_watch_delivers_events_in_order(apiserver, api_client, recorder, informers):
    apiserver.create(svc("a"))
    apiserver.create(svc("b", namespace="other"))
    informer = informers(api_client, "services", recorder)
    assert informer.wait_for_sync(5)
    assert recorder.wait_for(2) == [("ADDED", "default/a"), ("ADDED", "other/b")]
    apiserver.wait_for_watches(1, "services")

    changed = svc("a", port=8080)
    apiserver.update(changed)
    apiserver.create(svc("c"))
    apiserver.delete("v1", "Service", "a", "default")

    assert recorder.wait_for(5)[2:] == [("MODIFIED", "default/a"), ("ADDED", "default/c"), ("DELETED", "default/a")]
    _, _, modified = recorder.events[2]
    assert modified["spec"]["ports"][0]["port"] == 8080
    # List items of built-in kinds arrive without kind/apiVersion; the informer fills them in.
    _, _, listed = recorder.events[0]
    assert (listed["apiVersion"], listed["kind"]) == ("v1", "Service")
    assert sorted(o["metadata"]["name"] for o in informer.list()) == ["b", "c"]
    assert informer.get("b", "other")["metadata"]["namespace"] == "other"
    assert informer.resource_version == str(apiserver.resource_version)
    # The first list may be served from the API server's cache: resourceVersion=0.
    assert list_requests(apiserver, "services")[0].query.get("resourceVersion") == "0"
    first_watch = watch_requests(apiserver, "services")[0].query
    assert first_watch["allowWatchBookmarks"] == "true"
    assert first_watch["resourceVersion"] == "3"  # the list's revision: two creates after rv 1


def test_bookmark_advances_resource_version_used_by_next_watch(apiserver, api_client, recorder, informers):
    apiserver.create(svc("a"))
    informer = informers(api_client, "services", recorder)
    assert informer.wait_for_sync(5)
    apiserver.wait_for_watches(1, "services")
    listed_rv = informer.resource_version

    # Changes to another kind move the global revision but send nothing on the services watch...
    node = apiserver.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    assert informer.resource_version == listed_rv
    # ...until a bookmark tells the informer how far it is caught up.
    assert apiserver.send_bookmarks() == 1
    wait_until(lambda: informer.resource_version == node["metadata"]["resourceVersion"], what="bookmark")

    apiserver.drop_watches()
    wait_until(lambda: len(watch_requests(apiserver, "services")) >= 2, what="re-watch")
    assert watch_requests(apiserver, "services")[1].query["resourceVersion"] == node["metadata"]["resourceVersion"]
    assert len(list_requests(apiserver, "services")) == 1  # resumed, no relist
    assert recorder.seen() == [("ADDED", "default/a")]  # bookmarks are not delivered as events


def test_dropped_watch_resumes_without_losing_or_repeating_events(apiserver, api_client, recorder, informers):
    apiserver.create(svc("a"))
    informer = informers(api_client, "services", recorder)
    assert informer.wait_for_sync(5)
    apiserver.wait_for_watches(1, "services")
    # Keep the informer away while changes happen: they must come from history on resume.
    apiserver.fail_next(2, 503, resource="services", watch=True)
    apiserver.drop_watches()
    apiserver.create(svc("b"))
    apiserver.delete("v1", "Service", "a", "default")

    assert recorder.wait_for(3) == [("ADDED", "default/a"), ("ADDED", "default/b"), ("DELETED", "default/a")]
    apiserver.wait_for_watches(1, "services")
    time.sleep(0.1)  # room for a wrongly repeated event to show up
    assert len(recorder.seen()) == 3
    assert len(list_requests(apiserver, "services")) == 1
    assert [o["metadata"]["name"] for o in informer.list()] == ["b"]


def test_compaction_while_away_relists_and_delivers_missed_deletions(apiserver, api_client, recorder, informers):
    for name in ("keep", "gone", "changed"):
        apiserver.create(svc(name))
    informer = informers(api_client, "services", recorder)
    assert informer.wait_for_sync(5)
    assert len(recorder.wait_for(3)) == 3
    apiserver.wait_for_watches(1, "services")
    stale_rv = informer.resource_version

    # Cut the watch and keep the informer out while objects change and history is compacted.
    apiserver.fail_next(1000, 503, resource="services", watch=True)
    assert apiserver.drop_watches() == 1
    apiserver.delete("v1", "Service", "gone", "default")
    apiserver.update(svc("changed", port=9090))
    apiserver.create(svc("new"))
    apiserver.compact()
    apiserver.clear_faults()

    events = recorder.wait_for(6)[3:]
    assert events[0] == ("DELETED", "default/gone")
    assert sorted(events[1:]) == [("ADDED", "default/new"), ("MODIFIED", "default/changed")]
    assert sorted(o["metadata"]["name"] for o in informer.list()) == ["changed", "keep", "new"]

    # The resume from the stale revision was refused, then a consistent relist happened.
    wait_until(lambda: any(r.query.get("resourceVersion") == stale_rv for r in watch_requests(apiserver, "services")),
               what="watch from the stale revision")
    relists = list_requests(apiserver, "services")[1:]
    assert relists and "resourceVersion" not in relists[0].query
    apiserver.wait_for_watches(1, "services")
    assert watch_requests(apiserver, "services")[-1].query["resourceVersion"] == str(apiserver.resource_version)


def test_server_errors_back_off_then_recover(apiserver, api_client, recorder, informers):
    apiserver.create(svc("a"))
    apiserver.fail_next(3, 500, resource="services", watch=False)
    backoff = Backoff(initial=0.05, maximum=1.0, factor=2.0, jitter=0.5)
    informer = informers(api_client, "services", recorder, backoff=backoff)

    assert informer.wait_for_sync(5)
    assert recorder.wait_for(1) == [("ADDED", "default/a")]
    attempts = [r.time for r in list_requests(apiserver, "services")]
    assert len(attempts) == 4  # three 500s, then success
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    # Each wait is at least the un-jittered delay, and it doubles.
    for gap, floor in zip(gaps, (0.05, 0.1, 0.2)):
        assert gap >= floor * 0.95, gaps
    assert gaps[2] > gaps[0] * 2, gaps


def test_failing_watch_requests_back_off_and_resume(apiserver, api_client, recorder, informers):
    informer = informers(api_client, "services", recorder)
    assert informer.wait_for_sync(5)
    apiserver.wait_for_watches(1, "services")
    apiserver.fail_next(2, 500, resource="services", watch=True)
    apiserver.drop_watches()
    apiserver.create(svc("late"))
    assert recorder.wait_for(1) == [("ADDED", "default/late")]
    assert len(watch_requests(apiserver, "services")) >= 4  # first, two failures, the one that worked


def test_stop_returns_promptly_while_watching(apiserver, api_client, recorder):
    informer = Informer(api_client, "services", recorder, watch_timeout=60, backoff=fast_backoff()).start()
    assert informer.wait_for_sync(5)
    apiserver.wait_for_watches(1, "services")
    started = time.monotonic()
    assert informer.stop(timeout=5)
    assert time.monotonic() - started < 1.0
    wait_until(lambda: apiserver.watch_count("services") == 0, what="server to see the watch closed")


def test_stop_returns_promptly_while_backing_off(apiserver, api_client, recorder):
    apiserver.fail_next(1000, 500, resource="services")
    informer = Informer(api_client, "services", recorder, backoff=Backoff(initial=10, maximum=10)).start()
    wait_until(lambda: list_requests(apiserver, "services"), what="first list attempt")
    started = time.monotonic()
    assert informer.stop(timeout=5)
    assert time.monotonic() - started < 1.0
    assert not informer.has_synced()
    assert informer.wait_for_sync(0.01) is False


def test_namespaced_informer_sees_only_its_namespace(apiserver, api_client, recorder, informers):
    apiserver.create(svc("mine", namespace="ns1"))
    apiserver.create(svc("theirs", namespace="ns2"))
    informer = informers(api_client, "services", recorder, namespace="ns1")
    assert informer.wait_for_sync(5)
    apiserver.wait_for_watches(1, "services")
    apiserver.create(svc("theirs-too", namespace="ns2"))
    apiserver.create(svc("mine-too", namespace="ns1"))
    assert recorder.wait_for(2) == [("ADDED", "ns1/mine"), ("ADDED", "ns1/mine-too")]
    assert all("/namespaces/ns1/" in r.path for r in apiserver.requests if r.resource == "services")


@pytest.mark.parametrize(
    ("resource", "obj"),
    [
        ("ippools", {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "pool1"},
                     "spec": {"cidr": "10.244.0.0/16"}}),
        ("calico-networkpolicies", {"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
                                    "metadata": {"name": "np", "namespace": "ns1"}, "spec": {"selector": "all()"}}),
        ("endpointslices", {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                            "metadata": {"name": "s-abc", "namespace": "ns1"}, "addressType": "IPv4"}),
        ("networkpolicies", {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                             "metadata": {"name": "np", "namespace": "ns1"}, "spec": {"podSelector": {}}}),
        ("felixconfigurations", {"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
                                 "metadata": {"name": "default"}, "spec": {"bpfEnabled": True}}),
        ("nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}),
        ("pods", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns1"}}),
        ("namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns1"}}),
    ],
)
def test_every_resource_in_the_table_lists_and_watches(apiserver, api_client, recorder, informers, resource, obj):
    informer = informers(api_client, resource, recorder)
    assert informer.wait_for_sync(5)
    apiserver.wait_for_watches(1, informer.resource.plural)
    apiserver.create(obj)
    [(event_type, key)] = recorder.wait_for(1)
    assert event_type == "ADDED"
    assert key == (f"{obj['metadata']['namespace']}/" if "namespace" in obj["metadata"] else "") + obj["metadata"]["name"]
    _, _, delivered = recorder.events[0]
    assert (delivered["apiVersion"], delivered["kind"]) == (obj["apiVersion"], obj["kind"])


def test_handler_exception_does_not_stop_the_informer(apiserver, api_client, informers):
    seen = Recorder()

    def handler(event_type, obj):
        seen(event_type, obj)
        if obj["metadata"]["name"] == "bad":
            raise RuntimeError("handler bug")

    informers(api_client, "services", handler)
    apiserver.wait_for_watches(1, "services")
    apiserver.create(svc("bad"))
    apiserver.create(svc("good"))
    assert seen.wait_for(2) == [("ADDED", "default/bad"), ("ADDED", "default/good")]


def test_resync_relists_and_delivers_only_differences(apiserver, api_client, recorder, informers):
    apiserver.create(svc("a"))
    informers(api_client, "services", recorder, resync=1)
    assert recorder.wait_for(1) == [("ADDED", "default/a")]
    wait_until(lambda: len(list_requests(apiserver, "services")) >= 2, timeout=5, what="resync list")
    assert "resourceVersion" not in list_requests(apiserver, "services")[1].query  # consistent read
    # The watch was cut short so the resync came on time.
    assert watch_requests(apiserver, "services")[0].query["timeoutSeconds"] == "1"
    assert recorder.seen() == [("ADDED", "default/a")]  # nothing changed: nothing re-delivered
