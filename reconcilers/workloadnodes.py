"""The Nodes of workload clusters, read from one watch per cluster instead of a GET and a LIST per
reconcile of every provisioned machine that waits for its Node.

Invariants:
- A cluster's watch runs while at least one machine waits for its Node: a machine waits by
  calling :meth:`WorkloadNodes.lookup` (each call renews it for ``settings.wait_ttl``) and stops
  waiting with :meth:`WorkloadNodes.release` or by not asking again. The watch stops when the last
  wait has expired, and when the cluster's client changes (its kubeconfig Secret changed).
- The store keeps only what linking reads of a Node: name, resourceVersion, addresses and
  providerID. The workload cluster's API server is the tenant's, so it chooses what its Nodes look
  like: nothing else is kept, its answers are size-bounded by the client, and past
  ``settings.max_nodes`` Nodes the watch stops and the cluster reads as failed (a reason a
  condition or Event can show) until ``settings.retry_after`` has passed.
- A Node event wakes exactly the waiting machines whose host names or addresses it matches, and
  only when what linking reads of it changed.
- A providerID we just set (:meth:`WorkloadNodes.linked`) is what lookups see until the watch
  shows that Node with a providerID: a reconcile that runs before the watch delivers our own
  patch does not patch (and announce) it again.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import structlog

from capi_remote import (
    Event,
    Informer,
    InformerOverflow,
    InformerSettings,
    KubeClient,
    Request,
)
from capi_remote.resources import NODES

JSONDict = dict[str, Any]
ADDRESS_INDEX = "address"

_log = structlog.get_logger("capi_remote.workloadnodes")


@attrs.frozen
class NodeWatchSettings:
    max_nodes: int = 10_000
    list_page_size: int = 100
    #: How long one lookup keeps its machine waiting (callers ask again sooner than this).
    wait_ttl: float = 180.0
    #: How often a cluster's watch checks whether anyone still waits.
    idle_check: float = 30.0
    #: How long a failed watch (too many Nodes) stays failed before it is tried again.
    retry_after: float = 300.0


@attrs.frozen
class Lookup:
    """What the cache says of one host's Node: ``synced`` False while the first list runs,
    ``failure`` set when the cluster cannot be watched, else ``node`` (None: not registered)."""

    synced: bool
    node: JSONDict | None = None
    failure: str | None = None


def slim_node(obj: JSONDict) -> JSONDict:
    """What the store keeps of a Node (see the invariants)."""
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    addresses = [
        {"type": str(a.get("type", "")), "address": str(a.get("address", ""))}
        for a in (status.get("addresses") or [])[:16]
        if isinstance(a, dict)
    ]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": str(meta.get("name", "")),
            "resourceVersion": str(meta.get("resourceVersion", "")),
        },
        "spec": {"providerID": str((obj.get("spec") or {}).get("providerID") or "")},
        "status": {"addresses": addresses},
    }


def _addresses(node: JSONDict) -> list[str]:
    return [a["address"] for a in node["status"]["addresses"] if a["address"]]


def _linking_view(node: JSONDict | None) -> tuple[str, str, tuple[str, ...]] | None:
    if node is None:
        return None
    return (node["metadata"]["name"], node["spec"]["providerID"], tuple(_addresses(node)))


@attrs.define
class _Waiter:
    names: frozenset[str]
    addresses: frozenset[str]
    until: float


class _ClusterWatch:
    """One workload cluster's Node informer and the machines waiting on it."""

    def __init__(
        self,
        client: KubeClient,
        settings: NodeWatchSettings,
        wake: Callable[[Request], None],
        clock: Callable[[], float],
    ) -> None:
        self.client = client
        self.settings = settings
        self.wake = wake
        self.clock = clock
        self.informer = Informer(
            client,
            NODES,
            settings=InformerSettings(
                resync_period=None,
                list_page_size=settings.list_page_size,
                max_objects=settings.max_nodes,
            ),
            indexers={ADDRESS_INDEX: _addresses},
            transform=slim_node,
        )
        self.informer.add_handler(self._on_node)
        self.waiters: dict[Request, _Waiter] = {}
        self._by_name: defaultdict[str, set[Request]] = defaultdict(set)
        self._by_address: defaultdict[str, set[Request]] = defaultdict(set)
        self.assumed: dict[str, str] = {}
        self.failure: str | None = None
        self.failed_at = 0.0
        self.task: asyncio.Task[None] | None = None

    def wait(self, request: Request, names: Iterable[str], addresses: Iterable[str]) -> None:
        self.forget(request)
        waiter = _Waiter(
            frozenset(names), frozenset(addresses), self.clock() + self.settings.wait_ttl
        )
        self.waiters[request] = waiter
        for name in waiter.names:
            self._by_name[name].add(request)
        for address in waiter.addresses:
            self._by_address[address].add(request)

    def forget(self, request: Request) -> None:
        waiter = self.waiters.pop(request, None)
        if waiter is None:
            return
        for index, values in ((self._by_name, waiter.names), (self._by_address, waiter.addresses)):
            for value in values:
                index[value].discard(request)
                if not index[value]:
                    del index[value]

    def find(self, names: Iterable[str], addresses: Iterable[str]) -> JSONDict | None:
        """The host's Node: by name first, else by any address."""
        store = self.informer.store
        found = next(filter(None, (store.get(name) for name in names)), None)
        for address in addresses:
            if found is not None:
                break
            found = next(iter(store.by_index(ADDRESS_INDEX, address)), None)
        if found is None:
            return None
        assumed = self.assumed.get(found["metadata"]["name"])
        if assumed and not found["spec"]["providerID"]:
            return {**found, "spec": {"providerID": assumed}}
        return found

    def _on_node(self, event: Event) -> None:
        if event.type == "DELETED" or event.obj["spec"]["providerID"]:
            self.assumed.pop(event.obj["metadata"]["name"], None)
        if event.type != "DELETED" and _linking_view(event.obj) == _linking_view(event.old):
            return
        woken: set[Request] = set()
        for node in (event.obj, event.old):
            if node is None:
                continue
            woken |= self._by_name.get(node["metadata"]["name"], set())
            for address in _addresses(node):
                woken |= self._by_address.get(address, set())
        for request in woken:
            self.wake(request)

    def expire(self) -> None:
        now = self.clock()
        for request in [r for r, w in self.waiters.items() if w.until <= now]:
            self.forget(request)

    def _fail(self, why: str) -> None:
        self.failure = why
        self.failed_at = self.clock()
        _log.warning("workload Node watch stopped", reason=why)
        for request in list(self.waiters):
            self.wake(request)

    async def run(self) -> None:
        """Run the informer until nobody waits or it overflows."""
        watch = asyncio.create_task(self.informer.run())
        try:
            while True:
                done, _ = await asyncio.wait({watch}, timeout=self.settings.idle_check)
                if watch in done:
                    watch.result()  # raises what stopped it
                    return
                self.expire()
                if not self.waiters:
                    return
        except InformerOverflow as overflow:
            self._fail(f"the workload cluster has {overflow}; its Nodes are not watched")
        except Exception as error:  # a bug: say so where the machines show it, and retry later
            _log.exception("workload Node watch failed")
            self._fail(f"watching the workload cluster's Nodes failed: {type(error).__name__}")
        finally:
            watch.cancel()


