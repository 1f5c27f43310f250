"""The runner's asyncio face: futures, cancellation, one job per host, never blocking the loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import attrs
import pytest

from capi_remote.bootstrap import BootstrapPlan, RunCommand
from capi_remote.ssh.errors import HostLocked, JobCancelled, JobDetached
from capi_remote.ssh.executor import Job, JobResult
from capi_remote.ssh.runner import Runner
from tests.unit.test_ssh_executor import TARGET, Host, LocalConnector, make_host


@pytest.fixture
def local(tmp_path: Path) -> Host:
    return make_host(tmp_path)


def runner_for(host: Host) -> Runner:
    return Runner(host.settings, identity="unit-runner", connector=LocalConnector())


def job(host: Host, *steps: RunCommand, uid: str = "m1") -> Job:
    return Job(
        target=TARGET, plan=BootstrapPlan(steps=(*steps, host.finish_step())), machine_uid=uid
    )


def sleeper(token: str) -> RunCommand:
    return RunCommand(shell=f"sleep 5{token}")


def gone(token: str, seconds: str = "5") -> bool:
    found = subprocess.run(
        ["pgrep", "-f", f"sleep {seconds}{token}"], capture_output=True, check=False
    )
    return found.stdout == b""


async def test_jobs_are_futures_and_the_loop_keeps_running(local: Host) -> None:
    runner = runner_for(local)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    try:
        result = await runner.submit(job(local, RunCommand(shell="sleep 0.5"), local.count("a")))
    finally:
        ticker.cancel()
        await runner.aclose()
    assert isinstance(result, JobResult) and not result.already_bootstrapped
    assert ticks > 20, "the event loop was blocked while the job ran"
    assert local.counter("a") == 1


async def test_cancelling_the_future_kills_the_step(local: Host) -> None:
    token = f"{os.getpid()}{time.monotonic_ns() % 997}"
    runner = runner_for(local)
    future = runner.submit(job(local, local.count("a"), sleeper(token), local.count("b")))
    await asyncio.to_thread(wait_until, lambda: not gone(token))
    future.cancel()
    with pytest.raises(asyncio.CancelledError):
        await future
    await runner.aclose()  # waits for the worker, which kills the step on its way out
    assert gone(token)
    assert (local.counter("a"), local.counter("b")) == (1, 0)
    assert not local.lock.exists()


async def test_one_job_per_host_in_a_runner(local: Host) -> None:
    runner = runner_for(local)
    first = runner.submit(job(local, RunCommand(shell="sleep 0.5"), uid="m1"))
    await asyncio.sleep(0.1)
    with pytest.raises(HostLocked, match="another job"):
        await runner.submit(job(local, local.count("x"), uid="m2"))
    await first
    await runner.aclose()
    assert local.counter("x") == 0


def test_closing_the_runner_cancels_running_jobs(local: Host) -> None:
    token = f"{os.getpid()}{time.monotonic_ns() % 991}"
    runner = runner_for(local)
    future = runner._pool.submit(runner.run, job(local, sleeper(token)))
    wait_until(lambda: not gone(token))
    runner.close()
    with pytest.raises(JobCancelled):
        future.result()
    assert gone(token)


async def test_detaching_leaves_the_running_step_to_the_next_runner(local: Host) -> None:
    token = f"{os.getpid()}{time.monotonic_ns() % 983}"
    slow = RunCommand(shell=f"echo ran >> {local.path('/counters/a')}; sleep 2.{token}")
    runner = Runner(
        attrs.evolve(local.settings, max_workers=1),
        identity="unit-runner",
        connector=LocalConnector(),
    )
    running = runner.submit(job(local, slow, local.count("b")))
    queued = runner.submit(job(local, local.count("q"), uid="m2"))
    await asyncio.to_thread(wait_until, lambda: local.counter("a") == 1)

    start = time.monotonic()
    runner.detach()
    assert time.monotonic() - start < 0.1, "detach does not wait for anything"
    with pytest.raises(JobDetached):
        await running
    with pytest.raises(asyncio.CancelledError):
        await queued
    threads = list(runner._pool._threads)
    await asyncio.to_thread(wait_until, lambda: not any(t.is_alive() for t in threads), 1.5)
    assert time.monotonic() - start < 1.5, "detached jobs and the workers end quickly"
    assert not gone(token, "2."), "the step keeps running on the host"
    assert not local.lock.exists(), "the lock is released for the next controller"
    with pytest.raises(RuntimeError):
        runner.submit(job(local, local.count("q")))

    successor = Runner(local.settings, identity="unit-runner-2", connector=LocalConnector())
    result = await successor.submit(job(local, slow, local.count("b")))
    await successor.aclose()
    await runner.aclose()  # after detach: only waits, kills nothing
    assert [s.status for s in result.steps] == ["resumed", "ran", "ran"]
    assert (local.counter("a"), local.counter("b"), local.counter("q")) == (1, 1, 0)


async def test_cancelling_after_detach_kills_nothing(local: Host) -> None:
    token = f"{os.getpid()}{time.monotonic_ns() % 977}"
    runner = runner_for(local)
    future = runner.submit(job(local, sleeper(token)))
    await asyncio.to_thread(wait_until, lambda: not gone(token))
    runner.detach()
    future.cancel()  # what the event loop does to leftover tasks when it shuts down
    await runner.aclose()
    try:
        assert not gone(token), "the step survived"
    finally:
        kill_steps(local)


def kill_steps(host: Host) -> None:
    """Kill the process groups of the steps recorded on ``host`` (test cleanup)."""
    for pid_file in (host.state() / "steps").glob("*.pid"):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(pid_file.read_text().split()[0]), signal.SIGKILL)


def test_identity_must_be_a_plain_name(local: Host) -> None:
    with pytest.raises(ValueError):
        Runner(local.settings, identity="two words")


def wait_until(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline
        time.sleep(0.02)
