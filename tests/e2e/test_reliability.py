"""Reliability of the lab cluster's dataplane under live traffic.

1. **Agent restart**: dozens of long-lived TCP streams (pods through a
   ClusterIP service with backends on both nodes, and the external client
   through a NodePort forwarded in VXLAN) keep echoing while the agents of
   both nodes exit (Dataplane fds closed, programs attached, maps pinned) and
   new ones re-adopt the pins: the apply of the unchanged state writes
   nothing, service ids stay, and not one stream breaks or loses a byte.
2. **Backend removal**: TCP flows to a backend taken out of the service get a
   RST on their next packet (SEND_RESET), so the client sees ECONNRESET at
   once; flows to the surviving backend go on intact; UDP flows to the
   removed backend are answered by a live one on their next datagram.

The echo servers here are our own (a selector loop in this process, with
sockets opened inside the pods' namespaces): the lab's workload server
answers once per connection, and these tests need streams that echo for as
long as they live.
"""

from __future__ import annotations

import errno
import os
import queue
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from calico_ebpf.kernel.netns import unique_name
from calico_ebpf.lab.cluster import LabCluster

pytestmark = pytest.mark.timeout(90)

ECHO_PORT = 9090  # our stream echo servers (the lab's own server is on 8080)
STREAM_VIP, STREAM_PORT = "10.96.1.10", 80  # ClusterIP, backends on both nodes
NP_VIP, NODE_PORT = "10.96.1.11", 30090  # NodePort, backends on node-2 only
RM_VIP, RM_PORT = "10.96.1.12", 81  # backend-removal service: one backend per node

STREAM_BACKENDS = ("node-1-pod-2", "node-2-pod-1", "node-2-pod-2")
NP_BACKENDS = ("node-2-pod-1", "node-2-pod-2")
RM_SURVIVOR, RM_VICTIM = "node-1-pod-2", "node-2-pod-1"
ECHO_PODS = sorted(set(STREAM_BACKENDS) | set(NP_BACKENDS) | {RM_SURVIVOR, RM_VICTIM})
CLIENT_PODS = ("node-1-pod-0", "node-1-pod-1", "node-2-pod-0")

STREAMS_PER_POD = 16  # 48 pod streams through the ClusterIP ...
EXTERNAL_STREAMS = 12  # ... + 12 from the external client through the NodePort = 60
CHUNK = 512
WINDOW = 4096  # bytes a stream may have unechoed before it waits
PHASE = 1.0  # s of traffic in each phase (before, agents down, after)
DRAIN_TIMEOUT = 5.0
RESET_WITHIN = 1.0  # s: a flow to a removed backend must be reset by then, not hang


# -- manifests ------------------------------------------------------------------------------------


def _service(name: str, vip: str, port: int, *, node_port: int | None = None) -> dict[str, Any]:
    ports = [{"name": p.lower(), "port": port, "targetPort": ECHO_PORT, "protocol": p} for p in ("TCP", "UDP")]
    if node_port:
        for p in ports:
            p["nodePort"] = node_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "NodePort" if node_port else "ClusterIP", "clusterIP": vip, "ports": ports},
    }


def _slice(service: str, cluster: LabCluster, pods: tuple[str, ...]) -> dict[str, Any]:
    by_name = {p.name: p for p in cluster.lab.pods}
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": f"{service}-x1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": p.lower(), "port": ECHO_PORT, "protocol": p} for p in ("TCP", "UDP")],
        "endpoints": [
            {"addresses": [by_name[n].ip], "nodeName": by_name[n].node.name, "conditions": {"ready": True},
             "targetRef": {"kind": "Pod", "namespace": "default", "name": n}}
            for n in pods
        ],
    }


def _state(cluster: LabCluster, rm_backends: tuple[str, ...] = (RM_SURVIVOR, RM_VICTIM)):
    state = cluster.lab_state([
        _service("stream", STREAM_VIP, STREAM_PORT), _slice("stream", cluster, STREAM_BACKENDS),
        _service("stream-np", NP_VIP, STREAM_PORT, node_port=NODE_PORT), _slice("stream-np", cluster, NP_BACKENDS),
        _service("rm", RM_VIP, RM_PORT), _slice("rm", cluster, rm_backends),
    ])
    assert not state.rejected, state.rejected
    return state


