"""Preflight: can we reach, trust, log in and become root on a host, and what is it?

The probe's output is the host's to write: every section is parsed within a budget, and what a
host says about its own leftovers can only make it look clean or not clean, never put its text
into what we report (:class:`Leftovers` keeps a flag and a bounded count)."""

from __future__ import annotations

import re

import attrs

from capi_remote.ssh import hostscript
from capi_remote.ssh.admission import Ticket
from capi_remote.ssh.auth import Privilege, PrivilegeMode
from capi_remote.ssh.errors import RemoteError
from capi_remote.ssh.paramiko_transport import ParamikoConnector
from capi_remote.ssh.settings import SSHSettings
from capi_remote.ssh.target import Target
from capi_remote.ssh.transport import Connection, Connector


@attrs.frozen
class HostAddress:
    """One address of a host interface (loopback left out)."""

    interface: str
    address: str
    prefix_length: int
    family: str  # "inet" or "inet6"
    scope: str  # "global", "link", ...


@attrs.frozen
class Leftovers:
    """What a bootstrap leaves on a host until a cleanup forgets it there: the success sentinel
    and state directories (one per machine, one per cleanup). On a host about to be given to a
    new machine, the sentinel makes that machine stop with ``HostNotClean``, and a state
    directory means a bootstrap or cleanup that never finished.

    Seen as the login user: the sentinel if its directory is searchable; the state directories
    by the state root's link count (2 + its subdirectories on ext4, xfs and tmpfs; btrfs says 1,
    so none are counted there), which needs no right to read the root-only state root."""

    sentinel: str | None = None  # its path, when it exists
    state_root: str = ""
    state_dirs: int = 0

    @property
    def clean(self) -> bool:
        return self.sentinel is None and self.state_dirs == 0

    def describe(self) -> str:
        found = [f"the success sentinel {self.sentinel}"] if self.sentinel else []
        if self.state_dirs:
            plural = "y" if self.state_dirs == 1 else "ies"
            found.append(f"{self.state_dirs} state director{plural} under {self.state_root}")
        return " and ".join(found) or "nothing"


@attrs.frozen
class HostFacts:
    """What a preflight learned. ``privilege`` says how the runner becomes root there."""

    hostname: str
    os_id: str
    os_version_id: str
    os_pretty_name: str
    kernel: str
    arch: str
    cpus: int
    memory_bytes: int
    addresses: tuple[HostAddress, ...]
    host_key_fingerprint: str
    privilege: PrivilegeMode
    bastion_host_key_fingerprint: str | None = None
    leftovers: Leftovers = Leftovers()


def probe(
    target: Target,
    settings: SSHSettings | None = None,
    *,
    connector: Connector | None = None,
    ticket: Ticket | None = None,
) -> HostFacts:
    """Connect (host key, auth), check sudo, gather facts. Raises the typed connection errors,
    :class:`~capi_remote.ssh.errors.SudoFailed` or :class:`RemoteError`."""
    settings = settings or SSHSettings()
    connection = (connector or ParamikoConnector(settings)).connect(target, ticket)
    try:
        return gather_facts(connection, target, settings)
    finally:
        connection.close()


def gather_facts(connection: Connection, target: Target, settings: SSHSettings) -> HostFacts:
    privilege = Privilege.for_credentials(target.credentials)
    privilege.check(connection, target.credentials.user, settings.command_timeout)
    command = hostscript.probe(sentinel=settings.sentinel_path, state_root=settings.state_root)
    result = connection.exec(command, timeout=settings.command_timeout)
    sections = _sections(result.stdout)
    if "end" not in sections:
        raise RemoteError(connection.host, "the probe did not complete")
    os_release = _os_release(sections.get("os-release", []))
    try:
        cpus = int(_first(sections, "cpus") or "0")
        memory_kib = int((_first(sections, "meminfo") or "MemTotal: 0 kB").split()[1])
    except (ValueError, IndexError):
        raise RemoteError(connection.host, "unreadable CPU or memory facts") from None
    return HostFacts(
        hostname=_first(sections, "hostname"),
        os_id=os_release.get("ID", ""),
        os_version_id=os_release.get("VERSION_ID", ""),
        os_pretty_name=os_release.get("PRETTY_NAME", ""),
        kernel=_first(sections, "kernel"),
        arch=_first(sections, "arch"),
        cpus=cpus,
        memory_bytes=memory_kib * 1024,
        addresses=tuple(_addresses(sections.get("addresses", []))),
        host_key_fingerprint=connection.host_key_fingerprint,
        bastion_host_key_fingerprint=connection.bastion_host_key_fingerprint,
        privilege=privilege.mode,
        leftovers=_leftovers(sections.get("leftovers", []), settings),
    )


def _sections(stdout: bytes) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in stdout.decode(errors="replace").splitlines():
        if line.startswith("capi-remote section "):
            current = sections.setdefault(line.split()[2], [])
        elif current is not None:
            current.append(line)
    return sections


def _first(sections: dict[str, list[str]], name: str) -> str:
    lines = sections.get(name) or [""]
    return lines[0].strip()


_LINKS = re.compile(r"state-links ([0-9]{1,9})")


def _leftovers(lines: list[str], settings: SSHSettings) -> Leftovers:
    """The section's first two lines, each a fixed word or a bounded number: a host can report
    itself dirty or clean, and nothing else reaches the result."""
    sentinel, links = False, 0
    for line in (raw.strip() for raw in lines[:2] if len(raw) <= 32):
        match = _LINKS.fullmatch(line)
        if match:
            links = int(match.group(1))
        sentinel = sentinel or line == "sentinel"
    return Leftovers(
        sentinel=settings.sentinel_path if sentinel else None,
        state_root=settings.state_root,
        state_dirs=max(0, links - 2),
    )


def _os_release(lines: list[str]) -> dict[str, str]:
    """``KEY=value`` lines, values optionally quoted (os-release(5))."""
    values = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep or not key.isidentifier():
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        values[key] = value
    return values


def _addresses(lines: list[str]) -> list[HostAddress]:
    """Lines of ``ip -o addr show``: ``2: eth0    inet 10.0.0.2/24 brd ... scope global eth0``."""
    found = []
    for line in lines:
        fields = line.split()
        if len(fields) < 4 or fields[2] not in ("inet", "inet6"):
            continue
        address, _, prefix = fields[3].partition("/")
        scope = fields[fields.index("scope") + 1] if "scope" in fields[:-1] else ""
        if scope == "host":
            continue
        found.append(
            HostAddress(
                interface=fields[1].split("@")[0],
                address=address,
                prefix_length=int(prefix) if prefix.isdigit() else 0,
                family=fields[2],
                scope=scope,
            )
        )
    return found
