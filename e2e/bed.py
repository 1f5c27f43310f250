"""The e2e test bed: Cluster API objects (from ``capi_remote_testbed.samples``) created on the
control plane for a fleet of real hosts, plus waits and observations for assertions."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs

from capi_remote.kube.client import ApiError, KubeClient, Resource
from capi_remote.resources import MACHINES, POOLED_REMOTE_MACHINES
from capi_remote_testbed import samples
from capi_remote_testbed.controlplane import ControlPlane
from capi_remote_testbed.hosts import Host, HostFleet
from capi_remote_testbed.tcpproxy import TcpProxy
from e2e.cluster import ExternalCluster

JSONDict = dict[str, Any]
MACHINE_DEPLOYMENTS = samples.MACHINE_DEPLOYMENTS
NODES = Resource("", "v1", "nodes", "Node", namespaced=False)
# Every Node a test's hosts register carries this label (value: the test's namespace), so the
# test can delete them: they live in the shared "workload" API server, outside any namespace.
NODE_OWNER_LABEL = "e2e.capi-remote.dev/namespace"
_RESOURCES = {
    **samples.RESOURCES,
    "MachineHealthCheck": Resource(
        "cluster.x-k8s.io", "v1beta2", "machinehealthchecks", "MachineHealthCheck"
    ),
}


#: The local control plane, or another cluster named by CAPI_REMOTE_E2E_KUBECONFIG.
Cluster = ControlPlane | ExternalCluster


def workload_kubeconfig(plane: Cluster) -> bytes:
    """What ``<cluster>-kubeconfig`` Secrets hold: the cluster under test stands in for the
    workload clusters (their Nodes are registered in it)."""
    if isinstance(plane, ExternalCluster):
        return plane.workload_kubeconfig()
    return plane.kubeconfig.read_bytes()


def apiserver_address(plane: Cluster) -> tuple[str, int]:
    host = plane.apiserver_host if isinstance(plane, ExternalCluster) else "127.0.0.1"
    return host, plane.apiserver_port


@attrs.define
class Bed:
    kube: KubeClient
    plane: Cluster
    namespace: str
    fleet: HostFleet
    api_proxy_port: int

    async def create(self, obj: JSONDict) -> JSONDict:
        obj.setdefault("metadata", {}).setdefault("namespace", self.namespace)
        return await self.kube.create(_RESOURCES[obj["kind"]], obj)

    async def get(self, resource: Resource, name: str) -> JSONDict | None:
        try:
            return await self.kube.get(resource, self.namespace, name)
        except ApiError as error:
            if error.not_found:
                return None
            raise

    async def list(self, resource: Resource, **kwargs: Any) -> list[JSONDict]:
        return list((await self.kube.list(resource, self.namespace, **kwargs))["items"])

    async def wait_for(
        self,
        what: str,
        check: Callable[[], Awaitable[Any]],
        within: float = 120.0,
        diagnose: Callable[[], str] | None = None,
    ) -> Any:
        """Poll ``check`` until it returns something truthy; fail saying what was awaited."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            result = await check()
            if result:
                return result
            if loop.time() > deadline:
                detail = diagnose() if diagnose else ""
                raise AssertionError(f"timed out after {within:.0f}s waiting for {what}\n{detail}")
            await asyncio.sleep(0.5)

    def describe(self, kind: str, name: str) -> str:
        return self.plane.kubectl("describe", kind, name, "-n", self.namespace)

    # -- objects -----------------------------------------------------------------------------

    async def credentials(self) -> None:
        for obj in samples.credentials(
            self.namespace, self.fleet.client_key.private_openssh, self.fleet.known_hosts()
        ):
            await self.create(obj)

    def host_spec(self, host: Host, **overrides: Any) -> JSONDict:
        return samples.host_spec(host.address, host.port, **overrides)

    async def cluster(self, name: str) -> None:
        for obj in samples.cluster(name, self.namespace, workload_kubeconfig(self.plane)):
            await self.create(obj)

    async def bootstrap_secret(self, name: str, script: str | None = None) -> str:
        script = script or self.registration_script()
        await self.create(samples.bootstrap_secret(name, self.namespace, script))
        return name

    def registration_script(self, *, with_provider_id: bool = True) -> str:
        return samples.node_registration_script(
            self.api_proxy_port,
            self.fleet.gateway,
            self.plane.workdir / "pki",
            with_provider_id=with_provider_id,
            labels={NODE_OWNER_LABEL: self.namespace},
        )

    async def delete_nodes(self) -> None:
        nodes = await self.kube.list(NODES, label_selector=f"{NODE_OWNER_LABEL}={self.namespace}")
        for node in nodes.get("items", []):
            await self.kube.delete(NODES, None, node["metadata"]["name"])

    async def remote_machine(self, name: str, spec: JSONDict) -> None:
        await self.create(samples.remote_machine(name, self.namespace, spec))

    async def machine(
        self, name: str, cluster: str, data_secret: str, *, control_plane: bool = True
    ) -> None:
        await self.create(
            samples.machine(name, self.namespace, cluster, data_secret, control_plane=control_plane)
        )

    async def pooled(self, name: str, pool: str, host: Host) -> None:
        await self.create(samples.pooled(name, self.namespace, pool, self.host_spec(host)))

    async def machine_template(self, name: str, pool: str) -> None:
        await self.create(samples.machine_template(name, self.namespace, pool))

    async def machine_deployment(
        self, name: str, cluster: str, data_secret: str, template: str, replicas: int
    ) -> None:
        await self.create(
            samples.machine_deployment(
                name, self.namespace, cluster, data_secret, template, replicas
            )
        )

    # -- observations ------------------------------------------------------------------------

    async def free(self, pool: str) -> int:
        """How many pooled hosts of ``pool`` no Machine claims."""
        hosts = await self.list(POOLED_REMOTE_MACHINES)
        return sum(1 for h in hosts if h["spec"]["pool"] == pool and not h["spec"].get("claim"))

    async def machine_phase(self, name: str) -> str:
        machine = await self.get(MACHINES, name)
        return str(((machine or {}).get("status") or {}).get("phase") or "")

    async def condition(self, resource: Resource, name: str, type_: str) -> JSONDict:
        obj = await self.get(resource, name) or {}
        for condition in (obj.get("status") or {}).get("conditions", []):
            if condition.get("type") == type_:
                return dict(condition)
        return {}


BedFactory = Callable[[int], Awaitable[Bed]]


@contextlib.asynccontextmanager
async def bed_factory(
    kube: KubeClient,
    plane: Cluster,
    namespace: str,
    fleets: Callable[[int], HostFleet],
) -> AsyncIterator[BedFactory]:
    """``await make(n)``: a Bed with n fresh hosts, their route to the API server and the SSH
    credentials stored; on exit the Nodes its hosts registered are deleted and routes closed."""
    proxies: list[TcpProxy] = []
    beds: list[Bed] = []

    async def make(count: int) -> Bed:
        fleet = fleets(count)
        proxy = TcpProxy(apiserver_address(plane), listen_host=fleet.gateway)
        proxy.start()
        proxies.append(proxy)
        bed = Bed(kube, plane, namespace, fleet, proxy.port)
        await bed.credentials()
        beds.append(bed)
        return bed

    try:
        yield make
    finally:
        for bed in beds:
            await bed.delete_nodes()
        for proxy in proxies:
            proxy.close()
