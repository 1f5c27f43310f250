"""Fair admission to a few slots: one tenant's queue cannot starve another's work.

Used for the parse workers (a namespace's bomb-carrying machines must not hold both workers until
its queue drained) and, through :mod:`capi_remote.ssh.admission`, for the SSH runner's CPU phases.
:class:`FairQueue` is the state machine, shared by both; :class:`FairAdmission` is its asyncio
front (the runner's threads use a locked front over the same queue).

Invariants:
- At most ``slots`` holders at once; a free slot never stays free while someone waits.
- A freed slot goes to the waiting key with the fewest running holders; among equals, to the
  key whose last grant is oldest (never granted counts as oldest): round robin. So a key that
  arrives while another holds every slot gets the next free one, however many the other queued.
- Within one key, waiters are served by rank (lowest first; by default the arrival order).
- A cancelled waiter leaves the queue; one cancelled just after its grant gives the slot back.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Generic, Protocol, TypeVar


class Grant(Protocol):
    """A waiter's future: asyncio's or concurrent.futures' (both have these two)."""

    def cancelled(self) -> bool: ...

    def set_result(self, result: None, /) -> None: ...


G = TypeVar("G", bound=Grant)


class FairQueue(Generic[G]):
    """Who holds, who waits, who is next (the module invariants). It never blocks and is not
    thread-safe: a front serialises the calls and waits on the grants."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("at least one slot")
        self._free = slots
        self._running: Counter[str] = Counter()
        self._waiting: dict[str, list[tuple[int, int, G]]] = {}  # heaps of (rank, arrival, grant)
        # When each running or waiting key was last granted a slot (a tick count).
        self._granted: dict[str, int] = {}
        self._ticks = 0
        self._arrivals = itertools.count()

    def take(self, key: str) -> bool:
        """Take a free slot at once, if there is one (nobody waits while a slot is free)."""
        if self._free <= 0:
            return False
        self._take(key)
        return True

    def enqueue(self, key: str, grant: G, rank: int | None = None) -> None:
        """Wait for a slot: ``grant`` gets its result once the slot is ``key``'s."""
        arrival = next(self._arrivals)
        entry = (arrival if rank is None else rank, arrival, grant)
        heapq.heappush(self._waiting.setdefault(key, []), entry)

    def forget(self, key: str, grant: G) -> None:
        """A waiter gave up (its grant is cancelled, never granted)."""
        queue = self._waiting.get(key)
        if queue is not None:
            queue[:] = [entry for entry in queue if entry[2] is not grant]
            heapq.heapify(queue)
            if not queue:
                del self._waiting[key]
        self._tidy(key)

    def release(self, key: str) -> None:
        """A holder of ``key`` is done; the slot goes to the next waiter, if any."""
        self._free += 1
        self._running[key] -= 1
        if self._running[key] <= 0:
            del self._running[key]
        self._grant()
        self._tidy(key)

    def waiting(self, key: str) -> int:
        return len(self._waiting.get(key, ()))

    def _take(self, key: str) -> None:
        self._free -= 1
        self._running[key] += 1
        self._ticks += 1
        self._granted[key] = self._ticks

    def _tidy(self, key: str) -> None:
        """No state is kept for a key with nothing running or waiting."""
        if key not in self._running and key not in self._waiting:
            self._granted.pop(key, None)

    def _turn(self, key: str) -> tuple[int, int]:
        return self._running[key], self._granted.get(key, 0)

    def _grant(self) -> None:
        while self._free > 0 and self._waiting:
            key = min(self._waiting, key=self._turn)
            queue = self._waiting[key]
            grant = heapq.heappop(queue)[2]
            if not queue:
                del self._waiting[key]
            if grant.cancelled():  # its waiter's cancellation has not run yet
                continue
            self._take(key)
            grant.set_result(None)


class FairAdmission:
    """``async with admission.slot(key):`` runs the body once one of ``slots`` is granted."""

    def __init__(self, slots: int) -> None:
        self._queue: FairQueue[asyncio.Future[None]] = FairQueue(slots)

    @asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        if not self._queue.take(key):
            await self._wait(key)
        try:
            yield
        finally:
            self._queue.release(key)

    def waiting(self, key: str) -> int:
        """How many callers of ``key`` wait for a slot."""
        return self._queue.waiting(key)

    async def _wait(self, key: str) -> None:
        grant = asyncio.get_running_loop().create_future()
        self._queue.enqueue(key, grant)
        try:
            await grant
        except asyncio.CancelledError:
            if grant.cancelled():
                self._queue.forget(key, grant)
            else:  # granted, then cancelled before it ran: the slot is ours to give back
                self._queue.release(key)
            raise
