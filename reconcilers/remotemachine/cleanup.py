"""Deletion of a RemoteMachine: stop its attempt, clean the host, give it back to its pool, then
drop the finalizer and everything remembered about the machine.

Our finalizer is the record that the host was touched: it is written just before the first
attempt starts (``ProvisionFlow``), never earlier, so a machine without it was never touched and
its deletion needs nothing (a pool claim it held is released by the pool reconciler), and every
deletion of a machine with it cleans the host, whatever status and memory say (a controller
restarted inside an attempt's first progress interval knows nothing else of it).

The host cleanup always runs on the controller's runner (also for provisionJob machines, after
their Jobs' Pods are gone). Failed cleanup attempts back off, so a host still busy with a
just-cancelled bootstrap step is not declared dirty within a second; after
``AttemptPolicy.cleanup_attempts`` failures the host is released anyway, with an Event.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

from structlog.typing import FilteringBoundLogger

from capi_remote import ApiError, KubeClient, Request, Result, Store
from capi_remote.resources import CAPI_GROUP, REMOTE_MACHINES
from reconcilers import conditions as c
from reconcilers.common import copy_status, mark, owner_name, unix_time
from reconcilers.hostjobs import HostJobs, JobState
from reconcilers.pool import held_host, release_held, with_host_pins
from reconcilers.remote import Deadlines, HostAccess, MissingSecret, NotYetKnown, cleanup_commands
from reconcilers.remotemachine.backend import Backend
from reconcilers.remotemachine.machinestatus import FINALIZER
from reconcilers.remotemachine.memory import MachineMemory
from reconcilers.remotemachine.policy import AttemptPolicy
from reconcilers.remotemachine.provision import NOT_YET_KNOWN_RETRY
from reconcilers.remotemachine.writer import Writer

JSONDict = dict[str, Any]
FORCE_RELEASE_ANNOTATION = "remote.infrastructure.cluster.x-k8s.io/force-release"


def _deleting_for(rm: JSONDict) -> float:
    """Seconds since the object's deletion began (0 if not deleting or unparsable)."""
    began = unix_time(rm["metadata"].get("deletionTimestamp"))
    return 0.0 if began is None else max(0.0, time.time() - began)


