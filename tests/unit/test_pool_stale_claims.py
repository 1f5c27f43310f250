"""Issue 13: a stale claim on a pooled host is cleared by the pool reconciler, with a Warning
Event saying why, so the host is free again; a valid claim, or one that changed since it was
judged stale (a live claimant), is never cleared."""

from __future__ import annotations

import contextlib
import copy
from typing import Any, cast

import pytest
import structlog

from capi_remote import ApiError, Conflict, Informer, KubeClient, ReconcileContext, Request
from capi_remote.kube.client import Resource
from capi_remote.resources import POOLED_REMOTE_MACHINES, REMOTE_MACHINES
from reconcilers import conditions as c
from reconcilers.pool import RECHECK_ANNOTATION
from reconcilers.pool.reconciler import PooledRemoteMachineReconciler
from tests.support.events import RecordedEvents
from tests.unit.test_pool_probes import FakeServer, pooled_host

JSONDict = dict[str, Any]
NAMESPACE = "tenant"


def remote_machine(name: str, uid: str, namespace: str = NAMESPACE, **spec: Any) -> JSONDict:
    return {"metadata": {"namespace": namespace, "name": name, "uid": uid}, "spec": spec}


class Server(FakeServer):
    """The pooled host, plus RemoteMachines by namespace and name; remembers every read."""

    def __init__(self, pooled: JSONDict, machines: list[JSONDict]) -> None:
        super().__init__(pooled)
        self.machines = {(m["metadata"]["namespace"], m["metadata"]["name"]): m for m in machines}
        self.reads: list[tuple[str, str | None, str]] = []

    async def get(self, resource: Resource, namespace: str | None, name: str) -> JSONDict:
        self.reads.append((resource.plural, namespace, name))
        if resource == REMOTE_MACHINES:
            found = self.machines.get((str(namespace), name))
            if found is None:
                raise ApiError(404, "NotFound", f"remotemachines {name} not found")
            return copy.deepcopy(found)
        return await super().get(resource, namespace, name)


class Bed:
    def __init__(
        self, claim: JSONDict, machines: list[JSONDict], server: type[Server] = Server
    ) -> None:
        host = pooled_host()
        host["spec"]["claim"] = claim
        self.server = server(host, machines)
        client = cast(KubeClient, self.server)
        self.pooled = Informer(client, POOLED_REMOTE_MACHINES)
        self.pooled.store.upsert(copy.deepcopy(host))
        self.machines = Informer(client, REMOTE_MACHINES)
        for machine in machines:
            self.machines.store.upsert(copy.deepcopy(machine))
        self.events = RecordedEvents()

        async def unused_prober(pooled: JSONDict) -> JSONDict:
            raise AssertionError("a claimed host is not probed")

        self.reconciler = PooledRemoteMachineReconciler(
            client, self.pooled, self.machines, unused_prober, self.events.as_recorder()
        )

    async def reconcile(self) -> None:
        ctx = ReconcileContext("pooledremotemachine", "test", structlog.get_logger())
        host = self.server.obj["metadata"]["name"]
        await self.reconciler.reconcile(ctx, Request(NAMESPACE, host))

    def claim(self) -> JSONDict | None:
        return cast(JSONDict | None, self.server.obj["spec"].get("claim"))


def assert_released(bed: Bed, why: str, ordinary: bool = False) -> None:
    """Released and re-checked; a Warning unless the claimant was simply deleted (before its
    first start: it had no finalizer to release the claim itself)."""
    assert bed.claim() is None
    assert RECHECK_ANNOTATION in bed.server.annotations(), "a freed host is re-probed first"
    [(_, type_, reason, message)] = bed.events.recorded
    expected = ("Normal", c.CLAIM_RELEASED) if ordinary else ("Warning", c.STALE_CLAIM_RELEASED)
    assert (type_, reason) == expected
    assert why in message


async def test_a_claim_naming_another_namespaces_machine_is_released() -> None:
    victim = remote_machine("worker-0", "u-victim", namespace="victim", address="192.0.2.10")
    bed = Bed({"namespace": "victim", "name": "worker-0", "uid": "u-victim"}, [victim])
    await bed.reconcile()
    assert_released(bed, "a claim counts only within the host's own namespace")
    assert not [read for read in bed.server.reads if read[1] == "victim"], (
        "the other namespace is not even read"
    )


async def test_a_foreign_claim_without_uid_is_released() -> None:
    bed = Bed({"namespace": "victim", "name": "worker-0"}, [])
    await bed.reconcile()
    assert_released(bed, "own namespace")


async def test_a_claim_whose_machine_is_gone_is_released() -> None:
    bed = Bed({"namespace": NAMESPACE, "name": "gone", "uid": "u-gone"}, [])
    await bed.reconcile()
    assert_released(bed, "does not exist", ordinary=True)


async def test_a_claim_whose_uid_no_longer_exists_is_released() -> None:
    successor = remote_machine("worker-0", "u-new")
    bed = Bed({"namespace": NAMESPACE, "name": "worker-0", "uid": "u-old"}, [successor])
    await bed.reconcile()
    assert_released(bed, "UID u-old no longer exists", ordinary=True)


@pytest.mark.parametrize("address", [None, "192.0.2.10"], ids=["not-bound-yet", "bound"])
async def test_a_valid_claim_is_kept(address: str | None) -> None:
    spec = {"address": address} if address else {}
    owner = remote_machine("worker-0", "u1", **spec)
    claim = {"namespace": NAMESPACE, "name": "worker-0", "uid": "u1"}
    bed = Bed(claim, [owner])
    await bed.reconcile()
    assert bed.claim() == claim
    assert bed.events.recorded == []


async def test_a_claim_replaced_since_it_was_judged_stale_is_kept() -> None:
    """The cache still shows the foreign claim; the server already has a live claimant's."""
    bed = Bed({"namespace": "victim", "name": "worker-0"}, [remote_machine("worker-0", "u1")])
    live = {"namespace": NAMESPACE, "name": "worker-0", "uid": "u1"}
    await bed.server.patch(POOLED_REMOTE_MACHINES, NAMESPACE, "x", {"spec": {"claim": None}})
    await bed.server.patch(POOLED_REMOTE_MACHINES, NAMESPACE, "x", {"spec": {"claim": live}})
    await bed.reconcile()
    assert bed.claim() == live
    assert bed.events.recorded == []


class RacingServer(Server):
    """A live claimant writes between our read of the host and our clearing write."""

    async def get(self, resource: Resource, namespace: str | None, name: str) -> JSONDict:
        read = await super().get(resource, namespace, name)
        if resource == POOLED_REMOTE_MACHINES:
            live = {"spec": {"claim": {"namespace": NAMESPACE, "name": "worker-0", "uid": "u1"}}}
            await self.patch(resource, namespace, name, {"spec": {"claim": None}})
            await self.patch(resource, namespace, name, live)
        return read


async def test_the_clearing_write_is_conditional_on_the_version_it_judged() -> None:
    bed = Bed({"namespace": "victim", "name": "worker-0"}, [], RacingServer)
    with contextlib.suppress(Conflict):
        await bed.reconcile()
    assert bed.claim() == {"namespace": NAMESPACE, "name": "worker-0", "uid": "u1"}
    assert bed.events.recorded == []
