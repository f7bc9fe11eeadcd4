"""Pod workloads of the lab: a TCP + UDP "who am I talking to" echo server and its client.

The server answers every TCP connection and every UDP datagram with::

    hello from <server name> you are <peer ip>:<peer port>\\n<the bytes it received>

so a test learns in one round trip which pod answered *and* which source
address the packet arrived with (what NAT, tunnels or policy did to it)::

    reply = lab.pod("node-1", 0).request("10.244.0.65", 8080, proto="udp")
    assert reply.server == "node-2-pod-0" and reply.peer_ip == "10.244.0.1"

The server half runs as its own process (``python -I workload.py --name N
--tcp P --udp P``), started inside a namespace by :func:`start_server`, so
a lab brought up by one command keeps answering after that command exits.
It uses the standard library only: it starts fast and needs no venv.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import socket
import socketserver
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

try:
    from calico_ebpf.errors import CalicoEBPFError as _ErrorBase
except ImportError:  # running as the standalone server script (python -I), which never raises it
    _ErrorBase = Exception  # type: ignore[misc,assignment]

if TYPE_CHECKING:
    from calico_ebpf.kernel.netns import Netns

__all__ = ["DEFAULT_PORT", "Reply", "WorkloadError", "request", "start_server"]

DEFAULT_PORT = 8080
READY = b"ready\n"
_REPLY_RE = re.compile(r"hello from (?P<server>\S+) you are (?P<ip>[0-9a-fA-F.:]+):(?P<port>\d+)")


class WorkloadError(_ErrorBase):
    """A workload server did not start, or a request got no (or a malformed) reply."""


@dataclass(frozen=True)
class Reply:
    """What an echo server said: who it is, the peer address it saw, the echoed payload."""

    server: str
    peer_ip: str
    peer_port: int
    payload: bytes
    text: str

    @classmethod
    def parse(cls, data: bytes) -> Reply:
        head, _, payload = data.partition(b"\n")
        text = head.decode(errors="replace")
        m = _REPLY_RE.fullmatch(text)
        if not m:
            raise WorkloadError(f"not an echo-server reply: {data[:80]!r}")
        return cls(m["server"], m["ip"], int(m["port"]), payload, text)


def _answer(name: str, peer: tuple, data: bytes) -> bytes:
    return f"hello from {name} you are {peer[0]}:{peer[1]}\n".encode() + data


# -- server (runs in its own process) ---------------------------------------------------------


def serve(name: str, tcp_port: int, udp_port: int, ready_fd: int) -> None:
    """Serve forever; write READY to ``ready_fd`` once both sockets listen."""

    class TCPHandler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            # Read what the client sends in its first burst (a short wait:
            # a client that sends nothing still gets its answer).
            self.request.settimeout(0.5)
            try:
                data = self.request.recv(65536)
            except OSError:
                data = b""
            self.request.sendall(_answer(name, self.client_address, data))

    class UDPHandler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            sock.sendto(_answer(name, self.client_address, data), self.client_address)

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.daemon_threads = True
    tcp = socketserver.ThreadingTCPServer(("0.0.0.0", tcp_port), TCPHandler)
    udp = socketserver.ThreadingUDPServer(("0.0.0.0", udp_port), UDPHandler)
    threading.Thread(target=udp.serve_forever, daemon=True).start()
    os.write(ready_fd, READY)
    os.close(ready_fd)
    # From here on nobody reads our stderr (the parent may be gone): a
    # handler's traceback must not fail on a broken pipe.
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    tcp.serve_forever()


def start_server(netns: Netns, name: str, *, tcp_port: int = DEFAULT_PORT, udp_port: int = DEFAULT_PORT,
                 timeout: float = 5.0) -> subprocess.Popen:
    """Start an echo server inside ``netns`` and return once it listens.

    The process runs in its own session so it outlives the caller (a lab
    left up by ``calico-ebpf lab up``); the lab's teardown finds and stops
    it through the namespace it runs in.
    """
    argv = [sys.executable, "-I", os.path.abspath(__file__), "--name", name,
            "--tcp", str(tcp_port), "--udp", str(udp_port)]
    proc = netns.popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       start_new_session=True)
    wait_ready(proc, name, timeout)
    return proc


def wait_ready(proc: subprocess.Popen, name: str, timeout: float) -> None:
    """Block until ``proc`` reports READY; kill it and raise WorkloadError otherwise."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else b""
    proc.stdout.close()
    if line != READY:
        proc.kill()
        _, err = proc.communicate(timeout=timeout)
        raise WorkloadError(f"echo server {name} did not start within {timeout}s: {err.decode(errors='replace')[-500:]}")
    assert proc.stderr is not None
    proc.stderr.close()  # the server writes nothing after READY; don't keep a pipe it could block on


# -- client ------------------------------------------------------------------------------------


def request(dst: str, port: int = DEFAULT_PORT, *, proto: str = "tcp", payload: bytes = b"ping",
            timeout: float = 2.0, netns: Netns | None = None, src: str | None = None) -> Reply:
    """Send ``payload`` to an echo server and return its parsed :class:`Reply`.

    Runs in the calling thread (inside ``netns`` when given: the socket is
    created there and keeps working after the thread leaves). Raises
    WorkloadError on timeout, refusal or a malformed answer.
    """
    if netns is not None:
        sock = netns.run(_socket, proto)
    else:
        sock = _socket(proto)
    where = f"{proto} {dst}:{port}" + (f" from netns {netns.name}" if netns is not None else "")
    with sock:
        sock.settimeout(timeout)
        try:
            if src:
                sock.bind((src, 0))
            if proto == "tcp":
                sock.connect((dst, port))
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
                data = b"".join(chunks)
            else:
                sock.sendto(payload, (dst, port))
                data, _ = sock.recvfrom(65536)
        except OSError as exc:  # TimeoutError included
            raise WorkloadError(f"{where}: {exc.__class__.__name__}: {exc}") from None
    return Reply.parse(data)


def _socket(proto: str) -> socket.socket:
    if proto not in ("tcp", "udp"):
        raise WorkloadError(f"proto must be tcp or udp, not {proto!r}")
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="lab echo server: answers who it is and who the peer is")
    p.add_argument("--name", required=True)
    p.add_argument("--tcp", type=int, default=DEFAULT_PORT)
    p.add_argument("--udp", type=int, default=DEFAULT_PORT)
    args = p.parse_args(argv)
    # READY goes to the original stdout pipe; afterwards stdout/stderr point
    # at /dev/null so an exited parent can never make a write raise SIGPIPE.
    ready_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        serve(args.name, args.tcp, args.udp, ready_fd)
    except BaseException as exc:
        os.write(2, f"{exc.__class__.__name__}: {exc}\n".encode())
        raise


if __name__ == "__main__":
    main()
