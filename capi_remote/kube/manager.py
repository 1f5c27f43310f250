"""The manager: shared informers, several controllers on one loop, leader election, probes,
metrics and Events — controller-runtime's manager, small.

Invariants:
- Informers start first and run on every replica (a standby keeps a warm cache); controllers'
  workers start only after every informer has synced and, with leader election, only while this
  replica leads.
- ``/readyz`` answers 200 once caches are synced; ``/healthz`` while the loop is responsive;
  ``/metrics`` exposes the workqueue and controller-runtime families, by default over HTTPS to
  callers whose bearer token may ``get`` it (metricsauth.py); plain HTTP only when asked for.
- Stopping (cancel or signal) gives in-flight reconciles a grace period, flushes queued Events,
  releases the lease, then stops informers and servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from capi_remote.kube.builder import ControllerBuilder
from capi_remote.kube.client import KubeClient, Resource
from capi_remote.kube.controller import DEFAULT_RECONCILE_TIMEOUT, Controller
from capi_remote.kube.events import EventRecorder, EventSettings
from capi_remote.kube.handler import Mapper
from capi_remote.kube.informer import (
    Event,
    Informer,
    InformerSet,
    InformerSettings,
    Selector,
    strip_managed_fields,
)
from capi_remote.kube.leader import LeaderElectionSettings, LeaderElector
from capi_remote.kube.metrics import Metrics
from capi_remote.kube.metricsauth import (
    REFUSALS,
    SERVER_LIMITS,
    KubeReviewer,
    MetricsAuth,
    Reviewer,
)
from capi_remote.kube.ratelimit import RateLimiter
from capi_remote.kube.reconcile import Reconciler
from capi_remote.kube.tls import ReloadingContext, self_signed_context

_log = structlog.get_logger("capi_remote.manager")
WATCH_FILTER_LABEL = "cluster.x-k8s.io/watch-filter"
JSONDict = dict[str, Any]


@attrs.frozen
class ManagerSettings:
    """Addresses are ``host:port``; port 0 picks a free one; ``None`` disables that server."""

    health_address: str | None = "127.0.0.1:9440"
    metrics_address: str | None = "127.0.0.1:8080"
    # HTTPS with TokenReview/SubjectAccessReview checks; False serves plain, unauthenticated HTTP.
    metrics_secure: bool = True
    # tls.crt and tls.key (e.g. from cert-manager); None: a self-signed certificate in memory.
    metrics_cert_dir: Path | None = None
    leader_election: LeaderElectionSettings | None = None
    grace_period: float = 30.0
    # Sharding, as in CAPI providers: watch one namespace, and/or only objects labelled
    # cluster.x-k8s.io/watch-filter=<value> (for informers of the kinds we reconcile).
    namespace: str | None = None
    watch_filter: str | None = None
    informers: InformerSettings = InformerSettings()
    events: EventSettings = EventSettings()


class Manager:
    def __init__(
        self,
        client: KubeClient,
        settings: ManagerSettings = ManagerSettings(),
        *,
        metrics_reviewer: Reviewer | None = None,
    ) -> None:
        self.client = client
        self.settings = settings
        self.metrics_auth = MetricsAuth(metrics_reviewer or KubeReviewer(client))
        self.metrics = Metrics()
        self.informers = InformerSet(client, settings.informers)
        self.events = EventRecorder(client, settings.events)
        self.controllers: list[Controller] = []
        self.ready = asyncio.Event()
        self.bound: dict[str, tuple[str, int]] = {}
        self._elector: LeaderElector | None = None

    @property
    def is_leader(self) -> bool:
        return self._elector is None or self._elector.is_leader

    def controller(
        self,
        name: str,
        reconciler: Reconciler,
        *,
        for_: Resource,
        selector: Selector = Selector(),
        filtered: bool = True,
        workers: int = 1,
        reconcile_timeout: float | None = DEFAULT_RECONCILE_TIMEOUT,
        rate_limiter: RateLimiter | None = None,
    ) -> ControllerBuilder:
        """Start wiring a controller that reconciles ``for_`` objects (watched with ``selector``,
        see ``informer``); ``.watches(...)`` adds related kinds, ``.build()`` makes it."""
        controller = Controller(
            name,
            reconciler,
            workers=workers,
            reconcile_timeout=reconcile_timeout,
            rate_limiter=rate_limiter,
            metrics=self.metrics,
            resource=for_,
        )
        return ControllerBuilder(self, controller, for_, selector, filtered=filtered)

    def add(self, controller: Controller) -> Controller:
        """Run ``controller`` with the others; ``controller(...).build()`` calls this."""
        if controller.metrics is not self.metrics:
            raise ValueError(
                f"controller {controller.name!r} records on other metrics than the manager's "
                "(it would be missing from /metrics): build it with manager.controller(...)"
            )
        self.controllers.append(controller)
        self.client.on_reachable_again(controller.retry_after_outage)
        return controller

    def informer(
        self,
        resource: Resource,
        selector: Selector = Selector(),
        *,
        filtered: bool = True,
        transform: Callable[[JSONDict], JSONDict] = strip_managed_fields,
        page_size: int | None = None,
    ) -> Informer:
        """The shared informer for ``resource``, scoped to the manager's namespace; with
        ``filtered`` also to its watch filter (leave it off for Secrets and other objects that
        users do not label). ``transform`` trims what its store keeps, ``page_size`` bounds its
        lists' pages (see InformerSet.get)."""
        labels = selector.label_selector
        if filtered and self.settings.watch_filter:
            wanted = f"{WATCH_FILTER_LABEL}={self.settings.watch_filter}"
            labels = f"{labels},{wanted}" if labels else wanted
        scoped = attrs.evolve(
            selector,
            namespace=selector.namespace or self.settings.namespace,
            label_selector=labels,
        )
        return self.informers.get(resource, scoped, transform=transform, page_size=page_size)

    def watch(
        self,
        controller: Controller,
        resource: Resource,
        mapper: Mapper,
        selector: Selector = Selector(),
        *,
        filtered: bool = True,
    ) -> Informer:
        """Enqueue into ``controller`` what ``mapper`` names for each event of ``resource``."""
        informer = self.informer(resource, selector, filtered=filtered)

        def handle(event: Event) -> None:
            for request in mapper(event):
                controller.enqueue(request)

        informer.add_handler(handle)
        return informer

    async def run(self) -> None:
        """Run until cancelled."""
        async with self._servers():
            self.informers.start()
            self.events.start()
            try:
                await self.informers.wait_synced()
                self.ready.set()
                _log.info("caches synced", informers=len(self.informers.all()))
                if self.settings.leader_election is None:
                    await self._run_controllers()
                else:
                    self._elector = LeaderElector(self.client, self.settings.leader_election)
                    await self._elector.run(self._run_controllers)
            finally:
                self.ready.clear()
                await self.events.stop()
                await self.informers.stop()

    async def _run_controllers(self) -> None:
        grace = self.settings.grace_period
        async with asyncio.TaskGroup() as group:
            for controller in self.controllers:
                group.create_task(controller.run(grace_period=grace))

    @contextlib.asynccontextmanager
    async def _servers(self) -> AsyncIterator[None]:
        runners = []
        try:
            if self.settings.health_address is not None:
                app = web.Application()
                app.router.add_get("/healthz", self._healthz)
                app.router.add_get("/readyz", self._readyz)
                runners.append(await self._serve("health", app, self.settings.health_address))
            if self.settings.metrics_address is not None:
                app = web.Application(client_max_size=1024)
                tls = None
                if self.settings.metrics_secure:
                    app.router.add_get("/metrics", self._authorized_metrics)
                    tls = self._metrics_tls()
                else:
                    app.router.add_get("/metrics", self._metrics)
                address = self.settings.metrics_address
                runners.append(await self._serve("metrics", app, address, tls))
            yield
        finally:
            for runner in runners:
                await runner.cleanup()

    def _metrics_tls(self) -> ssl.SSLContext:
        cert_dir = self.settings.metrics_cert_dir
        if cert_dir is None:
            return self_signed_context("capi-remote-metrics")
        return ReloadingContext(cert_dir / "tls.crt", cert_dir / "tls.key").context

    async def _serve(
        self, name: str, app: web.Application, address: str, tls: ssl.SSLContext | None = None
    ) -> web.AppRunner:
        host, _, port = address.rpartition(":")
        # Keyword arguments of AppRunner reach each connection's request handler.
        runner = web.AppRunner(
            app,
            access_log=None,
            max_line_size=SERVER_LIMITS["max_line_size"],
            max_field_size=SERVER_LIMITS["max_field_size"],
        )
        await runner.setup()
        site = web.TCPSite(
            runner,
            host or "0.0.0.0",  # noqa: S104 - user-chosen
            int(port),
            ssl_context=tls,
        )
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        bound = sockets[0].getsockname()[:2] if sockets else (host, int(port))
        self.bound[name] = (str(bound[0]), int(bound[1]))
        _log.info("serving", endpoint=name, address=f"{bound[0]}:{bound[1]}")
        return runner

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _readyz(self, _: web.Request) -> web.Response:
        if self.ready.is_set():
            return web.Response(text="ok")
        return web.Response(status=503, text="caches not synced")

    async def _authorized_metrics(self, request: web.Request) -> web.Response:
        status = await self.metrics_auth.status(
            request.headers.get("Authorization"), "get", request.path
        )
        if status != 200:
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return web.Response(status=status, text=REFUSALS[status], headers=headers)
        return await self._metrics(request)

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
