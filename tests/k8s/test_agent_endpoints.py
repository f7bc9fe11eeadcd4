"""The agent attaches the datapath to the node's interfaces and enforces policy, with real traffic.

    node netns (stands in for the node; 169.254.1.1 on lo answers the pods' ARP)
      eth0 10.0.0.1/24  <->  peer in an "outside" netns            (host data interface)
      cali<sha1(t.a)>   <->  pod t/a 10.65.0.2                     (workload)
      cali<sha1(t.b)>   <->  pod t/b 10.65.0.3, serves TCP 8080    (workload, backend of web)

The API double serves the Node, the Pods, Service ``web`` (ClusterIP
10.96.0.10:80 -> 8080) and its EndpointSlice, and the NetworkPolicies; an
:class:`Agent` with ``netns=`` the node namespace does the rest: it finds the
interfaces with one netlink dump, attaches, and syncs policy after every
apply. The checks read the kernel: tc filters with ``TcAttachment.find``,
ifstate entries from the pinned map, and real TCP from pod a to the
ClusterIP, answered by pod b with the client address it saw. The tests run
in order on one module-wide agent; the last one restarts it on the same pins.
Needs root.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid

import pytest
from apiserver_double import ApiServerDouble
from k8s_helpers import wait_until
from kubernetes import client

from calico_ebpf.compiler.routes import veth_name
from calico_ebpf.dataplane.datapath import SCRATCH_MAX_ENTRIES
from calico_ebpf.dataplane.policy import DENY_SLOT, NO_POLICY, remove_policy_tables
from calico_ebpf.k8s.agent import Agent
from calico_ebpf.k8s.endpoints import Endpoints, list_links
from calico_ebpf.kernel.attach import TcAttachment
from calico_ebpf.kernel.netns import Netns, veth_pair
from calico_ebpf.maps.entries import IfaceFlags
from calico_ebpf.maps.named import NodeMaps

pytestmark = pytest.mark.timeout(120)

NODE = "node-1"
NODE_IP = "10.0.0.1"
GATEWAY = "169.254.1.1"
SCOPE_LINK = 253
VIP, PORT, TARGET = "10.96.0.10", 80, 8080
PODS = {"a": "10.65.0.2", "b": "10.65.0.3", "c": "10.65.0.4"}
SETTLE = 10.0  # an API or link change reaching the kernel: debounce + min sync period + apply
DIRECTIONS = ("ingress", "egress")


# ---- objects -------------------------------------------------------------------------------

def node_obj() -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE},
            "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]}}


def pod_obj(name: str) -> dict:
    ip = PODS[name]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "t", "labels": {"app": name}},
            "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}


def service_obj() -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "t"},
            "spec": {"type": "ClusterIP", "clusterIP": VIP, "selector": {"app": "b"},
                     "ports": [{"name": "http", "port": PORT, "targetPort": TARGET, "protocol": "TCP"}]}}


def slice_obj() -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": "web-abc", "namespace": "t", "labels": {"kubernetes.io/service-name": "web"}},
            "ports": [{"name": "http", "port": TARGET, "protocol": "TCP"}],
            "endpoints": [{"addresses": [PODS["b"]], "nodeName": NODE, "conditions": {"ready": True},
                           "targetRef": {"kind": "Pod", "namespace": "t", "name": "b"}}]}


def deny_ingress_to_b() -> dict:
    """Pod b admits no ingress at all (so pod a -> b is denied)."""
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "b-deny", "namespace": "t"},
            "spec": {"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Ingress"]}}


# ---- the node ------------------------------------------------------------------------------

def _sysctl(ns: Netns, path: str, value: str) -> None:
    def write() -> None:
        with open(f"/proc/sys/{path}", "w") as f:
            f.write(value)

    ns.run(write)


class Node:
    """The node namespace, an outside namespace on its eth0, pod namespaces on cali veths."""

    def __init__(self):
        self.ns = Netns(prefix="agepnode")
        self.outside: Netns | None = None
        self.pods: dict[str, Netns] = {}
        try:
            ipr = self.ns.iproute()
            ipr.addr("add", index=self.ns.ifindex("lo"), address=GATEWAY, prefixlen=32)
            _sysctl(self.ns, "net/ipv4/ip_forward", "1")
            self.outside = Netns(prefix="agepout")
            veth_pair("eth0", "fabric0", netns=self.ns, peer_netns=self.outside)
            self.ns.add_address("eth0", f"{NODE_IP}/24")
            self.outside.add_address("fabric0", "10.0.0.254/24")
        except BaseException:
            self.delete()
            raise

    def add_pod(self, name: str) -> str:
        """A pod namespace wired the way Calico's CNI does it; returns the host-side veth name."""
        ip = PODS[name]
        pod = self.pods[name] = Netns(prefix=f"ageppod{name}")
        host_if = veth_name("t", name)
        veth_pair(host_if, "eth0", netns=self.ns, peer_netns=pod)
        self.ns.iproute().route("add", dst=f"{ip}/32", oif=self.ns.ifindex(host_if), scope=SCOPE_LINK)
        pod.add_address("eth0", f"{ip}/32")
        eth0 = pod.ifindex("eth0")
        pod.iproute().route("add", dst=f"{GATEWAY}/32", oif=eth0, scope=SCOPE_LINK)
        pod.iproute().route("add", dst="0.0.0.0/0", gateway=GATEWAY, oif=eth0)
        return host_if

    def remove_pod(self, name: str) -> None:
        self.pods.pop(name).delete()  # its veth goes with it

    def ifindex(self, ifname: str) -> int:
        return self.ns.ifindex(ifname)

    def delete(self) -> None:
        for pod in self.pods.values():
            pod.delete()
        self.pods.clear()
        if self.outside is not None:
            self.outside.delete()
        self.ns.delete()


