"""R4: the host key changes before provisioning (a possible man in the middle): the machine
reports HostKeyMismatch and not a single bootstrap step runs on the host."""

from __future__ import annotations

import pytest

from capi_remote.resources import REMOTE_MACHINES
from tests.chaos.conftest import ChaosBedFactory, Controllers, counted, counts

pytestmark = pytest.mark.integration


async def test_r4_rotated_host_key_executes_nothing(
    controllers: Controllers, chaos_bed: ChaosBedFactory
) -> None:
    bed = await chaos_bed(1)
    host = bed.fleet.hosts[0]
    host.regenerate_host_key()  # the known_hosts ConfigMap still has the old key
    controllers.start()
    await bed.cluster("r4")
    data = await bed.bootstrap_secret("r4-bootstrap", counted(bed.registration_script()))
    await bed.remote_machine("r4-0", {**bed.host_spec(host), "maxAttempts": 2})
    await bed.machine("r4-0", "r4", data)

    async def mismatch() -> bool:
        ready = await bed.condition(REMOTE_MACHINES, "r4-0", "Ready")
        return ready.get("reason") == "HostKeyMismatch"

    await bed.wait_for("HostKeyMismatch", mismatch, 90, diagnose=controllers.tails)
    assert counts(host) == (0, 0)
    for path in ("/etc/e2e/node.json", "/run/cluster-api/bootstrap-success.complete"):
        assert host.exec_inside(["test", "-e", path]).returncode != 0, f"{path} exists"
