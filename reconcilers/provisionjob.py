"""provisionJob mode: a batch/v1 Job, not the controller's SSH runner, runs a RemoteMachine's
bootstrap with ``ssh``/``scp``, and the RemoteMachine's status follows that Job.

Level-triggered, with all state in the API (a restarted controller picks up where it was):

- One Job per attempt, named ``<machine>-provision-<attempt>`` and owned by the RemoteMachine;
  its attempt and the RemoteMachine generation it was made for are annotations. Its inputs live
  in an immutable Secret (``<machine>-provision-<attempt>-<content hash>``, also owned by the
  RemoteMachine) mounted into the Job's container: the SSH private key, the host key material,
  the sudo password if any, and the bootstrap as one host-side script
  (:func:`capi_remote.ssh.jobscript.host_script`) that keeps the runner's exactly-once markers.
  The Job's spec holds no secret: no key, password or bootstrap data in its command, arguments
  or environment.
- The latest Job says what to do: running → ``ProvisioningJobRunning``; Complete → provisioned
  exactly as after a runner job (providerID, addresses, conditions); Failed → the cause read from
  the Job's Failed condition and its Pod's termination message (``FallbackToLogsOnError``: the
  output's tail), then, like the runner, a new attempt after the same backoff up to
  ``spec.maxAttempts`` while the cause is retryable, else ``ProvisioningJobFailed`` for good (a
  new generation of the spec brings a fresh budget).
- The Jobs informer (only Jobs carrying our machine-uid label) starts on first use, so
  deployments that never use provisionJob do not watch Jobs; each Job event wakes its owner.
- Once a Job has finished and its outcome is recorded, its Secret is deleted; on deletion of the
  RemoteMachine, its Jobs (propagation Background) and Secrets go before the host cleanup, which
  stays on the controller's runner.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from capi_remote import (
    ApiError,
    Controller,
    EventRecorder,
    Informer,
    Provider,
    Request,
    Result,
    Selector,
    owner_of_kind,
    patch_status,
)
from capi_remote.api import GROUP
from capi_remote.bootstrap import BootstrapParseError, BootstrapPlan
from capi_remote.resources import INFRA_VERSION, JOBS, PODS, REMOTE_MACHINES, SECRETS
from capi_remote.ssh import HostAddress, HostFacts, InvalidCredentials, Target, jobscript
from capi_remote.ssh.auth import Privilege, load_private_key
from reconcilers import conditions as c
from reconcilers.common import CLUSTER_NAME_LABEL, mark, unix_time
from reconcilers.hostjobs import JobState, Outcome
from reconcilers.remote import Deadlines, HostAccess, MissingSecret, machine_addresses

JSONDict = dict[str, Any]

MACHINE_UID_LABEL = "remote.infrastructure.cluster.x-k8s.io/machine-uid"
ATTEMPT_ANNOTATION = "remote.infrastructure.cluster.x-k8s.io/attempt"
GENERATION_ANNOTATION = "remote.infrastructure.cluster.x-k8s.io/generation"
CONTAINER_NAME = "provision"
VOLUME_NAME = "capi-remote-provision"
JOB_INDEX = "machine-uid"
DEFAULT_MAX_ATTEMPTS = 5
SYNC_TIMEOUT = 30.0
#: On deletion, how long the host cleanup waits for the Jobs' Pods to be gone.
POD_GONE_TIMEOUT = 60.0
#: The Job's Secret volume: readable by root or the pod's fsGroup only (the container copies
#: the key to a private file: ssh refuses group-readable keys).
SECRET_MODE = 0o440

_log = structlog.get_logger("capi_remote.provisionjob")

PlanFunc = Callable[[JSONDict, JSONDict, JSONDict, str], BootstrapPlan]
RecordFunc = Callable[[JSONDict, JSONDict, JobState, Request], Awaitable[Result]]


class InvalidProvisionJob(ValueError):
    """spec.provisionJob (or what it needs from the rest of the spec) cannot work."""


def backoff(attempts: int) -> float:
    """Seconds before the next attempt: the runner path's schedule (10 s doubling, at most 5 m)."""
    return float(min(300, 10 * 2 ** max(0, attempts - 1)))


