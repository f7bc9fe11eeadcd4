"""Program.load: raw instructions into the kernel, verifier refusals with the log, map-fd references."""

from __future__ import annotations

import errno
import struct

import pytest

from calico_ebpf.errors import BPFError
from calico_ebpf.kernel import Map, MapType, Program, ProgType

# Hand-encoded (struct bpf_insn, little endian) so this test does not depend on the assembler.
MOV64_R0_7 = bytes.fromhex("b700000007000000")  # r0 = 7
EXIT = bytes.fromhex("9500000000000000")
MOV64_R1_0 = bytes.fromhex("b701000000000000")  # r1 = 0


def test_load_and_run_constant_program():
    with Program.load(ProgType.SCHED_CLS, MOV64_R0_7 + EXIT, name="cebpf_const") as prog:
        assert prog.type == ProgType.SCHED_CLS
        assert prog.info.name == "cebpf_const"
        assert prog.test_run(bytes(64)).retval == 7


def test_name_is_made_kernel_safe():
    with Program.load(ProgType.SCHED_CLS, MOV64_R0_7 + EXIT, name="policy-ns/pod-a:long-name") as prog:
        assert prog.info.name == "policy_ns_pod_a"  # 15 characters, only [A-Za-z0-9_.]


def test_refusal_carries_the_verifier_log():
    # exit without setting r0: the verifier refuses, and says why.
    with pytest.raises(BPFError) as info:
        Program.load(ProgType.SCHED_CLS, EXIT, name="cebpf_bad")
    err = info.value
    assert err.errno == errno.EACCES
    assert "R0 !read_ok" in err.verifier_log
    assert "prog_load cebpf_bad" in str(err)
    assert "R0 !read_ok" in str(err)


def test_refusal_without_log_when_log_level_zero():
    with pytest.raises(BPFError) as info:
        Program.load(ProgType.SCHED_CLS, EXIT, log_level=0)
    assert info.value.verifier_log == ""


def test_long_log_keeps_its_tail():
    # 3000 harmless instructions then an unset-r0 exit: with a 4 KiB log
    # buffer only the tail survives, and the tail holds the reason.
    body = MOV64_R1_0 * 3000 + EXIT
    with pytest.raises(BPFError) as info:
        Program.load(ProgType.SCHED_CLS, body, log_level=2, log_size=4096)
    assert "R0 !read_ok" in info.value.verifier_log


@pytest.mark.parametrize("insns", [b"", b"\x95\x00\x00"])
def test_malformed_instruction_bytes(insns):
    with pytest.raises(BPFError) as info:
        Program.load(ProgType.SCHED_CLS, insns)
    assert info.value.errno == errno.EINVAL


def _lookup_program(map_ref: bytes) -> bytes:
    # *(u32 *)(r10 - 4) = 0; r2 = r10 - 4; r1 = <map>; call map_lookup_elem;
    # if r0 == 0 goto miss; r0 = *(u32 *)(r0 + 0); exit; miss: r0 = 99; exit
    return b"".join([
        bytes.fromhex("62 0a fc ff 00 00 00 00".replace(" ", "")),
        bytes.fromhex("bfa2000000000000"),
        bytes.fromhex("07020000fcffffff"),
        map_ref,
        bytes.fromhex("8500000001000000"),
        bytes.fromhex("1500020000000000"),
        bytes.fromhex("6100000000000000"),
        EXIT,
        bytes.fromhex("b700000063000000"),
        EXIT,
    ])


def test_map_referenced_by_fd_pseudo():
    with Map.create(MapType.HASH, 4, 4, 4, name="cebpf_ld_fd") as m:
        m.update(struct.pack("<I", 0), struct.pack("<I", 1234))
        ld = struct.pack("<BBhi", 0x18, 0x11, 0, m.fd) + bytes(8)  # src_reg=BPF_PSEUDO_MAP_FD
        with Program.load(ProgType.SCHED_CLS, _lookup_program(ld)) as prog:
            assert prog.test_run(bytes(64)).retval == 1234
            m.delete(struct.pack("<I", 0))
            assert prog.test_run(bytes(64)).retval == 99


def test_map_referenced_by_fd_array_index():
    with Map.create(MapType.HASH, 4, 4, 4, name="cebpf_ld_idx") as m:
        m.update(struct.pack("<I", 0), struct.pack("<I", 77))
        ld = struct.pack("<BBhi", 0x18, 0x51, 0, 0) + bytes(8)  # src_reg=BPF_PSEUDO_MAP_IDX, idx 0
        with Program.load(ProgType.SCHED_CLS, _lookup_program(ld), fd_array=[m.fd]) as prog:
            assert prog.test_run(bytes(64)).retval == 77


def test_closed_program_fd_is_released(fd_count):
    before = fd_count()
    prog = Program.load(ProgType.SCHED_CLS, MOV64_R0_7 + EXIT)
    assert fd_count() == before + 1
    prog.close()
    assert fd_count() == before
