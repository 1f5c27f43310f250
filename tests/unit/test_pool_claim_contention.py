"""Many claimants on one pool: one request per claim, no host twice, no second host for a
claimant whose won claim the cache does not show yet; free hosts wake only waiting machines."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import structlog

from capi_remote import ApiError, Store, TransportError
from capi_remote.kube.informer import Event
from reconcilers.pool import FREE_INDEX, INDEXERS, PoolClaims
from reconcilers.remotemachine.watches import WAITING_INDEX, free_host_to_waiting, index_waiting
from tests.support.fakepool import FakePoolServer, copy_claimable

JSONDict = dict[str, Any]
LOG = structlog.get_logger("test")


def host(index: int) -> JSONDict:
    return {
        "metadata": {
            "namespace": "ns",
            "name": f"host-{index:03d}",
            "generation": 1,
            "resourceVersion": "1",
        },
        "spec": {"pool": "p", "machine": {"address": f"192.0.2.{index}"}},
        "status": {"health": {"state": "Healthy", "observedGeneration": 1}},
    }


def machine(index: int, address: str | None = None) -> JSONDict:
    spec: JSONDict = {"pool": "p"}
    if address:
        spec["address"] = address
    return {"metadata": {"namespace": "ns", "name": f"m-{index}", "uid": f"u{index}"}, "spec": spec}


def pool(hosts: int, watch_lag: float) -> tuple[Store, FakePoolServer, PoolClaims]:
    store = Store(INDEXERS)
    objects = [host(i) for i in range(hosts)]
    for obj in objects:
        store.upsert(copy_claimable(obj))
    server = FakePoolServer(store, objects, request_seconds=0.001, watch_lag=watch_lag)
    return store, server, PoolClaims(server, store)  # type: ignore[arg-type]


async def test_concurrent_claimants_take_distinct_hosts_with_one_request_each() -> None:
    store, server, claims = pool(60, watch_lag=0.02)
    machines = [machine(i) for i in range(50)]
    got = await asyncio.gather(*(claims.find_or_claim(m, LOG) for m in machines))
    names = [g["metadata"]["name"] for g in got if g is not None]
    assert len(names) == 50
    assert len(set(names)) == 50
    assert server.requests == 50  # no fresh reads, no 409 storm
    assert server.conflicts == 0
    await asyncio.sleep(0.05)
    assert len(store.by_index(FREE_INDEX, "ns/p")) == 10


async def test_a_won_claim_the_cache_does_not_show_is_returned_again_not_a_second_host() -> None:
    _, server, claims = pool(3, watch_lag=60.0)  # the cache never catches up in this test
    first = await claims.find_or_claim(machine(1), LOG)
    again = await claims.find_or_claim(machine(1), LOG)
    assert first is not None and again is not None
    assert again["metadata"]["name"] == first["metadata"]["name"]
    assert server.requests == 1
    claimed = [o for o in server.objects.values() if o["spec"].get("claim")]
    assert len(claimed) == 1


async def test_a_lost_race_takes_another_host_and_skips_the_lost_one_until_the_cache_moves() -> (
    None
):
    store, server, claims = pool(2, watch_lag=60.0)
    # Another replica claimed host-000 on the server; our cache still shows it free.
    server.objects["ns/host-000"]["spec"]["claim"] = {"namespace": "ns", "name": "x", "uid": "x"}
    server.objects["ns/host-000"]["metadata"]["resourceVersion"] = "99"
    got = [await claims.find_or_claim(machine(i), LOG) for i in (1, 2)]
    names = {g["metadata"]["name"] for g in got if g is not None}
    assert names == {"host-001"}, "the second machine found no host: host-000 is taken"
    assert server.conflicts <= 1  # the stale host is tried at most once
    store.upsert(copy_claimable(server.objects["ns/host-000"]))  # the cache catches up
    assert await claims.find_or_claim(machine(3), LOG) is None
    assert server.conflicts <= 1


@pytest.mark.parametrize(
    "error", [TransportError("PATCH", "/x", "reset"), ApiError(500, "InternalError", "boom")]
)
async def test_a_claim_that_failed_unknowably_leaves_the_host_to_others(error: Exception) -> None:
    _, server, claims = pool(1, watch_lag=60.0)
    server.fail_next = error
    with pytest.raises(type(error)):
        await claims.find_or_claim(machine(1), LOG)
    got = await claims.find_or_claim(machine(2), LOG)
    assert got is not None and got["metadata"]["name"] == "host-000"


def test_a_free_host_wakes_only_the_machines_waiting_in_its_pool() -> None:
    machines, pooled = Store({WAITING_INDEX: index_waiting}), Store(INDEXERS)
    machines.upsert(machine(1))
    machines.upsert(machine(2, address="192.0.2.9"))
    other_pool = machine(3)
    other_pool["spec"]["pool"] = "q"
    machines.upsert(other_pool)
    woken = free_host_to_waiting(machines, pooled, Event("MODIFIED", host(0)))
    assert [r.name for r in woken] == ["m-1"]
    machines.upsert(machine(1, address="192.0.2.1"))  # bound now
    assert free_host_to_waiting(machines, pooled, Event("MODIFIED", host(0))) == []
    claimed = host(0)
    claimed["spec"]["claim"] = {"namespace": "ns", "name": "m-1", "uid": "u1"}
    machines.upsert(machine(4))
    assert free_host_to_waiting(machines, pooled, Event("MODIFIED", claimed)) == []
    # A machine holding a claimed host, not bound to it until its first start, waits no more.
    held = host(1)
    held["spec"]["claim"] = {"namespace": "ns", "name": "m-4", "uid": "u4"}
    pooled.upsert(held)
    assert free_host_to_waiting(machines, pooled, Event("MODIFIED", host(0))) == []
