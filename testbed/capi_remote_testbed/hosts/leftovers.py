"""Sweeping: leftovers of fleets whose process died (``make clean-devenv``, each test session).

Invariant: a sweep never touches a slot whose lock a live process holds, unless told to.
"""

from __future__ import annotations

from pathlib import Path

from capi_remote_testbed.hosts.fleet import LIVE_FLEETS
from capi_remote_testbed.hosts.names import LOCK_DIR, MARKER, default_state_dir, slot_of
from capi_remote_testbed.hosts.slots import (
    destroy_slot,
    lock_path,
    machine_names,
    release_slot,
    slot_leftovers,
    try_lock_slot,
)


def sweep(*, state_dir: Path | None = None, include_live: bool = False) -> list[str]:
    """Remove leftovers of fleets whose owner process is gone; returns what was removed.

    Live fleets (slot lock held by a running process) are left alone unless ``include_live``,
    which also kills them (for a machine that has nothing else running).
    """
    state_dir = state_dir or default_state_dir()
    links, netns = machine_names()
    candidates = {slot_of(n) for n in links + netns}
    for directory in (state_dir, LOCK_DIR):
        if directory.is_dir():
            candidates |= {slot_of(p.name) for p in directory.iterdir()}
    removed: list[str] = []
    for slot in sorted(s for s in candidates if s is not None):
        if not include_live and any(fleet.slot == slot for fleet in list(LIVE_FLEETS)):
            continue
        fd = try_lock_slot(slot)
        if fd is None and not include_live:
            continue
        try:
            leftovers = fleet_leftovers(f"{MARKER}{slot}", state_dir)
            destroy_slot(slot, state_dir)
            removed += leftovers
        finally:
            if fd is not None:
                release_slot(slot, fd)
    return removed


def fleet_is_live(prefix: str) -> bool:
    """True while a running process owns fleet ``prefix`` (``crt<k>``): sweeps leave it alone."""
    slot = slot_of(prefix)
    if slot is None:
        raise ValueError(f"not a fleet prefix: {prefix!r}")
    if any(fleet.slot == slot for fleet in list(LIVE_FLEETS)):
        return True
    fd = try_lock_slot(slot)
    if fd is None:
        return True
    release_slot(slot, fd)
    return False


def fleet_leftovers(prefix: str, state_dir: Path | None = None) -> list[str]:
    """What of fleet ``prefix`` (``crt<k>``) still exists; empty after a clean teardown."""
    slot = slot_of(prefix)
    if slot is None:
        raise ValueError(f"not a fleet prefix: {prefix!r}")
    found = slot_leftovers(slot, state_dir or default_state_dir())
    if lock_path(slot).exists():
        found.append(str(lock_path(slot)))
    return found
