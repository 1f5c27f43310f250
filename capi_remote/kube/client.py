"""A thin, dict-based Kubernetes client over kubernetes_asyncio's transport.

Why not the generated API classes: the framework handles many kinds (ours, CAPI's, core) the same
way, and deserialising every watch event into generated models costs more CPU and memory than the
informer cache can afford. Objects are plain JSON dicts here; reconcilers convert the kinds they
own into typed models.

Invariants:
- Every non-2xx answer raises :class:`ApiError` carrying the status code and the server's message;
  the body is never logged (Secrets travel through here).
- A request that gets no complete answer (connection refused, reset or dropped, TLS failure, no
  answer in time) raises :class:`TransportError`, from the library's exception: no aiohttp or
  socket exception leaves this module, so callers tell "the server said no" (ApiError) from "the
  server could not be asked" (TransportError) without knowing the HTTP stack. A cancellation
  passes through untouched.
- Watch streams are parsed incrementally, so a single large object (a bootstrap Secret) is not
  limited by a line-length cap.
- A client of a server nobody vouches for (a tenant's workload cluster) has a budget: a response
  body or one watch event larger than ``max_body_bytes`` ends the request as a
  :class:`TransportError` before more is read, and JSON nested too deeply for the parser is a
  ``ValueError``, never a ``RecursionError``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, Self
from urllib.parse import quote

import aiohttp
import attrs

from capi_remote.kube import kubeconfig
from capi_remote.kube.k8s_transport import (
    ApiClient,
    ConfigException,
    Configuration,
    load_incluster_config,
    load_kube_config,
)

JSONDict = dict[str, Any]


@attrs.frozen
class Resource:
    """Where a kind lives in the API: enough to build its URLs."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name:
            base += f"/{quote(name, safe='')}"
        return base


