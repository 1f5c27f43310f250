"""The controller: worker tasks draining a rate-limited queue of Requests into a Reconciler.

Invariants:
- A key is never reconciled by two workers at once (the queue's invariant): a reconciler never
  races with itself on one object, while different keys run concurrently, up to ``workers``.
- Every key a worker takes is marked ``done``, whatever the reconcile did (returned, raised, timed
  out, was cancelled), so no key is ever stuck in "processing".
- A worker never dies from a reconcile: exceptions are logged with their traceback and the key is
  retried with backoff. Only ``stop`` ends workers. An API server that cannot answer (connection
  refused or dropped, 429, 502-504) is a WARNING without traceback: an outage, not a bug; when
  the API server answers again (``retry_after_outage``), such keys run at once, their backoff
  forgotten.
- A write ``Conflict`` (stale read) is retried with backoff quietly, as a requeue, not an error.
  A write that finds the reconciled object itself deleted (``ObjectGone``, e.g. deleted while
  the process was paused and its cache lagged) ends the reconcile quietly, not retried.
- Every line logged during a reconcile names it: ``ctx.log`` is bound to ``controller``,
  ``namespace``, ``name`` and ``reconcile_id``, and the same fields are bound in structlog's
  context variables for code that logs without a ``ctx`` (merged by ``capi_remote.logs``).
- Success forgets the key's backoff; ``requeue_after`` schedules the next look; ``TerminalError``
  forgets and does not retry; a reconcile running past ``reconcile_timeout`` is cancelled and
  counts as an error.
- One event loop runs everything: workers are tasks, not threads. A blocking call in a reconciler
  stalls every worker of every controller, so reconcilers offload blocking work
  (``asyncio.to_thread``, the SSH runner) and only await here.
- ``stop`` takes no new keys, gives in-flight reconciles a grace period, then cancels them.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import structlog
from structlog.typing import FilteringBoundLogger

from capi_remote.kube.client import ApiError, Resource, TransportError
from capi_remote.kube.metrics import (
    RESULT_ERROR,
    RESULT_REQUEUE,
    RESULT_REQUEUE_AFTER,
    RESULT_SUCCESS,
    Metrics,
)
from capi_remote.kube.queue import ShutDown
from capi_remote.kube.ratelimit import RateLimiter
from capi_remote.kube.ratelimited import RateLimitingQueue
from capi_remote.kube.reconcile import ReconcileContext, Reconciler, Request, Result, TerminalError
from capi_remote.kube.status import Conflict, ObjectGone

DEFAULT_RECONCILE_TIMEOUT = 300.0
DEFAULT_GRACE_PERIOD = 30.0


class Controller:
    """Runs ``reconciler`` for every Request enqueued, with ``workers`` concurrent reconciles.

    ``reconcile_timeout`` (seconds, ``None`` for none) bounds one reconcile; ``rate_limiter``
    defaults to controller-runtime's (5 ms..1000 s per key, 10 qps overall). ``metrics`` has no
    default: a controller the manager runs is made by ``Manager.controller`` (kube.builder), which
    passes the manager's; tests pass a ``Metrics()`` of their own.
    """

    def __init__(
        self,
        name: str,
        reconciler: Reconciler,
        *,
        workers: int = 1,
        reconcile_timeout: float | None = DEFAULT_RECONCILE_TIMEOUT,
        rate_limiter: RateLimiter | None = None,
        metrics: Metrics,
        logger: FilteringBoundLogger | None = None,
        resource: Resource | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"a controller needs at least one worker, got {workers}")
        self.name = name
        self.resource = resource  # the kind reconciled: what ObjectGone must name to be quiet
        self.workers = workers
        self.reconcile_timeout = reconcile_timeout
        self.queue: RateLimitingQueue[Request] = RateLimitingQueue(
            name, rate_limiter=rate_limiter, metrics=metrics
        )
        self._reconciler = reconciler
        self.metrics = metrics
        self._controller_metrics = metrics.for_controller(name)
        self._log: FilteringBoundLogger = (
            logger if logger is not None else structlog.get_logger()
        ).bind(controller=name)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()
        # Keys whose last failure was an unreachable API server: their backoff grew with the
        # outage, not with anything wrong about them (see retry_after_outage).
        self._failed_in_outage: set[Request] = set()

    def retry_after_outage(self) -> None:
        """The API server answers again: reconcile the keys that failed while it did not now,
        not after the backoff their failures built up (up to the limiter's cap, 1,000 s by
        default). The workers bound how many run at once."""
        if not self._failed_in_outage:
            return
        self._log.info("API server reachable again, retrying now", keys=len(self._failed_in_outage))
        for request in self._failed_in_outage:
            self.queue.forget(request)
            self.queue.add(request)
        self._failed_in_outage.clear()

    def enqueue(self, request: Request) -> None:
        """Ask for ``request`` to be reconciled; call on the controller's loop."""
        self.queue.add(request)

    def enqueue_threadsafe(self, request: Request) -> None:
        """``enqueue`` from any thread (e.g. an SSH job finishing); only once started."""
        if self._loop is None:
            raise RuntimeError(f"controller {self.name!r} is not started")
        self._loop.call_soon_threadsafe(self.queue.add, request)

    async def start(self) -> None:
        """Start the workers on the running loop and return."""
        if self._loop is not None:
            raise RuntimeError(f"controller {self.name!r} was already started")
        self._loop = asyncio.get_running_loop()
        self._controller_metrics.max_concurrent_reconciles.set(self.workers)
        self._tasks = [
            asyncio.create_task(self._work(), name=f"{self.name}-worker-{index}")
            for index in range(self.workers)
        ]
        self._log.info("controller started", workers=self.workers)

    async def run(self, grace_period: float = DEFAULT_GRACE_PERIOD) -> None:
        """``start``, then wait for ``stop``; cancelling ``run`` stops gracefully first."""
        await self.start()
        try:
            await self._stopped.wait()
        finally:
            await self.stop(grace_period)

    async def stop(self, grace_period: float = DEFAULT_GRACE_PERIOD) -> None:
        """Take no new keys; give in-flight reconciles ``grace_period`` s, then cancel them.

        Idempotent: later calls return once the workers are gone.
        """
        self.queue.shutdown()
        if self._tasks:
            _, running = await asyncio.wait(self._tasks, timeout=grace_period)
            if running:
                self._log.warning(
                    "cancelling reconciles still running after the grace period",
                    running=len(running),
                    grace_period=grace_period,
                )
                for task in running:
                    task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if not self._stopped.is_set():
            self._stopped.set()
            self._log.info("controller stopped")

    async def _work(self) -> None:
        while True:
            try:
                request = await self.queue.get()
            except ShutDown:
                return
            try:
                await self._reconcile(request)
            finally:
                self.queue.done(request)

    async def _reconcile(self, request: Request) -> None:
        reconcile_id = str(uuid.uuid4())
        fields = {
            "namespace": request.namespace,
            "name": request.name,
            "reconcile_id": reconcile_id,
        }
        log = self._log.bind(**fields)
        ctx = ReconcileContext(controller=self.name, reconcile_id=reconcile_id, log=log)
        # For code that logs without a ctx. The context is this worker task's own (and that of
        # tasks the reconcile starts); the next reconcile on this worker overwrites the fields.
        # (Not bound_contextvars: reading back and resetting cost a third of bench_reconcile's
        # no-op throughput.)
        structlog.contextvars.bind_contextvars(controller=self.name, **fields)
        self._controller_metrics.active_workers.inc()
        started = time.perf_counter()
        timeout = asyncio.timeout(self.reconcile_timeout)
        try:
            async with timeout:
                result = await self._reconciler.reconcile(ctx, request)
            self._apply(request, result)
        except Conflict as conflict:
            # A stale read, not a failure: the newer object is already on its way to the cache.
            log.debug("write conflict, reconciling again", detail=str(conflict))
            self._apply(request, Result(requeue=True))
        except TerminalError:
            log.error("reconcile failed terminally, not requeued", exc_info=True)
            self.queue.forget(request)
            self._controller_metrics.terminal_reconcile_errors.inc()
            self._count_error()
        except asyncio.CancelledError:
            if _being_cancelled():
                log.warning("reconcile cancelled")
                raise
            # A CancelledError nobody asked for (e.g. the reconciler awaited a future someone
            # else cancelled) is a reconcile failure, not a reason for the worker to exit.
            log.error("reconcile failed", exc_info=True)
            self._retry_after_error(request)
        except Exception as error:
            if self._is_gone(error, request):
                log.debug("object gone, not reconciled again", detail=str(error))
                self._apply(request, Result())
                return
            if timeout.expired():
                log.error("reconcile timed out", timeout=self.reconcile_timeout, exc_info=True)
            elif _api_unavailable(error):
                # The API server restarts or sheds load: retried like any failure, but no bug
                # to show a traceback for (an outage would bury the log in them).
                log.warning(
                    "reconcile failed, API server unavailable",
                    error=f"{type(error).__name__}: {error}",
                )
                self._failed_in_outage.add(request)
            else:
                log.error("reconcile failed", exc_info=True)
            self._retry_after_error(request)
        finally:
            self._controller_metrics.active_workers.dec()
            self._controller_metrics.reconcile_time.observe(time.perf_counter() - started)

    def _apply(self, request: Request, result: Result) -> None:
        if result.requeue_after is not None:
            self.queue.forget(request)
            self.queue.add_after(request, result.requeue_after)
            self._controller_metrics.reconciled(RESULT_REQUEUE_AFTER)
        elif result.requeue:
            self.queue.add_rate_limited(request)
            self._controller_metrics.reconciled(RESULT_REQUEUE)
        else:
            self.queue.forget(request)
            self._controller_metrics.reconciled(RESULT_SUCCESS)

    def _is_gone(self, error: Exception, request: Request) -> bool:
        return (
            isinstance(error, ObjectGone)
            and error.resource == self.resource
            and (error.namespace or "", error.name) == (request.namespace or "", request.name)
        )

    def _retry_after_error(self, request: Request) -> None:
        self.queue.add_rate_limited(request)
        self._count_error()

    def _count_error(self) -> None:
        self._controller_metrics.reconcile_errors.inc()
        self._controller_metrics.reconciled(RESULT_ERROR)


#: Too many requests, and the gateway/unavailable answers of an API server (re)starting.
_UNAVAILABLE_STATUSES = frozenset({429, 502, 503, 504})


def _api_unavailable(error: Exception) -> bool:
    """The API server could not be reached, dropped the connection, or answered "not now"."""
    if isinstance(error, ApiError):
        return error.status in _UNAVAILABLE_STATUSES
    return isinstance(error, TransportError)


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
