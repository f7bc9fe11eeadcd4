# ruff: noqa: F811 - fixtures imported from netns_fixtures are test parameters
"""tc, XDP and cgroup attachments on the real kernel, proven by real packets moving counters.

Programs come from bpf/attach_test.bpf.c: each counts the packets it sees
(tc/XDP per IP protocol) and lets them pass.
"""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import sys
import time
import uuid

import pytest
from netns_fixtures import send_udp, veth_link, wait_until  # noqa: F401 - fixture

from calico_ebpf.errors import BPFError
from calico_ebpf.kernel.attach import (
    CgroupAttachment,
    TcAttachment,
    XdpAttachment,
    attach_cgroup,
    attach_tc,
    attach_xdp,
    cgroup2_mount,
    prog_id_of,
    remove_clsact,
)
from calico_ebpf.kernel.object import BPFObject

UDP = 17
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def attach_obj(bpf_objects):
    obj = BPFObject.open(str(bpf_objects / "attach_test.o"))
    obj.load()
    yield obj
    obj.close()


def counter(obj, map_name: str, key: int) -> int:
    return struct.unpack("<Q", obj.maps[map_name].lookup(struct.pack("<I", key)))[0]


def counts_reach(obj, map_name: str, key: int, expected: int) -> bool:
    return wait_until(lambda: counter(obj, map_name, key) >= expected) and counter(obj, map_name, key) == expected


def stays(obj, map_name: str, key: int, expected: int, settle: float = 0.3) -> bool:
    time.sleep(settle)
    return counter(obj, map_name, key) == expected


# ---------------------------------------------------------------- tc


def test_tc_ingress_counts_packets_and_detach_stops_it(attach_obj, veth_link):
    link = veth_link
    att = attach_tc(attach_obj.programs["tc_count"], link.host_ifindex, "ingress", netns=link.host)
    assert att.prog_id == attach_obj.programs["tc_count"].info.id
    assert att.attached

    link.send_udp_from_pod(5)
    assert counts_reach(attach_obj, "tc_counts", UDP, 5)

    assert att.detach() is True
    assert TcAttachment.find(link.host_ifindex, "ingress", netns=link.host) is None
    link.send_udp_from_pod(5)
    assert stays(attach_obj, "tc_counts", UDP, 5)
    assert att.detach() is False  # already gone: not an error


def test_tc_egress_on_the_pod_side(attach_obj, veth_link):
    link = veth_link
    att = attach_tc(attach_obj.programs["tc_count"], link.pod_ifindex, "egress", netns=link.pod)
    link.send_udp_from_pod(3)
    assert counts_reach(attach_obj, "tc_counts", UDP, 3)
    # The same slot number on the other direction is a different hook: still empty.
    assert TcAttachment.find(link.pod_ifindex, "ingress", netns=link.pod) is None
    assert att.detach()


def test_tc_in_the_calling_threads_namespace(attach_obj, veth_link):
    link = veth_link
    with link.host.enter():  # netns=None means "where this thread is"
        att = attach_tc(attach_obj.programs["tc_count"], link.host_ifindex, "ingress")
        assert TcAttachment.find(link.host_ifindex, "ingress").prog_id == att.prog_id
    link.send_udp_from_pod(4)
    assert counts_reach(attach_obj, "tc_counts", UDP, 4)
    with link.host.enter():
        assert att.detach()
        assert remove_clsact(link.host_ifindex) is True
        assert remove_clsact(link.host_ifindex) is False


def test_tc_replace_in_place_switches_program(attach_obj, veth_link):
    link = veth_link
    v1, v2 = attach_obj.programs["tc_count"], attach_obj.programs["tc_count_v2"]
    att = attach_tc(v1, link.host_ifindex, "ingress", netns=link.host)
    link.send_udp_from_pod(2)
    assert counts_reach(attach_obj, "tc_counts", UDP, 2)

    att.replace(v2)
    assert att.prog_id == prog_id_of(v2) != prog_id_of(v1)
    assert TcAttachment.find(link.host_ifindex, "ingress", netns=link.host).prog_id == prog_id_of(v2)
    link.send_udp_from_pod(3)
    assert counts_reach(attach_obj, "tc_counts_v2", UDP, 3)
    assert stays(attach_obj, "tc_counts", UDP, 2, settle=0.05)

    # attach(replace=True) on an occupied slot is the same swap, back to v1
    again = attach_tc(v1, link.host_ifindex, "ingress", replace=True, netns=link.host)
    assert again.prog_id == prog_id_of(v1)
    assert not att.attached  # att still believes v2 is there
    assert again.detach()


