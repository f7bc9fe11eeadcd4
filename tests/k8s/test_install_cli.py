"""``calico-ebpf install …`` end to end: argv in, real client over HTTP to the double, exit code out.

The dry-run test is the contract of ``--dry-run``: on a cluster where every
step has work to do, no step sends a single write, and each prints the body a
real run then sends.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import yaml
from test_install_steps import (
    CUSTOM_RESOURCES,
    cluster_info,
    installation,
    kube_proxy_config,
    kube_proxy_ds,
    make_node,
    tigera_status,
)

from calico_ebpf.cli.main import main

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def kubeconfig(apiserver, tmp_path):
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "double",
        "clusters": [{"name": "double", "cluster": {"server": apiserver.url}}],
        "contexts": [{"name": "double", "context": {"cluster": "double", "user": "admin"}}],
        "users": [{"name": "admin", "user": {"token": "not-checked"}}],
    }))
    return str(path)


@pytest.fixture
def eks_cluster(apiserver):
    """An EKS cluster on the iptables dataplane with kube-proxy running: every step has work to do."""
    apiserver.create(make_node("ip-10-0-1-5", "eks", ip="10.0.1.5"))
    apiserver.create(cluster_info("https://ABC123.gr7.us-east-1.eks.amazonaws.com"))
    apiserver.create(installation(hostPorts="Enabled"))
    apiserver.create(kube_proxy_ds())
    apiserver.create({"apiVersion": "apps/v1", "kind": "Deployment",
                      "metadata": {"name": "tigera-operator", "namespace": "tigera-operator"}, "spec": {}})
    apiserver.create(tigera_status("calico", Available="True", Progressing="False", Degraded="False"))
    return apiserver


STEPS = [
    ["preflight"],
    ["api-endpoint", "--operator-dns"],
    ["enable"],
    ["kube-proxy", "disable"],
    ["status"],
]


@pytest.mark.parametrize("step", STEPS, ids=lambda s: s[0])
def test_every_step_in_dry_run_sends_no_write(eks_cluster, kubeconfig, capsys, step):
    assert main(["install", *step, "--dry-run", "--kubeconfig", kubeconfig]) == 0
    assert eks_cluster.writes == []
    assert eks_cluster.requests, "the step did read the cluster"


def test_dry_run_prints_what_the_real_run_sends(eks_cluster, kubeconfig, capsys):
    argv = ["install", "kube-proxy", "disable", "--kubeconfig", kubeconfig, "--json"]
    assert main([*argv, "--dry-run"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert planned["dryRun"] is True and eks_cluster.writes == []
    assert main(argv) == 0
    sent = [{"method": w.method, "path": w.path, "contentType": w.content_type, "body": w.body}
            for w in eks_cluster.writes]
    assert sent == [{k: w[k] for k in ("method", "path", "contentType", "body")} for w in planned["writes"]]
    assert sent[0]["body"] == {"spec": {"template": {"spec": {"nodeSelector": {"non-calico": "true"}}}}}


def test_human_dry_run_shows_the_kubectl_equivalent(eks_cluster, kubeconfig, capsys):
    assert main(["install", "enable", "--dry-run", "--kubeconfig", kubeconfig]) == 0
    out = capsys.readouterr().out
    assert "would send 1 request(s)" in out
    assert ("kubectl patch installation.operator.tigera.io default --type merge -p "
            """'{"spec":{"calicoNetwork":{"linuxDataplane":"BPF","hostPorts":null}}}'""") in out


def test_the_whole_guide_for_real(eks_cluster, kubeconfig, capsys):
    for step in STEPS:
        extra = ["--timeout", "5"] if step == ["status"] else []
        assert main(["install", *step, "--kubeconfig", kubeconfig, *extra]) == 0, step
    by_resource = {w.resource: (w.method, w.body) for w in eks_cluster.writes}
    assert by_resource == {
        "configmaps": ("POST", {"apiVersion": "v1", "kind": "ConfigMap",
                                "metadata": {"name": "kubernetes-services-endpoint", "namespace": "tigera-operator"},
                                "data": {"KUBERNETES_SERVICE_HOST": "ABC123.gr7.us-east-1.eks.amazonaws.com",
                                         "KUBERNETES_SERVICE_PORT": "443"}}),
        "deployments": ("PATCH", {"spec": {"template": {"spec": {"dnsConfig": {"nameservers": ["169.254.169.253"]}}}}}),
        "installations": ("PATCH", {"spec": {"calicoNetwork": {"linuxDataplane": "BPF", "hostPorts": None}}}),
        "daemonsets": ("PATCH", {"spec": {"template": {"spec": {"nodeSelector": {"non-calico": "true"}}}}}),
    }
    assert "all components Available" in capsys.readouterr().out


@pytest.mark.parametrize(("setup", "reason"), [
    (lambda api: api.create(make_node("gke-1", "gke")), "not supported on GKE"),
    (lambda api: api.create(make_node("w", operatingSystem="windows")), "Windows nodes"),
    (lambda api: api.create(kube_proxy_config("ipvs")), "IPVS"),
    (lambda api: api.create({"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "p"},
                             "spec": {"cidr": "10.244.0.0/16", "ipipMode": "Always"}}), "IPIP"),
    (lambda api: api.create({"apiVersion": "v1", "kind": "ConfigMap",
                             "metadata": {"name": "calico-config", "namespace": "kube-system"},
                             "data": {"etcd_endpoints": "http://10.0.0.5:2379"}}), "etcd datastore"),
])
def test_preflight_refusals_exit_non_zero_listing_the_reason(apiserver, kubeconfig, capsys, setup, reason):
    apiserver.create(make_node("n1"))
    setup(apiserver)
    assert main(["install", "preflight", "--kubeconfig", kubeconfig]) == 1
    assert reason in capsys.readouterr().err


def test_kube_proxy_disable_refuses_ipvs_with_exit_1(apiserver, kubeconfig, capsys):
    apiserver.create(kube_proxy_ds())
    apiserver.create(kube_proxy_config("ipvs"))
    assert main(["install", "kube-proxy", "disable", "--distro", "kubeadm", "--kubeconfig", kubeconfig]) == 1
    assert "iptables mode first" in capsys.readouterr().err
    assert apiserver.writes == []


def test_enable_manifest_writes_the_edited_file(tmp_path, capsys):
    src, out = tmp_path / "custom-resources.yaml", tmp_path / "out.yaml"
    src.write_text(CUSTOM_RESOURCES)
    assert main(["install", "enable", "--manifest", str(src), "--dry-run", "-o", str(out)]) == 0
    assert not out.exists() and "linuxDataplane: BPF" in capsys.readouterr().out
    assert main(["install", "enable", "--manifest", str(src), "-o", str(out)]) == 0
    assert yaml.safe_load_all(out.read_text()).__next__()["spec"]["calicoNetwork"]["linuxDataplane"] == "BPF"


def test_status_reports_progress_and_times_out(apiserver, kubeconfig, capsys):
    apiserver.create(tigera_status("calico", Available="False", Progressing="True", Degraded="False"))
    start = time.monotonic()
    assert main(["install", "status", "--timeout", "0.4", "--interval", "0.05", "--kubeconfig", kubeconfig]) == 1
    assert time.monotonic() - start < 5
    captured = capsys.readouterr()
    assert "calico: Progressing" in captured.out and "not Available after 0.4s" in captured.err

    threading.Timer(0.2, apiserver.update, [tigera_status("calico", Available="True", Progressing="False",
                                                          Degraded="False")]).start()
    assert main(["install", "status", "--timeout", "10", "--interval", "0.05", "--kubeconfig", kubeconfig]) == 0
    assert "calico: Available" in capsys.readouterr().out