# -- names -------------------------------------------------------------------------------------


def _base(name: str) -> str:
    """A prefix of at most 40 characters that stays unique for long names."""
    if len(name) <= 40:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    return f"{name[:33].rstrip('-.')}-{digest}"


def job_name(rm_name: str, attempt: int) -> str:
    """Deterministic: ``<machine>-provision-<attempt>`` (a valid label value, ≤ 63 chars)."""
    return f"{_base(rm_name)}-provision-{attempt}"


# -- inputs ------------------------------------------------------------------------------------


@attrs.frozen
class JobInputs:
    """Everything the Job and its Secret are made from (secrets stay out of ``repr``)."""

    namespace: str
    machine_name: str
    machine_uid: str
    generation: int
    attempt: int
    address: str
    port: int
    user: str
    privilege: str  # root | sudo | sudo-password
    host_keys: str  # known-hosts | pinned | trust-on-first-use | insecure
    ssh_command: str
    scp_command: str
    connect_timeout: int
    job_timeout: int
    template: JSONDict = attrs.field(repr=False)
    private_key: str = attrs.field(repr=False)
    host_script: bytes = attrs.field(repr=False)
    known_hosts: str = attrs.field(default="", repr=False)
    fingerprints: tuple[str, ...] = ()
    sudo_password: str | None = attrs.field(default=None, repr=False)
    cluster_name: str | None = None

    @property
    def job_name(self) -> str:
        return job_name(self.machine_name, self.attempt)

    def owner_reference(self) -> JSONDict:
        return {
            "apiVersion": f"{GROUP}/{INFRA_VERSION}",
            "kind": "RemoteMachine",
            "name": self.machine_name,
            "uid": self.machine_uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def _openssh_key(text: str, passphrase: str | None) -> str:
    """The private key as unencrypted OpenSSH text: BatchMode ssh cannot ask for a passphrase.
    Raises InvalidCredentials with the runner's message when it cannot be read."""
    load_private_key(text, passphrase)  # the runner's checks and messages
    data = text.encode()
    password = passphrase.encode() if passphrase else None
    key: PrivateKeyTypes
    try:
        key = serialization.load_ssh_private_key(data, password=password)
    except ValueError:
        key = serialization.load_pem_private_key(data, password=password)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()


def host_key_material(
    target: Target, known_hosts_text: str | None
) -> tuple[str, str, tuple[str, ...]]:
    """``(mode, known_hosts, fingerprints)`` for the container from the runner's policy."""
    policy = target.host_key
    if policy.mode == "insecure":
        return "insecure", "", ()
    if policy.mode == "pinned" or (policy.mode == "trust_on_first_use" and policy.fingerprints):
        return "pinned", "", policy.fingerprints
    if policy.mode == "trust_on_first_use":
        return "trust-on-first-use", "", ()
    return "known-hosts", known_hosts_text or "", ()


def _container(template: JSONDict) -> JSONDict:
    containers = ((template.get("spec") or {}).get("template") or {}).get("spec", {}).get(
        "containers"
    ) or []
    if not containers:
        raise InvalidProvisionJob(
            "spec.provisionJob.jobSpecTemplate needs a container with an image that has sh,"
            " ssh and scp (spec.template.spec.containers)"
        )
    chosen = next((x for x in containers if x.get("name") == CONTAINER_NAME), containers[0])
    if not chosen.get("image"):
        raise InvalidProvisionJob(
            f"container {chosen.get('name') or CONTAINER_NAME!r} of"
            " spec.provisionJob.jobSpecTemplate has no image"
        )
    return dict(chosen)


def secret_data(inputs: JobInputs) -> dict[str, bytes]:
    data = {
        jobscript.KEY_PRIVATE_KEY: inputs.private_key.encode(),
        jobscript.KEY_KNOWN_HOSTS: inputs.known_hosts.encode(),
        jobscript.KEY_FINGERPRINTS: "".join(f"{fp}\n" for fp in inputs.fingerprints).encode(),
        jobscript.KEY_HOST_SCRIPT: inputs.host_script,
    }
    if inputs.sudo_password is not None:
        data[jobscript.KEY_SUDO_PASSWORD] = inputs.sudo_password.encode() + b"\n"
    return data


def _labels(inputs: JobInputs, extra: JSONDict | None = None) -> dict[str, str]:
    labels = {str(k): str(v) for k, v in (extra or {}).items()}
    labels[MACHINE_UID_LABEL] = inputs.machine_uid
    if inputs.cluster_name:
        labels[CLUSTER_NAME_LABEL] = inputs.cluster_name
    return labels


def render_secret(inputs: JobInputs) -> JSONDict:
    """The immutable Secret the Job mounts; its name carries a hash of its content."""
    data = secret_data(inputs)
    digest = hashlib.sha256()
    for key in sorted(data):
        digest.update(key.encode() + b"\0" + hashlib.sha256(data[key]).digest())
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": f"{inputs.job_name}-{digest.hexdigest()[:8]}",
            "namespace": inputs.namespace,
            "labels": _labels(inputs),
            "ownerReferences": [inputs.owner_reference()],
        },
        "type": "Opaque",
        "immutable": True,
        "data": {k: base64.b64encode(v).decode() for k, v in sorted(data.items())},
    }


