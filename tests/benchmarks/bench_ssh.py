"""SSH runner benchmarks on N namespaced hosts.

P1, a trivial bootstrap against the CPU bound: for each fleet size, start a fleet (not timed),
measure sequentially what one job costs in CPU (this process, including paramiko's threads, plus
what the hosts' sshd spent: the listener's own and reaped children's CPU from /proc), then run
all N jobs at once through the runner and compare the wall time with the bound
``N x cost / cores``; when the jobs ended (first, p10/p50/p90) shows whether they finish in
order (``--compare-slots 256`` runs the fleet again without waiting for CPU slots).

P1b, a long bootstrap (3 steps whose sleeps add up to 30 s): one host alone, then all N at once
through a runner with the default settings; the wall time against the single host's.

Prints one JSON object per size. Run as root: ``python -m tests.benchmarks.bench_ssh``
(``--sizes 50 200``; P1b: ``--sizes 200 --bootstrap-seconds 30 [--also-workers 200]``). The
measuring functions are importable for a larger suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from capi_remote.bootstrap import BootstrapPlan, RunCommand
from capi_remote.ssh import Credentials, HostKeyPolicy, Job, Runner, SSHSettings, Target
from capi_remote.ssh.paramiko_transport import ParamikoConnector
from capi_remote_testbed.hosts import Host, HostFleet
from tests.benchmarks.bench_provision import percentile
from tests.benchmarks.quiet import warnings_to_stderr

SENTINEL = "/run/cluster-api/bootstrap-success.complete"
TRIVIAL = BootstrapPlan(steps=(RunCommand(shell=f"mkdir -p /run/cluster-api && touch {SENTINEL}"),))
_TICKS = os.sysconf("SC_CLK_TCK")


def target_for(host: Host) -> Target:
    return Target(
        address=host.address,
        credentials=Credentials(private_key=host.fleet.client_key.private_openssh),
        host_key=HostKeyPolicy.from_known_hosts(host.known_hosts_line + "\n"),
    )


def sshd_cpu_seconds(host: Host) -> float:
    """CPU of the host's sshd listener plus every child it reaped (sessions and their shells).

    Detached step processes are reparented to the host's PID 1 and not counted (they are the
    bootstrap's own work, a few ms here).
    """
    children = Path(f"/proc/{host.init_pid}/task/{host.init_pid}/children").read_text().split()
    for pid in children:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.split(" (", 1)[1].startswith("sshd)"):
            fields = stat.rsplit(")", 1)[1].split()
            return sum(int(v) for v in fields[11:15]) / _TICKS  # utime stime cutime cstime
    raise RuntimeError(f"no sshd on {host.name}")


def reset(host: Host) -> None:
    """Forget a bootstrap so the host can be bootstrapped again."""
    host.exec_inside(["rm", "-rf", "/var/lib/capi-remote", "/run/cluster-api"])


def _settle() -> None:
    time.sleep(0.3)  # let sshd reap its session children so their CPU shows up


def measure_costs(hosts: Sequence[Host], settings: SSHSettings) -> dict[str, float]:
    """Mean CPU seconds, measured one at a time: connect+exec+close, and a whole trivial job."""
    connection_client, connection_sshd, job_client, job_sshd = [], [], [], []
    connector = ParamikoConnector(settings)
    with Runner(settings, identity="bench") as runner:
        for host in hosts:
            sshd_before, cpu_before = sshd_cpu_seconds(host), time.process_time()
            connection = connector.connect(target_for(host))
            connection.exec("true", timeout=30)
            connection.close()
            cpu_after = time.process_time()
            _settle()
            connection_client.append(cpu_after - cpu_before)
            connection_sshd.append(sshd_cpu_seconds(host) - sshd_before)

            sshd_before, cpu_before = sshd_cpu_seconds(host), time.process_time()
            runner.run(Job(target=target_for(host), plan=TRIVIAL, machine_uid="bench"))
            cpu_after = time.process_time()
            _settle()
            job_client.append(cpu_after - cpu_before)
            job_sshd.append(sshd_cpu_seconds(host) - sshd_before)
            reset(host)
    return {
        "connection_client_cpu_ms": 1000 * statistics.mean(connection_client),
        "connection_sshd_cpu_ms": 1000 * statistics.mean(connection_sshd),
        "job_client_cpu_ms": 1000 * statistics.mean(job_client),
        "job_sshd_cpu_ms": 1000 * statistics.mean(job_sshd),
    }


async def measure_parallel(hosts: Sequence[Host], settings: SSHSettings) -> dict[str, float]:
    """All hosts at once through the runner: wall time, CPU spent by us and by the sshds, and when
    jobs completed (the first, p10/p50/p90: in order under admission, all at the end without)."""
    sshd_before = sum(sshd_cpu_seconds(h) for h in hosts)
    run = await _run_timed(hosts, TRIVIAL, settings)
    _settle()
    ended = run["ended_s"]
    return {
        "wall_s": run["wall_s"],
        "client_cpu_s": run["client_cpu_s"],
        "sshd_cpu_s": sum(sshd_cpu_seconds(h) for h in hosts) - sshd_before,
        "first_done_s": ended[0],
        **{f"p{q}_done_s": percentile(ended, q / 100) for q in (10, 50, 90)},
    }


def measure_fleet(
    size: int, samples: int, settings: SSHSettings, *, compare_slots: int | None = None
) -> dict[str, Any]:
    """One fleet of ``size`` hosts: per-job cost, the parallel run, and the bound.

    ``load_1m`` is the machine's load before the run: other work on the box inflates the wall
    time, not the CPU costs. ``compare_slots`` runs the fleet once more (reset in between) with
    that many CPU slots (``size`` or more: no admission), for the completion order.
    """
    load = os.getloadavg()[0]
    compared: dict[str, Any] | None = None
    with HostFleet(size) as fleet:
        costs = measure_costs(fleet.hosts[:samples], settings)
        parallel = asyncio.run(measure_parallel(fleet.hosts, settings))
        if compare_slots is not None:
            for host in fleet.hosts:
                reset(host)
            other = attrs.evolve(settings, cpu_slots=compare_slots)
            run = asyncio.run(measure_parallel(fleet.hosts, other))
            compared = {"cpu_slots": compare_slots, **{k: round(v, 3) for k, v in run.items()}}
    cores = os.cpu_count() or 1
    job_cost_s = (costs["job_client_cpu_ms"] + costs["job_sshd_cpu_ms"]) / 1000
    bound_s = size * job_cost_s / cores
    return {
        "benchmark": "ssh_trivial_bootstrap",
        "hosts": size,
        "workers": settings.max_workers,
        "cpu_slots": settings.cpu_slots,
        "cores": cores,
        "hosts_per_s": size / parallel["wall_s"],
        **{k: round(v, 3) for k, v in parallel.items()},
        **{k: round(v, 2) for k, v in costs.items()},
        "bound_s": round(bound_s, 3),
        "wall_over_bound": round(parallel["wall_s"] / bound_s, 2),
        "cpu_per_job_in_parallel_ms": round(
            1000 * (parallel["client_cpu_s"] + parallel["sshd_cpu_s"]) / size, 2
        ),
        "compared": compared,
        "load_1m": round(load, 2),
    }


# -- P1b: a long bootstrap -------------------------------------------------------------------


def long_plan(seconds: float, steps: int = 3) -> BootstrapPlan:
    """``steps`` command steps whose sleeps add up to ``seconds``; the last writes the sentinel.

    Each step also does a little work (appends a line to a file) around its sleep, as a real
    bootstrap's steps do between waiting on downloads and services.
    """
    each = round(seconds / steps, 3)
    commands = [
        f"mkdir -p /run/cluster-api && echo {i + 1} >> /run/cluster-api/bench-steps && sleep {each}"
        for i in range(steps)
    ]
    commands[-1] += f" && touch {SENTINEL}"
    return BootstrapPlan(steps=tuple(RunCommand(shell=command) for command in commands))


async def _run_timed(
    hosts: Sequence[Host], plan: BootstrapPlan, settings: SSHSettings
) -> dict[str, Any]:
    """All ``hosts`` at once through one runner: wall time, our CPU, and when each job ended."""
    cpu_before, start = time.process_time(), time.perf_counter()
    runner = Runner(settings, identity="bench")
    ended: list[float] = []

    async def one(host: Host) -> None:
        result = await runner.submit(Job(target=target_for(host), plan=plan, machine_uid="bench"))
        assert not result.already_bootstrapped and len(result.steps) == len(plan.steps)
        ended.append(time.perf_counter() - start)

    try:
        await asyncio.gather(*(one(h) for h in hosts))
    finally:
        await runner.aclose()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_before
    ended.sort()
    return {"wall_s": wall, "client_cpu_s": cpu, "ended_s": ended}


def _waves(ended: Sequence[float], gap_s: float) -> list[dict[str, float]]:
    """Group job end times into waves (ends closer than ``gap_s`` to the previous one)."""
    waves: list[list[float]] = []
    for at in ended:
        if waves and at - waves[-1][-1] < gap_s:
            waves[-1].append(at)
        else:
            waves.append([at])
    return [{"jobs": len(w), "first_s": round(w[0], 2), "last_s": round(w[-1], 2)} for w in waves]


def measure_long_fleet(
    size: int,
    seconds: float,
    settings: SSHSettings,
    *,
    also_workers: int | None = None,
    reference_workers: int = 5,
) -> dict[str, Any]:
    """P1b: a bootstrap of ``seconds`` (sleeps between steps) on one host, then on ``size``.

    One host alone gives the single-host time; then every host at once through a runner with
    ``settings`` (the defaults, in the report). ``wall_over_single`` is the ratio the target is
    about. With ``settings.max_workers`` below ``size`` the jobs run in waves of that many:
    ``expected_s`` is ``ceil(size / workers)`` single-host times. ``also_workers`` runs the
    fleet once more with that many workers (the hosts reset in between), for comparison.
    ``reference_s`` is the estimate for a provider running SSH inside reconcile with
    ``reference_workers`` workers: ``size x seconds / reference_workers``.
    """
    load = os.getloadavg()[0]
    plan = long_plan(seconds)
    with HostFleet(size) as fleet:
        single = asyncio.run(_run_timed(fleet.hosts[:1], plan, settings))["wall_s"]
        reset(fleet.hosts[0])
        parallel = asyncio.run(_run_timed(fleet.hosts, plan, settings))
        more: dict[str, Any] | None = None
        if also_workers is not None and also_workers != settings.max_workers:
            for host in fleet.hosts:
                reset(host)
            more_settings = attrs.evolve(settings, max_workers=also_workers)
            run = asyncio.run(_run_timed(fleet.hosts, plan, more_settings))
            more = {
                "workers": also_workers,
                "wall_s": round(run["wall_s"], 2),
                "wall_over_single": round(run["wall_s"] / single, 2),
                "client_cpu_s": round(run["client_cpu_s"], 2),
                "waves": _waves(run["ended_s"], seconds / 4),
            }
    workers = settings.max_workers
    reference_s = size * seconds / reference_workers
    return {
        "benchmark": "ssh_long_bootstrap",
        "hosts": size,
        "bootstrap_seconds": seconds,
        "steps": len(plan.steps),
        "workers": workers,
        "cores": os.cpu_count() or 1,
        "single_s": round(single, 2),
        "single_overhead_s": round(single - seconds, 2),
        "wall_s": round(parallel["wall_s"], 2),
        "wall_over_single": round(parallel["wall_s"] / single, 2),
        "expected_s": round(math.ceil(size / workers) * single, 2),
        "client_cpu_s": round(parallel["client_cpu_s"], 2),
        "waves": _waves(parallel["ended_s"], seconds / 4),
        "reference_workers": reference_workers,
        "reference_s": round(reference_s),
        "reference_over_single": round(reference_s / seconds, 1),
        "with_more_workers": more,
        "load_1m": round(load, 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_ssh")
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--samples", type=int, default=5, help="hosts for the sequential costs")
    parser.add_argument("--workers", type=int, default=SSHSettings().max_workers)
    parser.add_argument("--cpu-slots", type=int, default=SSHSettings().cpu_slots)
    parser.add_argument(
        "--compare-slots", type=int, default=None, help="P1: run once more with this many slots"
    )
    parser.add_argument(
        "--bootstrap-seconds",
        type=float,
        default=0.0,
        help="P1b: a bootstrap of this many seconds (sleeps between 3 steps) instead of P1's",
    )
    parser.add_argument(
        "--also-workers",
        type=int,
        default=None,
        help="P1b: run the fleet once more with this many workers",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (namespaced hosts)")
    warnings_to_stderr()
    settings = SSHSettings(max_workers=args.workers, cpu_slots=args.cpu_slots)
    for size in args.sizes:
        if args.bootstrap_seconds > 0:
            result = measure_long_fleet(
                size, args.bootstrap_seconds, settings, also_workers=args.also_workers
            )
        else:
            result = measure_fleet(size, args.samples, settings, compare_slots=args.compare_slots)
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
