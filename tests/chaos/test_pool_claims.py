"""R7: claim safety. More RemoteMachines than pooled hosts: no host is ever claimed by two
RemoteMachines, no RemoteMachine holds two hosts, and after everything is deleted every host is
free again. A watcher lists the PooledRemoteMachines continuously and records every claim
transition it sees (a claim must be cleared before another claimant may take the host)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from capi_remote.resources import MACHINES, POOLED_REMOTE_MACHINES, REMOTE_MACHINES
from e2e.bed import Bed
from tests.chaos.conftest import ChaosBedFactory, Controllers, scaled, trivial_script

pytestmark = pytest.mark.integration


def _claimant(pooled: dict[str, Any]) -> str:
    claim = pooled["spec"].get("claim")
    if not claim:
        return ""
    return json.dumps({k: claim.get(k) for k in ("namespace", "name")}, sort_keys=True)


class ClaimWatcher:
    """Polls the pool; records violations instead of raising, so the test reports them all."""

    def __init__(self, bed: Bed) -> None:
        self.bed = bed
        self.last: dict[str, str] = {}
        self.violations: list[str] = []
        self.transitions = 0
        self.snapshots = 0

    def observe(self, items: list[dict[str, Any]]) -> None:
        self.snapshots += 1
        holders: dict[str, str] = {}
        for pooled in items:
            name, claimant = pooled["metadata"]["name"], _claimant(pooled)
            before = self.last.get(name, "")
            if claimant != before:
                self.transitions += 1
                if before and claimant:
                    self.violations.append(f"{name} moved from {before} to {claimant}")
                self.last[name] = claimant
            if claimant:
                if claimant in holders:
                    self.violations.append(f"{claimant} holds {holders[claimant]} and {name}")
                holders[claimant] = name

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.observe(await self.bed.list(POOLED_REMOTE_MACHINES))
            await asyncio.sleep(0.1)


async def test_r7_more_machines_than_hosts_never_double_claims(
    controllers: Controllers, chaos_bed: ChaosBedFactory
) -> None:
    hosts = scaled(10, maximum=100)
    machines = 2 * hosts
    bed = await chaos_bed(hosts)
    pool = "chaos"
    for host in bed.fleet.hosts:
        await bed.pooled(host.name, pool, host)
    await bed.cluster("r7")
    data = await bed.bootstrap_secret("r7-bootstrap", trivial_script())
    controllers.start()
    watcher = ClaimWatcher(bed)
    stop = asyncio.Event()
    watching = asyncio.create_task(watcher.run(stop))
    try:
        for index in range(machines):
            await bed.remote_machine(f"r7-{index}", {"pool": pool})
            await bed.machine(f"r7-{index}", "r7", data)

        async def pool_full() -> bool:
            items = await bed.list(POOLED_REMOTE_MACHINES)
            return sum(1 for p in items if _claimant(p)) == hosts

        await bed.wait_for(f"all {hosts} hosts claimed", pool_full, 60 + 2 * hosts)
        addresses = [
            rm["spec"].get("address")
            for rm in await bed.list(REMOTE_MACHINES)
            if rm["spec"].get("address")
        ]
        assert len(addresses) == len(set(addresses)) == hosts, addresses

        for machine in await bed.list(MACHINES):
            await bed.kube.delete(MACHINES, bed.namespace, machine["metadata"]["name"])

        async def all_free() -> bool:
            gone = not await bed.list(REMOTE_MACHINES)
            items = await bed.list(POOLED_REMOTE_MACHINES)
            return gone and len(items) == hosts and not any(_claimant(p) for p in items)

        await bed.wait_for("every RemoteMachine gone and the pool free", all_free, 120 + 3 * hosts)
    finally:
        stop.set()
        await watching
    print(
        f"\nR7: {machines} RemoteMachines on {hosts} hosts; {watcher.snapshots} snapshots,"
        f" {watcher.transitions} claim transitions seen"
    )
    assert not watcher.violations, watcher.violations