def test_tc_attach_to_an_occupied_slot_is_refused_with_the_interface_named(attach_obj, veth_link):
    link = veth_link
    att = attach_tc(attach_obj.programs["tc_count"], link.host_ifindex, "ingress", netns=link.host)
    with pytest.raises(BPFError) as exc:
        attach_tc(attach_obj.programs["tc_count_v2"], link.host_ifindex, "ingress", netns=link.host)
    assert exc.value.errno == errno.EEXIST
    assert exc.value.op == f"tc attach ingress on {link.host_if} (ifindex {link.host_ifindex}) in netns {link.host.name}"
    assert att.attached  # the refused attach changed nothing
    att.detach()


def test_tc_attach_to_missing_interface_raises_bpferror(attach_obj, veth_link):
    with pytest.raises(BPFError) as exc:
        attach_tc(attach_obj.programs["tc_count"], 999_999, "egress", netns=veth_link.host)
    assert exc.value.errno == errno.ENODEV
    assert exc.value.op.startswith("tc attach egress on ? (ifindex 999999)")
    with pytest.raises(ValueError):
        attach_tc(attach_obj.programs["tc_count"], veth_link.host_ifindex, "sideways", netns=veth_link.host)


def test_tc_attachment_outlives_the_process_and_is_found_by_another(bpf_objects, veth_link, run_python):
    link = veth_link
    # A first process loads, attaches and exits: the filter keeps the program alive.
    made = run_python(
        "from calico_ebpf.kernel.object import BPFObject\n"
        "from calico_ebpf.kernel.attach import attach_tc\n"
        f"obj = BPFObject.open({str(bpf_objects / 'attach_test.o')!r}); obj.load()\n"
        f"att = attach_tc(obj.programs['tc_count'], {link.host_ifindex}, 'ingress', netns={link.host.name!r})\n"
        "print(att.prog_id)\n"
    )
    prog_id = int(made)
    # A second process (a restarted agent) finds it by slot.
    found = run_python(
        "from calico_ebpf.kernel.attach import TcAttachment\n"
        f"print(TcAttachment.find({link.host_ifindex}, 'ingress', netns={link.host.name!r}).prog_id)\n"
    )
    assert int(found) == prog_id
    # And this process re-adopts it and removes it.
    att = TcAttachment.find(link.host_ifindex, "ingress", netns=link.host)
    assert att is not None and att.prog_id == prog_id
    assert att.detach()
    assert TcAttachment.find(link.host_ifindex, "ingress", netns=link.host) is None


# ---------------------------------------------------------------- XDP


def test_xdp_generic_counts_and_detach(attach_obj, veth_link):
    link = veth_link
    prog = attach_obj.programs["xdp_count"]
    att = attach_xdp(prog, link.host_ifindex, "generic", netns=link.host)
    assert (att.mode, att.prog_id) == ("generic", prog_id_of(prog))
    found = XdpAttachment.find(link.host_ifindex, netns=link.host)
    assert (found.mode, found.prog_id) == ("generic", att.prog_id)

    link.send_udp_from_pod(4)
    assert counts_reach(attach_obj, "xdp_counts", UDP, 4)

    with pytest.raises(BPFError) as exc:
        attach_xdp(prog, link.host_ifindex, "generic", netns=link.host)
    assert exc.value.errno == errno.EBUSY
    assert link.host_if in exc.value.op and "xdp attach generic" in exc.value.op

    assert att.detach() is True
    assert XdpAttachment.find(link.host_ifindex, netns=link.host) is None
    link.send_udp_from_pod(4)
    assert stays(attach_obj, "xdp_counts", UDP, 4)
    assert att.detach() is False


def test_xdp_replace_swaps_only_our_program(attach_obj, veth_link):
    link = veth_link
    v1, v2 = attach_obj.programs["xdp_count"], attach_obj.programs["xdp_count_v2"]
    att = attach_xdp(v1, link.host_ifindex, "generic", netns=link.host)
    stale = XdpAttachment.find(link.host_ifindex, netns=link.host)
    att.replace(v2)
    assert att.prog_id == prog_id_of(v2) == XdpAttachment.find(link.host_ifindex, netns=link.host).prog_id
    link.send_udp_from_pod(3)
    assert counts_reach(attach_obj, "xdp_counts_v2", UDP, 3)
    assert counter(attach_obj, "xdp_counts", UDP) == 0
    # A handle that still believes v1 is attached may not remove v2.
    with pytest.raises(BPFError) as exc:
        stale.detach()
    assert exc.value.errno == errno.EEXIST
    assert att.detach()


def test_xdp_driver_mode_on_veth(attach_obj, veth_link):
    link = veth_link
    att = attach_xdp(attach_obj.programs["xdp_count"], link.host_ifindex, "driver", netns=link.host)
    assert XdpAttachment.find(link.host_ifindex, "driver", netns=link.host).prog_id == att.prog_id
    assert XdpAttachment.find(link.host_ifindex, "generic", netns=link.host) is None
    assert att.detach()
    assert XdpAttachment.find(link.host_ifindex, netns=link.host) is None


