"""The runner's CPU admission (issue 15 point 2): oldest job first, fair across tenants, and no
slot held across a long wait on the host. Driven step by step with threads; nothing is timed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from capi_remote.ssh.admission import CpuAdmission, Ticket


def eventually(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


class Holders:
    """Threads that each hold a ticket (in the order they are started) and record the grant."""

    def __init__(self, admission: CpuAdmission) -> None:
        self.admission = admission
        self.admitted: list[str] = []
        self._threads: list[threading.Thread] = []

    def hold(self, name: str, ticket: Ticket, tenant: str) -> None:
        before = self.admission.waiting(tenant)

        def run() -> None:
            ticket.hold()
            self.admitted.append(name)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._threads.append(thread)
        eventually(lambda: name in self.admitted or self.admission.waiting(tenant) > before)

    def join(self) -> None:
        for thread in self._threads:
            thread.join(10)


def test_an_older_job_goes_before_younger_waiting_ones() -> None:
    admission = CpuAdmission(1, hold=1.0)
    first, second, third = (admission.ticket("ns") for _ in range(3))
    first.hold()
    holders = Holders(admission)
    holders.hold("third", third, "ns")
    first.release()  # its handshake failed: the slot goes to the queue
    holders.join()
    assert holders.admitted == ["third"]
    holders.hold("second", second, "ns")
    holders.hold("first", first, "ns")  # a retried handshake: older than the waiting second
    third.release()
    eventually(lambda: holders.admitted == ["third", "first"])
    first.release()
    holders.join()
    assert holders.admitted == ["third", "first", "second"]
    second.release()


def test_another_tenant_gets_the_next_slot_however_many_one_tenant_queued() -> None:
    admission = CpuAdmission(2, hold=1.0)
    holders = Holders(admission)
    crowd = [admission.ticket("crowd") for _ in range(6)]
    for i, ticket in enumerate(crowd):
        holders.hold(f"crowd{i}", ticket, "crowd")
    other = admission.ticket("other")
    holders.hold("other", other, "other")
    assert holders.admitted == ["crowd0", "crowd1"]
    crowd[0].release()
    eventually(lambda: len(holders.admitted) == 3)
    assert holders.admitted[-1] == "other"
    for ticket in [crowd[1], other, *crowd[2:]]:
        eventually(lambda ticket=ticket: ticket.held)  # type: ignore[misc]
        ticket.release()
    holders.join()
    assert sorted(holders.admitted) == sorted([f"crowd{i}" for i in range(6)] + ["other"])


def test_a_slow_key_exchange_lets_another_job_work_meanwhile() -> None:
    admission = CpuAdmission(1, hold=0.05)
    slow, other = admission.ticket("black-hole"), admission.ticket("tenant")
    slow.hold()
    answered = threading.Event()
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(slow.wait_for(answered, 30)))
    waiter.start()
    other.hold()  # granted while the slow host has not answered
    assert not slow.held
    answered.set()
    waiter.join(10)
    assert result == [True] and not slow.held, "the slow host finishes without a slot"
    other.release()


def test_a_host_that_never_answers_times_out_without_the_slot() -> None:
    admission = CpuAdmission(1, hold=0.01)
    ticket = admission.ticket("ns")
    ticket.hold()
    assert not ticket.wait_for(threading.Event(), 0.05) and not ticket.held


def test_a_host_that_answers_within_the_hold_limit_keeps_the_slot() -> None:
    admission = CpuAdmission(1, hold=30.0)
    ticket = admission.ticket("ns")
    ticket.hold()
    answered = threading.Event()
    answered.set()
    assert ticket.wait_for(answered, 30) and ticket.held
    ticket.release()


def test_a_stopped_waiter_leaves_the_queue_and_the_slot_is_not_lost() -> None:
    admission = CpuAdmission(1, hold=1.0)
    holder = admission.ticket("ns")
    holder.hold()
    stop = threading.Event()

    def check() -> None:
        if stop.is_set():
            raise RuntimeError("cancelled")

    cancelled = admission.ticket("ns", check)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            cancelled.hold()
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    eventually(lambda: admission.waiting("ns") == 1)
    stop.set()
    thread.join(10)
    assert len(errors) == 1 and not cancelled.held and admission.waiting("ns") == 0
    holder.release()
    again = admission.ticket("ns")
    again.hold()  # free: the cancelled waiter took nothing
    assert again.held
    again.release()


def test_release_and_hold_are_idempotent() -> None:
    admission = CpuAdmission(1, hold=1.0)
    ticket = admission.ticket("ns")
    ticket.release()
    ticket.hold()
    ticket.hold()
    ticket.release()
    ticket.release()
    other = admission.ticket("ns")
    other.hold()
    assert other.held
    with pytest.raises(ValueError, match="at least one slot"):
        CpuAdmission(0, hold=1.0)
