"""Every codec case runs against BOTH implementations (Cython and pure
Python) in one run, and the two must produce identical bytes.

The Cython module must be importable unless CALICO_EBPF_PURE_PYTHON=1 (then
only the fallback is tested, and it must be what codec.py picked)."""

from __future__ import annotations

import importlib
import ipaddress
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from calico_ebpf.errors import ModelError
from calico_ebpf.maps import _codec_py, codec, columns
from calico_ebpf.maps.entries import (
    ALL_ENTRY_CLASSES,
    CalicoCountersValue,
    CounterHook,
    CountersKey,
    CountersValue,
    CtFlags,
    CtKey,
    CtKeyV6,
    CtLeg,
    CtLegFlags,
    CtType,
    CtValue,
    CtValueV6,
    FailsafeFlags,
    FailsafeKey,
    IfaceFlags,
    IfStateKey,
    IfStateValue,
    IPSetKey,
    NatAffinityKey,
    NatAffinityKeyV6,
    NatAffinityValue,
    NatAffinityValueV6,
    NatBackendKey,
    NatBackendValue,
    NatBackendValueV6,
    NatFlags,
    NatFrontendHashKey,
    NatFrontendKey,
    NatFrontendKeyV6,
    NatFrontendValue,
    Proto,
    RouteFlags,
    RouteKey,
    RouteValue,
    U32Value,
)

PURE = os.environ.get("CALICO_EBPF_PURE_PYTHON") == "1"


def _cython_module():
    try:
        return importlib.import_module("calico_ebpf.maps._codec_c")
    except ImportError as exc:
        pytest.fail(
            f"the Cython codec is not built ({exc}); run `.venv/bin/python setup.py build_ext --inplace` "
            "or set CALICO_EBPF_PURE_PYTHON=1 to test only the fallback",
            pytrace=False,
        )


IMPLS = ["python"] if PURE else ["python", "cython"]


@pytest.fixture(params=IMPLS)
def impl(request):
    return _codec_py if request.param == "python" else _cython_module()


@pytest.fixture(scope="module")
def both():
    return [_codec_py] if PURE else [_codec_py, _cython_module()]


# ---------------------------------------------------------------------------
# strategies: valid entries


u8, u16, u32, u64 = (st.integers(0, (1 << b) - 1) for b in (8, 16, 32, 64))
s32 = st.integers(-(1 << 31), (1 << 31) - 1)
addr = u32.map(ipaddress.IPv4Address)
proto = u8.map(Proto)


@st.composite
def cidr(draw):
    plen = draw(st.integers(0, 32))
    a = draw(u32) & ((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF)
    return ipaddress.IPv4Network((a, plen))


addr6 = st.integers(0, (1 << 128) - 1).map(ipaddress.IPv6Address)


@st.composite
def cidr6(draw):
    plen = draw(st.integers(0, 128))
    a = draw(st.integers(0, (1 << 128) - 1)) & (((1 << 128) - 1) << (128 - plen)) & ((1 << 128) - 1)
    return ipaddress.IPv6Network((a, plen))


leg = st.builds(CtLeg, u64, u32, u32, u32.map(CtLegFlags), u32)
ct_key = st.builds(CtKey, proto, addr, addr, u16, u16)


@st.composite
def ct_value(draw):
    kind = draw(st.sampled_from(list(CtType)))
    common = dict(rst_seen=draw(u64), last_seen=draw(u64), flags=CtFlags(draw(u32)))
    if kind == CtType.NAT_FWD:
        return CtValue(type=kind, nat_rev_key=draw(ct_key), nat_sport=draw(u16), **common)
    return CtValue(
        type=kind,
        a_to_b=draw(leg),
        b_to_a=draw(leg),
        tun_ip=draw(addr),
        orig_ip=draw(addr),
        orig_port=draw(u16),
        orig_sport=draw(u16),
        orig_sip=draw(addr),
        **common,
    )


ct_key6 = st.builds(CtKeyV6, proto, addr6, addr6, u16, u16)


@st.composite
def ct_value6(draw):
    kind = draw(st.sampled_from(list(CtType)))
    common = dict(rst_seen=draw(u64), last_seen=draw(u64), flags=CtFlags(draw(u32)))
    if kind == CtType.NAT_FWD:
        return CtValueV6(type=kind, nat_rev_key=draw(ct_key6), nat_sport=draw(u16), **common)
    return CtValueV6(
        type=kind,
        a_to_b=draw(leg),
        b_to_a=draw(leg),
        tun_ip=draw(addr6),
        orig_ip=draw(addr6),
        orig_port=draw(u16),
        orig_sport=draw(u16),
        orig_sip=draw(addr6),
        **common,
    )


@st.composite
def ipset_key(draw):
    if draw(st.booleans()):
        a = ipaddress.IPv4Network((draw(u32), 32))
        port, pr = draw(st.tuples(u16, proto).filter(lambda t: t[0] or t[1]))
        return IPSetKey(draw(u64), a, port, pr)
    return IPSetKey(draw(u64), draw(cidr()))


ifname = st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=16).filter(
    lambda s: not s.endswith("\0")
)
counts32 = st.lists(u64, min_size=32, max_size=32).map(tuple)
counts27 = st.lists(u64, min_size=27, max_size=27).map(tuple)

