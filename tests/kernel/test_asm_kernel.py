"""Programs built with the assembler, loaded into the real kernel and run with BPF_PROG_TEST_RUN."""

from __future__ import annotations

import struct

import pytest

from calico_ebpf.compiler.asm import FP, R0, R1, R2, R3, R4, R6, R7, Assembler, Helper
from calico_ebpf.errors import BPFError
from calico_ebpf.kernel import Map, MapType, Program, ProgType

TC_ACT_OK, TC_ACT_SHOT = 0, 2
# struct __sk_buff offsets (include/uapi/linux/bpf.h)
SKB_LEN, SKB_DATA, SKB_DATA_END = 0, 76, 80
ETH_P_IP_LE = 0x0008  # 0x0800 as a little-endian u16 load of the wire bytes sees it
ETH_P_EXPERIMENTAL = 0x88B5  # no header checks by test_run: any length >= 14 goes


def load(a: Assembler, **kw) -> Program:
    return Program.load(ProgType.SCHED_CLS, a.assemble(), name="cebpf_asm_test", **kw)


def eth(ethertype: int, payload: bytes = b"") -> bytes:
    return b"\x02" * 6 + b"\x04" * 6 + struct.pack("!H", ethertype) + payload


def test_return_constant():
    with load(Assembler().ret(5)) as prog:
        assert prog.test_run(bytes(64)).retval == 5


def test_ld_imm64_full_width_constant():
    a = Assembler().ld_imm64(R0, 0x7_0000_0001).rsh64(R0, 32).exit()
    with load(a) as prog:
        assert prog.test_run(bytes(64)).retval == 7


def test_read_skb_len_from_ctx():
    a = Assembler().ldxw(R0, R1, SKB_LEN).exit()
    with load(a) as prog:
        assert prog.test_run(bytes(64)).retval == 64
        assert prog.test_run(bytes(100)).retval == 100


def ethertype_program() -> Assembler:
    """1 for IPv4, 0 for others, TC_ACT_SHOT when shorter than Ethernet + IPv4 header (34 bytes)."""
    a = Assembler()
    a.ldxw(R2, R1, SKB_DATA).ldxw(R3, R1, SKB_DATA_END)
    a.check_bounds(R2, R3, 34, R4, "short")
    a.ldxh(R0, R2, 12)
    a.jne(R0, ETH_P_IP_LE, "other")
    a.ret(1)
    a.label("other").ret(0)
    a.label("short").ret(TC_ACT_SHOT)
    return a


@pytest.mark.parametrize("packet, expected", [
    (eth(0x0800, bytes(20)), 1),
    (eth(0x86DD, bytes(40)), 0),
    # The kernel's test_run refuses IP ethertypes with a short IP header, so the
    # short packet uses the local experimental ethertype.
    (eth(ETH_P_EXPERIMENTAL, bytes(19)), TC_ACT_SHOT),
])
def test_packet_compare_with_bounds_check(packet, expected):
    with load(ethertype_program()) as prog:
        assert prog.test_run(packet).retval == expected


def test_packet_read_without_bounds_check_is_refused():
    a = Assembler().ldxw(R2, R1, SKB_DATA).ldxh(R0, R2, 12).exit()
    with pytest.raises(BPFError) as info:
        load(a)
    assert "invalid access to packet" in info.value.verifier_log


def test_hash_map_lookup_through_map_fd_pseudo():
    # key = the u32 at packet offset 14 (right after the Ethernet header);
    # returns the value stored under it, or 99 when absent.
    with Map.create(MapType.HASH, 4, 4, 16, name="cebpf_asm_hash") as m:
        m.update(struct.pack("<I", 0x0A000001), struct.pack("<I", 41))
        a = Assembler()
        a.ldxw(R2, R1, SKB_DATA).ldxw(R3, R1, SKB_DATA_END)
        a.check_bounds(R2, R3, 18, R4, "miss")
        a.ldxw(R6, R2, 14)
        a.stxw(FP, -4, R6)                  # the key must live on the stack
        a.mov64(R2, FP).add64(R2, -4)
        a.ld_map_fd(R1, m.fd)
        a.call(Helper.map_lookup_elem)
        a.jeq(R0, 0, "miss")
        a.ldxw(R0, R0, 0).exit()
        a.label("miss").ret(99)
        with load(a) as prog:
            assert prog.test_run(eth(ETH_P_EXPERIMENTAL, struct.pack("<I", 0x0A000001))).retval == 41
            assert prog.test_run(eth(ETH_P_EXPERIMENTAL, struct.pack("<I", 0x0A000002))).retval == 99
            assert prog.test_run(eth(ETH_P_EXPERIMENTAL, b"\x01\x00\x00")).retval == 99  # 17 bytes: too short


def test_rule_blocks_jump_to_next_rule_on_mismatch():
    # A two-rule "policy" on the first payload byte (proto) and the u16 after it (port):
    # rule 1: proto 6 and port 80 -> allow; rule 2: proto 17 -> drop; default allow.
    a = Assembler()
    a.ldxw(R2, R1, SKB_DATA).ldxw(R3, R1, SKB_DATA_END)
    a.check_bounds(R2, R3, 17, R4, "default")
    a.ldxb(R6, R2, 14).ldxh(R7, R2, 15)
    with a.block("rule") as next_rule:
        a.jne32(R6, 6, next_rule)
        a.jne32(R7, 80, next_rule)
        a.ret(TC_ACT_OK)
    with a.block("rule") as next_rule:
        a.jne(R6, 17, next_rule)
        a.ret(TC_ACT_SHOT)
    a.label("default").ret(TC_ACT_OK)
    with load(a) as prog:
        def run(proto: int, port: int) -> int:
            return prog.test_run(eth(0x0800, struct.pack("<BH", proto, port) + bytes(20))).retval
        assert run(6, 80) == TC_ACT_OK
        assert run(17, 53) == TC_ACT_SHOT
        assert run(6, 81) == TC_ACT_OK      # rule 1 mismatch falls through rule 2 to default
        assert run(1, 0) == TC_ACT_OK


def test_atomic_add_to_array_value_by_direct_value_pseudo():
    with Map.create(MapType.ARRAY, 4, 8, 1, name="cebpf_asm_cnt") as m:
        a = Assembler()
        a.ld_map_value(R1, m.fd, 0)
        a.mov64(R2, 3)
        a.atomic_add("dw", R1, 0, R2)
        a.ret(TC_ACT_OK)
        with load(a) as prog:
            prog.test_run(bytes(64), repeat=5)
        assert struct.unpack("<Q", m.lookup(struct.pack("<I", 0)))[0] == 15
