"""Host key policies and the known_hosts parser (checked against OpenSSH's own tools)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from capi_remote.ssh.errors import HostKeyMismatch, HostKeyUnknown
from capi_remote.ssh.hostkeys import HostKeyPolicy, KnownHosts, fingerprint, host_entry_name
from capi_remote_testbed.hosts import SshKey

KEY_A = SshKey.generate()
KEY_B = SshKey.generate()


def blob(key: SshKey) -> bytes:
    return base64.b64decode(key.public.split()[1])


def hashed(name: str, salt: bytes = b"0123456789abcdefghij") -> str:
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def verify(policy: HostKeyPolicy, key: SshKey, host: str = "10.0.0.1", port: int = 22) -> str:
    return policy.verify(host, port, "ssh-ed25519", blob(key))


def test_fingerprint_is_what_ssh_keygen_prints(tmp_path: Path) -> None:
    assert fingerprint(blob(KEY_A)) == KEY_A.fingerprint
    if shutil.which("ssh-keygen") is None:
        pytest.skip("no ssh-keygen")
    public = tmp_path / "key.pub"
    public.write_text(KEY_A.public + "\n")
    out = subprocess.run(["ssh-keygen", "-lf", str(public)], capture_output=True, text=True)
    assert out.stdout.split()[1] == fingerprint(blob(KEY_A))


def test_known_hosts_forms() -> None:
    text = "\n".join(
        [
            "# comment",
            "",
            f"plain.example,10.0.0.1 {KEY_A.public}",
            f"[10.0.0.2]:2222 {KEY_A.public}",
            f"*.wild.example,!bad.wild.example {KEY_A.public}",
            f"{hashed('10.0.0.3')} {KEY_A.public}",
            f"{hashed('[10.0.0.3]:2200')} {KEY_B.public}",
            f"@cert-authority *.example {KEY_B.public}",
            "garbage line",
            "host ssh-ed25519 !!!notbase64",
        ]
    )
    known = KnownHosts.parse(text)
    assert KnownHosts.parse(text) is known, "parsed once, then shared"

    def keys(host: str, port: int = 22) -> list[bytes]:
        return [entry.blob for entry in known.lookup(host, port)]

    assert keys("plain.example") == keys("10.0.0.1") == [blob(KEY_A)]
    assert keys("PLAIN.example") == [blob(KEY_A)], "host names are case-insensitive"
    assert keys("10.0.0.1", 2222) == [], "a port other than 22 needs the [host]:port form"
    assert keys("10.0.0.2", 2222) == [blob(KEY_A)] and keys("10.0.0.2") == []
    assert keys("a.wild.example") == [blob(KEY_A)]
    assert keys("bad.wild.example") == [] and keys("wild.example") == []
    assert keys("10.0.0.3") == [blob(KEY_A)] and keys("10.0.0.3", 2200) == [blob(KEY_B)]
    assert keys("x.example") == [], "@cert-authority lines are not host keys"
    assert len(known.entries) == 5


def test_brackets_in_patterns_are_literal() -> None:
    known = KnownHosts.parse(f"[10.0.0.?]:2222 {KEY_A.public}\n")
    assert known.lookup("10.0.0.7", 2222) and not known.lookup("10.0.0.7", 22)


@given(
    host=st.from_regex(r"[a-z0-9][a-z0-9.-]{0,30}", fullmatch=True),
    port=st.integers(1, 65535),
    salt=st.binary(min_size=20, max_size=20),
)
def test_hashed_entries_match_exactly_their_host(host: str, port: int, salt: bytes) -> None:
    name = host_entry_name(host, port)
    known = KnownHosts.parse(f"{hashed(name, salt)} {KEY_A.public}\n")
    assert known.lookup(host, port)
    assert not known.lookup(host + "x", port)
    assert not known.lookup(host, port % 65535 + 1)


def test_known_hosts_policy() -> None:
    policy = HostKeyPolicy.from_known_hosts(f"10.0.0.1 {KEY_A.public}\n")
    assert verify(policy, KEY_A) == KEY_A.fingerprint
    with pytest.raises(HostKeyMismatch) as mismatch:
        verify(policy, KEY_B)
    assert mismatch.value.expected == (KEY_A.fingerprint,)
    assert mismatch.value.presented == KEY_B.fingerprint
    assert KEY_A.fingerprint in str(mismatch.value) and KEY_B.fingerprint in str(mismatch.value)
    with pytest.raises(HostKeyUnknown) as unknown:
        verify(policy, KEY_A, host="10.0.0.9")
    assert unknown.value.presented == KEY_A.fingerprint and not unknown.value.retryable
    assert policy.key_types_for("10.0.0.1") == ("ssh-ed25519",)
    assert policy.key_types_for("10.0.0.9") == ()


def test_revoked_keys_are_refused_even_when_listed() -> None:
    text = f"10.0.0.1 {KEY_A.public}\n@revoked * {KEY_A.public}\n"
    with pytest.raises(HostKeyMismatch):
        verify(HostKeyPolicy.from_known_hosts(text), KEY_A)


def test_rsa_entries_ask_for_sha2_signatures() -> None:
    rsa_line = "10.0.0.1 ssh-rsa " + base64.b64encode(b"not really a key").decode()
    policy = HostKeyPolicy.from_known_hosts(f"{rsa_line}\n10.0.0.1 {KEY_A.public}\n")
    assert policy.key_types_for("10.0.0.1") == ("rsa-sha2-512", "rsa-sha2-256", "ssh-ed25519")


def test_pinned_policy() -> None:
    policy = HostKeyPolicy.pinned(KEY_A.fingerprint + "=")  # ssh-keygen -E sha256 style padding
    assert verify(policy, KEY_A) == KEY_A.fingerprint
    with pytest.raises(HostKeyMismatch):
        verify(policy, KEY_B)
    both = HostKeyPolicy.pinned(KEY_A.fingerprint, KEY_B.fingerprint)
    assert verify(both, KEY_B) == KEY_B.fingerprint
    for bad in ("MD5:aa:bb", "SHA256:short", ""):
        with pytest.raises(ValueError):
            HostKeyPolicy.pinned(bad)
    with pytest.raises(ValueError):
        HostKeyPolicy.pinned()


def test_trust_on_first_use() -> None:
    first = HostKeyPolicy.trust_on_first_use()
    learned = verify(first, KEY_A)
    assert learned == KEY_A.fingerprint
    assert verify(first, KEY_B) == KEY_B.fingerprint, "nothing recorded yet: anything goes"
    later = HostKeyPolicy.trust_on_first_use(learned)
    assert verify(later, KEY_A) == learned
    with pytest.raises(HostKeyMismatch):
        verify(later, KEY_B)


def test_skipping_verification_warns_every_time() -> None:
    policy = HostKeyPolicy.skip_verification()
    with capture_logs() as logs:
        verify(policy, KEY_A)
        verify(policy, KEY_B)
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 2
    assert warnings[1]["fingerprint"] == KEY_B.fingerprint


def test_non_default_ports_show_in_messages() -> None:
    policy = HostKeyPolicy.from_known_hosts(f"[10.0.0.1]:2222 {KEY_A.public}\n")
    with pytest.raises(HostKeyMismatch, match=r"10\.0\.0\.1:2222"):
        verify(policy, KEY_B, port=2222)


def test_non_ascii_garbage_lines_are_skipped_not_fatal() -> None:
    """A known_hosts line with non-ASCII text where base64 belongs is skipped like any other
    unusable line (base64 raises a plain ValueError for it, not binascii.Error), so one garbled
    line neither breaks parsing nor the lookup of the good lines around it."""
    text = "\n".join(
        [
            "10.0.0.1 ssh-ed25519 AAAA\u00e9\u00e9",  # non-ASCII key blob
            f"|1|s\u00e4lt|h\u00e4sh {KEY_B.public}",  # non-ASCII hashed pattern
            f"|1|{base64.b64encode(b'salt').decode()}|\u00ff {KEY_B.public}",
            f"10.0.0.1 {KEY_A.public}",
        ]
    )
    known = KnownHosts.parse(text)
    assert [entry.blob for entry in known.lookup("10.0.0.1")] == [blob(KEY_A)]
    policy = HostKeyPolicy.from_known_hosts(text)
    assert policy.key_types_for("10.0.0.1") == ("ssh-ed25519",)
    assert verify(policy, KEY_A) == KEY_A.fingerprint
    with pytest.raises(HostKeyUnknown):
        verify(policy, KEY_A, host="10.0.0.9")
