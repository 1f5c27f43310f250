"""The runner: a bounded thread pool running SSH jobs as futures the asyncio side awaits.

paramiko is blocking, so every job runs in a worker thread; the event loop only ever awaits
futures. The pool is bounded (``max_workers``) and handshakes per host are capped by the
connector, so a thousand queued machines cost queue entries, not threads or sockets. The CPU
this process spends on them is admitted (:mod:`capi_remote.ssh.admission`): a few jobs at a time,
oldest first, fair across tenants, so machines complete in order on a saturated machine.

Cancelling the future returned by :meth:`Runner.submit` sets the job's cancel flag: the worker
stops before the next step, or kills the running step's process group on the host and ends with
:class:`~capi_remote.ssh.errors.JobCancelled`. The future itself is cancelled at once; the kill
happens in the background.

:meth:`Runner.detach` is the graceful shutdown of a controller that will be replaced (a rolling
update): running jobs stop waiting and fail with :class:`~capi_remote.ssh.errors.JobDetached`, but
their steps keep running on the hosts, exactly as if the controller had crashed. The host lock is
released, so the next controller (whatever its identity) starts at once and awaits those steps.
Only an explicit cancel (or :meth:`Runner.close`) kills remote processes.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

import attrs
import structlog

from capi_remote.ssh.admission import CpuAdmission
from capi_remote.ssh.errors import HostLocked, JobCancelled, JobDetached, SSHError
from capi_remote.ssh.executor import Job, JobResult, execute
from capi_remote.ssh.paramiko_transport import ParamikoConnector
from capi_remote.ssh.probe import HostFacts, gather_facts, probe
from capi_remote.ssh.settings import SSHSettings
from capi_remote.ssh.target import Target
from capi_remote.ssh.transport import Connection, Connector

log = structlog.get_logger(__name__)

_IDENTITY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,199}")


def default_identity() -> str:
    """``<hostname>-<pid>``: unique per process. Pass the pod name instead in a cluster, so a
    restarted container resumes its own jobs without waiting for its old lock to go stale."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Runner:
    """Runs :class:`Job` s and probes on a bounded pool; use as a context manager or ``close()``
    (or ``detach()`` to shut down leaving running steps to the next controller).

    ``identity`` is written into host locks: it must be unique per live controller. A job for a
    host this runner is already working on fails at once with ``HostLocked``.
    """

    def __init__(
        self,
        settings: SSHSettings | None = None,
        *,
        identity: str | None = None,
        connector: Connector | None = None,
    ) -> None:
        self.settings = settings or SSHSettings()
        self.identity = identity or default_identity()
        if not _IDENTITY.fullmatch(self.identity):
            raise ValueError("identity must be a plain name (no spaces)")
        self._connector = connector or ParamikoConnector(self.settings)
        self._admission = CpuAdmission(self.settings.cpu_slots, self.settings.admission_hold)
        self._pool = ThreadPoolExecutor(
            max_workers=self.settings.max_workers, thread_name_prefix="capi-remote-ssh"
        )
        self._lock = threading.Lock()
        self._busy: set[tuple[tuple[str, int], ...]] = set()
        self._cancels: set[threading.Event] = set()
        self._detached = threading.Event()

    def submit(self, job: Job) -> asyncio.Future[JobResult]:
        """Queue ``job``; await the returned future for its :class:`JobResult` (or error).

        Must be called from a running event loop. Cancelling the future cancels the job.
        """
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        future = loop.run_in_executor(self._pool, self.run, job, cancel)

        def on_done(done: asyncio.Future[JobResult]) -> None:
            # Once detached, a cancelled future (the event loop shutting down) kills nothing.
            if done.cancelled() and not self._detached.is_set():
                cancel.set()

        future.add_done_callback(on_done)
        return future

    def probe(self, target: Target) -> asyncio.Future[HostFacts]:
        """Queue a preflight of ``target`` (see :func:`capi_remote.ssh.probe.probe`)."""
        return asyncio.get_running_loop().run_in_executor(self._pool, self._probe, target)

    def _probe(self, target: Target) -> HostFacts:
        ticket = self._admission.ticket(
            target.tenant, functools.partial(self._check_detached, target)
        )
        try:
            return probe(target, self.settings, connector=self._connector, ticket=ticket)
        finally:
            ticket.release()

    def run(self, job: Job, cancel: threading.Event | None = None) -> JobResult:
        """Run ``job`` in the calling thread (what the pool's workers do)."""
        cancel = cancel or threading.Event()
        endpoint = job.target.endpoint
        with self._lock:
            if endpoint in self._busy:
                raise HostLocked(job.target.display, f"{self.identity} (another job)", None)
            self._busy.add(endpoint)
            self._cancels.add(cancel)
        started = time.monotonic()

        def stop() -> None:
            if cancel.is_set():
                raise JobCancelled(f"job on {job.target.display} was cancelled")
            self._check_detached(job.target)

        ticket = self._admission.ticket(job.target.tenant, stop)
        try:
            stop()
            connection = self._connector.connect(job.target, ticket)
            try:
                result = execute(
                    job,
                    connection,
                    self.settings,
                    owner=self.identity,
                    cancel=cancel,
                    started=started,
                    detach=self._detached,
                )
                if job.gather_facts and result.facts is None:  # not in the finish call
                    result = attrs.evolve(result, facts=self._facts(connection, job.target))
                return result
            finally:
                connection.close()
        finally:
            ticket.release()
            with self._lock:
                self._busy.discard(endpoint)
                self._cancels.discard(cancel)

    def _check_detached(self, target: Target) -> None:
        if self._detached.is_set():
            raise JobDetached(target.display)

    def _facts(self, connection: Connection, target: Target) -> HostFacts | None:
        try:
            return gather_facts(connection, target, self.settings)
        except SSHError as error:
            log.info("could not gather facts after the job", host=target.display, error=str(error))
            return None

    def detach(self) -> None:
        """Stop accepting work and leave running steps to the next controller; returns at once.

        Queued jobs are cancelled. Running jobs stop waiting within a poll interval (~0.2 s) and
        fail with :class:`JobDetached`: their steps are not killed, their markers stay, and their
        host locks are released (a bounded, best-effort call), so a successor of any identity
        resumes at once and awaits the still-running steps. A short helper call in flight is let
        finish, and a job still connecting stops once its handshake ends. The workers then exit,
        so they do not hold up interpreter exit; ``close()`` afterwards waits for them and kills
        nothing.
        """
        self._detached.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def close(self, *, cancel_jobs: bool = True) -> None:
        """Stop accepting work; cancel running jobs (their steps are killed) and wait for them.

        After :meth:`detach`, only waits for the workers to exit.
        """
        if cancel_jobs and not self._detached.is_set():
            with self._lock:
                for cancel in self._cancels:
                    cancel.set()
        self._pool.shutdown(wait=True, cancel_futures=cancel_jobs)

    async def aclose(self) -> None:
        """:meth:`close` without blocking the event loop while jobs wind down."""
        await asyncio.to_thread(self.close)

    def __enter__(self) -> Runner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
