"""Run one SSH job in a process of its own, so a test can ``kill -9`` the runner mid-job.

    python -m tests.support.ssh_job < spec.json

The spec (JSON on stdin): ``address``, ``port``, ``user``, ``private_key``, ``known_hosts``,
``machine_uid``, ``identity``, ``shell`` (a list of shell commands, one step each). Prints
``progress <index> <total>`` before each step and ``result <json>`` at the end (flushed).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from capi_remote.bootstrap import BootstrapPlan, RunCommand
from capi_remote.ssh import Credentials, HostKeyPolicy, Job, Runner, SSHError, Target


def job_from_spec(spec: dict[str, Any]) -> Job:
    target = Target(
        address=spec["address"],
        port=spec.get("port", 22),
        credentials=Credentials(user=spec["user"], private_key=spec["private_key"]),
        host_key=HostKeyPolicy.from_known_hosts(spec["known_hosts"]),
    )
    plan = BootstrapPlan(steps=tuple(RunCommand(shell=command) for command in spec["shell"]))

    def progress(index: int, total: int, _: str) -> None:
        print(f"progress {index} {total}", flush=True)

    return Job(target=target, plan=plan, machine_uid=spec["machine_uid"], on_progress=progress)


def main() -> int:
    spec = json.load(sys.stdin)
    with Runner(identity=spec["identity"]) as runner:
        try:
            result = runner.run(job_from_spec(spec))
        except SSHError as exc:
            print(f"result {json.dumps({'error': exc.reason})}", flush=True)
            return 1
    steps = [step.status for step in result.steps]
    print(f"result {json.dumps({'steps': steps})}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
