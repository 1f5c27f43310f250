"""Credentials, key loading and the sudo wrapping: secrets never leak into argv, repr or errors."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from capi_remote.ssh import hostscript
from capi_remote.ssh.auth import Privilege, describe_sudo_error, load_private_key
from capi_remote.ssh.credentials import Credentials
from capi_remote.ssh.errors import InvalidCredentials

PASSPHRASE = "open sesame"


def text(key: PrivateKeyTypes, fmt: serialization.PrivateFormat, phrase: str | None = None) -> str:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(phrase.encode())
        if phrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, encryption).decode()


KEYS: dict[
    str, tuple[ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, str]
] = {
    "ed25519": (ed25519.Ed25519PrivateKey.generate(), "ssh-ed25519"),
    "ecdsa": (ec.generate_private_key(ec.SECP384R1()), "ecdsa-sha2-nistp384"),
    "rsa": (rsa.generate_private_key(public_exponent=65537, key_size=2048), "ssh-rsa"),
}
FORMATS = {
    "openssh": serialization.PrivateFormat.OpenSSH,
    "pkcs8": serialization.PrivateFormat.PKCS8,
}


@pytest.mark.parametrize("kind", KEYS)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("phrase", [None, PASSPHRASE])
def test_private_keys_load(kind: str, fmt: str, phrase: str | None) -> None:
    key, name = KEYS[kind]
    loaded = load_private_key(text(key, FORMATS[fmt], phrase), phrase)
    assert loaded.get_name() == name
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    assert loaded.get_base64() == public.split()[1].decode()


def test_traditional_rsa_pem_loads() -> None:
    key, _ = KEYS["rsa"]
    assert load_private_key(text(key, serialization.PrivateFormat.TraditionalOpenSSL)).get_bits()


def test_bad_keys_are_invalid_credentials_without_quoting_them() -> None:
    key, _ = KEYS["ed25519"]
    encrypted = text(key, serialization.PrivateFormat.OpenSSH, PASSPHRASE)
    with pytest.raises(InvalidCredentials, match="needs a passphrase"):
        load_private_key(encrypted)
    with pytest.raises(InvalidCredentials) as wrong:
        load_private_key(encrypted, "hunter2")
    plain = text(key, serialization.PrivateFormat.OpenSSH)
    with pytest.raises(InvalidCredentials, match="not encrypted"):
        load_private_key(plain, "unneeded")
    with pytest.raises(InvalidCredentials) as garbage:
        load_private_key("-----BEGIN OPENSSH PRIVATE KEY-----\nnope\n")
    for error in (wrong.value, garbage.value):
        assert "BEGIN" not in str(error) and "hunter2" not in str(error)
        assert error.reason == "InvalidCredentials" and not error.retryable


def test_a_key_is_parsed_once_per_text_and_passphrase() -> None:
    key, _ = KEYS["ed25519"]
    encrypted = text(key, serialization.PrivateFormat.OpenSSH, PASSPHRASE)
    first = load_private_key(encrypted, PASSPHRASE)
    assert load_private_key(encrypted, PASSPHRASE) is first
    with pytest.raises(InvalidCredentials):  # a wrong passphrase is not served from the cache
        load_private_key(encrypted, "hunter2")
    other = text(ed25519.Ed25519PrivateKey.generate(), serialization.PrivateFormat.OpenSSH)
    assert load_private_key(other).get_base64() != first.get_base64()  # a rotated Secret


def test_credentials_hide_secrets() -> None:
    credentials = Credentials(
        user="deploy",
        private_key="PRIVATE-KEY-TEXT",
        passphrase="PASSPHRASE",
        password="PASSWORD",
        sudo_password="SUDO-PASSWORD",
    )
    shown = repr(credentials)
    for secret in ("PRIVATE-KEY-TEXT", "PASSPHRASE", "PASSWORD"):
        assert secret not in shown
    assert "deploy" in shown


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"user": "bad user", "password": "x"},
        {"user": "root;rm", "password": "x"},
        {"password": "two\nlines"},
        {"password": "x", "sudo_password": "a\nb"},
    ],
)
def test_invalid_credentials_are_refused(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        Credentials(**kwargs)


def test_privilege_for_each_login() -> None:
    command = "sh -c 'echo hi'"
    payload = hostscript.payload(b"data")
    root = Privilege.for_credentials(Credentials(password="x"))
    assert root.wrap(command, payload) == (command, payload)
    sudo = Privilege.for_credentials(Credentials(user="deploy", password="x"))
    assert sudo.wrap(command, payload) == (f"sudo -n -- {command}", payload)
    secret = "s3cr3t pass"
    with_password = Privilege.for_credentials(
        Credentials(user="operator", password="x", sudo_password=secret)
    )
    line, stdin = with_password.wrap(command, payload)
    assert secret not in line and "-S" in line and "-p ''" in line
    assert stdin == secret.encode() + b"\n" + payload
    assert secret not in repr(with_password)


@pytest.mark.parametrize(
    ("stderr", "expected"),
    [
        (b"sudo: a password is required\n", "asks for a password"),
        (b"Sorry, try again.\nsudo: 1 incorrect password attempt\n", "not accepted"),
        (b"deploy is not in the sudoers file.\n", "may not run"),
        (b"sudo: sorry, you must have a tty to run sudo\n", "requiretty"),
        (b"sh: 1: sudo: not found\n", "not installed"),
        (b"sudo: something else\n", "sudo: something else"),
        (b"", "no message"),
    ],
)
def test_sudo_errors_are_explained(stderr: bytes, expected: str) -> None:
    assert expected in describe_sudo_error(stderr)
