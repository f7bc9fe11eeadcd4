"""The install workflow (calico_ebpf.install) against the API server double, with the real client.

Each step is run twice where it writes: as a plan only (nothing reaches the
server as a write) and for real, where the bodies the double recorded must be
exactly the patches of Calico's guide.
"""

from __future__ import annotations

import threading
import time

import pytest
from kubernetes import client

from calico_ebpf.errors import ModelError, UnsupportedError
from calico_ebpf.install import api_endpoint, distro, enable, kube_proxy, preflight, status
from calico_ebpf.install.plan import Cluster, execute

pytestmark = pytest.mark.timeout(30)

# ---- cluster objects -------------------------------------------------------------------------

LINUX_INFO = {"kernelVersion": "6.1.0-18-amd64", "architecture": "amd64", "operatingSystem": "linux",
              "osImage": "Debian GNU/Linux 12 (bookworm)"}

DISTRO_NODE_MARKS = {
    # distro -> (labels, annotations, providerID)
    "kubeadm": ({}, {"kubeadm.alpha.kubernetes.io/cri-socket": "unix:///run/containerd/containerd.sock"}, ""),
    "kops": ({"kops.k8s.io/instancegroup": "nodes-a"}, {}, "aws:///eu-west-1a/i-0abc"),
    "openshift": ({"node.openshift.io/os_id": "rhcos"}, {}, ""),
    "aks": ({"kubernetes.azure.com/cluster": "MC_rg_aks"}, {}, "azure:///subscriptions/x/vm/0"),
    "eks": ({"eks.amazonaws.com/nodegroup": "ng-1"}, {}, "aws:///us-east-1a/i-0def"),
    "mke": ({"com.docker.ucp.orchestrator.kubernetes": "true"}, {}, ""),
    "gke": ({"cloud.google.com/gke-nodepool": "default-pool"}, {}, "gce://proj/us-central1-a/gke-n1"),
    "rke": ({}, {"rke.cattle.io/external-ip": "192.0.2.7"}, ""),
    "rke2": ({}, {"rke2.io/node-args": "[]"}, ""),
    "generic": ({}, {}, ""),
}


def make_node(name: str, distro_name: str = "kubeadm", *, ip: str = "10.0.0.10", **info: str) -> dict:
    """A v1 Node as the distribution's kubelet registers it."""
    labels, annotations, provider = DISTRO_NODE_MARKS[distro_name]
    node_info = LINUX_INFO | info
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/os": node_info["operatingSystem"], **labels},
                     "annotations": dict(annotations)},
        "spec": {"providerID": provider} if provider else {},
        "status": {"nodeInfo": node_info, "addresses": [{"type": "InternalIP", "address": ip}]},
    }


def kube_proxy_ds() -> dict:
    return {"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "kube-proxy", "namespace": "kube-system"},
            "spec": {"selector": {"matchLabels": {"k8s-app": "kube-proxy"}},
                     "template": {"metadata": {"labels": {"k8s-app": "kube-proxy"}},
                                  "spec": {"nodeSelector": {"kubernetes.io/os": "linux"},
                                           "containers": [{"name": "kube-proxy", "image": "kube-proxy:v1.31"}]}}}}


def kube_proxy_config(mode: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-proxy", "namespace": "kube-system"},
            "data": {"config.conf": f"apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
                                    f"mode: {mode}\n", "kubeconfig.conf": "apiVersion: v1\nkind: Config\n"}}


def installation(**network: object) -> dict:
    return {"apiVersion": "operator.tigera.io/v1", "kind": "Installation", "metadata": {"name": "default"},
            "spec": {"calicoNetwork": {"ipPools": [{"cidr": "192.168.0.0/16", "encapsulation": "VXLAN"}],
                                       **network}}}


def cluster_info(server: str) -> dict:
    kubeconfig = (f"apiVersion: v1\nkind: Config\nclusters:\n- name: ''\n  cluster:\n"
                  f"    certificate-authority-data: AAAA\n    server: {server}\n")
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cluster-info", "namespace": "kube-public"},
            "data": {"kubeconfig": kubeconfig}}


def offline_cluster(host: str) -> Cluster:
    """A Cluster whose client names ``host`` but is never contacted (for rules that need no reads)."""
    return Cluster(client.ApiClient(client.Configuration(host=host)))


