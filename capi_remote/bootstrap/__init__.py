"""Bootstrap data (cloud-config, Ignition) → an ordered, hashable plan of steps.

Pure: bytes in, plan out; no Kubernetes, no SSH (an import-linter contract keeps it that way).
The only exception ``parse_bootstrap`` raises is ``BootstrapParseError`` (and ``MemoryError``,
which ``ParseSandbox`` turns into one: the controller parses through it). See
docs/bootstrap-formats.md for what each format supports and the limits of a parse.
"""

from __future__ import annotations

from capi_remote.bootstrap.budget import MAX_BOOTSTRAP_BYTES, Budget
from capi_remote.bootstrap.cloudconfig import parse_cloud_config
from capi_remote.bootstrap.errors import BootstrapParseError
from capi_remote.bootstrap.ignition import parse_ignition
from capi_remote.bootstrap.jinja import InstanceMetadata, substitute_provider_id
from capi_remote.bootstrap.plan import (
    BootstrapPlan,
    MakeDirectory,
    Phase,
    PlanFormat,
    RunCommand,
    Step,
    WriteFile,
)
from capi_remote.bootstrap.sandbox import ParseSandbox, SandboxSettings

__all__ = [
    "MAX_BOOTSTRAP_BYTES",
    "BootstrapParseError",
    "BootstrapPlan",
    "Budget",
    "InstanceMetadata",
    "MakeDirectory",
    "ParseSandbox",
    "Phase",
    "PlanFormat",
    "RunCommand",
    "SandboxSettings",
    "Step",
    "WriteFile",
    "parse_bootstrap",
    "substitute_provider_id",
]


def parse_bootstrap(
    data: bytes,
    format: str | None,
    *,
    metadata: InstanceMetadata,
    commands_as_script: bool = False,
    budget: Budget | None = None,
) -> BootstrapPlan:
    """Parse the bootstrap Secret's ``value`` according to its ``format`` key.

    ``format`` is ``cloud-config`` (also when absent or empty) or ``ignition``.
    ``commands_as_script`` applies to cloud-config only; with Ignition it adds a warning.
    ``budget`` bounds everything the parse produces (default ``MAX_BOOTSTRAP_BYTES``). In the
    controller, call it through ``ParseSandbox.parse``: hostile data can still take seconds and
    memory that only a separate process can bound and stop.
    """
    budget = budget or Budget()
    if format in (None, "", "cloud-config"):
        return parse_cloud_config(
            data, metadata=metadata, commands_as_script=commands_as_script, budget=budget
        )
    if format == "ignition":
        plan = parse_ignition(data, budget)
        if commands_as_script:
            note = "commandsAsScript has no effect on Ignition data"
            return BootstrapPlan(
                steps=plan.steps, warnings=(*plan.warnings, note), format=plan.format
            )
        return plan
    raise BootstrapParseError(
        "format", "unsupported bootstrap format (use cloud-config or ignition)"
    )
