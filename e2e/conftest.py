"""e2e fixtures: a Bed per test = a namespace, a fleet of hosts, the hosts' route to the API
server, and the SSH credentials stored as a user would store them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from capi_remote.devenv.controlplane import ControlPlane
from capi_remote.devenv.tcpproxy import TcpProxy
from capi_remote.kube.client import KubeClient
from e2e.bed import Bed
from tests.fixtures_hosts import HostsFactory
from tests.fixtures_provider import RunningController

BedFactory = Callable[[int], Awaitable[Bed]]


@pytest.fixture
async def make_bed(
    kube: KubeClient,
    control_plane: ControlPlane,
    controller: RunningController,
    namespace: str,
    hosts: HostsFactory,
) -> AsyncIterator[BedFactory]:
    proxies: list[TcpProxy] = []
    beds: list[Bed] = []

    async def make(count: int) -> Bed:
        fleet = hosts(count)[0].fleet
        proxy = TcpProxy(("127.0.0.1", control_plane.apiserver_port), listen_host=fleet.gateway)
        proxy.start()
        proxies.append(proxy)
        bed = Bed(kube, control_plane, namespace, fleet, proxy.port)
        await bed.credentials()
        beds.append(bed)
        return bed

    yield make
    for bed in beds:
        await bed.delete_nodes()
    for proxy in proxies:
        proxy.close()
