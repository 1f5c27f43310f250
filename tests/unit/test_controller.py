"""The controller loop: outcomes of a reconcile, backoff, timeouts, shutdown, worker survival."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Hashable, MutableMapping
from typing import Any, cast

import pytest
import structlog
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from capi_remote.kube import (
    Controller,
    ExponentialBackoffPolicy,
    ExponentialFailureRateLimiter,
    Metrics,
    ReconcileContext,
    Request,
    Result,
    TerminalError,
)
from capi_remote.kube.client import ApiError, KubeClient, Resource, TransportError
from capi_remote.kube.status import Conflict, patch_status
from capi_remote.logs import configure

pytestmark = pytest.mark.timeout(60)  # a hang guard for regressions, not a speed target

JSONDict = dict[str, Any]
MACHINES = Resource("infrastructure.cluster.x-k8s.io", "v1beta2", "remotemachines", "RemoteMachine")
A = Request("default", "a")
B = Request("default", "b")

Step = Callable[[ReconcileContext, Request], Awaitable[Result]]


class RecordingRateLimiter:
    """Fast exponential backoff (1 ms doubling, 50 ms cap) that remembers every delay it gave."""

    def __init__(self) -> None:
        self._backoff = ExponentialFailureRateLimiter(
            ExponentialBackoffPolicy(base_delay=0.001, max_delay=0.05)
        )
        self.delays: list[float] = []
        self.forgotten: list[Hashable] = []

    def when(self, item: Hashable) -> float:
        delay = self._backoff.when(item)
        self.delays.append(delay)
        return delay

    def forget(self, item: Hashable) -> None:
        self.forgotten.append(item)
        self._backoff.forget(item)

    def num_requeues(self, item: Hashable) -> int:
        return self._backoff.num_requeues(item)


class ScriptedReconciler:
    """Plays ``steps`` in order, one per reconcile (the last one repeats), recording each call."""

    def __init__(self, *steps: Step) -> None:
        self.steps = list(steps)
        self.calls: list[tuple[Request, ReconcileContext]] = []
        self.finished: list[Request] = []
        self._progress = asyncio.Condition()

    async def reconcile(self, ctx: ReconcileContext, request: Request) -> Result:
        self.calls.append((request, ctx))
        async with self._progress:
            self._progress.notify_all()
        step = self.steps[min(len(self.calls), len(self.steps)) - 1]
        try:
            return await step(ctx, request)
        finally:
            self.finished.append(request)
            async with self._progress:
                self._progress.notify_all()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(10), self._progress:  # a hang guard, not a speed target
            await self._progress.wait_for(predicate)

    async def wait_calls(self, count: int) -> None:
        await self.wait_for(lambda: len(self.calls) >= count)

    async def wait_finished(self, count: int) -> None:
        await self.wait_for(lambda: len(self.finished) >= count)


async def succeed(ctx: ReconcileContext, request: Request) -> Result:
    return Result()


async def fail(ctx: ReconcileContext, request: Request) -> Result:
    raise RuntimeError("boom")


async def fail_terminally(ctx: ReconcileContext, request: Request) -> Result:
    raise TerminalError("spec is invalid")


async def hang(ctx: ReconcileContext, request: Request) -> Result:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def reconciles(registry: CollectorRegistry, result: str) -> float:
    value = registry.get_sample_value(
        "controller_runtime_reconcile_total", {"controller": "test", "result": result}
    )
    return 0.0 if value is None else value


def controller_sample(registry: CollectorRegistry, metric: str) -> float:
    value = registry.get_sample_value(metric, {"controller": "test"})
    return 0.0 if value is None else value


def make_controller(
    reconciler: ScriptedReconciler,
    registry: CollectorRegistry,
    limiter: RecordingRateLimiter | None = None,
    *,
    workers: int = 1,
    reconcile_timeout: float = 10.0,
) -> Controller:
    return Controller(
        "test",
        reconciler,
        workers=workers,
        reconcile_timeout=reconcile_timeout,
        rate_limiter=limiter if limiter is not None else RecordingRateLimiter(),
        metrics=Metrics(registry),
        resource=MACHINES,
    )


async def reconcile_a(
    controller: Controller, reconciler: ScriptedReconciler, reconciles: int
) -> list[MutableMapping[str, Any]]:
    """Start ``controller``, enqueue A, wait for ``reconciles`` reconciles, stop; the logs."""
    await controller.start()
    with capture_logs() as logs:
        controller.enqueue(A)
        await reconciler.wait_finished(reconciles)
    await controller.stop()
    return logs


async def test_success_forgets_the_key_and_does_not_requeue() -> None:
    registry = CollectorRegistry()
    limiter = RecordingRateLimiter()
    reconciler = ScriptedReconciler(succeed)
    controller = make_controller(reconciler, registry, limiter)
    await controller.start()
    controller.enqueue(A)
    await reconciler.wait_finished(1)
    await controller.stop()
    assert limiter.forgotten == [A]
    assert limiter.delays == []
    assert reconciles(registry, "success") == 1
    assert controller_sample(registry, "controller_runtime_reconcile_time_seconds_count") == 1


async def test_errors_back_off_exponentially_then_recover() -> None:
    registry = CollectorRegistry()
    limiter = RecordingRateLimiter()
    reconciler = ScriptedReconciler(fail, fail, fail, fail, succeed)
    controller = make_controller(reconciler, registry, limiter)
    logs = await reconcile_a(controller, reconciler, 5)
    assert limiter.delays == [0.001, 0.002, 0.004, 0.008]
    assert controller.queue.num_requeues(A) == 0, "success must reset the backoff"
    assert reconciles(registry, "error") == 4
    assert reconciles(registry, "success") == 1
    assert controller_sample(registry, "controller_runtime_reconcile_errors_total") == 4
    assert registry.get_sample_value("workqueue_retries_total", {"name": "test"}) == 4
    errors = [entry for entry in logs if entry["log_level"] == "error"]
    assert len(errors) == 4
    assert all(entry["exc_info"] is True for entry in errors)


async def test_logs_carry_controller_key_and_reconcile_id() -> None:
    reconciler = ScriptedReconciler(fail, succeed)
    controller = make_controller(reconciler, CollectorRegistry())
    logs = await reconcile_a(controller, reconciler, 2)
    [error] = [entry for entry in logs if entry["event"] == "reconcile failed"]
    first_ctx = reconciler.calls[0][1]
    assert error["controller"] == "test"
    assert (error["namespace"], error["name"]) == ("default", "a")
    assert error["reconcile_id"] == first_ctx.reconcile_id
    assert first_ctx.reconcile_id != reconciler.calls[1][1].reconcile_id


async def test_a_reconcilers_own_lines_carry_the_reconcile_id() -> None:
    async def log_through_ctx(ctx: ReconcileContext, request: Request) -> Result:
        ctx.log.info("looked at it", found=True)
        return Result()

    reconciler = ScriptedReconciler(log_through_ctx)
    controller = make_controller(reconciler, CollectorRegistry())
    logs = await reconcile_a(controller, reconciler, 1)
    [line] = [entry for entry in logs if entry["event"] == "looked at it"]
    ctx = reconciler.calls[0][1]
    assert line["reconcile_id"] == ctx.reconcile_id
    assert (line["controller"], line["namespace"], line["name"]) == ("test", "default", "a")


async def test_module_loggers_inside_a_reconcile_name_it_too(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A helper without a ctx logs through its module's logger: the JSON line still names the
    reconcile; a line logged after it does not."""

    async def log_through_a_module_logger(ctx: ReconcileContext, request: Request) -> Result:
        structlog.get_logger("helper").info("deep inside")
        return Result()

    reconciler = ScriptedReconciler(log_through_a_module_logger)
    controller = make_controller(reconciler, CollectorRegistry())
    configure("json", "info")
    try:
        await controller.start()
        controller.enqueue(A)
        await reconciler.wait_finished(1)
        await controller.stop()
        structlog.get_logger("helper").info("outside")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
    lines = {e["event"]: e for e in map(json.loads, capsys.readouterr().err.splitlines())}
    inside = lines["deep inside"]
    assert inside["reconcile_id"] == reconciler.calls[0][1].reconcile_id
    assert (inside["controller"], inside["namespace"], inside["name"]) == ("test", "default", "a")
    assert "reconcile_id" not in lines["outside"]


