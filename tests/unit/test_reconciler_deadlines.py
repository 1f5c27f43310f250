"""spec.timeouts → the deadlines handed to the SSH runner."""

from __future__ import annotations

from reconcilers.remote import Deadlines


def test_absent_timeouts_leave_every_runner_default() -> None:
    assert Deadlines.of({}) == Deadlines(connect=None, command=None, job=None)


def test_each_field_becomes_seconds() -> None:
    spec = {"timeouts": {"connect": "1m30s", "command": "2s", "job": "1h"}}
    assert Deadlines.of(spec) == Deadlines(connect=90.0, command=2.0, job=3600.0)


def test_a_field_left_out_keeps_its_runner_default() -> None:
    assert Deadlines.of({"timeouts": {"job": "45m"}}) == Deadlines(job=2700.0)
