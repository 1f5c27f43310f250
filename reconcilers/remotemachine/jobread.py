"""provisionJob mode, reading a Job back: its phase, attempt, generation and steps, and why it
failed (its Failed condition and its Pod's termination message: ``FallbackToLogsOnError`` puts
the output's tail there)."""

from __future__ import annotations

from typing import Any

import attrs

from capi_remote.ssh import HostAddress, HostFacts, jobscript
from reconcilers import conditions as c
from reconcilers.common import unix_time
from reconcilers.remote import machine_addresses
from reconcilers.remotemachine.jobspec import (
    ATTEMPT_ANNOTATION,
    CONTAINER_NAME,
    GENERATION_ANNOTATION,
    STEPS_ANNOTATION,
    VOLUME_NAME,
)

JSONDict = dict[str, Any]


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


def _number(job: JSONDict, annotation: str) -> int | None:
    value = (job["metadata"].get("annotations") or {}).get(annotation)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def attempt_of(job: JSONDict) -> int:
    return _number(job, ATTEMPT_ANNOTATION) or 0


def generation_of(job: JSONDict) -> int | None:
    return _number(job, GENERATION_ANNOTATION)


def steps_of(job: JSONDict) -> int | None:
    """The number of bootstrap steps the Job runs (status says it once the attempt is over)."""
    return _number(job, STEPS_ANNOTATION)


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
