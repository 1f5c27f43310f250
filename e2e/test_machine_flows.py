"""Cluster API flows on the real test bed: CAPI core, our controller process, sshd hosts."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable

import pytest

from capi_remote.api import (
    BASTION_HOST_KEY_FINGERPRINT_ANNOTATION,
    HOST_KEY_FINGERPRINT_ANNOTATION,
)
from capi_remote.kube.events import EVENTS
from capi_remote.resources import (
    CLUSTERS,
    MACHINES,
    POOLED_REMOTE_MACHINES,
    REMOTE_MACHINES,
    SECRETS,
)
from capi_remote_testbed import samples
from capi_remote_testbed.samples import DEPLOYMENT_LABEL
from e2e.bed import MACHINE_DEPLOYMENTS, NODES, Bed, BedFactory
from reconcilers.pool import RECHECK_ANNOTATION, is_free
from reconcilers.remotemachine import FORCE_RELEASE_ANNOTATION

pytestmark = pytest.mark.integration
SENTINEL = "/run/cluster-api/bootstrap-success.complete"


async def _running(bed: Bed, machine: str, within: float = 120.0) -> None:
    async def check() -> bool:
        return await bed.machine_phase(machine) == "Running"

    await bed.wait_for(
        f"Machine {machine} to be Running",
        check,
        within,
        diagnose=lambda: bed.describe("remotemachine", machine) + bed.describe("machine", machine),
    )


async def _ready_reason(bed: Bed, machine: str, reason: str, within: float = 120.0) -> None:
    """Wait until RemoteMachine ``machine``'s Ready condition has ``reason``."""

    async def check() -> bool:
        ready = await bed.condition(REMOTE_MACHINES, machine, "Ready")
        return ready.get("reason") == reason

    await bed.wait_for(
        f"{machine} Ready {reason}",
        check,
        within,
        diagnose=lambda: bed.describe("remotemachine", machine),
    )


async def test_cluster_with_one_machine_reaches_running(make_bed: BedFactory) -> None:
    bed = await make_bed(1)
    host = bed.fleet.hosts[0]
    await bed.cluster("one")
    data = await bed.bootstrap_secret("one-bootstrap")
    await bed.remote_machine("one-cp-0", bed.host_spec(host))
    await bed.machine("one-cp-0", "one", data)
    await _running(bed, "one-cp-0")

    rm = await bed.get(REMOTE_MACHINES, "one-cp-0")
    assert rm is not None
    assert rm["spec"]["providerID"] == f"remote-machine://{host.address}:22"
    assert rm["status"]["initialization"]["provisioned"] is True
    addresses = {(a["type"], a["address"]) for a in rm["status"]["addresses"]}
    assert ("ExternalIP", host.address) in addresses
    assert ("Hostname", host.name) in addresses
    node = await bed.kube.get(NODES, None, "one-cp-0")
    assert node["spec"]["providerID"] == rm["spec"]["providerID"]  # PROVIDER_ID substituted
    machine = await bed.get(MACHINES, "one-cp-0")
    assert machine is not None
    assert machine["status"]["nodeRef"]["name"] == "one-cp-0"
    described = bed.describe("remotemachine", "one-cp-0")
    assert "Provisioned" in described
    # The host ran the bootstrap: the sentinel exists inside the host only.
    assert (
        host.exec_inside(["test", "-f", "/run/cluster-api/bootstrap-success.complete"]).returncode
        == 0
    )


#: A lock as another controller's host script writes it (owner, uptime, boot id): fresh now.
_FOREIGN_LOCK = (
    "read -r up _ < /proc/uptime; read -r boot < /proc/sys/kernel/random/boot_id;"
    " mkdir -m 700 -p /run/capi-remote;"
    ' echo "other-controller ${up%.*} $boot" > /run/capi-remote/host.lock'
)


