"""The one writer of RemoteMachines: every status and object write of the controller goes
through here, so each is remembered (:class:`~reconcilers.common.OwnWrites`) and the next
reconcile does not read around it, whichever backend ran the attempt."""

from __future__ import annotations

from typing import Any, Literal, Protocol

from capi_remote import EventRecorder, KubeClient, patch_object, patch_status
from capi_remote.resources import REMOTE_MACHINES
from reconcilers.common import OwnWrites

JSONDict = dict[str, Any]
EventType = Literal["Normal", "Warning"]


class Writer(Protocol):
    def view(self, cached: JSONDict) -> JSONDict: ...

    async def status(self, rm: JSONDict, status: JSONDict) -> bool:
        """Write ``status`` if it changed; True if it did."""
        ...

    async def object(self, rm: JSONDict, desired: JSONDict) -> JSONDict:
        """Write metadata and spec; returns the object as written."""
        ...

    def event(self, rm: JSONDict, type_: EventType, reason: str, message: str) -> None: ...

    def forget(self, uid: str) -> None: ...


class MachineWriter:
    def __init__(self, client: KubeClient, events: EventRecorder) -> None:
        self.client = client
        self.events = events
        self.own_writes = OwnWrites()

    def view(self, cached: JSONDict) -> JSONDict:
        return self.own_writes.view(cached)

    async def status(self, rm: JSONDict, status: JSONDict) -> bool:
        written = await patch_status(self.client, REMOTE_MACHINES, rm, status)
        self.own_writes.note(rm, written)
        return written is not None

    async def object(self, rm: JSONDict, desired: JSONDict) -> JSONDict:
        written = await patch_object(self.client, REMOTE_MACHINES, rm, desired)
        return self.own_writes.note(rm, written)

    def event(self, rm: JSONDict, type_: EventType, reason: str, message: str) -> None:
        self.events.record(rm, type_, reason, message)

    def forget(self, uid: str) -> None:
        self.own_writes.forget(uid)
