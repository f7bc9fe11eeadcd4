"""NodePort to a backend on another node over VXLAN, client IP preserved:
the outer headers, decapsulation, the reply in Tunnel and DSR modes, ICMP
fragmentation needed, externalTrafficPolicy Local.

Two nodes, two datapath objects with their own maps, run in one netns:
node A (10.0.0.1, the ``env`` of datapath_env) is where the client's packet
arrives; node B (10.0.0.2) hosts the backend pod 10.65.1.5. A flow is
followed across hops by feeding each program's output frame to the next
program, as the wire would.
"""

from __future__ import annotations

import ipaddress

import packets as P
import pytest
from datapath_env import (
    EXTERNAL,
    HOST_IP,
    LOCAL_WEP,
    REMOTE_HOST,
    REMOTE_POD,
    TC_ACT_OK,
    TC_ACT_REDIRECT,
    TC_ACT_SHOT,
    make_fixtures,
)
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from calico_ebpf.dataplane import CtResult, Dataplane, StateFlags, Verdict
from calico_ebpf.dataplane.tunnel import (
    NODEPORT_VNI,
    OVERHEAD,
    TunnelStateFlags,
    clear_tunnel,
    external_service_mode,
    set_tunnel,
    tunnel_config,
    tunnel_trace,
)
from calico_ebpf.maps.entries import (
    Counter,
    CounterHook,
    CtFlags,
    CtKey,
    CtType,
    CtValue,
    NatFlags,
    NatFrontendValue,
    Proto,
    RouteFlags,
)

devs, dp_env, env = make_fixtures()

NODE_PORT = 30080
WILDCARD = "255.255.255.255"  # NodePort on any host IP: traffic from this node or the tunnel


def set_nodeport(dp, host_ip, port, proto, value):
    """A NodePort as the service compiler writes it: this node's IP (what external clients
    reach) plus the wildcard (what the NodePort tunnel and local sources use)."""
    for addr in (host_ip, WILDCARD):
        dp.set_frontend(addr, port, proto, value)
POD_PORT = 8080
BYPASS = 0x03000000
REMOTE_WEP = RouteFlags.WORKLOAD | RouteFlags.IN_POOL | RouteFlags.TUNNELED | RouteFlags.VXLAN


class NodeB:
    """The backend's node: its own datapath object and maps, interfaces borrowed from the test netns."""

    def __init__(self, devs):
        self.devs = devs
        self.dp = Dataplane(pin_dir=None, max_entries={"cebpf_ct": 4096, "cebpf_counters": 256, "cebpf_jump": 64})
        self.HEP, self.POD_IF = devs.ifindex["hep"], devs.ifindex["wep_a"]

    def reset(self, mode):
        for name in ("cebpf_ct", "cebpf_nat_feh", "cebpf_nat_be", "cebpf_counters", "cebpf_routes", "cebpf_ifstate"):
            self.dp.maps[name].clear()
        self.dp.set_interface(self.HEP, "hep", "hep")
        self.dp.set_interface(self.POD_IF, "wep_a", "wep")
        self.dp.set_route(f"{REMOTE_HOST}/32", RouteFlags.LOCAL | RouteFlags.HOST, ifindex=self.HEP)
        self.dp.set_route(f"{HOST_IP}/32", RouteFlags.HOST, next_hop=HOST_IP)
        self.dp.set_route(f"{REMOTE_POD}/32", LOCAL_WEP, ifindex=self.POD_IF)
        self.dp.set_route("10.65.0.0/26", REMOTE_WEP, next_hop=HOST_IP)
        self.dp.set_backends(11, [(REMOTE_POD, POD_PORT)])
        set_nodeport(self.dp, REMOTE_HOST, NODE_PORT, "tcp", NatFrontendValue(id=11, count=1, local=1))
        set_nodeport(self.dp, REMOTE_HOST, NODE_PORT, "udp", NatFrontendValue(id=11, count=1, local=1))
        set_tunnel(self.dp, REMOTE_HOST, mode=mode)

    def run(self, hook, frame, ifindex):
        with self.devs.ns.enter():
            return self.dp.run(hook, frame, ifindex)

    def ct(self, src, sport, dst, dport, proto=Proto.TCP):
        raw = self.dp.maps["cebpf_ct"].lookup(CtKey.for_flow(src, sport, dst, dport, proto).to_bytes())
        return None if raw is None else CtValue.from_bytes(raw)


