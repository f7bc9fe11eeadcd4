"""L4: one node's dataplane: load/attach the datapath, write its maps, trace packets.

Only the skeleton exists so far: :class:`Dataplane` loads the datapath
object, registers interfaces and writes entries; the service compiler and
the reconciler come later.
"""

from calico_ebpf.dataplane.datapath import NAT_FLG_SRC_RANGES, Dataplane, RunResult, fe_hash_key
from calico_ebpf.dataplane.state import CtResult, DpState, PolicyDir, PolicyRc, ProgSlot, StateFlags, Verdict

__all__ = [
           "NAT_FLG_SRC_RANGES",
           "CtResult",
           "Dataplane",
           "DpState",
           "PolicyDir",
           "PolicyRc",
           "ProgSlot",
           "RunResult",
           "StateFlags",
           "Verdict",
           "fe_hash_key",
]
