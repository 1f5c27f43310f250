"""Private key loading, and how commands become root (directly or through sudo).

Secrets stay out of ``repr``, logs, messages and argv: a sudo password only ever travels on the
command's stdin (``sudo -S -p ''``), followed by a marker line the host-side helpers skip to, so a
password sudo did not ask for is never mistaken for data.
"""

from __future__ import annotations

import functools
import io
from typing import Literal, TypeAlias

import attrs
import paramiko
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from capi_remote.ssh.credentials import ROOT, Credentials
from capi_remote.ssh.errors import InvalidCredentials, SudoFailed
from capi_remote.ssh.transport import Connection

PrivilegeMode: TypeAlias = Literal["root", "sudo", "sudo-password"]


#: Parsed keys kept: one per SSH key Secret (and passphrase) in use is enough.
KEYS_CACHED = 64


def load_private_key(text: str, passphrase: str | None = None) -> paramiko.PKey:
    """Ed25519, ECDSA or RSA private key text (OpenSSH, PEM or PKCS#8, optionally encrypted).

    Every connection authenticates with a key, and reading one costs up to a third of a second of
    CPU (an RSA key's consistency checks, an encrypted key's bcrypt rounds), so the last
    :data:`KEYS_CACHED` keys are kept parsed, by text and passphrase: a rotated Secret is a new
    text, parsed anew. Keys that cannot be read are not kept (each try raises again).
    """
    return _parsed_key(text, passphrase)


@functools.lru_cache(maxsize=KEYS_CACHED)
def _parsed_key(text: str, passphrase: str | None) -> paramiko.PKey:
    data = text.encode()
    password = passphrase.encode() if passphrase else None
    key: PrivateKeyTypes
    try:
        try:
            key = serialization.load_ssh_private_key(data, password=password)
        except ValueError:
            key = serialization.load_pem_private_key(data, password=password)
    except TypeError:
        # cryptography: encrypted key without a passphrase, or a passphrase for a plain key
        detail = "needs a passphrase" if password is None else "is not encrypted"
        raise InvalidCredentials(f"the private key {detail}") from None
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidCredentials(
            "the private key cannot be read (unsupported format or wrong passphrase)"
        ) from None
    key_class: type[paramiko.PKey]
    if isinstance(key, ed25519.Ed25519PrivateKey):
        key_class = paramiko.Ed25519Key
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        key_class = paramiko.ECDSAKey
    elif isinstance(key, rsa.RSAPrivateKey):
        key_class = paramiko.RSAKey
    else:
        raise InvalidCredentials("unsupported private key type (use Ed25519, ECDSA or RSA)")
    # paramiko reads OpenSSH format for every type; re-encode whatever the user gave us.
    openssh = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    return key_class.from_private_key(io.StringIO(openssh))


@attrs.frozen
class Privilege:
    """Turns a helper command into one that runs as root for this login."""

    mode: PrivilegeMode
    password: str | None = attrs.field(default=None, repr=False)

    @classmethod
    def for_credentials(cls, credentials: Credentials) -> Privilege:
        return cls.for_user(credentials.user, credentials.sudo_password)

    @classmethod
    def for_user(cls, user: str, sudo_password: str | None) -> Privilege:
        """Root logs in as root; anyone else uses sudo, with the password when one is given."""
        if user == ROOT:
            return cls("root")
        if sudo_password is None:
            return cls("sudo")
        return cls("sudo-password", sudo_password)

    def wrap(self, command: str, stdin: bytes = b"") -> tuple[str, bytes]:
        """``(command line, stdin)`` that runs ``command`` as root with ``stdin`` as its input."""
        if self.mode == "root":
            return command, stdin
        if self.mode == "sudo":
            return f"sudo -n -- {command}", stdin
        assert self.password is not None
        return f"sudo -S -p '' -- {command}", self.password.encode() + b"\n" + stdin

    def check(self, connection: Connection, user: str, timeout: float) -> None:
        """Fail fast with :class:`SudoFailed` if this user cannot become root as configured."""
        if self.mode == "root":
            return
        command, stdin = self.wrap("true")
        result = connection.exec(command, stdin=stdin, timeout=timeout, tail_bytes=2048)
        if result.exit_status != 0:
            raise SudoFailed(connection.host, user, describe_sudo_error(result.stderr))


def describe_sudo_error(stderr: bytes) -> str:
    """A short, secret-free explanation of why sudo refused (from its own messages)."""
    text = stderr.decode(errors="replace")
    lowered = text.lower()
    if "password is required" in lowered:
        return "sudo asks for a password (configure NOPASSWD or give a sudo password)"
    if "incorrect password" in lowered or "sorry, try again" in lowered:
        return "the sudo password was not accepted"
    if "not in the sudoers" in lowered or "not allowed" in lowered:
        return "the user may not run commands as root with sudo"
    if "tty" in lowered:
        return "sudo requires a terminal (requiretty); allow it without one for this user"
    if "not found" in lowered:
        return "sudo is not installed"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "no message")
    return first[:200]