# ---- distribution detection --------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(DISTRO_NODE_MARKS))
def test_detect_distribution_from_node_marks(name):
    assert distro.detect([make_node("n1", name)]).name == name


def test_kops_on_aws_is_not_mistaken_for_eks():
    det = distro.detect([make_node("n1", "kops")])
    assert det.name == "kops" and "kops.k8s.io/instancegroup" in det.evidence


# ---- preflight -----------------------------------------------------------------------------------

def test_preflight_accepts_a_plain_kubeadm_cluster_and_writes_nothing(apiserver, api_client):
    apiserver.create(make_node("n1"))
    apiserver.create(make_node("n2", ip="10.0.0.11", architecture="arm64", kernelVersion="5.15.0-91-generic"))
    apiserver.create(kube_proxy_config("iptables"))
    report = preflight.check_cluster(api_client)
    assert report.ok, report.problems
    assert report.distro.name == "kubeadm"
    assert [n.name for n in report.nodes] == ["n1", "n2"]
    assert apiserver.writes == []


def _problems(report) -> list[tuple[str, str]]:
    return [(p.feature, p.object) for p in report.problems]


def test_preflight_refuses_gke(apiserver, api_client):
    apiserver.create(make_node("gke-n1", "gke"))
    report = preflight.check_cluster(api_client)
    assert [p.feature for p in report.problems] == ["GKE"]
    with pytest.raises(preflight.ClusterNotSupported, match="not supported on GKE"):
        report.require()


def test_preflight_refuses_a_windows_node_in_a_mixed_cluster(apiserver, api_client):
    apiserver.create(make_node("linux-1"))
    apiserver.create(make_node("win-1", operatingSystem="windows", kernelVersion="10.0.20348.2227",
                               osImage="Windows Server 2022 Datacenter"))
    report = preflight.check_cluster(api_client)
    assert _problems(report) == [("Windows nodes", "Node win-1")]


def test_preflight_refuses_the_etcd_datastore(apiserver, api_client):
    apiserver.create(make_node("n1"))
    apiserver.create({"apiVersion": "v1", "kind": "ConfigMap",
                      "metadata": {"name": "calico-config", "namespace": "kube-system"},
                      "data": {"etcd_endpoints": "https://10.0.0.5:2379", "calico_backend": "bird"}})
    report = preflight.check_cluster(api_client)
    assert [p.feature for p in report.problems] == ["etcd datastore"]
    assert "Kubernetes API datastore" in str(report.problems[0])
    # The flag decides when the cluster does not say.
    assert not preflight.check_cluster(api_client, datastore="kubernetes").problems


def test_preflight_refuses_ipip_pools_but_not_vxlan_ones(apiserver, api_client):
    apiserver.create(make_node("n1"))
    apiserver.create({"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "vxlan-pool"},
                      "spec": {"cidr": "192.168.0.0/17", "ipipMode": "Never", "vxlanMode": "Always"}})
    apiserver.create({"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "ipip-pool"},
                      "spec": {"cidr": "192.168.128.0/17", "ipipMode": "CrossSubnet"}})
    report = preflight.check_cluster(api_client)
    assert _problems(report) == [("IPIP", "IPPool ipip-pool")]


def test_preflight_refuses_ipip_in_the_operator_installation(apiserver, api_client):
    apiserver.create(make_node("n1"))
    inst = installation()
    inst["spec"]["calicoNetwork"]["ipPools"][0]["encapsulation"] = "IPIPCrossSubnet"
    apiserver.create(inst)
    assert [p.feature for p in preflight.check_cluster(api_client).problems] == ["IPIP"]


def test_preflight_refuses_kube_proxy_in_ipvs_mode(apiserver, api_client):
    apiserver.create(make_node("n1"))
    apiserver.create(kube_proxy_config("ipvs"))
    report = preflight.check_cluster(api_client)
    assert _problems(report) == [("kube-proxy IPVS mode", "ConfigMap kube-system/kube-proxy")]
    assert "iptables mode" in str(report.problems[0])


