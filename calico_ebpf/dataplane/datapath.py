"""One node's datapath: load the object, register interfaces, apply desired state, run packets.

:class:`Dataplane` owns the loaded ``datapath.o`` (pinned under ``pin_dir``,
or scratch and unpinned when ``pin_dir`` is None), the interface registry
(ifstate entries and tc attachments), and a :class:`~.reconcile.Reconciler`
that keeps the service, route and failsafe maps equal to a ClusterState::

    >>> state = ClusterState.from_manifests("cluster.yaml")          # doctest: +SKIP
    >>> dp = Dataplane(NodeConfig.from_state(state, node="node-1"))   # doctest: +SKIP
    >>> report = dp.apply(state)                                      # doctest: +SKIP
    >>> res = dp.run("from", packet_bytes, ifindex)                   # doctest: +SKIP
    >>> res.retval, res.state.verdict, res.state.nat_backend          # doctest: +SKIP

The thin typed writers (``set_frontend``, ``set_backends``, ``set_route``,
...) stay for tests and tools that program entries by hand; using one tells
the reconciler to read the maps back before its next diff.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.resources import files
from typing import TYPE_CHECKING

from calico_ebpf.dataplane.config import NodeConfig
from calico_ebpf.dataplane.conntrack import ConntrackManager, read_size_file, remove_stale_nat
from calico_ebpf.dataplane.conntrack_timeouts import ConntrackTimeouts
from calico_ebpf.dataplane.reconcile import ApplyReport, PolicySync, Reconciler
from calico_ebpf.dataplane.state import SIZE as STATE_SIZE
from calico_ebpf.dataplane.state import DpState, ProgSlot
from calico_ebpf.dataplane.tunnel import clear_tunnel, set_tunnel
from calico_ebpf.kernel import BPFObject
from calico_ebpf.kernel.attach import TcAttachment
from calico_ebpf.kernel.migrate import prepare_object_pins
from calico_ebpf.maps.entries import (
    CounterHook,
    CountersKey,
    CountersValue,
    FailsafeFlags,
    FailsafeKey,
    IfaceFlags,
    IfStateKey,
    IfStateValue,
    NatBackendKey,
    NatBackendValue,
    NatFlags,
    NatFrontendHashKey,
    NatFrontendKey,
    NatFrontendValue,
    Proto,
    RouteFlags,
    RouteKey,
    RouteValue,
    U32Value,
)
from calico_ebpf.maps.named import ALL_MAPS, NamedMap

if TYPE_CHECKING:
    from typing_extensions import Self

    from calico_ebpf.model.state import ClusterState

OBJECT_NAME = "datapath.o"
_CT_MAP = "cebpf_ct"
_UNSET = object()

#: Programs attached to every managed interface, by tc direction.
HOOK_PROGRAMS = {"ingress": "cebpf_from_ifc", "egress": "cebpf_to_ifc"}

#: nat_fe_value.flags bit (ours): the frontend has source ranges; the
#: datapath consults the Calico-layout LPM map for this (dst, port, proto).
NAT_FLG_SRC_RANGES = NatFlags(0x100)

#: Felix's FailsafeInboundHostPorts / FailsafeOutboundHostPorts defaults.
DEFAULT_FAILSAFES_INBOUND = (("tcp", 22), ("udp", 68), ("tcp", 179), ("tcp", 2379), ("tcp", 2380), ("tcp", 5473),
                             ("tcp", 6443), ("tcp", 6666), ("tcp", 6667))
DEFAULT_FAILSAFES_OUTBOUND = (("udp", 53), ("udp", 67), ("tcp", 179), ("tcp", 2379), ("tcp", 2380), ("tcp", 5473),
                              ("tcp", 6443), ("tcp", 6666), ("tcp", 6667))

# Small per-test maps by default would hide sizing bugs; these are the
# sizes a scratch instance gets unless the caller says otherwise (Calico's
# defaults are large and preallocated LRU maps cost memory per instance).
SCRATCH_MAX_ENTRIES = {
    "cebpf_ct": 65536,
    "cebpf_nat_aff": 4096,
    "cebpf_ipsets": 4096,
    "cebpf_routes": 16384,
    # a no-prealloc hash costs nothing until used; Calico's default fits 10k services x 26 backends
    "cebpf_nat_be": 262144,
}

# struct __sk_buff (192 bytes since 5.x): the kernel refuses a ctx_out
# shorter than the whole struct, so the whole struct goes in; we set
# mark (@8), ifindex (@40) and cb[0] (@48), all accepted by BPF_PROG_TEST_RUN.
_SKB_CTX_LEN = 192


def fe_hash_key(addr, port: int, proto) -> bytes:
    """Key bytes of ``cebpf_nat_feh`` (kept for callers of the skeleton; use NatFrontendHashKey)."""
    return NatFrontendHashKey(addr, port, _proto(proto)).to_bytes()


def _proto(proto) -> Proto:
    return proto if isinstance(proto, Proto) else Proto.parse(proto)


class DataplaneMaps(Mapping):
    """A Dataplane's maps by BPF name (byte-level :class:`~calico_ebpf.kernel.Map`), plus the
    typed view of each as an attribute::

        dp.maps["cebpf_nat_feh"].lookup(key_bytes)        # bytes
        dp.maps.nat_frontends_hash.items()                # [(NatFrontendHashKey, NatFrontendValue)]
        dp.maps.conntrack.to_pandas()                     # where pandas is installed
    """

    def __init__(self, raw: Mapping):
        self._raw = raw
        self._typed: dict[str, NamedMap] = {}

    def __getitem__(self, name: str):
        return self._raw[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __getattr__(self, attr: str) -> NamedMap:
        named = ALL_MAPS.get(attr)
        if named is None:
            raise AttributeError(f"no map {attr!r} (typed maps: {', '.join(ALL_MAPS)})")
        typed = self._typed.get(attr)
        if typed is None:
            typed = self._typed[attr] = named(self._raw[named.spec.name])
        return typed


@dataclass(frozen=True)
class RunResult:
    """One packet through a datapath program: return code, output packet, skb mark, state record."""

    retval: int
    data: bytes
    mark: int
    state: DpState
    duration_ns: int


class Dataplane:
    """One node's datapath: the loaded object, its maps, the interfaces it serves.

    ``config`` (a :class:`NodeConfig`) names the node and sizes the maps;
    ``max_entries`` overrides sizes by BPF map name. ``pin_dir`` None loads
    a scratch, unpinned instance; a directory pins the maps there, and a
    Dataplane opened on an existing directory re-adopts what it holds (the
    first :meth:`apply` reads the maps back and writes only differences);
    pins whose size differs from the wanted one (e.g. a bigger conntrack) are
    migrated with their entries (``migrations`` says what happened).
    ``ct_size_file`` is the conntrack size ConntrackManager recommended
    (``read_size_file``); ``clean_stale_nat`` False leaves conntrack alone
    after an apply removed backends::

        dp = Dataplane(cfg, pin_dir=default_pin_dir("node-1"), ct_size_file="/var/lib/calico/bpf_ct_map_size")
        dp.migrations["cebpf_ct"].action        # "resized": entries copied to the bigger map
    """

    def __init__(self, config: NodeConfig | None = None, *, pin_dir: str | None = None,
                 max_entries: dict[str, int] | None = None, object_path: str | None = None,
                 ct_size_file: str | os.PathLike | None = None, clean_stale_nat: bool = True):
        self.config = config
        self.pin_dir = pin_dir
        sizes = dict(SCRATCH_MAX_ENTRIES) if pin_dir is None else {}
        if config is not None:
            sizes.update(config.map_sizes)
        sizes.update(max_entries or {})
        path = object_path or str(files("calico_ebpf._bpf") / OBJECT_NAME)
        self._obj = BPFObject.open(path, pin_dir=pin_dir, max_entries=sizes)
        #: What happened to each pinned map at load (``kernel.migrate.MigrationResult`` by map
        #: name: created, reused, resized with its entries copied, or recreated); {} unpinned.
        self.migrations: dict = {}
        try:
            if ct_size_file is not None:
                # ConntrackManager's DoubleIfFull recommendation from an earlier run: a map
                # cannot grow in place, so the bigger size takes effect here, at load.
                ct = _CT_MAP
                self._obj.set_max_entries(ct, read_size_file(ct_size_file, self._obj_max_entries(ct)))
            self._load(pin_dir)
            self._maps = DataplaneMaps(self._obj.maps)
            self._wire_continuations()
        except BaseException:
            self._obj.close()
            raise
        #: Clean conntrack after an apply removed backends (``remove_stale_nat``): UDP flows to
        #: a gone backend pick a live one on their next packet, TCP flows are marked SEND_RESET.
        #: Off for callers that measure apply alone (benchmarks) or clean conntrack themselves.
        self.clean_stale_nat = clean_stale_nat
        self._tunnel_written: object = _UNSET  # TunnelConfig apply last wrote (None: cleared)
        self._netns: dict[int, object] = {}  # ifindex -> netns given to attach()
        self._mtus: dict[int, int] = {}  # ifindex -> MTU read from the interface
        self._attachments: dict[tuple[int, str], TcAttachment] = {}
        self._ifnames: dict[str, int] = {}
        self._token = int.from_bytes(os.urandom(4), "little")
        self.reconciler = Reconciler(self, config)
        #: Per-endpoint policy, e.g. ``dp.policy_sync = PolicyManager(dp)``: every :meth:`apply`
        #: then ends with ``policy_sync.sync(state, endpoints)`` for the registered local pods.
        self.policy_sync: PolicySync | None = None
        self.last_report: ApplyReport | None = None

    def _obj_max_entries(self, name: str) -> int:
        from calico_ebpf.kernel._lib import lib

        return lib.bpf_map__max_entries(self._obj._map_handle(name))

    def _load(self, pin_dir: str | None) -> None:
        if pin_dir is None:
            self._obj.load()
            return
        # Pins made with other sizes (a bigger conntrack from bpfMapSizeConntrack or the size
        # file, a new NAT size) would make libbpf refuse to reuse them: move them aside, let
        # libbpf create the maps at the new size, then copy the entries over.
        mig = prepare_object_pins(self._obj)
        try:
            self._obj.load()
        except BaseException:
            mig.abort()
            raise
        mig.finish(self._obj)
        self.migrations = dict(mig.results)

    @classmethod
    def from_state(cls, state: ClusterState, node: str | None = None, pin_dir: str | None = None,
                   **kwargs) -> Dataplane:
        """A Dataplane for ``node`` (default: the only Node) with ``state`` applied
        (the report is in :attr:`last_report`)::

            dp = Dataplane.from_state(ClusterState.from_manifests("cluster.yaml"), node="node-1")
        """
        dp = cls(NodeConfig.from_state(state, node), pin_dir=pin_dir, **kwargs)
        try:
            dp.apply(state)
        except BaseException:
            dp.close()
            raise
        return dp

    @property
    def node(self) -> str | None:
        return self.reconciler.config.node if self.reconciler.config else None

    # ---- desired state ---------------------------------------------------

    def apply(self, state: ClusterState, node: str | None = None) -> ApplyReport:
        """Compile ``state`` for this node and bring the maps to it with minimal, ordered writes.

        Objects the state rejected or cannot program are listed in the
        report (object and field) and change nothing; everything else is
        applied. A map that cannot take the change raises MapFullError
        naming it, with the previous state left in place.

        After the writes: NodePort forwarding over VXLAN is configured from the
        config (this node's InternalIP, ``bpfExternalServiceMode``, the data
        interface's MTU) when that changed, and, unless ``clean_stale_nat`` is
        off, conntrack of the backends the apply removed
        (``report.removed_backends``) is cleaned (``report.stale_nat``).
        """
        report = self.reconciler.apply(state, node)
        self.config = self.reconciler.config
        self.last_report = report
        self._sync_tunnel()
        # The cleanup reads the whole conntrack map; with no flows at all (one get_next_key
        # call says so) there is nothing to clean and the apply stays O(change).
        ct = self.maps[_CT_MAP]
        if report.removed_backends and self.clean_stale_nat and next(ct.keys(), None) is not None:
            removed = {(ip, port, proto) for (_fip, _fport, proto), bes in report.removed_backends.items()
                       for ip, port in bes}
            live = self.reconciler.live_backends({(ip, port) for ip, port, _ in removed})
            report.stale_nat = remove_stale_nat(ct, removed, live=live)
        return report

    def _sync_tunnel(self) -> None:
        """NodePort forwarding as the config says; written only when that changed since the last
        apply, so a hand-made setting (``tunnel.set_tunnel``) stands until the config changes."""
        cfg = self.config
        want = None
        if cfg is not None and cfg.nodeport_tunnel and cfg.underlay_ip and ":" not in cfg.underlay_ip:
            want = (cfg.underlay_ip, cfg.underlay_mtu or self.data_interface_mtu(), cfg.external_service_mode,
                    cfg.vxlan_port)
        if want == self._tunnel_written:
            return
        if want is None:
            clear_tunnel(self)
        else:
            ip, mtu, mode, port = want
            set_tunnel(self, ip, underlay_mtu=mtu, mode=mode, port=port)
        self._tunnel_written = want

    def data_interface_mtu(self, default: int = 1500) -> int:
        """MTU of the first registered data interface (``kind="hep"``), ``default`` if there is none."""
        for name, ifindex in sorted(self._ifnames.items(), key=lambda kv: kv[1]):
            v = self.interface(ifindex)
            if v is None or IfaceFlags.HEP not in v.flags:
                continue
            mtu = self._mtus.get(ifindex)
            if mtu is None:
                mtu = self._mtus[ifindex] = _link_mtu(ifindex, name, self._netns.get(ifindex)) or 0
            if mtu:
                return mtu
        return default

    def trace(self, packet, **kwargs):
        """Run ``packet`` (``"tcp 10.0.0.2:40000 -> 172.30.0.41:80"``) hop by hop through the
        real programs and say what they did (:func:`calico_ebpf.dataplane.trace.trace`)."""
        from calico_ebpf.dataplane.trace import trace  # trace builds on this module

        return trace(self, packet, **kwargs)

    @property
    def service_ids(self) -> dict[str, int]:
        """``ns/name/port/PROTO -> service id`` as last applied (stable across applies and restarts)."""
        return self.reconciler.service_ids

    # ---- object ----------------------------------------------------------

    @property
    def maps(self) -> DataplaneMaps:
        """The datapath's maps: ``maps["cebpf_ct"]`` is the byte-level Map, ``maps.conntrack``,
        ``maps.nat_frontends_hash``, ... the typed view (names of ``maps.named.ALL_MAPS``)."""
        return self._maps

    @property
    def programs(self):
        return self._obj.programs

    def _wire_continuations(self) -> None:
        # Policy programs continue here (dp_state.h calling convention).
        progs = self.maps["cebpf_progs"]
        progs.update(struct.pack("<I", ProgSlot.ALLOWED), struct.pack("<I", self.programs["cebpf_tc_allowed"].fd))
        progs.update(struct.pack("<I", ProgSlot.DENIED), struct.pack("<I", self.programs["cebpf_tc_denied"].fd))

    def set_policy(self, slot: int, program) -> None:
        """Put a policy program (a Program, or the name of one in this object) in jump slot ``slot``."""
        prog = self.programs[program] if isinstance(program, str) else program
        self.maps["cebpf_jump"].update(struct.pack("<I", slot), struct.pack("<I", prog.fd))

    def clear_policy(self, slot: int) -> bool:
        return self.maps["cebpf_jump"].delete(struct.pack("<I", slot))

    @property
    def conntrack(self):
        """The conntrack map, typed: ``records()`` reads like ``calico-bpf conntrack dump``,
        ``to_pandas()`` gives a DataFrame (numpy columns, fast for millions of rows)."""
        return self.maps.conntrack

    def start_conntrack_gc(self, **kwargs) -> ConntrackManager:
        """Start the periodic conntrack sweep (every 10 s, jittered) with this node's
        ``bpfConntrackTimeouts``; ``kwargs`` go to :class:`ConntrackManager` (interval, mode,
        size_file, ...). :meth:`close` stops it. Returns the running manager (metrics, history)."""
        if getattr(self, "_ct_gc", None) is not None:
            return self._ct_gc
        timeouts = ConntrackTimeouts.from_config(self.config.conntrack_timeouts if self.config else None)
        self._ct_gc = ConntrackManager(self.maps["cebpf_ct"], timeouts, **kwargs)
        self._ct_gc.start()
        return self._ct_gc

    def close(self) -> None:
        """Close fds. Attachments and pinned maps stay (detach explicitly to remove them)."""
        gc, self._ct_gc = getattr(self, "_ct_gc", None), None
        if gc is not None:
            gc.close()  # its thread reads the CT map: stop it before the fd goes
        self._obj.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- interfaces ------------------------------------------------------

    def set_interface(self, ifindex: int, name: str, kind: str, *, ingress_policy: int = -1,
                      egress_policy: int = -1, netns=None) -> None:
        """Tell the datapath what ``ifindex`` is: ``kind`` "wep" (pod veth, host side) or "hep" (data interface).

        Policy slots are the endpoint's view: ``ingress_policy`` for packets
        going to it, ``egress_policy`` for packets it sends; -1 = no policy.
        ``netns`` (a Netns or its name; None: the caller's) is where the
        interface lives, for reading a data interface's MTU.
        """
        if netns is not None:
            self._netns[ifindex] = netns
            self._mtus.pop(ifindex, None)
        flags = {"wep": IfaceFlags.WEP, "hep": IfaceFlags.HEP}[kind] | IfaceFlags.V4_READY
        value = IfStateValue(flags=flags, name=name, ingress_policy_v4=ingress_policy, egress_policy_v4=egress_policy)
        self.maps["cebpf_ifstate"].update(IfStateKey(ifindex).to_bytes(), value.to_bytes())
        if self._ifnames.get(name) != ifindex:
            self._ifnames[name] = ifindex
            self._mtus.pop(ifindex, None)
            self.reconciler.resync_routes()  # a pod's route carries its veth's ifindex

    def ifindex_of(self, name: str) -> int:
        """The ifindex registered for interface ``name`` (0 if unknown)."""
        return self._ifnames.get(name, 0)

    def interface(self, ifindex: int) -> IfStateValue | None:
        raw = self.maps["cebpf_ifstate"].lookup(IfStateKey(ifindex).to_bytes())
        return None if raw is None else IfStateValue.from_bytes(raw)

    def remove_interface(self, ifindex: int) -> None:
        self.maps["cebpf_ifstate"].delete(IfStateKey(ifindex).to_bytes())
        names = [n for n, i in self._ifnames.items() if i == ifindex]
        for n in names:
            del self._ifnames[n]
        if names:
            self.reconciler.resync_routes()

    def attach(self, ifindex: int, name: str, kind: str, *, netns=None, ingress_policy: int = -1,
               egress_policy: int = -1) -> None:
        """Register the interface and attach the tc programs to both of its hooks (replacing ours)."""
        self.set_interface(ifindex, name, kind, ingress_policy=ingress_policy, egress_policy=egress_policy,
                           netns=netns)
        for direction, prog in HOOK_PROGRAMS.items():
            att = TcAttachment.find(ifindex, direction, netns=netns)
            if att is not None:
                att.replace(self.programs[prog])
            else:
                att = TcAttachment.attach(self.programs[prog], ifindex, direction, netns=netns)
            self._attachments[(ifindex, direction)] = att

    def detach(self, ifindex: int) -> None:
        """Detach our programs from the interface and forget it."""
        for direction in HOOK_PROGRAMS:
            att = self._attachments.pop((ifindex, direction), None)
            if att is not None:
                att.detach(missing_ok=True)
        self.remove_interface(ifindex)

    def detach_all(self) -> None:
        for ifindex in sorted({i for i, _ in self._attachments}):
            self.detach(ifindex)

    # ---- entries by hand (tests, tools); apply() owns these maps otherwise ----

    def set_route(self, cidr, flags: RouteFlags, *, ifindex: int = 0, next_hop=None) -> None:
        self.reconciler.routes.invalidate()
        value = RouteValue.for_ifindex(flags, ifindex) if ifindex else RouteValue(flags=flags, next_hop=next_hop or "0.0.0.0")
        self.maps["cebpf_routes"].update(RouteKey(cidr).to_bytes(), value.to_bytes())

    def set_frontend(self, addr, port: int, proto, value: NatFrontendValue) -> None:
        """Exact-match frontend (the per-packet path): ``cebpf_nat_feh``."""
        self.reconciler.invalidate_nat()
        self.maps["cebpf_nat_feh"].update(NatFrontendHashKey(addr, port, _proto(proto)).to_bytes(), value.to_bytes())

    def delete_frontend(self, addr, port: int, proto) -> bool:
        self.reconciler.invalidate_nat()
        return self.maps["cebpf_nat_feh"].delete(NatFrontendHashKey(addr, port, _proto(proto)).to_bytes())

    def set_source_range_frontend(self, addr, port: int, proto, src_cidr, value: NatFrontendValue) -> None:
        """A loadBalancerSourceRanges entry in the Calico-layout LPM map ``cebpf_nat_fe``.

        The exact-match entry for (addr, port, proto) must carry
        ``NAT_FLG_SRC_RANGES`` for the datapath to look here."""
        self.reconciler.invalidate_nat()
        key = NatFrontendKey(addr=addr, port=port, proto=_proto(proto), src_cidr=src_cidr)
        self.maps["cebpf_nat_fe"].update(key.to_bytes(), value.to_bytes())

    def set_backends(self, svc_id: int, backends) -> None:
        """Backends of a service at ordinals 0..n-1 (local ones first): iterable of (ip, port)."""
        self.reconciler.invalidate_nat()
        be = self.maps["cebpf_nat_be"]
        for ordinal, (addr, port) in enumerate(backends):
            be.update(NatBackendKey(svc_id, ordinal).to_bytes(), NatBackendValue(addr=addr, port=port).to_bytes())

    def set_failsafe(self, proto, port: int, cidr="0.0.0.0/0", *, outbound: bool = False) -> None:
        self.reconciler.fsafes.invalidate()
        flags = FailsafeFlags.OUTBOUND if outbound else FailsafeFlags(0)
        key = FailsafeKey(port=port, proto=_proto(proto), cidr=cidr, flags=flags)
        self.maps["cebpf_fsafes"].update(key.to_bytes(), U32Value(1).to_bytes())

    def set_default_failsafes(self, inbound=DEFAULT_FAILSAFES_INBOUND, outbound=DEFAULT_FAILSAFES_OUTBOUND) -> None:
        """Write the failsafe ports (any address) that bypass host-endpoint policy; Felix's defaults unless given."""
        for proto, port in inbound:
            self.set_failsafe(proto, port)
        for proto, port in outbound:
            self.set_failsafe(proto, port, outbound=True)

    # ---- reading ---------------------------------------------------------

    def counters(self, ifindex: int, hook: CounterHook | int) -> CountersValue:
        """The interface's per-hook counters summed over CPUs (all zero when never counted)."""
        m = self.maps["cebpf_counters"]
        raw = m.lookup(CountersKey(ifindex=ifindex, hook=CounterHook(hook)).to_bytes())
        size = CountersValue.size()
        if raw is None:
            return CountersValue.total([])
        stride = (size + 7) & ~7
        return CountersValue.total(CountersValue.from_bytes(raw[i * stride:i * stride + size]) for i in range(m.nr_cpus))

    def last_state(self, token: int | None = None) -> DpState:
        """The state record of the packet tagged ``token`` (see :meth:`run`), else the newest on any CPU."""
        m = self.maps["cebpf_state"]
        raw = m.lookup(struct.pack("<I", 0))
        stride = (STATE_SIZE + 7) & ~7
        states = [DpState.from_bytes(raw[i * stride:i * stride + STATE_SIZE]) for i in range(m.nr_cpus)]
        if token is not None:
            tagged = [s for s in states if s.trace_token == token]
            if tagged:
                return max(tagged, key=lambda s: s.ts)
        return max(states, key=lambda s: s.ts)

    # ---- running packets -------------------------------------------------

    def run(self, hook: str, packet: bytes, ifindex: int, *, mark: int = 0, repeat: int = 1) -> RunResult:
        """Run ``packet`` (a full Ethernet frame) through the "from" (tc ingress) or "to" (tc egress)
        program as if it were on ``ifindex`` (which must exist in the calling thread's netns)."""
        prog = self.programs[HOOK_PROGRAMS["ingress" if hook in ("from", "ingress") else "egress"]]
        # The token in cb[0] lets us find this packet's state record whichever CPU ran it.
        self._token = (self._token % 0xFFFFFFFF) + 1
        ctx = bytearray(_SKB_CTX_LEN)
        struct.pack_into("<I", ctx, 8, mark)
        struct.pack_into("<I", ctx, 40, ifindex)
        struct.pack_into("<I", ctx, 48, self._token)
        res = prog.test_run(packet, ctx=bytes(ctx), repeat=repeat)
        out_mark = struct.unpack_from("<I", res.ctx_out, 8)[0] if res.ctx_out else 0
        return RunResult(res.retval, res.data_out, out_mark, self.last_state(self._token), res.duration_ns)


def _link_mtu(ifindex: int, name: str, netns) -> int | None:
    """The MTU of ``ifindex`` in ``netns`` (None: the caller's), None if it cannot be read or the
    interface there is not ``name`` (an ifindex registered from another namespace)."""
    from pyroute2.netlink.exceptions import NetlinkError

    from calico_ebpf.kernel.netns import NetnsError, iproute

    try:
        ipr = netns.iproute() if hasattr(netns, "iproute") else iproute(netns)
        try:
            links = ipr.get_links(ifindex)
        finally:
            if not hasattr(netns, "iproute"):  # a Netns caches its socket and closes it itself
                ipr.close()
        if not links or links[0].get_attr("IFLA_IFNAME") != name:
            return None
        return int(links[0].get_attr("IFLA_MTU"))
    except (OSError, NetlinkError, NetnsError):  # gone, or a namespace we cannot open: the caller falls back
        return None


def default_pin_dir(node: str) -> str:
    return os.path.join("/sys/fs/bpf/calico_ebpf", node)
