"""Fair admission to the parse workers: one tenant's bombs cannot starve another's parses.

A plain semaphore serves waiters first come, first served: a namespace that queued many
bomb-carrying machines (each may take the whole wall deadline) held both workers until its
queue drained, and every other namespace's parse waited behind it.

Invariants:
- At most ``slots`` holders at once; a free slot never stays free while someone waits.
- A freed slot goes to the waiting key with the fewest running holders; among equals, to the
  key whose last grant is oldest (never granted counts as oldest): round robin. So a key that
  arrives while another holds every slot gets the next free one, however many the other queued.
- Within one key, waiters are served in arrival order.
- A cancelled waiter leaves the queue; one cancelled just after its grant gives the slot back.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class FairAdmission:
    """``async with admission.slot(key):`` runs the body once one of ``slots`` is granted."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("at least one slot")
        self._free = slots
        self._running: Counter[str] = Counter()
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        # When each running or waiting key was last granted a slot (a tick count).
        self._granted: dict[str, int] = {}
        self._ticks = 0

    @asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        if self._free > 0:  # nobody waits while a slot is free (see _grant)
            self._take(key)
        else:
            await self._wait(key)
        try:
            yield
        finally:
            self._release(key)

    def waiting(self, key: str) -> int:
        """How many callers of ``key`` wait for a slot."""
        return len(self._waiting.get(key, ()))

    async def _wait(self, key: str) -> None:
        grant = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, deque()).append(grant)
        try:
            await grant
        except asyncio.CancelledError:
            if grant.cancelled():
                self._forget(key, grant)
            else:  # granted, then cancelled before it ran: the slot is ours to give back
                self._release(key)
            raise

    def _forget(self, key: str, grant: asyncio.Future[None]) -> None:
        queue = self._waiting.get(key)
        if queue is not None and grant in queue:
            queue.remove(grant)
            if not queue:
                del self._waiting[key]
        self._tidy(key)

    def _take(self, key: str) -> None:
        self._free -= 1
        self._running[key] += 1
        self._ticks += 1
        self._granted[key] = self._ticks

    def _release(self, key: str) -> None:
        self._free += 1
        self._running[key] -= 1
        if self._running[key] <= 0:
            del self._running[key]
        self._grant()
        self._tidy(key)

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
            grant = queue.popleft()
            if not queue:
                del self._waiting[key]
            if grant.cancelled():  # its task's cancellation has not run yet
                continue
            self._take(key)
            grant.set_result(None)