@pytest.mark.parametrize(("kernel", "arch", "os_image", "feature"), [
    ("4.19.0-25-amd64", "amd64", "Debian GNU/Linux 10", "kernel 4.19.0-25-amd64"),
    ("4.18.0-147.el8.x86_64", "amd64", "Red Hat Enterprise Linux 8.1", "kernel 4.18.0-147.el8.x86_64"),
    ("6.1.0-18", "s390x", "Ubuntu 22.04", "architecture s390x"),
])
def test_preflight_refuses_unsupported_node_kernels_and_arches(apiserver, api_client, kernel, arch, os_image, feature):
    apiserver.create(make_node("n1", kernelVersion=kernel, architecture=arch, osImage=os_image))
    assert _problems(preflight.check_cluster(api_client)) == [(feature, "Node n1")]


def test_preflight_accepts_red_hat_4_18_0_193_and_advises_on_old_upstream_kernels(apiserver, api_client):
    apiserver.create(make_node("rhel", kernelVersion="4.18.0-193.el8.x86_64", osImage="Red Hat Enterprise Linux 8.2"))
    apiserver.create(make_node("ubuntu", kernelVersion="5.4.0-42-generic", osImage="Ubuntu 20.04"))
    report = preflight.check_cluster(api_client)
    assert report.ok
    assert any("Node ubuntu" in w and "5.8" in w for w in report.warnings)
    assert not any("Node rhel" in w for w in report.warnings)


def test_preflight_rke_only_by_enabling_on_a_running_cluster(apiserver, api_client):
    apiserver.create(make_node("n1", "rke"))
    existing = preflight.check_cluster(api_client)
    assert existing.ok and any("RKE2" in w for w in existing.warnings)
    fresh = preflight.check_cluster(api_client, fresh_install=True)
    assert [p.feature for p in fresh.problems] == ["installing in eBPF mode on RKE"]


# ---- api-endpoint ----------------------------------------------------------------------------------

ENDPOINT_CM = "/api/v1/namespaces/tigera-operator/configmaps/kubernetes-services-endpoint"


def test_api_endpoint_on_eks_reads_cluster_info_and_creates_the_configmap(apiserver, api_client):
    apiserver.create(make_node("n1", "eks"))
    apiserver.create(cluster_info("https://ABCDEF0123.gr7.us-east-1.eks.amazonaws.com"))
    plan = api_endpoint.plan_endpoint(api_client, "eks")
    assert apiserver.writes == []
    want = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "kubernetes-services-endpoint", "namespace": "tigera-operator"},
            "data": {"KUBERNETES_SERVICE_HOST": "ABCDEF0123.gr7.us-east-1.eks.amazonaws.com",
                     "KUBERNETES_SERVICE_PORT": "443"}}
    assert [(w.method, w.path, w.body) for w in plan.writes] == [
        ("POST", "/api/v1/namespaces/tigera-operator/configmaps", want)]
    assert any("169.254.169.253" in n for n in plan.notes)  # the operator DNS advice, not a write

    execute(api_client, plan)
    [write] = apiserver.writes
    assert (write.method, write.path, write.body) == ("POST", "/api/v1/namespaces/tigera-operator/configmaps", want)
    stored = apiserver.get("v1", "ConfigMap", "kubernetes-services-endpoint", "tigera-operator")
    assert stored["data"] == want["data"]
    # A second run finds it up to date and sends nothing.
    assert api_endpoint.plan_endpoint(api_client, "eks").writes == ()


def test_api_endpoint_updates_a_stale_configmap_with_a_merge_patch(apiserver, api_client):
    apiserver.create(cluster_info("https://10.20.30.40:6443"))
    apiserver.create({"apiVersion": "v1", "kind": "ConfigMap",
                      "metadata": {"name": "kubernetes-services-endpoint", "namespace": "tigera-operator"},
                      "data": {"KUBERNETES_SERVICE_HOST": "old.example", "KUBERNETES_SERVICE_PORT": "443"}})
    execute(api_client, api_endpoint.plan_endpoint(api_client, "aks"))
    [write] = apiserver.writes
    assert (write.method, write.path, write.content_type) == ("PATCH", ENDPOINT_CM, "application/merge-patch+json")
    assert write.body == {"data": {"KUBERNETES_SERVICE_HOST": "10.20.30.40", "KUBERNETES_SERVICE_PORT": "6443"}}


def test_api_endpoint_for_our_agent_namespace(apiserver, api_client):
    plan = api_endpoint.plan_endpoint(api_client, "generic", host="api.example.com:6443", namespace="calico-ebpf")
    execute(api_client, plan)
    [write] = apiserver.writes
    assert (write.method, write.path) == ("POST", "/api/v1/namespaces/calico-ebpf/configmaps")
    assert write.body["data"] == {"KUBERNETES_SERVICE_HOST": "api.example.com", "KUBERNETES_SERVICE_PORT": "6443"}
    assert apiserver.get("v1", "ConfigMap", "kubernetes-services-endpoint", "calico-ebpf") is not None