async def test_terminal_error_is_not_requeued() -> None:
    registry = CollectorRegistry()
    limiter = RecordingRateLimiter()
    reconciler = ScriptedReconciler(fail_terminally)
    controller = make_controller(reconciler, registry, limiter)
    logs = await reconcile_a(controller, reconciler, 1)
    assert limiter.delays == [], "a terminal error must not go through the rate limiter"
    assert limiter.forgotten == [A]
    assert len(controller.queue) == 0
    assert controller_sample(registry, "controller_runtime_terminal_reconcile_errors_total") == 1
    assert reconciles(registry, "error") == 1
    assert any("terminally" in entry["event"] for entry in logs)


async def test_timeout_counts_as_an_error_and_requeues() -> None:
    registry = CollectorRegistry()
    limiter = RecordingRateLimiter()
    reconciler = ScriptedReconciler(hang, succeed)
    controller = make_controller(reconciler, registry, limiter, reconcile_timeout=0.01)
    logs = await reconcile_a(controller, reconciler, 2)
    assert limiter.delays == [0.001]
    assert reconciles(registry, "error") == 1
    assert reconciles(registry, "success") == 1
    assert any(entry["event"] == "reconcile timed out" for entry in logs)


async def test_requeue_after_forgets_and_schedules_the_next_look() -> None:
    registry = CollectorRegistry()
    limiter = RecordingRateLimiter()

    async def again_soon(ctx: ReconcileContext, request: Request) -> Result:
        return Result(requeue_after=0.001)

    reconciler = ScriptedReconciler(fail, again_soon, succeed)
    controller = make_controller(reconciler, registry, limiter)
    await controller.start()
    controller.enqueue(A)
    await reconciler.wait_finished(3)
    await controller.stop()
    assert limiter.delays == [0.001], "requeue_after does not use the rate limiter"
    assert limiter.forgotten == [A, A]
    assert reconciles(registry, "requeue_after") == 1


