"""kube-proxy conformance vectors -> manifests, and what Calico's eBPF mode should do instead.

Shared by the compiler conformance test and the trace conformance test:

* :func:`scenario_manifests` turns one scenario into API objects: this Node
  with its addresses, the other nodes named by endpoints (192.168.0.101 and
  up), a KubeProxyConfiguration, an IPPool for the cluster
  CIDR, the Services and EndpointSlices (values as the test wrote them, so
  our defaulting and lenient parsing are exercised), and one Pod on this node
  for every pod-sourced flow.
* :func:`calico_expectation` maps a flow's kube-proxy outcome to the outcome
  Calico's eBPF dataplane gives, naming the documented deviation
  (docs/services.md) that applies, if any. The rules look only at the
  scenario's data, never at a vector id.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import attrs

VECTORS = Path(__file__).resolve().parent.parent / "data" / "kube-proxy-flows.json"
CLIENT_NAMESPACE = "clients"
POOL_NAME = "cluster-pool"

# Deviation ids, as in the table of docs/services.md.
LOCAL_POLICY_REJECTS = "D1"  # Local policy, no local endpoint: ICMP unreachable, not a silent drop
NFT_CLUSTER_IP_PORT = "D2"  # nftables rejects unknown ports of an allocated ClusterIP; we pass
NFT_SERVICE_CIDR = "D3"  # nftables drops unallocated service-CIDR addresses; we pass
LOCALHOST_NODEPORT = "D4"  # no NodePorts on 127.0.0.0/8
NO_MASQUERADE = "D5"  # client IP kept where kube-proxy masquerades (not a verdict change)


@lru_cache(maxsize=1)
def load_vectors() -> dict[str, Any]:
    with open(VECTORS, encoding="utf-8") as fh:
        return json.load(fh)


def scenarios() -> list[dict[str, Any]]:
    return load_vectors()["scenarios"]


def flow_family(flow: dict[str, Any]) -> int:
    return 6 if ":" in flow["dst_ip"] else 4


def pod_name(ip: str) -> str:
    return "client-" + ip.replace(".", "-").replace(":", "x")


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _service(svc: dict[str, Any]) -> dict[str, Any]:
    ports = [_drop_none({"name": p["name"] or None, "port": p["port"], "protocol": p["protocol"],
                         "nodePort": p["nodePort"], "targetPort": p["targetPort"]}) for p in svc["ports"]]
    spec = _drop_none({
        "type": svc["type_as_written"] or None,
        "clusterIP": svc["clusterIP"],
        "clusterIPs": svc["clusterIPs"] or None,
        "ports": ports,
        "externalIPs": svc["externalIPs"] or None,
        "loadBalancerSourceRanges": svc["loadBalancerSourceRanges"] or None,
        "externalTrafficPolicy": svc["externalTrafficPolicy_as_written"],
        "internalTrafficPolicy": svc["internalTrafficPolicy_as_written"],
        "sessionAffinity": None if svc["sessionAffinity"] == "None" else svc["sessionAffinity"],
        "healthCheckNodePort": svc["healthCheckNodePort"],
        "selector": svc.get("selector"),
    })
    if svc["sessionAffinityTimeoutSeconds"] is not None:
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": svc["sessionAffinityTimeoutSeconds"]}}
    out = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": svc["name"], "namespace": svc["namespace"]},
           "spec": spec}
    if svc["loadBalancerIngress"]:
        out["status"] = {"loadBalancer": {"ingress": svc["loadBalancerIngress"]}}
    return out


def _slices(entry: dict[str, Any]) -> Iterator[dict[str, Any]]:
    ns, name = entry["service"].split("/")
    for s in entry["slices"]:
        yield {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": s["name"], "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
            "addressType": s["addressType"],
            "ports": [_drop_none(dict(p, name=p["name"])) for p in s["ports"]],
            "endpoints": [_drop_none({"addresses": e["addresses"], "nodeName": e["nodeName"],
                                      "conditions": _drop_none(e["conditions_as_written"])})
                          for e in s["endpoints"]],
        }


def scenario_manifests(scenario: dict[str, Any]) -> list[dict[str, Any]]:
    """API objects (dicts) equivalent to one scenario, this node first."""
    node = scenario["node"]
    pc = scenario["proxy_config"]
    ips = [node["node_ip"]] + [ip for ip in node["local_ips"] if ip != node["node_ip"]]
    docs: list[dict[str, Any]] = [{
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": node["name"]},
        "status": {"addresses": [{"type": "InternalIP", "address": ip} for ip in ips]
                   + [{"type": "Hostname", "address": node["name"]}]},
    }]
    kp: dict[str, Any] = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "clusterCIDR": pc["local_traffic_detector"]["cluster_cidr"],
        "iptables": {"masqueradeAll": pc["masquerade_all"], "localhostNodePorts": pc["localhost_nodeports"]},
    }
    if pc["nodeport_addresses_configured"] is not None:
        kp["nodePortAddresses"] = pc["nodeport_addresses_configured"]
    docs.append(kp)
    # Other nodes named by endpoints, so routes know where remote backends live
    # (addresses 192.168.0.101+ are used by no flow).
    remote = sorted({e["nodeName"] for entry in scenario["endpoints"] for sl in entry["slices"]
                     for e in sl["endpoints"] if e["nodeName"] and e["nodeName"] != node["name"]})
    for k, name in enumerate(remote):
        docs.append({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                     "status": {"addresses": [{"type": "InternalIP", "address": f"192.168.0.{101 + k}"}]}})
    docs.append({"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": POOL_NAME},
                 "spec": {"cidr": pc["local_traffic_detector"]["cluster_cidr"], "vxlanMode": "Always",
                          "natOutgoing": True}})
    docs.extend(_service(s) for s in scenario["services"])
    for entry in scenario["endpoints"]:
        docs.extend(_slices(entry))
    seen = set()
    for flow in scenario["flows"]:
        if flow["src_kind"].startswith("pod") and flow["src_ip"] not in seen:
            seen.add(flow["src_ip"])
            docs.append({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": pod_name(flow["src_ip"]), "namespace": CLIENT_NAMESPACE},
                         "spec": {"nodeName": node["name"]},
                         "status": {"phase": "Running", "podIP": flow["src_ip"]}})
    return docs


@attrs.frozen
class Expectation:
    action: str  # dnat | pass | drop | reject
    endpoints: frozenset[str]  # "ip:port"
    deviation: str | None = None  # the docs/services.md row that turned kube-proxy's outcome into this one


def _ip(text: str) -> ipaddress._BaseAddress:
    # The vectors write some addresses with leading zeros; read them as decimal.
    text = text.strip()
    if ":" not in text:
        text = ".".join(str(int(o, 10)) for o in text.split("."))
    return ipaddress.ip_address(text)


def _net(text: str) -> ipaddress._BaseNetwork:
    addr, _, plen = text.strip().partition("/")
    return ipaddress.ip_network(f"{_ip(addr)}/{int(plen, 10)}", strict=False)


def _cluster_ips(scenario: dict[str, Any]) -> dict[ipaddress._BaseAddress, dict[str, Any]]:
    return {_ip(ip): s for s in scenario["services"] for ip in s["clusterIPs"] if ip and ip != "None"}


def _blocked_by_source_ranges(scenario: dict[str, Any], flow: dict[str, Any]) -> bool:
    dst, src = _ip(flow["dst_ip"]), _ip(flow["src_ip"])
    for s in scenario["services"]:
        lb_ips = {_ip(i["ip"]) for i in s["loadBalancerIngress"] if i.get("ip")}
        ranges = [_net(r) for r in s["loadBalancerSourceRanges"]]
        if dst in lb_ips and ranges and not any(src in r for r in ranges):
            return True
    return False


def _local_policy_in_force(scenario: dict[str, Any], flow: dict[str, Any]) -> bool:
    """Whether the flow's destination belongs to a Service with a Local traffic policy."""
    dst = _ip(flow["dst_ip"])
    for s in scenario["services"]:
        addrs = {_ip(ip) for ip in s["clusterIPs"] if ip and ip != "None"}
        addrs |= {_ip(ip) for ip in s["externalIPs"]} | {_ip(i["ip"]) for i in s["loadBalancerIngress"] if i.get("ip")}
        node_ports = {p["nodePort"] for p in s["ports"] if p["nodePort"]}
        node_ips = {_ip(ip) for ip in scenario["node"]["local_ips"]}
        hit = dst in addrs or (dst in node_ips and flow["dst_port"] in node_ports)
        if hit and "Local" in (s["externalTrafficPolicy"], s["internalTrafficPolicy"]):
            return True
    return False