class ApiError(Exception):
    """A non-success answer from the API server."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def gone(self) -> bool:
        return self.status == 410


class TransportError(Exception):
    """No complete answer: connecting failed, the connection broke, or the answer took too long.

    Whether a write was applied is unknown. Retrying later may succeed; the original exception is
    the ``__cause__``.
    """

    def __init__(self, method: str, path: str, detail: str) -> None:
        super().__init__(f"{method} {path}: {detail}")
        self.method = method
        self.path = path
        self.detail = detail


#: What aiohttp and the socket layer raise when a request gets no complete answer. A dropped
#: connection is an aiohttp.ClientError that is not an OSError (ServerDisconnectedError,
#: ClientPayloadError); aiohttp's deadline is a TimeoutError.
_TRANSPORT_FAILURES = (aiohttp.ClientError, OSError, TimeoutError)

#: The budget of one response or watch event from an untrusted server: a page of Nodes
#: (``limit`` 100) or one object is far smaller.
UNTRUSTED_MAX_BODY_BYTES = 4 * 1024 * 1024


def _loads(payload: bytes | str) -> Any:
    try:
        return json.loads(payload)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


_READ_BUFFER = 2**21


def _read_environment_once(api: ApiClient) -> ApiClient:
    """kubernetes_asyncio opens its aiohttp session with ``trust_env=True``, so every request
    looks up ``~/.netrc`` and the proxy variables in a worker thread: about a tenth of the
    controller's CPU while it provisions (benchmark E1). The proxy variables are read once here
    instead, as client-go reads them once per process; ``~/.netrc`` is not used."""
    rest = api.rest_client
    if rest.proxy is None:
        rest.proxy = _environment_proxy(str(api.configuration.host))
    session = rest.pool_manager
    connector = session.connector
    session.detach()  # the connector now belongs to the new session alone
    # kubernetes_asyncio's read buffer: watch events of large objects exceed aiohttp's default.
    rest.pool_manager = aiohttp.ClientSession(
        connector=connector, trust_env=False, read_bufsize=_READ_BUFFER
    )
    return api


def _environment_proxy(server: str) -> str | None:
    """The proxy the environment (``HTTPS_PROXY``, ``NO_PROXY``...) names for ``server``."""
    url = urllib.parse.urlsplit(server)
    if not url.hostname or urllib.request.proxy_bypass(url.hostname):
        return None
    return urllib.request.getproxies().get(url.scheme)


def _error_from(status: int, body: bytes) -> ApiError:
    try:
        payload = _loads(body)
        return ApiError(status, str(payload.get("reason", "")), str(payload.get("message", "")))
    except (ValueError, AttributeError):
        return ApiError(status, "", body[:200].decode(errors="replace"))


MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


@attrs.define
class KubeClient:
    """Async CRUD + list/watch on JSON dicts. One per process; safe to share between tasks.

    Watches run on connections of their own, without a pool limit: a watch holds its HTTP/1.1
    connection for minutes, and many of them on the shared pool (100 connections) would leave
    every other request waiting for a free one until it times out.
    """

    api: ApiClient
    #: None for the management cluster's API server (trusted); see the module's invariants.
    max_body_bytes: int | None = attrs.field(default=None, kw_only=True)
    _watch_api: ApiClient | None = attrs.field(default=None, init=False)
    _unreachable: bool = attrs.field(default=False, init=False)
    _reachable_again: list[Callable[[], None]] = attrs.field(factory=list, init=False)

    @classmethod
    async def from_kubeconfig(cls, path: str | None = None) -> KubeClient:
        """From a kubeconfig file (or $KUBECONFIG / ~/.kube/config), else in-cluster config."""
        configuration = Configuration()
        try:
            await load_kube_config(config_file=path, client_configuration=configuration)
        except ConfigException:
            if path is not None:
                raise
            load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        return cls.for_configuration(configuration)

    @classmethod
    def for_configuration(cls, configuration: Configuration) -> Self:
        return cls(_read_environment_once(ApiClient(configuration)))

    @classmethod
    def from_untrusted_kubeconfig(cls, data: bytes) -> KubeClient:
        """From a tenant-written kubeconfig (``<cluster>-kubeconfig``): inline credentials only,
        see kubeconfig.py; raises :class:`KubeconfigError`."""
        return cls(
            _read_environment_once(kubeconfig.api_client(kubeconfig.parse_kubeconfig(data))),
            max_body_bytes=UNTRUSTED_MAX_BODY_BYTES,
        )

    async def close(self) -> None:
        await self.api.close()
        if self._watch_api is not None:
            await self._watch_api.close()

    def _watches(self) -> ApiClient:
        if self._watch_api is None:
            configuration = copy.copy(self.api.configuration)
            configuration.connection_pool_maxsize = 0  # aiohttp: no limit
            self._watch_api = _read_environment_once(ApiClient(configuration))
        return self._watch_api

    async def _request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | bool] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        request_timeout: float | None = 60.0,
        api: ApiClient | None = None,
    ) -> Any:
        """Send a request and return the raw aiohttp response (status not yet checked); read its
        body inside ``_transport`` too."""
        params = [
            (k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in (query or {}).items()
        ]
        # The REST layer JSON-encodes dict bodies itself for JSON and apply content types.
        with self._transport(method, path):
            response = await (api or self.api).call_api(
                path,
                method,
                query_params=params,
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=request_timeout,
            )
        if self._unreachable:
            self._unreachable = False
            for listener in self._reachable_again:
                listener()
        return response

    @contextlib.contextmanager
    def _transport(self, method: str, path: str) -> Iterator[None]:
        """Raise the transport failures of the block as TransportError, and remember that the
        API server could not be reached (see ``on_reachable_again``)."""
        try:
            yield
        except _TRANSPORT_FAILURES as error:
            self._unreachable = True
            raise TransportError(method, path, f"{type(error).__name__}: {error}") from error

    async def _stream(
        self, method: str, path: str, chunks: AsyncIterator[bytes]
    ) -> AsyncIterator[bytes]:
        """``chunks`` of a response body, its transport failures raised as TransportError."""
        while True:
            with self._transport(method, path):
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
            yield chunk

    def on_reachable_again(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (on the event loop) whenever a request gets an answer after one
        could not reach the API server."""
        self._reachable_again.append(listener)

    async def _read(self, method: str, path: str, response: Any) -> bytes:
        """The whole body, within ``max_body_bytes``."""
        if self.max_body_bytes is None:
            with self._transport(method, path):
                payload: bytes = await response.read()
            return payload
        body = bytearray()
        async for chunk in self._stream(method, path, response.content.iter_any()):
            body += chunk
            self._check_size(method, path, len(body))
        return bytes(body)

    def _check_size(self, method: str, path: str, size: int) -> None:
        if self.max_body_bytes is not None and size > self.max_body_bytes:
            raise TransportError(
                method, path, f"answer larger than {self.max_body_bytes} bytes, not read further"
            )

    async def _json(self, method: str, path: str, **kwargs: Any) -> JSONDict:
        response = await self._request(method, path, **kwargs)
        try:
            payload = await self._read(method, path, response)
        finally:
            response.release()
        if not 200 <= response.status < 300:
            raise _error_from(response.status, payload)
        result: JSONDict = _loads(payload)
        return result

    async def get_path(self, path: str) -> JSONDict:
        """GET a path outside the resource API (``/version``)."""
        return await self._json("GET", path)

    async def get(self, resource: Resource, namespace: str | None, name: str) -> JSONDict:
        return await self._json("GET", resource.path(namespace, name))

    async def list(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        resource_version: str | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> JSONDict:
        query: dict[str, str | int | bool] = {}
        for key, value in (
            ("labelSelector", label_selector),
            ("fieldSelector", field_selector),
            ("resourceVersion", resource_version),
            ("limit", limit),
            ("continue", continue_token),
        ):
            if value is not None:
                query[key] = value
        return await self._json("GET", resource.path(namespace), query=query)

    async def create(self, resource: Resource, obj: JSONDict) -> JSONDict:
        namespace = obj.get("metadata", {}).get("namespace")
        return await self._json("POST", resource.path(namespace), body=obj)

    async def replace(
        self, resource: Resource, obj: JSONDict, *, subresource: str = ""
    ) -> JSONDict:
        """PUT; ``metadata.resourceVersion`` in ``obj`` is the concurrency precondition."""
        meta = obj["metadata"]
        path = resource.path(meta.get("namespace"), meta["name"])
        return await self._json("PUT", path + (f"/{subresource}" if subresource else ""), body=obj)

    async def patch(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        content_type: str = MERGE_PATCH,
        subresource: str = "",
        field_manager: str | None = None,
        force: bool = False,
    ) -> JSONDict:
        query: dict[str, str | int | bool] = {}
        if field_manager:
            query["fieldManager"] = field_manager
        if force:
            query["force"] = True
        path = resource.path(namespace, name) + (f"/{subresource}" if subresource else "")
        return await self._json("PATCH", path, body=patch, content_type=content_type, query=query)

    async def delete(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        *,
        uid: str | None = None,
        propagation: str | None = None,
    ) -> JSONDict | None:
        """Delete; None when already gone. ``uid`` makes it a precondition (no wrong victim);
        ``propagation`` is the ``propagationPolicy`` (Background, Foreground, Orphan)."""
        body: JSONDict | None = None
        if uid or propagation:
            body = {"kind": "DeleteOptions", "apiVersion": "v1"}
            if uid:
                body["preconditions"] = {"uid": uid}
            if propagation:
                body["propagationPolicy"] = propagation
        try:
            return await self._json("DELETE", resource.path(namespace, name), body=body)
        except ApiError as error:
            if error.not_found:
                return None
            raise

    async def watch(
        self,
        resource: Resource,
        namespace: str | None,
        resource_version: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[JSONDict]:
        """Yield watch events (``{"type": ..., "object": ...}``) until the server ends the stream.

        An ERROR event is raised as :class:`ApiError` (410 Gone means: relist).
        """
        query: dict[str, str | int | bool] = {
            "watch": True,
            "resourceVersion": resource_version,
            "allowWatchBookmarks": True,
            "timeoutSeconds": timeout_seconds,
        }
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        path = resource.path(namespace)
        response = await self._request(
            "GET", path, query=query, request_timeout=None, api=self._watches()
        )
        try:
            if not 200 <= response.status < 300:
                raise _error_from(response.status, await self._read("GET", path, response))
            buffer = b""
            async for chunk in self._stream("GET", path, response.content.iter_any()):
                buffer += chunk
                while (newline := buffer.find(b"\n")) >= 0:
                    line, buffer = buffer[:newline], buffer[newline + 1 :]
                    if not line.strip():
                        continue
                    event: JSONDict = _loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object", {})
                        raise ApiError(
                            int(status.get("code", 500)),
                            str(status.get("reason", "")),
                            str(status.get("message", "")),
                        )
                    yield event
                self._check_size("GET", path, len(buffer))
        finally:
            response.release()