class WorkloadNodes:
    """The Node watches of every workload cluster, keyed by (namespace, cluster)."""

    def __init__(
        self,
        wake: Callable[[Request], None],
        settings: NodeWatchSettings = NodeWatchSettings(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wake = wake
        self._settings = settings
        self._clock = clock
        self._clusters: dict[tuple[str, str], _ClusterWatch] = {}

    def lookup(
        self,
        cluster: tuple[str, str],
        client: KubeClient,
        request: Request,
        names: list[str],
        addresses: set[str],
    ) -> Lookup:
        """The Node of the host ``names``/``addresses``, and keep ``request`` waiting for it:
        a change of that Node wakes ``request``. Starts the cluster's watch if needed."""
        watch = self._watch(cluster, client)
        if watch.failure is not None:
            return Lookup(synced=False, failure=watch.failure)
        watch.wait(request, names, addresses)
        if not watch.informer.synced.is_set():
            return Lookup(synced=False)
        return Lookup(synced=True, node=watch.find(names, addresses))

    def linked(self, cluster: tuple[str, str], node: str, provider_id: str) -> None:
        """We set ``provider_id`` on ``node``: lookups see it until the watch does."""
        watch = self._clusters.get(cluster)
        if watch is not None:
            watch.assumed[node] = provider_id

    def release(self, cluster: tuple[str, str], request: Request) -> None:
        """``request`` no longer waits for its Node (it is linked, or the machine is gone)."""
        watch = self._clusters.get(cluster)
        if watch is not None:
            watch.forget(request)

    def watching(self, cluster: tuple[str, str]) -> bool:
        watch = self._clusters.get(cluster)
        return watch is not None and watch.task is not None and not watch.task.done()

    def _watch(self, cluster: tuple[str, str], client: KubeClient) -> _ClusterWatch:
        watch = self._clusters.get(cluster)
        if watch is not None and watch.client is not client:
            self._stop(cluster)  # a new kubeconfig: the old server's Nodes mean nothing now
            watch = None
        if watch is not None and watch.failure is not None:
            if self._clock() - watch.failed_at < self._settings.retry_after:
                return watch
            self._stop(cluster)
            watch = None
        if watch is not None and watch.task is not None and not watch.task.done():
            return watch
        started = _ClusterWatch(client, self._settings, self._wake, self._clock)
        if watch is not None and watch.failure is None:
            for request, waiter in watch.waiters.items():
                started.wait(request, waiter.names, waiter.addresses)
        # A context of its own: not the reconcile's, whose id its logs would carry forever.
        started.task = asyncio.create_task(started.run(), context=contextvars.Context())
        started.task.add_done_callback(lambda _: self._ended(cluster, started))
        self._clusters[cluster] = started
        return started

    def _ended(self, cluster: tuple[str, str], watch: _ClusterWatch) -> None:
        # A failed watch stays, to answer with its failure until it may be tried again.
        if watch.failure is None and self._clusters.get(cluster) is watch:
            del self._clusters[cluster]

    def _stop(self, cluster: tuple[str, str]) -> None:
        watch = self._clusters.pop(cluster, None)
        if watch is not None and watch.task is not None:
            watch.task.cancel()

    async def close(self) -> None:
        tasks = [w.task for w in self._clusters.values() if w.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._clusters.clear()