class PeerServer:
    """TCP server in a pod: answers every connection with the address it came from, then closes."""

    def __init__(self, pod: Netns, ip: str, port: int):
        with pod.enter():
            self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((ip, port))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="peer-server", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, (peer, _) = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.sendall(peer.encode())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def connect(pod: Netns, dst: str = VIP, port: int = PORT, timeout: float = 1.0) -> str | None:
    """Real TCP from ``pod`` to ``dst:port``: the server's answer (the source it saw), None if refused/dropped."""
    with pod.enter():
        sock = socket.socket()
    with sock:
        sock.settimeout(timeout)
        try:
            sock.connect((dst, port))
            return sock.recv(64).decode()
        except OSError:
            return None


def wait_connect(pod: Netns, want: str | None, what: str, timeout: float = SETTLE) -> None:
    wait_until(lambda: connect(pod) == want, timeout=timeout, what=what)


# ---- reading the kernel --------------------------------------------------------------------

def tc_programs(node: Node, ifname: str) -> dict[str, int | None]:
    """``{direction: id of the program in our tc slot}`` (None: empty)."""
    ifindex = node.ifindex(ifname)
    out = {}
    for d in DIRECTIONS:
        att = TcAttachment.find(ifindex, d, netns=node.ns)
        out[d] = None if att is None else att.prog_id
    return out


def ifstate(pin_dir: str) -> dict[int, object]:
    with NodeMaps(pin_dir) as maps:
        return {k.ifindex: v for k, v in maps.ifstate.items()}


# ---- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pin_dir():
    if os.geteuid() != 0:
        pytest.fail("the agent endpoint tests need root (namespaces, bpffs, BPF programs)")
    from calico_ebpf.kernel import bpffs

    root = bpffs.ensure_bpffs(mount=True)
    path = os.path.join(root, f"cebpf_test_agent_ep_{os.getpid()}_{uuid.uuid4().hex[:8]}")
    yield path
    bpffs.remove_pin_dir(path)
    remove_policy_tables(path)


