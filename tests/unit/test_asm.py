"""The assembler: exact encodings, label resolution, listings, errors; llvm-mc as an independent encoder."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from calico_ebpf.compiler import asm
from calico_ebpf.compiler.asm import (
    FP,
    R0,
    R1,
    R2,
    R3,
    R10,
    AsmError,
    Assembler,
    Helper,
    Insn,
    Reg,
    decode,
)


def one(build) -> bytes:
    a = Assembler()
    build(a)
    return a.assemble()


# Expected bytes computed by hand from the ISA: opcode, dst | src << 4, off (le16), imm (le32).
@pytest.mark.parametrize("build, expected", [
    (lambda a: a.mov64(R0, 1), "b7 00 0000 01000000"),
    (lambda a: a.mov64(R1, R10), "bf a1 0000 00000000"),
    (lambda a: a.mov32(R2, -1), "b4 02 0000 ffffffff"),
    (lambda a: a.mov32(R2, 0xFFFFFFFF), "b4 02 0000 ffffffff"),
    (lambda a: a.add64(R2, -4), "07 02 0000 fcffffff"),
    (lambda a: a.sub32(R3, R1), "1c 13 0000 00000000"),
    (lambda a: a.mod64(R1, 10), "97 01 0000 0a000000"),
    (lambda a: a.mod32(R1, R2), "9c 21 0000 00000000"),
    (lambda a: a.arsh64(R1, 3), "c7 01 0000 03000000"),
    (lambda a: a.neg64(R1), "87 01 0000 00000000"),
    (lambda a: a.endian(R2, 16), "dc 02 0000 10000000"),
    (lambda a: a.endian(R2, 32, big=False), "d4 02 0000 20000000"),
    (lambda a: a.exit(), "95 00 0000 00000000"),
    (lambda a: a.call(Helper.map_lookup_elem), "85 00 0000 01000000"),
    (lambda a: a.call("bpf_tail_call"), "85 00 0000 0c000000"),
    (lambda a: a.call(26), "85 00 0000 1a000000"),
    (lambda a: a.ldxw(R2, R1, 76), "61 12 4c00 00000000"),
    (lambda a: a.ldxb(R0, R2, 23), "71 20 1700 00000000"),
    (lambda a: a.ldxh(R0, R2, -2), "69 20 feff 00000000"),
    (lambda a: a.ldxdw(R0, FP, -8), "79 a0 f8ff 00000000"),
    (lambda a: a.stxw(FP, -4, R1), "63 1a fcff 00000000"),
    (lambda a: a.stxdw(FP, -16, R3), "7b 3a f0ff 00000000"),
    (lambda a: a.stw(FP, -4, 5), "62 0a fcff 05000000"),
    (lambda a: a.stb(FP, -1, 255), "72 0a ffff ff000000"),
    (lambda a: a.atomic_add("dw", R1, 0, R2), "db 21 0000 00000000"),
    (lambda a: a.atomic_add("w", R1, 8, R2), "c3 21 0800 00000000"),
    (lambda a: a.ld_imm64(R1, 0x1234567890), "18 01 0000 90785634 00 00 0000 12000000"),
    (lambda a: a.ld_imm64(R1, -1), "18 01 0000 ffffffff 00 00 0000 ffffffff"),
    (lambda a: a.ld_imm64(R1, 0xFFFFFFFFFFFFFFFF), "18 01 0000 ffffffff 00 00 0000 ffffffff"),
    (lambda a: a.ld_map_fd(R1, 5), "18 11 0000 05000000 00 00 0000 00000000"),
    (lambda a: a.ld_map_idx(R1, 2), "18 51 0000 02000000 00 00 0000 00000000"),
    (lambda a: a.ld_map_value(R1, 5, 8), "18 21 0000 05000000 00 00 0000 08000000"),
    (lambda a: a.jset(R1, 4, "x").label("x"), "45 01 0000 04000000"),
    (lambda a: a.jset32(R1, R2, "x").label("x"), "4e 21 0000 00000000"),
])
def test_exact_encoding(build, expected):
    assert one(build) == bytes.fromhex(expected.replace(" ", ""))


def test_forward_and_backward_labels_count_slots():
    a = Assembler()
    a.label("top")
    a.jeq(R1, 0, "end")        # slot 0 -> end at slot 5: off +4
    a.ld_imm64(R2, 1)          # slots 1-2
    a.jump_to("top")           # slot 3 -> top at 0: off -4
    a.jne32(R1, R2, "end")     # slot 4: off 0
    a.label("end")
    a.ret(0)                   # slots 5-6
    insns = a.resolve()
    assert [i.off for i in insns if i.target is None and i.opcode & 0x07 in (5, 6)][:3] == [4, -4, 0]
    code = a.assemble()
    assert code[0:8] == bytes.fromhex("15 01 0400 00000000".replace(" ", ""))
    assert code[24:32] == bytes.fromhex("05 00 fcff 00000000".replace(" ", ""))
    assert code[32:40] == bytes.fromhex("5e 21 0000 00000000".replace(" ", ""))
    assert len(a) == 7 and len(code) == 56


def test_listing_shows_slots_labels_and_symbols():
    a = Assembler()
    a.ldxw(R2, R1, 0).jgt(R2, 100, "big").ret(0)
    a.label("big").ld_map_fd(R1, 7).call("map_lookup_elem").ret(2)
    assert str(a) == "\n".join([
        "   0: r2 = *(u32 *)(r1 + 0)",
        "   1: if r2 > 100 goto big",
        "   2: r0 = 0",
        "   3: exit",
        "big:",
        "   4: r1 = map[fd:7]",
        "   6: call map_lookup_elem#1",
        "   7: r0 = 2",
        "   8: exit",
    ])
    assert [str(i) for i in a.resolve()][1] == "if r2 > 100 goto +2"


def test_block_places_next_rule_label_after_the_block():
    a = Assembler()
    with a.block("rule") as first:
        a.jne(R1, 6, first).ret(1)
    with a.block("rule") as second:
        a.jne(R1, 17, second).ret(2)
    a.ret(0)
    assert first != second
    assert a.labels == {first: 3, second: 6}
    assert a.resolve()[0].off == 2


def test_instructions_are_plain_comparable_data():
    a, b = Assembler().mov64(R0, 1).exit(), Assembler().mov64(R0, 1).exit()
    assert a.insns == b.insns
    assert a.insns[0] == Insn(0xB7, 0, 0, 0, 1)


# --- errors ------------------------------------------------------------------

def test_undefined_label():
    a = Assembler().jeq(R1, 0, "nowhere").ret(0)
    with pytest.raises(AsmError, match="undefined label 'nowhere'"):
        a.assemble()


def test_duplicate_label():
    with pytest.raises(AsmError, match="defined twice"):
        Assembler().label("x").ret(0).label("x")


def test_jump_offset_out_of_range():
    a = Assembler().jump_to("far")
    for _ in range(40000):
        a.mov64(R0, 0)
    a.label("far").exit()
    with pytest.raises(AsmError, match="does not fit in 16 bits"):
        a.assemble()


@pytest.mark.parametrize("build, message", [
    (lambda a: a.mov64(1, 2), "must be a Reg"),
    (lambda a: a.mov64(R10, 0), "read-only frame pointer"),
    (lambda a: a.ldxw(R10, R1, 0), "read-only frame pointer"),
    (lambda a: a.mov64(R0, 1 << 32), "does not fit in 32 bits"),
    (lambda a: a.mov64(R0, True), "must be an int"),
    (lambda a: a.ldxw(R0, R1, 1 << 15), "signed 16-bit"),
    (lambda a: a.ldx("q", R0, R1, 0), "size must be"),
    (lambda a: a.call("no_such_helper"), "unknown helper"),
    (lambda a: a.endian(R1, 8), "16, 32 or 64"),
    (lambda a: a.jmp("jfoo", R1, 0, "x"), "unknown jump"),
    (lambda a: a.jeq(R1, 0, 3), "label name"),
    (lambda a: a.atomic_add("b", R1, 0, R2), "w or dw"),
    (lambda a: a.ld_imm64(R1, 1 << 64), "64 bits"),
    (lambda a: a.ld_map_fd(R1, -1), "map fd"),
])
def test_bad_operands(build, message):
    with pytest.raises(AsmError, match=message):
        build(Assembler())


def test_asm_error_is_a_value_error():
    assert issubclass(AsmError, ValueError)


# --- decode and the helper table ---------------------------------------------

regs = st.sampled_from(list(Reg)[:10])  # no R10 as a destination
operand = st.one_of(regs, st.integers(-(1 << 31), (1 << 31) - 1))


@st.composite
def programs(draw) -> Assembler:
    a = Assembler()
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(["alu", "jmp", "ldx", "stx", "imm64", "call"]))
        if kind == "alu":
            a.alu(draw(st.sampled_from(list(asm._ALU_SYM))), draw(regs), draw(operand), wide=draw(st.booleans()))
        elif kind == "jmp":
            a.jmp(draw(st.sampled_from(list(asm._JMP_SYM))), draw(regs), draw(operand), "end", wide=draw(st.booleans()))
        elif kind == "ldx":
            a.ldx(draw(st.sampled_from(list(asm.Size))), draw(regs), draw(regs), draw(st.integers(-512, 512)))
        elif kind == "stx":
            a.stx(draw(st.sampled_from(list(asm.Size))), draw(regs), draw(st.integers(-512, 512)), draw(regs))
        elif kind == "imm64":
            a.ld_imm64(draw(regs), draw(st.integers(-(1 << 63), (1 << 63) - 1)))
        else:
            a.call(draw(st.sampled_from(list(Helper))))
    a.label("end").exit()
    return a


@given(programs())
def test_decode_inverts_assemble(a):
    code = a.assemble()
    assert decode(code) == a.resolve()
    assert b"".join(i.encode() for i in decode(code)) == code


def test_decode_rejects_partial_instructions():
    with pytest.raises(AsmError):
        decode(b"\x00" * 12)
    with pytest.raises(AsmError, match="LD_IMM64"):
        decode(bytes.fromhex("1801000001000000"))


def test_helper_numbers_match_kernel_uapi_header():
    header = Path("/usr/include/linux/bpf.h").read_text()
    # Older headers list FN(name) in id order; newer ones spell FN(name, id, ...).
    mapper = header[header.index("#define ___BPF_FUNC_MAPPER") if "___BPF_FUNC_MAPPER" in header
                    else header.index("#define __BPF_FUNC_MAPPER"):]
    names = re.findall(r"FN\((\w+)(?:,\s*(\d+))?", mapper.split("\n\n")[0])
    ids = {name: int(num) if num else index for index, (name, num) in enumerate(names)}
    for helper in Helper:
        assert ids[helper.name] == helper.value, helper.name


# --- llvm-mc as an independent encoder -----------------------------------------

def _llvm_mc() -> str:
    for name in ("llvm-mc", "llvm-mc-14"):
        if shutil.which(name):
            return name
    pytest.fail("llvm-mc is missing: install llvm (tools/install_system_deps.sh does)", pytrace=False)


def _every_llvm_spellable_instruction() -> Assembler:
    # Our listing syntax is llvm's BPF assembly syntax. LLVM 14 cannot parse
    # MOD, JSET, BPF_ST or calls by name; those have hand-computed cases above.
    a = Assembler()
    for op in asm._ALU_SYM:
        if op == asm.Op.MOD:
            continue
        for wide in (True, False):
            for src in (R3, -7, 0x7FFFFFFF):
                a.alu(op, R1, src, wide=wide)
    for op in asm._JMP_SYM:
        if op == asm.JOp.JSET:
            continue
        for wide in (True, False):
            for src in (R3, -7):
                a.jmp(op, R1, src, "next", wide=wide)
    a.label("next")
    for size in asm.Size:
        a.ldx(size, R2, R1, -3).stx(size, FP, 16, R3)
    a.atomic_add("w", R1, 4, R2).atomic_add("dw", R1, 8, R2)
    a.neg64(R1).neg32(R1).endian(R2, 16).endian(R2, 32).endian(R2, 64, big=False)
    a.ld_imm64(R1, -1).ld_imm64(R1, 0x123456789A)
    a.jump_to("next").exit()
    return a


def test_encoding_matches_llvm_mc(tmp_path):
    a = _every_llvm_spellable_instruction()
    source = "\n".join(str(i) for i in a.resolve()) + "\n"
    (tmp_path / "p.s").write_text(source)
    mc = subprocess.run([_llvm_mc(), "-triple", "bpfel", "-mcpu=v3", "-filetype=obj", str(tmp_path / "p.s"),
                         "-o", str(tmp_path / "p.o")], capture_output=True, text=True, check=False)
    assert mc.returncode == 0, mc.stderr
    objcopy = shutil.which("llvm-objcopy") or shutil.which("llvm-objcopy-14")
    assert objcopy, "llvm-objcopy is missing"
    subprocess.run([objcopy, "-O", "binary", "--only-section=.text", str(tmp_path / "p.o"),
                    str(tmp_path / "p.bin")], check=True)
    theirs = (tmp_path / "p.bin").read_bytes()
    ours = a.assemble()
    assert len(ours) == len(theirs)
    for slot in range(0, len(ours), 8):
        assert ours[slot:slot + 8] == theirs[slot:slot + 8], f"slot {slot // 8}"
