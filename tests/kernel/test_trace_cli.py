"""``calico-ebpf trace`` run as a subprocess on a small cluster: JSON and human output, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from calico_ebpf.compiler import veth_name

ROOT = Path(__file__).resolve().parents[2]
VENV_PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable

NODE_IP, CLIENT, BACKEND, REMOTE_BACKEND, VIP = "192.168.0.2", "10.65.0.2", "10.65.0.3", "10.65.1.7", "10.96.0.10"

CLUSTER = [
    {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"},
     "status": {"addresses": [{"type": "InternalIP", "address": NODE_IP}]}},
    {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "pool"},
     "spec": {"cidr": "10.65.0.0/16", "vxlanMode": "Always", "natOutgoing": True}},
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client", "namespace": "shop"},
     "spec": {"nodeName": "node-1"}, "status": {"podIP": CLIENT}},
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-0", "namespace": "shop"},
     "spec": {"nodeName": "node-1"}, "status": {"podIP": BACKEND}},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
     "spec": {"clusterIP": VIP, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}},
    {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
     "metadata": {"name": "web-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
     "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
     "endpoints": [{"addresses": [BACKEND], "nodeName": "node-1"}]},
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "empty", "namespace": "shop"},
     "spec": {"clusterIP": "10.96.0.11", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}},
]

POD_TO_SVC = f"tcp {CLIENT}:40000 -> {VIP}:80"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, bpf_objects):
    path = tmp_path_factory.mktemp("trace") / "cluster.yaml"
    path.write_text(yaml.safe_dump_all(CLUSTER))
    return str(path)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([VENV_PYTHON, "-m", "calico_ebpf.cli.main", "trace", *args], check=False,
                          capture_output=True, text=True, timeout=60, cwd=str(ROOT))


def test_json_one_object_per_packet(cluster):
    proc = cli("-f", cluster, "--json", POD_TO_SVC, f"udp {CLIENT}:5000 -> 10.96.0.11:80",
               f"tcp {CLIENT}:40000 -> 10.96.0.11:80", f"tcp 203.0.113.9:1000 -> {NODE_IP}:22",
               f"tcp {NODE_IP}:40000 -> {VIP}:80")
    assert proc.returncode == 0, proc.stderr
    svc, udp, empty, ssh, host = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {"verdict", "dnat", "snat", "path", "reason"} <= set(svc)
    assert (svc["verdict"], svc["dnat"], svc["snat"], svc["entry"]) == ("allow", f"{BACKEND}:8080", None, "workload")
    client_if, backend_if = veth_name("shop", "client"), veth_name("shop", "web-0")
    assert svc["path"][:3] == [f"from-wep {client_if} (tc ingress)", "conntrack: new",
                               f"nat: {VIP}:80 -> {BACKEND}:8080 (service id {svc['hops'][0]['service_id']})"]
    assert svc["path"][-3:] == [f"to-wep {backend_if} (tc egress)", "conntrack: established",
                                "policy: none (ingress): no policy selects the endpoint: allow (profile)"]
    assert (udp["verdict"], udp["dnat"]) == ("allow", None)  # the service has no UDP port
    assert (empty["verdict"], empty["dnat"]) == ("reject", None)
    assert "ICMP port unreachable" in empty["reason"]
    assert (ssh["entry"], ssh["verdict"], ssh["path"][0]) == ("data", "allow", "from-hep eth0 (tc ingress)")
    assert ssh["reason"] == f"delivered to this host ({NODE_IP})"
    assert (host["entry"], host["verdict"], host["dnat"]) == ("host", "allow", f"{BACKEND}:8080")


def test_human_output_with_rejected_objects_and_unsupported_packets(cluster, tmp_path):
    """Rejected objects and untraceable packets exit 1; every packet is still printed."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": "y"},
                                   "spec": {"clusterIP": "10.96.0.99", "ports": [{"port": 0}]}}))
    proc = cli("-f", cluster, "-f", str(bad), POD_TO_SVC, "tcp [fd00::1]:1 -> [fd00::2]:80",
               f"sctp {CLIENT}:1 -> {VIP}:80")
    assert proc.returncode == 1
    assert "rejected: Service y/x: spec.ports[0].port: 0 is not a valid port" in proc.stderr
    svc, v6, sctp = proc.stdout.strip().split("\n\n")
    lines = svc.splitlines()
    assert lines[0] == f"{POD_TO_SVC}: ALLOW  dnat {BACKEND}:8080"
    assert lines[1] == f"  from-wep {veth_name('shop', 'client')} (tc ingress)"
    assert lines[-1] == f"  => DNAT to {BACKEND}:8080; delivered to the workload behind {veth_name('shop', 'web-0')}"
    assert v6.splitlines() == ["tcp [fd00::1]:1 -> [fd00::2]:80: UNSUPPORTED",
                               "  => not traced: IPv6 is not supported by the dataplane yet"]
    assert sctp.splitlines()[0] == f"sctp {CLIENT}:1 -> {VIP}:80: UNSUPPORTED" and "SCTP" in sctp


def test_usage_errors_exit_2(cluster, tmp_path, capsys):
    # In-process: these stop before any kernel work, the subprocess tests above cover the wiring.
    from calico_ebpf.cli.main import main

    two = tmp_path / "two.yaml"
    two.write_text(yaml.safe_dump_all([dict(CLUSTER[0]), {**CLUSTER[0], "metadata": {"name": "node-2"}}]))
    for args, message in ((["-f", cluster, "tcp 10.65.0.2 -> 10.96.0.10:80"], "has no port"),
                          (["-f", cluster, "--node", "node-9", POD_TO_SVC], "no such Node"),
                          (["-f", str(two), POD_TO_SVC], "name this node with --node"),
                          (["-f", str(tmp_path / "nope.yaml"), POD_TO_SVC], "cannot read"),
                          (["-f", cluster], "the following arguments are required: PACKET")):
        try:
            rc = main(["trace", *args])
        except SystemExit as exc:  # argparse's own usage errors
            rc = exc.code
        out, err = capsys.readouterr()
        assert (rc, out) == (2, ""), args
        assert message in err, (args, err)
