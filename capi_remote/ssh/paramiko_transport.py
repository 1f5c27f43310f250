"""The paramiko implementation of the transport seam.

One ``paramiko.Transport`` per host and job (bastions included), one channel per command, each
channel used by the thread that opened it. Handshakes are the expensive and fragile part: sshd's
``MaxStartups`` drops unauthenticated connections beyond 10 per host, so concurrent handshakes
per host are capped (below that) and the drops that still happen ("Error reading SSH protocol
banner", resets) are retried with jittered backoff. The host key is checked right after key
exchange, before any authentication attempt.

With a :class:`~capi_remote.ssh.admission.Ticket`, a hop takes a CPU slot only once the host
spoke (its version line arrived) and gives it back once the host key is verified: TCP connect and
the banner wait hold none, key exchange at most the admission's hold limit, authentication none.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import paramiko
import structlog
import tenacity

from capi_remote.ssh.admission import Ticket
from capi_remote.ssh.auth import load_private_key
from capi_remote.ssh.errors import (
    AuthenticationFailed,
    ConnectionLost,
    HostUnreachable,
    SSHError,
)
from capi_remote.ssh.settings import SSHSettings
from capi_remote.ssh.target import Target
from capi_remote.ssh.transport import CommandTimedOut, ExecResult, OutputTail, Poll

log = structlog.get_logger(__name__)

_POLL_INTERVAL = 0.2
_SEND_CHUNK = 32768
_UNREACHABLE_ERRNOS = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN}

SocketLike = socket.socket | paramiko.Channel


class _TransientHandshake(Exception):
    """A handshake failure worth retrying (sshd dropped us under load)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class HandshakeLimiter:
    """A semaphore per ``(address, port)`` capping concurrent handshakes to that sshd."""

    def __init__(self, per_host: int) -> None:
        self._per_host = per_host
        self._lock = threading.Lock()
        self._semaphores: dict[tuple[str, int], threading.BoundedSemaphore] = {}

    @contextlib.contextmanager
    def slot(self, endpoint: tuple[str, int], timeout: float) -> Iterator[None]:
        with self._lock:
            semaphore = self._semaphores.setdefault(
                endpoint, threading.BoundedSemaphore(self._per_host)
            )
        if not semaphore.acquire(timeout=timeout):
            raise HostUnreachable(
                f"{endpoint[0]}:{endpoint[1]}",
                f"no handshake slot within {timeout:g} s (too many concurrent connections)",
            )
        try:
            yield
        finally:
            semaphore.release()