@pytest.fixture(scope="module")
def node_b(devs, bpf_objects):
    b = NodeB(devs)
    yield b
    b.dp.close()


def _node_a(env, mode="Tunnel", local=0, flags=0):
    """Node A: the NodePort's only backend is B's pod, reached through the VXLAN route."""
    env.dp.set_route("10.65.1.0/26", REMOTE_WEP, next_hop=REMOTE_HOST)
    env.dp.set_backends(11, [(REMOTE_POD, POD_PORT)])
    for proto in ("tcp", "udp"):
        set_nodeport(env.dp, HOST_IP, NODE_PORT, proto, NatFrontendValue(id=11, count=1, local=local, flags=flags))
    set_tunnel(env.dp, HOST_IP, mode=mode)


@pytest.fixture
def tunnel(env, node_b):
    _node_a(env)
    node_b.reset("Tunnel")
    yield env, node_b
    clear_tunnel(env.dp)


@pytest.fixture
def dsr(env, node_b):
    _node_a(env, mode="DSR")
    node_b.reset("DSR")
    yield env, node_b
    clear_tunnel(env.dp)


def _client_syn(sport=5555, flags="S", payload=b"", df=False):
    frame = P.tcp(EXTERNAL, sport, HOST_IP, NODE_PORT, flags, payload=payload)
    if df:
        pkt = Ether(frame)
        pkt[IP].flags = "DF"
        del pkt[IP].chksum
        frame = bytes(pkt)
    return frame


def _check_outer(frame, src, dst):
    """The VXLAN outer headers: addresses, port, VNI, lengths, checksums. Returns the inner frame."""
    pkt = Ether(frame)
    outer = pkt[IP]
    assert (outer.src, outer.dst, outer.proto, outer.ihl, outer.ttl) == (src, dst, 17, 5, 64)
    assert P._inet_csum(bytes(outer)[:20]) == 0, "outer IPv4 checksum"
    assert outer.len == len(frame) - 14
    udp = pkt[UDP]
    assert udp.dport == 4789 and 49152 <= udp.sport <= 65535
    assert udp.chksum == 0 and udp.len == outer.len - 20
    vx = pkt[VXLAN]
    assert vx.vni == NODEPORT_VNI and vx.flags & 0x08
    inner = bytes(vx.payload)
    assert len(inner) == len(frame) - OVERHEAD
    P.check_checksums(inner)
    return Ether(inner)


# ---- configuration ------------------------------------------------------------


def test_config_round_trips_and_mode_parses(env):
    assert tunnel_config(env.dp) is None
    cfg = set_tunnel(env.dp, HOST_IP, underlay_mtu=9000, mode="DSR")
    assert tunnel_config(env.dp) == cfg and cfg.mtu == 9000 - 50 and cfg.dsr and cfg.vni == 0xCA11C0
    clear_tunnel(env.dp)
    assert tunnel_config(env.dp) is None
    assert external_service_mode("Tunnel") is False and external_service_mode("DSR") is True
    with pytest.raises(ValueError):
        external_service_mode("Direct")


# ---- node A: forward -----------------------------------------------------------


