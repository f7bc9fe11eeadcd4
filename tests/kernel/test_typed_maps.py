"""Typed and named maps against real kernel maps: entries go through the
kernel and come back equal; bulk paths use batch ops; pins open by path."""

from __future__ import annotations

import ipaddress
import os

import numpy as np
import pytest

from calico_ebpf.errors import ModelError, UnsupportedError
from calico_ebpf.kernel import Map, MapType
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
    FailsafeKey,
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
    Proto,
    RouteFlags,
    RouteKey,
    RouteValue,
    U32Value,
)
from calico_ebpf.maps.typed import TypedMap

SAMPLES = {
    named.NatFrontends: (NatFrontendKey("10.96.0.10", 53, "udp"), NatFrontendValue(1, 2, 1)),
    named.NatFrontendsHash: (
        NatFrontendHashKey("10.96.0.11", 80, "tcp"),
        NatFrontendValue(3, 1, flags=NatFlags.SRC_RANGES),
    ),
    named.NatBackends: (NatBackendKey(1, 0), NatBackendValue("10.65.0.2", 53)),
    named.NatAffinity: (
        NatAffinityKey("10.96.0.10", 53, "udp", "10.0.0.9"),
        NatAffinityValue(NatBackendValue("10.65.0.2", 53), 5),
    ),
    named.Conntrack: (CtKey.for_flow("10.0.0.2", 4000, "10.65.0.2", 53, "udp"), CtValue.normal(CtLeg(10, 1))),
    named.Routes: (
        RouteKey("10.65.0.0/26"),
        RouteValue(RouteFlags.WORKLOAD | RouteFlags.IN_POOL, "192.168.0.2"),
    ),
    named.IPSets: (IPSetKey(0x77, "10.0.0.0/8"), U32Value()),
    named.Failsafes: (FailsafeKey(22, "tcp"), U32Value()),
    named.IfState: (IfStateKey(3), IfStateValue(IfaceFlags.WEP, "cali0")),
}


@pytest.mark.parametrize("nm", list(SAMPLES), ids=lambda c: c.__name__)
def test_each_named_map_round_trips_through_the_kernel(nm):
    m = nm.create(max_entries=128)
    assert m.map.type == nm.spec.type and m.map.key_size == nm.spec.key.size()
    key, value = SAMPLES[nm]
    assert m.get(key) is None and key not in m
    m[key] = value
    assert m[key] == value and key in m and len(m) == 1
    assert m.items() == [(key, value)] and m.keys() == [key] and m.values() == [value]
    assert m.delete(key) and not m.delete(key) and len(m) == 0
    with pytest.raises(KeyError):
        m[key]
    with pytest.raises(TypeError):
        m.get(value)
    m.map.close()


def test_frontend_lpm_matches_source_ranges():
    fe = named.NatFrontends.create(max_entries=64)
    ranged = NatFrontendKey("192.168.1.1", 443, "tcp", src_cidr="10.1.0.0/16")
    anyone = NatFrontendKey("192.168.1.1", 443, "tcp")
    fe.update_many({ranged: NatFrontendValue(7, 1), anyone: NatFrontendValue.drop(7)})
    # A full-length lookup with a client's /32 finds the longest matching source prefix.
    assert fe.get(NatFrontendKey("192.168.1.1", 443, "tcp", src_cidr="10.1.2.3/32")) == NatFrontendValue(7, 1)
    assert fe.get(NatFrontendKey("192.168.1.1", 443, "tcp", src_cidr="172.16.0.1/32")).is_drop
    assert fe.get(NatFrontendKey("192.168.1.1", 80, "tcp", src_cidr="10.1.2.3/32")) is None
    assert sorted(fe.keys(), key=lambda k: k.prefixlen) == [anyone, ranged]
    fe.map.close()


