"""R1 and R2: the controller is killed with SIGKILL in the middle of provisioning.

R1: a single controller, killed at a random moment a few times and restarted each time (same
working directory, a new process). R2: two replicas with leader election; the leader is killed
and the other takes the Lease over. Either way every Machine must reach Running and every
bootstrap step must have run exactly once on every host (counter files on the hosts).
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from capi_remote.resources import CLUSTERS, REMOTE_MACHINES
from capi_remote_testbed.hosts import Host
from e2e.bed import Bed
from tests.chaos.conftest import (
    SCALE,
    ChaosBedFactory,
    ChaosEnv,
    Controllers,
    counted,
    counts,
    lease_holder,
    lease_spec,
    machine_phases,
    scaled,
)

pytestmark = pytest.mark.integration

#: How long a wave may take to start its first bootstrap step (a liveness guard, not a target).
STEPS_WITHIN = 120


async def _provision(bed: Bed, prefix: str, hosts: list[Host] | None = None) -> list[str]:
    """A Cluster (first call) and one Machine + RemoteMachine per host, counting bootstrap."""
    data = f"{prefix}-bootstrap"
    if await bed.get(CLUSTERS, prefix) is None:
        await bed.cluster(prefix)
        await bed.bootstrap_secret(data, counted(bed.registration_script()))
    names = []
    for host in hosts if hosts is not None else bed.fleet.hosts:
        name = f"{prefix}-{bed.fleet.hosts.index(host)}"
        await bed.remote_machine(name, bed.host_spec(host))
        await bed.machine(name, prefix, data)
        names.append(name)
    return names


def _count_steps(log: Path) -> int:
    return log.read_text(errors="replace").count('"running step"') if log.exists() else 0


async def _steps_started(log: Path, at_least: int, within: float) -> int:
    """Wait until the log shows ``at_least`` started bootstrap steps (or ``within`` passes)."""
    deadline = time.monotonic() + within
    seen = 0
    while time.monotonic() < deadline:
        seen = await asyncio.to_thread(_count_steps, log)
        if seen >= at_least:
            break
        await asyncio.sleep(0.05)
    return seen


async def _all_running(bed: Bed, names: list[str], within: float, diagnose: str = "") -> None:
    async def check() -> bool:
        phases = await machine_phases(bed)
        return all(phases.get(n) == "Running" for n in names)

    async def phases_now() -> str:
        return str(await machine_phases(bed))

    try:
        await bed.wait_for(f"{len(names)} Machines Running", check, within)
    except AssertionError as error:
        raise AssertionError(f"{error}\nphases: {await phases_now()}\n{diagnose}") from None


async def _ready_reasons(bed: Bed) -> dict[str, str]:
    """Each RemoteMachine's Ready reason and message: what it waits for."""
    reasons: dict[str, str] = {}
    for rm in await bed.list(REMOTE_MACHINES):
        ready: dict[str, Any] = next(
            (c for c in (rm.get("status") or {}).get("conditions", []) if c["type"] == "Ready"),
            {},
        )
        reasons[rm["metadata"]["name"]] = f"{ready.get('reason')}: {ready.get('message')}"
    return reasons


def _assert_exactly_once(bed: Bed) -> None:
    wrong = {h.name: counts(h) for h in bed.fleet.hosts if counts(h) != (1, 1)}
    assert not wrong, f"steps did not run exactly once (start, end) per host: {wrong}"


