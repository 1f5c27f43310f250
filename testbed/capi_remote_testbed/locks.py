"""The one way the test bed serialises a build across processes (parallel test sessions, `make
run`, `make image`): an exclusive ``flock`` on a lock file next to what is built.

Invariant: the lock is held exactly for the ``with`` block and released by the kernel if the
process dies, so a crashed build never blocks the next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from collections.abc import Callable, Iterator
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


def recipe_hash(*parts: str) -> str:
    """The short hash a cache entry's name carries: it changes whenever any part of its recipe
    does, so a cached entry is never stale."""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def build_once(target: Path, build: Callable[[Path], None], log: Callable[[str], None]) -> Path:
    """``target`` from the cache, or built by ``build(target)`` under a lock beside it (the build
    must make ``target`` appear atomically)."""
    with build_lock(target.parent / f".{target.name.rsplit('-', 1)[0]}.lock"):
        if not target.exists():
            log(f"building {target}")
            build(target)
    return target
