"""Polling a synchronous condition, failing with what was awaited (and a diagnosis): the one
wait loop of the test bed's environments and of the integration tests (``tests/support/waits``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(
    what: str,
    check: Callable[[], T | None],
    within: float,
    diagnose: Callable[[], str] | None = None,
    *,
    interval: float = 0.5,
    error: type[Exception] = TimeoutError,
) -> T:
    """``check()``'s first truthy result; ``error`` naming ``what`` (and what ``diagnose`` says)
    when none came within ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            detail = f"\n{diagnose()}" if diagnose else ""
            raise error(f"timed out after {within:.0f} s waiting for {what}{detail}")
        time.sleep(interval)
