"""The default backend: the controller's own SSH runner runs the bootstrap (``HostJobs`` keeps
the job per machine UID off the reconcile path, ``HostAccess`` turns the spec into a target).

A job lives in this process only: after a controller restart there is none, and the flow resumes
the attempt its status says was running (the host's markers make that exactly-once).

A trust-on-first-use host is pinned before its first job sends anything
(:meth:`HostAccess.pin_first_use`): a failed attempt does not make the next one trust anew."""

from __future__ import annotations

from typing import Any

from capi_remote import KubeClient
from capi_remote.bootstrap import BootstrapPlan
from reconcilers import conditions as c
from reconcilers.hostjobs import HostJobs, JobState, Outcome
from reconcilers.remote import HostAccess
from reconcilers.remotemachine.backend import (
    Finished,
    Machine,
    Observation,
    Running,
    Started,
)
from reconcilers.remotemachine.pins import record_pins

JSONDict = dict[str, Any]


class RunnerBackend:
    failed_reason: str | None = None
    keeps_attempts = False

    def __init__(self, access: HostAccess, jobs: HostJobs, client: KubeClient) -> None:
        self.access = access
        self.jobs = jobs
        self.client = client
        self.lock_stale_after: int | None = access.runner.settings.lock_stale_after

    async def observe(self, machine: Machine) -> Observation:
        job = self.jobs.state(machine.uid)
        if job is None or job.kind != "provision":
            return None
        if job.outcome is not None:
            return Finished(
                job.attempt,
                job.generation,
                job.outcome,
                steps_total=job.steps_total,
                steps_done=job.steps_done,
            )
        if not job.step:
            return Running(
                job.attempt,
                c.PROVISIONING,
                _connecting(job.attempt, machine),
                steps_done=0,
                steps_total=job.steps_total,
            )
        return Running(
            job.attempt,
            c.PROVISIONING,
            f"step {job.steps_done + 1} of {job.steps_total}: {job.step}",
            steps_done=job.steps_done,
            steps_total=job.steps_total,
        )

    async def start(
        self, machine: Machine, plan: BootstrapPlan, attempt: int, provider_id: str
    ) -> Started:
        target = self.access.target(machine.rm)
        deadlines = machine.deadlines
        uid, jobs, adopt = machine.uid, self.jobs, machine.adopts

        async def run(job: JobState) -> Outcome:
            async def record(seen: dict[str, str]) -> dict[str, str]:
                return await self.record_pins(machine, seen)

            pinned = await self.access.pin_first_use(target, record)
            if isinstance(pinned, Outcome):
                return pinned
            return await self.access.provision(pinned, plan, uid, job, jobs, deadlines, adopt=adopt)

        job = jobs.start(uid, "provision", machine.request, run)
        job.attempt, job.generation = attempt, machine.generation
        job.steps_total = job.steps_total or len(plan.steps)
        return Started(
            c.PROVISIONING,
            _connecting(attempt, machine),
            f"bootstrapping {machine.address} ({len(plan.steps)} steps, attempt {attempt})",
        )

    async def record_pins(self, machine: Machine, seen: dict[str, str]) -> dict[str, str]:
        return await record_pins(self.client, machine, seen)

    async def settle(self, machine: Machine, finished: Finished) -> None:
        self.jobs.forget(machine.uid)

    async def cancel(self, rm: JSONDict) -> float | None:
        await self.retire(rm)
        return None

    async def retire(self, rm: JSONDict) -> None:
        """Stop the machine's provisioning job, if one runs here."""
        uid = rm["metadata"]["uid"]
        job = self.jobs.state(uid)
        if job is not None and job.kind == "provision":
            await self.jobs.cancel(uid)
            self.jobs.forget(uid)


def _connecting(attempt: int, machine: Machine) -> str:
    return f"attempt {attempt} of {machine.max_attempts}: connecting to {machine.address}"
