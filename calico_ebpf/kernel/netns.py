"""Network namespaces, veth pairs and addresses, via pyroute2 (no `ip` binary).

A small toolbox shared by tests, the lab and the dataplane::

    with Netns(prefix="node") as node, Netns(prefix="pod") as pod, \
            veth_pair("cali0", "eth0", netns=node, peer_netns=pod) as veth:
        node.add_address("cali0", "192.0.2.1/30")
        pod.add_address("eth0", "192.0.2.2/30")
        pod.run(send_udp, "192.0.2.1", 9999)        # runs in this thread, inside pod
        pod.run_cmd(["ping", "-c1", "192.0.2.1"])   # a subprocess started inside pod

Everything created here is removed by the same object's ``delete()`` /
context exit, and a name given to ``Netns`` / ``veth_pair`` that already
exists is refused rather than adopted, so cleanup never removes something
this process did not create (use ``Netns.open`` to work inside a namespace
you do not own).

A namespace is entered per *thread* (setns(2) changes the calling thread
only), which is what makes ``Netns.enter()`` safe to use while other
threads keep working in the namespace they started in.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from pyroute2 import IPRoute
from pyroute2 import netns as _pyr_netns
from pyroute2.netlink.exceptions import NetlinkError

from calico_ebpf.errors import CalicoEBPFError

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "IFNAMSIZ",
    "NETNS_RUN_DIR",
    "Netns",
    "NetnsError",
    "VethPair",
    "add_address",
    "delete_link",
    "ifindex",
    "iproute",
    "set_up",
    "unique_name",
    "veth_pair",
]

NETNS_RUN_DIR = _pyr_netns.NETNS_RUN_DIR
IFNAMSIZ = 15  # usable characters of an interface name (IFNAMSIZ - 1)
_counter = itertools.count()
T = TypeVar("T")


class NetnsError(CalicoEBPFError):
    """A namespace, link or address operation failed; says which and why."""

    def __init__(self, op: str, err: int | None = None, detail: str = ""):
        self.op = op
        self.errno = err
        reason = detail or (os.strerror(err) if err else "failed")
        super().__init__(f"{op}: {reason}")


def unique_name(prefix: str, maxlen: int = IFNAMSIZ) -> str:
    """A name unlikely to clash with anything else on the host.

    It carries the pid, a per-process counter and random bits, cut to
    ``maxlen`` (15 fits an interface name) by shortening the prefix first.
    """
    suffix = f"{os.getpid() % 100000:x}{next(_counter) % 256:x}{secrets.token_hex(2)}"
    keep = max(0, maxlen - len(suffix) - 1)
    name = f"{prefix[:keep]}-{suffix}" if keep else suffix
    return name[:maxlen]


def _ns_name(netns: Netns | str | None) -> str | None:
    if netns is None:
        return None
    return netns.name if isinstance(netns, Netns) else netns


def iproute(netns: Netns | str | None = None) -> IPRoute:
    """An IPRoute socket in ``netns`` (None: the calling thread's namespace). Caller closes it."""
    name = _ns_name(netns)
    if name is None:
        return IPRoute()
    if not os.path.exists(os.path.join(NETNS_RUN_DIR, name)):
        raise NetnsError(f"open netns {name}", 2, f"no such network namespace ({NETNS_RUN_DIR}/{name})")
    return IPRoute(netns=name, flags=0)


@contextlib.contextmanager
def _ipr(netns: Netns | str | None) -> Iterator[IPRoute]:
    if isinstance(netns, Netns):
        yield netns.iproute()  # cached on the Netns, closed with it
        return
    ipr = iproute(netns)
    try:
        yield ipr
    finally:
        ipr.close()


def _where(netns: Netns | str | None) -> str:
    name = _ns_name(netns)
    return f" in netns {name}" if name else ""


def ifindex(ifname: str, netns: Netns | str | None = None) -> int:
    """Interface index of ``ifname`` inside ``netns``; NetnsError if it does not exist."""
    with _ipr(netns) as ipr:
        found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise NetnsError(f"look up interface {ifname}{_where(netns)}", 19, "no such device")
    return found[0]


def set_up(ifname: str, netns: Netns | str | None = None, *, mtu: int | None = None) -> None:
    """Bring ``ifname`` up (and set its MTU when given)."""
    extra = {"mtu": mtu} if mtu else {}
    idx = ifindex(ifname, netns)
    with _ipr(netns) as ipr:
        try:
            ipr.link("set", index=idx, state="up", **extra)
        except NetlinkError as exc:
            raise NetnsError(f"set {ifname} up{_where(netns)}", exc.code) from None


def add_address(ifname: str, cidr: str, netns: Netns | str | None = None, *, up: bool = False) -> None:
    """Add ``cidr`` (``"10.0.0.1/24"`` or an IPv6 prefix) to ``ifname``; optionally bring it up."""
    address, _, plen = cidr.partition("/")
    if not plen:
        plen = "128" if ":" in address else "32"
    idx = ifindex(ifname, netns)
    with _ipr(netns) as ipr:
        try:
            ipr.addr("add", index=idx, address=address, prefixlen=int(plen))
            if up:
                ipr.link("set", index=idx, state="up")
        except NetlinkError as exc:
            raise NetnsError(f"add address {cidr} to {ifname}{_where(netns)}", exc.code) from None


def delete_link(ifname: str, netns: Netns | str | None = None, *, missing_ok: bool = True) -> bool:
    """Delete interface ``ifname``; returns False when it was already gone (and ``missing_ok``)."""
    try:
        idx = ifindex(ifname, netns)
    except NetnsError:
        if missing_ok:
            return False
        raise
    with _ipr(netns) as ipr:
        try:
            ipr.link("del", index=idx)
        except NetlinkError as exc:
            if missing_ok and exc.code == 19:
                return False
            raise NetnsError(f"delete interface {ifname}{_where(netns)}", exc.code) from None
    return True


class Netns:
    """A named network namespace (``/var/run/netns/<name>``), created and owned by this object.

    ``Netns()`` creates a namespace with a unique name; ``Netns("x")``
    creates exactly "x" and refuses if it exists. Loopback is brought up.
    ``delete()`` (or leaving the ``with`` block) removes it and every
    interface in it. ``Netns.open(name)`` wraps an existing namespace
    without owning it: its ``delete()`` only closes sockets.
    """

    def __init__(self, name: str | None = None, *, prefix: str = "cebpf"):
        self.name = name or unique_name(prefix, maxlen=40)
        self.owned = True
        self._ipr: IPRoute | None = None
        if os.path.exists(self.path):
            raise NetnsError(f"create netns {self.name}", 17, "already exists (not adopting a namespace this object did not create)")
        try:
            _pyr_netns.create(self.name)
        except OSError as exc:
            raise NetnsError(f"create netns {self.name}", exc.errno) from None
        try:
            set_up("lo", self)
        except BaseException:
            self.delete()
            raise

    @classmethod
    def open(cls, name: str) -> Netns:
        """A handle on an existing namespace that this process does not own."""
        self = cls.__new__(cls)
        self.name = name
        self.owned = False
        self._ipr = None
        if not os.path.exists(self.path):
            raise NetnsError(f"open netns {name}", 2, f"no such network namespace ({self.path})")
        return self

    @staticmethod
    def exists(name: str) -> bool:
        return os.path.exists(os.path.join(NETNS_RUN_DIR, name))

    @property
    def path(self) -> str:
        return os.path.join(NETNS_RUN_DIR, self.name)

    def iproute(self) -> IPRoute:
        """A cached IPRoute socket inside this namespace (closed by ``delete()``)."""
        if self._ipr is None:
            self._ipr = iproute(self.name)
        return self._ipr

    @contextlib.contextmanager
    def enter(self) -> Iterator[Netns]:
        """Switch the calling thread into this namespace for the block, then back.

        Sockets created inside the block stay in this namespace after it;
        subprocesses started inside it inherit the namespace.
        """
        # thread-self, not self: /proc/self/ns/net is the main thread's namespace.
        saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            try:
                _pyr_netns.setns(self.path, flags=0)
            except OSError as exc:
                raise NetnsError(f"enter netns {self.name}", exc.errno) from None
            try:
                yield self
            finally:
                _pyr_netns.setns(saved, flags=0)
        finally:
            os.close(saved)

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call ``fn(*args, **kwargs)`` in this thread while it is inside the namespace."""
        with self.enter():
            return fn(*args, **kwargs)

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen:
        """Start a subprocess inside the namespace (``subprocess.Popen`` arguments)."""
        with self.enter():
            return subprocess.Popen(argv, **kwargs)

    def run_cmd(self, argv: list[str], *, check: bool = True, timeout: float = 30, **kwargs: Any) -> subprocess.CompletedProcess:
        """Run a subprocess inside the namespace; output captured as text unless told otherwise."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        with self.enter():
            return subprocess.run(argv, check=check, timeout=timeout, **kwargs)

    def ifindex(self, ifname: str) -> int:
        return ifindex(ifname, self)

    def set_up(self, ifname: str, *, mtu: int | None = None) -> None:
        set_up(ifname, self, mtu=mtu)

    def add_address(self, ifname: str, cidr: str, *, up: bool = False) -> None:
        add_address(ifname, cidr, self, up=up)

    def add_route(self, dst: str, *, gateway: str | None = None, dev: str | None = None) -> None:
        """Add a route (``"default"`` or a prefix) via ``gateway`` and/or out of ``dev``."""
        spec: dict[str, Any] = {"dst": "0.0.0.0/0" if dst == "default" else dst}
        if gateway:
            spec["gateway"] = gateway
        if dev:
            spec["oif"] = self.ifindex(dev)
        try:
            self.iproute().route("add", **spec)
        except NetlinkError as exc:
            raise NetnsError(f"add route {dst} in netns {self.name}", exc.code) from None

    def delete(self) -> None:
        """Close sockets and, when owned, remove the namespace (its interfaces go with it)."""
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        if self.owned and os.path.exists(self.path):
            try:
                _pyr_netns.remove(self.name)
            except OSError as exc:
                raise NetnsError(f"delete netns {self.name}", exc.errno) from None
            self.owned = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.delete()

    def __repr__(self) -> str:
        return f"Netns({self.name!r}{'' if self.owned else ', owned=False'})"


class VethPair:
    """A veth pair made by :func:`veth_pair`; ``delete()`` removes both ends."""

    def __init__(self, name: str, peer: str, netns: Netns | str | None, peer_netns: Netns | str | None):
        self.name = name
        self.peer = peer
        self.netns = netns
        self.peer_netns = peer_netns

    @property
    def ifindex(self) -> int:
        """Index of ``name`` in its namespace."""
        return ifindex(self.name, self.netns)

    @property
    def peer_ifindex(self) -> int:
        """Index of ``peer`` in its namespace."""
        return ifindex(self.peer, self.peer_netns)

    def delete(self) -> None:
        # Deleting one end removes the other; the peer's namespace may
        # already be gone (which also removed the pair).
        ns = self.netns
        if isinstance(ns, Netns) and not os.path.exists(ns.path):
            return
        if isinstance(ns, str) and not Netns.exists(ns):
            return
        delete_link(self.name, ns)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.delete()

    def __repr__(self) -> str:
        return f"VethPair({self.name!r}{_where(self.netns)} <-> {self.peer!r}{_where(self.peer_netns)})"


def veth_pair(
    name: str,
    peer: str,
    *,
    netns: Netns | str | None = None,
    peer_netns: Netns | str | None = None,
    up: bool = True,
    mtu: int | None = None,
) -> VethPair:
    """Create veth ``name`` in ``netns`` with its other end ``peer`` in ``peer_netns``.

    ``None`` means the calling thread's namespace. Both ends are brought up
    unless ``up=False``. Refuses (NetnsError, EEXIST) when ``name`` exists.
    """
    for n in (name, peer):
        if len(n) > IFNAMSIZ:
            raise NetnsError(f"create veth {name}/{peer}", 22, f"interface name {n!r} is longer than {IFNAMSIZ}")
    # Create from a namespace we have a socket in and push the other end
    # away with IFLA_NET_NS_FD: that is one atomic netlink request.
    here, there, here_ns, there_ns = name, peer, netns, peer_netns
    if _ns_name(netns) is not None and _ns_name(peer_netns) is None:
        here, there, here_ns, there_ns = peer, name, peer_netns, netns
    there_spec: dict[str, Any] = {"ifname": there}
    if _ns_name(there_ns) != _ns_name(here_ns):
        there_spec["net_ns_fd"] = _ns_name(there_ns)
    extra = {"mtu": mtu} if mtu else {}
    for ifname, ns in ((name, netns), (peer, peer_netns)):
        with _ipr(ns) as ipr:
            if ipr.link_lookup(ifname=ifname):
                raise NetnsError(f"create veth {ifname}{_where(ns)}", 17, "interface exists (not adopting it)")
    with _ipr(here_ns) as ipr:
        try:
            ipr.link("add", ifname=here, kind="veth", peer=there_spec, **extra)
        except NetlinkError as exc:
            raise NetnsError(f"create veth {name}{_where(netns)} <-> {peer}{_where(peer_netns)}", exc.code) from None
    pair = VethPair(name, peer, netns, peer_netns)
    try:
        if up:
            set_up(name, netns, mtu=mtu)
            set_up(peer, peer_netns, mtu=mtu)
    except BaseException:
        pair.delete()
        raise
    return pair
