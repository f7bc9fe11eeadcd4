"""Attach programs to interfaces (tc, XDP) and cgroups, and find them again later.

Every attachment is an object with ``detach()``, and every kind can be
found again by a process that did not make it (an agent after a restart):

* tc: a direct-action filter on the clsact hook, identified by
  (ifindex, direction, priority, handle). ``TcAttachment.find`` returns the
  program id in that slot; ``replace(prog)`` swaps the program in place
  (BPF_TC_F_REPLACE), so a new program version starts without a gap.
* XDP: one program per interface and mode; ``XdpAttachment.find`` queries it.
* cgroup: a bpf_link (pin it with ``.pin(path)`` to outlive the process,
  reopen with ``CgroupAttachment.from_pin``), or on kernels without cgroup
  links a legacy multi-attach, found with ``CgroupAttachment.query``.

tc and XDP attachments are made through netlink in the calling thread's
network namespace; pass ``netns=`` to act on an interface in another one.

>>> att = attach_tc(obj.programs["tc_main"], ifindex, "ingress")
>>> TcAttachment.find(ifindex, "ingress").prog_id == att.prog_id
True
>>> att.replace(new_obj.programs["tc_main"])   # no gap
>>> att.detach()
"""

from __future__ import annotations

import contextlib
import errno as _errno
import os
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from calico_ebpf.errors import BPFError
from calico_ebpf.kernel._lib import ENOTSUPP, ffi, lib, raise_errno
from calico_ebpf.kernel.netns import Netns

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "CGROUP_ATTACH_TYPES",
    "DEFAULT_TC_HANDLE",
    "DEFAULT_TC_PRIORITY",
    "XDP_MODES",
    "CgroupAttachment",
    "TcAttachment",
    "XdpAttachment",
    "attach_cgroup",
    "attach_tc",
    "attach_xdp",
    "cgroup2_mount",
    "ensure_clsact",
    "has_tcx",
    "prog_id_of",
    "remove_clsact",
]

# Our filter slot on each hook. Fixed values make the slot findable after a
# restart without remembering anything but the interface.
DEFAULT_TC_PRIORITY = 1
DEFAULT_TC_HANDLE = 1

_DIRECTIONS = {"ingress": lib.BPF_TC_INGRESS, "egress": lib.BPF_TC_EGRESS}

XDP_MODES = {
    "generic": lib.XDP_FLAGS_SKB_MODE,
    "skb": lib.XDP_FLAGS_SKB_MODE,
    "driver": lib.XDP_FLAGS_DRV_MODE,
    "native": lib.XDP_FLAGS_DRV_MODE,
    "offload": lib.XDP_FLAGS_HW_MODE,
    "auto": 0,  # let the kernel pick driver mode when the driver supports it, else generic
}
_XDP_ATTACHED_MODE = {
    lib.XDP_ATTACHED_DRV: "driver",
    lib.XDP_ATTACHED_SKB: "generic",
    lib.XDP_ATTACHED_HW: "offload",
}

CGROUP_ATTACH_TYPES = {
    "ingress": lib.BPF_CGROUP_INET_INGRESS,
    "egress": lib.BPF_CGROUP_INET_EGRESS,
    "sock_create": lib.BPF_CGROUP_INET_SOCK_CREATE,
    "connect4": lib.BPF_CGROUP_INET4_CONNECT,
    "connect6": lib.BPF_CGROUP_INET6_CONNECT,
    "sendmsg4": lib.BPF_CGROUP_UDP4_SENDMSG,
    "sendmsg6": lib.BPF_CGROUP_UDP6_SENDMSG,
    "recvmsg4": lib.BPF_CGROUP_UDP4_RECVMSG,
    "recvmsg6": lib.BPF_CGROUP_UDP6_RECVMSG,
    "getpeername4": lib.BPF_CGROUP_INET4_GETPEERNAME,
    "getpeername6": lib.BPF_CGROUP_INET6_GETPEERNAME,
}
_CGROUP_TYPE_NAMES = {v: k for k, v in CGROUP_ATTACH_TYPES.items()}


