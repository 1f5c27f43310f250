"""Issue 13's attacks (e2e/test_tenant_attacks.py, e2e/test_tenant_pod_and_secret_refs.py,
e2e/test_first_use_pins.py) from many tenants at once against one controller, while another
tenant provisions machines: every attack fails with its clear reason, nothing leaks, and the
other tenant's machines all provision.

Each attacker is a namespace of its own with a ServiceAccount holding exactly the tenant's
rights (tests/fixtures_tenant.py), on the chaos plane. The controller watches every namespace,
restricted by a watch filter to the objects this test labels (earlier chaos tests' leftovers
cost it nothing). Sizes scale with ``CAPI_REMOTE_CHAOS_SCALE``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

from capi_remote.api import HOST_KEY_FINGERPRINT_ANNOTATION
from capi_remote.kube.client import ApiError, KubeClient
from capi_remote.kube.manager import WATCH_FILTER_LABEL
from capi_remote.resources import (
    CLUSTERS,
    JOBS,
    MACHINES,
    REMOTE_CLUSTERS,
    REMOTE_MACHINES,
    SECRETS,
)
from capi_remote_testbed import samples
from capi_remote_testbed.controlplane import ControlPlane
from e2e.bed import Bed, bed_factory, workload_kubeconfig
from e2e.test_first_use_pins import COUNTER, FAILING
from e2e.test_tenant_attacks import SERVICE_ACCOUNT_TOKEN, Listener
from e2e.test_tenant_pod_and_secret_refs import LOOT
from reconcilers.remotemachine.jobspec import MACHINE_UID_LABEL
from tests.chaos.conftest import ChaosEnv, Controllers, scaled
from tests.fixtures_hosts import HostsFactory
from tests.fixtures_tenant import service_account_token, tenant_documents, token_client
from tests.unit.test_bootstrap_bombs import SLOW, alias_gzip_bomb, template

pytestmark = pytest.mark.integration

TENANTS = scaled(2, 8)
HONEST_MACHINES = scaled(3, 24)
BOMBS_PER_TENANT = scaled(2, 12)
BOMBS = [alias_gzip_bomb().decode(), template(SLOW).decode()]
JSONDict = dict[str, Any]
_RESOURCES = {r.kind: r for r in (CLUSTERS, MACHINES, REMOTE_CLUSTERS, REMOTE_MACHINES, SECRETS)}
#: Hosts of an attacker's bed: one per cluster with a hostile kubeconfig, the first-use host,
#: and one that the refused machines name (never reached).
STEAL, SAPATH, RUN, TOFU, UNREACHED = range(5)
#: Not 1, as in e2e/test_first_use_pins.py: with many machines at once, the first-use pin's write
#: may meet Cluster API's own update of the RemoteMachine (a Conflict that ends the attempt as
#: InternalError before anything ran); the second attempt pins and fails in the script.
TOFU_ATTEMPTS = 2


@attrs.define
class Attacker:
    bed: Bed
    kube: KubeClient  # the tenant's own token
    stolen: str  # the content of the token file its kubeconfig names
    exec_marker: Path  # where its exec plugin writes its parent's pid, if it ever runs


class Labelled:
    """Creates objects carrying the controller's watch filter label."""

    def __init__(self, value: str) -> None:
        self.value = value

    async def create(self, kube: KubeClient, namespace: str, obj: JSONDict) -> None:
        meta = obj.setdefault("metadata", {})
        meta["namespace"] = namespace
        meta["labels"] = {**(meta.get("labels") or {}), WATCH_FILTER_LABEL: self.value}
        await kube.create(_RESOURCES[obj["kind"]], obj)

    async def cluster(self, bed: Bed, tenant: KubeClient, name: str, kubeconfig: bytes) -> None:
        """RemoteCluster by the admin (not a tenant right), Cluster and kubeconfig by ``tenant``."""
        remote_cluster, cluster, secret = samples.cluster(name, bed.namespace, kubeconfig)
        await self.create(bed.kube, bed.namespace, remote_cluster)
        await self.create(tenant, bed.namespace, cluster)
        await self.create(tenant, bed.namespace, secret)

    async def machine(
        self, bed: Bed, tenant: KubeClient, name: str, cluster: str, data: str, spec: JSONDict
    ) -> None:
        await self.create(tenant, bed.namespace, samples.bootstrap_secret(f"{name}-d", "", data))
        await self.create(tenant, bed.namespace, samples.remote_machine(name, "", spec))
        await self.create(tenant, bed.namespace, samples.machine(name, "", cluster, f"{name}-d"))


