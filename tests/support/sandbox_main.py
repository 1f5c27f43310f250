"""A main module started with ``python -m`` (as the test bed starts the controller) that parses
through the ParseSandbox: its import of ``sandbox_heavy`` must not run again in every child."""

import asyncio
import sys

import tests.support.sandbox_heavy  # noqa: F401  (the import is the point)
from capi_remote.bootstrap import InstanceMetadata, ParseSandbox

DATA = b"#cloud-config\nruncmd:\n- echo hi\n"


async def _parse(count: int) -> None:
    sandbox = ParseSandbox()
    metadata = InstanceMetadata(instance_id="u", local_hostname="h", hostname="h")
    for _ in range(count):
        plan = await sandbox.parse(DATA, None, metadata=metadata)
        assert plan.steps


if __name__ == "__main__":
    asyncio.run(_parse(int(sys.argv[1])))
