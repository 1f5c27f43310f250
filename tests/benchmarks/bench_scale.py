"""E2: one MachineDeployment on one pool scaled 0 → N → 0 with the real controller, Cluster API
and N namespaced hosts (several fleets: a fleet has at most 253 hosts).

One namespace holds a Cluster, its control-plane Machine (on a host of its own, so the cluster is
initialised), N PooledRemoteMachines in one pool (each fleet's hosts with that fleet's SSH key
and known_hosts), a RemoteMachineTemplate from the pool and a MachineDeployment whose Machines
share one bootstrap data Secret: ``sleep`` for ``bootstrap_seconds`` in three steps, then register
the host as a Node (each host finds its fleet's API proxy from its own address) without a
providerID, which the controller links. Measured on one wall clock:

- **Cluster API alone**: first, with our controller stopped (SIGSTOP), replicas 0 → N → 0: the
  time from the scale patch to Cluster API's last Machine create (the audit log);
- **scale-up**: replicas 0 → N until every Machine is ``Running``; the **floor** is Cluster API's
  own part in the same phase, from the scale patch to its last Machine create (with
  ``dataSecretName`` in the template a Machine has its bootstrap data when created), plus the
  bootstrap's ``bootstrap_seconds``; the same with Cluster API's time alone is reported beside;
- **scale-down**: N → 0 until no Machine is left and every pooled host is free again (claim
  cleared, cleaned, re-probed Healthy);
- **over time**, every ``sample_seconds``: the controller's CPU (its own and reaped children's) and
  RSS, its API requests per second (audit log), Machines Running, hosts free;
- the controller's writes per machine by resource, and during a steady-state window after
  scale-up (target: none);
- **per host**: memory (MemAvailable before and after starting the fleets), processes and open
  files of one host, to say how many hosts fit the machine.

Run as root: ``python -m tests.benchmarks.bench_scale [--machines 1000] [--bootstrap-seconds 30]``;
prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
import yaml

from capi_remote.kube.client import KubeClient
from capi_remote.resources import CAPI_GROUP, MACHINES, POOLED_REMOTE_MACHINES, REMOTE_MACHINES
from capi_remote_testbed import samples
from capi_remote_testbed.controlplane import ControlPlane
from capi_remote_testbed.hosts import HostFleet, known_hosts_line
from capi_remote_testbed.hosts.names import MAX_HOSTS
from capi_remote_testbed.processes import ManagedProcess
from capi_remote_testbed.tcpproxy import TcpProxy
from reconcilers.pool import is_free
from tests.benchmarks.bench_provision import (
    CONTROLLER_USER,
    LOOPBACK,
    WORKLOAD_USER,
    WRITE_VERBS,
    audited_plane,
    identity_kubeconfig,
    read_audit,
    start_controller,
    wait_for,
)
from tests.benchmarks.bench_timeline import process_stats
from tests.benchmarks.quiet import warnings_to_stderr

JSONDict = dict[str, Any]
NAMESPACE, POOL, DEPLOYMENT = "e2", "workers", "workers"

# Every request of the controller (metadata: when, what, the answer), and Cluster API's creates
# and deletes of Machines (the floor).
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived", "ResponseStarted"],
    "rules": [
        {"level": "None", "resources": [{"group": "", "resources": ["events"]}], "verbs": ["get"]},
        {"level": "Metadata", "users": [CONTROLLER_USER]},
        {
            "level": "Metadata",
            "verbs": ["create", "patch", "delete"],
            "resources": [{"group": CAPI_GROUP, "resources": ["machines"]}],
        },
        {"level": "None"},
    ],
}


@attrs.frozen
class Sizes:
    machines: int = 1000
    bootstrap_seconds: float = 30.0
    sample_seconds: float = 5.0
    steady_seconds: float = 30.0

    @classmethod
    def quick(cls) -> Sizes:
        return cls(machines=20, bootstrap_seconds=15.0, steady_seconds=15.0)

    @property
    def fleets(self) -> int:
        """Fleets for the pool's hosts plus the control-plane machine's, as even as possible."""
        return math.ceil((self.machines + 1) / MAX_HOSTS)


# -- the environment ------------------------------------------------------------------------------


@attrs.define
class Env:
    plane: ControlPlane
    fleets: list[HostFleet]
    proxies: list[TcpProxy]
    client: KubeClient
    controller: ManagedProcess
    workload_kubeconfig: bytes
    host_memory: JSONDict


def _available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def _host_footprint(fleet: HostFleet) -> JSONDict:
    """What one host takes: its processes (every process in its PID namespace, the ``unshare``
    holding it included), their open files and proportional memory (PSS), and the fleet's state
    directory on tmpfs (upper layers, logs) per host."""
    host = fleet.hosts[0]
    own_ns = Path(f"/proc/{host.init_pid}/ns/pid").readlink()
    pids, fds, pss_kib = 0, 0, 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if entry.name != str(host.pid) and (entry / "ns" / "pid").readlink() != own_ns:
                continue
            pids += 1
            fds += sum(1 for _ in (entry / "fd").iterdir())
            for line in (entry / "smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss_kib += int(line.split()[1])
    state = sum(
        f.stat().st_size for f in fleet.dir.rglob("*") if f.is_file() and not f.is_symlink()
    )
    return {
        "processes": pids,
        "open_files": fds,
        "pss_mib": round(pss_kib / 1024, 2),
        "state_dir_mib_per_host": round(state / 2**20 / fleet.count, 2),
    }


def _start_fleets(sizes: Sizes) -> tuple[list[HostFleet], JSONDict]:
    hosts = sizes.machines + 1
    per_fleet = math.ceil(hosts / sizes.fleets)
    before = _available_kib()
    fleets: list[HostFleet] = []
    started = time.monotonic()
    try:
        while hosts > 0:
            fleets.append(HostFleet(min(per_fleet, hosts), ready_timeout=300.0).start())
            hosts -= fleets[-1].count
    except BaseException:
        for fleet in fleets:
            fleet.close()
        raise
    used = before - _available_kib()
    memory = {
        "hosts": sizes.machines + 1,
        "fleets": len(fleets),
        "start_s": round(time.monotonic() - started, 1),
        # Noisy on a shared machine: other work's memory comes and goes meanwhile.
        "mem_available_drop_mib": round(used / 1024, 1),
        "mem_available_drop_mib_per_host": round(used / 1024 / (sizes.machines + 1), 2),
        **_host_footprint(fleets[0]),
    }
    return fleets, memory


def host_capacity(sizes: Sizes) -> JSONDict:
    """Start the hosts alone, note what they take (memory, processes, open files, the machine's
    process count against ``pid_max``), stop them."""
    fleets, memory = _start_fleets(sizes)
    try:
        processes = sum(1 for e in Path("/proc").iterdir() if e.name.isdigit())
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
        return {**memory, "machine_processes": processes, "pid_max": pid_max}
    finally:
        for fleet in fleets:
            fleet.close()


@contextlib.asynccontextmanager
async def environment(sizes: Sizes) -> AsyncIterator[Env]:
    with contextlib.ExitStack() as stack, audited_plane(AUDIT_POLICY, stack) as (plane, workdir):
        fleets, memory = await asyncio.to_thread(_start_fleets, sizes)
        for fleet in fleets:
            stack.callback(fleet.close)
        proxies = []
        for fleet in fleets:
            proxy = TcpProxy((LOOPBACK, plane.apiserver_port), listen_host=fleet.gateway)
            proxy.start()
            stack.callback(proxy.close)
            proxies.append(proxy)
        controller = start_controller(plane, workdir)
        stack.callback(controller.stop)
        workload = yaml.safe_dump(identity_kubeconfig(plane, WORKLOAD_USER)).encode()
        client = await KubeClient.from_kubeconfig(str(plane.kubeconfig))
        try:
            yield Env(plane, fleets, proxies, client, controller, workload, memory)
        finally:
            await client.close()


# -- the objects ----------------------------------------------------------------------------------


async def _create(env: Env, obj: JSONDict) -> None:
    await env.client.create(samples.RESOURCES[obj["kind"]], obj)


def _fleet_spec(index: int, host_address: str) -> JSONDict:
    return samples.host_spec(
        host_address,
        sshKeyRef={"name": f"ssh-key-{index}"},
        hostKeyPolicy={"knownHostsRef": {"kind": "ConfigMap", "name": f"known-hosts-{index}"}},
    )


async def _credentials(env: Env) -> None:
    """Each fleet's client key and known_hosts, as ``ssh-key-<i>``/``known-hosts-<i>``."""
    for index, fleet in enumerate(env.fleets):
        known = "".join(
            known_hosts_line(h.address, h.port, h.host_public_key) + "\n" for h in fleet.hosts
        )
        for obj in samples.credentials(NAMESPACE, fleet.client_key.private_openssh, known):
            obj["metadata"]["name"] += f"-{index}"
            await _create(env, obj)


