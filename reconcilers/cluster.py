"""RemoteCluster: the InfraCluster of the contract. There is no infrastructure to create, so it
validates the control-plane endpoint against the Cluster, honours pause and reports provisioned."""

from __future__ import annotations

from capi_remote import (
    Event,
    Informer,
    Provider,
    ReconcileContext,
    Request,
    Result,
    patch_status,
    request_for,
    set_condition,
)
from capi_remote.resources import CAPI_GROUP, CLUSTERS, REMOTE_CLUSTERS
from reconcilers import conditions as c
from reconcilers.common import (
    MANAGED_BY_ANNOTATION,
    JSONDict,
    cached,
    copy_status,
    is_paused,
    owner_name,
    paused_condition,
)


def _endpoint_problem(remote: JSONDict, cluster: JSONDict | None) -> str:
    """Why the endpoint is not acceptable ("" when it is)."""
    ours = (remote.get("spec") or {}).get("controlPlaneEndpoint") or {}
    if not ours.get("host"):
        return ""  # another component (e.g. the control plane provider) provides it
    theirs = ((cluster or {}).get("spec") or {}).get("controlPlaneEndpoint") or {}
    if theirs.get("host") and (theirs.get("host"), theirs.get("port")) != (
        ours.get("host"),
        ours.get("port"),
    ):
        return (
            f"spec.controlPlaneEndpoint {ours.get('host')}:{ours.get('port')} differs from the "
            f"Cluster's {theirs.get('host')}:{theirs.get('port')}"
        )
    return ""


class RemoteClusterReconciler:
    def __init__(self, provider: Provider, remote: Informer, clusters: Informer) -> None:
        self.client = provider.client
        self.remote = remote.store
        self.clusters = clusters.store

    async def reconcile(self, ctx: ReconcileContext, request: Request) -> Result:
        obj = cached(self.remote, request.namespace, request.name)
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            return Result()
        if MANAGED_BY_ANNOTATION in obj["metadata"].get("annotations", {}):
            return Result()  # externally managed infrastructure: not ours to report on
        cluster = cached(self.clusters, request.namespace, owner_name(obj, CAPI_GROUP, "Cluster"))
        generation = obj["metadata"].get("generation")
        status = copy_status(obj)
        conditions = list(status.get("conditions", []))
        paused = is_paused(obj, cluster)
        conditions = set_condition(
            conditions, *paused_condition(paused), observed_generation=generation
        )
        if not paused:
            problem = _endpoint_problem(obj, cluster)
            if problem:
                conditions = set_condition(
                    conditions,
                    c.READY,
                    False,
                    c.ENDPOINT_MISMATCH,
                    problem,
                    observed_generation=generation,
                )
            else:
                conditions = set_condition(
                    conditions, c.READY, True, c.PROVISIONED, "", observed_generation=generation
                )
                status["initialization"] = {"provisioned": True}
        status["conditions"] = conditions
        await patch_status(self.client, REMOTE_CLUSTERS, obj, status)
        return Result()


def setup(provider: Provider) -> None:
    manager = provider.manager
    remote = manager.informer(REMOTE_CLUSTERS)
    clusters = manager.informer(CLUSTERS)

    def cluster_to_infra(event: Event) -> list[Request]:
        ref = event.obj.get("spec", {}).get("infrastructureRef") or {}
        if ref.get("kind") != "RemoteCluster":
            return []
        return [Request(request_for(event.obj).namespace, str(ref["name"]))]

    manager.controller(
        "remotecluster",
        RemoteClusterReconciler(provider, remote, clusters),
        for_=REMOTE_CLUSTERS,
        workers=2,
    ).watches(CLUSTERS, cluster_to_infra).build()
