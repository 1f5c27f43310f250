"""``capi-remote preflight``: can the controller use this host? Checks, in order, reachability,
host key, authentication and sudo, then shows the host's facts — the same probe pools use."""

from __future__ import annotations

from pathlib import Path

import attrs
from rich.console import Console
from rich.table import Table

from capi_remote.ssh import (
    AuthenticationFailed,
    ConnectionLost,
    HostFacts,
    HostKeyMismatch,
    HostKeyPolicy,
    HostKeyUnknown,
    HostUnreachable,
    InvalidCredentials,
    SSHError,
    SSHSettings,
    SudoFailed,
    Target,
    probe,
)

# The checks in the order the probe passes them; an error type says which one failed.
CHECKS = ("reachable", "host key", "authentication", "sudo")
_FAILED_AT: dict[type[SSHError], str] = {
    HostUnreachable: "reachable",
    ConnectionLost: "reachable",
    HostKeyMismatch: "host key",
    HostKeyUnknown: "host key",
    InvalidCredentials: "authentication",
    AuthenticationFailed: "authentication",
    SudoFailed: "sudo",
}


@attrs.frozen
class PreflightResult:
    target: Target
    facts: HostFacts | None = None
    error: SSHError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def failed_check(self) -> str | None:
        if self.error is None:
            return None
        return next((c for t, c in _FAILED_AT.items() if isinstance(self.error, t)), "sudo")


def host_key_policy(
    known_hosts: Path | None,
    fingerprint: str | None,
    trust_on_first_use: bool,
    insecure: bool,
) -> HostKeyPolicy:
    """Exactly one way to trust the host's key; none given means the check cannot pass."""
    if insecure:
        return HostKeyPolicy.skip_verification()
    if fingerprint:
        return HostKeyPolicy.pinned(fingerprint)
    if known_hosts is not None:
        return HostKeyPolicy.from_known_hosts(known_hosts.read_text())
    if trust_on_first_use:
        return HostKeyPolicy.trust_on_first_use()
    return HostKeyPolicy.from_known_hosts("")


def run(target: Target, settings: SSHSettings | None = None) -> PreflightResult:
    try:
        return PreflightResult(target, facts=probe(target, settings))
    except SSHError as error:
        return PreflightResult(target, error=error)


def report(result: PreflightResult, console: Console) -> None:
    table = Table(title=f"preflight {result.target.display}", show_header=False)
    table.add_column("check")
    table.add_column("result")
    failed = result.failed_check
    reached_failure = False
    for check in CHECKS:
        if check == failed:
            assert result.error is not None
            table.add_row(check, f"[red]FAILED[/red] {result.error.reason}: {result.error.message}")
            reached_failure = True
        elif reached_failure:
            table.add_row(check, "[dim]not checked[/dim]")
        else:
            table.add_row(check, f"[green]ok[/green]{_detail(check, result)}")
    console.print(table)
    if result.facts is not None:
        facts = result.facts
        details = Table(title="host facts", show_header=False)
        details.add_column("fact")
        details.add_column("value")
        for name, value in (
            ("hostname", facts.hostname),
            ("os", facts.os_pretty_name),
            ("kernel", facts.kernel),
            ("arch", facts.arch),
            ("cpus", str(facts.cpus)),
            ("memory", f"{facts.memory_bytes / 2**30:.1f} GiB"),
            ("addresses", ", ".join(a.address for a in facts.addresses) or "-"),
            ("host key", facts.host_key_fingerprint),
        ):
            details.add_row(name, value)
        console.print(details)


def _detail(check: str, result: PreflightResult) -> str:
    facts = result.facts
    if facts is None:
        return ""
    if check == "host key":
        return f" ({facts.host_key_fingerprint})"
    if check == "sudo":
        return f" ({facts.privilege})"
    if check == "authentication":
        return f" (as {result.target.credentials.user})"
    return ""
