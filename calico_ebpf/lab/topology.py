"""A Kubernetes-like cluster of network namespaces on one machine, wired the way Calico wires it.

::

    fabric netns:  br-fabric 10.250.0.1/24 ─┬─ veth-node-1 ── eth0 10.250.0.11  node-1 netns
                                            ├─ veth-node-2 ── eth0 10.250.0.12  node-2 netns
                                            └─ veth-ext ───── eth0 10.250.0.100 external client netns
    node-1 netns:  vxlan.calico 10.244.0.0/32 (VNI 4096, port 4789, no learning, static FDB/ARP)
                   cali<sha1> ── eth0 10.244.0.1/32  node-1-pod-0 netns (default via 169.254.1.1)
                   routes: 10.244.0.1/32 dev cali… scope link
                           10.244.0.64/26 via 10.244.0.64 dev vxlan.calico onlink
                           blackhole 10.244.0.0/26

Usage::

    with Lab(nodes=2, pods_per_node=2) as lab:          # up() on entry, down() on exit
        reply = lab.pod("node-1", 0).request(lab.pod("node-2", 0).ip, 8080)
        reply.server, reply.peer_ip                     # ('node-2-pod-0', '10.244.0.1')
        state = lab.cluster_state()                     # the same cluster, for a Dataplane per node

Nothing is created in the host's namespace: every link, address and route
lives inside a namespace named ``<prefix>-…``, so ``Lab.cleanup_leftovers
(prefix)`` can always remove a lab, also one whose process crashed.
Traffic uses plain kernel routing; a per-node Dataplane attaches to the
interfaces listed by :meth:`LabNode.interfaces`.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ndmsg import NUD_PERMANENT

from calico_ebpf.errors import CalicoEBPFError
from calico_ebpf.kernel.netns import Netns, NetnsError, ifindex, unique_name, veth_pair
from calico_ebpf.lab import cleanup
from calico_ebpf.lab.plan import (
    CALI_MAC,
    GATEWAY,
    UNDERLAY_IFNAME,
    UNDERLAY_MTU,
    VNI,
    VXLAN_IFNAME,
    VXLAN_PORT,
    LabPlan,
    NodePlan,
    PodPlan,
    lab_netns_re,
)
from calico_ebpf.lab.workload import DEFAULT_PORT, Reply, request, start_server
from calico_ebpf.model.state import ClusterState

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["BRIDGE_IFNAME", "ExternalClient", "Lab", "LabNode", "LabPod", "lab_status"]

T = TypeVar("T")

BRIDGE_IFNAME = "br-fabric"
POD_IFNAME = "eth0"
SCOPE_LINK = 253
RTNH_F_ONLINK = 4


def _sysctl(ns: Netns, key: str, value: str) -> None:
    """Write ``/proc/sys/<key>`` as seen from inside ``ns`` (net sysctls are per namespace)."""

    def write() -> None:
        with open(f"/proc/sys/{key}", "w") as fh:
            fh.write(value)

    try:
        ns.run(write)
    except OSError as exc:
        raise NetnsError(f"sysctl {key}={value} in netns {ns.name}", exc.errno) from None


def _netlink(op: str, ns: Netns, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except NetlinkError as exc:
        raise NetnsError(f"{op} in netns {ns.name}", exc.code) from None


class _Endpoint:
    """Something with a namespace that can run code and talk to echo servers."""

    netns: Netns
    _procs: list[subprocess.Popen]  # the lab's: down() stops them

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn`` in this thread, inside this namespace."""
        return self.netns.run(fn, *args, **kwargs)

    def request(self, dst: str, port: int = DEFAULT_PORT, *, proto: str = "tcp", payload: bytes = b"ping",
                timeout: float = 2.0) -> Reply:
        """Ask the echo server at ``dst:port`` who it is and who we look like (:func:`workload.request`)."""
        return request(dst, port, proto=proto, payload=payload, timeout=timeout, netns=self.netns)

    def start_echo(self, name: str | None = None, port: int = DEFAULT_PORT) -> subprocess.Popen:
        """Start an echo server (TCP and UDP on ``port``) here; the lab's ``down()`` stops it."""
        proc = start_server(self.netns, name or self.netns.name, tcp_port=port, udp_port=port)
        self._procs.append(proc)
        return proc


