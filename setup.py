"""Build hooks that pyproject.toml cannot express.

* cffi_modules: the libbpf binding (API mode, compiled against system libbpf).
* ext_modules: every Cython source (*.pyx) under calico_ebpf/, unless
  CALICO_EBPF_PURE_PYTHON=1 asks for the pure-Python fallbacks only.
* build_ext also compiles bpf/*.bpf.c with clang into calico_ebpf/_bpf/,
  so the BPF objects ship as package data and are found by importlib.resources.
"""

import glob
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "tools"))
import build_bpf  # noqa: E402

PURE_PYTHON = os.environ.get("CALICO_EBPF_PURE_PYTHON") == "1"


class BuildExtWithBPF(build_ext):
    def run(self):
        in_tree = self.inplace or getattr(self, "editable_mode", False)
        out_dir = os.path.join(HERE if in_tree else self.build_lib, "calico_ebpf", "_bpf")
        build_bpf.build_all(out_dir)
        super().run()


def cython_extensions():
    if PURE_PYTHON:
        return []
    from Cython.Build import cythonize

    sources = sorted(glob.glob("calico_ebpf/**/*.pyx", recursive=True))
    exts = [Extension(src[:-4].replace("/", "."), [src], extra_compile_args=["-O2"]) for src in sources]
    return cythonize(exts, language_level=3, compiler_directives={"boundscheck": False, "wraparound": False})


setup(
    cffi_modules=["calico_ebpf/kernel/_ffi_build.py:ffibuilder"],
    ext_modules=cython_extensions(),
    cmdclass={"build_ext": BuildExtWithBPF},
)
