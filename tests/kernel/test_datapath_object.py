"""The datapath object itself: every program passes the verifier, layouts of
the structs Python decodes match BTF, pinning re-adopts maps, attach/detach."""

from __future__ import annotations

import os
import struct
from importlib.resources import files

from calico_ebpf.dataplane import Dataplane, fe_hash_key
from calico_ebpf.dataplane.datapath import HOOK_PROGRAMS
from calico_ebpf.dataplane.state import _FMT, SIZE
from calico_ebpf.kernel.attach import TcAttachment
from calico_ebpf.kernel.btf import struct_layout
from calico_ebpf.kernel.netns import Netns, veth_pair
from calico_ebpf.maps.entries import NatFrontendValue, Proto

DATAPATH_O = str(files("calico_ebpf._bpf") / "datapath.o")

STATE_FIELDS = ["ts", "ip_src", "ip_dst", "post_nat_ip_dst", "post_nat_ip_src", "sport", "dport", "post_nat_dport",
                "ip_proto", "icmp_type", "icmp_code", "hook", "pol_dir", "verdict", "pol_slot", "pol_rc", "ifindex",
                "if_flags", "flags", "ct_rc", "reason", "nat_svc_id", "nat_ordinal", "nat_affinity_timeo",
                "route_flags_src", "route_flags_dst", "fwd_ifindex", "ip_len", "route_ifindex_dst", "trace_token", "pad",
                "pol_rule", "pad2"]


def test_every_program_loads(bpf_objects):
    with Dataplane(pin_dir=None) as dp:
        assert set(dp.programs) == {"cebpf_from_ifc", "cebpf_to_ifc", "cebpf_tc_allowed", "cebpf_tc_denied",
                                    "cebpf_policy_allow", "cebpf_policy_deny"}


def test_state_layout_matches_btf(bpf_objects):
    layout = struct_layout(DATAPATH_O, "dp_state")
    assert layout.size == SIZE
    offsets, off = {}, 0
    for name, code in zip(STATE_FIELDS, _FMT[1:]):
        size = struct.calcsize("<" + code)
        offsets[name] = (off, size)
        off += size
    for name, (o, size) in offsets.items():
        m = layout.members[name]
        assert (m.offset, m.size) == (o, size), name


def test_frontend_hash_key_layout_matches_btf(bpf_objects):
    layout = struct_layout(DATAPATH_O, "nat_feh_key_v4")
    key = fe_hash_key("10.96.0.1", 0x1234, Proto.UDP)
    assert layout.size == len(key) == 8
    assert key[layout.members["addr"].offset:][:4] == bytes([10, 96, 0, 1])
    assert struct.unpack_from("<H", key, layout.members["port"].offset)[0] == 0x1234
    assert key[layout.members["protocol"].offset] == 17


def test_pinned_maps_are_readopted(pin_dir):
    with Dataplane(pin_dir=pin_dir) as dp:
        dp.set_frontend("10.96.0.1", 80, "tcp", NatFrontendValue(id=3, count=2))
    assert os.path.exists(os.path.join(pin_dir, "cebpf_nat_feh"))
    with Dataplane(pin_dir=pin_dir) as dp2:
        raw = dp2.maps["cebpf_nat_feh"].lookup(fe_hash_key("10.96.0.1", 80, "tcp"))
        assert NatFrontendValue.from_bytes(raw) == NatFrontendValue(id=3, count=2)


def test_attach_and_detach_both_hooks():
    with Netns(prefix="dpatt") as ns, Dataplane(pin_dir=None) as dp:
        veth_pair("cali_t", "eth_t", netns=ns, peer_netns=ns)
        idx = ns.ifindex("cali_t")
        dp.attach(idx, "cali_t", "wep", netns=ns)
        for direction, prog in HOOK_PROGRAMS.items():
            att = TcAttachment.find(idx, direction, netns=ns)
            assert att is not None and att.prog_id == dp.programs[prog].info.id
        assert dp.interface(idx).name == "cali_t"
        dp.detach(idx)
        assert TcAttachment.find(idx, "ingress", netns=ns) is None
        assert TcAttachment.find(idx, "egress", netns=ns) is None
        assert dp.interface(idx) is None
