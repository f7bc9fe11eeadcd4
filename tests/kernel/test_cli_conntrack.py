"""``calico-ebpf conntrack`` run as a subprocess against a CT map pinned in a
unique test pin directory (entries written from Python through the codec)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from calico_ebpf.maps.conntrack import CtKey, CtLeg, CtValue
from calico_ebpf.maps.ct_records import monotonic_ns
from calico_ebpf.maps.enums import CtFlags
from calico_ebpf.maps.enums import CtLegFlags as F
from calico_ebpf.maps.named import Conntrack

ROOT = Path(__file__).resolve().parents[2]
VENV_PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable
EST = F.SYN_SEEN | F.ACK_SEEN


def cli(pin_dir: str, *args: str, expect: int = 0) -> subprocess.CompletedProcess:
    action, *rest = args
    proc = subprocess.run([VENV_PYTHON, "-m", "calico_ebpf.cli.main", "conntrack", action,
                           "--pin-dir", pin_dir, *rest],
                          capture_output=True, text=True, cwd=str(ROOT), timeout=60, check=False)
    assert proc.returncode == expect, (proc.stdout, proc.stderr)
    return proc


NO_LEGS = (CtLeg(), CtLeg())


def nat_flow(ct: Conntrack, client, cport, svc, sport, backend, bport, proto, legs=NO_LEGS):
    now = monotonic_ns()
    rev = CtKey.for_flow(client, cport, backend, bport, proto)
    fwd = CtKey.for_flow(client, cport, svc, sport, proto)
    ba = CtFlags(0) if CtKey.src_is_a(client, cport, backend, bport) else CtFlags.BA
    ct[rev] = CtValue.nat_rev(svc, sport, *legs, last_seen=now, flags=ba)
    ct[fwd] = CtValue.nat_fwd(rev, last_seen=now, flags=ba)
    return fwd, rev


@pytest.fixture
def ct(pin_dir):
    m = Conntrack.create(1000, pin_dir)
    now = monotonic_ns()
    # 1. TCP client -> ClusterIP 10.96.0.10:80 -> backend 10.65.0.7:8080, established
    nat_flow(m, "10.0.0.2", 40000, "10.96.0.10", 80, "10.65.0.7", 8080, "tcp",
             (CtLeg(flags=EST | F.OPENER, packets=3), CtLeg(flags=EST, packets=2)))
    # 2. UDP client -> 10.96.0.53:53 -> 10.65.0.9:53
    nat_flow(m, "10.0.0.2", 40001, "10.96.0.53", 53, "10.65.0.9", 53, "udp")
    # 3. plain UDP between two other pods
    m[CtKey.for_flow("10.0.0.3", 5000, "10.0.0.4", 6000, "udp")] = CtValue.normal(last_seen=now)
    # 4. plain TCP 10.0.0.2 -> 10.0.0.5:443 (SYN only)
    m[CtKey.for_flow("10.0.0.2", 40002, "10.0.0.5", 443, "tcp")] = CtValue.normal(
        CtLeg(flags=F.SYN_SEEN | F.OPENER), last_seen=now)
    yield m
    m.map.close()


def dump(pin_dir, *args):
    return json.loads(cli(pin_dir, "dump", "--json", *args).stdout)


def test_dump_all_and_raw(pin_dir, ct):
    rows = dump(pin_dir)
    assert len(rows) == 4 and {r["type"] for r in rows} == {"NAT_REV", "NORMAL"}
    assert len(dump(pin_dir, "--raw")) == 6
    text = cli(pin_dir, "dump").stdout
    assert "TCP 10.0.0.2:40000 -> 10.96.0.10:80 -> 10.65.0.7:8080 ESTABLISHED" in text


FILTER_CASES = [
    ("proto=tcp", {("10.0.0.2", 40000), ("10.0.0.2", 40002)}),
    ("proto=udp", {("10.0.0.2", 40001), ("10.0.0.3", 5000)}),
    ("proto=17", {("10.0.0.2", 40001), ("10.0.0.3", 5000)}),
    ("ip=10.0.0.4", {("10.0.0.3", 5000)}),
    ("ip=10.96.0.53", {("10.0.0.2", 40001)}),          # the service address counts
    ("ip=10.65.0.7", {("10.0.0.2", 40000)}),
    ("port=80", {("10.0.0.2", 40000)}),
    ("port=443", {("10.0.0.2", 40002)}),
    ("type=nat", {("10.0.0.2", 40000), ("10.0.0.2", 40001)}),
    ("type=normal", {("10.0.0.3", 5000), ("10.0.0.2", 40002)}),
    ("proto=tcp,ip=10.0.0.2,state=syn_sent", {("10.0.0.2", 40002)}),
    ("src=10.0.0.3", {("10.0.0.3", 5000)}),
    ("dst=10.96.0.10", {("10.0.0.2", 40000)}),
    ("sport=5000", {("10.0.0.3", 5000)}),
    ("dport=53", {("10.0.0.2", 40001)}),
]


def test_filter_expressions(ct):
    # The filter semantics, in process over the same records the command
    # reads (a subprocess per case would cost a second each).
    from calico_ebpf.cli.conntrack import parse_filter

    recs = ct.records()
    for expr, expect in FILTER_CASES:
        keep = parse_filter([expr])
        assert {(str(r.src), r.sport) for r in recs if keep(r)} == expect, expr
    for bad in ("proto", "colour=red", "ip=10.0.0", "port=70000", "type=odd", "proto=xyz"):
        with pytest.raises(ValueError):
            parse_filter([bad])


def test_dump_filters_through_the_command(pin_dir, ct):
    rows = dump(pin_dir, "--filter", "proto=udp", "--filter", "type=nat")
    assert [(r["src"], r["sport"]) for r in rows] == [("10.0.0.2", 40001)]
    proc = cli(pin_dir, "dump", "--filter", "colour=red", expect=2)
    assert "bad filter" in proc.stderr


def test_remove_between_two_ips_takes_nat_partners(pin_dir, ct):
    # client <-> backend matches the NAT_REV; its NAT_FWD goes too.
    out = json.loads(cli(pin_dir, "remove", "tcp", "10.65.0.7", "10.0.0.2", "--json").stdout)
    assert out == {"removed": 2}
    # client <-> service matches the NAT_FWD; its NAT_REV goes too.
    assert cli(pin_dir, "remove", "udp", "10.0.0.2", "10.96.0.53").stdout.strip() == "2 entries removed"
    assert {(str(r.src), r.dport) for r in ct.records(include_fwd=True)} == {("10.0.0.3", 6000),
                                                                              ("10.0.0.2", 443)}


def test_stats_and_flush(pin_dir, ct):
    st = json.loads(cli(pin_dir, "stats", "--json").stdout)
    assert (st["entries"], st["max_entries"], st["flows"], st["nat_flows"]) == (6, 1000, 4, 2)
    assert st["by_type"] == {"NAT_FWD": 2, "NAT_REV": 2, "NORMAL": 2}
    assert st["by_proto"] == {"TCP": 2, "UDP": 2}
    assert st["tcp_states"] == {"ESTABLISHED": 1, "SYN_SENT": 1}
    assert cli(pin_dir, "flush").stdout.strip() == "6 entries removed"
    assert len(ct) == 0


def test_missing_map_exits_1(pin_dir):
    proc = cli(pin_dir, "stats", expect=1)
    assert "cebpf_ct" in proc.stderr


def test_human_stats_and_usage_errors_in_process(pin_dir, ct, capsys):
    from calico_ebpf.cli.main import main

    assert main(["conntrack", "stats", "--pin-dir", pin_dir]) == 0
    out = capsys.readouterr().out
    assert "6 of 1000 entries (0.6% used)" in out and "ESTABLISHED 1, SYN_SENT 1" in out
    assert main(["conntrack", "remove", "--pin-dir", pin_dir, "sctp?", "10.0.0.3", "10.0.0.4"]) == 2
    assert main(["conntrack", "remove", "--pin-dir", pin_dir, "udp", "10.0.0.3", "not-an-ip"]) == 2
    capsys.readouterr()
    # the wrong protocol matches nothing
    assert main(["conntrack", "remove", "--pin-dir", pin_dir, "tcp", "10.0.0.3", "10.0.0.4"]) == 0
    assert capsys.readouterr().out.strip() == "0 entries removed"
    assert len(ct) == 6
    assert main(["conntrack", "flush", "--pin-dir", pin_dir]) == 0
    assert main(["conntrack", "dump", "--pin-dir", pin_dir]) == 0
    assert capsys.readouterr().out.strip().endswith("(no conntrack entries)")
