"""k0smotron's users' flows on hosts reused after the reference provider (issue 16, points 2
and 4): a sentinel another machine left is not this machine's bootstrap, a machine provisioned
before adopts its own (runner and provisionJob alike), and a standalone RemoteMachine's labels
and annotations reach its Machine.

The RemoteMachines are shaped like k0smotron's documented one (docs/capi-remote.md: address,
port, user root, sshKeyRef) plus the host-key policy capi-remote requires."""

from __future__ import annotations

import pytest

from capi_remote.resources import MACHINES, REMOTE_MACHINES
from capi_remote_testbed import samples
from capi_remote_testbed.node import Node
from e2e.bed import Bed, BedFactory
from e2e.test_machine_flows import _ready_reason, _running
from e2e.test_provision_job import _job_template

pytestmark = pytest.mark.integration

_SENTINEL = "/run/cluster-api/bootstrap-success.complete"
#: What a bootstrap the reference provider ran leaves behind: the sentinel, no owner in it.
_LEFT_BY_ANOTHER_MACHINE = f"mkdir -p /run/cluster-api && touch {_SENTINEL}"


async def _bootstrap_reason(bed: Bed, name: str, reason: str) -> None:
    async def check() -> bool:
        done = await bed.condition(REMOTE_MACHINES, name, "BootstrapExecSucceeded")
        return done.get("reason") == reason

    await bed.wait_for(
        f"{name} BootstrapExecSucceeded {reason}",
        check,
        120,
        diagnose=lambda: bed.describe("remotemachine", name),
    )


async def test_a_reused_host_is_bootstrapped_for_its_new_machine_once_cleaned(
    make_bed: BedFactory,
) -> None:
    bed = await make_bed(1)
    host = bed.fleet.hosts[0]
    assert host.exec_inside(["sh", "-c", _LEFT_BY_ANOTHER_MACHINE]).returncode == 0
    await bed.cluster("reuse")
    data = await bed.bootstrap_secret("reuse-bootstrap")
    rm = samples.remote_machine("reuse-0", bed.namespace, bed.host_spec(host))
    rm["metadata"]["labels"] = {"example.com/rack": "r1", "cluster.x-k8s.io/not-ours": "x"}
    rm["metadata"]["annotations"] = {"example.com/owner": "team-a"}
    await bed.create(rm)
    await bed.machine("reuse-0", "reuse", data)

    # The sentinel is another machine's: nothing runs, and the condition says what to do.
    await _ready_reason(bed, "reuse-0", "HostNotClean")
    ready = await bed.condition(REMOTE_MACHINES, "reuse-0", "Ready")
    assert _SENTINEL in ready["message"] and "clean the host" in ready["message"]
    assert host.exec_inside(["test", "-e", "/etc/e2e/node.json"]).returncode != 0, "it ran"
    # Labels and annotations reach the Machine before the bootstrap does.
    machine = await bed.get(MACHINES, "reuse-0") or {}
    assert machine["metadata"]["labels"]["example.com/rack"] == "r1"
    assert "cluster.x-k8s.io/not-ours" not in machine["metadata"]["labels"]
    assert machine["metadata"]["annotations"]["example.com/owner"] == "team-a"

    # The operator cleans the host: the next attempt bootstraps it for this machine.
    assert host.exec_inside(["rm", "-f", _SENTINEL]).returncode == 0
    await _running(bed, "reuse-0", within=180)
    await _bootstrap_reason(bed, "reuse-0", "Provisioned")
    assert host.exec_inside(["test", "-e", "/etc/e2e/node.json"]).returncode == 0


async def test_a_machine_provisioned_before_adopts_its_sentinel(make_bed: BedFactory) -> None:
    # As after a clusterctl move without status of a machine the reference provisioned: its
    # spec keeps the providerID the reference wrote, the host keeps the sentinel.
    bed = await make_bed(1)
    host = bed.fleet.hosts[0]
    assert host.exec_inside(["sh", "-c", _LEFT_BY_ANOTHER_MACHINE]).returncode == 0
    await bed.cluster("adopt")
    data = await bed.bootstrap_secret("adopt-bootstrap")
    spec = bed.host_spec(host, providerID=f"remote-machine://{host.address}:{host.port}")
    await bed.remote_machine("adopt-0", spec)
    await bed.machine("adopt-0", "adopt", data)

    await _bootstrap_reason(bed, "adopt-0", "AlreadyBootstrapped")
    assert host.exec_inside(["test", "-e", "/etc/e2e/node.json"]).returncode != 0, "it ran"


async def test_a_provision_job_agrees_whose_sentinel_it_is(
    make_bed: BedFactory, node: Node
) -> None:
    bed = await make_bed(1)
    host = bed.fleet.hosts[0]
    assert host.exec_inside(["sh", "-c", _LEFT_BY_ANOTHER_MACHINE]).returncode == 0
    await bed.cluster("rjob")
    data = await bed.bootstrap_secret("rjob-bootstrap")
    spec = bed.host_spec(host, provisionJob={"jobSpecTemplate": _job_template()})
    await bed.remote_machine("rjob-0", spec)
    await bed.machine("rjob-0", "rjob", data)

    await _bootstrap_reason(bed, "rjob-0", "HostNotClean")
    assert host.exec_inside(["test", "-e", "/etc/e2e/node.json"]).returncode != 0, "it ran"
    assert host.exec_inside(["rm", "-f", _SENTINEL]).returncode == 0
    await _running(bed, "rjob-0", within=180)
