"""Issue 13 point 6, provisionJob mode: a trust-on-first-use key is pinned from a failed Job too.
The Job's container says which key ssh accepted as the last line of its output (the tail that
becomes the termination message), the controller reads it from the failed Job and pins it where
none is pinned yet, so the next Job verifies against it instead of trusting anew. A Job's word
never pins a pooled host."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Any, cast

import attrs
import structlog

from capi_remote import Informer, KubeClient, Request
from capi_remote.api import HOST_KEY_FINGERPRINT_ANNOTATION as PIN
from capi_remote.api import RemoteMachineSpec, from_dict
from capi_remote.kube.client import Resource
from capi_remote.resources import JOBS, PODS
from capi_remote.ssh import jobscript
from reconcilers import conditions as c
from reconcilers.hostjobs import Outcome
from reconcilers.remotemachine.backend import Finished, Machine
from reconcilers.remotemachine.job_backend import JobBackend
from reconcilers.remotemachine.jobspec import CONTAINER_NAME, MACHINE_UID_LABEL
from tests.unit.test_remotemachine_flow import FakeBackend, bed, job_like

JSONDict = dict[str, Any]
LOG = structlog.get_logger("test")
SEEN = "SHA256:" + "A" * 43


# -- the container ------------------------------------------------------------------------------


def run_container(tmp_path: Path, ssh_exit: int, scp_accepts: bool = True) -> tuple[str, str]:
    """CONTAINER_SCRIPT with stand-ins for scp (accepts the host's real-looking key into the
    known_hosts ssh was given, as accept-new does) and ssh (much output, then ``ssh_exit``).
    Returns the output and the fingerprint of the key scp accepted."""
    secrets = tmp_path / "secret"
    secrets.mkdir()
    for name in ("ssh-privatekey", "known_hosts", "fingerprints", "bootstrap.sh"):
        (secrets / name).write_text("x\n")
    key = tmp_path / "hostkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    line = "192.0.2.1 " + " ".join(key.with_suffix(".pub").read_text().split()[:2])
    scp = tmp_path / "scp"
    accept = f'printf "%s\\n" "{line}" >> "$kh"' if scp_accepts else "exit 1"
    scp.write_text(
        "#!/bin/sh\nfor a; do case $a in UserKnownHostsFile=*) kh=${a#*=} ;; esac; done\n"
        f"{accept}\n"
    )
    ssh = tmp_path / "ssh"
    ssh.write_text(
        "#!/bin/sh\ni=0; while [ $i -lt 200 ]; do echo step output $i; i=$((i+1)); done\n"
        "echo 'capi-remote-job failed StepFailed step 1 exited with 3'\n"
        f"exit {ssh_exit}\n"
    )
    for tool in (scp, ssh):
        tool.chmod(0o755)
    env = {
        **os.environ,
        "CAPI_REMOTE_SECRET_DIR": str(secrets),
        "CAPI_REMOTE_ADDRESS": "192.0.2.1",
        "CAPI_REMOTE_PORT": "22",
        "CAPI_REMOTE_USER": "root",
        "CAPI_REMOTE_PRIVILEGE": "root",
        "CAPI_REMOTE_HOST_KEYS": "trust-on-first-use",
        "CAPI_REMOTE_SSH": str(ssh),
        "CAPI_REMOTE_SCP": str(scp),
        "CAPI_REMOTE_CONNECT_TIMEOUT": "5",
        "CAPI_REMOTE_MACHINE_UID": "u1",
        "CAPI_REMOTE_TERMINATION_LOG": str(tmp_path / "termination-log"),
    }
    result = subprocess.run(
        ["sh", "-c", jobscript.CONTAINER_SCRIPT, "capi-remote-provision"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    listed = subprocess.run(
        ["ssh-keygen", "-E", "sha256", "-lf", str(key.with_suffix(".pub"))],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout, listed.stdout.split()[1]


def test_a_failed_job_ends_its_output_with_the_key_it_accepted(tmp_path: Path) -> None:
    output, fingerprint = run_container(tmp_path, ssh_exit=3)
    assert output.splitlines()[-1] == f"capi-remote-job fingerprint {fingerprint}"
    tail = output[-2048:]  # what FallbackToLogsOnError keeps, after 200 lines of step output
    assert jobscript.accepted_fingerprint(tail) == fingerprint
    assert jobscript.classify_failure(tail).reason == "StepFailed"


def test_a_job_that_never_got_a_key_says_none(tmp_path: Path) -> None:
    output, _ = run_container(tmp_path, ssh_exit=3, scp_accepts=False)
    assert jobscript.accepted_fingerprint(output) is None


def test_only_a_well_formed_fingerprint_is_taken() -> None:
    said = "capi-remote-job fingerprint"
    assert jobscript.accepted_fingerprint(f"{said} SHA256:short\n") is None
    assert jobscript.accepted_fingerprint(f"{said} {SEEN} extra\n") is None
    assert jobscript.accepted_fingerprint(f"{said} {'SHA256:' + 'B' * 43}\n{said} {SEEN}\n") == SEEN


# -- the controller -----------------------------------------------------------------------------


class Server:
    """A failed Job's Pod, whose termination message is the output's tail."""

    def __init__(self, message: str) -> None:
        self.message = message

    async def list(self, resource: Resource, namespace: str, **kwargs: Any) -> JSONDict:
        assert resource == PODS
        ended = {"exitCode": 1, "reason": "Error", "message": self.message}
        status = {"name": CONTAINER_NAME, "state": {"terminated": ended}}
        return {"items": [{"status": {"containerStatuses": [status]}}]}


def failed_job(uid: str) -> JSONDict:
    return {
        "metadata": {
            "name": "m-provision-1",
            "namespace": "ns",
            "uid": "job-1",
            "labels": {MACHINE_UID_LABEL: uid},
            "annotations": {"remote.infrastructure.cluster.x-k8s.io/attempt": "1"},
        },
        "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimit"}]},
    }


def test_a_failed_jobs_accepted_key_is_part_of_its_outcome() -> None:
    message = (
        f"step output\ncapi-remote-job failed StepFailed x\ncapi-remote-job fingerprint {SEEN}\n"
    )
    client = cast(KubeClient, Server(message))

    def watch_jobs() -> Informer:
        informer = Informer(client, JOBS)
        informer.store.upsert(failed_job("u1"))
        informer.synced.set()
        return informer

    backend = JobBackend(client, None, watch_jobs)  # type: ignore[arg-type]
    rm = {"metadata": {"name": "m", "namespace": "ns", "uid": "u1"}, "spec": {"address": "h"}}
    machine = Machine(rm, from_dict(RemoteMachineSpec, rm["spec"]), {}, Request("ns", "m"), LOG)
    seen = asyncio.run(backend.observe(machine))
    assert isinstance(seen, Finished) and not seen.outcome.ok
    assert seen.outcome.details == {"fingerprint": SEEN}
    pooled = attrs.evolve(machine, pooled={"metadata": {"name": "host"}})
    assert asyncio.run(backend.record_pins(pooled, {PIN: SEEN})) == {}, "never a pooled host"


@attrs.define
class PinningBackend(FakeBackend):
    recorded: list[dict[str, str]] = attrs.field(factory=list)

    async def record_pins(self, machine: Machine, seen: dict[str, str]) -> dict[str, str]:
        self.recorded.append(seen)
        return seen


def pinning_job_backend() -> PinningBackend:
    like = job_like()
    return PinningBackend(failed_reason=like.failed_reason, keeps_attempts=like.keeps_attempts)


async def test_the_flow_pins_the_key_a_failed_attempt_accepted() -> None:
    backend = pinning_job_backend()
    b = bed(backend, hostKeyPolicy={"trustOnFirstUse": True})
    await b.step()  # attempt 1 starts
    failure = Outcome(False, "StepFailed", "it broke", True, details={"fingerprint": SEEN})
    backend.seen = Finished(1, 1, failure)
    await b.step()
    assert backend.recorded == [{PIN: SEEN}]
    assert b.ready()["reason"] == c.PROVISIONING_JOB_FAILED


async def test_a_pinned_or_verified_host_is_not_pinned_again() -> None:
    for spec, pins in (
        ({"hostKeyPolicy": {"trustOnFirstUse": True}}, {PIN: "SHA256:" + "B" * 43}),
        ({"hostKeyPolicy": {"fingerprint": SEEN}}, {}),
    ):
        backend = pinning_job_backend()
        b = bed(backend, **spec)
        b.writer.obj["metadata"]["annotations"] = pins
        await b.step()
        failure = Outcome(False, "StepFailed", "it broke", True, details={"fingerprint": SEEN})
        backend.seen = Finished(1, 1, failure)
        await b.step()
        assert backend.recorded == []