def make_tenant(plane: ControlPlane, namespace: str) -> KubeClient:
    plane.apply(tenant_documents(namespace))
    return token_client(plane, service_account_token(plane, namespace, "tenant"))


async def attack(
    bed: Bed, tenant: KubeClient, made: Labelled, listener: Listener, files: Path
) -> Attacker:
    """Every attack of the three e2e files, from one tenant."""
    ns, hosts = bed.namespace, bed.fleet.hosts
    stolen = f"controller-token-{uuid.uuid4().hex}"
    token_file, marker = files / f"{ns}-token", files / f"{ns}-exec-ran"
    token_file.write_text(stolen)
    exec_plugin = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": "/bin/sh",
        "args": ["-c", f"echo $PPID >> {marker}; exit 1"],
        "interactiveMode": "Never",
    }
    script = bed.registration_script()
    hostile: dict[str, tuple[int, JSONDict]] = {
        "steal": (STEAL, {"tokenFile": str(token_file)}),
        "sapath": (SAPATH, {"tokenFile": SERVICE_ACCOUNT_TOKEN}),
        "run": (RUN, {"exec": exec_plugin}),
    }
    for name, (host, user) in hostile.items():
        await made.cluster(bed, tenant, name, listener.kubeconfig(user))
        await made.machine(bed, tenant, f"{name}-0", name, script, bed.host_spec(hosts[host]))
    await made.cluster(bed, tenant, "t", workload_kubeconfig(bed.plane))
    unreached = hosts[UNREACHED]
    for i in range(BOMBS_PER_TENANT):
        spec = bed.host_spec(unreached)
        await made.machine(bed, tenant, f"bomb-{i}", "t", BOMBS[i % len(BOMBS)], spec)
    db = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": ns}}
    await bed.kube.create(SECRETS, {**db, "stringData": {"password": LOOT}})  # another team's
    exfil = bed.host_spec(
        unreached,
        passwordRef={"name": "db", "key": "password"},
        hostKeyPolicy={"insecureSkipVerification": True},
    )
    await made.machine(bed, tenant, "exfil-0", "t", script, exfil)
    grant = {
        "serviceAccountName": "controller-like",
        "automountServiceAccountToken": True,
        "volumes": [{"name": "loot", "secret": {"secretName": "db"}}],
        "containers": [{"name": "provision", "image": "any"}],
    }
    job = {"jobSpecTemplate": {"spec": {"template": {"spec": grant}}}}
    await made.machine(
        bed, tenant, "podgrant-0", "t", script, bed.host_spec(unreached, provisionJob=job)
    )
    tofu = bed.host_spec(
        hosts[TOFU], hostKeyPolicy={"trustOnFirstUse": True}, maxAttempts=TOFU_ATTEMPTS
    )
    await made.machine(bed, tenant, "tofu-0", "t", FAILING, tofu)
    return Attacker(bed, tenant, stolen, marker)


def ready_reason(rm: JSONDict) -> tuple[str, str]:
    for condition in (rm.get("status") or {}).get("conditions", []):
        if condition.get("type") == "Ready":
            return str(condition.get("reason") or ""), str(condition.get("message") or "")
    return "", ""


State = tuple[str, str, str, int]


