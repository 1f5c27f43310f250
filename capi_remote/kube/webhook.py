"""An HTTPS server for admission and conversion webhooks (JSON review in, JSON review out).

The framework knows nothing of the reviews' meaning: the provider registers one handler per path
(e.g. ``/convert``). Certificates come from a directory holding ``tls.crt`` and ``tls.key``, as
cert-manager mounts them; they are re-read when their files change, so rotation needs no restart.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import structlog
from aiohttp import web

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


class _ReloadingContext:
    """An SSL context whose certificate follows the files on disk (checked per handshake)."""

    def __init__(self, cert: Path, key: Path) -> None:
        self._cert, self._key = cert, key
        self._stamp: tuple[float, float] = (0.0, 0.0)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load()
        self.context.sni_callback = self._on_hello

    def _load(self) -> None:
        stamp = (self._cert.stat().st_mtime, self._key.stat().st_mtime)
        if stamp != self._stamp:
            self.context.load_cert_chain(str(self._cert), str(self._key))
            self._stamp = stamp

    def _on_hello(self, *_: object) -> None:
        try:
            self._load()
        except (OSError, ssl.SSLError) as error:
            _log.warning("keeping the previous webhook certificate", error=str(error))


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
        tls = _ReloadingContext(
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
