"""e2e fixtures: a Bed per test = a namespace, a fleet of hosts, the hosts' route to the API
server, and the SSH credentials stored as a user would store them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from capi_remote.devenv.controlplane import ControlPlane
from capi_remote.kube.client import KubeClient
from e2e.bed import BedFactory, bed_factory
from tests.fixtures_hosts import HostsFactory
from tests.fixtures_provider import RunningController


@pytest.fixture
async def make_bed(
    kube: KubeClient,
    control_plane: ControlPlane,
    controller: RunningController,
    namespace: str,
    hosts: HostsFactory,
) -> AsyncIterator[BedFactory]:
    async with bed_factory(kube, control_plane, namespace, lambda n: hosts(n)[0].fleet) as make:
        yield make
