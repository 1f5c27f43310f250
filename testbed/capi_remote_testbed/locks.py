"""The one way the test bed serialises a build across processes (parallel test sessions, `make
run`, `make image`): an exclusive ``flock`` on a lock file next to what is built.

Invariant: the lock is held exactly for the ``with`` block and released by the kernel if the
process dies, so a crashed build never blocks the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def build_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
