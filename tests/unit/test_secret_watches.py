"""ObjectSource's watches are bounded (issue 13, point 4): renaming a referenced Secret in a loop
cannot open unbounded watches, and the shared ``cluster.x-k8s.io/secret`` store keeps only the
keys the controller reads."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

from capi_remote import Event, Manager, Selector
from capi_remote.resources import SECRETS
from reconcilers.secrets import BOOTSTRAP_SECRET_TYPE, MAX_SHARED_VALUE, ObjectSource

JSONDict = dict[str, Any]


def secret(name: str, data: dict[str, bytes], kind: str = "Opaque") -> JSONDict:
    return {
        "metadata": {
            "name": name,
            "namespace": "tenant",
            "resourceVersion": "1",
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}"},
        },
        "type": kind,
        "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
    }


class FakeApi:
    """Lists Secrets by field selector; watches block until cancelled (and count as open)."""

    def __init__(self, objects: list[JSONDict]) -> None:
        self.objects = objects
        self.open_watches = 0

    def on_reachable_again(self, listener: object) -> None:
        pass

    async def list(self, resource: object, namespace: str | None, **query: Any) -> JSONDict:
        field = query.get("field_selector") or ""
        items = [
            o
            for o in self.objects
            if (field == f"type={BOOTSTRAP_SECRET_TYPE}" and o["type"] == BOOTSTRAP_SECRET_TYPE)
            or field == f"metadata.name={o['metadata']['name']}"
        ]
        return {
            "items": [dict(o, data=dict(o["data"])) for o in items],
            "metadata": {"resourceVersion": "1"},
        }

    async def watch(self, *args: Any, **kwargs: Any) -> AsyncIterator[JSONDict]:
        self.open_watches += 1
        try:
            await asyncio.Event().wait()
        finally:
            self.open_watches -= 1
        yield {}


async def started(objects: list[JSONDict]) -> tuple[Manager, FakeApi]:
    api = FakeApi(objects)
    manager = Manager(api)  # type: ignore[arg-type]
    manager.informers.start()
    return manager, api


def ignore(event: Event) -> None:
    pass


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_renaming_a_referenced_key_in_a_loop_keeps_watches_bounded() -> None:
    manager, api = await started([])
    current = {"name": ""}
    source = ObjectSource(
        manager, SECRETS, ignore, referenced=lambda namespace, name: name == current["name"]
    )
    for i in range(1000):
        current["name"] = f"key-{i}"
        source.value("tenant", current["name"], "ssh-privatekey")
        await settle()
    assert source.watches <= 64
    assert len(manager.informers.all()) == source.watches
    assert api.open_watches == source.watches
    await manager.informers.stop()


async def test_without_references_the_least_recently_used_watch_goes_past_the_cap() -> None:
    manager, api = await started([secret("kept", {"ssh-privatekey": b"k"})])
    source = ObjectSource(manager, SECRETS, ignore, max_watches=10)
    source.get("tenant", "kept")
    await settle()
    for i in range(50):
        source.get("tenant", f"other-{i}")
        source.get("tenant", "kept")  # in use: never the least recently used
        await settle()
    assert source.watches == 10 and api.open_watches == 10
    assert source.value("tenant", "kept", "ssh-privatekey") == b"k"
    await manager.informers.stop()


async def test_release_closes_the_watch() -> None:
    manager, api = await started([])
    source = ObjectSource(manager, SECRETS, ignore)
    source.get("tenant", "a")
    await settle()
    assert api.open_watches == 1
    source.release("tenant", "a")
    await settle()
    assert api.open_watches == 0 and source.watches == 0
    assert not source.known("tenant", "a")
    await manager.informers.stop()


async def test_the_shared_store_keeps_only_value_and_format() -> None:
    ca = secret("c-ca", {"tls.crt": b"cert", "tls.key": b"key"}, BOOTSTRAP_SECRET_TYPE)
    data = secret(
        "m-data", {"value": b"#cloud-config\n", "format": b"cloud-config"}, BOOTSTRAP_SECRET_TYPE
    )
    manager, _ = await started([ca, data])
    source = ObjectSource(
        manager,
        SECRETS,
        ignore,
        shared_selector=Selector(field_selector=f"type={BOOTSTRAP_SECRET_TYPE}"),
    )
    await manager.informers.wait_synced()
    cached = source.get("tenant", "c-ca")
    assert cached is not None and cached["data"] == {} and "annotations" not in cached["metadata"]
    assert source.value("tenant", "m-data", "value") == b"#cloud-config\n"
    assert source.watches == 0
    # Another key of a shared-type Secret is read from the object's own watch, in full.
    assert source.value("tenant", "c-ca", "tls.key") is None
    assert not source.known("tenant", "c-ca")  # its watch has not listed yet
    await settle()
    assert source.known("tenant", "c-ca")
    assert source.value("tenant", "c-ca", "tls.key") == b"key"
    await manager.informers.stop()


async def test_a_value_too_large_for_the_shared_store_is_read_through_its_own_watch() -> None:
    """A tenant's many 1 MiB Secrets of the shared type no longer sit in the controller's memory
    whole; the one a machine names is still read in full."""
    big = b"#cloud-config\n#" + b"x" * MAX_SHARED_VALUE
    large = secret("m-data", {"value": big, "format": b"cloud-config"}, BOOTSTRAP_SECRET_TYPE)
    manager, _ = await started([large])
    shared = Selector(field_selector=f"type={BOOTSTRAP_SECRET_TYPE}")
    source = ObjectSource(manager, SECRETS, ignore, shared_selector=shared)
    await manager.informers.wait_synced()
    (cached,) = manager.informer(SECRETS, shared, filtered=False).store.values()
    assert cached["data"] == {"format": base64.b64encode(b"cloud-config").decode()}
    assert not source.known("tenant", "m-data")
    assert source.get("tenant", "m-data") is None  # opens its watch, which has not listed yet
    await settle()
    assert source.known("tenant", "m-data") and source.watches == 1
    assert source.value("tenant", "m-data", "value") == big
    await manager.informers.stop()