def _env(inputs: JobInputs) -> list[JSONDict]:
    """Plain, non-secret settings of the container script."""
    values = {
        "CAPI_REMOTE_ADDRESS": inputs.address,
        "CAPI_REMOTE_PORT": str(inputs.port),
        "CAPI_REMOTE_USER": inputs.user,
        "CAPI_REMOTE_PRIVILEGE": inputs.privilege,
        "CAPI_REMOTE_HOST_KEYS": inputs.host_keys,
        "CAPI_REMOTE_SSH": inputs.ssh_command,
        "CAPI_REMOTE_SCP": inputs.scp_command,
        "CAPI_REMOTE_CONNECT_TIMEOUT": str(inputs.connect_timeout),
        "CAPI_REMOTE_MACHINE_UID": inputs.machine_uid,
    }
    return [{"name": k, "value": v} for k, v in values.items()]


def render_job(inputs: JobInputs, secret_name: str) -> JSONDict:
    """The Job: the user's jobSpecTemplate, with our container command, Secret volume, owner,
    labels and bounds. Raises InvalidProvisionJob when the template has no usable container."""
    template = copy.deepcopy(inputs.template)
    chosen = _container(template)
    meta = template.get("metadata") or {}
    spec: JSONDict = copy.deepcopy(template.get("spec") or {})
    # The Job object is what the controller reads the outcome from: it must not vanish by TTL,
    # and the Job controller picks its own selector.
    for field in ("ttlSecondsAfterFinished", "selector", "manualSelector", "suspend"):
        spec.pop(field, None)
    spec.setdefault("backoffLimit", 0)  # attempts are the controller's, like the runner's
    spec.setdefault("activeDeadlineSeconds", inputs.job_timeout)
    pod_template = spec.setdefault("template", {})
    pod_meta = pod_template.setdefault("metadata", {})
    pod_meta["labels"] = {**(pod_meta.get("labels") or {}), MACHINE_UID_LABEL: inputs.machine_uid}
    pod_spec = pod_template.setdefault("spec", {})
    if pod_spec.get("restartPolicy") not in ("Never", "OnFailure"):
        pod_spec["restartPolicy"] = "Never"
    pod_spec.setdefault("automountServiceAccountToken", False)
    volumes = [v for v in pod_spec.get("volumes") or [] if v.get("name") != VOLUME_NAME]
    volumes.append(
        {
            "name": VOLUME_NAME,
            "secret": {"secretName": secret_name, "defaultMode": SECRET_MODE},
        }
    )
    pod_spec["volumes"] = volumes
    ours = {k: v for k, v in chosen.items() if k not in ("command", "args")}
    ours["name"] = chosen.get("name") or CONTAINER_NAME
    ours["command"] = ["/bin/sh", "-c", jobscript.CONTAINER_SCRIPT, "capi-remote-provision"]
    env = [
        e for e in chosen.get("env") or [] if not str(e.get("name", "")).startswith("CAPI_REMOTE_")
    ]
    ours["env"] = env + _env(inputs)
    mounts = [m for m in chosen.get("volumeMounts") or [] if m.get("name") != VOLUME_NAME]
    mounts.append({"name": VOLUME_NAME, "mountPath": jobscript.SECRET_MOUNT, "readOnly": True})
    ours["volumeMounts"] = mounts
    ours["terminationMessagePath"] = "/dev/termination-log"
    ours["terminationMessagePolicy"] = "FallbackToLogsOnError"
    pod_spec["containers"] = [
        ours if (x.get("name") or CONTAINER_NAME) == ours["name"] else x
        for x in pod_spec.get("containers") or []
    ]
    annotations = {str(k): str(v) for k, v in (meta.get("annotations") or {}).items()}
    annotations[ATTEMPT_ANNOTATION] = str(inputs.attempt)
    annotations[GENERATION_ANNOTATION] = str(inputs.generation)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": inputs.job_name,
            "namespace": inputs.namespace,
            "labels": _labels(inputs, meta.get("labels")),
            "annotations": annotations,
            "ownerReferences": [inputs.owner_reference()],
        },
        "spec": spec,
    }


