"""``calico-ebpf agent`` as a subprocess: kubeconfig -> the API server double; SIGTERM -> exit 0, maps stay."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from k8s_helpers import free_port, wait_until
from test_agent import NODE, kernel_nat, node, service, slice_

from calico_ebpf.dataplane.policy import remove_policy_tables
from calico_ebpf.kernel.attach import TcAttachment
from calico_ebpf.kernel.netns import Netns, veth_pair

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def agent_pin_dir():
    if os.geteuid() != 0:
        pytest.fail("the agent CLI test needs root (bpffs, BPF maps and programs)")
    from calico_ebpf.kernel import bpffs

    root = bpffs.ensure_bpffs(mount=True)
    path = os.path.join(root, f"cebpf_test_agent_cli_{os.getpid()}_{uuid.uuid4().hex[:8]}")
    yield path
    bpffs.remove_pin_dir(path)  # the agent leaves its maps pinned on purpose: the test removes them
    remove_policy_tables(path)


def healthz(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, ConnectionError):
        return None


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: double
  cluster: {{server: "{server}"}}
users:
- name: nobody
  user: {{}}
contexts:
- name: double
  context: {{cluster: double, user: nobody}}
current-context: double
""")
    return path


def test_agent_cli_programs_the_kernel_and_stops_on_sigterm(apiserver, agent_pin_dir, tmp_path):
    apiserver.create(node(NODE, "10.0.0.1"))
    apiserver.create(service("web", "10.96.0.10"))
    apiserver.create(slice_("web", [("10.65.0.3", NODE)]))
    config = kubeconfig(tmp_path / "kubeconfig", apiserver.url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_SERVICE")}
    env["NODE_NAME"] = NODE  # --node defaults to it, as in the DaemonSet
    # kube-proxy still holds the healthz port during a switch-over: the agent must run anyway.
    kube_proxy = socket.socket()
    kube_proxy.bind(("127.0.0.1", free_port()))
    kube_proxy.listen()
    healthz_port = kube_proxy.getsockname()[1]
    # The agent attaches to the interfaces of a scratch namespace standing in for the node
    # (never to this machine's own): one data interface there.
    node_ns = Netns(prefix="agentcli")
    veth_pair("eth0", "peer0", netns=node_ns, peer_netns=node_ns)
    proc = subprocess.Popen(
        [sys.executable, "-m", "calico_ebpf.cli.main", "agent", "--kubeconfig", str(config),
         "--pin-dir", agent_pin_dir, "--healthz-address", "127.0.0.1", "--healthz-port", str(healthz_port),
         "--metrics-port", "0", "--min-sync-period", "0.2", "--no-kube-proxy-cleanup", "--netns", node_ns.name],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def programmed() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"agent exited early ({proc.returncode}): {proc.communicate()[1]}")
            return os.path.exists(os.path.join(agent_pin_dir, "cebpf_nat_feh")) and \
                kernel_nat(agent_pin_dir).get("10.96.0.10:80", (0, []))[1] == ["10.65.0.3:8080"]

        wait_until(programmed, timeout=60, what="the agent to program web")
        kube_proxy.close()  # kube-proxy went away: the next apply opens /healthz
        apiserver.update(slice_("web", [("10.65.0.3", NODE), ("10.65.0.4", NODE)]))
        wait_until(lambda: len(kernel_nat(agent_pin_dir)["10.96.0.10:80"][1]) == 2, timeout=10,
                   what="the second backend")
        wait_until(lambda: healthz(healthz_port) == 200, timeout=10, what="/healthz")

        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        eth0 = node_ns.ifindex("eth0")
        attached = [TcAttachment.find(eth0, d, netns=node_ns) for d in ("ingress", "egress")]
    finally:
        kube_proxy.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        node_ns.delete()
    assert proc.returncode == 0, stderr
    assert all(a is not None for a in attached), "the agent did not attach to eth0 in --netns"
    assert time.monotonic() - t0 < 15
    # The dataplane outlives the agent: maps pinned with the services in them.
    assert kernel_nat(agent_pin_dir)["10.96.0.10:80"][1] == ["10.65.0.3:8080", "10.65.0.4:8080"]
    assert "stopped; the dataplane stays in the kernel" in stderr
    assert "cannot serve healthz" in stderr  # the port was taken at start, and said so
