"""Leader election, Events and status patching against the real API server."""

from __future__ import annotations

import asyncio

import pytest

from capi_remote.kube.client import KubeClient, Resource
from capi_remote.kube.events import EVENTS, EventRecorder
from capi_remote.kube.leader import LEASES, LeaderElectionSettings, LeaderElector, LeadershipLost
from capi_remote.kube.status import Conflict, patch_status, set_condition
from capi_remote.resources import SECRETS

pytestmark = pytest.mark.integration

CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)


def _settings(namespace: str, identity: str) -> LeaderElectionSettings:
    # Shortened timings, same ratios as client-go's 15/10/2.
    return LeaderElectionSettings(
        namespace=namespace,
        name="capi-remote",
        identity=identity,
        lease_duration=3.0,
        renew_deadline=2.0,
        retry_period=0.4,
    )


async def test_only_one_leader_and_successor_after_release(
    kube: KubeClient, namespace: str
) -> None:
    leading: list[str] = []
    stop_first = asyncio.Event()

    def work(name: str, until: asyncio.Event) -> asyncio.Future[None]:
        async def lead() -> None:
            leading.append(name)
            await until.wait()

        return asyncio.ensure_future(LeaderElector(kube, _settings(namespace, name)).run(lead))

    first = work("a", stop_first)
    await asyncio.sleep(1.0)
    second = work("b", asyncio.Event())
    await asyncio.sleep(2.0)
    assert leading == ["a"], "the second candidate must wait while the first renews"

    stop_first.set()  # clean exit: the lease is released, the successor need not wait 3 s
    await first
    async with asyncio.timeout(2.0):
        while leading != ["a", "b"]:
            await asyncio.sleep(0.05)
    lease = await kube.get(LEASES, namespace, "capi-remote")
    assert lease["spec"]["holderIdentity"] == "b"
    assert lease["spec"]["leaseTransitions"] == 1
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)
    released = await kube.get(LEASES, namespace, "capi-remote")
    assert released["spec"]["holderIdentity"] == ""


async def test_leader_that_cannot_renew_stops_its_work(kube: KubeClient, namespace: str) -> None:
    cancelled = asyncio.Event()

    async def lead() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    elector = LeaderElector(kube, _settings(namespace, "a"))
    task = asyncio.create_task(elector.run(lead))
    await asyncio.sleep(1.0)
    # Someone else takes the lease over (as after a partition): renewals now conflict/fail.
    lease = await kube.get(LEASES, namespace, "capi-remote")
    lease["spec"]["holderIdentity"] = "intruder"
    await kube.replace(LEASES, lease)
    with pytest.raises(LeadershipLost):
        await asyncio.wait_for(task, 10)
    assert cancelled.is_set()


async def test_repeated_events_aggregate_into_one(kube: KubeClient, namespace: str) -> None:
    obj = await kube.create(
        CONFIGMAPS,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "x", "namespace": namespace},
        },
    )
    recorder = EventRecorder(kube)
    recorder.start()
    for _ in range(3):
        recorder.record(obj, "Warning", "HostUnreachable", "connect timed out")
    recorder.record(obj, "Normal", "Provisioned", "done")
    await recorder.stop()
    events = (await kube.list(EVENTS, namespace))["items"]
    by_reason = {e["reason"]: e for e in events}
    assert set(by_reason) == {"HostUnreachable", "Provisioned"}
    assert by_reason["HostUnreachable"]["count"] == 3
    assert by_reason["HostUnreachable"]["involvedObject"]["uid"] == obj["metadata"]["uid"]


async def test_status_written_only_on_change_and_guarded_by_resource_version(
    kube: KubeClient, namespace: str
) -> None:
    # Namespaces have a status subresource and are always present: a convenient real target.
    ns = await kube.get(NAMESPACES, None, namespace)
    desired = dict(ns["status"])
    assert await patch_status(kube, NAMESPACES, ns, desired) is None  # unchanged: no write
    desired["conditions"] = set_condition(
        [], "Example", True, "Testing", now="2026-01-01T00:00:00Z"
    )
    updated = await patch_status(kube, NAMESPACES, ns, desired)
    assert updated is not None
    assert updated["metadata"]["resourceVersion"] != ns["metadata"]["resourceVersion"]
    with pytest.raises(Conflict):  # the old copy is stale now
        await patch_status(kube, NAMESPACES, ns, {"phase": "Active", "conditions": []})


async def test_many_open_watches_do_not_starve_other_requests(
    kube: KubeClient, namespace: str
) -> None:
    """More watches than the request pool has connections (100): reads still answer at once."""

    async def watch_one(index: int) -> None:
        selector = f"metadata.name=absent-{index}"
        async for _ in kube.watch(SECRETS, namespace, "0", field_selector=selector):
            pass

    watches = [asyncio.create_task(watch_one(i)) for i in range(120)]
    try:
        await asyncio.sleep(2)  # let them all connect
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.wait_for(kube.list(SECRETS, namespace), 10)
        assert loop.time() - start < 5
        assert not any(task.done() for task in watches), "the watches are still open"
    finally:
        for task in watches:
            task.cancel()
        await asyncio.gather(*watches, return_exceptions=True)
