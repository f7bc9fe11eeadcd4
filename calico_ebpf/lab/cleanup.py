"""Find and remove what a lab left in the kernel, by the lab's names only.

A lab creates nothing in the host's namespace: its links, addresses and
routes live inside its own namespaces, so removing those namespaces (after
stopping the processes running in them) removes everything. Namespaces are
matched by :func:`calico_ebpf.lab.plan.lab_netns_re`, and processes by the
namespace they run in (the inode of ``/proc/<pid>/ns/net``), never by name.
"""

from __future__ import annotations

import os
import signal
import time

from pyroute2 import netns as _pyr_netns

from calico_ebpf.kernel.netns import NETNS_RUN_DIR, NetnsError
from calico_ebpf.lab.plan import lab_netns_re

__all__ = ["find_lab_netns", "pids_in_netns", "remove_lab", "stop_pids"]


def find_lab_netns(prefix: str) -> list[str]:
    """Names of the existing namespaces of lab ``prefix``, in teardown order.

    Pods first, then nodes, then the external client and the fabric last,
    so a veth is always removed from the side that goes first.
    """
    pattern = lab_netns_re(prefix)
    try:
        names = os.listdir(NETNS_RUN_DIR)
    except FileNotFoundError:
        return []

    def order(name: str) -> tuple[int, str]:
        m = pattern.fullmatch(name)
        assert m is not None
        if m["pod"] is not None:
            return (0, name)
        if m["node"] is not None:
            return (1, name)
        return (2 if name.endswith("-ext") else 3, name)

    return sorted((n for n in names if pattern.fullmatch(n)), key=order)


def _netns_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:  # gone, or a zombie (no namespaces left), or not ours to read
        return None
    return (st.st_dev, st.st_ino)


def pids_in_netns(*names: str) -> dict[str, list[int]]:
    """Processes (other than this one) in each named namespace, from one pass over ``/proc``."""
    targets = {}
    for name in names:
        ns_id = _netns_id(os.path.join(NETNS_RUN_DIR, name))
        if ns_id is not None:
            targets[ns_id] = name
    found: dict[str, list[int]] = {name: [] for name in names}
    if not targets:
        return found
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            name = targets.get(_netns_id(f"/proc/{entry}/ns/net"))  # type: ignore[arg-type]
            if name is not None:
                found[name].append(int(entry))
    for pids in found.values():
        pids.sort()
    return found


def stop_pids(pids: list[int], timeout: float = 2.0) -> None:
    """SIGTERM, then SIGKILL whatever is still there after ``timeout`` seconds."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if _running(p)]
    for pid in alive:
        _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _running(pid: int) -> bool:
    # A zombie has exited: only its parent's wait() is missing.
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def remove_lab(prefix: str) -> list[str]:
    """Stop the processes in, and delete, every namespace of lab ``prefix``; returns their names."""
    names = find_lab_netns(prefix)
    stop_pids([pid for pids in pids_in_netns(*names).values() for pid in pids])
    for name in names:
        try:
            _pyr_netns.remove(name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise NetnsError(f"delete netns {name}", exc.errno) from None
    return names
