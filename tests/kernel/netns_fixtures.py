"""Network fixtures for kernel tests: namespaces, a veth "link" between two of them, traffic.

Import the fixtures into a test module (``from netns_fixtures import veth_link``).
Everything is made with unique names inside namespaces the fixture creates,
so the host's own interfaces and routes are never touched, and it is all
removed at teardown (deleting a namespace deletes its interfaces).

Addresses come from TEST-NET-1 (192.0.2.0/24, RFC 5737) and only exist
inside those namespaces.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from calico_ebpf.kernel.netns import Netns, VethPair, veth_pair

HOST_IP = "192.0.2.1"
POD_IP = "192.0.2.2"


@dataclass
class VethLink:
    """Two namespaces joined by a veth: ``host_if`` in ``host``, ``pod_if`` in ``pod``."""

    host: Netns
    pod: Netns
    pair: VethPair
    host_ip: str = HOST_IP
    pod_ip: str = POD_IP

    @property
    def host_if(self) -> str:
        return self.pair.name

    @property
    def pod_if(self) -> str:
        return self.pair.peer

    @property
    def host_ifindex(self) -> int:
        return self.pair.ifindex

    @property
    def pod_ifindex(self) -> int:
        return self.pair.peer_ifindex

    def send_udp_from_pod(self, count: int, port: int = 40000) -> None:
        """Send ``count`` UDP datagrams from the pod to the host end (nothing listens: that is fine)."""
        send_udp(self.pod, self.host_ip, port, count)


def send_udp(ns: Netns, dst: str, port: int, count: int) -> None:
    """Send ``count`` small UDP datagrams from inside ``ns`` to ``dst:port``."""

    def _send() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(count):
                s.sendto(b"cebpf-%d" % i, (dst, port))

    ns.run(_send)


def wait_until(predicate: Callable[[], bool], timeout: float = 3.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until true or ``timeout``: packets cross a veth asynchronously (softirq)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


@pytest.fixture
def veth_link():
    """A fresh VethLink with addresses set and both ends up; removed afterwards."""
    with Netns(prefix="cebpf-h") as host, Netns(prefix="cebpf-p") as pod:
        pair = veth_pair("cebpf-h0", "eth0", netns=host, peer_netns=pod)
        host.add_address(pair.name, f"{HOST_IP}/30")
        pod.add_address(pair.peer, f"{POD_IP}/30")
        yield VethLink(host, pod, pair)
