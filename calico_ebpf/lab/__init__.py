"""A netns "cluster" on one machine: nodes, pods, veths and a VXLAN underlay, wired like Calico.

>>> from calico_ebpf.lab import Lab
>>> with Lab(nodes=2, pods_per_node=2) as lab:               # doctest: +SKIP
...     lab.pod("node-1", 0).request(lab.pod("node-2", 0).ip).peer_ip
'10.244.0.1'

See :mod:`calico_ebpf.lab.topology` for the layout and :mod:`calico_ebpf.lab.plan`
for the addresses.
"""

from calico_ebpf.lab.plan import LabPlan, NodePlan, PodPlan
from calico_ebpf.lab.topology import ExternalClient, Lab, LabNode, LabPod, lab_status
from calico_ebpf.lab.workload import Reply, WorkloadError, request, start_server

__all__ = [
    "ExternalClient",
    "Lab",
    "LabNode",
    "LabPlan",
    "LabPod",
    "NodePlan",
    "PodPlan",
    "Reply",
    "WorkloadError",
    "lab_status",
    "request",
    "start_server",
]
