"""Workqueue, delaying queue and rate-limited queue: client-go semantics and their invariants."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
from collections.abc import Callable, Hashable
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)
from prometheus_client import CollectorRegistry

from capi_remote.kube import (
    DelayingQueue,
    ExponentialBackoffPolicy,
    ExponentialFailureRateLimiter,
    Metrics,
    Queue,
    RateLimitingQueue,
    ShutDown,
)

pytestmark = pytest.mark.timeout(60)  # a hang guard for regressions, not a speed target

K = TypeVar("K", bound=Hashable)


class ManualTimer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that only moves when told to; due callbacks run inside ``advance``."""

    def __init__(self) -> None:
        self.time = 0.0
        self._timers: list[tuple[float, int, ManualTimer, Callable[[], None]]] = []
        self._sequence = itertools.count()

    def now(self) -> float:
        return self.time

    def call_at(self, when: float, callback: Callable[[], None]) -> ManualTimer:
        timer = ManualTimer()
        heapq.heappush(self._timers, (when, next(self._sequence), timer, callback))
        return timer

    def advance(self, seconds: float) -> None:
        self.time += seconds
        while self._timers and self._timers[0][0] <= self.time:
            _, _, timer, callback = heapq.heappop(self._timers)
            if not timer.cancelled:
                callback()

    @property
    def armed_timers(self) -> int:
        return sum(not timer.cancelled for _, _, timer, _ in self._timers)


def sample(registry: CollectorRegistry, metric: str, queue: str) -> float:
    value = registry.get_sample_value(metric, {"name": queue})
    return 0.0 if value is None else value


async def drain(queue: Queue[K]) -> list[K]:
    """Get and finish everything currently queued (never waits)."""
    items = []
    while len(queue):
        item = await queue.get()
        queue.done(item)
        items.append(item)
    return items


async def settle() -> None:
    """Let every ready task on the loop run a few steps."""
    for _ in range(5):
        await asyncio.sleep(0)


# --- Queue -------------------------------------------------------------------------------------


async def test_distinct_keys_come_out_in_fifo_order() -> None:
    queue: Queue[str] = Queue("fifo")
    for key in ["c", "a", "b"]:
        queue.add(key)
    assert await drain(queue) == ["c", "a", "b"]


async def test_adding_a_queued_key_again_is_a_no_op() -> None:
    queue: Queue[str] = Queue("dedup")
    queue.add("a")
    queue.add("b")
    queue.add("a")
    assert len(queue) == 2
    assert await drain(queue) == ["a", "b"]


async def test_key_added_while_processing_waits_for_done_then_comes_back() -> None:
    queue: Queue[str] = Queue("processing")
    queue.add("a")
    assert await queue.get() == "a"
    queue.add("a")
    assert len(queue) == 0, "a processing key must not be queued for a second worker"
    second_worker = asyncio.create_task(queue.get())
    await settle()
    assert not second_worker.done()
    queue.done("a")
    assert await second_worker == "a"
    queue.done("a")
    assert len(queue) == 0


async def test_done_without_a_new_add_does_not_requeue() -> None:
    queue: Queue[str] = Queue("done")
    queue.add("a")
    queue.done(await queue.get())
    assert len(queue) == 0


async def test_get_waits_for_an_add() -> None:
    queue: Queue[str] = Queue("wait")
    getter = asyncio.create_task(queue.get())
    await settle()
    assert not getter.done()
    queue.add("a")
    assert await getter == "a"


async def test_a_cancelled_getter_passes_its_wake_up_on() -> None:
    queue: Queue[str] = Queue("cancel")
    first = asyncio.create_task(queue.get())
    second = asyncio.create_task(queue.get())
    await settle()
    queue.add("a")  # wakes the first getter...
    first.cancel()  # ...which is cancelled before it runs
    assert await second == "a"
    assert first.cancelled()


async def test_shutdown_ignores_adds_and_stops_getters_even_with_keys_queued() -> None:
    queue: Queue[str] = Queue("shutdown")
    waiting = asyncio.create_task(queue.get())
    await settle()
    queue.shutdown()
    with pytest.raises(ShutDown):
        await waiting
    queue.add("late")
    assert len(queue) == 0

    queued: Queue[str] = Queue("shutdown-queued")
    queued.add("a")
    queued.shutdown()
    with pytest.raises(ShutDown):
        await queued.get()


