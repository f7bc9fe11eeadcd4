"""``calico-ebpf dump`` run as a subprocess against maps pinned in a test
pin directory (created with the named maps, filled through the codec)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from calico_ebpf.kernel import Map
from calico_ebpf.maps import named
from calico_ebpf.maps.ct_records import monotonic_ns
from calico_ebpf.maps.entries import (
    CalicoCountersValue,
    Counter,
    CounterHook,
    CountersKey,
    CountersValue,
    CtFlags,
    CtKey,
    CtLeg,
    CtLegFlags,
    CtValue,
    IfaceFlags,
    IfStateKey,
    IfStateValue,
    IPSetKey,
    NatAffinityKey,
    NatAffinityValue,
    NatBackendKey,
    NatBackendValue,
    NatFlags,
    NatFrontendHashKey,
    NatFrontendKey,
    NatFrontendValue,
    RouteFlags,
    RouteKey,
    RouteValue,
    U32Value,
)

ROOT = Path(__file__).resolve().parents[2]
VENV_PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable


def dump(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [VENV_PYTHON, "-m", "calico_ebpf.cli.main", "dump", *args],
        capture_output=True,
        text=True,
        cwd=str(ROOT),
        timeout=60,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def node(pin_dir):
    maps = named.NodeMaps.create(pin_dir, sizes={name: 512 for name in named.ALL_MAPS})
    maps.nat_frontends.update_many(
        {
            NatFrontendKey("10.96.0.10", 53, "udp"): NatFrontendValue(5, 2, 1, flags=NatFlags.INTERNAL_LOCAL),
            NatFrontendKey("192.168.1.1", 443, "tcp", src_cidr="10.1.0.0/16"): NatFrontendValue(6, 1),
            NatFrontendKey("192.168.1.1", 443, "tcp"): NatFrontendValue.drop(6),
        }
    )
    # Exact-match frontends (ours): one plain service, and the hash side of the source-range one.
    maps.nat_frontends_hash.update_many(
        {
            NatFrontendHashKey("10.96.0.20", 80, "tcp"): NatFrontendValue(8, 1),
            NatFrontendHashKey("192.168.1.1", 443, "tcp"): NatFrontendValue(6, 1, flags=NatFlags.SRC_RANGES),
        }
    )
    maps.nat_backends.update_many(
        {
            NatBackendKey(5, 0): NatBackendValue("10.65.0.2", 53),
            NatBackendKey(5, 1): NatBackendValue("10.65.1.9", 53),
            NatBackendKey(6, 0): NatBackendValue("10.65.0.3", 8443),
            NatBackendKey(8, 0): NatBackendValue("10.65.0.4", 8080),
        }
    )
    maps.nat_affinity[NatAffinityKey("10.96.0.10", 53, "udp", "10.0.0.9")] = NatAffinityValue(
        NatBackendValue("10.65.0.2", 53), 1234
    )
    now = monotonic_ns()
    est = CtLegFlags.SYN_SEEN | CtLegFlags.ACK_SEEN
    client, vip, backend = ("10.0.0.2", 40000), ("10.96.0.10", 80), ("10.65.0.7", 8080)
    rev = CtKey.for_flow(*client, *backend, "tcp")
    ba = CtFlags(0) if CtKey.src_is_a(*client, *backend) else CtFlags.BA
    maps.conntrack.update_many(
        {
            rev: CtValue.nat_rev(
                vip[0],
                vip[1],
                CtLeg(100, 1, flags=est),
                CtLeg(50, 1, flags=est),
                flags=ba,
                last_seen=now - 5_000_000_000,
            ),
            CtKey.for_flow(*client, *vip, "tcp"): CtValue.nat_fwd(rev, last_seen=now),
            CtKey.for_flow("10.0.0.3", 5000, "10.0.0.4", 53, "udp"): CtValue.normal(
                CtLeg(40, 1), last_seen=now
            ),
        }
    )
    maps.routes.update_many(
        {
            RouteKey("10.65.0.0/26"): RouteValue.for_ifindex(RouteFlags.LOCAL | RouteFlags.WORKLOAD, 7),
            RouteKey("10.65.1.0/26"): RouteValue(RouteFlags.WORKLOAD | RouteFlags.TUNNELED, "192.168.0.3"),
        }
    )
    maps.ipsets.update_many(
        {
            IPSetKey(0x42, "10.0.0.0/8"): U32Value(),
            IPSetKey(0x42, "10.65.0.2/32", 8080, "tcp"): U32Value(),
            IPSetKey(0x7, "192.168.0.0/16"): U32Value(),
        }
    )
    cpus = maps.counters.map.nr_cpus
    maps.counters.set(CountersKey(3, CounterHook.TC_INGRESS), [CountersValue.of({Counter.TOTAL: 2})] * cpus)
    maps.counters.set(
        CountersKey(3, CounterHook.TC_EGRESS), [CountersValue.of({Counter.DROP_POLICY: 1})] * cpus
    )
    maps.ifstate[IfStateKey(3)] = IfStateValue(
        IfaceFlags.WEP | IfaceFlags.V4_READY, "cali1234", ingress_policy_v4=4
    )
    maps.close()
    return pin_dir, cpus


def test_dump_nat(node):
    pin_dir, _ = node
    lines = dump("nat", "--pin-dir", pin_dir).stdout.splitlines()
    assert "10.96.0.10 port 53 proto 17 id 5 count 2 local 1 flags internal-local" in lines
    assert "\t5:0\t 10.65.0.2:53" in lines and "\t5:1\t 10.65.1.9:53" in lines
    assert "192.168.1.1 port 443 proto 6 id 6 count 1 local 0 src 10.1.0.0/16" in lines
    assert "192.168.1.1 port 443 proto 6 id 6 count -1 local 0" in lines
    assert "client 10.0.0.9 svc proto 17 10.96.0.10:53 -> 10.65.0.2:53 ts 1234" in lines
    assert "10.96.0.20 port 80 proto 6 id 8 count 1 local 0" in lines and "\t8:0\t 10.65.0.4:8080" in lines
    assert "192.168.1.1 port 443 proto 6 id 6 count 1 local 0 flags src-ranges" in lines
    rows = json.loads(dump("nat", "--pin-dir", pin_dir, "--json").stdout)
    fe = next(r for r in rows if r.get("addr") == "10.96.0.10")
    assert fe["backends"] == ["10.65.0.2:53", "10.65.1.9:53"] and fe["flags"] == "INTERNAL_LOCAL"


def test_dump_conntrack(node):
    pin_dir, _ = node
    out = dump("conntrack", "--pin-dir", pin_dir).stdout.splitlines()
    assert len(out) == 2
    nat = next(line for line in out if line.startswith("TCP"))
    assert nat.startswith("TCP 10.0.0.2:40000 -> 10.96.0.10:80 -> 10.65.0.7:8080 ESTABLISHED age ")
    assert 4.5 < float(nat.rsplit(" ", 1)[1].rstrip("s")) < 60
    assert any(line.startswith("UDP 10.0.0.3:5000 -> 10.0.0.4:53 age") for line in out)
    raw = json.loads(dump("conntrack", "--pin-dir", pin_dir, "--json", "--raw").stdout)
    assert sorted(r["type"] for r in raw) == ["NAT_FWD", "NAT_REV", "NORMAL"]
    rev = next(r for r in raw if r["type"] == "NAT_REV")
    assert rev["service"] == "10.96.0.10:80" and rev["tx"]["bytes"] == 100 and rev["state"] == "ESTABLISHED"


def test_dump_routes_ipsets_ifstate(node):
    pin_dir, _ = node
    assert dump("routes", "--pin-dir", pin_dir).stdout.splitlines() == [
        "10.65.0.0/26: WORKLOAD|LOCAL idx 7",
        "10.65.1.0/26: WORKLOAD|TUNNELED nh 192.168.0.3",
    ]
    assert dump("ipsets", "--pin-dir", pin_dir).stdout.splitlines() == [
        "IP set 0x7",
        "   192.168.0.0/16",
        "IP set 0x42",
        "   10.0.0.0/8",
        "   10.65.0.2,tcp:8080",
    ]
    ifs = json.loads(dump("ifstate", "--pin-dir", pin_dir, "--json").stdout)
    assert ifs == [
        {
            "ifindex": 3,
            "name": "cali1234",
            "flags": "WEP|V4_READY",
            "xdp_policy_v4": -1,
            "ingress_policy_v4": 4,
            "egress_policy_v4": -1,
            "xdp_policy_v6": -1,
            "ingress_policy_v6": -1,
            "egress_policy_v6": -1,
            "tc_filter_ingress": -1,
            "tc_filter_egress": -1,
        }
    ]
    assert "name: cali1234, ingress_policy_v4: 4" in dump("ifstate", "--pin-dir", pin_dir).stdout


def test_dump_counters_sums_cpus(node):
    pin_dir, cpus = node
    text = dump("counters", "--pin-dir", pin_dir).stdout.splitlines()
    assert text[0] == "ifindex 3"
    total = next(line for line in text if line.strip().startswith("TOTAL")).split()
    assert total == ["TOTAL", str(2 * cpus), "0", "0"]
    drop = next(line for line in text if line.strip().startswith("DROP_POLICY")).split()
    assert drop == ["DROP_POLICY", "0", str(cpus), "0"]
    rows = json.loads(dump("counters", "--pin-dir", pin_dir, "--json").stdout)
    assert rows[0]["counters"]["TOTAL"]["TC_INGRESS"] == 2 * cpus


def test_dump_calico_pins_with_27_counters(pin_dir):
    spec = named.Counters.spec
    m = Map.create(spec.type, 8, 27 * 8, 16, name="cali_counters6")
    m.pin(os.path.join(pin_dir, "cali_counters6"))
    cpus = m.nr_cpus
    m.close()
    cm = named.Counters.open_calico(pin_dir)
    cm.set(CountersKey(9, CounterHook.XDP), CalicoCountersValue.of({Counter.ACCEPTED_FAILSAFE: 1}))
    cm.map.close()
    text = dump("counters", "--calico-dir", pin_dir).stdout
    assert text.splitlines()[0] == "ifindex 9"
    assert text.splitlines()[-1].split() == ["ACCEPTED_FAILSAFE", "0", "0", str(cpus)]


def test_missing_pins_fail_with_exit_code_1(pin_dir):
    proc = dump("routes", "--pin-dir", os.path.join(pin_dir, "nope"), check=False)
    assert proc.returncode == 1 and "ENOENT" in proc.stderr and "cebpf_routes" in proc.stderr


def test_empty_maps_say_so(pin_dir):
    named.Routes.create(16, pin_dir=pin_dir).map.close()
    assert dump("routes", "--pin-dir", pin_dir).stdout.strip() == "(no routes entries)"
    assert json.loads(dump("routes", "--pin-dir", pin_dir, "--json").stdout) == []
