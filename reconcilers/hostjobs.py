"""SSH work per RemoteMachine, off the reconcile path.

The machine reconciler never waits on SSH. It asks this registry to *start* a job for a machine
UID, returns, and is re-queued when the job makes progress or ends; the next reconcile reads the
job's state from here and writes it to status. One job per machine at a time; a finished job's
outcome stays until the reconciler has recorded it (``forget``).

Invariants:
- At most one job per machine UID is running in this process (the on-host lock covers replicas).
- Job state is only touched on the event loop: progress callbacks come from runner threads and
  hop to the loop (``call_soon_threadsafe``) before they store anything; they wake the
  controller at most every few seconds, so a chatty job cannot flood the queue, and the last
  progress always wakes it (a wake-up held back is sent when the interval is over).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any, Literal

import attrs

from capi_remote import Request

JobKind = Literal["provision", "cleanup"]
PROGRESS_WAKE_INTERVAL = 2.0


@attrs.frozen
class Outcome:
    """How a job ended, already translated into condition terms."""

    ok: bool
    reason: str
    message: str = ""
    retryable: bool = False
    output_tail: str = ""
    details: dict[str, Any] = attrs.field(factory=dict)


@attrs.define
class JobState:
    kind: JobKind
    request: Request
    steps_total: int = 0
    steps_done: int = 0
    step: str = ""
    outcome: Outcome | None = None
    task: asyncio.Task[None] | None = None
    #: Which bootstrap attempt this job is; kept here so that a status write lost to a conflict
    #: does not lose the count (the reconciler writes it again from here).
    attempt: int = 0
    #: The RemoteMachine generation the job was started for.
    generation: int | None = None

    @property
    def running(self) -> bool:
        return self.outcome is None


class HostJobs:
    """Registry of in-flight and finished jobs, keyed by machine UID."""

    def __init__(self, wake: Callable[[Request], None]) -> None:
        self._wake = wake  # enqueue of the machine's key (called on the loop)
        self._jobs: dict[str, JobState] = {}
        self._last_wake: dict[str, float] = {}
        self._held: dict[str, asyncio.TimerHandle] = {}  # wake-ups held back, by UID
        self._loop: asyncio.AbstractEventLoop | None = None

    def state(self, uid: str) -> JobState | None:
        return self._jobs.get(uid)

    def start(
        self,
        uid: str,
        kind: JobKind,
        request: Request,
        work: Callable[[JobState], Coroutine[Any, Any, Outcome]],
    ) -> JobState:
        """Start ``work`` unless a job for ``uid`` exists; returns the (new or current) job."""
        current = self._jobs.get(uid)
        if current is not None:
            return current
        job = JobState(kind, request)
        self._jobs[uid] = job
        # The status written at the start is fresh: the first progress wake comes later.
        self._last_wake[uid] = time.monotonic()
        self._loop = asyncio.get_running_loop()

        async def run() -> None:
            try:
                job.outcome = await work(job)
            except asyncio.CancelledError:
                job.outcome = Outcome(False, "Cancelled", "the job was cancelled")
                raise
            except Exception as error:
                job.outcome = Outcome(
                    False, "InternalError", f"{type(error).__name__}: {error}", retryable=True
                )
            finally:
                self._wake(request)

        job.task = asyncio.get_running_loop().create_task(run(), name=f"{kind}-{uid}")

        def ended(task: asyncio.Task[None]) -> None:
            if job.outcome is None:  # cancelled before its first step: ``run()`` never began
                job.outcome = Outcome(False, "Cancelled", "the job was cancelled before it started")

        job.task.add_done_callback(ended)
        return job

    def progress(self, uid: str, done: int, total: int, step: str) -> None:
        """Report progress from any thread: it is recorded on the event loop."""
        if self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: the process is ending
            self._loop.call_soon_threadsafe(self.record_progress, uid, done, total, step)

    def record_progress(self, uid: str, done: int, total: int, step: str) -> None:
        """Record progress (on the loop); wakes the reconciler at most every few seconds."""
        job = self._jobs.get(uid)
        if job is None:
            return
        job.steps_done, job.steps_total, job.step = done, total, step
        if uid in self._held:
            return  # its wake-up comes
        wait = self._last_wake.get(uid, 0.0) + PROGRESS_WAKE_INTERVAL - time.monotonic()
        if wait > 0 and self._loop is not None:
            self._held[uid] = self._loop.call_later(wait, self._wake_held, uid, job)
            return
        self._last_wake[uid] = time.monotonic()
        self._wake(job.request)

    def _wake_held(self, uid: str, job: JobState) -> None:
        self._held.pop(uid, None)
        if self._jobs.get(uid) is job and job.running:  # an ended job woke it already
            self._last_wake[uid] = time.monotonic()
            self._wake(job.request)

    async def cancel(self, uid: str) -> None:
        """Cancel a running job and wait until it stopped (the runner kills the remote step)."""
        job = self._jobs.get(uid)
        if job is None or job.task is None or job.task.done():
            return
        job.task.cancel()
        await asyncio.gather(job.task, return_exceptions=True)

    def forget(self, uid: str) -> None:
        job = self._jobs.get(uid)
        if job is not None and job.running:
            raise RuntimeError("forget() of a running job")
        self._jobs.pop(uid, None)
        self._last_wake.pop(uid, None)
        held = self._held.pop(uid, None)
        if held is not None:
            held.cancel()