def test_nodeport_to_remote_backend_leaves_encapsulated_untranslated(tunnel):
    a, _ = tunnel
    syn = _client_syn()
    res = a.run("from", syn, a.HEP)
    assert res.retval == TC_ACT_REDIRECT and res.mark == BYPASS
    assert res.state.verdict == Verdict.REDIRECT and res.state.fwd_ifindex == a.HEP
    inner = _check_outer(res.data, HOST_IP, REMOTE_HOST)
    # The client's packet as it was sent: B does the NAT (it must know the
    # NodePort to answer from); the client's address survives.
    assert bytes(inner[IP]) == bytes(Ether(syn)[IP])
    assert inner[Ether].src == Ether(syn).src

    tr = tunnel_trace(a.dp, res.state)
    assert tr.flags == TunnelStateFlags.NP_FWD | TunnelStateFlags.ENCAP and str(tr.tun_ip) == REMOTE_HOST
    # The NAT decision is recorded (for trace) though B carries it out.
    assert res.state.nat_backend == (ipaddress.IPv4Address(REMOTE_POD), POD_PORT)

    fwd = a.ct(EXTERNAL, 5555, HOST_IP, NODE_PORT)
    rev = a.ct(EXTERNAL, 5555, REMOTE_POD, POD_PORT)
    assert fwd.type == CtType.NAT_FWD and rev.type == CtType.NAT_REV
    assert rev.flags & CtFlags.NP_FWD and not rev.flags & CtFlags.DSR_FWD
    assert str(rev.tun_ip) == REMOTE_HOST and (str(rev.orig_ip), rev.orig_port) == (HOST_IP, NODE_PORT)
    c = a.dp.counters(a.HEP, CounterHook.TC_INGRESS)
    assert c[Counter.NAT_NEW] == 1 and c[Counter.CT_NEW] == 1 and c[Counter.REDIRECT_NEIGH] == 1

    # Later packets of the flow take the same way (established path).
    res = a.run("from", _client_syn(flags="A", payload=b"x" * 300), a.HEP)
    assert res.retval == TC_ACT_REDIRECT and res.state.ct_rc == CtResult.ESTABLISHED_DNAT
    inner = _check_outer(res.data, HOST_IP, REMOTE_HOST)
    assert (inner[IP].src, inner[IP].dst, inner[TCP].dport) == (EXTERNAL, HOST_IP, NODE_PORT)
    assert len(inner[TCP].payload) == 300


def test_outer_source_port_is_per_flow_and_df_follows_inner(tunnel):
    a, _ = tunnel
    r1 = a.run("from", _client_syn(sport=5555), a.HEP)
    r2 = a.run("from", _client_syn(sport=5555, flags="A"), a.HEP)
    assert Ether(r1.data)[UDP].sport == Ether(r2.data)[UDP].sport
    assert not Ether(r1.data)[IP].flags.DF
    r3 = a.run("from", _client_syn(sport=5600, df=True), a.HEP)
    assert Ether(r3.data)[IP].flags.DF


def test_local_backend_is_not_tunnelled_and_replies_leave_directly(tunnel):
    a, _ = tunnel
    a.dp.set_backends(12, [("10.65.0.3", 80)])
    set_nodeport(a.dp, HOST_IP, 30081, "tcp", NatFrontendValue(id=12, count=1, local=1))
    res = a.run("from", P.tcp(EXTERNAL, 5555, HOST_IP, 30081), a.HEP)
    out = P.check_checksums(res.data)
    assert UDP not in out and (out[IP].src, out[IP].dst) == (EXTERNAL, "10.65.0.3")
    assert res.state.fwd_ifindex == a.B and not tunnel_trace(a.dp, res.state).flags
    assert a.ct(EXTERNAL, 5555, "10.65.0.3", 80).flags & CtFlags.EXT_LOCAL
    # The reply's source becomes this node's own address, which the host
    # stack would drop as martian: it leaves by the data interface directly.
    res = a.run("from", P.tcp("10.65.0.3", 80, EXTERNAL, 5555, "SA"), a.B)
    out = P.check_checksums(res.data)
    assert res.retval == TC_ACT_REDIRECT and res.state.fwd_ifindex == a.HEP and res.mark == BYPASS
    assert (out[IP].src, out[TCP].sport, out[IP].dst) == (HOST_IP, 30081, EXTERNAL)


