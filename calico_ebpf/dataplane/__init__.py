"""L4: one node's dataplane: load/attach the datapath, write its maps, trace packets.

:class:`Dataplane` loads the datapath object and registers interfaces;
``Dataplane.apply(state)`` compiles a ClusterState and reconciles the maps
(``reconcile.py``, with ``nat_sync.py``/``small_maps.py`` for the writes and
``changes.py`` for what changed); :class:`NodeConfig` says which node.
"""

from calico_ebpf.dataplane.config import NodeConfig
from calico_ebpf.dataplane.datapath import NAT_FLG_SRC_RANGES, Dataplane, RunResult, fe_hash_key
from calico_ebpf.dataplane.reconcile import ApplyReport, MapChanges
from calico_ebpf.dataplane.state import CtResult, DpState, PolicyDir, PolicyRc, ProgSlot, StateFlags, Verdict

__all__ = [
           "NAT_FLG_SRC_RANGES",
           "ApplyReport",
           "CtResult",
           "Dataplane",
           "DpState",
           "MapChanges",
           "NodeConfig",
           "PolicyDir",
           "PolicyRc",
           "ProgSlot",
           "RunResult",
           "StateFlags",
           "Verdict",
           "fe_hash_key",
]
