"""``capi-remote migrate`` on a management cluster that k0smotron's Remote Machine provider ran
(issue 16): dry run, then a migration killed (SIGKILL) inside each of its steps and run again until
it finishes, then the cluster lives on under capi-remote: a reused host (the reference's sentinel
on it) is kept out of the pool as NotClean until cleaned, then bootstrapped for a machine scaled
up onto it, which is scaled down with its cleanup, and everything is deleted; no bootstrap the
reference ran runs again.

The reference cannot be built here (its module is refused by the proxy), so a stand-in plays it,
as the issue allows: CRDs with k0smotron's provider label applied by another field manager and
without the fields only capi-remote has, a Deployment labelled as k0smotron's all-in-one manager,
and machines provisioned the way k0smotron leaves them (finalizer, providerID, v1beta2 status,
pool reservations in status, the success sentinel on the host, a Node with the providerID).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from capi_remote.api import GROUP, crdgen
from capi_remote.kube.client import KubeClient
from capi_remote.migrate.inventory import CRDS, DEPLOYMENTS
from capi_remote.migrate.plan import MIGRATE_STEPS, ROLLBACK_STEPS
from capi_remote.migrate.rollback import TOUCH_ANNOTATION
from capi_remote.resources import (
    CLUSTERS,
    CONFIGMAPS,
    MACHINES,
    POOLED_REMOTE_MACHINES,
    REMOTE_CLUSTERS,
    REMOTE_MACHINES,
)
from capi_remote_testbed import samples
from capi_remote_testbed import toolchain as toolchain_module
from capi_remote_testbed.controlplane import ControlPlane, ControlPlaneError
from capi_remote_testbed.hosts import Host
from capi_remote_testbed.provider import ControllerProcess, provider_crds, start_controller
from e2e.bed import (
    MACHINE_DEPLOYMENTS,
    NODE_OWNER_LABEL,
    NODES,
    Bed,
    BedFactory,
    Cluster,
    bed_factory,
)
from e2e.test_machine_flows import _ready_reason, _running
from reconcilers.pool import RECHECK_ANNOTATION
from tests.fixtures_hosts import HostsFactory
from tests.support.namespaces import scratch_namespace

pytestmark = pytest.mark.integration

JSONDict = dict[str, Any]
SENTINEL = "/run/cluster-api/bootstrap-success.complete"
RUNS = "/var/tmp/bootstrap-runs"  # one line per bootstrap run on the host, whoever ran it
REFERENCE_MANAGER = "k0smotron-installer"
REFERENCE_LABEL = "k0sproject-k0smotron"
FINALIZER = "remotemachine.k0smotron.io/finalizer"
#: Fields the reference's CRDs do not have: its schema prunes them.
ONLY_OURS = ("hostKeyPolicy", "claim", "bastion", "passwordRef", "sudoPasswordRef", "timeouts")


@pytest.fixture(scope="module")
def control_plane(toolchain: toolchain_module.Toolchain) -> Iterator[ControlPlane]:
    """A control plane of this module's own: the migration replaces the CRDs, and the session's
    capi-remote controller (started by the integration tests) must not take the reference's
    machines over before the migration does."""
    plane = ControlPlane(toolchain)
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    with scratch_namespace(control_plane.kubectl, f"t-{uuid.uuid4().hex[:10]}") as name:
        yield name


@pytest.fixture
async def make_bed(
    kube: KubeClient, control_plane: Cluster, namespace: str, hosts: HostsFactory
) -> AsyncIterator[BedFactory]:
    """Beds without capi-remote's controller (this overrides e2e/conftest.py's, which starts it):
    the reference "runs" until the migration starts capi-remote's."""
    if not isinstance(control_plane, ControlPlane):
        pytest.skip("replaces the CRDs and runs the controller on the local test bed")
    _install_reference_crds(control_plane)
    async with bed_factory(kube, control_plane, namespace, lambda n: hosts(n)[0].fleet) as make:
        yield make


