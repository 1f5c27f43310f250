"""Host key checks: known_hosts text, pinned fingerprints, trust-on-first-use, or (loudly) none.

The check runs right after key exchange and before authentication, so a host that presents the
wrong key never sees our credentials and never runs a command. There is no "add any key" mode:
trust-on-first-use hands the learned fingerprint back to the caller, who stores it and pins it.

Independent of paramiko and of the API models: it compares the key type and public key blob the
transport reports.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
from typing import Literal, TypeAlias

import attrs
import structlog

from capi_remote.ssh.errors import HostKeyMismatch, HostKeyUnknown

log = structlog.get_logger(__name__)

DEFAULT_PORT = 22
_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}=?")
_HASHED_PREFIX = "|1|"
# Host key algorithms paramiko negotiates for each known_hosts key type.
_ALGORITHMS = {
    "ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256"),
    "ssh-ed25519": ("ssh-ed25519",),
    "ecdsa-sha2-nistp256": ("ecdsa-sha2-nistp256",),
    "ecdsa-sha2-nistp384": ("ecdsa-sha2-nistp384",),
    "ecdsa-sha2-nistp521": ("ecdsa-sha2-nistp521",),
}

Mode: TypeAlias = Literal["known_hosts", "pinned", "trust_on_first_use", "insecure"]


def fingerprint(blob: bytes) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a public key blob (what ``ssh-keygen -l`` shows)."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def is_fingerprint(value: str) -> bool:
    """Whether ``value`` looks like OpenSSH's ``SHA256:...`` fingerprint."""
    return _FINGERPRINT.fullmatch(value) is not None


def _normalise_fingerprint(value: str) -> str:
    value = value.strip()
    if not is_fingerprint(value):
        raise ValueError("a fingerprint looks like SHA256:<43 base64 characters>")
    return value.rstrip("=")


def host_entry_name(host: str, port: int) -> str:
    """The name known_hosts uses: ``host`` on port 22, ``[host]:port`` otherwise."""
    return host.lower() if port == DEFAULT_PORT else f"[{host.lower()}]:{port}"


@attrs.frozen
class KnownHostEntry:
    """One key line; ``patterns`` are as written (plain, wildcard, ``!negated`` or hashed)."""

    patterns: tuple[str, ...]
    key_type: str
    blob: bytes = attrs.field(repr=False)
    revoked: bool = False

    def matches(self, name: str) -> bool:
        """OpenSSH semantics: some positive pattern matches and no negated one does."""
        matched = False
        for pattern in self.patterns:
            negated = pattern.startswith("!")
            if _pattern_matches(pattern[1:] if negated else pattern, name):
                if negated:
                    return False
                matched = True
        return matched


def _pattern_matches(pattern: str, name: str) -> bool:
    if pattern.startswith(_HASHED_PREFIX):
        parts = pattern.split("|")
        try:
            salt = base64.b64decode(parts[2], validate=True)
            expected = base64.b64decode(parts[3], validate=True)
        except (IndexError, ValueError):  # binascii.Error, or non-ASCII text (a ValueError)
            return False
        actual = hmac.new(salt, name.encode(), hashlib.sha1).digest()
        return hmac.compare_digest(actual, expected)
    return _wildcard(pattern.lower()).fullmatch(name) is not None


@functools.lru_cache(maxsize=1024)
def _wildcard(pattern: str) -> re.Pattern[str]:
    """``*`` and ``?`` are wildcards; everything else, brackets included, is literal."""
    return re.compile(
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    )


def _plain(pattern: str) -> bool:
    return not pattern.startswith(("!", _HASHED_PREFIX)) and not any(c in pattern for c in "*?")


@attrs.frozen
class KnownHosts:
    """Parsed known_hosts text. Parse with :meth:`parse`, which caches by text.

    A lookup costs the same with a fleet's thousand lines as with one: entries whose patterns are
    all plain names are found by name; only wildcard, negated and hashed ones are tried in turn.
    """

    entries: tuple[KnownHostEntry, ...]
    #: Plain name -> positions of the entries that name it (only entries of plain names).
    _by_name: dict[str, tuple[int, ...]] = attrs.field(init=False, repr=False, eq=False)
    #: Positions of the entries with a wildcard, negated or hashed pattern.
    _others: tuple[int, ...] = attrs.field(init=False, repr=False, eq=False)
    _revoked: frozenset[bytes] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        by_name: dict[str, list[int]] = {}
        others = []
        for position, entry in enumerate(self.entries):
            if all(_plain(p) for p in entry.patterns):
                for name in {p.lower() for p in entry.patterns}:
                    by_name.setdefault(name, []).append(position)
            else:
                others.append(position)
        object.__setattr__(self, "_by_name", {k: tuple(v) for k, v in by_name.items()})
        object.__setattr__(self, "_others", tuple(others))
        revoked = frozenset(e.blob for e in self.entries if e.revoked)
        object.__setattr__(self, "_revoked", revoked)

    @staticmethod
    def parse(text: str) -> KnownHosts:
        """Parse OpenSSH known_hosts text; lines it cannot use are skipped, as ssh does.

        Supports plain, wildcard, negated and hashed (``|1|salt|hash``) host patterns,
        ``[host]:port`` names and ``@revoked`` markers; ``@cert-authority`` lines are skipped
        (certificates are not supported).
        """
        return _parse_known_hosts(text)

    def lookup(self, host: str, port: int = DEFAULT_PORT) -> tuple[KnownHostEntry, ...]:
        """Trusted (not revoked) entries for ``host:port``."""
        name = host_entry_name(host, port)
        positions = sorted((*self._by_name.get(name, ()), *self._others))  # in file order
        candidates = (self.entries[i] for i in positions)
        return tuple(e for e in candidates if not e.revoked and e.matches(name))

    def is_revoked(self, blob: bytes) -> bool:
        return blob in self._revoked