class Deletion:
    def __init__(
        self,
        client: KubeClient,
        writer: Writer,
        memory: MachineMemory,
        policy: AttemptPolicy,
        access: HostAccess,
        jobs: HostJobs,
        backends: Sequence[Backend],
        stores: tuple[Store, Store],  # pooled hosts, Cluster API Machines
    ) -> None:
        self.client = client
        self.writer = writer
        self.memory = memory
        self.policy = policy
        self.access = access
        self.jobs = jobs
        self.backends = backends
        self.pooled, self.capi_machines = stores

    async def run(self, log: FilteringBoundLogger, rm: JSONDict, request: Request) -> Result:
        meta = rm["metadata"]
        uid = meta["uid"]
        if FINALIZER not in meta.get("finalizers", []):
            return Result()
        for backend in self.backends:
            wait = await backend.cancel(rm)
            if wait is not None:
                return Result(requeue_after=wait)
        remembered = self.memory[uid]
        if not remembered.cleanup_attempts:
            remembered.retry_at = 0.0  # a bootstrap's backoff does not delay the cleanup
        forced = FORCE_RELEASE_ANNOTATION in meta.get("annotations", {})
        if rm["spec"].get("address") and not forced:
            pending = await self._cleanup(rm, request, self.jobs.state(uid))
            if pending is not None:
                return pending
        await release_held(self.client, self.pooled, rm, log)
        desired = copy.deepcopy(rm)
        desired["metadata"]["finalizers"] = [f for f in meta["finalizers"] if f != FINALIZER]
        try:
            await self.writer.object(rm, desired)
        except ApiError as error:
            if not error.not_found:
                raise
        self.memory.forget(uid)
        self.writer.forget(uid)
        self.writer.event(rm, "Normal", "Released", "host cleaned up and released")
        return Result()

    async def _still_holds_host(self, rm: JSONDict) -> bool:
        """Ask the API server, not the cache, before a cleanup: a cached copy can still show the
        finalizer of a machine whose host was already cleaned, released and maybe claimed and
        bootstrapped by the next machine, which a second cleanup would wipe."""
        meta = rm["metadata"]
        try:
            fresh = await self.client.get(REMOTE_MACHINES, meta["namespace"], meta["name"])
        except ApiError as error:
            if error.not_found:
                return False
            raise
        return fresh["metadata"].get("uid") == meta["uid"] and FINALIZER in (
            fresh["metadata"].get("finalizers") or []
        )

    async def _cleanup(self, rm: JSONDict, request: Request, job: JobState | None) -> Result | None:
        """Run the cleanup job. None once it succeeded or was given up on (with a reason);
        otherwise the Result to return meanwhile."""
        uid = rm["metadata"]["uid"]
        status = copy_status(rm)
        wait = self.memory.wait(uid)
        if job is None and wait > 0:
            return Result(requeue_after=wait)
        if job is None:
            return await self._start(rm, request, status)
        if job.running:
            return Result()
        assert job.outcome is not None
        self.jobs.forget(uid)
        if job.outcome.ok:
            return None
        policy = self.policy
        if job.outcome.reason == c.HOST_LOCKED and _deleting_for(rm) < policy.cleanup_lock_patience:
            # A live job still holds the host (e.g. a cancelled bootstrap's step, or a
            # provisionJob Pod's session winding down): wait for it without spending an attempt.
            message = f"waiting for the host to be free: {job.outcome.message}"
            mark(rm, status, c.READY, False, c.DELETING, message)
            await self.writer.status(rm, status)
            return Result(requeue_after=policy.lock_retry)
        remembered = self.memory[uid]
        remembered.cleanup_attempts += 1
        attempts = remembered.cleanup_attempts
        message = (
            f"cleanup attempt {attempts} of {policy.cleanup_attempts} failed: {job.outcome.message}"
        )
        self.writer.event(rm, "Warning", c.CLEANUP_FAILED, message)
        if attempts >= policy.cleanup_attempts:
            return None
        delay = policy.backoff(attempts)
        self.memory.retry_in(uid, delay)
        mark(rm, status, c.READY, False, c.CLEANUP_FAILED, message)
        await self.writer.status(rm, status)
        return Result(requeue_after=delay)

    async def _start(self, rm: JSONDict, request: Request, status: JSONDict) -> Result | None:
        uid = rm["metadata"]["uid"]
        if not await self._still_holds_host(rm):
            return Result()  # a stale cache: the host was cleaned and released already
        try:
            target = self.access.target(with_host_pins(rm, held_host(self.pooled, rm)))
        except NotYetKnown:
            # After a restart the key's watch may not have listed yet: absent is not known,
            # and skipping the cleanup would hand a dirty host to the next machine.
            return Result(requeue_after=NOT_YET_KNOWN_RETRY)
        except (MissingSecret, ValueError) as missing:
            self.writer.event(rm, "Warning", c.CLEANUP_FAILED, f"skipping host cleanup: {missing}")
            return None
        commands = cleanup_commands(rm, self._bootstrap_kind(rm))
        deadlines = Deadlines.of(rm["spec"])
        self.jobs.start(
            uid,
            "cleanup",
            request,
            lambda job: self.access.cleanup(target, commands, uid, job, deadlines),
        )
        mark(rm, status, c.READY, False, c.DELETING, "cleaning up the host")
        status["phase"] = "Deleting"
        await self.writer.status(rm, status)
        return Result()

    def _bootstrap_kind(self, rm: JSONDict) -> str:
        name = owner_name(rm, CAPI_GROUP, "Machine")
        machine = self.capi_machines.get_by_name(rm["metadata"]["namespace"], name or "")
        ref = ((machine or {}).get("spec", {}).get("bootstrap") or {}).get("configRef") or {}
        return str(ref.get("kind") or "")
