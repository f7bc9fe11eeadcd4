"""``calico-ebpf demo`` end to end: the real command, a real lab, real traffic.

The demo runs once as a subprocess (as a user runs it) under a unique
prefix; the test asserts its exit code, the PASS line of every check, and
that no namespace or pin of that prefix is left. A second run is stopped
with SIGTERM while the lab is up, and must clean up just the same.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from importlib.resources import files
from pathlib import Path

import pytest

from calico_ebpf.kernel.netns import unique_name
from calico_ebpf.lab.cluster import LabCluster, lab_pin_dir

ROOT = Path(__file__).resolve().parents[2]
CHECKS = ("cluster-ip", "no-endpoints", "policy", "nodeport-vxlan", "latency")


def _demo(prefix: str, *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "calico_ebpf.cli.main", "demo", "--prefix", prefix, *args],
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.fixture(scope="module", autouse=True)
def bpf_objects():
    """The demo subprocess loads calico_ebpf/_bpf/*.o: rebuild them first if a source is newer."""
    sys.path.insert(0, str(ROOT / "tools"))
    import build_bpf

    build_bpf.build_all(str(files("calico_ebpf._bpf")))


@pytest.fixture
def prefix():
    p = unique_name("qdemo", maxlen=14)
    yield p
    LabCluster.cleanup_leftovers(p)  # only if the test failed half-way


@pytest.mark.timeout(120)
def test_demo_passes_every_check_and_leaves_nothing(prefix):
    proc = _demo(prefix)
    out, err = proc.communicate(timeout=110)
    assert proc.returncode == 0, f"demo failed:\n{out}\n{err}"
    for key in CHECKS:
        assert re.search(rf"^\s+PASS {key}$", out, re.MULTILINE), f"no PASS line for {key}:\n{out}"
    assert "FAIL" not in out
    assert re.search(rf"^PASS: {len(CHECKS)}/{len(CHECKS)} checks passed", out, re.MULTILINE)
    # What the checks claim, in the demo's own words: source IP kept, refusal, policy drop,
    # NodePort flows forwarded by node-1 and seen by the pod with the client's address.
    assert "source IPs seen: 10.244.0.1\n" in out
    assert "5 refused" in out and "DROP_POLICY +" in out
    assert (
        "10/10 answered by a remote backend that saw 10.250.0.100; node-1 conntrack: 5 TCP, 5 UDP NP_FWD"
        in out
    )
    assert f"nothing with prefix {prefix} is left" in out
    assert LabCluster.find_leftovers(prefix) == []
    assert not os.path.exists(lab_pin_dir(prefix))


@pytest.mark.timeout(90)
def test_sigterm_mid_demo_tears_everything_down(prefix):
    proc = _demo(prefix)
    try:
        # Wait until the lab and both dataplanes are up, then stop the demo the way a supervisor would.
        deadline = time.monotonic() + 60
        line = ""
        while "datapath loaded" not in line:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, f"demo ended early: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "demo did not come up within 60 s"
        assert os.path.isdir(lab_pin_dir(prefix, "node-1"))
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err  # EXIT_INTERRUPTED, after teardown
    assert "interrupted" in err and "PASS: " not in out
    assert LabCluster.find_leftovers(prefix) == [], err
