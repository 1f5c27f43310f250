"""Kubernetes Events, the user's window through ``kubectl describe``, written without blocking.

Invariants:
- Recording never blocks or fails a reconcile: events go through a bounded in-memory queue that a
  background task drains; when it is full the newest event is dropped and counted. A write that
  fails, whatever the error (the API server may be down or drop the connection), is logged and
  dropped: the drain never stops.
- Repeats aggregate: the same (object, type, reason, message) within ``aggregation_window`` bumps
  ``count`` and ``lastTimestamp`` of one Event instead of creating another.
- Messages are capped in length; callers must not pass secrets (bootstrap data, keys) into them.
"""

from __future__ import annotations

import asyncio
import datetime
import time
import uuid
from typing import Any, Literal

import attrs
import structlog

from capi_remote.kube.client import ApiError, KubeClient, Resource

EVENTS = Resource("", "v1", "events", "Event")
EventType = Literal["Normal", "Warning"]
_MAX_MESSAGE = 1024

_log = structlog.get_logger("capi_remote.events")


@attrs.frozen
class EventSettings:
    component: str = "capi-remote"
    instance: str = ""
    aggregation_window: float = 600.0
    queue_size: int = 1000


@attrs.define
class _Recorded:
    name: str
    namespace: str
    count: int
    last_seen: float


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    """``record(obj, "Warning", "HostKeyMismatch", "...")`` from anywhere on the loop."""

    def __init__(self, client: KubeClient, settings: EventSettings = EventSettings()) -> None:
        self.client = client
        self.settings = settings
        self.dropped = 0
        self._queue: asyncio.Queue[tuple[dict[str, Any], EventType, str, str]] = asyncio.Queue(
            settings.queue_size
        )
        self._recent: dict[tuple[str, str, str, str], _Recorded] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._drain())

    async def stop(self) -> None:
        """Write what is queued, then stop."""
        if self._task is None:
            return
        await self._queue.join()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    def record(self, obj: dict[str, Any], type_: EventType, reason: str, message: str) -> None:
        try:
            self._queue.put_nowait((obj, type_, reason, message[:_MAX_MESSAGE]))
        except asyncio.QueueFull:
            self.dropped += 1

    async def _drain(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                await self._write(*item)
            except Exception as error:  # whatever it is, the drain must go on
                # Not only ApiError/TransportError: a drain task that died of anything would
                # leave every later Event unwritten and stop() waiting forever for the queue.
                _log.warning(
                    "could not write an event",
                    reason=item[2],
                    error=f"{type(error).__name__}: {error}",
                )
            finally:
                self._queue.task_done()

    async def _write(
        self, obj: dict[str, Any], type_: EventType, reason: str, message: str
    ) -> None:
        meta = obj["metadata"]
        namespace = meta.get("namespace") or "default"
        key = (meta.get("uid", ""), type_, reason, message)
        now, wall = time.monotonic(), _now()
        previous = self._recent.get(key)
        if previous and now - previous.last_seen < self.settings.aggregation_window:
            previous.count += 1
            previous.last_seen = now
            try:
                await self.client.patch(
                    EVENTS,
                    previous.namespace,
                    previous.name,
                    {"count": previous.count, "lastTimestamp": wall},
                )
                return
            except ApiError as error:
                if not error.not_found:
                    raise
        self._forget_expired(now)
        name = f"{meta['name']}.{uuid.uuid4().hex[:16]}"
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta["name"],
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message,
            "count": 1,
            "firstTimestamp": wall,
            "lastTimestamp": wall,
            "source": {"component": self.settings.component},
            "reportingComponent": self.settings.component,
            "reportingInstance": self.settings.instance or self.settings.component,
        }
        await self.client.create(EVENTS, event)
        self._recent[key] = _Recorded(name, namespace, 1, now)

    def _forget_expired(self, now: float) -> None:
        window = self.settings.aggregation_window
        for key in [k for k, r in self._recent.items() if now - r.last_seen >= window]:
            del self._recent[key]
