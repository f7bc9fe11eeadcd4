"""The datapath's per-packet state record (``struct dp_state``, bpf/include/dp_state.h).

The datapath fills one per-CPU entry of ``cebpf_state`` for every packet; it
is the policy programs' input and, read back after ``BPF_PROG_TEST_RUN``, the
trace of what the datapath did::

    st = dp.last_state()
    st.verdict, st.reason, st.ct_rc, st.nat_backend
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass

from calico_ebpf.maps.enums import Counter

# Offsets and size are asserted in dp_state.h (policy bytecode relies on them)
# and checked against the object's BTF by the tests.
_FMT = "<QIIIIHHHBBBBBBiiIIIIIIIIIIIIIIIII"
SIZE = struct.calcsize(_FMT)
assert SIZE == 112


class Verdict(enum.IntEnum):
    NONE = 0
    ALLOW = 1
    DROP = 2
    REDIRECT = 3
    REJECT = 4


class CtResult(enum.IntEnum):
    NONE = 0
    NEW = 1
    ESTABLISHED = 2
    ESTABLISHED_DNAT = 3
    ESTABLISHED_SNAT = 4
    RELATED = 5
    INVALID = 6


class PolicyRc(enum.IntEnum):
    NONE = 0
    ALLOW = 1
    DENY = 2


class PolicyDir(enum.IntEnum):
    EGRESS = 0
    INGRESS = 1


class StateFlags(enum.IntFlag, boundary=enum.KEEP):
    NEW_FLOW = 0x1
    DNAT = 0x2
    REV_NAT = 0x4
    HAIRPIN = 0x8
    FAILSAFE = 0x10
    SKIP_POLICY = 0x20
    APPROVE_LEG = 0x40
    ICMP_REPLY = 0x80
    DEST_IS_HOST = 0x100
    SRC_IS_HOST = 0x200
    AFFINITY_HIT = 0x400
    EXTERNAL = 0x800
    ICMP_INNER_NAT = 0x1000
    POLICY_RAN = 0x2000
    CT_RECYCLED = 0x4000
    # NodePort forwarding over VXLAN (bpf/dp_tunnel.h); DpState.tun_ip names the other node.
    FROM_TUNNEL = 0x8000   # arrived VXLAN-encapsulated from node tun_ip, decapsulated
    NP_FWD = 0x10000       # new flow forwarded to the backend's node tun_ip
    ENCAP = 0x20000        # sent on VXLAN-encapsulated to node tun_ip
    DSR = 0x40000          # reply sent straight to the client (bpfExternalServiceMode DSR)
    TOO_BIG = 0x80000      # answered with ICMP fragmentation needed (tunnel MTU)
    SENT_RESET = 0x100000  # the flow's conntrack said SEND_RESET: answered with a TCP RST, entries gone
    NO_CT = 0x80000000


class ProgSlot(enum.IntEnum):
    """Slots of ``cebpf_progs``: where a policy program continues."""

    ALLOWED = 0
    DENIED = 1


def _ip(raw: int) -> ipaddress.IPv4Address:
    # Addresses are stored in network order; the record is read little-endian.
    return ipaddress.IPv4Address(raw.to_bytes(4, "little"))


@dataclass(frozen=True)
class DpState:
    """One decoded ``struct dp_state``; addresses network order in C, ports host order."""

    ts: int
    ip_src: ipaddress.IPv4Address
    ip_dst: ipaddress.IPv4Address
    post_nat_ip_dst: ipaddress.IPv4Address
    post_nat_ip_src: ipaddress.IPv4Address
    sport: int
    dport: int
    post_nat_dport: int
    ip_proto: int
    icmp_type: int
    icmp_code: int
    hook: int
    pol_dir: PolicyDir
    verdict: Verdict
    pol_slot: int
    pol_rc: PolicyRc
    ifindex: int
    if_flags: int
    flags: StateFlags
    ct_rc: CtResult
    reason: int
    nat_svc_id: int
    nat_ordinal: int
    nat_affinity_timeo: int
    route_flags_src: int
    route_flags_dst: int
    fwd_ifindex: int
    ip_len: int
    route_ifindex_dst: int
    trace_token: int
    #: The other node of a tunnelled NodePort flow (None: not tunnelled).
    tun_ip: ipaddress.IPv4Address | None = None
    #: Which rule of the policy program decided: 1 + its step index (0: the program did not say).
    pol_rule: int = 0

    @classmethod
    def from_bytes(cls, data: bytes) -> DpState:
        f = struct.unpack_from(_FMT, data)
        (ts, src, dst, pdst, psrc, sport, dport, pdport, proto, itype, icode, hook, pdir, verdict,
         pslot, prc, ifindex, ifflags, flags, ct_rc, reason, svc, ordinal, aff, rts, rtd, fwd, iplen, rtifd, token, tun, pol_rule, _pad2) = f
        return cls(ts, _ip(src), _ip(dst), _ip(pdst), _ip(psrc), sport, dport, pdport, proto, itype, icode, hook,
                   PolicyDir(pdir), Verdict(verdict), pslot, PolicyRc(prc), ifindex, ifflags, StateFlags(flags),
                   CtResult(ct_rc), reason, svc, ordinal, aff, rts, rtd, fwd, iplen, rtifd, token,
                   _ip(tun) if tun else None, pol_rule)

    @property
    def reason_name(self) -> str:
        try:
            return Counter(self.reason).name
        except ValueError:
            return str(self.reason)

    @property
    def nat_backend(self) -> tuple[ipaddress.IPv4Address, int] | None:
        """The (ip, port) chosen for this packet's service, or None when not DNATed."""
        if not self.flags & StateFlags.DNAT:
            return None
        return self.post_nat_ip_dst, self.post_nat_dport