# -- echo servers -----------------------------------------------------------------------------------


class EchoServers:
    """On :data:`ECHO_PORT` in each pod, one thread for all: TCP greets a new connection with
    ``<pod>\\n`` and then echoes the stream; UDP answers ``<pod>|<datagram>``."""

    def __init__(self, pods):
        self.sel = selectors.DefaultSelector()
        self.accepts = 0  # TCP connections accepted, all pods together
        self._out: dict[socket.socket, bytearray] = {}
        self._socks: list[socket.socket] = []
        self._pushes: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        self._stop = threading.Event()
        for pod in pods:
            tcp = pod.run(socket.socket, socket.AF_INET, socket.SOCK_STREAM)
            udp = pod.run(socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
            self._socks += [tcp, udp]
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind(("0.0.0.0", ECHO_PORT))
            tcp.listen(256)
            udp.bind(("0.0.0.0", ECHO_PORT))
            for s in (tcp, udp):
                s.setblocking(False)
            self.sel.register(tcp, selectors.EVENT_READ, ("listen", pod.name))
            self.sel.register(udp, selectors.EVENT_READ, ("udp", pod.name))
        self.thread = threading.Thread(target=self._loop, name="echo-servers", daemon=True)
        self.thread.start()

    def push(self, pod: str, data: bytes) -> None:
        """Make ``pod`` send ``data`` unasked on each of its TCP connections (a server push)."""
        self._pushes.put((pod, data))

    def _loop(self) -> None:
        while not self._stop.is_set():
            while not self._pushes.empty():
                pod, data = self._pushes.get()
                for conn, out in self._out.items():
                    if self.sel.get_key(conn).data == ("conn", pod):
                        out += data
                        self.sel.modify(conn, selectors.EVENT_READ | selectors.EVENT_WRITE, ("conn", pod))
            for key, events in self.sel.select(0.02):
                kind, name = key.data
                sock = key.fileobj
                try:
                    if kind == "listen":
                        conn, peer = sock.accept()
                        conn.setblocking(False)
                        self.accepts += 1
                        self._out[conn] = bytearray(name.encode() + b"\n")
                        self.sel.register(conn, selectors.EVENT_READ | selectors.EVENT_WRITE, ("conn", name))
                    elif kind == "udp":
                        data, peer = sock.recvfrom(65536)
                        sock.sendto(name.encode() + b"|" + data, peer)
                    else:
                        self._serve(sock, events)
                except (BlockingIOError, InterruptedError):
                    pass

    def _serve(self, conn: socket.socket, events: int) -> None:
        out = self._out[conn]
        try:
            if events & selectors.EVENT_READ:
                data = conn.recv(65536)
                if not data:
                    raise ConnectionResetError("EOF")
                out += data
            if out:
                del out[: conn.send(out)]
        except BlockingIOError:
            pass
        except OSError:
            self.sel.unregister(conn)
            del self._out[conn]
            conn.close()
            return
        self.sel.modify(conn, selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0), self.sel.get_key(conn).data)

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        for conn in list(self._out):
            conn.close()
        for s in self._socks:
            s.close()
        self.sel.close()


# -- client streams ------------------------------------------------------------------------------------


@dataclass(eq=False)
class Stream:
    """One long-lived TCP connection that sends random bytes and checks every byte echoed back."""

    name: str
    sock: socket.socket
    backend: str  # the pod that accepted the connection (its greeting)
    sent: bytearray = field(default_factory=bytearray)
    echoed: int = 0
    error: str | None = None
    broken_at: float | None = None


