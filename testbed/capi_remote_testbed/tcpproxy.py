"""A userspace TCP forwarder that adds latency and drops connections.

The test machines' kernel has no netem (no delay/loss qdisc), so slow or lossy links to a test host
are simulated here instead: the proxy listens on loopback and forwards to the host. It runs its own
event loop in a daemon thread so it works the same under sync tests and under pytest-asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

DropMode = Literal["blackhole", "reset"]


@dataclass
class ProxyStats:
    """Counters, so tests can tell that traffic really went through the proxy."""

    connections: int = 0
    dropped: int = 0
    bytes_to_target: int = 0
    bytes_from_target: int = 0


class TcpProxy:
    """Forward ``listen_host:<ephemeral port>`` to ``target`` with faults.

    ``latency_ms`` is added to each direction (so a round trip gets twice that); bytes keep their
    order and no bandwidth limit applies. ``drop_rate`` is the probability that a new connection is
    dropped: ``"blackhole"`` accepts it and never forwards a byte (the client times out, as with a
    lost SYN/ACK path), ``"reset"`` closes it with a TCP RST. Mid-stream loss is not simulated: on a
    real network TCP turns it into delay, which ``latency_ms`` already covers.
    """

    def __init__(
        self,
        target: tuple[str, int],
        *,
        latency_ms: float = 0.0,
        drop_rate: float = 0.0,
        drop_mode: DropMode = "blackhole",
        listen_host: str = "127.0.0.1",
        seed: int | None = None,
    ) -> None:
        if latency_ms < 0:
            raise ValueError("latency_ms must be >= 0")
        if not 0.0 <= drop_rate <= 1.0:
            raise ValueError("drop_rate must be within [0, 1]")
        self.target = target
        self.latency_ms = latency_ms
        self.drop_rate = drop_rate
        self.drop_mode: DropMode = drop_mode
        self.listen_host = listen_host
        self.stats = ProxyStats()
        self._rng = random.Random(seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._port = 0
        self._closed = False

    # -- public API ------------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """Where clients connect: ``(listen_host, port)``."""
        if not self._port:
            raise RuntimeError("proxy not started")
        return (self.listen_host, self._port)

    @property
    def host(self) -> str:
        return self.listen_host

    @property
    def port(self) -> int:
        return self.address[1]

    def start(self) -> tuple[str, int]:
        """Bind and start forwarding; returns the listening address."""
        if self._thread is not None:
            return self.address
        loop = asyncio.new_event_loop()
        self._loop = loop
        started = threading.Event()
        error: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, self.listen_host, 0)
                )
                self._port = int(self._server.sockets[0].getsockname()[1])
            except BaseException as exc:  # reported to the caller of start()
                error.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(
            target=run, name=f"tcpproxy->{self.target[0]}:{self.target[1]}", daemon=True
        )
        self._thread.start()
        started.wait()
        if error:
            self._thread.join()
            raise error[0]
        return self.address

    def close(self) -> None:
        """Stop listening and cut every forwarded connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        with contextlib.suppress(Exception):
            fut.result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (asyncio.CancelledError, OSError, ExceptionGroup):
            pass  # a forwarded connection ending badly is the client's business, not the proxy's
        finally:
            self._tasks.discard(task)
            _abort(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        if self.drop_rate and self._rng.random() < self.drop_rate:
            self.stats.dropped += 1
            if self.drop_mode == "reset":
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            while await reader.read(65536):  # blackhole: swallow until the client gives up
                pass
            return
        up_reader, up_writer = await asyncio.wait_for(
            asyncio.open_connection(*self.target), timeout=10
        )
        try:
            delay = self.latency_ms / 1000.0
            async with asyncio.TaskGroup() as group:  # one direction failing stops the other
                group.create_task(self._pipe(reader, up_writer, delay, to_target=True))
                group.create_task(self._pipe(up_reader, writer, delay, to_target=False))
        finally:
            _abort(up_writer)

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        delay: float,
        *,
        to_target: bool,
    ) -> None:
        """Copy one direction, holding each chunk back ``delay`` seconds from when it arrived."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def receive() -> None:
            try:
                while data := await reader.read(65536):
                    queue.put_nowait((loop.time() + delay, data))
            finally:
                queue.put_nowait((loop.time() + delay, b""))

        async def send() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        with contextlib.suppress(OSError):
                            writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
                if to_target:
                    self.stats.bytes_to_target += len(data)
                else:
                    self.stats.bytes_from_target += len(data)

        receiver = asyncio.ensure_future(receive())
        try:
            await send()
        finally:
            receiver.cancel()
            with contextlib.suppress(BaseException):
                await receiver


def _abort(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()
