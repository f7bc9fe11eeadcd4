"""Preflight on the real node: probes pass as root; an unprivileged run fails and says why."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from calico_ebpf import preflight

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534


def _cli(*args: str, unprivileged: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "calico_ebpf.cli.preflight", *args]
    if unprivileged:
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to run the unprivileged check"
        cmd = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all", *cmd]
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60, cwd="/", env=env)


def test_all_required_checks_pass_as_root():
    checks = preflight.run_checks()
    by_name = {c.name: c for c in checks}
    assert {"arch", "kernel", "capabilities", "bpf_syscall", "btf", "bpffs", "tc_bpf"} <= set(by_name)
    assert preflight.failures(checks) == []
    assert by_name["tc_bpf"].ok and "scratch netns" in by_name["tc_bpf"].detail


def test_tc_probe_leaves_no_namespace_or_qdisc_behind():
    before = set(os.listdir("/var/run/netns")) if os.path.isdir("/var/run/netns") else set()
    assert preflight.check_tc().ok
    after = set(os.listdir("/var/run/netns")) if os.path.isdir("/var/run/netns") else set()
    assert after == before


def _bpf_mounts() -> list[str]:
    # Only bpffs lines: other tests running beside this one (netns creation
    # adds nsfs mounts) must not make it fail.
    with open("/proc/self/mounts") as f:
        return sorted(line for line in f if line.split()[2:3] == ["bpf"])


def test_bpffs_mount_probe_mounts_nothing_on_the_host():
    before = _bpf_mounts()
    assert preflight.probe_bpffs_mount() == 0
    assert _bpf_mounts() == before


def test_cli_json_as_root():
    proc = _cli("--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True and report["reasons"] == []
    assert all(c["ok"] for c in report["checks"] if c["required"])


def test_cli_unprivileged_fails_and_names_the_missing_capability():
    proc = _cli("--json", unprivileged=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is False
    reasons = "\n".join(report["reasons"])
    assert "CAP_NET_ADMIN" in reasons
    assert "bpf_syscall" in reasons and "EPERM" in reasons
    failed = {c["name"] for c in report["checks"] if not c["ok"] and c["required"]}
    assert {"capabilities", "bpf_syscall", "tc_bpf"} <= failed
    # Facts that do not depend on privileges still pass.
    assert {"arch", "kernel"}.isdisjoint(failed)


def test_cli_table_unprivileged_prints_reasons_on_stderr():
    proc = _cli(unprivileged=True)
    assert proc.returncode == 1
    assert "FAIL" in proc.stdout
    assert "cannot run the eBPF dataplane" in proc.stderr and "CAP_NET_ADMIN" in proc.stderr
