"""Ports and readiness probes of the servers the test bed starts.

Invariant: everything listens on a port the kernel handed out (bind to port 0), never a fixed
one, so several environments and test sessions run side by side.
"""

from __future__ import annotations

import socket
import ssl
import urllib.error
import urllib.request

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def http_ok(url: str, expect: bytes = b"", context: ssl.SSLContext | None = None) -> bool:
    """A readiness probe: HTTP 200 (and ``expect`` in the body) from ``url``."""
    try:
        with urllib.request.urlopen(url, context=context, timeout=2) as response:  # noqa: S310
            return bool(response.status == 200 and expect in response.read())
    except (urllib.error.URLError, OSError):
        return False