async def test_a_host_locked_by_another_controller_is_waited_for_without_spending_attempts(
    make_bed: BedFactory,
) -> None:
    bed = await make_bed(1)
    host = bed.fleet.hosts[0]
    assert host.exec_inside(["sh", "-c", _FOREIGN_LOCK]).returncode == 0
    await bed.cluster("locked")
    data = await bed.bootstrap_secret("locked-bootstrap")
    # One attempt only: waiting for the lock must not use it up.
    await bed.remote_machine("locked-0", {**bed.host_spec(host), "maxAttempts": 1})
    await bed.machine("locked-0", "locked", data)

    await _ready_reason(bed, "locked-0", "HostLocked")
    # The holder keeps its heartbeat fresh for longer than two lock retries.
    for _ in range(5):
        await asyncio.sleep(5)
        assert host.exec_inside(["sh", "-c", _FOREIGN_LOCK]).returncode == 0
    rm = await bed.get(REMOTE_MACHINES, "locked-0") or {}
    assert rm["status"]["phase"] == "Provisioning", rm["status"]
    assert rm["status"]["bootstrap"]["attempts"] == 1
    ready = await bed.condition(REMOTE_MACHINES, "locked-0", "Ready")
    assert ready["reason"] == "HostLocked"
    assert "locked by other-controller" in ready["message"]
    assert "HostLocked" in bed.describe("remotemachine", "locked-0")
    assert host.exec_inside(["test", "-e", "/etc/e2e/node.json"]).returncode != 0, "it ran"

    # The holder releases the host: the same attempt goes on.
    assert host.exec_inside(["rm", "-f", "/run/capi-remote/host.lock"]).returncode == 0
    await _running(bed, "locked-0")
    rm = await bed.get(REMOTE_MACHINES, "locked-0") or {}
    assert rm["status"]["bootstrap"]["attempts"] == 1


async def test_invalid_bootstrap_data_fails_clearly_and_a_fixed_secret_provisions(
    make_bed: BedFactory,
) -> None:
    bed = await make_bed(1)
    host = bed.fleet.hosts[0]
    await bed.cluster("fixed")
    data = await bed.bootstrap_secret("fixed-bootstrap", "#cloud-config\nruncmd: [unclosed\n")
    await bed.remote_machine("fixed-0", bed.host_spec(host))
    await bed.machine("fixed-0", "fixed", data)

    await _ready_reason(bed, "fixed-0", "InvalidBootstrapData", 60)
    rm = await bed.get(REMOTE_MACHINES, "fixed-0") or {}
    assert rm["status"]["phase"] == "Failed"
    assert host.exec_inside(["test", "-e", "/etc/e2e/node.json"]).returncode != 0, "it ran"

    # The verdict holds for that data only: the fixed Secret is parsed again, and runs.
    fixed = base64.b64encode(bed.registration_script().encode()).decode()
    await bed.kube.patch(SECRETS, bed.namespace, data, {"data": {"value": fixed}})
    await _running(bed, "fixed-0")


async def test_a_node_registered_without_provider_id_gets_linked(make_bed: BedFactory) -> None:
    bed = await make_bed(1)
    host = bed.fleet.hosts[0]
    await bed.cluster("link")
    data = await bed.bootstrap_secret(
        "link-bootstrap", bed.registration_script(with_provider_id=False)
    )
    await bed.remote_machine("link-cp-0", bed.host_spec(host))
    await bed.machine("link-cp-0", "link", data)
    await _running(bed, "link-cp-0", within=180)
    node = await bed.kube.get(NODES, None, "link-cp-0")
    assert node["spec"]["providerID"] == f"remote-machine://{host.address}:22"
    assert "NodeLinked" in bed.describe("remotemachine", "link-cp-0")


async def _pool_free(bed: Bed, pool: str) -> int:
    hosts = await bed.list(POOLED_REMOTE_MACHINES)
    return sum(1 for h in hosts if h["spec"]["pool"] == pool and not h["spec"].get("claim"))


async def _running_count(bed: Bed, deployment: str) -> int:
    machines = await bed.list(
        MACHINES, label_selector=f"e2e.capi-remote.dev/deployment={deployment}"
    )
    return sum(1 for m in machines if (m.get("status") or {}).get("phase") == "Running")


async def _scale(bed: Bed, deployment: str, replicas: int) -> None:
    await bed.kube.patch(
        MACHINE_DEPLOYMENTS, bed.namespace, deployment, {"spec": {"replicas": replicas}}
    )