def calico_expectation(scenario: dict[str, Any], flow: dict[str, Any]) -> Expectation:
    """The outcome Calico's eBPF dataplane should give, derived from kube-proxy's by documented rules."""
    exp = flow["expect"]
    endpoints = frozenset(exp["endpoints"])
    action = exp["action"]
    dst = _ip(flow["dst_ip"])
    proxier = scenario["proxy_config"]["proxier"]
    if action == "dnat" and dst.is_loopback:
        return Expectation("pass", frozenset(), LOCALHOST_NODEPORT)
    if action == "reject" and proxier == "nftables" and dst in _cluster_ips(scenario):
        svc = _cluster_ips(scenario)[dst]
        if not any(p["port"] == flow["dst_port"] and p["protocol"].lower() == flow["proto"] for p in svc["ports"]):
            return Expectation("pass", frozenset(), NFT_CLUSTER_IP_PORT)
    if action == "drop" and proxier == "nftables" and dst not in _cluster_ips(scenario):
        cidrs = [_net(c) for c in scenario["proxy_config"]["service_cidrs"] or []]
        if any(dst in c for c in cidrs):
            return Expectation("pass", frozenset(), NFT_SERVICE_CIDR)
    if action == "drop" and not _blocked_by_source_ranges(scenario, flow) and _local_policy_in_force(scenario, flow):
        return Expectation("reject", frozenset(), LOCAL_POLICY_REJECTS)
    hairpin = any(e.rpartition(":")[0].strip("[]") == flow["src_ip"] for e in endpoints)
    if action == "dnat" and exp["masquerade"] and not hairpin:
        return Expectation(action, endpoints, NO_MASQUERADE)
    return Expectation(action, endpoints)