@functools.lru_cache(maxsize=64)
def _parse_known_hosts(text: str) -> KnownHosts:
    entries = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        revoked = False
        if fields[0].startswith("@"):
            if fields[0] != "@revoked":
                continue
            revoked = True
            fields = fields[1:]
        if len(fields) < 3:
            continue
        try:
            blob = base64.b64decode(fields[2], validate=True)
        except ValueError:  # binascii.Error, or non-ASCII text (a plain ValueError)
            continue
        entries.append(
            KnownHostEntry(
                patterns=tuple(fields[0].split(",")),
                key_type=fields[1],
                blob=blob,
                revoked=revoked,
            )
        )
    return KnownHosts(entries=tuple(entries))


@attrs.frozen
class HostKeyPolicy:
    """How to decide whether the key a host presents is the right one.

    Build with a constructor: :meth:`from_known_hosts`, :meth:`pinned`,
    :meth:`trust_on_first_use` or :meth:`skip_verification`.
    """

    mode: Mode
    known_hosts: KnownHosts | None = attrs.field(default=None, repr=False)
    fingerprints: tuple[str, ...] = ()

    @classmethod
    def from_known_hosts(cls, text: str) -> HostKeyPolicy:
        """Trust the keys listed for the host in OpenSSH known_hosts text."""
        return cls(mode="known_hosts", known_hosts=KnownHosts.parse(text))

    @classmethod
    def pinned(cls, *fingerprints: str) -> HostKeyPolicy:
        """Trust only keys with these ``SHA256:...`` fingerprints (``ssh-keygen -lf``)."""
        if not fingerprints:
            raise ValueError("pin at least one fingerprint")
        return cls(mode="pinned", fingerprints=tuple(map(_normalise_fingerprint, fingerprints)))

    @classmethod
    def trust_on_first_use(cls, recorded: str | None = None) -> HostKeyPolicy:
        """Accept whatever key the host presents the first time; pinned once ``recorded``.

        The caller stores ``JobResult.host_key_fingerprint`` (or ``HostFacts``') and passes it as
        ``recorded`` from then on: a later change is a :class:`HostKeyMismatch`.
        """
        pins = () if recorded is None else (_normalise_fingerprint(recorded),)
        return cls(mode="trust_on_first_use", fingerprints=pins)

    @classmethod
    def skip_verification(cls) -> HostKeyPolicy:
        """Accept any key. Logs a warning on every connection: only for throw-away labs."""
        return cls(mode="insecure")

    def key_types_for(self, host: str, port: int = DEFAULT_PORT) -> tuple[str, ...]:
        """Host key algorithms to ask for, so the host presents a key type we know (or ``()``)."""
        if self.known_hosts is None:
            return ()
        algorithms: list[str] = []
        for entry in self.known_hosts.lookup(host, port):
            for name in _ALGORITHMS.get(entry.key_type, ()):
                if name not in algorithms:
                    algorithms.append(name)
        return tuple(algorithms)

    def verify(self, host: str, port: int, key_type: str, blob: bytes) -> str:
        """Return the presented key's fingerprint if trusted; raise otherwise."""
        presented = fingerprint(blob)
        shown = host if port == DEFAULT_PORT else f"{host}:{port}"
        if self.mode == "insecure":
            log.warning(
                "host key not verified (verification disabled)",
                host=shown,
                fingerprint=presented,
                key_type=key_type,
            )
            return presented
        if self.mode == "known_hosts":
            assert self.known_hosts is not None
            entries = self.known_hosts.lookup(host, port)
            expected = tuple(dict.fromkeys(fingerprint(e.blob) for e in entries))
            if self.known_hosts.is_revoked(blob):
                raise HostKeyMismatch(shown, expected or ("(revoked key)",), presented, key_type)
            if any(e.blob == blob for e in entries):
                return presented
            if not entries:
                raise HostKeyUnknown(shown, presented, key_type)
            raise HostKeyMismatch(shown, expected, presented, key_type)
        if not self.fingerprints:  # trust on first use, nothing recorded yet
            log.info("trusting host key on first use", host=shown, fingerprint=presented)
            return presented
        if presented in self.fingerprints:
            return presented
        raise HostKeyMismatch(shown, self.fingerprints, presented, key_type)