async def test_machine_deployment_on_a_pool_scales_waits_for_hosts_and_returns_them(
    make_bed: BedFactory,
) -> None:
    bed = await make_bed(7)  # 5 pooled, 1 for the control-plane machine, 1 added later
    pool, hosts = "workers", bed.fleet.hosts
    for host in hosts[:5]:
        await bed.pooled(host.name, pool, host)
    await bed.machine_template("workers", pool)
    await bed.cluster("md")
    data = await bed.bootstrap_secret("md-bootstrap")
    await bed.machine("md-cp-0", "md", data)  # a control-plane machine initialises the cluster
    await bed.remote_machine("md-cp-0", bed.host_spec(hosts[5]))
    await _running(bed, "md-cp-0")

    await bed.machine_deployment("md-workers", "md", data, "workers", replicas=3)

    def running(n: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return await _running_count(bed, "md-workers") == n

        return check

    await bed.wait_for("3 workers Running", running(3), 180)
    assert await _pool_free(bed, pool) == 2
    await _scale(bed, "md-workers", 5)
    await bed.wait_for("5 workers Running", running(5), 180)
    assert await _pool_free(bed, pool) == 0

    # A 6th worker has no host: it waits, visibly, and proceeds once a host joins the pool.
    await _scale(bed, "md-workers", 6)

    async def one_waiting() -> str:
        for rm in await bed.list(REMOTE_MACHINES):
            if rm["spec"].get("pool") == pool and not rm["spec"].get("address"):
                ready = await bed.condition(REMOTE_MACHINES, rm["metadata"]["name"], "Ready")
                if ready.get("reason") == "WaitingForPoolMachine":
                    return str(rm["metadata"]["name"])
        return ""

    waiting = await bed.wait_for("a worker WaitingForPoolMachine", one_waiting, 120)
    assert "WaitingForPoolMachine" in bed.describe("remotemachine", waiting)
    await bed.pooled(hosts[6].name, pool, hosts[6])
    await bed.wait_for("6 workers Running", running(6), 180)

    await _scale(bed, "md-workers", 2)
    await bed.wait_for("2 workers Running", running(2), 240)

    async def four_free() -> bool:
        return await _pool_free(bed, pool) == 4

    await bed.wait_for("4 hosts back in the pool", four_free, 240)
    for pooled in await bed.list(POOLED_REMOTE_MACHINES):
        if pooled["spec"].get("claim"):
            continue
        host = next(h for h in hosts if h.address == pooled["spec"]["machine"]["address"])
        sentinel = host.exec_inside(["test", "-e", "/run/cluster-api/bootstrap-success.complete"])
        assert sentinel.returncode != 0, f"{host.name} was returned without being cleaned"


async def test_host_key_mismatch_and_unreachable_host_show_in_describe(
    make_bed: BedFactory,
) -> None:
    bed = await make_bed(2)
    changed, down = bed.fleet.hosts
    changed.regenerate_host_key()  # known_hosts still has the old key: a possible MITM
    down.stop_sshd()
    await bed.cluster("faults")
    data = await bed.bootstrap_secret("faults-bootstrap")
    for name, host in (("faults-mitm", changed), ("faults-down", down)):
        await bed.remote_machine(name, {**bed.host_spec(host), "maxAttempts": 2})
        await bed.machine(name, "faults", data)

    await _ready_reason(bed, "faults-mitm", "HostKeyMismatch")
    described = bed.describe("remotemachine", "faults-mitm")
    assert "HostKeyMismatch" in described
    assert "does not match" in described
    # Nothing ran on the host whose key changed.
    assert changed.exec_inside(["test", "-e", "/etc/e2e/node.json"]).returncode != 0
    # Terminal (a changed key is not retried): the v1beta1 contract's failure fields say so too.
    mitm = await bed.get(REMOTE_MACHINES, "faults-mitm") or {}
    failure = mitm["status"]["deprecated"]["v1beta1"]
    assert failure["failureReason"] == "CreateError"
    assert failure["failureMessage"].startswith("HostKeyMismatch: ")

    await _ready_reason(bed, "faults-down", "HostUnreachable")
    assert "HostUnreachable" in bed.describe("remotemachine", "faults-down")


async def test_deleting_the_cluster_releases_everything(make_bed: BedFactory) -> None:
    bed = await make_bed(2)
    pool = "gone"
    for host in bed.fleet.hosts:
        await bed.pooled(host.name, pool, host)
    await bed.cluster("gone")
    data = await bed.bootstrap_secret("gone-bootstrap")
    count_cleanup = "echo cleaned >> /var/tmp/e2e-cleanups"
    for index in range(2):
        name = f"gone-{index}"
        await bed.remote_machine(name, {"pool": pool, "cleanUpCommands": [count_cleanup]})
        await bed.machine(name, "gone", data)
    for index in range(2):
        await _running(bed, f"gone-{index}")
    await bed.kube.delete(CLUSTERS, bed.namespace, "gone")

    async def all_gone() -> bool:
        return not await bed.list(REMOTE_MACHINES) and not await bed.list(MACHINES)

    await bed.wait_for("Machines and RemoteMachines to be gone", all_gone, 240)

    async def cluster_gone() -> bool:
        return await bed.get(CLUSTERS, "gone") is None

    await bed.wait_for("the Cluster to be gone", cluster_gone, 120)
    assert await _pool_free(bed, pool) == 2
    await asyncio.sleep(2)  # a late, second cleanup (from a stale cache) would show by now
    for host in bed.fleet.hosts:
        assert host.path("/var/tmp/e2e-cleanups").read_text().splitlines() == ["cleaned"]


async def test_health_check_remediation_returns_the_host_to_the_pool(make_bed: BedFactory) -> None:
    bed = await make_bed(3)  # one control-plane host, two pooled
    pool, hosts = "mhc", bed.fleet.hosts
    for host in hosts[1:]:
        await bed.pooled(host.name, pool, host)
    await bed.machine_template("mhc", pool)
    await bed.cluster("mhc")
    data = await bed.bootstrap_secret("mhc-bootstrap")
    await bed.machine("mhc-cp-0", "mhc", data)
    await bed.remote_machine("mhc-cp-0", bed.host_spec(hosts[0]))
    await _running(bed, "mhc-cp-0")
    await bed.machine_deployment("mhc-workers", "mhc", data, "mhc", replicas=1)

    async def one_running() -> str:
        machines = await bed.list(MACHINES, label_selector=f"{DEPLOYMENT_LABEL}=mhc-workers")
        running = [m for m in machines if (m.get("status") or {}).get("phase") == "Running"]
        return str(running[0]["metadata"]["name"]) if len(running) == 1 else ""

    sick = await bed.wait_for("the worker to be Running", one_running, 180)
    sick_rm = await bed.get(REMOTE_MACHINES, sick) or {}
    sick_host = next(h for h in hosts if h.address == sick_rm["spec"]["address"])
    sick_uid = sick_rm["metadata"]["uid"]
    await bed.create(
        {
            "apiVersion": "cluster.x-k8s.io/v1beta2",
            "kind": "MachineHealthCheck",
            "metadata": {"name": "mhc-workers"},
            "spec": {
                "clusterName": "mhc",
                "selector": {"matchLabels": {DEPLOYMENT_LABEL: "mhc-workers"}},
                "checks": {
                    "unhealthyNodeConditions": [
                        {"type": "Ready", "status": "Unknown", "timeoutSeconds": 5}
                    ]
                },
            },
        }
    )
    # The worker's Node goes silent, as when its kubelet stops posting status.
    await bed.kube.patch(
        NODES,
        None,
        sick,
        {"status": {"conditions": [{"type": "Ready", "status": "Unknown", "reason": "Silent",
                                     "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                                     "lastTransitionTime": "2026-01-01T00:00:00Z"}]}},
        subresource="status",
    )  # fmt: skip

    async def replaced() -> bool:
        return await bed.get(MACHINES, sick) is None and bool(await one_running())

    await bed.wait_for("the unhealthy worker to be replaced", replaced, 240)

    async def sick_host_cleaned_and_returned() -> bool:
        for pooled in await bed.list(POOLED_REMOTE_MACHINES):
            if pooled["spec"]["machine"]["address"] == sick_host.address:
                claim = pooled["spec"].get("claim") or {}
                # Free again, or (after its re-check) claimed by the replacement: both mean
                # it went back to the pool.
                return bool(claim.get("name") != sick)
        return False

    await bed.wait_for("the remediated host back in the pool", sick_host_cleaned_and_returned, 120)
    # Cleanup forgot the remediated machine on the host.
    state = sick_host.exec_inside(["test", "-e", f"/var/lib/capi-remote/{sick_uid}"])
    assert state.returncode != 0


async def test_a_trust_on_first_use_pool_host_keeps_its_pin_across_claimants(
    make_bed: BedFactory,
) -> None:
    """The pins (the host's and its bastion's) live on the PooledRemoteMachine: a host whose
    key changes after its first machine is refused for the next one, not trusted afresh."""
    bed = await make_bed(2)
    host, jump = bed.fleet.hosts
    pool, trust = "tofu", {"trustOnFirstUse": True}
    bastion = {"address": jump.address, "port": jump.port, "user": "root", "hostKeyPolicy": trust}
    spec = bed.host_spec(host, hostKeyPolicy=trust, bastion=bastion)
    await bed.create(samples.pooled(host.name, bed.namespace, pool, spec))

    async def pinned() -> str:
        pooled = await bed.get(POOLED_REMOTE_MACHINES, host.name) or {}
        annotations = pooled["metadata"].get("annotations") or {}
        return str(annotations.get(HOST_KEY_FINGERPRINT_ANNOTATION) or "")

    assert await bed.wait_for("the first probe to pin the key", pinned, 60) == (
        host.host_key.fingerprint
    )
    pooled = await bed.get(POOLED_REMOTE_MACHINES, host.name) or {}
    assert pooled["metadata"]["annotations"][BASTION_HOST_KEY_FINGERPRINT_ANNOTATION] == (
        jump.host_key.fingerprint
    )
    await bed.cluster("tofu")
    data = await bed.bootstrap_secret("tofu-bootstrap")
    await bed.remote_machine("tofu-0", {"pool": pool})
    await bed.machine("tofu-0", "tofu", data)
    await _running(bed, "tofu-0")
    rm = await bed.get(REMOTE_MACHINES, "tofu-0") or {}
    assert rm["metadata"]["annotations"][HOST_KEY_FINGERPRINT_ANNOTATION] == (
        host.host_key.fingerprint
    )
    assert rm["metadata"]["annotations"][BASTION_HOST_KEY_FINGERPRINT_ANNOTATION] == (
        jump.host_key.fingerprint
    )
    await bed.kube.delete(MACHINES, bed.namespace, "tofu-0")

    async def rechecked() -> bool:
        """Free, and found healthy by a probe that started after the release: the release
        changed the spec (its claim), and the probe's result names that generation. A status
        left over from before the claim, or written by a probe that started earlier, does not
        count (issue 18)."""
        pooled = await bed.get(POOLED_REMOTE_MACHINES, host.name) or {}
        health = (pooled.get("status") or {}).get("health") or {}
        return (
            is_free(pooled)
            and health.get("observedGeneration") == pooled["metadata"]["generation"]
            and health.get("state") == "Healthy"
        )

    await bed.wait_for("the host back in the pool", rechecked, 120)

    host.regenerate_host_key()  # e.g. reinstalled, or someone in the middle
    await bed.kube.patch(
        POOLED_REMOTE_MACHINES,
        bed.namespace,
        host.name,
        {"metadata": {"annotations": {RECHECK_ANNOTATION: "true"}}},
    )

    async def answered() -> dict[str, object]:
        """The health the re-check's probe wrote: only a probe that started after the mark was
        set removes it, right after writing its result."""
        pooled = await bed.get(POOLED_REMOTE_MACHINES, host.name) or {}
        if RECHECK_ANNOTATION in (pooled["metadata"].get("annotations") or {}):
            return {}
        return dict((pooled.get("status") or {}).get("health") or {})

    health = await bed.wait_for(
        "the probe to refuse the new key",
        answered,
        60,
        diagnose=lambda: bed.describe("pooledremotemachine", host.name),
    )
    assert health["state"] == "Untrusted", health
    assert "HostKeyMismatch" in str(health["message"])
    assert await pinned() != host.host_key.fingerprint

    await bed.remote_machine("tofu-1", {"pool": pool})
    await bed.machine("tofu-1", "tofu", data)

    async def waiting() -> bool:
        ready = await bed.condition(REMOTE_MACHINES, "tofu-1", "Ready")
        return ready.get("reason") == "WaitingForPoolMachine"

    await bed.wait_for("the next machine to wait for a trustworthy host", waiting, 60)
    sentinel = host.exec_inside(["test", "-e", "/run/cluster-api/bootstrap-success.complete"])
    assert sentinel.returncode != 0, "nothing ran on the host with the changed key"


async def test_a_pool_host_given_a_host_key_policy_is_probed_at_once(make_bed: BedFactory) -> None:
    """Without a host-key policy a pool host's key cannot be verified; adding one re-probes the
    host right away (any change to how a host is reached does), not at the next periodic probe
    minutes later."""
    bed = await make_bed(1)
    host = bed.fleet.hosts[0]
    spec = bed.host_spec(host)
    policy = spec.pop("hostKeyPolicy")
    await bed.create(samples.pooled(host.name, bed.namespace, "unverified", spec))

    async def health(generation: int) -> dict[str, object]:
        """The pool host's health once a probe of ``generation`` (or a later one) answered."""
        pooled = await bed.get(POOLED_REMOTE_MACHINES, host.name) or {}
        found = (pooled.get("status") or {}).get("health") or {}
        if int(found.get("observedGeneration") or 0) < generation or "lastProbeTime" not in found:
            return {}
        return {**found, "generation": pooled["metadata"]["generation"]}

    refused = await bed.wait_for("the first probe", lambda: health(1), 60)
    assert refused["state"] == "Untrusted"
    assert "HostKeyUnknown" in str(refused["message"])

    changed = await bed.kube.patch(
        POOLED_REMOTE_MACHINES,
        bed.namespace,
        host.name,
        {"spec": {"machine": {"hostKeyPolicy": policy}}},
    )
    generation = changed["metadata"]["generation"]
    assert generation > refused["generation"]
    # Well within the periodic probe's 5 minutes: only the spec change can have probed it.
    probed = await bed.wait_for(
        "a probe of the new spec",
        lambda: health(generation),
        30,
        diagnose=lambda: bed.describe("pooledremotemachine", host.name),
    )
    assert probed["state"] == "Healthy"
    assert probed["hostKeyFingerprint"] == host.host_key.fingerprint


async def test_a_host_released_without_cleanup_is_not_claimed_until_cleaned(
    make_bed: BedFactory,
) -> None:
    """A machine deleted with force-release leaves its bootstrap on the host (the success
    sentinel, its state): the probe of the returned host finds it NotClean, says so once in an
    Event, and the next machine waits for a clean host instead of failing with HostNotClean. Once
    the admin cleans the host and asks for a re-check, the host is claimed again."""
    bed = await make_bed(1)
    host = bed.fleet.hosts[0]
    pool = "dirty"
    await bed.pooled(host.name, pool, host)
    await bed.cluster("dirty")
    data = await bed.bootstrap_secret("dirty-bootstrap")
    await bed.remote_machine("dirty-0", {"pool": pool})
    await bed.machine("dirty-0", "dirty", data)
    await _running(bed, "dirty-0")
    force = {"metadata": {"annotations": {FORCE_RELEASE_ANNOTATION: "true"}}}
    await bed.kube.patch(REMOTE_MACHINES, bed.namespace, "dirty-0", force)
    await bed.kube.delete(MACHINES, bed.namespace, "dirty-0")

    async def returned_health() -> dict[str, object]:
        """The health a probe of the returned host wrote (one that started after the release:
        it names the generation the release made, and cleared the release's re-check mark)."""
        pooled = await bed.get(POOLED_REMOTE_MACHINES, host.name) or {}
        health = (pooled.get("status") or {}).get("health") or {}
        annotations = pooled["metadata"].get("annotations") or {}
        if (
            pooled["spec"].get("claim")
            or RECHECK_ANNOTATION in annotations
            or health.get("observedGeneration") != pooled["metadata"]["generation"]
        ):
            return {}
        return dict(health)

    def describe_host() -> str:
        return bed.describe("pooledremotemachine", host.name)

    health = await bed.wait_for("the returned host's probe", returned_health, 120, describe_host)
    assert health["state"] == "NotClean", health
    assert SENTINEL in str(health["message"]) and "state director" in str(health["message"])
    events = await bed.kube.list(
        EVENTS, bed.namespace, field_selector=f"involvedObject.name={host.name},reason=HostNotClean"
    )
    assert len(events["items"]) == 1, events["items"]

    await bed.remote_machine("dirty-1", {"pool": pool})
    await bed.machine("dirty-1", "dirty", data)
    await _ready_reason(bed, "dirty-1", "WaitingForPoolMachine", 60)

    # The admin cleans the host (the old node's process is gone with its Machine here) and asks
    # for a re-check, as docs/troubleshooting.md says.
    cleaned = host.exec_inside(["sh", "-c", f"rm -f {SENTINEL} && rm -rf /var/lib/capi-remote/*"])
    assert cleaned.returncode == 0, cleaned
    recheck = {"metadata": {"annotations": {RECHECK_ANNOTATION: "cleaned"}}}
    await bed.kube.patch(POOLED_REMOTE_MACHINES, bed.namespace, host.name, recheck)
    await _running(bed, "dirty-1", within=180)