def test_api_endpoint_operator_dns_patch_on_request(apiserver, api_client):
    apiserver.create(cluster_info("https://ABC.eks.amazonaws.com"))
    apiserver.create({"apiVersion": "apps/v1", "kind": "Deployment",
                      "metadata": {"name": "tigera-operator", "namespace": "tigera-operator"},
                      "spec": {"template": {"spec": {"hostNetwork": True, "dnsPolicy": "ClusterFirstWithHostNet"}}}})
    execute(api_client, api_endpoint.plan_endpoint(api_client, "eks", operator_dns=True))
    dns = [w for w in apiserver.writes if w.resource == "deployments"]
    assert [(w.method, w.content_type, w.body) for w in dns] == [
        ("PATCH", "application/strategic-merge-patch+json",
         {"spec": {"template": {"spec": {"dnsConfig": {"nameservers": ["169.254.169.253"]}}}}})]
    spec = apiserver.get("apps/v1", "Deployment", "tigera-operator", "tigera-operator")["spec"]["template"]["spec"]
    assert spec["dnsConfig"] == {"nameservers": ["169.254.169.253"]} and spec["hostNetwork"] is True


@pytest.mark.parametrize(("distro_name", "server", "cluster_name", "want"), [
    ("kops", "https://api.prod.k8s.example.com", None, ("api.internal.prod.k8s.example.com", 443)),
    ("kops", "https://127.0.0.1:443", "dev.k8s.local", ("api.internal.dev.k8s.local", 443)),
    ("openshift", "https://api.ocp4.example.com:6443", None, ("api.ocp4.example.com", 6443)),
    ("openshift", "https://10.0.0.1:6443", "ocp4.example.com", ("api.ocp4.example.com", 6443)),
    ("mke", "https://ucp.example.com", None, ("proxy.local", 6444)),
])
def test_api_endpoint_distribution_rules(distro_name, server, cluster_name, want):
    ep, warnings = api_endpoint.find_endpoint(offline_cluster(server), distro_name, cluster_name=cluster_name)
    assert (ep.host, ep.port) == want
    assert warnings == []


def test_api_endpoint_kops_without_a_derivable_name_asks_for_it():
    with pytest.raises(ModelError, match="cluster name"):
        api_endpoint.find_endpoint(offline_cluster("https://10.1.2.3"), "kops")


def test_api_endpoint_warns_about_a_bare_node_ip_among_several_api_servers(apiserver, api_client):
    apiserver.create(make_node("cp-1", ip="10.0.0.10"))
    apiserver.create({"apiVersion": "v1", "kind": "ConfigMap",
                      "metadata": {"name": "kubeadm-config", "namespace": "kube-system"},
                      "data": {"ClusterConfiguration": "apiVersion: kubeadm.k8s.io/v1beta3\n"
                                                       "kind: ClusterConfiguration\n"
                                                       "controlPlaneEndpoint: 10.0.0.10:6443\n"}})
    apiserver.create({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                      "metadata": {"name": "kubernetes", "namespace": "default",
                                   "labels": {"kubernetes.io/service-name": "kubernetes"}},
                      "addressType": "IPv4", "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
                      "endpoints": [{"addresses": [a]} for a in ("10.0.0.10", "10.0.0.11", "10.0.0.12")]})
    ep, warnings = api_endpoint.find_endpoint(api_client, "kubeadm")
    assert (ep.host, ep.port) == ("10.0.0.10", 6443)
    assert any("IP of Node cp-1" in w for w in warnings)
    assert any("one of 3 API servers" in w for w in warnings)


def test_api_endpoint_falls_back_to_the_client_server_and_flags_loopback(api_client):
    ep, warnings = api_endpoint.find_endpoint(api_client, "generic")
    assert ep.host == "127.0.0.1" and ep.source == "the API server this client talks to"
    assert any("loopback" in w for w in warnings)
    ep, warnings = api_endpoint.find_endpoint(api_client, "generic", host="lb.example.com:8443")
    assert (ep.host, ep.port, warnings) == ("lb.example.com", 8443, [])