# ---------------------------------------------------------------- cgroup


@pytest.fixture
def scratch_cgroup():
    """A child cgroup of the cgroup v2 root, removed afterwards (it must be empty by then)."""
    path = os.path.join(cgroup2_mount(), f"cebpf-test-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.mkdir(path)
    yield path
    os.rmdir(path)


def _udp_from_cgroup(cgroup: str, count: int) -> None:
    """A child process joins ``cgroup`` and sends UDP to loopback; it has exited when this returns."""
    code = (
        "import os, socket\n"
        f"open({os.path.join(cgroup, 'cgroup.procs')!r}, 'w').write(str(os.getpid()))\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"for _ in range({count}): s.sendto(b'x', ('127.0.0.1', 9))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_cgroup_link_counts_pins_and_reopens(attach_obj, scratch_cgroup, pin_dir):
    prog = attach_obj.programs["cgroup_count_egress"]
    att = attach_cgroup(prog, scratch_cgroup, "egress")
    assert att.is_link and att.attached
    assert att.prog_id == prog_id_of(prog)
    assert att.cgroup_id == os.stat(scratch_cgroup).st_ino
    assert CgroupAttachment.query(scratch_cgroup, "egress") == [att.prog_id]

    pin = os.path.join(pin_dir, "cg_egress_link")
    att.pin(pin)
    att.close()  # only the pin holds the link now
    assert CgroupAttachment.query(scratch_cgroup, "egress") == [prog_id_of(prog)]

    _udp_from_cgroup(scratch_cgroup, 3)
    assert counter(attach_obj, "cgroup_counts", 0) == 3

    again = CgroupAttachment.from_pin(pin)
    assert (again.link_id, again.prog_id, again.attach_type) == (att.link_id, att.prog_id, "egress")
    assert again.cgroup_id == os.stat(scratch_cgroup).st_ino
    again.detach()
    assert not os.path.exists(pin)
    assert CgroupAttachment.query(scratch_cgroup, "egress") == []
    _udp_from_cgroup(scratch_cgroup, 2)
    assert counter(attach_obj, "cgroup_counts", 0) == 3


def test_unpinned_link_goes_away_with_its_fd(attach_obj, scratch_cgroup):
    att = attach_cgroup(attach_obj.programs["cgroup_count_egress"], scratch_cgroup, "egress")
    att.close()
    assert wait_until(lambda: CgroupAttachment.query(scratch_cgroup, "egress") == [])


def test_pinned_cgroup_link_survives_the_process_that_made_it(bpf_objects, scratch_cgroup, pin_dir, run_python):
    pin = os.path.join(pin_dir, "cg_link")
    made = run_python(
        "from calico_ebpf.kernel.object import BPFObject\n"
        "from calico_ebpf.kernel.attach import attach_cgroup\n"
        f"obj = BPFObject.open({str(bpf_objects / 'attach_test.o')!r}); obj.load()\n"
        f"att = attach_cgroup(obj.programs['cgroup_count_ingress'], {scratch_cgroup!r}, 'ingress')\n"
        f"att.pin({pin!r})\n"
        "print(att.prog_id)\n"
    )
    prog_id = int(made)
    assert CgroupAttachment.query(scratch_cgroup, "ingress") == [prog_id]
    att = CgroupAttachment.from_pin(pin)
    assert att.prog_id == prog_id and att.attach_type == "ingress" and att.attached
    att.detach()
    assert CgroupAttachment.query(scratch_cgroup, "ingress") == []


def test_cgroup_legacy_attach_and_detach(attach_obj, scratch_cgroup, pin_dir):
    prog = attach_obj.programs["cgroup_count_egress"]
    att = attach_cgroup(prog, scratch_cgroup, "egress", use_link=False)
    assert not att.is_link and att.attached
    assert CgroupAttachment.query(scratch_cgroup, "egress") == [prog_id_of(prog)]
    with pytest.raises(BPFError) as exc:
        att.pin(os.path.join(pin_dir, "nope"))
    assert exc.value.errno == errno.EOPNOTSUPP
    att.detach()
    assert CgroupAttachment.query(scratch_cgroup, "egress") == []


def test_cgroup_errors_name_the_cgroup(attach_obj, pin_dir):
    missing = os.path.join(cgroup2_mount(), f"cebpf-missing-{uuid.uuid4().hex[:8]}")
    with pytest.raises(BPFError) as exc:
        attach_cgroup(attach_obj.programs["cgroup_count_egress"], missing, "egress")
    assert exc.value.errno == errno.ENOENT and missing in exc.value.op
    with pytest.raises(BPFError) as exc:
        CgroupAttachment.from_pin(os.path.join(pin_dir, "absent"))
    assert exc.value.errno == errno.ENOENT