@pytest.fixture(scope="module")
def node():
    n = Node()
    try:
        n.add_pod("a")
        n.add_pod("b")
        yield n
    finally:
        n.delete()


@pytest.fixture(scope="module")
def server(node):
    s = PeerServer(node.pods["b"], PODS["b"], TARGET)
    yield s
    s.close()


@pytest.fixture(scope="module")
def api():
    with ApiServerDouble() as server:
        for obj in (node_obj(), {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "t"}},
                    pod_obj("a"), pod_obj("b"), service_obj(), slice_obj()):
            server.create(obj)
        yield server


def make_agent(api_url: str, pin_dir: str, node: Node) -> tuple[Agent, client.ApiClient]:
    configuration = client.Configuration(host=api_url)
    configuration.retries = False
    api_client = client.ApiClient(configuration)
    agent = Agent(api_client, NODE, pin_dir=pin_dir, netns=node.ns, min_sync_period=0.2, quiet=0.05,
                  healthz_host="127.0.0.1", healthz_port=0, metrics_port=0, health_check_host="127.0.0.1",
                  kube_proxy_cleanup=False, max_entries={**SCRATCH_MAX_ENTRIES, "cebpf_jump": 64})
    return agent, api_client


@pytest.fixture(scope="module")
def running(api, pin_dir, node, server):
    agent, api_client = make_agent(api.url, pin_dir, node)
    holder = {"agent": agent, "clients": [api_client]}
    agent.start()
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
        running["broken"] = str(exc)
        raise
    return running["agent"]


def settled(agent: Agent, count: int | None = None) -> None:
    """Wait for an idle agent (and ``count`` applies when given)."""
    if count is not None:
        agent.wait_for_apply(count, timeout=SETTLE)
    wait_until(lambda: agent.idle, timeout=SETTLE, what="an idle agent")


# ---- tests ---------------------------------------------------------------------------------

def test_no_kernel_discovery_follows_the_pattern_and_the_cali_prefix():
    """Which links are data and which are workload interfaces (a plain Endpoints, no kernel writes)."""
    from calico_ebpf.k8s.endpoints import Link
    from calico_ebpf.model.state import ClusterState

    eps = Endpoints(dp=None, node_name=NODE)
    links = [Link(1, "lo"), Link(2, "eth0"), Link(3, "ens5"), Link(4, "enp0s3"), Link(5, "docker0"),
             Link(6, "cali0123456789a"), Link(7, "vxlan.calico"), Link(8, "bond0"), Link(9, "wlan0")]
    state = ClusterState()
    assert eps.wanted(links, state) == {2: ("eth0", "hep"), 3: ("ens5", "hep"), 4: ("enp0s3", "hep"),
                                        6: ("cali0123456789a", "wep"), 8: ("bond0", "hep"), 9: ("wlan0", "hep")}
    state.add_dict({"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
                    "metadata": {"name": "default"}, "spec": {"bpfDataIfacePattern": "^ens"}})
    assert set(eps.wanted(links, state)) == {3, 6}
    assert set(Endpoints(None, NODE, data_iface_pattern="^docker").wanted(links, state)) == {5, 6}
    # A FelixConfiguration pattern that is not a regular expression: Felix's default, not a failed apply.
    assert set(Endpoints(None, NODE, data_iface_pattern="(").wanted(links, state)) == {2, 3, 4, 6, 8, 9}


