"""Smoke tests of the real control plane: each one proves a part the rest of the suite relies on."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from capi_remote.devenv.toolchain import KUBERNETES_VERSION

pytestmark = pytest.mark.integration

CAPI_GROUP, CAPI_VERSION = "cluster.x-k8s.io", "v1beta2"


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {check.__doc__}")
        await asyncio.sleep(0.2)


async def _gone(read: Callable[[], Awaitable[object]]) -> bool:
    try:
        await read()
    except ApiException as error:
        if error.status == 404:
            return True
        raise
    return False


async def test_apiserver_reports_the_pinned_version(api_client: client.ApiClient) -> None:
    info = await client.VersionApi(api_client).get_code()
    assert info.git_version == KUBERNETES_VERSION


async def test_namespace_deletion_completes(api_client: client.ApiClient) -> None:
    core = client.CoreV1Api(api_client)
    name = f"del-{uuid.uuid4().hex[:8]}"
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    await core.create_namespaced_config_map(
        name, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="content"), data={"k": "v"})
    )
    await core.delete_namespace(name)

    async def namespace_gone() -> bool:
        """the namespace controller finalizes and removes the namespace"""
        return await _gone(lambda: core.read_namespace(name))

    await eventually(namespace_gone)


async def test_garbage_collector_deletes_owned_objects(
    api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    parent = await core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="parent"))
    )
    owner = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="parent", uid=parent.metadata.uid
    )
    await core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="child", owner_references=[owner])),
    )
    await core.delete_namespaced_config_map("parent", namespace)

    async def child_collected() -> bool:
        """the garbage collector deletes the child of a deleted owner"""
        return await _gone(lambda: core.read_namespaced_config_map("child", namespace))

    await eventually(child_collected)


def _cluster(name: str, **spec: object) -> dict[str, object]:
    return {
        "apiVersion": f"{CAPI_GROUP}/{CAPI_VERSION}",
        "kind": "Cluster",
        "metadata": {"name": name},
        "spec": spec,
    }


async def test_cluster_api_core_reconciles_a_cluster(
    api_client: client.ApiClient, namespace: str
) -> None:
    custom = client.CustomObjectsApi(api_client)
    await custom.create_namespaced_custom_object(
        CAPI_GROUP,
        CAPI_VERSION,
        namespace,
        "clusters",
        _cluster(
            "smoke",
            infrastructureRef={
                "apiGroup": "infrastructure.cluster.x-k8s.io",
                "kind": "RemoteCluster",
                "name": "smoke",
            },
        ),
    )

    async def reconciled() -> bool:
        """CAPI core writes the Cluster's status conditions and phase"""
        obj = await custom.get_namespaced_custom_object(
            CAPI_GROUP, CAPI_VERSION, namespace, "clusters", "smoke"
        )
        status = obj.get("status", {})
        return bool(status.get("conditions")) and bool(status.get("phase"))

    await eventually(reconciled)


async def test_cluster_api_webhook_rejects_an_invalid_cluster(
    api_client: client.ApiClient, namespace: str
) -> None:
    custom = client.CustomObjectsApi(api_client)
    invalid = _cluster("bad", clusterNetwork={"pods": {"cidrBlocks": ["not-a-cidr"]}})
    with pytest.raises(ApiException) as raised:
        await custom.create_namespaced_custom_object(
            CAPI_GROUP, CAPI_VERSION, namespace, "clusters", invalid
        )
    assert raised.value.status in (400, 422)
    assert "admission webhook" in raised.value.body
    assert "cidrBlocks" in raised.value.body
