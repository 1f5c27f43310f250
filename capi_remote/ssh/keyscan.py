"""Ask a host for its host key without logging in (``ssh-keyscan`` for one host).

Used by ``capi-remote migrate`` to show an operator the keys of hosts that had none recorded.
Nothing is trusted here: the caller decides what to do with the key (show its fingerprint for
confirmation, or accept it when asked to trust on first use).

Invariants: no credentials are sent (the connection ends after key exchange); the TCP connect and
the banner plus key exchange are each bounded by ``timeout``; the host chooses among the key types
paramiko offers, so one key is returned.
"""

from __future__ import annotations

import base64
import socket
import threading

import attrs
import paramiko

from capi_remote.ssh.errors import HostUnreachable
from capi_remote.ssh.hostkeys import fingerprint, host_entry_name


@attrs.frozen
class ScannedKey:
    address: str
    port: int
    key_type: str
    blob: bytes = attrs.field(repr=False)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.blob)

    def known_hosts_line(self) -> str:
        name = host_entry_name(self.address, self.port)
        return f"{name} {self.key_type} {base64.b64encode(self.blob).decode()}"


def scan(address: str, port: int, timeout: float = 10.0) -> ScannedKey:
    """The key ``address:port`` presents; raises :class:`HostUnreachable` when there is none."""
    shown = f"{address}:{port}"
    try:
        sock = socket.create_connection((address, port), timeout=timeout)
    except OSError as error:
        raise HostUnreachable(shown, error.strerror or type(error).__name__) from None
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = timeout
        transport.handshake_timeout = timeout
        done = threading.Event()
        transport.start_client(event=done)
        if not done.wait(timeout) or not transport.is_active():
            raise HostUnreachable(shown, "no SSH key exchange")
        key = transport.get_remote_server_key()
        return ScannedKey(address, port, key.get_name(), key.asbytes())
    except (paramiko.SSHException, EOFError, OSError) as error:
        raise HostUnreachable(shown, f"no SSH key exchange: {error}") from None
    finally:
        transport.close()
