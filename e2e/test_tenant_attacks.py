"""Issue 13's attacks, performed as a namespace tenant (tests/fixtures_tenant.py: a ServiceAccount
token with only the tenant's rights, not system:masters) against the real controller process.

What an admin makes for the tenant, because the tenant's rights do not include it: the bed's
SSH key Secret and known_hosts ConfigMap, and the RemoteCluster. Everything the attacks rely on
(the workload kubeconfig Secret, Cluster, Machine, RemoteMachine, bootstrap data) the tenant
writes itself.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import ssl
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from capi_remote.kube.client import ApiError, KubeClient, Resource
from capi_remote.resources import (
    CLUSTERS,
    CONFIGMAPS,
    MACHINES,
    REMOTE_CLUSTERS,
    REMOTE_MACHINES,
    SECRETS,
)
from capi_remote_testbed import samples
from capi_remote_testbed.pki import CertificateAuthority
from capi_remote_testbed.provider import ControllerProcess
from e2e.bed import Bed, BedFactory, workload_kubeconfig
from tests.fixtures_tenant import MakeTenant, Tenant
from tests.unit.test_bootstrap_bombs import alias_gzip_bomb

pytestmark = pytest.mark.integration

#: What a pod's service-account token path is; the controller here runs with a kubeconfig, so the
#: attack also names a file the test planted with a marker token it can look for.
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
_RESOURCES = {r.kind: r for r in (CLUSTERS, MACHINES, REMOTE_MACHINES, SECRETS)}


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = str(fd.readlink())
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def _inode_of_client(client_port: int, server_port: int) -> str | None:
    """The inode of the loopback client socket ``client_port`` -> ``server_port``."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if int(local.rsplit(":", 1)[1], 16) == client_port and (
                int(remote.rsplit(":", 1)[1], 16) == server_port
            ):
                return fields[9]
    return None


class Listener:
    """The tenant's "API server": HTTPS on loopback with a certificate its kubeconfig trusts.
    Records every request's Authorization header and which of the ``processes`` (name: pid)
    sent it, "other" for the rest (Cluster API core, say, reads the same Secret)."""

    def __init__(self, processes: dict[str, int]) -> None:
        self.ca = CertificateAuthority.create("tenant-ca")
        self.processes = processes
        self.requests: list[tuple[str | None, str]] = []
        self.url = ""
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        inode = _inode_of_client(peer[1], self.port) if peer else None
        sender = next(
            (name for name, pid in self.processes.items() if inode in _socket_inodes(pid)),
            "other" if inode else "unknown",
        )
        self.requests.append((request.headers.get("Authorization"), sender))
        return web.json_response({"kind": "Status", "status": "Failure", "code": 403}, status=403)

    @contextlib.asynccontextmanager
    async def running(self, directory: Path) -> AsyncIterator[Listener]:
        cert, key = self.ca.issue("api", hosts=("127.0.0.1",), server=True).write(directory, "api")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"https://127.0.0.1:{self.port}"
        try:
            yield self
        finally:
            await runner.cleanup()

    def kubeconfig(self, user: dict[str, Any]) -> bytes:
        ca = base64.b64encode(self.ca.cert_pem).decode()
        cluster = {"server": self.url, "certificate-authority-data": ca}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": cluster}],
            "users": [{"name": "u", "user": user}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
        return yaml.safe_dump(config).encode()


def _probe(url: str, ca: CertificateAuthority) -> None:
    context = ssl.create_default_context(cadata=ca.cert_pem.decode())
    request = urllib.request.Request(url, headers={"Authorization": "Bearer probe"})
    with contextlib.suppress(urllib.error.HTTPError):
        urllib.request.urlopen(request, context=context, timeout=10).close()


async def _as_tenant(tenant: Tenant, obj: dict[str, Any]) -> None:
    obj["metadata"]["namespace"] = tenant.namespace
    await tenant.kube.create(_RESOURCES[obj["kind"]], obj)


async def _tenant_cluster(bed: Bed, tenant: Tenant, name: str, kubeconfig: bytes) -> None:
    """The cluster's objects: RemoteCluster by the admin, the rest by the tenant."""
    remote_cluster, cluster, secret = samples.cluster(name, bed.namespace, kubeconfig)
    await bed.kube.create(REMOTE_CLUSTERS, remote_cluster)
    await _as_tenant(tenant, cluster)
    await _as_tenant(tenant, secret)


async def _tenant_machine(
    bed: Bed, tenant: Tenant, name: str, cluster: str, data: str, host: int
) -> None:
    """Bootstrap data, RemoteMachine on the bed's host number ``host``, Machine: by the tenant."""
    host_spec = bed.host_spec(bed.fleet.hosts[host])
    await _as_tenant(tenant, samples.bootstrap_secret(f"{name}-data", bed.namespace, data))
    await _as_tenant(tenant, samples.remote_machine(name, bed.namespace, host_spec))
    await _as_tenant(tenant, samples.machine(name, bed.namespace, cluster, f"{name}-data"))


async def _phase(bed: Bed, name: str, phase: str, within: float = 120.0) -> None:
    async def check() -> bool:
        rm = await bed.get(REMOTE_MACHINES, name) or {}
        return (rm.get("status") or {}).get("phase") == phase

    await bed.wait_for(
        f"RemoteMachine {name} {phase}",
        check,
        within,
        diagnose=lambda: bed.describe("remotemachine", name),
    )


async def test_workload_kubeconfig_cannot_steal_the_token_or_run_a_command(
    make_bed: BedFactory,
    make_tenant: MakeTenant,
    controller: ControllerProcess,
    tmp_path: Path,
) -> None:
    """Point 1: tokenFile and exec in the tenant's <cluster>-kubeconfig are refused: the
    tenant's server gets no request from the controller, the plugin never runs in the
    controller, and another of the tenant's clusters still provisions."""
    bed = await make_bed(4)
    tenant = await make_tenant(namespace=bed.namespace)
    controller_pid = controller.process.pid
    assert controller_pid is not None
    stolen = f"controller-token-{uuid.uuid4().hex}"
    token_file = tmp_path / "token"
    token_file.write_text(stolen)
    marker = tmp_path / "exec-ran"  # one line per run: the pid of the process that ran it
    exec_plugin = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": "/bin/sh",
        "args": ["-c", f"echo $PPID >> {marker}; exit 1"],
        "interactiveMode": "Never",
    }
    processes = {"controller": controller_pid, "test": os.getpid()}
    async with Listener(processes).running(tmp_path) as listener:
        # The listener tells who sent a request: a request of this test process says "test".
        await asyncio.to_thread(_probe, listener.url, listener.ca)
        assert listener.requests == [("Bearer probe", "test")]
        attacks: dict[str, dict[str, Any]] = {
            "steal": {"tokenFile": str(token_file)},
            "sapath": {"tokenFile": SERVICE_ACCOUNT_TOKEN},
            "run": {"exec": exec_plugin},
        }
        script = bed.registration_script()
        for host, (name, user) in enumerate(attacks.items()):
            await _tenant_cluster(bed, tenant, name, listener.kubeconfig(user))
            await _tenant_machine(bed, tenant, f"{name}-0", name, script, host)
        for name in attacks:
            await _phase(bed, f"{name}-0", "Provisioned")

        # The controller got to the point of using each kubeconfig, and refused it.
        async def refused() -> bool:
            log = controller.process.log.read_text(errors="replace")
            return all(f"{bed.namespace}/{name}-kubeconfig" in log for name in attacks)

        await bed.wait_for("the kubeconfigs to be refused", refused, 60, controller.log_tail)

        # Meanwhile another of the tenant's clusters, with an honest kubeconfig, provisions.
        await _tenant_cluster(bed, tenant, "honest", workload_kubeconfig(bed.plane))
        await _tenant_machine(bed, tenant, "honest-0", "honest", script, 3)
        await _phase(bed, "honest-0", "Provisioned")

    senders = {sender for _, sender in listener.requests[1:]}
    assert senders <= {"other"}, f"the controller sent requests to the tenant's server: {senders}"
    runs = marker.read_text().split() if marker.exists() else []
    assert str(controller_pid) not in runs, "the exec plugin ran in the controller"
    assert stolen not in controller.process.log.read_text(errors="replace")


