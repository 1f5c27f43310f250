"""S1: no secret leaks. After a provisioning that uses every kind of secret (the SSH private key,
the operator's sudo password, a bootstrap script with a unique marker), scan every log line our
controllers wrote in this package (killed ones included), every Event and every status of our
objects: none may contain private-key material, the password or the marker.

This module runs last in the package (files run in name order), so the scan covers the logs of
the R1/R2/R4/R7 runs as well.
"""

from __future__ import annotations

import base64

import pytest

from capi_remote.resources import MACHINES
from tests.chaos.conftest import MARKER, ChaosBedFactory, ChaosEnv, Controllers, counted, counts

pytestmark = pytest.mark.integration

KINDS = (
    "remotemachines.infrastructure.cluster.x-k8s.io",
    "pooledremotemachines.infrastructure.cluster.x-k8s.io",
    "remoteclusters.infrastructure.cluster.x-k8s.io",
    "machines.cluster.x-k8s.io",
    "clusters.cluster.x-k8s.io",
    "events",
)


def _needles(private_key: str, password: str) -> dict[str, str]:
    body = [line for line in private_key.splitlines() if line and "-----" not in line]
    return {
        "private key header": "PRIVATE KEY",
        "private key body": body[len(body) // 2],
        "operator password": password,
        "bootstrap marker": MARKER,
        "bootstrap marker (base64)": base64.b64encode(MARKER.encode()).decode()[:16],
    }


async def test_s1_no_secret_in_logs_events_or_status(
    chaos_env: ChaosEnv, controllers: Controllers, chaos_bed: ChaosBedFactory
) -> None:
    bed = await chaos_bed(1)
    host = bed.fleet.hosts[0]
    password = bed.fleet.operator_password
    await bed.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "sudo"},
            "stringData": {"password": password},
        }
    )
    controllers.start()
    await bed.cluster("s1")
    data = await bed.bootstrap_secret("s1-bootstrap", counted(bed.registration_script()))
    spec = bed.host_spec(
        host, user="operator", useSudo=True, sudoPasswordRef={"name": "sudo", "key": "password"}
    )
    await bed.remote_machine("s1-0", spec)
    await bed.machine("s1-0", "s1", data)

    async def running() -> bool:
        machine = await bed.get(MACHINES, "s1-0") or {}
        return (machine.get("status") or {}).get("phase") == "Running"

    await bed.wait_for(
        "s1-0 Running (operator with sudo password)",
        running,
        150,
        diagnose=lambda: bed.describe("remotemachine", "s1-0") + controllers.tails(),
    )
    assert counts(host) == (1, 1)

    sources: dict[str, str] = {
        str(log): log.read_text(errors="replace") for log in controllers.logs if log.exists()
    }
    for kind in KINDS:
        sources[kind] = chaos_env.plane.kubectl("get", kind, "-A", "-o", "json")
    assert sum(len(text.splitlines()) for text in sources.values()) > 100, "nothing to scan?"
    leaks = [
        f"{what} in {where}"
        for where, text in sources.items()
        for what, needle in _needles(bed.fleet.client_key.private_openssh, password).items()
        if needle in text
    ]  # never print the needles themselves
    lines = sum(len(text.splitlines()) for text in sources.values())
    print(f"\nS1: scanned {len(controllers.logs)} controller logs and {len(KINDS)} kinds,"
          f" {lines} lines")  # fmt: skip
    assert not leaks, leaks