def _install_reference_crds(plane: ControlPlane) -> None:
    crds = []
    for crd in provider_crds(plane, 9):
        crd = copy.deepcopy(crd)
        crd["metadata"]["labels"]["cluster.x-k8s.io/provider"] = REFERENCE_LABEL
        crd["spec"]["conversion"] = {"strategy": "None"}
        for version in crd["spec"]["versions"]:
            _strip(version["schema"]["openAPIV3Schema"])
        crds.append(crd)
    text = yaml.safe_dump_all(crds)
    # After an earlier test's migration capi-remote's CRDs are there: an apply would merge
    # (a webhook config under strategy None is invalid), so they are first replaced whole.
    with contextlib.suppress(ControlPlaneError):  # NotFound on a fresh control plane
        plane.kubectl("replace", "-f", "-", input_text=text)
    plane.kubectl(
        "apply", "--server-side", "--force-conflicts", f"--field-manager={REFERENCE_MANAGER}",
        "-f", "-", input_text=text,
    )  # fmt: skip


def _strip(schema: JSONDict) -> None:
    """Remove capi-remote-only fields (and the rules that name them) throughout a schema."""
    properties = schema.get("properties") or {}
    for name in ONLY_OURS:
        properties.pop(name, None)
    rules = schema.get("x-kubernetes-validations") or []
    kept = [r for r in rules if not any(name in r["rule"] for name in ONLY_OURS)]
    if rules:
        schema["x-kubernetes-validations"] = kept
    for sub in properties.values():
        _strip(sub)
    if isinstance(schema.get("items"), dict):
        _strip(schema["items"])


# -- the stand-in of the reference ----------------------------------------------------------------


def _k0smotron_spec(host: Host) -> JSONDict:
    return {
        "address": host.address,
        "port": host.port,
        "user": "root",
        "sshKeyRef": {"name": "ssh-key"},
    }


def _ran_bootstrap(host: Host) -> None:
    """What a bootstrap leaves on a host: its run counted, the success sentinel."""
    script = f"echo run >> {RUNS}; mkdir -p /run/cluster-api && touch {SENTINEL}"
    assert host.exec_inside(["sh", "-c", script]).returncode == 0


def _runs(host: Host) -> int:
    out = host.exec_inside(["sh", "-c", f"cat {RUNS} 2>/dev/null || true"])
    return len(out.stdout.split())


async def _provision_as_reference(bed: Bed, name: str, host: Host) -> None:
    """Bootstrap ``host`` for RemoteMachine ``name`` and record it as k0smotron does."""
    _ran_bootstrap(host)
    provider_id = f"remote-machine://{host.address}:{host.port}"
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": f"{bed.namespace}-{name}",
            "labels": {NODE_OWNER_LABEL: bed.namespace},
        },
        "spec": {"providerID": provider_id},
    }
    await bed.kube.create(NODES, node)
    patch = {
        "metadata": {"finalizers": [FINALIZER]},
        "spec": {**_k0smotron_spec(host), "providerID": provider_id},
    }
    await bed.kube.patch(REMOTE_MACHINES, bed.namespace, name, patch)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    conditions = [
        {
            "type": t,
            "status": "True",
            "reason": "Succeeded",
            "message": "",
            "lastTransitionTime": now,
        }
        for t in ("Ready", "BootstrapExecSucceeded")
    ]
    status = {
        "status": {
            "initialization": {"provisioned": True},
            "addresses": [{"type": "ExternalIP", "address": host.address}],
            "conditions": conditions,
        }
    }
    await bed.kube.patch(REMOTE_MACHINES, bed.namespace, name, status, subresource="status")


async def _reference_base(bed: Bed) -> str:
    """Cluster ``mig`` with its RemoteCluster provisioned, a Deployment labelled as k0smotron's
    all-in-one manager, and bootstrap data that counts its runs; returns the data's name."""
    await bed.cluster("mig")
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    await bed.kube.patch(
        REMOTE_CLUSTERS, bed.namespace, "mig",
        {"status": {"initialization": {"provisioned": True}, "conditions": [
            {"type": "Ready", "status": "True", "reason": "Succeeded", "message": "",
             "lastTransitionTime": now}]}},
        subresource="status",
    )  # fmt: skip
    await bed.kube.create(
        DEPLOYMENTS,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "k0smotron-controller-manager",
                "namespace": bed.namespace,
                "labels": {"cluster.x-k8s.io/provider": REFERENCE_LABEL},
            },
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "k0smotron"}},
                "template": {
                    "metadata": {"labels": {"app": "k0smotron"}},
                    "spec": {"containers": [{"name": "manager", "image": "k0smotron:stand-in"}]},
                },
            },
        },
    )
    script = bed.registration_script() + f'- "echo run >> {RUNS}"\n'
    return await bed.bootstrap_secret("mig-bootstrap", script)