STRATEGIES = {
    NatFrontendKey: st.builds(NatFrontendKey, addr, u16, proto, cidr()),
    NatFrontendHashKey: st.builds(NatFrontendHashKey, addr, u16, proto),
    NatFrontendValue: st.builds(NatFrontendValue, u32, u32, u32, u32, u32.map(NatFlags)),
    NatBackendKey: st.builds(NatBackendKey, u32, u32),
    NatBackendValue: st.builds(NatBackendValue, addr, u16),
    NatAffinityKey: st.builds(NatAffinityKey, addr, u16, proto, addr),
    NatAffinityValue: st.builds(NatAffinityValue, st.builds(NatBackendValue, addr, u16), u64),
    CtKey: ct_key,
    CtLeg: leg,
    CtValue: ct_value(),
    RouteKey: st.builds(RouteKey, cidr()),
    RouteValue: st.builds(RouteValue, u32.map(RouteFlags), addr),
    IPSetKey: ipset_key(),
    U32Value: st.builds(U32Value, u32),
    FailsafeKey: st.builds(FailsafeKey, u16, proto, cidr(), u8.map(FailsafeFlags)),
    IfStateKey: st.builds(IfStateKey, u32),
    IfStateValue: st.builds(
        IfStateValue, u32.map(IfaceFlags), ifname, s32, s32, s32, s32, s32, s32, s32, s32
    ),
    CountersKey: st.builds(CountersKey, u32, st.sampled_from(list(CounterHook))),
    CountersValue: st.builds(CountersValue, counts32),
    CalicoCountersValue: st.builds(CalicoCountersValue, counts27),
    NatFrontendKeyV6: st.builds(NatFrontendKeyV6, addr6, u16, proto, cidr6()),
    NatBackendValueV6: st.builds(NatBackendValueV6, addr6, u16),
    NatAffinityKeyV6: st.builds(NatAffinityKeyV6, addr6, u16, proto, addr6),
    NatAffinityValueV6: st.builds(NatAffinityValueV6, st.builds(NatBackendValueV6, addr6, u16), u64),
    CtKeyV6: ct_key6,
    CtValueV6: ct_value6(),
}


def test_every_entry_class_has_a_strategy():
    assert set(STRATEGIES) == set(ALL_ENTRY_CLASSES)


# ---------------------------------------------------------------------------
# strategies: canonical random bytes (any bytes a kernel map could hold for
# the entry, with the fields the entry does not represent made canonical:
# padding zero, CIDR host bits clear, enums in range).


