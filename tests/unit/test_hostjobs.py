"""HostJobs: progress reported on a runner thread reaches the job's state on the event loop, and
wakes the reconciler at most every interval without losing the last report."""

from __future__ import annotations

import asyncio
import threading

import pytest

from capi_remote import Request
from reconcilers import hostjobs
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


async def test_progress_held_back_still_wakes_once_the_interval_is_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The last progress of a chatty job is not lost: a wake-up held back by the interval is sent
    when it is over (once, however many reports came meanwhile), unless the job ended first."""
    monkeypatch.setattr(hostjobs, "PROGRESS_WAKE_INTERVAL", 0.05)
    woken = asyncio.Queue[Request]()
    jobs = HostJobs(woken.put_nowait)
    release = asyncio.Event()

    async def work(job: JobState) -> Outcome:
        await release.wait()
        return Outcome(True, "Provisioned")

    jobs.start("uid", "provision", Request("ns", "m"), work)
    for done in (1, 2, 3):  # within the interval after the start
        jobs.record_progress("uid", done, 4, f"step {done}")
    assert woken.empty()
    assert await asyncio.wait_for(woken.get(), 10) == Request("ns", "m")
    state = jobs.state("uid")
    assert state is not None and state.steps_done == 3
    jobs.record_progress("uid", 4, 4, "step 4")  # held back again; the end comes first
    release.set()
    assert state.task is not None
    await state.task
    assert await asyncio.wait_for(woken.get(), 10) == Request("ns", "m")  # the end's wake
    jobs.forget("uid")
    await asyncio.sleep(0.1)  # the held wake-up was cancelled with the job
    assert woken.empty()


async def test_a_job_cancelled_before_it_began_is_over_and_can_be_forgotten() -> None:
    """A deletion right after the start (the task never ran a step) must not leave a job that
    is "running" forever: forget() would refuse it and the machine's deletion would never end."""
    jobs = HostJobs(lambda request: None)

    async def work(job: JobState) -> Outcome:
        return Outcome(True, "Provisioned")

    jobs.start("uid", "provision", Request("ns", "m"), work)
    await jobs.cancel("uid")  # no await between the start and the cancel: the task never ran
    state = jobs.state("uid")
    assert state is not None and not state.running
    assert state.outcome is not None and state.outcome.reason == "Cancelled"
    jobs.forget("uid")
    assert jobs.state("uid") is None