async def states(bed: Bed) -> dict[str, State]:
    """name -> (phase, Ready reason, Ready message, attempts)."""
    found = {}
    for rm in await bed.list(REMOTE_MACHINES):
        status = rm.get("status") or {}
        attempts = int((status.get("bootstrap") or {}).get("attempts") or 0)
        found[rm["metadata"]["name"]] = (
            str(status.get("phase") or ""),
            *ready_reason(rm),
            attempts,
        )
    return found


def expected(attacker: Attacker) -> dict[str, Callable[[str, str, str, int], bool]]:
    def reason(wanted: str) -> Callable[[str, str, str, int], bool]:
        return lambda _phase, got, _message, _attempts: got == wanted

    def provisioned(phase: str, _reason: str, _message: str, _attempts: int) -> bool:
        return phase == "Provisioned"

    def failed_every_attempt(_phase: str, reason: str, _message: str, attempts: int) -> bool:
        return reason == "StepFailed" and attempts == TOFU_ATTEMPTS

    return {
        "steal-0": provisioned,
        "sapath-0": provisioned,
        "run-0": provisioned,
        **{f"bomb-{i}": reason("InvalidBootstrapData") for i in range(BOMBS_PER_TENANT)},
        "exfil-0": reason("UnverifiedHostForSecret"),
        "podgrant-0": reason("ProvisioningJobInvalid"),
        "tofu-0": failed_every_attempt,
    }


async def wait_all(
    what: str, check: Callable[[], Awaitable[list[str]]], within: float, tails: Callable[[], str]
) -> None:
    """Until ``check`` returns no unmet expectation."""
    deadline = time.monotonic() + within
    while unmet := await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} after {within:.0f} s: {unmet[:20]}\n{tails()}")
        await asyncio.sleep(2.0)


async def test_many_tenants_attack_at_once_and_another_tenant_still_provisions(
    chaos_env: ChaosEnv,
    chaos_kube: KubeClient,
    controllers: Controllers,
    hosts: HostsFactory,
    tmp_path: Path,
) -> None:
    plane = chaos_env.plane
    made = Labelled(f"attacks-{uuid.uuid4().hex[:8]}")
    controller = controllers.start(f"--watch-filter={made.value}")
    log = controllers.logs[-1]
    listener = Listener({"controller": controller.pid, "test": os.getpid()})
    namespaces: list[str] = []
    within = 300 + 20 * TENANTS
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(listener.running(tmp_path))

        async def new_bed(count: int) -> Bed:
            namespace = f"chaos-t-{uuid.uuid4().hex[:8]}"
            plane.kubectl("create", "namespace", namespace)
            namespaces.append(namespace)
            make = await stack.enter_async_context(
                bed_factory(chaos_kube, plane, namespace, lambda n: hosts(n)[0].fleet)
            )
            return await make(count)

        try:
            honest_bed = await new_bed(HONEST_MACHINES)
            honest = make_tenant(plane, honest_bed.namespace)
            stack.push_async_callback(honest.close)
            attackers = []
            for _ in range(TENANTS):
                bed = await new_bed(5)
                tenant = make_tenant(plane, bed.namespace)
                stack.push_async_callback(tenant.close)
                attackers.append(await attack(bed, tenant, made, listener, tmp_path))
            await made.cluster(honest_bed, honest, "ok", workload_kubeconfig(plane))
            script = honest_bed.registration_script()
            for i, host in enumerate(honest_bed.fleet.hosts):
                spec = honest_bed.host_spec(host)
                await made.machine(honest_bed, honest, f"ok-{i}", "ok", script, spec)

            async def honest_unmet() -> list[str]:
                got = await states(honest_bed)
                names = [f"ok-{i}" for i in range(HONEST_MACHINES)]
                return [f"{n} {got.get(n)}" for n in names if got.get(n, ("",))[0] != "Provisioned"]

            async def attacks_unmet() -> list[str]:
                unmet = []
                for attacker in attackers:
                    got = await states(attacker.bed)
                    for name, ok in expected(attacker).items():
                        if name not in got or not ok(*got[name]):
                            unmet.append(f"{attacker.bed.namespace}/{name} {got.get(name)}")
                return unmet

            await wait_all("the other tenant's machines", honest_unmet, within, controllers.tails)
            await wait_all("the attacks' outcomes", attacks_unmet, within, controllers.tails)

            async def refused() -> list[str]:
                text = await asyncio.to_thread(log.read_text, errors="replace")
                return [
                    f"{a.bed.namespace}/{name}-kubeconfig"
                    for a in attackers
                    for name in ("steal", "sapath", "run")
                    if f"{a.bed.namespace}/{name}-kubeconfig" not in text
                ]

            await wait_all("the hostile kubeconfigs refused", refused, 120, controllers.tails)
            for attacker in attackers:
                await check_attacker(attacker, attackers, log, controller.pid)
            await check_first_use(attackers, within, controllers.tails)
            assert controller.alive()
        finally:
            for namespace in namespaces:
                plane.kubectl("delete", "namespace", namespace, "--wait=false")
    senders = {sender for _, sender in listener.requests}
    assert senders <= {"other"}, f"the controller sent requests to a tenant's server: {senders}"


