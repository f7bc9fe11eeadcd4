"""Typed map entries: validation, readable values, exact C bytes.

Expected bytes are written out by hand from the C structs in bpf/include
(offsets in the comments), so a wrong offset in a layout table fails here
even before the BTF check runs."""

from __future__ import annotations

import ipaddress

import pytest

from calico_ebpf.errors import ModelError
from calico_ebpf.maps.entries import (
    ALL_ENTRY_CLASSES,
    CalicoCountersValue,
    Counter,
    CounterHook,
    CountersKey,
    CountersValue,
    CtFlags,
    CtKey,
    CtLeg,
    CtLegFlags,
    CtType,
    CtValue,
    FailsafeFlags,
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
    NatFrontendKey,
    NatFrontendValue,
    Proto,
    RouteFlags,
    RouteKey,
    RouteValue,
    U32Value,
)

A = ipaddress.IPv4Address


def test_proto_prints_by_name_and_keeps_unknown_numbers():
    assert str(Proto.TCP) == "TCP" and f"{Proto.UDP}" == "UDP"
    assert Proto(6) is Proto.TCP and Proto.parse("sctp") is Proto.SCTP and Proto.parse("17") is Proto.UDP
    assert str(Proto(47)) == "PROTO_47" and Proto(47) is Proto(47)
    with pytest.raises(ValueError):
        Proto(256)


def test_flags_print_names_and_keep_unknown_bits():
    assert str(CtFlags.BA | CtFlags.NP_FWD) == "NP_FWD|BA"
    assert str(CtFlags(0x80000001)) == "NAT_OUT|0x80000000"
    assert str(NatFlags(0)) == "0"


def test_nat_frontend_key_bytes_and_prefixlen():
    key = NatFrontendKey("10.96.0.10", 53, "udp")
    assert key.addr == A("10.96.0.10") and key.proto is Proto.UDP and key.prefixlen == 56
    # prefixlen u32 @0 | addr NBO @4 | port u16 @8 | proto u8 @10 | saddr NBO @11 | pad @15
    assert key.to_bytes() == bytes.fromhex("380000000a60000a3500110000000000")
    ranged = NatFrontendKey("192.168.1.1", 443, Proto.TCP, src_cidr="10.1.0.0/16")
    assert ranged.prefixlen == 72
    assert ranged.to_bytes() == bytes.fromhex("48000000c0a80101bb01060a01000000")
    assert NatFrontendKey.from_bytes(ranged.to_bytes()) == ranged


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(addr="10.0.0.1", port=70000, proto="tcp"), "port"),
        (dict(addr="10.0.0.1", port=-1, proto="tcp"), "port"),
        (dict(addr="10.0.0.300", port=80, proto="tcp"), "addr"),
        (dict(addr="::1", port=80, proto="tcp"), "addr"),
        (dict(addr="10.0.0.1", port=80, proto="gre"), "proto"),
        (dict(addr="10.0.0.1", port=80, proto=999), "proto"),
        (dict(addr="10.0.0.1", port=80, proto="tcp", src_cidr="10.0.0.1/8"), "src_cidr"),
    ],
)
def test_nat_frontend_key_rejects_bad_fields(kwargs, field):
    with pytest.raises(ModelError) as err:
        NatFrontendKey(**kwargs)
    assert err.value.field == field and err.value.object == "NatFrontendKey"
    assert isinstance(err.value, ValueError)


def test_nat_frontend_value_bytes_and_drop():
    v = NatFrontendValue(id=3, count=2, local=1, affinity_timeo=10800, flags=NatFlags.EXTERNAL_LOCAL)
    assert v.to_bytes() == bytes.fromhex("030000000200000001000000302a000001000000")
    drop = NatFrontendValue.drop(9)
    assert drop.is_drop and not v.is_drop and drop.to_bytes()[4:8] == b"\xff\xff\xff\xff"
    with pytest.raises(ModelError, match="count"):
        NatFrontendValue(id=1, count=2**32)


