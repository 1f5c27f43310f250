"""Preflight fact parsing, against a scripted connection (canned helper output)."""

from __future__ import annotations

from pathlib import Path

import pytest

from capi_remote.ssh.credentials import Credentials
from capi_remote.ssh.errors import RemoteError, SudoFailed
from capi_remote.ssh.hostkeys import HostKeyPolicy
from capi_remote.ssh.probe import HostAddress, Leftovers, probe
from capi_remote.ssh.settings import SSHSettings
from capi_remote.ssh.target import Target
from capi_remote.ssh.transport import ExecResult, Poll
from tests.unit.test_ssh_executor import LocalConnector

PROBE_OUTPUT = b"""capi-remote begin
capi-remote section os-release
PRETTY_NAME="Ubuntu 24.04.1 LTS"
NAME="Ubuntu"
VERSION_ID="24.04"
ID=ubuntu
# a comment
capi-remote section kernel
6.8.0-45-generic
capi-remote section arch
aarch64
capi-remote section cpus
8
capi-remote section meminfo
MemTotal:       16303412 kB
capi-remote section hostname
node-7
capi-remote section addresses
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: enp1s0    inet 192.168.1.17/24 brd 192.168.1.255 scope global dynamic enp1s0\\  valid_lft
2: enp1s0    inet6 fe80::1/64 scope link \\       valid_lft forever preferred_lft forever
5: vlan7@enp1s0    inet 10.7.0.3/16 scope global vlan7\\       valid_lft forever
capi-remote section end
"""


class ScriptedConnection:
    """Answers each command with the next canned result."""

    host = "deploy@node-7:22"
    host_key_fingerprint = "SHA256:" + "B" * 43
    bastion_host_key_fingerprint = None

    def __init__(self, *results: ExecResult) -> None:
        self.results = list(results)
        self.commands: list[tuple[str, bytes]] = []

    def exec(
        self,
        command: str,
        *,
        stdin: bytes = b"",
        timeout: float,
        tail_bytes: int = 65536,
        poll: Poll | None = None,
    ) -> ExecResult:
        self.commands.append((command, stdin))
        return self.results.pop(0)

    def close(self) -> None:
        pass


class ScriptedConnector:
    def __init__(self, connection: ScriptedConnection) -> None:
        self.connection = connection

    def connect(self, target: Target, ticket: object = None) -> ScriptedConnection:
        return self.connection


def target(user: str = "deploy", sudo_password: str | None = None) -> Target:
    return Target(
        address="node-7",
        credentials=Credentials(user=user, password="x", sudo_password=sudo_password),
        host_key=HostKeyPolicy.skip_verification(),
    )


def test_facts_are_parsed() -> None:
    connection = ScriptedConnection(ExecResult(0, b"", b""), ExecResult(0, PROBE_OUTPUT, b""))
    facts = probe(target(), SSHSettings(), connector=ScriptedConnector(connection))
    assert (facts.os_id, facts.os_version_id) == ("ubuntu", "24.04")
    assert facts.os_pretty_name == "Ubuntu 24.04.1 LTS"
    assert (facts.kernel, facts.arch, facts.cpus) == ("6.8.0-45-generic", "aarch64", 8)
    assert facts.memory_bytes == 16303412 * 1024 and facts.hostname == "node-7"
    assert facts.addresses == (
        HostAddress("enp1s0", "192.168.1.17", 24, "inet", "global"),
        HostAddress("enp1s0", "fe80::1", 64, "inet6", "link"),
        HostAddress("vlan7", "10.7.0.3", 16, "inet", "global"),
    )
    assert facts.privilege == "sudo" and facts.host_key_fingerprint.startswith("SHA256:")
    sudo_check, facts_command = connection.commands
    assert sudo_check[0] == "sudo -n -- true"
    assert not facts_command[0].startswith("sudo"), "facts are read as the login user"


