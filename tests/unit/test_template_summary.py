"""A RemoteMachineTemplate is summarised at most once per SUMMARY_INTERVAL however many of its
pool's hosts change (a scale-up changes them all), and catches up once that has passed."""

from __future__ import annotations

from typing import Any

import structlog

from capi_remote import ReconcileContext, Request, Store
from reconcilers.pool import POOL_INDEX
from reconcilers.pool.claims import index_by_pool
from reconcilers.template import SUMMARY_INTERVAL, RemoteMachineTemplateReconciler

JSONDict = dict[str, Any]
CTX = ReconcileContext("remotemachinetemplate", "test", structlog.get_logger())
REQUEST = Request("ns", "workers")


class StatusClient:
    def __init__(self) -> None:
        self.patches: list[JSONDict] = []

    async def patch(
        self, resource: Any, namespace: str, name: str, patch: JSONDict, subresource: str = ""
    ) -> JSONDict:
        assert subresource == "status"
        self.patches.append(patch)
        return {"metadata": {"resourceVersion": str(len(self.patches))}, **patch}


def host(index: int, claimed: bool) -> JSONDict:
    spec: JSONDict = {"pool": "p", "machine": {"address": f"192.0.2.{index}"}}
    if claimed:
        spec["claim"] = {"namespace": "ns", "name": f"m-{index}", "uid": f"u{index}"}
    return {
        "metadata": {"namespace": "ns", "name": f"h{index}", "generation": 1},
        "spec": spec,
        "status": {"health": {"state": "Healthy", "observedGeneration": 1}},
    }


async def test_a_burst_of_host_changes_writes_the_template_once_then_catches_up() -> None:
    now = [100.0]
    templates, pooled = Store(), Store({POOL_INDEX: index_by_pool})
    templates.upsert(
        {
            "metadata": {"namespace": "ns", "name": "workers", "resourceVersion": "1"},
            "spec": {"template": {"spec": {"pool": "p"}}},
        }
    )
    client = StatusClient()
    reconciler = RemoteMachineTemplateReconciler(
        client,  # type: ignore[arg-type]
        templates,
        pooled,
        clock=lambda: now[0],
    )
    for i in range(5):
        pooled.upsert(host(i, claimed=False))
    assert (await reconciler.reconcile(CTX, REQUEST)).requeue_after is None
    assert client.patches[-1]["status"]["available"] == 5
    for i in range(5):  # a scale-up claims every host within the interval
        pooled.upsert(host(i, claimed=True))
        now[0] += 0.1
        result = await reconciler.reconcile(CTX, REQUEST)
        assert result.requeue_after is not None and 0 < result.requeue_after <= SUMMARY_INTERVAL
    assert len(client.patches) == 1
    now[0] += SUMMARY_INTERVAL
    await reconciler.reconcile(CTX, REQUEST)
    assert len(client.patches) == 2
    assert client.patches[-1]["status"]["available"] == 0