def test_nat_backend_and_affinity_bytes():
    assert NatBackendKey(7, 2).to_bytes() == bytes.fromhex("0700000002000000")
    be = NatBackendValue("10.65.0.2", 8080)
    assert be.to_bytes() == bytes.fromhex("0a410002901f0000") and str(be) == "10.65.0.2:8080"
    key = NatAffinityKey("10.96.0.1", 80, "tcp", "192.168.0.9")
    assert key.to_bytes() == bytes.fromhex("0a60000150000600c0a8000900000000")
    val = NatAffinityValue(be, ts=0x0102030405060708)
    assert val.to_bytes() == bytes.fromhex("0a410002901f00000807060504030201")
    assert NatAffinityValue.from_bytes(val.to_bytes()) == val
    with pytest.raises(ModelError, match="backend"):
        NatAffinityValue(backend="10.0.0.1:80")


def test_ct_key_orders_endpoints_like_the_datapath():
    # 10.0.0.2 as a little-endian word is 0x0200000a; 192.168.0.1 is 0x0100a8c0: smaller.
    k = CtKey.for_flow("10.0.0.2", 40000, "192.168.0.1", 80, "tcp")
    assert (k.addr_a, k.port_a, k.addr_b, k.port_b) == (A("192.168.0.1"), 80, A("10.0.0.2"), 40000)
    # The reply direction yields the same key.
    assert CtKey.for_flow("192.168.0.1", 80, "10.0.0.2", 40000, Proto.TCP) == k
    # 10.0.0.1 (0x0100000a) < 10.0.0.2 (0x0200000a); numerically by NBO they would compare the same way,
    # but 1.0.0.2 (0x02000001) > 2.0.0.1 (0x01000002) although 1.0.0.2 < 2.0.0.1 in network order.
    k2 = CtKey.for_flow("1.0.0.2", 1, "2.0.0.1", 2, "udp")
    assert k2.addr_a == A("2.0.0.1")
    assert not CtKey.src_is_a("1.0.0.2", 1, "2.0.0.1", 2)
    # Equal addresses: ordered by port.
    k3 = CtKey.for_flow("10.0.0.5", 9000, "10.0.0.5", 80, "tcp")
    assert (k3.port_a, k3.port_b) == (80, 9000)
    # protocol u32 @0 | addr_a @4 | addr_b @8 | port_a u16 @12 | port_b @14
    assert k.to_bytes() == bytes.fromhex("06000000c0a800010a0000025000409c")


def test_ct_value_normal_bytes():
    leg = CtLeg(
        bytes=0x100, packets=2, seqno=0x11223344, flags=CtLegFlags.SYN_SEEN | CtLegFlags.APPROVED, ifindex=5
    )
    v = CtValue.normal(leg, CtLeg(), last_seen=7, flags=CtFlags.BA | CtFlags.NAT_OUT | CtFlags.MAGLEV)
    b = v.to_bytes()
    assert len(b) == 88
    assert b[8:16] == (7).to_bytes(8, "little")
    # type @16, flags (bits 0-7) @17, flags3 (16-23) @18, flags4 @19, pad @20..22, flags2 (8-15) @23
    assert b[16:24] == bytes([0, 0x01, 0x01, 0, 0, 0, 0, 0x01])
    assert b[24:48] == bytes.fromhex("000100000000000002000000443322111100000005000000")
    assert b[48:] == bytes(40)
    assert CtValue.from_bytes(b) == v


def test_ct_value_nat_entries():
    rev_key = CtKey.for_flow("10.0.0.2", 40000, "10.65.0.7", 8080, "tcp")
    fwd = CtValue.nat_fwd(rev_key, nat_sport=1234, last_seen=99)
    b = fwd.to_bytes()
    assert (
        b[16] == CtType.NAT_FWD
        and b[24:40] == rev_key.to_bytes()
        and b[40:42] == (1234).to_bytes(2, "little")
    )
    assert b[42:] == bytes(46)
    assert CtValue.from_bytes(b) == fwd
    rev = CtValue.nat_rev("10.96.0.10", 80, orig_sip="10.0.0.2", orig_sport=40000, tun_ip="192.168.0.2")
    b = rev.to_bytes()
    assert b[72:88] == bytes.fromhex("c0a800020a60000a5000409c0a000002")
    assert CtValue.from_bytes(b).orig_ip == A("10.96.0.10")