def test_forwarding_off_keeps_host_stack_path(env):
    _node_a(env)
    clear_tunnel(env.dp)
    res = env.run("from", _client_syn(), env.HEP)
    out = P.check_checksums(res.data)
    assert res.retval == TC_ACT_OK and UDP not in out and (out[IP].dst, out[TCP].dport) == (REMOTE_POD, POD_PORT)


def test_external_local_without_local_endpoint_rejects(env, node_b):
    _node_a(env, flags=NatFlags.EXTERNAL_LOCAL)
    res = env.run("from", _client_syn(), env.HEP)
    assert res.state.verdict == Verdict.REJECT and res.retval == TC_ACT_REDIRECT
    out = P.check_checksums(res.data)
    assert (out[ICMP].type, out[ICMP].code) == (3, 3) and UDP not in out
    assert env.ct_count() == 0 and not tunnel_trace(env.dp, res.state).encap
    clear_tunnel(env.dp)


# ---- node B: decapsulation ----------------------------------------------------------


def _to_b(a, b, frame):
    res = a.run("from", frame, a.HEP)
    assert res.retval == TC_ACT_REDIRECT
    return b.run("from", res.data, b.HEP)


def test_backend_node_decapsulates_and_dnats_to_local_pod(tunnel):
    a, b = tunnel
    res = _to_b(a, b, _client_syn())
    assert res.retval == TC_ACT_REDIRECT and res.state.fwd_ifindex == b.POD_IF
    out = P.check_checksums(res.data)
    assert UDP not in out and len(res.data) == len(_client_syn())
    assert (out[IP].src, out[TCP].sport, out[IP].dst, out[TCP].dport) == (EXTERNAL, 5555, REMOTE_POD, POD_PORT)
    tr = tunnel_trace(b.dp, res.state)
    assert tr.from_tunnel and str(tr.tun_ip) == HOST_IP
    assert res.state.flags & StateFlags.DNAT and str(res.state.ip_src) == EXTERNAL

    rev = b.ct(EXTERNAL, 5555, REMOTE_POD, POD_PORT)
    assert rev.type == CtType.NAT_REV and str(rev.tun_ip) == HOST_IP
    assert not rev.flags & CtFlags.NP_FWD
    assert (str(rev.orig_ip), rev.orig_port) == (HOST_IP, NODE_PORT)


def test_decap_refuses_unknown_sender_and_ignores_other_vnis(tunnel):
    a, b = tunnel
    res = a.run("from", _client_syn(), a.HEP)
    spoofed = Ether(res.data)
    spoofed[IP].src = EXTERNAL
    del spoofed[IP].chksum
    r = b.run("from", bytes(spoofed), b.HEP)
    assert r.retval == TC_ACT_SHOT and r.state.reason == Counter.DROP_DECAP

    overlay = Ether(res.data)
    overlay[VXLAN].vni = 4096  # the kernel's vxlan device owns this one
    r = b.run("from", bytes(overlay), b.HEP)
    assert r.retval == TC_ACT_OK and r.data == bytes(overlay)
    assert not tunnel_trace(b.dp, r.state).from_tunnel


# ---- the reply, Tunnel mode -------------------------------------------------------


def _open_on_b(a, b, sport=5555, proto="tcp"):
    frame = _client_syn(sport) if proto == "tcp" else P.udp(EXTERNAL, sport, HOST_IP, NODE_PORT)
    res = _to_b(a, b, frame)
    assert res.retval == TC_ACT_REDIRECT
    # ... and the pod's own ingress hook (to-wep) approves its leg.
    to_pod = b.run("to", res.data, b.POD_IF)
    assert to_pod.retval == TC_ACT_OK
    return res