class _HasFd(Protocol):
    @property
    def fd(self) -> int: ...


ProgLike = _HasFd | int
NetnsLike = Netns | str | None


def has_tcx() -> bool:
    """Whether this build's libbpf and headers know TCX (bpf_link based tc, kernel 6.6+)."""
    return bool(lib.HAS_TCX)


def _fd(prog: ProgLike) -> int:
    return prog if isinstance(prog, int) else prog.fd


def prog_id_of(prog: ProgLike) -> int:
    """The kernel id of a program (a Program or a program fd)."""
    out = ffi.new("uint32_t *")
    ret = lib.cebpf_prog_id(_fd(prog), out)
    if ret < 0:
        raise_errno(f"get id of program {getattr(prog, 'name', prog)}", -ret)
    return out[0]


@contextlib.contextmanager
def _netns(netns: NetnsLike) -> Iterator[None]:
    if netns is None:
        yield
        return
    handle = netns if isinstance(netns, Netns) else Netns.open(netns)
    with handle.enter():
        yield


def _ns_name(netns: NetnsLike) -> str | None:
    return netns.name if isinstance(netns, Netns) else netns


def _ifdesc(ifindex: int, netns: NetnsLike) -> str:
    # Must run inside the interface's namespace: names are per namespace.
    try:
        name = socket.if_indextoname(ifindex)
    except OSError:
        name = "?"
    where = f" in netns {_ns_name(netns)}" if netns is not None else ""
    return f"{name} (ifindex {ifindex}){where}"


def _direction(direction: str) -> int:
    try:
        return _DIRECTIONS[direction]
    except KeyError:
        raise ValueError(f"tc direction must be 'ingress' or 'egress', not {direction!r}") from None


def _tc_hook(ifindex: int, attach_point: int):
    hook = ffi.new("struct bpf_tc_hook *")
    hook.sz = ffi.sizeof("struct bpf_tc_hook")
    hook.ifindex = ifindex
    hook.attach_point = attach_point
    return hook


def _tc_opts(handle: int, priority: int, prog_fd: int = 0, flags: int = 0):
    opts = ffi.new("struct bpf_tc_opts *")
    opts.sz = ffi.sizeof("struct bpf_tc_opts")
    opts.handle = handle
    opts.priority = priority
    opts.prog_fd = prog_fd
    opts.flags = flags
    return opts


def ensure_clsact(ifindex: int, netns: NetnsLike = None) -> bool:
    """Make sure ``ifindex`` has a clsact qdisc; True when this call created it."""
    with _netns(netns):
        ret = lib.bpf_tc_hook_create(_tc_hook(ifindex, lib.BPF_TC_INGRESS | lib.BPF_TC_EGRESS))
        if ret == -_errno.EEXIST:
            return False
        if ret < 0:
            raise_errno(f"create clsact qdisc on {_ifdesc(ifindex, netns)}", -ret)
    return True


def remove_clsact(ifindex: int, netns: NetnsLike = None) -> bool:
    """Remove the clsact qdisc (and every tc filter on it, ours or not); False when absent.

    Only for interfaces this process manages wholesale (our own veths).
    """
    with _netns(netns):
        ret = lib.bpf_tc_hook_destroy(_tc_hook(ifindex, lib.BPF_TC_INGRESS | lib.BPF_TC_EGRESS))
        if ret in (-_errno.ENOENT, -_errno.EINVAL):
            return False
        if ret < 0:
            raise_errno(f"remove clsact qdisc on {_ifdesc(ifindex, netns)}", -ret)
    return True