@pytest.mark.parametrize("restart", ["same-pod", "new-pod"])
async def test_r1_controller_killed_during_provisioning(
    chaos_env: ChaosEnv, controllers: Controllers, chaos_bed: ChaosBedFactory, restart: str
) -> None:
    """Hosts come in waves, one per kill: each controller is killed after a random number of
    bootstrap steps started (so always in the middle of SSH work), then replaced.

    ``same-pod``: the replacement has the same identity (a container restarted in its pod), so
    it takes its host locks straight back. ``new-pod``: a new identity (a rescheduled pod), which
    must wait for the dead one's host locks to go stale (60 s) - slow, so only in `make chaos`.
    """
    pod_like = restart == "same-pod"
    if not pod_like and SCALE <= 1:
        # R2 already kills a controller whose successor has a new identity; this waits 60 s+.
        pytest.skip("new-pod restarts only run with CAPI_REMOTE_CHAOS_SCALE > 1 (make chaos)")
    # At `make chaos`'s scale 12 the same-pod flavour is the issue's R1: 100 hosts, 10 kills.
    hosts = scaled(9, maximum=100) if pod_like else scaled(4, maximum=100)
    rounds = 3 if SCALE <= 1 else (10 if SCALE >= 12 and pod_like else 6)
    bed = await chaos_bed(hosts)
    rng = random.Random()
    waves = [bed.fleet.hosts[i::rounds] for i in range(rounds)]
    controller = controllers.start(pod_like=pod_like)
    names: list[str] = []
    kills = []
    for wave in waves:
        names += await _provision(bed, "r1", wave)
        # A registration bootstrap is about 9 steps per host: kill somewhere inside the wave.
        wanted = rng.randint(1, max(1, 8 * len(wave)))
        # Generous: Cluster API needs up to about 80 s to act again after R6's apiserver
        # restarts (its "victim's Machine gone" time), and this package runs right after R6.
        seen = await _steps_started(controller.process.log, wanted, STEPS_WITHIN)
        if not seen:
            raise AssertionError(
                f"no bootstrap step started within {STEPS_WITHIN} s: {await _ready_reasons(bed)}\n"
                f"Machine phases: {await machine_phases(bed)}\n{controllers.tails()}"
            )
        phases = await machine_phases(bed)
        kills.append((seen, sum(1 for p in phases.values() if p == "Running")))
        controller.kill9()
        controller = controllers.start(pod_like=pod_like)
    print(
        f"\nR1 ({restart}): {hosts} hosts, {rounds} kills;"
        f" (steps started, Machines Running) at each kill:"
        f" {kills}"
    )
    started = time.monotonic()
    await _all_running(bed, names, 180 + 3 * hosts, controllers.tails())
    print(f"R1: all Running {time.monotonic() - started:.1f}s after the last restart")
    _assert_exactly_once(bed)


async def test_r2_leader_killed_other_replica_takes_over(
    chaos_env: ChaosEnv, controllers: Controllers, chaos_bed: ChaosBedFactory
) -> None:
    hosts = scaled(4, maximum=100)
    bed = await chaos_bed(hosts)
    args = ("--leader-elect", "--leader-election-namespace=default")
    replicas = [controllers.start(*args, wait_ready=False) for _ in range(2)]
    for replica in replicas:
        controllers.wait_ready(replica)

    async def holder_is_one_of_ours() -> str:
        holder = await lease_holder(chaos_env.plane)
        return holder if holder in {r.identity for r in replicas} else ""

    leader_id = await bed.wait_for("a leader among our replicas", holder_is_one_of_ours, 60)
    leader = next(r for r in replicas if r.identity == leader_id)
    other = next(r for r in replicas if r is not leader)

    names = await _provision(bed, "r2")
    await asyncio.sleep(random.uniform(1.0, 4.0))
    leader.kill9()
    killed_at = datetime.now(UTC)

    async def other_leads() -> dict[str, Any]:
        spec = await lease_spec(chaos_env.plane)
        return spec if spec.get("holderIdentity") == other.identity else {}

    lease = await bed.wait_for("the other replica to take the Lease", other_leads, 45)
    # The new holder's own acquireTime: no polling delay in the number.
    acquired = datetime.fromisoformat(lease["acquireTime"].replace("Z", "+00:00"))
    takeover = (acquired - killed_at).total_seconds()
    print(f"\nR2: {hosts} hosts; the other replica took over {takeover:.1f}s after the kill")
    assert takeover < 20, f"takeover took {takeover:.1f}s (Lease 15 s)"
    await _all_running(bed, names, 180 + 3 * hosts, controllers.tails())
    _assert_exactly_once(bed)