def _pod_reply(sport=5555, flags="SA", payload=b"", df=False):
    frame = P.tcp(REMOTE_POD, POD_PORT, EXTERNAL, sport, flags, payload=payload)
    if df:
        pkt = Ether(frame)
        pkt[IP].flags = "DF"
        del pkt[IP].chksum
        frame = bytes(pkt)
    return frame


def test_tunnel_mode_reply_goes_back_through_ingress_node(tunnel):
    a, b = tunnel
    _open_on_b(a, b)
    res = b.run("from", _pod_reply(), b.POD_IF)
    assert res.retval == TC_ACT_REDIRECT and res.state.fwd_ifindex == b.HEP and res.mark == BYPASS
    inner = _check_outer(res.data, REMOTE_HOST, HOST_IP)
    # B translated the reply back to the NodePort it was sent to.
    assert (inner[IP].src, inner[TCP].sport, inner[IP].dst, inner[TCP].dport) == (HOST_IP, NODE_PORT, EXTERNAL, 5555)
    tr = tunnel_trace(b.dp, res.state)
    assert tr.encap and not tr.dsr and str(tr.tun_ip) == HOST_IP

    res = a.run("from", res.data, a.HEP)
    assert res.retval == TC_ACT_REDIRECT and res.state.fwd_ifindex == a.HEP and res.mark == BYPASS
    out = P.check_checksums(res.data)
    assert UDP not in out
    assert (out[IP].src, out[TCP].sport, out[IP].dst, out[TCP].dport) == (HOST_IP, NODE_PORT, EXTERNAL, 5555)
    assert out[TCP].flags == "SA"
    assert tunnel_trace(a.dp, res.state).from_tunnel
    rev = a.ct(EXTERNAL, 5555, REMOTE_POD, POD_PORT)
    assert rev.a_to_b.packets + rev.b_to_a.packets == 2  # the client's SYN and the reply


def test_udp_flow_round_trip(tunnel):
    a, b = tunnel
    _open_on_b(a, b, sport=6000, proto="udp")
    reply = P.udp(REMOTE_POD, POD_PORT, EXTERNAL, 6000, payload=b"pong")
    res = b.run("from", reply, b.POD_IF)
    _check_outer(res.data, REMOTE_HOST, HOST_IP)
    res = a.run("from", res.data, a.HEP)
    out = P.check_checksums(res.data)
    assert (out[IP].src, out[UDP].sport, out[IP].dst, out[UDP].dport) == (HOST_IP, NODE_PORT, EXTERNAL, 6000)
    assert bytes(out[UDP].payload) == b"pong"


# ---- the reply, DSR mode ------------------------------------------------------------


def test_dsr_reply_goes_straight_to_client_from_the_service_address(dsr):
    a, b = dsr
    _open_on_b(a, b)
    rev = a.ct(EXTERNAL, 5555, REMOTE_POD, POD_PORT)
    assert rev.flags & CtFlags.NP_FWD and rev.flags & CtFlags.DSR_FWD

    res = b.run("from", _pod_reply(), b.POD_IF)
    assert res.retval == TC_ACT_REDIRECT and res.state.fwd_ifindex == b.HEP and res.mark == BYPASS
    out = P.check_checksums(res.data)
    assert UDP not in out
    assert (out[IP].src, out[TCP].sport, out[IP].dst, out[TCP].dport) == (HOST_IP, NODE_PORT, EXTERNAL, 5555)
    tr = tunnel_trace(b.dp, res.state)
    assert tr.dsr and not tr.encap


def test_dsr_flow_on_ingress_node_closes_on_one_fin(dsr):
    a, _ = dsr
    a.run("from", _client_syn(), a.HEP)
    a.run("from", _client_syn(flags="FA"), a.HEP)
    # The same tuple opening again replaces the closed entries: the replies
    # (and their FIN) never pass this node in DSR mode.
    res = a.run("from", _client_syn(), a.HEP)
    assert res.state.flags & StateFlags.CT_RECYCLED and tunnel_trace(a.dp, res.state).encap


