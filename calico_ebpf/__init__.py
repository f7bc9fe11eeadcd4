"""calico_ebpf: a Python SDK for an eBPF Kubernetes dataplane in the style of Calico's eBPF mode.

Layers (each imports only those below it): ``kernel`` (libbpf via cffi),
``maps`` (typed map entries and codecs), then compiler, dataplane and
integration layers. See docs/architecture.md.
"""

from calico_ebpf.errors import (
    BPFError,
    CalicoEBPFError,
    MapFullError,
    ModelError,
    PreflightError,
    UnsupportedError,
)

__version__ = "0.1.0"

__all__ = [
    "BPFError",
    "CalicoEBPFError",
    "MapFullError",
    "ModelError",
    "PreflightError",
    "UnsupportedError",
    "__version__",
]
