"""SSH keys of the test bed: hosts' host keys and the fleet's client key (ed25519 only).

Invariant: ``repr`` of a key never shows its private part.
"""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass, field

import paramiko
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from capi_remote_testbed.hosts.names import SSH_PORT


@dataclass(frozen=True)
class SshKey:
    """An ed25519 key pair in the formats the tools want. ``repr`` never shows the private part."""

    private_openssh: str = field(repr=False)
    private_pem: str = field(repr=False)
    public: str  # "ssh-ed25519 AAAA..."

    @classmethod
    def generate(cls) -> SshKey:
        key = Ed25519PrivateKey.generate()
        return cls(
            private_openssh=key.private_bytes(
                Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()
            ).decode(),
            private_pem=key.private_bytes(
                Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
            ).decode(),
            public=key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode(),
        )

    def pkey(self) -> paramiko.PKey:
        """The private key for paramiko (``connect(pkey=...)``)."""
        return paramiko.Ed25519Key.from_private_key(io.StringIO(self.private_openssh))

    def public_pkey(self) -> paramiko.PKey:
        """The public half as a paramiko key, e.g. for ``HostKeys.add``."""
        return public_pkey(self.public)

    @property
    def fingerprint(self) -> str:
        """OpenSSH-style ``SHA256:...`` fingerprint of the public key."""
        blob = base64.b64decode(self.public.split()[1])
        digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
        return f"SHA256:{digest}"


def public_pkey(public: str) -> paramiko.PKey:
    """Parse an ``ssh-ed25519 AAAA...`` line into a paramiko public key."""
    key_type, b64 = public.split()[:2]
    return paramiko.PKey.from_type_string(key_type, base64.b64decode(b64))


def known_hosts_line(address: str, port: int, public: str) -> str:
    """One OpenSSH known_hosts line; non-22 ports use the ``[addr]:port`` form."""
    host = address if port == SSH_PORT else f"[{address}]:{port}"
    return f"{host} {public}"
