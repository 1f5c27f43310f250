"""Smoke tests of the real control plane: each one proves a part the rest of the suite relies on."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from capi_remote.kube.client import KubeClient
from capi_remote.kube.informer import Event, Informer, Selector
from capi_remote.resources import CONFIGMAPS
from capi_remote_testbed import toolchain as toolchain_module
from capi_remote_testbed.controlplane import ControlPlane, Settings
from capi_remote_testbed.toolchain import KUBERNETES_VERSION

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
    body = str(raised.value.body)
    assert "admission webhook" in body
    assert "cidrBlocks" in body


async def test_apiserver_restart_keeps_port_data_and_clients_and_watches_relist(
    toolchain: toolchain_module.Toolchain,
) -> None:
    """``restart_apiserver`` / ``stop_apiserver`` + ``start_apiserver``: the same port,
    certificates, kubeconfig and data; a client made before the restart works after it, and an
    informer resuming its watch from a version the fresh watch cache cannot serve relists and
    sees what changed right after the restart. Its own plane: the session's must stay up."""
    plane = ControlPlane(toolchain, Settings(cluster_api=False))
    await asyncio.to_thread(plane.start)
    kube = await KubeClient.from_kubeconfig(str(plane.kubeconfig))
    informer = Informer(kube, CONFIGMAPS, Selector(namespace="default"))
    seen: list[tuple[str, str]] = []

    def record(event: Event) -> None:
        seen.append((event.type, event.obj["metadata"]["name"]))

    informer.add_handler(record)
    task = asyncio.create_task(informer.run())
    try:
        port, kubeconfig = plane.apiserver_port, plane.kubeconfig.read_bytes()
        for name in ("vanish", "stay"):
            await kube.create(CONFIGMAPS, {"metadata": {"name": name, "namespace": "default"}})

        async def cached_both() -> bool:
            """the informer caches both ConfigMaps"""
            return {"default/vanish", "default/stay"} <= set(informer.store.list_keys())

        await eventually(cached_both, 20)
        # A write the informer does not watch moves etcd past the informer's resourceVersion, so
        # the compaction below really expires it.
        await kube.create(
            CONFIGMAPS, {"metadata": {"name": "elsewhere", "namespace": "kube-public"}}
        )
        await asyncio.to_thread(plane.stop_apiserver, kill=True)
        assert not plane.apiserver_running
        revision = await asyncio.to_thread(plane.compact_etcd)
        assert revision > 0
        # Nothing written since (the API server is down): compacting again is a no-op, not
        # etcd's "required revision has been compacted" (R6 hit that once).
        assert await asyncio.to_thread(plane.compact_etcd) == revision
        await asyncio.to_thread(plane.start_apiserver)
        assert plane.apiserver_running
        assert (plane.apiserver_port, plane.kubeconfig.read_bytes()) == (port, kubeconfig)
        # Straight after the restart, while the informer still backs off: changes it can only
        # learn from a relist.
        seen.clear()
        await kube.delete(CONFIGMAPS, "default", "vanish")
        await kube.create(CONFIGMAPS, {"metadata": {"name": "born", "namespace": "default"}})

        async def relisted() -> bool:
            """the informer reports the delete and the create from the restart's gap"""
            return {("DELETED", "vanish"), ("ADDED", "born")} <= set(seen)

        await eventually(relisted, 60)
        assert informer.relists >= 1
        assert sorted(informer.store.list_keys()) == ["default/born", "default/stay"]
        assert (await kube.get(CONFIGMAPS, "default", "stay"))["metadata"]["name"] == "stay"

        down = await asyncio.to_thread(plane.restart_apiserver)  # graceful (SIGTERM)
        assert 0 < down < plane.settings.ready_timeout
        assert (await kube.get(CONFIGMAPS, "default", "born"))["metadata"]["name"] == "born"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await kube.close()
        await asyncio.to_thread(plane.stop)
