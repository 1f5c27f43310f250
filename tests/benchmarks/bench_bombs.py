"""The controller's memory while a tenant submits the worst bootstrap bombs, and how long another
tenant's machines take meanwhile (X2, issue 13's acceptance).

One run on its own control plane and controller (``bench_provision.environment``), three
namespaces:

- ``s1-quiet``: ``honest`` machines provisioned with a trivial bootstrap while nothing else
  happens: the reference time;
- ``s1-bombs``: the tenant's ``bombs`` RemoteMachines + Machines, each with bootstrap data that is
  one of the worst bombs of tests/unit/test_bootstrap_bombs.py (a template that grows to the
  parse child's memory limit, one that runs until its CPU/wall limit, the alias/gzip bomb that
  expands to the 64 MiB budget), padded to ``secret_kib`` KiB, plus ``secrets`` more Secrets of
  that size and type (``cluster.x-k8s.io/secret``, the type the controller caches); every
  ``churn_seconds`` the tenant rewrites every bomb Secret, so each is parsed again (a changed
  Secret is new input);
- ``s1-honest``: ``honest`` more machines created once the bombs are queued, while the tenant
  keeps churning.

Measured: the peak RSS and PSS (proportional set size: shared pages split between the processes
sharing them, so the sum is not inflated by the forkserver's pages in every child) of the
controller's process tree (controller, forkserver, parse children), sampled every 20 ms, and
each child's peak (VmHWM); the honest machines' time from creation to provisioned, quiet and
under bombs. The Deployment's memory limit is 512 MiB (manifests/manager/manager.yaml).

Run as root: ``python -m tests.benchmarks.bench_bombs [--bombs N] [--honest N] [--secrets N]
[--secret-kib N]``; prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from capi_remote.resources import MACHINES, REMOTE_MACHINES, SECRETS
from capi_remote_testbed import samples
from capi_remote_testbed.processes import log_tail
from tests.benchmarks import bench_provision
from tests.benchmarks.bench_provision import (
    LOOPBACK,
    BenchmarkFailed,
    Env,
    Group,
    environment,
    prepare_group,
    wait_for,
)
from tests.benchmarks.quiet import warnings_to_stderr
from tests.unit.test_bootstrap_bombs import SLOW, alias_gzip_bomb, template

JSONDict = dict[str, Any]
MiB = 1 << 20
LIMIT_MIB = 512
#: The worst of tests/unit/test_bootstrap_bombs.py for the controller: memory to the child's
#: RLIMIT_AS, CPU to its limit, and the most bytes produced before the budget refuses.
BOMBS = {
    "memory": template('{% set s = "x" * 1000000 %}{{ ([s] * 5000)|string|length }}'),
    "cpu": template(SLOW),
    "alias-gzip": alias_gzip_bomb(),
}


@attrs.frozen
class Sizes:
    bombs: int = 20
    honest: int = 5
    secrets: int = 100
    secret_kib: int = 900
    churn_seconds: float = 5.0


# -- the process tree's memory --------------------------------------------------------------------


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def descendants(pid: int) -> Iterator[int]:
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            yield int(child)
            yield from descendants(int(child))


class TreeMemory:
    """Samples the controller's process tree in a thread until stopped; peaks in KiB."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_rss_kib = 0
        self.peak_pss_kib = 0
        self.peak_controller_rss_kib = 0
        self.peak_child_hwm_kib = 0
        self.peak_processes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, ValueError):
                self._sample()
            time.sleep(self.interval)

    def _sample(self) -> None:
        rss = pss = 0
        pids = [self.pid, *descendants(self.pid)]
        for pid in pids:
            with contextlib.suppress(OSError, ValueError):  # a child that just exited
                rss += _status(pid, "VmRSS")
                pss += _pss_kib(pid)
                if pid != self.pid:
                    self.peak_child_hwm_kib = max(self.peak_child_hwm_kib, _status(pid, "VmHWM"))
        self.peak_controller_rss_kib = max(self.peak_controller_rss_kib, _status(self.pid, "VmRSS"))
        self.peak_rss_kib = max(self.peak_rss_kib, rss)
        self.peak_pss_kib = max(self.peak_pss_kib, pss)
        self.peak_processes = max(self.peak_processes, len(pids))
        self.samples += 1

    def summary(self) -> JSONDict:
        return {
            "peak_tree_rss_mib": round(self.peak_rss_kib / 1024, 1),
            "peak_tree_pss_mib": round(self.peak_pss_kib / 1024, 1),
            "peak_controller_rss_mib": round(self.peak_controller_rss_kib / 1024, 1),
            "peak_parse_child_hwm_mib": round(self.peak_child_hwm_kib / 1024, 1),
            "peak_processes": self.peak_processes,
            "samples": self.samples,
        }


# -- the tenants ----------------------------------------------------------------------------------


def padded(data: bytes, size: int, round_: int) -> bytes:
    """``data`` with a trailing YAML comment up to ``size`` bytes; ``round_`` makes each rewrite
    new input."""
    pad = max(0, size - len(data) - 40)
    return data + f"\n# round {round_} ".encode() + b"x" * pad + b"\n"


def bomb_secret(name: str, namespace: str, data: bytes) -> JSONDict:
    return samples.bootstrap_secret(name, namespace, data.decode())


