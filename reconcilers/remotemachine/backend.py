"""The seam between the provisioning flow and what actually runs a bootstrap.

The flow (``provision.py``) owns attempts, backoff, conditions, failure fields and status writes;
a backend only starts an attempt, says what it sees, cleans up after a recorded outcome and
cancels on deletion. Two backends: the controller's SSH runner (``runner_backend.py``) and a
batch/v1 Job per attempt (``job_backend.py``, spec.provisionJob).

Invariants:
- ``observe`` never writes the RemoteMachine; the flow is its only writer.
- An attempt's number is chosen by the flow; a backend reports it back unchanged.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs
from structlog.typing import FilteringBoundLogger

from capi_remote import Request
from capi_remote.api import RemoteMachineSpec
from capi_remote.bootstrap import BootstrapPlan
from reconcilers.hostjobs import Outcome
from reconcilers.remote import Deadlines
from reconcilers.remotemachine.machinestatus import provider_id, provisioned_before

JSONDict = dict[str, Any]


@attrs.frozen
class Machine:
    """One reconcile's view of a RemoteMachine, for its backend: the object as read (holding a
    pooled host, bound to it with exactly that host's pins), and its spec as the typed model
    (converted once; every default comes from the model)."""

    rm: JSONDict
    spec: RemoteMachineSpec
    machine: JSONDict  # the owning Cluster API Machine
    request: Request
    log: FilteringBoundLogger  # the reconcile's (it carries the reconcile id)
    pooled: JSONDict | None = None  # the pooled host it holds: where its pins are recorded
    #: the object as read, where ``rm`` shows more than the API holds yet: a pooled machine
    #: bound to the host it claimed, which its first start records (None: ``rm`` as read)
    read: JSONDict | None = None

    @property
    def max_attempts(self) -> int:
        return self.spec.max_attempts

    @property
    def deadlines(self) -> Deadlines:
        return Deadlines.of_timeouts(self.spec.timeouts)

    @property
    def uid(self) -> str:
        return str(self.rm["metadata"]["uid"])

    @property
    def namespace(self) -> str:
        return str(self.rm["metadata"]["namespace"])

    @property
    def generation(self) -> int:
        return int(self.rm["metadata"].get("generation") or 0)

    @property
    def address(self) -> str:
        return self.spec.address or ""

    @property
    def provider_id(self) -> str:
        return provider_id(self.address, self.spec.port)

    @property
    def adopts(self) -> bool:
        """Provisioned before (:func:`provisioned_before`: a providerID that survives a move
        without status): the success sentinel on its host is its own. A new machine on a reused
        host was not, so another's sentinel is not."""
        return provisioned_before(self.rm)


@attrs.frozen
class NotReady:
    """The backend cannot tell yet (e.g. its informer has not synced): look again later."""

    retry_after: float


@attrs.frozen
class Running:
    attempt: int
    reason: str  # Ready's reason while it runs
    message: str  # Ready's message while it runs ("step k of n", ...)
    steps_done: int | None = None
    steps_total: int | None = None


@attrs.frozen
class Finished:
    attempt: int
    generation: int | None  # the spec generation the attempt was made for, if known
    outcome: Outcome
    ended_at: float | None = None  # Unix time
    steps_total: int | None = None
    steps_done: int | None = None


Observation = NotReady | Running | Finished | None


@attrs.frozen
class Started:
    reason: str  # Ready's reason
    message: str  # Ready's message
    event: str | None  # a Normal Event's message (None: this start made nothing new)


class Backend(Protocol):
    #: Ready's (and the Warning Event's) reason for a failed attempt; None: the outcome's reason
    failed_reason: str | None
    #: a host-locked outcome waits (without spending an attempt) until a lock this many seconds
    #: old would be stale; None: such an outcome is an ordinary failure
    lock_stale_after: int | None
    #: its own objects are the record of the attempts made (a Job per attempt): when it shows
    #: none and none is under way, the budget starts afresh (e.g. the last failed Job was
    #: deleted); False: status is the record (a runner's jobs die with the process)
    keeps_attempts: bool

    async def observe(self, machine: Machine) -> Observation: ...

    async def start(
        self, machine: Machine, plan: BootstrapPlan, attempt: int, provider_id: str
    ) -> Started:
        """Start attempt ``attempt``; raises MissingSecret, NotYetKnown, InvalidSpec,
        InvalidCredentials (ssh) or InvalidProvisionJob before anything started."""
        ...

    async def settle(self, machine: Machine, finished: Finished) -> None:
        """Clean up after an outcome was recorded (its job's memory, a Job's Secret)."""
        ...

    async def record_pins(self, machine: Machine, seen: dict[str, str]) -> dict[str, str]:
        """Pin the trust-on-first-use keys ``seen`` (annotation -> fingerprint) where none is
        pinned yet; the pins in force (:func:`reconcilers.remotemachine.pins.record_pins`)."""
        ...

    async def cancel(self, rm: JSONDict) -> float | None:
        """The RemoteMachine is being deleted: stop its attempt. Seconds to wait before the host
        cleanup may start, or None."""
        ...

    async def retire(self, rm: JSONDict) -> None:
        """The RemoteMachine uses the other backend now: stop what this one runs for it and
        remove what it made (a Job's Secret holds a usable private key)."""
        ...
