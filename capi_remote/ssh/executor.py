"""Runs a BootstrapPlan on one host so that each step takes effect exactly once.

The sequence for a job, over one connection:

1. ``begin`` (through sudo for non-root users: a refusal is ``SudoFailed``, fast): the success
   sentinel exists → nothing to do if it is this machine's, ``HostNotClean`` if another machine
   left it (see :mod:`capi_remote.ssh.hostscript`). Otherwise take the host lock, create the
   state dir, compare the recorded plan digest (another plan already ran → ``BootstrapChanged``)
   and read which steps already finished.
2. Each step not yet done: files and directories in one helper call; commands detached on the
   host, awaited under the step deadline while the lock heartbeat is refreshed. A deadline,
   cancellation, or a lost lock interrupts the wait; the first two kill the step's process group.
   Detaching (a graceful shutdown of the runner) interrupts the wait and kills nothing: the lock is
   released and the step's markers stay, so the next job awaits the still-running step.
3. ``finish``: release the lock and require the sentinel (``BootstrapIncomplete`` if missing).

All decisions that depend on host state are taken on the host, inside the helpers of
:mod:`capi_remote.ssh.hostscript`; this module sequences them and maps answers to results/errors.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Literal, TypeAlias

import attrs
import structlog

from capi_remote.bootstrap.plan import BootstrapPlan, MakeDirectory, RunCommand, Step, WriteFile
from capi_remote.ssh import hostscript
from capi_remote.ssh.auth import Privilege, describe_sudo_error
from capi_remote.ssh.errors import (
    BootstrapChanged,
    BootstrapIncomplete,
    ConnectionLost,
    HostLocked,
    HostNotClean,
    JobCancelled,
    JobDetached,
    JobTimeout,
    RemoteError,
    SSHError,
    StepFailed,
    StepInterrupted,
    StepTimeout,
    SudoFailed,
    UnsafeLockDirectory,
)
from capi_remote.ssh.probe import HostFacts, read_facts
from capi_remote.ssh.settings import SSHSettings
from capi_remote.ssh.target import Target
from capi_remote.ssh.transport import CommandTimedOut, Connection, ExecResult, Poll

log = structlog.get_logger(__name__)

_MACHINE_UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: Room for the helpers' status lines on top of the output tail.
_STATUS_BYTES = 4096
#: How long the best-effort cleanups (lock release, kill) may take when a job fails.
_CLEANUP_TIMEOUT = 15.0
#: The lock release on detach is bounded tighter: a shutting-down process must not linger (if the
#: release fails, the lock goes stale after ``lock_stale_after`` instead).
_DETACH_CLEANUP_TIMEOUT = 1.0

ProgressCallback: TypeAlias = Callable[[int, int, str], None]
StepStatus: TypeAlias = Literal["ran", "resumed", "skipped"]


def _check_machine_uid(_: object, __: attrs.Attribute[str], value: str) -> None:
    if not _MACHINE_UID.fullmatch(value) or value in (".", ".."):
        raise ValueError("machine_uid must be a plain name (letters, digits, '.', '_', '-')")


@attrs.frozen
class Job:
    """One bootstrap of one machine.

    ``machine_uid`` names the state directory on the host (use the Machine's UID: a new Machine on
    the same host starts fresh). ``on_progress(step_index, steps_total, description)`` is called
    from the worker thread before each step that is not already done (``step_index`` counts from
    0). ``rerun_interrupted`` allows starting again a step whose process vanished without an exit
    code; by default that is a :class:`StepInterrupted` error.

    ``cleanup`` makes it a teardown: the sentinel is not consulted, and once every step succeeded
    the machine is forgotten on the host (its state directories and the sentinel are removed), so
    the host can be bootstrapped again by its next machine.
    """

    target: Target
    plan: BootstrapPlan
    machine_uid: str = attrs.field(validator=_check_machine_uid)
    on_progress: ProgressCallback | None = attrs.field(default=None, eq=False)
    rerun_interrupted: bool = False
    step_timeout: float | None = None
    #: Deadline for the whole run; ``None`` keeps the runner's ``job_timeout``.
    job_timeout: float | None = None
    cleanup: bool = False
    #: Once the job succeeded, also collect the host's facts over the same connection
    #: (:attr:`JobResult.facts`), which saves the second connection a separate probe would open;
    #: after a bootstrap that ran, in the same call as the final helper (no round trip of its own).
    gather_facts: bool = False
    #: The machine was provisioned before (by us or the reference provider) and lost its status:
    #: a success sentinel on the host is its own even without its state there. Otherwise only a
    #: sentinel of a bootstrap this machine started counts; any other is ``HostNotClean``.
    adopt: bool = False

    @property
    def state_uid(self) -> str:
        """A cleanup keeps its own markers beside the bootstrap's (``<uid>.cleanup``)."""
        return f"{self.machine_uid}.cleanup" if self.cleanup else self.machine_uid


