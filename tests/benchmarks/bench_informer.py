"""Informer and controller numbers against a real API server (prints JSON lines).

- P6, cache sync: list 10,000 RemoteMachines into a fresh informer (target < 5 s);
- P4, memory: RSS growth of this process with those 10,000 RemoteMachines and 10,000
  PooledRemoteMachines cached, one informer each (target <= 250 MB);
- X1, event -> reconcile latency (not an issue #8 target; ours): 1,000 objects patched one by
  one, time from the patch's answer to the start of that key's reconcile, p50/p99 (target p99
  < 50 ms).

Run: ``python -m tests.benchmarks.bench_informer [--objects N] [--latency-objects N]``.
Starts its own control plane (no CAPI) with our CRDs; the functions are importable.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from capi_remote.kube.client import KubeClient, Resource
from capi_remote.kube.controller import Controller
from capi_remote.kube.handler import own_object
from capi_remote.kube.informer import Event, Informer, InformerSet, Selector
from capi_remote.kube.metrics import Metrics
from capi_remote.kube.reconcile import ReconcileContext, Request, Result
from capi_remote.resources import POOLED_REMOTE_MACHINES, REMOTE_MACHINES
from capi_remote_testbed import toolchain
from capi_remote_testbed.controlplane import ControlPlane, Settings
from capi_remote_testbed.provider import install_crds

NAMESPACE = "bench"


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _machine(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta2",
        "kind": "RemoteMachine",
        "metadata": {
            "name": f"rm-{index:05d}",
            "namespace": NAMESPACE,
            "labels": {"cluster.x-k8s.io/cluster-name": "bench", "pool": f"p{index % 10}"},
        },
        "spec": {
            "address": f"10.{index // 65536}.{(index // 256) % 256}.{index % 256}",
            "sshKeyRef": {"name": "key"},
            "hostKeyPolicy": {"knownHostsRef": {"kind": "ConfigMap", "name": "known-hosts"}},
        },
    }


def _pooled_machine(index: int) -> dict[str, Any]:
    """A pooled host; every other one claimed by a RemoteMachine, as in a busy pool."""
    spec: dict[str, Any] = {
        "pool": f"p{index % 10}",
        "machine": {
            "address": f"10.{100 + index // 65536}.{(index // 256) % 256}.{index % 256}",
            "sshKeyRef": {"name": "key"},
            "hostKeyPolicy": {"knownHostsRef": {"kind": "ConfigMap", "name": "known-hosts"}},
        },
    }
    if index % 2 == 0:
        spec["claim"] = {"name": f"rm-{index:05d}", "namespace": NAMESPACE}
    return {
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta2",
        "kind": "PooledRemoteMachine",
        "metadata": {
            "name": f"prm-{index:05d}",
            "namespace": NAMESPACE,
            "labels": {"pool": f"p{index % 10}"},
        },
        "spec": spec,
    }


async def create_objects(
    client: KubeClient,
    count: int,
    concurrency: int = 32,
    *,
    resource: Resource = REMOTE_MACHINES,
    make: Callable[[int], dict[str, Any]] = _machine,
) -> float:
    """Create ``count`` objects (RemoteMachines unless told); returns the seconds it took."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        queue.put_nowait(index)

    async def worker() -> None:
        while not queue.empty():
            await client.create(resource, make(queue.get_nowait()))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def create_pooled_objects(client: KubeClient, count: int, concurrency: int = 32) -> float:
    """Create ``count`` PooledRemoteMachines; returns the seconds it took."""
    return await create_objects(
        client, count, concurrency, resource=POOLED_REMOTE_MACHINES, make=_pooled_machine
    )


async def _sync(informer: Informer) -> tuple[asyncio.Task[None], float]:
    started = time.perf_counter()
    task = asyncio.create_task(informer.run())
    await informer.synced.wait()
    return task, time.perf_counter() - started