class TcAttachment:
    """A program in one tc filter slot: (ifindex, direction, priority, handle).

    The slot, not the program, is the identity: ``replace()`` puts another
    program in it, ``find()`` reports what is in it now, ``detach()`` empties it.
    """

    def __init__(self, ifindex: int, direction: str, priority: int, handle: int, prog_id: int,
                 netns: NetnsLike = None):
        _direction(direction)
        self.ifindex = ifindex
        self.direction = direction
        self.priority = priority
        self.handle = handle
        self.prog_id = prog_id
        self.netns = _ns_name(netns)

    @classmethod
    def attach(cls, prog: ProgLike, ifindex: int, direction: str, *, priority: int = DEFAULT_TC_PRIORITY,
               handle: int = DEFAULT_TC_HANDLE, replace: bool = False, netns: NetnsLike = None) -> TcAttachment:
        """Attach ``prog`` as a direct-action filter; ensures the clsact qdisc first.

        With ``replace=False`` an occupied slot is an error (EEXIST); with
        ``replace=True`` the slot's program is swapped atomically.
        ``priority=0``/``handle=0`` let the kernel choose; the chosen values
        are recorded on the returned object.
        """
        point = _direction(direction)
        with _netns(netns):
            ret = lib.bpf_tc_hook_create(_tc_hook(ifindex, lib.BPF_TC_INGRESS | lib.BPF_TC_EGRESS))
            if ret < 0 and ret != -_errno.EEXIST:
                raise_errno(f"tc attach {direction} on {_ifdesc(ifindex, netns)}", -ret,
                            f"cannot create the clsact qdisc: {os.strerror(-ret)}")
            opts = _tc_opts(handle, priority, _fd(prog), lib.BPF_TC_F_REPLACE if replace else 0)
            ret = lib.bpf_tc_attach(_tc_hook(ifindex, point), opts)
            if ret < 0:
                msg = None
                if ret == -_errno.EEXIST:
                    msg = f"a filter already occupies priority {priority} handle {handle:#x} (use replace=True)"
                raise_errno(f"tc attach {direction} on {_ifdesc(ifindex, netns)}", -ret, msg)
            return cls(ifindex, direction, opts.priority, opts.handle, opts.prog_id, netns)

    @classmethod
    def find(cls, ifindex: int, direction: str, priority: int = DEFAULT_TC_PRIORITY,
             handle: int = DEFAULT_TC_HANDLE, netns: NetnsLike = None) -> TcAttachment | None:
        """The attachment in this slot (with the id of its program), or None when the slot is empty."""
        prog_id = cls._query(ifindex, direction, priority, handle, netns)
        return None if prog_id is None else cls(ifindex, direction, priority, handle, prog_id, netns)

    @staticmethod
    def _query(ifindex: int, direction: str, priority: int, handle: int, netns: NetnsLike) -> int | None:
        point = _direction(direction)
        with _netns(netns):
            opts = _tc_opts(handle, priority)
            ret = lib.bpf_tc_query(_tc_hook(ifindex, point), opts)
            # ENOENT: no filter in the slot; EINVAL: no clsact qdisc at all.
            if ret in (-_errno.ENOENT, -_errno.EINVAL):
                return None
            if ret < 0:
                raise_errno(f"tc query {direction} on {_ifdesc(ifindex, netns)}", -ret)
            return opts.prog_id

    def query(self) -> int | None:
        """Id of the program in this slot now (None when the slot is empty)."""
        return self._query(self.ifindex, self.direction, self.priority, self.handle, self.netns)

    @property
    def attached(self) -> bool:
        """Whether the slot still holds the program this object last put or found there."""
        return self.query() == self.prog_id

    def replace(self, prog: ProgLike) -> None:
        """Swap the slot's program for ``prog`` atomically (no packet sees an empty hook)."""
        point = _direction(self.direction)
        with _netns(self.netns):
            opts = _tc_opts(self.handle, self.priority, _fd(prog), lib.BPF_TC_F_REPLACE)
            ret = lib.bpf_tc_attach(_tc_hook(self.ifindex, point), opts)
            if ret < 0:
                raise_errno(f"tc replace {self.direction} on {_ifdesc(self.ifindex, self.netns)}", -ret)
            self.prog_id = opts.prog_id

    def detach(self, missing_ok: bool = True) -> bool:
        """Remove the filter in this slot; False when it was already gone (and ``missing_ok``).

        The clsact qdisc stays: other filters may live on it.
        """
        point = _direction(self.direction)
        with _netns(self.netns):
            ret = lib.bpf_tc_detach(_tc_hook(self.ifindex, point), _tc_opts(self.handle, self.priority))
            if ret in (-_errno.ENOENT, -_errno.EINVAL) and missing_ok:
                return False
            if ret < 0:
                raise_errno(f"tc detach {self.direction} on {_ifdesc(self.ifindex, self.netns)}", -ret)
        return True

    def __repr__(self) -> str:
        where = f" netns={self.netns}" if self.netns else ""
        return (f"<TcAttachment {self.direction} ifindex={self.ifindex} prio={self.priority} "
                f"handle={self.handle:#x} prog_id={self.prog_id}{where}>")


