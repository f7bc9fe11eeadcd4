"""A loaded BPF program: identity, pinning and ``BPF_PROG_TEST_RUN``.

>>> with BPFObject.open(path) as obj:
...     obj.load()
...     res = obj.programs["my_tc"].test_run(packet)
...     res.retval, res.data_out
"""

from __future__ import annotations

import enum
import errno as _errno
import os
from dataclasses import dataclass

from calico_ebpf.errors import BPFError
from calico_ebpf.kernel._handle import FdHandle
from calico_ebpf.kernel._lib import ffi, lib, raise_errno

# Room for programs that grow the packet (encapsulation) when the caller
# gives no output size; ENOSPC from the kernel doubles it and retries.
_DATA_OUT_SLACK = 256


class ProgType(enum.IntEnum):
    """Kernel program types (``enum bpf_prog_type``)."""

    UNSPEC = 0
    SOCKET_FILTER = 1
    KPROBE = 2
    SCHED_CLS = 3
    SCHED_ACT = 4
    TRACEPOINT = 5
    XDP = 6
    PERF_EVENT = 7
    CGROUP_SKB = 8
    CGROUP_SOCK = 9
    LWT_IN = 10
    LWT_OUT = 11
    LWT_XMIT = 12
    SOCK_OPS = 13
    SK_SKB = 14
    CGROUP_DEVICE = 15
    SK_MSG = 16
    RAW_TRACEPOINT = 17
    CGROUP_SOCK_ADDR = 18
    LWT_SEG6LOCAL = 19
    LIRC_MODE2 = 20
    SK_REUSEPORT = 21
    FLOW_DISSECTOR = 22
    CGROUP_SYSCTL = 23
    RAW_TRACEPOINT_WRITABLE = 24
    CGROUP_SOCKOPT = 25
    TRACING = 26
    STRUCT_OPS = 27
    EXT = 28
    LSM = 29
    SK_LOOKUP = 30
    SYSCALL = 31
    NETFILTER = 32

    @classmethod
    def of(cls, value: int) -> "ProgType | int":
        try:
            return cls(value)
        except ValueError:
            return value


# Verifier log buffer for a refused load: 1 MiB holds the whole log of
# policy-sized programs; bigger ones keep only the tail (which is the part
# that explains the refusal).
_LOG_SIZE = 1 << 20
_LOG_TAIL_LINES = 40


def _kernel_prog_name(name: str) -> str:
    # The kernel refuses names with other characters, or longer than 15.
    return "".join(c if (c.isascii() and (c.isalnum() or c in "_.")) else "_" for c in name)[:15]


def _log_tail(log: str) -> str:
    lines = log.rstrip("\n").splitlines()
    return "\n".join(lines[-_LOG_TAIL_LINES:])


@dataclass(frozen=True)
class ProgInfo:
    """What the kernel reports about a program."""

    type: ProgType | int
    id: int
    tag: str  # hex, as bpftool prints it
    name: str


@dataclass(frozen=True)
class TestRunResult:
    """Outcome of one ``BPF_PROG_TEST_RUN``: return code, output packet and context, mean ns per run."""

    __test__ = False  # not a pytest test class

    retval: int
    data_out: bytes
    ctx_out: bytes | None
    duration_ns: int


def prog_info_from_fd(fd: int, what: str = "program") -> ProgInfo:
    info = ffi.new("struct bpf_prog_info *")
    size = ffi.new("uint32_t *", ffi.sizeof("struct bpf_prog_info"))
    ret = lib.bpf_obj_get_info_by_fd(fd, info, size)
    if ret < 0:
        raise_errno(f"obj_get_info_by_fd {what}", -ret)
    return ProgInfo(
        type=ProgType.of(info.type),
        id=info.id,
        tag=bytes(ffi.buffer(info.tag)).hex(),
        name=ffi.string(info.name).decode("utf-8", "replace"),
    )