async def _reference_machine(bed: Bed, name: str, host: Host, data: str) -> None:
    """A control-plane machine the reference provisioned."""
    await bed.remote_machine(name, _k0smotron_spec(host))
    await bed.machine(name, "mig", data)
    await _provision_as_reference(bed, name, host)
    await _running(bed, name, within=120)


async def _reference_cluster(bed: Bed) -> dict[str, Host]:
    """Cluster ``mig``: control-plane machine cp-0 on host 0 and MachineDeployment workers (1
    replica) on pool ``workers`` (hosts 1 and 2; host 2 free but bootstrapped before for a
    machine since deleted), both provisioned by the reference; RemoteMachine late-0 on host 3,
    which the reference had not got to. Returns the hosts by role."""
    h = bed.fleet.hosts
    data = await _reference_base(bed)
    for host in h[1:3]:
        await bed.create(samples.pooled(host.name, bed.namespace, "workers", _k0smotron_spec(host)))
    _ran_bootstrap(h[2])
    await bed.machine_template("workers", "workers")
    await _reference_machine(bed, "cp-0", h[0], data)

    await bed.machine_deployment("workers", "mig", data, "workers", replicas=1)

    async def worker() -> str:
        for rm in await bed.list(REMOTE_MACHINES):
            if rm["spec"].get("pool") == "workers":
                return str(rm["metadata"]["name"])
        return ""

    name = await bed.wait_for("the worker's RemoteMachine", worker, 120)
    reservation = {
        "status": {"reserved": True, "machineRef": {"name": name, "namespace": bed.namespace}}
    }
    await bed.kube.patch(
        POOLED_REMOTE_MACHINES, bed.namespace, h[1].name, reservation, subresource="status"
    )
    await _provision_as_reference(bed, name, h[1])
    await _running(bed, name, within=120)

    await bed.remote_machine("late-0", _k0smotron_spec(h[3]))
    await bed.machine("late-0", "mig", data, control_plane=False)

    async def owned() -> bool:  # what the check sees of a machine mid-provisioning
        rm = await bed.get(REMOTE_MACHINES, "late-0") or {}
        owners = rm.get("metadata", {}).get("ownerReferences") or []
        return any(o.get("kind") == "Machine" for o in owners)

    await bed.wait_for("Cluster API to own late-0", owned, 60)
    return {"cp": h[0], "worker": h[1], "reused": h[2], "late": h[3]}


# -- running the command --------------------------------------------------------------------------