# -- reading Jobs back ---------------------------------------------------------------------------


def _condition(job: JSONDict, *types: str) -> JSONDict | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in types and condition.get("status") == "True":
            return dict(condition)
    return None


def job_phase(job: JSONDict) -> str:
    """``running``, ``complete`` or ``failed`` (the terminal-to-be conditions count: the Job
    controller sets them before it has finished removing Pods)."""
    if _condition(job, "Complete", "SuccessCriteriaMet"):
        return "complete"
    if _condition(job, "Failed", "FailureTarget"):
        return "failed"
    return "running"


def attempt_of(job: JSONDict) -> int:
    try:
        return int((job["metadata"].get("annotations") or {}).get(ATTEMPT_ANNOTATION, "0"))
    except ValueError:
        return 0


def generation_of(job: JSONDict) -> int | None:
    value = (job["metadata"].get("annotations") or {}).get(GENERATION_ANNOTATION)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def finished_at(job: JSONDict) -> float | None:
    """Unix time at which the Job failed or completed, if it says."""
    condition = _condition(job, "Failed", "FailureTarget", "Complete", "SuccessCriteriaMet")
    return unix_time(
        (condition or {}).get("lastTransitionTime")
        or (job.get("status") or {}).get("completionTime")
    )


def secret_names(job: JSONDict) -> list[str]:
    volumes = ((job.get("spec") or {}).get("template") or {}).get("spec", {}).get("volumes") or []
    return [
        str(v["secret"]["secretName"])
        for v in volumes
        if v.get("name") == VOLUME_NAME and (v.get("secret") or {}).get("secretName")
    ]


@attrs.frozen
class PodResult:
    """The provision container's end in the Job's last Pod (empty if none could be read)."""

    exit_code: int | None = None
    reason: str = ""
    message: str = ""


def pod_result(pods: list[JSONDict], container: str = CONTAINER_NAME) -> PodResult:
    """The most recent terminated state of our container among the Job's Pods."""
    best: tuple[str, PodResult] | None = None
    for pod in pods:
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        for status in statuses:
            if status.get("name") != container:
                continue
            state = status.get("state") or {}
            ended = state.get("terminated") or (status.get("lastState") or {}).get("terminated")
            if not ended:
                continue
            key = str(ended.get("finishedAt") or "")
            found = PodResult(
                exit_code=ended.get("exitCode"),
                reason=str(ended.get("reason") or ""),
                message=str(ended.get("message") or ""),
            )
            if best is None or key >= best[0]:
                best = (key, found)
    if best is None:
        # A Pod that never started its container (image missing, mount failed) says why here.
        for pod in pods:
            for status in (pod.get("status") or {}).get("containerStatuses") or []:
                waiting = (status.get("state") or {}).get("waiting") or {}
                if status.get("name") == container and waiting.get("reason"):
                    return PodResult(
                        reason=str(waiting["reason"]), message=str(waiting.get("message") or "")
                    )
        return PodResult()
    return best[1]