async def measure_cache_sync(client: KubeClient) -> dict[str, float]:
    """Sync the RemoteMachines into a fresh informer (timed: P6), then the PooledRemoteMachines
    into a second one; RSS growth of this process with both caches full (P4), and per kind."""
    gc.collect()
    before = rss_bytes()
    machines = Informer(client, REMOTE_MACHINES, Selector(namespace=NAMESPACE))
    pooled = Informer(client, POOLED_REMOTE_MACHINES, Selector(namespace=NAMESPACE))
    tasks: list[asyncio.Task[None]] = []
    try:
        task, machines_s = await _sync(machines)
        tasks.append(task)
        gc.collect()
        with_machines = rss_bytes()
        task, pooled_s = await _sync(pooled)
        tasks.append(task)
        gc.collect()
        after = rss_bytes()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    cached = len(machines.store) + len(pooled.store)
    return {
        "objects": len(machines.store),
        "pooled_objects": len(pooled.store),
        "cache_sync_seconds": round(machines_s, 3),
        "pooled_cache_sync_seconds": round(pooled_s, 3),
        "rss_growth_mb": round((after - before) / 2**20, 1),
        "rss_growth_remotemachines_mb": round((with_machines - before) / 2**20, 1),
        "rss_growth_pooled_mb": round((after - with_machines) / 2**20, 1),
        "bytes_per_object": round((after - before) / max(1, cached)),
        "rss_mb": round(after / 2**20, 1),
    }


class _Timestamps:
    def __init__(self) -> None:
        self.started: dict[str, float] = {}

    async def reconcile(self, ctx: ReconcileContext, request: Request) -> Result:
        self.started.setdefault(request.name, time.perf_counter())
        return Result()


async def measure_event_latency(client: KubeClient, count: int) -> dict[str, float]:
    informers = InformerSet(client)
    reconciler = _Timestamps()
    controller = Controller("bench", reconciler, workers=4, metrics=Metrics())
    informer = informers.get(REMOTE_MACHINES, Selector(namespace=NAMESPACE))

    def enqueue(event: Event) -> None:
        for request in own_object(event):
            controller.enqueue(request)

    informer.add_handler(enqueue)
    informers.start()
    await informers.wait_synced()
    await controller.start()
    await asyncio.sleep(1.0)  # let the initial sync's reconciles drain
    reconciler.started.clear()
    patched: dict[str, float] = {}
    for index in range(count):
        name = f"rm-{index:05d}"
        await client.patch(
            REMOTE_MACHINES,
            NAMESPACE,
            name,
            {"metadata": {"annotations": {"bench": str(time.time())}}},
        )
        patched[name] = time.perf_counter()
    deadline = time.perf_counter() + 30
    while len(reconciler.started) < count and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
    await controller.stop()
    await informers.stop()
    latencies = sorted(
        (reconciler.started[name] - at) * 1000
        for name, at in patched.items()
        if name in reconciler.started
    )
    return {
        "events": len(latencies),
        "latency_p50_ms": round(statistics.median(latencies), 2),
        "latency_p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 2),
    }


async def _main(objects: int, latency_objects: int) -> None:
    plane = ControlPlane(toolchain.ensure(log=lambda _: None), Settings(cluster_api=False))
    plane.start()
    try:
        install_crds(plane, webhook_port=1)  # storage version only: no conversion is called
        plane.kubectl("create", "namespace", NAMESPACE)
        client = await KubeClient.from_kubeconfig(str(plane.kubeconfig))
        try:
            seconds = await create_objects(client, objects)
            pooled_seconds = await create_pooled_objects(client, objects)
            print(
                json.dumps(
                    {
                        "bench": "create",
                        "objects": objects,
                        "objects_per_second": round(objects / seconds),
                        "pooled_objects_per_second": round(objects / pooled_seconds),
                    }
                )
            )
            print(json.dumps({"bench": "cache_sync", **await measure_cache_sync(client)}))
            latency = await measure_event_latency(client, min(latency_objects, objects))
            print(json.dumps({"bench": "event_to_reconcile", **latency}))
        finally:
            await client.close()
    finally:
        plane.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--latency-objects", type=int, default=1_000)
    args = parser.parse_args()
    asyncio.run(_main(args.objects, args.latency_objects))


if __name__ == "__main__":
    main()