class ParamikoConnector:
    """Connects targets (through their bastions) with paramiko; see the module docstring."""

    def __init__(self, settings: SSHSettings, limiter: HandshakeLimiter | None = None) -> None:
        self.settings = settings
        self.limiter = limiter or HandshakeLimiter(settings.handshakes_per_host)

    def connect(self, target: Target, ticket: Ticket | None = None) -> ParamikoConnection:
        transports: list[paramiko.Transport] = []
        fingerprints: list[str] = []
        try:
            transport = self._connect_chain(target, transports, fingerprints, ticket)
        except BaseException:
            for opened in reversed(transports):
                opened.close()
            raise
        return ParamikoConnection(target, transport, fingerprints, transports)

    def _connect_chain(
        self,
        target: Target,
        transports: list[paramiko.Transport],
        fingerprints: list[str],
        ticket: Ticket | None,
    ) -> paramiko.Transport:
        if target.via is None:
            open_socket = self._tcp_opener(target)
        else:
            bastion = self._connect_chain(target.via, transports, fingerprints, ticket)
            open_socket = self._tunnel_opener(target, bastion)
        transport, fingerprint = self._open_hop(target, open_socket, ticket)
        transports.append(transport)
        fingerprints.append(fingerprint)
        return transport

    def _open_hop(
        self, target: Target, open_socket: Callable[[], SocketLike], ticket: Ticket | None
    ) -> tuple[paramiko.Transport, str]:
        settings = self._settings_for(target)
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_TransientHandshake),
            wait=tenacity.wait_random_exponential(
                multiplier=settings.handshake_backoff, max=settings.handshake_backoff_max
            ),
            stop=tenacity.stop_after_attempt(settings.handshake_attempts),
            before_sleep=lambda state: log.info(
                "retrying SSH handshake",
                host=target.display,
                attempt=state.attempt_number,
                error=str(state.outcome.exception()) if state.outcome else None,
            ),
            reraise=True,
        )
        slot_timeout = settings.handshake_attempts * (
            settings.connect_timeout + settings.banner_timeout + settings.auth_timeout
        )
        try:
            for attempt in retrying:
                with attempt, self.limiter.slot((target.address, target.port), slot_timeout):
                    try:
                        return self._handshake(target, open_socket(), ticket)
                    except BaseException:
                        if ticket is not None:
                            ticket.release()  # no slot across a retry's backoff
                        raise
        except _TransientHandshake as exc:
            raise HostUnreachable(target.display, exc.detail) from None
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _handshake(
        self, target: Target, sock: SocketLike, ticket: Ticket | None
    ) -> tuple[paramiko.Transport, str]:
        settings = self._settings_for(target)
        heard = _Heard(sock)
        try:
            transport = paramiko.Transport(heard)  # type: ignore[arg-type]  # it reads, we see
        except (OSError, EOFError, paramiko.SSHException) as exc:
            sock.close()
            raise _TransientHandshake(f"connection failed: {exc}") from None
        try:
            transport.banner_timeout = settings.banner_timeout
            transport.handshake_timeout = settings.handshake_timeout
            transport.auth_timeout = settings.auth_timeout
            key_types = target.host_key.key_types_for(target.address, target.port)
            if key_types:
                transport.get_security_options().key_types = key_types
            done = threading.Event()
            transport.start_client(event=done)
            limit = settings.banner_timeout + settings.handshake_timeout
            if ticket is not None:
                limit -= heard.wait(done, settings.banner_timeout)
                if heard.spoke.is_set() and not done.is_set():
                    ticket.hold()
            finished = done.wait(limit) if ticket is None else ticket.wait_for(done, limit)
            if not finished:
                raise HostUnreachable(target.display, "SSH handshake timed out")
            if not transport.is_active():
                raise _handshake_error(target, transport.get_exception())
            key = transport.get_remote_server_key()
            fingerprint = target.host_key.verify(
                target.address, target.port, key.get_name(), key.asbytes()
            )
            if ticket is not None:
                ticket.release()  # authentication is an exchange with the host
            _authenticate(transport, target)
            if settings.keepalive_interval:
                transport.set_keepalive(settings.keepalive_interval)
        except BaseException:
            transport.close()
            raise
        log.debug("connected", host=target.display, fingerprint=fingerprint)
        return transport, fingerprint

    def _settings_for(self, target: Target) -> SSHSettings:
        """The runner's deadlines, or the target's own connect deadline for every stage."""
        limit = target.connect_timeout
        if limit is None:
            return self.settings
        return attrs.evolve(
            self.settings,
            connect_timeout=limit,
            banner_timeout=limit,
            handshake_timeout=limit,
            auth_timeout=limit,
        )

    def _tcp_opener(self, target: Target) -> Callable[[], SocketLike]:
        timeout = self._settings_for(target).connect_timeout
        dead_link_ms = int(self.settings.dead_link_timeout * 1000)

        def open_socket() -> SocketLike:
            try:
                sock = socket.create_connection((target.address, target.port), timeout=timeout)
                # paramiko waits for some answers (a session's exec request) without a deadline:
                # the kernel must give up on a dead peer, or such a wait lasts until TCP does.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, dead_link_ms)
                return sock
            except socket.gaierror:
                raise HostUnreachable(target.display, "the name does not resolve") from None
            except TimeoutError:
                raise HostUnreachable(
                    target.display, f"TCP connect timed out after {timeout:g} s"
                ) from None
            except ConnectionRefusedError:
                raise HostUnreachable(target.display, "connection refused") from None
            except ConnectionResetError:
                raise _TransientHandshake("connection reset while connecting") from None
            except OSError as exc:
                if exc.errno in _UNREACHABLE_ERRNOS:
                    raise HostUnreachable(target.display, "no route to host") from None
                raise HostUnreachable(target.display, exc.strerror or str(exc)) from None

        return open_socket

    def _tunnel_opener(
        self, target: Target, bastion: paramiko.Transport
    ) -> Callable[[], SocketLike]:
        timeout = self._settings_for(target).connect_timeout

        def open_socket() -> SocketLike:
            try:
                return bastion.open_channel(
                    "direct-tcpip",
                    (target.address, target.port),
                    ("127.0.0.1", 0),
                    timeout=timeout,
                )
            except paramiko.ChannelException as exc:
                raise HostUnreachable(
                    target.display, f"the bastion could not connect ({exc.text})"
                ) from None
            except (paramiko.SSHException, EOFError, OSError) as exc:
                if not bastion.is_active():
                    raise ConnectionLost(target.display, "the bastion connection broke") from None
                raise HostUnreachable(target.display, f"via the bastion: {exc}") from None

        return open_socket


