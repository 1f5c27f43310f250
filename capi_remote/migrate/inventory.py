"""Everything a migration looks at, read once per run from the API server.

Invariants: every list is paged and capped (``MAX_OBJECTS`` per kind, all namespaces): a tenant
who creates a million RemoteMachines makes the command stop with a message, not exhaust memory.
Objects are kept as the API server returned them; :mod:`.checks` and :mod:`.plan` only read them.
"""

from __future__ import annotations

from typing import Any

import attrs

from capi_remote.api import crdgen
from capi_remote.kube.client import ApiError, KubeClient, Resource
from capi_remote.migrate.errors import MigrationError
from capi_remote.resources import (
    CLUSTERS,
    MACHINES,
    POOLED_REMOTE_MACHINES,
    REMOTE_CLUSTERS,
    REMOTE_MACHINE_TEMPLATES,
    REMOTE_MACHINES,
)

JSONDict = dict[str, Any]
MAX_OBJECTS = 20_000
PAGE = 500
PROVIDER_LABEL = "cluster.x-k8s.io/provider"
CLUSTER_NAME_LABEL = "cluster.x-k8s.io/cluster-name"
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CRD", False)
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
CAPI_CLUSTER_CRD = "clusters.cluster.x-k8s.io"
#: Our kinds' CRDs, which the reference defines under the same names.
CRD_NAMES = tuple(kind.crd_name for kind in crdgen.KINDS)


def key(obj: JSONDict) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def cluster_of(obj: JSONDict) -> str | None:
    """``namespace/cluster`` an infrastructure object belongs to, from Cluster API's label."""
    meta = obj.get("metadata") or {}
    name = (meta.get("labels") or {}).get(CLUSTER_NAME_LABEL)
    return f"{meta.get('namespace', '')}/{name}" if isinstance(name, str) and name else None


def provisioned(rm: JSONDict) -> bool:
    status = rm.get("status") or {}
    return bool((status.get("initialization") or {}).get("provisioned"))


@attrs.frozen
class Inventory:
    server_version: str
    crds: dict[str, JSONDict]
    clusters: list[JSONDict]
    machines: list[JSONDict]
    remote_machines: list[JSONDict]
    pooled: list[JSONDict]
    templates: list[JSONDict]
    remote_clusters: list[JSONDict]
    provider_deployments: list[JSONDict]

    def cluster(self, ref: str) -> JSONDict | None:
        return next((c for c in self.clusters if key(c) == ref), None)

    def machine_of(self, rm: JSONDict) -> JSONDict | None:
        """The Cluster API Machine that owns ``rm``, if any."""
        namespace = (rm.get("metadata") or {}).get("namespace")
        for owner in (rm.get("metadata") or {}).get("ownerReferences") or []:
            if owner.get("kind") == "Machine":
                ref = f"{namespace}/{owner.get('name')}"
                return next((m for m in self.machines if key(m) == ref), None)
        return None

    def target_clusters(self) -> list[str]:
        """Clusters to pause: those with RemoteMachines, or a RemoteCluster as infrastructure."""
        found = {ref for rm in self.remote_machines if (ref := cluster_of(rm))}
        for cluster in self.clusters:
            infra = (cluster.get("spec") or {}).get("infrastructureRef") or {}
            if infra.get("kind") == "RemoteCluster":
                found.add(key(cluster))
        return sorted(ref for ref in found if self.cluster(ref) is not None)


async def list_all(
    kube: KubeClient, resource: Resource, *, label_selector: str | None = None
) -> list[JSONDict]:
    """Every object of a kind in all namespaces, paged; more than ``MAX_OBJECTS`` is an error."""
    items: list[JSONDict] = []
    token: str | None = None
    while True:
        try:
            page = await kube.list(
                resource, label_selector=label_selector, limit=PAGE, continue_token=token
            )
        except ApiError as error:
            if error.not_found:  # the kind is not installed
                return []
            raise
        items.extend(page.get("items") or [])
        if len(items) > MAX_OBJECTS:
            raise MigrationError(
                f"more than {MAX_OBJECTS} {resource.kind} objects: migrate namespaces by hand "
                "(docs/migrating.md, appendix)"
            )
        token = (page.get("metadata") or {}).get("continue") or None
        if token is None:
            return items


async def gather(kube: KubeClient) -> Inventory:
    crds: dict[str, JSONDict] = {}
    for name in (*CRD_NAMES, CAPI_CLUSTER_CRD):
        try:
            crds[name] = await kube.get(CRDS, None, name)
        except ApiError as error:
            if not error.not_found:
                raise
    version = await kube.get_path("/version")
    has = set(crds)
    return Inventory(
        server_version=str(version.get("gitVersion", "unknown")),
        crds=crds,
        clusters=await list_all(kube, CLUSTERS) if CAPI_CLUSTER_CRD in has else [],
        machines=await list_all(kube, MACHINES) if CAPI_CLUSTER_CRD in has else [],
        remote_machines=await _ours(kube, REMOTE_MACHINES, has),
        pooled=await _ours(kube, POOLED_REMOTE_MACHINES, has),
        templates=await _ours(kube, REMOTE_MACHINE_TEMPLATES, has),
        remote_clusters=await _ours(kube, REMOTE_CLUSTERS, has),
        provider_deployments=await list_all(kube, DEPLOYMENTS, label_selector=PROVIDER_LABEL),
    )


async def _ours(kube: KubeClient, resource: Resource, installed: set[str]) -> list[JSONDict]:
    if f"{resource.plural}.{resource.group}" not in installed:
        return []
    return await list_all(kube, resource)
