"""L3 compilers: cluster state -> desired dataplane records (pure Python, no kernel).

>>> from calico_ebpf.compiler import compile_services, compile_routes, ServiceIdAllocator
"""

from calico_ebpf.compiler.routes import Route, compile_routes, veth_name
from calico_ebpf.compiler.service_ids import ServiceIdAllocator
from calico_ebpf.compiler.services import (
    BackendSet,
    DesiredServices,
    Frontend,
    ServicesConfig,
    compile_services,
)

__all__ = [
    "BackendSet",
    "DesiredServices",
    "Frontend",
    "Route",
    "ServiceIdAllocator",
    "ServicesConfig",
    "compile_routes",
    "compile_services",
    "veth_name",
]
