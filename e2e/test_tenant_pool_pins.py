"""Issue 13 point 6, performed as a namespace tenant on the test bed: after its RemoteMachine
claimed a pooled host, and before its bootstrap starts (the start binds it to the host, copying
the host's trust-on-first-use pin), the tenant sets the machine's pin annotation to the key of
whoever answers at that address now. The start gives the machine the pooled host's pin instead,
verifies against it, and refuses the changed key: no step runs there. (An edit after the start
is undone with a HostPinsRestored Event: ``tests/unit/test_remotemachine_writes.py``.)"""

from __future__ import annotations

import pytest

from capi_remote.api import HOST_KEY_FINGERPRINT_ANNOTATION as PIN
from capi_remote.resources import POOLED_REMOTE_MACHINES, REMOTE_MACHINES
from capi_remote_testbed import samples
from e2e.bed import BedFactory, workload_kubeconfig
from e2e.test_tenant_attacks import _as_tenant, _tenant_cluster
from tests.fixtures_tenant import MakeTenant

pytestmark = pytest.mark.integration

MARKER = "/root/pool-pin-attack-ran"


async def test_a_tenants_edit_of_a_claimed_machines_pin_is_undone_and_never_used(
    make_bed: BedFactory, make_tenant: MakeTenant
) -> None:
    bed = await make_bed(1)
    (host,) = bed.fleet.hosts
    tenant = await make_tenant(namespace=bed.namespace)
    first_key = host.host_key.fingerprint
    # The pool's owner offers the host with trust-on-first-use; its probe pins the key.
    spec = bed.host_spec(host, hostKeyPolicy={"trustOnFirstUse": True})
    await bed.create(samples.pooled("host-0", bed.namespace, "rack", spec))

    async def host_pinned() -> bool:
        pooled = await bed.get(POOLED_REMOTE_MACHINES, "host-0") or {}
        return (pooled["metadata"].get("annotations") or {}).get(PIN) == first_key

    await bed.wait_for("the pooled host's first-use pin", host_pinned, 120)
    host.regenerate_host_key()  # someone else answers at that address now
    # The tenant's machine claims the host; its bootstrap data does not exist yet.
    await _tenant_cluster(bed, tenant, "t", workload_kubeconfig(bed.plane))
    await _as_tenant(tenant, samples.remote_machine("rm-0", bed.namespace, {"pool": "rack"}))
    await _as_tenant(tenant, samples.machine("rm-0", bed.namespace, "t", "rm-0-data"))

    async def claimed() -> bool:
        pooled = await bed.get(POOLED_REMOTE_MACHINES, "host-0") or {}
        return ((pooled.get("spec") or {}).get("claim") or {}).get("name") == "rm-0"

    await bed.wait_for("the claim", claimed, 120)
    # The attack: point the machine's pin at the new key, then let the bootstrap start.
    rm = await tenant.kube.get(REMOTE_MACHINES, bed.namespace, "rm-0")
    rm["metadata"].setdefault("annotations", {})[PIN] = host.host_key.fingerprint
    await tenant.kube.replace(REMOTE_MACHINES, rm)
    script = f"#cloud-config\nruncmd:\n- touch {MARKER}\n"
    await _as_tenant(tenant, samples.bootstrap_secret("rm-0-data", bed.namespace, script))

    async def refused() -> bool:
        ready = await bed.condition(REMOTE_MACHINES, "rm-0", "Ready")
        return ready.get("reason") == "HostKeyMismatch"

    await bed.wait_for(
        "the new key to be refused", refused, 120, lambda: bed.describe("remotemachine", "rm-0")
    )
    rm = await bed.get(REMOTE_MACHINES, "rm-0") or {}
    assert rm["metadata"]["annotations"][PIN] == first_key, "the pooled host's pin replaced it"
    assert rm["spec"]["address"] == spec["address"], "bound to the host at the start"
    assert host.exec_inside(["test", "-e", MARKER]).returncode != 0, "nothing ran on the host"
