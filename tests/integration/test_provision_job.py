"""provisionJob mode against the real API server, job controller and our controller process (no
node needed): the Job and its Secret are created, owned by the RemoteMachine, the Job's spec holds
no secret, and status follows the Job (running, then failed by its deadline), and deletion
removes both. The e2e suite (e2e/test_provision_job.py) runs such Jobs on a real kubelet."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from capi_remote.kube.client import ApiError, KubeClient, Resource
from capi_remote.kube.events import EVENTS
from capi_remote.resources import (
    CLUSTERS,
    CONFIGMAPS,
    JOBS,
    MACHINES,
    REMOTE_CLUSTERS,
    REMOTE_MACHINES,
    SECRETS,
)
from capi_remote.ssh import jobscript
from capi_remote_testbed import samples
from capi_remote_testbed.controlplane import ControlPlane
from capi_remote_testbed.hosts import SshKey
from reconcilers.remotemachine import FORCE_RELEASE_ANNOTATION
from reconcilers.remotemachine.jobspec import ATTEMPT_ANNOTATION, MACHINE_UID_LABEL
from tests.fixtures_provider import RunningController

pytestmark = pytest.mark.integration

JSONDict = dict[str, Any]
TOKEN = "join-token-7f3c9a1e5d"  # stands for what bootstrap data carries
RESOURCES: dict[str, Resource] = {
    r.kind: r for r in (CLUSTERS, CONFIGMAPS, MACHINES, REMOTE_CLUSTERS, REMOTE_MACHINES, SECRETS)
}


async def _eventually(what: str, check: Callable[[], Awaitable[Any]], within: float = 60.0) -> Any:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.3)


async def _get(kube: KubeClient, resource: Resource, namespace: str, name: str) -> JSONDict | None:
    try:
        return await kube.get(resource, namespace, name)
    except ApiError as error:
        if error.not_found:
            return None
        raise


def _ready(rm: JSONDict | None) -> JSONDict:
    for condition in ((rm or {}).get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return dict(condition)
    return {}


async def test_provision_job_mode_creates_an_owned_job_and_secret_and_follows_the_job(
    control_plane: ControlPlane,
    controller: RunningController,
    kube: KubeClient,
    namespace: str,
) -> None:
    key = SshKey.generate()
    known_hosts = f"192.0.2.10 {SshKey.generate().public}\n"
    data = f"#cloud-config\nruncmd:\n- echo {TOKEN} > /etc/token\n"
    template = {
        "metadata": {"labels": {"team": "infra"}},
        "spec": {
            "activeDeadlineSeconds": 8,  # nothing runs its Pod here: the Job fails by deadline
            "ttlSecondsAfterFinished": 0,  # dropped: the controller reads the outcome from it
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "provision",
                            "image": "localhost/absent:never",
                            "imagePullPolicy": "Never",
                            "command": ["sleep", "1"],
                        },
                    ]
                }
            },
        },
    }
    objects = [
        *samples.credentials(namespace, key.private_openssh, known_hosts),
        *samples.cluster("pj", namespace, control_plane.kubeconfig.read_bytes()),
        samples.bootstrap_secret("pj-data", namespace, data),
        samples.remote_machine(
            "pj-0",
            namespace,
            samples.host_spec(
                "192.0.2.10",
                user="deploy",
                maxAttempts=1,
                provisionJob={"sshCommand": "ssh -4", "jobSpecTemplate": template},
            ),
        ),
        samples.machine("pj-0", namespace, "pj", "pj-data"),
    ]
    for obj in objects:
        await kube.create(RESOURCES[obj["kind"]], obj)

    async def job() -> JSONDict | None:
        return await _get(kube, JOBS, namespace, "pj-0-provision-1")

    created: JSONDict = await _eventually("the provisioning Job", job)
    rm = await _get(kube, REMOTE_MACHINES, namespace, "pj-0")
    assert rm is not None
    uid = rm["metadata"]["uid"]

    # Owned by the RemoteMachine, labelled, annotated with its attempt.
    meta = created["metadata"]
    (owner,) = meta["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("RemoteMachine", "pj-0", uid)
    assert owner["controller"] is True and owner["blockOwnerDeletion"] is True
    assert meta["labels"][MACHINE_UID_LABEL] == uid and meta["labels"]["team"] == "infra"
    assert meta["annotations"][ATTEMPT_ANNOTATION] == "1"
    spec = created["spec"]
    assert spec["backoffLimit"] == 0 and spec["activeDeadlineSeconds"] == 8
    assert "ttlSecondsAfterFinished" not in spec
    pod = spec["template"]["spec"]
    (provision,) = pod["containers"]
    assert pod["serviceAccountName"] == "default"
    assert pod["automountServiceAccountToken"] is False
    assert provision["command"][:2] == ["/bin/sh", "-c"]
    assert provision["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert pod["restartPolicy"] == "Never"
    env = {e["name"]: e["value"] for e in provision["env"]}
    assert env["CAPI_REMOTE_SSH"] == "ssh -4" and env["CAPI_REMOTE_SCP"] == "scp"
    assert env["CAPI_REMOTE_PRIVILEGE"] == "sudo" and env["CAPI_REMOTE_USER"] == "deploy"
    assert env["CAPI_REMOTE_HOST_KEYS"] == "known-hosts"

    # The Secret it mounts: owned by the RemoteMachine too, immutable, holding the inputs.
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    secret_name = volume["secret"]["secretName"]
    secret = await _get(kube, SECRETS, namespace, secret_name)
    assert secret is not None
    assert secret["metadata"]["ownerReferences"][0]["uid"] == uid
    assert secret["immutable"] is True
    files = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert files[jobscript.KEY_KNOWN_HOSTS] == known_hosts
    assert "OPENSSH PRIVATE KEY" in files[jobscript.KEY_PRIVATE_KEY]
    assert f"/var/lib/capi-remote/{uid}" in files[jobscript.KEY_HOST_SCRIPT]
    assert any(m["mountPath"] == jobscript.SECRET_MOUNT for m in provision["volumeMounts"])

    # No secret anywhere in the Job: not the key, not known_hosts, not the bootstrap data (raw
    # or base64-encoded, as the host script carries it).
    text = json.dumps(created)
    key_body = "".join(key.private_openssh.splitlines()[1:-1])
    assert key_body[:40] not in text and key.private_openssh.splitlines()[1] not in text
    assert TOKEN not in text and known_hosts.split()[2] not in text
    assert files[jobscript.KEY_HOST_SCRIPT][-400:] not in text
    for chunk in (base64.b64encode(TOKEN.encode()).decode()[:12], "echo " + TOKEN):
        assert chunk not in text

    # The start is an Event (its status write waits for the first progress write, 10 s on);
    # status follows the Job: failed by its deadline, for good.
    async def started() -> JSONDict | None:
        events = (await kube.list(EVENTS, namespace))["items"]
        return next(
            (
                e
                for e in events
                if e.get("reason") == "ProvisioningJobRunning"
                and (e.get("involvedObject") or {}).get("name") == "pj-0"
            ),
            None,
        )

    event = await _eventually("the Event that the Job started", started)
    assert "created Job pj-0-provision-1" in event["message"]

    async def failed() -> JSONDict | None:
        found = await _get(kube, REMOTE_MACHINES, namespace, "pj-0")
        return found if (found or {}).get("status", {}).get("phase") == "Failed" else None

    rm = await _eventually("the RemoteMachine to fail with its Job", failed, 90)
    ready = _ready(rm)
    assert ready["reason"] == "ProvisioningJobFailed"
    assert "Job pj-0-provision-1 failed (DeadlineExceeded" in ready["message"]
    assert "gave up after 1 attempts" in ready["message"]
    assert rm["status"]["bootstrap"]["attempts"] == 1

    # Terminal: the Secret is not needed any more (deleted just after the outcome's status
    # write); the Job stays for its logs.
    async def secret_gone() -> bool:
        return await _get(kube, SECRETS, namespace, secret_name) is None

    await _eventually("the Job's Secret deleted", secret_gone, 30)
    assert await job() is not None

    # Deletion (cleanup of the unreachable host skipped): Jobs and Secrets go, nothing sticks.
    await kube.patch(
        REMOTE_MACHINES,
        namespace,
        "pj-0",
        {"metadata": {"annotations": {FORCE_RELEASE_ANNOTATION: ""}}},
    )
    await kube.delete(MACHINES, namespace, "pj-0")

    async def gone() -> bool:
        jobs = await kube.list(JOBS, namespace, label_selector=f"{MACHINE_UID_LABEL}={uid}")
        secrets = await kube.list(SECRETS, namespace, label_selector=f"{MACHINE_UID_LABEL}={uid}")
        remaining = [j for j in jobs["items"] if not j["metadata"].get("deletionTimestamp")]
        return (
            await _get(kube, REMOTE_MACHINES, namespace, "pj-0") is None
            and not remaining
            and not secrets["items"]
        )

    await _eventually("the RemoteMachine, its Job and Secret to be gone", gone, 60)
