"""The provisioning flow of a RemoteMachine, the same for both backends.

One reconcile does one step: record what the backend saw (progress, or an attempt's outcome),
or start the next attempt. Everything users see is decided here: attempts and their budget
(``spec.maxAttempts``, a new generation gets a fresh one), the backoff between attempts
(:class:`AttemptPolicy`), the conditions, phase and v1beta1 failure fields, the Events, and the
memory of bootstrap data found invalid.

Invariants:
- ``status.bootstrap.attempts`` is the number of the attempt that ran last once its progress
  or outcome is written (a terminal failure on the first try says 1); until then the attempt
  is remembered (``Remembered.started``) and resumed under its own number.
- An attempt that found the host locked by another job did not run: it is not spent.
- An outcome is recorded once (a Job's outcome is seen on every reconcile): its Events only go
  with a status write that changed something.
- Before an attempt starts, the API holds our finalizer (:meth:`ProvisionFlow._write_record`): the
  record that the host may hold our state, which its deletion then cleans. It is the machine's
  first object write, with its providerID and a claimed pooled host's spec.
- An attempt's start writes no status (its Event says it started), unless status says Failed,
  which is no longer true; a running attempt's progress is written
  ``AttemptPolicy.first_progress`` after the start (``progress_interval`` when status shows
  anything, e.g. a wait that ended), then at most every ``progress_interval``, the latest state
  always; an outcome at once. A bootstrap shorter than that costs one status write: its
  outcome.
- Every write goes through the :class:`Writer`.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import attrs

from capi_remote import Result
from capi_remote.bootstrap import BootstrapParseError
from capi_remote.ssh import InvalidCredentials
from reconcilers import conditions as c
from reconcilers.common import mark
from reconcilers.pool import first_use_pins, with_host_pins
from reconcilers.remote import InvalidSpec, MissingSecret, NotYetKnown
from reconcilers.remotemachine.backend import Backend, Finished, Machine, NotReady, Running
from reconcilers.remotemachine.jobtemplate import InvalidProvisionJob
from reconcilers.remotemachine.machinestatus import (
    clear_failure,
    condition,
    ready_reason,
    recorded,
    set_failure,
)
from reconcilers.remotemachine.memory import InputKey, MachineMemory
from reconcilers.remotemachine.plan import Parser, bootstrap_plan
from reconcilers.remotemachine.policy import AttemptPolicy
from reconcilers.remotemachine.writer import Writer

JSONDict = dict[str, Any]
#: How soon to look again at a Secret whose watch has not listed yet (just after a start).
NOT_YET_KNOWN_RETRY = 0.5
#: Ready reasons that mean an attempt was under way: with no job to show for it (the controller
#: that ran it died, or it found the host locked), the next job resumes that attempt.
_UNDER_WAY = (c.PROVISIONING, c.HOST_LOCKED, c.PROVISIONING_JOB_RUNNING)


def _under_way(status: JSONDict) -> bool:
    return status.get("phase") == "Provisioning" and ready_reason(status) in _UNDER_WAY


class ProvisionFlow:
    def __init__(
        self, writer: Writer, memory: MachineMemory, policy: AttemptPolicy, parser: Parser
    ) -> None:
        self.writer = writer
        self.memory = memory
        self.policy = policy
        self.parser = parser

    async def step(
        self,
        backend: Backend,
        m: Machine,
        status: JSONDict,
        data_secret: JSONDict,
    ) -> Result:
        remembered = self.memory[m.uid]
        if remembered.provisioned:
            return Result()  # our "provisioned" write is on its way to the cache
        seen = await backend.observe(m)
        if isinstance(seen, NotReady):
            return Result(requeue_after=seen.retry_after)
        if isinstance(seen, Running):
            return await self._running(m, status, seen)
        # No Job and none under way: deleting the last failed Job starts afresh.
        under_way = _under_way(status) or remembered.started is not None
        fresh = seen is None and backend.keeps_attempts and not under_way
        if isinstance(seen, Finished):
            # A failure of an older spec: a new generation gets a fresh budget.
            stale = not seen.outcome.ok and seen.generation not in (None, m.generation)
            if remembered.recorded != (seen.attempt, seen.generation):
                if not stale:
                    return await self._record(backend, m, status, seen)
                remembered.recorded, remembered.started = (seen.attempt, seen.generation), None
                await backend.settle(m, seen)
            fresh = stale
        return await self._next_attempt(backend, m, status, data_secret, fresh)

    # -- an attempt under way ------------------------------------------------------------------

    async def _running(self, m: Machine, status: JSONDict, seen: Running) -> Result:
        """Progress is coalesced: written at most every ``progress_interval``, the first time
        ``first_progress`` after the start; a wake-up before then looks again when it is due, so the
        latest state is always written (an outcome is written at once, by ``_record``)."""
        remembered = self.memory[m.uid]
        due = remembered.progress_due - time.monotonic()
        if due > 0:
            return Result(requeue_after=due)
        bootstrap = {
            k: v for k, v in (status.get("bootstrap") or {}).items() if k != "lastOutputTail"
        }
        if seen.steps_total is not None:
            bootstrap["stepsTotal"] = seen.steps_total
        if seen.steps_done is not None:
            bootstrap["stepsDone"] = seen.steps_done
        if seen.attempt:
            bootstrap["attempts"] = seen.attempt
        status["bootstrap"] = bootstrap
        mark(m.rm, status, c.READY, False, seen.reason, seen.message)
        status["phase"] = "Provisioning"
        clear_failure(status)  # an attempt under way (e.g. for a new generation) is not failed
        if await self.writer.status(m.rm, status):
            remembered.progress_due = time.monotonic() + self.policy.progress_interval
        return Result()

    # -- an attempt's outcome --------------------------------------------------------------------

    async def _record(
        self,
        backend: Backend,
        m: Machine,
        status: JSONDict,
        seen: Finished,
    ) -> Result:
        outcome = seen.outcome
        m.log.info(
            "bootstrap attempt ended",
            attempt=seen.attempt,
            ok=outcome.ok,
            reason=outcome.reason,
            message=outcome.message,
        )
        if outcome.ok:
            result = await self._succeeded(backend, m, status, seen)
        elif outcome.reason == c.HOST_LOCKED and backend.lock_stale_after is not None:
            result = await self._wait_for_lock(m, status, seen, backend.lock_stale_after)
        else:
            result = await self._failed(backend, m, status, seen)
            await self._pin_after_failure(backend, m, seen)
        remembered = self.memory[m.uid]
        remembered.recorded, remembered.started = (seen.attempt, seen.generation), None
        await backend.settle(m, seen)
        return result

    async def _succeeded(
        self, backend: Backend, m: Machine, status: JSONDict, seen: Finished
    ) -> Result:
        outcome, rm = seen.outcome, m.rm
        spec = rm["spec"]
        self.memory[m.uid].retry_at = 0.0
        desired = copy.deepcopy(rm)
        desired["spec"]["providerID"] = m.provider_id
        seen_keys = {
            "hostKeyFingerprint": outcome.details.get("fingerprint"),
            "bastionHostKeyFingerprint": outcome.details.get("bastionFingerprint"),
        }
        pins = first_use_pins(rm, spec, seen_keys)
        if pins and m.pooled is not None:  # the pooled host holds them; the machine mirrors
            pins = await backend.record_pins(m, pins)
        if pins:  # pin what we trusted on first use where clusterctl move keeps it
            desired["metadata"].setdefault("annotations", {}).update(pins)
        rm = await self.writer.object(rm, desired)
        status["addresses"] = outcome.details.get("addresses") or [
            {"type": "ExternalIP", "address": spec["address"]}
        ]
        status["initialization"] = {"provisioned": True}
        bootstrap = dict(status.get("bootstrap") or {})
        total = seen.steps_total if seen.steps_total is not None else bootstrap.get("stepsTotal")
        bootstrap.update(stepsTotal=total, stepsDone=total or 0, lastOutputTail=None)
        if seen.attempt:
            bootstrap["attempts"] = seen.attempt
        status["bootstrap"] = {k: v for k, v in bootstrap.items() if v is not None}
        if outcome.details.get("fingerprint"):
            status["hostKeyFingerprint"] = outcome.details["fingerprint"]
        mark(rm, status, c.BOOTSTRAP_SUCCEEDED, True, outcome.reason, "")
        mark(rm, status, c.READY, True, c.PROVISIONED, outcome.message)
        # The providerID patch made a new generation: record it on every condition now,
        # not in a write of its own on the next reconcile.
        mark(rm, status, c.PAUSED, False, c.NOT_PAUSED)
        status["phase"] = "Provisioned"
        clear_failure(status)
        await self.writer.status(rm, status)
        message = outcome.message or f"{spec['address']} bootstrapped"
        self.writer.event(rm, "Normal", c.PROVISIONED, message)
        self.memory[m.uid].provisioned = True
        return Result()

    async def _failed(
        self, backend: Backend, m: Machine, status: JSONDict, seen: Finished
    ) -> Result:
        outcome = seen.outcome
        bootstrap = dict(status.get("bootstrap") or {})
        attempts = seen.attempt or int(bootstrap.get("attempts") or 1)
        terminal = not outcome.retryable or attempts >= m.max_attempts
        delay = self.policy.backoff(attempts)
        message = outcome.message
        if outcome.retryable and terminal:
            message = f"{message} (gave up after {attempts} attempts)"
        elif not terminal:
            # The delay, not a countdown: status must not change on every wake-up.
            message = (
                f"{message} (attempt {attempts} of {m.max_attempts}; the next one starts"
                f" {delay:.0f}s after the failure)"
            )
        bootstrap["attempts"] = attempts
        if seen.steps_total is not None:  # how far it got (its start wrote no status)
            bootstrap["stepsTotal"] = seen.steps_total
        if seen.steps_done is not None:
            bootstrap["stepsDone"] = seen.steps_done
        bootstrap["lastOutputTail"] = outcome.output_tail[-1024:] or None
        status["bootstrap"] = {k: v for k, v in bootstrap.items() if v is not None}
        reason = backend.failed_reason or outcome.reason
        mark(m.rm, status, c.BOOTSTRAP_SUCCEEDED, False, outcome.reason, message)
        mark(m.rm, status, c.READY, False, reason, message)
        status["phase"] = "Failed" if terminal else "Provisioning"
        if terminal:
            set_failure(status, "CreateError", f"{outcome.reason}: {message}")
        if await self.writer.status(m.rm, status):
            self.writer.event(m.rm, "Warning", reason, message)
        # Also after a terminal failure: until the cache shows it, a stale "Provisioning" status
        # must not look like a crashed job to resume.
        since = time.time() - seen.ended_at if seen.ended_at is not None else 0.0
        self.memory.retry_in(m.uid, delay - since)
        return Result() if terminal else Result(requeue_after=max(delay - since, 0.5))

    async def _pin_after_failure(self, backend: Backend, m: Machine, seen: Finished) -> None:
        """Pin the key a failed attempt accepted on first use (a provisionJob reports it even
        when it fails), so the next attempt refuses another key instead of trusting anew. After
        the status write: a Conflict here records the outcome again, which writes nothing new."""
        accepted = {"hostKeyFingerprint": seen.outcome.details.get("fingerprint")}
        pins = first_use_pins(m.rm, m.rm["spec"], accepted)
        if pins:
            await backend.record_pins(m, pins)

    async def _wait_for_lock(
        self, m: Machine, status: JSONDict, seen: Finished, stale_after: int
    ) -> Result:
        """Another job's lock is not a failure of this bootstrap: nothing ran. The holder is a
        live controller that will release it, or a dead one whose lock goes stale once its
        heartbeat stops; either way the attempt is kept for the next job (a machine whose
        controller is replaced several times must not use up its budget waiting)."""
        details = seen.outcome.details
        age = details.get("lockAgeSeconds")
        retry = self.policy.lock_retry
        # Look again once the lock would be stale, or sooner: a live holder may release it.
        delay = retry if age is None else max(1.0, min(retry, stale_after - age + 1.0))
        if seen.attempt:
            status["bootstrap"] = {**(status.get("bootstrap") or {}), "attempts": seen.attempt}
        holder = details.get("lockOwner") or "another job"
        message = (
            f"{m.address} is locked by {holder}; waiting until it is released or"
            f" its heartbeat is {stale_after} s old"
        )
        mark(m.rm, status, c.READY, False, c.HOST_LOCKED, message)
        status["phase"] = "Provisioning"
        await self.writer.status(m.rm, status)
        # Each look starts a job that finds the lock again: announce a holder once.
        remembered = self.memory[m.uid]
        if remembered.announced_lock != holder:
            remembered.announced_lock = holder
            self.writer.event(m.rm, "Warning", c.HOST_LOCKED, message)
        self.memory.retry_in(m.uid, delay)
        return Result(requeue_after=delay)

    # -- the next attempt ----------------------------------------------------------------------

    async def _next_attempt(
        self,
        backend: Backend,
        m: Machine,
        status: JSONDict,
        data_secret: JSONDict,
        fresh: bool,
    ) -> Result:
        rm, remembered = m.rm, self.memory[m.uid]
        bootstrap = status.get("bootstrap") or {}
        attempts = int(bootstrap.get("attempts") or 0)
        # Only outcomes write BootstrapExecSucceeded: its generation says which spec failed.
        outcome = condition(status, c.BOOTSTRAP_SUCCEEDED)
        if fresh or (attempts and outcome.get("observedGeneration") not in (None, m.generation)):
            attempts = 0  # the spec changed since the last failure: a fresh budget
            remembered.retry_at = 0.0
        resuming = _under_way(status) or remembered.started is not None
        gave_up = (
            status.get("phase") == "Failed"
            and outcome.get("status") == "False"
            and outcome.get("observedGeneration") == m.generation
        )
        if attempts and (attempts >= m.max_attempts or gave_up) and not resuming:
            return Result()  # terminal until the spec changes or attempts is reset to 0
        wait = self.memory.wait(m.uid)
        if wait > 0:
            return Result(requeue_after=wait)  # back off between attempts
        pid = m.provider_id
        secret_meta = data_secret["metadata"]
        inputs = InputKey(
            str(secret_meta.get("uid", "")),
            str(secret_meta.get("resourceVersion", "")),
            m.generation,
        )
        if remembered.invalid_input == inputs and status.get("phase") == "Failed":
            return Result()  # the same data, already reported invalid
        try:
            plan = await bootstrap_plan(self.parser, rm, m.machine, data_secret, pid)
        except BootstrapParseError as error:
            remembered.invalid_input = inputs
            message = f"{error.key}: {error.message}"
            m.log.info(
                "bootstrap data is invalid", reason=c.INVALID_BOOTSTRAP_DATA, message=message
            )
            mark(rm, status, c.READY, False, c.INVALID_BOOTSTRAP_DATA, message)
            status["phase"] = "Failed"
            set_failure(status, "InvalidConfiguration", message)
            if await self.writer.status(rm, status):
                self.writer.event(rm, "Warning", c.INVALID_BOOTSTRAP_DATA, message)
            return Result()
        attempt = remembered.started or (attempts if resuming and attempts else attempts + 1)
        m = await self._write_record(m)
        rm = m.rm
        try:
            started = await backend.start(m, plan, attempt, pid)
        except NotYetKnown:
            return Result(requeue_after=NOT_YET_KNOWN_RETRY)  # its watch is listing
        except MissingSecret as missing:
            return await self._wait(rm, status, c.WAITING_FOR_SECRET, str(missing))
        except InvalidCredentials as invalid:
            return await self._wait(rm, status, c.INVALID_SSH_KEY, invalid.message)
        except InvalidProvisionJob as invalid:
            return await self._wait(rm, status, c.PROVISIONING_JOB_INVALID, str(invalid))
        except InvalidSpec as invalid:
            return await self._wait(rm, status, invalid.reason, str(invalid))
        remembered.recorded = None  # its outcome is news, even under a number seen before
        remembered.started = attempt
        if plan.warnings:
            self.writer.event(rm, "Warning", c.BOOTSTRAP_WARNINGS, "; ".join(plan.warnings))
        m.log.info("bootstrap attempt started", attempt=attempt, steps=len(plan.steps))
        if status.get("phase") == "Failed":  # e.g. a new generation: say at once it is not
            previous = {k: v for k, v in bootstrap.items() if k != "lastOutputTail"}
            steps = {"attempts": attempt, "stepsTotal": len(plan.steps), "stepsDone": 0}
            status["bootstrap"] = {**previous, **steps}
            mark(rm, status, c.READY, False, started.reason, started.message)
            status["phase"] = "Provisioning"
            clear_failure(status)
            await self.writer.status(rm, status)
        if started.event is not None:
            self.writer.event(rm, "Normal", started.reason, started.event)
        # Otherwise no status write for the start: the Event says it, most attempts end before
        # their first progress write, and status shows the attempt once one is due (_running).
        # A wait status (Pending) is no longer true either, but it is not worth a write of its
        # own: a short bootstrap replaces it with its outcome, a longer one with its progress.
        policy = self.policy
        first = policy.progress_interval if status.get("phase") else policy.first_progress
        remembered.progress_due = time.monotonic() + first
        return Result(requeue_after=first)

    async def _write_record(self, m: Machine) -> Machine:
        """Before anything touches the host, the API holds the record of it (``cleanup.py``): our
        finalizer, the providerID and a claimed pooled host's spec, in one write, the machine's
        first (nothing when they are there: a later attempt)."""
        before = m.rm if m.read is None else m.read
        written = await self.writer.object(before, recorded(copy.deepcopy(m.rm)))
        if written is before:
            return m
        if m.pooled is not None and m.read is not None:
            name, host = m.pooled["metadata"]["name"], m.address
            self.writer.event(
                written, "Normal", c.CLAIMED, f"claimed PooledRemoteMachine {name} ({host})"
            )
        return attrs.evolve(m, rm=with_host_pins(written, m.pooled), read=None)

    async def _wait(self, rm: JSONDict, status: JSONDict, reason: str, message: str) -> Result:
        mark(rm, status, c.READY, False, reason, message)
        status["phase"] = "Pending"
        await self.writer.status(rm, status)
        return Result()