class LabPod(_Endpoint):
    """A pod: its own namespace, ``eth0`` with a /32 IP, a ``cali…`` veth on its node."""

    def __init__(self, plan: PodPlan, node: LabNode, netns: Netns):
        self.plan = plan
        self.node = node
        self.netns = netns
        self._procs = node._procs
        self.server: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def namespace(self) -> str:
        return self.plan.namespace

    @property
    def ip(self) -> str:
        return self.plan.ip

    @property
    def veth(self) -> str:
        """Host-side veth name (``cali…``), in the node's namespace; the pod side is ``eth0``."""
        return self.plan.veth

    @property
    def key(self) -> str:
        """``namespace/name``, as ClusterState keys pods."""
        return f"{self.plan.namespace}/{self.plan.name}"

    @property
    def veth_ifindex(self) -> int:
        """Index of the host-side veth in the node's namespace (where a workload program attaches)."""
        return self.node.netns.ifindex(self.plan.veth)

    def __repr__(self) -> str:
        return f"LabPod({self.name!r}, ip={self.ip!r}, netns={self.netns.name!r})"


class LabNode(_Endpoint):
    """A node: a namespace with ``eth0`` on the fabric, ``vxlan.calico`` and its pods' veths."""

    underlay_ifname = UNDERLAY_IFNAME
    vxlan_ifname = VXLAN_IFNAME

    def __init__(self, plan: NodePlan, netns: Netns, procs: list[subprocess.Popen]):
        self.plan = plan
        self.netns = netns
        self._procs = procs
        self.pods: list[LabPod] = []

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def underlay_ip(self) -> str:
        """The node's IP on the fabric (its InternalIP in the manifests)."""
        return self.plan.underlay_ip

    @property
    def vtep_ip(self) -> str:
        """Address of ``vxlan.calico`` (Calico's IPv4VXLANTunnelAddr: first address of the block)."""
        return self.plan.vtep_ip

    @property
    def vtep_mac(self) -> str:
        return self.plan.vtep_mac

    @property
    def block(self) -> str:
        """The node's IPAM block (/26) that its pods' IPs come from."""
        return self.plan.block

    @property
    def underlay_ifindex(self) -> int:
        return self.netns.ifindex(UNDERLAY_IFNAME)

    @property
    def vxlan_ifindex(self) -> int:
        return self.netns.ifindex(VXLAN_IFNAME)

    def interfaces(self) -> dict[str, str]:
        """Interfaces a node agent manages, by kind: ``host`` (data), ``tunnel``, ``workload``.

        >>> lab.node("node-1").interfaces()          # doctest: +SKIP
        {'eth0': 'host', 'vxlan.calico': 'tunnel', 'cali06fb5498959': 'workload', ...}
        """
        ifaces = {UNDERLAY_IFNAME: "host", VXLAN_IFNAME: "tunnel"}
        ifaces.update({p.veth: "workload" for p in self.pods})
        return ifaces

    def __repr__(self) -> str:
        return f"LabNode({self.name!r}, underlay_ip={self.underlay_ip!r}, netns={self.netns.name!r})"


class ExternalClient(_Endpoint):
    """A machine outside the cluster, on the same fabric as the nodes."""

    def __init__(self, ip: str, netns: Netns, procs: list[subprocess.Popen]):
        self.ip = ip
        self.netns = netns
        self._procs = procs

    def __repr__(self) -> str:
        return f"ExternalClient(ip={self.ip!r}, netns={self.netns.name!r})"