async def test_shutdown_with_drain_waits_for_keys_being_processed() -> None:
    queue: Queue[str] = Queue("drain")
    queue.add("a")
    queue.add("b")
    a = await queue.get()
    b = await queue.get()
    drained = asyncio.create_task(queue.shutdown_with_drain())
    await settle()
    queue.done(a)
    await settle()
    assert not drained.done()
    queue.done(b)
    await drained
    with pytest.raises(ShutDown):
        await queue.get()


async def test_shutdown_with_drain_returns_at_once_when_idle() -> None:
    queue: Queue[str] = Queue("idle-drain")
    queue.add("never-taken")
    await queue.shutdown_with_drain()


async def test_add_threadsafe_from_another_thread() -> None:
    queue: Queue[str] = Queue("threads")
    thread = threading.Thread(target=queue.add_threadsafe, args=("from-thread",))
    thread.start()
    await asyncio.to_thread(thread.join)
    assert await queue.get() == "from-thread"


def test_add_threadsafe_needs_an_owning_loop() -> None:
    queue: Queue[str] = Queue("no-loop")  # built outside any event loop
    with pytest.raises(RuntimeError, match="no event loop"):
        queue.add_threadsafe("a")


async def test_queue_metrics_follow_adds_gets_and_dones() -> None:
    registry = CollectorRegistry()
    queue: Queue[str] = Queue("measured", metrics=Metrics(registry))
    queue.add("a")
    queue.add("a")
    queue.add("b")
    assert sample(registry, "workqueue_adds_total", "measured") == 2
    assert sample(registry, "workqueue_depth", "measured") == 2
    item = await queue.get()
    assert sample(registry, "workqueue_depth", "measured") == 1
    assert sample(registry, "workqueue_queue_duration_seconds_count", "measured") == 1
    queue.done(item)
    assert sample(registry, "workqueue_work_duration_seconds_count", "measured") == 1


def test_in_flight_gauges_sum_and_max_the_running_items() -> None:
    registry = CollectorRegistry()
    now = [100.0]
    recorder = Metrics(registry).for_queue("gauges", now=lambda: now[0])
    recorder.added("a")
    recorder.added("b")
    recorder.got("a")
    now[0] = 103.0
    recorder.got("b")
    now[0] = 104.0
    assert sample(registry, "workqueue_unfinished_work_seconds", "gauges") == 5.0
    assert sample(registry, "workqueue_longest_running_processor_seconds", "gauges") == 4.0
    recorder.done("a")
    recorder.done("b")
    assert sample(registry, "workqueue_unfinished_work_seconds", "gauges") == 0.0
    assert sample(registry, "workqueue_longest_running_processor_seconds", "gauges") == 0.0