def bootstrap_script(env: Env, seconds: float) -> str:
    """Three sleeps of a third of ``seconds`` each, then the Node registration."""
    step = f"sleep {seconds / 3:g}"
    return samples.node_registration_script(
        0,
        "",
        env.plane.workdir / "pki",
        with_provider_id=False,
        fleets={f.gateway: p.port for f, p in zip(env.fleets, env.proxies, strict=True)},
        work=[step, step, step],
    )


async def prepare(env: Env, sizes: Sizes) -> list[str]:
    """Cluster, control-plane machine (Running), credentials, pool (every host Healthy), template,
    bootstrap Secret and a MachineDeployment of 0 replicas; returns the pooled hosts' names."""
    await asyncio.to_thread(env.plane.kubectl, "create", "namespace", NAMESPACE)
    await _credentials(env)
    for obj in samples.cluster(NAMESPACE, NAMESPACE, env.workload_kubeconfig):
        await _create(env, obj)
    data = f"{DEPLOYMENT}-bootstrap"
    script = bootstrap_script(env, 0.0)
    await _create(env, samples.bootstrap_secret("cp-bootstrap", NAMESPACE, script))
    await _create(
        env,
        samples.bootstrap_secret(data, NAMESPACE, bootstrap_script(env, sizes.bootstrap_seconds)),
    )
    hosts = [(i, h) for i, f in enumerate(env.fleets) for h in f.hosts]
    cp_fleet, cp_host = hosts.pop()
    await _create(
        env, samples.remote_machine("cp-0", NAMESPACE, _fleet_spec(cp_fleet, cp_host.address))
    )
    await _create(env, samples.machine("cp-0", NAMESPACE, NAMESPACE, "cp-bootstrap"))
    names = []
    for fleet_index, host in hosts[: sizes.machines]:
        names.append(f"f{fleet_index}-{host.name}")  # host names repeat from fleet to fleet
        spec = _fleet_spec(fleet_index, host.address)
        await _create(env, samples.pooled(names[-1], NAMESPACE, POOL, spec))
    await _create(env, samples.machine_template(DEPLOYMENT, NAMESPACE, POOL))
    await _create(
        env, samples.machine_deployment(DEPLOYMENT, NAMESPACE, NAMESPACE, data, DEPLOYMENT, 0)
    )
    await wait_for("cp-0 Running", lambda: _phase_count(env, "Running", 1), 300, 2.0)
    await wait_for(
        f"{sizes.machines} pooled hosts free",
        lambda: _free_count(env, sizes.machines),
        120 + sizes.machines,
        2.0,
    )
    return names