async def test_requeue_retries_with_backoff_without_an_error() -> None:
    registry = CollectorRegistry()
    limiter = RecordingRateLimiter()

    async def not_yet(ctx: ReconcileContext, request: Request) -> Result:
        return Result(requeue=True)

    reconciler = ScriptedReconciler(not_yet, not_yet, succeed)
    controller = make_controller(reconciler, registry, limiter)
    await controller.start()
    controller.enqueue(A)
    await reconciler.wait_finished(3)
    await controller.stop()
    assert limiter.delays == [0.001, 0.002]
    assert reconciles(registry, "requeue") == 2
    assert reconciles(registry, "error") == 0


async def test_a_write_conflict_is_a_quiet_requeue_not_an_error() -> None:
    registry = CollectorRegistry()
    limiter = RecordingRateLimiter()

    async def stale(ctx: ReconcileContext, request: Request) -> Result:
        raise Conflict("RemoteMachine a changed; retrying")

    reconciler = ScriptedReconciler(stale, succeed)
    controller = make_controller(reconciler, registry, limiter)
    logs = await reconcile_a(controller, reconciler, 2)
    assert limiter.delays == [0.001]
    assert reconciles(registry, "requeue") == 1
    assert reconciles(registry, "error") == 0
    assert not [entry for entry in logs if entry["log_level"] == "error"]


class DeletedMeanwhile:
    """A KubeClient for which every object was deleted: a write answers 404."""

    async def patch(
        self, resource: Resource, namespace: str | None, name: str, *_: Any, **__: Any
    ) -> Any:
        raise ApiError(404, "NotFound", f'{resource.plural} "{name}" not found')


def write_status_of(resource: Resource, name: str) -> Step:
    """A reconcile that writes the status of ``name`` as its cache last showed it."""

    async def write(ctx: ReconcileContext, request: Request) -> Result:
        cached = {"metadata": {"namespace": "default", "name": name, "resourceVersion": "7"}}
        client = cast(KubeClient, DeletedMeanwhile())
        await patch_status(client, resource, cached, {"ready": True})
        return Result()

    return write


async def test_a_write_finding_the_reconciled_object_deleted_ends_quietly() -> None:
    # After a pause (SIGSTOP) the cache still shows objects deleted meanwhile: their reconciles
    # write, get a 404, and there is nothing left to do.
    registry = CollectorRegistry()
    limiter = RecordingRateLimiter()
    reconciler = ScriptedReconciler(write_status_of(MACHINES, A.name))
    controller = make_controller(reconciler, registry, limiter)
    logs = await reconcile_a(controller, reconciler, 1)
    assert limiter.delays == [], "not reconciled again"
    assert (reconciles(registry, "success"), reconciles(registry, "error")) == (1, 0)
    assert [entry["log_level"] for entry in logs if entry["log_level"] != "debug"] == []


