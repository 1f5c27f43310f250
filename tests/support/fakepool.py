"""A fake API server for PooledRemoteMachine claims: gets and merge patches of ``spec`` with
resourceVersion preconditions, each change delivered to a Store later, as an informer's watch
would. Used by the claim tests and the per-event benchmark (X3)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from capi_remote import ApiError, Store
from capi_remote.kube.cache import object_key
from capi_remote.kube.client import Resource

JSONDict = dict[str, Any]


def copy_claimable(obj: JSONDict) -> JSONDict:
    """A copy of the parts a claim changes (cheap: the fake server's CPU counts too)."""
    return {**obj, "metadata": dict(obj["metadata"]), "spec": dict(obj["spec"])}


class FakePoolServer:
    """PooledRemoteMachines as the API server holds them: reads and merge patches with a
    resourceVersion precondition; each change reaches ``store`` ``watch_lag`` later, as a watch
    delivers it."""

    def __init__(
        self,
        store: Store,
        objects: Sequence[JSONDict],
        request_seconds: float = 0.0,
        watch_lag: float = 0.0,
    ) -> None:
        self.store = store
        self.request_seconds = request_seconds
        self.watch_lag = watch_lag
        #: Raised once by the next patch instead of answering (then cleared).
        self.fail_next: Exception | None = None
        self.objects = {object_key(o): copy_claimable(o) for o in objects}
        self.version = 1
        self.requests = 0
        self.conflicts = 0

    async def get(self, resource: Resource, namespace: str, name: str) -> JSONDict:
        self.requests += 1
        await asyncio.sleep(self.request_seconds)
        return copy_claimable(self.objects[f"{namespace}/{name}"])

    async def patch(
        self, resource: Resource, namespace: str, name: str, patch: JSONDict
    ) -> JSONDict:
        self.requests += 1
        await asyncio.sleep(self.request_seconds)
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        current = self.objects[f"{namespace}/{name}"]
        expected = patch["metadata"].get("resourceVersion")
        if expected is not None and expected != current["metadata"]["resourceVersion"]:
            self.conflicts += 1
            raise ApiError(409, "Conflict", "the object has been modified")
        self.version += 1
        current["metadata"]["resourceVersion"] = str(self.version)
        current["spec"].update(patch.get("spec") or {})
        asyncio.get_running_loop().call_later(
            self.watch_lag, self.store.upsert, copy_claimable(current)
        )
        return copy_claimable(current)