async def _rejected(call: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        await call
    return caught.value


async def test_a_tenant_cannot_reach_another_namespace(make_tenant: MakeTenant) -> None:
    """Point (b): another tenant's Secrets are neither readable nor writable, nor can objects be
    created there; kinds outside the tenant's rights are refused in its own namespace too."""
    attacker, victim = await make_tenant(), await make_tenant()
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}, "data": {}}
    await victim.kube.create(
        SECRETS, {**secret, "metadata": {"name": "join-token", "namespace": victim.namespace}}
    )
    kube: KubeClient = attacker.kube
    for call in (
        kube.get(SECRETS, victim.namespace, "join-token"),
        kube.list(SECRETS, victim.namespace),
        kube.list(SECRETS, None),
        kube.create(SECRETS, {**secret, "metadata": {"name": "x", "namespace": victim.namespace}}),
        kube.create(
            REMOTE_MACHINES,
            samples.remote_machine("x", victim.namespace, samples.host_spec("192.0.2.1")),
        ),
        kube.delete(SECRETS, victim.namespace, "join-token"),
        kube.create(
            CONFIGMAPS,
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "x", "namespace": attacker.namespace},
            },
        ),
        kube.list(Resource("batch", "v1", "jobs", "Job"), attacker.namespace),
    ):
        error = await _rejected(call)
        assert error.status == 403, error
    # Its own namespace works.
    await kube.create(
        SECRETS, {**secret, "metadata": {"name": "mine", "namespace": attacker.namespace}}
    )
    assert (await kube.get(SECRETS, attacker.namespace, "mine"))["metadata"]["name"] == "mine"


async def test_a_bootstrap_bomb_fails_clearly_and_others_still_provision(
    make_bed: BedFactory, make_tenant: MakeTenant
) -> None:
    """Point 4: the 11 KB alias/gzip bomb as bootstrap data is InvalidBootstrapData (the parse
    budget refuses it, in process or in the parse sandbox); another machine provisions."""
    bed = await make_bed(2)
    tenant = await make_tenant(namespace=bed.namespace)
    await _tenant_cluster(bed, tenant, "bomb", workload_kubeconfig(bed.plane))
    await _tenant_machine(bed, tenant, "bomb-0", "bomb", alias_gzip_bomb().decode(), 0)
    await _tenant_machine(bed, tenant, "fine-0", "bomb", bed.registration_script(), 1)

    async def invalid() -> bool:
        ready = await bed.condition(REMOTE_MACHINES, "bomb-0", "Ready")
        return ready.get("reason") == "InvalidBootstrapData"

    await bed.wait_for(
        "bomb-0 InvalidBootstrapData", invalid, 120, lambda: bed.describe("remotemachine", "bomb-0")
    )
    await _phase(bed, "fine-0", "Provisioned")