@pytest.mark.parametrize(
    "other",
    [
        write_status_of(MACHINES, "b"),  # another object of the same kind
        write_status_of(Resource("", "v1", "secrets", "Secret"), A.name),  # same name, other kind
    ],
)
async def test_a_write_finding_another_object_deleted_is_an_error(other: Step) -> None:
    registry = CollectorRegistry()
    limiter = RecordingRateLimiter()
    reconciler = ScriptedReconciler(other, succeed)
    controller = make_controller(reconciler, registry, limiter)
    logs = await reconcile_a(controller, reconciler, 2)
    assert limiter.delays == [0.001]
    assert reconciles(registry, "error") == 1
    assert [entry["event"] for entry in logs if entry["log_level"] == "error"] == [
        "reconcile failed"
    ]


@pytest.mark.parametrize(
    "unavailable",
    [
        TransportError("GET", "/api/v1/secrets", "ServerDisconnectedError: Server disconnected"),
        ApiError(503, "ServiceUnavailable", "apiserver is shutting down"),
        ApiError(429, "TooManyRequests", "please try again later"),
    ],
    ids=type,
)
async def test_an_unavailable_api_server_is_a_warning_and_a_retry(unavailable: Exception) -> None:
    registry = CollectorRegistry()
    limiter = RecordingRateLimiter()

    async def outage(ctx: ReconcileContext, request: Request) -> Result:
        raise unavailable

    reconciler = ScriptedReconciler(outage, fail, succeed)
    controller = make_controller(reconciler, registry, limiter)
    logs = await reconcile_a(controller, reconciler, 3)
    assert limiter.delays == [0.001, 0.002], "both failures are retried with backoff"
    assert reconciles(registry, "error") == 2
    [warning] = [entry for entry in logs if entry["log_level"] == "warning"]
    assert warning["event"] == "reconcile failed, API server unavailable"
    assert type(unavailable).__name__ in warning["error"]
    assert "exc_info" not in warning
    # Any other exception still is an ERROR with its traceback.
    [error] = [entry for entry in logs if entry["log_level"] == "error"]
    assert error["exc_info"] is True


class SlowRateLimiter(RecordingRateLimiter):
    """Backs off 1,000 s on every failure: what a key reaches after a long outage."""

    def when(self, item: Hashable) -> float:
        super().when(item)
        return 1000.0


async def test_keys_that_failed_in_an_outage_run_at_once_when_the_api_answers_again() -> None:
    limiter = SlowRateLimiter()

    async def outage(ctx: ReconcileContext, request: Request) -> Result:
        raise TransportError("GET", "/api/v1/secrets", "ClientConnectorError: refused")

    reconciler = ScriptedReconciler(outage, fail, succeed)
    controller = make_controller(reconciler, CollectorRegistry(), limiter)
    await controller.start()
    controller.enqueue(A)
    await reconciler.wait_finished(1)
    controller.enqueue(B)
    await reconciler.wait_finished(2)  # B failed for another reason: it keeps its backoff
    controller.retry_after_outage()
    await reconciler.wait_finished(3)  # not 1,000 s later
    controller.retry_after_outage()  # nothing failed in an outage since: nothing to retry
    await asyncio.sleep(0.05)
    await controller.stop()
    assert [request for request, _ in reconciler.calls] == [A, B, A]
    assert A in limiter.forgotten and B not in limiter.forgotten


async def test_a_worker_survives_exceptions_and_stray_cancellations() -> None:
    async def stray_cancel(ctx: ReconcileContext, request: Request) -> Result:
        cancelled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        cancelled.cancel()
        await cancelled
        raise AssertionError("unreachable")

    async def by_key(ctx: ReconcileContext, request: Request) -> Result:
        return await {"a": fail, "b": stray_cancel}.get(request.name, succeed)(ctx, request)

    registry = CollectorRegistry()
    reconciler = ScriptedReconciler(by_key)
    controller = make_controller(reconciler, registry)  # a single worker
    await controller.start()
    controller.enqueue(A)
    controller.enqueue(B)
    controller.enqueue(Request("default", "c"))
    await reconciler.wait_for(lambda: Request("default", "c") in reconciler.finished)
    await reconciler.wait_for(lambda: reconciler.finished.count(B) >= 2)
    await controller.stop()
    assert reconciles(registry, "success") == 1
    assert reconciles(registry, "error") >= 3


