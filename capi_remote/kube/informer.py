"""Informers: keep a :class:`Store` in step with the API server by list + watch, and tell handlers.

Invariants:
- After :attr:`Informer.synced` is set, the store holds every object the server had at the list's
  resourceVersion, and then every change since, in order.
- A watch that ends (server timeout, network) resumes from the last resourceVersion seen (events
  or bookmarks). A 410 Gone means that version was compacted away: relist, replace the store, and
  emit DELETED for objects that vanished in the gap, MODIFIED for those that changed. No delete is
  lost, and no handler sees an object go backwards.
- Handlers run on the event loop, in event order, and must be quick (map to keys and enqueue);
  an exception in one handler is logged and does not stop the informer or the other handlers.
- Periodic resync re-announces every cached object (type RESYNC) without talking to the server.
- With ``max_objects`` set (a server nobody vouches for), a list or watch that would hold more
  objects ends ``run`` with :class:`InformerOverflow` instead of growing the store.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs
import structlog

from capi_remote.kube.cache import IndexFunc, Store, object_key
from capi_remote.kube.client import ApiError, KubeClient, Resource, TransportError
from capi_remote.kube.ratelimit import ExponentialBackoffPolicy, ExponentialFailureRateLimiter

JSONDict = dict[str, Any]
EventType = Literal["ADDED", "MODIFIED", "DELETED", "RESYNC"]

_log = structlog.get_logger("capi_remote.informer")


@attrs.frozen
class Event:
    """One change the informer applied to its store. ``old`` is the previous cached version."""

    type: EventType
    obj: JSONDict
    old: JSONDict | None = None


Handler = Callable[[Event], None]


def strip_managed_fields(obj: JSONDict) -> JSONDict:
    """Default transform: managedFields are large and never read by reconcilers."""
    obj.get("metadata", {}).pop("managedFields", None)
    return obj


@attrs.frozen
class Selector:
    """Which objects of a resource an informer watches (all of them by default)."""

    namespace: str | None = None
    label_selector: str | None = None
    field_selector: str | None = None


@attrs.frozen
class InformerSettings:
    resync_period: float | None = 10 * 3600.0
    list_page_size: int = 500
    # The server closes each watch after a random 5-10 minutes, as client-go asks it to.
    watch_timeout_range: tuple[int, int] = (300, 600)
    backoff: ExponentialBackoffPolicy = ExponentialBackoffPolicy(base_delay=0.2, max_delay=30.0)
    #: None: as many as the server has (the management cluster's own API server).
    max_objects: int | None = None


class InformerOverflow(Exception):
    """The server has more objects than the informer's ``max_objects``; it stopped."""