def attach_tc(prog: ProgLike, ifindex: int, direction: str, *, priority: int = DEFAULT_TC_PRIORITY,
              handle: int = DEFAULT_TC_HANDLE, replace: bool = False, netns: NetnsLike = None) -> TcAttachment:
    """Attach a tc (sched_cls) program; see :meth:`TcAttachment.attach`."""
    return TcAttachment.attach(prog, ifindex, direction, priority=priority, handle=handle,
                               replace=replace, netns=netns)


def _xdp_mode_flags(mode: str) -> int:
    try:
        return XDP_MODES[mode]
    except KeyError:
        raise ValueError(f"XDP mode must be one of {sorted(XDP_MODES)}, not {mode!r}") from None


def _xdp_query(ifindex: int, netns: NetnsLike) -> tuple[int, dict[str, int]]:
    """(attach_mode, {mode: prog id}) for ``ifindex``; ids are 0 where nothing is attached."""
    with _netns(netns):
        opts = ffi.new("struct bpf_xdp_query_opts *")
        opts.sz = ffi.sizeof("struct bpf_xdp_query_opts")
        ret = lib.bpf_xdp_query(ifindex, 0, opts)
        if ret < 0:
            raise_errno(f"xdp query on {_ifdesc(ifindex, netns)}", -ret)
        return opts.attach_mode, {"driver": opts.drv_prog_id, "generic": opts.skb_prog_id, "offload": opts.hw_prog_id}