def test_readoption_keeps_policy_slots_and_swaps_programs_in_place():
    """Endpoints alone on a scratch node: a second Dataplane on the same pins (a restarted agent)
    keeps each endpoint's policy slots until its policy sync, replaces the tc programs in their
    slots, drops ifstate entries of interfaces gone meanwhile, and forgets an interface that goes."""
    from calico_ebpf.dataplane import Dataplane
    from calico_ebpf.kernel import bpffs
    from calico_ebpf.maps.entries import IfStateKey, IfStateValue
    from calico_ebpf.model.state import ClusterState

    if os.geteuid() != 0:
        pytest.fail("needs root (namespaces, bpffs, BPF programs)")
    pin = os.path.join(bpffs.ensure_bpffs(mount=True), f"cebpf_test_agent_ep2_{os.getpid()}_{uuid.uuid4().hex[:8]}")
    wep = veth_name("t", "zz")
    state = ClusterState()
    with Netns(prefix="agepread") as ns:
        veth_pair("eth0", "fabric0", netns=ns, peer_netns=ns)
        veth_pair(wep, "podside0", netns=ns, peer_netns=ns)
        i_eth0, i_wep = ns.ifindex("eth0"), ns.ifindex(wep)
        dp1 = dp2 = None
        try:
            dp1 = Dataplane(pin_dir=pin, max_entries=SCRATCH_MAX_ENTRIES)
            report = Endpoints(dp1, NODE, netns=ns).sync(state)
            assert sorted(report.attached) == sorted(["eth0", wep]) and report.unknown_workloads == [wep]
            v = dp1.interface(i_wep)
            assert (v.ingress_policy_v4, v.egress_policy_v4) == (DENY_SLOT, DENY_SLOT)  # new workload: denied
            v = dp1.interface(i_eth0)
            assert v.flags & IfaceFlags.HEP and (v.ingress_policy_v4, v.egress_policy_v4) == (NO_POLICY, NO_POLICY)
            dp1.set_interface(i_wep, wep, "wep", ingress_policy=7, egress_policy=NO_POLICY)  # "its policy"
            dp1.maps["cebpf_ifstate"].update(IfStateKey(999).to_bytes(),  # an interface gone while down
                                             IfStateValue(IfaceFlags.WEP | IfaceFlags.V4_READY, "caligone").to_bytes())
            before = {n: tc_programs_in(ns, n) for n in ("eth0", wep)}
            dp1.close()

            dp2 = Dataplane(pin_dir=pin, max_entries=SCRATCH_MAX_ENTRIES)
            eps = Endpoints(dp2, NODE, netns=ns)
            report = eps.sync(state)
            assert sorted(report.attached) == sorted(["eth0", wep]) and report.detached == ["caligone"]
            v = dp2.interface(i_wep)
            assert (v.ingress_policy_v4, v.egress_policy_v4) == (7, NO_POLICY)  # kept, not reset to deny
            assert dp2.interface(999) is None
            for n in ("eth0", wep):
                after = tc_programs_in(ns, n)
                assert all(after.values()) and set(after.values()).isdisjoint(before[n].values())
            assert eps.sync(state).changed is False  # nothing new: no writes

            ns.iproute().link("del", index=i_eth0)  # its peer goes with it
            report = eps.sync(state)
            assert report.detached == ["eth0"] and dp2.interface(i_eth0) is None
            assert set(eps.interfaces) == {wep}

            # A third run whose data pattern no longer matches eth1 (present, ours): detached.
            veth_pair("eth1", "fabric1", netns=ns, peer_netns=ns)
            eps.sync(state)
            i_eth1 = ns.ifindex("eth1")
            assert all(tc_programs_in(ns, "eth1").values())
            dp2.close()
            dp2 = Dataplane(pin_dir=pin, max_entries=SCRATCH_MAX_ENTRIES)
            report = Endpoints(dp2, NODE, netns=ns, data_iface_pattern="^ens").sync(state)
            assert report.detached == ["eth1"] and report.attached == [wep]
            assert dp2.interface(i_eth1) is None
            assert tc_programs_in(ns, "eth1") == {"ingress": None, "egress": None}
        finally:
            for dp in (dp1, dp2):
                if dp is not None:
                    dp.close()
            bpffs.remove_pin_dir(pin)
            remove_policy_tables(pin)


