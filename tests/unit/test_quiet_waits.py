"""A new RemoteMachine's first waits are not written while Cluster API is still wiring it up."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from reconcilers.remotemachine.reconciler import QUIET_WAITS, quiet_waits_left

CREATED = "2026-12-02T10:00:00Z"
AT_CREATION = datetime(2026, 12, 2, 10, 0, 0, tzinfo=UTC).timestamp()


def machine(created: str | None = CREATED, **status: Any) -> dict[str, Any]:
    meta = {"name": "m"} if created is None else {"name": "m", "creationTimestamp": created}
    return {"metadata": meta, "status": status}


@pytest.mark.parametrize(
    ("age", "left"), [(0.0, QUIET_WAITS), (2.0, QUIET_WAITS - 2.0), (QUIET_WAITS, 0.0), (60, 0.0)]
)
def test_a_new_machine_waits_quietly_until_it_is_old_enough(age: float, left: float) -> None:
    assert quiet_waits_left(machine(), AT_CREATION + age) == pytest.approx(left)


def test_a_machine_that_has_said_something_says_every_change() -> None:
    said = machine(conditions=[{"type": "Ready", "status": "False", "reason": "WaitingForCluster"}])
    assert quiet_waits_left(said, AT_CREATION) == 0.0


def test_a_clock_behind_the_api_server_does_not_silence_a_machine() -> None:
    assert quiet_waits_left(machine(), AT_CREATION - 30) == 0.0
    assert quiet_waits_left(machine(), AT_CREATION - 0.5) == QUIET_WAITS


@pytest.mark.parametrize("created", [None, "", "yesterday"])
def test_without_a_usable_creation_time_a_wait_is_written_at_once(created: str | None) -> None:
    assert quiet_waits_left(machine(created), AT_CREATION) == 0.0