async def _machines(env: Env) -> list[JSONDict]:
    return list((await env.client.list(MACHINES, NAMESPACE))["items"])


async def _phase_count(env: Env, phase: str, at_least: int) -> bool:
    return (
        sum(1 for m in await _machines(env) if (m.get("status") or {}).get("phase") == phase)
        >= at_least
    )


async def _free_count(env: Env, wanted: int) -> bool:
    items = (await env.client.list(POOLED_REMOTE_MACHINES, NAMESPACE))["items"]
    return sum(1 for p in items if is_free(p)) >= wanted


# -- sampling -------------------------------------------------------------------------------------


@attrs.define
class Sampler:
    """Every ``interval`` seconds: the controller's CPU and RSS, Machines Running, hosts free."""

    env: Env
    interval: float
    rows: list[JSONDict] = attrs.field(factory=list)

    async def run(self) -> None:
        pid = self.env.controller.pid
        assert pid is not None
        while True:
            stats = process_stats(pid)
            machines = await _machines(self.env)
            pooled = (await self.env.client.list(POOLED_REMOTE_MACHINES, NAMESPACE))["items"]
            self.rows.append(
                {
                    "at": time.time(),
                    "cpu_s": stats["cpu_s"] + stats["children_cpu_s"],
                    "rss_mb": stats["rss_mb"],
                    "machines": len(machines) - 1,  # not cp-0
                    "running": sum(
                        1 for m in machines if (m.get("status") or {}).get("phase") == "Running"
                    )
                    - 1,
                    "free_hosts": sum(1 for p in pooled if is_free(p)),
                }
            )
            await asyncio.sleep(self.interval)


