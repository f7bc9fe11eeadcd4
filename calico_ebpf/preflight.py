"""Can this node run the eBPF dataplane? Calico's support matrix, checked on the real node.

Each check returns a :class:`Check` (name, ok, detail, required). Required
checks that fail make the node unfit; the others are advice. The parsing
behind the checks is pure and takes its input as an argument, so it can
be tested with examples; the probes (a tiny map, a clsact filter in a
scratch network namespace, a bpffs mount in a scratch mount namespace)
touch nothing outside what they create, and undo it::

    checks = run_checks()
    for c in checks:
        print(c.name, c.ok, c.detail)
    require(checks)          # raises PreflightError listing the reasons

Requirements (Calico "eBPF dataplane requirements"): x86-64 or arm64;
Linux >= 5.3, or a Red Hat kernel >= 4.18.0-193; a usable bpf() syscall;
bpffs mounted (or mountable); kernel BTF; tc clsact with BPF filters;
CAP_NET_ADMIN plus CAP_SYS_ADMIN (or CAP_BPF with CAP_PERFMON).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as _errno
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass

from calico_ebpf.errors import PreflightError

__all__ = [
    "Check",
    "KernelRelease",
    "check_arch",
    "check_bpf_syscall",
    "check_bpffs",
    "check_btf",
    "check_capabilities",
    "check_cgroup2",
    "check_kernel",
    "check_tc",
    "check_tcx",
    "failures",
    "kernel_supported",
    "missing_capabilities",
    "parse_cap_eff",
    "parse_kernel_release",
    "probe_bpffs_mount",
    "require",
    "run_checks",
]

MIN_KERNEL = (5, 3, 0)
MIN_REDHAT = ((4, 18, 0), 193)  # RHEL 8.2 backports what the dataplane needs
SUPPORTED_ARCHES = {"x86_64": "x86-64", "amd64": "x86-64", "aarch64": "arm64", "arm64": "arm64"}
BTF_VMLINUX = "/sys/kernel/btf/vmlinux"

# Capability bit numbers (linux/capability.h).
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39

_CLONE_NEWNS = 0x00020000
_CLONE_NEWNET = 0x40000000
_MS_REC = 0x4000
_MS_PRIVATE = 1 << 18


@dataclass(frozen=True)
class Check:
    """One preflight result. ``required=False`` checks are advice: they never fail the node."""

    name: str
    ok: bool
    detail: str
    required: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class KernelRelease:
    """A parsed ``uname -r``: version triple, distro build number, and whether it is Red Hat's."""

    version: tuple[int, int, int]
    build: int | None
    redhat: bool
    text: str


_RELEASE_RE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?(?:-(\d+))?")
# Red Hat family kernels carry ".el<N>" (RHEL, CentOS, Rocky, Alma, Oracle's RHCK).
_REDHAT_RE = re.compile(r"\.el\d+")


def parse_kernel_release(release: str) -> KernelRelease:
    """Parse a kernel release string; ValueError when it does not start with a version.

    >>> parse_kernel_release("4.18.0-193.el8.x86_64")
    KernelRelease(version=(4, 18, 0), build=193, redhat=True, text='4.18.0-193.el8.x86_64')
    """
    m = _RELEASE_RE.match(release.strip())
    if not m:
        raise ValueError(f"not a kernel release: {release!r}")
    major, minor, patch, build = m.groups()
    return KernelRelease(
        version=(int(major), int(minor), int(patch or 0)),
        build=int(build) if build is not None else None,
        redhat=bool(_REDHAT_RE.search(release)),
        text=release.strip(),
    )


def kernel_supported(release: str) -> tuple[bool, str]:
    """Whether a kernel release meets the minimum, with the reason in words."""
    try:
        rel = parse_kernel_release(release)
    except ValueError as exc:
        return False, str(exc)
    ver = ".".join(map(str, rel.version))
    if rel.version >= MIN_KERNEL:
        return True, f"kernel {rel.text} (>= 5.3)"
    if rel.redhat:
        base, build = MIN_REDHAT
        if rel.version == base and (rel.build or 0) >= build:
            return True, f"Red Hat kernel {rel.text} (>= 4.18.0-193)"
        return False, f"Red Hat kernel {rel.text} is older than 4.18.0-193, the oldest Red Hat kernel supported"
    return False, f"kernel {ver} is older than 5.3 (Red Hat kernels need 4.18.0-193 or later)"


