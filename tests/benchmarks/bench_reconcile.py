"""Controller core benchmark: no-op reconciles through the rate-limited queue and worker tasks.

Prints one JSON object per measurement; speed targets live here, never in timed unit tests.
Target: >= 5,000 keys/s on 2 cores. Run: ``python -m tests.benchmarks.bench_reconcile``
(``--help`` for sizes). The ``measure_*`` coroutines are importable for a larger suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

import structlog
from structlog.typing import FilteringBoundLogger

from capi_remote.kube import Controller, Metrics, ReconcileContext, Request, Result


def quiet_logger() -> FilteringBoundLogger:
    """Warnings and errors only, on stderr, so stdout stays JSON."""
    logger: FilteringBoundLogger = structlog.wrap_logger(
        structlog.PrintLogger(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    return logger


class CountingReconciler:
    """Does nothing but count, and note how long each key waited since its add."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.added_at: dict[Request, float] = {}
        self.latencies: list[float] = []
        self.all_done = asyncio.Event()

    async def reconcile(self, ctx: ReconcileContext, request: Request) -> Result:
        added_at = self.added_at.pop(request, None)
        if added_at is not None:
            self.latencies.append(time.perf_counter() - added_at)
        self.count += 1
        if self.count >= self.expected:
            self.all_done.set()
        return Result()


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def measure_throughput(keys: int, workers: int) -> dict[str, Any]:
    """Enqueue ``keys`` distinct keys at once, then time until every one has been reconciled."""
    reconciler = CountingReconciler(keys)
    controller = Controller(
        "bench-throughput", reconciler, workers=workers, metrics=Metrics(), logger=quiet_logger()
    )
    requests = [Request("bench", f"object-{n}") for n in range(keys)]
    await controller.start()
    started = time.perf_counter()
    for request in requests:
        controller.enqueue(request)
    enqueued = time.perf_counter()
    await reconciler.all_done.wait()
    finished = time.perf_counter()
    await controller.stop()
    return {
        "benchmark": "reconcile_throughput",
        "keys": keys,
        "workers": workers,
        "seconds": round(finished - started, 4),
        "enqueue_seconds": round(enqueued - started, 4),
        "keys_per_second": round(keys / (finished - started)),
    }


async def measure_latency(keys: int, workers: int, rate: float) -> dict[str, Any]:
    """Add ``keys`` keys at ``rate`` per second; report add→reconcile-start latency."""
    reconciler = CountingReconciler(keys)
    controller = Controller(
        "bench-latency", reconciler, workers=workers, metrics=Metrics(), logger=quiet_logger()
    )
    requests = [Request("bench", f"object-{n}") for n in range(keys)]
    await controller.start()
    started = time.perf_counter()
    added = 0
    while added < keys:
        due = min(keys, int((time.perf_counter() - started) * rate) + 1)
        for request in requests[added:due]:
            reconciler.added_at[request] = time.perf_counter()
            controller.enqueue(request)
        added = due
        await asyncio.sleep(0.001)
    await reconciler.all_done.wait()
    await controller.stop()
    latencies = reconciler.latencies
    return {
        "benchmark": "add_to_reconcile_start_latency",
        "keys": keys,
        "workers": workers,
        "rate_per_second": rate,
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 3),
        "max_ms": round(max(latencies) * 1000, 3),
    }


async def run_all(
    keys: int, workers: Sequence[int], latency_keys: int, rate: float
) -> list[dict[str, Any]]:
    results = []
    for count in workers:
        results.append(await measure_throughput(keys, count))
        print(json.dumps(results[-1]), flush=True)
    for count in workers:
        results.append(await measure_latency(latency_keys, count, rate))
        print(json.dumps(results[-1]), flush=True)
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=100_000, help="keys in a throughput run")
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--latency-keys", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=2_000.0, help="adds/s in a latency run")
    args = parser.parse_args(argv)
    asyncio.run(run_all(args.keys, args.workers, args.latency_keys, args.rate))


if __name__ == "__main__":
    main()