def timeseries(
    rows: Sequence[JSONDict], audit: Sequence[float], since: float, until: float
) -> list[JSONDict]:
    """Per sample interval within [since, until]: CPU %, RSS, requests/s, Machines, Running."""
    table = []
    inside = [r for r in rows if since - 10 <= r["at"] <= until + 10]
    for previous, row in itertools.pairwise(inside):
        span = row["at"] - previous["at"]
        requests = sum(1 for t in audit if previous["at"] <= t < row["at"])
        table.append(
            {
                "t_s": round(row["at"] - since, 1),
                "cpu_pct": round(100 * (row["cpu_s"] - previous["cpu_s"]) / span, 1),
                "rss_mb": row["rss_mb"],
                "requests_per_s": round(requests / span, 1),
                "machines": row["machines"],
                "running": row["running"],
                "free_hosts": row["free_hosts"],
            }
        )
    return table


def cpu_between(rows: Sequence[JSONDict], since: float, until: float) -> float | None:
    """The controller's CPU seconds from the last sample before ``since`` to the first after
    ``until`` (the phase and at most a sample interval on each side)."""
    before = [r for r in rows if r["at"] <= since]
    after = [r for r in rows if r["at"] >= until]
    if not before or not after:
        return None
    return round(float(after[0]["cpu_s"]) - float(before[-1]["cpu_s"]), 2)


