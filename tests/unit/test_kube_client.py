"""The Kubernetes client's error seam: ApiError for answers, TransportError for everything else.

No aiohttp or socket exception leaves the client, wherever the request fails: connecting,
reading a body, or mid-watch.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator

import aiohttp
import pytest
from kubernetes_asyncio import client as k8s_client

from capi_remote.kube.client import ApiError, KubeClient, Resource, TransportError

pytestmark = pytest.mark.timeout(60)  # a hang guard for regressions, not a speed target

SECRETS = Resource("", "v1", "secrets", "Secret")

FAILURES = [
    aiohttp.ServerDisconnectedError(),
    aiohttp.ClientPayloadError("Response payload is not completed"),
    aiohttp.ClientConnectionError("connection refused"),
    ConnectionResetError(104, "Connection reset by peer"),
    ssl.SSLError("certificate verify failed"),
    TimeoutError(),
]


class Content:
    def __init__(self, chunks: list[bytes | BaseException]) -> None:
        self.chunks = chunks

    async def iter_any(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            if isinstance(chunk, BaseException):
                raise chunk
            yield chunk


class Response:
    """The part of aiohttp's response the client reads; ``body`` may be a failure to raise."""

    def __init__(
        self, status: int, body: bytes | BaseException, chunks: list[bytes | BaseException]
    ):
        self.status = status
        self.body = body
        self.content = Content(chunks)
        self.released = False

    async def read(self) -> bytes:
        if isinstance(self.body, BaseException):
            raise self.body
        return self.body

    def release(self) -> None:
        self.released = True


class Api:
    """Stands in for kubernetes_asyncio's ApiClient: ``failure`` makes call_api raise it."""

    def __init__(self, response: Response | None = None) -> None:
        self.response = response or Response(200, b"{}", [])
        self.failure: BaseException | None = None

    async def call_api(self, *args: object, **kwargs: object) -> Response:
        if self.failure is not None:
            raise self.failure
        return self.response

    def client(self) -> KubeClient:
        client = KubeClient(self)  # type: ignore[arg-type]
        client._watch_api = self  # type: ignore[assignment]  # watches ask this fake too
        return client


def assert_transport_error(raised: pytest.ExceptionInfo[TransportError], cause: Exception) -> None:
    assert raised.value.__cause__ is cause
    assert not isinstance(raised.value, aiohttp.ClientError | OSError)
    assert (raised.value.method, raised.value.path) == ("GET", "/api/v1/namespaces/ns/secrets/s")
    assert type(cause).__name__ in str(raised.value)


@pytest.mark.parametrize("failure", FAILURES, ids=type)
async def test_a_request_without_an_answer_is_a_transport_error(failure: Exception) -> None:
    api = Api()
    api.failure = failure
    with pytest.raises(TransportError) as raised:
        await api.client().get(SECRETS, "ns", "s")
    assert_transport_error(raised, failure)


@pytest.mark.parametrize("failure", FAILURES, ids=type)
async def test_a_body_cut_short_is_a_transport_error(failure: Exception) -> None:
    response = Response(200, failure, [])
    with pytest.raises(TransportError) as raised:
        await Api(response).client().get(SECRETS, "ns", "s")
    assert_transport_error(raised, failure)
    assert response.released


async def test_an_answer_is_an_api_error_even_when_it_is_unavailable() -> None:
    body = json.dumps({"reason": "ServiceUnavailable", "message": "starting"}).encode()
    with pytest.raises(ApiError) as raised:
        await Api(Response(503, body, [])).client().get(SECRETS, "ns", "s")
    assert (raised.value.status, raised.value.message) == (503, "starting")


async def test_a_watch_cut_mid_stream_yields_what_arrived_then_a_transport_error() -> None:
    cut = aiohttp.ClientPayloadError("Response payload is not completed")
    event = json.dumps({"type": "ADDED", "object": {"metadata": {"name": "s"}}}).encode()
    response = Response(200, b"", [event + b"\n", cut])
    seen = []
    with pytest.raises(TransportError) as raised:
        async for item in Api(response).client().watch(SECRETS, "ns", "1"):
            seen.append(item["object"]["metadata"]["name"])
    assert seen == ["s"]
    assert raised.value.__cause__ is cut
    assert response.released


async def test_a_cancelled_request_stays_cancelled() -> None:
    api = Api()
    entered = asyncio.Event()

    async def hang(*args: object, **kwargs: object) -> Response:
        entered.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    api.call_api = hang  # type: ignore[method-assign]
    request = asyncio.create_task(api.client().get(SECRETS, "ns", "s"))
    await entered.wait()
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request


async def test_the_client_says_when_the_api_server_answers_again() -> None:
    api = Api()
    client = api.client()
    calls: list[str] = []
    client.on_reachable_again(lambda: calls.append("again"))
    api.failure = aiohttp.ClientConnectionError("connection refused")
    for _ in range(2):
        with pytest.raises(TransportError):
            await client.get(SECRETS, "ns", "s")
    assert calls == []
    api.failure = None
    await client.get(SECRETS, "ns", "s")
    await client.get(SECRETS, "ns", "s")
    assert calls == ["again"], "once per outage, on its first answer"


class Recorder:
    """A plain HTTP listener on loopback: an API server, or a proxy, that records what it got."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.url = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> Recorder:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.lines.append((await reader.readline()).decode().strip())
        while (await reader.readline()).strip():
            pass
        body = b'{"kind": "Secret", "metadata": {"name": "s"}}'
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        writer.write(b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def plain_client(server: str) -> KubeClient:
    return KubeClient.for_configuration(k8s_client.Configuration(host=server))


async def test_the_proxy_variables_are_read_once_when_the_client_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The environment's proxy applies (as with client-go), read when the client is made: not
    looked up again, with ~/.netrc, in a thread on every request."""
    server, proxy = await Recorder().start(), await Recorder().start()
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    through_proxy = plain_client(server.url)
    monkeypatch.delenv("HTTP_PROXY")
    direct = plain_client(server.url)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)  # too late for both clients
    try:
        await through_proxy.get(SECRETS, "ns", "s")
        await direct.get(SECRETS, "ns", "s")
        assert proxy.lines == [f"GET {server.url}/api/v1/namespaces/ns/secrets/s HTTP/1.1"]
        assert server.lines == ["GET /api/v1/namespaces/ns/secrets/s HTTP/1.1"]
        assert not through_proxy.api.rest_client.pool_manager.trust_env
    finally:
        for client in (through_proxy, direct):
            await client.close()
        await server.close()
        await proxy.close()