class Informer:
    """List + watch one resource (optionally filtered) into a store."""

    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        selector: Selector = Selector(),
        *,
        indexers: Mapping[str, IndexFunc] | None = None,
        settings: InformerSettings = InformerSettings(),
        transform: Callable[[JSONDict], JSONDict] = strip_managed_fields,
    ) -> None:
        self.client = client
        self.resource = resource
        self.selector = selector
        self.settings = settings
        self.store = Store(indexers)
        self.synced = asyncio.Event()
        self.resource_version = ""
        self._transform = transform
        self._handlers: list[Handler] = []
        self._backoff = ExponentialFailureRateLimiter(settings.backoff)
        self._log = _log.bind(resource=resource.plural, namespace=selector.namespace)
        self.relists = 0

    def add_handler(self, handler: Handler) -> None:
        """Register a handler; it first hears RESYNC for objects already cached."""
        self._handlers.append(handler)
        for obj in self.store.values():
            self._call(handler, Event("RESYNC", obj))

    async def run(self) -> None:
        """List, then watch forever; cancel the task to stop.

        Run again after a cancel, it resumes watching from the last resourceVersion it saw.
        """
        resync = asyncio.create_task(self._resync_loop()) if self.settings.resync_period else None
        try:
            need_list = not self.synced.is_set()
            while True:
                try:
                    if need_list:
                        await self._list()
                        need_list = False
                    await self._watch()
                    self._backoff.forget("watch")
                except ApiError as error:
                    if error.gone:
                        self._log.info("watch resourceVersion too old, relisting")
                        need_list = True
                        continue
                    await self._pause(f"API error {error.status}: {error.message}")
                except (TransportError, ValueError) as error:
                    await self._pause(f"{type(error).__name__}: {error}")
        finally:
            if resync is not None:
                resync.cancel()

    async def _pause(self, why: str) -> None:
        delay = self._backoff.when("watch")
        self._log.warning("list/watch failed, retrying", error=why, retry_in=round(delay, 3))
        await asyncio.sleep(delay)

    async def _list(self) -> None:
        items: list[JSONDict] = []
        token: str | None = None
        while True:
            page = await self.client.list(
                self.resource,
                self.selector.namespace,
                label_selector=self.selector.label_selector,
                field_selector=self.selector.field_selector,
                limit=self.settings.list_page_size,
                continue_token=token,
            )
            items.extend(page.get("items", ()))
            self._check_count(len(items))
            token = page.get("metadata", {}).get("continue") or None
            if token is None:
                break
        version = page["metadata"]["resourceVersion"]
        self._replace(items)
        self.resource_version = version
        if self.synced.is_set():
            self.relists += 1
        self.synced.set()

    def _replace(self, items: list[JSONDict]) -> None:
        """Make the store equal to a fresh list, announcing the differences."""
        fresh = {}
        for item in items:
            # Lists omit apiVersion/kind on items; handlers and reconcilers expect them.
            item.setdefault("apiVersion", self.resource.api_version)
            item.setdefault("kind", self.resource.kind)
            fresh[object_key(item)] = self._transform(item)
        for key in self.store.list_keys():
            if key not in fresh:
                old = self.store.remove(key)
                if old is not None:
                    self._notify(Event("DELETED", old, old))
        for obj in fresh.values():
            old = self.store.upsert(obj)
            if old is None:
                self._notify(Event("ADDED", obj))
            elif _version(old) != _version(obj):
                self._notify(Event("MODIFIED", obj, old))

    async def _watch(self) -> None:
        low, high = self.settings.watch_timeout_range
        async for event in self.client.watch(
            self.resource,
            self.selector.namespace,
            self.resource_version,
            label_selector=self.selector.label_selector,
            field_selector=self.selector.field_selector,
            timeout_seconds=random.randint(low, high),
        ):
            kind = event.get("type")
            obj = event["object"]
            self.resource_version = obj.get("metadata", {}).get("resourceVersion", "")
            if kind == "BOOKMARK":
                continue
            obj = self._transform(obj)
            if kind in ("ADDED", "MODIFIED"):
                if object_key(obj) not in self.store:
                    self._check_count(len(self.store) + 1)
                old = self.store.upsert(obj)
                self._notify(Event("ADDED" if old is None else "MODIFIED", obj, old))
            elif kind == "DELETED":
                old = self.store.remove(object_key(obj))
                self._notify(Event("DELETED", obj, old))

    def _check_count(self, count: int) -> None:
        limit = self.settings.max_objects
        if limit is not None and count > limit:
            raise InformerOverflow(f"more than {limit} {self.resource.plural}")

    async def _resync_loop(self) -> None:
        assert self.settings.resync_period is not None
        while True:
            await asyncio.sleep(self.settings.resync_period)
            for obj in self.store.values():
                self._notify(Event("RESYNC", obj))

    def _notify(self, event: Event) -> None:
        for handler in self._handlers:
            self._call(handler, event)

    def _call(self, handler: Handler, event: Event) -> None:
        try:
            handler(event)
        except Exception:
            self._log.exception("informer event handler failed", handler=repr(handler))


def _version(obj: JSONDict) -> str:
    return str(obj.get("metadata", {}).get("resourceVersion", ""))


class InformerSet:
    """One informer per (resource, selector), shared by every controller of a manager."""

    def __init__(self, client: KubeClient, settings: InformerSettings = InformerSettings()) -> None:
        self.client = client
        self.settings = settings
        self._informers: dict[tuple[Resource, Selector], Informer] = {}
        self._tasks: dict[tuple[Resource, Selector], asyncio.Task[None]] = {}
        self._started = False

    def get(
        self,
        resource: Resource,
        selector: Selector = Selector(),
        *,
        transform: Callable[[JSONDict], JSONDict] = strip_managed_fields,
    ) -> Informer:
        """The informer of (resource, selector); ``transform`` applies when this call creates
        it (callers sharing one informer must agree on it)."""
        key = (resource, selector)
        informer = self._informers.get(key)
        if informer is None:
            informer = Informer(
                self.client, resource, selector, settings=self.settings, transform=transform
            )
            self._informers[key] = informer
            if self._started:  # a late informer starts right away
                # In a context of its own: not in that of the reconcile that asked for it, whose
                # reconcile_id its logs would otherwise carry forever.
                self._tasks[key] = asyncio.create_task(
                    informer.run(), context=contextvars.Context()
                )
        return informer

    def discard(self, informer: Informer) -> None:
        """Stop ``informer``'s watch and forget it (its last store stays with its holders)."""
        key = (informer.resource, informer.selector)
        if self._informers.get(key) is informer:
            del self._informers[key]
            task = self._tasks.pop(key, None)
            if task is not None:
                task.cancel()

    def all(self) -> list[Informer]:
        return list(self._informers.values())

    def start(self) -> None:
        self._started = True
        self._tasks = {key: asyncio.create_task(inf.run()) for key, inf in self._informers.items()}

    async def wait_synced(self) -> None:
        """Wait until every informer has listed once (bound it with ``asyncio.timeout``)."""
        await asyncio.gather(*(inf.synced.wait() for inf in self._informers.values()))

    @property
    def synced(self) -> bool:
        return all(inf.synced.is_set() for inf in self._informers.values())

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
        self._started = False
