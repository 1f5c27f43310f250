"""Admission of the runner's CPU phase: jobs finish one after another on a saturated machine.

Without it every queued job starts its key exchange at once; on a CPU-bound machine they share
the processor, so every connection is slow and all jobs finish together at the end. A job instead
holds one of a few slots (``SSHSettings.cpu_slots``) for its key exchange (the expensive part of a
connection, on both ends) and none while it only waits on the host: helper calls and command
steps (a bootstrap's long part) run unadmitted, so thousands of steps still run at once.

Invariants:
- Fair across tenants (the namespace): the same :class:`~capi_remote.bootstrap.admission.FairQueue`
  as the parse workers, so a tenant's queue costs its own share, not another tenant's turn.
- Within a tenant, the oldest job first (its rank is its ticket's number): a job's second hop (a
  bastion's target) and a retried handshake go before jobs that have not started.
- A slot is held only once the host spoke: no slot while waiting for TCP connect or the banner,
  and at most ``SSHSettings.admission_hold`` seconds while the key exchange waits (a host slow at
  it finishes without the slot); none during authentication.
- Waiting for a slot honours the job's stop check (cancel, detach), every ``_POLL`` seconds.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Future

from capi_remote.bootstrap.admission import FairQueue

_POLL = 0.2

#: Called while waiting for a slot; raises to stop waiting (the job was cancelled or detached).
Stop = Callable[[], None]


class CpuAdmission:
    """The runner's slots; thread-safe. ``ticket(tenant)`` for each job or probe."""

    def __init__(self, slots: int, hold: float) -> None:
        self.hold = hold
        self._queue: FairQueue[Future[None]] = FairQueue(slots)
        self._lock = threading.Lock()
        self._ranks = itertools.count()

    def ticket(self, tenant: str, stop: Stop | None = None) -> Ticket:
        return Ticket(self, tenant, next(self._ranks), stop)

    def waiting(self, tenant: str) -> int:
        """How many tickets of ``tenant`` wait for a slot."""
        with self._lock:
            return self._queue.waiting(tenant)

    def _acquire(self, tenant: str, rank: int, stop: Stop | None) -> None:
        with self._lock:
            if self._queue.take(tenant):
                return
            grant: Future[None] = Future()
            self._queue.enqueue(tenant, grant, rank)
        try:
            while True:
                try:
                    grant.result(timeout=_POLL)
                    return
                except TimeoutError:
                    if stop is not None:
                        stop()
        except BaseException:
            with self._lock:
                if grant.cancel():
                    self._queue.forget(tenant, grant)
                else:  # granted meanwhile: give it back
                    self._queue.release(tenant)
            raise

    def _release(self, tenant: str) -> None:
        with self._lock:
            self._queue.release(tenant)


class Ticket:
    """One job's claim: :meth:`hold` before working, :meth:`release` before waiting on the host
    (both idempotent). Used by one thread."""

    def __init__(self, admission: CpuAdmission, tenant: str, rank: int, stop: Stop | None) -> None:
        self._admission = admission
        self._tenant = tenant
        self._rank = rank
        self._stop = stop
        self.held = False

    def hold(self) -> None:
        if not self.held:
            self._admission._acquire(self._tenant, self._rank, self._stop)
            self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self._admission._release(self._tenant)

    def wait_for(self, event: threading.Event, timeout: float) -> bool:
        """``event.wait(timeout)`` holding the slot at most the hold limit, then without it: past
        that, the host is slow, not us."""
        limit = min(self._admission.hold if self.held else 0.0, timeout)
        if event.wait(limit):
            return True
        self.release()
        return event.wait(timeout - limit)
