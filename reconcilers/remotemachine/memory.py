"""What the RemoteMachine controller remembers about a machine between reconciles, in one place.

In memory on purpose: after a restart one early retry is harmless, every entry is bounded by the
number of machines, and the API (status, Jobs, our finalizer) stays the record. Invariant:
everything kept for a machine is dropped by one :meth:`MachineMemory.forget` when its finalizer
goes, or, for a machine that never got it (it never started), when it is deleted
(``watches.py``).
"""

from __future__ import annotations

import time

import attrs


@attrs.frozen
class InputKey:
    """Which bootstrap data was found invalid: parsed again only when one of these changes
    (hostile data can take seconds to parse)."""

    secret_uid: str
    secret_version: str
    generation: int


@attrs.define
class Remembered:
    #: monotonic time before which no new attempt (or cleanup attempt) starts
    retry_at: float = 0.0
    #: our "provisioned" write is on its way to the cache: no second job meanwhile
    provisioned: bool = False
    invalid_input: InputKey | None = None
    #: (attempt, generation) of the last outcome recorded (a Job's outcome is seen again)
    recorded: tuple[int, int | None] | None = None
    cleanup_attempts: int = 0
    #: the lock holder a HostLocked Event named: one Event per holder, not one per look
    announced_lock: str | None = None
    #: monotonic time before which a running attempt's progress is not written (coalesced)
    progress_due: float = 0.0
    #: the attempt started here whose outcome is not recorded yet (its start wrote no status:
    #: a Job the cache does not show yet is this attempt, not a reason to start afresh)
    started: int | None = None


class MachineMemory:
    """Per machine UID, :class:`Remembered`; created on first use."""

    def __init__(self) -> None:
        self._by_uid: dict[str, Remembered] = {}

    def __getitem__(self, uid: str) -> Remembered:
        found = self._by_uid.get(uid)
        if found is None:
            found = self._by_uid[uid] = Remembered()
        return found

    def wait(self, uid: str) -> float:
        """Seconds until the next attempt may start (≤ 0: now)."""
        found = self._by_uid.get(uid)
        return 0.0 if found is None else found.retry_at - time.monotonic()

    def retry_in(self, uid: str, seconds: float) -> None:
        self[uid].retry_at = time.monotonic() + seconds

    def forget(self, uid: str) -> None:
        self._by_uid.pop(uid, None)

    def __len__(self) -> int:
        return len(self._by_uid)
