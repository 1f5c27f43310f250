"""The workload clusters' Node watch against a real API server (standing in for a workload
cluster): registering Nodes wake exactly their machines, lookups read the cache, and many
machines' reconciles cost one list and one watch, not a GET and a LIST each."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from capi_remote import KubeClient, Request
from capi_remote.resources import NODES
from reconcilers.workloadnodes import Lookup, NodeWatchSettings, WorkloadNodes

pytestmark = pytest.mark.integration

JSONDict = dict[str, Any]
CLUSTER = ("tenant", "workload")


class CountingClient(KubeClient):
    """The real client, counting the Node reads it sends."""

    reads: list[str]

    async def get(self, resource: Any, namespace: str | None, name: str) -> JSONDict:
        self.reads.append("get")
        return await super().get(resource, namespace, name)

    async def list(self, resource: Any, namespace: str | None = None, **kw: Any) -> JSONDict:
        self.reads.append("list")
        return await super().list(resource, namespace, **kw)


@pytest.fixture
async def workload(kube: KubeClient) -> AsyncIterator[CountingClient]:
    client = CountingClient.for_configuration(kube.api.configuration)
    client.reads = []
    yield client
    await client.close()


@pytest.fixture
async def names(kube: KubeClient) -> AsyncIterator[list[str]]:
    created: list[str] = []
    yield created
    for name in created:
        await kube.delete(NODES, None, name)


async def register(kube: KubeClient, names: list[str], name: str, address: str) -> None:
    """What a kubelet's registration looks like to us: a Node with addresses, no providerID."""
    names.append(name)
    node = await kube.create(
        NODES, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}
    )
    node["status"] = {"addresses": [{"type": "InternalIP", "address": address}]}
    await kube.replace(NODES, node, subresource="status")


async def until(check: Any, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


async def synced(nodes: WorkloadNodes, client: KubeClient, request: Request) -> Lookup:
    found = nodes.lookup(CLUSTER, client, request, [request.name], set())
    while not found.synced:
        await asyncio.sleep(0.05)
        found = nodes.lookup(CLUSTER, client, request, [request.name], set())
    return found


async def test_a_registering_node_wakes_only_its_machine(
    kube: KubeClient, workload: CountingClient, names: list[str]
) -> None:
    tag = uuid.uuid4().hex[:8]
    by_name, by_address, other = (Request("tenant", f"{k}-{tag}") for k in ("a", "b", "c"))
    woken: list[Request] = []
    nodes = WorkloadNodes(woken.append)
    try:
        found = await synced(nodes, workload, by_name)
        assert found.node is None  # not registered yet
        nodes.lookup(CLUSTER, workload, by_address, [], {"10.77.0.2"})
        nodes.lookup(CLUSTER, workload, other, [f"c-{tag}"], {"10.77.0.3"})

        await register(kube, names, f"a-{tag}", "10.77.0.1")
        await until(lambda: by_name in woken)
        await register(kube, names, f"host-{tag}", "10.77.0.2")
        await until(lambda: by_address in woken)
        assert other not in woken

        node = nodes.lookup(CLUSTER, workload, by_address, [], {"10.77.0.2"}).node
        assert node is not None and node["metadata"]["name"] == f"host-{tag}"
        assert set(node) == {"apiVersion", "kind", "metadata", "spec", "status"}
        assert set(node["metadata"]) == {"name", "resourceVersion"}  # nothing else is kept
    finally:
        await nodes.close()


async def test_many_machines_cost_one_list(
    kube: KubeClient, workload: CountingClient, names: list[str]
) -> None:
    """Fifty machines looking for their Nodes twenty times each: one list, no GET."""
    tag = uuid.uuid4().hex[:8]
    machines = [Request("tenant", f"m{i}-{tag}") for i in range(50)]
    nodes = WorkloadNodes(lambda _: None)
    try:
        await synced(nodes, workload, machines[0])
        for i, machine in enumerate(machines[:5]):
            await register(kube, names, machine.name, f"10.78.0.{i + 1}")
        for _ in range(20):
            for machine in machines:
                nodes.lookup(CLUSTER, workload, machine, [machine.name], set())
        await until(
            lambda: all(
                nodes.lookup(CLUSTER, workload, m, [m.name], set()).node for m in machines[:5]
            )
        )
        assert workload.reads == ["list"]
    finally:
        await nodes.close()


async def test_the_watch_stops_when_no_machine_waits(workload: CountingClient) -> None:
    settings = NodeWatchSettings(wait_ttl=0.3, idle_check=0.05)
    nodes = WorkloadNodes(lambda _: None, settings)
    machine = Request("tenant", f"m-{uuid.uuid4().hex[:8]}")
    try:
        await synced(nodes, workload, machine)
        assert nodes.watching(CLUSTER)
        nodes.release(CLUSTER, machine)
        await until(lambda: not nodes.watching(CLUSTER), timeout=5)

        await synced(nodes, workload, machine)  # asked again: a new watch
        assert workload.reads == ["list", "list"]
        await until(lambda: not nodes.watching(CLUSTER), timeout=5)  # expired, not released
    finally:
        await nodes.close()


async def test_a_provider_id_we_set_is_seen_before_the_watch_delivers_it(
    kube: KubeClient, workload: CountingClient, names: list[str]
) -> None:
    """A reconcile between our patch and its watch event must not patch (and announce) again."""
    machine = Request("tenant", f"a-{uuid.uuid4().hex[:8]}")
    nodes = WorkloadNodes(lambda _: None)
    try:
        await synced(nodes, workload, machine)
        await register(kube, names, machine.name, "10.79.0.1")

        def provider_id() -> str | None:
            found = nodes.lookup(CLUSTER, workload, machine, [machine.name], set()).node
            return None if found is None else str(found["spec"]["providerID"])

        await until(lambda: provider_id() == "")
        nodes.linked(CLUSTER, machine.name, "remote://ours")  # as if our patch were in flight
        assert provider_id() == "remote://ours"
        await kube.patch(NODES, None, machine.name, {"spec": {"providerID": "remote://theirs"}})
        await until(lambda: provider_id() == "remote://theirs")  # the watch's word wins
    finally:
        await nodes.close()