class _Heard:
    """The socket paramiko reads, telling when the host first sent something (its version line).

    Our own version line goes out first (some proxies, like sslh, speak only after the client
    did), so the wait for the host's is paramiko's; paramiko signals no event for it.
    """

    def __init__(self, sock: SocketLike) -> None:
        self._sock = sock
        self.spoke = threading.Event()

    def recv(self, size: int) -> bytes:
        data = self._sock.recv(size)
        self.spoke.set()  # data, or the end of the stream: no more waiting either way
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def wait(self, done: threading.Event, timeout: float) -> float:
        """Wait, holding no slot, until the host spoke, the handshake ended or ``timeout``;
        return the seconds waited. A host that accepts TCP and stays silent costs this only."""
        start = time.monotonic()
        while not self.spoke.wait(_POLL_INTERVAL) and not done.is_set():
            if time.monotonic() - start > timeout:
                break
        return time.monotonic() - start


def _handshake_error(target: Target, exc: BaseException | None) -> BaseException:
    text = str(exc) if exc is not None else "negotiation failed"
    if isinstance(exc, EOFError | ConnectionResetError) or "reset" in text.lower():
        return _TransientHandshake("connection reset during the SSH handshake")
    if "protocol banner" in text:
        return _TransientHandshake("no SSH banner (sshd busy or not an SSH server)")
    if isinstance(exc, SSHError):
        return exc
    return HostUnreachable(target.display, f"SSH negotiation failed: {text}")


def _authenticate(transport: paramiko.Transport, target: Target) -> None:
    credentials = target.credentials
    user = credentials.user
    problems: list[str] = []
    attempts: list[tuple[str, Callable[[], object]]] = []
    if credentials.private_key is not None:
        pkey = load_private_key(credentials.private_key, credentials.passphrase)
        attempts.append(("public key", lambda: transport.auth_publickey(user, pkey)))
    if credentials.password is not None:
        password = credentials.password
        attempts.append(("password", lambda: transport.auth_password(user, password)))
    for method, attempt in attempts:
        try:
            attempt()
        except paramiko.BadAuthenticationType as exc:
            problems.append(f"{method} not allowed (server allows {', '.join(exc.allowed_types)})")
            continue
        except paramiko.AuthenticationException as exc:
            if "timeout" in str(exc).lower():
                raise HostUnreachable(target.display, "authentication timed out") from None
            problems.append(f"{method} rejected")
            continue
        except (paramiko.SSHException, EOFError, OSError):
            raise HostUnreachable(target.display, "connection lost during authentication") from None
        if transport.is_authenticated():
            return
        problems.append(f"{method} accepted but more factors are required")
    raise AuthenticationFailed(target.display, user, "; ".join(problems) or "no method to try")


