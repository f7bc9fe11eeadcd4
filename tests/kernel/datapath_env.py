"""A datapath under test: a scratch Dataplane and a private netns with dummy
interfaces standing in for pod veths and the data interface.

BPF_PROG_TEST_RUN resolves ``__sk_buff.ifindex`` in the caller's netns, so
packets are run inside ``ns`` (the calling thread only) where those
interfaces exist. The node used by every test::

    pod A 10.65.0.2 (wep_a)   pod B 10.65.0.3 (wep_b)   pod C 10.65.0.4 (wep_c)
    host 10.0.0.1 on hep (eth0)   remote node 10.0.0.2, its pod 10.65.1.5
"""

from __future__ import annotations

import struct

from calico_ebpf.dataplane import Dataplane
from calico_ebpf.kernel.netns import Netns, veth_pair
from calico_ebpf.maps.entries import CtKey, CtValue, NatFrontendValue, Proto, RouteFlags

POD_A, POD_B, POD_C = "10.65.0.2", "10.65.0.3", "10.65.0.4"
HOST_IP, REMOTE_HOST, REMOTE_POD = "10.0.0.1", "10.0.0.2", "10.65.1.5"
EXTERNAL = "203.0.113.7"
VIP = "10.96.0.10"
LOCAL_WEP = RouteFlags.LOCAL | RouteFlags.WORKLOAD | RouteFlags.IN_POOL

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7


class Netdevs:
    """The dummy interfaces of one test netns, by role."""

    def __init__(self):
        self.ns = Netns(prefix="dptest")
        self.ifindex = {}
        try:
            # veths (this kernel has no dummy driver); the peers are unused.
            for name in ("wep_a", "wep_b", "wep_c", "hep"):
                veth_pair(name, name + "_p", netns=self.ns, peer_netns=self.ns)
                self.ifindex[name] = self.ns.ifindex(name)
        except BaseException:
            self.ns.delete()
            raise

    def delete(self):
        self.ns.delete()


# Loading the object costs ~1 s of verifier time, so a module shares one
# and every test starts from reset(); small maps keep the reset cheap.
ENV_MAX_ENTRIES = {"cebpf_ct": 4096, "cebpf_counters": 256, "cebpf_nat_aff": 1024, "cebpf_nat_be": 4096,
                   "cebpf_nat_feh": 4096, "cebpf_nat_fe": 1024, "cebpf_jump": 64}
_STATEFUL_MAPS = ("cebpf_ct", "cebpf_nat_feh", "cebpf_nat_fe", "cebpf_nat_be", "cebpf_nat_aff", "cebpf_counters",
                  "cebpf_jump", "cebpf_fsafes", "cebpf_routes", "cebpf_ifstate")


class DpEnv:
    """One scratch datapath wired as the node above (no services yet)."""

    def __init__(self, devs: Netdevs):
        self.devs = devs
        self.dp = Dataplane(pin_dir=None, max_entries=ENV_MAX_ENTRIES)
        self.reset()

    def reset(self):
        """Empty every map the tests write, then program the node's interfaces and routes again."""
        for name in _STATEFUL_MAPS:
            self.dp.maps[name].clear()
        i = self.devs.ifindex
        self.A, self.B, self.C, self.HEP = i["wep_a"], i["wep_b"], i["wep_c"], i["hep"]
        for name, kind in (("wep_a", "wep"), ("wep_b", "wep"), ("wep_c", "wep"), ("hep", "hep")):
            self.dp.set_interface(i[name], name, kind)
        self.dp.set_route(f"{POD_A}/32", LOCAL_WEP, ifindex=self.A)
        self.dp.set_route(f"{POD_B}/32", LOCAL_WEP, ifindex=self.B)
        self.dp.set_route(f"{POD_C}/32", LOCAL_WEP, ifindex=self.C)
        self.dp.set_route(f"{HOST_IP}/32", RouteFlags.LOCAL | RouteFlags.HOST, ifindex=self.HEP)
        self.dp.set_route(f"{REMOTE_HOST}/32", RouteFlags.HOST, next_hop=REMOTE_HOST)
        self.dp.set_route("10.65.1.0/26", RouteFlags.WORKLOAD | RouteFlags.IN_POOL, next_hop=REMOTE_HOST)

    def run(self, hook: str, frame: bytes, ifindex: int, **kw):
        with self.devs.ns.enter():
            return self.dp.run(hook, frame, ifindex, **kw)

    def service(self, svc_id: int, vip: str, port: int, proto, backends, *, local: int = 0, affinity: int = 0,
                flags=0):
        self.dp.set_backends(svc_id, backends)
        value = NatFrontendValue(id=svc_id, count=len(backends), local=local, affinity_timeo=affinity, flags=flags)
        self.dp.set_frontend(vip, port, proto, value)

    def ct(self, src, sport, dst, dport, proto=Proto.TCP) -> CtValue | None:
        raw = self.dp.maps["cebpf_ct"].lookup(CtKey.for_flow(src, sport, dst, dport, proto).to_bytes())
        return None if raw is None else CtValue.from_bytes(raw)

    def ct_count(self) -> int:
        return sum(1 for _ in self.dp.maps["cebpf_ct"])

    def close(self):
        self.dp.close()


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


def make_fixtures():
    """(devs, dp_env, env) pytest fixtures for a test module: shared netns and object, reset per test."""
    import pytest

    @pytest.fixture(scope="module")
    def devs():
        d = Netdevs()
        yield d
        d.delete()

    @pytest.fixture(scope="module")
    def dp_env(devs, bpf_objects):  # bpf_objects (tests/kernel/conftest.py) rebuilds stale objects
        e = DpEnv(devs)
        yield e
        e.close()

    @pytest.fixture
    def env(dp_env):
        dp_env.reset()
        return dp_env

    return devs, dp_env, env
