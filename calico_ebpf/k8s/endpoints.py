"""The node's interfaces, found with one netlink dump and attached to the datapath.

:class:`Endpoints` is the agent's interface step, run before every apply
(and when the link set changes, see :class:`LinkWatcher`):

- **host data interfaces**: names matching Felix's ``bpfDataIfacePattern``
  (``--data-iface-pattern`` overrides the FelixConfiguration) are attached
  as ``"hep"`` with no policy (no HostEndpoint objects: Calico allows);
- **workload interfaces**: ``cali*`` veths (Calico's interface prefix) are
  attached as ``"wep"``. One whose name is ``veth_name(namespace, pod)`` of a
  pod on this node is that pod's endpoint, and the apply's
  ``PolicyManager.sync`` gives it its policy programs. A *new* workload
  interface starts on ``DENY_SLOT`` in both directions (Calico denies a
  workload until its policy is known), so nothing passes before the first
  policy sync; a ``cali*`` veth no local pod owns stays denied;
- an interface already in ``cebpf_ifstate`` under the same name and kind
  (a restarted agent) keeps its policy slots, and its tc programs are
  swapped in place (``BPF_TC_F_REPLACE``): no packet meets an empty hook
  or a policy gap while the agent restarts;
- interfaces that went away are forgotten (ifstate entry and registry),
  and so are ifstate entries a previous run left for interfaces gone
  since; an interface that no longer matches (the pattern changed) is
  detached.

Everything happens in ``netns`` (a :class:`~calico_ebpf.kernel.netns.Netns`,
a name, or None for the caller's namespace), so tests can give the agent a
scratch namespace standing in for the node. The VXLAN device is not
attached yet (``Dataplane.attach`` knows "wep" and "hep" only).

>>> eps = Endpoints(dp, "node-1", netns=None)              # doctest: +SKIP
>>> eps.sync(state)                                       # doctest: +SKIP
EndpointsReport(attached=['eth0', 'cali1a2b...'], ...)
"""

from __future__ import annotations

import errno
import logging
import re
import select
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from calico_ebpf.compiler.routes import veth_name
from calico_ebpf.errors import BPFError, CalicoEBPFError
from calico_ebpf.kernel.attach import TcAttachment
from calico_ebpf.kernel.netns import Netns, iproute
from calico_ebpf.maps.entries import IfaceFlags, IfStateKey, IfStateValue

__all__ = ["DEFAULT_DATA_IFACE_PATTERN", "WORKLOAD_PREFIX", "Endpoints", "EndpointsReport", "Link",
           "LinkWatcher", "list_links"]

log = logging.getLogger(__name__)

#: Felix's ``bpfDataIfacePattern`` default (the FelixConfiguration's value wins when set).
DEFAULT_DATA_IFACE_PATTERN = r"^((en|wl|ww|sl|ib)[Popsx].*|(eth|wlan|wwan|bond).*)"
#: Calico's workload interface prefix (Felix ``InterfacePrefix``).
WORKLOAD_PREFIX = "cali"

_DENY_SLOT = 0  # dataplane.policy.DENY_SLOT (L4); repeated to keep this import light
_NO_POLICY = -1
_KIND_FLAG = {"wep": IfaceFlags.WEP, "hep": IfaceFlags.HEP}


@dataclass(frozen=True)
class Link:
    ifindex: int
    name: str


@dataclass
class EndpointsReport:
    """What one :meth:`Endpoints.sync` did (interface names)."""

    attached: list[str] = field(default_factory=list)  # newly attached (or re-adopted) this time
    detached: list[str] = field(default_factory=list)  # gone from the node, forgotten
    workloads: dict[str, str] = field(default_factory=dict)  # ifname -> "ns/pod" (local pods found)
    unknown_workloads: list[str] = field(default_factory=list)  # cali* with no local pod: denied
    errors: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.attached or self.detached)


def _netns_name(netns: Any) -> str | None:
    return netns.name if isinstance(netns, Netns) else netns


