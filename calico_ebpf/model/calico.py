"""projectcalico.org/v3 IPPool and FelixConfiguration (the BPF-related fields).

Defaults are Felix's (``felix/config/config_params.go``). A FelixConfiguration
remembers which fields were written, so ``default`` and ``node.<name>``
objects merge the way Felix layers them.

>>> fc = FelixConfiguration.from_dict({"kind": "FelixConfiguration", "metadata": {"name": "default"},
...                                     "spec": {"bpfExternalServiceMode": "DSR"}})
>>> fc.bpf_external_service_mode, fc.bpf_map_size_nat_frontend, fc.bpf_conntrack_timeouts.udp_timeout
('DSR', 65536, 60.0)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

from calico_ebpf.errors import ModelError, UnsupportedError
from calico_ebpf.model import _fields as f
from calico_ebpf.model.core import meta

ENCAP_MODES = ("Never", "Always", "CrossSubnet")

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """Seconds in a Go duration (``"1h30m"``, ``"500ms"``), or None if it is not one.

    >>> parse_duration("1m30s"), parse_duration("10"), parse_duration("0")
    (90.0, None, 0.0)
    """
    text = text.strip()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    return total if pos == len(text) and pos else None


@attrs.frozen
class IPPool:
    """A Calico IP pool. IPIP pools are refused (UnsupportedError): this dataplane tunnels with VXLAN only.

    >>> IPPool.from_dict({"kind": "IPPool", "metadata": {"name": "p"},
    ...                   "spec": {"cidr": "10.0.0.0/8", "vxlanMode": "Always"}}).vxlan
    True
    """

    name: str
    cidr: str
    vxlan_mode: str = "Never"
    ipip_mode: str = "Never"
    nat_outgoing: bool = False
    disabled: bool = False
    block_size: int = 26

    @property
    def key(self) -> str:
        return self.name

    @property
    def vxlan(self) -> bool:
        return self.vxlan_mode != "Never"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IPPool:
        _, name, obj, _md = meta("IPPool", d, namespaced=False)
        spec = f.mapping(obj, "spec", d.get("spec"))
        if spec.get("cidr") is None:
            raise ModelError(obj, "spec.cidr", "is required")
        cidr = f.cidr(obj, "spec.cidr", spec.get("cidr"))
        ipip = f.choice(obj, "spec.ipipMode", spec.get("ipipMode"), ENCAP_MODES, "Never")
        vxlan = f.choice(obj, "spec.vxlanMode", spec.get("vxlanMode"), ENCAP_MODES, "Never")
        if ipip != "Never":
            raise UnsupportedError("IPIP encapsulation", "Calico's eBPF mode in this SDK supports VXLAN "
                                   "or no encapsulation only; set spec.ipipMode: Never", obj)
        is_v6 = ":" in cidr
        block = f.integer(obj, "spec.blockSize", spec.get("blockSize"), 122 if is_v6 else 26,
                          int(cidr.split("/")[1]), 128 if is_v6 else 32)
        return cls(name, cidr, vxlan, ipip, f.boolean(obj, "spec.natOutgoing", spec.get("natOutgoing"), False),
                   f.boolean(obj, "spec.disabled", spec.get("disabled"), False), block)


@attrs.frozen
class FailsafePort:
    """A failsafe rule: protocol (``tcp``/``udp``), port and an optional CIDR (None = any)."""

    protocol: str
    port: int
    net: str | None = None


def _failsafes(*specs: str) -> tuple[FailsafePort, ...]:
    return tuple(FailsafePort(p, int(n)) for p, n in (s.split(":") for s in specs))


DEFAULT_FAILSAFE_INBOUND = _failsafes("tcp:22", "udp:68", "tcp:179", "tcp:2379", "tcp:2380", "tcp:5473",
                                      "tcp:6443", "tcp:6666", "tcp:6667")
DEFAULT_FAILSAFE_OUTBOUND = _failsafes("udp:53", "udp:67", "tcp:179", "tcp:2379", "tcp:2380", "tcp:5473",
                                       "tcp:6443", "tcp:6666", "tcp:6667")

AUTO = "Auto"  # a conntrack timeout read from the matching nf_conntrack sysctl


@attrs.frozen
class ConntrackTimeouts:
    """bpfConntrackTimeouts: seconds, or ``"Auto"`` (read the Linux sysctl at run time)."""

    creation_grace_period: float | str = 10.0
    tcp_syn_sent: float | str = 20.0
    tcp_established: float | str = 3600.0
    tcp_fins_seen: float | str = AUTO
    tcp_reset_seen: float | str = 40.0
    udp_timeout: float | str = 60.0
    generic_timeout: float | str = 600.0
    icmp_timeout: float | str = 5.0


_CT_FIELDS = {
    "creationGracePeriod": "creation_grace_period", "tcpSynSent": "tcp_syn_sent",
    "tcpEstablished": "tcp_established", "tcpFinsSeen": "tcp_fins_seen", "tcpResetSeen": "tcp_reset_seen",
    "udpTimeout": "udp_timeout", "genericTimeout": "generic_timeout", "icmpTimeout": "icmp_timeout",
}


def _conntrack_timeouts(obj: str, value: Any) -> ConntrackTimeouts:
    spec = f.mapping(obj, "spec.bpfConntrackTimeouts", value)
    kwargs: dict[str, float | str] = {}
    for api, attr in _CT_FIELDS.items():
        raw = spec.get(api)
        if raw is None:
            continue
        field = f"spec.bpfConntrackTimeouts.{api}"
        text = f.string(obj, field, raw)
        if text == AUTO:
            kwargs[attr] = AUTO
            continue
        seconds = parse_duration(text)
        if seconds is None:
            raise ModelError(obj, field, f"{text!r} is not a duration (like 30s, 1h) or Auto")
        kwargs[attr] = seconds
    for api in spec:
        if api not in _CT_FIELDS:
            raise ModelError(obj, f"spec.bpfConntrackTimeouts.{api}", "is not a known timeout")
    return ConntrackTimeouts(**kwargs)


def _failsafe_list(obj: str, field: str, value: Any) -> tuple[FailsafePort, ...]:
    result = []
    for i, item in enumerate(f.seq(obj, field, value)):
        where = f"{field}[{i}]"
        if isinstance(item, str):  # Felix's env/flag spelling "tcp:22" or "tcp:10.0.0.0/8:22"
            parts = item.split(":")
            if len(parts) not in (2, 3):
                raise ModelError(obj, where, f"{item!r} is not protocol:port or protocol:cidr:port")
            proto, net, number = parts[0], (parts[1] if len(parts) == 3 else None), parts[-1]
            if not number.isdigit():
                raise ModelError(obj, where, f"{item!r} has no valid port")
            item = {"protocol": proto, "net": net, "port": int(number)}
        item = f.mapping(obj, where, item)
        proto = f.string(obj, f"{where}.protocol", item.get("protocol"), "TCP").lower()
        if proto not in ("tcp", "udp"):
            raise ModelError(obj, f"{where}.protocol", f"{proto!r} is not TCP or UDP")
        net = item.get("net")
        net = f.cidr(obj, f"{where}.net", net) if net not in (None, "") else None
        result.append(FailsafePort(proto, f.port(obj, f"{where}.port", item.get("port")), net))
    return tuple(result)


# (API name, attribute, kind, default). Kinds: bool, int, enum tuple, str, duration, special.
_SIMPLE_FIELDS: tuple[tuple[str, str, Any, Any], ...] = (
    ("bpfEnabled", "bpf_enabled", bool, False),
    ("bpfExternalServiceMode", "bpf_external_service_mode", ("Tunnel", "DSR"), "Tunnel"),
    ("bpfKubeProxyIptablesCleanupEnabled", "bpf_kube_proxy_iptables_cleanup_enabled", bool, True),
    ("bpfKubeProxyMinSyncPeriod", "bpf_kube_proxy_min_sync_period", "duration", 1.0),
    ("bpfKubeProxyHealthzPort", "bpf_kube_proxy_healthz_port", (0, 65535), 10256),
    ("bpfConnectTimeLoadBalancing", "bpf_connect_time_load_balancing", ("TCP", "Enabled", "Disabled"), "TCP"),
    ("bpfHostNetworkedNATWithoutCTLB", "bpf_host_networked_nat_without_ctlb", ("Enabled", "Disabled"), "Enabled"),
    ("bpfEnforceRPF", "bpf_enforce_rpf", ("Disabled", "Strict", "Loose"), "Loose"),
    ("bpfLogLevel", "bpf_log_level", ("Off", "Info", "Debug"), "Off"),
    ("bpfDataIfacePattern", "bpf_data_iface_pattern", str,
     r"^((en|wl|ww|sl|ib)[Popsx].*|(eth|wlan|wwan|bond).*)"),
    ("bpfPSNATPorts", "bpf_psnat_ports", "portrange", (20000, 29999)),
    ("bpfMapSizeNATFrontend", "bpf_map_size_nat_frontend", (1, 2**31), 65536),
    ("bpfMapSizeNATBackend", "bpf_map_size_nat_backend", (1, 2**31), 262144),
    ("bpfMapSizeNATAffinity", "bpf_map_size_nat_affinity", (1, 2**31), 65536),
    ("bpfMapSizeRoute", "bpf_map_size_route", (1, 2**31), 262144),
    ("bpfMapSizeConntrack", "bpf_map_size_conntrack", (1, 2**31), 512000),
    ("bpfMapSizeIPSets", "bpf_map_size_ipsets", (1, 2**31), 1048576),
    ("bpfMapSizeIfState", "bpf_map_size_ifstate", (1, 2**31), 1000),
    ("vxlanPort", "vxlan_port", (1, 65535), 4789),
)


@attrs.frozen
class FelixConfiguration:
    """FelixConfiguration with Felix's defaults; ``explicit`` names the fields the object set."""

    name: str
    bpf_enabled: bool = False
    bpf_external_service_mode: str = "Tunnel"
    bpf_kube_proxy_iptables_cleanup_enabled: bool = True
    bpf_kube_proxy_min_sync_period: float = 1.0
    bpf_kube_proxy_healthz_port: int = 10256
    bpf_connect_time_load_balancing: str = "TCP"
    bpf_host_networked_nat_without_ctlb: str = "Enabled"
    bpf_enforce_rpf: str = "Loose"
    bpf_log_level: str = "Off"
    bpf_data_iface_pattern: str = r"^((en|wl|ww|sl|ib)[Popsx].*|(eth|wlan|wwan|bond).*)"
    bpf_psnat_ports: tuple[int, int] = (20000, 29999)
    bpf_map_size_nat_frontend: int = 65536
    bpf_map_size_nat_backend: int = 262144
    bpf_map_size_nat_affinity: int = 65536
    bpf_map_size_route: int = 262144
    bpf_map_size_conntrack: int = 512000
    bpf_map_size_ipsets: int = 1048576
    bpf_map_size_ifstate: int = 1000
    vxlan_port: int = 4789
    bpf_conntrack_timeouts: ConntrackTimeouts = ConntrackTimeouts()
    bpf_dsr_optout_cidrs: tuple[str, ...] = ()
    bpf_exclude_cidrs_from_nat: tuple[str, ...] = ()
    failsafe_inbound_host_ports: tuple[FailsafePort, ...] = DEFAULT_FAILSAFE_INBOUND
    failsafe_outbound_host_ports: tuple[FailsafePort, ...] = DEFAULT_FAILSAFE_OUTBOUND
    explicit: frozenset[str] = frozenset()

    @property
    def key(self) -> str:
        return self.name

    def merged(self, override: FelixConfiguration) -> FelixConfiguration:
        """This config with the fields ``override`` set explicitly taken from it (node over default)."""
        changes = {a: getattr(override, a) for a in override.explicit}
        return attrs.evolve(self, explicit=self.explicit | override.explicit, **changes)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FelixConfiguration:
        _, name, obj, _md = meta("FelixConfiguration", d, namespaced=False)
        spec = f.mapping(obj, "spec", d.get("spec"))
        kwargs: dict[str, Any] = {}
        for api, attr, kind, default in _SIMPLE_FIELDS:
            raw = spec.get(api)
            if raw is None:
                continue
            field = f"spec.{api}"
            if kind is bool:
                kwargs[attr] = f.boolean(obj, field, raw, default)
            elif kind is str:
                kwargs[attr] = f.string(obj, field, raw)
            elif kind == "duration":
                seconds = parse_duration(f.string(obj, field, raw))
                if seconds is None:
                    raise ModelError(obj, field, f"{raw!r} is not a duration (like 1s)")
                kwargs[attr] = seconds
            elif kind == "portrange":
                text = str(raw)
                lo, _, hi = text.partition(":")
                if not (lo.isdigit() and hi.isdigit() and 1 <= int(lo) <= int(hi) <= 65535):
                    raise ModelError(obj, field, f"{raw!r} is not a port range like 20000:29999")
                kwargs[attr] = (int(lo), int(hi))
            elif isinstance(kind[0], int):
                kwargs[attr] = f.integer(obj, field, raw, default, kind[0], kind[1])
            else:
                kwargs[attr] = f.choice(obj, field, raw, kind, default)
        if spec.get("bpfConntrackTimeouts") is not None:
            kwargs["bpf_conntrack_timeouts"] = _conntrack_timeouts(obj, spec.get("bpfConntrackTimeouts"))
        for api, attr in (("bpfDSROptoutCIDRs", "bpf_dsr_optout_cidrs"),
                          ("bpfExcludeCIDRsFromNAT", "bpf_exclude_cidrs_from_nat")):
            if spec.get(api) is not None:
                kwargs[attr] = tuple(f.cidr(obj, f"spec.{api}[{i}]", c) for i, c in enumerate(f.seq(obj, f"spec.{api}", spec[api])))
        for api, attr in (("failsafeInboundHostPorts", "failsafe_inbound_host_ports"),
                          ("failsafeOutboundHostPorts", "failsafe_outbound_host_ports")):
            if spec.get(api) is not None:
                kwargs[attr] = _failsafe_list(obj, f"spec.{api}", spec[api])
        return cls(name=name, explicit=frozenset(kwargs), **kwargs)


__all__ = [
    "AUTO",
    "DEFAULT_FAILSAFE_INBOUND",
    "DEFAULT_FAILSAFE_OUTBOUND",
    "ConntrackTimeouts",
    "FailsafePort",
    "FelixConfiguration",
    "IPPool",
    "parse_duration",
]