async def check_attacker(attacker: Attacker, all_: list[Attacker], log: Path, pid: int) -> None:
    """What nothing may have leaked through: messages, Jobs, another namespace, the log."""
    bed, ns = attacker.bed, attacker.bed.namespace
    got = await states(bed)
    assert LOOT not in got["exfil-0"][2] and "passwordRef" in got["exfil-0"][2]
    rm = await bed.get(REMOTE_MACHINES, "podgrant-0") or {}
    uid = rm["metadata"]["uid"]
    assert not await bed.list(JOBS, label_selector=f"{MACHINE_UID_LABEL}={uid}")
    ran = attacker.exec_marker
    assert str(pid) not in (ran.read_text().split() if ran.exists() else [])
    assert attacker.stolen not in await asyncio.to_thread(log.read_text, errors="replace")
    other = all_[(all_.index(attacker) + 1) % len(all_)].bed.namespace
    if other != ns:
        with pytest.raises(ApiError) as denied:
            await attacker.kube.list(SECRETS, other)
        assert denied.value.status == 403


async def check_first_use(
    attackers: list[Attacker], within: float, tails: Callable[[], str]
) -> None:
    """Each tenant's failed attempts pinned the key; after the key changes, the next attempt
    is refused and runs nothing."""
    ran_before = []
    for attacker in attackers:
        bed, host = attacker.bed, attacker.bed.fleet.hosts[TOFU]
        rm = await bed.get(REMOTE_MACHINES, "tofu-0") or {}
        pinned = (rm["metadata"].get("annotations") or {}).get(HOST_KEY_FINGERPRINT_ANNOTATION)
        assert pinned == host.host_key.fingerprint
        ran_before.append(host.exec_inside(["cat", COUNTER]).stdout.count(b"ran"))
        assert ran_before[-1] >= 1
        host.regenerate_host_key()
        more = {"spec": {"maxAttempts": TOFU_ATTEMPTS + 1}}  # a new generation: a fresh budget
        await bed.kube.patch(REMOTE_MACHINES, bed.namespace, "tofu-0", more)

    async def unmet() -> list[str]:
        return [
            a.bed.namespace
            for a in attackers
            if (await states(a.bed))["tofu-0"][1] != "HostKeyMismatch"
        ]

    await wait_all("the changed keys refused", unmet, within, tails)
    for attacker, before in zip(attackers, ran_before, strict=True):
        ran = attacker.bed.fleet.hosts[TOFU].exec_inside(["cat", COUNTER]).stdout
        assert ran.count(b"ran") == before, attacker.bed.namespace  # nothing ran again
