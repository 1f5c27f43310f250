"""A tiny manager used by integration tests: it stamps ConfigMaps labelled ``stamp=yes`` with an
annotation naming the replica that reconciled them. Run in-process or as a subprocess:

    python -m tests.support.stamp_manager KUBECONFIG NAMESPACE IDENTITY
"""

from __future__ import annotations

import asyncio
import copy
import sys

from capi_remote.kube.client import KubeClient, Resource
from capi_remote.kube.controller import Controller
from capi_remote.kube.informer import Informer, Selector
from capi_remote.kube.leader import LeaderElectionSettings
from capi_remote.kube.manager import Manager, ManagerSettings
from capi_remote.kube.reconcile import ReconcileContext, Request, Result
from capi_remote.kube.status import patch_object

CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
STAMP = "test.capi-remote.dev/reconciled-by"


class StampReconciler:
    def __init__(self, client: KubeClient, informer: Informer, identity: str) -> None:
        self.client = client
        self.informer = informer
        self.identity = identity
        self.calls: dict[str, int] = {}

    async def reconcile(self, ctx: ReconcileContext, request: Request) -> Result:
        self.calls[request.name] = self.calls.get(request.name, 0) + 1
        cached = self.informer.store.get_by_name(request.namespace, request.name)
        if cached is None:
            return Result()
        failures = int(cached.get("data", {}).get("fail-times", "0"))
        if self.calls[request.name] <= failures:
            raise RuntimeError(f"planned failure {self.calls[request.name]} of {failures}")
        desired = copy.deepcopy(cached)
        annotations = desired["metadata"].setdefault("annotations", {})
        if STAMP not in annotations:
            annotations[STAMP] = self.identity
        await patch_object(self.client, CONFIGMAPS, cached, desired)
        return Result()


def build(
    client: KubeClient,
    namespace: str,
    identity: str,
    *,
    leader_election: bool,
    watch_filter: str | None = None,
) -> tuple[Manager, StampReconciler, Controller]:
    election = (
        LeaderElectionSettings(namespace=namespace, name="stamp", identity=identity)
        if leader_election
        else None
    )
    manager = Manager(
        client,
        ManagerSettings(
            health_address="127.0.0.1:0",
            metrics_address="127.0.0.1:0",
            metrics_secure=False,  # the scrape test reads it plainly; auth: test_metrics_auth.py
            leader_election=election,
            watch_filter=watch_filter,
        ),
    )
    selector = Selector(namespace=namespace, label_selector="stamp=yes")
    informer = manager.informer(CONFIGMAPS, selector)
    reconciler = StampReconciler(client, informer, identity)
    controller = manager.controller(
        "stamp", reconciler, for_=CONFIGMAPS, selector=selector, workers=4
    ).build()
    return manager, reconciler, controller


async def _main(kubeconfig: str, namespace: str, identity: str) -> None:
    client = await KubeClient.from_kubeconfig(kubeconfig)
    manager, _, _ = build(client, namespace, identity, leader_election=True)
    await manager.run()


if __name__ == "__main__":
    asyncio.run(_main(*sys.argv[1:4]))
