"""Waiting for the cluster: one loop for every "until nothing is pending" a step needs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

INTERVAL = 1.0


async def until_none_pending(
    pending: Callable[[], Awaitable[list[str]]], within: float
) -> list[str]:
    """Ask ``pending`` every second until it answers nothing or ``within`` seconds pass; return
    its last answer (empty: all done)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        left = await pending()
        if not left or loop.time() > deadline:
            return left
        await asyncio.sleep(INTERVAL)
