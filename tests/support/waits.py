"""Polling a synchronous condition in integration tests, failing with what was awaited."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def eventually(
    what: str,
    check: Callable[[], Any],
    within: float = 90.0,
    diagnose: Callable[[], str] | None = None,
) -> Any:
    """``check()``'s first truthy result; an AssertionError naming ``what`` (and what
    ``diagnose`` says) when none came within ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            detail = f"\n{diagnose()}" if diagnose else ""
            raise AssertionError(f"timed out waiting for {what}{detail}")
        time.sleep(0.5)
