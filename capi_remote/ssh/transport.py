"""The seam between the runner and SSH: connect to a target, run commands on it, close.

Like httpx's ``BaseTransport``: two small protocols, so the executor's decisions can be tested
against a fake (a local shell, a scripted host) and paramiko stays in one module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import attrs

if TYPE_CHECKING:
    from capi_remote.ssh.admission import Ticket
    from capi_remote.ssh.target import Target

#: Called from the waiting loop of :meth:`Connection.exec` every ~0.2 s. It may raise to abort
#: the command (cancellation, a lost lock); the channel is closed and the exception propagates.
Poll = Callable[[], None]


class CommandTimedOut(Exception):
    """A command did not finish before its deadline; the channel was closed (not the process)."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"command did not finish within {timeout:g} s")
        self.timeout = timeout


class OutputTail:
    """Keeps the last ``limit`` bytes of a stream and counts the rest, so output cannot grow
    memory however much a command prints."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        if self.limit == 0:
            return
        self._buffer += data[-self.limit :]
        excess = len(self._buffer) - self.limit
        if excess > 0:
            del self._buffer[:excess]

    @property
    def data(self) -> bytes:
        return bytes(self._buffer)


@attrs.frozen
class ExecResult:
    """Exit status and the tails of stdout/stderr (``*_total``: bytes seen in all)."""

    exit_status: int
    stdout: bytes = attrs.field(repr=False)
    stderr: bytes = attrs.field(repr=False)
    stdout_total: int = 0
    stderr_total: int = 0


class Connection(Protocol):
    """One authenticated session to one host, used by one job's thread.

    ``exec`` raises :class:`CommandTimedOut` at its deadline and
    :class:`~capi_remote.ssh.errors.ConnectionLost` when the session breaks.
    """

    @property
    def host(self) -> str:
        """Where this connection goes, for messages (``user@address:port``)."""
        ...

    @property
    def host_key_fingerprint(self) -> str: ...

    @property
    def bastion_host_key_fingerprint(self) -> str | None:
        """The verified key of the bastion this connection went through, if any."""
        ...

    def exec(
        self,
        command: str,
        *,
        stdin: bytes = b"",
        timeout: float,
        tail_bytes: int = 65536,
        poll: Poll | None = None,
    ) -> ExecResult:
        """Run ``command`` (a shell command line), feed ``stdin``, drain both outputs."""
        ...

    def close(self) -> None: ...


class Connector(Protocol):
    """Opens connections; raises the connection errors of :mod:`capi_remote.ssh.errors`.

    With a ``ticket``, the CPU-heavy part of connecting (key exchange) holds its slot.
    """

    def connect(self, target: Target, ticket: Ticket | None = None) -> Connection: ...