class Program(FdHandle):
    """A loaded program. Programs of a :class:`BPFObject` close with it; others own their fd.

    ``handle`` is libbpf's ``struct bpf_program *`` (or NULL for programs
    opened by fd/pin), for the attach layer.
    """

    _kind = "program"
    _closed_reason = "closed or was not loaded"

    def __init__(self, fd: int, name: str, type: int, *, section: str = "", handle=None,
                 owned: bool = True, owner: object | None = None):
        self._init_handle(fd, name, owned, owner)
        self.type = ProgType.of(type)
        self.section = section
        self.handle = handle if handle is not None else ffi.NULL

    @classmethod
    def from_fd(cls, fd: int, name: str | None = None) -> "Program":
        """Wrap a program fd; the Program takes ownership."""
        info = prog_info_from_fd(fd)
        return cls(fd, name or info.name, info.type)

    @classmethod
    def load(cls, prog_type: int, insns: bytes, license: str = "GPL", name: str = "", *,
             log_level: int = 1, expected_attach_type: int = 0, prog_flags: int = 0,
             fd_array: list[int] | None = None, log_size: int = _LOG_SIZE) -> "Program":
        """Load raw instructions (8 bytes each, as ``asm.Assembler.assemble()`` gives) as a program.

        Maps are referenced from ``LD_IMM64`` with ``BPF_PSEUDO_MAP_FD`` (the fd
        in the immediate) or ``BPF_PSEUDO_MAP_IDX`` (an index into
        ``fd_array``). ``name`` is cut to the kernel's 15 characters, other
        characters than ``[A-Za-z0-9_.]`` become ``_``.

        The first attempt runs without a verifier log (a truncated log makes
        the kernel fail an otherwise good load with ENOSPC); a refused load is
        retried with ``log_level`` (0 = no retry) so the :class:`BPFError`
        carries the verifier's explanation in ``verifier_log``.

        Example::

            code = Assembler().mov64(R0, 2).exit().assemble()   # calico_ebpf.compiler.asm
            prog = Program.load(ProgType.SCHED_CLS, code)
            prog.test_run(bytes(64)).retval                      # 2
        """
        if len(insns) == 0 or len(insns) % 8:
            raise BPFError(f"prog_load {name or '(unnamed)'}", _errno.EINVAL,
                           f"instructions are {len(insns)} bytes, not a non-zero multiple of 8")
        kname = _kernel_prog_name(name)
        op = f"prog_load {kname or '(unnamed)'}"
        code = ffi.from_buffer(insns)
        fds = ffi.new("int[]", list(fd_array)) if fd_array else ffi.NULL

        def attempt(level: int, buf, size: int) -> int:
            return lib.cebpf_prog_load(int(prog_type), kname.encode(), license.encode(), code,
                                       len(insns) // 8, expected_attach_type, prog_flags, fds,
                                       level, buf, size)

        fd = attempt(0, ffi.NULL, 0)
        if fd >= 0:
            return cls(fd, kname, int(prog_type))
        err = -fd
        log = ""
        if log_level > 0 and err not in (_errno.EPERM, _errno.E2BIG):
            buf = ffi.new("char[]", log_size)
            # Kernels >= 6.4 keep the log's tail when the buffer is too small
            # (and return ENOSPC); the tail is where the refusal is explained.
            retry = attempt(log_level, buf, log_size)
            if retry >= 0:  # refused once, accepted now: keep the program
                return cls(retry, kname, int(prog_type))
            log = _log_tail(ffi.string(buf).decode("utf-8", "replace"))
        raise_errno(op, err, "refused by the verifier" if log and err in (_errno.EACCES, _errno.EINVAL)
                    else None, verifier_log=log)

    @classmethod
    def open_pinned(cls, path: str | os.PathLike) -> "Program":
        """Open a program pinned in bpffs."""
        path = os.fspath(path)
        fd = lib.bpf_obj_get(path.encode())
        if fd < 0:
            raise_errno(f"obj_get {path}", -fd)
        try:
            p = cls.from_fd(fd)
        except BPFError:
            os.close(fd)
            raise
        p._pin_path = path
        return p

    @classmethod
    def from_id(cls, prog_id: int) -> "Program":
        fd = lib.bpf_prog_get_fd_by_id(prog_id)
        if fd < 0:
            raise_errno(f"prog_get_fd_by_id {prog_id}", -fd)
        return cls.from_fd(fd)

    @property
    def info(self) -> ProgInfo:
        return prog_info_from_fd(self.fd, self.name)

    def _invalidate(self) -> None:
        super()._invalidate()
        self.handle = ffi.NULL

    def __repr__(self) -> str:
        t = self.type.name if isinstance(self.type, ProgType) else self.type
        return f"<Program {self.name!r} {t}{' closed' if self.closed else ''}>"

    def test_run(self, data: bytes, ctx: bytes | None = None, repeat: int = 1,
                 data_size_out: int | None = None) -> TestRunResult:
        """Run the program once (or ``repeat`` times) on ``data`` with ``BPF_PROG_TEST_RUN``.

        ``ctx`` is the program's context struct (``__sk_buff`` for tc,
        ``xdp_md`` for XDP) when the caller wants to set fields; the kernel's
        version of it comes back in ``ctx_out``.
        """
        fd = self.fd
        data_in = ffi.from_buffer(data)
        out_size = data_size_out if data_size_out is not None else len(data_in) + _DATA_OUT_SLACK
        while True:
            opts = ffi.new("struct bpf_test_run_opts *")
            opts.sz = ffi.sizeof("struct bpf_test_run_opts")
            opts.data_in = data_in
            opts.data_size_in = len(data_in)
            data_out = ffi.new("char[]", max(out_size, 1))
            opts.data_out = data_out
            opts.data_size_out = out_size
            opts.repeat = repeat
            ctx_out = None
            if ctx is not None:
                ctx_in = ffi.from_buffer(ctx)
                ctx_out = ffi.new("char[]", max(len(ctx_in), 1))
                opts.ctx_in = ctx_in
                opts.ctx_size_in = len(ctx_in)
                opts.ctx_out = ctx_out
                opts.ctx_size_out = len(ctx_in)
            ret = lib.bpf_prog_test_run_opts(fd, opts)
            if ret == -_errno.ENOSPC and data_size_out is None and out_size < (1 << 20):
                out_size *= 4  # the program grew the packet beyond our guess
                continue
            if ret < 0:
                raise_errno(f"prog_test_run {self.name}", -ret)
            return TestRunResult(
                retval=opts.retval,
                data_out=ffi.buffer(data_out, opts.data_size_out)[:],
                ctx_out=ffi.buffer(ctx_out, opts.ctx_size_out)[:] if ctx_out is not None else None,
                duration_ns=opts.duration,
            )
