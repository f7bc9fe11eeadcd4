#!/usr/bin/env python3
"""Compile bpf/*.bpf.c into BPF objects with clang (-O2 -g -target bpf).

Used by setup.py's build_ext and runnable by hand:
``python tools/build_bpf.py calico_ebpf/_bpf``. Objects are rebuilt only
when a source or header is newer. Warnings are errors. ``-g`` keeps BTF,
which the maps layer checks its layouts against.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BPF_DIR = os.path.join(ROOT, "bpf")
DEBIAN_PACKAGES = "clang llvm libbpf-dev libelf-dev linux-libc-dev"


class BuildError(RuntimeError):
    pass


def _multiarch_include() -> list[str]:
    # Debian keeps asm/types.h under /usr/include/<multiarch>.
    try:
        triple = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True).stdout.strip()
    except OSError:
        triple = ""
    if not triple:
        triple = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}.get(os.uname().machine, "")
    path = f"/usr/include/{triple}"
    return [f"-I{path}"] if triple and os.path.isdir(path) else []


def check_toolchain() -> str:
    clang = shutil.which(os.environ.get("CLANG", "clang"))
    missing = []
    if clang is None:
        missing.append("clang")
    if not os.path.exists("/usr/include/bpf/bpf_helpers.h"):
        missing.append("libbpf headers (/usr/include/bpf/bpf_helpers.h)")
    if missing:
        raise BuildError(
            "cannot build the BPF programs: missing " + ", ".join(missing)
            + f". Install them with: apt-get install {DEBIAN_PACKAGES}"
        )
    return clang


def _newest_input(src: str) -> float:
    headers = glob.glob(os.path.join(BPF_DIR, "include", "*.h")) + glob.glob(os.path.join(BPF_DIR, "*.h"))
    return max(os.path.getmtime(p) for p in [src, *headers])


def build_all(out_dir: str, force: bool = False) -> list[str]:
    clang = check_toolchain()
    os.makedirs(out_dir, exist_ok=True)
    init = os.path.join(out_dir, "__init__.py")
    if not os.path.exists(init):
        with open(init, "w") as f:
            f.write('"""Compiled BPF objects (built by tools/build_bpf.py)."""\n')
    built = []
    for src in sorted(glob.glob(os.path.join(BPF_DIR, "*.bpf.c"))):
        obj = os.path.join(out_dir, os.path.basename(src)[: -len(".bpf.c")] + ".o")
        if not force and os.path.exists(obj) and os.path.getmtime(obj) >= _newest_input(src):
            continue
        cmd = [
            clang, "-O2", "-g", "-target", "bpf", "-Wall", "-Werror",
            "-I", os.path.join(BPF_DIR, "include"), *_multiarch_include(),
            "-c", src, "-o", obj,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"clang failed on {src}:\n{proc.stderr}")
        built.append(obj)
    return built


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "calico_ebpf", "_bpf")
    try:
        for path in build_all(target, force="--force" in sys.argv):
            print("built", os.path.relpath(path, ROOT))
    except BuildError as exc:
        sys.exit(str(exc))