def test_dsr_opt_out_client_keeps_tunnel_return(dsr):
    a, b = dsr
    b.dp.set_route(f"{EXTERNAL}/32", RouteFlags.NO_DSR)
    _open_on_b(a, b)
    assert b.ct(EXTERNAL, 5555, REMOTE_POD, POD_PORT).flags & CtFlags.NP_NO_DSR
    res = b.run("from", _pod_reply(), b.POD_IF)
    _check_outer(res.data, REMOTE_HOST, HOST_IP)
    assert tunnel_trace(b.dp, res.state).encap


# ---- fragmentation needed --------------------------------------------------------------


def test_too_big_with_df_is_answered_with_frag_needed_carrying_tunnel_mtu(tunnel):
    a, _ = tunnel
    assert a.run("from", _client_syn(), a.HEP).retval == TC_ACT_REDIRECT
    mtu = tunnel_config(a.dp).mtu  # 1450
    fits = _client_syn(flags="A", payload=b"f" * (mtu - 40), df=True)
    assert Ether(fits)[IP].len == mtu
    res = a.run("from", fits, a.HEP)
    assert tunnel_trace(a.dp, res.state).encap and len(res.data) == len(fits) + OVERHEAD

    big = _client_syn(flags="A", payload=b"x" * (mtu - 39), df=True)
    res = a.run("from", big, a.HEP)
    assert res.retval == TC_ACT_REDIRECT and res.state.fwd_ifindex == a.HEP and res.mark == BYPASS
    assert res.state.verdict == Verdict.REJECT and tunnel_trace(a.dp, res.state).too_big
    out = P.check_checksums(res.data)
    assert (out[IP].src, out[IP].dst) == (HOST_IP, EXTERNAL)
    assert (out[ICMP].type, out[ICMP].code, out[ICMP].nexthopmtu) == (3, 4, mtu)
    # It quotes the client's packet as sent, so the client's stack finds its socket.
    assert bytes(out[IPerror])[:20] == bytes(Ether(big)[IP])[:20]
    assert (out[TCPerror].sport, out[TCPerror].dport) == (5555, NODE_PORT)
    assert Ether(res.data).dst == Ether(big).src
    assert a.dp.counters(a.HEP, CounterHook.TC_INGRESS)[Counter.DROP_ENCAP] == 1

    # Without DF it is not ours to refuse.
    res = a.run("from", _client_syn(flags="A", payload=b"x" * (mtu - 39)), a.HEP)
    assert tunnel_trace(a.dp, res.state).encap


def test_too_big_new_flow_creates_no_conntrack(tunnel):
    a, _ = tunnel
    pkt = Ether(P.udp(EXTERNAL, 7000, HOST_IP, NODE_PORT, payload=b"u" * 1500))
    pkt[IP].flags = "DF"
    del pkt[IP].chksum
    res = a.run("from", bytes(pkt), a.HEP)
    assert tunnel_trace(a.dp, res.state).too_big and a.ct_count() == 0


def test_backend_reply_too_big_for_tunnel_is_refused_to_the_pod(tunnel):
    a, b = tunnel
    _open_on_b(a, b)
    big = _pod_reply(flags="A", payload=b"y" * 1500, df=True)
    res = b.run("from", big, b.POD_IF)
    assert res.retval == TC_ACT_REDIRECT and res.state.fwd_ifindex == b.POD_IF
    out = P.check_checksums(res.data)
    assert (out[IP].src, out[IP].dst) == (REMOTE_HOST, REMOTE_POD)
    assert (out[ICMP].type, out[ICMP].code, out[ICMP].nexthopmtu) == (3, 4, 1450)
    # Quoted as the pod sent it (before the reverse NAT).
    assert (out[IPerror].src, out[TCPerror].sport) == (REMOTE_POD, POD_PORT)