def test_ct_value_union_is_validated():
    with pytest.raises(ModelError, match="nat_rev_key"):
        CtValue(type=CtType.NAT_FWD)
    with pytest.raises(ModelError, match="nat_rev_key"):
        CtValue(type=CtType.NORMAL, nat_rev_key=CtKey(Proto.TCP, "1.1.1.1", "2.2.2.2", 1, 2))
    with pytest.raises(ModelError, match="share"):
        CtValue(type=CtType.NAT_FWD, nat_rev_key=CtKey(Proto.TCP, "1.1.1.1", "2.2.2.2"), orig_port=5)


def test_ct_value_from_bytes_rejects_bad_type_and_protocol():
    bad_type = bytearray(88)
    bad_type[16] = 7
    with pytest.raises(ModelError, match="type"):
        CtValue.from_bytes(bytes(bad_type))
    with pytest.raises(ModelError, match="proto"):
        CtKey.from_bytes((300).to_bytes(4, "little") + bytes(12))


def test_routes():
    k = RouteKey("10.65.1.0/26")
    assert k.to_bytes() == bytes.fromhex("1a0000000a410100")
    with pytest.raises(ModelError, match="cidr"):
        RouteKey("10.65.1.1/26")
    local = RouteValue.for_ifindex(RouteFlags.LOCAL | RouteFlags.WORKLOAD, 7)
    assert local.to_bytes() == bytes.fromhex("0c00000007000000") and local.ifindex == 7
    assert str(local) == "WORKLOAD|LOCAL idx 7"
    remote = RouteValue(RouteFlags.WORKLOAD | RouteFlags.IN_POOL, "192.168.0.3")
    assert remote.to_bytes() == bytes.fromhex("05000000c0a80003") and str(remote).endswith("nh 192.168.0.3")
    assert RouteValue.from_bytes(remote.to_bytes()) == remote


def test_ipsets_cidr_and_named_port_members():
    cidr = IPSetKey(0x1122334455667788, "10.0.0.0/8")
    # mask u32 @0 | set_id big-endian @4 | addr @12 | port @16 | proto @18 | pad @19
    assert cidr.to_bytes() == bytes.fromhex("4800000011223344556677880a00000000000000")
    named = IPSetKey(5, "10.0.0.9/32", port=8080, proto="tcp")
    assert named.is_named_port and named.prefixlen == 120
    assert named.to_bytes() == bytes.fromhex("7800000000000000000000050a000009901f0600")
    assert IPSetKey.from_bytes(named.to_bytes()) == named and str(named) == "0x5 10.0.0.9,tcp:8080"
    with pytest.raises(ModelError, match="named-port"):
        IPSetKey(5, "10.0.0.0/24", port=80, proto="tcp")
    assert U32Value().to_bytes() == b"\x01\x00\x00\x00"


def test_failsafes():
    k = FailsafeKey(22, "tcp", "10.0.0.0/8", FailsafeFlags.OUTBOUND)
    # prefixlen @0 (32 + 8) | port @4 | proto @6 | flags @7 | addr @8
    assert k.to_bytes() == bytes.fromhex("28000000160006010a000000")
    assert k.outbound and FailsafeKey.from_bytes(k.to_bytes()) == k


def test_ifstate():
    v = IfStateValue(IfaceFlags.WEP | IfaceFlags.V4_READY, "cali1234", ingress_policy_v4=12)
    b = v.to_bytes()
    assert b[:4] == b"\x03\x00\x00\x00" and b[4:20] == b"cali1234" + bytes(8)
    assert b[20:24] == b"\xff\xff\xff\xff" and b[24:28] == (12).to_bytes(4, "little")
    assert IfStateValue.from_bytes(b) == v and IfStateKey(9).to_bytes() == b"\x09\x00\x00\x00"
    with pytest.raises(ModelError, match="name"):
        IfStateValue(IfaceFlags.WEP, "x" * 17)
    with pytest.raises(ModelError, match="egress_policy_v4"):
        IfStateValue(IfaceFlags.WEP, "eth0", egress_policy_v4=2**31)


