"""The provisionJob backend: a batch/v1 Job per attempt runs the bootstrap with ``ssh``/``scp``
(rendered by ``jobspec.py``, read back by ``jobread.py``), and what the flow records follows the
latest Job.

All its state is in the API, so a restarted controller picks up where it was: the latest live
Job says running, complete or failed; its attempt and the generation it was made for are
annotations. The Jobs informer (only Jobs carrying our machine-uid label) starts on first use, so
deployments that never use provisionJob do not watch Jobs; a Job counts for a RemoteMachine only
in that machine's own namespace and by its UID. Once an outcome is recorded the Job's Secret is
deleted; on deletion of the RemoteMachine, and as soon as its spec drops provisionJob, its Jobs
(propagation Background) and Secrets go (before the host cleanup, which stays on the
controller's runner): a Secret holding a usable private key never outlives its use.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable
from typing import Any

from capi_remote import ApiError, Informer, KubeClient
from capi_remote.api import ProvisionJob
from capi_remote.bootstrap import BootstrapPlan
from capi_remote.resources import JOBS, PODS, SECRETS
from capi_remote.ssh import jobscript
from capi_remote.ssh.auth import Privilege
from reconcilers import conditions as c
from reconcilers.common import CLUSTER_NAME_LABEL, unix_time
from reconcilers.hostjobs import Outcome
from reconcilers.remote import HostAccess, InvalidSpec
from reconcilers.remotemachine import jobread as jr
from reconcilers.remotemachine.backend import (
    Finished,
    Machine,
    NotReady,
    Observation,
    Running,
    Started,
)
from reconcilers.remotemachine.jobspec import (
    MACHINE_UID_LABEL,
    JobInputs,
    container,
    host_key_material,
    host_key_policy_material,
    job_name,
    openssh_key,
    render_job,
    render_secret,
)
from reconcilers.remotemachine.jobtemplate import InvalidProvisionJob
from reconcilers.remotemachine.machinestatus import ready_reason
from reconcilers.remotemachine.pins import record_pins

JSONDict = dict[str, Any]
JOB_INDEX = "machine-uid"
SYNC_TIMEOUT = 30.0
#: On deletion, how long the host cleanup waits for the Jobs' Pods to be gone.
POD_GONE_TIMEOUT = 60.0


def machine_key(job: JSONDict) -> list[str]:
    """``namespace/machine-uid`` of a Job: a Job speaks only for a machine of its namespace."""
    meta = job["metadata"]
    uid = (meta.get("labels") or {}).get(MACHINE_UID_LABEL)
    return [f"{meta.get('namespace', '')}/{uid}"] if uid else []


class JobBackend:
    failed_reason: str | None = c.PROVISIONING_JOB_FAILED
    lock_stale_after: int | None = None
    keeps_attempts = True

    def __init__(
        self, client: KubeClient, access: HostAccess, watch_jobs: Callable[[], Informer]
    ) -> None:
        self.client = client
        self.access = access
        self._watch_jobs = watch_jobs
        self._informer: Informer | None = None
        self._pods: dict[str, jr.PodResult] = {}  # by Job UID, for finished Jobs

    async def _jobs(self, namespace: str, uid: str) -> list[JSONDict] | None:
        """This machine's Jobs, oldest attempt first; None until the informer has synced."""
        if self._informer is None:
            self._informer = self._watch_jobs()
            self._informer.store.add_indexer(JOB_INDEX, machine_key)
        try:
            await asyncio.wait_for(self._informer.synced.wait(), SYNC_TIMEOUT)
        except TimeoutError:
            return None
        jobs = self._informer.store.by_index(JOB_INDEX, f"{namespace}/{uid}")
        return sorted(jobs, key=lambda job: (jr.attempt_of(job), job["metadata"]["name"]))

    async def _live(self, machine: Machine) -> list[JSONDict] | None:
        jobs = await self._jobs(machine.namespace, machine.uid)
        if jobs is None:
            return None
        return [job for job in jobs if not job["metadata"].get("deletionTimestamp")]

    # -- the backend protocol ------------------------------------------------------------------

    async def observe(self, machine: Machine) -> Observation:
        live = await self._live(machine)
        if live is None:
            return NotReady(5.0)
        if not live:
            return None
        job = live[-1]
        attempt, name = jr.attempt_of(job), job["metadata"]["name"]
        phase = jr.job_phase(job)
        if phase == "running":
            active = int((job.get("status") or {}).get("active") or 0)
            state = "is running" if active else "is waiting for its Pod"
            message = f"Job {name} {state} (attempt {attempt} of {machine.max_attempts})"
            return Running(
                attempt, c.PROVISIONING_JOB_RUNNING, message, steps_total=jr.steps_of(job)
            )
        pod = await self._pod_result(machine, job)
        generation = jr.generation_of(job)
        if phase == "failed":
            view = jr.describe_failure(job, pod)
            accepted = jobscript.accepted_fingerprint(pod.message)
            outcome = Outcome(
                False,
                view.cause,
                view.message,
                view.retryable,
                view.output_tail,
                details={"fingerprint": accepted} if accepted else {},
            )
            return Finished(
                attempt, generation, outcome, jr.finished_at(job), steps_total=jr.steps_of(job)
            )
        success = self._success(machine, name, pod)
        return Finished(attempt, generation, success, steps_total=jr.steps_of(job))

    @staticmethod
    def _success(machine: Machine, name: str, pod: jr.PodResult) -> Outcome:
        report = jobscript.parse_report(pod.message)
        details: JSONDict = {}
        if report is not None:
            details["addresses"] = jr.addresses_from(machine.address, report)
            if report.fingerprint:
                details["fingerprint"] = report.fingerprint
        if report is not None and report.already_bootstrapped:
            message = f"{machine.address} was already bootstrapped; nothing ran (Job {name})"
            return Outcome(True, c.ALREADY_BOOTSTRAPPED, message, details=details)
        message = f"{machine.address} bootstrapped by Job {name}"
        return Outcome(True, c.PROVISIONED, message, details=details)

    async def start(
        self, machine: Machine, plan: BootstrapPlan, attempt: int, provider_id: str
    ) -> Started:
        inputs = self.inputs(machine, plan, attempt)
        for old in await self._live(machine) or []:
            await self._delete_job(old)
        secret = render_secret(inputs)
        job = render_job(inputs, secret["metadata"]["name"])
        await self._create(SECRETS, secret)
        created = await self._create(JOBS, job)
        event = None
        if created:
            event = (
                f"created Job {inputs.job_name} to bootstrap {inputs.address}"
                f" ({len(plan.steps)} steps, attempt {attempt})"
            )
        return Started(
            c.PROVISIONING_JOB_RUNNING,
            f"created Job {inputs.job_name} (attempt {attempt} of {machine.max_attempts})",
            event,
        )

    async def settle(self, machine: Machine, finished: Finished) -> None:
        for job in await self._live(machine) or []:
            if jr.attempt_of(job) == finished.attempt:
                await self._delete_secrets(job)

    async def record_pins(self, machine: Machine, seen: dict[str, str]) -> dict[str, str]:
        """A Job's image is its author's, and so is the key it reports: it may pin the
        RemoteMachine (whose author could set the pin anyway), never a pooled host, whose key
        only the pool's own probe pins."""
        if machine.pooled is not None:
            return {}
        return await record_pins(self.client, machine, seen)

    async def cancel(self, rm: JSONDict) -> float | None:
        """Delete the machine's Jobs (their Pods in the background) and their Secrets.

        Returns how long to wait before the host cleanup may start: while a Job's Pod still
        exists its ssh session may hold the host lock, so the cleanup waits for the Pods to go,
        for at most POD_GONE_TIMEOUT after the deletion began. None: go ahead.
        """
        if not self._may_have_jobs(rm):
            return None
        await self._remove_all(rm)
        meta = rm["metadata"]
        started = unix_time(meta.get("deletionTimestamp"))
        if started is not None and time.time() - started > POD_GONE_TIMEOUT:
            return None
        try:
            pods = await self.client.list(
                PODS, meta["namespace"], label_selector=f"{MACHINE_UID_LABEL}={meta['uid']}"
            )
        except ApiError:
            return None
        return 2.0 if pods.get("items") else None

    async def retire(self, rm: JSONDict) -> None:
        """The machine is provisioned by the runner now (its spec dropped provisionJob): its
        Jobs stop and their Secrets (the private key without its passphrase, the bootstrap
        data) go at once, not with the machine."""
        if self._may_have_jobs(rm):
            await self._remove_all(rm)

    def _may_have_jobs(self, rm: JSONDict) -> bool:
        """Whether the machine may have Jobs or their Secrets: its spec asks for Jobs, its status
        (written by the controller only) says a Job ran or failed last, or the Jobs watch knows
        one. Machines that never used Jobs cost no API request."""
        if rm["spec"].get("provisionJob"):
            return True
        if ready_reason(rm.get("status") or {}) in (
            c.PROVISIONING_JOB_RUNNING,
            c.PROVISIONING_JOB_FAILED,
        ):
            return True
        meta = rm["metadata"]
        known = self._informer.store if self._informer is not None else None
        return known is not None and bool(
            known.by_index(JOB_INDEX, f"{meta['namespace']}/{meta['uid']}")
        )

    async def _remove_all(self, rm: JSONDict) -> None:
        """Delete the machine's Jobs and every Secret made for them, also one whose Job is gone
        or was never created (found by the machine-uid label and owned by this machine)."""
        meta = rm["metadata"]
        for job in await self._jobs(meta["namespace"], meta["uid"]) or []:
            if not job["metadata"].get("deletionTimestamp"):
                await self._delete_job(job)
            else:
                await self._delete_secrets(job)
        left = await self.client.list(
            SECRETS, meta["namespace"], label_selector=f"{MACHINE_UID_LABEL}={meta['uid']}"
        )
        for secret in left.get("items") or []:
            owners = secret["metadata"].get("ownerReferences") or []
            if any(o.get("uid") == meta["uid"] and o.get("controller") for o in owners):
                await self.client.delete(SECRETS, meta["namespace"], secret["metadata"]["name"])

    # -- inputs --------------------------------------------------------------------------------

    def inputs(self, machine: Machine, plan: BootstrapPlan, attempt: int) -> JobInputs:
        """Resolve Secrets and settings; raises MissingSecret, InvalidCredentials,
        InvalidProvisionJob or InvalidSpec."""
        rm = machine.rm
        meta = rm["metadata"]
        spec = rm["spec"]
        job_spec = machine.spec.provision_job or ProvisionJob()
        if spec.get("bastion"):
            raise InvalidProvisionJob(
                "provisionJob mode does not support a bastion: reach the host from the Job's"
                " network instead (e.g. hostNetwork on a node that can)"
            )
        if (spec.get("sshKeyRef") or {}).get("name"):
            target = self.access.target(rm)
            credentials = target.credentials
            if credentials.private_key is None:
                raise InvalidProvisionJob("provisionJob mode needs a private key in sshKeyRef")
            try:
                key: str | None = openssh_key(credentials.private_key, credentials.passphrase)
            except ValueError as invalid:
                raise InvalidSpec(c.INVALID_SSH_KEY, f"the private key: {invalid}") from None
            mode, known, fingerprints = host_key_material(target, self._known_hosts_text(rm))
            address, port, user = target.address, target.port, credentials.user
            privilege = Privilege.for_credentials(credentials).mode
            sudo_password = credentials.sudo_password
        else:
            # No sshKeyRef: the Job's own commands log in (tsh, sft, an ssh with its own config,
            # as in k0smotron's Teleport and Okta ASA guides); the Secret carries no key.
            own = self.access.own_login(rm)
            key, mode, known, fingerprints = None, jobscript.COMMAND_VERIFIES, "", ()
            if own.host_key is not None:
                mode, known, fingerprints = host_key_policy_material(
                    own.host_key, self._known_hosts_text(rm)
                )
            address, port, user = machine.address, machine.spec.port, machine.spec.user
            privilege = Privilege.for_user(user, own.sudo_password).mode
            sudo_password = own.sudo_password
        deadlines = machine.deadlines
        settings = self.access.runner.settings
        name = job_name(meta["name"], attempt)
        script = jobscript.host_script(
            plan,
            machine_uid=meta["uid"],
            owner=f"job:{meta['namespace']}/{name}",
            settings=settings,
            step_timeout=deadlines.command,
            adopt=machine.adopts,
        )
        labels = meta.get("labels") or {}
        cluster = labels.get(CLUSTER_NAME_LABEL) or (machine.machine.get("spec") or {}).get(
            "clusterName"
        )
        template = copy.deepcopy(dict(job_spec.job_spec_template or {}))
        container(template)
        return JobInputs(
            namespace=meta["namespace"],
            machine_name=meta["name"],
            machine_uid=meta["uid"],
            generation=int(meta.get("generation") or 0),
            attempt=attempt,
            address=address,
            port=port,
            user=user,
            privilege=privilege,
            host_keys=mode,
            ssh_command=job_spec.ssh_command,
            scp_command=job_spec.scp_command,
            connect_timeout=max(1, int(deadlines.connect)),
            job_timeout=max(60, int(deadlines.job)),
            template=template,
            private_key=key,
            host_script=script,
            known_hosts=known,
            fingerprints=fingerprints,
            sudo_password=sudo_password,
            cluster_name=cluster,
            steps=len(plan.steps),
        )

    def _known_hosts_text(self, rm: JSONDict) -> str | None:
        ref = (rm["spec"].get("hostKeyPolicy") or {}).get("knownHostsRef")
        if not ref:
            return None
        source = self.access.configmaps if ref.get("kind") == "ConfigMap" else self.access.secrets
        value = source.value(
            rm["metadata"]["namespace"], ref["name"], ref.get("key") or "known_hosts"
        )
        return value.decode() if value is not None else None

    # -- API reads and writes ------------------------------------------------------------------

    async def _pod_result(self, machine: Machine, job: JSONDict) -> jr.PodResult:
        job_uid = job["metadata"].get("uid", "")
        cached = self._pods.get(job_uid)
        if cached is not None:
            return cached
        meta = job["metadata"]
        try:
            pods = await self.client.list(
                PODS,
                meta["namespace"],
                label_selector=f"batch.kubernetes.io/controller-uid={job_uid}",
            )
        except ApiError as error:
            machine.log.info("cannot read the Job's Pods", job=meta["name"], error=error.message)
            return jr.PodResult()
        result = jr.pod_result(list(pods.get("items") or []))
        if result.message or result.exit_code is not None:
            self._pods[job_uid] = result
        return result

    async def _create(self, resource: Any, obj: JSONDict) -> bool:
        """Create; False if it already exists (a retried reconcile: the names are
        deterministic, and an existing Secret of that name has this content)."""
        try:
            await self.client.create(resource, obj)
        except ApiError as error:
            if error.status == 409:
                return False
            raise
        return True

    async def _delete_job(self, job: JSONDict) -> None:
        meta = job["metadata"]
        await self.client.delete(
            JOBS, meta["namespace"], meta["name"], uid=meta.get("uid"), propagation="Background"
        )
        self._pods.pop(meta.get("uid", ""), None)
        await self._delete_secrets(job)

    async def _delete_secrets(self, job: JSONDict) -> None:
        for name in jr.secret_names(job):
            await self.client.delete(SECRETS, job["metadata"]["namespace"], name)