def parse_cap_eff(status_text: str) -> int:
    """The effective capability mask from the text of ``/proc/<pid>/status``."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split(":", 1)[1].strip(), 16)
    raise ValueError("no CapEff line in status text")


def missing_capabilities(cap_eff: int) -> list[str]:
    """Names of what the dataplane needs and the mask lacks (empty when all is there).

    Needs CAP_NET_ADMIN (tc, XDP, netlink) and either CAP_SYS_ADMIN or, on
    kernels with split BPF capabilities, CAP_BPF together with CAP_PERFMON
    (the verifier allows pointer arithmetic the programs use only with it).
    """
    def has(bit: int) -> bool:
        return bool(cap_eff >> bit & 1)

    missing = []
    if not has(CAP_NET_ADMIN):
        missing.append("CAP_NET_ADMIN")
    if not has(CAP_SYS_ADMIN) and not (has(CAP_BPF) and has(CAP_PERFMON)):
        missing.append("CAP_SYS_ADMIN (or CAP_BPF with CAP_PERFMON)")
    return missing


def check_arch(machine: str | None = None) -> Check:
    machine = machine or platform.machine()
    arch = SUPPORTED_ARCHES.get(machine)
    if arch:
        return Check("arch", True, arch)
    return Check("arch", False, f"architecture {machine} is not supported (x86-64 or arm64 only)")


def check_kernel(release: str | None = None) -> Check:
    ok, detail = kernel_supported(release or platform.release())
    return Check("kernel", ok, detail)


def check_capabilities(cap_eff: int | None = None) -> Check:
    if cap_eff is None:
        with open("/proc/self/status") as f:
            cap_eff = parse_cap_eff(f.read())
    missing = missing_capabilities(cap_eff)
    if missing:
        return Check("capabilities", False, "missing " + ", ".join(missing) + f" (CapEff {cap_eff:#x}); run as root or privileged")
    return Check("capabilities", True, f"CapEff {cap_eff:#x}")


def _err(err: int) -> str:
    return f"{_errno.errorcode.get(err, err)}: {os.strerror(err)}"


def check_bpf_syscall() -> Check:
    """Create (and close) a one-element array map: proves bpf() works for us."""
    try:
        from calico_ebpf.kernel._lib import ffi, lib
    except ImportError as exc:
        return Check("bpf_syscall", False, f"libbpf binding unavailable: {exc}")
    fd = lib.bpf_map_create(2, b"cebpf_preflight", 4, 4, 1, ffi.NULL)  # 2 = BPF_MAP_TYPE_ARRAY
    if fd < 0:
        hint = " (needs CAP_BPF or CAP_SYS_ADMIN)" if -fd == _errno.EPERM else ""
        return Check("bpf_syscall", False, f"bpf(BPF_MAP_CREATE) failed: {_err(-fd)}{hint}")
    os.close(fd)
    return Check("bpf_syscall", True, "created and closed a test map")


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _in_child(fn: Callable[[], int]) -> int:
    """Run ``fn`` in a forked child, so namespace changes die with it; returns its result (an errno).

    The result comes back through a pipe (exit codes cannot carry every errno).
    """
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(rfd)
            try:
                result = fn()
            except Exception:  # noqa: BLE001 - the child must always report and exit
                result = _errno.EIO
            os.write(wfd, str(result).encode())
        finally:
            os._exit(0)
    os.close(wfd)
    try:
        with os.fdopen(rfd, "rb") as r:
            data = r.read()
    finally:
        os.waitpid(pid, 0)
    return int(data) if data else _errno.EIO


def check_bpffs() -> Check:
    """bpffs mounted; when not, whether it could be mounted (probed in a scratch mount namespace)."""
    from calico_ebpf.kernel.bpffs import find_bpffs

    found = find_bpffs()
    if found:
        return Check("bpffs", True, f"mounted at {found}")
    err = probe_bpffs_mount()
    if err == 0:
        return Check("bpffs", True, "not mounted, but mountable: mount it at /sys/fs/bpf (`mount -t bpf bpf /sys/fs/bpf`)")
    return Check("bpffs", False, f"not mounted and a probe mount failed ({_err(err)})")


def probe_bpffs_mount() -> int:
    """Mount a bpffs on a temporary directory inside a scratch mount namespace; 0 or the errno.

    The namespace dies with the forked child, so nothing stays mounted.
    """
    target = tempfile.mkdtemp(prefix="cebpf-bpffs-probe-")

    def probe() -> int:
        libc = _libc()
        if libc.unshare(_CLONE_NEWNS) != 0:
            return ctypes.get_errno()
        # Private propagation first, so the probe mount cannot leak to the host.
        if libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
            return ctypes.get_errno()
        if libc.mount(b"bpf", target.encode(), b"bpf", 0, None) != 0:
            return ctypes.get_errno()
        return 0

    try:
        return _in_child(probe)
    finally:
        shutil.rmtree(target, ignore_errors=True)


def check_btf(path: str = BTF_VMLINUX) -> Check:
    if os.access(path, os.R_OK):
        return Check("btf", True, f"{path} ({os.path.getsize(path)} bytes)")
    if os.path.exists(path):
        return Check("btf", False, f"{path} exists but is not readable")
    return Check("btf", False, f"{path} is missing: the kernel needs CONFIG_DEBUG_INFO_BTF=y")


def check_tc() -> Check:
    """Load a two-instruction sched_cls program and attach it to a clsact hook on ``lo`` of a scratch netns."""
    try:
        from calico_ebpf.kernel._lib import lib
    except ImportError as exc:
        return Check("tc_bpf", False, f"libbpf binding unavailable: {exc}")

    def probe() -> int:
        if _libc().unshare(_CLONE_NEWNET) != 0:
            return -ctypes.get_errno()  # negative: could not make the scratch netns
        return -lib.cebpf_probe_tc(1)  # ifindex 1 is lo in a fresh netns

    err = _in_child(probe)
    if err == 0:
        return Check("tc_bpf", True, "clsact qdisc + BPF direct-action filter attached and removed in a scratch netns")
    if err < 0:
        return Check("tc_bpf", False, f"cannot create a scratch network namespace to probe tc ({_err(-err)})")
    return Check("tc_bpf", False, f"clsact/tc BPF attach failed in a scratch netns ({_err(err)})")


def check_cgroup2() -> Check:
    """cgroup v2 is needed only for connect-time load balancing; advice, not a requirement."""
    try:
        from calico_ebpf.kernel.attach import cgroup2_mount

        path = cgroup2_mount()
    except Exception as exc:  # noqa: BLE001 - any failure means "not available"
        return Check("cgroup2", False, f"no cgroup v2 mount ({exc}); connect-time load balancing is unavailable", required=False)
    return Check("cgroup2", True, f"mounted at {path}", required=False)


def check_tcx(release: str | None = None) -> Check:
    """TCX (bpf_link tc, kernel 6.6+) is preferred when the build supports it; clsact otherwise."""
    try:
        from calico_ebpf.kernel._lib import lib

        built = bool(lib.HAS_TCX)
    except ImportError:
        built = False
    try:
        kernel = parse_kernel_release(release or platform.release()).version >= (6, 6, 0)
    except ValueError:
        kernel = False
    if built and kernel:
        return Check("tcx", True, "TCX available", required=False)
    why = "this build's libbpf is older than 1.3" if not built else "the kernel is older than 6.6"
    return Check("tcx", False, f"TCX unavailable ({why}); using clsact tc filters", required=False)


def run_checks(*, probes: bool = True) -> list[Check]:
    """Run every check. ``probes=False`` skips the ones that fork and touch the kernel (tc, bpffs mount)."""
    checks = [check_arch(), check_kernel(), check_capabilities(), check_bpf_syscall(), check_btf()]
    checks.append(check_bpffs() if probes else _bpffs_passive())
    if probes:
        checks.append(check_tc())
    checks += [check_cgroup2(), check_tcx()]
    return checks


def _bpffs_passive() -> Check:
    from calico_ebpf.kernel.bpffs import find_bpffs

    found = find_bpffs()
    return Check("bpffs", bool(found), f"mounted at {found}" if found else "not mounted (mountability not probed)")


def failures(checks: list[Check]) -> list[str]:
    """Reasons of the required checks that failed, ``"name: detail"`` each."""
    return [f"{c.name}: {c.detail}" for c in checks if c.required and not c.ok]


def require(checks: list[Check] | None = None) -> list[Check]:
    """Raise PreflightError with every reason when the node cannot run the dataplane."""
    checks = run_checks() if checks is None else checks
    reasons = failures(checks)
    if reasons:
        raise PreflightError(reasons)
    return checks
