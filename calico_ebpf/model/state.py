"""ClusterState: every object the dataplane cares about, by kind and key.

Loading never stops at a bad object: it is rejected on its own (its error is
kept in ``rejected``) and the rest still load. Features the dataplane does
not support inside an otherwise good object (an SCTP service port) are kept
in ``unsupported``; kinds the model does not know yet are listed in
``ignored`` and kept raw in ``unhandled``.

>>> state = ClusterState.from_yaml_text('''
... apiVersion: v1
... kind: Service
... metadata: {name: web, namespace: shop}
... spec: {clusterIP: 172.30.0.10, ports: [{port: 0}]}
... ---
... apiVersion: v1
... kind: Namespace
... metadata: {name: shop}
... ''')
>>> sorted(state.namespaces), [str(e) for e in state.rejected]
(['shop'], ['Service shop/web: spec.ports[0].port: 0 is not a valid port'])
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from calico_ebpf.errors import CalicoEBPFError, ModelError, UnsupportedError
from calico_ebpf.model.calico import FelixConfiguration, IPPool
from calico_ebpf.model.core import Namespace, Node, Pod, Service
from calico_ebpf.model.discovery import EndpointSlice
from calico_ebpf.model.kubeproxy import KubeProxyConfiguration
from calico_ebpf.model.registry import parser_for

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_EMPTY: dict[str, Any] = {}


class ClusterState:
    """Validated objects by kind (``"Service"``) and key (``"ns/name"`` or ``"name"``).

    Build it with :meth:`from_manifests`, :meth:`from_yaml_text` or
    :meth:`from_dicts`, or add objects one by one with :meth:`add_dict`.
    """

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.rejected: list[CalicoEBPFError] = []
        self.unsupported: list[UnsupportedError] = []
        self.ignored: list[str] = []
        self.unhandled: list[Mapping[str, Any]] = []
        self._slices_by_service: dict[str, list[EndpointSlice]] | None = None

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_dicts(cls, items: Iterable[Mapping[str, Any]], source: str = "input") -> ClusterState:
        state = cls()
        state.add_dicts(items, source)
        return state

    @classmethod
    def from_yaml_text(cls, text: str, source: str = "<text>") -> ClusterState:
        state = cls()
        state.add_yaml_text(text, source)
        return state

    @classmethod
    def from_manifests(cls, *paths: str | os.PathLike[str]) -> ClusterState:
        """Load YAML files (multi-document, or ``kind: List``) in order; later objects replace earlier ones."""
        state = cls()
        for path in paths:
            with open(path, encoding="utf-8") as fh:
                state.add_yaml_text(fh.read(), os.fspath(path))
        return state

    def add_yaml_text(self, text: str, source: str = "<text>") -> None:
        try:
            docs = list(yaml.load_all(text, Loader=_Loader))
        except yaml.YAMLError as exc:
            self.rejected.append(ModelError(source, "", f"is not valid YAML: {exc}"))
            return
        self.add_dicts(docs, source)

    def add_dicts(self, items: Iterable[Any], source: str = "input") -> None:
        for i, item in enumerate(items):
            if item is None:  # empty YAML document
                continue
            self._add_any(item, f"{source}: document {i}")

    def _add_any(self, item: Any, where: str) -> None:
        if not isinstance(item, Mapping):
            self.rejected.append(ModelError(where, "", f"expected an object, got {type(item).__name__}"))
            return
        kind = item.get("kind")
        if isinstance(kind, str) and kind.endswith("List") and isinstance(item.get("items"), list):
            for j, sub in enumerate(item["items"]):
                self._add_any(sub, f"{where} items[{j}]")
            return
        try:
            self.add_dict(item)
        except CalicoEBPFError as exc:
            if isinstance(exc, ModelError) and exc.object.startswith(("<", "object")):
                exc = ModelError(where, exc.field, exc.reason)
            self.rejected.append(exc)

    def add_dict(self, d: Mapping[str, Any]) -> Any:
        """Parse and add one API object; raises ModelError/UnsupportedError if it is refused.

        Returns the model object, or None for a kind the model does not handle yet.
        """
        kind, api_version = d.get("kind"), d.get("apiVersion")
        if not isinstance(kind, str) or not kind:
            raise ModelError("object", "kind", "is required")
        if not isinstance(api_version, str) or not api_version:
            raise ModelError(f"object of kind {kind}", "apiVersion", "is required")
        parser = parser_for(api_version, kind)
        if parser is None:
            md = d.get("metadata") if isinstance(d.get("metadata"), Mapping) else _EMPTY
            name = "/".join(x for x in (md.get("namespace"), md.get("name")) if isinstance(x, str))
            self.ignored.append(f"{api_version} {kind} {name}: kind not handled (yet); ignored")
            self.unhandled.append(d)
            return None
        obj = parser(d)
        self.add(obj)
        return obj

    def add(self, obj: Any) -> None:
        """Add (or replace) an already-built model object."""
        kind = type(obj).__name__
        self.objects.setdefault(kind, {})[obj.key] = obj
        if kind == "EndpointSlice":
            self._slices_by_service = None
        if kind == "Service":
            self._forget_unsupported(f"Service {obj.key}")
            for i, p in enumerate(obj.ports):
                if p.protocol == "SCTP":
                    self.unsupported.append(UnsupportedError(
                        "SCTP service port", f"spec.ports[{i}] ({p.port}/SCTP) is ignored: the eBPF dataplane "
                        "handles TCP and UDP services only", f"Service {obj.key}"))

    def _forget_unsupported(self, obj: str) -> None:
        # An updated object replaces its old notes instead of piling up new ones.
        if self.unsupported:
            self.unsupported = [e for e in self.unsupported if e.object != obj]

    def remove(self, kind: str, key: str) -> Any:
        """Remove an object; returns it (None if absent)."""
        if kind == "EndpointSlice":
            self._slices_by_service = None
        self._forget_unsupported(f"{kind} {key}")
        return self.objects.get(kind, {}).pop(key, None)

    # -- access ---------------------------------------------------------------------------------

    def of_kind(self, kind: str) -> dict[str, Any]:
        return self.objects.get(kind, _EMPTY)

    @property
    def nodes(self) -> dict[str, Node]:
        return self.of_kind("Node")

    @property
    def services(self) -> dict[str, Service]:
        return self.of_kind("Service")

    @property
    def endpoint_slices(self) -> dict[str, EndpointSlice]:
        return self.of_kind("EndpointSlice")

    @property
    def pods(self) -> dict[str, Pod]:
        return self.of_kind("Pod")

    @property
    def namespaces(self) -> dict[str, Namespace]:
        return self.of_kind("Namespace")

    @property
    def ip_pools(self) -> dict[str, IPPool]:
        return self.of_kind("IPPool")

    @property
    def kube_proxy_config(self) -> KubeProxyConfiguration | None:
        configs = self.of_kind("KubeProxyConfiguration")
        return next(reversed(configs.values())) if configs else None

    def felix_config(self, node_name: str | None = None) -> FelixConfiguration:
        """Effective Felix config: defaults, then ``default``, then ``node.<node_name>``."""
        configs = self.of_kind("FelixConfiguration")
        result = FelixConfiguration(name="default")
        for name in ("default", f"node.{node_name}" if node_name else None):
            if name in configs:
                result = result.merged(configs[name])
        return result

    def slices_for(self, service_key: str) -> list[EndpointSlice]:
        """EndpointSlices labelled for ``ns/service``, in key order."""
        if self._slices_by_service is None:
            index: dict[str, list[EndpointSlice]] = {}
            for key in sorted(self.endpoint_slices):
                s = self.endpoint_slices[key]
                if s.service_key:
                    index.setdefault(s.service_key, []).append(s)
            self._slices_by_service = index
        return self._slices_by_service.get(service_key, [])

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}={len(v)}" for k, v in sorted(self.objects.items()))
        return f"<ClusterState {counts} rejected={len(self.rejected)}>"
