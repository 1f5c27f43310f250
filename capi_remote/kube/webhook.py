"""An HTTPS server for admission and conversion webhooks (JSON review in, JSON review out).

The framework knows nothing of the reviews' meaning: the provider registers one handler per path
(e.g. ``/convert``). Certificates come from a directory holding ``tls.crt`` and ``tls.key``, as
cert-manager mounts them; they are re-read when their files change, so rotation needs no restart.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import structlog
from aiohttp import web

from capi_remote.kube.tls import ReloadingContext

JSONDict = dict[str, Any]
ReviewHandler = Callable[[JSONDict], JSONDict]

_log = structlog.get_logger("capi_remote.webhook")


@attrs.frozen
class WebhookSettings:
    cert_dir: Path
    host: str = "0.0.0.0"  # noqa: S104 - the API server reaches the pod on its own IP
    port: int = 9443
    cert_name: str = "tls.crt"
    key_name: str = "tls.key"


class WebhookServer:
    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings
        self._handlers: dict[str, ReviewHandler] = {}
        self._runner: web.AppRunner | None = None
        self.port = settings.port

    def register(self, path: str, handler: ReviewHandler) -> None:
        self._handlers[path] = handler

    async def start(self) -> None:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        for path in self._handlers:
            app.router.add_post(path, self._serve)
        tls = ReloadingContext(
            self.settings.cert_dir / self.settings.cert_name,
            self.settings.cert_dir / self.settings.key_name,
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.settings.host, self.settings.port, ssl_context=tls.context
        )
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        _log.info("webhook server listening", port=self.port, paths=sorted(self._handlers))

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _serve(self, request: web.Request) -> web.Response:
        handler = self._handlers[request.path]
        try:
            review = json.loads(await request.read())
        except ValueError:
            return web.json_response({"error": "request body is not JSON"}, status=400)
        try:
            answer = handler(review)
        except Exception:
            _log.exception("webhook handler failed", path=request.path)
            return web.json_response({"error": "webhook handler failed"}, status=500)
        return web.json_response(answer)
