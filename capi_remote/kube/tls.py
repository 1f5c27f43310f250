"""Server TLS contexts: certificates from files that may rotate, or a self-signed one in memory.

Invariants:
- A file-backed context re-reads ``tls.crt``/``tls.key`` when their modification times change
  (checked per handshake), so cert-manager rotation needs no restart; a broken rotation keeps the
  previous certificate.
- A self-signed certificate and its key never touch a disk: OpenSSL reads them from anonymous
  memory files that are closed as soon as they are loaded.
"""

from __future__ import annotations

import datetime
import os
import ssl
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_log = structlog.get_logger("capi_remote.tls")
SELF_SIGNED_DAYS = 365


def _server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class ReloadingContext:
    """An SSL context whose certificate follows the files on disk (checked per handshake)."""

    def __init__(self, cert: Path, key: Path) -> None:
        self._cert, self._key = cert, key
        self._stamp: tuple[float, float] = (0.0, 0.0)
        self.context = _server_context()
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
            _log.warning("keeping the previous certificate", file=str(self._cert), error=str(error))


def self_signed_context(common_name: str) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate (P-256) for ``common_name``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    context = _server_context()
    cert_fd = os.memfd_create("capi-remote-tls-cert", os.MFD_CLOEXEC)
    key_fd = os.memfd_create("capi-remote-tls-key", os.MFD_CLOEXEC)
    try:
        os.write(cert_fd, cert.public_bytes(serialization.Encoding.PEM))
        os.write(key_fd, key_pem)
        context.load_cert_chain(f"/proc/self/fd/{cert_fd}", f"/proc/self/fd/{key_fd}")
    finally:
        os.close(cert_fd)
        os.close(key_fd)
    return context