def tc_programs_in(ns: Netns, ifname: str) -> dict[str, int | None]:
    ifindex = ns.ifindex(ifname)
    out = {}
    for d in DIRECTIONS:
        att = TcAttachment.find(ifindex, d, netns=ns)
        out[d] = None if att is None else att.prog_id
    return out


def test_first_apply_attaches_every_interface(agent, node, pin_dir):
    names = {"eth0": "hep", veth_name("t", "a"): "wep", veth_name("t", "b"): "wep"}
    for ifname in names:
        progs = tc_programs(node, ifname)
        assert all(progs.values()), f"{ifname}: {progs}"
    states = ifstate(pin_dir)
    for ifname, kind in names.items():
        value = states[node.ifindex(ifname)]
        assert value.name == ifname
        assert value.flags & (IfaceFlags.WEP if kind == "wep" else IfaceFlags.HEP)
    assert set(agent.endpoints.interfaces) == set(names)
    # The agent's own namespace was not touched: nothing of ours on its links.
    host_links = {link.name for link in list_links(None)}
    assert not host_links & {veth_name("t", "a"), veth_name("t", "b")}
    # Pods no policy isolates run without a program (Calico's namespace profile allows).
    policy = agent.dataplane.policy_sync
    for pod in ("t/a", "t/b"):
        assert [policy.slot_of(pod, d) for d in DIRECTIONS] == [NO_POLICY, NO_POLICY]
    lo = node.ifindex("lo")
    assert lo not in states and tc_programs(node, "lo") == {"ingress": None, "egress": None}
    # Attaching makes no link events of its own: the agent comes to rest.
    settled(agent)
    applies = agent.apply_count
    time.sleep(1.0)  # several min sync periods
    assert agent.apply_count == applies


def test_pod_reaches_a_clusterip_backend_on_the_node(agent, node):
    # Pod b sees pod a's own address: DNAT to b, no SNAT.
    wait_connect(node.pods["a"], PODS["a"], "pod a -> web (pod b)")
    assert connect(node.pods["a"]) == PODS["a"]


def test_network_policy_is_enforced_and_lifted(api, agent, node):
    wait_connect(node.pods["a"], PODS["a"], "pod a -> web before the policy")
    api.create(deny_ingress_to_b())
    wait_connect(node.pods["a"], None, "the policy to deny pod a -> pod b")
    policy = agent.dataplane.policy_sync
    assert policy.slot_of("t/b", "ingress") > DENY_SLOT  # b has a program of its own
    assert policy.slot_of("t/a", "egress") == NO_POLICY

    api.delete("networking.k8s.io/v1", "NetworkPolicy", "b-deny", "t")
    wait_connect(node.pods["a"], PODS["a"], "the policy's deletion to allow pod a -> pod b again")
    assert policy.slot_of("t/b", "ingress") == NO_POLICY


def test_new_veth_is_attached_denied_until_its_pod_is_known(api, agent, node, pin_dir):
    """A cali veth shows up before its Pod reaches us (the CNI runs before the API update):
    the link watcher triggers an apply that attaches it on the deny slot; the Pod's arrival
    lets the policy sync give it its real policy (none: allowed)."""
    host_if = node.add_pod("c")
    ifindex = node.ifindex(host_if)
    wait_until(lambda: all(tc_programs(node, host_if).values()), timeout=SETTLE,
               what="the new veth to be attached (link event, no API change)")
    value = ifstate(pin_dir)[ifindex]
    assert value.flags & IfaceFlags.WEP
    assert (value.ingress_policy_v4, value.egress_policy_v4) == (DENY_SLOT, DENY_SLOT)
    assert connect(node.pods["c"]) is None  # denied: a workload without known policy

    api.create(pod_obj("c"))
    wait_connect(node.pods["c"], PODS["c"], "pod c allowed once its Pod is known")
    value = ifstate(pin_dir)[ifindex]
    assert (value.ingress_policy_v4, value.egress_policy_v4) == (NO_POLICY, NO_POLICY)


