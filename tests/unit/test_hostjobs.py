"""HostJobs: progress reported on a runner thread reaches the job's state on the event loop."""

from __future__ import annotations

import asyncio
import threading

from capi_remote import Request
from reconcilers.hostjobs import HostJobs, JobState, Outcome


async def test_progress_from_a_thread_is_recorded_on_the_loop() -> None:
    woken: list[Request] = []
    jobs = HostJobs(woken.append)
    release = asyncio.Event()
    recorded_on: list[int] = []

    async def work(job: JobState) -> Outcome:
        await release.wait()
        return Outcome(True, "Provisioned")

    jobs.start("uid", "provision", Request("ns", "m"), work)
    original = jobs.record_progress

    def spy(uid: str, done: int, total: int, step: str) -> None:
        recorded_on.append(threading.get_ident())
        original(uid, done, total, step)

    jobs.record_progress = spy  # type: ignore[method-assign]
    thread = threading.Thread(target=jobs.progress, args=("uid", 1, 3, "runcmd"))
    thread.start()
    thread.join()
    state = jobs.state("uid")
    assert state is not None and state.steps_done == 0  # not touched from the thread
    await asyncio.sleep(0)
    assert (state.steps_done, state.steps_total, state.step) == (1, 3, "runcmd")
    assert recorded_on == [threading.get_ident()]
    assert woken == []  # the start's status is fresh: no wake within PROGRESS_WAKE_INTERVAL
    release.set()
    assert state.task is not None
    await state.task
    assert woken == [Request("ns", "m")]