def test_bulk_100k_backends_update_items_delete_and_pandas():
    be = named.NatBackends.create(max_entries=200_000)
    n = 100_000
    keys = [NatBackendKey(i // 10, i % 10) for i in range(n)]
    vals = [NatBackendValue(ipaddress.IPv4Address(0x0A000000 + i), 8000 + i % 1000) for i in range(n)]
    assert be.update_many(zip(keys, vals)) == n
    assert len(be) == n
    got = be.to_dict()
    assert got == dict(zip(keys, vals))
    df = be.to_pandas()
    assert len(df) == n and set(df.columns) == {"id", "ordinal", "addr", "port"}
    row = df[(df["id"] == 4321) & (df["ordinal"] == 5)].iloc[0]
    assert ipaddress.IPv4Address(int(row["addr"])) == vals[43215].addr and row["port"] == vals[43215].port
    assert be.delete_many(keys[: n // 2]) == n // 2
    assert be.delete_many(keys[:10]) == 0  # already gone
    assert len(be) == n // 2 and be.get(keys[0]) is None and be[keys[-1]] == vals[-1]
    be.map.close()


def test_update_columns_writes_the_same_bytes_as_objects():
    be = named.NatBackends.create(max_entries=10_000)
    n = 5000
    ids = np.arange(n, dtype=np.uint32)
    be.update_columns(
        {"id": ids // 10, "ordinal": ids % 10}, {"addr": 0x0A000000 + ids, "port": np.full(n, 80)}
    )
    assert be[NatBackendKey(123, 4)] == NatBackendValue("10.0.4.210", 80)  # i = 1234
    assert len(be) == n
    with pytest.raises(ModelError, match="port"):
        be.update_columns({"id": [1]}, {"port": [70000]})
    be.map.close()


def test_per_cpu_counters_sum_and_calico_reader(pin_dir):
    c = named.Counters.create(max_entries=16)
    cpus = c.map.nr_cpus
    key = CountersKey(4, CounterHook.TC_INGRESS)
    per_cpu = [CountersValue.of({Counter.TOTAL: i + 1, Counter.CT_NEW: 1}) for i in range(cpus)]
    c.set(key, per_cpu)
    assert c[key] == per_cpu
    total = c.totals()[key]
    assert total[Counter.TOTAL] == sum(range(1, cpus + 1)) and total[Counter.CT_NEW] == cpus
    df = c.to_pandas()
    assert df["counts"][0][Counter.TOTAL] == total[Counter.TOTAL]
    c.map.close()

    # A Calico node's counters map has 27 u64 per CPU; open_calico reads it with the right layout.
    calico = Map.create(MapType.PERCPU_HASH, 8, 27 * 8, 16, name="cali_counters6")
    calico.pin(os.path.join(pin_dir, "cali_counters6"))
    calico.close()
    cm = named.Counters.open_calico(pin_dir)
    assert cm.value_type is CalicoCountersValue
    cm[key] = CalicoCountersValue.of({Counter.DROP_POLICY: 3})
    assert cm.totals()[key][Counter.DROP_POLICY] == 3 * cpus
    cm.map.close()


def test_open_by_pin_path_and_node_maps(pin_dir):
    created = named.NodeMaps.create(pin_dir, sizes={name: 256 for name in named.ALL_MAPS})
    for nm, (k, v) in SAMPLES.items():
        attr = next(a for a, c in named.ALL_MAPS.items() if c is nm)
        getattr(created, attr)[k] = v
    created.close()
    assert sorted(os.listdir(pin_dir)) == sorted(c.spec.name for c in named.ALL_MAPS.values())
    with named.NodeMaps(pin_dir) as maps:
        for nm, (k, v) in SAMPLES.items():
            attr = next(a for a, c in named.ALL_MAPS.items() if c is nm)
            assert getattr(maps, attr).items() == [(k, v)]
            assert isinstance(getattr(maps, attr), nm)
    be = named.NatBackends.open(pin_dir)
    assert be.map.pin_path == os.path.join(pin_dir, "cebpf_nat_be") and len(be) == 1
    be.map.close()


def test_open_calico_pins(pin_dir):
    for nm in SAMPLES:
        spec = nm.spec
        if spec.calico_name is None:
            with pytest.raises(UnsupportedError):
                nm.open_calico(pin_dir)
            continue
        m = Map.create(spec.type, spec.key.size(), spec.value.size(), 64, name=spec.calico_name[:15])
        m.pin(os.path.join(pin_dir, spec.calico_name))
        m.close()
    with named.NodeMaps(pin_dir, calico=True) as maps:
        maps.conntrack[SAMPLES[named.Conntrack][0]] = SAMPLES[named.Conntrack][1]
        reopened = named.Conntrack.open_calico(pin_dir)
        assert reopened.items() == [SAMPLES[named.Conntrack]]
        assert reopened.map.pin_path.endswith("/cali_v4_ct4")
        reopened.map.close()


def test_size_mismatch_is_refused():
    m = Map.create(MapType.HASH, 8, 12, 4)
    with pytest.raises(ModelError, match="8/12"):
        TypedMap(m, NatBackendKey, NatBackendValue)
    m.close()


def test_conntrack_records_read_like_calico_bpf():
    ct = named.Conntrack.create(max_entries=1024)
    now = monotonic_ns()
    client, vip, backend = ("10.0.0.2", 40000), ("10.96.0.10", 80), ("10.65.0.7", 8080)
    rev_key = CtKey.for_flow(*client, *backend, "tcp")
    fwd_key = CtKey.for_flow(*client, *vip, "tcp")
    ba = CtFlags(0) if CtKey.src_is_a(*client, *backend) else CtFlags.BA
    opener = CtLeg(
        bytes=300, packets=3, flags=CtLegFlags.SYN_SEEN | CtLegFlags.ACK_SEEN | CtLegFlags.APPROVED
    )
    reply = CtLeg(bytes=200, packets=2, flags=CtLegFlags.SYN_SEEN | CtLegFlags.ACK_SEEN | CtLegFlags.APPROVED)
    legs = (opener, reply) if not ba else (reply, opener)
    ct.update_many(
        {
            fwd_key: CtValue.nat_fwd(rev_key, last_seen=now - 2_000_000_000),
            rev_key: CtValue.nat_rev(vip[0], vip[1], *legs, last_seen=now - 2_000_000_000, flags=ba),
            CtKey.for_flow("10.0.0.3", 5000, "10.0.0.4", 53, "udp"): CtValue.normal(
                CtLeg(50, 1), last_seen=now
            ),
            CtKey.for_flow("10.0.0.5", 6000, "10.0.0.6", 22, "tcp"): CtValue.normal(
                CtLeg(flags=CtLegFlags.SYN_SEEN), last_seen=now
            ),
        }
    )
    recs = {str(r.proto) + r.state if r.state else str(r.proto): r for r in ct.records(now_ns=now)}
    assert len(ct.records(now_ns=now)) == 3 and len(ct.records(include_fwd=True, now_ns=now)) == 4
    nat = recs["TCPESTABLISHED"]
    assert str(nat) == "TCP 10.0.0.2:40000 -> 10.96.0.10:80 -> 10.65.0.7:8080 ESTABLISHED age 2.0s"
    assert nat.tx.bytes == 300 and nat.rx.packets == 2
    assert str(recs["TCPSYN_SENT"]).startswith("TCP 10.0.0.5:6000 -> 10.0.0.6:22 SYN_SENT")
    assert recs["UDP"].to_dict()["state"] is None and recs["UDP"].to_dict()["tx"]["bytes"] == 50
    df = ct.to_pandas()
    assert len(df) == 4 and {"protocol", "addr_a", "orig_ip", "a_to_b.bytes", "age_s", "ct_flags"} <= set(
        df.columns
    )
    nat_row = df[df["type"] == 2].iloc[0]
    assert nat_row["orig_ip"] == int(ipaddress.IPv4Address(vip[0])) and 1.9 < nat_row["age_s"] < 60
    assert Proto(int(nat_row["protocol"])) is Proto.TCP
    ct.map.close()


def test_repr_html_is_short():
    be = named.NatBackends.create(max_entries=100)
    be.update_many({NatBackendKey(1, i): NatBackendValue("10.0.0.1", i) for i in range(30)})
    html = be._repr_html_()
    assert "30 entries" in html and html.count("<tr>") == 1 + 20 + 1 and "10 more" in html
    be.map.close()


def test_empty_per_cpu_map_dumps_as_empty():
    counters = named.Counters.create(16)
    try:
        assert list(counters.items()) == [] and len(counters) == 0
    finally:
        counters.map.close()
