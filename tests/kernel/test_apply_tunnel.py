"""NodePort forwarding over VXLAN configured by Dataplane.apply from the manifests alone:
two dataplanes (node-1, node-2) applied from the same state; an external client's packet to
node-1's NodePort, whose only endpoint is on node-2, crosses both through BPF_PROG_TEST_RUN
(each program's output frame fed to the next, as the wire would)."""

from __future__ import annotations

import apply_cluster as C
import packets as P
import pytest
from apply_cluster import EXTERNAL, HOST_IP, POD_IPS, REMOTE_HOST, TC_ACT_OK, TC_ACT_REDIRECT
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from calico_ebpf.compiler import veth_name
from calico_ebpf.dataplane import Dataplane, NodeConfig, StateFlags, Verdict
from calico_ebpf.dataplane.tunnel import NODEPORT_VNI, OVERHEAD, set_tunnel, tunnel_config
from calico_ebpf.kernel.netns import Netns, veth_pair
from calico_ebpf.maps.entries import RouteFlags, RouteKey, RouteValue

NODE_PORT, POD_PORT = 30090, 8080
REMOTE_WEP = RouteFlags.WORKLOAD | RouteFlags.IN_POOL | RouteFlags.TUNNELED | RouteFlags.VXLAN
R_VETH = veth_name("d", "r")


def _docs(mode: str | None = None) -> list[dict]:
    docs = C.cluster_docs() + [C.service("np2", "10.96.0.20", 82, type_="NodePort", node_port=NODE_PORT),
                               C.endpoints("np2", ["r"])]
    if mode is not None:
        docs.append({"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
                     "metadata": {"name": "default"}, "spec": {"bpfExternalServiceMode": mode}})
    return docs


@pytest.fixture(scope="module")
def ns():
    n = Netns(prefix="tuntest")
    try:
        # The data interface (shared by both nodes' programs) and node-2's pod r veth.
        veth_pair("hep", "hep_p", netns=n, peer_netns=n)
        veth_pair(R_VETH, "peer_r", netns=n, peer_netns=n)
        n.iproute().link("set", index=n.ifindex("hep"), mtu=1400)
        yield n
    finally:
        n.delete()


@pytest.fixture(scope="module")
def nodes(ns, bpf_objects):
    state = C.state_of(_docs())
    dps = {}
    try:
        for name in ("node-1", "node-2"):
            dp = dps[name] = Dataplane(NodeConfig.from_state(state, name), max_entries=C.SMALL_MAPS)
            dp.set_interface(ns.ifindex("hep"), "hep", "hep", netns=ns)
        dps["node-2"].set_interface(ns.ifindex(R_VETH), R_VETH, "wep")
        yield dps
    finally:
        for dp in dps.values():
            dp.close()


def _run(ns, dp, hook, frame, ifname):
    with ns.enter():
        return dp.run(hook, frame, ns.ifindex(ifname))


def _outer(frame, src, dst):
    pkt = Ether(frame)
    assert (pkt[IP].src, pkt[IP].dst) == (src, dst) and pkt[UDP].dport == 4789
    assert pkt[VXLAN].vni == NODEPORT_VNI
    inner = bytes(pkt[VXLAN].payload)
    assert len(inner) == len(frame) - OVERHEAD
    return P.check_checksums(inner)