@attrs.frozen
class FailureView:
    """A failed Job in condition terms."""

    cause: str  # a runner reason, or ProvisioningJobFailed when the output does not say
    message: str
    retryable: bool
    output_tail: str


def describe_failure(job: JSONDict, pod: PodResult) -> FailureView:
    name = job["metadata"]["name"]
    failed = _condition(job, "Failed", "FailureTarget") or {}
    job_reason = failed.get("reason") or "Failed"
    job_message = failed.get("message") or ""
    found = jobscript.classify_failure(pod.message)
    cause = found.reason if found.reason != "Unknown" else c.PROVISIONING_JOB_FAILED
    parts = [
        f"Job {name} failed ({job_reason}: {job_message})"
        if job_message
        else f"Job {name} failed ({job_reason})"
    ]
    if found.reason != "Unknown":
        parts.append(f"{found.reason}: {found.message}" if found.message else found.reason)
    elif pod.exit_code is not None:
        parts.append(f"container {CONTAINER_NAME} exited with {pod.exit_code}")
    elif pod.reason:
        parts.append(f"container {CONTAINER_NAME}: {pod.reason} {pod.message}".strip())
    retryable = found.retryable
    if job_reason == "DeadlineExceeded":
        retryable = True
    return FailureView(cause, "; ".join(parts), retryable, pod.message[-1024:])


def addresses_from(address: str, report: jobscript.JobReport) -> list[JSONDict]:
    """status.addresses from a Job's report, built exactly as from the runner's probe."""
    found = []
    for interface, family, cidr, scope in report.addresses:
        ip, _, prefix = cidr.partition("/")
        found.append(
            HostAddress(
                interface=interface,
                address=ip,
                prefix_length=int(prefix) if prefix.isdigit() else 0,
                family=family,
                scope=scope,
            )
        )
    facts = HostFacts(
        hostname=report.hostname,
        os_id="",
        os_version_id="",
        os_pretty_name="",
        kernel="",
        arch="",
        cpus=0,
        memory_bytes=0,
        addresses=tuple(found),
        host_key_fingerprint=report.fingerprint or "",
        privilege="root",
    )
    return machine_addresses(address, facts)


# -- the reconciler side -------------------------------------------------------------------------


