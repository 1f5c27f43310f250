"""Issue 13 point 6 on the test bed: a trust-on-first-use key is pinned on the first connection,
even when that attempt fails, so the next attempt refuses a changed key and runs nothing."""

from __future__ import annotations

import pytest

from capi_remote.api import HOST_KEY_FINGERPRINT_ANNOTATION
from capi_remote.resources import REMOTE_MACHINES
from e2e.bed import BedFactory

pytestmark = pytest.mark.integration

COUNTER = "/root/first-use-attempts"
FAILING = f"#cloud-config\nruncmd:\n- echo ran >> {COUNTER}\n- exit 3\n"


async def test_a_failed_first_attempt_pins_and_a_changed_key_is_refused_later(
    make_bed: BedFactory,
) -> None:
    bed = await make_bed(1)
    (host,) = bed.fleet.hosts
    await bed.cluster("tofu")
    data = await bed.bootstrap_secret("tofu-bootstrap", FAILING)
    spec = bed.host_spec(host, hostKeyPolicy={"trustOnFirstUse": True}, maxAttempts=1)
    await bed.remote_machine("tofu-0", spec)
    await bed.machine("tofu-0", "tofu", data)

    async def failed() -> bool:
        ready = await bed.condition(REMOTE_MACHINES, "tofu-0", "Ready")
        return ready.get("reason") == "StepFailed"

    await bed.wait_for("the first attempt to fail", failed, 120)
    rm = await bed.get(REMOTE_MACHINES, "tofu-0") or {}
    annotations = rm["metadata"].get("annotations") or {}
    assert annotations.get(HOST_KEY_FINGERPRINT_ANNOTATION) == host.host_key.fingerprint

    host.regenerate_host_key()  # someone else answers at that address now
    await bed.kube.patch(  # a new generation: a fresh attempt budget
        REMOTE_MACHINES, bed.namespace, "tofu-0", {"spec": {"maxAttempts": 2}}
    )

    async def refused() -> bool:
        ready = await bed.condition(REMOTE_MACHINES, "tofu-0", "Ready")
        return ready.get("reason") == "HostKeyMismatch"

    await bed.wait_for("the changed key to be refused", refused, 120)
    assert host.exec_inside(["cat", COUNTER]).stdout.count(b"ran") == 1  # nothing ran again
