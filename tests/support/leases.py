"""Waiting for a controller run on restricted RBAC to take its leader-election Lease."""

from __future__ import annotations

import json
import time

from capi_remote_testbed.controlplane import ControlPlane
from capi_remote_testbed.processes import ManagedProcess


def wait_until_leading(
    control_plane: ControlPlane,
    process: ManagedProcess,
    namespace: str,
    lease: str | None = None,
    timeout: float = 60.0,
) -> str:
    """The Lease's holder once the controller holds ``lease`` (any Lease of ``namespace`` when
    None). Fails early when the process exits or its log says a request was forbidden: the RBAC
    under test lacks a verb."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.exit_code() is None, process.describe_failure()
        assert "forbidden" not in process.log.read_text(), process.describe_failure()
        leases = json.loads(control_plane.kubectl("get", "lease", "-n", namespace, "-o", "json"))
        for item in leases["items"]:
            holder = str(item["spec"].get("holderIdentity") or "")
            if holder and lease in (None, item["metadata"]["name"]):
                return holder
        assert time.monotonic() < deadline, f"not leading: {process.describe_failure()}"
        time.sleep(0.3)