class ProvisionJobs:
    """Runs and follows provisioning Jobs for the RemoteMachine reconciler."""

    def __init__(
        self,
        provider: Provider,
        controller: Controller,
        access: HostAccess,
        events: EventRecorder,
        plan: PlanFunc,
        record: RecordFunc,
    ) -> None:
        self.manager = provider.manager
        self.client = provider.client
        self.controller = controller
        self.access = access
        self.events = events
        self._plan = plan
        self._record = record
        self._informer: Informer | None = None
        self._pods: dict[str, PodResult] = {}  # by Job UID, for finished Jobs

    # -- the Jobs informer -----------------------------------------------------------------

    async def _jobs(self, uid: str) -> list[JSONDict] | None:
        """This machine's Jobs, oldest attempt first; None until the informer has synced."""
        if self._informer is None:
            self._informer = self.manager.watch(
                self.controller,
                JOBS,
                owner_of_kind(GROUP, "RemoteMachine"),
                Selector(label_selector=MACHINE_UID_LABEL),
                filtered=False,
            )
            self._informer.store.add_indexer(
                JOB_INDEX,
                lambda job: (
                    [v]
                    if (v := (job["metadata"].get("labels") or {}).get(MACHINE_UID_LABEL))
                    else []
                ),
            )
        try:
            await asyncio.wait_for(self._informer.synced.wait(), SYNC_TIMEOUT)
        except TimeoutError:
            return None
        jobs = self._informer.store.by_index(JOB_INDEX, uid)
        return sorted(jobs, key=lambda job: (attempt_of(job), job["metadata"]["name"]))

    # -- provisioning ------------------------------------------------------------------------

    async def provision(
        self,
        rm: JSONDict,
        status: JSONDict,
        machine: JSONDict,
        data_secret: JSONDict,
        request: Request,
        provider_id: str,
    ) -> Result:
        uid = rm["metadata"]["uid"]
        jobs = await self._jobs(uid)
        if jobs is None:
            return Result(requeue_after=5.0)
        live = [job for job in jobs if not job["metadata"].get("deletionTimestamp")]
        latest = live[-1] if live else None
        spec = rm["spec"]
        max_attempts = int(spec.get("maxAttempts") or DEFAULT_MAX_ATTEMPTS)
        generation = int(rm["metadata"].get("generation") or 0)
        attempt = 1
        if latest is not None:
            phase = job_phase(latest)
            if phase == "running":
                return await self._running(rm, status, latest, max_attempts)
            if phase == "complete":
                return await self._complete(rm, status, latest, request)
            fresh = generation_of(latest) not in (None, generation)
            attempt = 1 if fresh else attempt_of(latest) + 1
            if not fresh:
                view = await self._failure(latest)
                terminal = not view.retryable or attempt_of(latest) >= max_attempts
                wait = 0.0
                if not terminal:
                    wait = (finished_at(latest) or 0.0) + backoff(attempt_of(latest)) - time.time()
                if terminal or wait > 0:
                    return await self._failed(
                        rm, status, latest, view, terminal, wait, max_attempts
                    )
        return await self._start(
            rm, status, machine, data_secret, provider_id, attempt, max_attempts, live
        )

    async def _running(
        self, rm: JSONDict, status: JSONDict, job: JSONDict, max_attempts: int
    ) -> Result:
        attempt = attempt_of(job)
        name = job["metadata"]["name"]
        active = int((job.get("status") or {}).get("active") or 0)
        state = "is running" if active else "is waiting for its Pod"
        status["bootstrap"] = {**(status.get("bootstrap") or {}), "attempts": attempt}
        mark(
            rm,
            status,
            c.READY,
            False,
            c.PROVISIONING_JOB_RUNNING,
            f"Job {name} {state} (attempt {attempt} of {max_attempts})",
        )
        status["phase"] = "Provisioning"
        await patch_status(self.client, REMOTE_MACHINES, rm, status)
        return Result()

    async def _pod_result(self, job: JSONDict) -> PodResult:
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
            _log.info("cannot read the Job's Pods", job=meta["name"], error=error.message)
            return PodResult()
        result = pod_result(list(pods.get("items") or []))
        if result.message or result.exit_code is not None:
            self._pods[job_uid] = result
        return result

    async def _failure(self, job: JSONDict) -> FailureView:
        return describe_failure(job, await self._pod_result(job))

    async def _complete(
        self, rm: JSONDict, status: JSONDict, job: JSONDict, request: Request
    ) -> Result:
        spec = rm["spec"]
        pod = await self._pod_result(job)
        report = jobscript.parse_report(pod.message)
        name = job["metadata"]["name"]
        details: JSONDict = {}
        if report is not None:
            details["addresses"] = addresses_from(spec["address"], report)
            if report.fingerprint:
                details["fingerprint"] = report.fingerprint
        if report is not None and report.already_bootstrapped:
            outcome = Outcome(
                True,
                c.ALREADY_BOOTSTRAPPED,
                f"{spec['address']} was already bootstrapped; nothing ran (Job {name})",
                details=details,
            )
        else:
            outcome = Outcome(
                True,
                c.PROVISIONED,
                f"{spec['address']} bootstrapped by Job {name}",
                details=details,
            )
        await self._delete_secrets(job)
        total = int((status.get("bootstrap") or {}).get("stepsTotal") or 0)
        state = JobState("provision", request, steps_total=total, steps_done=total, outcome=outcome)
        return await self._record(rm, status, state, request)

    async def _failed(
        self,
        rm: JSONDict,
        status: JSONDict,
        job: JSONDict,
        view: FailureView,
        terminal: bool,
        wait: float,
        max_attempts: int,
    ) -> Result:
        attempt = attempt_of(job)
        message = view.message
        if terminal and view.retryable:
            message = f"{message} (gave up after {attempt} attempts)"
        elif not terminal:
            # The delay, not a countdown: status must not change on every wake-up.
            message = (
                f"{message} (attempt {attempt} of {max_attempts}; the next one starts"
                f" {backoff(attempt):.0f}s after the failure)"
            )
        bootstrap = dict(status.get("bootstrap") or {})
        bootstrap["attempts"] = max(attempt, max_attempts) if terminal else attempt
        if view.output_tail:
            bootstrap["lastOutputTail"] = view.output_tail
        status["bootstrap"] = bootstrap
        mark(rm, status, c.BOOTSTRAP_SUCCEEDED, False, view.cause, message)
        mark(rm, status, c.READY, False, c.PROVISIONING_JOB_FAILED, message)
        status["phase"] = "Failed" if terminal else "Provisioning"
        if terminal:
            await self._delete_secrets(job)
        written = await patch_status(self.client, REMOTE_MACHINES, rm, status)
        if written is not None:
            self.events.record(rm, "Warning", c.PROVISIONING_JOB_FAILED, message)
        return Result() if terminal else Result(requeue_after=max(wait, 0.5))

    async def _start(
        self,
        rm: JSONDict,
        status: JSONDict,
        machine: JSONDict,
        data_secret: JSONDict,
        provider_id: str,
        attempt: int,
        max_attempts: int,
        previous: list[JSONDict],
    ) -> Result:
        try:
            plan = await asyncio.to_thread(self._plan, rm, machine, data_secret, provider_id)
        except BootstrapParseError as error:
            message = f"{error.key}: {error.message}"
            mark(rm, status, c.READY, False, c.INVALID_BOOTSTRAP_DATA, message)
            status["phase"] = "Failed"
            if await patch_status(self.client, REMOTE_MACHINES, rm, status) is not None:
                self.events.record(rm, "Warning", c.INVALID_BOOTSTRAP_DATA, message)
            return Result()
        try:
            inputs = self.inputs(rm, machine, plan, attempt)
        except MissingSecret as missing:
            return await self._wait(rm, status, c.WAITING_FOR_SECRET, str(missing))
        except InvalidCredentials as invalid:
            return await self._wait(rm, status, c.INVALID_SSH_KEY, invalid.message)
        except InvalidProvisionJob as invalid:
            return await self._wait(rm, status, c.PROVISIONING_JOB_INVALID, str(invalid))
        except ValueError as invalid:
            return await self._wait(rm, status, c.INVALID_SSH_KEY, str(invalid))
        for old in previous:
            await self._delete_job(old)
        if plan.warnings:
            self.events.record(rm, "Warning", c.BOOTSTRAP_WARNINGS, "; ".join(plan.warnings))
        secret = render_secret(inputs)
        job = render_job(inputs, secret["metadata"]["name"])
        await self._create(SECRETS, secret)
        created = await self._create(JOBS, job)
        status["bootstrap"] = {
            **{k: v for k, v in (status.get("bootstrap") or {}).items() if k != "lastOutputTail"},
            "attempts": attempt,
            "stepsTotal": len(plan.steps),
            "stepsDone": 0,
        }
        mark(
            rm,
            status,
            c.READY,
            False,
            c.PROVISIONING_JOB_RUNNING,
            f"created Job {inputs.job_name} (attempt {attempt} of {max_attempts})",
        )
        status["phase"] = "Provisioning"
        await patch_status(self.client, REMOTE_MACHINES, rm, status)
        if created:
            self.events.record(
                rm,
                "Normal",
                c.PROVISIONING_JOB_RUNNING,
                f"created Job {inputs.job_name} to bootstrap {inputs.address}"
                f" ({len(plan.steps)} steps, attempt {attempt})",
            )
        return Result()

    async def _wait(self, rm: JSONDict, status: JSONDict, reason: str, message: str) -> Result:
        mark(rm, status, c.READY, False, reason, message)
        status["phase"] = "Pending"
        await patch_status(self.client, REMOTE_MACHINES, rm, status)
        return Result()

    def inputs(
        self, rm: JSONDict, machine: JSONDict, plan: BootstrapPlan, attempt: int
    ) -> JobInputs:
        """Resolve Secrets and settings; raises MissingSecret, InvalidCredentials,
        InvalidProvisionJob or ValueError (a bad spec)."""
        meta = rm["metadata"]
        spec = rm["spec"]
        job_spec = spec.get("provisionJob") or {}
        if spec.get("bastion"):
            raise InvalidProvisionJob(
                "provisionJob mode does not support a bastion: reach the host from the Job's"
                " network instead (e.g. hostNetwork on a node that can)"
            )
        if not (spec.get("sshKeyRef") or {}).get("name"):
            raise InvalidProvisionJob(
                "provisionJob mode needs sshKeyRef: ssh in a Job logs in with a key, not a password"
            )
        target = self.access.target(rm)
        credentials = target.credentials
        assert credentials.private_key is not None
        key = _openssh_key(credentials.private_key, credentials.passphrase)
        known_text = self._known_hosts_text(meta["namespace"], spec)
        mode, known, fingerprints = host_key_material(target, known_text)
        deadlines = Deadlines.of(spec)
        settings = self.access.runner.settings
        name = job_name(meta["name"], attempt)
        script = jobscript.host_script(
            plan,
            machine_uid=meta["uid"],
            owner=f"job:{meta['namespace']}/{name}",
            settings=settings,
            step_timeout=deadlines.command,
        )
        labels = meta.get("labels") or {}
        cluster = labels.get(CLUSTER_NAME_LABEL) or (machine.get("spec") or {}).get("clusterName")
        template = dict(job_spec.get("jobSpecTemplate") or {})
        _container(template)
        return JobInputs(
            namespace=meta["namespace"],
            machine_name=meta["name"],
            machine_uid=meta["uid"],
            generation=int(meta.get("generation") or 0),
            attempt=attempt,
            address=target.address,
            port=target.port,
            user=credentials.user,
            privilege=Privilege.for_credentials(credentials).mode,
            host_keys=mode,
            ssh_command=str(job_spec.get("sshCommand") or "ssh"),
            scp_command=str(job_spec.get("scpCommand") or "scp"),
            connect_timeout=max(1, int(target.connect_timeout or settings.connect_timeout)),
            job_timeout=max(60, int(deadlines.job or settings.job_timeout)),
            template=template,
            private_key=key,
            host_script=script,
            known_hosts=known,
            fingerprints=fingerprints,
            sudo_password=credentials.sudo_password,
            cluster_name=cluster,
        )

    def _known_hosts_text(self, namespace: str, spec: JSONDict) -> str | None:
        ref = (spec.get("hostKeyPolicy") or {}).get("knownHostsRef")
        if not ref:
            return None
        source = self.access.configmaps if ref.get("kind") == "ConfigMap" else self.access.secrets
        value = source.value(namespace, ref["name"], ref.get("key") or "known_hosts")
        return value.decode() if value is not None else None

    # -- API writes ----------------------------------------------------------------------------

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
        for name in secret_names(job):
            await self.client.delete(SECRETS, job["metadata"]["namespace"], name)

    async def delete(self, rm: JSONDict) -> float | None:
        """Delete the machine's Jobs (their Pods in the background) and their Secrets.

        Returns how long to wait before the host cleanup may start: while a Job's Pod still
        exists its ssh session may hold the host lock, so the cleanup waits for the Pods to go,
        for at most POD_GONE_TIMEOUT after the deletion began. None: go ahead.
        """
        meta = rm["metadata"]
        jobs = await self._jobs(meta["uid"])
        for job in jobs or []:
            if not job["metadata"].get("deletionTimestamp"):
                await self._delete_job(job)
            else:
                await self._delete_secrets(job)
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


def setup(
    provider: Provider,
    controller: Controller,
    access: HostAccess,
    events: EventRecorder,
    plan: PlanFunc,
    record: RecordFunc,
) -> ProvisionJobs:
    """The provisionJob support of the RemoteMachine controller (its Jobs informer starts on
    first use)."""
    return ProvisionJobs(provider, controller, access, events, plan, record)
