"""The manager on the real API server: events reach reconcile, probes and metrics answer, steady
state writes nothing, errors back off then recover, a standby takes over from a killed leader."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from capi_remote.kube.client import KubeClient
from capi_remote.kube.reconcile import Request
from capi_remote_testbed.controlplane import ControlPlane
from tests.support.stamp_manager import CONFIGMAPS, STAMP, build

pytestmark = pytest.mark.integration


def _cm(namespace: str, name: str, **data: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": {"stamp": "yes"}},
        "data": data,
    }


async def _stamped(kube: KubeClient, namespace: str, name: str, within: float) -> str:
    async with asyncio.timeout(within):
        while True:
            obj = await kube.get(CONFIGMAPS, namespace, name)
            stamp = obj["metadata"].get("annotations", {}).get(STAMP)
            if stamp:
                return str(stamp)
            await asyncio.sleep(0.1)


async def _called_again(calls: dict[str, int], name: str, before: int) -> None:
    async with asyncio.timeout(10):
        while calls[name] == before:
            await asyncio.sleep(0.05)


def _http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""


async def test_reconcile_probes_metrics_and_steady_state(kube: KubeClient, namespace: str) -> None:
    manager, reconciler, _ = build(kube, namespace, "solo", leader_election=False)
    run = asyncio.create_task(manager.run())
    try:
        await asyncio.wait_for(manager.ready.wait(), 20)
        host, port = manager.bound["health"]
        assert (await asyncio.to_thread(_http_get, f"http://{host}:{port}/readyz"))[0] == 200
        assert (await asyncio.to_thread(_http_get, f"http://{host}:{port}/healthz"))[0] == 200

        names = [f"cm-{i:03d}" for i in range(100)]
        for name in names:
            await kube.create(CONFIGMAPS, _cm(namespace, name))
        for name in names:
            assert await _stamped(kube, namespace, name, 30) == "solo"

        # Steady state: nothing is written any more, even though every write above produced a
        # MODIFIED event that was reconciled again.
        await asyncio.sleep(1.0)
        before = {
            o["metadata"]["name"]: o["metadata"]["resourceVersion"]
            for o in (await kube.list(CONFIGMAPS, namespace, label_selector="stamp=yes"))["items"]
        }
        await asyncio.sleep(30)
        after = {
            o["metadata"]["name"]: o["metadata"]["resourceVersion"]
            for o in (await kube.list(CONFIGMAPS, namespace, label_selector="stamp=yes"))["items"]
        }
        assert before == after

        # Update and delete reach reconcile too.
        calls = reconciler.calls["cm-000"]
        await kube.patch(CONFIGMAPS, namespace, "cm-000", {"data": {"x": "y"}})
        await _called_again(reconciler.calls, "cm-000", calls)
        calls = reconciler.calls["cm-001"]
        await kube.delete(CONFIGMAPS, namespace, "cm-001")
        await _called_again(reconciler.calls, "cm-001", calls)

        mhost, mport = manager.bound["metrics"]
        status, text = await asyncio.to_thread(_http_get, f"http://{mhost}:{mport}/metrics")
        assert status == 200
        for family in (
            "workqueue_depth",
            "workqueue_adds_total",
            "workqueue_queue_duration_seconds",
            "workqueue_work_duration_seconds",
            "workqueue_unfinished_work_seconds",
            "workqueue_longest_running_processor_seconds",
            "workqueue_retries_total",
            "controller_runtime_reconcile_total",
            "controller_runtime_reconcile_errors_total",
            "controller_runtime_reconcile_time_seconds",
            "controller_runtime_max_concurrent_reconciles",
            "controller_runtime_active_workers",
        ):
            assert f"\n{family}" in text, family
        assert 'controller_runtime_reconcile_total{controller="stamp",result="success"}' in text
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)


async def test_failing_reconcile_backs_off_exponentially_then_recovers(
    kube: KubeClient, namespace: str
) -> None:
    manager, reconciler, controller = build(kube, namespace, "solo", leader_election=False)
    times: list[float] = []
    original = reconciler.reconcile

    async def timed(ctx, request):  # type: ignore[no-untyped-def]
        if request.name == "flaky":
            times.append(time.monotonic())
        return await original(ctx, request)

    reconciler.reconcile = timed  # type: ignore[method-assign]
    run = asyncio.create_task(manager.run())
    try:
        await asyncio.wait_for(manager.ready.wait(), 20)
        await kube.create(CONFIGMAPS, _cm(namespace, "flaky", **{"fail-times": "6"}))
        assert await _stamped(kube, namespace, "flaky", 30) == "solo"
        gaps = [b - a for a, b in itertools.pairwise(times[:7])]
        # Default limiter: 5 ms * 2^n after the n-th failure; logging adds noise on top, so
        # assert the lower bounds (the unit tests pin the exact sequence).
        assert len(gaps) == 6
        for n, gap in enumerate(gaps):
            assert gap >= 0.005 * 2**n * 0.9, (n, gaps)
        assert controller.queue.num_requeues(Request(namespace, "flaky")) == 0
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)


async def test_standby_takes_over_within_20s_of_a_killed_leader(
    kube: KubeClient, namespace: str, control_plane: ControlPlane
) -> None:
    def start(identity: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.stamp_manager",
                str(control_plane.kubeconfig),
                namespace,
                identity,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    first = start("replica-a")
    await kube.create(CONFIGMAPS, _cm(namespace, "before"))
    assert await _stamped(kube, namespace, "before", 30) == "replica-a"
    second = start("replica-b")
    try:
        await asyncio.sleep(3)  # the standby is up and syncing, not leading
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        killed_at = time.monotonic()
        await kube.create(CONFIGMAPS, _cm(namespace, "after"))
        assert await _stamped(kube, namespace, "after", 25) == "replica-b"
        assert time.monotonic() - killed_at < 20
    finally:
        for process in (first, second):
            if process.poll() is None:
                process.kill()
                process.wait()


async def test_watch_filter_limits_reconciles_to_labelled_objects(
    kube: KubeClient, namespace: str
) -> None:
    manager, reconciler, _ = build(kube, namespace, "shard-a", leader_election=False,
                                   watch_filter="shard-a")  # fmt: skip
    run = asyncio.create_task(manager.run())
    try:
        await asyncio.wait_for(manager.ready.wait(), 20)
        mine = _cm(namespace, "mine")
        mine["metadata"]["labels"]["cluster.x-k8s.io/watch-filter"] = "shard-a"  # type: ignore[index]
        theirs = _cm(namespace, "theirs")
        theirs["metadata"]["labels"]["cluster.x-k8s.io/watch-filter"] = "shard-b"  # type: ignore[index]
        await kube.create(CONFIGMAPS, theirs)
        await kube.create(CONFIGMAPS, _cm(namespace, "unlabelled"))
        await kube.create(CONFIGMAPS, mine)
        assert await _stamped(kube, namespace, "mine", 20) == "shard-a"
        await asyncio.sleep(2.0)
        assert set(reconciler.calls) == {"mine"}
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
