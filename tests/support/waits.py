"""Polling a synchronous condition in integration tests, failing with what was awaited."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from capi_remote_testbed.waits import poll


def eventually(
    what: str,
    check: Callable[[], Any],
    within: float = 90.0,
    diagnose: Callable[[], str] | None = None,
) -> Any:
    """``check()``'s first truthy result; an AssertionError naming ``what`` (and what
    ``diagnose`` says) when none came within ``within`` seconds."""
    return poll(what, check, within, diagnose, error=AssertionError)
