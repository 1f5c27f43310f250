"""RemoteMachineTemplate: publishes what its pool offers, for people and for the autoscaler.

``status.capacity`` and ``status.nodeInfo`` (string quantities) let the cluster-autoscaler scale a
MachineDeployment from zero; ``available``/``total`` say how many hosts the pool has free.
Capacity is that of the smallest healthy host, so a scale-up never promises more than any host has.

A template is summarised at most once per :data:`SUMMARY_INTERVAL`: every change of a pooled host
wakes it, and a scale-up of a MachineDeployment changes every host of the pool within seconds, so
summarising (a pass over the pool) and writing on each of those events cost N² for N hosts and a
template status write per machine (each claim changes ``available``; at 5 s a scale-up still
wrote it every 5 s, 0.36 writes per machine in E2 at 100). Its status may lag the pool by that
long: ``available`` is for people, and what the autoscaler reads (capacity, nodeInfo) changes
only with the hosts themselves.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

from capi_remote import (
    Event,
    KubeClient,
    Provider,
    ReconcileContext,
    Request,
    Result,
    Store,
    patch_status,
)
from capi_remote.resources import POOLED_REMOTE_MACHINES, REMOTE_MACHINE_TEMPLATES
from reconcilers.pool import is_free, pool_informer, pool_members

JSONDict = dict[str, Any]
TEMPLATE_POOL_INDEX = "pool"
#: Seconds between two summaries of one template (see above).
SUMMARY_INTERVAL = 30.0

_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def _bytes(quantity: str) -> int:
    for suffix, factor in _UNITS.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


def _template_pool(obj: JSONDict) -> str:
    return str(obj.get("spec", {}).get("template", {}).get("spec", {}).get("pool") or "")


def summarize(hosts: list[JSONDict]) -> JSONDict:
    """Availability and autoscaler hints of a pool, as a template status."""
    facts = [
        h["status"]["health"]["facts"]
        for h in hosts
        if ((h.get("status") or {}).get("health") or {}).get("state") == "Healthy"
        and h["status"]["health"].get("facts")
    ]
    status: JSONDict = {"total": len(hosts), "available": sum(1 for h in hosts if is_free(h))}
    sized = [f for f in facts if f.get("cpus") and f.get("memory")]
    if sized:
        smallest = min(sized, key=lambda f: (int(f["cpus"]), _bytes(str(f["memory"]))))
        status["capacity"] = {"cpu": str(smallest["cpus"]), "memory": str(smallest["memory"])}
    if facts:
        status["nodeInfo"] = {
            "architecture": facts[0].get("arch") or "amd64",
            "operatingSystem": "linux",
        }
    return status


class RemoteMachineTemplateReconciler:
    def __init__(
        self,
        client: KubeClient,
        templates: Store,
        pooled: Store,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.templates = templates
        self.pooled = pooled
        self._clock = clock
        self._summarised: dict[Request, float] = {}

    async def reconcile(self, ctx: ReconcileContext, request: Request) -> Result:
        obj = self.templates.get_by_name(request.namespace, request.name)
        if obj is None:
            self._summarised.pop(request, None)
            return Result()
        since = self._clock() - self._summarised.get(request, float("-inf"))
        if since < SUMMARY_INTERVAL:
            return Result(requeue_after=SUMMARY_INTERVAL - since)
        self._summarised[request] = self._clock()
        pool = _template_pool(obj)
        status = copy.deepcopy(obj.get("status") or {})
        if pool:
            for derived in ("capacity", "nodeInfo"):  # only what the current hosts support
                status.pop(derived, None)
            status.update(summarize(pool_members(self.pooled, request.namespace, pool)))
        await patch_status(self.client, REMOTE_MACHINE_TEMPLATES, obj, status)
        return Result()


def setup(provider: Provider) -> None:
    manager = provider.manager
    templates = manager.informer(REMOTE_MACHINE_TEMPLATES)
    templates.store.add_indexer(
        TEMPLATE_POOL_INDEX,
        lambda t: [f"{t['metadata'].get('namespace', '')}/{_template_pool(t)}"],
    )
    pooled = pool_informer(provider)

    def host_to_templates(event: Event) -> list[Request]:
        meta = event.obj["metadata"]
        key = f"{meta.get('namespace', '')}/{event.obj.get('spec', {}).get('pool', '')}"
        return [
            Request(t["metadata"]["namespace"], t["metadata"]["name"])
            for t in templates.store.by_index(TEMPLATE_POOL_INDEX, key)
        ]

    manager.controller(
        "remotemachinetemplate",
        RemoteMachineTemplateReconciler(provider.client, templates.store, pooled.store),
        for_=REMOTE_MACHINE_TEMPLATES,
        workers=2,
    ).watches(POOLED_REMOTE_MACHINES, host_to_templates).build()
