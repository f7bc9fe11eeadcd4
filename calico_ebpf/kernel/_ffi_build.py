"""cffi build script for ``calico_ebpf.kernel._libbpf`` (out-of-line API mode).

The cdef is every ``csrc/cdef/*.h`` (sorted, one file per area) and the C
source is libbpf's headers plus every ``csrc/src/*.h`` (version gates that
define ``HAS_*`` constants, and small static helpers). Adding an area is
adding a file pair; this script does not change.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

from cffi import FFI

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(ROOT, "csrc")
MODULE = "calico_ebpf.kernel._libbpf"


def _read_all(pattern: str) -> str:
    parts = []
    for path in sorted(glob.glob(os.path.join(CSRC, pattern))):
        with open(path) as f:
            parts.append(f"/* --- {os.path.relpath(path, ROOT)} --- */\n{f.read()}")
    return "\n".join(parts)


def _has_pkgconfig_libbpf() -> bool:
    if shutil.which("pkg-config") is None:
        return False
    return subprocess.run(["pkg-config", "--exists", "libbpf"]).returncode == 0


SOURCE = "\n".join(
    [
        "#include <stdbool.h>",
        "#include <stdint.h>",
        "#include <bpf/libbpf.h>",
        "#include <bpf/bpf.h>",
        "#include <bpf/btf.h>",
        _read_all("src/*.h"),
    ]
)

ffibuilder = FFI()
ffibuilder.cdef(_read_all("cdef/*.h"))
if _has_pkgconfig_libbpf():
    ffibuilder.set_source_pkgconfig(MODULE, ["libbpf"], SOURCE, extra_compile_args=["-O2"])
else:
    ffibuilder.set_source(MODULE, SOURCE, libraries=["bpf", "elf", "z"], extra_compile_args=["-O2"])


if __name__ == "__main__":
    ffibuilder.compile(tmpdir=os.path.join(ROOT, "build", "cffi"), verbose=True)
