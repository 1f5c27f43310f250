"""X3: the cost of one event, one claim and one queue pass with 100, 1,000 and 5,000 objects
cached: synthetic objects, no API server and no hosts, so it runs anywhere in seconds.

What grows with the fleet must not grow per event, or a fleet of N costs N² (issue 15, point 4).
Each measurement gives CPU microseconds per event (``time.process_time``, this process only) at
each size; flat means the same at 5,000 as at 100.

- ``store``: an informer's write (upsert with the RemoteMachine indexes) plus a lookup by index;
- ``queue``: add, get and done of one key through the controller's workqueue;
- ``free_host``: a PooledRemoteMachine event mapped to the RemoteMachines it wakes
  (``watches.free_host_to_waiting``), with the fleet bound and 10 machines waiting;
- ``cluster``: a status write of a Cluster of N Machines (Cluster API makes one as Machines come
  and go) mapped to the RemoteMachines it wakes (``watches.cluster_to_remote``);
- ``known_hosts``: the host-key lookup of one SSH connection in a fleet's known_hosts of N lines;
- ``claim``: N machines each claiming a host of one pool of N (``reconcilers.pool`` claims), 32 at
  a time as the controller's workers do, against a fake API server (resourceVersion
  preconditions, 1 ms per request) whose changes reach the cache 5 ms later, as a watch's do.
  Besides CPU it counts the API requests and 409 Conflicts per claim.

Run: ``python -m tests.benchmarks.bench_events [--sizes 100 1000 5000]``; prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time
from collections.abc import Sequence
from typing import Any

from capi_remote import Store
from capi_remote.kube import Request
from capi_remote.kube.cache import object_key
from capi_remote.kube.informer import Event
from capi_remote.kube.queue import Queue
from capi_remote.ssh.hostkeys import KnownHosts
from reconcilers import pool as pools
from reconcilers.remotemachine import watches
from reconcilers.secrets import SECRET_REF_INDEX, referenced_secrets
from tests.benchmarks.bench_reconcile import quiet_logger
from tests.benchmarks.quiet import warnings_to_stderr
from tests.support.fakepool import FakePoolServer, copy_claimable

JSONDict = dict[str, Any]
NAMESPACE, POOL = "bench", "workers"
SIZES = (100, 1_000, 5_000)
WORKERS = 32
REQUEST_SECONDS, WATCH_LAG = 0.001, 0.005


def pooled_host(index: int) -> JSONDict:
    return {
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta2",
        "kind": "PooledRemoteMachine",
        "metadata": {
            "namespace": NAMESPACE,
            "name": f"host-{index:05d}",
            "uid": f"pooled-{index}",
            "generation": 1,
            "resourceVersion": "1",
        },
        "spec": {
            "pool": POOL,
            "machine": {"address": f"10.{index // 65536}.{index // 256 % 256}.{index % 256}"},
        },
        "status": {"health": {"state": "Healthy", "observedGeneration": 1}},
    }


def remote_machine(index: int, *, bound: bool) -> JSONDict:
    spec: JSONDict = {"pool": POOL, "sshKeyRef": {"name": "ssh-key"}}
    if bound:
        spec["address"] = f"10.0.{index // 256 % 256}.{index % 256}"
    return {
        "metadata": {"namespace": NAMESPACE, "name": f"m-{index:05d}", "uid": f"rm-{index}"},
        "spec": spec,
    }


def machine_store() -> Store:
    return Store({SECRET_REF_INDEX: referenced_secrets})


def pool_store() -> Store:
    return Store(pools.INDEXERS)


def _per_event(seconds: float, events: int) -> float:
    return round(1e6 * seconds / events, 2)


def measure_store(size: int, events: int = 20_000) -> float:
    store = machine_store()
    for i in range(size):
        store.upsert(remote_machine(i, bound=True))
    started = time.process_time()
    for n in range(events):
        obj = remote_machine(n % size, bound=True)
        store.upsert(obj)
        store.by_index(SECRET_REF_INDEX, f"{NAMESPACE}/other-{n % 7}")
    return _per_event(time.process_time() - started, events)


async def measure_queue(size: int) -> float:
    queue: Queue[Request] = Queue("bench")
    requests = [Request(NAMESPACE, f"m-{i}") for i in range(size)]
    for request in requests:
        queue.add(request)
    passes = max(20_000, size)
    started = time.process_time()
    for n in range(passes):
        request = await queue.get()
        queue.done(request)
        queue.add(requests[n % size])
    return _per_event(time.process_time() - started, passes)


def measure_free_host(size: int, events: int = 2_000) -> float:
    machines = machine_store()
    for i in range(size):
        machines.upsert(remote_machine(i, bound=True))
    for i in range(10):
        machines.upsert(remote_machine(size + i, bound=False))
    machines.add_indexer(watches.WAITING_INDEX, watches.index_waiting)
    pooled = Store(pools.INDEXERS)  # no claims: the 10 unbound machines wait
    event = Event("MODIFIED", pooled_host(0))
    started = time.process_time()
    for _ in range(events):
        woken = watches.free_host_to_waiting(machines, pooled, event)
    assert len(woken) == 10
    return _per_event(time.process_time() - started, events)


def measure_cluster(size: int, events: int = 2_000) -> float:
    machines = Store({watches.CLUSTER_INDEX: watches._cluster})
    for i in range(size):
        machines.upsert(
            {
                "metadata": {
                    "namespace": NAMESPACE,
                    "name": f"m-{i:05d}",
                    "labels": {"cluster.x-k8s.io/cluster-name": "c"},
                },
                "spec": {"infrastructureRef": {"kind": "RemoteMachine", "name": f"m-{i:05d}"}},
            }
        )
    old: JSONDict = {
        "metadata": {"namespace": NAMESPACE, "name": "c"},
        "status": {"initialization": {"infrastructureProvisioned": True}, "workers": {}},
    }
    new = {**old, "status": {**old["status"], "workers": {"readyReplicas": 1}}}
    event = Event("MODIFIED", new, old)
    started = time.process_time()
    for _ in range(events):
        watches.cluster_to_remote(machines, event)
    return _per_event(time.process_time() - started, events)


def measure_known_hosts(size: int, events: int = 2_000) -> float:
    key = base64.b64encode(b"k" * 51).decode()
    lines = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256} ssh-ed25519 {key}" for i in range(size)]
    known = KnownHosts.parse("\n".join(lines) + "\n")
    host = lines[size // 2].split()[0]
    started = time.process_time()
    for _ in range(events):
        found = known.lookup(host)
    assert len(found) == 1
    return _per_event(time.process_time() - started, events)


async def measure_claims(size: int) -> JSONDict:
    hosts = [pooled_host(i) for i in range(size)]
    store = pool_store()
    for host in hosts:
        store.upsert(copy_claimable(host))
    server = FakePoolServer(store, hosts, REQUEST_SECONDS, WATCH_LAG)
    claims = pools.PoolClaims(server, store)  # type: ignore[arg-type]
    log = quiet_logger()
    pending = [remote_machine(i, bound=False) for i in range(size)]
    claimed: list[str] = []

    async def worker() -> None:
        while pending:
            machine = pending.pop()
            got = await claims.find_or_claim(machine, log)
            if got is not None:
                claimed.append(object_key(got))

    started, wall = time.process_time(), time.monotonic()
    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    cpu, wall = time.process_time() - started, time.monotonic() - wall
    assert len(set(claimed)) == len(claimed), "a host was claimed twice"
    return {
        "claimed": len(claimed),
        "cpu_us_per_claim": _per_event(cpu, size),
        "requests_per_claim": round(server.requests / size, 2),
        "conflicts_per_claim": round(server.conflicts / size, 2),
        "wall_s": round(wall, 2),
    }


async def run(sizes: Sequence[int] = SIZES) -> JSONDict:
    result: JSONDict = {"benchmark": "X3_per_event_costs", "sizes": list(sizes)}
    rows: dict[str, dict[str, Any]] = {
        "store": {},
        "queue": {},
        "free_host": {},
        "cluster": {},
        "known_hosts": {},
        "claim": {},
    }
    for size in sizes:
        rows["store"][str(size)] = measure_store(size)
        rows["queue"][str(size)] = await measure_queue(size)
        rows["free_host"][str(size)] = measure_free_host(size)
        rows["cluster"][str(size)] = measure_cluster(size)
        rows["known_hosts"][str(size)] = measure_known_hosts(size)
        rows["claim"][str(size)] = await measure_claims(size)
    result["cpu_us_per_event"] = rows
    return result


def growth(per_size: dict[str, Any], field: str | None = None) -> float:
    """Largest size's cost over the smallest's (1.0: flat)."""
    values = [float(v[field] if field else v) for v in per_size.values()]
    return round(values[-1] / max(values[0], 1e-9), 2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_events")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    args = parser.parse_args(argv)
    warnings_to_stderr()
    print(json.dumps(asyncio.run(run(args.sizes)), indent=2), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