class XdpAttachment:
    """The XDP program of one interface in one mode (generic, driver or offload)."""

    def __init__(self, ifindex: int, mode: str, prog_id: int, netns: NetnsLike = None):
        self.ifindex = ifindex
        self.mode = mode
        self.prog_id = prog_id
        self.netns = _ns_name(netns)

    @classmethod
    def attach(cls, prog: ProgLike, ifindex: int, mode: str = "generic", *, replace: bool = False,
               netns: NetnsLike = None) -> XdpAttachment:
        """Attach ``prog``; an interface already running XDP in that mode is an error unless ``replace``."""
        flags = _xdp_mode_flags(mode)
        if not replace:
            flags |= lib.XDP_FLAGS_UPDATE_IF_NOEXIST
        with _netns(netns):
            ret = lib.bpf_xdp_attach(ifindex, _fd(prog), flags, ffi.NULL)
            if ret < 0:
                msg = "an XDP program is already attached (use replace=True)" if ret == -_errno.EBUSY else None
                raise_errno(f"xdp attach {mode} on {_ifdesc(ifindex, netns)}", -ret, msg)
        found = cls.find(ifindex, None if mode == "auto" else _canonical_mode(mode), netns=netns)
        if found is None:  # pragma: no cover - the kernel just accepted it
            raise BPFError(f"xdp attach {mode} on ifindex {ifindex}", _errno.EIO, "attached program not found by query")
        return found

    @classmethod
    def find(cls, ifindex: int, mode: str | None = None, netns: NetnsLike = None) -> XdpAttachment | None:
        """The XDP program on ``ifindex`` (in ``mode``, or whichever mode is in use), or None."""
        attach_mode, ids = _xdp_query(ifindex, netns)
        if mode is None:
            if attach_mode == lib.XDP_ATTACHED_NONE:
                return None
            mode = _XDP_ATTACHED_MODE.get(attach_mode)
            if mode is None:  # several modes at once: prefer the one that sees packets first
                mode = next(m for m in ("offload", "driver", "generic") if ids[m])
        mode = _canonical_mode(mode)
        return cls(ifindex, mode, ids[mode], netns) if ids[mode] else None

    def query(self) -> int | None:
        """Id of the program attached in this mode now, or None."""
        return _xdp_query(self.ifindex, self.netns)[1][self.mode] or None

    @property
    def attached(self) -> bool:
        return self.query() == self.prog_id

    def replace(self, prog: ProgLike) -> None:
        """Swap in ``prog``, but only if our program is still the one attached (else EEXIST)."""
        with _expected_prog_fd(self.prog_id, f"xdp replace on ifindex {self.ifindex}") as old_fd:
            opts = ffi.new("struct bpf_xdp_attach_opts *")
            opts.sz = ffi.sizeof("struct bpf_xdp_attach_opts")
            opts.old_prog_fd = old_fd
            with _netns(self.netns):
                ret = lib.bpf_xdp_attach(self.ifindex, _fd(prog), XDP_MODES[self.mode], opts)
                if ret < 0:
                    raise_errno(f"xdp replace {self.mode} on {_ifdesc(self.ifindex, self.netns)}", -ret)
        self.prog_id = prog_id_of(prog)

    def detach(self, missing_ok: bool = True) -> bool:
        """Detach our program; False when nothing of ours is attached any more (and ``missing_ok``).

        The kernel checks that the attached program is still ours, so a
        program someone else attached since is left alone (EEXIST).
        """
        if self.query() is None:
            if missing_ok:
                return False
            raise BPFError(f"xdp detach {self.mode} on ifindex {self.ifindex}", _errno.ENOENT)
        old_fd = lib.bpf_prog_get_fd_by_id(self.prog_id)
        if old_fd < 0:
            if old_fd == -_errno.ENOENT and missing_ok:  # our program no longer exists at all
                return False
            raise_errno(f"xdp detach on ifindex {self.ifindex}: open program id {self.prog_id}", -old_fd)
        try:
            opts = ffi.new("struct bpf_xdp_attach_opts *")
            opts.sz = ffi.sizeof("struct bpf_xdp_attach_opts")
            opts.old_prog_fd = old_fd
            with _netns(self.netns):
                ret = lib.bpf_xdp_detach(self.ifindex, XDP_MODES[self.mode], opts)
                if ret < 0:
                    msg = "another XDP program is attached now; not ours to remove" if ret == -_errno.EEXIST else None
                    raise_errno(f"xdp detach {self.mode} on {_ifdesc(self.ifindex, self.netns)}", -ret, msg)
        finally:
            os.close(old_fd)
        return True

    def __repr__(self) -> str:
        where = f" netns={self.netns}" if self.netns else ""
        return f"<XdpAttachment {self.mode} ifindex={self.ifindex} prog_id={self.prog_id}{where}>"


def _canonical_mode(mode: str) -> str:
    return {"skb": "generic", "native": "driver"}.get(mode, mode)


def attach_xdp(prog: ProgLike, ifindex: int, mode: str = "generic", *, replace: bool = False,
               netns: NetnsLike = None) -> XdpAttachment:
    """Attach an XDP program; see :meth:`XdpAttachment.attach`."""
    return XdpAttachment.attach(prog, ifindex, mode, replace=replace, netns=netns)


@contextlib.contextmanager
def _expected_prog_fd(prog_id: int, op: str) -> Iterator[int]:
    fd = lib.bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        raise_errno(f"{op}: open program id {prog_id}", -fd)
    try:
        yield fd
    finally:
        os.close(fd)


def cgroup2_mount() -> str:
    """Mount point of the cgroup v2 hierarchy (``/sys/fs/cgroup`` or ``.../unified`` on hybrid hosts)."""
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "cgroup2":
                return parts[1].encode().decode("unicode_escape")
    raise BPFError("find cgroup2 mount", _errno.ENOENT, "no cgroup v2 hierarchy is mounted")


def _cgroup_type(attach_type: str) -> int:
    try:
        return CGROUP_ATTACH_TYPES[attach_type]
    except KeyError:
        raise ValueError(f"cgroup attach type must be one of {sorted(CGROUP_ATTACH_TYPES)}, not {attach_type!r}") from None