@attrs.frozen
class StepOutcome:
    """``ran``: started by this job; ``resumed``: already running, awaited; ``skipped``: done."""

    index: int
    description: str
    status: StepStatus
    exit_code: int | None = None
    output_tail: str = attrs.field(default="", repr=False)


@attrs.frozen
class JobResult:
    """What a job did. ``host_key_fingerprint`` (and the bastion's) is what to pin after
    trust-on-first-use."""

    host: str
    host_key_fingerprint: str
    already_bootstrapped: bool
    steps: tuple[StepOutcome, ...] = ()
    lock_taken_over_from: str | None = None
    duration_seconds: float = 0.0
    bastion_host_key_fingerprint: str | None = None
    #: With :attr:`Job.gather_facts`; ``None`` also when collecting them failed (the job did not).
    facts: HostFacts | None = None

    @property
    def output_tail(self) -> str:
        """Output tail of the last step that ran in this job (for status and Events)."""
        ran = [step for step in self.steps if step.status != "skipped"]
        return ran[-1].output_tail if ran else ""


def execute(
    job: Job,
    connection: Connection,
    settings: SSHSettings,
    *,
    owner: str,
    cancel: threading.Event | None = None,
    started: float | None = None,
    detach: threading.Event | None = None,
) -> JobResult:
    """Run ``job`` over an open ``connection``; ``owner`` identifies us in the host lock.

    ``started`` (``time.monotonic()``) is when the job began, connecting included: the job
    deadline counts from there. Setting ``cancel`` kills a running step (:class:`JobCancelled`);
    setting ``detach`` only stops waiting for it (:class:`JobDetached`): the step keeps running
    on the host, its markers stay and the lock is released, so a later job (any owner) awaits it.
    Both are checked before each step and while a command step runs, ``cancel`` first.
    """
    started = time.monotonic() if started is None else started
    return _Execution(
        job,
        connection,
        settings,
        owner,
        cancel or threading.Event(),
        detach or threading.Event(),
        started,
    ).run()


def step_name(index: int, step: Step) -> str:
    """The marker file stem of a step: index and digest, so a changed step never looks done."""
    return f"{index:04d}-{step.digest}"


