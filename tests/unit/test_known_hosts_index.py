"""A known_hosts lookup by name finds what a scan of every line would, in file order, whatever
mix of plain, wildcard, negated, hashed and revoked lines a fleet's file holds."""

from __future__ import annotations

import base64
import hashlib
import hmac

from capi_remote.ssh.hostkeys import KnownHosts

KEY = base64.b64encode(b"k" * 51).decode()
OTHER = base64.b64encode(b"o" * 51).decode()


def hashed(name: str) -> str:
    salt = b"s" * 20
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def scan(known: KnownHosts, name: str) -> tuple[object, ...]:
    return tuple(e for e in known.entries if not e.revoked and e.matches(name))


def test_lookup_by_name_matches_a_scan_in_file_order() -> None:
    lines = [f"10.0.{i // 256}.{i % 256} ssh-ed25519 {KEY}" for i in range(1000)]
    lines += [
        f"10.0.0.*,!10.0.0.7 ssh-rsa {OTHER}",
        f"{hashed('10.0.0.5')} ssh-ecdsa {KEY}",
        f"[10.0.0.5]:2222,HOST-A ssh-ed25519 {OTHER}",
        f"10.0.0.5 ssh-dss {OTHER}",
        f"@revoked 10.0.0.6 ssh-ed25519 {OTHER}",
    ]
    known = KnownHosts.parse("\n".join(lines) + "\n")
    for host, port in (("10.0.0.5", 22), ("10.0.0.7", 22), ("10.0.3.200", 22), ("host-a", 22),
                       ("10.0.0.5", 2222), ("10.9.9.9", 22), ("10.0.0.6", 22)):  # fmt: skip
        name = host if port == 22 else f"[{host}]:{port}"
        assert known.lookup(host, port) == scan(known, name), (host, port)
    types = [e.key_type for e in known.lookup("10.0.0.5")]
    assert types == ["ssh-ed25519", "ssh-rsa", "ssh-ecdsa", "ssh-dss"]
    assert [e.key_type for e in known.lookup("10.0.0.7")] == ["ssh-ed25519"]
    assert known.is_revoked(base64.b64decode(OTHER))
    assert not known.is_revoked(base64.b64decode(KEY))
