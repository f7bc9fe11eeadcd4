"""What an install step will send to the API server, and the one place that sends it.

Every step first *plans*: it reads the cluster and returns a :class:`Plan`, a
list of :class:`Write` requests (method, path, content type, exact body) plus
notes and warnings for the operator. ``--dry-run`` prints the plan; a real run
hands it to :func:`execute`. Because both go through the same object, what a
dry run prints is byte for byte what a real run sends::

    plan = kube_proxy.plan_disable(api, distro="kubeadm")
    print(plan.render())            # the requests, as JSON, and kubectl equivalents
    execute(api, plan)              # send them, in order; stops at the first failure

Reads go through :class:`Cluster`, a thin wrapper over the real client's
request machinery that answers ``None`` for 404 instead of raising.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
from kubernetes import client
from kubernetes.client.exceptions import ApiException

__all__ = ["MERGE_PATCH", "STRATEGIC_MERGE_PATCH", "Cluster", "Plan", "Write", "execute"]

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON = "application/json"

# kubectl's --type names for the patch content types, for the human-readable equivalent.
_KUBECTL_PATCH_TYPE = {MERGE_PATCH: "merge", STRATEGIC_MERGE_PATCH: "strategic"}


@attrs.frozen
class Write:
    """One state-changing request: ``method`` on ``path`` with ``body`` sent as ``content_type``.

    ``kubectl`` is the equivalent command from Calico's guide (shown in dry runs
    so an operator can compare it with the documentation, or run it by hand).
    """

    method: str
    path: str
    body: Any
    summary: str
    content_type: str = JSON
    kubectl: str = ""

    def to_dict(self) -> dict:
        return {"method": self.method, "path": self.path, "contentType": self.content_type, "body": self.body,
                "summary": self.summary, "kubectl": self.kubectl}

    def render(self) -> str:
        lines = [f"{self.method} {self.path}  ({self.content_type})", f"  # {self.summary}",
                 "  " + json.dumps(self.body)]
        if self.kubectl:
            lines.append(f"  $ {self.kubectl}")
        return "\n".join(lines)


@attrs.frozen
class Plan:
    """A step's outcome before anything is sent: the writes, advice (``notes``) and ``warnings``."""

    step: str
    writes: tuple[Write, ...] = ()
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"step": self.step, "writes": [w.to_dict() for w in self.writes], "notes": list(self.notes),
                "warnings": list(self.warnings)}

    def render(self, *, dry_run: bool = False) -> str:
        """Human text: warnings, then the requests (``would send`` in a dry run), then notes."""
        out = [f"warning: {w}" for w in self.warnings]
        if self.writes:
            out.append(f"{self.step}: {'would send' if dry_run else 'sending'} {len(self.writes)} request(s):")
            out.extend(w.render() for w in self.writes)
        else:
            out.append(f"{self.step}: nothing to change")
        out.extend(f"note: {n}" for n in self.notes)
        return "\n".join(out)


def kubectl_patch(resource: str, name: str, body: Any, content_type: str, namespace: str | None = None) -> str:
    """The ``kubectl patch`` line that sends ``body`` (for humans; we send the request ourselves)."""
    ns = f" -n {namespace}" if namespace else ""
    kind = _KUBECTL_PATCH_TYPE.get(content_type, "json")
    return f"kubectl patch {resource} {name}{ns} --type {kind} -p '{json.dumps(body, separators=(',', ':'))}'"


class Cluster:
    """Raw JSON requests through the real client (auth, TLS and host come from its Configuration).

    Example::

        cluster = Cluster(load_api_client())
        ds = cluster.get("/apis/apps/v1/namespaces/kube-system/daemonsets/kube-proxy")  # dict or None
    """

    def __init__(self, api_client: client.ApiClient):
        self.api_client = api_client

    @property
    def host(self) -> str:
        """The API server URL this client talks to (``https://host:port``)."""
        return self.api_client.configuration.host

    def request(self, method: str, path: str, body: Any = None, content_type: str | None = None) -> Any:
        """Send one request and return the decoded JSON; raises ``ApiException`` on non-2xx."""
        headers = {"Accept": JSON}
        if content_type:
            headers["Content-Type"] = content_type
        params = self.api_client.param_serialize(method, path, header_params=headers, body=body,
                                                 auth_settings=["BearerToken"])
        response = self.api_client.call_api(*params)
        response.read()
        return self.api_client.response_deserialize(response, {"200": "object", "201": "object"}).data

    def get(self, path: str) -> dict | None:
        """GET ``path``; ``None`` when the object (or its kind) does not exist."""
        try:
            return self.request("GET", path)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, path: str) -> list[dict]:
        """The items of a list at ``path``; empty when the kind is not served."""
        found = self.get(path)
        return list(found.get("items") or []) if found else []


def execute(api_client: client.ApiClient | Cluster, plan: Plan) -> list[Any]:
    """Send ``plan``'s writes in order and return the responses; raises at the first failure."""
    cluster = api_client if isinstance(api_client, Cluster) else Cluster(api_client)
    return [cluster.request(w.method, w.path, w.body, w.content_type) for w in plan.writes]
