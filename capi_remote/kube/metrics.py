"""Prometheus metrics of workqueues and controllers, under the names dashboards already know.

Invariants:
- Metric names and labels match client-go's workqueue and controller-runtime's controller metrics,
  so existing dashboards and alerts work unchanged.
- Families are registered on the registry a ``Metrics`` is given, never implicitly on the global
  one: tests build one ``Metrics()`` each and never collide; the manager passes the registry it
  serves.
- Recording happens on the event loop; only the two "work in flight" gauges are computed at scrape
  time, on the scraper's thread, hence the lock around the start times they read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# client-go: ExponentialBuckets(10e-9, 10, 10), i.e. 1 ns .. 10^9 ns.
_QUEUE_BUCKETS = tuple(10.0**exponent for exponent in range(-8, 2))
# controller-runtime's reconcile_time_seconds buckets.
_RECONCILE_BUCKETS = (
    *(0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7),
    *(0.8, 0.9, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0),
    *(8.0, 9.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 60.0),
)

RESULT_SUCCESS = "success"
RESULT_ERROR = "error"
RESULT_REQUEUE = "requeue"
RESULT_REQUEUE_AFTER = "requeue_after"


class Metrics:
    """All metric families, registered once on ``registry`` (a private one when omitted)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        queue = ["name"]
        self.depth = Gauge(
            "workqueue_depth", "Current depth of workqueue", queue, registry=self.registry
        )
        self.adds = Counter(
            "workqueue_adds_total",
            "Total number of adds handled by workqueue",
            queue,
            registry=self.registry,
        )
        self.queue_duration = Histogram(
            "workqueue_queue_duration_seconds",
            "How long in seconds an item stays in workqueue before being requested",
            queue,
            buckets=_QUEUE_BUCKETS,
            registry=self.registry,
        )
        self.work_duration = Histogram(
            "workqueue_work_duration_seconds",
            "How long in seconds processing an item from workqueue takes",
            queue,
            buckets=_QUEUE_BUCKETS,
            registry=self.registry,
        )
        self.unfinished_work = Gauge(
            "workqueue_unfinished_work_seconds",
            "How many seconds of work has been done that is in progress and hasn't been observed "
            "by work_duration. Large values indicate stuck threads.",
            queue,
            registry=self.registry,
        )
        self.longest_running = Gauge(
            "workqueue_longest_running_processor_seconds",
            "How many seconds has the longest running processor for workqueue been running",
            queue,
            registry=self.registry,
        )
        self.retries = Counter(
            "workqueue_retries_total",
            "Total number of retries handled by workqueue",
            queue,
            registry=self.registry,
        )
        controller = ["controller"]
        self.reconcile_total = Counter(
            "controller_runtime_reconcile_total",
            "Total number of reconciliations per controller",
            ["controller", "result"],
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "controller_runtime_reconcile_errors_total",
            "Total number of reconciliation errors per controller",
            controller,
            registry=self.registry,
        )
        self.terminal_reconcile_errors = Counter(
            "controller_runtime_terminal_reconcile_errors_total",
            "Total number of terminal reconciliation errors per controller",
            controller,
            registry=self.registry,
        )
        self.reconcile_time = Histogram(
            "controller_runtime_reconcile_time_seconds",
            "Length of time per reconciliation per controller",
            controller,
            buckets=_RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self.max_concurrent_reconciles = Gauge(
            "controller_runtime_max_concurrent_reconciles",
            "Maximum number of concurrent reconciles per controller",
            controller,
            registry=self.registry,
        )
        self.active_workers = Gauge(
            "controller_runtime_active_workers",
            "Number of currently used workers per controller",
            controller,
            registry=self.registry,
        )

    def for_queue(self, name: str, now: Callable[[], float] = time.monotonic) -> QueueMetrics:
        """The recorder one queue calls into; ``name`` is the ``name`` label."""
        return QueueMetrics(self, name, now)

    def for_controller(self, name: str) -> ControllerMetrics:
        """The series of one controller; ``name`` is the ``controller`` label."""
        return ControllerMetrics(self, name)


class QueueMetrics:
    """Records one queue's adds, waits and work, keyed by item like client-go's provider.

    Times are taken when an item first becomes dirty (queue duration starts) and when a worker
    gets it (work duration starts); a re-add while dirty does not restart the wait.
    """

    def __init__(self, metrics: Metrics, name: str, now: Callable[[], float]) -> None:
        self._now = now
        self._depth = metrics.depth.labels(name)
        self._adds = metrics.adds.labels(name)
        self._queue_duration = metrics.queue_duration.labels(name)
        self._work_duration = metrics.work_duration.labels(name)
        self._retries = metrics.retries.labels(name)
        self._added_at: dict[Hashable, float] = {}
        self._started_at: dict[Hashable, float] = {}
        self._started_lock = threading.Lock()
        metrics.unfinished_work.labels(name).set_function(self._unfinished_seconds)
        metrics.longest_running.labels(name).set_function(self._longest_running_seconds)

    def added(self, item: Hashable) -> None:
        """An item became dirty (it will be handed out once)."""
        self._adds.inc()
        self._depth.inc()
        self._added_at.setdefault(item, self._now())

    def got(self, item: Hashable) -> None:
        """A worker took the item: its wait ends, its work starts."""
        now = self._now()
        self._depth.dec()
        added_at = self._added_at.pop(item, None)
        if added_at is not None:
            self._queue_duration.observe(now - added_at)
        with self._started_lock:
            self._started_at[item] = now

    def done(self, item: Hashable) -> None:
        """The worker finished the item."""
        with self._started_lock:
            started_at = self._started_at.pop(item, None)
        if started_at is not None:
            self._work_duration.observe(self._now() - started_at)

    def retried(self) -> None:
        """The item was re-added through the rate limiter."""
        self._retries.inc()

    def _unfinished_seconds(self) -> float:
        now = self._now()
        with self._started_lock:
            return sum(now - started for started in self._started_at.values())

    def _longest_running_seconds(self) -> float:
        now = self._now()
        with self._started_lock:
            return max((now - started for started in self._started_at.values()), default=0.0)


class ControllerMetrics:
    """The controller-runtime series of one controller, labels already applied."""

    def __init__(self, metrics: Metrics, controller: str) -> None:
        self._reconcile_total = {
            result: metrics.reconcile_total.labels(controller, result)
            for result in (RESULT_SUCCESS, RESULT_ERROR, RESULT_REQUEUE, RESULT_REQUEUE_AFTER)
        }
        self.reconcile_errors = metrics.reconcile_errors.labels(controller)
        self.terminal_reconcile_errors = metrics.terminal_reconcile_errors.labels(controller)
        self.reconcile_time = metrics.reconcile_time.labels(controller)
        self.max_concurrent_reconciles = metrics.max_concurrent_reconciles.labels(controller)
        self.active_workers = metrics.active_workers.labels(controller)

    def reconciled(self, result: str) -> None:
        """Count one reconcile under ``result`` (one of the ``RESULT_*`` labels)."""
        self._reconcile_total[result].inc()
