"""Issue 13 point 6, provisionJob mode, performed as a namespace tenant on the test bed (a real
kubelet runs the Jobs): a Job that fails still pins the trust-on-first-use key it accepted, so
the next Job refuses a changed key and runs nothing; and switching a machine to the runner while
its Job runs removes the Job and its Secret (the private key without its passphrase, the
bootstrap data) at once."""

from __future__ import annotations

from typing import Any

import pytest

from capi_remote.api import HOST_KEY_FINGERPRINT_ANNOTATION as PIN
from capi_remote.resources import JOBS, REMOTE_MACHINES, SECRETS
from capi_remote_testbed import samples
from capi_remote_testbed.hosts import Host
from capi_remote_testbed.node import Node
from e2e.bed import Bed, BedFactory, workload_kubeconfig
from e2e.test_provision_job import _diagnose, _job_template
from e2e.test_tenant_attacks import _as_tenant, _tenant_cluster
from reconcilers.remotemachine.jobspec import MACHINE_UID_LABEL
from tests.fixtures_tenant import MakeTenant, Tenant

pytestmark = pytest.mark.integration

JSONDict = dict[str, Any]
COUNTER = "/root/job-attempts"


async def _machine(bed: Bed, tenant: Tenant, name: str, script: str, **spec: Any) -> str:
    """Bootstrap data, RemoteMachine and Machine, all by the tenant; the machine's UID."""
    await _as_tenant(tenant, samples.bootstrap_secret(f"{name}-data", bed.namespace, script))
    await _as_tenant(tenant, samples.remote_machine(name, bed.namespace, spec))
    await _as_tenant(tenant, samples.machine(name, bed.namespace, "pt", f"{name}-data"))
    rm = await bed.get(REMOTE_MACHINES, name)
    assert rm is not None
    return str(rm["metadata"]["uid"])


async def _edit(tenant: Tenant, name: str, **spec: Any) -> None:
    """The tenant changes its machine's spec (it may update, not patch)."""
    rm = await tenant.kube.get(REMOTE_MACHINES, tenant.namespace, name)
    for key, value in spec.items():
        if value is None:
            rm["spec"].pop(key, None)
        else:
            rm["spec"][key] = value
    await tenant.kube.replace(REMOTE_MACHINES, rm)


async def _tenant_bed(make_bed: BedFactory, make_tenant: MakeTenant) -> tuple[Bed, Host, Tenant]:
    """A bed with one host, a tenant in its namespace, and the tenant's cluster ``pt``."""
    bed = await make_bed(1)
    tenant = await make_tenant(namespace=bed.namespace)
    await _tenant_cluster(bed, tenant, "pt", workload_kubeconfig(bed.plane))
    return bed, bed.fleet.hosts[0], tenant


async def _outcome(bed: Bed, name: str, reason: str) -> None:
    async def check() -> bool:
        outcome = await bed.condition(REMOTE_MACHINES, name, "BootstrapExecSucceeded")
        return outcome.get("reason") == reason

    await bed.wait_for(f"{name}: {reason}", check, 240, lambda: _diagnose(bed, name))


async def test_a_failed_job_pins_the_key_and_the_next_job_refuses_a_changed_one(
    make_bed: BedFactory, make_tenant: MakeTenant, node: Node
) -> None:
    bed, host, tenant = await _tenant_bed(make_bed, make_tenant)
    failing = f"#cloud-config\nruncmd:\n- echo ran >> {COUNTER}\n- exit 3\n"
    spec = bed.host_spec(
        host,
        hostKeyPolicy={"trustOnFirstUse": True},
        maxAttempts=1,
        provisionJob={"jobSpecTemplate": _job_template()},
    )
    await _machine(bed, tenant, "tofu-0", failing, **spec)
    await _outcome(bed, "tofu-0", "StepFailed")

    async def pinned() -> str | None:
        rm = await bed.get(REMOTE_MACHINES, "tofu-0") or {}
        return (rm["metadata"].get("annotations") or {}).get(PIN)

    assert await bed.wait_for("the failed Job's key pinned", pinned, 60) == (
        host.host_key.fingerprint
    )
    host.regenerate_host_key()  # someone else answers at that address now
    await _edit(tenant, "tofu-0", maxAttempts=2)  # a new generation: a fresh attempt budget
    await _outcome(bed, "tofu-0", "HostKeyMismatch")
    assert host.exec_inside(["cat", COUNTER]).stdout.count(b"ran") == 1  # nothing ran again


async def test_switching_to_the_runner_removes_the_jobs_secret_at_once(
    make_bed: BedFactory, make_tenant: MakeTenant, node: Node
) -> None:
    bed, host, tenant = await _tenant_bed(make_bed, make_tenant)
    slow = "#cloud-config\nruncmd:\n- sleep 600\n"
    spec = bed.host_spec(host, provisionJob={"jobSpecTemplate": _job_template()})
    uid = await _machine(bed, tenant, "switch-0", slow, **spec)
    selector = f"{MACHINE_UID_LABEL}={uid}"

    async def running() -> bool:
        ready = await bed.condition(REMOTE_MACHINES, "switch-0", "Ready")
        secrets = await bed.list(SECRETS, label_selector=selector)
        return ready.get("reason") == "ProvisioningJobRunning" and bool(secrets)

    await bed.wait_for("the Job and its Secret", running, 120, lambda: _diagnose(bed, "switch-0"))
    await _edit(tenant, "switch-0", provisionJob=None)

    async def removed() -> bool:
        secrets = await bed.list(SECRETS, label_selector=selector)
        jobs = await bed.list(JOBS, label_selector=selector)
        live = [j for j in jobs if not j["metadata"].get("deletionTimestamp")]
        return not secrets and not live

    await bed.wait_for(
        "the Job and its Secret removed", removed, 30, lambda: _diagnose(bed, "switch-0")
    )
    assert await bed.get(REMOTE_MACHINES, "switch-0") is not None, "the machine itself stays"