class Migrate:
    def __init__(self, bed: Bed, plane: ControlPlane, workdir: Path) -> None:
        self.bed = bed
        self.plane = plane
        self.workdir = workdir
        self.controller: ControllerProcess | None = None
        components = workdir / "components.yaml"
        components.write_text(yaml.safe_dump_all(provider_crds(plane, 9)))
        self.argv = [
            sys.executable, "-m", "capi_remote.cli", "migrate",
            f"--kubeconfig={plane.kubeconfig}", f"--record-namespace={bed.namespace}",
            f"--components={components}", "--trust-on-first-use", "--stop-all-in-one",
            "--wait=60",
        ]  # fmt: skip

    async def run(self, *extra: str, kill_in: str | None = None) -> tuple[int, list[str]]:
        """Run once; with ``kill_in``, SIGKILL it at the first line after that step started."""
        proc = await asyncio.create_subprocess_exec(
            *self.argv, *extra, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        assert proc.stdout is not None
        lines: list[str] = []
        inside = False
        async for raw in proc.stdout:
            line = raw.decode().rstrip("\n")
            lines.append(line)
            word, _, rest = line.partition(" ")
            step = rest.strip().split(":")[0]
            if inside and kill_in is not None:
                proc.kill()
                break
            if word == "start" and step == kill_in:
                inside = True
            if word == "wait" and step == "controller" and kill_in != "controller":
                await self.start_controller()
        code = await proc.wait()
        return code, lines

    async def start_controller(self) -> None:
        if self.controller is None:
            workdir = Path(tempfile.mkdtemp(dir=self.workdir, prefix="controller-"))
            self.controller = await asyncio.to_thread(start_controller, self.plane, workdir)

    def stop_controller(self) -> None:
        if self.controller is not None:
            self.controller.process.stop()
            self.controller = None


@contextlib.asynccontextmanager
async def _migrate(bed: Bed, plane: ControlPlane) -> AsyncIterator[Migrate]:
    with tempfile.TemporaryDirectory(prefix="capi-remote-migrate-") as tmp:
        migrate = Migrate(bed, plane, Path(tmp))
        try:
            yield migrate
        finally:
            migrate.stop_controller()


async def _paused(bed: Bed) -> bool:
    return bool(((await bed.get(CLUSTERS, "mig")) or {}).get("spec", {}).get("paused"))


async def test_migrate_survives_a_kill_in_every_step_and_the_cluster_lives_on(
    make_bed: BedFactory, control_plane: ControlPlane
) -> None:
    bed = await make_bed(4)
    hosts = await _reference_cluster(bed)
    async with _migrate(bed, control_plane) as migrate:
        await _migrate_and_live_on(bed, migrate, hosts)


async def _migrate_and_live_on(bed: Bed, migrate: Migrate, hosts: dict[str, Host]) -> None:
    # The dry run shows the checks and the plan and changes nothing.
    code, lines = await migrate.run("--dry-run")
    text = "\n".join(lines)
    assert code == 0, text
    assert "late-0 is not provisioned yet and has bootstrap data" in text
    assert "runs all of k0smotron" in text
    for step in MIGRATE_STEPS:
        assert f"plan  {step}: [todo]" in text
    assert not await _paused(bed)
    assert await bed.get(CONFIGMAPS, "capi-remote-migration") is None

    # Killed inside each step in turn; every run continues where the last one was killed.
    text = await _kill_in_every_step(migrate, MIGRATE_STEPS)
    assert "done  report" in text and "skip  crds: done before" in text

    # The outcome: CRDs replaced, reference stopped, policies set, Clusters running again.
    assert await _crd_provider(bed) == crdgen.PROVIDER_LABEL
    reference = await bed.kube.get(DEPLOYMENTS, bed.namespace, "k0smotron-controller-manager")
    assert reference["spec"]["replicas"] == 0
    assert not await _paused(bed)
    known = await bed.get(CONFIGMAPS, "capi-remote-known-hosts") or {}
    for role in ("reused", "late", "worker"):
        assert hosts[role].address in known["data"]["known_hosts"]

    # The machine the reference had not got to is bootstrapped once; the others are left alone.
    await _running(bed, "late-0", within=180)
    assert _runs(hosts["late"]) == 1
    assert _runs(hosts["cp"]) == 1 and _runs(hosts["worker"]) == 1

    # Scale up: the pool's only free host is the reused one, whose sentinel is another
    # machine's. Its probe finds it NotClean, so the new worker waits for a clean host instead of
    # claiming it; once the host is cleaned and re-checked, it is bootstrapped for the new worker.
    reused = hosts["reused"]

    async def reused_not_clean() -> bool:
        pooled = await bed.get(POOLED_REMOTE_MACHINES, reused.name) or {}
        return ((pooled.get("status") or {}).get("health") or {}).get("state") == "NotClean"

    await bed.wait_for("the reused host's probe to find it NotClean", reused_not_clean)
    await bed.kube.patch(MACHINE_DEPLOYMENTS, bed.namespace, "workers", {"spec": {"replicas": 2}})

    async def new_worker() -> str:
        for rm in await bed.list(REMOTE_MACHINES):
            if rm["spec"].get("pool") == "workers" and not rm["spec"].get("address"):
                return str(rm["metadata"]["name"])
        return ""

    new = await bed.wait_for("a new worker without a host", new_worker, 120)
    await _ready_reason(bed, new, "WaitingForPoolMachine", within=120)
    assert _runs(reused) == 1
    assert reused.exec_inside(["rm", "-f", SENTINEL]).returncode == 0
    recheck = {"metadata": {"annotations": {RECHECK_ANNOTATION: "cleaned"}}}
    await bed.kube.patch(POOLED_REMOTE_MACHINES, bed.namespace, reused.name, recheck)
    await _running(bed, new, within=180)
    assert (await bed.get(REMOTE_MACHINES, new) or {})["spec"]["address"] == reused.address
    assert _runs(reused) == 2

    # Scale down, removing the new machine: its cleanup runs (the sentinel goes).
    await bed.kube.patch(
        MACHINES, bed.namespace, new,
        {"metadata": {"annotations": {"cluster.x-k8s.io/delete-machine": "yes"}}},
    )  # fmt: skip
    await bed.kube.patch(MACHINE_DEPLOYMENTS, bed.namespace, "workers", {"spec": {"replicas": 1}})

    async def gone() -> bool:
        return await bed.get(REMOTE_MACHINES, new) is None

    await bed.wait_for(f"{new} deleted", gone, 180)
    assert reused.exec_inside(["test", "-e", SENTINEL]).returncode != 0

    # Delete the cluster: every machine goes; none was bootstrapped again.
    await bed.kube.delete(CLUSTERS, bed.namespace, "mig")

    async def all_gone() -> bool:
        return not await bed.list(REMOTE_MACHINES)

    await bed.wait_for("every RemoteMachine deleted", all_gone, 240)
    assert [_runs(hosts[r]) for r in ("cp", "worker", "reused", "late")] == [1, 1, 2, 1]


async def _kill_in_every_step(migrate: Migrate, steps: tuple[str, ...], *extra: str) -> str:
    """Run, SIGKILLed inside each step in turn, then once to the end; the last run's output."""
    for step in steps[1:]:
        code, lines = await migrate.run(*extra, kill_in=step)
        assert code == -9, "\n".join(lines)
    code, lines = await migrate.run(*extra)
    assert code == 0, "\n".join(lines)
    return "\n".join(lines)


async def _crd_provider(bed: Bed) -> str:
    crd = await bed.kube.get(CRDS, None, f"remotemachines.{GROUP}")
    return str(crd["metadata"]["labels"]["cluster.x-k8s.io/provider"])


async def test_rollback_survives_a_kill_in_every_step_and_puts_the_reference_back(
    make_bed: BedFactory, control_plane: ControlPlane
) -> None:
    bed = await make_bed(2)
    data = await _reference_base(bed)
    await _reference_machine(bed, "cp-0", bed.fleet.hosts[0], data)
    await bed.create(
        samples.pooled("spare", bed.namespace, "workers", _k0smotron_spec(bed.fleet.hosts[1]))
    )
    async with _migrate(bed, control_plane) as migrate:
        code, lines = await migrate.run()
        assert code == 0, "\n".join(lines)
        assert await _crd_provider(bed) == crdgen.PROVIDER_LABEL
        migrate.stop_controller()

        text = await _kill_in_every_step(
            migrate, ROLLBACK_STEPS, "--rollback", "--capi-remote-stopped"
        )
        assert "done  report" in text and "skip  restore-crds: done before" in text

        # The reference's CRDs exactly as they were: its label, no field only capi-remote has.
        crd = await bed.kube.get(CRDS, None, f"remotemachines.{GROUP}")
        assert crd["metadata"]["labels"]["cluster.x-k8s.io/provider"] == REFERENCE_LABEL
        assert crd["spec"]["conversion"] == {"strategy": "None"}
        for version in crd["spec"]["versions"]:
            spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            assert "hostKeyPolicy" not in spec
        reference = await bed.kube.get(DEPLOYMENTS, bed.namespace, "k0smotron-controller-manager")
        assert reference["spec"]["replicas"] == 1
        assert not await _paused(bed)
        rm = await bed.get(REMOTE_MACHINES, "cp-0") or {}
        assert TOUCH_ANNOTATION in rm["metadata"]["annotations"]
        assert rm["status"]["initialization"]["provisioned"] is True
        assert _runs(bed.fleet.hosts[0]) == 1

        # And forward again, from the same record.
        code, lines = await migrate.run()
        assert code == 0, "\n".join(lines)
        assert await _crd_provider(bed) == crdgen.PROVIDER_LABEL
        await _running(bed, "cp-0", within=60)
        assert _runs(bed.fleet.hosts[0]) == 1
