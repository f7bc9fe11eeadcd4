"""Conntrack timeouts: FelixConfiguration parsing, Auto from sysctls, and the expiry rule."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from calico_ebpf.dataplane.conntrack_timeouts import ConntrackTimeouts, ExpiryReason, expiry_reasons
from calico_ebpf.errors import ModelError
from calico_ebpf.maps.conntrack import CtKey, CtLeg, CtValue
from calico_ebpf.maps.enums import CtFlags
from calico_ebpf.maps.enums import CtLegFlags as F
from calico_ebpf.model.calico import ConntrackTimeouts as ModelTimeouts

S = 1_000_000_000


@pytest.fixture
def sysctls(tmp_path):
    for name, value in {"nf_conntrack_tcp_timeout_syn_sent": 120, "nf_conntrack_tcp_timeout_established": 432000,
                        "nf_conntrack_tcp_timeout_time_wait": 120, "nf_conntrack_generic_timeout": 600,
                        "nf_conntrack_icmp_timeout": 30}.items():
        (tmp_path / name).write_text(f"{value}\n")
    return str(tmp_path)


def test_defaults_are_calicos(sysctls):
    t = ConntrackTimeouts.from_config(None, sysctl_dir=sysctls)
    assert t.as_seconds() == {
        "creation_grace": 10, "tcp_syn_sent": 20, "tcp_established": 3600,
        "tcp_fins_seen": 120,  # Auto by default: the time_wait sysctl
        "tcp_reset_seen": 40, "udp": 60, "generic": 600, "icmp": 5, "tcp_rst_idle": 120,
    }
    assert ConntrackTimeouts().tcp_fins_seen == 30 * S  # no I/O: Calico's Go default


def test_auto_reads_sysctls(sysctls):
    t = ConntrackTimeouts.from_config({"TCPSynSent": "Auto", "TCPEstablished": "Auto", "GenericTimeout": "Auto",
                                       "ICMPTimeout": "Auto", "UDPTimeout": "Auto"}, sysctl_dir=sysctls)
    assert (t.tcp_syn_sent, t.tcp_established, t.generic, t.icmp) == (120 * S, 432000 * S, 600 * S, 30 * S)
    assert t.udp == 60 * S  # no sysctl for UDP: Auto is Calico's default


def test_auto_without_nf_conntrack_uses_go_default_and_logs(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="calico_ebpf.dataplane.conntrack"):
        t = ConntrackTimeouts.from_config({}, sysctl_dir=str(tmp_path / "absent"))
    assert t.tcp_fins_seen == 30 * S
    assert any("TCPFinsSeen=Auto" in r.getMessage() and "30s" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("text,seconds", [("1h", 3600), ("1h30m", 5400), ("90s", 90), ("500ms", 0.5),
                                          ("1.5m", 90), ("0", 0), ("2m3s4ms", 123.004)])
def test_go_durations(text, seconds):
    t = ConntrackTimeouts.from_config({"UDPTimeout": text, "TCPFinsSeen": "30s"})
    assert t.udp == round(seconds * S)


def test_api_and_env_key_spellings(sysctls):
    a = ConntrackTimeouts.from_config({"tcpEstablished": "2h", "udpTimeout": "10s"}, sysctl_dir=sysctls)
    b = ConntrackTimeouts.from_config({"TCPEstablished": "2h", "UDPTimeout": "10s"}, sysctl_dir=sysctls)
    assert a == b and a.tcp_established == 7200 * S


def test_from_model_class(sysctls):
    t = ConntrackTimeouts.from_config(ModelTimeouts(udp_timeout=15.0), sysctl_dir=sysctls)
    assert t.udp == 15 * S and t.tcp_fins_seen == 120 * S


@pytest.mark.parametrize("value", ["60", "sixty", "-5s", "1x", "", True, [1]])
def test_bad_value_names_object_and_field(value):
    with pytest.raises(ModelError) as e:
        ConntrackTimeouts.from_config({"UDPTimeout": value})
    assert e.value.object == "FelixConfiguration default"
    assert e.value.field == "spec.bpfConntrackTimeouts.UDPTimeout"


def test_unknown_key():
    with pytest.raises(ModelError, match="spec.bpfConntrackTimeouts.TCPFoo: is not a known timeout"):
        ConntrackTimeouts.from_config({"TCPFoo": "1s"}, obj="FelixConfiguration default")


# ---- the expiry rule ------------------------------------------------------

T = ConntrackTimeouts()
NOW = 10_000 * S
EST = F.SYN_SEEN | F.ACK_SEEN


NO_LEG, NO_FLAGS = F(0), CtFlags(0)


def reason(proto, idle_s, a=NO_LEG, b=NO_LEG, flags=NO_FLAGS, rst_ts=0):
    r = expiry_reasons(T, NOW, np.array([proto]), np.array([NOW - int(idle_s * S)], np.uint64),
                       np.array([rst_ts], np.uint64), np.array([int(a)]), np.array([int(b)]), np.array([int(flags)]))
    return ExpiryReason(int(r[0]))


@pytest.mark.parametrize("case,expected", [
    ({"proto": 6, "idle_s": 19}, ExpiryReason.ALIVE),
    ({"proto": 6, "idle_s": 21, "a": F.SYN_SEEN}, ExpiryReason.TCP_SYN_SENT),
    ({"proto": 6, "idle_s": 21, "a": EST, "b": F.SYN_SEEN}, ExpiryReason.TCP_SYN_SENT),  # handshake incomplete
    ({"proto": 6, "idle_s": 3599, "a": EST, "b": EST}, ExpiryReason.ALIVE),
    ({"proto": 6, "idle_s": 3601, "a": EST, "b": EST}, ExpiryReason.TCP_ESTABLISHED),
    ({"proto": 6, "idle_s": 3601, "flags": CtFlags.DSR_FWD}, ExpiryReason.TCP_ESTABLISHED),  # DSR counts as established
    ({"proto": 6, "idle_s": 29, "a": EST | F.FIN_SEEN, "b": EST | F.FIN_SEEN}, ExpiryReason.ALIVE),
    ({"proto": 6, "idle_s": 31, "a": EST | F.FIN_SEEN, "b": EST | F.FIN_SEEN}, ExpiryReason.TCP_FINS_SEEN),
    ({"proto": 6, "idle_s": 31, "a": EST | F.FIN_SEEN, "b": EST}, ExpiryReason.ALIVE),  # FIN one way only
    ({"proto": 6, "idle_s": 31, "a": F.FIN_SEEN, "flags": CtFlags.DSR_FWD}, ExpiryReason.TCP_FINS_SEEN),
    ({"proto": 6, "idle_s": 39, "a": EST, "b": EST | F.RST_SEEN}, ExpiryReason.ALIVE),
    ({"proto": 6, "idle_s": 41, "a": EST, "b": EST | F.RST_SEEN}, ExpiryReason.TCP_RST_SEEN),
    ({"proto": 6, "idle_s": 119, "a": EST, "b": EST, "rst_ts": 1}, ExpiryReason.ALIVE),
    ({"proto": 6, "idle_s": 121, "a": EST, "b": EST, "rst_ts": 1}, ExpiryReason.TCP_RST_IDLE),
    ({"proto": 17, "idle_s": 59}, ExpiryReason.ALIVE),
    ({"proto": 17, "idle_s": 61}, ExpiryReason.UDP),
    ({"proto": 1, "idle_s": 6}, ExpiryReason.ICMP),
    ({"proto": 58, "idle_s": 6}, ExpiryReason.ICMP),
    ({"proto": 1, "idle_s": 4}, ExpiryReason.ALIVE),
    ({"proto": 47, "idle_s": 599}, ExpiryReason.ALIVE),
    ({"proto": 47, "idle_s": 601}, ExpiryReason.GENERIC),
    ({"proto": 17, "idle_s": -100}, ExpiryReason.ALIVE),  # last_seen after "now": age 0
])
def test_expiry_rule(case, expected):
    assert reason(**case) == expected


def test_typed_entry_reason_and_nat_fwd():
    rev_key = CtKey.for_flow("10.0.0.1", 1000, "10.1.0.5", 8080, "tcp")
    rev = CtValue.nat_rev("10.96.0.1", 80, CtLeg(flags=EST), CtLeg(flags=EST), last_seen=NOW - 3601 * S)
    fwd = CtValue.nat_fwd(rev_key, last_seen=NOW - 5 * S)
    fwd_key = CtKey.for_flow("10.0.0.1", 1000, "10.96.0.1", 80, "tcp")
    assert T.reason(rev_key, rev, NOW) == ExpiryReason.TCP_ESTABLISHED
    # The FWD follows its REV, whatever its own last_seen.
    assert T.reason(fwd_key, fwd, NOW, rev_value=rev) == ExpiryReason.TCP_ESTABLISHED
    assert T.reason(fwd_key, fwd, NOW, rev_value=None) == ExpiryReason.ALIVE  # orphan in creation grace
    assert T.reason(fwd_key, fwd, NOW + 6 * S, rev_value=None) == ExpiryReason.ORPHAN_FWD
