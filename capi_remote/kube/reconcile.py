"""What a reconciler sees and returns: the contract between a Controller and business logic.

Invariants:
- A Request names an object, nothing more: reconcilers read the current state themselves, so a
  key that was added five times while busy is reconciled once, against the latest state.
- A reconcile is level-triggered and idempotent: the controller may call it again for the same
  key at any time (resync, requeue, restart).
- ``reconcile`` runs on the controller's event loop: blocking calls (SSH, disk, CPU-heavy parsing)
  must be offloaded (``asyncio.to_thread`` or the SSH runner), or every other key stalls.

Outcomes, as the Controller applies them:
- ``Result()``: done; the key's backoff is reset.
- ``Result(requeue_after=s)``: done for now, look again in ``s`` seconds (backoff reset).
- ``Result(requeue=True)``: not done, retry with the rate limiter's backoff, without an error.
- any exception: logged with its traceback, retried with the rate limiter's backoff.
- ``TerminalError``: logged, not retried until something enqueues the key again.
"""

from __future__ import annotations

import math
from typing import Protocol

import attrs
from structlog.typing import FilteringBoundLogger


@attrs.frozen
class Request:
    """The key of a reconcile: which object to look at. Hashable, so it is the queue's item."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


def _non_negative_finite(
    _: object, attribute: attrs.Attribute[float | None], value: float | None
) -> None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name} must be a finite number >= 0, got {value!r}")


@attrs.frozen
class Result:
    """How a successful reconcile wants its key treated next.

    ``requeue_after=0`` means "again right away" (useful when it is computed as a deadline minus
    now); it takes precedence over ``requeue``.
    """

    requeue: bool = False
    requeue_after: float | None = attrs.field(default=None, validator=_non_negative_finite)


@attrs.frozen
class ReconcileContext:
    """Per-reconcile facts the controller hands to the reconciler.

    ``log`` is THE logger of a reconcile: bound to ``controller``, ``namespace``, ``name`` and
    ``reconcile_id``, so every line a reconcile writes can be correlated with the controller's own
    lines. Reconcilers log through it (and pass it to helpers that log) rather than a module
    logger; a module logger called during a reconcile still gets those fields from structlog's
    context variables once ``capi_remote.logs`` configured logging, but not in tests that capture
    logs, nor on the threads of a pool (the SSH runner's).
    """

    controller: str
    reconcile_id: str
    log: FilteringBoundLogger


class Reconciler(Protocol):
    """Business logic for one kind: converge the world towards the object named by ``request``."""

    async def reconcile(self, ctx: ReconcileContext, request: Request) -> Result: ...


class TerminalError(Exception):
    """A failure retrying cannot fix (invalid spec, …): logged and not requeued.

    The key is processed again only when something enqueues it (an update of the object, a resync).
    Wrap the cause with ``raise TerminalError("...") from err``.
    """