def list_links(netns: Any = None) -> list[Link]:
    """Every link in ``netns`` (one RTM_GETLINK dump)."""
    ipr = iproute(_netns_name(netns))
    try:
        return [Link(msg["index"], msg.get_attr("IFLA_IFNAME")) for msg in ipr.link("dump")]
    finally:
        ipr.close()


class Endpoints:
    """Keeps a Dataplane attached to this node's data and workload interfaces (see module doc).

    ``data_iface_pattern`` None follows the FelixConfiguration
    (``bpfDataIfacePattern``) of each sync's state.
    """

    def __init__(self, dp: Any, node_name: str, *, netns: Any = None, data_iface_pattern: str | None = None):
        self.dp = dp
        self.node_name = node_name
        self.netns = netns
        self.data_iface_pattern = data_iface_pattern
        self._known: dict[int, tuple[str, str]] = {}  # ifindex -> (name, kind) attached by us
        self._first = True
        self._bad_pattern: str | None = None

    @property
    def interfaces(self) -> dict[str, tuple[int, str]]:
        """``{ifname: (ifindex, kind)}`` of the interfaces attached now."""
        return {name: (ifindex, kind) for ifindex, (name, kind) in self._known.items()}

    def _pattern(self, state: Any) -> re.Pattern:
        text = self.data_iface_pattern
        if text is None:
            text = state.felix_config(self.node_name).bpf_data_iface_pattern if state is not None else None
        try:
            return re.compile(text or DEFAULT_DATA_IFACE_PATTERN)
        except re.error as exc:
            if text != self._bad_pattern:
                log.error("endpoints: bpfDataIfacePattern %r is not a regular expression (%s); "
                          "using Felix's default", text, exc)
                self._bad_pattern = text
            return re.compile(DEFAULT_DATA_IFACE_PATTERN)

    def wanted(self, links: list[Link], state: Any) -> dict[int, tuple[str, str]]:
        """``{ifindex: (name, kind)}`` of the links to attach."""
        pattern = self._pattern(state)
        out = {}
        for link in links:
            if link.name.startswith(WORKLOAD_PREFIX):
                out[link.ifindex] = (link.name, "wep")
            elif pattern.match(link.name):
                out[link.ifindex] = (link.name, "hep")
        return out

    def local_workloads(self, state: Any) -> dict[str, str]:
        """``{veth name: "ns/pod"}`` for the pods on this node that have a veth (not host-network)."""
        out = {}
        if state is None:
            return out
        for key, pod in state.pods.items():
            if pod.node_name == self.node_name and not pod.host_network and not pod.finished:
                out[veth_name(pod.namespace, pod.name)] = key
        return out

    def sync(self, state: Any = None) -> EndpointsReport:
        """Attach new interfaces, forget vanished ones; already attached ones cost nothing."""
        report = EndpointsReport()
        links = list_links(self.netns)
        wanted = self.wanted(links, state)
        workloads = self.local_workloads(state)
        for ifindex, (name, kind) in wanted.items():
            if kind == "wep":
                if name in workloads:
                    report.workloads[name] = workloads[name]
                else:
                    report.unknown_workloads.append(name)

        # Gone (or renamed / changed kind): forget first, so a reused ifindex starts clean.
        for ifindex, (name, kind) in list(self._known.items()):
            if wanted.get(ifindex) != (name, kind):
                self._forget(ifindex, name, report)
        if self._first:
            self._drop_stale(wanted, {link.ifindex for link in links}, report)
            self._first = False

        for ifindex, (name, kind) in sorted(wanted.items()):
            if ifindex in self._known:
                continue
            try:
                self._attach(ifindex, name, kind)
            except BPFError as exc:
                if exc.errno == errno.ENODEV:  # went away between the dump and the attach
                    continue
                report.errors.append(f"{name}: {exc}")
                log.error("endpoints: cannot attach %s: %s", name, exc)
                continue
            self._known[ifindex] = (name, kind)
            report.attached.append(name)
        if report.changed:
            log.info("endpoints: attached %s, forgot %s", report.attached or "none", report.detached or "none")
        return report

    def _attach(self, ifindex: int, name: str, kind: str) -> None:
        current = self.dp.interface(ifindex)
        if current is not None and current.name == name[:15] and current.flags & _KIND_FLAG[kind]:
            # Ours from a previous run: keep the endpoint's policy slots, swap programs in place.
            ingress, egress = current.ingress_policy_v4, current.egress_policy_v4
        elif kind == "wep":
            ingress = egress = _DENY_SLOT  # Calico: a workload is denied until its policy is known
        else:
            ingress = egress = _NO_POLICY
        self.dp.attach(ifindex, name, kind, netns=self.netns, ingress_policy=ingress, egress_policy=egress)

    def _forget(self, ifindex: int, name: str, report: EndpointsReport) -> None:
        try:
            self.dp.detach(ifindex)
        except BPFError:
            # The interface (and with it the tc filters) is gone: only the registry is left to clean.
            self.dp.remove_interface(ifindex)
        del self._known[ifindex]
        report.detached.append(name)

    def _drop_stale(self, wanted: dict[int, tuple[str, str]], existing: set[int], report: EndpointsReport) -> None:
        """What a previous run registered and this one does not want: ifstate entries of interfaces
        gone since, and, on interfaces that stay but no longer match (the pattern changed), our
        programs too. Nothing else would remove them."""
        for raw_key, raw_value in list(self.dp.maps["cebpf_ifstate"].items()):
            ifindex = IfStateKey.from_bytes(raw_key).ifindex
            if ifindex in wanted:
                continue
            if ifindex in existing:
                for direction in ("ingress", "egress"):
                    att = TcAttachment.find(ifindex, direction, netns=self.netns)
                    if att is not None:
                        att.detach()
            self.dp.remove_interface(ifindex)
            report.detached.append(IfStateValue.from_bytes(raw_value).name)

    def detach_all(self) -> None:
        """Detach every interface this object attached (tools and tests; the agent never does)."""
        for ifindex, (name, _) in list(self._known.items()):
            self._forget(ifindex, name, EndpointsReport())