def test_vanished_veth_is_forgotten(api, agent, node, pin_dir):
    host_if = veth_name("t", "c")
    ifindex = node.ifindex(host_if)
    node.remove_pod("c")
    api.delete("v1", "Pod", "c", "t")
    wait_until(lambda: ifindex not in ifstate(pin_dir), timeout=SETTLE, what="pod c's ifstate entry removed")
    settled(agent)
    assert ifindex not in ifstate(pin_dir)  # and not written back by the policy sync that dropped t/c
    assert host_if not in agent.endpoints.interfaces
    assert agent.dataplane.ifindex_of(host_if) == 0
    assert connect(node.pods["a"]) == PODS["a"]  # the others are untouched


def test_restart_keeps_programs_and_policy_in_force_and_readopts_in_place(api, running, agent, node, pin_dir):
    """Last: with a deny policy in force, stop the agent (programs, maps and policy stay) and start
    a new one on the same pins. Watchers check all along that the tc slots and ifstate entries
    are never empty and that no probe of the denied flow ever gets through."""
    api.create(deny_ingress_to_b())
    wait_connect(node.pods["a"], None, "the policy before the restart")
    settled(agent)
    ifnames = ["eth0", veth_name("t", "a"), veth_name("t", "b")]
    before = {n: tc_programs(node, n) for n in ifnames}
    states_before = ifstate(pin_dir)

    gaps: list[str] = []
    leaks: list[str] = []
    stop_watch = threading.Event()

    def watch() -> None:
        while not stop_watch.is_set():
            for n in ifnames:
                progs = tc_programs(node, n)
                if not all(progs.values()):
                    gaps.append(f"{n}: {progs}")
            states = ifstate(pin_dir)
            for n in ifnames:
                if node.ifindex(n) not in states:
                    gaps.append(f"{n}: no ifstate entry")
            time.sleep(0.005)

    def probe() -> None:
        while not stop_watch.is_set():
            answer = connect(node.pods["a"], timeout=0.3)
            if answer is not None:
                leaks.append(answer)

    threads = [threading.Thread(target=watch, daemon=True), threading.Thread(target=probe, daemon=True)]
    for t in threads:
        t.start()
    try:
        agent.stop()
        assert {n: tc_programs(node, n) for n in ifnames} == before  # still attached, same programs
        assert ifstate(pin_dir) == states_before  # same policy slots: the policy stays in force
        time.sleep(0.5)  # probes while no agent runs

        successor, api_client = make_agent(api.url, pin_dir, node)
        running["agent"] = successor
        running["clients"].append(api_client)
        successor.start()
        successor.wait_for_apply(1, timeout=60)
        settled(successor)
        time.sleep(0.5)  # probes after the successor's first policy sync
    finally:
        stop_watch.set()
        for t in threads:
            t.join(5)
    assert not gaps, gaps[:5]
    assert not leaks, f"the denied flow got through {len(leaks)} times during the restart"
    after = {n: tc_programs(node, n) for n in ifnames}
    for n in ifnames:  # the successor's programs, swapped into the same slots
        assert all(after[n].values()) and set(after[n].values()).isdisjoint(before[n].values()), (n, before, after)
    assert set(successor.endpoints.interfaces) == set(ifnames)  # re-adopted, none detached
    assert successor.last_endpoints.detached == []
    states_after = ifstate(pin_dir)
    for n in ifnames:
        i = node.ifindex(n)
        assert (states_after[i].name, states_after[i].flags) == (states_before[i].name, states_before[i].flags)
    assert states_after[node.ifindex(veth_name("t", "b"))].ingress_policy_v4 > DENY_SLOT

    # The successor lifts the policy, and service traffic flows again.
    api.delete("networking.k8s.io/v1", "NetworkPolicy", "b-deny", "t")
    wait_connect(node.pods["a"], PODS["a"], "the successor to lift the policy")
    api.create(deny_ingress_to_b())
    wait_connect(node.pods["a"], None, "the successor to enforce it again")