# ---- enable ----------------------------------------------------------------------------------------

SEED_ENABLE_PATCH = {"spec": {"calicoNetwork": {"linuxDataplane": "BPF", "hostPorts": None}}}


def test_enable_patches_the_installation_as_the_guide_says(apiserver, api_client):
    apiserver.create(installation(hostPorts="Enabled", linuxDataplane="Iptables"))
    plan = enable.plan_enable(api_client)
    assert apiserver.writes == []
    assert any("api-endpoint" in w for w in plan.warnings)  # the ConfigMap step was skipped
    execute(api_client, plan)
    [write] = apiserver.writes
    assert (write.method, write.path, write.content_type) == (
        "PATCH", "/apis/operator.tigera.io/v1/installations/default", "application/merge-patch+json")
    assert write.body == SEED_ENABLE_PATCH
    network = apiserver.get("operator.tigera.io/v1", "Installation", "default")["spec"]["calicoNetwork"]
    assert network["linuxDataplane"] == "BPF" and "hostPorts" not in network
    assert network["ipPools"] == installation()["spec"]["calicoNetwork"]["ipPools"]
    assert enable.plan_enable(api_client).writes == ()


def test_enable_without_an_operator_installation_points_at_manifest_mode(api_client):
    with pytest.raises(enable.NotInstalledError, match="--manifest"):
        enable.plan_enable(api_client)


CUSTOM_RESOURCES = """\
# This section includes base Calico installation configuration.
apiVersion: operator.tigera.io/v1
kind: Installation
metadata:
  name: default
spec:
  calicoNetwork:
    hostPorts: Enabled
    ipPools:
    - name: default-ipv4-ippool
      blockSize: 26
      cidr: 192.168.0.0/16
      encapsulation: VXLANCrossSubnet
      natOutgoing: Enabled
      nodeSelector: all()
---
apiVersion: operator.tigera.io/v1
kind: APIServer
metadata:
  name: default
spec: {}
"""


def test_edit_manifest_sets_bpf_in_the_installation_only():
    import yaml
    docs = list(yaml.safe_load_all(enable.edit_manifest(CUSTOM_RESOURCES)))
    original = list(yaml.safe_load_all(CUSTOM_RESOURCES))
    network = docs[0]["spec"]["calicoNetwork"]
    assert network["linuxDataplane"] == "BPF" and "hostPorts" not in network
    assert network["ipPools"] == original[0]["spec"]["calicoNetwork"]["ipPools"]
    assert docs[1] == original[1]
    with pytest.raises(ModelError, match="no operator.tigera.io Installation"):
        enable.edit_manifest("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")


# ---- kube-proxy ----------------------------------------------------------------------------------

DS_PATH = "/apis/apps/v1/namespaces/kube-system/daemonsets/kube-proxy"