# ---- link events -------------------------------------------------------------------------------

_RTMGRP_LINK = 0x1


class LinkWatcher:
    """Calls ``on_change()`` when a link appears, goes or changes in ``netns`` (RTMGRP_LINK).

    A thread enters the namespace, binds a netlink socket to the link group
    and wakes on every message; it does not parse them (the next
    :meth:`Endpoints.sync` does a full dump anyway), so a burst of events is
    one ``on_change`` per wake-up, coalesced further by the agent's debouncer.
    """

    def __init__(self, on_change: Callable[[], None], netns: Any = None, *, name: str = "agent-links"):
        self.on_change = on_change
        self.netns = netns
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self, timeout: float = 5.0) -> LinkWatcher:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("link watcher did not start")
        if self._error is not None:
            raise self._error
        return self

    def _open(self) -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        try:
            sock.bind((0, _RTMGRP_LINK))
        except BaseException:
            sock.close()
            raise
        return sock

    def _run(self) -> None:
        try:
            ns = self.netns
            if ns is None:
                sock = self._open()
            else:
                handle = ns if isinstance(ns, Netns) else Netns.open(ns)
                with handle.enter():  # a socket keeps the namespace it was made in
                    sock = self._open()
        except (OSError, CalicoEBPFError) as exc:  # no such namespace, no netlink: reported by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select([sock], [], [], 0.2)
                if not readable:
                    continue
                try:
                    while sock.recv(65536, socket.MSG_DONTWAIT):
                        pass
                except BlockingIOError:
                    pass
                except OSError as exc:  # ENOBUFS: we missed events; a sync catches up anyway
                    log.debug("link watcher: %s", exc)
                try:
                    self.on_change()
                except Exception:
                    log.exception("link watcher: on_change failed")
        finally:
            sock.close()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
