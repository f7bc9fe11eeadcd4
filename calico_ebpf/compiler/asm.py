"""A BPF assembler: instructions as data, symbolic labels, bytes for ``Program.load``.

Instructions are frozen :class:`Insn` values, so a generated program can be
printed, compared and unit-tested without a kernel. An :class:`Assembler`
collects them with labels; :meth:`Assembler.assemble` resolves every jump to
a label into a slot offset and encodes 8-byte little-endian instructions (16
for ``LD_IMM64``) in the kernel's ``struct bpf_insn`` layout.

Example (the listing is what ``print(a)`` shows)::

    a = Assembler()
    a.ldxw(R2, R1, 0)                   # r2 = skb->len
    a.jgt(R2, 100, "big")
    a.ret(0)
    a.label("big").ret(2)
    prog = Program.load(ProgType.SCHED_CLS, a.assemble())

       0: r2 = *(u32 *)(r1 + 0)
       1: if r2 > 100 goto big
       2: r0 = 0
       3: exit
    big:
       4: r0 = 2
       5: exit

The listing uses LLVM's BPF assembler syntax, so (calls and labels aside)
it can be fed to ``llvm-mc -triple bpfel`` -- the unit tests do that to check
the encoder against an independent one.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace

from calico_ebpf.errors import CalicoEBPFError

__all__ = [
    "FP",
    "PSEUDO_MAP_FD",
    "PSEUDO_MAP_IDX",
    "PSEUDO_MAP_VALUE",
    "R0",
    "R1",
    "R2",
    "R3",
    "R4",
    "R5",
    "R6",
    "R7",
    "R8",
    "R9",
    "R10",
    "AsmError",
    "Assembler",
    "Helper",
    "Insn",
    "Op",
    "Reg",
    "Size",
    "decode",
]


class AsmError(CalicoEBPFError, ValueError):
    """A program that cannot be assembled: bad register, undefined label, value out of range."""


class Reg(enum.IntEnum):
    """The eleven BPF registers; R10 is the read-only frame pointer."""

    R0 = 0
    R1 = 1
    R2 = 2
    R3 = 3
    R4 = 4
    R5 = 5
    R6 = 6
    R7 = 7
    R8 = 8
    R9 = 9
    R10 = 10


R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = Reg
FP = R10


class Cls(enum.IntEnum):
    """Instruction classes (low 3 bits of the opcode)."""

    LD = 0x00
    LDX = 0x01
    ST = 0x02
    STX = 0x03
    ALU = 0x04
    JMP = 0x05
    JMP32 = 0x06
    ALU64 = 0x07


class Size(enum.IntEnum):
    """Load/store widths; the value is the opcode bits, ``.nbytes`` the width."""

    W = 0x00
    H = 0x08
    B = 0x10
    DW = 0x18

    @property
    def nbytes(self) -> int:
        return {Size.B: 1, Size.H: 2, Size.W: 4, Size.DW: 8}[self]

    @property
    def ctype(self) -> str:
        return f"u{self.nbytes * 8}"


MODE_IMM = 0x00
MODE_MEM = 0x60
MODE_ATOMIC = 0xC0
SRC_K = 0x00  # operand is the immediate
SRC_X = 0x08  # operand is the src register


class Op(enum.IntEnum):
    """ALU and jump operations (high 4 bits of the opcode)."""

    # ALU
    ADD = 0x00
    SUB = 0x10
    MUL = 0x20
    DIV = 0x30
    OR = 0x40
    AND = 0x50
    LSH = 0x60
    RSH = 0x70
    NEG = 0x80
    MOD = 0x90
    XOR = 0xA0
    MOV = 0xB0
    ARSH = 0xC0
    END = 0xD0


class JOp(enum.IntEnum):
    """Jump operations (high 4 bits of a JMP/JMP32 opcode)."""

    JA = 0x00
    JEQ = 0x10
    JGT = 0x20
    JGE = 0x30
    JSET = 0x40
    JNE = 0x50
    JSGT = 0x60
    JSGE = 0x70
    CALL = 0x80
    EXIT = 0x90
    JLT = 0xA0
    JLE = 0xB0
    JSLT = 0xC0
    JSLE = 0xD0


# LD_IMM64 src_reg values that make the kernel read the immediate as a map reference.
PSEUDO_MAP_FD = 1     # imm = map fd
PSEUDO_MAP_VALUE = 2  # imm = map fd, second imm = offset into value 0 (array maps)
PSEUDO_MAP_IDX = 5    # imm = index into the load's fd_array

ATOMIC_ADD = 0x00
ATOMIC_FETCH = 0x01


class Helper(enum.IntEnum):
    """Numbers of the BPF helpers programs here call (``enum bpf_func_id``)."""

    map_lookup_elem = 1
    map_update_elem = 2
    map_delete_elem = 3
    ktime_get_ns = 5
    trace_printk = 6
    get_prandom_u32 = 7
    get_smp_processor_id = 8
    skb_store_bytes = 9
    l3_csum_replace = 10
    l4_csum_replace = 11
    tail_call = 12
    redirect = 23
    perf_event_output = 25
    skb_load_bytes = 26
    csum_diff = 28
    skb_change_proto = 31
    skb_adjust_room = 50
    redirect_map = 51
    fib_lookup = 69
    redirect_neigh = 152
    redirect_peer = 155


_ALU_SYM = {
    Op.ADD: "+=", Op.SUB: "-=", Op.MUL: "*=", Op.DIV: "/=", Op.OR: "|=", Op.AND: "&=",
    Op.LSH: "<<=", Op.RSH: ">>=", Op.MOD: "%=", Op.XOR: "^=", Op.MOV: "=", Op.ARSH: "s>>=",
}
_JMP_SYM = {
    JOp.JEQ: "==", JOp.JGT: ">", JOp.JGE: ">=", JOp.JSET: "&", JOp.JNE: "!=", JOp.JSGT: "s>",
    JOp.JSGE: "s>=", JOp.JLT: "<", JOp.JLE: "<=", JOp.JSLT: "s<", JOp.JSLE: "s<=",
}
_INSN = struct.Struct("<BBhi")


@dataclass(frozen=True)
class Insn:
    """One instruction. ``target`` names a label a jump goes to until resolved into ``off``.

    ``LD_IMM64`` is one Insn holding the 64-bit ``imm``; it fills two slots.
    """

    opcode: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0
    target: str | None = None

    @property
    def cls(self) -> Cls:
        return Cls(self.opcode & 0x07)

    @property
    def is_wide(self) -> bool:
        """True for ``LD_IMM64``, which takes two 8-byte slots."""
        return self.opcode == (Cls.LD | MODE_IMM | Size.DW)

    @property
    def slots(self) -> int:
        return 2 if self.is_wide else 1

    def encode(self) -> bytes:
        """The kernel encoding: 8 bytes, or 16 for ``LD_IMM64``. Jumps must be resolved."""
        if self.target is not None:
            raise AsmError(f"{self}: jump to label {self.target!r} is not resolved")
        regs = (self.src << 4) | self.dst
        if self.is_wide:
            lo, hi = self.imm & 0xFFFFFFFF, (self.imm >> 32) & 0xFFFFFFFF
            return (_INSN.pack(self.opcode, regs, self.off, _s32(lo))
                    + _INSN.pack(0, 0, 0, _s32(hi)))
        return _INSN.pack(self.opcode, regs, self.off, _s32(self.imm & 0xFFFFFFFF))

    def __str__(self) -> str:
        return _format(self)


def _s32(u: int) -> int:
    return u - (1 << 32) if u >= 1 << 31 else u


def _reg_name(r: int, wide: bool) -> str:
    return f"{'r' if wide else 'w'}{r}"


def _mem(size: int, base: int, off: int) -> str:
    sign = "-" if off < 0 else "+"
    return f"*({Size(size).ctype} *)(r{base} {sign} {abs(off)})"


def _format(i: Insn) -> str:
    cls = i.cls
    code = i.opcode
    if cls in (Cls.ALU, Cls.ALU64):
        wide = cls == Cls.ALU64
        op = Op(code & 0xF0)
        d = _reg_name(i.dst, wide)
        if op == Op.NEG:
            return f"{d} = -{d}"
        if op == Op.END:
            kind = "be" if code & SRC_X else "le"
            r = f"r{i.dst}"  # swaps are ALU-class but print as r like llvm
            return f"{r} = {kind}{i.imm} {r}"
        rhs = _reg_name(i.src, wide) if code & SRC_X else str(i.imm)
        return f"{d} {_ALU_SYM[op]} {rhs}"
    if cls in (Cls.JMP, Cls.JMP32):
        op = JOp(code & 0xF0)
        where = i.target if i.target is not None else f"{i.off:+d}"
        if op == JOp.EXIT:
            return "exit"
        if op == JOp.CALL:
            try:
                return f"call {Helper(i.imm).name}#{i.imm}"
            except ValueError:
                return f"call #{i.imm}"
        if op == JOp.JA:
            return f"goto {where}"
        wide = cls == Cls.JMP
        rhs = _reg_name(i.src, wide) if code & SRC_X else str(i.imm)
        return f"if {_reg_name(i.dst, wide)} {_JMP_SYM[op]} {rhs} goto {where}"
    size = code & 0x18
    if cls == Cls.LDX:
        return f"r{i.dst} = {_mem(size, i.src, i.off)}"
    if cls == Cls.STX and code & 0xE0 == MODE_ATOMIC:
        fetch = " (fetch)" if i.imm & ATOMIC_FETCH else ""
        return f"lock {_mem(size, i.dst, i.off)} += {_reg_name(i.src, size == Size.DW)}{fetch}"
    if cls == Cls.STX:
        return f"{_mem(size, i.dst, i.off)} = r{i.src}"
    if cls == Cls.ST:
        return f"{_mem(size, i.dst, i.off)} = {i.imm}"
    if i.is_wide:
        if i.src == PSEUDO_MAP_FD:
            return f"r{i.dst} = map[fd:{i.imm & 0xFFFFFFFF}]"
        if i.src == PSEUDO_MAP_IDX:
            return f"r{i.dst} = map[idx:{i.imm & 0xFFFFFFFF}]"
        if i.src == PSEUDO_MAP_VALUE:
            return f"r{i.dst} = map_value[fd:{i.imm & 0xFFFFFFFF}] + {i.imm >> 32}"
        return f"r{i.dst} = {i.imm} ll"
    return f"<opcode {code:#04x}>"


def decode(code: bytes) -> list[Insn]:
    """Instructions from their kernel encoding (the inverse of :meth:`Assembler.assemble`)."""
    if len(code) % 8:
        raise AsmError(f"{len(code)} bytes is not a whole number of instructions")
    out: list[Insn] = []
    pos = 0
    while pos < len(code):
        opcode, regs, off, imm = _INSN.unpack_from(code, pos)
        insn = Insn(opcode, regs & 0xF, regs >> 4, off, imm)
        if insn.is_wide:
            if pos + 16 > len(code):
                raise AsmError(f"slot {pos // 8}: LD_IMM64 without its second half")
            hi = _INSN.unpack_from(code, pos + 8)[3]
            insn = replace(insn, imm=((hi & 0xFFFFFFFF) << 32) | (imm & 0xFFFFFFFF))
            if insn.src == 0 and insn.imm >= 1 << 63:
                insn = replace(insn, imm=insn.imm - (1 << 64))
        out.append(insn)
        pos += 8 * insn.slots
    return out


def _reg(r: object, what: str = "register") -> int:
    if not isinstance(r, Reg):
        raise AsmError(f"{what} must be a Reg (R0..R10), got {r!r}")
    return int(r)


def _dst(r: object) -> int:
    reg = _reg(r, "destination register")
    if reg == Reg.R10:
        raise AsmError("r10 is the read-only frame pointer; it cannot be a destination")
    return reg


def _imm32(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or isinstance(v, Reg):
        raise AsmError(f"immediate must be an int, got {v!r}")
    # Unsigned spellings (0xffffffff) are accepted: the kernel sees 32 bits either way.
    if not -(1 << 31) <= v < (1 << 32):
        raise AsmError(f"immediate {v} does not fit in 32 bits")
    return _s32(v & 0xFFFFFFFF)


def _off16(v: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not -(1 << 15) <= v < (1 << 15):
        raise AsmError(f"offset {v!r} does not fit in a signed 16-bit field")
    return v


def _size(size: Size | str) -> Size:
    if isinstance(size, Size):
        return size
    try:
        return Size[str(size).upper()]
    except KeyError:
        raise AsmError(f"size must be one of b, h, w, dw; got {size!r}") from None


def _jop(op: JOp | str) -> JOp:
    if isinstance(op, JOp):
        return op
    try:
        return JOp["J" + str(op).upper().removeprefix("J")]
    except KeyError:
        raise AsmError(f"unknown jump operation {op!r}") from None


def _aop(op: Op | str) -> Op:
    if isinstance(op, Op):
        return op
    try:
        return Op[str(op).upper()]
    except KeyError:
        raise AsmError(f"unknown ALU operation {op!r}") from None


class Assembler:
    """Builds a program one instruction at a time; labels name jump targets.

    Operands: a :class:`Reg` is a register, a plain ``int`` an immediate.
    Every emitting method returns the assembler, so calls can be chained.
    """

    def __init__(self) -> None:
        self.insns: list[Insn] = []
        # label -> index into insns (not slots: LD_IMM64 is one Insn, two slots)
        self.labels: dict[str, int] = {}
        self._fresh = itertools.count()

    # -- structure --------------------------------------------------------
    def emit(self, insn: Insn) -> Assembler:
        self.insns.append(insn)
        return self

    def label(self, name: str) -> Assembler:
        """Place ``name`` at the next instruction."""
        if name in self.labels:
            raise AsmError(f"label {name!r} is defined twice")
        self.labels[name] = len(self.insns)
        return self

    def fresh_label(self, prefix: str = "L") -> str:
        """A label name not used before in this assembler."""
        while True:
            name = f"{prefix}_{next(self._fresh)}"
            if name not in self.labels:
                return name

    @contextlib.contextmanager
    def block(self, prefix: str = "next") -> Iterator[str]:
        """A rule-shaped block: yields a label placed right after the block.

        Jumping to it skips the rest of the block ("next rule on mismatch")::

            with a.block("rule") as next_rule:
                a.jne(R2, 6, next_rule)       # not TCP: try the next rule
                a.ret(TC_ACT_SHOT)
        """
        name = self.fresh_label(prefix)
        yield name
        self.label(name)

    # -- ALU --------------------------------------------------------------
    def alu(self, op: Op | str, dst: Reg, src: Reg | int, *, wide: bool = True) -> Assembler:
        """``dst op= src`` on 64 (``wide``) or 32 bits; ``src`` a Reg or an immediate."""
        cls = Cls.ALU64 if wide else Cls.ALU
        op = _aop(op)
        if op in (Op.NEG, Op.END):
            raise AsmError(f"{op.name} has its own method")
        if isinstance(src, Reg):
            return self.emit(Insn(cls | op | SRC_X, _dst(dst), int(src)))
        return self.emit(Insn(cls | op | SRC_K, _dst(dst), 0, 0, _imm32(src)))

    def neg64(self, dst: Reg) -> Assembler:
        return self.emit(Insn(Cls.ALU64 | Op.NEG, _dst(dst)))

    def neg32(self, dst: Reg) -> Assembler:
        return self.emit(Insn(Cls.ALU | Op.NEG, _dst(dst)))

    def endian(self, dst: Reg, bits: int, big: bool = True) -> Assembler:
        """Convert the low ``bits`` (16/32/64) of ``dst`` to big (network) or little endian."""
        if bits not in (16, 32, 64):
            raise AsmError(f"byte swap width must be 16, 32 or 64, got {bits!r}")
        return self.emit(Insn(Cls.ALU | Op.END | (SRC_X if big else SRC_K), _dst(dst), 0, 0, bits))

    # -- jumps ------------------------------------------------------------
    def jmp(self, op: JOp | str, dst: Reg, src: Reg | int, target: str, *,
            wide: bool = True) -> Assembler:
        """``if dst op src goto target`` comparing 64 (``wide``) or 32 bits."""
        op = _jop(op)
        if op in (JOp.JA, JOp.CALL, JOp.EXIT):
            raise AsmError(f"{op.name} is not a conditional jump")
        cls = Cls.JMP if wide else Cls.JMP32
        if not isinstance(target, str):
            raise AsmError(f"jump target must be a label name, got {target!r}")
        d = _reg(dst)
        if isinstance(src, Reg):
            return self.emit(Insn(cls | op | SRC_X, d, int(src), target=target))
        return self.emit(Insn(cls | op | SRC_K, d, 0, 0, _imm32(src), target=target))

    def jump_to(self, target: str) -> Assembler:
        """Unconditional jump (``goto target``)."""
        if not isinstance(target, str):
            raise AsmError(f"jump target must be a label name, got {target!r}")
        return self.emit(Insn(Cls.JMP | JOp.JA, target=target))

    ja = jump_to

    def call(self, helper: Helper | int | str) -> Assembler:
        """Call a helper by :class:`Helper`, number, or name (``"map_lookup_elem"``)."""
        if isinstance(helper, str):
            try:
                helper = Helper[helper.removeprefix("bpf_")]
            except KeyError:
                raise AsmError(f"unknown helper {helper!r}; pass its number") from None
        return self.emit(Insn(Cls.JMP | JOp.CALL, 0, 0, 0, _imm32(int(helper))))

    def exit(self) -> Assembler:
        return self.emit(Insn(Cls.JMP | JOp.EXIT))

    def ret(self, value: int) -> Assembler:
        """``r0 = value; exit``."""
        return self.mov64(R0, value).exit()

    # -- memory -----------------------------------------------------------
    def ldx(self, size: Size | str, dst: Reg, src: Reg, off: int = 0) -> Assembler:
        """``dst = *(size *)(src + off)``."""
        s = _size(size)
        return self.emit(Insn(Cls.LDX | MODE_MEM | s, _dst(dst), _reg(src), _off16(off)))

    def stx(self, size: Size | str, dst: Reg, off: int, src: Reg) -> Assembler:
        """``*(size *)(dst + off) = src``."""
        s = _size(size)
        return self.emit(Insn(Cls.STX | MODE_MEM | s, _reg(dst), _reg(src), _off16(off)))

    def st(self, size: Size | str, dst: Reg, off: int, imm: int) -> Assembler:
        """``*(size *)(dst + off) = imm``."""
        s = _size(size)
        return self.emit(Insn(Cls.ST | MODE_MEM | s, _reg(dst), 0, _off16(off), _imm32(imm)))

    def atomic_add(self, size: Size | str, dst: Reg, off: int, src: Reg) -> Assembler:
        """``lock *(size *)(dst + off) += src`` (32 or 64 bits)."""
        s = _size(size)
        if s not in (Size.W, Size.DW):
            raise AsmError("atomic add works on w or dw only")
        return self.emit(Insn(Cls.STX | MODE_ATOMIC | s, _reg(dst), _reg(src), _off16(off), ATOMIC_ADD))

    def ld_imm64(self, dst: Reg, value: int) -> Assembler:
        """``dst = value`` for a full 64-bit constant (two slots)."""
        if isinstance(value, bool) or not isinstance(value, int) or not -(1 << 63) <= value < (1 << 64):
            raise AsmError(f"ld_imm64 value {value!r} does not fit in 64 bits")
        if value >= 1 << 63:
            value -= 1 << 64
        return self.emit(Insn(Cls.LD | MODE_IMM | Size.DW, _dst(dst), 0, 0, value))

    def ld_map_fd(self, dst: Reg, fd: int) -> Assembler:
        """``dst = &map`` for the map open as ``fd`` (``BPF_PSEUDO_MAP_FD``)."""
        return self._ld_pseudo(dst, PSEUDO_MAP_FD, fd, "map fd")

    def ld_map_idx(self, dst: Reg, index: int) -> Assembler:
        """``dst = &map`` for ``fd_array[index]`` of the load (``BPF_PSEUDO_MAP_IDX``)."""
        return self._ld_pseudo(dst, PSEUDO_MAP_IDX, index, "map index")

    def ld_map_value(self, dst: Reg, fd: int, offset: int = 0) -> Assembler:
        """``dst = &value[0] + offset`` of the array map open as ``fd`` (``BPF_PSEUDO_MAP_VALUE``)."""
        if not 0 <= offset < (1 << 31):
            raise AsmError(f"map value offset {offset!r} out of range")
        self._ld_pseudo(dst, PSEUDO_MAP_VALUE, fd, "map fd")
        last = self.insns[-1]
        self.insns[-1] = replace(last, imm=last.imm | (offset << 32))
        return self

    def _ld_pseudo(self, dst: Reg, kind: int, value: int, what: str) -> Assembler:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < (1 << 31):
            raise AsmError(f"{what} {value!r} is not a valid non-negative 32-bit value")
        return self.emit(Insn(Cls.LD | MODE_IMM | Size.DW, _dst(dst), kind, 0, value))

    # -- packet access ----------------------------------------------------
    def check_bounds(self, data: Reg, data_end: Reg, nbytes: int, tmp: Reg,
                     on_short: str) -> Assembler:
        """Prove ``nbytes`` bytes are readable at ``data`` or jump to ``on_short``.

        The verifier only allows packet reads it has seen checked against
        ``data_end``: ``tmp = data + nbytes; if tmp > data_end goto on_short``.
        """
        return self.mov64(tmp, data).add64(tmp, nbytes).jgt(tmp, data_end, on_short)

    # -- output -----------------------------------------------------------
    def resolve(self) -> list[Insn]:
        """The instructions with every label turned into a slot offset."""
        starts = list(itertools.accumulate((i.slots for i in self.insns), initial=0))
        out = []
        for index, insn in enumerate(self.insns):
            if insn.target is None:
                out.append(insn)
                continue
            if insn.target not in self.labels:
                raise AsmError(f"instruction {index} ({insn}): undefined label {insn.target!r}")
            off = starts[self.labels[insn.target]] - (starts[index] + 1)
            if not -(1 << 15) <= off < (1 << 15):
                raise AsmError(f"instruction {index} ({insn}): jump of {off} slots to "
                               f"{insn.target!r} does not fit in 16 bits")
            out.append(replace(insn, off=off, target=None))
        return out

    def assemble(self) -> bytes:
        """The kernel encoding of the whole program, ready for ``Program.load``."""
        return b"".join(i.encode() for i in self.resolve())

    def listing(self) -> str:
        """One line per instruction with its slot number, labels on their own lines."""
        by_index: dict[int, list[str]] = {}
        for name, index in self.labels.items():
            by_index.setdefault(index, []).append(name)
        lines = []
        slot = 0
        for index, insn in enumerate(self.insns):
            lines.extend(f"{name}:" for name in by_index.get(index, ()))
            lines.append(f"{slot:4d}: {insn}")
            slot += insn.slots
        lines.extend(f"{name}:" for name in by_index.get(len(self.insns), ()))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.listing()

    def __len__(self) -> int:
        """Length in slots (what the kernel counts)."""
        return sum(i.slots for i in self.insns)


def _add_shortcuts() -> None:
    # mov64/add32/jeq/jeq32/ldxw/stxdw... are spelled-out forms of the generic
    # alu/jmp/ldx/stx/st methods; generating them keeps one implementation.
    def alu_method(op: Op, wide: bool):
        def method(self, dst, src):
            return self.alu(op, dst, src, wide=wide)
        method.__doc__ = f"``dst {_ALU_SYM[op]} src`` on {64 if wide else 32} bits."
        return method

    for op in _ALU_SYM:
        name = op.name.lower()
        setattr(Assembler, f"{name}64", alu_method(op, True))
        setattr(Assembler, f"{name}32", alu_method(op, False))

    def jmp_method(op: JOp, wide: bool):
        def method(self, dst, src, target):
            return self.jmp(op, dst, src, target, wide=wide)
        method.__doc__ = f"``if dst {_JMP_SYM[op]} src goto target`` on {64 if wide else 32} bits."
        return method

    for op in _JMP_SYM:
        name = op.name.lower()
        setattr(Assembler, name, jmp_method(op, True))
        setattr(Assembler, f"{name}32", jmp_method(op, False))

    def mem_method(kind: str, size: Size):
        base = getattr(Assembler, kind)

        def method(self, *args):
            return base(self, size, *args)
        method.__doc__ = f"{base.__doc__.splitlines()[0]} with size {size.name.lower()}"
        return method

    for kind in ("ldx", "stx", "st"):
        for size in Size:
            setattr(Assembler, f"{kind}{size.name.lower()}", mem_method(kind, size))


_add_shortcuts()
