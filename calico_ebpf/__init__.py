"""calico_ebpf: a Python SDK for an eBPF Kubernetes dataplane in the style of Calico's eBPF mode.

Layers (each imports only those below it): ``kernel`` (libbpf via cffi),
``maps`` (typed map entries and codecs), then compiler, dataplane and
integration layers. See docs/architecture.md.

The shapes most users touch are re-exported here (imported on first use, so
``import calico_ebpf`` stays light)::

    from calico_ebpf import Dataplane, NodeConfig, ClusterState
    state = ClusterState.from_manifests("cluster.yaml")
    dp = Dataplane(NodeConfig.from_state(state, node="node-1"), pin_dir=None)
    report = dp.apply(state)
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

_LAZY = {
    "ApplyReport": "calico_ebpf.dataplane.reconcile",
    "ClusterState": "calico_ebpf.model.state",
    "Dataplane": "calico_ebpf.dataplane.datapath",
    "NodeConfig": "calico_ebpf.dataplane.config",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'calico_ebpf' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

__all__ = [
    "ApplyReport",
    "BPFError",
    "CalicoEBPFError",
    "ClusterState",
    "Dataplane",
    "MapFullError",
    "ModelError",
    "NodeConfig",
    "PreflightError",
    "UnsupportedError",
    "__version__",
]