async def test_a_key_is_never_reconciled_by_two_workers_at_once() -> None:
    in_flight: set[Request] = set()
    overlaps: list[Request] = []

    async def slow(ctx: ReconcileContext, request: Request) -> Result:
        if request in in_flight:
            overlaps.append(request)
        in_flight.add(request)
        for _ in range(3):
            await asyncio.sleep(0)
        in_flight.discard(request)
        return Result()

    reconciler = ScriptedReconciler(slow)
    controller = make_controller(reconciler, CollectorRegistry(), workers=8)
    await controller.start()
    keys = [Request("default", f"k{n}") for n in range(4)]
    for round_ in range(30):
        for key in keys:
            controller.enqueue(key)
        if round_ % 3 == 0:
            await asyncio.sleep(0)
    await reconciler.wait_for(lambda: not len(controller.queue) and not in_flight)
    await controller.stop()
    assert overlaps == []
    assert {request for request, _ in reconciler.calls} == set(keys)


async def test_stop_lets_in_flight_reconciles_finish_and_takes_no_new_keys() -> None:
    release = asyncio.Event()

    async def wait_for_release(ctx: ReconcileContext, request: Request) -> Result:
        await release.wait()
        return Result()

    registry = CollectorRegistry()
    reconciler = ScriptedReconciler(wait_for_release)
    controller = make_controller(reconciler, registry)  # a single worker
    await controller.start()
    controller.enqueue(A)
    controller.enqueue(B)  # queued behind A
    await reconciler.wait_calls(1)
    stopping = asyncio.create_task(controller.stop(grace_period=10))
    await asyncio.sleep(0)
    assert not stopping.done()
    controller.enqueue(Request("default", "late"))
    release.set()
    await stopping
    assert reconciler.finished == [A]
    assert [request for request, _ in reconciler.calls] == [A]
    assert reconciles(registry, "success") == 1
    assert controller_sample(registry, "controller_runtime_active_workers") == 0


async def test_stop_cancels_reconciles_that_outlive_the_grace_period() -> None:
    reconciler = ScriptedReconciler(hang)
    controller = make_controller(reconciler, CollectorRegistry(), workers=2)
    await controller.start()
    controller.enqueue(A)
    controller.enqueue(B)
    await reconciler.wait_calls(2)
    with capture_logs() as logs:
        await controller.stop(grace_period=0.01)
    assert sorted(reconciler.finished, key=str) == [A, B]
    assert sum(entry["event"] == "reconcile cancelled" for entry in logs) == 2
    await controller.stop()  # idempotent


async def test_cancelling_run_stops_gracefully() -> None:
    release = asyncio.Event()

    async def wait_for_release(ctx: ReconcileContext, request: Request) -> Result:
        await release.wait()
        return Result()

    registry = CollectorRegistry()
    reconciler = ScriptedReconciler(wait_for_release)
    controller = make_controller(reconciler, registry)
    running = asyncio.create_task(controller.run(grace_period=10))
    await asyncio.sleep(0)
    controller.enqueue(A)
    await reconciler.wait_calls(1)
    running.cancel()
    await asyncio.sleep(0)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert reconciler.finished == [A]
    assert reconciles(registry, "success") == 1


async def test_run_returns_after_stop() -> None:
    controller = make_controller(ScriptedReconciler(succeed), CollectorRegistry())
    running = asyncio.create_task(controller.run())
    await asyncio.sleep(0)
    await controller.stop()
    await running


async def test_enqueue_threadsafe_from_a_worker_thread() -> None:
    reconciler = ScriptedReconciler(succeed)
    controller = make_controller(reconciler, CollectorRegistry())
    with pytest.raises(RuntimeError, match="not started"):
        controller.enqueue_threadsafe(A)
    await controller.start()
    thread = threading.Thread(target=controller.enqueue_threadsafe, args=(A,))
    thread.start()
    await asyncio.to_thread(thread.join)
    await reconciler.wait_finished(1)
    await controller.stop()
    assert reconciler.finished == [A]


async def test_worker_gauges_and_validation() -> None:
    registry = CollectorRegistry()
    controller = make_controller(ScriptedReconciler(succeed), registry, workers=3)
    await controller.start()
    assert controller_sample(registry, "controller_runtime_max_concurrent_reconciles") == 3
    await controller.stop()
    with pytest.raises(ValueError, match="at least one worker"):
        Controller("bad", ScriptedReconciler(succeed), workers=0, metrics=Metrics())


def test_request_and_result_values() -> None:
    assert str(Request("ns", "name")) == "ns/name"
    assert str(Request("", "cluster-scoped")) == "cluster-scoped"
    assert {Request("ns", "a"), Request("ns", "a")} == {Request("ns", "a")}
    assert Result() == Result(requeue=False, requeue_after=None)
    with pytest.raises(ValueError, match="requeue_after"):
        Result(requeue_after=-1)
    with pytest.raises(ValueError, match="requeue_after"):
        Result(requeue_after=float("nan"))
