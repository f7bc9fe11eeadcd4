"""A lab with a real dataplane on every node: one pinned :class:`Dataplane` per lab node.

:class:`LabCluster` brings a :class:`~calico_ebpf.lab.Lab` up, loads a
Dataplane for each node with its own pin directory
(``/sys/fs/bpf/calico_ebpf/<prefix>/<node>/``), attaches it to the node's
interfaces inside the node's namespace, and feeds every node the same
cluster state with "this node" set to itself -- what a ``calico-ebpf agent``
per node would do in a real cluster::

    with LabCluster(nodes=2, pods_per_node=3) as cluster:
        reports = cluster.apply(cluster.lab_state())        # {node: ApplyReport}
        cluster.lab.pod("node-1", 0).request("10.96.0.10", 80)

Teardown (:meth:`down`, also on an exception or Ctrl-C inside ``with``)
detaches the programs, closes the maps, removes the pins and takes the lab
down. A crashed run is cleaned up by :meth:`cleanup_leftovers` (namespaces
and pins of the prefix), which ``calico-ebpf demo --down`` calls.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from calico_ebpf.dataplane.config import NodeConfig
from calico_ebpf.dataplane.datapath import SCRATCH_MAX_ENTRIES, Dataplane
from calico_ebpf.dataplane.policy import PolicyManager, remove_policy_tables
from calico_ebpf.dataplane.reconcile import ApplyReport
from calico_ebpf.dataplane.tunnel import tunnel_config
from calico_ebpf.errors import CalicoEBPFError
from calico_ebpf.kernel import bpffs
from calico_ebpf.lab.topology import Lab, LabNode
from calico_ebpf.model.state import ClusterState

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["PIN_ROOT", "LabCluster", "NodeDataplane", "lab_pin_dir", "open_node_dataplane", "remove_pins"]

#: Every lab's pins live under ``<PIN_ROOT>/<prefix>/``, apart from a real node's ``calico_ebpf/<node>/``.
PIN_ROOT = "/sys/fs/bpf/calico_ebpf"

# What the lab calls an interface -> what the Dataplane calls it. The overlay
# device (vxlan.calico, "tunnel") is left to the kernel: pod-to-pod traffic is
# handled at the pods' veths on both ends, and NodePort forwarding encapsulates
# on the data interface with its own VNI (dataplane/tunnel.py).
_DP_KIND = {"workload": "wep", "host": "hep"}


def lab_pin_dir(prefix: str, node: str | None = None) -> str:
    """Pin directory of lab ``prefix`` (and of one of its nodes)."""
    path = os.path.join(PIN_ROOT, prefix)
    return os.path.join(path, node) if node else path


class NodeDataplane:
    """One lab node and the Dataplane serving it (pinned under :attr:`pin_dir`)."""

    def __init__(self, node: LabNode, dp: Dataplane, pin_dir: str):
        self.node = node
        self.dp = dp
        self.pin_dir = pin_dir
        #: interface name -> Dataplane kind, for what is attached.
        self.attached: dict[str, str] = {}
        self.policy: PolicyManager | None = None  # once policy is synced

    @property
    def name(self) -> str:
        return self.node.name

    def attach(self) -> None:
        """Attach the datapath to every interface the node agent manages (inside the node's netns)."""
        for ifname, lab_kind in self.node.interfaces().items():
            kind = _DP_KIND.get(lab_kind)
            if kind is None:
                continue
            ifindex = self.node.netns.ifindex(ifname)
            # A re-adopted interface keeps the policy slots it has (an agent restart must not
            # open a window without policy before the next sync).
            known = self.dp.interface(ifindex)
            slots = {} if known is None else {"ingress_policy": known.ingress_policy_v4,
                                              "egress_policy": known.egress_policy_v4}
            self.dp.attach(ifindex, ifname, kind, netns=self.node.netns, **slots)
            self.attached[ifname] = kind

    @property
    def nodeport_tunnel(self) -> str | None:
        """How this node forwards NodePort flows to other nodes ("Tunnel"/"DSR"), None if it does not.

        ``Dataplane.apply`` writes it from the node's config (Felix's ``bpfExternalServiceMode``)."""
        cfg = tunnel_config(self.dp)
        return None if cfg is None else ("DSR" if cfg.dsr else "Tunnel")

    def close(self) -> None:
        """Detach, close fds (policy programs too); the pins are removed by the cluster."""
        try:
            # Deleting the namespaces drops the tc filters too, but a namespace can outlive
            # us (a process still inside it): our programs must not run on without their pins.
            self.dp.detach_all()
        finally:
            self.exit()

    def exit(self) -> None:
        """What an agent's exit does: close fds (policy programs too); attachments and pins stay."""
        try:
            if self.policy is not None:
                self.policy.close()
        finally:
            self.dp.close()

    def __repr__(self) -> str:
        return f"NodeDataplane({self.name!r}, pin_dir={self.pin_dir!r}, attached={sorted(self.attached)})"


class LabCluster:
    """A :class:`Lab` with one pinned Dataplane per node.

    ``max_entries`` sizes the maps (BPF map name -> entries); the default is
    the small scratch sizes, because a lab holds a handful of flows and
    Felix's defaults preallocate hundreds of MB per node.
    """

    def __init__(
        self,
        nodes: int = 2,
        pods_per_node: int = 3,
        prefix: str | None = None,
        *,
        max_entries: dict[str, int] | None = None,
        **lab_options: Any,
    ):
        self.lab = Lab(nodes=nodes, pods_per_node=pods_per_node, prefix=prefix, **lab_options)
        self.max_entries = dict(SCRATCH_MAX_ENTRIES if max_entries is None else max_entries)
        self.dataplanes: dict[str, NodeDataplane] = {}

    @property
    def prefix(self) -> str:
        return self.lab.prefix

    @property
    def pin_root(self) -> str:
        return lab_pin_dir(self.prefix)

    def dataplane(self, node: str) -> Dataplane:
        """The Dataplane of ``node``."""
        return self.dataplanes[node].dp

    def lab_state(self, extra: list[dict[str, Any]] | None = None) -> ClusterState:
        """The lab's Nodes, Pods and IPPool plus ``extra`` API dicts (Services, slices, policies)."""
        return ClusterState.from_dicts([*self.lab.manifests(), *(extra or [])], source=f"lab {self.prefix}")

    # -- lifecycle ----------------------------------------------------------------------------

    def up(self) -> Self:
        """Build the lab, then load and attach a Dataplane per node; on failure remove everything."""
        bpffs.ensure_bpffs(mount=True)
        if os.path.exists(self.pin_root):
            raise CalicoEBPFError(
                f"lab {self.prefix}: pins from an earlier run exist at {self.pin_root}; "
                f"run `calico-ebpf demo --down --prefix {self.prefix}` first"
            )
        self.lab.up()
        try:
            state = self.lab.cluster_state()
            for node in self.lab.nodes:
                pin_dir = bpffs.make_pin_dir(lab_pin_dir(self.prefix, node.name))
                self._start_agent(node, NodeConfig.from_state(state, node=node.name), pin_dir)
        except BaseException:
            self.down()
            raise
        return self

    def _start_agent(self, node: LabNode, config: NodeConfig | None, pin_dir: str) -> NodeDataplane:
        dp = Dataplane(config, pin_dir=pin_dir, max_entries=self.max_entries)
        nd = NodeDataplane(node, dp, pin_dir)
        self.dataplanes[node.name] = nd
        # Every apply ends with a policy sync for the node's registered pod veths.
        nd.policy = dp.policy_sync = PolicyManager(dp)
        nd.attach()
        return nd

    @contextmanager
    def agents_stopped(self, *nodes: str) -> Iterator[None]:
        """The agents of ``nodes`` exit on entry and new ones start on the way out.

        Inside the block nothing serves those nodes from user space: their
        Dataplanes' fds are closed, the programs stay attached and the maps
        pinned, so traffic keeps flowing. On exit a new Dataplane per node
        re-adopts its pin directory (same config) and attaches to the same
        interfaces, replacing the programs in place; the next :meth:`apply`
        of an unchanged state writes nothing::

            with cluster.agents_stopped("node-1", "node-2"):
                time.sleep(1)                       # traffic, no agent
            assert all(r.writes == 0 for r in cluster.apply(state).values())
        """
        stopped = [self.dataplanes.pop(name) for name in nodes]
        for nd in stopped:
            nd.exit()
        try:
            yield
        finally:
            for nd in stopped:
                self._start_agent(nd.node, nd.dp.config, nd.pin_dir)

    def apply(self, state: ClusterState) -> dict[str, ApplyReport]:
        """Apply ``state`` on every node, each as itself.

        Returns each node's ``ApplyReport`` by node name; its ``policy`` is the
        node's ``PolicyReport`` (policy is synced at the end of every apply).
        """
        return {name: nd.dp.apply(state, node=name) for name, nd in self.dataplanes.items()}

    def down(self) -> list[str]:
        """Detach and close every Dataplane, remove the pins, take the lab down; returns netns removed.

        Safe to call more than once; every step runs even when an earlier one fails
        (the first error is raised at the end).
        """
        errors: list[BaseException] = []
        for nd in self.dataplanes.values():
            try:
                nd.close()
            except (CalicoEBPFError, OSError) as exc:  # keep tearing down
                errors.append(exc)
        self.dataplanes.clear()
        try:
            removed = self.lab.down()
        except (CalicoEBPFError, OSError) as exc:
            errors.append(exc)
            removed = []
        try:
            remove_pins(self.prefix)
        except (CalicoEBPFError, OSError) as exc:
            errors.append(exc)
        if errors:
            raise errors[0]
        return removed

    @staticmethod
    def cleanup_leftovers(prefix: str) -> tuple[list[str], bool]:
        """Remove the namespaces and pins of lab ``prefix`` (a crashed or kept run).

        Returns the namespaces removed and whether a pin directory was removed.
        """
        removed = Lab.cleanup_leftovers(prefix)
        return removed, remove_pins(prefix)

    @staticmethod
    def find_leftovers(prefix: str) -> list[str]:
        """Namespaces and the pin directory of lab ``prefix`` that still exist."""
        found = Lab.find_leftovers(prefix)
        if os.path.exists(lab_pin_dir(prefix)):
            found.append(lab_pin_dir(prefix))
        return found

    def __enter__(self) -> Self:
        return self.up()

    def __exit__(self, *exc_info: object) -> None:
        self.down()

    def __repr__(self) -> str:
        return f"LabCluster({self.prefix!r}, nodes={sorted(self.dataplanes)})"


def open_node_dataplane(prefix: str, node: str, max_entries: dict[str, int] | None = None) -> Dataplane:
    """A Dataplane re-adopting the pinned maps of ``node`` in a running (``--keep``) lab.

    It loads its own copy of the programs, attaches nothing and writes
    nothing until told to: use it to trace packets against the node's live
    maps (``dp.trace("tcp ...", netns=...)``). ``max_entries`` must be what
    the lab was built with (libbpf refuses a pin whose size differs).
    """
    pin_dir = lab_pin_dir(prefix, node)
    if not os.path.isdir(pin_dir):
        raise CalicoEBPFError(f"lab {prefix} has no pins for {node} at {pin_dir} (is it up with --keep?)")
    return Dataplane(
        pin_dir=pin_dir, max_entries=dict(SCRATCH_MAX_ENTRIES if max_entries is None else max_entries)
    )


def remove_pins(prefix: str) -> bool:
    """Unpin everything of lab ``prefix`` and remove its directory; False if there was none."""
    path = lab_pin_dir(prefix)
    remove_policy_tables(path)  # the policy rule tables kept beside the pins (bpffs holds no files)
    if not os.path.exists(path):
        return False
    bpffs.remove_pin_dir(path)
    return True