class Lab:
    """A cluster of ``nodes`` nodes with ``pods_per_node`` pods each, in namespaces named ``<prefix>-…``.

    ``up()`` builds it (and, with ``workloads=True``, starts a TCP+UDP echo
    server on port 8080 in every pod); ``down()`` removes every namespace,
    link and process of the lab. Addresses come from :class:`LabPlan`.
    ``prefix`` defaults to a fresh unique one; ``up()`` refuses a prefix
    whose namespaces exist (use :meth:`cleanup_leftovers` or another prefix).
    """

    def __init__(self, nodes: int = 2, pods_per_node: int = 3, prefix: str | None = None, *,
                 workloads: bool = True, **plan_options: Any):
        self.plan = LabPlan(prefix or unique_name("lab", maxlen=16), nodes, pods_per_node, **plan_options)
        self.workloads = workloads
        self.fabric: Netns | None = None
        self.external: ExternalClient | None = None
        self.nodes: list[LabNode] = []
        self._procs: list[subprocess.Popen] = []
        self._owned: list[Netns] = []

    @property
    def prefix(self) -> str:
        return self.plan.prefix

    # -- lookup -------------------------------------------------------------------------------

    def node(self, name: str) -> LabNode:
        """The node called ``name`` (``"node-1"`` …)."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"lab {self.prefix} has no node {name!r} (up: {[n.name for n in self.nodes]})")

    def pod(self, node: str, index: int) -> LabPod:
        """The ``index``-th pod (from 0) on ``node``."""
        return self.node(node).pods[index]

    @property
    def pods(self) -> list[LabPod]:
        return [p for n in self.nodes for p in n.pods]

    def manifests(self) -> list[dict[str, Any]]:
        """IPPool, Nodes and Pods of this lab as API dicts; see :meth:`LabPlan.manifests`."""
        return self.plan.manifests()

    def manifests_yaml(self) -> str:
        return self.plan.manifests_yaml()

    def cluster_state(self) -> ClusterState:
        """:meth:`manifests` parsed: what a per-node Dataplane of this lab is fed."""
        return ClusterState.from_dicts(self.manifests(), source=f"lab {self.prefix}")

    # -- lifecycle ----------------------------------------------------------------------------

    def up(self) -> Self:
        """Build the lab; on any failure remove what was built and re-raise."""
        existing = cleanup.find_lab_netns(self.prefix)
        if existing:
            raise NetnsError(f"lab {self.prefix} up", 17,
                             f"namespaces of this lab already exist ({', '.join(existing[:3])}…); "
                             f"run `calico-ebpf lab down --prefix {self.prefix}` first")
        try:
            self._build()
        except BaseException:
            try:
                self.down()
            except CalicoEBPFError:
                pass  # report the build failure; what is left is still found by prefix
            raise
        return self

    def _netns(self, name: str) -> Netns:
        ns = Netns(name)
        self._owned.append(ns)
        # The lab is IPv4 only: without IPv6, no router solicitations, MLD
        # or DAD packets wander over veths and the tunnel, so counters and
        # captures on lab interfaces show only the traffic a test sent.
        for key in ("net/ipv6/conf/all/disable_ipv6", "net/ipv6/conf/default/disable_ipv6"):
            if ns.run(os.path.exists, f"/proc/sys/{key}"):
                _sysctl(ns, key, "1")
        return ns

    def _build(self) -> None:
        plan = self.plan
        self.fabric = self._netns(plan.fabric_netns)
        ipr = self.fabric.iproute()
        _netlink(f"create bridge {BRIDGE_IFNAME}", self.fabric, ipr.link, "add", ifname=BRIDGE_IFNAME, kind="bridge")
        self.fabric.add_address(BRIDGE_IFNAME, f"{plan.fabric_ip}/{plan.underlay_prefixlen}", up=True)

        ext = self._netns(plan.external_netns)
        self._plug_into_fabric("veth-ext", ext, plan.external_ip)
        self.external = ExternalClient(plan.external_ip, ext, self._procs)

        for np in plan.nodes:
            node = LabNode(np, self._netns(np.netns), self._procs)
            self.nodes.append(node)
            self._build_node(node)
        for node in self.nodes:
            self._program_remote_nodes(node)
        for node in self.nodes:
            for pp in node.plan.pods:
                pod = LabPod(pp, node, self._netns(pp.netns))
                node.pods.append(pod)
                self._build_pod(pod)
        if self.workloads:
            for pod in self.pods:
                pod.server = pod.start_echo(pod.name)

    def _plug_into_fabric(self, port: str, ns: Netns, ip: str) -> None:
        assert self.fabric is not None
        veth_pair(port, UNDERLAY_IFNAME, netns=self.fabric, peer_netns=ns, mtu=UNDERLAY_MTU)
        fabric_ipr = self.fabric.iproute()
        _netlink(f"attach {port} to {BRIDGE_IFNAME}", self.fabric, fabric_ipr.link, "set",
                 index=self.fabric.ifindex(port), master=self.fabric.ifindex(BRIDGE_IFNAME))
        ns.add_address(UNDERLAY_IFNAME, f"{ip}/{self.plan.underlay_prefixlen}")

    def _build_node(self, node: LabNode) -> None:
        ns, np = node.netns, node.plan
        self._plug_into_fabric(np.fabric_port, ns, np.underlay_ip)
        # A default route out of eth0 is what lets proxy ARP on the cali
        # veths answer for 169.254.1.1 (the kernel proxies only addresses it
        # routes out of another interface), as on a real Calico host.
        ns.add_route("default", gateway=self.plan.fabric_ip)
        _sysctl(ns, "net/ipv4/ip_forward", "1")
        ipr = ns.iproute()
        _netlink(f"create {VXLAN_IFNAME}", ns, ipr.link, "add", ifname=VXLAN_IFNAME, kind="vxlan",
                 vxlan_id=VNI, vxlan_port=VXLAN_PORT, vxlan_local=np.underlay_ip,
                 vxlan_link=node.underlay_ifindex, vxlan_learning=0, address=np.vtep_mac,
                 mtu=self.plan.vxlan_mtu)
        ns.add_address(VXLAN_IFNAME, f"{np.vtep_ip}/32", up=True)
        # Calico's IPAM blackholes the node's own block: a pod IP not (or no
        # longer) in use must not leak out by the default route.
        _netlink(f"blackhole {np.block}", ns, ipr.route, "add", dst=np.block, type="blackhole")

    def _program_remote_nodes(self, node: LabNode) -> None:
        """What Calico's VXLAN manager programs for every other node: FDB, ARP, block route."""
        ns = node.netns
        ipr = ns.iproute()
        vx = node.vxlan_ifindex
        for remote in self.nodes:
            if remote is node:
                continue
            rp = remote.plan
            _netlink(f"fdb {rp.vtep_mac} -> {rp.underlay_ip}", ns, ipr.fdb, "append", ifindex=vx,
                     lladdr=rp.vtep_mac, dst=rp.underlay_ip, state=NUD_PERMANENT)
            _netlink(f"neigh {rp.vtep_ip} -> {rp.vtep_mac}", ns, ipr.neigh, "add", ifindex=vx,
                     dst=rp.vtep_ip, lladdr=rp.vtep_mac, state=NUD_PERMANENT)
            _netlink(f"route {rp.block} via {rp.vtep_ip}", ns, ipr.route, "add", dst=rp.block,
                     gateway=rp.vtep_ip, oif=vx, flags=RTNH_F_ONLINK)

    def _build_pod(self, pod: LabPod) -> None:
        node_ns, pod_ns, pp = pod.node.netns, pod.netns, pod.plan
        mtu = self.plan.vxlan_mtu  # Calico sizes pod veths for the tunnel
        veth_pair(pp.veth, POD_IFNAME, netns=node_ns, peer_netns=pod_ns, mtu=mtu, up=False)
        node_ipr = node_ns.iproute()
        idx = node_ns.ifindex(pp.veth)
        _netlink(f"set {pp.veth} address", node_ns, node_ipr.link, "set", index=idx, address=CALI_MAC)
        node_ns.set_up(pp.veth)
        pod_ns.set_up(POD_IFNAME)
        _sysctl(node_ns, f"net/ipv4/conf/{pp.veth}/proxy_arp", "1")
        _sysctl(node_ns, f"net/ipv4/neigh/{pp.veth}/proxy_delay", "0")
        _netlink(f"route {pp.ip}/32 dev {pp.veth}", node_ns, node_ipr.route, "add", dst=f"{pp.ip}/32",
                 oif=idx, scope=SCOPE_LINK)
        pod_ns.add_address(POD_IFNAME, f"{pp.ip}/32")
        pod_ipr = pod_ns.iproute()
        eth0 = pod_ns.ifindex(POD_IFNAME)
        _netlink(f"route {GATEWAY} dev {POD_IFNAME}", pod_ns, pod_ipr.route, "add", dst=f"{GATEWAY}/32",
                 oif=eth0, scope=SCOPE_LINK)
        _netlink("default route", pod_ns, pod_ipr.route, "add", dst="0.0.0.0/0", gateway=GATEWAY, oif=eth0)

    def down(self) -> list[str]:
        """Stop the lab's processes and delete all its namespaces; returns the names removed.

        Also finds namespaces of this prefix this object did not create
        (a crashed earlier run), so it is safe to call any number of times.
        """
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        # Anything else started inside the lab (by tests, by users) goes too.
        in_lab = cleanup.pids_in_netns(*cleanup.find_lab_netns(self.prefix))
        cleanup.stop_pids([pid for pids in in_lab.values() for pid in pids])
        for proc in self._procs:
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=2)
        self._procs.clear()
        removed = []
        errors = []
        for ns in reversed(self._owned):
            try:
                if ns.owned:
                    removed.append(ns.name)
                ns.delete()
            except NetnsError as exc:  # keep going: remove as much as we can
                errors.append(exc)
        self._owned.clear()
        self.nodes.clear()
        self.fabric = self.external = None
        removed += cleanup.remove_lab(self.prefix)
        if errors:
            raise errors[0]
        return removed

    @staticmethod
    def cleanup_leftovers(prefix: str) -> list[str]:
        """Remove every namespace (and the processes in it) of lab ``prefix``; returns their names."""
        return cleanup.remove_lab(prefix)

    @staticmethod
    def find_leftovers(prefix: str) -> list[str]:
        """Names of the existing namespaces of lab ``prefix``."""
        return cleanup.find_lab_netns(prefix)

    def status(self) -> dict[str, Any]:
        """What the kernel holds for this lab; see :func:`lab_status`."""
        return lab_status(self.prefix)

    def __enter__(self) -> Self:
        return self.up()

    def __exit__(self, *exc_info: object) -> None:
        self.down()

    def __repr__(self) -> str:
        return f"Lab({self.prefix!r}, nodes={len(self.plan.nodes)}, pods_per_node={self.plan.pods_per_node})"


