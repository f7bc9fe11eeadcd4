"""The node agent end to end: API server double (real HTTP, real client) -> Agent -> the kernel's maps.

One agent serves the whole module (loading the datapath takes seconds);
each test uses its own Services so they do not interfere. What the agent
programmed is read back from the pinned maps with ``NodeMaps``, as a
separate reader would, not from the agent's caches. The last test restarts
the agent on the same pins. Needs root (bpffs, BPF maps and programs).
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
import uuid

import pytest
from apiserver_double import ApiServerDouble
from k8s_helpers import free_port, wait_until
from kubernetes import client

from calico_ebpf.dataplane.datapath import SCRATCH_MAX_ENTRIES
from calico_ebpf.k8s.agent import Agent
from calico_ebpf.maps.counters import CountersKey, CountersValue
from calico_ebpf.maps.enums import Counter, CounterHook
from calico_ebpf.maps.named import Counters, NodeMaps

pytestmark = pytest.mark.timeout(120)

NODE, OTHER = "node-1", "node-2"
SETTLE = 5.0  # seconds an API change may take to reach the kernel (min sync period 1 s + apply)
HEALTH_TIMEOUT = 3.0  # a change waiting longer than this makes /healthz 503
BACKEND_SLOTS = 512  # a small backend map, so a test can overflow it


# ---- objects -------------------------------------------------------------------------------

def node(name: str, ip: str) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}


def service(name: str, vip: str, port: int = 80, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "t"},
            "spec": {"type": "ClusterIP", "clusterIP": vip,
                     "ports": [{"name": "http", "port": port, "protocol": "TCP"}], **spec}}


def slice_(svc: str, endpoints: list[tuple[str, str]], *, ready: bool = True) -> dict:
    """EndpointSlice of ``svc`` with ``(ip, nodeName)`` endpoints on port 8080."""
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": f"{svc}-abc", "namespace": "t", "labels": {"kubernetes.io/service-name": svc}},
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "nodeName": n, "conditions": {"ready": ready}}
                          for ip, n in endpoints]}


# ---- reading the kernel --------------------------------------------------------------------

def kernel_nat(pin_dir: str) -> dict[str, tuple[int, list[str]]]:
    """``{"vip:port": (service id, ["ip:port" backends])}`` from the pinned maps."""
    with NodeMaps(pin_dir) as maps:
        backends: dict[int, dict[int, str]] = {}
        for k, v in maps.nat_backends.items():
            backends.setdefault(k.id, {})[k.ordinal] = str(v)
        out = {}
        for k, v in maps.nat_frontends_hash.items():
            out[f"{k.addr}:{k.port}"] = (v.id, [backends.get(v.id, {}).get(i) for i in range(v.count)])
        return out


def wait_kernel(pin_dir: str, predicate, what: str, timeout: float = SETTLE) -> dict:
    """Poll the pinned NAT maps until ``predicate(nat)``; returns that view."""
    deadline = time.monotonic() + timeout
    while True:
        nat = kernel_nat(pin_dir)
        if predicate(nat):
            return nat
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; kernel has {nat}")
        time.sleep(0.05)


def http_get(port: int, path: str = "/") -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# ---- the module's cluster and agent --------------------------------------------------------

@pytest.fixture(scope="module")
def pin_dir():
    if os.geteuid() != 0:
        pytest.fail("the agent tests need root (bpffs, BPF maps and programs)")
    from calico_ebpf.kernel import bpffs

    root = bpffs.ensure_bpffs(mount=True)
    path = os.path.join(root, f"cebpf_test_agent_{os.getpid()}_{uuid.uuid4().hex[:8]}")
    yield path
    bpffs.remove_pin_dir(path)


@pytest.fixture(scope="module")
def api():
    with ApiServerDouble() as server:
        server.create(node(NODE, "10.0.0.1"))
        server.create(node(OTHER, "10.0.0.2"))
        server.create(service("web", "10.96.0.10"))
        server.create(slice_("web", [("10.65.0.3", NODE), ("10.65.1.5", OTHER)]))
        yield server


def make_agent(api_url: str, pin_dir: str, **kwargs) -> tuple[Agent, client.ApiClient]:
    configuration = client.Configuration(host=api_url)
    configuration.retries = False
    api_client = client.ApiClient(configuration)
    kwargs.setdefault("min_sync_period", 1.0)
    kwargs.setdefault("kube_proxy_cleanup", False)
    # This module's agent runs in the host's namespace: it must not attach to the host's interfaces
    # (tests/k8s/test_agent_endpoints.py covers attaching, in scratch namespaces).
    kwargs.setdefault("attach_interfaces", False)
    agent = Agent(api_client, NODE, pin_dir=pin_dir, healthz_host="127.0.0.1", healthz_port=0,
                  metrics_port=0, health_check_host="127.0.0.1", quiet=0.1, health_timeout=HEALTH_TIMEOUT,
                  max_entries={**SCRATCH_MAX_ENTRIES, "cebpf_nat_be": BACKEND_SLOTS}, **kwargs)
    return agent, api_client


@pytest.fixture(scope="module")
def running(api, pin_dir):
    """``{"agent": the running Agent}``; the restart test swaps in a new one."""
    # The first list of tiers fails once: the agent must wait for it before its first apply.
    api.fail_next(1, 500, resource="tiers", watch=False)
    agent, api_client = make_agent(api.url, pin_dir)
    holder = {"agent": agent, "clients": [api_client], "before_sync": None}
    agent.start()
    wait_until(lambda: any(r.resource == "tiers" for r in api.requests), what="the first tiers list")
    holder["before_sync"] = (agent.synced, agent.apply_count, http_get(agent.healthz_port, "/healthz"))
    yield holder
    holder["agent"].stop()
    for c in holder["clients"]:
        c.close()


@pytest.fixture
def agent(running) -> Agent:
    if running.get("broken"):
        pytest.fail(f"the module's agent never applied: {running['broken']}")
    try:
        running["agent"].wait_for_apply(1, timeout=60)
    except TimeoutError as exc:
        running["broken"] = str(exc)  # fail the other tests at once instead of 60 s each
        raise
    return running["agent"]


# ---- tests ---------------------------------------------------------------------------------

def test_first_apply_waits_for_every_informer_then_applies_once(running, agent, pin_dir):
    synced, applies, (code, body) = running["before_sync"]
    assert (synced, applies) == (False, 0), "applied before the tiers informer had listed"
    assert code == 503 and json.loads(body)["lastUpdated"] is None

    nat = kernel_nat(pin_dir)
    assert nat["10.96.0.10:80"][1] == ["10.65.0.3:8080", "10.65.1.5:8080"]  # local first
    time.sleep(1.5)  # longer than the min sync period: nothing else should be applied
    assert agent.apply_count == 1
    assert agent.last_report.full


def test_service_and_slice_changes_reach_the_kernel(api, agent, pin_dir):
    api.create(service("life", "10.96.1.1"))
    api.create(slice_("life", [("10.65.0.7", NODE)]))
    nat = wait_kernel(pin_dir, lambda n: n.get("10.96.1.1:80", (0, []))[1] == ["10.65.0.7:8080"], "life added")
    sid = nat["10.96.1.1:80"][0]

    api.update(slice_("life", [("10.65.0.7", NODE), ("10.65.1.8", OTHER)]))
    nat = wait_kernel(pin_dir, lambda n: len(n.get("10.96.1.1:80", (0, []))[1]) == 2, "second backend")
    assert nat["10.96.1.1:80"] == (sid, ["10.65.0.7:8080", "10.65.1.8:8080"])

    api.update(service("life", "10.96.1.1", port=81))
    nat = wait_kernel(pin_dir, lambda n: "10.96.1.1:81" in n and "10.96.1.1:80" not in n, "port change")
    assert nat["10.96.1.1:81"][1] == ["10.65.0.7:8080", "10.65.1.8:8080"]

    api.delete("v1", "Service", "life", "t")
    api.delete("discovery.k8s.io/v1", "EndpointSlice", "life-abc", "t")
    nat = wait_kernel(pin_dir, lambda n: not any(k.startswith("10.96.1.1:") for k in n), "life deleted")
    assert "10.96.0.10:80" in nat
    assert "t/life" not in agent.state.services


def test_relist_after_410_neither_loses_nor_duplicates(api, agent, pin_dir):
    for name, vip in (("keep", "10.96.2.1"), ("gone", "10.96.2.2")):
        api.create(service(name, vip))
        api.create(slice_(name, [("10.65.0.9", NODE)]))
    before = wait_kernel(pin_dir, lambda n: "10.96.2.1:80" in n and "10.96.2.2:80" in n, "keep and gone")
    lists_before = sum(1 for r in api.requests if r.resource == "services" and not r.watch)

    # Keep the watches out while things change and history is compacted: the resume gets 410.
    api.fail_next(1000, 503, watch=True)
    api.drop_watches()
    api.delete("v1", "Service", "gone", "t")
    api.create(service("new", "10.96.2.3"))
    api.create(slice_("new", [("10.65.0.9", NODE)]))
    api.compact()
    api.clear_faults()

    nat = wait_kernel(pin_dir, lambda n: "10.96.2.3:80" in n and "10.96.2.2:80" not in n, "relist", timeout=15)
    assert sum(1 for r in api.requests if r.resource == "services" and not r.watch) > lists_before
    assert nat["10.96.2.1:80"] == before["10.96.2.1:80"]  # same id, same backends
    # Exactly the API server's services, each once.
    want = {f"{o['spec']['clusterIP']}:80" for o in client_list(api, "services")}
    assert set(nat) == want
    assert sorted(agent.state.services) == sorted(f"t/{o['metadata']['name']}" for o in client_list(api, "services"))


def client_list(api: ApiServerDouble, plural: str) -> list[dict]:
    with urllib.request.urlopen(f"{api.url}/api/v1/{plural}", timeout=5) as r:
        return json.loads(r.read())["items"]


def test_dropped_stream_reconnects(api, agent, pin_dir):
    api.wait_for_watches(1, "services", timeout=10)
    assert api.drop_watches() >= 1
    api.create(service("after-drop", "10.96.3.1"))
    api.create(slice_("after-drop", [("10.65.0.4", NODE)]))
    wait_kernel(pin_dir, lambda n: n.get("10.96.3.1:80", (0, []))[1] == ["10.65.0.4:8080"], "after-drop",
                timeout=10)


def test_burst_of_100_events_makes_one_or_two_applies(api, agent, pin_dir):
    wait_until(lambda: agent.idle, timeout=10, what="an idle agent")
    time.sleep(1.1)  # past the min sync period of the last apply
    applies = agent.apply_count
    for i in range(50):
        api.create(service(f"burst-{i}", f"10.96.4.{i + 1}"))
        api.create(slice_(f"burst-{i}", [(f"10.65.0.{i + 20}", NODE)]))
    wait_kernel(pin_dir, lambda n: all(f"10.96.4.{i + 1}:80" in n for i in range(50)), "the burst")
    time.sleep(1.5)  # a straggling apply would show up now
    assert 1 <= agent.apply_count - applies <= 2


def test_healthz_is_kube_proxys(agent):
    wait_until(lambda: http_get(agent.healthz_port, "/healthz")[0] == 200, timeout=SETTLE, what="200")
    doc = json.loads(http_get(agent.healthz_port, "/healthz")[1])
    assert doc["lastUpdated"] and doc["currentTime"] and doc["nodeEligible"] is True


def test_health_check_node_port_reports_local_endpoints(api, agent, pin_dir):
    port = free_port()
    api.create(service("lb", "10.96.5.1", type="LoadBalancer", externalTrafficPolicy="Local",
                       healthCheckNodePort=port))
    api.create(slice_("lb", [("10.65.0.5", NODE), ("10.65.0.6", NODE), ("10.65.1.5", OTHER)]))
    wait_until(lambda: http_get_quiet(port)[0] == 200, timeout=SETTLE, what="the health check port")
    assert json.loads(http_get(port)[1]) == {"service": {"namespace": "t", "name": "lb"}, "localEndpoints": 2,
                                "serviceProxyHealthy": True}

    api.update(slice_("lb", [("10.65.1.5", OTHER)]))
    wait_until(lambda: http_get_quiet(port)[0] == 503, timeout=SETTLE, what="503 without local endpoints")
    assert json.loads(http_get(port)[1])["localEndpoints"] == 0

    api.delete("v1", "Service", "lb", "t")
    wait_until(lambda: not listening(port), timeout=SETTLE, what="the port to close")


def listening(port: int) -> bool:
    # A bare connect, not a GET: a request that lands while the listener shuts down may get
    # no answer at all, and the test is about the port, not that request.
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return False
    return True


def http_get_quiet(port: int) -> tuple[int | None, bytes]:
    try:
        return http_get(port)
    except (urllib.error.URLError, ConnectionError):
        return None, b""


PROM_LINE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? '
                       r'(-?[0-9.e+-]+|\+Inf|-Inf|NaN)$')


def test_rejected_objects_are_reported_not_fatal(api, agent, pin_dir):
    api.create(service("bad", "10.96.6.1", port=0))  # port 0: the model refuses it
    api.create(service("good", "10.96.6.2"))
    api.create(slice_("good", [("10.65.0.8", NODE)]))
    wait_kernel(pin_dir, lambda n: "10.96.6.2:80" in n, "good")
    wait_until(lambda: any("t/bad" in str(e) for e in agent.rejected), timeout=SETTLE, what="bad rejected")
    assert "10.96.6.1:0" not in kernel_nat(pin_dir)
    assert 'calico_ebpf_rejected_objects{kind="Service"} 1' in metrics_text(agent)

    api.update(service("bad", "10.96.6.1", port=82))  # fixed: programmed, no longer reported
    wait_kernel(pin_dir, lambda n: "10.96.6.1:82" in n, "bad fixed")
    wait_until(lambda: not agent.rejected, timeout=SETTLE, what="the rejection to clear")


def test_failed_apply_changes_nothing_is_retried_and_shows_in_healthz(api, agent, pin_dir):
    before = kernel_nat(pin_dir)
    api.create(service("huge", "10.96.7.1"))
    api.create(slice_("huge", [(f"10.66.{i // 250}.{i % 250 + 1}", OTHER) for i in range(BACKEND_SLOTS + 10)]))
    wait_until(lambda: agent.failed_applies >= 1, timeout=SETTLE, what="a failed apply")
    assert kernel_nat(pin_dir) == before  # the map cannot take it: nothing was written
    wait_until(lambda: http_get(agent.healthz_port, "/healthz")[0] == 503, timeout=HEALTH_TIMEOUT + SETTLE,
               what="/healthz to report the stuck change")
    assert agent.failed_applies >= 2  # retried meanwhile

    api.update(slice_("huge", [("10.66.0.1", OTHER)]))  # fits again: the next retry goes through
    wait_kernel(pin_dir, lambda n: n.get("10.96.7.1:80", (0, []))[1] == ["10.66.0.1:8080"], "huge, shrunk",
                timeout=40)
    wait_until(lambda: http_get(agent.healthz_port, "/healthz")[0] == 200, timeout=SETTLE, what="healthy again")


def metrics_text(agent: Agent) -> str:
    code, body = http_get(agent.metrics_port, "/metrics")
    assert code == 200
    return body.decode()


def test_conntrack_sweeper_runs_on_the_dataplanes_map(agent):
    gc = agent.conntrack_gc
    assert gc is not None and gc.running
    assert gc.ct_map.fd == agent.dataplane.maps["cebpf_ct"].fd


def test_metrics_are_prometheus_text(agent):
    # Drops as the datapath counts them: one interface's per-CPU counters, written into the live map.
    counters = Counters(agent.dataplane.maps["cebpf_counters"])
    key = CountersKey(ifindex=99999, hook=CounterHook.TC_INGRESS)
    counters.set(key, CountersValue.of({Counter.DROP_POLICY: 2, Counter.NAT_NO_BACKEND: 1}))  # same on every CPU
    try:
        text = metrics_text(agent)
    finally:
        counters.delete(key)
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert line.startswith(("# HELP ", "# TYPE ")), line
            continue
        assert PROM_LINE.match(line), f"not a Prometheus sample line: {line!r}"
        name_labels, value = line.rsplit(" ", 1)
        samples[name_labels] = float(value)
    assert samples['calico_ebpf_syncs_total{result="success"}'] >= 1
    assert samples["calico_ebpf_sync_duration_seconds_count"] >= 1
    assert samples['calico_ebpf_sync_duration_seconds_bucket{le="+Inf"}'] == \
        samples["calico_ebpf_sync_duration_seconds_count"]
    assert samples["calico_ebpf_services_programmed"] >= 1
    assert samples["calico_ebpf_endpoints_programmed"] >= 2
    assert samples['calico_ebpf_map_entries{map="cebpf_nat_feh"}'] >= 1
    assert samples['calico_ebpf_map_max_entries{map="cebpf_nat_feh"}'] > 0
    assert "calico_ebpf_conntrack_entries" in samples
    cpus = counters.map.nr_cpus
    assert samples['calico_ebpf_dropped_packets_total{reason="drop_policy"}'] == 2 * cpus
    assert samples['calico_ebpf_dropped_packets_total{reason="nat_no_backend"}'] == cpus
    assert samples['calico_ebpf_dropped_packets_total{reason="drop_short"}'] == 0
    assert samples['calico_ebpf_informer_events_total{resource="services",type="ADDED"}'] >= 1


def test_calico_kinds_are_followed_where_served(apiserver, api_client):
    """No kernel: which group the Calico kinds are listed from (the API server's, else none)."""
    agent = Agent(api_client, NODE, healthz_port=None, metrics_port=None)
    assert dict(agent._resources())["ippools"].api_version == "projectcalico.org/v3"
    for status in (404, 403):  # no Calico API server (or no RBAC for it), no CRDs
        apiserver.fail_next(1, status, resource="felixconfigurations")
        names = [name for name, _ in agent._resources()]
        assert "services" in names and not {"ippools", "tiers", "felixconfigurations"} & set(names)
    apiserver.fail_next(1, 500, resource="felixconfigurations")  # served, failing now: keep following it
    assert dict(agent._resources())["ippools"].api_version == "projectcalico.org/v3"


KUBE_PROXY_RULES = """*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-WEB - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp --dport 80 -j KUBE-SVC-WEB
COMMIT
"""


def test_restart_readopts_with_same_ids_and_no_writes(api, running, agent, pin_dir):
    """Last in the module: stops the agent and starts another on the same pins. The successor
    also runs the kube-proxy cleanup, pointed at a scratch namespace holding kube-proxy's chains."""
    from calico_ebpf.kernel.netns import Netns

    wait_until(lambda: agent.idle, timeout=10, what="an idle agent")
    ids = agent.dataplane.service_ids
    before = kernel_nat(pin_dir)
    agent.stop()
    assert kernel_nat(pin_dir) == before  # stopping leaves the dataplane in the kernel

    with Netns(prefix="agentkp") as scratch:
        scratch.run_cmd(["iptables-restore", "--noflush"], input=KUBE_PROXY_RULES)
        successor, api_client = make_agent(api.url, pin_dir, kube_proxy_cleanup=True, cleanup_netns=scratch)
        running["agent"] = successor
        running["clients"].append(api_client)
        successor.start()
        report = successor.wait_for_apply(1, timeout=60)
        assert report.writes == 0, str(report)
        assert successor.dataplane.service_ids == ids
        assert kernel_nat(pin_dir) == before

        # After the first apply (never before: kube-proxy keeps serving until we do), its rules go.
        wait_until(lambda: successor.cleanup_report is not None, timeout=10, what="the kube-proxy cleanup")
        assert successor.cleanup_report.removed_chains["iptables nat"] == ["KUBE-SERVICES", "KUBE-SVC-WEB"]
        assert "KUBE-" not in scratch.run_cmd(["iptables-save", "-t", "nat"]).stdout

