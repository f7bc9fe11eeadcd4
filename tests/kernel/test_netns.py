"""The netns toolbox: namespaces, veth pairs, addresses, running code inside a namespace."""

from __future__ import annotations

import os
import socket
import sys

import pytest

from calico_ebpf.kernel.netns import Netns, NetnsError, add_address, ifindex, unique_name, veth_pair


def _netns_inode(path: str) -> int:
    return os.stat(path).st_ino


def test_netns_lifecycle_and_run(tmp_path):
    ns = Netns(prefix="cebpf-t")
    try:
        assert os.path.exists(ns.path)
        # Loopback is up in a fresh namespace made by Netns.
        assert ns.run(lambda: socket.if_nametoindex("lo")) == 1
        inside = ns.run(lambda: os.stat("/proc/thread-self/ns/net").st_ino)
        assert inside == _netns_inode(ns.path)
        # ...and the thread is back home afterwards.
        assert os.stat("/proc/thread-self/ns/net").st_ino != inside
        # A subprocess started inside sees the namespace too.
        out = ns.run_cmd([sys.executable, "-c", "import os; print(os.stat('/proc/self/ns/net').st_ino)"])
        assert int(out.stdout) == inside
        with pytest.raises(NetnsError):
            Netns(ns.name)  # never adopt an existing name
    finally:
        ns.delete()
    assert not os.path.exists(ns.path)
    with pytest.raises(NetnsError):
        Netns.open(ns.name)


def test_veth_pair_across_namespaces_with_addresses_and_traffic():
    with Netns(prefix="cebpf-a") as a, Netns(prefix="cebpf-b") as b:
        name = unique_name("cv")
        assert len(name) <= 15
        with veth_pair(name, "eth0", netns=a, peer_netns=b) as pair:
            assert pair.ifindex == a.ifindex(name)
            assert pair.peer_ifindex == ifindex("eth0", b)
            with pytest.raises(NetnsError):
                a.ifindex("eth0")  # the peer is not in a
            add_address(name, "192.0.2.1/30", a)
            b.add_address("eth0", "192.0.2.2/30")

            # Real traffic across the pair: a UDP socket in a receives from b.
            rx = a.run(socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
            with rx:
                rx.bind(("192.0.2.1", 0))
                rx.settimeout(5)
                port = rx.getsockname()[1]

                def send():
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                        s.sendto(b"hello", ("192.0.2.1", port))

                b.run(send)
                data, (src, _) = rx.recvfrom(100)
            assert (data, src) == (b"hello", "192.0.2.2")
        with pytest.raises(NetnsError):
            a.ifindex(name)  # deleted with the pair


def test_veth_pair_refuses_existing_names():
    with Netns(prefix="cebpf-c") as a, Netns(prefix="cebpf-d") as b:
        veth_pair("x0", "y0", netns=a, peer_netns=b)
        with pytest.raises(NetnsError) as exc:
            veth_pair("x0", "z0", netns=a, peer_netns=b)
        assert exc.value.errno == 17
        with pytest.raises(NetnsError):
            veth_pair("a-name-that-is-too-long", "y1", netns=a, peer_netns=b)
