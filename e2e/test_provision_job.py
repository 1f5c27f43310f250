"""provisionJob mode on the real test bed: the Job runs on a real kubelet (``node`` fixture) with
``ssh``/``scp`` from its image and bootstraps a namespaced host; status follows the Job."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from capi_remote.bootstrap import InstanceMetadata, parse_bootstrap, substitute_provider_id
from capi_remote.resources import JOBS, MACHINES, REMOTE_MACHINES, SECRETS
from capi_remote.ssh import BootstrapIncomplete, HostKeyPolicy, Runner, SSHSettings, Target
from capi_remote.ssh import Job as RunnerJob
from capi_remote.ssh.credentials import Credentials
from capi_remote.ssh.executor import step_name
from capi_remote_testbed.node import Node
from capi_remote_testbed.nodeimages import SSH_CLIENT_IMAGE
from e2e.bed import Bed, BedFactory
from reconcilers.remotemachine.jobspec import MACHINE_UID_LABEL

pytestmark = pytest.mark.integration

JSONDict = dict[str, Any]
COUNTER = "/root/provision-count"


def _job_template(**pod: Any) -> JSONDict:
    container = {"name": "provision", "image": SSH_CLIENT_IMAGE, "imagePullPolicy": "Never"}
    return {"spec": {"template": {"spec": {"hostNetwork": True, "containers": [container], **pod}}}}


def _counting(script: str) -> str:
    """The registration script plus a command that counts its runs on the host."""
    return script.replace("runcmd:\n", f"runcmd:\n- echo ran >> {COUNTER}\n", 1)


async def _uid(bed: Bed, name: str) -> str:
    rm = await bed.get(REMOTE_MACHINES, name)
    assert rm is not None
    return str(rm["metadata"]["uid"])


async def _jobs(bed: Bed, uid: str) -> list[JSONDict]:
    return await bed.list(JOBS, label_selector=f"{MACHINE_UID_LABEL}={uid}")


async def _secrets(bed: Bed, uid: str) -> list[JSONDict]:
    return await bed.list(SECRETS, label_selector=f"{MACHINE_UID_LABEL}={uid}")


async def _deleted_with_its_jobs(bed: Bed, name: str, uid: str) -> None:
    """Wait until RemoteMachine ``name`` is gone, and with it its Jobs and their Secrets."""

    async def gone() -> bool:
        return (
            await bed.get(REMOTE_MACHINES, name) is None
            and not await _jobs(bed, uid)
            and not await _secrets(bed, uid)
        )

    await bed.wait_for(f"RemoteMachine {name}, its Jobs and Secrets gone", gone, 120)


def _diagnose(bed: Bed, name: str) -> str:
    jobs = bed.plane.kubectl("get", "jobs,pods", "-n", bed.namespace, "-o", "wide")
    return bed.describe("remotemachine", name) + jobs


async def test_a_job_bootstraps_the_host_and_status_follows_it(
    make_bed: BedFactory, node: Node
) -> None:
    bed = await make_bed(1)
    host = bed.fleet.hosts[0]
    await bed.cluster("pj")
    script = _counting(bed.registration_script())
    data = await bed.bootstrap_secret("pj-bootstrap", script)
    spec = bed.host_spec(host, provisionJob={"jobSpecTemplate": _job_template()})
    await bed.remote_machine("pj-0", spec)
    await bed.machine("pj-0", "pj", data, control_plane=True)
    uid = await _uid(bed, "pj-0")

    async def running() -> bool:
        return await bed.machine_phase("pj-0") == "Running"

    await bed.wait_for("Machine pj-0 Running", running, 180, lambda: _diagnose(bed, "pj-0"))

    rm = await bed.get(REMOTE_MACHINES, "pj-0")
    assert rm is not None
    pid = f"remote-machine://{host.address}:22"
    assert rm["spec"]["providerID"] == pid
    assert rm["status"]["initialization"]["provisioned"] is True
    assert rm["status"]["phase"] == "Provisioned"
    addresses = {(a["type"], a["address"]) for a in rm["status"]["addresses"]}
    assert ("ExternalIP", host.address) in addresses
    assert ("Hostname", host.name) in addresses  # reported by the Job, like the runner's probe
    conditions = {x["type"]: x for x in rm["status"]["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert conditions["BootstrapExecSucceeded"]["reason"] == "Provisioned"
    assert "bootstrapped by Job pj-0-provision-1" in bed.describe("remotemachine", "pj-0")

    jobs = await _jobs(bed, uid)
    assert [j["metadata"]["name"] for j in jobs] == ["pj-0-provision-1"]
    assert jobs[0]["status"].get("succeeded") == 1
    owner = jobs[0]["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("RemoteMachine", uid, True)
    # Its Secret (key, bootstrap) is gone once the outcome is recorded.
    assert await _secrets(bed, uid) == []

    # Exactly once, and with the runner's markers: the counter ran once, every step of the plan
    # has its marker, and the runner itself (sentinel removed) finds every step done.
    count = host.exec_inside(["cat", COUNTER]).stdout.decode()
    assert count == "ran\n"
    plan = parse_bootstrap(
        substitute_provider_id(script.encode(), pid),
        "cloud-config",
        metadata=InstanceMetadata(
            instance_id=uid, local_hostname="pj-0", hostname="pj-0", local_ipv4=host.address
        ),
    )
    state = f"/var/lib/capi-remote/{uid}"
    recorded = host.exec_inside(["cat", f"{state}/plan"]).stdout.decode().strip()
    assert recorded == plan.digest
    for index, step in enumerate(plan.steps):
        rc = host.exec_inside(["cat", f"{state}/steps/{step_name(index, step)}.rc"])
        assert rc.stdout.decode().strip() == "0", step.describe()
    # The runner, on the same host and machine, finds every step done: with the sentinel gone it
    # runs nothing (no step is reported as started) and says the bootstrap did not complete.
    host.exec_inside(["rm", "-f", "/run/cluster-api/bootstrap-success.complete"])
    target = Target(
        address=host.address,
        credentials=Credentials(user="root", private_key=bed.fleet.client_key.private_openssh),
        host_key=HostKeyPolicy.from_known_hosts(bed.fleet.known_hosts()),
    )
    started: list[int] = []
    runner = Runner(SSHSettings(max_workers=1), identity="e2e-check")
    try:
        with pytest.raises(BootstrapIncomplete):
            await runner.submit(
                RunnerJob(
                    target=target,
                    plan=plan,
                    machine_uid=uid,
                    on_progress=lambda index, _total, _what: started.append(index),
                )
            )
    finally:
        runner.detach()
    assert started == []
    assert host.exec_inside(["cat", COUNTER]).stdout.decode() == "ran\n"

    # Deletion: the Job and any Secret go with the RemoteMachine, which does not get stuck.
    await bed.kube.delete(MACHINES, bed.namespace, "pj-0")

    await _deleted_with_its_jobs(bed, "pj-0", uid)


async def test_a_failing_job_shows_why_and_gives_up_after_max_attempts(
    make_bed: BedFactory, node: Node
) -> None:
    bed = await make_bed(1)
    host = bed.fleet.hosts[0]
    await bed.cluster("pjf")
    failing = (
        "#cloud-config\nruncmd:\n- echo attempt >> /root/attempts\n"
        "- echo 'the disk is on fire' >&2; exit 3\n"
    )
    data = await bed.bootstrap_secret("pjf-bootstrap", failing)
    spec = bed.host_spec(host, maxAttempts=2, provisionJob={"jobSpecTemplate": _job_template()})
    await bed.remote_machine("pjf-0", spec)
    await bed.machine("pjf-0", "pjf", data, control_plane=True)
    uid = await _uid(bed, "pjf-0")

    async def failed() -> JSONDict | None:
        rm = await bed.get(REMOTE_MACHINES, "pjf-0") or {}
        status = rm.get("status") or {}
        return rm if status.get("phase") == "Failed" else None

    rm = await bed.wait_for(
        "RemoteMachine pjf-0 Failed", failed, 180, lambda: _diagnose(bed, "pjf-0")
    )
    conditions = {x["type"]: x for x in rm["status"]["conditions"]}
    ready, outcome = conditions["Ready"], conditions["BootstrapExecSucceeded"]
    assert (ready["status"], ready["reason"]) == ("False", "ProvisioningJobFailed")
    assert outcome["reason"] == "StepFailed"  # what the host script reported
    assert "Job pjf-0-provision-2 failed" in ready["message"]
    assert "exited with 3" in ready["message"]
    assert "gave up after 2 attempts" in ready["message"]
    assert "the disk is on fire" in rm["status"]["bootstrap"]["lastOutputTail"]
    assert rm["status"]["bootstrap"]["attempts"] == 2
    # Two Jobs were made (one per attempt, the older one removed), each ran the command once.
    jobs = await _jobs(bed, uid)
    assert [j["metadata"]["name"] for j in jobs] == ["pjf-0-provision-2"]
    assert host.exec_inside(["cat", "/root/attempts"]).stdout.decode() == "attempt\n"
    described = bed.describe("remotemachine", "pjf-0")
    assert "ProvisioningJobFailed" in described
    # No Secret is left behind once the machine failed for good; nothing is retried.
    assert await _secrets(bed, uid) == []
    await asyncio.sleep(3)
    assert [j["metadata"]["name"] for j in await _jobs(bed, uid)] == ["pjf-0-provision-2"]


async def test_deleting_a_machine_while_its_job_runs_stops_it_and_cleans_the_host(
    make_bed: BedFactory, node: Node
) -> None:
    bed = await make_bed(1)
    host = bed.fleet.hosts[0]
    await bed.cluster("pjd")
    slow = "#cloud-config\nruncmd:\n- echo started > /root/slow; exec sleep 600\n"
    data = await bed.bootstrap_secret("pjd-bootstrap", slow)
    spec = bed.host_spec(host, provisionJob={"jobSpecTemplate": _job_template()})
    await bed.remote_machine("pjd-0", spec)
    await bed.machine("pjd-0", "pjd", data, control_plane=True)
    uid = await _uid(bed, "pjd-0")

    async def step_running() -> bool:
        return host.exec_inside(["test", "-f", "/root/slow"]).returncode == 0

    await bed.wait_for("the slow step to run", step_running, 120, lambda: _diagnose(bed, "pjd-0"))
    await bed.kube.delete(MACHINES, bed.namespace, "pjd-0")

    await _deleted_with_its_jobs(bed, "pjd-0", uid)
    # The Pod's end stopped the step and freed the host lock, so the cleanup ran (it forgets the
    # machine on the host) instead of giving up on a locked host.
    state = host.exec_inside(["test", "-e", f"/var/lib/capi-remote/{uid}"])
    assert state.returncode != 0, "the cleanup removed the machine's state"
    sleeping = host.exec_inside(["sh", "-c", "ps -eo args | grep -c '^sleep 600' || true"])
    assert sleeping.stdout.decode().strip() == "0"
    assert host.exec_inside(["test", "-e", "/run/capi-remote/host.lock"]).returncode != 0
