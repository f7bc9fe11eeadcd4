"""Fixtures shared by the kernel-layer tests.

Everything a fixture creates (pin directories, maps, objects) carries a
unique name and is removed at teardown; nothing else is touched.
"""

from __future__ import annotations

import importlib.resources
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable
sys.path.insert(0, str(ROOT / "tools"))


@pytest.fixture(scope="session")
def bpf_objects() -> Path:
    """Directory of the compiled BPF objects, rebuilt first if a source is newer."""
    import build_bpf

    out = Path(str(importlib.resources.files("calico_ebpf._bpf")))
    build_bpf.build_all(str(out))
    return out


@pytest.fixture(scope="session")
def selftest_o(bpf_objects) -> str:
    """Path of bpf/selftest.bpf.c compiled (small programs for kernel-layer tests)."""
    return str(bpf_objects / "selftest.o")


@pytest.fixture
def pin_dir():
    """A fresh, unique bpffs directory, removed with everything pinned in it."""
    from calico_ebpf.kernel import bpffs

    root = bpffs.ensure_bpffs(mount=True)
    path = os.path.join(root, f"cebpf_test_{os.getpid()}_{uuid.uuid4().hex[:10]}")
    bpffs.make_pin_dir(path)
    yield path
    bpffs.remove_pin_dir(path)
    from calico_ebpf.dataplane.policy import remove_policy_tables

    remove_policy_tables(path)  # a PolicyManager on a pinned dataplane writes its rule table there


@pytest.fixture
def compile_bpf(tmp_path):
    """Compile a C source string with clang for BPF into tmp_path; returns the object path."""
    import build_bpf

    clang = build_bpf.check_toolchain()

    def _compile(source: str, name: str = "prog") -> str:
        src = tmp_path / f"{name}.bpf.c"
        obj = tmp_path / f"{name}.o"
        src.write_text(source)
        cmd = [clang, "-O2", "-g", "-target", "bpf", "-I", str(ROOT / "bpf" / "include"),
               *build_bpf._multiarch_include(), "-c", str(src), "-o", str(obj)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return str(obj)

    return _compile


@pytest.fixture
def fd_count():
    """Function returning how many fds this process has open (for leak checks)."""
    return lambda: len(os.listdir("/proc/self/fd"))


@pytest.fixture
def run_python():
    """Run code in a separate interpreter of the project venv (a second process); returns stdout."""

    def _run(code: str, timeout: float = 60) -> str:
        proc = subprocess.run([VENV_PYTHON, "-c", code], capture_output=True, text=True, timeout=timeout,
                              cwd=str(ROOT))
        assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    return _run