def test_apply_configures_tunnel_and_vxlan_routes(ns, nodes):
    n1, n2 = nodes["node-1"], nodes["node-2"]
    for dp in (n1, n2):
        dp.apply(C.state_of(_docs()))
    cfg = tunnel_config(n1)
    # this node's InternalIP, the data interface's MTU minus VXLAN, Tunnel mode by default
    assert (str(cfg.host_ip), cfg.mtu, cfg.dsr, cfg.port) == (HOST_IP, 1400 - OVERHEAD, False, 4789)
    assert str(tunnel_config(n2).host_ip) == REMOTE_HOST
    raw = n1.maps["cebpf_routes"].lookup(RouteKey(f"{POD_IPS['r']}/32").to_bytes())
    route = RouteValue.from_bytes(raw)
    assert route.flags & REMOTE_WEP == REMOTE_WEP and not route.flags & RouteFlags.LOCAL and str(route.next_hop) == REMOTE_HOST
    # and node-2 sees node-1's pod block the same way
    route = RouteValue.from_bytes(n2.maps["cebpf_routes"].lookup(RouteKey("10.65.0.0/24").to_bytes()))
    assert route.flags & REMOTE_WEP == REMOTE_WEP and not route.flags & RouteFlags.LOCAL and str(route.next_hop) == HOST_IP


def test_nodeport_to_remote_endpoint_crosses_both_nodes(ns, nodes):
    n1, n2 = nodes["node-1"], nodes["node-2"]
    for dp in (n1, n2):
        dp.apply(C.state_of(_docs()))
        dp.maps["cebpf_ct"].clear()
    syn = P.tcp(EXTERNAL, 5555, HOST_IP, NODE_PORT)

    # node-1: not translated, sent on in VXLAN to node-2 with the client's address
    res = _run(ns, n1, "from", syn, "hep")
    assert res.retval == TC_ACT_REDIRECT and res.state.verdict == Verdict.REDIRECT
    assert res.state.flags & (StateFlags.NP_FWD | StateFlags.ENCAP) == StateFlags.NP_FWD | StateFlags.ENCAP
    assert str(res.state.tun_ip) == REMOTE_HOST
    inner = _outer(res.data, HOST_IP, REMOTE_HOST)
    assert bytes(inner[IP]) == bytes(Ether(syn)[IP])

    # node-2: decapsulated, DNATed to its local pod r
    res = _run(ns, n2, "from", res.data, "hep")
    assert res.retval == TC_ACT_REDIRECT and res.state.fwd_ifindex == ns.ifindex(R_VETH)
    assert res.state.flags & StateFlags.FROM_TUNNEL and res.state.flags & StateFlags.DNAT
    assert str(res.state.tun_ip) == HOST_IP
    out = P.check_checksums(res.data)
    assert UDP not in out
    assert (out[IP].src, out[TCP].sport, out[IP].dst, out[TCP].dport) == (EXTERNAL, 5555, POD_IPS["r"], POD_PORT)
    assert _run(ns, n2, "to", res.data, R_VETH).retval == TC_ACT_OK

    # the pod's reply: un-NATed on node-2, back through node-1 (Tunnel mode), out to the client
    reply = P.tcp(POD_IPS["r"], POD_PORT, EXTERNAL, 5555, "SA")
    res = _run(ns, n2, "from", reply, R_VETH)
    assert res.retval == TC_ACT_REDIRECT and res.state.flags & StateFlags.ENCAP
    _outer(res.data, REMOTE_HOST, HOST_IP)
    res = _run(ns, n1, "from", res.data, "hep")
    out = P.check_checksums(res.data)
    assert res.retval == TC_ACT_REDIRECT and UDP not in out
    assert (out[IP].src, out[TCP].sport, out[IP].dst, out[TCP].dport) == (HOST_IP, NODE_PORT, EXTERNAL, 5555)


def test_dsr_mode_from_felix_configuration_and_hand_settings_stand(ns, nodes):
    n1 = nodes["node-1"]
    n1.apply(C.state_of(_docs("DSR")))
    assert tunnel_config(n1).dsr
    # A hand-made setting stands while the config does not change ...
    set_tunnel(n1, HOST_IP, underlay_mtu=9000, mode="Tunnel")
    n1.apply(C.state_of(_docs("DSR")))
    assert tunnel_config(n1).mtu == 9000 - OVERHEAD
    # ... and a config change is applied.
    n1.apply(C.state_of(_docs("Tunnel")))
    cfg = tunnel_config(n1)
    assert not cfg.dsr and cfg.mtu == 1400 - OVERHEAD
