"""Leader election on a coordination.k8s.io Lease, with client-go's timing and release on exit.

Invariants:
- At most one elector holds the lease at a time, as far as the API server's optimistic
  concurrency (resourceVersion preconditions) can tell.
- Expiry is judged on the local monotonic clock from when this elector last *observed* a change
  of the record, never by comparing the holder's timestamps with our wall clock (clock skew).
- A leader that cannot renew within ``renew_deadline`` stops leading: its work is cancelled before
  another candidate can acquire the lease (renew_deadline < lease_duration).
- On a clean exit the leader releases the lease (empty holder, 1 s duration) so a successor takes
  over at once instead of waiting for expiry.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable, Coroutine
from typing import Any

import attrs
import structlog

from capi_remote.kube.client import ApiError, KubeClient, Resource, TransportError

LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
#: What a lease call may fail with when the API server is unreachable, restarting or refusing:
#: each only means "this attempt failed".
_TRANSIENT = (ApiError, TransportError)

_log = structlog.get_logger("capi_remote.leader")


def _must_be_ordered(instance: LeaderElectionSettings, *_: object) -> None:
    if not instance.retry_period < instance.renew_deadline < instance.lease_duration:
        raise ValueError("leader election needs retry_period < renew_deadline < lease_duration")


@attrs.frozen
class LeaderElectionSettings:
    """client-go defaults: 15 s lease, 10 s renew deadline, 2 s retry."""

    namespace: str
    name: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = attrs.field(default=2.0, validator=_must_be_ordered)


def _micro_time(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeadershipLost(RuntimeError):
    """The lease could not be renewed in time; the leader's work was cancelled."""


class LeaderElector:
    """Acquire the lease, run the leader's work while renewing, release on exit."""

    def __init__(self, client: KubeClient, settings: LeaderElectionSettings) -> None:
        self.client = client
        self.settings = settings
        self.is_leader = False
        self._observed: dict[str, Any] | None = None
        self._observed_at = 0.0
        self._log = _log.bind(lease=f"{settings.namespace}/{settings.name}", id=settings.identity)

    async def run(self, lead: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Block until leading, then run ``lead()``. Returns when ``lead`` returns; raises
        :class:`LeadershipLost` if renewal fails. Cancelling releases the lease."""
        loop = asyncio.get_running_loop()
        # Polling is the protocol: the lease has no watchable "released" signal worth trusting.
        while not await self._try_acquire_or_renew():  # noqa: ASYNC110
            await asyncio.sleep(self.settings.retry_period)
        self.is_leader = True
        self._log.info("became leader")
        work = asyncio.create_task(lead())
        try:
            last_renewed = loop.time()
            while not work.done():
                done, _ = await asyncio.wait({work}, timeout=self.settings.retry_period)
                if done:
                    break
                if await self._try_acquire_or_renew():
                    last_renewed = loop.time()
                elif loop.time() - last_renewed > self.settings.renew_deadline:
                    self._log.error("failed to renew the lease in time, stopping leading")
                    raise LeadershipLost(f"lease {self.settings.name} not renewed in time")
            await work
        finally:
            self.is_leader = False
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
            await self._release()

    async def _try_acquire_or_renew(self) -> bool:
        s = self.settings
        now = _micro_time(datetime.datetime.now(datetime.UTC))
        loop = asyncio.get_running_loop()
        try:
            lease = await self.client.get(LEASES, s.namespace, s.name)
        except ApiError as error:
            if not error.not_found:
                self._log.warning("reading the lease failed", error=str(error))
                return False
            return await self._create(now)
        except _TRANSIENT as error:
            self._log.warning("reading the lease failed", error=f"{type(error).__name__}: {error}")
            return False
        spec = lease.get("spec", {})
        if self._observed != spec:
            self._observed, self._observed_at = spec, loop.time()
        holder = spec.get("holderIdentity") or ""
        duration = float(spec.get("leaseDurationSeconds") or s.lease_duration)
        if holder and holder != s.identity and loop.time() < self._observed_at + duration:
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        new_spec = {
            "holderIdentity": s.identity,
            "leaseDurationSeconds": round(s.lease_duration),
            "renewTime": now,
            "acquireTime": spec.get("acquireTime") if holder == s.identity else now,
            "leaseTransitions": transitions if holder == s.identity else transitions + 1,
        }
        lease["spec"] = new_spec
        try:
            await self.client.replace(LEASES, lease)
        except _TRANSIENT as error:
            self._log.debug("lease update lost", error=str(error))
            return False
        self._observed, self._observed_at = new_spec, loop.time()
        return True

    async def _create(self, now: str) -> bool:
        s = self.settings
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": s.name, "namespace": s.namespace},
            "spec": {
                "holderIdentity": s.identity,
                "leaseDurationSeconds": round(s.lease_duration),
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }
        try:
            await self.client.create(LEASES, lease)
        except _TRANSIENT:
            return False
        return True

    async def _release(self) -> None:
        """Hand the lease back so the next candidate need not wait for it to expire."""
        s = self.settings
        try:
            lease = await self.client.get(LEASES, s.namespace, s.name)
            if lease.get("spec", {}).get("holderIdentity") != s.identity:
                return
            lease["spec"].update(
                holderIdentity="",
                leaseDurationSeconds=1,
                renewTime=_micro_time(datetime.datetime.now(datetime.UTC)),
            )
            await self.client.replace(LEASES, lease)
            self._log.info("released the lease")
        except _TRANSIENT as error:
            self._log.warning("could not release the lease", error=str(error))