class QueueMachine(RuleBasedStateMachine):
    """Any sequence of add/get/done agrees with a plain model of client-go's queue."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.queue: Queue[int] = Queue("machine")
        self.fifo: list[int] = []
        self.dirty: set[int] = set()
        self.processing: set[int] = set()

    def teardown(self) -> None:
        self.loop.close()

    @rule(key=st.integers(0, 4))
    def add(self, key: int) -> None:
        self.queue.add(key)
        if key in self.dirty:
            return
        self.dirty.add(key)
        if key not in self.processing:
            self.fifo.append(key)

    @precondition(lambda self: bool(self.fifo))
    @rule()
    def get(self) -> None:
        key = self.loop.run_until_complete(self.queue.get())
        assert key == self.fifo.pop(0)
        assert key not in self.processing, "handed to a second worker"
        self.dirty.discard(key)
        self.processing.add(key)

    @precondition(lambda self: bool(self.processing))
    @rule(data=st.data())
    def done(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.processing)))
        self.queue.done(key)
        self.processing.discard(key)
        if key in self.dirty:
            self.fifo.append(key)

    @invariant()
    def length_matches(self) -> None:
        assert len(self.queue) == len(self.fifo)

    @invariant()
    def every_dirty_key_is_queued_or_processing(self) -> None:
        # the "no add lost" invariant: a dirty key is always on its way to a worker
        assert all(key in self.fifo or key in self.processing for key in self.dirty)


TestQueueMachine = QueueMachine.TestCase
TestQueueMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)

# A producer step: add a key, or yield to the loop a few times.
producer_steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 3)), st.tuples(st.just("yield"), st.integers(1, 3))
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=100, deadline=None)
@given(
    steps=producer_steps,
    workers=st.integers(1, 4),
    work_yields=st.lists(st.integers(0, 4), min_size=1, max_size=8),
)
def test_concurrent_workers_never_share_a_key_and_never_lose_an_add(
    steps: list[tuple[str, int]], workers: int, work_yields: list[int]
) -> None:
    asyncio.run(_run_workers(steps, workers, work_yields))


async def _run_workers(steps: list[tuple[str, int]], workers: int, work_yields: list[int]) -> None:
    queue: Queue[int] = Queue("interleavings")
    clock = itertools.count()
    last_add: dict[int, int] = {}
    adds: dict[int, int] = {}
    starts: dict[int, list[int]] = {}
    in_flight: set[int] = set()
    idle = asyncio.Event()
    yields = itertools.cycle(work_yields)

    async def worker() -> None:
        while True:
            try:
                key = await queue.get()
            except ShutDown:
                return
            assert key not in in_flight, f"key {key} processed by two workers at once"
            in_flight.add(key)
            starts.setdefault(key, []).append(next(clock))
            for _ in range(next(yields)):
                await asyncio.sleep(0)
            in_flight.discard(key)
            queue.done(key)
            if not len(queue) and not in_flight:
                idle.set()

    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    for action, value in steps:
        if action == "add":
            queue.add(value)
            last_add[value] = next(clock)
            adds[value] = adds.get(value, 0) + 1
        else:
            for _ in range(value):
                await asyncio.sleep(0)
    if len(queue) or in_flight:
        idle.clear()
        async with asyncio.timeout(10):  # a hang guard, not a speed target
            await idle.wait()
    queue.shutdown()
    await asyncio.gather(*tasks)

    for key, added_at in last_add.items():
        assert any(start > added_at for start in starts.get(key, [])), f"add of {key} was lost"
        assert len(starts[key]) <= adds[key], f"{key} processed more often than added"
    assert set(starts) <= set(last_add)


# --- DelayingQueue -----------------------------------------------------------------------------


async def test_add_after_releases_the_key_when_its_time_comes() -> None:
    clock = ManualClock()
    queue: DelayingQueue[str] = DelayingQueue("delay", clock=clock)
    queue.add_after("a", 5)
    clock.advance(4.9)
    assert len(queue) == 0
    clock.advance(0.1)
    assert await drain(queue) == ["a"]


async def test_non_positive_delay_adds_at_once() -> None:
    queue: DelayingQueue[str] = DelayingQueue("now", clock=ManualClock())
    queue.add_after("zero", 0)
    queue.add_after("negative", -1)
    assert await drain(queue) == ["zero", "negative"]


async def test_the_earlier_ready_time_wins() -> None:
    clock = ManualClock()
    queue: DelayingQueue[str] = DelayingQueue("earliest", clock=clock)
    queue.add_after("a", 10)
    queue.add_after("a", 3)  # moves it earlier
    queue.add_after("a", 20)  # does not postpone it
    clock.advance(3)
    assert await drain(queue) == ["a"]
    clock.advance(30)
    assert len(queue) == 0, "superseded ready times must not fire again"


async def test_delayed_keys_are_released_in_ready_time_order() -> None:
    clock = ManualClock()
    queue: DelayingQueue[str] = DelayingQueue("order", clock=clock)
    queue.add_after("late", 3)
    queue.add_after("early", 1)
    queue.add_after("middle", 2)
    clock.advance(3)
    assert await drain(queue) == ["early", "middle", "late"]


async def test_only_one_timer_is_armed_for_many_waiting_keys() -> None:
    clock = ManualClock()
    queue: DelayingQueue[int] = DelayingQueue("timers", clock=clock)
    for key in range(100):
        queue.add_after(key, 100 - key)
    assert clock.armed_timers == 1


async def test_shutdown_drops_waiting_keys() -> None:
    clock = ManualClock()
    queue: DelayingQueue[str] = DelayingQueue("drop", clock=clock)
    queue.add_after("a", 1)
    queue.shutdown()
    queue.add_after("b", 1)
    clock.advance(5)
    assert len(queue) == 0
    assert clock.armed_timers == 0


async def test_add_after_on_the_real_loop_clock() -> None:
    queue: DelayingQueue[str] = DelayingQueue("loop-clock")
    queue.add_after("a", 0.005)
    assert len(queue) == 0
    async with asyncio.timeout(5):  # a hang guard, not a speed target
        assert await queue.get() == "a"


async def test_add_after_threadsafe_from_another_thread() -> None:
    queue: DelayingQueue[str] = DelayingQueue("delay-threads")
    await asyncio.to_thread(queue.add_after_threadsafe, "a", 0.001)
    async with asyncio.timeout(5):
        assert await queue.get() == "a"


delay_ops = st.lists(
    st.one_of(
        st.tuples(st.just("add_after"), st.integers(0, 3), st.integers(-1, 6)),
        st.tuples(st.just("advance"), st.just(0), st.integers(0, 4)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ops=delay_ops)
def test_delaying_queue_matches_an_earliest_ready_time_model(
    ops: list[tuple[str, int, int]],
) -> None:
    asyncio.run(_check_delays(ops))


async def _check_delays(ops: list[tuple[str, int, int]]) -> None:
    clock = ManualClock()
    queue: DelayingQueue[int] = DelayingQueue("model", clock=clock)
    waiting: dict[int, tuple[float, int]] = {}  # key -> (ready time, order of that add_after)
    released: list[int] = []  # keys queued, in FIFO order, de-duplicated
    order = itertools.count()
    for op, key, amount in ops:
        if op == "add_after":
            queue.add_after(key, amount)
            if amount <= 0:
                if key not in released:
                    released.append(key)
            elif key not in waiting or clock.time + amount < waiting[key][0]:
                waiting[key] = (clock.time + amount, next(order))
        else:
            clock.advance(amount)
            for ready_key, _ in sorted(
                ((k, v) for k, v in waiting.items() if v[0] <= clock.time), key=lambda kv: kv[1]
            ):
                del waiting[ready_key]
                if ready_key not in released:
                    released.append(ready_key)
        assert len(queue) == len(released)
    assert await drain(queue) == released


# --- RateLimitingQueue -------------------------------------------------------------------------


async def test_add_rate_limited_backs_off_per_key_and_forget_resets() -> None:
    clock = ManualClock()
    registry = CollectorRegistry()
    limiter = ExponentialFailureRateLimiter(ExponentialBackoffPolicy(base_delay=1, max_delay=60))
    queue: RateLimitingQueue[str] = RateLimitingQueue(
        "retries", rate_limiter=limiter, clock=clock, metrics=Metrics(registry)
    )
    for expected_delay in [1, 2, 4]:
        queue.add_rate_limited("a")
        clock.advance(expected_delay - 0.5)
        assert len(queue) == 0
        clock.advance(0.5)
        assert await drain(queue) == ["a"]
    assert queue.num_requeues("a") == 3
    assert sample(registry, "workqueue_retries_total", "retries") == 3
    queue.forget("a")
    assert queue.num_requeues("a") == 0
    queue.add_rate_limited("a")
    clock.advance(1)
    assert await drain(queue) == ["a"]


async def test_a_pending_short_retry_is_not_postponed_by_a_longer_one() -> None:
    clock = ManualClock()
    limiter = ExponentialFailureRateLimiter(ExponentialBackoffPolicy(base_delay=1, max_delay=60))
    queue: RateLimitingQueue[str] = RateLimitingQueue("short", rate_limiter=limiter, clock=clock)
    queue.add_rate_limited("a")  # ready at 1
    queue.add_rate_limited("a")  # would be ready at 2: the earlier time stays
    clock.advance(1)
    assert await drain(queue) == ["a"]
