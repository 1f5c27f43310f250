"""Informers against the real API server: events, the shared store, and the 410 relist path."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.request
from typing import Any

import pytest

from capi_remote.kube.cache import index_by_label
from capi_remote.kube.client import KubeClient, Resource
from capi_remote.kube.informer import Event, Informer, InformerSettings, Selector
from capi_remote_testbed.controlplane import ControlPlane

pytestmark = pytest.mark.integration

JSONDict = dict[str, Any]

CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
# The test control plane serves PodTemplates without a watch cache (see controlplane.py), so an
# etcd compaction really expires an old resourceVersion for them.
PODTEMPLATES = Resource("", "v1", "podtemplates", "PodTemplate")


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.changed = asyncio.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        self.changed.set()

    def seen(self) -> list[tuple[str, str]]:
        return [(e.type, e.obj["metadata"]["name"]) for e in self.events]

    async def wait_for(self, kind: str, name: str, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while (kind, name) not in self.seen():
                self.changed.clear()
                await self.changed.wait()


def _configmap(namespace: str, name: str, **labels: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "data": {"k": "v"},
    }


async def test_create_update_delete_reach_handlers_and_the_store(
    kube: KubeClient, namespace: str
) -> None:
    informer = Informer(
        kube, CONFIGMAPS, Selector(namespace=namespace), indexers={"app": index_by_label("app")}
    )
    recorder = Recorder()
    informer.add_handler(recorder)
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), 20)
        await kube.create(CONFIGMAPS, _configmap(namespace, "one", app="x"))
        await recorder.wait_for("ADDED", "one")
        await kube.patch(CONFIGMAPS, namespace, "one", {"data": {"k": "changed"}})
        await recorder.wait_for("MODIFIED", "one")
        cached = informer.store.get_by_name(namespace, "one")
        assert cached is not None
        assert cached["data"] == {"k": "changed"}
        assert "managedFields" not in cached["metadata"]
        assert [o["metadata"]["name"] for o in informer.store.by_index("app", "x")] == ["one"]
        await kube.delete(CONFIGMAPS, namespace, "one")
        await recorder.wait_for("DELETED", "one")
        assert informer.store.get_by_name(namespace, "one") is None
        assert informer.store.by_index("app", "x") == []
    finally:
        task.cancel()


def _etcd(control_plane: ControlPlane, path: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        control_plane.etcd_url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        result: dict[str, object] = json.loads(response.read())
        return result


def compact_etcd(control_plane: ControlPlane) -> None:
    """Compact etcd at its current revision: every older resourceVersion is gone."""
    key = base64.b64encode(b"compaction-probe").decode()
    header = _etcd(control_plane, "/v3/kv/range", {"key": key})["header"]
    assert isinstance(header, dict)
    _etcd(control_plane, "/v3/kv/compaction", {"revision": header["revision"], "physical": True})


def _podtemplate(namespace: str, name: str) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": name, "namespace": namespace},
        "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}},
    }


async def test_compaction_forces_a_relist_that_reports_deletes_from_the_gap(
    kube: KubeClient, namespace: str, control_plane: ControlPlane
) -> None:
    informer = Informer(kube, PODTEMPLATES, Selector(namespace=namespace))
    recorder = Recorder()
    informer.add_handler(recorder)
    task = asyncio.create_task(informer.run())
    await asyncio.wait_for(informer.synced.wait(), 20)
    for name in ("keep", "vanish", "change"):
        await kube.create(PODTEMPLATES, _podtemplate(namespace, name))
        await recorder.wait_for("ADDED", name)

    # The watch is down (as in a network cut) while the world moves on and etcd compacts.
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await kube.delete(PODTEMPLATES, namespace, "vanish")
    await kube.patch(PODTEMPLATES, namespace, "change", {"metadata": {"labels": {"new": "yes"}}})
    await kube.create(PODTEMPLATES, _podtemplate(namespace, "born"))
    compact_etcd(control_plane)
    recorder.events.clear()

    task = asyncio.create_task(informer.run())
    try:
        await recorder.wait_for("DELETED", "vanish")
        await recorder.wait_for("ADDED", "born")
        await recorder.wait_for("MODIFIED", "change")
        assert informer.relists == 1
        assert sorted(informer.store.list_keys()) == [
            f"{namespace}/{n}" for n in ("born", "change", "keep")
        ]
        assert ("MODIFIED", "keep") not in recorder.seen()
    finally:
        task.cancel()


class PageCounter(KubeClient):
    """The real client, noting how many listed objects had been trimmed when each page was
    asked for."""

    trimmed: list[str]
    seen_at_page: list[int]

    async def list(
        self, resource: Resource, namespace: str | None = None, **kw: object
    ) -> JSONDict:
        self.seen_at_page.append(len(self.trimmed))
        return await super().list(resource, namespace, **kw)  # type: ignore[arg-type]


async def test_a_list_is_trimmed_page_by_page(kube: KubeClient, namespace: str) -> None:
    """A trimming transform runs on each page as it arrives, so a relist of many large objects
    holds one page of them in full, not all (the shared Secret store relies on it)."""
    for i in range(25):
        await kube.create(CONFIGMAPS, _configmap(namespace, f"big-{i:02d}"))
    client = PageCounter.for_configuration(kube.api.configuration)
    client.trimmed, client.seen_at_page = [], []

    def trim(obj: JSONDict) -> JSONDict:
        client.trimmed.append(obj["metadata"]["name"])
        obj.pop("data", None)
        return obj

    informer = Informer(
        client,
        CONFIGMAPS,
        Selector(namespace=namespace),
        settings=InformerSettings(list_page_size=10),
        transform=trim,
    )
    task = asyncio.create_task(informer.run())
    try:
        async with asyncio.timeout(20):
            await informer.synced.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
    assert client.seen_at_page[:3] == [0, 10, 20]
    assert all("data" not in obj for obj in informer.store.values())