def test_sudo_is_checked_first() -> None:
    refused = ExecResult(1, b"", b"sudo: a password is required\n")
    connection = ScriptedConnection(refused)
    with pytest.raises(SudoFailed, match="asks for a password"):
        probe(target(), SSHSettings(), connector=ScriptedConnector(connection))
    assert len(connection.commands) == 1


def test_sudo_password_goes_to_stdin_only() -> None:
    connection = ScriptedConnection(ExecResult(0, b"", b""), ExecResult(0, PROBE_OUTPUT, b""))
    facts = probe(target("operator", "pw"), SSHSettings(), connector=ScriptedConnector(connection))
    assert facts.privilege == "sudo-password"
    command, stdin = connection.commands[0]
    assert "pw" not in command and stdin == b"pw\n"


def test_a_truncated_probe_is_an_error() -> None:
    cut = PROBE_OUTPUT.split(b"capi-remote section addresses")[0]
    connection = ScriptedConnection(ExecResult(0, cut, b""))
    with pytest.raises(RemoteError, match="did not complete"):
        probe(target("root"), SSHSettings(), connector=ScriptedConnector(connection))


def _with_leftovers(*lines: bytes) -> bytes:
    section = b"".join(line + b"\n" for line in lines)
    end = b"capi-remote section end\n"
    return PROBE_OUTPUT.replace(end, b"capi-remote section leftovers\n" + section + end)


def _leftovers_of(stdout: bytes) -> Leftovers:
    connection = ScriptedConnection(ExecResult(0, stdout, b""))
    return probe(target("root"), SETTINGS, connector=ScriptedConnector(connection)).leftovers


SETTINGS = SSHSettings(state_root="/var/lib/capi-remote")


def test_a_host_without_leftovers_is_clean() -> None:
    assert _leftovers_of(_with_leftovers(b"state-links 2")).clean
    assert _leftovers_of(PROBE_OUTPUT).clean, "no section (an older probe): nothing found"


def test_the_sentinel_and_state_directories_are_leftovers() -> None:
    found = _leftovers_of(_with_leftovers(b"sentinel", b"state-links 4"))
    assert not found.clean
    assert found.sentinel == SETTINGS.sentinel_path
    assert found.describe() == (
        f"the success sentinel {SETTINGS.sentinel_path}"
        " and 2 state directories under /var/lib/capi-remote"
    )
    assert _leftovers_of(_with_leftovers(b"state-links 3")).describe() == (
        "1 state directory under /var/lib/capi-remote"
    )


@pytest.mark.parametrize(
    "lines",
    [
        (b"state-links 9999999999",),  # more digits than any real count
        (b"state-links \xd9\xa3",),  # a digit, but not an ASCII one
        (b"state-links 2 and more",),
        (b"sentinel" + b" " * 100_000 + b"x",),
        (b"state-links 2", b"state-links 2", b"sentinel"),  # only two lines are read
        (b"$(rm -rf /)",),
    ],
)
def test_a_host_can_say_only_clean_or_not_clean(lines: tuple[bytes, ...]) -> None:
    # The section is the host's to write: whatever it says, what comes back is the flag and a
    # bounded count, and the description is made of our own paths.
    found = _leftovers_of(_with_leftovers(*lines))
    assert found == Leftovers(state_root="/var/lib/capi-remote")


def test_the_probe_finds_leftovers_on_the_host(tmp_path: Path) -> None:
    settings = SSHSettings(
        state_root=str(tmp_path / "state"), sentinel_path=str(tmp_path / "run/bootstrap.complete")
    )

    def leftovers() -> Leftovers:
        # The helper itself, run by the local sh against a stand-in filesystem.
        return probe(target("root"), settings, connector=LocalConnector()).leftovers

    assert leftovers().clean, "no state root at all"
    (tmp_path / "state").mkdir()
    assert leftovers().clean, "an empty state root: everything was forgotten"
    (tmp_path / "state/uid-1/steps").mkdir(parents=True)
    (tmp_path / "state/uid-1.cleanup").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run/bootstrap.complete").touch()
    found = leftovers()
    assert (found.sentinel, found.state_dirs) == (settings.sentinel_path, 2)