def test_counters_and_per_cpu_sum():
    key = CountersKey(4, CounterHook.TC_EGRESS)
    assert key.to_bytes() == bytes.fromhex("0400000001000000")
    cpu0 = CountersValue.of({Counter.TOTAL: 10, Counter.CT_NEW: 2})
    cpu1 = CountersValue.of({Counter.TOTAL: 5, Counter.DROP_POLICY: 1})
    total = CountersValue.total([cpu0, cpu1])
    assert total[Counter.TOTAL] == 15 and total[Counter.CT_NEW] == 2 and total.as_dict()["DROP_POLICY"] == 1
    assert len(cpu0.to_bytes()) == 256 and cpu0.to_bytes()[31 * 8] == 2
    calico = CalicoCountersValue.of({Counter.TOTAL: 1})
    assert len(calico.to_bytes()) == 216 and CalicoCountersValue.from_bytes(calico.to_bytes()) == calico
    with pytest.raises(ModelError, match="counts"):
        CountersValue((1, 2, 3))


@pytest.mark.parametrize("cls", ALL_ENTRY_CLASSES, ids=lambda c: c.__name__)
def test_from_bytes_rejects_wrong_size(cls):
    with pytest.raises(ModelError) as err:
        cls.from_bytes(bytes(cls.size() + 1))
    assert err.value.field == "bytes" and str(cls.size()) in str(err.value)


@pytest.mark.parametrize("cls", ALL_ENTRY_CLASSES, ids=lambda c: c.__name__)
def test_entries_are_frozen_and_slotted(cls):
    assert "__slots__" in cls.__dict__
    layout = cls.__layout__
    assert layout.cls is cls and layout.dtype.itemsize == layout.size


def test_frozen():
    import attrs

    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        NatBackendKey(1, 2).id = 3


def test_ipv6_nat_and_conntrack_bytes():
    from calico_ebpf.maps.entries import CtKeyV6, CtValueV6, NatBackendValueV6, NatFrontendKeyV6

    A6 = ipaddress.IPv6Address
    fe = NatFrontendKeyV6("fd00:96::a", 53, "udp", src_cidr="fd00:10::/32")
    b = fe.to_bytes()
    assert len(b) == 40 and b[:4] == (152 + 32).to_bytes(4, "little") and b[4:20] == A6("fd00:96::a").packed
    assert b[20:23] == bytes.fromhex("350011") and b[23:39] == A6("fd00:10::").packed and b[39] == 0
    assert NatFrontendKeyV6.from_bytes(b) == fe
    assert NatBackendValueV6("fd00::5", 80).to_bytes() == A6("fd00::5").packed + bytes.fromhex("50000000")
    # Word-wise little-endian order: fd00::1 and fd00::2 differ in the last word (0x01000000 < 0x02000000).
    k = CtKeyV6.for_flow("fd00::2", 40000, "fd00::1", 80, "tcp")
    assert (k.addr_a, k.port_a) == (A6("fd00::1"), 80) and CtKeyV6.for_flow(
        "fd00::1", 80, "fd00::2", 40000, "tcp"
    ) == k
    v = CtValueV6(type=CtType.NAT_REV, orig_ip="fd00:96::a", orig_port=80, last_seen=3)
    vb = v.to_bytes()
    assert len(vb) == 128 and vb[88:104] == A6("fd00:96::a").packed and vb[104:106] == b"\x50\x00"
    assert CtValueV6.from_bytes(vb) == v
    fwd = CtValueV6(type=CtType.NAT_FWD, nat_rev_key=k, nat_sport=7)
    assert fwd.to_bytes()[24:64] == k.to_bytes() and fwd.to_bytes()[64:66] == b"\x07\x00"
    with pytest.raises(ModelError, match="addr"):
        NatBackendValueV6("10.0.0.1", 80)
