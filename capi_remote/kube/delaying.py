"""The delaying queue: ``add_after(key, delay)`` on top of the workqueue.

Invariants:
- A key waits at most once: a second ``add_after`` keeps the EARLIER ready time, so a short
  requeue is never postponed by a long one (and a long one never cancels a short one).
- Waiting keys are not in the FIFO: they count neither in ``len`` nor against de-duplication until
  ready, then they go through ``add`` like any other key (and its invariants apply).
- ``delay <= 0`` is a plain ``add``; an already waiting entry for the key stays and fires later
  (a harmless extra reconcile, as in client-go).
- Time is the clock's monotonic time (the loop's by default); only one timer is armed, for the
  earliest ready time, so a thousand waiting keys cost one loop timer.
- Shutdown drops every waiting key.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Callable
from typing import Protocol

from capi_remote.kube.metrics import Metrics
from capi_remote.kube.queue import Queue, T


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Monotonic time and a way to be called back at a given time (injectable for tests)."""

    def now(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer: ...


class LoopClock:
    """The running event loop's clock: ``loop.time()`` and ``loop.call_at``."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        return asyncio.get_running_loop().call_at(when, callback)


class DelayingQueue(Queue[T]):
    """A workqueue whose keys can also be added after a delay."""

    def __init__(
        self, name: str, *, metrics: Metrics | None = None, clock: Clock | None = None
    ) -> None:
        super().__init__(name, metrics=metrics)
        self._clock: Clock = clock if clock is not None else LoopClock()
        # A min-heap with lazy deletion: an entry is live only while _ready_at still points at it.
        self._heap: list[tuple[float, int, T]] = []
        self._ready_at: dict[T, tuple[float, int]] = {}
        self._sequence = itertools.count()
        self._timer: Timer | None = None
        self._timer_at = math.inf

    def add_after(self, item: T, delay: float) -> None:
        """Add ``item`` once ``delay`` seconds have passed; call on the queue's loop only."""
        if self.shutting_down:
            return
        if delay <= 0:
            self.add(item)
            return
        ready_at = self._clock.now() + delay
        waiting = self._ready_at.get(item)
        if waiting is not None and waiting[0] <= ready_at:
            return
        entry = (ready_at, next(self._sequence))
        self._ready_at[item] = entry
        heapq.heappush(self._heap, (*entry, item))
        if ready_at < self._timer_at:
            self._arm_timer(ready_at)

    def add_after_threadsafe(self, item: T, delay: float) -> None:
        """``add_after`` from any thread; the delay counts from when the loop runs the call."""
        self._owning_loop().call_soon_threadsafe(self.add_after, item, delay)

    def shutdown(self) -> None:
        super().shutdown()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = math.inf
        self._heap.clear()
        self._ready_at.clear()

    def _arm_timer(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._clock.call_at(when, self._release_ready)
        self._timer_at = when

    def _release_ready(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        now = self._clock.now()
        while self._heap and self._heap[0][0] <= now:
            ready_at, sequence, item = heapq.heappop(self._heap)
            if self._ready_at.get(item) == (ready_at, sequence):
                del self._ready_at[item]
                self.add(item)
        if self._heap:
            self._arm_timer(self._heap[0][0])
