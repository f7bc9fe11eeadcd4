"""Program: BPF_PROG_TEST_RUN results, identity, and verifier refusals with their log."""

from __future__ import annotations

import errno
import struct

import pytest

from calico_ebpf.errors import BPFError
from calico_ebpf.kernel import BPFObject, Program, ProgType

TC_ACT_SHOT = 2
XDP_DROP, XDP_PASS = 1, 2
SELFTEST_REWRITTEN = 42  # bpf/selftest.bpf.c
SKB_CTX_SIZE = 192  # sizeof(struct __sk_buff)
SKB_MARK_OFFSET = 8


@pytest.fixture
def selftest(selftest_o):
    with BPFObject.open(selftest_o) as obj:
        obj.load()
        yield obj


def packet(payload: bytes) -> bytes:
    return bytes(range(1, 15)) + payload  # 14-byte "Ethernet header" then payload


def test_tc_program_rewrites_and_returns_code(selftest):
    res = selftest.programs["selftest_rewrite"].test_run(packet(b"\x01\x02\x03"))
    assert res.retval == SELFTEST_REWRITTEN
    assert res.data_out == packet(b"\xab\x02\x03")
    assert res.ctx_out is None


def test_tc_program_short_packet_path(selftest):
    res = selftest.programs["selftest_rewrite"].test_run(packet(b""))
    assert res.retval == TC_ACT_SHOT
    assert res.data_out == packet(b"")


def test_xdp_program_verdicts(selftest):
    prog = selftest.programs["selftest_xdp"]
    assert prog.test_run(b"\xff" * 20).retval == XDP_PASS
    assert prog.test_run(b"\x02" + b"\xff" * 19).retval == XDP_DROP


def test_program_counts_into_map_and_repeat(selftest):
    prog, hits = selftest.programs["selftest_count"], selftest.maps["selftest_hits"]
    for _ in range(3):
        prog.test_run(bytes(60))
    res = prog.test_run(bytes(60), repeat=5)
    assert res.duration_ns >= 0
    assert struct.unpack("<Q", hits.lookup(struct.pack("<I", 60)))[0] == 8
    assert hits.lookup(struct.pack("<I", 61)) is None


def test_ctx_in_and_out(selftest):
    ctx = bytearray(SKB_CTX_SIZE)
    struct.pack_into("<I", ctx, SKB_MARK_OFFSET, 0x1234)
    res = selftest.programs["selftest_count"].test_run(bytes(60), ctx=bytes(ctx))
    assert res.ctx_out is not None and len(res.ctx_out) == SKB_CTX_SIZE
    assert struct.unpack_from("<I", res.ctx_out, SKB_MARK_OFFSET)[0] == 0x1234
    # The kernel copies back only the writable fields; the program saw the packet.
    assert struct.unpack("<Q", selftest.maps["selftest_hits"].lookup(struct.pack("<I", 60)))[0] == 1


def test_small_data_size_out_raises_enospc(selftest):
    with pytest.raises(BPFError) as ei:
        selftest.programs["selftest_rewrite"].test_run(packet(b"\1" * 40), data_size_out=10)
    assert ei.value.errno == errno.ENOSPC
    assert "selftest_rewrite" in ei.value.op


def test_bad_ctx_raises_bpferror(selftest):
    ctx = bytearray(SKB_CTX_SIZE)
    ctx[0] = 1  # __sk_buff.len is read-only for test_run: the kernel rejects a non-zero value
    with pytest.raises(BPFError) as ei:
        selftest.programs["selftest_count"].test_run(bytes(60), ctx=bytes(ctx))
    assert ei.value.errno == errno.EINVAL
    assert "prog_test_run selftest_count" in str(ei.value)


def test_info_and_reopen_by_id(selftest):
    prog = selftest.programs["selftest_xdp"]
    info = prog.info
    assert info.type == ProgType.XDP and info.name == "selftest_xdp"
    assert len(info.tag) == 16 and int(info.tag, 16) != 0
    with Program.from_id(info.id) as again:
        assert again.info.id == info.id
        assert again.test_run(b"\xff" * 20).retval == XDP_PASS


BAD_PROGRAM = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 4);
} bad_map SEC(".maps");

SEC("tc")
int good_one(struct __sk_buff *skb) { return 0; }

SEC("tc")
int bad_deref(struct __sk_buff *skb)
{
	__u32 k = 0;
	__u64 *v = bpf_map_lookup_elem(&bad_map, &k);
	return *v; /* no NULL check: the verifier must refuse this */
}
char LICENSE[] SEC("license") = "GPL";
"""


def test_verifier_refusal_carries_log(compile_bpf, fd_count):
    path = compile_bpf(BAD_PROGRAM, "bad")
    before = fd_count()
    obj = BPFObject.open(path)
    with pytest.raises(BPFError) as ei:
        obj.load()
    obj.close()
    err = ei.value
    assert err.errno == errno.EACCES
    assert "bad_deref" in err.op
    assert "invalid mem access" in err.verifier_log
    assert "map_value_or_null" in err.verifier_log
    assert "verifier log" in str(err)
    assert fd_count() == before


def test_autoload_off_skips_bad_program(compile_bpf):
    with BPFObject.open(compile_bpf(BAD_PROGRAM, "bad2")) as obj:
        obj.set_autoload("bad_deref", False)
        obj.load()
        assert set(obj.programs) == {"good_one"}
        assert obj.programs["good_one"].test_run(bytes(20)).retval == 0