def lab_status(prefix: str) -> dict[str, Any]:
    """Nodes, pods, external client and fabric of lab ``prefix``, read from the kernel.

    Works from any process (``calico-ebpf lab status`` after ``lab up``):
    every field comes from the namespaces, not from a Lab object. Keys:
    ``prefix``, ``up`` (any namespace found), ``fabric``, ``external``,
    ``nodes`` (each with ``name``, ``netns``, ``underlay_ip``,
    ``vxlan_ifindex``, ``vtep_ip``, ``vtep_mac``, ``pods``: ``name``,
    ``netns``, ``ip``, ``veth``, ``processes``).
    """
    pattern = lab_netns_re(prefix)
    names = cleanup.find_lab_netns(prefix)
    processes = cleanup.pids_in_netns(*names)
    status: dict[str, Any] = {"prefix": prefix, "up": bool(names), "fabric": None, "external": None, "nodes": []}
    nodes: dict[str, dict[str, Any]] = {}
    pods: list[tuple[str, dict[str, Any]]] = []
    for name in names:
        m = pattern.fullmatch(name)
        assert m is not None
        entry: dict[str, Any] = {"netns": name, "processes": processes[name]}
        if m["pod"] is not None:
            node = f"node-{m['node']}"
            entry |= {"name": f"{node}-pod-{m['pod']}", "ip": _first_ipv4(name, POD_IFNAME)}
            pods.append((node, entry))
        elif m["node"] is not None:
            entry |= {"name": f"node-{m['node']}", "underlay_ip": _first_ipv4(name, UNDERLAY_IFNAME),
                      "vxlan_ifindex": _ifindex_or_none(name, VXLAN_IFNAME),
                      "vtep_ip": _first_ipv4(name, VXLAN_IFNAME), "vtep_mac": _mac(name, VXLAN_IFNAME),
                      "pods": []}
            nodes[entry["name"]] = entry
        elif name.endswith("-ext"):
            status["external"] = entry | {"ip": _first_ipv4(name, UNDERLAY_IFNAME)}
        else:
            status["fabric"] = entry | {"ip": _first_ipv4(name, BRIDGE_IFNAME)}
    for node, entry in pods:
        # The cali veth is the node-side interface whose peer is this pod's eth0.
        entry["veth"] = _peer_name(name=entry["netns"], node_netns=f"{prefix}-{node}")
        if node in nodes:
            nodes[node]["pods"].append(entry)
    status["nodes"] = sorted(nodes.values(), key=lambda n: int(n["name"].split("-")[1]))
    for n in status["nodes"]:
        n["pods"].sort(key=lambda p: int(p["name"].rsplit("-", 1)[1]))
    return status


