"""The workqueue: a FIFO of keys with client-go's dirty/processing bookkeeping.

Invariants:
- A key is never processed by two workers at once: while a key is processing, ``add`` only marks
  it dirty, and ``done`` puts it back in the FIFO.
- No add is lost: a key added while it is processing is handed out again after ``done``, so the
  reconcile that follows the last add always sees the state that add announced.
- A key waits in the FIFO at most once: adding a key that is already dirty is a no-op, so a burst
  of events about one object collapses into one reconcile.
- Distinct keys are handed out in the order they became dirty (FIFO).
- One event loop owns the queue: every method runs on it, workers are tasks on it, and nothing
  here locks. Other threads (the SSH runner's) use ``add_threadsafe``, which hops onto the loop.
- After ``shutdown`` adds are ignored and ``get`` raises ``ShutDown`` even if keys are still
  queued. Unlike client-go, which hands those out first: a stopping controller takes no new
  keys, and the next start re-lists every object anyway.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

from capi_remote.kube.metrics import Metrics

T = TypeVar("T", bound=Hashable)


class ShutDown(Exception):
    """Raised by ``Queue.get`` once the queue is shut down: the worker should return."""


class Queue(Generic[T]):
    """A de-duplicating FIFO that never hands one key to two workers at once."""

    def __init__(self, name: str, *, metrics: Metrics | None = None) -> None:
        self.name = name
        self._metrics = (metrics if metrics is not None else Metrics()).for_queue(name)
        self._fifo: deque[T] = deque()
        self._dirty: set[T] = set()
        self._processing: set[T] = set()
        self._getters: deque[asyncio.Future[None]] = deque()
        self._shutting_down = False
        self._drained = asyncio.Event()
        self._loop = _running_loop_or_none()

    def __len__(self) -> int:
        """Keys waiting to be handed out (not those processing, nor those delayed)."""
        return len(self._fifo)

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def add(self, item: T) -> None:
        """Mark ``item`` as needing processing; call on the queue's loop only."""
        if self._shutting_down or item in self._dirty:
            return
        self._metrics.added(item)
        self._dirty.add(item)
        if item in self._processing:
            return  # re-queued by done(), never handed to a second worker
        self._fifo.append(item)
        self._wake_one_getter()

    def add_threadsafe(self, item: T) -> None:
        """``add`` from any thread: scheduled on the queue's loop with ``call_soon_threadsafe``.

        The queue belongs to the loop it was created on, or else the loop of its first ``get``;
        before either, there is no loop to hop to and this raises ``RuntimeError``.
        """
        self._owning_loop().call_soon_threadsafe(self.add, item)

    async def get(self) -> T:
        """Wait for a key and mark it processing; the caller must call ``done`` with it.

        Raises ``ShutDown`` once the queue is shut down.
        """
        loop = self._loop if self._loop is not None else self._bind_running_loop()
        while not self._fifo or self._shutting_down:
            if self._shutting_down:
                raise ShutDown(self.name)
            waiter = loop.create_future()
            self._getters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                waiter.cancel()
                if waiter in self._getters:
                    self._getters.remove(waiter)
                elif self._fifo:
                    self._wake_one_getter()  # we were woken for a key: pass the wake-up on
                raise
        item = self._fifo.popleft()
        self._dirty.discard(item)
        self._processing.add(item)
        self._metrics.got(item)
        return item

    def done(self, item: T) -> None:
        """End processing of ``item``; if it was added meanwhile, queue it again."""
        self._metrics.done(item)
        self._processing.discard(item)
        if self._shutting_down:
            if not self._processing:
                self._drained.set()
        elif item in self._dirty:
            self._fifo.append(item)
            self._wake_one_getter()

    def shutdown(self) -> None:
        """Ignore further adds and make every current and future ``get`` raise ``ShutDown``."""
        self._shutting_down = True
        if not self._processing:
            self._drained.set()
        while self._getters:
            waiter = self._getters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def shutdown_with_drain(self) -> None:
        """``shutdown``, then wait until every key handed out has been marked ``done``."""
        self.shutdown()
        await self._drained.wait()

    def _wake_one_getter(self) -> None:
        while self._getters:
            waiter = self._getters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _owning_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError(
                f"queue {self.name!r} has no event loop yet: create it inside the loop, "
                "or start its workers, before adding from other threads"
            )
        return self._loop

    def _bind_running_loop(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        return self._loop


def _running_loop_or_none() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