class _Execution:
    def __init__(
        self,
        job: Job,
        connection: Connection,
        settings: SSHSettings,
        owner: str,
        cancel: threading.Event,
        detach: threading.Event,
        started: float,
    ) -> None:
        self.job = job
        self.conn = connection
        self.settings = settings
        self.owner = owner
        self.cancel = cancel
        self.detach = detach
        self.privilege = Privilege.for_credentials(job.target.credentials)
        self.started = started
        self.job_timeout = job.job_timeout or settings.job_timeout
        self.deadline = started + self.job_timeout
        self.state = f"{settings.state_root}/{job.state_uid}"
        self.log = log.bind(host=connection.host, machine_uid=job.machine_uid)
        self.locked = False
        self.connected = True
        self.next_heartbeat = 0.0

    # -- the job ----------------------------------------------------------------------------------

    def run(self) -> JobResult:
        try:
            return self._run()
        except ConnectionLost:
            self.connected = False
            raise
        finally:
            if self.locked and self.connected:
                self._release_lock()

    def _run(self) -> JobResult:
        self._check_stop()
        plan = self.job.plan
        reply = self._helper(
            hostscript.begin(
                state_root=self.settings.state_root,
                machine_uid=self.job.state_uid,
                plan_digest=plan.digest,
                lock=self.settings.lock_path,
                owner=self.owner,
                stale_after=self.settings.lock_stale_after,
                sentinel="" if self.job.cleanup else self.settings.sentinel_path,
                adopt=self.job.adopt,
            )
        )
        if reply.has("bootstrapped"):
            self.log.info("already bootstrapped: sentinel present, nothing to do")
            return self._result(already=True)
        if reply.has("foreign"):
            raise HostNotClean(self.conn.host, self.settings.sentinel_path)
        unsafe = reply.get("unsafe-lock")
        if unsafe is not None:
            raise UnsafeLockDirectory(self.conn.host, " ".join(unsafe))
        locked = reply.get("locked")
        if locked is not None:
            raise HostLocked(self.conn.host, locked[0], _int(locked[1]))
        changed = reply.get("changed")
        if changed is not None:
            raise BootstrapChanged(self.conn.host, changed[0], plan.digest)
        if not reply.has("ready"):
            raise RemoteError(self.conn.host, "unexpected answer from the begin helper")
        self.locked = True
        self.next_heartbeat = time.monotonic() + self.settings.lock_heartbeat_interval
        takeover = reply.get("takeover")
        if takeover is not None:
            self.log.warning("took over a stale host lock", previous_owner=takeover[0])
        done = {args[0] for args in reply.all("rc") if args[1:] == ("0",)}

        outcomes: list[StepOutcome] = []
        total = len(plan.steps)
        for index, step in enumerate(plan.steps):
            self._check_stop()
            self._heartbeat_if_due()
            if step_name(index, step) in done:
                outcomes.append(StepOutcome(index, step.describe(), "skipped", 0))
                continue
            self._progress(index, total, step.describe())
            outcomes.append(self._run_step(index, step))

        if self.job.cleanup:
            return self._forget(tuple(outcomes))
        finished = self._exec(
            hostscript.finish(
                lock=self.settings.lock_path,
                owner=self.owner,
                sentinel=self.settings.sentinel_path,
                facts=self.job.gather_facts,
            ),
            b"",
            self.settings.command_timeout,
        )
        reply = self._parse(finished)
        self.locked = False
        if not reply.has("complete"):
            raise BootstrapIncomplete(self.conn.host, self.settings.sentinel_path)
        self.log.info(
            "bootstrap complete",
            ran=sum(o.status != "skipped" for o in outcomes),
            skipped=sum(o.status == "skipped" for o in outcomes),
        )
        return self._result(
            already=False,
            steps=tuple(outcomes),
            taken_over_from=takeover[0] if takeover else None,
            facts=self._facts_in(finished.stdout),
        )

    def _forget(self, outcomes: tuple[StepOutcome, ...]) -> JobResult:
        root = self.settings.state_root
        reply = self._helper(
            hostscript.forget(
                lock=self.settings.lock_path,
                owner=self.owner,
                sentinel=self.settings.sentinel_path,
                state_dirs=(f"{root}/{self.job.machine_uid}", f"{root}/{self.job.state_uid}"),
            )
        )
        self.locked = False
        if not reply.has("forgotten"):
            raise RemoteError(self.conn.host, "unexpected answer from the forget helper")
        self.log.info("cleanup complete; machine forgotten on the host", ran=len(outcomes))
        return self._result(already=False, steps=outcomes)

    def _result(
        self,
        *,
        already: bool,
        steps: tuple[StepOutcome, ...] = (),
        taken_over_from: str | None = None,
        facts: HostFacts | None = None,
    ) -> JobResult:
        return JobResult(
            host=self.conn.host,
            host_key_fingerprint=self.conn.host_key_fingerprint,
            bastion_host_key_fingerprint=self.conn.bastion_host_key_fingerprint,
            already_bootstrapped=already,
            steps=steps,
            lock_taken_over_from=taken_over_from,
            duration_seconds=time.monotonic() - self.started,
            facts=facts,
        )

    def _facts_in(self, stdout: bytes) -> HostFacts | None:
        """The facts the finish helper's call gathered, if asked; None when the probe part did
        not complete (the runner then gathers them on their own)."""
        if not self.job.gather_facts:
            return None
        try:
            return read_facts(self.conn, stdout, self.privilege.mode)
        except RemoteError:
            return None

    # -- steps ------------------------------------------------------------------------------------

    def _run_step(self, index: int, step: Step) -> StepOutcome:
        base = f"{self.state}/steps/{step_name(index, step)}"
        self.log.info("running step", step=index, description=step.describe())
        if isinstance(step, RunCommand):
            return self._run_command(index, step, base)
        assert isinstance(step, WriteFile | MakeDirectory)
        command, data = hostscript.file_step(step, base)
        result = self._exec(command, hostscript.payload(data), self.settings.command_timeout)
        reply = self._parse(result)
        if reply.has("failed"):
            raise StepFailed(index, step.describe(), 1, _text(result.stderr))
        if reply.has("truncated"):
            raise ConnectionLost(self.conn.host, "file content did not arrive intact")
        if reply.get("rc") != ("0",):
            raise RemoteError(self.conn.host, f"unexpected answer for step {index + 1}")
        return StepOutcome(index, step.describe(), "ran", 0)

    def _run_command(self, index: int, step: RunCommand, base: str) -> StepOutcome:
        script = (step.to_shell() + "\n").encode()
        step_timeout = self.job.step_timeout or self.settings.step_timeout
        timeout = min(step_timeout, self._remaining(step_timeout))
        command = hostscript.run_step(
            base=base,
            script_sha256=hostscript.sha256(script),
            rerun_interrupted=self.job.rerun_interrupted,
            tail_bytes=self.settings.output_tail_bytes,
        )
        try:
            result = self._exec(
                command,
                hostscript.payload(script),
                timeout,
                tail_bytes=self.settings.output_tail_bytes + _STATUS_BYTES,
                poll=self._poll_step,
            )
        except CommandTimedOut:
            tail = self._kill(base)
            if timeout < step_timeout:
                raise JobTimeout(self.conn.host, self.job_timeout) from None
            raise StepTimeout(index, step.describe(), step_timeout, tail) from None
        except JobCancelled:
            self._kill(base)
            raise
        # JobDetached propagates as is: the step keeps running, its .start/.pid stay.
        reply = self._parse(result)
        if reply.has("interrupted"):
            raise StepInterrupted(index, step.describe())
        if reply.has("busy"):
            raise HostLocked(self.conn.host, "another job (it claimed this step)", None)
        if reply.has("truncated"):
            raise ConnectionLost(self.conn.host, "the step's command did not arrive intact")
        rc = reply.get("rc")
        if rc is None:
            raise RemoteError(self.conn.host, f"unexpected answer for step {index + 1}")
        tail = _text(reply.tail)
        code = _int(rc[0])
        if code != 0:
            raise StepFailed(index, step.describe(), -1 if code is None else code, tail)
        status: StepStatus = "resumed" if reply.has("attached") else "ran"
        return StepOutcome(index, step.describe(), status, 0, tail)

    def _poll_step(self) -> None:
        """While a command step runs: honour cancel/detach and keep the lock's heartbeat fresh."""
        self._check_stop()
        self._heartbeat_if_due()

    def _heartbeat_if_due(self) -> None:
        if time.monotonic() < self.next_heartbeat:
            return
        reply = self._helper(hostscript.heartbeat(lock=self.settings.lock_path, owner=self.owner))
        lost = reply.get("lost")
        if lost is not None:
            self.locked = False
            raise HostLocked(self.conn.host, lost[0], None)
        self.next_heartbeat = time.monotonic() + self.settings.lock_heartbeat_interval

    def _kill(self, base: str) -> str:
        """Best effort: kill the step's process group so nothing is left running on the host.

        Returns the tail of the step's log, for the error.
        """
        grace = self.settings.kill_grace
        command = hostscript.kill_step(
            base=base, grace=grace, tail_bytes=self.settings.output_tail_bytes
        )
        try:
            result = self._exec(command, b"", grace + _CLEANUP_TIMEOUT, cleanup=True)
        except (SSHError, CommandTimedOut) as exc:
            self.log.warning("could not kill the step's processes", error=str(exc))
            return ""
        return _text(hostscript.Reply.parse(result.stdout).tail)

    def _release_lock(self) -> None:
        timeout = _DETACH_CLEANUP_TIMEOUT if self.detach.is_set() else _CLEANUP_TIMEOUT
        try:
            command = hostscript.release(lock=self.settings.lock_path, owner=self.owner)
            self._exec(command, b"", timeout, cleanup=True)
        except (SSHError, CommandTimedOut) as exc:
            self.log.warning("could not release the host lock", error=str(exc))

    # -- helpers ----------------------------------------------------------------------------------

    def _helper(self, command: str) -> hostscript.Reply:
        return self._parse(self._exec(command, b"", self.settings.command_timeout))

    def _exec(
        self,
        command: str,
        stdin: bytes,
        timeout: float,
        *,
        tail_bytes: int = 65536,
        poll: Poll | None = None,
        cleanup: bool = False,
    ) -> ExecResult:
        """Run a helper as root, honouring cancellation and the job deadline.

        Timeouts become :class:`JobTimeout` when the job deadline was the limit,
        :class:`ConnectionLost` otherwise (a helper that hangs means a sick host or link), except
        for command steps (``poll`` given) and ``cleanup`` calls, which see
        :class:`CommandTimedOut` themselves. Cleanups run even when cancelled or out of time.
        """
        command, stdin = self.privilege.wrap(command, stdin)
        limit = timeout if cleanup else self._remaining(timeout)
        if limit <= 0:
            raise JobTimeout(self.conn.host, self.job_timeout)
        try:
            return self.conn.exec(
                command,
                stdin=stdin,
                timeout=limit,
                tail_bytes=tail_bytes,
                poll=None if cleanup else poll or self._check_cancel,
            )
        except CommandTimedOut:
            if cleanup or poll is not None:
                raise
            if limit < timeout:
                raise JobTimeout(self.conn.host, self.job_timeout) from None
            raise ConnectionLost(
                self.conn.host, f"no answer from a helper within {timeout:g} s"
            ) from None

    def _parse(self, result: ExecResult) -> hostscript.Reply:
        reply = hostscript.Reply.parse(result.stdout)
        if not reply.has("begin"):
            # The helper never started: sudo refused, or no POSIX shell.
            detail = _text(result.stderr).strip().splitlines()
            if self.privilege.mode != "root":
                raise SudoFailed(
                    self.conn.host,
                    self.job.target.credentials.user,
                    describe_sudo_error(result.stderr),
                )
            raise RemoteError(self.conn.host, detail[0][:200] if detail else "no answer")
        if result.exit_status != 0:
            detail = _text(result.stderr).strip().splitlines()
            raise RemoteError(
                self.conn.host,
                f"helper exited with {result.exit_status}: "
                + (detail[-1][:200] if detail else "no message"),
            )
        return reply

    def _remaining(self, timeout: float) -> float:
        return max(0.0, min(timeout, self.deadline - time.monotonic()))

    def _check_cancel(self) -> None:
        if self.cancel.is_set():
            raise JobCancelled(f"job on {self.conn.host} was cancelled")

    def _check_stop(self) -> None:
        """At safe points (before each step, while a command step runs): cancel, then detach.

        Helper calls themselves are only interrupted by cancel: they are short, and letting them
        finish keeps the job's view of the lock exact for the release on the way out.
        """
        self._check_cancel()
        if self.detach.is_set():
            raise JobDetached(self.conn.host)

    def _progress(self, index: int, total: int, description: str) -> None:
        if self.job.on_progress is None:
            return
        try:
            self.job.on_progress(index, total, description)
        except Exception:
            self.log.exception("progress callback failed")


def _int(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")