def _mask(a: bytes, plen: int) -> bytes:
    m = (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF
    return (int.from_bytes(a, "big") & m).to_bytes(4, "big")


def _fix_fe_key(b: bytearray, r: int) -> None:
    p = r % 33
    b[0:4] = (56 + p).to_bytes(4, "little")
    b[11:15] = _mask(b[11:15], p)
    b[15] = 0


def _fix_ct_key(b: bytearray, off: int = 0) -> None:
    b[off + 1 : off + 4] = bytes(3)


def _fix_ct_value(b: bytearray, r: int) -> None:
    b[16] = r % 3
    b[20:23] = bytes(3)
    if b[16] == CtType.NAT_FWD:
        _fix_ct_key(b, 24)
        b[42:] = bytes(46)


def _fix_ipset(b: bytearray, r: int) -> None:
    b[19] = 0
    if r % 2 and (b[16] or b[17] or b[18]):
        b[0:4] = (120).to_bytes(4, "little")
    else:
        p = r % 33
        b[0:4] = (64 + p).to_bytes(4, "little")
        b[12:16] = _mask(b[12:16], p)
        b[16:19] = bytes(3)


def _fix_lpm(prefix_off: int, addr_off: int, base: int):
    def fix(b: bytearray, r: int) -> None:
        p = r % 33
        b[prefix_off : prefix_off + 4] = (base + p).to_bytes(4, "little")
        b[addr_off : addr_off + 4] = _mask(b[addr_off : addr_off + 4], p)

    return fix


def _zero(*ranges):
    def fix(b: bytearray, r: int) -> None:
        for lo, hi in ranges:
            b[lo:hi] = bytes(hi - lo)

    return fix


def _mask6(a: bytes, plen: int) -> bytes:
    m = (((1 << 128) - 1) << (128 - plen)) & ((1 << 128) - 1)
    return (int.from_bytes(a, "big") & m).to_bytes(16, "big")


def _fix_fe_key6(b: bytearray, r: int) -> None:
    p = r % 129
    b[0:4] = (152 + p).to_bytes(4, "little")
    b[23:39] = _mask6(b[23:39], p)
    b[39] = 0


def _fix_ct_value6(b: bytearray, r: int) -> None:
    b[16] = r % 3
    b[20:23] = bytes(3)
    b[124:128] = bytes(4)
    if b[16] == CtType.NAT_FWD:
        _fix_ct_key(b, 24)
        b[66:] = bytes(62)


def _counters_key(b: bytearray, r: int) -> None:
    b[4:8] = (r % 3).to_bytes(4, "little")


CANONICAL = {
    NatFrontendKey: _fix_fe_key,
    NatFrontendHashKey: _zero((7, 8)),
    NatBackendValue: _zero((6, 8)),
    NatAffinityKey: _zero((7, 8), (12, 16)),
    NatAffinityValue: _zero((6, 8)),
    CtKey: lambda b, r: _fix_ct_key(b),
    CtValue: _fix_ct_value,
    RouteKey: _fix_lpm(0, 4, 0),
    IPSetKey: _fix_ipset,
    FailsafeKey: _fix_lpm(0, 8, 32),
    CountersKey: _counters_key,
    NatFrontendKeyV6: _fix_fe_key6,
    NatBackendValueV6: _zero((18, 20)),
    NatAffinityKeyV6: _zero((19, 20), (36, 40)),
    NatAffinityValueV6: _zero((18, 24)),
    CtKeyV6: lambda b, r: _fix_ct_key(b),
    CtValueV6: _fix_ct_value6,
}


def canonical_bytes(cls):
    size = cls.size()

    def build(args):
        raw, r = args
        b = bytearray(raw)
        CANONICAL.get(cls, lambda b, r: None)(b, r)
        return bytes(b)

    return st.tuples(st.binary(min_size=size, max_size=size), st.integers(0, 1 << 16)).map(build)


CLASSES = list(STRATEGIES)
ids = [c.__name__ for c in CLASSES]


@pytest.mark.parametrize("cls", CLASSES, ids=ids)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_entries_round_trip_identically_in_both_codecs(both, cls, data):
    entries = data.draw(st.lists(STRATEGIES[cls], min_size=1, max_size=8))
    encoded = [bytes(m.encode_many(entries, cls)) for m in both]
    assert len(set(encoded)) == 1, "implementations disagree"
    assert len(encoded[0]) == len(entries) * cls.size()
    for m in both:
        decoded = m.decode_many(cls, encoded[0])
        assert decoded == entries
        assert all(type(d) is cls for d in decoded)
        assert m.decode_items(cls, cls, encoded[0], encoded[0]) == list(zip(entries, entries))
    # to_bytes goes through the selected codec and agrees with the bulk path.
    assert b"".join(e.to_bytes() for e in entries) == encoded[0]


@pytest.mark.parametrize("cls", CLASSES, ids=ids)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_random_bytes_decode_and_reencode_unchanged(both, cls, data):
    raw = b"".join(data.draw(st.lists(canonical_bytes(cls), min_size=1, max_size=6)))
    decoded = [m.decode_many(cls, raw) for m in both]
    assert all(d == decoded[0] for d in decoded)
    for m in both:
        assert bytes(m.encode_many(decoded[0], cls)) == raw


def test_decoded_objects_behave_like_constructed_ones(impl):
    # Objects built by the codec (not through __init__) must hash, compare,
    # print and convert like normal ones.
    key = NatFrontendKey("10.96.0.10", 53, "udp", "10.0.0.0/8")
    (decoded,) = impl.decode_many(NatFrontendKey, key.to_bytes())
    assert decoded == key and hash(decoded) == hash(key) and repr(decoded) == repr(key)
    assert str(decoded.addr) == "10.96.0.10" and decoded.addr.packed == b"\x0a\x60\x00\x0a"
    assert decoded.addr in ipaddress.IPv4Network("10.96.0.0/12") and decoded.proto is Proto.UDP
    assert {decoded: 1}[key] == 1


def test_encode_many_rejects_mixed_or_wrong_types(impl):
    with pytest.raises(TypeError):
        impl.encode_many([NatBackendKey(1, 2), NatBackendValue("1.1.1.1", 1)])
    with pytest.raises(TypeError):
        impl.encode_many([NatBackendKey(1, 2)], NatBackendValue)


def test_encode_rejects_out_of_range_values_that_bypassed_validation(impl):
    bad = object.__new__(NatBackendKey)
    object.__setattr__(bad, "id", 1 << 32)
    object.__setattr__(bad, "ordinal", 0)
    with pytest.raises(ModelError) as err:
        impl.encode_many([bad])
    assert err.value.field == "id" and err.value.object == "NatBackendKey"


def test_decode_many_checks_the_buffer_size(impl):
    with pytest.raises(ModelError, match="multiple of 8"):
        impl.decode_many(NatBackendKey, bytes(12))
    with pytest.raises(ModelError, match="3 entries"):
        impl.decode_many(NatBackendKey, bytes(16), 3)
    assert impl.decode_many(NatBackendKey, bytes(24), 2) == [NatBackendKey(0, 0)] * 2
    assert impl.decode_many(NatBackendKey, b"") == [] and impl.encode_many([]) == bytearray()


def test_decode_rejects_invalid_enum_values(impl):
    bad = bytearray(CtValue.normal().to_bytes())
    bad[16] = 3
    with pytest.raises(ModelError, match="CtType"):
        impl.decode_many(CtValue, bytes(bad))


def test_encode_into_writes_at_an_offset(impl):
    buf = bytearray(3 * 8)
    n = impl.encode_into([NatBackendKey(1, 1), NatBackendKey(2, 2)], NatBackendKey, buf, 8)
    assert (
        n == 16
        and buf[:8] == bytes(8)
        and impl.decode_many(NatBackendKey, buf[8:]) == [NatBackendKey(1, 1), NatBackendKey(2, 2)]
    )


def test_decode_accepts_any_buffer(impl):
    keys = [NatBackendKey(i, i + 1) for i in range(4)]
    raw = bytes(impl.encode_many(keys))
    for buf in (raw, bytearray(raw), memoryview(raw), np.frombuffer(raw, dtype=np.uint8)):
        assert impl.decode_many(NatBackendKey, buf) == keys


def test_selector_honours_the_env_switch_without_importing_cython():
    code = (
        "import sys; from calico_ebpf.maps import codec; "
        "print(codec.IMPLEMENTATION, 'calico_ebpf.maps._codec_c' in sys.modules)"
    )
    env = dict(os.environ, CALICO_EBPF_PURE_PYTHON="1")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["python", "False"]
    if not PURE:
        env.pop("CALICO_EBPF_PURE_PYTHON")
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout
        assert out.split() == ["cython", "True"]
        assert codec.IMPLEMENTATION == "cython"


# ---------------------------------------------------------------------------
# columnar path


@pytest.mark.parametrize("cls", CLASSES, ids=ids)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_columns_round_trip_with_the_object_codec(cls, data):
    entries = data.draw(st.lists(STRATEGIES[cls], min_size=1, max_size=5))
    raw = bytes(codec.encode_many(entries, cls))
    arr = columns.to_array(cls, raw)
    assert arr.dtype.itemsize == cls.size() and len(arr) == len(entries)
    rebuilt = columns.from_columns(cls, {name: arr[name] for name in arr.dtype.names}, len(arr))
    assert rebuilt.tobytes() == raw


def test_columns_match_fields():
    be = [NatBackendValue("10.0.0.1", 80), NatBackendValue("10.0.0.2", 443)]
    arr = columns.to_array(NatBackendValue, codec.encode_many(be))
    assert list(arr["addr"]) == [int(b.addr) for b in be] and list(arr["port"]) == [80, 443]
    fe = columns.from_columns(
        NatFrontendKey,
        {
            "prefixlen": np.full(2, 56),
            "addr": np.array([0x0A60000A, 0x0A60000B]),
            "port": [53, 80],
            "protocol": [17, 6],
        },
    )
    assert codec.decode_many(NatFrontendKey, fe) == [
        NatFrontendKey("10.96.0.10", 53, "udp"),
        NatFrontendKey("10.96.0.11", 80, "tcp"),
    ]


def test_from_columns_validates():
    with pytest.raises(ModelError, match="no such column"):
        columns.from_columns(NatBackendValue, {"address": [1]})
    with pytest.raises(ModelError, match="port"):
        columns.from_columns(NatBackendValue, {"addr": [1], "port": np.array([70000])})
    with pytest.raises(ModelError, match="rows"):
        columns.from_columns(NatBackendValue, {"addr": [1, 2], "port": [1]})


def test_to_dataframe_converts_big_endian_columns():
    ct = [CtValue.nat_rev("10.96.0.10", 80, CtLeg(bytes=100, packets=1), last_seen=5)]
    df = columns.to_dataframe(CtValue, codec.encode_many(ct))
    assert (
        df["orig_ip"].iloc[0] == int(ipaddress.IPv4Address("10.96.0.10"))
        and df["a_to_b.bytes"].iloc[0] == 100
    )
    assert df["type"].iloc[0] == CtType.NAT_REV and df["orig_ip"].dtype.byteorder in "=|<"