class StreamPump:
    """Drives every stream from one thread: send while the window allows, verify every echo."""

    def __init__(self, streams: list[Stream]):
        self.streams = streams
        self.sel = selectors.DefaultSelector()
        for st in streams:
            st.sock.setblocking(False)
            self.sel.register(st.sock, selectors.EVENT_READ, st)
        self.sending = threading.Event()
        self.sending.set()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="stream-pump", daemon=True)
        self.thread.start()

    def _break(self, st: Stream, why: str) -> None:
        st.error, st.broken_at = why, time.monotonic()
        self.sel.unregister(st.sock)

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.sending.is_set():
                for st in self.streams:
                    if st.error is None and len(st.sent) - st.echoed < WINDOW:
                        chunk = os.urandom(CHUNK)
                        try:
                            n = st.sock.send(chunk)
                        except BlockingIOError:
                            n = 0
                        except OSError as exc:
                            self._break(st, errno.errorcode.get(exc.errno, str(exc)))
                            continue
                        st.sent += chunk[:n]
            for key, _ in self.sel.select(0.005):
                st = key.data
                try:
                    data = st.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    self._break(st, errno.errorcode.get(exc.errno, str(exc)))
                    continue
                if not data:
                    self._break(st, "EOF")
                elif st.sent[st.echoed : st.echoed + len(data)] != data:
                    self._break(st, f"corrupt echo at byte {st.echoed}")
                else:
                    st.echoed += len(data)

    def progress(self) -> dict[Stream, int]:
        return {st: st.echoed for st in self.streams}

    def drain(self, timeout: float = DRAIN_TIMEOUT) -> None:
        """Stop sending and wait until every live stream got all its bytes back."""
        self.sending.clear()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(st.error is not None or st.echoed == len(st.sent) for st in self.streams):
                return
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the thread; the sockets stay open (blocking again) for the caller."""
        self._stop.set()
        self.thread.join(5)
        self.sel.close()
        for st in self.streams:
            st.sock.setblocking(True)

    def close(self) -> None:
        self.stop()
        for st in self.streams:
            st.sock.close()


def open_streams(endpoint, dst: str, port: int, count: int, label: str) -> list[Stream]:
    out = []
    for i in range(count):
        sock = endpoint.run(socket.socket, socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(3)
            sock.connect((dst, port))
            greeting = b""
            while not greeting.endswith(b"\n"):
                chunk = sock.recv(64)
                assert chunk, f"{label}#{i}: {dst}:{port} closed before its greeting"
                greeting += chunk
        except BaseException:
            sock.close()
            raise
        out.append(Stream(f"{label}#{i}", sock, greeting[:-1].decode()))
    return out


def udp_flow(endpoint, dst: str, port: int) -> socket.socket:
    """A connected UDP socket from ``endpoint``: one flow, one source port."""
    sock = endpoint.run(socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    sock.connect((dst, port))
    return sock


def udp_ask(sock: socket.socket, payload: bytes) -> tuple[str, bytes]:
    """Send one datagram; (pod that answered, payload it echoed)."""
    sock.send(payload)
    server, _, echoed = sock.recv(65536).partition(b"|")
    return server.decode(), echoed


def _progressed(before: dict[Stream, int], after: dict[Stream, int]) -> list[str]:
    """Streams that echoed nothing between two snapshots."""
    return [st.name for st in before if after[st] <= before[st]]


# -- fixtures --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bpf_objects():
    import sys
    from importlib.resources import files
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
    import build_bpf

    build_bpf.build_all(str(files("calico_ebpf._bpf")))


@pytest.fixture(scope="module")
def cluster(bpf_objects):
    prefix = unique_name("rel", maxlen=12)
    with LabCluster(nodes=2, pods_per_node=3, prefix=prefix) as c:
        c.apply(_state(c))
        servers = EchoServers([p for p in c.lab.pods if p.name in ECHO_PODS])
        c.echo = servers
        try:
            yield c
        finally:
            servers.close()
    assert LabCluster.find_leftovers(prefix) == []


def _pods(cluster: LabCluster) -> dict[str, Any]:
    return {p.name: p for p in cluster.lab.pods}


# -- tests --------------------------------------------------------------------------------------------------


def test_agent_restart_under_traffic_breaks_no_stream(cluster):
    pods = _pods(cluster)
    state = _state(cluster)
    assert all(r.writes == 0 for r in cluster.apply(state).values())  # the fixture applied it
    ids_before = {name: nd.dp.service_ids for name, nd in cluster.dataplanes.items()}
    old_dps = {name: nd.dp for name, nd in cluster.dataplanes.items()}
    assert all(ids_before.values())

    accepts_before = cluster.echo.accepts
    streams = []
    for name in CLIENT_PODS:
        streams += open_streams(pods[name], STREAM_VIP, STREAM_PORT, STREAMS_PER_POD, name)
    entry = cluster.lab.node("node-1")  # no NodePort backend here: forwarded to node-2 in VXLAN
    streams += open_streams(cluster.lab.external, entry.underlay_ip, NODE_PORT, EXTERNAL_STREAMS, "external")
    assert len(streams) >= 50
    pump = StreamPump(streams)
    try:
        time.sleep(PHASE)
        # Every stream was answered by a backend of its service, the pod ones on both nodes.
        for st in streams:
            want = NP_BACKENDS if st.name.startswith("external") else STREAM_BACKENDS
            assert st.backend in want, f"{st.name} served by {st.backend}"
        assert {pods[st.backend].node.name for st in streams if not st.name.startswith("external")} == {
            "node-1", "node-2"}
        before_down = pump.progress()
        assert not _progressed({st: 0 for st in streams}, before_down)

        with cluster.agents_stopped("node-1", "node-2"):
            assert cluster.dataplanes == {}
            down_start = pump.progress()
            time.sleep(PHASE)
            down_end = pump.progress()
        # New agents: the apply of the unchanged state re-adopts the pins and writes nothing.
        reports = cluster.apply(state)
        for name, report in reports.items():
            assert report.writes == 0, f"{name}: {report}"
            assert cluster.dataplanes[name].dp.service_ids == ids_before[name]
            assert cluster.dataplanes[name].dp is not old_dps[name]
        time.sleep(PHASE)
        after = pump.progress()
        pump.drain()
    finally:
        pump.close()

    broken = [(st.name, st.error) for st in streams if st.error]
    assert broken == [], f"{len(broken)}/{len(streams)} streams broke: {broken[:5]}"
    assert _progressed(down_start, down_end) == [], "streams stalled while the agents were down"
    assert _progressed(down_end, after) == [], "streams stalled after the new agents attached"
    unechoed = [(st.name, len(st.sent) - st.echoed) for st in streams if st.echoed != len(st.sent)]
    assert unechoed == []
    # No connection was made behind our back (the servers accepted exactly our streams).
    assert cluster.echo.accepts - accepts_before == len(streams)
    # New flows after the restart are served by the new agents' programs.
    for name in CLIENT_PODS:
        with udp_flow(pods[name], STREAM_VIP, STREAM_PORT) as s:
            server, echoed = udp_ask(s, b"udp after restart")
            assert server in STREAM_BACKENDS and echoed == b"udp after restart"
    with udp_flow(cluster.lab.external, entry.underlay_ip, NODE_PORT) as s:
        server, echoed = udp_ask(s, b"nodeport after restart")
        assert server in NP_BACKENDS and echoed == b"nodeport after restart"
    fresh = open_streams(pods["node-1-pod-0"], STREAM_VIP, STREAM_PORT, 1, "fresh")[0]
    with fresh.sock:
        fresh.sock.sendall(b"after restart")
        assert fresh.sock.recv(100) == b"after restart"


def _await_reset(st: Stream, timeout: float) -> tuple[str, float]:
    """Send on ``st`` and read until the connection fails: (outcome, seconds from the send).

    Bytes the backend pushed before the reset may arrive first and are skipped."""
    st.sock.settimeout(timeout)
    t0 = time.monotonic()
    try:
        st.sock.send(b"next")
        while st.sock.recv(65536):
            pass
        outcome = "EOF"
    except TimeoutError:
        outcome = "hang"
    except OSError as exc:
        outcome = errno.errorcode.get(exc.errno, str(exc))
    return outcome, time.monotonic() - t0


@pytest.mark.parametrize("first", ["client", "backend"])
def test_removed_backend_resets_tcp_and_moves_udp(cluster, first):
    """``first``: who sends the flow's first packet after the removal.

    "client": the flows carried data both ways, then the client sends again.
    "backend": the flows are as a server-speaks-first protocol leaves them (the
    server's greeting only; SMTP, MySQL, SSH banners) and the removed backend
    pushes more before the client speaks. Either way the client must be reset
    promptly: a client left without conntrack would retransmit into nothing.
    """
    pods = _pods(cluster)
    cluster.apply(_state(cluster))
    clients = [pods["node-1-pod-0"], pods["node-2-pod-0"]]  # one on each node: remote and local to the victim

    streams: list[Stream] = []
    udp: list[tuple[socket.socket, str]] = []  # (connected socket, backend that answered first)
    try:
        for c in clients:
            streams += open_streams(c, RM_VIP, RM_PORT, 8, c.name)
        victims = [st for st in streams if st.backend == RM_VICTIM]
        survivors = [st for st in streams if st.backend == RM_SURVIVOR]
        assert len(victims) + len(survivors) == len(streams)
        assert {st.name.rsplit("#")[0] for st in victims} == {c.name for c in clients}, [
            (st.name, st.backend) for st in streams]
        for c in clients:
            for _ in range(8):
                s = udp_flow(c, RM_VIP, RM_PORT)
                udp.append((s, ""))
                server, payload = udp_ask(s, b"first")
                assert payload == b"first"
                udp[-1] = (s, server)
        assert {b for _, b in udp} == {RM_SURVIVOR, RM_VICTIM}, udp

        # Traffic (on the victims too when the client speaks first), then quiet with nothing
        # in flight, so that we choose who speaks first after the removal.
        warmup = StreamPump(streams if first == "client" else survivors)
        time.sleep(0.3)
        warmup.drain()
        warmup.stop()
        assert [(st.name, st.error) for st in streams if st.error or st.echoed != len(st.sent)] == []
        for st in streams:
            st.sent, st.echoed = bytearray(), 0

        pump = StreamPump(survivors)  # live traffic on the survivors through the removal
        try:
            reports = cluster.apply(_state(cluster, rm_backends=(RM_SURVIVOR,)))
            for name, report in reports.items():
                assert report.removed_backends, f"{name}: {report}"
            reset_flows = sum(r.stale_nat.tcp_flows for r in reports.values() if r.stale_nat)
            assert reset_flows >= len(victims), {n: r.to_dict()["stale_nat"] for n, r in reports.items()}
            if first == "backend":
                cluster.echo.push(RM_VICTIM, b"pushed")
                time.sleep(0.2)
            outcomes = {st.name: _await_reset(st, RESET_WITHIN) for st in victims}
            mark = pump.progress()
            time.sleep(0.5)
            end = pump.progress()
            pump.drain()
        finally:
            pump.stop()

        wrong = {name: (o, round(t, 3)) for name, (o, t) in outcomes.items() if o != "ECONNRESET"}
        assert wrong == {}, f"{len(wrong)}/{len(victims)} flows to the removed backend not reset: {wrong}"
        assert max(t for _, t in outcomes.values()) < RESET_WITHIN
        assert [(st.name, st.error) for st in survivors if st.error] == []
        assert _progressed(mark, end) == [], "flows to the surviving backend stalled"
        assert [st.name for st in survivors if st.echoed != len(st.sent) or not st.echoed] == []

        # UDP: the next datagram of every flow is answered by the live backend, and stays there.
        for s, was in udp:
            assert udp_ask(s, b"next") == (RM_SURVIVOR, b"next"), f"flow first served by {was}"
            assert udp_ask(s, b"again") == (RM_SURVIVOR, b"again")
    finally:
        for st in streams:
            st.sock.close()
        for s, _ in udp:
            s.close()
        cluster.apply(_state(cluster))