def _open_cgroup(path: str, op: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise BPFError(f"{op}: open cgroup {path}", exc.errno or _errno.EIO) from None


# Errors that mean "this kernel has no cgroup bpf_link": try the legacy attach.
_NO_LINK_ERRNOS = {_errno.EINVAL, _errno.EOPNOTSUPP, ENOTSUPP}


class CgroupAttachment:
    """A program on a cgroup hook: a bpf_link, or a legacy (multi) attachment on old kernels.

    A link lives as long as an fd or a pin holds it: call ``pin(path)``
    before the process exits to keep it, ``CgroupAttachment.from_pin(path)``
    to get it back. Legacy attachments stay until detached.
    """

    def __init__(self, attach_type: str, prog_id: int, *, cgroup: str | None = None, cgroup_id: int | None = None,
                 link_fd: int | None = None, link_id: int | None = None, pin_path: str | None = None):
        self.attach_type = attach_type
        self.prog_id = prog_id
        self.cgroup = cgroup
        self.cgroup_id = cgroup_id
        self.link_fd = link_fd
        self.link_id = link_id
        self.pin_path = pin_path
        self._legacy_prog_fd: int | None = None

    @property
    def is_link(self) -> bool:
        return self.link_id is not None

    @classmethod
    def attach(cls, prog: ProgLike, cgroup: str | os.PathLike, attach_type: str, *,
               use_link: bool = True) -> CgroupAttachment:
        """Attach ``prog`` to the cgroup directory ``cgroup`` on hook ``attach_type`` ("egress", "connect4", ...).

        Uses a bpf_link unless the kernel refuses cgroup links (or
        ``use_link=False``), then falls back to BPF_F_ALLOW_MULTI attach.
        """
        cgroup = os.fspath(cgroup)
        ctype = _cgroup_type(attach_type)
        op = f"cgroup attach {attach_type} on {cgroup}"
        cg_fd = _open_cgroup(cgroup, op)
        try:
            cgroup_id = os.fstat(cg_fd).st_ino  # a cgroup2 directory's inode is its cgroup id
            if use_link:
                link_fd = lib.bpf_link_create(_fd(prog), cg_fd, ctype, ffi.NULL)
                if link_fd >= 0:
                    att = cls(attach_type, 0, cgroup=cgroup, cgroup_id=cgroup_id, link_fd=link_fd)
                    att._refresh_from_link()
                    return att
                if -link_fd not in _NO_LINK_ERRNOS:
                    raise_errno(op, -link_fd)
            ret = lib.bpf_prog_attach(_fd(prog), cg_fd, ctype, lib.BPF_F_ALLOW_MULTI)
            if ret < 0:
                raise_errno(op, -ret)
            return cls(attach_type, prog_id_of(prog), cgroup=cgroup, cgroup_id=cgroup_id)
        finally:
            os.close(cg_fd)

    @classmethod
    def from_pin(cls, path: str | os.PathLike) -> CgroupAttachment:
        """Reopen a cgroup link pinned at ``path`` (by this or an earlier process)."""
        path = os.fspath(path)
        fd = lib.bpf_obj_get(path.encode())
        if fd < 0:
            raise_errno(f"open pinned link {path}", -fd)
        att = cls("", 0, link_fd=fd, pin_path=path)
        try:
            att._refresh_from_link()
        except BaseException:
            att.close()
            raise
        if att.cgroup_id is None:
            att.close()
            raise BPFError(f"open pinned link {path}", _errno.EINVAL, "the pinned object is not a cgroup link")
        return att

    @staticmethod
    def query(cgroup: str | os.PathLike, attach_type: str) -> list[int]:
        """Ids of the programs attached (by link or legacy) to this cgroup hook, in run order."""
        cgroup = os.fspath(cgroup)
        op = f"cgroup query {attach_type} on {cgroup}"
        cg_fd = _open_cgroup(cgroup, op)
        try:
            count = ffi.new("uint32_t *", 64)
            ids = ffi.new("uint32_t[]", 64)
            ret = lib.bpf_prog_query(cg_fd, _cgroup_type(attach_type), 0, ffi.NULL, ids, count)
            if ret < 0:
                raise_errno(op, -ret)
            return [ids[i] for i in range(count[0])]
        finally:
            os.close(cg_fd)

    def _refresh_from_link(self) -> None:
        desc = ffi.new("struct cebpf_link_desc *")
        ret = lib.cebpf_link_describe(self.link_fd, desc)
        if ret < 0:
            raise_errno("describe link", -ret)
        self.link_id = desc.id
        self.prog_id = desc.prog_id
        if desc.type == lib.BPF_LINK_TYPE_CGROUP:
            self.cgroup_id = desc.cgroup_id
            self.attach_type = _CGROUP_TYPE_NAMES.get(desc.attach_type, str(desc.attach_type))
        else:
            self.cgroup_id = None

    def pin(self, path: str | os.PathLike) -> None:
        """Pin the link on a bpffs so it outlives this process."""
        path = os.fspath(path)
        if self.link_fd is None:
            raise BPFError(f"pin cgroup attachment at {path}", _errno.EOPNOTSUPP,
                           "legacy cgroup attachments are not links and cannot be pinned (they persist anyway)")
        ret = lib.bpf_obj_pin(self.link_fd, path.encode())
        if ret < 0:
            raise_errno(f"pin cgroup link {self.link_id} at {path}", -ret)
        self.pin_path = path

    def unpin(self) -> None:
        """Remove the pin; the link then lives only as long as this object's fd."""
        if self.pin_path is None:
            return
        try:
            os.unlink(self.pin_path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise BPFError(f"unpin cgroup link at {self.pin_path}", exc.errno or _errno.EIO) from None
        self.pin_path = None

    @property
    def attached(self) -> bool:
        """Whether our program is still on the hook."""
        if self.link_fd is not None:
            desc = ffi.new("struct cebpf_link_desc *")
            if lib.cebpf_link_describe(self.link_fd, desc) < 0:
                return False
            # A detached link keeps its fd but loses its cgroup (id 0).
            return desc.cgroup_id != 0
        if self.cgroup is None:
            return False
        return self.prog_id in self.query(self.cgroup, self.attach_type)

    def detach(self) -> None:
        """Take the program off the hook, unpin the link and close it."""
        if self.link_fd is not None:
            ret = lib.bpf_link_detach(self.link_fd)
            if ret < 0 and ret != -_errno.ENOLINK:  # ENOLINK: already detached
                raise_errno(f"detach cgroup link {self.link_id}", -ret)
            self.unpin()
            self.close()
            return
        if self.cgroup is None:
            raise BPFError("cgroup detach", _errno.EINVAL, "attachment has neither a link nor a cgroup path")
        op = f"cgroup detach {self.attach_type} on {self.cgroup}"
        cg_fd = _open_cgroup(self.cgroup, op)
        try:
            with _expected_prog_fd(self.prog_id, op) as prog_fd:
                ret = lib.bpf_prog_detach2(prog_fd, cg_fd, _cgroup_type(self.attach_type))
                if ret < 0:
                    raise_errno(op, -ret)
        finally:
            os.close(cg_fd)

    def close(self) -> None:
        """Close our link fd without detaching. An unpinned link goes away with its last fd."""
        fd, self.link_fd = self.link_fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Interpreter shutdown may have torn down os already: never raise here.
        with contextlib.suppress(Exception):
            if getattr(self, "link_fd", None) is not None:
                os.close(self.link_fd)

    def __repr__(self) -> str:
        kind = f"link {self.link_id}" if self.is_link else "legacy"
        return f"<CgroupAttachment {self.attach_type} {kind} cgroup={self.cgroup or self.cgroup_id} prog_id={self.prog_id}>"


def attach_cgroup(prog: ProgLike, cgroup: str | os.PathLike, attach_type: str, *,
                  use_link: bool = True) -> CgroupAttachment:
    """Attach a cgroup program; see :meth:`CgroupAttachment.attach`."""
    return CgroupAttachment.attach(prog, cgroup, attach_type, use_link=use_link)