def _link(netns: str, ifname: str) -> Any:
    with Netns.open(netns) as ns:
        found = ns.iproute().link("get", ifname=ifname) if _exists(ns, ifname) else []
    return found[0] if found else None


def _exists(ns: Netns, ifname: str) -> bool:
    return bool(ns.iproute().link_lookup(ifname=ifname))


def _first_ipv4(netns: str, ifname: str) -> str | None:
    try:
        with Netns.open(netns) as ns:
            idx = ifindex(ifname, ns)
            addrs = ns.iproute().get_addr(family=2, index=idx)
    except NetnsError:
        return None
    return addrs[0].get_attr("IFA_ADDRESS") if addrs else None


def _ifindex_or_none(netns: str, ifname: str) -> int | None:
    try:
        return ifindex(ifname, netns)
    except NetnsError:
        return None


def _mac(netns: str, ifname: str) -> str | None:
    try:
        link = _link(netns, ifname)
    except NetnsError:
        return None
    return link.get_attr("IFLA_ADDRESS") if link is not None else None


def _peer_name(name: str, node_netns: str) -> str | None:
    """Name of the node-side veth whose peer is ``eth0`` in pod namespace ``name``."""
    try:
        link = _link(name, POD_IFNAME)
        if link is None:
            return None
        peer_index = link.get_attr("IFLA_LINK")
        with Netns.open(node_netns) as ns:
            peers = ns.iproute().link("get", index=peer_index)
    except (NetnsError, NetlinkError):
        return None
    return peers[0].get_attr("IFLA_IFNAME") if peers else None
