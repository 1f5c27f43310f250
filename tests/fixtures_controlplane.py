"""Fixtures for the real control plane: one per test session, a namespace per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from kubernetes_asyncio import client, config

from capi_remote_testbed import toolchain as toolchain_module
from capi_remote_testbed.controlplane import ControlPlane


@pytest.fixture(scope="session")
def toolchain() -> toolchain_module.Toolchain:
    return toolchain_module.ensure()


@pytest.fixture(scope="session")
def control_plane(local_control_plane: ControlPlane) -> ControlPlane:
    """The cluster tests run against: the local one (e2e/conftest.py may point elsewhere)."""
    return local_control_plane


@pytest.fixture(scope="session")
def local_control_plane(toolchain: toolchain_module.Toolchain) -> Iterator[ControlPlane]:
    """A running etcd + kube-apiserver + kube-controller-manager + CAPI core for the session.

    With CAPI_REMOTE_KEEP_ENV=1 the working directory (logs, kubeconfig) survives for debugging.
    """
    plane = ControlPlane(toolchain)
    plane.start()
    try:
        yield plane
    finally:
        keep = bool(os.environ.get("CAPI_REMOTE_KEEP_ENV"))
        if keep:
            print(f"\nkeeping control plane logs in {plane.workdir}")
        plane.stop(keep_workdir=keep)


@pytest.fixture(scope="session")
async def api_client(control_plane: ControlPlane) -> AsyncIterator[client.ApiClient]:
    configuration = client.Configuration()
    await config.load_kube_config(
        config_file=str(control_plane.kubeconfig), client_configuration=configuration
    )
    async with client.ApiClient(configuration) as api:
        yield api


@pytest.fixture
async def namespace(api_client: client.ApiClient) -> AsyncIterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting for it to go)."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    core = client.CoreV1Api(api_client)
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    try:
        yield name
    finally:
        await core.delete_namespace(name)