async def create_bombs(env: Env, group: Group, sizes: Sizes) -> None:
    """Huge Secrets of the cached type, then one bomb machine each, all on the group's one host
    (never reached: the parse fails first)."""
    size = sizes.secret_kib * 1024
    kinds = list(BOMBS)
    for i in range(sizes.secrets):
        await env.client.create(
            SECRETS,
            bomb_secret(f"filler-{i:03d}", group.namespace, padded(b"#cloud-config\n", size, 0)),
        )
    spec = samples.host_spec(LOOPBACK, env.proxies.ports[group.hosts[0]])
    for i in range(sizes.bombs):
        name = group.name(i)
        data = padded(BOMBS[kinds[i % len(kinds)]], size, 0)
        await env.client.create(SECRETS, bomb_secret(f"{name}-bootstrap", group.namespace, data))
        await env.client.create(
            REMOTE_MACHINES, samples.remote_machine(name, group.namespace, spec)
        )
        await env.client.create(
            MACHINES, samples.machine(name, group.namespace, group.namespace, f"{name}-bootstrap")
        )


async def churn(env: Env, group: Group, sizes: Sizes, stop: asyncio.Event) -> int:
    """Rewrite every bomb Secret each ``churn_seconds`` until ``stop``; returns the rounds."""
    kinds = list(BOMBS)
    rounds = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), sizes.churn_seconds)
        if stop.is_set():
            break
        rounds += 1
        for i in range(sizes.bombs):
            data = padded(BOMBS[kinds[i % len(kinds)]], sizes.secret_kib * 1024, rounds)
            patch = {"data": {"value": base64.b64encode(data).decode()}}
            await env.client.patch(SECRETS, group.namespace, f"{group.name(i)}-bootstrap", patch)
    return rounds


async def provision(env: Env, group: Group) -> JSONDict:
    """Bootstrap Secrets, then RemoteMachines + Machines; seconds until each is provisioned."""
    script = bench_provision.trivial_script()
    for name in group.names:
        await env.client.create(SECRETS, bench_provision.bootstrap_secret(group, name, script))
    started = time.monotonic()
    await bench_provision.create_machines(env, group)
    done: dict[str, float] = {}

    async def all_provisioned() -> bool:
        for rm in (await env.client.list(REMOTE_MACHINES, group.namespace))["items"]:
            status = rm.get("status") or {}
            if (status.get("initialization") or {}).get("provisioned"):
                done.setdefault(rm["metadata"]["name"], time.monotonic() - started)
        return len(done) == len(group.hosts)

    await wait_for(f"{group.namespace}: every RemoteMachine provisioned", all_provisioned, 300, 0.2)
    times = sorted(done.values())
    return {
        "machines": len(times),
        "max_s": round(times[-1], 2),
        "seconds": [round(t, 2) for t in times],
    }


async def bombs_refused(env: Env, group: Group) -> int:
    items = (await env.client.list(REMOTE_MACHINES, group.namespace))["items"]
    return sum(1 for rm in items if bench_provision._ready_reason(rm) == "InvalidBootstrapData")


async def _drive(env: Env, sizes: Sizes) -> JSONDict:
    quiet = Group("s1-quiet", list(range(sizes.honest)))
    honest = Group("s1-honest", list(range(sizes.honest, 2 * sizes.honest)))
    bombs = Group("s1-bombs", [2 * sizes.honest])
    for group in (quiet, honest, bombs):
        await prepare_group(env, group)
    assert env.controller.pid is not None
    controller = env.controller.pid
    with TreeMemory(controller) as idle:
        await asyncio.sleep(2.0)
    result: JSONDict = {"idle": idle.summary(), "quiet": await provision(env, quiet)}
    with TreeMemory(controller) as memory:
        await create_bombs(env, bombs, sizes)
        stop = asyncio.Event()
        churning = asyncio.ensure_future(churn(env, bombs, sizes, stop))
        try:
            result["under_bombs"] = await provision(env, honest)
            result["refused_while_honest_provisioned"] = await bombs_refused(env, bombs)
            await asyncio.sleep(2 * sizes.churn_seconds)  # more churn, for the memory peak
        finally:
            stop.set()
            result["churn_rounds"] = await churning
    result["memory"] = memory.summary()
    result["controller_alive"] = env.controller.exit_code() is None
    return result


async def run(sizes: Sizes) -> JSONDict:
    started = time.monotonic()
    async with environment(2 * sizes.honest + 1) as env:
        try:
            result = await _drive(env, sizes)
        except TimeoutError as error:
            tail = "\n".join(line[:300] for line in log_tail(env.controller.log, 8).splitlines())
            raise BenchmarkFailed(f"{error}\ncontroller log:\n{tail}") from None
    return {
        "benchmark": "bombs_memory_and_fairness",
        "sizes": attrs.asdict(sizes),
        "bombs": {name: len(data) for name, data in BOMBS.items()},
        "limit_mib": LIMIT_MIB,
        "seconds": round(time.monotonic() - started, 1),
        **result,
    }


def main(argv: Sequence[str] | None = None) -> int:
    defaults = Sizes()
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_bombs")
    parser.add_argument("--bombs", type=int, default=defaults.bombs)
    parser.add_argument("--honest", type=int, default=defaults.honest)
    parser.add_argument("--secrets", type=int, default=defaults.secrets)
    parser.add_argument("--secret-kib", type=int, default=defaults.secret_kib)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (namespaced hosts)")
    warnings_to_stderr()
    sizes = Sizes(args.bombs, args.honest, args.secrets, args.secret_kib)
    print(json.dumps(asyncio.run(run(sizes)), indent=2), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