def test_kube_proxy_disable_and_enable_on_kubeadm_round_trips_the_selector(apiserver, api_client):
    apiserver.create(kube_proxy_ds())
    apiserver.create(kube_proxy_config("iptables"))
    plan = kube_proxy.plan_disable(api_client, "kubeadm")
    assert apiserver.writes == []
    execute(api_client, plan)
    [write] = apiserver.writes
    assert (write.method, write.path, write.content_type) == (
        "PATCH", DS_PATH, "application/strategic-merge-patch+json")
    assert write.body == {"spec": {"template": {"spec": {"nodeSelector": {"non-calico": "true"}}}}}
    selector = apiserver.get("apps/v1", "DaemonSet", "kube-proxy", "kube-system")["spec"]["template"]["spec"]
    assert selector["nodeSelector"] == {"kubernetes.io/os": "linux", "non-calico": "true"}
    assert kube_proxy.plan_disable(api_client, "kubeadm").writes == ()  # already disabled

    execute(api_client, kube_proxy.plan_enable(api_client, "kubeadm"))
    undo = apiserver.writes[-1]
    assert (undo.method, undo.content_type) == ("PATCH", "application/merge-patch+json")
    assert undo.body == {"spec": {"template": {"spec": {"nodeSelector": {"non-calico": None}}}}}
    spec = apiserver.get("apps/v1", "DaemonSet", "kube-proxy", "kube-system")["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}


def test_kube_proxy_disable_refuses_ipvs_mode_and_sends_nothing(apiserver, api_client):
    apiserver.create(kube_proxy_ds())
    apiserver.create(kube_proxy_config("ipvs"))
    with pytest.raises(UnsupportedError, match="switch kube-proxy to iptables mode first"):
        kube_proxy.plan_disable(api_client, "kubeadm")
    assert apiserver.writes == []


def test_kube_proxy_disable_on_openshift_sets_deploy_kube_proxy_false(apiserver, api_client):
    apiserver.create({"apiVersion": "operator.openshift.io/v1", "kind": "Network", "metadata": {"name": "cluster"},
                      "spec": {"defaultNetwork": {"type": "Calico"}, "deployKubeProxy": True}})
    execute(api_client, kube_proxy.plan_disable(api_client, "openshift"))
    [write] = apiserver.writes
    assert (write.method, write.path, write.content_type, write.body) == (
        "PATCH", "/apis/operator.openshift.io/v1/networks/cluster", "application/merge-patch+json",
        {"spec": {"deployKubeProxy": False}})
    assert apiserver.get("operator.openshift.io/v1", "Network", "cluster")["spec"]["deployKubeProxy"] is False


def test_kube_proxy_disable_on_aks_keeps_kube_proxy_and_turns_cleanup_off(apiserver, api_client):
    apiserver.create({"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
                      "metadata": {"name": "default"}, "spec": {"bpfLogLevel": ""}})
    before = apiserver.create(kube_proxy_ds())
    execute(api_client, kube_proxy.plan_disable(api_client, "aks"))
    [write] = apiserver.writes
    assert (write.method, write.path, write.content_type, write.body) == (
        "PATCH", "/apis/projectcalico.org/v3/felixconfigurations/default", "application/merge-patch+json",
        {"spec": {"bpfKubeProxyIptablesCleanupEnabled": False}})
    assert apiserver.get("apps/v1", "DaemonSet", "kube-proxy", "kube-system") == before  # kube-proxy stays


def test_kube_proxy_disable_on_aks_creates_the_felix_configuration_when_missing(apiserver, api_client):
    execute(api_client, kube_proxy.plan_disable(api_client, "aks"))
    [write] = apiserver.writes
    assert (write.method, write.path) == ("POST", "/apis/projectcalico.org/v3/felixconfigurations")
    felix = apiserver.get("projectcalico.org/v3", "FelixConfiguration", "default")
    assert felix["spec"] == {"bpfKubeProxyIptablesCleanupEnabled": False}


def test_kube_proxy_disable_on_kops_is_advice_only(apiserver, api_client):
    apiserver.create(kube_proxy_ds())
    plan = kube_proxy.plan_disable(api_client, "kops")
    assert plan.writes == () and any("kubeProxy.enabled: false" in n for n in plan.notes)


# ---- status ----------------------------------------------------------------------------------------

def tigera_status(name: str, **conditions: str) -> dict:
    return {"apiVersion": "operator.tigera.io/v1", "kind": "TigeraStatus", "metadata": {"name": name},
            "spec": {}, "status": {"conditions": [
                {"type": t, "status": s, "reason": "", "message": f"{name} {t.lower()}" if s == "True" else ""}
                for t, s in conditions.items()]}}


def test_status_waits_until_every_component_is_available(apiserver, api_client):
    apiserver.create(tigera_status("calico", Available="False", Progressing="True", Degraded="False"))
    apiserver.create(tigera_status("apiserver", Available="True", Progressing="False", Degraded="False"))

    def roll_out():
        time.sleep(0.3)
        apiserver.update(tigera_status("calico", Available="True", Progressing="False", Degraded="False"))

    lines: list[str] = []
    t = threading.Thread(target=roll_out)
    t.start()
    summary = status.wait_available(api_client, timeout=10, interval=0.05, on_progress=lines.append)
    t.join()
    assert summary == {"apiserver": "Available", "calico": "Available"}
    assert lines == ["apiserver: Available", "calico: Progressing", "calico: Available"]
    assert apiserver.writes == []


def test_status_times_out_with_the_last_state(apiserver, api_client):
    apiserver.create(tigera_status("calico", Available="False", Progressing="False", Degraded="True"))
    start = time.monotonic()
    with pytest.raises(status.NotAvailableError, match="calico: Degraded: calico degraded") as err:
        status.wait_available(api_client, timeout=0.3, interval=0.05)
    assert time.monotonic() - start < 3
    assert err.value.last == {"calico": "Degraded: calico degraded"}