def markdown_table(table: Sequence[JSONDict]) -> str:
    if not table:
        return ""
    keys = list(table[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in table]
    return "\n".join(lines)


# -- the audit log --------------------------------------------------------------------------------


def _when(event: JSONDict) -> float:
    return datetime.fromisoformat(event["stageTimestamp"]).timestamp()


def _user(event: JSONDict) -> str:
    return str((event.get("user") or {}).get("username", ""))


def _resource(event: JSONDict) -> str:
    ref = event.get("objectRef") or {}
    name = str(ref.get("resource", "?"))
    return name + (f"/{ref['subresource']}" if ref.get("subresource") else "")


def writes_by_resource(events: Sequence[JSONDict]) -> dict[str, int]:
    return dict(
        Counter(
            f"{_resource(e)} {e.get('verb')}" for e in events if e.get("verb") in WRITE_VERBS
        ).most_common()
    )


def capi_machine_times(events: Sequence[JSONDict], verb: str, since: float) -> list[float]:
    """When Cluster API created (``create``, or a server-side apply answered 201, as its
    MachineSet creates them) or deleted (``delete``) Machines, after ``since``."""

    def counts(event: JSONDict) -> bool:
        code = int((event.get("responseStatus") or {}).get("code", 0))
        if verb == "create" and event.get("verb") == "patch":
            return code == 201
        return event.get("verb") == verb and 200 <= code < 300

    return sorted(
        _when(e)
        for e in events
        if counts(e)
        and _user(e) != CONTROLLER_USER
        and (e.get("objectRef") or {}).get("resource") == "machines"
        and not (e.get("objectRef") or {}).get("subresource")
        and _when(e) >= since
    )


# -- the run --------------------------------------------------------------------------------------


async def _scale(env: Env, replicas: int) -> float:
    at = time.time()
    await env.client.patch(
        samples.MACHINE_DEPLOYMENTS, NAMESPACE, DEPLOYMENT, {"spec": {"replicas": replicas}}
    )
    return at


async def capi_alone(env: Env, n: int) -> tuple[float, float, int]:
    """Scale to ``n`` and back to 0 while our controller is stopped (SIGSTOP): Cluster API's
    own pace, with none of our writes competing for its API budget (its Machine reconciles,
    which each RemoteMachine write triggers, share one client rate limit with its MachineSet).
    Nothing claims a host meanwhile; no RemoteMachine has our finalizer yet, so the scale-down
    does not need us. Returns when the scale-up started, when the last Machine existed, and how
    many RemoteMachines Cluster API left without a Machine (deleted before the scale-up)."""
    pid = env.controller.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        at = await _scale(env, n)
        await wait_for(
            f"Cluster API alone: {n} Machines",
            lambda: _machine_count(env, n + 1),
            300 + 2 * n,
            1.0,
        )
        done = time.time()
        await _scale(env, 0)

        async def gone() -> bool:
            left = (await env.client.list(REMOTE_MACHINES, NAMESPACE))["items"]
            return len(await _machines(env)) == 1 and len(_owned(left)) == 1

        await wait_for("Cluster API alone: scaled back to 0", gone, 300 + 2 * n, 1.0)
        orphans = await _delete_orphans(env)
    finally:
        os.kill(pid, signal.SIGCONT)
    await asyncio.sleep(10.0)  # the controller's watches catch up
    return at, done, orphans


def _owned(rms: Sequence[JSONDict]) -> list[JSONDict]:
    return [
        rm
        for rm in rms
        if any(ref.get("kind") == "Machine" for ref in rm["metadata"].get("ownerReferences") or [])
    ]


async def _delete_orphans(env: Env) -> int:
    """RemoteMachines a MachineSet created for a Machine it then failed to create (its client
    rate limiter gave up under load) are left behind by Cluster API: delete them, so that the
    scale-up measures only machines that have a Machine, and report how many there were."""
    left = (await env.client.list(REMOTE_MACHINES, NAMESPACE))["items"]
    owned = {rm["metadata"]["name"] for rm in _owned(left)}
    orphans = [rm for rm in left if rm["metadata"]["name"] not in owned]
    for rm in orphans:
        await env.client.delete(REMOTE_MACHINES, NAMESPACE, rm["metadata"]["name"])
    return len(orphans)


async def _machine_count(env: Env, wanted: int) -> bool:
    return len(await _machines(env)) >= wanted


async def _drive(env: Env, sizes: Sizes) -> tuple[float, ...]:
    """Scale up, hold, scale down; returns the phases' wall times and the load at the start."""
    n = sizes.machines
    await asyncio.sleep(2 * sizes.sample_seconds)
    load = os.getloadavg()[0]
    up_at = await _scale(env, n)
    await wait_for(
        f"{n} Machines Running", lambda: _phase_count(env, "Running", n + 1), 300 + 2 * n, 1.0
    )
    up_done = time.time()
    await asyncio.sleep(5.0)
    steady_from = time.time()
    await asyncio.sleep(sizes.steady_seconds)
    steady_to = time.time()
    down_at = await _scale(env, 0)

    async def all_back() -> bool:
        return len(await _machines(env)) == 1 and await _free_count(env, n)

    await wait_for(f"{n} Machines gone, hosts free", all_back, 300 + 2 * n, 1.0)
    down_done = time.time()
    await asyncio.sleep(2 * sizes.sample_seconds)
    return up_at, up_done, steady_from, steady_to, down_at, down_done, load


async def run(sizes: Sizes) -> JSONDict:
    started = time.monotonic()
    n = sizes.machines
    async with environment(sizes) as env:
        await prepare(env, sizes)
        alone_at, alone_done, orphans = await capi_alone(env, sizes.machines)
        sampler = Sampler(env, sizes.sample_seconds)
        sampling = asyncio.create_task(sampler.run())
        try:
            phases = await _drive(env, sizes)
        finally:
            sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampling
        up_at, up_done, steady_from, steady_to, down_at, down_done, load = phases
        peak_rss = process_stats(env.controller.pid or 0)["peak_rss_mb"]
        events = await asyncio.to_thread(read_audit, env.plane.audit_log)
        memory = env.host_memory
    ours = [e for e in events if _user(e) == CONTROLLER_USER]
    times = sorted(_when(e) for e in ours)
    creates = capi_machine_times(events, "create", up_at)
    capi_up = (creates[-1] - up_at) if len(creates) >= n else None
    alone = [t for t in capi_machine_times(events, "create", alone_at) if t <= alone_done + 1]
    capi_alone_s = (alone[-1] - alone_at) if len(alone) >= n else None
    up_s = up_done - up_at
    floor = None if capi_up is None else capi_up + sizes.bootstrap_seconds
    floor_alone = None if capi_alone_s is None else capi_alone_s + sizes.bootstrap_seconds
    up_events = [e for e in ours if up_at <= _when(e) <= up_done]
    down_events = [e for e in ours if down_at <= _when(e) <= down_done]
    steady = [e for e in ours if steady_from <= _when(e) <= steady_to]
    up_writes = sum(
        1 for e in up_events if e.get("verb") in WRITE_VERBS and _resource(e) != "events"
    )
    return {
        "benchmark": "E2_scale",
        "sizes": attrs.asdict(sizes),
        "load_1m_at_start": round(load, 2),
        "seconds": round(time.monotonic() - started, 1),
        "hosts": memory,
        "scale_up": {
            "all_running_s": round(up_s, 1),
            "capi_machines_created_s": None if capi_up is None else round(capi_up, 1),
            "floor_s": None if floor is None else round(floor, 1),
            "over_floor": None if floor is None else round(up_s / floor, 2),
            "capi_alone_machines_created_s": None
            if capi_alone_s is None
            else round(capi_alone_s, 1),
            "floor_capi_alone_s": None if floor_alone is None else round(floor_alone, 1),
            "capi_alone_orphaned_remotemachines": orphans,
            "over_floor_capi_alone": None if floor_alone is None else round(up_s / floor_alone, 2),
            "requests": len(up_events),
            "controller_cpu_s": cpu_between(sampler.rows, up_at, up_done),
            "object_writes_per_machine": round(up_writes / n, 2),
            "writes": writes_by_resource(up_events),
            "timeseries": timeseries(sampler.rows, times, up_at, up_done),
        },
        "steady": {"seconds": sizes.steady_seconds, "writes": writes_by_resource(steady)},
        "scale_down": {
            "all_returned_s": round(down_done - down_at, 1),
            "capi_machines_deleted_s": _last_after(
                capi_machine_times(events, "delete", down_at), down_at
            ),
            "requests": len(down_events),
            "controller_cpu_s": cpu_between(sampler.rows, down_at, down_done),
            "writes": writes_by_resource(down_events),
            "timeseries": timeseries(sampler.rows, times, down_at, down_done),
        },
        "controller_peak_rss_mb": peak_rss,
    }


def _last_after(times: Sequence[float], since: float) -> float | None:
    return round(times[-1] - since, 1) if times else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_scale")
    defaults = Sizes()
    parser.add_argument("--machines", type=int, default=defaults.machines)
    parser.add_argument("--bootstrap-seconds", type=float, default=defaults.bootstrap_seconds)
    parser.add_argument("--sample-seconds", type=float, default=defaults.sample_seconds)
    parser.add_argument("--steady-seconds", type=float, default=defaults.steady_seconds)
    parser.add_argument(
        "--hosts-only",
        action="store_true",
        help="only start the hosts (machines + 1), report what they take, and stop them",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (namespaced hosts)")
    warnings_to_stderr()
    sizes = Sizes(args.machines, args.bootstrap_seconds, args.sample_seconds, args.steady_seconds)
    if args.hosts_only:
        print(json.dumps(host_capacity(sizes), indent=2), flush=True)
        return 0
    result = asyncio.run(run(sizes))
    print(json.dumps(result, indent=2), flush=True)
    for phase in ("scale_up", "scale_down"):
        print(f"\n{phase}:\n" + markdown_table(result[phase]["timeseries"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