class ParamikoConnection:
    """An authenticated transport (plus the bastions it runs through)."""

    def __init__(
        self,
        target: Target,
        transport: paramiko.Transport,
        fingerprints: list[str],
        transports: list[paramiko.Transport],
    ) -> None:
        self.target = target
        self._transport = transport
        self._fingerprints = fingerprints  # one per hop, bastions first
        self._transports = transports

    @property
    def host(self) -> str:
        return self.target.display

    @property
    def host_key_fingerprint(self) -> str:
        return self._fingerprints[-1]

    @property
    def bastion_host_key_fingerprint(self) -> str | None:
        return self._fingerprints[-2] if len(self._fingerprints) > 1 else None

    def exec(
        self,
        command: str,
        *,
        stdin: bytes = b"",
        timeout: float,
        tail_bytes: int = 65536,
        poll: Poll | None = None,
    ) -> ExecResult:
        """Run ``command``; stdout and stderr are drained in one loop (never one after the
        other, which deadlocks once the other stream fills the 2 MiB window)."""
        deadline = time.monotonic() + timeout
        try:
            channel = self._transport.open_session(timeout=max(1.0, min(timeout, 30.0)))
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise ConnectionLost(self.host, f"cannot open a session ({exc})") from None
        try:
            return _drain(
                channel, self._transport, self.host, command, stdin, deadline, timeout,
                tail_bytes, poll,
            )  # fmt: skip
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise ConnectionLost(self.host, str(exc) or type(exc).__name__) from None
        finally:
            channel.close()

    def close(self) -> None:
        for transport in reversed(self._transports):
            transport.close()


def _drain(
    channel: paramiko.Channel,
    transport: paramiko.Transport,
    host: str,
    command: str,
    stdin: bytes,
    deadline: float,
    timeout: float,
    tail_bytes: int,
    poll: Poll | None,
) -> ExecResult:
    channel.fileno()  # makes the channel select()-able for both streams
    channel.exec_command(command)
    out, err = OutputTail(tail_bytes), OutputTail(tail_bytes)
    pending = memoryview(stdin)
    if not pending:
        channel.shutdown_write()
    next_poll = time.monotonic() + _POLL_INTERVAL
    while True:
        busy = False
        if pending and channel.send_ready():
            try:
                sent = channel.send(bytes(pending[:_SEND_CHUNK]))
            except OSError:  # the command closed its stdin early: the rest is not needed
                sent = len(pending)
            pending = pending[sent:]
            if not pending:
                channel.shutdown_write()
            busy = True
        while channel.recv_ready():
            out.feed(channel.recv(65536))
            busy = True
        while channel.recv_stderr_ready():
            err.feed(channel.recv_stderr(65536))
            busy = True
        # sshd may send the exit status before the last output: done only after EOF (or close).
        finished = channel.exit_status_ready() and (channel.eof_received or channel.closed)
        if finished and not channel.recv_ready() and not channel.recv_stderr_ready():
            break
        now = time.monotonic()
        if not transport.is_active():
            raise ConnectionLost(host, "the SSH connection closed")
        if poll is not None and now >= next_poll:
            poll()
            next_poll = time.monotonic() + _POLL_INTERVAL
        if now >= deadline:
            raise CommandTimedOut(timeout)
        if busy:
            continue
        wait = max(0.0, min(_POLL_INTERVAL, deadline - now, next_poll - now))
        if channel.eof_received:  # the pipe stays readable after EOF: wait for the status
            channel.status_event.wait(wait)
        else:
            select.select([channel], [], [], wait)
    status = channel.recv_exit_status()
    if status == -1 and not transport.is_active():
        raise ConnectionLost(host, "the SSH connection closed")
    return ExecResult(status, out.data, err.data, out.total, err.total)
